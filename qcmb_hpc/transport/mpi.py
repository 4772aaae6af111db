"""MPI transport: rank 0 coordinates, ranks 1..N-1 work (worker id = rank − 1).

* Work messages are pickled tuples sent with non-blocking ``isend`` on one tag (so two large
  messages crossing each other can never deadlock) and received after ``Iprobe``.
* Nobody spins: an idle rank probes, then sleeps with a backoff (10 µs doubling to
  :data:`MAX_WAIT`) — MPICH's blocking receive busy-polls a whole core. A worker running a fragment
  sleeps on its runner's pipe instead, so a finished fragment wakes it at once.
* The run specification and the final result are broadcast (a tree, not N sends) by
  :func:`quiet_bcast`: ranks wait in a non-blocking barrier with the same backoff, then ``bcast``.
* :func:`check_world` refuses a world that does not match the launcher (a launcher from another
  MPI gives N one-rank worlds that would each run the whole job); :func:`check_library` refuses,
  before ``MPI_Init``, a launcher the library cannot talk to at all (MPICH under Open MPI's
  ``mpiexec``: its ``MPI_Init`` would abort with a message that does not say what to do).
"""

from __future__ import annotations

import os
import time
from multiprocessing.connection import wait as mp_wait
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from . import Message

__all__ = [
    "MAX_WAIT",
    "TAG",
    "world",
    "launcher_size",
    "check_world",
    "foreign_launcher",
    "check_library",
    "quiet_barrier",
    "quiet_bcast",
    "MpiWorkerEndpoint",
    "MpiCoordinatorEndpoint",
]

TAG = 17
MIN_WAIT = 1e-5
MAX_WAIT = 1e-3


def world() -> Any:
    """``MPI.COMM_WORLD`` (imports mpi4py, which initialises MPI).

    Started by a launcher the MPI library may not speak to (Open MPI's ``mpiexec`` or a PMIx
    launcher), MPI is initialised only after :func:`check_library` has looked at the library: an
    MPICH ``MPI_Init`` under Open MPI's ``mpiexec`` aborts the process with a message that does not
    say what to do."""
    import sys

    import mpi4py

    mpi4py.rc.threads = False  # no MPI threading: MPI calls come from the main thread only
    if "mpi4py.MPI" not in sys.modules and foreign_launcher() is not None:
        mpi4py.rc.initialize = False  # look before MPI_Init ...
        mpi4py.rc.finalize = True  # ... and still finalize at exit once initialised here
    from mpi4py import MPI

    if not MPI.Is_initialized() and not MPI.Is_finalized():
        check_library(MPI.Get_library_version())
        MPI.Init()
    return MPI.COMM_WORLD


def foreign_launcher(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The launcher, if it is one an MPICH-family library cannot talk to through PMI: Open MPI's
    ``mpiexec``/``mpirun`` or another PMIx-only launcher (``srun --mpi=pmix``, ``prterun``)."""
    environ = os.environ if environ is None else environ
    if "OMPI_COMM_WORLD_SIZE" in environ:
        return "Open MPI's mpiexec/mpirun"
    if "PMIX_RANK" in environ and not any(v in environ for v in ("PMI_FD", "PMI_PORT", "PMI_RANK")):
        return "a PMIx launcher (srun --mpi=pmix, prterun)"
    return None


def check_library(library_version: str, environ: Optional[Mapping[str, str]] = None) -> None:
    """Refuse, before ``MPI_Init``, an MPICH library built without PMIx (as the ``mpich`` wheel is)
    under a launcher that only speaks PMIx (see :func:`foreign_launcher`). Anything else (Open MPI,
    Intel MPI, MVAPICH, an MPICH configured with PMIx) is left to :func:`check_world`."""
    launcher = foreign_launcher(environ)
    if launcher is None:
        return
    text = library_version or ""
    if not text.lstrip().startswith("MPICH Version") or "pmix" in text.lower():
        return
    import sys

    from ..errors import ParallelExecutionError

    n = launcher_size(environ)
    first = " ".join(text.strip().splitlines()[0].split())
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    hint = f"{local}" if os.path.exists(local) else "the mpiexec of that MPI (e.g. the one the `mpich` wheel installs)"
    raise ParallelExecutionError(
        f"this process was started by {launcher}{f' with {n} ranks' if n else ''}, but mpi4py uses "
        f"{first!r}, which cannot talk to that launcher (its MPI_Init would abort): the mpiexec/srun in use "
        f"does not match the MPI mpi4py was built with; launch with {hint}, or `srun --mpi=pmi2` under Slurm"
    )


def launcher_size(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """How many ranks the launcher that started this process says there are (None: no launcher)."""
    environ = os.environ if environ is None else environ
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):  # Open MPI's mpiexec; Hydra and srun --mpi=pmi2
        if environ.get(var, "").isdigit():
            return int(environ[var])
    step = environ.get("SLURM_STEP_ID")
    if step not in (None, "", "batch", "extern", "4294967294", "4294967295") and environ.get("SLURM_STEP_NUM_TASKS", "").isdigit():
        return int(environ["SLURM_STEP_NUM_TASKS"])  # an srun step (any --mpi plugin)
    return None


def under_launcher(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether an MPI launcher (mpiexec, srun) started this process with more than one rank."""
    n = launcher_size(environ)
    return bool(n and n > 1)


def check_world(comm: Any, environ: Optional[Mapping[str, str]] = None) -> None:
    """Fail loudly when the launcher started N ranks but MPI sees a world of one."""
    n = launcher_size(environ)
    if n and n > 1 and comm.Get_size() == 1:
        from ..errors import ParallelExecutionError

        raise ParallelExecutionError(
            f"the launcher started {n} ranks but MPI sees a world of 1: the mpiexec/srun in use does not "
            "match the MPI mpi4py was built with (use the mpiexec of that MPI, e.g. the one the `mpich` "
            "wheel puts in your environment, or `srun --mpi=pmi2`); otherwise every rank would run the whole job"
        )


def _backoff_wait(test: Any) -> None:
    wait = MIN_WAIT
    while not test():
        time.sleep(wait)
        wait = min(wait * 2, MAX_WAIT)


def quiet_barrier(comm: Any) -> None:
    """``comm.Barrier()`` without busy-waiting (a non-blocking barrier polled with a backoff)."""
    _backoff_wait(comm.Ibarrier().Test)


def quiet_bcast(comm: Any, obj: Any = None, root: int = 0) -> Any:
    """``comm.bcast`` without busy-waiting: everyone first meets in a non-blocking barrier, polled
    with a sleeping backoff (a rank may wait here for minutes while rank 0 plans or assembles)."""
    req = comm.Ibarrier()
    _backoff_wait(req.Test)
    return comm.bcast(obj, root=root)


class _Sends:
    """Outstanding non-blocking sends (kept until complete, so their buffers stay alive)."""

    def __init__(self) -> None:
        self.reqs: List[Any] = []

    def add(self, req: Any) -> None:
        self.reqs.append(req)
        if len(self.reqs) > 16:
            self.reap()

    def reap(self) -> None:
        self.reqs = [r for r in self.reqs if not r.Test()]

    def drain(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        wait = MIN_WAIT
        while self.reqs and time.monotonic() < deadline:
            self.reap()
            if self.reqs:
                time.sleep(wait)
                wait = min(wait * 2, MAX_WAIT)
        return not self.reqs


class MpiWorkerEndpoint:
    """A worker rank's end."""

    max_wait = MAX_WAIT

    def __init__(self, comm: Any):
        self.comm = comm
        self._sends = _Sends()

    def send(self, msg: Message) -> None:
        self._sends.add(self.comm.isend(msg, dest=0, tag=TAG))

    def poll(self) -> Optional[Message]:
        if self.comm.Iprobe(source=0, tag=TAG):
            return self.comm.recv(source=0, tag=TAG)
        return None

    def wait(self, timeout: float, also: Sequence[Any] = ()) -> None:
        if also:
            mp_wait(list(also), timeout)
        else:
            time.sleep(timeout)

    def flush(self) -> None:
        self._sends.drain()


class MpiCoordinatorEndpoint:
    """Rank 0's end. ``n_workers`` ranks (1..n) work; the run specification has already been
    broadcast by the caller, so :meth:`setup` sends nothing."""

    max_wait = MAX_WAIT

    def __init__(self, comm: Any, n_workers: int):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self.workers = list(range(n_workers))
        self._sends = _Sends()
        self._status = MPI.Status()

    def setup(self, spec: Any) -> None:
        return None

    def send(self, worker: int, msg: Message) -> None:
        self._sends.add(self.comm.isend(msg, dest=worker + 1, tag=TAG))

    def _drain(self) -> List[Tuple[int, Message]]:
        out = []
        st = self._status
        while self.comm.Iprobe(source=self._MPI.ANY_SOURCE, tag=TAG, status=st):
            src = st.Get_source()
            out.append((src - 1, self.comm.recv(source=src, tag=TAG)))
        return out

    def recv(self, timeout: float) -> List[Tuple[int, Message]]:
        out = self._drain()
        if out or timeout <= 0:
            return out
        time.sleep(timeout)
        return self._drain()

    def close(self) -> None:
        self._sends.drain()
