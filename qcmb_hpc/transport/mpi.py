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

from ..backoff import wait_until
from ..launcher import foreign_launcher, launcher_size
from ..pool import WorkerPool
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
    "MpiPool",
    "workers_on_node",
]

TAG = 17
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


def quiet_barrier(comm: Any) -> None:
    """``comm.Barrier()`` without busy-waiting (a non-blocking barrier polled with a backoff)."""
    wait_until(comm.Ibarrier().Test, MAX_WAIT)


def quiet_bcast(comm: Any, obj: Any = None, root: int = 0) -> Any:
    """``comm.bcast`` without busy-waiting: everyone first meets in a non-blocking barrier, polled
    with a sleeping backoff (a rank may wait here for minutes while rank 0 plans or assembles)."""
    wait_until(comm.Ibarrier().Test, MAX_WAIT)
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
        def done() -> bool:
            self.reap()
            return not self.reqs

        return wait_until(done, MAX_WAIT, timeout)


class MpiWorkerEndpoint:
    """A worker rank's end. ``first``: the SETUP the rank received by broadcast, which
    :meth:`poll` hands the worker loop first (as every transport's first message)."""

    max_wait = MAX_WAIT

    def __init__(self, comm: Any, first: Optional[Message] = None):
        self.comm = comm
        self._sends = _Sends()
        self._first = first

    def send(self, msg: Message) -> None:
        self._sends.add(self.comm.isend(msg, dest=0, tag=TAG))

    def poll(self) -> Optional[Message]:
        if self._first is not None:
            msg, self._first = self._first, None
            return msg
        if self.comm.Iprobe(source=0, tag=TAG):
            return self.comm.recv(source=0, tag=TAG)
        return None

    def wait(self, timeout: float, also: Sequence[Any] = ()) -> None:
        if also:
            mp_wait(list(also), timeout)
        else:
            time.sleep(timeout)

    def inherited(self) -> List[Any]:
        return []

    def flush(self) -> None:
        self._sends.drain()


class MpiCoordinatorEndpoint:
    """Rank 0's end. ``n_workers`` ranks (1..n) work. :meth:`setup` broadcasts the run
    specification (a tree, not n sends) with the threads and memory the user did not fix left
    open (0 / None): each rank fits them to its own node."""

    max_wait = MAX_WAIT

    def __init__(self, comm: Any, n_workers: int, threads: Optional[int] = None, memory: Optional[int] = None):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm
        self.workers = list(range(n_workers))
        self._threads, self._memory = threads, memory
        self._sends = _Sends()
        self._status = MPI.Status()

    def setup(self, spec: Any) -> None:
        import dataclasses

        open_spec = dataclasses.replace(spec, threads_per_worker=self._threads or 0, memory_per_worker=self._memory)
        quiet_bcast(self.comm, ("SETUP", open_spec, len(self.workers)))

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


# ------------------------------------------------------------------------------------------------
# the pool
# ------------------------------------------------------------------------------------------------


def workers_on_node(node_ranks: List[int], n_workers: int) -> int:
    """Policy: how many of the world ranks on a node are worker ranks (ranks 1..``n_workers``;
    rank 0 coordinates and spare ranks only wait): they share the node's cores and memory."""
    return sum(1 for r in node_ranks if 1 <= r <= n_workers)


class MpiPool(WorkerPool):
    """MPI ranks: rank 0 coordinates, ranks 1..n work (worker id = rank − 1), spare ranks wait.
    Every rank enters the pool (it is SPMD); what each does, in order:

    1. ``__enter__`` (all ranks): meet without spinning (ranks may call ``compute()`` seconds
       apart), then work on a private duplicate of the world — this run's messages are never
       taken for the caller's own traffic on ``COMM_WORLD``, nor a previous run's — and count the
       ranks on each node (a shared-memory split: they share its cores and memory);
    2. rank 0 plans; its endpoint's ``setup`` broadcasts ``("SETUP", spec, n_workers)`` — or
       :meth:`share` broadcasts ``("ERROR", exc)`` for a bad input, which every rank raises;
    3. ranks 1..n fit the specification to their node and run the worker loop (:meth:`serve`);
       rank 0 coordinates;
    4. rank 0 assembles; :meth:`share` broadcasts ``("RESULT", (result, report))`` (the result
       v2: a v1 result does not pickle) or ``("ERROR", exc)``.

    An unexpected exception on any rank (:meth:`fail`) prints the rank and the error and calls
    ``MPI_Abort``: the job ends in seconds instead of hanging; the journal holds what finished.
    """

    mode = "mpi"

    def __init__(self, config: Any, world_comm: Any):
        super().__init__(config)
        self.world = world_comm
        self.comm: Any = None
        self.rank = world_comm.Get_rank()
        size = world_comm.Get_size()
        self.n_workers = min(size - 1, config.max_workers or size - 1)  # rank 0's count is every rank's
        self.coordinates = self.rank == 0
        self.node_ranks: List[int] = []

    def __enter__(self) -> "MpiPool":
        quiet_barrier(self.world)
        self.comm = self.world.Dup()
        self.node_ranks = _node_world_ranks(self.comm)
        self._share_node_configuration()
        return self

    def _share_node_configuration(self) -> None:
        """QCEngine's node description once per node: the first
        non-coordinating rank of each node computes it, the others there take it (a split
        communicator of the ranks ≥ 1 on each node; rank 0 coordinates and needs none).

        Every worker rank imports QCEngine before they meet again (the first rank's CPU
        description runs meanwhile in a subprocess): the import is most of a worker's start, and
        ranks that waited for the description before importing left the node's cores idle while
        it ran. (The split comes first: it is a blocking collective that rank 0 takes part in.)"""
        from mpi4py import MPI

        from ..engine import adopt_node_configuration, start_node_detection, warm_qcengine

        color = min(r for r in self.node_ranks if r >= 1) if any(r >= 1 for r in self.node_ranks) else 0
        sub = self.comm.Split(color if self.rank >= 1 else MPI.UNDEFINED, self.rank)
        if sub == MPI.COMM_NULL:
            return
        if sub.Get_rank() == 0:
            start_node_detection()
        import qcengine  # noqa: F401
        try:
            values = warm_qcengine() if sub.Get_rank() == 0 else None
            values = quiet_bcast(sub, values)
            if sub.Get_rank() != 0:
                adopt_node_configuration(values)
        finally:
            sub.Free()

    def close(self) -> None:
        super().close()
        if self.comm is not None:
            comm, self.comm = self.comm, None
            comm.Free()

    def layout(self, resources: Any, tasks: int) -> Any:
        return resources.rank_layout(max(1, workers_on_node(self.node_ranks, self.n_workers)))

    def describe(self, layout: Any) -> str:
        here = workers_on_node(self.node_ranks, self.n_workers)
        return f"mpi, {self.n_workers} worker ranks of {self.comm.Get_size()} ({here} on this node), {layout.describe()}"

    def start(self, spec: Any, layout: Any) -> MpiCoordinatorEndpoint:
        self.endpoint = MpiCoordinatorEndpoint(
            self.comm, self.n_workers, threads=self.config.threads_per_worker, memory=self.config.memory_per_worker_bytes
        )
        return self.endpoint

    def serve(self) -> None:
        import signal

        from ..engine import warm_qcengine
        from ..resources import ResourceManager
        from ..signals import handling
        from ..worker import Worker

        with handling(signal.SIG_IGN):  # the coordinator decides when to stop (launchers signal every rank)
            kind, *rest = self._bcast(None, f"rank {self.rank} receiving the run specification")
            if kind == "ERROR":
                self.told = rest[0]
                raise self.told
            spec, n_workers = rest
            if self.rank - 1 >= n_workers:
                return  # a spare rank: it waits for the result
            spec = ResourceManager(self.config).fit(spec, workers_on_node(self.node_ranks, n_workers))
            warm_qcengine()  # (computed once on this node and taken in __enter__: free here)
            endpoint = MpiWorkerEndpoint(self.comm, first=("SETUP", spec, self.rank - 1))
            Worker(endpoint).run()
            endpoint.flush()

    def share(self, result: Any = None, report: Any = None, error: Optional[BaseException] = None) -> Tuple[Any, Any]:
        if self.coordinates:
            self._bcast(("ERROR", error) if error is not None else ("RESULT", (result, report)), "sending the outcome")
            if error is not None:
                raise error
            return result, report
        kind, payload = self._bcast(None, f"rank {self.rank} waiting for the result")
        if kind == "ERROR":
            self.told = payload
            raise payload
        return payload

    def _bcast(self, msg: Any, where: str) -> Any:
        """A quiet broadcast from rank 0; if it fails (e.g. ``msg`` does not pickle) the other
        ranks would wait for ever, so the job is aborted instead."""
        try:
            return quiet_bcast(self.comm, msg)
        except BaseException as exc:
            self.fail(where, exc)
            raise

    def fail(self, where: str, exc: BaseException) -> None:  # pragma: no cover - ends the process
        """End the whole MPI job from this rank: one line for a user-fixable problem found on this
        rank only (e.g. its node's memory cannot hold its workers; exit 2), the traceback else."""
        import sys
        import traceback

        from ..errors import InputDataError

        comm = self.comm if self.comm is not None else self.world
        if isinstance(exc, InputDataError):
            sys.stderr.write(f"qcmb_hpc: error: rank {self.rank} ({where}): {exc}\n")
            sys.stderr.flush()
            comm.Abort(2)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write(f"qcmb_hpc: rank {self.rank} ({where}) failed; aborting the MPI job:\n{text}\n")
        sys.stderr.flush()
        comm.Abort(1)


def _node_world_ranks(comm: Any) -> List[int]:
    """The world ranks that share this rank's node (a shared-memory split) — collective."""
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return sorted(node.allgather(comm.Get_rank()))
    finally:
        node.Free()
