"""Benchmark 2: coordinator throughput, and the CPU idle ranks burn.

One ``mpiexec -n 4`` world (rank 0 coordinates, 3 workers), in the same run:

* **qcmb_hpc**: no-op fragments per second through the real path — ``ParallelManyBodyComputer``
  in MPI mode: the coordinator loop, the scheduler, the worker loop, pickled MPI messages and
  result batching. The fragments are those of (H2O)30 NoCP up to 4-body (31,930), program
  ``qcmb_noop`` (``benchmarks/noop_engine.py``: no fragment molecule is built and qcengine is not
  entered — that is ~3 ms of engine bookkeeping per fragment, which is not what is measured here),
  ``isolate_fragments=False``. Rate = fragments / the coordinator's makespan (its ``run()``, from
  the first message to the last goodbye; planning and QCManyBody's assembly are outside it and
  reported separately). One warm-up run first; the median of ``--repeat`` runs is reported.
* **baseline**: ``mpi4py.futures`` ``MPIPoolExecutor.map`` (``MPICommExecutor`` on the same
  ranks) with ``chunksize=1`` over the same labels, each task a no-op that returns the same kind of
  outcome.
* **idle CPU**: process CPU time / wall time of every rank while it waits — (a) worker ranks
  waiting inside ``compute()`` while rank 0 is busy elsewhere for 3 s (the broadcast wait),
  (b) ranks idle *during* a run: one worker runs a 3 s fragment, the other two have nothing to do,
  rank 0 coordinates, (c) for comparison, mpi4py.futures workers waiting 3 s for tasks.

Targets (issue #3): ≥ 20,000 fragments/s, ≥ 4× the baseline, idle ranks ≤ 5 % CPU each.

    python benchmarks/bench_throughput.py            # launches itself under mpiexec -n 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

NAME = "throughput"
RANKS = 4


def cpu_seconds() -> float:
    try:
        import psutil

        t = psutil.Process().cpu_times()
        return t.user + t.system
    except ImportError:  # pragma: no cover
        t = os.times()
        return t.user + t.system


def baseline_task(label: str):
    """The baseline's task: like a no-op fragment, it takes a label and returns an outcome."""
    from qcmb_hpc.engine import FragmentOutcome

    return FragmentOutcome(id=0, ok=True, properties={"energy": 0.0}, started=time.time(), seconds=0.0)


def child(a: argparse.Namespace) -> None:
    comm = common.check_world(RANKS)
    common.abort_on_error(comm, _child, comm, a)


def _child(comm, a: argparse.Namespace) -> None:
    from mpi4py.futures import MPICommExecutor

    import noop_engine  # noqa: F401  (registers qcmb_noop; wraps run_fragment on this rank)
    import qcmb_hpc.testing.engines  # noqa: F401
    from qcmb_hpc import ParallelManyBodyComputer
    from qcmb_hpc.testing.inputs import many_body_input

    rank = comm.Get_rank()
    cfg = dict(
        mode="mpi",
        progress_reporting=False,
        imports=["noop_engine", "qcmb_hpc.testing.engines"],
        isolate_fragments=False,
        log_level="ERROR",  # (oversubscription warnings: expected here)
    )
    big = many_body_input(common.water(a.waters), program="qcmb_noop", bsse_type=["nocp"], max_nbody=a.nbody)
    small = many_body_input(common.water(6), program="qcmb_noop", bsse_type=["nocp"], max_nbody=3)
    out = {"ranks": RANKS, "workers": RANKS - 1, "waters": a.waters, "nbody": a.nbody}

    # warm-up (imports, qcengine's node detection, first MPI messages)
    ParallelManyBodyComputer(small, parallel_config=cfg).compute()

    runs = []
    for _ in range(a.repeat):
        comm.Barrier()
        t0 = time.perf_counter()
        comp = ParallelManyBodyComputer(big, parallel_config=cfg)
        comp.compute()
        wall = time.perf_counter() - t0
        if rank == 0:
            rep = comp.run_info
            runs.append(
                {
                    "fragments": rep["fragments"],
                    "makespan": rep["makespan_seconds"],
                    "rate": rep["fragments"] / rep["makespan_seconds"],
                    "compute_wall": wall,
                    "steals": rep["steals"],
                }
            )
    if rank == 0:
        rates = [r["rate"] for r in runs]
        out["qcmb_hpc"] = {
            "runs": runs,
            "fragments": runs[0]["fragments"],
            "rate_median": statistics.median(rates),
            "rate_best": max(rates),
        }

    # baseline: MPIPoolExecutor.map, chunksize 1, same kind of task
    labels = None
    if rank == 0:
        from qcmb_hpc.plan import make_plan

        labels = [t.label for t in make_plan(big).tasks][: a.baseline_tasks]
    comm.Barrier()
    with MPICommExecutor(comm, root=0) as ex:
        if ex is not None:
            list(ex.map(baseline_task, labels[:200], chunksize=1))  # warm-up
            t0 = time.perf_counter()
            n = sum(1 for _ in ex.map(baseline_task, labels, chunksize=1))
            dt = time.perf_counter() - t0
            out["baseline"] = {"what": "mpi4py.futures MPIPoolExecutor.map, chunksize=1", "tasks": n, "seconds": dt, "rate": n / dt}

    # idle CPU (a): workers waiting inside compute() while rank 0 is elsewhere
    comm.Barrier()
    idle_a = None
    if rank == 0:
        time.sleep(a.idle_seconds)
        ParallelManyBodyComputer(small, parallel_config=cfg).compute()
    else:
        c0, t0 = cpu_seconds(), time.perf_counter()
        ParallelManyBodyComputer(small, parallel_config=cfg).compute()
        idle_a = (cpu_seconds() - c0) / (time.perf_counter() - t0)

    # idle CPU (b): during a run, one worker runs one long fragment, the others have nothing to do
    sleep_kw = {"sleep": {"base": a.idle_seconds / 6.0**8, "exponent": 8.0, "noise": 0.0, "seed": 0}}
    lone = many_body_input(common.water(2), program="qcmb_sleep", bsse_type=["nocp"], max_nbody=2, keywords=sleep_kw)
    comm.Barrier()
    import qcmb_hpc.worker as worker_mod

    done_here = {}
    real_finished = worker_mod.Worker._finished

    def counting(self, outcome):  # which worker ran what (to tell idle ranks from the busy one)
        done_here["n"] = done_here.get("n", 0) + 1
        done_here["s"] = done_here.get("s", 0.0) + outcome.seconds
        return real_finished(self, outcome)

    worker_mod.Worker._finished = counting
    c0, t0 = cpu_seconds(), time.perf_counter()
    ParallelManyBodyComputer(lone, parallel_config={**cfg, "load_balancing": "dynamic"}).compute()
    idle_b = ((cpu_seconds() - c0) / (time.perf_counter() - t0), done_here.get("s", 0.0))
    worker_mod.Worker._finished = real_finished

    # idle CPU (c): mpi4py.futures workers waiting for tasks
    comm.Barrier()
    idle_c = None
    c0, t0 = cpu_seconds(), time.perf_counter()
    with MPICommExecutor(comm, root=0) as ex:
        if ex is not None:
            time.sleep(a.idle_seconds)
    if rank != 0:
        idle_c = (cpu_seconds() - c0) / (time.perf_counter() - t0)

    gathered = comm.gather((idle_a, idle_b, idle_c), root=0)
    if rank == 0:
        out["idle_cpu"] = {
            "between_runs_worker_ranks": [g[0] for g in gathered[1:]],
            "during_run": [
                {"rank": r, "cpu_fraction": g[1][0], "fragment_seconds": g[1][1], "role": "coordinator" if r == 0 else "worker"}
                for r, g in enumerate(gathered)
            ],
            "mpi4py_futures_idle_workers": [g[2] for g in gathered[1:]],
            "window_seconds": a.idle_seconds,
        }
        q = out["qcmb_hpc"]["rate_median"]
        b = out["baseline"]["rate"]
        # every rank that waits: workers between runs; during the run the coordinator and the
        # workers with nothing to do (not the one running the long fragment)
        idle_ranks = list(out["idle_cpu"]["between_runs_worker_ranks"]) + [
            d["cpu_fraction"] for d in out["idle_cpu"]["during_run"] if d["fragment_seconds"] < 0.5 * a.idle_seconds
        ]
        out["ratio_to_baseline"] = q / b
        out["targets"] = {
            "rate>=20000": q >= 20000,
            "ratio>=4": q / b >= 4,
            "idle_cpu<=5%": max(idle_ranks) <= 0.05,
        }
        common.write_json(NAME, out)


def report() -> dict:
    d = common.read_json(NAME)
    q, b = d["qcmb_hpc"], d["baseline"]
    rows = [
        ["qcmb_hpc (MPI, 3 workers)", q["fragments"], statistics.median(r["makespan"] for r in q["runs"]), q["rate_median"], q["rate_best"]],
        [b["what"], b["tasks"], b["seconds"], b["rate"], None],
    ]
    print(common.table(["path", "fragments", "seconds", "fragments/s (median)", "best"], rows, "Coordinator throughput, no-op fragments"))
    print(f"ratio to baseline: {d['ratio_to_baseline']:.1f}x")
    ic = d["idle_cpu"]
    rows = [[f"worker rank {i + 1}", f"{100 * v:.1f} %"] for i, v in enumerate(ic["between_runs_worker_ranks"])]
    print(common.table(["waiting between runs (broadcast wait)", "CPU"], rows))
    rows = [
        [f"rank {x['rank']} ({x['role']}{', ran the long fragment' if x['fragment_seconds'] > 0.5 * ic['window_seconds'] else ''})", f"{100 * x['cpu_fraction']:.1f} %"]
        for x in ic["during_run"]
    ]
    print(common.table(["during a run with one long fragment", "CPU"], rows))
    rows = [[f"worker rank {i + 1}", f"{100 * v:.1f} %"] for i, v in enumerate(ic["mpi4py_futures_idle_workers"])]
    print(common.table(["mpi4py.futures workers waiting (for comparison)", "CPU"], rows))
    for k, v in d["targets"].items():
        print(f"target {k}: {common.verdict(v)}")
    return d


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--waters", type=int, default=30)
    p.add_argument("--nbody", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--baseline-tasks", type=int, default=10000)
    p.add_argument("--idle-seconds", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=600)
    a = p.parse_args(argv)
    if a.child:
        child(a)
        return 0
    args = [f"--waters={a.waters}", f"--nbody={a.nbody}", f"--repeat={a.repeat}", f"--baseline-tasks={a.baseline_tasks}", f"--idle-seconds={a.idle_seconds}"]
    common.launch(os.path.abspath(__file__), RANKS, args, a.timeout)
    report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
