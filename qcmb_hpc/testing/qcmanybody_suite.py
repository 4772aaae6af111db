"""A pytest plugin that runs QCManyBody's own test suite with qcmb_hpc standing in for every
``ManyBodyComputer`` the suite can reach (``qcmanybody.ManyBodyComputer``, ``qcmanybody.v1`` and
``qcmanybody.v2``, and their ``.computer`` modules)::

    pytest --pyargs qcmanybody -p qcmb_hpc.testing.qcmanybody_suite
    mpiexec -n 3 python -m pytest --pyargs qcmanybody -p qcmb_hpc.testing.qcmanybody_suite   # MPI mode

The parallel configuration comes from the ``QCMB_*`` environment variables on top of
multiprocessing with 2 workers (under an MPI launcher: MPI mode). Every computer the suite builds
is counted; at the end the plugin prints the count and, if ``QCMB_SUITE_COUNT_FILE`` is set,
writes it there (rank 0), so a caller can check that runs really went through qcmb_hpc.
"""

from __future__ import annotations

import os
from typing import Any, Dict

import pytest

from ..config import config_from_environment
from ..dropin import parallel_computer_class, replaced_computers

#: computers built and fragment runs done through qcmb_hpc in this session
COUNTS: Dict[str, int] = {"computers": 0, "runs": 0}


def _config() -> Any:
    from ..launcher import under_launcher

    base = {"mode": "mpi" if under_launcher() else "multiprocessing", "max_workers": 2, "progress_reporting": False}
    if base["mode"] == "mpi":
        base.pop("max_workers")
    return config_from_environment(base=base)


def _counting_class() -> type:
    parent = parallel_computer_class(_config())

    class CountingParallelManyBodyComputer(parent):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            COUNTS["computers"] += 1

        def compute(self, *args: Any, **kwargs: Any) -> Any:
            COUNTS["runs"] += 1
            return super().compute(*args, **kwargs)

    CountingParallelManyBodyComputer.__name__ = "ParallelManyBodyComputer"
    return CountingParallelManyBodyComputer


_active: Any = None


def pytest_configure(config: pytest.Config) -> None:
    global _active
    _active = replaced_computers(_counting_class())
    _active.__enter__()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _active
    if _active is not None:
        _active.__exit__(None, None, None)
        _active = None
    path = os.environ.get("QCMB_SUITE_COUNT_FILE")
    if path and _rank() == 0:
        import json

        with open(path, "w") as fh:
            json.dump(COUNTS, fh)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(
        f"qcmb_hpc: {COUNTS['computers']} computers built and {COUNTS['runs']} expansions run through "
        "ParallelManyBodyComputer"
    )


def _rank() -> int:
    import sys

    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return mpi.COMM_WORLD.Get_rank()
    return 0
