"""qcmb_hpc: QCManyBody's many-body expansion, run in parallel — all cores of one node, or many
MPI ranks under Slurm — with exactly QCManyBody's result."""

from .computer import ParallelManyBodyComputer
from .dropin import parallelize, register_qcengine_procedure
from .config import LoadBalanceStrategy, ParallelConfig, ParallelMode
from .errors import FragmentExecutionError, IncompleteRunError, InputDataError, ParallelExecutionError
from .progress import ConsoleProgressReporter, FileProgressReporter, ProgressReporter

__version__ = "0.1.0"

register_qcengine_procedure()  # qcengine.compute(many_body_input, "qcmb_hpc", task_config=...)

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
