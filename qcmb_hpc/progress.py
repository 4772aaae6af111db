"""Progress: the reporter interface, its console and file reporters, and the one tracker that
turns fragment completions into level events for every mode.

Levels are n-body levels (the number of real fragments). They do not run one after another: every
fragment is independent, so all levels start together and a level is "completed" when its last
fragment is.

Besides the per-fragment events, the tracker sends :meth:`ProgressReporter.on_progress` a
:class:`ProgressState` — counts, fragments running, time since the run started, estimated cost done
and left, and the cost-weighted ETA (:mod:`qcmb_hpc.eta`) — at the start, after completions and on
the coordinator's ticks while nothing completes (at most every ``interval`` seconds), and at the
end. The same state goes into the heartbeat beside the journal (:class:`Heartbeat`), which
``python -m qcmb_hpc status`` reads from another shell or node.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .eta import CostLedger, eta_seconds

__all__ = [
    "ProgressReporter",
    "ConsoleProgressReporter",
    "FileProgressReporter",
    "MultiProgressReporter",
    "make_reporter",
    "EVENTS",
    "ProgressTracker",
    "ProgressState",
    "Heartbeat",
    "format_duration",
    "run_tracker",
]


class ProgressReporter:
    """Receives progress events. Subclass and override what you need; every method is optional."""

    def on_level_started(self, level: int, fragment_count: int) -> None:
        """``fragment_count`` fragments of n-body ``level`` are planned (all levels start together)."""

    def on_fragment_completed(self, fragment_label: str, success: bool) -> None:
        """One fragment finished for good (``success=False``: it failed after its last attempt)."""

    def on_level_completed(self, level: int, duration: float) -> None:
        """The last fragment of ``level`` finished, ``duration`` seconds after the run started."""

    def on_calculation_completed(self, total_duration: float) -> None:
        """Every fragment has finished (or failed for good)."""

    def on_fragments_restored(self, count: int) -> None:
        """``count`` fragments were taken from a checkpoint instead of being computed."""

    def on_fragment_retried(self, fragment_label: str, attempt: int, error: str) -> None:
        """An attempt failed and the fragment will be tried again."""

    def on_progress(self, state: "ProgressState") -> None:
        """Where the run stands (:class:`ProgressState`): at the start, after completions and
        periodically while nothing completes (at most every ``ProgressTracker.interval`` s)."""


#: the events a reporter may implement (any subset: the others are skipped)
EVENTS = tuple(name for name in vars(ProgressReporter) if name.startswith("on_"))


class MultiProgressReporter(ProgressReporter):
    """Forwards every event to several reporters. A reporter is any object: it need not subclass
    :class:`ProgressReporter`, and events it does not implement are skipped. A reporter that
    raises is logged once per event and not called for that event again (a progress display must
    not end a run of many hours)."""

    def __init__(self, reporters: Iterable[Any]):
        self.reporters = [r for r in reporters if r is not None]
        self._broken: set = set()

    def _all(self, name: str, *args: Any) -> None:
        for r in self.reporters:
            method = getattr(r, name, None)
            if method is None or (id(r), name) in self._broken:
                continue
            try:
                method(*args)
            except Exception as exc:
                self._broken.add((id(r), name))
                logging.getLogger("qcmb_hpc").warning(
                    "progress reporter %s failed in %s (%s: %s); it gets no more %s events",
                    type(r).__name__, name, type(exc).__name__, exc, name,
                )

    def on_level_started(self, level, fragment_count):
        self._all("on_level_started", level, fragment_count)

    def on_fragment_completed(self, fragment_label, success):
        self._all("on_fragment_completed", fragment_label, success)

    def on_level_completed(self, level, duration):
        self._all("on_level_completed", level, duration)

    def on_calculation_completed(self, total_duration):
        self._all("on_calculation_completed", total_duration)

    def on_fragments_restored(self, count):
        self._all("on_fragments_restored", count)

    def on_fragment_retried(self, fragment_label, attempt, error):
        self._all("on_fragment_retried", fragment_label, attempt, error)

    def on_progress(self, state):
        self._all("on_progress", state)


def make_reporter(progress_reporting: bool, user: Any = None) -> Optional[MultiProgressReporter]:
    """The reporter a run reports to. The rule: a reporter the caller passes (any object with
    some of the ``on_*`` methods, or a list of them) *replaces* the built-in console reporter;
    without one, ``progress_reporting`` decides whether the console reporter runs. (To have the
    console reporter as well, pass it in the list: ``[ConsoleProgressReporter(), mine]``.)"""
    if user is not None:
        reporters = list(user) if isinstance(user, (list, tuple)) else [user]
    elif progress_reporting:
        reporters = [ConsoleProgressReporter()]
    else:
        return None
    return MultiProgressReporter(reporters)


class ConsoleProgressReporter(ProgressReporter):
    """A progress bar on a terminal (tqdm); plain lines when the stream is not a terminal (a Slurm
    output file, a pipe): one at the start, then one per 10% of the fragments or per ``interval``
    seconds (growing to a tenth of the elapsed time on long runs, so a run of days logs ~100 lines,
    not thousands), and one at the end.

    Both show the same: fragments done of all, fragments running, the time since the run started
    and the cost-weighted ETA (from :meth:`on_progress`; without it — a reporter driven by the
    per-fragment events alone — counts and elapsed time only). The bar is drawn from the start of
    the run, at the fragments restored from a checkpoint. It follows the terminal's width; a
    terminal that reports no size (a fresh pseudo-terminal) gets ``$COLUMNS`` (else 80) columns."""

    def __init__(self, show_progress_bar: bool = True, stream: Optional[IO[str]] = None, interval: float = 10.0):
        self.stream = stream or sys.stderr
        self.interval = interval
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.use_bar = bool(show_progress_bar and is_tty)
        self.total = 0
        self.done = 0
        self.failed = 0
        self.t0 = time.perf_counter()
        self._last_line = self.t0
        self._last_fraction = 0.0
        self._state: Optional[ProgressState] = None
        self._state_at = 0.0
        self._drawn = 0.0
        self._said_start = False
        self._bar: Any = None
        self._lock = threading.Lock()

    def _ensure_bar(self) -> None:
        """Start the bar (at the fragments already done, e.g. restored from a checkpoint)."""
        if self.use_bar and self._bar is None and self.total:
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no monitor thread (workers are forked)
            size: Dict[str, Any] = {"dynamic_ncols": True}
            columns, rows = _terminal_size(self.stream)
            if columns <= 0 or rows <= 0:
                # a terminal that reports no size (a fresh pty: `srun --pty`, `docker run -t`, CI
                # runners): tqdm would take 0 columns / -1 rows from it and draw nothing at all
                size = {"ncols": columns if columns > 0 else _env_int("COLUMNS", 80),
                        "nrows": rows if rows > 0 else _env_int("LINES", 24)}
            # tqdm's own rate and remaining time count fragments: the postfix carries ours
            self._bar = tqdm(
                total=self.total, initial=self.done, file=self.stream, unit="frag",
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} frag{postfix}", **size,
            )
            self._bar.set_postfix_str(self._extras(time.perf_counter()), refresh=True)

    def _line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _extras(self, now: float) -> str:
        """fragments running, elapsed, ETA — what the bar's postfix and the plain lines add."""
        st = self._state
        parts = []
        if st is not None and st.running is not None:
            parts.append(f"{st.running} running")
        parts.append(f"{format_duration(self._elapsed(now))} elapsed")
        if st is not None:
            if st.stopping:
                parts.append(f"stopping ({st.stopping})")
            elif st.eta is not None and self.done < self.total:
                parts.append(f"ETA {format_duration(st.eta)}")
            elif self.done < self.total:
                parts.append("ETA after the first result")
        return ", ".join(parts)

    def _elapsed(self, now: float) -> float:
        """Seconds since the run started: the tracker's (its clock), else this reporter's own."""
        st = self._state
        return st.elapsed + max(0.0, now - self._state_at) if st is not None else now - self.t0

    def _status_line(self, now: float) -> str:
        frac = self.done / self.total if self.total else 1.0
        elapsed = self._elapsed(now)
        rate = (self.done - self._restored()) / elapsed if elapsed > 0 else 0.0
        st = self._state
        cost = f"{100 * st.cost_fraction:.0f}% of the estimated cost, " if st is not None and st.cost_total > 0 else ""
        return (
            f"qcmb_hpc: {self.done}/{self.total} fragments ({100 * frac:.0f}%), {cost}{self._extras(now)}, {format_rate(rate)}"
            + (f", {self.failed} failed" if self.failed else "")
        )

    def _restored(self) -> int:
        return self._state.restored if self._state is not None else 0

    def _due(self, now: float) -> bool:
        return now - self._last_line >= max(self.interval, 0.1 * (now - self.t0))

    def on_level_started(self, level, fragment_count):
        if self.total == 0:
            self.t0 = self._last_line = time.perf_counter()
        self.total += fragment_count

    def on_fragments_restored(self, count):
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        if count:
            self._line(f"qcmb_hpc: {count} fragments restored from the checkpoint")

    def on_progress(self, state):
        with self._lock:
            now = time.perf_counter()
            self._state, self._state_at = state, now
            if self.use_bar:
                self._ensure_bar()
                if self._bar is not None:
                    # redrawn at most every 0.2 s (a state comes with every completion; the bar's own
                    # updates redraw it as often as tqdm's mininterval lets them)
                    redraw = now - self._drawn >= 0.2
                    self._bar.set_postfix_str(self._extras(now), refresh=redraw)
                    if redraw:
                        self._drawn = now
                return
            if not self._said_start:
                self._said_start = True
                todo = state.total - state.done
                self._line(f"qcmb_hpc: {todo} of {state.total} fragments to run; {self._extras(now)}")
                self._last_line = now
            elif self._due(now) and state.done == self.done < self.total:
                # (a state that counts a completion not yet announced: its event prints the line)
                self._last_line = now
                self._line(self._status_line(now))

    def on_fragment_completed(self, fragment_label, success):
        with self._lock:
            if self.use_bar:
                self._ensure_bar()  # before counting: the bar starts at what was done before
            self.done += 1
            if not success:
                self.failed += 1
                self._line(f"qcmb_hpc: fragment {fragment_label} failed")
            now = time.perf_counter()
            if self._bar is not None:
                self._bar.set_postfix_str(self._extras(now), refresh=False)
                self._bar.update(1)
                return
            frac = self.done / self.total if self.total else 1.0
            if self._due(now) or frac - self._last_fraction >= 0.1 or self.done == self.total:
                self._last_line, self._last_fraction = now, frac
                self._line(self._status_line(now))

    def on_fragment_retried(self, fragment_label, attempt, error):
        self._line(f"qcmb_hpc: fragment {fragment_label} attempt {attempt} failed ({error}); retrying")

    def on_level_completed(self, level, duration):
        self._line(f"qcmb_hpc: {level}-body level complete at {duration:.2f} s")

    def on_calculation_completed(self, total_duration):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._line(f"qcmb_hpc: all {self.total} fragments done in {total_duration:.2f} s")


def format_duration(seconds: float) -> str:
    """``42s``, ``12m03s``, ``2h05m``, ``3d04h``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def format_rate(per_second: float) -> str:
    """Fragments per second, minute or hour, whichever reads best."""
    if per_second >= 1 or per_second <= 0:
        return f"{per_second:.1f}/s"
    if per_second * 60 >= 1:
        return f"{per_second * 60:.1f}/min"
    return f"{per_second * 3600:.1f}/h"


def _terminal_size(stream: Any) -> Tuple[int, int]:
    """(columns, rows) of the terminal ``stream`` is on; 0 where unknown or not reported."""
    try:
        size = os.get_terminal_size(stream.fileno())
        return size.columns, size.lines
    except (AttributeError, OSError, ValueError):
        return 0, 0


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


class FileProgressReporter(ProgressReporter):
    """Appends one JSON object per event to ``path`` (``{"event": ..., "time": ..., ...}``)."""

    def __init__(self, path: str):
        self.path = path
        self._fh = open(path, "a", buffering=1)

    def _write(self, event: str, **fields: Any) -> None:
        self._fh.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")

    def on_level_started(self, level, fragment_count):
        self._write("level_started", level=level, fragment_count=fragment_count)

    def on_fragment_completed(self, fragment_label, success):
        self._write("fragment_completed", fragment_label=fragment_label, success=success)

    def on_level_completed(self, level, duration):
        self._write("level_completed", level=level, duration=duration)

    def on_calculation_completed(self, total_duration):
        self._write("calculation_completed", total_duration=total_duration)
        self._fh.flush()

    def on_fragments_restored(self, count):
        self._write("fragments_restored", count=count)

    def on_fragment_retried(self, fragment_label, attempt, error):
        self._write("fragment_retried", fragment_label=fragment_label, attempt=attempt, error=error)

    def close(self) -> None:
        self._fh.close()

    def __del__(self):
        try:
            self._fh.close()
        except Exception:
            pass


@dataclass
class ProgressState:
    """Where a run stands (what :meth:`ProgressReporter.on_progress` gets, and the heartbeat holds).

    Counts are fragments; ``done`` includes those ``restored`` from a checkpoint and those that
    ``failed`` for good. Costs are the cost model's current estimates (see :mod:`qcmb_hpc.eta`):
    ``cost_total``, ``cost_restored``, and ``cost_session`` (done in this run). ``eta``: the
    cost-weighted seconds left (None until the first fragment of this run finishes)."""

    started: float  #: wall clock (epoch seconds) when the run started
    elapsed: float  #: seconds since then
    total: int
    done: int
    restored: int = 0
    failed: int = 0
    retried: int = 0  #: failed attempts that were tried again
    running: Optional[int] = None  #: fragments at the workers (None: not known)
    workers: Optional[int] = None  #: workers alive (None: not known)
    cost_total: float = 0.0
    cost_restored: float = 0.0
    cost_session: float = 0.0
    eta: Optional[float] = None
    stopping: Optional[str] = None  #: the reason a stop was requested, if one was
    levels: Dict[int, List[int]] = field(default_factory=dict)  #: n-body level → [done, total]

    @property
    def cost_fraction(self) -> float:
        """Share of the estimated cost that is done (restored or this run)."""
        if self.cost_total <= 0:
            return self.done / self.total if self.total else 1.0
        return min(1.0, (self.cost_restored + self.cost_session) / self.cost_total)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["levels"] = {str(k): v for k, v in self.levels.items()}
        d["cost_fraction"] = self.cost_fraction
        return d


class Heartbeat:
    """Keeps the heartbeat file beside the journal (:func:`qcmb_hpc.checkpoint.heartbeat_path`)
    up to date: at most every ``interval`` seconds while the run goes, and at once when it starts,
    starts stopping and ends. A heartbeat that cannot be written is a warning, once: the run
    matters more than its status display."""

    def __init__(self, path: str, interval: float = 2.0, info: Optional[Dict[str, Any]] = None, wall: Callable[[], float] = time.time):
        self.path = path
        self.interval = interval
        self.info = dict(info or {})
        self.wall = wall
        self._last = -float("inf")
        self._warned = False
        self.ended: Optional[str] = None
        try:
            import psutil

            self._pid_started: Optional[float] = psutil.Process().create_time()
        except Exception:  # pragma: no cover - psutil is a dependency
            self._pid_started = None

    def beat(self, state: ProgressState, force: bool = False, how: Optional[str] = None) -> None:
        now = self.wall()
        if self.ended is not None or (not force and now - self._last < self.interval):
            return
        self._last = now
        if how is not None:
            self.ended = how
        from .checkpoint import HEARTBEAT_FORMAT, write_heartbeat

        doc = {
            "format": HEARTBEAT_FORMAT,
            "state": how or ("stopping" if state.stopping else "running"),
            "pid": os.getpid(),
            "pid_started": self._pid_started,
            "host": socket.gethostname(),
            "updated": now,
            "interval": self.interval,
            **self.info,
            **state.to_dict(),
        }
        try:
            write_heartbeat(self.path, doc)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                logging.getLogger("qcmb_hpc").warning("cannot write the heartbeat %s: %s", self.path, exc.strerror or exc)


class ProgressTracker:
    """Mechanism shared by every mode: per-level counts → reporter events, the progress state (with
    the cost-weighted ETA of ``ledger``, a :class:`~qcmb_hpc.eta.CostLedger` of the tasks, when
    given) → :meth:`ProgressReporter.on_progress` and the ``heartbeat``.

    The coordinator calls :meth:`start`, :meth:`completed`, :meth:`retried`, :meth:`stopping`,
    :meth:`tick` (every pass of its loop: cheap unless a state is due) and :meth:`finish`; the
    run calls :meth:`close` at the end whatever happened, so the heartbeat says how it ended."""

    def __init__(
        self,
        reporter: Optional[ProgressReporter],
        levels: Sequence[int],
        clock=time.perf_counter,
        *,
        ledger: Optional[CostLedger] = None,
        heartbeat: Optional[Heartbeat] = None,
        interval: float = 0.5,
        wall: Callable[[], float] = time.time,
    ):
        self.reporter = reporter
        self.clock = clock
        self.wall = wall
        self.ledger = ledger
        self.heartbeat = heartbeat
        self.interval = interval
        self.t0 = clock()
        self.started = wall()
        self.remaining: Dict[int, int] = {}
        self.total: Dict[int, int] = {}
        for lvl in levels:
            self.total[lvl] = self.total.get(lvl, 0) + 1
        self.remaining = dict(self.total)
        self.n_total = sum(self.total.values())
        self.n_restored = 0
        self.n_failed = 0
        self.n_retried = 0
        self.stop_reason: Optional[str] = None
        self._coordinator: Any = None  # asked for fragments running and workers alive
        self._next = -float("inf")
        self._emitting = reporter is not None or heartbeat is not None
        # asked of the coordinator at most every interval (O(workers)): what each worker runs, since
        # when (first seen), the credit for their done part, and the workers alive
        self._heads: Dict[int, Tuple[int, float]] = {}
        self._parts: Dict[int, Tuple[float, float]] = {}  # running task → (credit, seconds left), when asked
        self._credit = 0.0  # their sum, less those that completed since
        self._longest = 0.0  # the most seconds left of any of them
        self._workers: Optional[int] = None
        self._asked = -float("inf")

    def attach(self, coordinator: Any) -> None:
        """The coordinator now driving the run: the state asks it how many fragments are at its
        workers (``running_fragments()``) and how many workers are alive (``live``)."""
        self._coordinator = coordinator

    def start(self, restored_levels: Sequence[int] = (), restored_ids: Sequence[int] = ()) -> None:
        self.t0 = self.clock()
        self.started = self.wall()
        if self.ledger is not None:
            for tid in restored_ids:
                self.ledger.mark(tid, restored=True)
        self.n_restored = len(restored_levels)
        if self.reporter is not None:
            for lvl in sorted(self.total):
                self.reporter.on_level_started(lvl, self.total[lvl])
            if restored_levels:
                self.reporter.on_fragments_restored(len(restored_levels))
        for lvl in restored_levels:
            self.remaining[lvl] -= 1
            self._level_event(lvl)
        self._emit(force=True, beat=True)

    def _level_event(self, level: int) -> None:
        if self.remaining[level] == 0 and self.reporter is not None:
            self.reporter.on_level_completed(level, self.clock() - self.t0)

    def completed(self, label: str, level: int, success: bool, tid: Optional[int] = None, seconds: Optional[float] = None) -> None:
        """A fragment finished for good (``seconds``: how long its successful attempt took).
        Reporters get the state that counts it, then the fragment's event, then its level's if it
        was the level's last."""
        if self.ledger is not None and tid is not None:
            self.ledger.mark(tid, seconds=seconds)
            part = self._parts.pop(tid, None)
            if part is not None:  # it was running when last asked: its credit is done work now
                self._credit -= part[0]
                if part[1] >= self._longest:
                    self._longest = max((left for _, left in self._parts.values()), default=0.0)
        if not success:
            self.n_failed += 1
        self.remaining[level] -= 1
        self._emit(force=True)
        if self.reporter is not None:
            self.reporter.on_fragment_completed(label, success)
        self._level_event(level)

    def retried(self, label: str, attempt: int, error: str) -> None:
        self.n_retried += 1
        if self.reporter is not None:
            self.reporter.on_fragment_retried(label, attempt, error)

    def stopping(self, reason: str) -> None:
        """A stop was requested: no new work; running fragments get the grace period."""
        self.stop_reason = reason
        self._emit(force=True, beat=True)

    def tick(self) -> None:
        """The coordinator's loop went round: a state if one is due (time passes while nothing
        completes: the elapsed time and the heartbeat go on)."""
        if self._emitting and self.clock() >= self._next:
            self._emit()

    def state(self) -> ProgressState:
        """The state now."""
        elapsed = self.clock() - self.t0
        done = self.n_total - sum(self.remaining.values())
        st = ProgressState(
            started=self.started,
            elapsed=elapsed,
            total=self.n_total,
            done=done,
            restored=self.n_restored,
            failed=self.n_failed,
            retried=self.n_retried,
            running=None,
            stopping=self.stop_reason,
            levels={lvl: [self.total[lvl] - self.remaining[lvl], self.total[lvl]] for lvl in sorted(self.total)},
        )
        coord = self._coordinator
        if coord is not None:
            now = self.clock()
            # (asked again at once while it seemed to run nothing: at the start, before any work
            # was handed out, the count would otherwise stay 0 for a whole interval)
            if now - self._asked >= self.interval or (not self._heads and done < self.n_total):
                self._asked = now
                self._ask(coord, now)
            st.running = len(self._heads) if done < self.n_total else 0
            st.workers = self._workers
        if self.ledger is not None:
            st.cost_total, st.cost_restored, st.cost_session = self.ledger.sums()
            st.eta = self.ledger.eta(elapsed, self._credit, self._longest - (self.clock() - self._asked))
        else:  # no costs known: every fragment weighs the same
            st.eta = eta_seconds(done - self.n_restored, self.n_total - done, elapsed)
        return st

    def _ask(self, coord: Any, now: float) -> None:
        """What each worker runs now (a fragment first seen at a worker started about then)."""
        heads: Dict[int, Tuple[int, float]] = {}
        for w, tid in coord.running_fragments().items():
            prev = self._heads.get(w)
            heads[w] = prev if prev is not None and prev[0] == tid else (tid, now)
        self._heads = heads
        self._workers = len(coord.live) or self._workers
        if self.ledger is not None:
            self._parts = self.ledger.running_parts((now - since, tid) for tid, since in heads.values())
            self._credit = sum(c for c, _ in self._parts.values())
            self._longest = max((left for _, left in self._parts.values()), default=0.0)

    def _emit(self, force: bool = False, beat: bool = False) -> None:
        """A state to the reporter and the heartbeat (which writes at most once per its own
        interval unless ``beat``).
        Forced at the start, at each completion (building a state is O(1) then: the costs are
        kept incrementally and the coordinator's counts are asked at most every ``interval``),
        when stopping and at the end; ticks emit at most every ``interval``."""
        if not self._emitting:
            return
        now = self.clock()
        if not force and now < self._next:
            return
        self._next = now + self.interval
        st = self.state()
        if self.reporter is not None:
            self.reporter.on_progress(st)
        if self.heartbeat is not None:
            self.heartbeat.beat(st, force=beat)

    def finish(self) -> float:
        total = self.clock() - self.t0
        self._emit(force=True)
        if self.reporter is not None:
            self.reporter.on_calculation_completed(total)
        return total

    def close(self) -> None:
        """The run is over, however it ended: the heartbeat says how (finished, failed: some
        fragments failed for good, stopped: by a signal, resumable, or broken: the machinery)."""
        try:
            if self.heartbeat is None or self.heartbeat.ended is not None:
                return
            done = self.n_total - sum(self.remaining.values())
            if done >= self.n_total:
                how = "failed" if self.n_failed else "finished"
            else:
                how = "stopped" if self.stop_reason else "broken"
            self._asked = -float("inf")
            st = self.state()
            self.heartbeat.beat(st, force=True, how=how)
        finally:
            # (the coordinator and the tracker refer to each other, and the collector is paused
            # through assembly: without this, the coordinator's task tables outlive the run)
            self._coordinator = None


def run_tracker(reporter: Optional[ProgressReporter], tasks: Sequence[Any], cost_model: Any = None, journal_path: Optional[str] = None, **info: Any) -> ProgressTracker:
    """The tracker of a run: its tasks priced by ``cost_model`` (the cost-weighted ETA), and a
    heartbeat beside the journal when there is one (``info``: what else the heartbeat says, e.g.
    the mode)."""
    from .checkpoint import heartbeat_path
    from .eta import ledger_for

    heartbeat = Heartbeat(heartbeat_path(journal_path), info=info) if journal_path else None
    return ProgressTracker(reporter, [t.nbody for t in tasks], ledger=ledger_for(tasks, cost_model), heartbeat=heartbeat)
