"""What started this process, read from the environment alone (never initialises MPI): an MPI
launcher (``mpiexec``/``mpirun`` of MPICH/Hydra or Open MPI, ``srun``) and a Slurm job step.
The one place these variables are interpreted — the mode choice, the layout, the command line's
"only rank 0 prints" and the MPI transport's world checks all ask here.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

__all__ = ["in_slurm_step", "launcher_size", "launcher_rank", "under_launcher", "foreign_launcher"]

#: SLURM_STEP_ID values that are not an srun step: the batch script, the extern step, an
#: interactive allocation, and Slurm's special step numbers for them (2^32 - 2, - 1, - 3)
_NOT_A_STEP = (None, "", "batch", "extern", "interactive", "4294967294", "4294967295", "4294967293")


def _env(environ: Optional[Mapping[str, str]]) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def in_slurm_step(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether this process is a task of an ``srun`` step (not the batch script itself)."""
    env = _env(environ)
    return env.get("SLURM_STEP_ID", env.get("SLURM_STEPID")) not in _NOT_A_STEP


def launcher_size(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """How many ranks the launcher that started this process says there are (None: no launcher)."""
    env = _env(environ)
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):  # Open MPI's mpiexec; Hydra and srun --mpi=pmi2
        if env.get(var, "").isdigit():
            return int(env[var])
    if in_slurm_step(env) and env.get("SLURM_STEP_NUM_TASKS", "").isdigit():
        return int(env["SLURM_STEP_NUM_TASKS"])  # an srun step (any --mpi plugin)
    return None


def launcher_rank(environ: Optional[Mapping[str, str]] = None) -> int:
    """This process's rank as the launcher says (0 without a launcher)."""
    env = _env(environ)
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if env.get(var, "").isdigit():
            return int(env[var])
    if in_slurm_step(env) and env.get("SLURM_PROCID", "").isdigit():
        return int(env["SLURM_PROCID"])
    return 0


def under_launcher(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether an MPI launcher (mpiexec, srun) started this process with more than one rank."""
    n = launcher_size(environ)
    return bool(n and n > 1)


def foreign_launcher(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The launcher, if it is one an MPICH-family library cannot talk to through PMI: Open MPI's
    ``mpiexec``/``mpirun`` or another PMIx-only launcher (``srun --mpi=pmix``, ``prterun``)."""
    env = _env(environ)
    if "OMPI_COMM_WORLD_SIZE" in env:
        return "Open MPI's mpiexec/mpirun"
    if "PMIX_RANK" in env and not any(v in env for v in ("PMI_FD", "PMI_PORT", "PMI_RANK")):
        return "a PMIx launcher (srun --mpi=pmix, prterun)"
    return None
