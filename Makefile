# qcmb_hpc — `make install`, `make run`, `make test`, `make bench`.
# Everything lives in a virtualenv (.venv) made from the python3 on PATH; NWChem and Slurm come
# from Debian (apt-get, as root). The MPI launcher is the MPICH wheel's, in .venv/bin.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
MPIEXEC:= $(VENV)/bin/mpiexec
APT_PACKAGES := nwchem slurmctld slurmd

.PHONY: install system-packages venv run test test-unit test-mpi test-slurm test-qcmanybody-full bench clean

install: system-packages venv

system-packages:
	@if command -v apt-get >/dev/null 2>&1; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	  fi; \
	else echo "apt-get not found: install NWChem and Slurm yourself (see README)"; fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# the bundled example ((H2O)6 ring, DF-MP2/cc-pVDZ with PySCF, CP+NoCP through 3-body; 20 s–1.5 min on 2 cores) on all cores
run: venv
	$(PY) -m qcmb_hpc --fresh

# around the suites: nothing of ours may be left in the temporary directory or /dev/shm
test: install
	$(PY) tests/leftovers.py snapshot .leftovers.json
	$(MAKE) test-unit test-mpi test-slurm
	$(PY) tests/leftovers.py check .leftovers.json

test-unit: venv
	timeout 1500 $(PY) -m pytest -q --ignore=tests/mpi -m "not slurm" tests

# (the PySCF parity cases run real chemistry: once, in a world of 3 — a coordinator and 2 workers)
test-mpi: venv
	for n in 2 3 5; do \
	  timeout 600 $(MPIEXEC) -n $$n $(PY) -m pytest --with-mpi -q -p no:cacheprovider tests/mpi --ignore=tests/mpi/test_ranks_pyscf.py || exit 1; \
	done
	timeout 600 $(MPIEXEC) -n 3 $(PY) -m pytest --with-mpi -q -p no:cacheprovider tests/mpi/test_ranks_pyscf.py

test-slurm: install
	timeout 1200 $(PY) -m pytest -q -m slurm tests/test_slurm.py tests/test_parsl_slurm.py

# every test of QCManyBody's own suite that the installed engines can run, through qcmb_hpc (hours)
test-qcmanybody-full: install
	$(PY) -m pytest -q -p no:cacheprovider -p qcmb_hpc.testing.qcmanybody_suite --pyargs qcmanybody

bench: venv
	timeout 3600 $(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
