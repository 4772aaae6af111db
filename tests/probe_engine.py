"""``qcmb_probe``: the deterministic ``qcmb_test`` model that also reports where and how it ran.

Each ``AtomicResult.extras["probe"]`` holds what qcengine gave the engine (``ncores``, ``memory``,
``scratch_directory``) and what the process saw (pid, the thread variables, whether MPI/Slurm step
variables leaked in, whether the scratch directory existed and was writable, which process ran the
harness's ``warm()``: ``warmed_in``). Run an input with
``protocols={"cluster_results": "all"}`` and every fragment's probe comes back in
``ManyBodyResult.cluster_results``. The numbers are ``qcmb_test``'s, so the sequential reference is
computed with the same program in the test.

With ``PROBE_RENDEZVOUS=<directory>:<n>`` in the environment (not in the input, so the sequential
reference is unaffected), a fragment does not start computing until ``n`` different workers (told
apart by their scratch directories) have each started one — or 60 s have passed. Fragments of this
engine take milliseconds, so without it one quick worker could take every fragment before a slower
one is ready, and "every worker took part" would be a race.

Registered with qcengine on import: ``--import probe_engine`` (with ``tests/`` on ``PYTHONPATH``)
makes it available in every worker of every mode, under Slurm too.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import qcengine

from qcmb_hpc.testing.engines import TestHarness, _compute_model

__all__ = ["ProbeHarness", "PROBE_ENV"]

#: variables recorded as seen by the engine process (None when unset)
PROBE_ENV = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "SLURM_JOB_ID", "SLURM_PROCID",
    "SLURM_STEP_ID", "SLURM_STEPID", "PMI_RANK", "PMI_SIZE", "PMI_FD", "OMPI_COMM_WORLD_SIZE", "HYDRA_CONTROL_FD",
    "TMPDIR", "SLURM_TMPDIR",
)


def _rendezvous(scratch: Any, timeout: float = 60.0) -> None:
    spec = os.environ.get("PROBE_RENDEZVOUS")
    if not spec or not scratch:
        return
    directory, _, n = spec.rpartition(":")
    os.makedirs(directory, exist_ok=True)
    open(os.path.join(directory, os.path.basename(str(scratch).rstrip("/"))), "w").close()
    deadline = time.monotonic() + timeout
    while len(os.listdir(directory)) < int(n) and time.monotonic() < deadline:
        time.sleep(0.02)


#: the process that last ran :meth:`ProbeHarness.warm` (a child forked afterwards inherits it)
WARMED_IN = None


class ProbeHarness(TestHarness):
    _defaults = {**TestHarness._defaults, "name": "qcmb_probe"}

    def warm(self) -> None:
        global WARMED_IN
        WARMED_IN = os.getpid()

    def compute(self, input_model: Any, config: Any) -> Any:
        scratch = config.scratch_directory
        wrote = False
        if scratch and os.path.isdir(scratch):
            path = os.path.join(scratch, f"probe-{os.getpid()}.txt")
            with open(path, "w") as fh:
                fh.write("qcmb_probe\n")
            wrote = os.path.exists(path)
            os.remove(path)
        _rendezvous(scratch)
        result = _compute_model(input_model, config, self.name)
        probe = {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "host": socket.gethostname(),
            "ncores": config.ncores,
            "memory": config.memory,
            "scratch_directory": scratch,
            "scratch_writable": wrote,
            "env": {k: os.environ.get(k) for k in PROBE_ENV},
            "warmed_in": WARMED_IN,
        }
        return result.model_copy(update={"extras": {**result.extras, "probe": probe}})


if "qcmb_probe" not in qcengine.list_all_programs():
    qcengine.register_program(ProbeHarness())
