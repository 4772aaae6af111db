"""Multiprocessing transport: worker processes on this node, one duplex pipe each.

Workers are forked once, after planning, from a parent that has already imported qcengine and
warmed its node configuration (engine.cpu_description, once), with the garbage collector's heap
frozen so children do not copy it. Each worker then serves every task of the run (warm, never one
process per fragment). Both ends of the pipes are :mod:`.connections`' (the coordinator waits on every pipe at once and
sleeps until a message arrives; a worker whose process dies turns into a ``LOST`` message saying
how it died).
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
from typing import Any, Dict, List

from .connections import ConnectionEndpoint, ConnectionTransport
from ..gcpause import frozen
from ..pool import WorkerPool

logger = logging.getLogger(__name__)

__all__ = ["ProcessTransport", "ProcessPool", "TransportStartError"]


class TransportStartError(RuntimeError):
    """The worker processes could not be started."""


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
        Worker(ConnectionEndpoint(conn)).run()
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


class ProcessTransport(ConnectionTransport):
    """Coordinator endpoint over ``n`` forked worker processes."""

    def __init__(self, n: int):
        super().__init__(n)
        self._ctx = multiprocessing.get_context("fork")
        self._procs: Dict[int, Any] = {}
        gc.collect()
        try:
            with frozen():
                for w in self.workers:
                    parent, child = self._ctx.Pipe(duplex=True)
                    # the child closes every coordinator-side end it inherits (its own and earlier
                    # workers'), so a dead worker's pipe reads as EOF at once
                    others = list(self._conns.values()) + [parent]
                    proc = self._ctx.Process(target=_worker_main, args=(child, others), name=f"qcmb-worker-{w}")
                    proc.start()
                    child.close()
                    self.attach(w, parent)
                    self._procs[w] = proc
        except Exception as exc:
            self.close()
            raise TransportStartError(f"could not start {n} worker processes: {exc}") from exc

    def death(self, w: int) -> str:
        proc = self._procs[w]
        proc.join(1.0)
        code = proc.exitcode
        if code is None:
            return f"pipe to worker process {proc.pid} broke"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"worker process {proc.pid} was killed by {signal.Signals(-code).name}"
        return f"worker process {proc.pid} exited with code {code}"

    def close(self, timeout: float = 10.0) -> None:
        super().close()
        for proc in self._procs.values():
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(2)


class ProcessPool(WorkerPool):
    """Worker processes on this node (multiprocessing mode), forked once each and kept warm."""

    mode = "multiprocessing"

    def __enter__(self) -> "WorkerPool":
        from ..engine import start_node_detection

        start_node_detection()  # (while the input is read and planned; taken in start())
        return self
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
