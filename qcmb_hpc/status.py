"""``python -m qcmb_hpc status PATH [--json] [--watch [SECONDS]]``: how far along a run is.

PATH is the journal (``NAME.checkpoint.jsonl``), or the input, result or report whose journal it
is (``NAME.json``, ``NAME.result.json``, ``NAME.report.json``, all beside it), or a directory
holding one journal. It is safe from another shell or node while the job writes the journal:
reading takes no lock and changes nothing (:class:`qcmb_hpc.checkpoint.JournalScanner`), and a line
being written is not counted until it is whole.

What it says — fragments done of all, per n-body level and per model chemistry, failures, the
rate, the cost-weighted ETA — comes from the journal (durable: every finished fragment) and the
heartbeat beside it (the running coordinator's live state, replaced every few seconds: fragments
running, failures, the ETA from its calibrated cost model). Which state the run is in:

* ``running`` / ``stopping`` — the heartbeat says so and its process is alive (same host: its pid
  exists and started when the heartbeat says; another host: the heartbeat is fresh);
* ``finished``, ``failed`` (some fragments failed for good), ``stopped`` (by a signal, resumable),
  ``broken`` (the parallel machinery failed) — the heartbeat's last word;
* ``killed`` — the heartbeat says running but its process is gone (SIGKILL, out of memory, a node
  failure, a time limit without a warning signal);
* ``lost`` — on another host and no heartbeat for a while: killed, or its node cannot be reached;
* without a heartbeat (a journal of an older version) the header's pid and host decide,
  ``not running`` or ``unknown`` where they cannot.

Policy and mechanism apart: :func:`summarize` is a pure function of what was read (header,
records, heartbeat, the time, whether the process is alive); :func:`main` reads, prints, repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, TextIO

from .checkpoint import JournalError, JournalScanner, heartbeat_path, label_parts, number, read_heartbeat
from .eta import eta_seconds
from .progress import format_duration, format_rate

__all__ = ["RunFiles", "StatusError", "find_run_files", "summarize", "format_status", "pid_alive", "main"]

RUNNING = ("running", "stopping")
ENDED = ("finished", "failed", "stopped", "broken")


class StatusError(Exception):
    """A PATH that names no run (a one-line error, exit 2)."""


@dataclass
class RunFiles:
    """The files of one run (``NAME.*`` side by side); each None when it is not there."""

    stem: str
    journal: Optional[str]
    report: Optional[str]
    result: Optional[str]

    @property
    def heartbeat(self) -> Optional[str]:
        return heartbeat_path(self.journal) if self.journal else None


SUFFIXES = (".checkpoint.jsonl.heartbeat", ".checkpoint.jsonl", ".report.json", ".report.html", ".result.json")


def find_run_files(path: str) -> RunFiles:
    """The run ``path`` belongs to (see the module docstring); :class:`StatusError` if none."""
    if os.path.isdir(path):
        journals = sorted(f for f in os.listdir(path) if f.endswith(".checkpoint.jsonl"))
        if len(journals) != 1:
            what = "no journal" if not journals else f"{len(journals)} journals ({', '.join(journals[:3])})"
            raise StatusError(f"{path} is a directory with {what}; name the journal (NAME.checkpoint.jsonl)")
        path = os.path.join(path, journals[0])
    if not os.path.exists(path):
        raise StatusError(f"{path} does not exist")
    if not os.path.isfile(path):
        raise StatusError(f"{path} is not a file")
    stem = None
    for suffix in SUFFIXES:
        if path.endswith(suffix):
            stem = path[: -len(suffix)]
            break
    journal = None
    if stem is None:
        if _is_journal(path):  # a journal under a name of the user's (--checkpoint PATH)
            return RunFiles(os.path.splitext(path)[0], path, None, None)
        stem = os.path.splitext(path)[0]  # an input: NAME.json → NAME.result.json, ...
    journal = stem + ".checkpoint.jsonl"
    files = RunFiles(
        stem,
        journal if os.path.isfile(journal) else None,
        stem + ".report.json" if os.path.isfile(stem + ".report.json") else None,
        stem + ".result.json" if os.path.isfile(stem + ".result.json") else None,
    )
    if files.journal is None and files.report is None:
        raise StatusError(f"{path}: no journal ({journal}) and no run report beside it: not a qcmb_hpc run")
    return files


def _is_journal(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            first = fh.readline(4096)
        return b'"qcmb_hpc-journal"' in first
    except OSError:
        return False


def pid_alive(pid: Any, started: Any = None) -> bool:
    """Whether process ``pid`` of this host exists (and, with ``started``, is the process that
    started then, not a later one that got the same pid)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        import psutil

        proc = psutil.Process(pid)
        if isinstance(started, (int, float)) and abs(proc.create_time() - float(started)) > 2.0:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def _stale_after(heartbeat: Dict[str, Any]) -> float:
    """A heartbeat older than this (seconds) is no longer a sign of life."""
    interval = number(heartbeat, "interval") or 10.0
    return 3 * interval + 30.0


def summarize(
    header: Optional[Dict[str, Any]],
    records: Sequence[Dict[str, Any]],
    heartbeat: Optional[Dict[str, Any]],
    now: float,
    host: str,
    alive: Callable[[Any, Any], bool] = pid_alive,
    report: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Where the run stands, from what was read (pure but for ``alive``, which is asked only about
    a pid on this ``host``). Keys: see :func:`format_status`; ``None`` where it cannot be told."""
    header = header or {}
    if heartbeat is not None and (number(heartbeat, "started") or 0) + 5 < (number(header, "created") or 0):
        heartbeat = None  # from a run before this journal was made (--fresh)
    hb = heartbeat or {}
    # -- the state
    pid = hb.get("pid", header.get("pid"))
    where = hb.get("host", header.get("host"))
    updated = number(hb, "updated")
    state, why = "unknown", ""
    if heartbeat is not None:
        said = hb.get("state")
        if said in ENDED:
            state = said
        elif where == host:
            state = said if alive(pid, hb.get("pid_started")) else "killed"
            why = f"pid {pid} on {where}" + ("" if state != "killed" else " is gone")
        elif updated is not None and now - updated <= _stale_after(hb):
            state = said if said in RUNNING else "unknown"
            why = f"pid {pid} on {where}"
        else:
            state = "lost"
            why = f"pid {pid} on {where}: no heartbeat for {format_duration(now - (updated or now))}"
    elif report is not None:
        state = "failed" if report.get("failed") else ("stopped" if report.get("incomplete") else "finished")
    elif pid is not None:
        if where == host:
            state = "running" if alive(pid, None) else "not running"
            why = f"pid {pid} on {where}"
        else:
            why = f"pid {pid} on {where}, another host; no heartbeat"
    # -- counts from the journal (the durable truth), totals from its header
    done_labels: Dict[str, Dict[str, Any]] = {}
    for rec in records:
        done_labels[rec["label"]] = rec
    total = int(number(header, "fragments") or number(hb, "total") or (report or {}).get("fragments") or len(done_labels))
    if not records and report is not None and heartbeat is None:
        done = int(report.get("computed", 0)) + int(report.get("restored", 0))
    else:
        done = len(done_labels)
    groups: Dict[str, Dict[str, Dict[str, int]]] = {"levels": {}, "model_chemistries": {}}
    for name in groups:
        for key, row in (header.get(name) or {}).items():
            if isinstance(row, dict):
                groups[name][str(key)] = {"done": 0, "total": int(number(row, "fragments") or 0)}
    for label in done_labels:
        mc, nbody = label_parts(label)
        for name, key in (("levels", str(nbody)), ("model_chemistries", mc)):
            row = groups[name].setdefault(key, {"done": 0, "total": 0})
            row["done"] += 1
    # -- this run (session): since the heartbeat's start, else the journal's
    started = number(hb, "started") or number(header, "created")
    session = [r for r in done_labels.values() if started is None or (number(r, "started") or 0) >= started - 1.0]
    running_now = state in RUNNING
    if running_now and started is not None:
        elapsed = now - started
    else:
        ends = [(number(r, "started") or 0) + (number(r, "seconds") or 0) for r in session]
        elapsed = number(hb, "elapsed") or ((max(ends) - started) if ends and started is not None else None)
    rate = len(session) / elapsed if elapsed and elapsed > 0 and session else None
    retried = number(hb, "retried")
    if retried is None:
        retried = sum(max(0, int(number(r, "attempt") or 1) - 1) for r in done_labels.values())
    failed = number(hb, "failed")
    if failed is None and report is not None:
        failed = report.get("failed")
    # -- ETA: the running coordinator's (calibrated) if its heartbeat is fresh, else the journal's
    eta, eta_source = None, None
    cost_total = number(header, "estimate")
    cost_done = None
    if cost_total:
        cost_done = sum(number(r, "estimate_initial") or 0.0 for r in done_labels.values())
    if running_now:
        hb_eta = number(hb, "eta")
        if hb_eta is not None and updated is not None:
            eta, eta_source = max(0.0, hb_eta - (now - updated)), "the run's cost-weighted ETA"
        elif cost_total and elapsed:
            sess_cost = sum(number(r, "estimate_initial") or 0.0 for r in session)
            eta = eta_seconds(sess_cost, cost_total - (cost_done or 0.0), elapsed)
            eta_source = "cost-weighted, from the journal"
        elif elapsed:
            eta = eta_seconds(len(session), total - done, elapsed)
            eta_source = "count-based, from the journal (no estimates in it)"
    cost_fraction = number(hb, "cost_fraction") if heartbeat is not None else None
    if cost_fraction is None and cost_total and cost_done is not None:
        cost_fraction = min(1.0, cost_done / cost_total)
    return {
        "state": state,
        "detail": why,
        "pid": pid,
        "host": where,
        "mode": hb.get("mode"),
        "workers": hb.get("workers"),
        "created": number(header, "created"),
        "started": started,
        "heartbeat_age": (now - updated) if updated is not None else None,
        "elapsed": elapsed,
        "total": total,
        "done": done,
        "done_this_run": len(session),
        "running": int(hb["running"]) if running_now and number(hb, "running") is not None else None,
        "failed": int(failed) if failed is not None else None,
        "retried": int(retried),
        "levels": dict(sorted(groups["levels"].items(), key=lambda kv: (len(kv[0]), kv[0]))),
        "model_chemistries": groups["model_chemistries"],
        "rate": rate,
        "cost_fraction": cost_fraction,
        "eta": eta,
        "eta_source": eta_source,
        "ends_at": (now + eta) if eta is not None else None,
    }


def format_status(name: str, s: Dict[str, Any]) -> str:
    """The summary as text, a few lines."""
    head = f"{name}: {s['state']}" + (f" ({s['detail']})" if s.get("detail") else "")
    if s.get("heartbeat_age") is not None and s["state"] in RUNNING:
        head += f", heartbeat {format_duration(s['heartbeat_age'])} ago"
    lines = [head]
    when = []
    if s.get("started"):
        when.append("started " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["started"])))
    if s.get("elapsed") is not None:
        when.append(f"{format_duration(s['elapsed'])} " + ("elapsed" if s["state"] in RUNNING else "run"))
    if s.get("mode"):
        when.append(s["mode"] + (f", {s['workers']} workers" if s.get("workers") else ""))
    if when:
        lines.append("  " + "; ".join(when))
    total, done = s["total"], s["done"]
    frac = f" ({100 * done / total:.0f}%)" if total else ""
    parts = [f"{done}/{total} done{frac}"]
    if s.get("running") is not None:
        parts.append(f"{s['running']} running")
    parts.append(f"{s['failed']} failed" if s.get("failed") is not None else "failures not known")
    if s.get("retried"):
        parts.append(f"{s['retried']} attempt{'s' if s['retried'] != 1 else ''} retried")
    lines.append("  fragments: " + ", ".join(parts))
    for name_, title, fmt in (("levels", "n-body level", "{}-body"), ("model_chemistries", "model chemistry", "{}")):
        rows = s.get(name_) or {}
        if len(rows) > 1 or name_ == "levels":
            cells = [f"{fmt.format(k)} {r['done']}/{r['total']}" if r["total"] else f"{fmt.format(k)} {r['done']}" for k, r in rows.items()]
            if cells:
                lines.append(f"  by {title}: " + ", ".join(cells))
    tail = []
    if s.get("cost_fraction") is not None:
        tail.append(f"{100 * s['cost_fraction']:.0f}% of the estimated cost done")
    if s.get("rate"):
        tail.append(f"rate {format_rate(s['rate'])} in this run")
    if s.get("eta") is not None:
        fmt = "%H:%M:%S" if s["eta"] < 600 else ("%H:%M" if s["eta"] < 86400 else "%Y-%m-%d %H:%M")
        at = time.strftime(fmt, time.localtime(s["ends_at"]))
        tail.append(f"ETA {format_duration(s['eta'])} (around {at}; {s['eta_source']})")
    elif s["state"] in RUNNING and done < total:
        tail.append("ETA after the first result of this run")
    if tail:
        lines.append("  " + "; ".join(tail))
    if s["state"] in ("killed", "lost", "stopped", "not running", "broken") and done < total:
        lines.append(f"  {total - done} fragments left: run the same command again to resume")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# mechanism: read, print, repeat
# ------------------------------------------------------------------------------------------------


class _Reader:
    """The run's files, read again on each refresh (the journal incrementally)."""

    def __init__(self, files: RunFiles):
        self.files = files
        self.scanner = JournalScanner(files.journal) if files.journal else None

    def summary(self) -> Dict[str, Any]:
        header, records = None, []
        if self.scanner is not None:
            try:
                self.scanner.update()
            except OSError as exc:
                raise StatusError(f"cannot read {self.files.journal}: {exc.strerror or exc}") from None
            header, records = self.scanner.header, self.scanner.records
        heartbeat = read_heartbeat(self.files.heartbeat) if self.files.heartbeat else None
        report = None
        if self.files.report and (heartbeat is None or heartbeat.get("state") in ENDED):
            try:
                with open(self.files.report) as fh:
                    report = json.load(fh)
            except (OSError, ValueError):
                report = None
        return summarize(header, records, heartbeat, time.time(), socket.gethostname(), report=report)


def _parser() -> argparse.ArgumentParser:
    from .cli import _Parser

    p = _Parser(
        prog="python -m qcmb_hpc status",
        description="How far along a run is: fragments done, failures, rate, cost-weighted ETA; "
        "running, finished or killed. Safe while the job runs (read-only).",
    )
    p.add_argument("path", metavar="PATH", help="the journal (NAME.checkpoint.jsonl), or the run's input, result or report")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (one object per refresh)")
    p.add_argument(
        "--watch", nargs="?", type=float, const=5.0, default=None, metavar="SECONDS",
        help="refresh every SECONDS (default 5) until the run is no longer running",
    )
    p.add_argument("--count", type=int, default=None, metavar="N", help="with --watch: at most N refreshes")
    return p


def main(argv: Sequence[str], out: Optional[TextIO] = None, sleep: Callable[[float], None] = time.sleep) -> int:
    from .cli import EXIT_USAGE, UsageError, _fail

    out = out or sys.stdout
    try:
        args = _parser().parse_args(list(argv))
        if args.watch is not None and args.watch <= 0:
            raise UsageError(f"--watch {args.watch:g}: the interval must be positive")
        if args.count is not None and args.count < 1:
            raise UsageError(f"--count {args.count}: must be at least 1")
        files = find_run_files(args.path)
        reader = _Reader(files)
        shown = 0
        clear = args.watch is not None and not args.json and bool(getattr(out, "isatty", lambda: False)())
        while True:
            s = reader.summary()
            shown += 1
            if args.json:
                out.write(json.dumps({"path": files.journal or files.report, **s}) + "\n")
            else:
                if clear:
                    out.write("\033[H\033[J")
                elif shown > 1:
                    out.write("\n")
                out.write(format_status(os.path.basename(files.journal or files.report or args.path), s) + "\n")
            out.flush()
            if args.watch is None or s["state"] not in RUNNING or (args.count is not None and shown >= args.count):
                return 0
            sleep(args.watch)
    except (UsageError, StatusError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    except JournalError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except KeyboardInterrupt:
        return 0
