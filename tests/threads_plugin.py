"""A complete executor plugin, defined outside qcmb_hpc (the README's example): the workers are
threads of the calling process, each running its fragments in its own child process (isolation on,
so the GIL is not in the way), talking to the coordinator over queues.

    import qcmb_hpc, threads_plugin
    qcmb_hpc.register_plugin(threads_plugin.ThreadsPlugin)     # or an entry point in a package
    ParallelManyBodyComputer(inp, parallel_config={"mode": "threads", "max_workers": 4}).compute()

What a plugin provides: a ``ParallelExecutionPlugin`` with a ``name`` whose ``create_executor``
gives a ``WorkerPool``; the pool's ``start`` starts the workers — here ``qcmb_hpc.worker.Worker``
loops — and returns the coordinator's endpoint; ``close`` shuts them down. Retries, stealing,
the journal, progress and the result are the driver's, as for every mode.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from multiprocessing.connection import wait as wait_for
from typing import Any, List, Optional, Sequence, Tuple

from qcmb_hpc import ParallelExecutionPlugin, WorkerPool
from qcmb_hpc.transport import SETUP, Message
from qcmb_hpc.worker import Worker


class _WorkerEnd:
    """A worker's end: its own inbox, and the queue every worker answers into."""

    max_wait = 0.05

    def __init__(self, wid: int, inbox: "queue.Queue", answers: "queue.Queue"):
        self.wid, self.inbox, self.answers = wid, inbox, answers

    def send(self, msg: Message) -> None:
        self.answers.put((self.wid, msg))

    def poll(self) -> Optional[Message]:
        try:
            return self.inbox.get_nowait()
        except queue.Empty:
            return None

    def wait(self, timeout: float, also: Sequence[Any] = ()) -> None:
        if also:  # a fragment is running in the child: its pipe wakes us, the inbox is looked at after
            wait_for(list(also), timeout)
        else:
            with self.inbox.not_empty:  # (the queue's own lock and condition: no message slips by)
                if not self.inbox.queue:
                    self.inbox.not_empty.wait(timeout)

    def inherited(self) -> List[Any]:
        return []

    def flush(self) -> None:
        pass


class _CoordinatorEnd:
    """The coordinator's end: one inbox per worker, one queue for every answer."""

    max_wait = 0.05

    def __init__(self, n: int):
        self.workers = list(range(n))
        self.answers: "queue.Queue" = queue.Queue()
        self.inboxes = [queue.Queue() for _ in self.workers]
        self.threads = [
            threading.Thread(target=Worker(_WorkerEnd(w, self.inboxes[w], self.answers)).run, name=f"qcmb-thread-{w}", daemon=True)
            for w in self.workers
        ]
        for t in self.threads:
            t.start()

    def setup(self, spec: Any) -> None:
        # fragments in a child process each worker owns, whatever the setting: threads running
        # fragments inline would share one interpreter lock (and a crash would take them all)
        spec = dataclasses.replace(spec, isolate=True)
        for w in self.workers:
            self.send(w, (SETUP, spec, w))

    def send(self, worker: int, msg: Message) -> None:
        self.inboxes[worker].put(msg)

    def recv(self, timeout: float) -> List[Tuple[int, Message]]:
        out = []
        try:
            out.append(self.answers.get(timeout=timeout) if timeout > 0 else self.answers.get_nowait())
            while True:
                out.append(self.answers.get_nowait())
        except queue.Empty:
            return out

    def close(self) -> None:
        for t in self.threads:  # they leave after STOP (the coordinator sends it)
            t.join(10)


class ThreadsPool(WorkerPool):
    mode = "threads"

    def start(self, spec: Any, layout: Any) -> _CoordinatorEnd:
        self.endpoint = _CoordinatorEnd(layout.workers)
        return self.endpoint


class ThreadsPlugin(ParallelExecutionPlugin):
    name = "threads"
    description = "worker threads in this process, each with its own child process for fragments"

    def create_executor(self, config: Any) -> ThreadsPool:
        return ThreadsPool(config)
