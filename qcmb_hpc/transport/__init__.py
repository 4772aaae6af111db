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

A transport may also synthesise ``(LOST, text)`` for a worker whose process or pipe vanished.
"""

from __future__ import annotations

from typing import Any, List, Optional, Protocol, Sequence, Tuple

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

Message = Tuple[Any, ...]


class WorkerEndpoint(Protocol):
    """A worker's end of the transport."""

    #: longest single wait; a worker never waits longer without looking for messages
    max_wait: float

    def send(self, msg: Message) -> None: ...

    def poll(self) -> Optional[Message]:
        """The next message from the coordinator, or None; never blocks."""

    def wait(self, timeout: float, also: Sequence[Any] = ()) -> None:
        """Block until a message may be there, one of ``also`` (connections) is ready, or timeout."""


class CoordinatorEndpoint(Protocol):
    """The coordinator's end of the transport."""

    #: worker ids, 0..n-1
    workers: List[int]

    def send(self, worker: int, msg: Message) -> None: ...

    def recv(self, timeout: float) -> List[Tuple[int, Message]]:
        """All messages that arrived (waits up to ``timeout`` for the first one)."""

    def close(self) -> None: ...
