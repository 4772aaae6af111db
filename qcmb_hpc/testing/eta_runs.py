"""How good an ETA is, over a whole run: the real coordinator, scheduler, cost model and progress
tracker on the simulation's fake clock (:func:`qcmb_hpc.simulate.simulate`), for a real
QCManyBody plan whose fragments take a modelled time. Used by ``tests/test_eta.py`` and
``benchmarks/bench_eta.py``.

Every state the tracker emits (after each completion and on the coordinator's ticks) is an ETA
sample at fake time ``t``; its error against the run's actual end ``T`` is
``|t + ETA − T| / T``. Three ETAs are measured in the same run:

* ``count`` — fragments left ÷ fragments done per second (what a plain progress bar shows);
* ``cost_initial`` — estimated cost left ÷ estimated cost done per second, with the estimates the
  run started with and no credit for the fragments running (the formula at its plainest);
* ``cost`` — what qcmb_hpc shows (:mod:`qcmb_hpc.eta`): the cost model's current, in-run
  calibrated estimates, and credit for the done part of the fragments running.

A summary per ETA: ``mean`` (the error averaged over time, from the first completion to the
end), ``max_after_10`` (the largest error after the first 10 % of the run) and ``settled``
(the fraction of the run after which the error stays within 10 %).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..eta import eta_seconds, ledger_for
from ..progress import ProgressReporter

__all__ = ["skewed_plan", "multilevel_plan", "modelled_seconds", "measure_etas", "summarize_errors", "MULTILEVEL_TRUTH"]


def skewed_plan(waters: int = 10, max_nbody: int = 3, bsse: str = "nocp", method: str = "hf", basis: str = "cc-pvdz"):
    """A QCManyBody plan of a water cluster: without counterpoise, fragment costs spread by the
    n-body level's size (a trimer ~ 30-50 × a monomer)."""
    from ..plan import make_plan
    from .inputs import many_body_input, water_cluster

    inp = many_body_input(water_cluster(waters), method=method, basis=basis, bsse_type=[bsse], max_nbody=max_nbody)
    return make_plan(inp)


def multilevel_plan(waters: int = 10):
    """(H2O)``waters`` without counterpoise, 1- and 2-body at MP2, 3-body at HF (cc-pVDZ): two
    methods whose relative cost the cost model's defaults get wrong until it has measured both."""
    from ..plan import make_plan
    from .inputs import many_body_input, water_cluster

    specs = {m: {"program": "qcmb_test", "method": m, "basis": "cc-pvdz"} for m in ("mp2", "hf")}
    inp = many_body_input(water_cluster(waters), bsse_type=["nocp"], levels={2: "mp2", 3: "hf"}, specifications=specs)
    return make_plan(inp)


#: model chemistry → (base seconds, exponent) of :func:`modelled_seconds` for :func:`multilevel_plan`
MULTILEVEL_TRUTH = {"mp2": (3.0, 4.0), "hf": (1.0, 3.0)}


def modelled_seconds(
    plan: Any, base: float = 2.0, exponent: float = 3.0, noise: float = 0.3, seed: int = 1,
    per_mc: Optional[Dict[str, Tuple[float, float]]] = None,
) -> List[float]:
    """The "real" time of each task: ``base · (atoms with basis functions / 3)^exponent`` (or the
    model chemistry's own ``per_mc[mc]``) times a seeded lognormal factor — a truth the cost model
    does not know (its HF exponent is 3.5 on basis functions), so it has something to calibrate."""
    rng = np.random.default_rng(seed)
    out = []
    for t in plan.tasks:
        b, e = (per_mc or {}).get(t.mc, (base, exponent))
        n = (t.natoms_real + t.natoms_ghost) / 3.0
        out.append(b * n**e * math.exp(rng.normal(0.0, noise)))
    return out


class _Recorder(ProgressReporter):
    def __init__(self, tasks: Sequence[Any], initial: Dict[int, float]):
        self.by_label = {t.label: t.id for t in tasks}
        fixed = [type("T", (), {"id": t.id, "cost": initial[t.id]})() for t in tasks]
        self.fixed = ledger_for(fixed)  # priced by the initial estimates, never refitted
        self.samples: List[Dict[str, Optional[float]]] = []

    def on_progress(self, state):
        self._state = state

    def on_fragment_completed(self, fragment_label, success):
        # on_progress came just before, with the state that counts this completion
        self.fixed.mark(self.by_label[fragment_label])
        self._sample(self._state)

    def _sample(self, st):
        total, rest, sess = self.fixed.sums()
        self.samples.append(
            {
                "t": st.elapsed,
                "done": st.done,
                "count": eta_seconds(st.done - st.restored, st.total - st.done, st.elapsed),
                "cost_initial": eta_seconds(sess, total - rest - sess, st.elapsed),
                "cost": st.eta,
            }
        )


def measure_etas(workers: int, plan: Any = None, seconds: Optional[Sequence[float]] = None, **sim: Any) -> Dict[str, Any]:
    """Simulate ``plan`` (default :func:`skewed_plan`) on ``workers`` workers with a real cost model
    refitting in the run; returns ``{"end", "samples", "summary", "tasks", "workers"}``."""
    from ..cost import CostModel
    from ..simulate import simulate

    plan = plan if plan is not None else skewed_plan()
    seconds = list(seconds) if seconds is not None else modelled_seconds(plan)
    model = CostModel(plan.core.molecule, plan.specifications)
    model.estimate_tasks(plan.tasks)
    rec = _Recorder(plan.tasks, dict(model.initial_estimates))
    res = simulate(
        [t.cost for t in plan.tasks], workers, actual=seconds, tasks=plan.tasks, cost_model=model, reporter=rec,
        progress_interval=0.0, **sim,
    )
    samples = [s for s in rec.samples]
    end = samples[-1]["t"]
    return {
        "workers": workers,
        "tasks": len(plan.tasks),
        "end": end,
        "makespan": res.makespan,
        "samples": samples,
        "summary": {k: summarize_errors(samples, k, end) for k in ("count", "cost_initial", "cost")},
    }


def summarize_errors(samples: Sequence[Dict[str, Optional[float]]], key: str, end: float) -> Dict[str, Optional[float]]:
    """Time-averaged relative error of ETA ``key``, its largest value after 10 % of the run, and
    the fraction of the run after which it stays within 10 % (see the module docstring)."""
    pts = [(s["t"], abs(s["t"] + s[key] - end) / end) for s in samples if s[key] is not None]
    if not pts or end <= 0:
        return {"mean": None, "max_after_10": None, "settled": None}
    area = 0.0
    for (t0, e0), (t1, _e1) in zip(pts, pts[1:]):
        area += e0 * (t1 - t0)  # the error shown from one sample until the next
    span = pts[-1][0] - pts[0][0]
    mean = area / span if span > 0 else pts[0][1]
    after = [e for t, e in pts if t >= 0.1 * end]
    settled = 0.0
    for t, e in pts:
        if e > 0.10:
            settled = t / end
    return {"mean": mean, "max_after_10": max(after) if after else None, "settled": settled}
