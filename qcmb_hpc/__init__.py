"""qcmb_hpc: QCManyBody's many-body expansion, run in parallel — all cores of one node, or many
MPI ranks under Slurm — with exactly QCManyBody's result.

The public names (and their homes): :class:`ParallelManyBodyComputer` (computer), the settings
:class:`ParallelConfig`, :class:`ParallelMode`, :class:`LoadBalanceStrategy` (config), progress
reporters (progress), errors (errors), :func:`parallelize` (dropin); the design document's
building blocks :class:`ParallelExecutionPlugin` and :func:`register_plugin` (plugins),
:class:`WorkerPool` (pool), :class:`ResourceManager` (resources), :class:`TaskDistributor`
(schedule), :class:`FragmentExecutor` and :class:`QCEngineAdapter` (engine),
:class:`MLLoadBalancer` (cost), :class:`ParallelTestSuite` and :class:`BenchmarkResult`
(testing.suite). ``docs/architecture.md`` is the map. Each module is imported when one of its
names is first used, so ``import qcmb_hpc`` costs little (a worker needs only what runs fragments).
"""

import importlib
from typing import Any

from .engines import install as _install_engines

_install_engines()  # the `pyscf` harness and the `qcmb_hpc` procedure, in every process that imports qcmb_hpc

__version__ = "0.1.0"

#: public name → the module that defines it
_HOMES = {
    "ParallelManyBodyComputer": "computer",
    "parallelize": "dropin",
    "ParallelConfig": "config",
    "ParallelMode": "config",
    "LoadBalanceStrategy": "config",
    "ParallelExecutionError": "errors",
    "FragmentExecutionError": "errors",
    "IncompleteRunError": "errors",
    "InputDataError": "errors",
    "ProgressReporter": "progress",
    "ConsoleProgressReporter": "progress",
    "FileProgressReporter": "progress",
    "ParallelExecutionPlugin": "plugins",
    "register_plugin": "plugins",
    "WorkerPool": "pool",
    "ResourceManager": "resources",
    "TaskDistributor": "schedule",
    "FragmentExecutor": "engine",
    "QCEngineAdapter": "engine",
    "MLLoadBalancer": "cost",
    "ParallelTestSuite": "testing.suite",
    "BenchmarkResult": "testing.suite",
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'qcmb_hpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_HOMES))
