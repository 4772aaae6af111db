"""How well a run went: timings, utilisation, efficiency against the lower bound, estimate quality.

``LB = max(sum of fragment times / workers, longest fragment)`` is a bound no schedule can beat
(ignoring start-up); ``efficiency = LB / makespan``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .cost import spearman
from .schedule import makespan_lower_bound

__all__ = ["run_report", "summary_line"]


def run_report(outcome: Any, tasks: List[Any], n_workers: int, mode: str, wall: float) -> Dict[str, Any]:
    """A JSON-able report of one run (stored in ``ManyBodyResult.extras["qcmb_hpc"]``)."""
    seconds = [s for (_, _, _, s) in outcome.timings]
    busy: Dict[int, float] = {}
    for _, w, _, s in outcome.timings:
        busy[w] = busy.get(w, 0.0) + s
    by_id = {t.id: t for t in tasks}
    ok_ids = set(outcome.properties) - set()
    est, meas = [], []
    for tid, _w, _st, s in outcome.timings:
        if tid in ok_ids and tid in by_id:
            est.append(by_id[tid].cost)
            meas.append(s)
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
    return "qcmb_hpc: " + ", ".join(parts)
