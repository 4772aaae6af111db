"""Benchmark 1: scheduling quality — makespan / lower bound per strategy, against two baselines.

For N = 4, 8 and 16 workers, one ``mpiexec -n N+1`` world each, in the same run:

* the input: (H2O)10, NoCP through 3-body (175 fragments: 10 monomers, 45 dimers, 120 trimers),
  program ``qcmb_sleep`` — each fragment sleeps ``base · atoms^3 · lognormal(0.25)``: an MBE-like,
  skewed spread (a trimer ~27× a monomer, and trimers are most of the work), and the sleep is
  *not* what the cost model estimates (it assumes SCF-like ``nbf^3.5``, and knows nothing of the
  lognormal noise). ``base`` is chosen per N so that the lower bound is about ``--lb`` seconds.
  Oversubscribed ranks are fine: the engine sleeps.
* qcmb_hpc in MPI mode with each strategy: static (no stealing), static + stealing, dynamic
  (no stealing), dynamic + stealing (the default), work_stealing, adaptive — each with the
  defaults, so dynamic with its tail guard — and, side by side in the same world, dynamic +
  stealing without the tail guard (the policy before it).
* baselines on the same ranks: ``mpi4py.futures`` ``MPIPoolExecutor.map`` over the fragments in
  QCManyBody's plan order (``MPICommExecutor``; chunksize 1), and a static round-robin split
  (fragment i to worker i mod N, each worker runs its list in plan order). Their fragments are
  the same ``AtomicInput`` s QCManyBody builds, run by ``qcengine.compute`` on the workers.

For every run: makespan (qcmb_hpc: the coordinator's run, start to last goodbye; baselines: first
submit to last result) and ``LB = max(sum of the fragment times measured in that run / N,
longest)``. Target (issue #3): DYNAMIC and WORK_STEALING ≤ 1.05 × LB at every N, and better than
both baselines. One warm-up run per world is not reported. Per-fragment estimates and measured
times are kept in the JSON: ``bench_simulation.py`` replays them through the simulator.

``isolate_fragments`` is off by default here (``--isolate`` turns it on): with it, each of the 16
workers forks a child per run and the fork's garbage collection (~0.1 s CPU each) on 2 cores adds
~1 s to every run's start — a cost of 16 ranks on 2 cores, not of the schedule. ``--defaults``
runs qcmb_hpc as a user's command line does — isolated fragments *and* a checkpoint journal, every
result fsynced before it counts — against the same baselines (results ``scheduling_defaults*.json``).

``--tail-guard`` is the side-by-side comparison of the tail guard alone: in each world, dynamic +
stealing with and without the guard, alternating, ``--repeats`` (3) runs of each, no baselines;
table of every run and the medians, JSON ``scheduling_tail_guard*.json`` (with ``--isolate`` or
``--defaults``: ``scheduling_tail_guard_isolated*`` / ``_defaults*``). Target: with the guard no
worse than without (median) at every N.

    python benchmarks/bench_scheduling.py [--workers 4,8,16] [--lb 4] [--isolate | --defaults] [--tail-guard [--repeats 3]]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

NAME = "scheduling"
WATERS = 10
NBODY = 3
EXPONENT = 3.0
NOISE = 0.25
SEED = 11

#: (label, load_balancing, work_stealing, tail_guard)
STRATEGIES = [
    ("static", "static", False, True),
    ("static+steal", "static", True, True),
    ("dynamic", "dynamic", False, True),
    ("dynamic+steal", "dynamic", True, True),
    ("work_stealing", "work_stealing", True, True),
    ("adaptive", "adaptive", True, True),
    ("dynamic+steal, no tail guard", "dynamic", True, False),
]
TAIL_GUARD_OFF, TAIL_GUARD_ON = "dynamic+steal, no tail guard", "dynamic+steal"


def tail_guard_plan(repeats: int):
    """``--tail-guard``: the default (dynamic + stealing + tail guard) and the same without the
    guard, alternating (which goes first alternates too), ``repeats`` of each."""
    off = next(s for s in STRATEGIES if s[0] == TAIL_GUARD_OFF)
    on = next(s for s in STRATEGIES if s[0] == TAIL_GUARD_ON)
    return [pair for k in range(repeats) for pair in ((off, on) if k % 2 == 0 else (on, off))]


def sleep_keywords(base: float) -> dict:
    return {"sleep": {"base": base, "exponent": EXPONENT, "noise": NOISE, "seed": SEED}}


def make_input(base: float):
    from qcmb_hpc.testing.inputs import many_body_input

    return many_body_input(
        common.water(WATERS), program="qcmb_sleep", method="hf", basis="sto-3g", bsse_type=["nocp"], max_nbody=NBODY,
        keywords=sleep_keywords(base),
    )


def planned_sleeps(base: float):
    """(plan, spec, [modelled sleep of each fragment]) — what the engine will sleep, fragment by fragment."""
    from qcmb_hpc.plan import RunSpec, build_atomic_input, make_plan
    from qcmb_hpc.testing.engines import sleep_seconds

    plan = make_plan(make_input(base))
    spec = RunSpec(molecule=plan.core.molecule, specifications=plan.specifications)
    inputs = [build_atomic_input(spec, t.label) for t in plan.tasks]
    return plan, inputs, [sleep_seconds(inp) for _, inp in inputs]


def baseline_fragment(item):
    """A baseline's unit of work: one fragment through qcengine, timed on the worker."""
    import qcengine

    program, inp = item
    t0 = time.perf_counter()
    res = qcengine.compute(inp, program, raise_error=True, task_config={"ncores": 1, "retries": 0})
    return res.properties.return_energy, time.perf_counter() - t0


def baseline_list(items):
    """Static round-robin: one worker runs its whole share, in order."""
    return [baseline_fragment(it) for it in items]


def child(a: argparse.Namespace) -> None:
    comm = common.check_world(a.n + 1)
    common.abort_on_error(comm, _child, comm, a)


def _child(comm, a: argparse.Namespace) -> None:
    from mpi4py.futures import MPICommExecutor

    import qcmb_hpc.testing.engines  # noqa: F401
    from qcmb_hpc import ParallelManyBodyComputer
    from qcmb_hpc.schedule import makespan_lower_bound

    rank, n = comm.Get_rank(), a.n
    # base so that the lower bound is about a.lb seconds at this N
    base = None
    if rank == 0:
        _, _, unit = planned_sleeps(1.0)
        base = min(a.lb * n / sum(unit), 0.9 * a.lb / max(unit))
    base = comm.bcast(base, root=0)
    inp = make_input(base)

    captured = common.capture_coordinator_runs()  # every coordinator run's per-fragment timings (rank 0)
    cfg = dict(
        mode="mpi",
        progress_reporting=False,
        imports=["qcmb_hpc.testing.engines"],
        isolate_fragments=a.isolate or a.defaults,
        log_level="ERROR",  # (oversubscription warnings: expected here)
    )
    journal_dir = tempfile.mkdtemp(prefix="qcmb_bench_journal-") if a.defaults and rank == 0 else None
    if journal_dir is not None:
        atexit.register(shutil.rmtree, journal_dir, True)
    # warm-up: qcengine's node detection on every rank, imports, first messages
    ParallelManyBodyComputer(make_input(base / 50), parallel_config=cfg).compute()

    runs = []
    energies = {}
    for label, lb_strategy, steal, guard in tail_guard_plan(a.repeats) if a.tail_guard else STRATEGIES:
        comm.Barrier()
        run_cfg = {**cfg, "load_balancing": lb_strategy, "work_stealing": steal, "tail_guard": guard}
        if journal_dir is not None:  # as the command line runs: every result fsynced before it counts
            run_cfg["checkpoint"] = os.path.join(journal_dir, f"{label}.jsonl")
        comp = ParallelManyBodyComputer(inp, parallel_config=run_cfg)
        res = comp.compute(fresh=True)
        if rank == 0:
            out = captured["out"]
            rep = comp.run_info
            secs = [s for (_, _, _, s) in captured["timings"]]
            lb = makespan_lower_bound(secs, n)
            t0 = captured["t0"]
            first = {}
            for tid, w, st, s in captured["timings"]:
                first[w] = min(first.get(w, 1e30), st - t0)
            runs.append(
                {
                    "name": label,
                    "kind": "qcmb_hpc",
                    "strategy": rep["strategy"],
                    "work_stealing": steal,
                    "tail_guard": guard,
                    "makespan": out.makespan,
                    "lower_bound": lb,
                    "ratio": out.makespan / lb,
                    "steals": out.steals,
                    "steal_requests": out.steal_requests,
                    "first_start_median": sorted(first.values())[len(first) // 2],
                    "timings": [(tid, w, st - t0, s) for tid, w, st, s in captured["timings"]],
                    "estimates": [captured["costs"][i] for i in range(len(captured["costs"]))],
                    "rank_correlation": rep["estimate_rank_correlation"],
                }
            )
            energies.setdefault(label, []).append(res.return_result)
            print(f"N={n} {label:>14}: makespan {out.makespan:.3f} s, LB {lb:.3f} s, ratio {out.makespan / lb:.3f}", flush=True)

    # baselines, on the same ranks
    plan_inputs = None
    if rank == 0:
        plan, plan_inputs, modelled = planned_sleeps(base)
    comm.Barrier()
    with MPICommExecutor(comm, root=0) as ex:
        if ex is not None and not a.tail_guard:
            list(ex.map(baseline_fragment, plan_inputs[: n], chunksize=1))  # warm-up
            t0 = time.perf_counter()
            got = list(ex.map(baseline_fragment, plan_inputs, chunksize=1))
            makespan = time.perf_counter() - t0
            secs = [s for _, s in got]
            lb = makespan_lower_bound(secs, n)
            runs.append(
                {"name": "MPIPoolExecutor.map", "kind": "baseline", "makespan": makespan, "lower_bound": lb, "ratio": makespan / lb}
            )
            print(f"N={n} {'executor.map':>14}: makespan {makespan:.3f} s, LB {lb:.3f} s, ratio {makespan / lb:.3f}", flush=True)
            shares = [plan_inputs[w::n] for w in range(n)]
            t0 = time.perf_counter()
            futures = [ex.submit(baseline_list, share) for share in shares]
            got = [f.result() for f in futures]
            makespan = time.perf_counter() - t0
            secs = [s for part in got for _, s in part]
            lb = makespan_lower_bound(secs, n)
            runs.append({"name": "round-robin", "kind": "baseline", "makespan": makespan, "lower_bound": lb, "ratio": makespan / lb})
            print(f"N={n} {'round-robin':>14}: makespan {makespan:.3f} s, LB {lb:.3f} s, ratio {makespan / lb:.3f}", flush=True)

    if rank == 0:
        e = [x for v in energies.values() for x in v]
        common.write_json(
            f"{result_name(a)}_N{n}",
            {
                "workers": n,
                "fragments": len(plan_inputs),
                "sleep_base": base,
                "modelled_sleeps": modelled,
                "isolate_fragments": a.isolate or a.defaults,
                "checkpoint": bool(a.defaults),
                "energies_identical": all(abs(x - e[0]) < 1e-10 for x in e),
                "runs": runs,
            },
        )


def result_name(a) -> str:
    """``scheduling``; ``scheduling_defaults`` with ``--defaults``; ``scheduling_isolated`` with
    ``--isolate``; ``scheduling_tail_guard[_defaults|_isolated]`` with ``--tail-guard``."""
    return NAME + ("_tail_guard" if a.tail_guard else "") + ("_defaults" if a.defaults else "_isolated" if a.isolate else "")


def summarize(ns, result: str = NAME) -> dict:
    """Tables and targets from the per-N files of ``result``; writes ``<result>.json``."""
    per_n = {}
    for n in ns:
        per_n[n] = common.read_json(f"{result}_N{n}")
    names = [s[0] for s in STRATEGIES] + ["MPIPoolExecutor.map", "round-robin"]
    names = [x for x in names if all(any(r["name"] == x for r in per_n[n]["runs"]) for n in ns)]  # (older results lack some)
    headers = ["strategy"] + [f"N={n}" for n in ns]
    rows = []
    for name in names:
        row = [name]
        for n in ns:
            r = next((x for x in per_n[n]["runs"] if x["name"] == name), None)
            row.append(None if r is None else f"{r['ratio']:.3f}")
        rows.append(row)
    print(common.table(headers, rows, "makespan / LB (LB = max(sum of measured fragment times / N, longest))"))
    rows = []
    for n in ns:
        for r in per_n[n]["runs"]:
            rows.append([n, r["name"], r["makespan"], r["lower_bound"], r["ratio"], r.get("steals"), r.get("steal_requests")])
    print(common.table(["N", "run", "makespan s", "LB s", "ratio", "steals", "steal requests"], rows))
    targets = {}
    for n in ns:
        runs = {r["name"]: r for r in per_n[n]["runs"]}
        best_baseline = min(runs["MPIPoolExecutor.map"]["ratio"], runs["round-robin"]["ratio"])
        for name in ("dynamic+steal", "dynamic", "work_stealing"):
            ratio = runs[name]["ratio"]
            targets[f"N={n} {name} <= 1.05"] = ratio <= 1.05
            targets[f"N={n} {name} better than both baselines"] = ratio < best_baseline
        if TAIL_GUARD_OFF in runs:
            targets[f"N={n} dynamic+steal with the tail guard no worse than without"] = (
                runs[TAIL_GUARD_ON]["ratio"] <= runs[TAIL_GUARD_OFF]["ratio"]
            )
        targets[f"N={n} same energy from every strategy"] = per_n[n]["energies_identical"]
    for k, v in targets.items():
        print(f"target {k}: {common.verdict(v)}")
    data = {"workers": list(ns), "per_n": {str(n): per_n[n] for n in ns}, "targets": targets}
    common.write_json(result, data)
    return data


def summarize_tail_guard(ns, result: str) -> dict:
    """``--tail-guard``: every run and the medians, with and without the guard; writes ``<result>.json``."""
    import statistics

    per_n = {n: common.read_json(f"{result}_N{n}") for n in ns}
    rows, medians, targets = [], {}, {}
    for n in ns:
        ratio = {name: [r["ratio"] for r in per_n[n]["runs"] if r["name"] == name] for name in (TAIL_GUARD_OFF, TAIL_GUARD_ON)}
        off, on = statistics.median(ratio[TAIL_GUARD_OFF]), statistics.median(ratio[TAIL_GUARD_ON])
        medians[str(n)] = {"no_tail_guard": off, "tail_guard": on, "difference": on - off}
        rows.append(
            [n, " ".join(f"{x:.3f}" for x in ratio[TAIL_GUARD_OFF]), " ".join(f"{x:.3f}" for x in ratio[TAIL_GUARD_ON]), off, on, f"{on - off:+.3f}"]
        )
        targets[f"N={n} tail guard no worse than without (median of {len(ratio[TAIL_GUARD_ON])})"] = on <= off
        targets[f"N={n} same energy from every run"] = per_n[n]["energies_identical"]
    print(
        common.table(
            ["N", "no tail guard: each run", "tail guard: each run", "median, no guard", "median, guard", "difference"],
            rows,
            "dynamic + stealing, makespan / LB, with and without the tail guard (same world, alternating)",
        )
    )
    for k, v in targets.items():
        print(f"target {k}: {common.verdict(v)}")
    data = {"workers": list(ns), "medians": medians, "per_n": {str(n): per_n[n] for n in ns}, "targets": targets}
    common.write_json(result, data)
    return data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--workers", default="4,8,16", help="comma-separated worker counts")
    p.add_argument("--lb", type=float, default=5.0, help="target lower bound of each run, seconds")
    p.add_argument("--isolate", action="store_true", help="isolate_fragments=True (a child process per worker)")
    p.add_argument(
        "--defaults", action="store_true", help="as a user runs it: isolated fragments and a checkpoint journal (fsynced)"
    )
    p.add_argument("--tail-guard", action="store_true", help="only dynamic+steal with and without the tail guard, alternating")
    p.add_argument("--repeats", type=int, default=3, help="with --tail-guard: runs of each")
    p.add_argument("--timeout", type=float, default=400, help="per mpiexec world, seconds")
    a = p.parse_args(argv)
    if a.child:
        child(a)
        return 0
    ns = common.parse_ints(a.workers)
    for n in ns:
        args = [f"--n={n}", f"--lb={a.lb}"] + (["--isolate"] if a.isolate else []) + (["--defaults"] if a.defaults else [])
        args += ["--tail-guard", f"--repeats={a.repeats}"] if a.tail_guard else []
        common.launch(os.path.abspath(__file__), n + 1, args, a.timeout)
    if a.tail_guard:
        summarize_tail_guard(ns, result_name(a))
    else:
        summarize(ns, result_name(a))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
