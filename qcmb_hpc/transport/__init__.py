"""How messages move between the coordinator and its workers.

The protocol is the same for every transport; only the pipes differ:

* :mod:`.inprocess` — one worker in the coordinator's own process (sequential mode): the
  coordinator's ``recv`` steps the worker.
* :mod:`.processes` — worker processes on this node over ``multiprocessing`` pipes.
* :mod:`.mpi` — MPI ranks over mpi4py point-to-point messages (rank 0 coordinates).
* :mod:`qcmb_hpc.simulate` — modelled workers on a fake clock, to predict behaviour at scale.

Messages are tuples whose first item is one of the kinds below.

coordinator → worker::

    (SETUP, RunSpec, worker_id)       once, first (MPI: broadcast)
    (TASKS, [(id, label), ...])       append to the worker's local FIFO queue
    (STEAL, [id, ...])                give these back if not started yet → RETURNED
    (STOP,)                           cut what runs, clean up, say BYE, leave

worker → coordinator::

    (READY, info)                     set up; info = {"pid", "host", "isolated", ...}
    (RESULTS, [FragmentOutcome, ...]) finished attempts, in the order they ran
    (RETURNED, [id, ...], [id, ...])  (ids given back, ids asked for but already started/finished)
    (BYE, stats)                      after STOP; stats = {"busy", "restarts", ...}
    (FAILED, text)                    the worker itself broke (not a fragment): text says where

A transport may also synthesise ``(LOST, text)`` for a worker whose process or pipe vanished, and
``(JOINED, info)`` for a worker it adds during the run (a replacement for a lost one: its id is
new, the coordinator counts it from then on, and its READY comes when it has connected).
"""

from __future__ import annotations

from typing import Any, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

SETUP = "SETUP"
TASKS = "TASKS"
STEAL = "STEAL"
STOP = "STOP"
READY = "READY"
RESULTS = "RESULTS"
RETURNED = "RETURNED"
BYE = "BYE"
FAILED = "FAILED"
LOST = "LOST"
JOINED = "JOINED"

Message = Tuple[Any, ...]


@runtime_checkable
class WorkerEndpoint(Protocol):
    """A worker's end of the transport: what :class:`~qcmb_hpc.worker.Worker` calls, and all it calls."""

    #: longest single wait; a worker never waits longer without looking for messages
    max_wait: float

    def send(self, msg: Message) -> None:
        """Send to the coordinator; never blocks for long (messages may be buffered)."""

    def poll(self) -> Optional[Message]:
        """The next message from the coordinator, or None; never blocks. (The first is SETUP.)"""

    def wait(self, timeout: float, also: Sequence[Any] = ()) -> None:
        """Block until a message may be there, one of ``also`` (connections) is ready, or timeout."""

    def inherited(self) -> List[Any]:
        """Connections a process forked from the worker must close (so that a dead worker's pipe
        reads as closed); [] if none."""

    def flush(self) -> None:
        """Deliver what ``send`` buffered (called once, when the worker leaves)."""


@runtime_checkable
class CoordinatorEndpoint(Protocol):
    """The coordinator's end of the transport: what :class:`~qcmb_hpc.coordinator.Coordinator`
    calls, and all it calls."""

    #: worker ids, 0..n-1 (a transport that adds workers during the run appends their ids and
    #: announces each with a JOINED message)
    workers: List[int]
    #: longest single wait of the coordinator between looks at the transport
    max_wait: float

    def setup(self, spec: Any) -> None:
        """Give every worker the run specification (each gets ``(SETUP, spec, worker_id)``)."""

    def send(self, worker: int, msg: Message) -> None:
        """Send to one worker; a worker that is gone is reported by ``recv`` as ``LOST``."""

    def recv(self, timeout: float) -> List[Tuple[int, Message]]:
        """All messages that arrived (waits up to ``timeout`` for the first one)."""

    def close(self) -> None:
        """Deliver what is still buffered; the transport's resources are released by its pool."""
