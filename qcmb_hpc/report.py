"""How well a run went: timings, utilisation, efficiency against the lower bound, estimate quality.

``LB = max(sum of fragment times / workers, longest fragment)`` is a bound no schedule can beat
(ignoring start-up); ``efficiency = LB / makespan``.

The efficiency is measured against the *makespan* — from the coordinator's start (workers
starting included) to its end — not against the wall time of the whole command, which also holds
planning, reading the input and assembling the result; the summary line says so.

Besides the summary numbers the report carries what the pictures of ``python -m qcmb_hpc report``
are drawn from (:mod:`qcmb_hpc.visualize`): ``started`` (wall clock, epoch seconds), ``versions``
(qcmb_hpc's and each program's, as ``qcengine.get_program(p).get_version()`` says), ``levels`` and
``model_chemistries`` (fragments and fragment seconds of each), and ``attempts``, one entry per
attempt of this run as columns of equal length: ``label``, ``nbody``, ``mc``, ``worker``, ``host``,
``start`` (wall clock), ``seconds``, ``attempt`` (1 = the fragment's first in this run),
``status`` (``success``, ``failed``, ``cut`` — ended by a stop, not counted —, or ``lost`` — its
worker died; no start or time known), ``error_type``, ``estimate_initial`` and ``estimate_final``
(the estimate after the last in-run refit). Columns rather than one object per attempt: a report
of 680k fragments stays ~100 bytes a fragment. Only rank 0 keeps the table (:func:`without_attempts`).

Where the coordinating process spent its time goes in ``phases`` (:class:`Phases`: seconds of
planning, estimates, journal, setup, start, loop — of which journal_writes —, report and
assembly), with ``first_dispatch_seconds`` (from the run's start to the first fragment sent to a
worker) and ``peak_rss_bytes`` (the process's peak resident memory, through assembly).

The estimate rank correlation pairs each fragment computed in this run with the estimate it had
when the run started (before any in-run refit re-estimated it) and the time of its *successful*
attempt (a failed or cut attempt of a fragment that later succeeded is not a measure of its cost).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .cost import spearman
from .schedule import makespan_lower_bound

__all__ = [
    "run_report",
    "summary_line",
    "successful_seconds",
    "estimate_pairs",
    "attempt_table",
    "program_versions",
    "without_attempts",
    "ATTEMPT_COLUMNS",
    "Phases",
    "peak_rss",
]

#: the columns of ``report["attempts"]``
ATTEMPT_COLUMNS = (
    "label", "nbody", "mc", "worker", "host", "start", "seconds", "attempt", "status", "error_type",
    "estimate_initial", "estimate_final",
)


class Phases:
    """Seconds per phase of a run on the coordinating process — the report's ``phases``: where the
    time of a big expansion goes (``planning``: QCManyBody's plan as tasks, the user's modules and
    the program check; ``estimates``: the cost model; ``journal``: opening it and what it restores;
    ``setup``: the layout, the run specification, the progress tracker; ``start``: the workers
    starting and the coordinator being built; ``loop``: the coordinator's run, of which
    ``journal_writes`` is appending and fsyncing the journal; ``report``: this report;
    ``assembly``: QCManyBody's ``analyze`` and ``get_results``). ``with phases("name"): ...``
    adds the block's seconds to ``name``."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


def peak_rss() -> Optional[int]:
    """This process's peak resident memory so far, in bytes (None where it cannot be read)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):  # pragma: no cover - not POSIX
        return None
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # (Linux: kilobytes)


def successful_seconds(timings: Sequence[Tuple[int, int, float, float]], succeeded: Any) -> Dict[int, float]:
    """Task id → seconds of its successful attempt, for the ids in ``succeeded``. The coordinator
    records every attempt in ``timings`` (task, worker, start, seconds) and none after a task's
    success, so a succeeded task's last entry is its success; restored tasks have no entry."""
    out: Dict[int, float] = {}
    for tid, _w, _start, sec in timings:
        if tid in succeeded:
            out[tid] = sec
    return out


def estimate_pairs(
    timings: Sequence[Tuple[int, int, float, float]], succeeded: Any, estimates: Mapping[int, float]
) -> Tuple[List[float], List[float]]:
    """(estimates, measured seconds) of the tasks that succeeded in this run, in one order."""
    est: List[float] = []
    meas: List[float] = []
    for tid, sec in successful_seconds(timings, succeeded).items():
        if tid in estimates:
            est.append(estimates[tid])
            meas.append(sec)
    return est, meas


def attempt_table(outcome: Any, tasks: List[Any], initial_costs: Optional[Mapping[int, float]] = None) -> Dict[str, List[Any]]:
    """Every attempt of this run (see the module docstring), in the order they reached the
    coordinator. ``outcome.timings`` holds each attempt that came back (success, failure, cut);
    ``outcome.attempts`` each *counted* failure, in order, with its worker and seconds — so an
    entry of ``timings`` that is not a task's last success and matches none of its counted
    failures was cut by a stop. A worker's death is a counted failure with no entry in ``timings``."""
    by_id = {t.id: t for t in tasks}
    cols: Dict[str, List[Any]] = {c: [] for c in ATTEMPT_COLUMNS}
    hosts = {w: (info.get("host") or "") for w, info in outcome.workers.items()}
    last_ok: Dict[int, int] = {}
    for k, (tid, _w, _st, _sec) in enumerate(outcome.timings):
        if tid in outcome.properties:
            last_ok[tid] = k
    def kind(a: Any) -> Optional[str]:
        return getattr(a, "error_type", None)

    failed_left: Dict[int, List[Any]] = {tid: [a for a in atts if kind(a) != "worker_lost"] for tid, atts in outcome.attempts.items()}
    tries: Dict[int, int] = {}

    def add(tid: int, worker: int, host: str, start: Optional[float], sec: Optional[float], status: str, error: Optional[str]) -> None:
        label, nbody, mc, cost = _about(by_id.get(tid), tid)
        tries[tid] = tries.get(tid, 0) + 1
        row = (label, nbody, mc, worker, host, start, sec, tries[tid], status, error, (initial_costs or {}).get(tid, cost), cost)
        for c, v in zip(ATTEMPT_COLUMNS, row):
            cols[c].append(v)

    for k, (tid, w, st, sec) in enumerate(outcome.timings):
        if last_ok.get(tid) == k:
            add(tid, w, hosts.get(w, ""), st, sec, "success", None)
            continue
        left = failed_left.get(tid)
        if left and getattr(left[0], "worker", w) == w and getattr(left[0], "seconds", sec) == sec:
            a = left.pop(0)
            add(tid, w, getattr(a, "host", "") or hosts.get(w, ""), st, sec, "failed", kind(a))
        else:
            add(tid, w, hosts.get(w, ""), st, sec, "cut", "cancelled")
    for tid, atts in outcome.attempts.items():
        for a in atts:
            if kind(a) == "worker_lost":
                add(tid, a.worker, a.host or hosts.get(a.worker, ""), None, None, "lost", "worker_lost")
    return cols


def _about(task: Any, tid: int) -> Tuple[str, int, str, Optional[float]]:
    """(label, n-body level, model chemistry, current estimate) of a task (any object: what it lacks is unknown)."""
    if task is None:
        return str(tid), 0, "?", None
    return (
        str(getattr(task, "label", tid)), int(getattr(task, "nbody", 0)), str(getattr(task, "mc", "?")),
        getattr(task, "cost", None),
    )


def program_versions(specifications: Optional[Mapping[str, Mapping[str, Any]]]) -> Dict[str, Optional[str]]:
    """Each program's version as qcengine reports it (None where it cannot say)."""
    out: Dict[str, Optional[str]] = {}
    if not specifications:
        return out
    import qcengine

    for chem in specifications.values():
        prog = str(chem.get("program"))
        if prog in out:
            continue
        try:
            v = qcengine.get_program(prog).get_version()
            out[prog] = None if v is None else str(v)
        except Exception:
            out[prog] = None
    return out


def _qcmb_hpc_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("qcmb_hpc")
    except Exception:
        return None


def without_attempts(rep: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The report without its per-attempt table (what ranks other than 0 keep)."""
    if not rep or "attempts" not in rep:
        return rep
    return {k: v for k, v in rep.items() if k != "attempts"}


def run_report(
    outcome: Any,
    tasks: List[Any],
    n_workers: int,
    mode: str,
    wall: float,
    initial_costs: Optional[Mapping[int, float]] = None,
    specifications: Optional[Mapping[str, Mapping[str, Any]]] = None,
    started: Optional[float] = None,
) -> Dict[str, Any]:
    """A JSON-able report of one run (``computer.run_info``, the CLI's ``NAME.report.json``; in
    ``ManyBodyResult.extras["qcmb_hpc"]`` only with ``report_in_extras``).

    ``initial_costs``: task id → the estimate the task had when the run started
    (:attr:`qcmb_hpc.cost.CostModel.initial_estimates`). Without it the tasks' current ``cost`` is
    used, which an in-run refit may have changed after the task ran. ``specifications`` (the
    plan's) names the programs whose versions the report gives; ``started``: the run's start."""
    seconds = [s for (_, _, _, s) in outcome.timings]
    busy: Dict[int, float] = {}
    for _, w, _, s in outcome.timings:
        busy[w] = busy.get(w, 0.0) + s
    estimates = initial_costs if initial_costs is not None else {t.id: t.cost for t in tasks}
    est, meas = estimate_pairs(outcome.timings, outcome.properties, estimates)
    lb = makespan_lower_bound(seconds, n_workers) if seconds else 0.0
    makespan = outcome.makespan
    computed = len(outcome.properties) - outcome.restored
    rep: Dict[str, Any] = {
        "mode": mode,
        "workers": n_workers,
        "strategy": outcome.strategy,
        "fragments": len(tasks),
        "computed": computed,
        "restored": outcome.restored,
        "failed": len(outcome.failures),
        "retried_attempts": sum(len(a) for a in outcome.attempts.values()),
        "wall_seconds": wall,
        "makespan_seconds": makespan,
        "fragment_seconds_total": sum(seconds),
        "fragment_seconds_max": max(seconds) if seconds else 0.0,
        "lower_bound_seconds": lb,
        "efficiency": (lb / makespan) if makespan > 0 and lb > 0 else None,
        "utilisation": {str(w): (b / makespan if makespan > 0 else None) for w, b in sorted(busy.items())},
        "steals": outcome.steals,
        "steal_requests": outcome.steal_requests,
        "estimate_rank_correlation": spearman(est, meas),
        "lost_workers": list(outcome.lost_workers),
        # child processes restarted after a crash, kill or timeout (workers report it in their BYE)
        "restarts": sum(int(w.get("restarts") or 0) for w in outcome.workers.values()),
        # where each worker ran and what it was given (from its READY message: each worker, or MPI
        # rank, fits itself to its own node)
        "worker_layout": {
            str(w): {k: info.get(k) for k in ("host", "threads", "memory", "isolated")}
            for w, info in sorted(outcome.workers.items())
        },
        "incomplete": outcome.incomplete,
        "started": started,
        "versions": {"qcmb_hpc": _qcmb_hpc_version(), "programs": program_versions(specifications)},
    }
    rep.update(_per_group(tasks, outcome))
    rep["attempts"] = attempt_table(outcome, tasks, initial_costs)
    return rep


def _per_group(tasks: List[Any], outcome: Any) -> Dict[str, Any]:
    """Fragments, computed fragments and fragment seconds (every attempt) per n-body level and
    per model chemistry."""
    levels: Dict[str, Dict[str, float]] = {}
    mcs: Dict[str, Dict[str, float]] = {}
    by_id = {t.id: t for t in tasks}
    for t in tasks:
        _label, nbody, mc, _cost = _about(t, t.id)
        for table, key in ((levels, str(nbody)), (mcs, mc)):
            table.setdefault(key, {"fragments": 0, "seconds": 0.0})["fragments"] += 1
    for tid, _w, _st, sec in outcome.timings:
        t = by_id.get(tid)
        if t is not None:
            _label, nbody, mc, _cost = _about(t, tid)
            levels[str(nbody)]["seconds"] += sec
            mcs[mc]["seconds"] += sec
    return {"levels": levels, "model_chemistries": mcs}


def summary_line(rep: Dict[str, Any]) -> str:
    eff = rep.get("efficiency")
    rho = rep.get("estimate_rank_correlation")
    parts = [
        f"{rep['fragments']} fragments ({rep['computed']} computed"
        + (f", {rep['restored']} from checkpoint" if rep.get("restored") else "")
        + (f", {rep['failed']} failed" if rep.get("failed") else "")
        + ")",
        f"{rep['workers']} worker{'s' if rep['workers'] != 1 else ''} ({rep['mode']}, {rep['strategy']})",
        f"wall {rep['wall_seconds']:.2f} s"
        + (f", of which {rep['makespan_seconds']:.2f} s running fragments" if rep.get("makespan_seconds") else ""),
    ]
    if eff is not None:
        parts.append(
            f"efficiency {eff:.2f} (lower bound {rep['lower_bound_seconds']:.2f} s / "
            f"the {rep['makespan_seconds']:.2f} s running fragments)"
        )
    if rho is not None:
        parts.append(f"estimate rank correlation {rho:.2f}")
    if rep.get("steals"):
        parts.append(f"{rep['steals']} steal{'s' if rep['steals'] != 1 else ''}")
    if rep.get("restarts"):
        parts.append(f"{rep['restarts']} worker restart{'s' if rep['restarts'] != 1 else ''}")
    return "qcmb_hpc: " + ", ".join(parts)
