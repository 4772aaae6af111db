"""Parallelizing code you do not own: :func:`parallelize` and the QCEngine procedure ``qcmb_hpc``.

* ``with qcmb_hpc.parallelize(ParallelConfig(mode="multiprocessing")):`` makes every
  ``ManyBodyComputer`` reachable in ``qcmanybody`` (``qcmanybody.ManyBodyComputer``,
  ``qcmanybody.v1`` / ``qcmanybody.v2`` and their ``.computer`` modules) a parallel computer with
  that configuration, and puts QCManyBody's own classes back on exit. Code that looks the class up
  when it runs (``from qcmanybody import ManyBodyComputer`` inside a function, as QCManyBody's
  tests and QCEngine's procedure do) then runs in parallel; a name bound before the ``with``
  keeps the class it was bound to.
* ``qcengine.compute(many_body_input, "qcmb_hpc", task_config={"ncores": 8, "memory": 16})``
  runs the expansion in parallel on ``ncores`` cores (one worker per core, ``memory`` GiB
  shared among them), the way ``"qcmanybody"`` runs it sequentially. Registered when
  ``qcmb_hpc`` is imported.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Tuple

from .config import ParallelConfig, ParallelMode

# (the computer — QCManyBody's planning and assembly — is imported where it is used: this module
# is imported whenever QCEngine is, to register the procedure, also in worker processes)

__all__ = ["parallelize", "replaced_computers", "parallel_computer_class", "COMPUTER_LOCATIONS", "register_qcengine_procedure"]

#: every module attribute under which qcmanybody offers its ``ManyBodyComputer``
COMPUTER_LOCATIONS: Tuple[Tuple[str, str], ...] = (
    ("qcmanybody", "ManyBodyComputer"),
    ("qcmanybody.computer", "ManyBodyComputer"),
    ("qcmanybody.v1", "ManyBodyComputer"),
    ("qcmanybody.v1.computer", "ManyBodyComputer"),
    ("qcmanybody.v2", "ManyBodyComputer"),
    ("qcmanybody.v2.computer", "ManyBodyComputer"),
)


def parallel_computer_class(parallel_config: Any = None, progress_reporter: Any = None) -> type:
    """A subclass of :class:`ParallelManyBodyComputer` whose default configuration (used when a
    caller passes none, as code written for QCManyBody does) is ``parallel_config``."""
    from .computer import ParallelManyBodyComputer

    config = ParallelConfig.coerce(parallel_config)
    namespace = {
        "__module__": __name__,
        "__qualname__": "ParallelManyBodyComputer",
        "__annotations__": {"default_parallel_config": ClassVar[Any], "default_progress_reporter": ClassVar[Any]},
        "default_parallel_config": config,
        "default_progress_reporter": progress_reporter,
    }
    return type("ParallelManyBodyComputer", (ParallelManyBodyComputer,), namespace)


@contextlib.contextmanager
def replaced_computers(cls: type) -> Iterator[type]:
    """While active, ``cls`` is qcmanybody's ``ManyBodyComputer`` wherever qcmanybody offers one
    (:data:`COMPUTER_LOCATIONS`); the originals are back on exit, also after an exception."""
    saved: List[Tuple[Any, str, Any]] = []
    try:
        for module_name, attr in COMPUTER_LOCATIONS:
            try:
                module = importlib.import_module(module_name)
            except ImportError:  # e.g. no pydantic.v1 (Python 3.14): no v1 computer to replace
                continue
            if hasattr(module, attr):
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, cls)
        yield cls
    finally:
        for module, attr, original in reversed(saved):
            setattr(module, attr, original)


def parallelize(parallel_config: Any = None, progress_reporter: Any = None) -> "contextlib.AbstractContextManager[type]":
    """A context manager: while active, every ``ManyBodyComputer`` of qcmanybody is a parallel
    computer with ``parallel_config`` (a :class:`ParallelConfig`, a dict, or None: multiprocessing
    on every core) and ``progress_reporter``. Yields the class."""
    if parallel_config is None:
        parallel_config = ParallelConfig(mode=ParallelMode.MULTIPROCESSING)
    return replaced_computers(parallel_computer_class(parallel_config, progress_reporter))


# ------------------------------------------------------------------------------------------------
# the QCEngine procedure
# ------------------------------------------------------------------------------------------------


def config_from_task_config(task_config: Any) -> ParallelConfig:
    """QCEngine's per-task resources → a parallel configuration: one worker per core of
    ``ncores``; ``memory`` (GiB, for the whole task, the workers' own processes included) shared
    among them — or, when it is more than this node can give (QCEngine fills in most of the
    node's memory when the caller sets none), the equal share of what it can give; workers'
    scratch under ``scratch_directory``. Without a launcher multiprocessing, under mpiexec/srun MPI."""
    from .resources import MEMORY_SAFETY, WORKER_OVERHEAD, detect_node

    ncores = int(getattr(task_config, "ncores", 0) or 0) or None
    memory = getattr(task_config, "memory", None)
    values: Dict[str, Any] = {"mode": ParallelMode.ADAPTIVE, "progress_reporting": False, "max_workers": ncores}
    if memory and ncores:
        total = int(float(memory) * 1024**3)
        if total < int(detect_node().memory * MEMORY_SAFETY):
            values["memory_limit_per_worker"] = max(1, total // ncores - WORKER_OVERHEAD)
    scratch = getattr(task_config, "scratch_directory", None)
    if scratch:
        values["scratch_directory"] = scratch
    return ParallelConfig(**values)


_procedure_class: Optional[type] = None


def register_qcengine_procedure() -> None:
    """Register the ``qcmb_hpc`` procedure with QCEngine (once; a no-op if QCEngine already has
    a procedure of that name)."""
    global _procedure_class
    from qcengine.procedures.base import list_all_procedures, register_procedure
    from qcengine.procedures.qcmanybody import QCManyBodyProcedure

    if "qcmb_hpc" in list_all_procedures():
        return

    class ParallelManyBodyProcedure(QCManyBodyProcedure):
        """QCEngine's QCManyBody procedure with the fragments run in parallel by qcmb_hpc."""

        _defaults: ClassVar[Dict[str, Any]] = {"name": "qcmb_hpc", "procedure": "manybody"}

        def compute(self, input_model: Any, config: Any) -> Any:
            from .computer import ParallelManyBodyComputer

            comp = ParallelManyBodyComputer(input_model, parallel_config=config_from_task_config(config))
            return comp.compute()

    _procedure_class = ParallelManyBodyProcedure
    register_procedure(ParallelManyBodyProcedure())
