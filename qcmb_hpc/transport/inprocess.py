"""In-process transport: one worker living in the coordinator's own process (sequential mode).

No thread and no pipe: the coordinator's :meth:`InProcessTransport.recv` hands the worker its
messages and steps it once, so fragments run one at a time, in the caller's process (or in the
worker's isolated child), through exactly the same coordinator and worker loops as every other mode.
"""

from __future__ import annotations

import collections
from typing import Any, Deque, List, Optional, Sequence, Tuple

from . import SETUP, Message
from ..pool import WorkerPool
from ..worker import Worker

__all__ = ["InProcessTransport", "InProcessPool"]


class _WorkerSide:
    max_wait = 0.05

    def __init__(self) -> None:
        self.inbox: Deque[Message] = collections.deque()
        self.outbox: List[Message] = []

    def inherited(self) -> List[Any]:
        return []

    def flush(self) -> None:
        pass

    def send(self, msg: Message) -> None:
        self.outbox.append(msg)

    def poll(self) -> Optional[Message]:
        return self.inbox.popleft() if self.inbox else None

    def wait(self, timeout: float, also: Sequence[Any] = ()) -> None:
        if also:
            from multiprocessing.connection import wait

            wait(list(also), timeout)


class InProcessTransport:
    """Coordinator endpoint with a single in-process worker (id 0)."""

    max_wait = 0.05

    def __init__(self) -> None:
        self.workers = [0]
        self._side = _WorkerSide()
        self.worker = Worker(self._side)

    def setup(self, spec: Any) -> None:
        self.send(0, (SETUP, spec, 0))

    def send(self, worker: int, msg: Message) -> None:
        self._side.inbox.append(msg)

    def recv(self, timeout: float) -> List[Tuple[int, Message]]:
        if not self.worker.stopped:
            self.worker.step(timeout)
        out, self._side.outbox = self._side.outbox, []
        return [(0, m) for m in out]

    def close(self) -> None:
        if not self.worker.stopped:
            self.worker._cleanup()


class InProcessPool(WorkerPool):
    """One worker in this process (sequential mode): fragments one at a time, in the caller's
    process (or the worker's isolated child), through the same coordinator and worker loops."""

    mode = "sequential"

    def __enter__(self) -> "WorkerPool":
        from ..engine import start_node_detection

        start_node_detection()  # (while the input is read and planned; taken in start())
        return self

    def layout(self, resources: Any, tasks: int) -> Any:
        return resources.layout(sequential=True)

    def start(self, spec: Any, layout: Any) -> InProcessTransport:
        from ..engine import warm_qcengine

        warm_qcengine()  # once here: an isolated child forked from this process inherits it
        self.endpoint = InProcessTransport()
        return self.endpoint
