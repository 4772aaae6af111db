"""Benchmark 5: how honest the ETA is — the cost-weighted ETA qcmb_hpc shows against a count-based
one (fragments left ÷ fragments per second, what a plain progress bar shows), over whole runs.

The real coordinator, scheduler, cost model (refitting in the run) and progress tracker run on the
simulation's fake clock (``qcmb_hpc.simulate``), for real QCManyBody plans whose fragments take a
modelled time (``qcmb_hpc.testing.eta_runs``): deterministic, seeded, ~10 s in all, no machine
timing involved. Every state the tracker emits is a sample; its error is
``|t + ETA − actual end| / actual end``. Per ETA: the error averaged over time (first completion
to the end), the largest error after the first 10 % of the run, and from what fraction of the run
on the error stays within 10 %.

Workloads:

* ``skewed`` — (H2O)10 NoCP through 3-body, HF/cc-pVDZ (175 fragments, trimers ~30× monomers, run
  largest first); modelled time ``2 s · (atoms/3)^3`` × lognormal(σ 0.3), against the cost model's
  default HF exponent of 3.5 on basis functions;
* ``multilevel`` — the same cluster, 1- and 2-body at MP2, 3-body at HF (230 fragments); modelled
  MP2 ``3 s · n^4``, HF ``1 s · n^3``: the defaults get the two methods' relative cost wrong by ~30×
  until the model has measured both, which only happens well into the run.

    python benchmarks/bench_eta.py [--workers 4,8,16,32]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

NAME = "eta"
ETAS = (("count", "count-based"), ("cost_initial", "cost, initial estimates, no running credit"), ("cost", "cost-weighted (qcmb_hpc)"))


def main(argv=None) -> int:
    from qcmb_hpc.testing.eta_runs import MULTILEVEL_TRUTH, measure_etas, modelled_seconds, multilevel_plan, skewed_plan

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=common.parse_ints, default=[4, 8, 16, 32])
    a = p.parse_args(argv)
    plans = {"skewed": skewed_plan(), "multilevel": multilevel_plan()}
    seconds = {"skewed": modelled_seconds(plans["skewed"]),
               "multilevel": modelled_seconds(plans["multilevel"], per_mc=MULTILEVEL_TRUTH)}
    runs = []
    for name, plan in plans.items():
        rows = []
        for w in a.workers:
            r = measure_etas(w, plan=plan, seconds=seconds[name])
            r.pop("samples")
            runs.append({"workload": name, **r})
            for key, title in ETAS:
                s = r["summary"][key]
                rows.append([w, title, f"{100 * s['mean']:.1f}%", f"{100 * s['max_after_10']:.0f}%", f"{100 * s['settled']:.0f}%"])
        print(common.table(["workers", "ETA", "mean error", "max after 10%", "within 10% from"], rows,
                           title=f"{name}: {len(plan.tasks)} fragments"))
    better = all(r["summary"]["cost"]["mean"] < r["summary"]["count"]["mean"] for r in runs)
    earlier = all(r["summary"]["cost"]["settled"] < r["summary"]["count"]["settled"] for r in runs)
    targets = {
        "cost-weighted mean error below the count-based one, every run": better,
        "cost-weighted within 10% earlier than count-based, every run": earlier,
    }
    for k, v in targets.items():
        print(f"{common.verdict(v)} {k}")
    path = common.write_json(NAME, {"runs": runs, "targets": targets})
    print(f"results: {path}")
    return 0 if better and earlier else 1


if __name__ == "__main__":
    raise SystemExit(main())
