"""Transports over ``multiprocessing.connection.Connection`` objects — one duplex connection per
worker, whether a pipe to a forked process (:mod:`.processes`) or a TCP socket to a worker that
connected from elsewhere (:mod:`.sockets`). Both ends are written once, here:

* :class:`ConnectionEndpoint` — a worker's end (what :class:`~qcmb_hpc.worker.Worker` calls);
* :class:`ConnectionTransport` — the coordinator's end: it waits on every worker's connection at
  once (``multiprocessing.connection.wait``, so it sleeps until a message arrives), drains each
  one that is readable, keeps every worker's READY info (where its scratch is), and turns a
  connection that breaks — on receive or on send — into a ``LOST`` message. A subclass says how
  connections come to be (:meth:`ConnectionTransport.attach`), how a death is described
  (:meth:`ConnectionTransport.death`), and may watch the messages and losses go by
  (:meth:`ConnectionTransport.seen`, :meth:`ConnectionTransport.on_lost`), add other things to
  wait on and messages of its own (:meth:`ConnectionTransport.wakers`,
  :meth:`ConnectionTransport.events`).
"""

from __future__ import annotations

import contextlib
from multiprocessing.connection import wait as mp_wait
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from . import LOST, READY, SETUP, Message

__all__ = ["ConnectionEndpoint", "ConnectionTransport"]


class ConnectionEndpoint:
    """A worker's end: its connection to the coordinator."""

    max_wait = 1.0  # waits are event-driven: a message wakes the worker at once

    def __init__(self, conn: Any):
        self.conn = conn

    def inherited(self) -> List[Any]:
        """Connections a forked grandchild must close (so this one reads EOF when we die)."""
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


class ConnectionTransport:
    """Coordinator endpoint over one connection per worker (ids ``workers``)."""

    max_wait = 1.0

    def __init__(self, n: int):
        if n < 1:
            raise ValueError("need at least one worker")
        self.workers: List[int] = list(range(n))
        self._conns: Dict[int, Any] = {}
        self._by_conn: Dict[Any, int] = {}
        self._gone: Set[int] = set()  # a send failed: recv reports the worker LOST
        self.ready: Dict[int, Dict[str, Any]] = {}  #: worker → its READY info (where its scratch is)

    # -- for subclasses ----------------------------------------------------------------------------
    def attach(self, w: int, conn: Any) -> None:
        """``conn`` is worker ``w``'s from now on."""
        self._conns[w] = conn
        self._by_conn[conn] = w

    def death(self, w: int) -> str:
        """What became of worker ``w`` whose connection broke (the text of its LOST message)."""
        return f"the connection to worker {w} broke"

    def seen(self, w: int, msg: Message) -> None:
        """Every message from worker ``w``, as it arrives (kept here: each worker's READY info)."""
        if msg[0] == READY:
            self.ready[w] = msg[1]

    def on_lost(self, w: int, text: str) -> None:
        """Worker ``w``'s connection broke (its LOST message says ``text``)."""

    def wakers(self) -> List[Any]:
        """Other objects to wait on beside the connections (a subclass's own wake-up)."""
        return []

    def events(self) -> List[Tuple[int, Message]]:
        """Messages of the transport's own to hand the coordinator now (e.g. ``LOST`` for a worker
        that never connected)."""
        return []

    # -- the endpoint ------------------------------------------------------------------------------
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
        out = self.events()
        for w in [w for w in self._gone if w in self._conns]:
            out.append(self._lost(w))
        if out:
            return out + self.events()
        live = [c for w, c in self._conns.items() if w not in self._gone]
        waitables = live + self.wakers()
        if not waitables:
            return out
        for conn in mp_wait(waitables, timeout):
            w = self._by_conn.get(conn)
            if w is None:
                continue  # a waker: what it announced comes out of events() next time
            try:
                while conn.poll():
                    msg = conn.recv()
                    self.seen(w, msg)
                    out.append((w, msg))
            except (EOFError, OSError):
                out.append(self._lost(w))
        return out + self.events()  # (what a loss made the transport do, e.g. a replacement: in the same batch)

    def _lost(self, w: int) -> Tuple[int, Message]:
        text = self.death(w)
        self.forget(w)
        self.on_lost(w, text)
        return w, (LOST, text)

    def forget(self, w: int) -> None:
        """Close and drop worker ``w``'s connection."""
        conn = self._conns.pop(w, None)
        self._gone.discard(w)
        if conn is not None:
            self._by_conn.pop(conn, None)
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        for conn in list(self._conns.values()):
            with contextlib.suppress(Exception):
                conn.close()
        self._conns.clear()
        self._by_conn.clear()
