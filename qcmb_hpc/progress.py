"""Progress: the reporter interface, its console and file reporters, and the one tracker that
turns fragment completions into level events for every mode.

Levels are n-body levels (the number of real fragments). They do not run one after another: every
fragment is independent, so all levels start together and a level is "completed" when its last
fragment is.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import IO, Any, Dict, Iterable, Optional, Sequence, Tuple

__all__ = [
    "ProgressReporter",
    "ConsoleProgressReporter",
    "FileProgressReporter",
    "MultiProgressReporter",
    "make_reporter",
    "EVENTS",
    "ProgressTracker",
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
    """A progress bar on a terminal (tqdm); plain periodic lines when the stream is not a terminal
    (a Slurm output file, a pipe): one per 10% of the fragments or per ``interval`` seconds.

    The bar follows the terminal's width; a terminal that reports no size (a fresh pseudo-terminal)
    gets ``$COLUMNS`` (else 80) columns. It starts at the fragments restored from a checkpoint."""

    def __init__(self, show_progress_bar: bool = True, stream: Optional[IO[str]] = None, interval: float = 10.0):
        self.stream = stream or sys.stderr
        self.interval = interval
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.use_bar = bool(show_progress_bar and is_tty)
        self.total = 0
        self.done = 0
        self.failed = 0
        self.t0 = time.perf_counter()
        self._last_line = 0.0
        self._last_fraction = 0.0
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
            self._bar = tqdm(total=self.total, initial=self.done, file=self.stream, unit="frag", **size)

    def _line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def on_level_started(self, level, fragment_count):
        if self.total == 0:
            self.t0 = time.perf_counter()
        self.total += fragment_count

    def on_fragments_restored(self, count):
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        if count:
            self._line(f"qcmb_hpc: {count} fragments restored from the checkpoint")

    def on_fragment_completed(self, fragment_label, success):
        with self._lock:
            if self.use_bar:
                self._ensure_bar()  # before counting: the bar starts at what was done before
            self.done += 1
            if not success:
                self.failed += 1
                self._line(f"qcmb_hpc: fragment {fragment_label} failed")
            if self._bar is not None:
                self._bar.update(1)
                return
            now = time.perf_counter()
            frac = self.done / self.total if self.total else 1.0
            if now - self._last_line >= self.interval or frac - self._last_fraction >= 0.1 or self.done == self.total:
                self._last_line, self._last_fraction = now, frac
                elapsed = now - self.t0
                rate = self.done / elapsed if elapsed > 0 else 0.0
                self._line(
                    f"qcmb_hpc: {self.done}/{self.total} fragments ({100 * frac:.0f}%), "
                    f"{elapsed:.1f} s elapsed, {rate:.1f}/s" + (f", {self.failed} failed" if self.failed else "")
                )

    def on_fragment_retried(self, fragment_label, attempt, error):
        self._line(f"qcmb_hpc: fragment {fragment_label} attempt {attempt} failed ({error}); retrying")

    def on_level_completed(self, level, duration):
        self._line(f"qcmb_hpc: {level}-body level complete at {duration:.2f} s")

    def on_calculation_completed(self, total_duration):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._line(f"qcmb_hpc: all {self.total} fragments done in {total_duration:.2f} s")


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


class ProgressTracker:
    """Mechanism shared by every mode: per-level counts → reporter events."""

    def __init__(self, reporter: Optional[ProgressReporter], levels: Sequence[int], clock=time.perf_counter):
        self.reporter = reporter
        self.clock = clock
        self.t0 = clock()
        self.remaining: Dict[int, int] = {}
        self.total: Dict[int, int] = {}
        for lvl in levels:
            self.total[lvl] = self.total.get(lvl, 0) + 1
        self.remaining = dict(self.total)

    def start(self, restored_levels: Sequence[int] = ()) -> None:
        self.t0 = self.clock()
        if self.reporter is None:
            return
        for lvl in sorted(self.total):
            self.reporter.on_level_started(lvl, self.total[lvl])
        if restored_levels:
            self.reporter.on_fragments_restored(len(restored_levels))
        for lvl in restored_levels:
            self._count(lvl)

    def _count(self, level: int) -> None:
        self.remaining[level] -= 1
        if self.remaining[level] == 0 and self.reporter is not None:
            self.reporter.on_level_completed(level, self.clock() - self.t0)

    def completed(self, label: str, level: int, success: bool) -> None:
        if self.reporter is not None:
            self.reporter.on_fragment_completed(label, success)
        self._count(level)

    def retried(self, label: str, attempt: int, error: str) -> None:
        if self.reporter is not None:
            self.reporter.on_fragment_retried(label, attempt, error)

    def finish(self) -> float:
        total = self.clock() - self.t0
        if self.reporter is not None:
            self.reporter.on_calculation_completed(total)
        return total
