"""Socket transport: workers started by someone else (a Parsl block, any pilot job) connect back to
the coordinator over TCP — the same ``multiprocessing.connection.Connection`` API as the
multiprocessing pipes, so both ends are :mod:`.connections`' and only how a connection comes to
be differs.

* The coordinator listens on an ephemeral port (on ``127.0.0.1``, or on every interface when the
  workers are elsewhere) with a random ``authkey``: every connection is authenticated
  (``multiprocessing``'s HMAC challenge, both ways) before a byte of it is unpickled.
* A worker is started for a *slot* (its worker id) and told the coordinator's addresses, the
  port and the key (:func:`connect`: it tries the addresses in turn, as Parsl's own managers do,
  and introduces itself with ``(HELLO, slot, info)``). Handshakes run in a thread per connection,
  so a stray or slow client holds up no one.
* Slots exist before their workers connect (Parsl may start a block minutes later, or never):
  messages to a slot not yet connected wait for it, except STOP, which a slot that never
  connected answers with a BYE of its own (``"connected": False``) — the coordinator does not
  wait for a worker that was never there. A slot whose worker will not come (its Parsl task
  failed before connecting) is reported ``LOST`` through :meth:`SocketTransport.notice_lost`.
* :meth:`SocketTransport.add_worker` adds a slot during the run (a replacement for a lost
  worker); the coordinator hears of it as ``JOINED``. Whoever runs the workers decides when:
  :meth:`SocketTransport.lost` is called for every worker that is lost.

Loss: a worker's process that dies closes its socket, and the coordinator reads EOF at once. A
node that vanishes without closing anything is noticed by whoever started the worker (Parsl's
heartbeats) and reported through :meth:`notice_lost`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import BYE, JOINED, LOST, RESULTS, SETUP, STOP, Message
from .connections import ConnectionTransport

__all__ = ["SocketTransport", "connect", "HELLO", "local_addresses"]

HELLO = "HELLO"
#: seconds a worker gives each of the coordinator's addresses to answer
PROBE_TIMEOUT = 5.0
#: seconds the coordinator gives a connection to authenticate and introduce itself
HANDSHAKE_TIMEOUT = 60.0


def local_addresses() -> List[str]:
    """This host's IPv4 addresses, the loopback ones last (read from the interfaces and the host
    name; nothing is asked of the network)."""
    found: List[str] = []
    with contextlib.suppress(Exception):
        import psutil

        for addrs in psutil.net_if_addrs().values():
            found += [a.address for a in addrs if a.family == socket.AF_INET]
    with contextlib.suppress(OSError):
        found.append(socket.gethostbyname(socket.gethostname()))
    found = list(dict.fromkeys(found))
    return [a for a in found if not a.startswith("127.")] + [a for a in found if a.startswith("127.")]


def connect(addresses: Sequence[str], port: int, authkey: bytes, slot: int, info: Optional[Dict[str, Any]] = None) -> Any:
    """A worker's connection to the coordinator (authenticated, introduced as ``slot``): the
    first of ``addresses`` that answers. ``ConnectionError`` if none does."""
    tried = []
    for address in addresses:
        try:
            sock = socket.create_connection((address, port), timeout=PROBE_TIMEOUT)
        except OSError as exc:
            tried.append(f"{address}: {exc.strerror or exc}")
            continue
        sock.settimeout(None)
        conn = Connection(sock.detach())
        try:
            answer_challenge(conn, authkey)
            deliver_challenge(conn, authkey)
            conn.send((HELLO, slot, dict(info or {})))
        except Exception as exc:
            conn.close()
            tried.append(f"{address}: {type(exc).__name__}: {exc}")
            continue
        return conn
    raise ConnectionError(f"cannot reach the qcmb_hpc coordinator on port {port} ({'; '.join(tried) or 'no address'})")


class SocketTransport(ConnectionTransport):
    """Coordinator endpoint whose ``n`` workers connect over TCP, at any time."""

    def __init__(self, n: int, bind: str = "127.0.0.1", port: int = 0):
        super().__init__(n)
        self.authkey = os.urandom(32)
        self._server = socket.create_server((bind, port), family=socket.AF_INET, backlog=128)
        self.port: int = self._server.getsockname()[1]
        self.spec: Any = None
        #: slot → "pending" (no worker yet), "connected", "closed" (STOP before it came), "lost"
        self.state: Dict[int, str] = {w: "pending" for w in self.workers}
        self.info: Dict[int, Dict[str, Any]] = {}  #: slot → what its worker said in its HELLO
        self.connected_at: Dict[int, float] = {}  #: slot → when its worker connected (monotonic)
        self.served: set = set()  #: workers whose results reached the coordinator
        self._waiting: Dict[int, List[Message]] = {}  # messages for slots not yet connected
        self._events: List[Tuple[int, Message]] = []
        self._incoming: "queue.Queue" = queue.Queue()  # from other threads: ("hello", slot, conn, info) / ("lost", slot, text)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._closing = threading.Event()
        self._handshaking: set = set()
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, name="qcmb-accept", daemon=True)
        self._acceptor.start()

    # -- other threads -------------------------------------------------------------------------------
    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                sock, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handshake, args=(sock,), name="qcmb-handshake", daemon=True).start()

    def _handshake(self, sock: socket.socket) -> None:
        sock.settimeout(None)
        conn = Connection(sock.detach())
        with self._lock:
            self._handshaking.add(conn)
        try:
            deliver_challenge(conn, self.authkey)
            answer_challenge(conn, self.authkey)
            if not conn.poll(HANDSHAKE_TIMEOUT):
                raise TimeoutError("no HELLO")
            kind, slot, info = conn.recv()
            if kind != HELLO:
                raise ValueError(f"expected HELLO, got {kind!r}")
        except Exception:
            with contextlib.suppress(Exception):
                conn.close()
            return
        finally:
            with self._lock:
                self._handshaking.discard(conn)
        self._incoming.put(("hello", int(slot), conn, info))
        self._wake()

    def notice_lost(self, slot: int, text: str) -> None:
        """(Any thread.) Worker ``slot`` is gone or will never come, for the reason ``text``."""
        self._incoming.put(("lost", slot, None, text))
        self._wake()

    # -- the coordinator's thread ------------------------------------------------------------------
    def add_worker(self) -> int:
        """A new slot, announced to the coordinator as JOINED; its worker connects later."""
        w = len(self.workers)
        self.workers.append(w)
        self.state[w] = "pending"
        self._events.append((w, (JOINED, {})))
        return w

    def lost(self, w: int, text: str) -> None:
        """Called for every worker that is lost (after the coordinator has been told). Override to
        replace it."""

    def setup(self, spec: Any) -> None:
        self.spec = spec
        for w, st in self.state.items():
            if st == "connected":
                self.send(w, (SETUP, spec, w))

    def send(self, worker: int, msg: Message) -> None:
        st = self.state.get(worker)
        if st == "connected":
            super().send(worker, msg)
        elif st == "pending":
            if msg[0] == STOP:
                self.state[worker] = "closed"
                self._events.append((worker, (BYE, {"connected": False})))
            else:
                self._waiting.setdefault(worker, []).append(msg)

    def seen(self, w: int, msg: Message) -> None:
        super().seen(w, msg)
        if msg[0] == RESULTS:
            self.served.add(w)

    def death(self, w: int) -> str:
        info = self.info.get(w, {})
        where = ", ".join(f"{k} {info[k]}" for k in ("host", "pid", "block") if info.get(k) is not None)
        return f"the connection to worker {w} ({where}) broke" if where else f"the connection to worker {w} broke"

    def on_lost(self, w: int, text: str) -> None:
        self.state[w] = "lost"
        self._waiting.pop(w, None)
        self.lost(w, text)

    def wakers(self) -> List[Any]:
        return [self._wake_r]

    def events(self) -> List[Tuple[int, Message]]:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                kind, slot, conn, extra = self._incoming.get_nowait()
            except queue.Empty:
                break
            st = self.state.get(slot)
            if kind == "hello":
                if st != "pending":  # a slot lost, stopped or taken (a retried Parsl task): not wanted
                    with contextlib.suppress(Exception):
                        conn.close()
                    continue
                self.state[slot] = "connected"
                self.info[slot] = dict(extra or {})
                self.connected_at[slot] = time.monotonic()
                self.attach(slot, conn)
                if self.spec is not None:
                    self.send(slot, (SETUP, self.spec, slot))
                for msg in self._waiting.pop(slot, []):
                    self.send(slot, msg)
            elif st == "pending":  # its worker will not come
                self._events.append((slot, (LOST, extra)))
                self.on_lost(slot, extra)
            elif st == "connected":  # the one who started it says it is gone (a node lost without a word)
                self.forget(slot)
                self._events.append((slot, (LOST, extra)))
                self.on_lost(slot, extra)
        out, self._events = self._events, []
        return out

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            pending = list(self._handshaking)
        for conn in pending:
            with contextlib.suppress(Exception):
                conn.close()
        while True:  # connections that arrived too late
            try:
                kind, _, conn, _ = self._incoming.get_nowait()
            except queue.Empty:
                break
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        super().close()
        for s in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()
