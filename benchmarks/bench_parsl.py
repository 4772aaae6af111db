"""Benchmark 7: the ``parsl`` plugin against Parsl's own ``python_app`` map, side by side in one run.

One local HighThroughputExecutor block of N workers (``--workers``, default 4), the same for both:

* **Scheduling** — the workload of ``bench_scheduling.py`` ((H2O)10 NoCP 3-body, 175 fragments,
  program ``qcmb_sleep``: a skewed MBE-like spread with lognormal noise against the estimates,
  ``base`` chosen so that LB ≈ ``--lb`` s). (a) qcmb_hpc with ``mode="parsl"`` through the loaded
  DataFlowKernel (the default strategy: dynamic + stealing; fragments inline, no journal, as in
  bench_scheduling); (b) one ``python_app`` per fragment — the fragment's ``AtomicInput`` run by
  ``qcengine.compute`` on the worker — submitted largest first by qcmb_hpc's own initial cost
  estimates (what the coordinator starts from), HTEX handing each to the next free worker. Both
  warm (one warm-up run each). makespan: qcmb_hpc's coordinator run (start to last goodbye: the
  Parsl tasks' dispatch and the workers' connecting included); the map's first submit to last
  result. ``LB = max(sum of measured fragment times / N, longest)``. ``--repeat`` runs of each,
  alternating; the run of median makespan / LB is reported (and every run in the JSON).
* **Whole process, cold** — each in a fresh process, start to exit: ``python -m qcmb_hpc
  input.json --mode parsl --workers N`` (the built-in local block: Parsl's start-up, planning, the
  run, assembly, the block's shutdown); and a script that loads the same local config, plans with
  QCManyBody, maps the fragments as in (b), assembles with QCManyBody and cleans up. ``--repeat``
  of each, alternating; medians.
* **No-op throughput** — (H2O)``--noop-waters`` NoCP ``--noop-nbody``-body, program ``qcmb_noop``
  (``noop_engine.py``: no molecule built, no qcengine call): fragments per second of qcmb_hpc's
  coordinator makespan, against ``python_app`` tasks that do nothing (first submit to last result).

    python benchmarks/bench_parsl.py [--workers 4] [--lb 4] [--noop-waters 20] [--noop-nbody 3] [--repeat 3]

Writes ``benchmarks/results/parsl.json`` and prints the tables. Wants a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

NAME = "parsl"


def local_config(workers: int, run_dir: str):
    """One local block of ``workers`` workers (its temporary files under ``run_dir``)."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    tmp = tempfile.mkdtemp(prefix="qcmb-bench-", dir=run_dir)
    provider = LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=f"export TMPDIR={tmp}")
    # (HTEX starts min(max_workers_per_node, cores / cores_per_worker) workers: N sleeping workers on 2 cores)
    ex = HighThroughputExecutor(label="bench", address="127.0.0.1", max_workers_per_node=workers, provider=provider,
                                cores_per_worker=min(1.0, (os.cpu_count() or 1) / workers))
    return Config(executors=[ex], run_dir=run_dir, strategy="none", usage_tracking=0)


def fragment_task(program: str, inp):
    """The map's unit: one fragment through qcengine, timed on the worker (self-contained: Parsl
    ships a function of ``__main__`` by value)."""
    import time

    import qcengine

    import qcmb_hpc.testing.engines  # noqa: F401  (qcmb_sleep)

    t0 = time.perf_counter()
    res = qcengine.compute(inp, program, raise_error=True, task_config={"ncores": 1, "retries": 0})
    return res.properties.return_energy, time.perf_counter() - t0


def noop_task(label: str):
    return label


def largest_first(base: float):
    """(plan, [(task id, AtomicInput)] largest estimate first) for the scheduling workload."""
    from bench_scheduling import make_input

    from qcmb_hpc.cost import CostModel
    from qcmb_hpc.plan import RunSpec, build_atomic_input, make_plan

    plan = make_plan(make_input(base))
    CostModel(plan.core.molecule, plan.specifications).estimate_tasks(plan.tasks)
    spec = RunSpec(molecule=plan.core.molecule, specifications=plan.specifications)
    order = sorted(plan.tasks, key=lambda t: -t.cost)
    return plan, [(t.id, build_atomic_input(spec, t.label)[1]) for t in order]


def run_map(app, items):
    """Submit every item, largest first; (makespan, {task id: (energy, seconds)})."""
    t0 = time.perf_counter()
    futures = [(tid, app("qcmb_sleep", inp)) for tid, inp in items]
    got = {tid: f.result() for tid, f in futures}
    return time.perf_counter() - t0, got


def median_run(runs: list) -> dict:
    """The run of median makespan / LB, with every run kept (``runs``)."""
    return {**sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2], "runs": runs}


def warm(a: argparse.Namespace) -> dict:
    """The warm, side-by-side part (one process, one loaded DataFlowKernel)."""
    import parsl
    from parsl.app.python import PythonApp

    import noop_engine  # noqa: F401
    import qcmb_hpc.testing.engines  # noqa: F401
    from bench_scheduling import make_input, planned_sleeps
    from qcmb_hpc import ParallelManyBodyComputer
    from qcmb_hpc.parsl_plugin import parsl_scripts_on_path
    from qcmb_hpc.schedule import makespan_lower_bound
    from qcmb_hpc.testing.inputs import many_body_input

    n = a.workers
    _, _, unit = planned_sleeps(1.0)
    base = min(a.lb * n / sum(unit), 0.9 * a.lb / max(unit))
    captured = common.capture_coordinator_runs()
    cfg = dict(mode="parsl", progress_reporting=False, imports=["qcmb_hpc.testing.engines", "noop_engine"],
               isolate_fragments=False, log_level="ERROR", max_workers=n)
    run_dir = tempfile.mkdtemp(prefix="qcmb-bench-parsl-")
    out = {"workers": n, "sleep_base": base}
    os.environ["PYTHONPATH"] = common.child_env()["PYTHONPATH"]  # (the block imports noop_engine)
    with parsl_scripts_on_path():
        dfk = parsl.load(local_config(n, run_dir))
        try:
            sleep_app = PythonApp(fragment_task, data_flow_kernel=dfk)
            noop_app = PythonApp(noop_task, data_flow_kernel=dfk)
            inp = make_input(base)
            plan, items = largest_first(base)
            run_map(sleep_app, items[: 4 * n])  # warm-up: every block worker imports qcengine and runs it once
            ParallelManyBodyComputer(make_input(base / 50), parallel_config=cfg).compute()  # warm-up
            q_runs, m_runs = [], []
            for _ in range(a.repeat):  # alternating, so a drift of the machine hits both alike
                t = time.perf_counter()
                ParallelManyBodyComputer(inp, parallel_config=cfg).compute()
                wall = time.perf_counter() - t
                o = captured["out"]
                secs = [s for (_, _, _, s) in captured["timings"]]
                lb = makespan_lower_bound(secs, n)
                first = {}
                for _, w, st, _ in captured["timings"]:
                    first[w] = min(first.get(w, 1e30), st - captured["t0"])
                q_runs.append({"makespan": o.makespan, "lower_bound": lb, "ratio": o.makespan / lb, "compute_wall": wall,
                               "steals": o.steals, "fragments": len(secs), "workers_used": len(first),
                               "first_start_median": sorted(first.values())[len(first) // 2]})
                makespan, got = run_map(sleep_app, items)
                secs = [s for _, s in got.values()]
                lb = makespan_lower_bound(secs, n)
                m_runs.append({"makespan": makespan, "lower_bound": lb, "ratio": makespan / lb, "fragments": len(secs)})
            out["qcmb_hpc"] = median_run(q_runs)
            out["python_app"] = median_run(m_runs)
            # no-op throughput
            big = many_body_input(common.water(a.noop_waters), program="qcmb_noop", bsse_type=["nocp"], max_nbody=a.noop_nbody)
            ParallelManyBodyComputer(big, parallel_config=cfg).compute()
            rep = captured["out"]
            count = captured["done"]
            out["noop_qcmb_hpc"] = {"fragments": count, "seconds": rep.makespan, "rate": count / rep.makespan}
            labels = [str(i) for i in range(count)]
            list(f.result() for f in [noop_app(x) for x in labels[: 4 * n]])  # warm-up
            t = time.perf_counter()
            for f in [noop_app(x) for x in labels]:
                f.result()
            secs = time.perf_counter() - t
            out["noop_python_app"] = {"fragments": count, "seconds": secs, "rate": count / secs}
        finally:
            dfk.cleanup()
            parsl.clear()
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
    return out


def cold_map(a: argparse.Namespace) -> None:
    """The baseline's whole process: load, plan, map largest first, assemble, clean up."""
    import parsl
    from parsl.app.python import PythonApp

    import qcmb_hpc.testing.engines  # noqa: F401
    from qcmb_hpc.parsl_plugin import parsl_scripts_on_path

    run_dir = tempfile.mkdtemp(prefix="qcmb-bench-parsl-")
    with parsl_scripts_on_path():
        dfk = parsl.load(local_config(a.workers, run_dir))
        try:
            plan, items = largest_first(a.base)
            _, got = run_map(PythonApp(fragment_task, data_flow_kernel=dfk), items)
            plan.core.analyze({plan.tasks[tid].label: {"energy": e} for tid, (e, _) in got.items()})
        finally:
            dfk.cleanup()
            parsl.clear()
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)


def cold(a: argparse.Namespace, base: float) -> dict:
    """Whole-process wall of each, in fresh processes."""
    from bench_scheduling import make_input

    work = tempfile.mkdtemp(prefix="qcmb-bench-cold-")
    path = os.path.join(work, "sched.json")
    with open(path, "w") as fh:
        fh.write(make_input(base).model_dump_json())
    env = common.child_env()
    cli = [sys.executable, "-m", "qcmb_hpc", path, "--mode", "parsl", "--workers", str(a.workers),
           "--import", "qcmb_hpc.testing.engines", "--no-checkpoint", "--no-cost-history", "--no-progress",
           "--no-isolate-fragments", "--log-level", "ERROR"]
    script = [sys.executable, os.path.abspath(__file__), "--cold-map", "--workers", str(a.workers), "--base", repr(base)]
    walls = {"qcmb_hpc_cli": [], "python_app_script": []}
    for _ in range(a.repeat):  # alternating
        for key, cmd in (("qcmb_hpc_cli", cli), ("python_app_script", script)):
            t = time.perf_counter()
            cp = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            walls[key].append(time.perf_counter() - t)
            if cp.returncode != 0:
                raise SystemExit(f"{key} failed ({cp.returncode}): {cp.stderr[-2000:]}")
    out = {key: statistics.median(v) for key, v in walls.items()}
    out["runs"] = walls
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return out


def report(d: dict) -> None:
    q, m = d["qcmb_hpc"], d["python_app"]
    print(common.table(
        ["", "makespan s", "LB s", "makespan / LB", "whole process s (cold)"],
        [["qcmb_hpc, mode parsl", q["makespan"], q["lower_bound"], q["ratio"], d["cold"]["qcmb_hpc_cli"]],
         ["python_app map, largest first", m["makespan"], m["lower_bound"], m["ratio"], d["cold"]["python_app_script"]]],
        f"Scheduling workload through one local Parsl block of {d['workers']} workers ({q['fragments']} fragments; "
        f"median of {len(q['runs'])} alternating runs, load average {d['machine'].get('loadavg', ['?'])[0]})",
    ))
    print(f"qcmb_hpc: {q['workers_used']} workers took part; the median worker started its first fragment "
          f"{q['first_start_median']:.3f} s after the coordinator started (the Parsl task's dispatch and the connection)")
    print(common.table(
        ["", "fragments", "seconds", "fragments/s"],
        [["qcmb_hpc, mode parsl", d["noop_qcmb_hpc"]["fragments"], d["noop_qcmb_hpc"]["seconds"], d["noop_qcmb_hpc"]["rate"]],
         ["python_app, no-op", d["noop_python_app"]["fragments"], d["noop_python_app"]["seconds"], d["noop_python_app"]["rate"]]],
        "No-op throughput",
    ))
    common.print_targets(d)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--lb", type=float, default=4.0, help="lower bound of the scheduling workload, seconds")
    p.add_argument("--noop-waters", type=int, default=20)
    p.add_argument("--noop-nbody", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3, help="runs of each (alternating; the median is reported)")
    p.add_argument("--cold-map", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--base", type=float, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.cold_map:
        cold_map(a)
        return 0
    d = warm(a)
    d["cold"] = cold(a, d["sleep_base"])
    d["targets"] = {
        "makespan / LB: the parsl plugin at or below the python_app map": d["qcmb_hpc"]["ratio"] <= d["python_app"]["ratio"],
        "no-op throughput: the parsl plugin above python_app": d["noop_qcmb_hpc"]["rate"] > d["noop_python_app"]["rate"],
    }
    d["machine"] = common.machine()
    common.write_json(NAME, d)
    report(d)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
