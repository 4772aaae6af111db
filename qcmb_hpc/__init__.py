"""qcmb_hpc: QCManyBody's many-body expansion, run in parallel — all cores of one node, or many
MPI ranks under Slurm — with exactly QCManyBody's result."""

from .computer import ParallelManyBodyComputer
from .dropin import parallelize
from .config import LoadBalanceStrategy, ParallelConfig, ParallelMode
from .errors import FragmentExecutionError, IncompleteRunError, InputDataError, ParallelExecutionError
from .progress import ConsoleProgressReporter, FileProgressReporter, ProgressReporter
from .engines import install as _install_engines

_install_engines()  # the `pyscf` harness and the `qcmb_hpc` procedure, in every process that imports qcmb_hpc

__version__ = "0.1.0"

__all__ = [
    "ParallelManyBodyComputer",
    "parallelize",
    "ParallelConfig",
    "ParallelMode",
    "LoadBalanceStrategy",
    "ParallelExecutionError",
    "FragmentExecutionError",
    "IncompleteRunError",
    "InputDataError",
    "ProgressReporter",
    "ConsoleProgressReporter",
    "FileProgressReporter",
]
