"""The one worker loop, for every mode: receive the RunSpec once, then tasks; run them; reply.

A worker keeps a short FIFO queue of tasks (the coordinator keeps it topped up, so the worker never
waits on a round trip), runs them one at a time through its runner (:mod:`qcmb_hpc.engine`) and sends
the outcomes back. It answers STEAL requests with the tasks it has not started, so a task never runs
twice. Between events it waits on the transport *and* its runner's pipe, so a finished fragment is
noticed at once and an idle worker does not spin.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
import traceback
from typing import Any, Deque, List, Optional, Tuple

from . import transport as T
from .backoff import Backoff
from .engines import warm as warm_programs
from .loading import import_modules
from .engine import FragmentOutcome, make_runner, restore_environ, set_thread_environment
from .fragment import RunSpec
from .gcpause import frozen

logger = logging.getLogger(__name__)

__all__ = ["Worker", "scratch_root", "check_scratch", "remove_scratch", "remove_stale_scratch"]

#: results are sent at once unless fragments are this short (then batched for up to FLUSH_AGE)
FAST_FRAGMENT = 1e-3
FLUSH_AGE = 2e-3
FLUSH_COUNT = 256
#: while a fragment runs in the isolated child, its end wakes the worker at once (the child's pipe);
#: the coordinator (STEAL, STOP) is looked for at least this often — not every MAX_WAIT: on a small
#: machine a worker polling at 1 kHz takes CPU from its own QC program
BUSY_MAX_WAIT = 0.01


def scratch_root(configured: Optional[str] = None) -> str:
    """Where per-worker scratch directories go: the configured one, ``$SLURM_TMPDIR``, ``$TMPDIR``,
    or the system temporary directory."""
    for candidate in (configured, os.environ.get("SLURM_TMPDIR"), os.environ.get("TMPDIR")):
        if candidate:
            return candidate
    return tempfile.gettempdir()


def make_process_directory(root: str, kind: str, host: Optional[str] = None) -> str:
    """A new directory under ``root`` named ``qcmb_hpc-<host>-<pid>-<kind>-…``: the one name that
    :func:`remove_stale_scratch` knows to remove once this process is gone (killed)."""
    return tempfile.mkdtemp(prefix=f"qcmb_hpc-{host or socket.gethostname()}-{os.getpid()}-{kind}-", dir=root)


def check_scratch(root: str) -> None:
    """Make sure workers can make their scratch directories under ``root`` (an ``OSError`` if not)."""
    os.makedirs(root, exist_ok=True)
    os.rmdir(make_process_directory(root, "probe"))  # (left by a kill in between: removed as stale)


class _ProcessState:
    """What a worker sets for its whole process — the thread variables its QC program reads
    (OMP/MKL/OpenBLAS_NUM_THREADS) and the log level — held as a lease: the first worker in the
    process saves what was there, the last one to leave puts it back. In sequential mode and on
    MPI ranks the process is the caller's own; several workers may share one (threads)."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._holders = 0
        self._saved: Optional[tuple] = None

    def acquire(self, spec: RunSpec) -> None:
        with self._lock:
            log = logging.getLogger("qcmb_hpc")
            if self._holders == 0:
                self._saved = (log.level, set_thread_environment(spec.threads_per_worker))
            else:
                set_thread_environment(spec.threads_per_worker)
            log.setLevel(spec.log_level)
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._saved is not None:
                level, environ = self._saved
                self._saved = None
                restore_environ(environ)
                logging.getLogger("qcmb_hpc").setLevel(level)


_PROCESS_STATE = _ProcessState()


def remove_scratch(workers: Any) -> None:
    """Remove the scratch directories of these workers (their READY infos) that are on this host:
    a worker that was killed, or whose child was, could not remove its own."""
    here = socket.gethostname()
    for info in workers:
        path = info.get("scratch")
        if path and info.get("host") == here and os.path.basename(path).startswith("qcmb_hpc-"):
            shutil.rmtree(path, ignore_errors=True)


def process_exists(pid: int) -> bool:
    """Whether process ``pid`` is alive here (any user's). A zombie — killed, not yet reaped by
    its new parent, as a SIGKILLed run's workers are for a moment — is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # (another user's)
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rpartition(b")")[2].split()[0]  # (the name, in parentheses, may hold spaces)
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def remove_stale_scratch(root: str, host: Optional[str] = None) -> List[str]:
    """Remove the scratch directories under ``root`` that workers on this host left when they were
    killed (SIGKILL, a node's OOM killer, ``scancel``): made by :func:`make_process_directory` —
    a worker's ``w<n>``, :func:`check_scratch`'s ``probe`` — for a process that no longer exists.
    A live process's (any user's) is left alone. Returns what was removed."""
    host = host or socket.gethostname()
    prefix = f"qcmb_hpc-{host}-"
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        pid, _, rest = name[len(prefix):].partition("-")
        if not name.startswith(prefix) or not pid.isdigit() or not rest.startswith(("w", "probe-")):
            continue
        if process_exists(int(pid)):
            continue
        path = os.path.join(root, name)
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            removed.append(path)
    return removed


class Worker:
    """One worker. ``run()`` loops until STOP; ``step()`` does one round (the in-process transport
    drives it step by step)."""

    def __init__(self, endpoint: Any):
        self.endpoint = endpoint
        self.id = -1
        self.spec: Optional[RunSpec] = None
        self.runner: Any = None
        self.queue: Deque[Tuple[int, str]] = collections.deque()
        self.unsent: List[FragmentOutcome] = []
        self.unsent_since = 0.0
        self.last_seconds = 0.0
        self.stopped = False
        self.scratch: Optional[str] = None
        self.host = socket.gethostname()
        self.busy_seconds = 0.0
        self.done = 0
        self.created = time.perf_counter()
        #: whether this worker holds the process's thread variables and log level (_PROCESS_STATE)
        self._holds_process_state = False

    # ------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until STOP. An exception here is the worker's own failure: report it, re-raise."""
        backoff = Backoff(self.endpoint.max_wait)
        busy_max_wait = max(self.endpoint.max_wait, BUSY_MAX_WAIT)
        try:
            while not self.stopped:
                if self.step(backoff.wait):
                    backoff.reset()
                else:
                    running = self.runner is not None and bool(self.runner.waitable())
                    backoff.advance(busy_max_wait if running else None)
        except BaseException as exc:
            if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                text = f"worker {self.id} on {self.host} (pid {os.getpid()}) failed: " + "".join(
                    traceback.format_exception(type(exc), exc, exc.__traceback__)
                )
                with contextlib.suppress(Exception):
                    self.endpoint.send((T.FAILED, text))
            self._cleanup()
            raise

    def step(self, wait: float) -> bool:
        """Handle messages, start/collect a fragment; if nothing happened, wait up to ``wait``.
        Returns whether anything happened."""
        progressed = False
        while True:
            msg = self.endpoint.poll()
            if msg is None:
                break
            progressed = True
            self._handle(msg)
            if self.stopped:
                return True
        if self.runner is not None:
            if self.runner.busy:
                out = self.runner.poll()
                if out is not None:
                    self._finished(out)
                    progressed = True
            if not self.runner.busy and self.queue:
                self._maybe_flush(before_start=True)
                task_id, label = self.queue.popleft()
                self.runner.start(task_id, label)
                progressed = True
        if not progressed:
            self._flush()
            if wait > 0:
                self.endpoint.wait(wait, self.runner.waitable() if self.runner is not None else ())
        return progressed

    # ------------------------------------------------------------------------------------------
    def _handle(self, msg: T.Message) -> None:
        kind = msg[0]
        if kind == T.TASKS:
            self.queue.extend(msg[1])
        elif kind == T.STEAL:
            wanted = set(msg[1])
            given = [tid for tid, _ in self.queue if tid in wanted]
            if given:
                gset = set(given)
                self.queue = collections.deque(t for t in self.queue if t[0] not in gset)
            refused = sorted(wanted - set(given))
            self.endpoint.send((T.RETURNED, given, refused))
        elif kind == T.SETUP:
            self._setup(msg[1], msg[2])
        elif kind == T.STOP:
            self._stop()
        else:
            raise RuntimeError(f"worker {self.id}: unknown message {kind!r}")

    def _setup(self, spec: RunSpec, worker_id: int) -> None:
        self.spec = spec
        self.id = worker_id
        _PROCESS_STATE.acquire(spec)
        self._holds_process_state = True
        import_modules(spec.imports)  # (the coordinator imported them already: a failure here is the worker's)
        warm_programs(s["program"] for s in spec.specifications.values())  # (inherited by an isolated child)
        root = scratch_root(spec.scratch_root)
        os.makedirs(root, exist_ok=True)
        remove_stale_scratch(root, self.host)  # (what a killed run on this host left: a rerun resumes it)
        self.scratch = make_process_directory(root, f"w{worker_id}", self.host)
        inherited = self.endpoint.inherited()
        # An isolated runner forks its child after a full gc.collect(): ~0.1 s of CPU in a process
        # with qcengine loaded, at the start of every run on every worker (16 ranks on 2 cores:
        # ~0.8 s before the first fragment starts). With the heap frozen first, that collection
        # only looks at what is new.
        with frozen():
            self.runner = make_runner(spec, spec.task_config(self.scratch), close_in_child=inherited)
        self.endpoint.send(
            (
                T.READY,
                {
                    "pid": os.getpid(),
                    "host": self.host,
                    "isolated": bool(getattr(self.runner, "isolated", False)),
                    "scratch": self.scratch,
                    "threads": spec.threads_per_worker,
                    "memory": spec.memory_per_worker,
                },
            )
        )

    def _finished(self, out: FragmentOutcome) -> None:
        out.worker = self.id
        out.host = self.host
        self.busy_seconds += out.seconds
        self.last_seconds = out.seconds
        self.done += 1
        if not self.unsent:
            self.unsent_since = time.perf_counter()
        self.unsent.append(out)
        if not self.queue or out.seconds > FAST_FRAGMENT:
            self._flush()

    def _maybe_flush(self, before_start: bool = False) -> None:
        if not self.unsent:
            return
        if (
            self.last_seconds > FAST_FRAGMENT
            or len(self.unsent) >= FLUSH_COUNT
            or time.perf_counter() - self.unsent_since > FLUSH_AGE
        ):
            self._flush()

    def _flush(self) -> None:
        if self.unsent:
            batch, self.unsent = self.unsent, []
            self.endpoint.send((T.RESULTS, batch))

    def _stop(self) -> None:
        if self.runner is not None:
            out = self.runner.cancel()  # a cut fragment is simply not finished; the coordinator knows
            if out is not None and out.ok:
                self._finished(out)  # ... but one that finished just as STOP came is kept
        self._flush()
        restarts = getattr(self.runner, "restarts", 0)
        self._cleanup()
        self.endpoint.send(
            (
                T.BYE,
                {
                    "busy": self.busy_seconds,
                    "done": self.done,
                    "restarts": restarts,
                    "alive": time.perf_counter() - self.created,
                    "host": self.host,
                    "pid": os.getpid(),
                },
            )
        )
        self.stopped = True

    def _cleanup(self) -> None:
        if self.runner is not None:
            with contextlib.suppress(Exception):
                self.runner.close()
            self.runner = None
        if self.scratch and not (self.spec is not None and self.spec.keep_scratch):
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None
        if self._holds_process_state:
            self._holds_process_state = False
            _PROCESS_STATE.release()
