"""QCManyBody's own test suite, with ``ParallelManyBodyComputer`` standing in for every
``ManyBodyComputer`` the suite can reach (plugin :mod:`qcmb_hpc.testing.qcmanybody_suite`).

What runs (README, "QCManyBody's own tests"): every upstream test that needs no QC program (318:
planning, keywords, schema v1/v2, the core, …) and a selection of the NWChem ones —
:data:`NWCHEM_SELECTION`, single- and multilevel, schema v1, v2 and the default, every BSSE
treatment — in multiprocessing mode with 2 workers; and a smaller selection under ``mpiexec -n 3``
(``tests/mpi/test_ranks_qcmanybody_suite.py``). The other NWChem cases (396 in all; ~25 s each
here) are the same code paths with other keywords: ``make test-qcmanybody-full`` runs them all.
Tests that need Psi4, CFOUR or GAMESS (not installable with pip or apt; the documentation examples
among them) or an optimizer driving NWChem (optking/geomeTRIC: not installed) are skipped by
upstream itself. Each run counts the computers built and expansions run through qcmb_hpc, and
the test fails if the NWChem tests did not all run (skipped ones would pass unnoticed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import cli_env, has_nwchem

#: upstream NWChem test ids run in CI (``-k`` expressions over the parametrized ids)
NWCHEM_SELECTION = [
    # single level: every bsse_type and their combinations, return_total_data, supersystem_ie_only
    "test_nbody_he4_single[None-4b_all-nwchem_conv]",
    "test_nbody_he4_single[v1-4b_cpvmfc-nwchem_conv]",
    "test_nbody_he4_single[v2-4b_nocp_rtd_sio-nwchem_conv]",
    "test_nbody_he4_single[v2-4b_cp_sio-nwchem_conv]",
    "test_nbody_he4_single[v2-3b_vmfc_rtd-nwchem_conv]",
    "test_nbody_he4_single[v1-3b_cp_rtd-nwchem_conv]",
    "test_nbody_he4_single[None-2b_nocp-nwchem_conv]",
    "test_nbody_he4_single[v2-1b_vmfc_rtd-nwchem_conv]",
    "test_nbody_he4_single[v1-4b_vmfc-nwchem_conv]",
    "test_nbody_he4_single[None-3b_nocp_rtd-nwchem_conv]",
    # multilevel (the specification also names CFOUR and Psi4 model chemistries no level uses)
    "test_nbody_he4_multi[v2-4b_nocpcp-121-nwchem_pure]",
    "test_nbody_he4_multi[v1-4b_vmfc_rtd-22-nwchem_pure]",
    "test_nbody_he4_multi[None-3b_cp-121-nwchem_pure]",
    "test_nbody_he4_multi[v2-2b_nocp_rtd-22-nwchem_pure]",
    "test_nbody_he4_multi[v1-4b_cp-121-nwchem_pure]",
    "test_nbody_he4_multi[None-3b_vmfc-22-nwchem_pure]",
]


def upstream_tests_dir() -> str:
    import qcmanybody

    return os.path.join(os.path.dirname(qcmanybody.__file__), "tests")


def node_ids(selection):
    """Upstream test ids as pytest node ids (``file.py::test[params]``)."""
    files = {"test_nbody_he4_single": "test_computer_he4_singlelevel.py", "test_nbody_he4_multi": "test_computer_he4_multilevel.py"}
    return [os.path.join(upstream_tests_dir(), files[t.partition("[")[0]]) + "::" + t for t in selection]


def run_upstream_suite(tmp_path, args, launcher=(), timeout=900):
    """``pytest ARGS`` over QCManyBody's installed tests with the plugin: (outcome counts,
    qcmb_hpc's counts, output)."""
    count_file = tmp_path / "counts.json"
    cmd = [*launcher, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
           "-p", "qcmb_hpc.testing.qcmanybody_suite", "--rootdir", upstream_tests_dir(), *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(QCMB_SUITE_COUNT_FILE=str(count_file)),
                          capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|skipped)", ln)][-1]
    outcomes = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    return outcomes, json.loads(count_file.read_text()), out


def test_qcmanybody_tests_that_need_no_engine(tmp_path):
    """All of upstream's tests that run no QC program: planning (``build_tasks=False``), keywords,
    validation errors, v1/v2 models, the core — through the parallel class."""
    outcomes, counts, out = run_upstream_suite(tmp_path, [upstream_tests_dir(), "-m", "not nwchem"])
    assert outcomes.get("failed", 0) == 0 and not outcomes.get("error") and not outcomes.get("errors"), out[-4000:]
    assert outcomes["passed"] >= 300, outcomes
    assert counts["computers"] >= 100, counts  # they really built qcmb_hpc's computers


@pytest.mark.skipif(not has_nwchem, reason="needs NWChem (make test installs it)")
def test_qcmanybody_nwchem_tests(tmp_path):
    """The NWChem selection, in multiprocessing mode with 2 workers: every one runs (none is
    skipped for a missing program) and passes, and each is an expansion run by qcmb_hpc."""
    outcomes, counts, out = run_upstream_suite(tmp_path, node_ids(NWCHEM_SELECTION))
    assert outcomes == {"passed": len(NWCHEM_SELECTION)}, out[-4000:]
    assert counts["runs"] == len(NWCHEM_SELECTION), counts


#: run under ``mpiexec -n 3`` (MPI mode: rank 0 coordinates, 2 worker ranks)
MPI_SELECTION = [
    "test_nbody_he4_single[v2-4b_cpvmfc-nwchem_conv]",
    "test_nbody_he4_single[v1-4b_nocp_sio-nwchem_conv]",
    "test_nbody_he4_multi[None-4b_vmfc_rtd-22-nwchem_pure]",
]


@pytest.mark.mpi_skip  # launches its own mpiexec
@pytest.mark.skipif(not has_nwchem, reason="needs NWChem (make test installs it)")
def test_qcmanybody_suite_under_mpiexec(tmp_path):
    """A selection in MPI mode (every rank runs the same upstream tests; the computers they build
    run collectively): the NWChem cases and the keyword/planning tests."""
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    assert os.access(mpiexec, os.X_OK), f"no mpiexec next to {sys.executable} (pip install mpich)"
    args = [*node_ids(MPI_SELECTION), os.path.join(upstream_tests_dir(), "test_schema_keywords.py")]
    outcomes, counts, out = run_upstream_suite(tmp_path, args, launcher=(mpiexec, "-n", "3"), timeout=600)
    assert outcomes.get("failed", 0) == 0 and outcomes["passed"] >= len(MPI_SELECTION) + 50, out[-4000:]
    assert counts["runs"] == len(MPI_SELECTION), counts
