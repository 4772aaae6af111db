"""Benchmark 4: what the discrete-event simulation (qcmb_hpc.simulate) predicts.

1. **At scale**: an (H2O)64 4-body-sized task set — 679,120 fragments, C(64, n) at each level
   n = 1..4, each ``0.2 s · n^3`` times a lognormal spread (σ 0.35) across fragments; the actual
   time is the estimate times lognormal noise (σ ``--noise``, 0.3) — on 1,024, 16,384 and 65,536
   workers, through the *real* coordinator and scheduler (DYNAMIC with stealing, the default, and
   WORK_STEALING), with an MPI-like latency of 8 µs, a coordinator that spends ~30 µs per task
   (5 µs per message, 10 µs per task id or result in one, the order measured for the MPI
   coordinator by ``bench_throughput.py``), MPI-style polling (1 ms backoff cap), workers that
   answer steals while running (isolated fragments). DYNAMIC is run twice, side by side on the
   same estimates and the same actual times: with its tail guard (the default, see
   ``qcmb_hpc/schedule.py``) and without it (the policy before the guard); both are also run with
   perfect estimates (noise 0) to separate what the estimates cost from what the machinery costs.
   Target: the tail guard ≤ 1.15 × LB at 65,536 workers with the noise.
2. **Beside the measured runs**: every qcmb_hpc run of ``bench_scheduling.py`` (N = 4, 8, 16) is
   replayed — the run's own estimates, the fragment times measured in it, its start-up delay, the
   workers' responsiveness (inline fragments answer steals only between fragments), latency
   0.2 ms (16 ranks oversubscribed on 2 cores) — and the predicted makespan / LB is shown beside
   the measured one (predicted with the policy the run used); every dynamic run is also replayed
   with the tail guard on and off, side by side (target: the guard no worse at any N, mean over
   the dynamic runs).
3. **The measured workload, resampled**: one replay is one draw of the fragment times; to tell a
   policy's effect from that draw's luck, each N's workload (the run's estimates; as times, the
   sleep model of ``bench_scheduling.py``, ``base · atoms^3`` times a fresh lognormal 0.25, plus
   1 ms per fragment for building it)
   is drawn ``--draws`` times (40) and run with the tail guard on and off on the same draws, with
   inline workers (as the runs of 2) and with isolated ones (as ``--defaults``): the mean
   makespan / LB of each, and of their difference with its standard error.

    python benchmarks/bench_simulation.py [--workers 1024,16384,65536] [--quick] [--replay-only] [--draws 40]
    python benchmarks/bench_simulation.py --workers 65536 --noise-seed 2     # another draw of the noise
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

NAME = "simulation"


def at_scale(workers, noise: float, quick: bool, noise_seed: int = 1) -> list:
    from qcmb_hpc.simulate import mbe_costs, noisy, simulate

    monomers = 40 if quick else 64
    est, nb = mbe_costs(monomers=monomers, max_nbody=4, base=0.2, exponent=3.0, spread=0.35, seed=0)
    act = noisy(est, noise, seed=noise_seed)
    # (strategy, tail guard, actual times, noise); the static strategies have no tail guard
    cases = [
        ("dynamic", False, act, noise),
        ("dynamic", True, act, noise),
        ("work_stealing", False, act, noise),
        ("dynamic", False, est, 0.0),
        ("dynamic", True, est, 0.0),
    ]
    rows = []
    print(f"{len(est):,} tasks; sum {sum(act):,.0f} s; longest {max(act):.1f} s (noise {noise}); longest with perfect estimates {max(est):.1f} s", flush=True)
    for w in workers:
        for strategy, guard, actual, nz in cases:
            t0 = time.perf_counter()
            r = simulate(est, w, actual=actual, strategy=strategy, work_stealing=True, nbody=nb, seed=0, tail_guard=guard)
            d = r.to_dict()
            d["noise"] = nz
            d["monomers"] = monomers
            d["tail_guard"] = guard
            d["policy"] = policy(strategy, guard)
            d["noise_seed"] = noise_seed
            rows.append(d)
            print(
                f"  {w:>6} workers {d['policy']:>24} noise {nz:<4}: makespan {r.makespan:9.1f} s, LB {r.lower_bound:9.1f} s, "
                f"ratio {r.ratio:.3f}, steals {r.steals:>6}, simulated in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            assert r.duplicates == 0 and r.never_run == 0
    return rows


def policy(strategy: str, tail_guard: bool) -> str:
    if strategy != "dynamic":
        return strategy
    return "dynamic + tail guard" if tail_guard else "dynamic, no tail guard"


def side_by_side(scale: list) -> list:
    """One row per worker count: makespan / LB of each case (the README's table)."""
    out = []
    for w in sorted({r["workers"] for r in scale}):
        by = {(r["policy"], r["noise"] > 0): r["ratio"] for r in scale if r["workers"] == w}
        out.append(
            {
                "workers": w,
                "no_tail_guard": by.get(("dynamic, no tail guard", True)),
                "tail_guard": by.get(("dynamic + tail guard", True)),
                "work_stealing": by.get(("work_stealing", True)),
                "no_tail_guard_perfect": by.get(("dynamic, no tail guard", False)),
                "tail_guard_perfect": by.get(("dynamic + tail guard", False)),
            }
        )
    return out


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

            def replay(guard: bool):
                return simulate(
                    est,
                    n,
                    actual=act,
                    strategy=run["strategy"],
                    work_stealing=run["work_stealing"],
                    latency=2e-4,
                    startup=run["first_start_median"],
                    responsive=bool(per.get("isolate_fragments")),
                    seed=0,
                    tail_guard=guard,
                )

            own = bool(run.get("tail_guard", False))  # (runs measured before the guard recorded none: without)
            by_guard = {own: replay(own)}
            if run["strategy"] == "dynamic":
                by_guard[not own] = replay(not own)
            r = by_guard[own]
            row = {
                "workers": n,
                "run": run["name"],
                "tail_guard": own,
                "measured_makespan": run["makespan"],
                "predicted_makespan": r.makespan,
                "measured_ratio": run["ratio"],
                "predicted_ratio": r.ratio,
                "measured_steals": run["steals"],
                "predicted_steals": r.steals,
            }
            if run["strategy"] == "dynamic":
                row["predicted_ratio_no_tail_guard"] = by_guard[False].ratio
                row["predicted_ratio_tail_guard"] = by_guard[True].ratio
            rows.append(row)
    return rows


def replay_targets(replay: list) -> dict:
    """Per N: the tail guard's mean predicted makespan / LB over the dynamic runs, no worse than without."""
    targets = {}
    for n in sorted({r["workers"] for r in replay}):
        dyn = [r for r in replay if r["workers"] == n and "predicted_ratio_tail_guard" in r]
        if dyn:
            on = sum(r["predicted_ratio_tail_guard"] for r in dyn) / len(dyn)
            off = sum(r["predicted_ratio_no_tail_guard"] for r in dyn) / len(dyn)
            targets[f"replay N={n}: tail guard (mean {on:.4f}) no worse than without ({off:.4f})"] = on <= off + 1e-9
    return targets


def resampled(draws: int) -> list:
    """Section 3 of the module docstring: per N and worker kind, both policies on the same draws."""
    import statistics

    from qcmb_hpc.simulate import noisy, simulate

    try:
        sched = common.read_json("scheduling")
    except FileNotFoundError:
        return []
    rows = []
    for n_str, per in sched["per_n"].items():
        n = int(n_str)
        run = next((r for r in per["runs"] if r["kind"] == "qcmb_hpc" and r["strategy"] == "dynamic"), None)
        if run is None or "sleep_base" not in per:
            continue
        est = run["estimates"]
        # water NoCP: the estimates take one value per n-body level, and an n-mer has 3n atoms
        level = {c: k + 1 for k, c in enumerate(sorted(set(est)))}
        sleeps = [per["sleep_base"] * (3 * level[c]) ** 3 for c in est]
        for responsive in (False, True):
            ratio = {False: [], True: []}
            for k in range(draws):
                act = [s + 1e-3 for s in noisy(sleeps, 0.25, seed=100 + k)]
                for guard in (False, True):
                    r = simulate(
                        est, n, actual=act, strategy="dynamic", work_stealing=True, latency=2e-4,
                        startup=run["first_start_median"], responsive=responsive, seed=k, tail_guard=guard,
                    )
                    ratio[guard].append(r.ratio)
            diff = [a - b for a, b in zip(ratio[True], ratio[False])]
            rows.append(
                {
                    "workers": n,
                    "workers_kind": "isolated" if responsive else "inline",
                    "draws": draws,
                    "no_tail_guard": statistics.mean(ratio[False]),
                    "tail_guard": statistics.mean(ratio[True]),
                    "difference": statistics.mean(diff),
                    "difference_stderr": statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else None,
                    "tail_guard_worse_in": sum(1 for d in diff if d > 1e-9),
                }
            )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1024,16384,65536")
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--quick", action="store_true", help="(H2O)40 instead of (H2O)64: 102,090 tasks (development)")
    p.add_argument("--replay-only", action="store_true", help="only the replays of the measured runs (printed, no JSON written)")
    p.add_argument("--draws", type=int, default=40, help="draws of the measured workload per N (section 3)")
    p.add_argument(
        "--noise-seed", type=int, default=1,
        help="another draw of the at-scale noise (not 1: only section 1, written to simulation_seed<N>.json)",
    )
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.replay_only:
        a.workers = ""
    scale = at_scale(common.parse_ints(a.workers), a.noise, a.quick, a.noise_seed) if a.workers else []
    sbs = side_by_side(scale)
    if scale:
        rows = [[r["workers"], r["policy"], r["noise"], r["makespan"], r["lower_bound"], r["ratio"], r["steals"], r["sim_seconds"]] for r in scale]
        print(
            common.table(
                ["workers", "policy", "noise", "makespan s", "LB s", "makespan/LB", "steals", "simulated in s"],
                rows,
                f"Predicted: {scale[0]['tasks']:,} fragments ((H2O){scale[0]['monomers']} 4-body sized)",
            )
        )
        print(
            common.table(
                ["workers", "dynamic, no tail guard", "dynamic + tail guard (default)", "work_stealing", "no guard, perfect estimates", "guard, perfect estimates"],
                [[r["workers"], r["no_tail_guard"], r["tail_guard"], r["work_stealing"], r["no_tail_guard_perfect"], r["tail_guard_perfect"]] for r in sbs],
                f"makespan / LB, side by side (noise {a.noise}; same estimates, same actual times)",
            )
        )
    targets = {}
    for r in sbs:
        if r["workers"] == 65536 and not a.quick and r["tail_guard"] is not None:
            targets["tail guard <= 1.15 at 65,536 workers"] = r["tail_guard"] <= 1.15
    if a.noise_seed != 1:  # another draw of the noise at scale: section 1 only
        for k, v in targets.items():
            print(f"target {k}: {common.verdict(v)}")
        common.write_json(f"{NAME}_seed{a.noise_seed}", {"at_scale": scale, "side_by_side": sbs, "targets": targets})
        return 0
    replay = replay_measured()
    if replay:
        rows = [
            [r["workers"], r["run"], r["measured_makespan"], r["predicted_makespan"], r["measured_ratio"], r["predicted_ratio"]]
            for r in replay
        ]
        print(common.table(["N", "run", "measured s", "predicted s", "measured /LB", "predicted /LB"], rows, "Simulation beside the measured runs of bench_scheduling"))
        err = [abs(r["predicted_ratio"] - r["measured_ratio"]) for r in replay]
        print(f"|predicted - measured| makespan/LB: mean {sum(err) / len(err):.3f}, max {max(err):.3f}")
        dyn = [r for r in replay if "predicted_ratio_tail_guard" in r]
        print(
            common.table(
                ["N", "run", "measured /LB", "predicted, no tail guard", "predicted, tail guard"],
                [[r["workers"], r["run"], r["measured_ratio"], r["predicted_ratio_no_tail_guard"], r["predicted_ratio_tail_guard"]] for r in dyn],
                "The measured dynamic runs replayed with and without the tail guard",
            )
        )
        targets.update(replay_targets(replay))
    draws = resampled(a.draws)
    if draws:
        print(
            common.table(
                ["N", "workers", "draws", "no tail guard", "tail guard", "difference", "± (s.e.)", "guard worse in"],
                [[r["workers"], r["workers_kind"], r["draws"], r["no_tail_guard"], r["tail_guard"], f"{r['difference']:+.4f}", f"{r['difference_stderr']:.4f}", r["tail_guard_worse_in"]] for r in draws],
                "The measured workload resampled: mean makespan / LB, both policies on the same draws",
            )
        )
        for r in draws:
            targets[f"resampled N={r['workers']} {r['workers_kind']}: tail guard no worse on average"] = r["difference"] <= 0
    for k, v in targets.items():
        print(f"target {k}: {common.verdict(v)}")
    if not a.replay_only:
        common.write_json(
            NAME,
            {"at_scale": scale, "side_by_side": sbs, "replay": replay, "resampled": draws, "targets": targets, "seconds": time.perf_counter() - t0},
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
