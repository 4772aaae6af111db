"""``python -m qcmb_hpc report PATH [-o HTML] [--color-by level|mc] [--from report|journal]``: the
run report as pictures.

PATH is a run's result, report, journal or input (see :func:`qcmb_hpc.status.find_run_files`).
It writes ``NAME.report.html`` — self-contained: the pictures are embedded — and the pictures
beside it as PNGs (``NAME.report-gantt.png``, ``-utilisation``, ``-estimates``, ``-levels``):

* **Gantt chart** — every attempt on its worker over time, coloured by n-body level (or model
  chemistry); failed attempts red and cross-hatched, attempts cut by a stop grey and hatched,
  successful retries dotted;
* **utilisation over time** — the share of workers running a fragment, with its mean;
* **estimated against measured cost** — log–log, one point per successful attempt, with the rank
  correlation (Spearman) between the estimates the run started with and the measured times;
* **time per n-body level** — fragment seconds of each level (stacked by model chemistry);
* **summary numbers** — efficiency against the lower bound, steals, retries, restarts, failures,
  the workers and where they ran, qcmb_hpc's and each program's version.

The data comes from the run report (``NAME.report.json``, which the command line writes for every
run that ends, including ones that fail or are stopped) or, for a run that was killed before it
could write one, from its journal and heartbeat (then steals and restarts are not known, and only
successful attempts are drawn: the journal records results). By default the newer of the two.

Drawing needs matplotlib (``pip install 'qcmb_hpc[report]'``); without it the command says so in
one line. Loading (:func:`load_run`) is separate from drawing (:func:`render`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .checkpoint import JournalError, label_parts, number, read_heartbeat, scan
from .cost import spearman
from .schedule import makespan_lower_bound
from .status import RunFiles, StatusError, find_run_files, summarize

__all__ = ["Attempt", "RunData", "load_run", "render", "FIGURES", "main"]

#: the pictures, in the order the page shows them
FIGURES = ("gantt", "utilisation", "estimates", "levels")

MATPLOTLIB_MISSING = "the report's pictures need matplotlib: pip install 'qcmb_hpc[report]' (or pip install matplotlib)"


@dataclass
class Attempt:
    label: str
    nbody: int
    mc: str
    worker: int
    host: str
    start: Optional[float]  #: seconds since the run started (None: not known, e.g. a lost worker)
    seconds: Optional[float]
    attempt: int
    status: str  #: success, failed, cut, lost
    error_type: Optional[str] = None
    estimate_initial: Optional[float] = None
    estimate_final: Optional[float] = None


@dataclass
class RunData:
    """What the pictures are drawn from, whichever file it came from."""

    name: str
    source: str  #: "report" or "journal"
    attempts: List[Attempt]
    summary: Dict[str, Any] = field(default_factory=dict)
    workers: Dict[int, str] = field(default_factory=dict)  #: worker → host
    span: float = 0.0  #: seconds from the start to the end of the last attempt (or the makespan)


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------


def load_run(files: RunFiles, prefer: Optional[str] = None) -> RunData:
    """The run's data from its report, or from its journal (``prefer``; default: the newer)."""
    use = prefer
    if use is None:
        if files.report and files.journal:
            use = "report" if os.path.getmtime(files.report) >= os.path.getmtime(files.journal) else "journal"
        else:
            use = "report" if files.report else "journal"
    if use == "report":
        if not files.report:
            raise StatusError(f"{files.stem}: no run report ({files.stem}.report.json)")
        return _from_report(files)
    if not files.journal:
        raise StatusError(f"{files.stem}: no journal ({files.stem}.checkpoint.jsonl)")
    return _from_journal(files)


def _from_report(files: RunFiles) -> RunData:
    try:
        with open(files.report) as fh:  # type: ignore[arg-type]
            rep = json.load(fh)
    except (OSError, ValueError) as exc:
        raise StatusError(f"cannot read the run report {files.report}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(rep, dict) or "workers" not in rep:
        raise StatusError(f"{files.report} is not a qcmb_hpc run report")
    cols = rep.get("attempts") or {}
    n = len(cols.get("label", ()))
    starts = [s for s in cols.get("start", ()) if isinstance(s, (int, float))]
    t0 = rep.get("started") or (min(starts) if starts else 0.0)
    attempts = []
    for i in range(n):
        get = lambda c: (cols.get(c) or [None] * n)[i]  # noqa: E731
        start = get("start")
        attempts.append(
            Attempt(
                label=str(get("label")), nbody=int(get("nbody") or 0), mc=str(get("mc")), worker=int(get("worker") or 0),
                host=str(get("host") or ""), start=(start - t0) if isinstance(start, (int, float)) else None,
                seconds=get("seconds"), attempt=int(get("attempt") or 1), status=str(get("status")),
                error_type=get("error_type"), estimate_initial=get("estimate_initial"), estimate_final=get("estimate_final"),
            )
        )
    workers = {int(w): str((info or {}).get("host") or "") for w, info in (rep.get("worker_layout") or {}).items()}
    for a in attempts:
        workers.setdefault(a.worker, a.host)
    summary = {
        "state": "failed" if rep.get("failed") else ("stopped (incomplete)" if rep.get("incomplete") else "finished"),
        **{k: rep.get(k) for k in (
            "mode", "strategy", "workers", "fragments", "computed", "restored", "failed", "retried_attempts",
            "wall_seconds", "makespan_seconds", "lower_bound_seconds", "efficiency", "steals", "steal_requests",
            "restarts", "estimate_rank_correlation", "lost_workers", "layout", "versions", "started", "fell_back_to_sequential",
        )},
    }
    summary["cut_attempts"] = sum(1 for a in attempts if a.status == "cut")
    span = max([rep.get("makespan_seconds") or 0.0] + [a.start + a.seconds for a in attempts if a.start is not None and a.seconds])
    return RunData(os.path.basename(files.stem), "report", attempts, summary, workers, span)


def _from_journal(files: RunFiles) -> RunData:
    try:
        sc = scan(files.journal)  # type: ignore[arg-type]
    except OSError as exc:
        raise StatusError(f"cannot read {files.journal}: {exc.strerror or exc}") from None
    hb = read_heartbeat(files.heartbeat) if files.heartbeat else None
    import socket

    st = summarize(sc.header, sc.records, hb, time.time(), socket.gethostname())
    t0 = st.get("started") or 0.0
    attempts = []
    earlier = 0
    for rec in {r["label"]: r for r in sc.records}.values():
        start = number(rec, "started")
        if start is None or start < t0 - 1.0:
            earlier += 1  # finished in an earlier run of this journal: restored, not drawn
            continue
        mc, nbody = label_parts(rec["label"])
        attempt = int(number(rec, "attempt") or 1)
        attempts.append(
            Attempt(
                label=rec["label"], nbody=nbody, mc=mc, worker=int(number(rec, "worker") or 0), host=str(rec.get("host") or ""),
                start=start - t0, seconds=number(rec, "seconds"), attempt=attempt, status="success",
                estimate_initial=number(rec, "estimate_initial"), estimate_final=number(rec, "estimate"),
            )
        )
    attempts.sort(key=lambda a: a.start or 0.0)
    workers = {a.worker: a.host for a in sorted(attempts, key=lambda a: a.worker)}
    seconds = [a.seconds for a in attempts if a.seconds is not None]
    n_workers = int((hb or {}).get("workers") or len(workers) or 1)
    span = max([a.start + a.seconds for a in attempts if a.start is not None and a.seconds] or [0.0])
    lb = makespan_lower_bound(seconds, n_workers) if seconds else 0.0
    est = [(a.estimate_initial, a.seconds) for a in attempts if a.estimate_initial and a.seconds]
    summary = {
        "state": st["state"] + (f" ({st['detail']})" if st.get("detail") else ""),
        "mode": (hb or {}).get("mode"),
        "workers": n_workers,
        "fragments": st["total"],
        "computed": len(attempts),
        "restored": earlier,
        "failed": st.get("failed"),
        "retried_attempts": sum(a.attempt - 1 for a in attempts),
        "makespan_seconds": span,
        "lower_bound_seconds": lb,
        "efficiency": (lb / span) if span > 0 and lb > 0 else None,
        "estimate_rank_correlation": spearman([e for e, _ in est], [s for _, s in est]) if len(est) > 1 else None,
        "started": t0,
        "versions": None,
    }
    return RunData(os.path.basename(files.stem), "journal", attempts, summary, workers, span)


# ------------------------------------------------------------------------------------------------
# drawing
# ------------------------------------------------------------------------------------------------


def _unit(span: float) -> Tuple[float, str]:
    if span > 3 * 3600:
        return 3600.0, "h"
    if span > 3 * 60:
        return 60.0, "min"
    return 1.0, "s"


def _colours(keys: Sequence[Any]) -> Dict[Any, Any]:
    """One colour per key: an n-body level keeps its colour whichever levels a picture shows
    (1-body is always the first colour); other keys (model chemistries) go in order."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    if all(isinstance(k, int) and k > 0 for k in keys):
        return {k: cmap((k - 1) % 10) for k in keys}
    return {k: cmap(i % 10) for i, k in enumerate(keys)}


def _key(a: Attempt, by: str) -> Any:
    return a.nbody if by == "level" else a.mc


def _key_name(k: Any, by: str) -> str:
    return f"{k}-body" if by == "level" else str(k)


def _gantt(data: RunData, by: str):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    scale, unit = _unit(data.span)
    rows = sorted(data.workers, key=lambda w: (data.workers[w], w))
    y = {w: i for i, w in enumerate(rows)}
    n = max(1, len(rows))
    fig, ax = plt.subplots(figsize=(11, min(9.0, 1.9 + 0.32 * n)))
    keys = sorted({_key(a, by) for a in data.attempts}, key=lambda k: (str(type(k)), k))
    col = _colours(keys)
    style = {
        "success": dict(edgecolor="white", linewidth=0.3, hatch=None, alpha=1.0),
        "retry": dict(edgecolor="black", linewidth=0.8, hatch="...", alpha=1.0),
        "failed": dict(edgecolor="#b00000", linewidth=1.0, hatch="xxx", alpha=0.9),
        "cut": dict(edgecolor="#555555", linewidth=0.8, hatch="///", alpha=0.6),
    }
    groups: Dict[Tuple[int, Any, str], List[Tuple[float, float]]] = {}
    for a in data.attempts:
        if a.start is None or not a.seconds or a.worker not in y:
            continue
        kind = a.status if a.status in ("failed", "cut") else ("retry" if a.attempt > 1 else "success")
        groups.setdefault((a.worker, _key(a, by), kind), []).append((a.start / scale, a.seconds / scale))
    height = 0.8 if n <= 64 else 1.0
    for (w, k, kind), spans in groups.items():
        s = style[kind]
        face = "#e06060" if kind == "failed" else ("#bbbbbb" if kind == "cut" else col[k])
        ax.broken_barh(spans, (y[w] - height / 2, height), facecolors=face, edgecolors=s["edgecolor"],
                       linewidth=s["linewidth"] if n <= 64 else 0, hatch=s["hatch"], alpha=s["alpha"])
    ax.set_ylim(-0.7, n - 0.3)
    ax.invert_yaxis()
    if n <= 40:
        ax.set_yticks(range(n))
        ax.set_yticklabels([f"{w} ({data.workers[w]})" if data.workers[w] else str(w) for w in rows], fontsize=8)
    else:
        ax.set_yticks([])
    ax.set_ylabel(f"worker ({len(rows)})")
    ax.set_xlim(0, max(data.span, 1e-9) / scale * 1.01)
    ax.set_xlabel(f"time since the run started [{unit}]")
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(facecolor=col[k], label=_key_name(k, by)) for k in keys]
    kinds = {kind for (_w, _k, kind) in groups}
    if "retry" in kinds:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="...", label="succeeded on a retry"))
    if "failed" in kinds:
        handles.append(Patch(facecolor="#e06060", edgecolor="#b00000", hatch="xxx", label="failed attempt"))
    if "cut" in kinds:
        handles.append(Patch(facecolor="#bbbbbb", edgecolor="#555555", hatch="///", label="cut by a stop"))
    first = _first_start(data)
    if first > 0.02 * data.span:
        ax.axvspan(0, first / scale, color="#eeeeee", zorder=0)
        ax.text(first / scale / 2, -0.5, "start-up", ha="center", va="bottom", fontsize=8, color="#666666")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False, fontsize=9)
    ax.set_title(f"{data.name}: fragments on each worker (coloured by {'n-body level' if by == 'level' else 'model chemistry'})")
    fig.tight_layout()
    return fig


def _first_start(data: RunData) -> float:
    starts = [a.start for a in data.attempts if a.start is not None]
    return min(starts) if starts else 0.0


def busy_curve(attempts: Sequence[Attempt]) -> Tuple[List[float], List[int]]:
    """(times, workers busy from that time on): a step function from every attempt's interval."""
    events: List[Tuple[float, int]] = []
    for a in attempts:
        if a.start is not None and a.seconds:
            events.append((a.start, 1))
            events.append((a.start + a.seconds, -1))
    events.sort()
    times, busy = [0.0], [0]
    level = 0
    for t, d in events:
        level += d
        if times and t == times[-1]:
            busy[-1] = level
        else:
            times.append(t)
            busy.append(level)
    return times, busy


def _utilisation(data: RunData):
    import matplotlib.pyplot as plt

    scale, unit = _unit(data.span)
    n = max(1, int(data.summary.get("workers") or len(data.workers) or 1))
    times, busy = busy_curve(data.attempts)
    times.append(data.span)
    busy.append(busy[-1] if busy else 0)
    fig, ax = plt.subplots(figsize=(11, 3.4))
    xs = [t / scale for t in times]
    ys = [100.0 * b / n for b in busy]
    ax.fill_between(xs, ys, step="post", alpha=0.35, color="#1f77b4")
    ax.step(xs, ys, where="post", color="#1f77b4", linewidth=1.2)
    work = sum(a.seconds for a in data.attempts if a.seconds and a.start is not None)
    mean = 100.0 * work / (n * data.span) if data.span > 0 else 0.0
    first = _first_start(data)
    running = 100.0 * work / (n * (data.span - first)) if data.span > first else 0.0
    ax.axhline(mean, color="#d62728", linestyle="--", linewidth=1.2, label=f"mean {mean:.1f}% of {n} workers over the run")
    if first > 0.02 * data.span:
        ax.axvspan(0, first / scale, color="#eeeeee", zorder=0, label="start-up")
        ax.hlines(running, first / scale, data.span / scale, color="#2ca02c", linestyle=":", linewidth=1.5,
                  label=f"mean {running:.1f}% from the first fragment on")
    ax.set_ylim(0, 105)
    ax.set_xlim(0, max(data.span, 1e-9) / scale)
    ax.set_ylabel("workers busy [%]")
    ax.set_xlabel(f"time since the run started [{unit}]")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    ax.set_title("utilisation over time")
    fig.tight_layout()
    return fig


def _estimates(data: RunData, by: str):
    import matplotlib.pyplot as plt
    import numpy as np

    ok = [a for a in data.attempts if a.status == "success" and a.seconds and a.seconds > 0 and a.estimate_initial and a.estimate_initial > 0]
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    keys = sorted({_key(a, by) for a in ok}, key=lambda k: (str(type(k)), k))
    col = _colours(keys)
    for k in keys:
        pts = [a for a in ok if _key(a, by) == k]
        ax.scatter([a.estimate_initial for a in pts], [a.seconds for a in pts], s=16, color=col[k], alpha=0.75,
                   edgecolors="none", label=_key_name(k, by))
    rho = spearman([a.estimate_initial for a in ok], [a.seconds for a in ok]) if len(ok) > 1 else None
    if len(ok) > 1:
        x = np.log([a.estimate_initial for a in ok])
        yv = np.log([a.seconds for a in ok])
        if np.ptp(x) > 0:
            b, a0 = np.polyfit(x, yv, 1)
            xs = np.linspace(x.min(), x.max(), 50)
            ax.plot(np.exp(xs), np.exp(a0 + b * xs), color="black", linewidth=1, linestyle="--",
                    label=f"fit: seconds ∝ estimate^{b:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("estimated cost when the run started")
    ax.set_ylabel("measured seconds")
    ax.grid(alpha=0.3, which="both")
    if ok:
        ax.legend(fontsize=8, loc="upper left")
    ax.set_title("estimated against measured cost" + (f"\nrank correlation (Spearman) ρ = {rho:.2f}" if rho is not None else ""))
    fig.tight_layout()
    return fig, rho


def _levels(data: RunData):
    import matplotlib.pyplot as plt

    levels = sorted({a.nbody for a in data.attempts})
    mcs = sorted({a.mc for a in data.attempts})
    col = _colours(mcs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    scale, unit = _unit(sum(a.seconds or 0 for a in data.attempts) / max(1, len(levels)))
    bottom = [0.0] * len(levels)
    total = sum(a.seconds or 0.0 for a in data.attempts) or 1.0
    by_level = _colours(levels)  # one model chemistry: each level in its Gantt colour
    for mc in mcs:
        vals = [sum(a.seconds or 0.0 for a in data.attempts if a.nbody == lv and a.mc == mc) / scale for lv in levels]
        colour = col[mc] if len(mcs) > 1 else [by_level[lv] for lv in levels]
        ax.bar([str(lv) for lv in levels], vals, bottom=bottom, color=colour, label=mc if len(mcs) > 1 else None)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, lv in enumerate(levels):
        count = sum(1 for a in data.attempts if a.nbody == lv and a.status == "success")
        share = 100.0 * bottom[i] * scale / total
        ax.annotate(f"{count} fragments\n{share:.0f}%", (i, bottom[i]), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")
    ax.set_ylim(0, max(bottom or [1]) * 1.25)
    ax.set_xlabel("n-body level")
    ax.set_ylabel(f"fragment time, all workers [{unit}]")
    if len(mcs) > 1:
        ax.legend(fontsize=8)
    ax.set_title("time per n-body level")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def render(data: RunData, html_path: str, by: str = "level") -> Dict[str, str]:
    """Write the PNGs and the HTML page; returns {figure: path} (and "html")."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    base = html_path[: -len(".html")] if html_path.endswith(".html") else html_path
    figs = {"gantt": _gantt(data, by), "utilisation": _utilisation(data)}
    figs["estimates"], rho = _estimates(data, by)
    figs["levels"] = _levels(data)
    paths: Dict[str, str] = {}
    embedded: Dict[str, str] = {}
    for name in FIGURES:
        buf = io.BytesIO()
        figs[name].savefig(buf, format="png", dpi=110)
        plt.close(figs[name])
        png = buf.getvalue()
        path = f"{base}-{name}.png"
        with open(path, "wb") as fh:
            fh.write(png)
        paths[name] = path
        embedded[name] = base64.b64encode(png).decode()
    from .checkpoint import write_atomically

    write_atomically(html_path, _page(data, embedded, rho))
    paths["html"] = html_path
    return paths


def _fmt(v: Any, unit: str = "", digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def _page(data: RunData, png: Dict[str, str], rho: Optional[float]) -> str:
    s = data.summary
    eff = s.get("efficiency")
    rows = [
        ("state", s.get("state")),
        ("fragments", f"{s.get('fragments')} ({s.get('computed')} computed in this run, {s.get('restored') or 0} restored from the checkpoint)"),
        ("workers", f"{s.get('workers')}" + (f" ({s.get('mode')}" + (f", {s['strategy']}" if s.get("strategy") else "") + ")" if s.get("mode") else "")),
        ("efficiency against the lower bound", (f"{eff:.3f} = lower bound {_fmt(s.get('lower_bound_seconds'), ' s')} / "
                                                f"{_fmt(s.get('makespan_seconds'), ' s')} running fragments") if eff else "n/a"),
        ("wall time of the command", _fmt(s.get("wall_seconds"), " s")),
        ("failed fragments", _fmt(s.get("failed"))),
        ("retried attempts", _fmt(s.get("retried_attempts"))),
        ("attempts cut by a stop", _fmt(s.get("cut_attempts"))),
        ("steals", _fmt(s.get("steals")) + (f" (of {s['steal_requests']} requests)" if s.get("steal_requests") else "")),
        ("worker restarts (crashed, killed or timed-out children)", _fmt(s.get("restarts"))),
        ("estimate rank correlation", _fmt(s.get("estimate_rank_correlation") if s.get("estimate_rank_correlation") is not None else rho)),
        ("lost workers", "; ".join(s.get("lost_workers") or []) or "none" if s.get("lost_workers") is not None else "n/a"),
    ]
    if s.get("fell_back_to_sequential"):
        rows.append(("fell back to sequential", s["fell_back_to_sequential"]))
    if s.get("started"):
        rows.insert(1, ("started", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["started"]))))
    lay = s.get("layout") or {}
    if lay:
        rows.append(("layout", f"{lay.get('workers')} workers × {lay.get('threads_per_worker')} threads, "
                               f"{_bytes(lay.get('memory_per_worker'))} each, scratch {lay.get('scratch')}"))
    hosts: Dict[str, List[int]] = {}
    for w, h in sorted(data.workers.items()):
        hosts.setdefault(h or "?", []).append(w)
    rows.append(("hosts", "; ".join(f"{h}: {len(ws)} worker{'s' if len(ws) != 1 else ''}" for h, ws in hosts.items()) or "n/a"))
    ver = s.get("versions") or {}
    if ver:
        progs = ", ".join(f"{p} {v or '(version unknown)'}" for p, v in (ver.get("programs") or {}).items())
        rows.append(("versions", f"qcmb_hpc {ver.get('qcmb_hpc') or '?'}" + (f"; {progs}" if progs else "")))
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    note = ("" if data.source == "report" else
            "<p class=note>Drawn from the journal (no run report: the run was killed, or is still running): "
            "successful attempts only; steals and restarts are not known.</p>")
    caption = {
        "gantt": "Every attempt on its worker over time.",
        "utilisation": "Share of the workers running a fragment.",
        "estimates": "One point per successful attempt: the estimate the run started with against the measured time.",
        "levels": "Fragment time of each n-body level, all workers together.",
    }
    figures = "\n".join(
        f'<figure id="{name}"><img alt="{name}" src="data:image/png;base64,{png[name]}"><figcaption>{caption[name]}</figcaption></figure>'
        for name in FIGURES
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qcmb_hpc run report: {html.escape(data.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; vertical-align: top; }}
th {{ font-weight: 600; white-space: nowrap; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: 0.9em; }}
.note {{ background: #fff6e0; padding: 0.5em 1em; }}
.pair {{ display: flex; flex-wrap: wrap; gap: 1em; }}
</style></head>
<body>
<h1>qcmb_hpc run report: {html.escape(data.name)}</h1>
{note}
<table id="summary">
{table}
</table>
{figures}
<p style="color:#777;font-size:0.8em">Written by python -m qcmb_hpc report on {time.strftime("%Y-%m-%d %H:%M:%S")} from the {data.source}.</p>
</body></html>
"""


def _bytes(n: Any) -> str:
    if not isinstance(n, (int, float)) or n <= 0:
        return "?"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    from .cli import EXIT_USAGE, UsageError, _Parser, _fail

    p = _Parser(prog="python -m qcmb_hpc report", description="Draw a run's report: an HTML page with pictures (and the PNGs).")
    p.add_argument("path", metavar="PATH", help="the run's result, report, journal or input")
    p.add_argument("-o", "--output", help="the HTML file (default: NAME.report.html beside the run's files)")
    p.add_argument("--color-by", choices=("level", "mc"), default="level", help="colour fragments by n-body level (default) or model chemistry")
    p.add_argument("--from", dest="source", choices=("report", "journal"), default=None, help="draw from this file (default: the newer)")
    try:
        args = p.parse_args(list(argv))
        files = find_run_files(args.path)
        data = load_run(files, args.source)
    except (UsageError, StatusError, JournalError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return _fail(EXIT_USAGE, MATPLOTLIB_MISSING)
    out = args.output or files.stem + ".report.html"
    try:
        paths = render(data, out, by=args.color_by)
    except OSError as exc:
        return _fail(EXIT_USAGE, f"cannot write {out}: {exc.strerror or exc}")
    print(f"qcmb_hpc: report written to {paths['html']} (pictures: {', '.join(os.path.basename(paths[f]) for f in FIGURES)})")
    return 0
