"""How well a run went: timings, utilisation, efficiency against the lower bound, estimate quality.

``LB = max(sum of fragment times / workers, longest fragment)`` is a bound no schedule can beat
(ignoring start-up); ``efficiency = LB / makespan``.

The estimate rank correlation pairs each fragment computed in this run with the estimate it had
when the run started (before any in-run refit re-estimated it) and the time of its *successful*
attempt (a failed or cut attempt of a fragment that later succeeded is not a measure of its cost).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .cost import spearman
from .schedule import makespan_lower_bound

__all__ = ["run_report", "summary_line", "successful_seconds", "estimate_pairs"]


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


def run_report(
    outcome: Any,
    tasks: List[Any],
    n_workers: int,
    mode: str,
    wall: float,
    initial_costs: Optional[Mapping[int, float]] = None,
) -> Dict[str, Any]:
    """A JSON-able report of one run (stored in ``ManyBodyResult.extras["qcmb_hpc"]``).

    ``initial_costs``: task id → the estimate the task had when the run started
    (:attr:`qcmb_hpc.cost.CostModel.initial_estimates`). Without it the tasks' current ``cost`` is
    used, which an in-run refit may have changed after the task ran."""
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
    }
    return rep


def summary_line(rep: Dict[str, Any]) -> str:
    eff = rep.get("efficiency")
    rho = rep.get("estimate_rank_correlation")
    parts = [
        f"{rep['fragments']} fragments ({rep['computed']} computed"
        + (f", {rep['restored']} from checkpoint" if rep.get("restored") else "")
        + (f", {rep['failed']} failed" if rep.get("failed") else "")
        + ")",
        f"{rep['workers']} worker{'s' if rep['workers'] != 1 else ''} ({rep['mode']}, {rep['strategy']})",
        f"wall {rep['wall_seconds']:.2f} s",
    ]
    if eff is not None:
        parts.append(f"efficiency {eff:.2f} of lower bound {rep['lower_bound_seconds']:.2f} s")
    if rho is not None:
        parts.append(f"estimate rank correlation {rho:.2f}")
    if rep.get("steals"):
        parts.append(f"{rep['steals']} steals")
    if rep.get("restarts"):
        parts.append(f"{rep['restarts']} worker restart{'s' if rep['restarts'] != 1 else ''}")
    return "qcmb_hpc: " + ", ".join(parts)
