"""Helpers and fixtures for the pytest-mpi tests in this directory (imported by the test modules;
deliberately not a ``conftest.py``: a second ``conftest`` module would shadow ``tests/conftest.py``
for ``from conftest import ...``).

Every test runs on every rank, under ``mpiexec -n N python -m pytest --with-mpi tests/mpi``:

* each rank calls ``ParallelManyBodyComputer(...).compute()`` (:func:`mpi_compute`) and gets the
  result;
* the QCManyBody reference is computed once, on rank 0, and broadcast (:func:`root_reference`), so
  every rank compares its own result with it;
* the tests' own collectives go over a private duplicate of ``COMM_WORLD`` (:func:`tcomm`), never
  over the communicator the code under test uses;
* after every test all ranks meet (:func:`ranks_in_step`); a rank that does not arrive within
  :data:`STEP_TIMEOUT` seconds means the ranks have fallen out of step (one rank stuck in a
  ``compute()`` the others left): the job is aborted with a message instead of hanging until the
  outer ``timeout``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Optional

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # ranks_count_engine for the workers (forked children inherit it)

#: seconds all ranks may take to reach the end of a test together
STEP_TIMEOUT = float(os.environ.get("QCMB_MPI_TEST_STEP_TIMEOUT", "120"))

#: pytest-timeout per test (longer than STEP_TIMEOUT): a rank stuck inside a run gets an exception
#: there, which aborts the whole job with its traceback instead of hanging until the outer timeout
MPI_TEST_TIMEOUT = 180

TEST_ENGINES = "qcmb_hpc.testing.engines"

_TCOMM: Any = None


def tcomm() -> Any:
    """The tests' own communicator: a duplicate of COMM_WORLD (made once, collectively)."""
    global _TCOMM
    if _TCOMM is None:
        from mpi4py import MPI

        _TCOMM = MPI.COMM_WORLD.Dup()
    return _TCOMM


def quiet_wait(req: Any, timeout: float, what: str) -> None:
    """Wait for a non-blocking request with a sleeping backoff; abort the job after ``timeout``."""
    deadline = time.monotonic() + timeout
    wait = 1e-4
    while not req.Test():
        if time.monotonic() > deadline:
            from mpi4py import MPI

            sys.stderr.write(
                f"\ntests/mpi: rank {MPI.COMM_WORLD.Get_rank()} waited {timeout:.0f} s for the other ranks "
                f"({what}); the ranks are out of step, aborting the job\n"
            )
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(3)
        time.sleep(wait)
        wait = min(2 * wait, 0.01)


def sync(what: str = "barrier", timeout: float = STEP_TIMEOUT) -> None:
    quiet_wait(tcomm().Ibarrier(), timeout, what)


def bcast(obj: Any, what: str = "bcast") -> Any:
    """Broadcast from rank 0 on the tests' communicator (everyone first meets without spinning)."""
    sync(what)
    return tcomm().bcast(obj, root=0)


def on_root(fn: Callable[[], Any], what: str) -> Any:
    """Run ``fn`` on rank 0 only and give every rank its value; if it raised, every rank fails with
    the same message (so the ranks stay in step)."""
    comm = tcomm()
    payload = None
    if comm.Get_rank() == 0:
        try:
            payload = ("ok", fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised on every rank below
            payload = ("error", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    kind, value = bcast(payload, what)
    if kind == "error":
        pytest.fail(f"{what} failed on rank 0:\n{value}")
    return value


def root_reference(inp: Any, clean_env: bool = False) -> Any:
    """QCManyBody's own sequential result for ``inp``, computed on rank 0, given to every rank.
    ``clean_env``: run it without the launcher's variables (an Open MPI engine such as NWChem
    started from an MPICH rank dies otherwise)."""

    def compute() -> Any:
        from qcmanybody.v2 import ManyBodyComputer

        if clean_env:
            from qcmb_hpc.engine import clean_mpi_environment

            with clean_mpi_environment():
                return ManyBodyComputer.from_manybodyinput(inp)
        return ManyBodyComputer.from_manybodyinput(inp)

    return on_root(compute, "the QCManyBody reference")


def mpi_config(**kw: Any) -> dict:
    cfg = {"mode": "mpi", "imports": [TEST_ENGINES], "progress_reporting": False}
    cfg.update(kw)
    return cfg


def mpi_compute(inp: Any, **kw: Any):
    """``(result, computer)`` of an MPI-mode compute on every rank."""
    from qcmb_hpc import ParallelManyBodyComputer

    comp = ParallelManyBodyComputer(inp, parallel_config=mpi_config(**kw))
    return comp.compute(), comp


def rank() -> int:
    return tcomm().Get_rank()


def size() -> int:
    return tcomm().Get_size()


def gather(obj: Any, what: str = "gather") -> Optional[list]:
    """Every rank's ``obj`` on every rank (a list indexed by rank)."""
    sync(what)
    return tcomm().allgather(obj)


# ------------------------------------------------------------------------------------------------
# fixtures (imported into the test modules)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def ranks_in_step():
    """Every test ends with all ranks together (see the module docstring)."""
    yield
    sync("the end of a test")


@pytest.fixture
def shared_dir():
    """A fresh directory every rank sees (made by rank 0), removed after the test."""
    path = bcast(tempfile.mkdtemp(prefix="qcmb_mpi_test-") if rank() == 0 else None, "shared_dir")
    yield path
    sync("shared_dir cleanup")
    if rank() == 0:
        shutil.rmtree(path, ignore_errors=True)


def assert_everywhere_same(ref: Any, res: Any, exact: bool = True, atol: float = 1e-10) -> None:
    from conftest import assert_same_result

    assert_same_result(ref, res, exact=exact, atol=atol)
