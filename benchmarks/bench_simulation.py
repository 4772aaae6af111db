"""Benchmark 4: what the discrete-event simulation (qcmb_hpc.simulate) predicts.

1. **At scale**: an (H2O)64 4-body-sized task set — 679,120 fragments, C(64, n) at each level
   n = 1..4, each ``0.2 s · n^3`` times a lognormal spread (σ 0.35) across fragments; the actual
   time is the estimate times lognormal noise (σ ``--noise``, 0.3) — on 1,024, 16,384 and 65,536
   workers, through the *real* coordinator and scheduler (DYNAMIC with stealing, the default, and
   WORK_STEALING), with an MPI-like latency of 8 µs, a coordinator that spends ~30 µs per task
   (5 µs per message, 10 µs per task id or result in one, the order measured for the MPI
   coordinator by ``bench_throughput.py``), MPI-style polling (1 ms backoff cap), workers that
   answer steals while running (isolated fragments). DYNAMIC is also run with perfect estimates
   (noise 0) to separate what the estimates cost from what the machinery costs.
2. **Beside the measured runs**: every qcmb_hpc run of ``bench_scheduling.py`` (N = 4, 8, 16) is
   replayed — the run's own estimates, the fragment times measured in it, its start-up delay, the
   workers' responsiveness (inline fragments answer steals only between fragments), latency
   0.2 ms (16 ranks oversubscribed on 2 cores) — and the predicted makespan / LB is shown beside
   the measured one.

    python benchmarks/bench_simulation.py [--workers 1024,16384,65536] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

NAME = "simulation"


def at_scale(workers, noise: float, quick: bool) -> list:
    from qcmb_hpc.simulate import mbe_costs, noisy, simulate

    monomers = 40 if quick else 64
    est, nb = mbe_costs(monomers=monomers, max_nbody=4, base=0.2, exponent=3.0, spread=0.35, seed=0)
    act = noisy(est, noise, seed=1)
    cases = [("dynamic", True, act, noise), ("work_stealing", True, act, noise), ("dynamic", True, est, 0.0)]
    rows = []
    print(f"{len(est):,} tasks; sum {sum(act):,.0f} s; longest {max(act):.1f} s (noise {noise}); longest with perfect estimates {max(est):.1f} s", flush=True)
    for w in workers:
        for strategy, steal, actual, nz in cases:
            t0 = time.perf_counter()
            r = simulate(est, w, actual=actual, strategy=strategy, work_stealing=steal, nbody=nb, seed=0)
            d = r.to_dict()
            d["noise"] = nz
            d["monomers"] = monomers
            rows.append(d)
            print(
                f"  {w:>6} workers {r.strategy:>13} noise {nz:<4}: makespan {r.makespan:9.1f} s, LB {r.lower_bound:9.1f} s, "
                f"ratio {r.ratio:.3f}, steals {r.steals:>6}, simulated in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            assert r.duplicates == 0 and r.never_run == 0
    return rows


def replay_measured() -> list:
    from qcmb_hpc.simulate import simulate

    rows = []
    try:
        sched = common.read_json("scheduling")
    except FileNotFoundError:
        print("no benchmarks/results/scheduling.json: run bench_scheduling.py first for the comparison with measured runs")
        return rows
    for n_str, per in sched["per_n"].items():
        n = int(n_str)
        for run in per["runs"]:
            if run["kind"] != "qcmb_hpc":
                continue
            est = run["estimates"]
            act = [0.0] * len(est)
            for tid, _w, _st, sec in run["timings"]:
                act[tid] = sec
            r = simulate(
                est,
                n,
                actual=act,
                strategy=run["strategy"],
                work_stealing=run["work_stealing"],
                latency=2e-4,
                startup=run["first_start_median"],
                responsive=bool(per.get("isolate_fragments")),
                seed=0,
            )
            rows.append(
                {
                    "workers": n,
                    "run": run["name"],
                    "measured_makespan": run["makespan"],
                    "predicted_makespan": r.makespan,
                    "measured_ratio": run["ratio"],
                    "predicted_ratio": r.ratio,
                    "measured_steals": run["steals"],
                    "predicted_steals": r.steals,
                }
            )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1024,16384,65536")
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--quick", action="store_true", help="(H2O)40 instead of (H2O)64: 102,090 tasks (development)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    scale = at_scale(common.parse_ints(a.workers), a.noise, a.quick)
    rows = [[r["workers"], r["strategy"], r["noise"], r["makespan"], r["lower_bound"], r["ratio"], r["steals"], r["sim_seconds"]] for r in scale]
    print(
        common.table(
            ["workers", "strategy", "noise", "makespan s", "LB s", "makespan/LB", "steals", "simulated in s"],
            rows,
            f"Predicted: {scale[0]['tasks']:,} fragments ((H2O){scale[0]['monomers']} 4-body sized)",
        )
    )
    replay = replay_measured()
    if replay:
        rows = [
            [r["workers"], r["run"], r["measured_makespan"], r["predicted_makespan"], r["measured_ratio"], r["predicted_ratio"]]
            for r in replay
        ]
        print(common.table(["N", "run", "measured s", "predicted s", "measured /LB", "predicted /LB"], rows, "Simulation beside the measured runs of bench_scheduling"))
        err = [abs(r["predicted_ratio"] - r["measured_ratio"]) for r in replay]
        print(f"|predicted - measured| makespan/LB: mean {sum(err) / len(err):.3f}, max {max(err):.3f}")
    common.write_json(NAME, {"at_scale": scale, "replay": replay, "seconds": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
