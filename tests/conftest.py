"""Shared test helpers. Every correctness check compares with ``qcmanybody.v2.ManyBodyComputer``
run on the same input in the same test."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import qcmb_hpc.testing.engines  # noqa: F401  (registers qcmb_test, qcmb_sleep, qcmb_fault)
from qcmb_hpc.testing.inputs import water_cluster

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)  # tests/custom_engine.py for --import tests

has_nwchem = shutil.which("nwchem") is not None

# The command line keeps a per-user cost history in $XDG_CACHE_HOME by default: the tests (and the
# processes, MPI ranks and Slurm jobs they start, which inherit this) keep theirs in a directory of
# their own, never in the real user's cache.
# One per test session: a process started by a test (a CLI run, an MPI rank, a Slurm job) that loads
# this file again keeps the directory it inherited; the process that made it removes it at exit.
if not os.path.basename(os.environ.get("XDG_CACHE_HOME", "")).startswith("qcmb_hpc-test-cache-"):
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="qcmb_hpc-test-cache-")
    atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)


def reference(inp):
    """The sequential QCManyBody result for the same input."""
    from qcmanybody.v2 import ManyBodyComputer

    return ManyBodyComputer.from_manybodyinput(inp)


def assert_same_result(ref, res, atol=1e-10, exact=False, check_shape=True):
    """Every property, return_result and stdout equal (to atol, or bit for bit with ``exact``), by
    :class:`qcmb_hpc.ParallelTestSuite`, and the same cluster labels. JSON round trips flatten
    arrays: pass ``check_shape=False`` for results read from files. (Whole results: test_parity's
    ``assert_full_parity``.)"""
    from qcmb_hpc.testing.suite import ParallelTestSuite

    assert any(v is not None for v in ref.properties.model_dump().values())
    found = ParallelTestSuite(exact=exact).number_differences(res, ref, tolerance=atol, flat_arrays=not check_shape)
    assert not found, "; ".join(found[:5])
    assert set(ref.cluster_properties) == set(res.cluster_properties)


@pytest.fixture(scope="session")
def trimer():
    return water_cluster(3)


@pytest.fixture(scope="session")
def tetramer():
    return water_cluster(4)


@pytest.fixture
def logged():
    """Records of the "qcmb_hpc" logger at DEBUG and above (whatever its propagation is)."""
    import logging

    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    log = logging.getLogger("qcmb_hpc")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield records
    log.removeHandler(handler)
    log.setLevel(old_level)


def cli_env(**extra):
    """The environment for a ``python -m qcmb_hpc`` child: this one without any ``QCMB_*``
    setting, with ``tests/`` and the repository importable, and ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QCMB_")}
    env["PYTHONPATH"] = os.pathsep.join([HERE, REPO, os.environ.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def run_cli(args, cwd, env=None, timeout=240):
    """``python -m qcmb_hpc ARGS`` in ``cwd`` (environment: :func:`cli_env` plus ``env``)."""
    return subprocess.run(
        [sys.executable, "-m", "qcmb_hpc", *args], cwd=cwd, env=cli_env(**(env or {})), capture_output=True, text=True, timeout=timeout
    )


def load_report(result_path):
    """The run report the command line writes next to a result (``x.result.json`` → ``x.report.json``)."""
    import json

    from qcmb_hpc.cli import default_report

    with open(default_report(str(result_path))) as fh:
        return json.load(fh)


def quiet(**kw):
    """A parallel_config dict without console progress."""
    return {"progress_reporting": False, **kw}


# ------------------------------------------------------------------------------------------------
# the real single-node Slurm of the Slurm tests (tests/test_slurm.py, tests/test_parsl_slurm.py):
# one per session, started by the first test that asks for it, always stopped
# ------------------------------------------------------------------------------------------------

PARTITION = "debug"
#: CPUs the test node declares (2 real cores here; the test engines sleep): the jobs that sit
#: through a time limit (3 × 2) and the largest other job (3) fit at once
CLUSTER_CPUS = 12


@pytest.fixture(scope="session")
def slurm():
    from slurm_cluster import INSTALL_HINT, SlurmCluster, SlurmMissing, missing_binaries

    missing = missing_binaries()
    if missing:
        pytest.fail(f"Slurm is not installed (missing: {', '.join(missing)}); install it with: {INSTALL_HINT}", pytrace=False)
    root = tempfile.mkdtemp(prefix="qcmb-slurm-")
    cluster = SlurmCluster(root, cpus=CLUSTER_CPUS, memory_mb=16000, partition=PARTITION)
    try:
        try:
            cluster.start()
        except SlurmMissing as exc:
            pytest.fail(str(exc), pytrace=False)
        yield cluster
    finally:
        done = cluster.stop()
        leftovers = [n for n, p in cluster.procs.items() if p.poll() is None]
        print(f"\ntest Slurm in {root}: {'; '.join(done) or 'nothing to stop'}")
        assert not leftovers, f"Slurm daemons still running: {leftovers}"
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def remove_what_killed_ranks_leave():
    """A rank that is killed (as the tests that use this kill them) cannot remove its scratch
    directory, and MPICH's shared-memory segments of a killed or aborted job stay in /dev/shm:
    remove what this test's jobs left (``make test`` checks that nothing of ours is left anywhere)."""
    import glob
    import shutil
    import tempfile

    def ours():
        return set(glob.glob("/dev/shm/mpich_*")) | set(glob.glob(os.path.join(tempfile.gettempdir(), "qcmb_hpc-*-w*-*")))

    before = ours()
    yield
    for path in ours() - before:
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
