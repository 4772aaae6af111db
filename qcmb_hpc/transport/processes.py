"""Multiprocessing transport: worker processes on this node, one duplex pipe each.

Workers are forked once, after planning, from a parent that has already imported qcengine and
warmed its node configuration (the ~1.3 s py-cpuinfo call), with the garbage collector's heap
frozen so children do not copy it. Each worker then serves every task of the run (warm, never one
process per fragment). The coordinator waits on all pipes at once (``multiprocessing.connection.wait``),
so it sleeps until a message arrives; a worker whose process dies turns into a ``LOST`` message.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import sys
import traceback
from multiprocessing.connection import wait as mp_wait
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import LOST, READY, SETUP, Message
from ..pool import WorkerPool

logger = logging.getLogger(__name__)

__all__ = ["ProcessTransport", "ProcessPool", "TransportStartError"]


class TransportStartError(RuntimeError):
    """The worker processes could not be started."""


class _PipeEndpoint:
    """A worker's end: its pipe to the coordinator."""

    max_wait = 1.0  # waits are event-driven: a message wakes the worker at once

    def __init__(self, conn: Any):
        self.conn = conn

    def inherited(self) -> List[Any]:
        """Connections a forked grandchild must close (so this pipe reads EOF when we die)."""
        return [self.conn]

    def flush(self) -> None:
        pass

    def send(self, msg: Message) -> None:
        self.conn.send(msg)

    def poll(self) -> Optional[Message]:
        if self.conn.poll():
            return self.conn.recv()
        return None

    def wait(self, timeout: float, also: Sequence[Any] = ()) -> None:
        mp_wait([self.conn, *also], timeout)


def _worker_main(conn: Any, parent_conns: List[Any]) -> None:  # pragma: no cover - runs in the child
    from ..worker import Worker

    for c in parent_conns:  # the coordinator's ends, inherited through fork: not ours
        with contextlib.suppress(Exception):
            c.close()
    # Ctrl-C reaches the whole process group, Slurm signals every process of the step: the
    # coordinator decides, workers wait for its STOP (or leave when its pipe closes).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    code = 0
    try:
        Worker(_PipeEndpoint(conn)).run()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        code = 0  # the coordinator went away: nothing left to do
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ProcessTransport:
    """Coordinator endpoint over ``n`` forked worker processes."""

    max_wait = 1.0

    def __init__(self, n: int):
        if n < 1:
            raise ValueError("need at least one worker")
        self.workers = list(range(n))
        self._ctx = multiprocessing.get_context("fork")
        self._conns: Dict[int, Any] = {}
        self._procs: Dict[int, Any] = {}
        self._gone: set = set()
        self.ready: Dict[int, Dict[str, Any]] = {}  #: worker → its READY info (where its scratch is)
        gc.collect()
        gc.freeze()
        try:
            for w in self.workers:
                parent, child = self._ctx.Pipe(duplex=True)
                # the child closes every coordinator-side end it inherits (its own and earlier
                # workers'), so a dead worker's pipe reads as EOF at once
                others = list(self._conns.values()) + [parent]
                proc = self._ctx.Process(target=_worker_main, args=(child, others), name=f"qcmb-worker-{w}")
                proc.start()
                child.close()
                self._conns[w] = parent
                self._procs[w] = proc
        except Exception as exc:
            self.close()
            raise TransportStartError(f"could not start {n} worker processes: {exc}") from exc
        finally:
            gc.unfreeze()
        self._by_conn = {c: w for w, c in self._conns.items()}

    def setup(self, spec: Any) -> None:
        for w in self.workers:
            self.send(w, (SETUP, spec, w))

    def send(self, worker: int, msg: Message) -> None:
        if worker in self._gone:
            return
        try:
            self._conns[worker].send(msg)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._gone.add(worker)  # recv reports it as LOST

    def recv(self, timeout: float) -> List[Tuple[int, Message]]:
        live = [c for w, c in self._conns.items() if w not in self._gone]
        out: List[Tuple[int, Message]] = []
        lost = [w for w in self._gone if w in self._conns]
        for w in lost:
            out.append((w, (LOST, self._death(w))))
            self._forget(w)
        if out:
            return out
        if not live:
            return out
        for conn in mp_wait(live, timeout):
            w = self._by_conn[conn]
            try:
                while conn.poll():
                    msg = conn.recv()
                    if msg[0] == READY:
                        self.ready[w] = msg[1]
                    out.append((w, msg))
            except (EOFError, OSError):
                out.append((w, (LOST, self._death(w))))
                self._forget(w)
        return out

    def _death(self, w: int) -> str:
        proc = self._procs[w]
        proc.join(1.0)
        code = proc.exitcode
        if code is None:
            return f"pipe to worker process {proc.pid} broke"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"worker process {proc.pid} was killed by {signal.Signals(-code).name}"
        return f"worker process {proc.pid} exited with code {code}"

    def _forget(self, w: int) -> None:
        conn = self._conns.pop(w, None)
        self._gone.discard(w)
        if conn is not None:
            self._by_conn.pop(conn, None)
            with contextlib.suppress(Exception):
                conn.close()

    def close(self, timeout: float = 10.0) -> None:
        for w, conn in list(self._conns.items()):
            with contextlib.suppress(Exception):
                conn.close()
        for proc in self._procs.values():
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        self._conns.clear()


class ProcessPool(WorkerPool):
    """Worker processes on this node (multiprocessing mode), forked once each and kept warm."""

    mode = "multiprocessing"
    can_fall_back = True
    survives_worker_loss = True

    def start(self, spec: Any, layout: Any) -> ProcessTransport:
        from ..engine import warm_qcengine

        warm_qcengine()  # once, in the parent: the workers (and their children) are forked warm
        self.endpoint = ProcessTransport(layout.workers)
        return self.endpoint

    def close(self) -> None:
        endpoint = self.endpoint
        super().close()
        if endpoint is not None and not self.config.keep_scratch:
            from ..worker import remove_scratch

            remove_scratch(endpoint.ready.values())  # a killed worker could not remove its own
