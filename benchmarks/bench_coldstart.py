"""Cold start: the whole command, from launch to exit, against the best off-the-shelf pools.

The workload: (H2O)8, NoCP through 3-body — 92 fragments (8 monomers, 28 dimers, 56 trimers) — on
``qcmb_sleep`` (each fragment sleeps ``base · atoms^3 · lognormal(0.25)``: an MBE-like skewed spread,
not what the cost model assumes), ``base`` chosen so that the lower bound is ~2.8 s on 8 workers.
Four commands, each a fresh process tree, run alternately ``--repeat`` times:

* ``qcmb_hpc multiprocessing`` — ``python -m qcmb_hpc in.json --mode multiprocessing --workers 8``
  with the defaults a user gets (isolated fragments, a fsynced journal, progress lines, a fresh
  per-user cache: a first run, no cost history);
* ``ProcessPoolExecutor`` — a script that plans with QCManyBody, builds every fragment's
  ``AtomicInput`` as QCManyBody does, feeds ``qcengine.compute`` calls to
  ``concurrent.futures.ProcessPoolExecutor(8)`` largest first (by qcmb_hpc's own initial
  estimates, so both get the same order), and assembles with QCManyBody;
* ``qcmb_hpc MPI`` — ``mpiexec -n 9 python -m qcmb_hpc in.json`` (the mode chosen from the launcher);
* ``MPIPoolExecutor`` — ``mpiexec -n 9 python -m mpi4py.futures`` the same script with
  ``mpi4py.futures.MPIPoolExecutor`` (8 worker ranks), largest first.

Reported per command: the median whole-process wall, the ratio qcmb_hpc / pool (target ≤ 0.80 in
both modes), and a breakdown from the run's own timestamps (:func:`breakdown`), whose six phases add
up to the wall:

* ``imports`` — launch → the coordinator's imports done and the run starting (the interpreter, the
  imports, reading the input; under MPI also ``mpiexec`` and ``MPI_Init``);
* ``planning`` — QCManyBody's plan, the cost estimates, the journal, the run's setup (the pools'
  script: its plan, the same estimates, every fragment's ``AtomicInput``);
* ``worker_start`` — planning done → the first fragment starts (what the workers' start costs
  beyond what overlapped the planning);
* ``run`` — the first fragment's start → the last one's end;
* ``assembly`` — QCManyBody's ``analyze`` and ``get_results`` (qcmb_hpc: and the run report);
* ``shutdown`` — the rest: the last result coming back, the workers stopping, writing the output,
  the interpreter's exit.

``to_first_fragment`` is imports + planning + worker start. LB comes from the measured fragment
times. And ``python -X importtime`` per role: what the coordinator (rank 0 / the main process) and
a worker rank import.

    python benchmarks/bench_coldstart.py [--repeat 3] [--workers 8] [--lb 2.8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

NAME = "coldstart"
WATERS, NBODY, EXPONENT, NOISE, SEED = 8, 3, 3.0, 0.25, 11
ENGINES = "qcmb_hpc.testing.engines"


def make_input(base: float):
    from qcmb_hpc.testing.inputs import many_body_input

    return many_body_input(
        common.water(WATERS), program="qcmb_sleep", method="hf", basis="sto-3g", bsse_type=["nocp"], max_nbody=NBODY,
        keywords={"sleep": {"base": base, "exponent": EXPONENT, "noise": NOISE, "seed": SEED}},
    )


def base_for(lb: float, workers: int) -> float:
    """The sleep base that gives a lower bound of about ``lb`` s on ``workers``."""
    from qcmb_hpc.plan import make_plan
    from qcmb_hpc.testing.engines import sleep_seconds

    from qcmb_hpc.fragment import RunSpec, build_atomic_input

    plan = make_plan(make_input(1.0))
    spec = RunSpec(molecule=plan.core.molecule, specifications=plan.specifications)
    unit = [sleep_seconds(build_atomic_input(spec, t.label)[1]) for t in plan.tasks]
    return min(lb * workers / sum(unit), 0.9 * lb / max(unit))


# ------------------------------------------------------------------------------------------------
# the baselines (run as their own processes: --pool process | mpi)
# ------------------------------------------------------------------------------------------------


def _fragment(item):
    """One fragment through qcengine on a pool's worker; its wall-clock start and end there."""
    import qcengine

    import qcmb_hpc.testing.engines  # noqa: F401  (qcmb_sleep in this worker)

    program, inp = item
    start = time.time()
    res = qcengine.compute(inp, program, raise_error=True, task_config={"ncores": 1, "retries": 0})
    return {"energy": res.properties.return_energy}, start, time.time()


def baseline(kind: str, input_path: str, workers: int, out_path: str) -> None:
    """Plan with QCManyBody, run every fragment on the pool largest first, assemble with QCManyBody;
    write the fragments' spans and the script's own timestamps (``marks``) to ``out_path``."""
    marks = {"started": time.time()}
    import qcmb_hpc.testing.engines  # noqa: F401
    from qcmanybody.v2 import ManyBodyComputer

    from qcmb_hpc.cost import CostModel
    from qcmb_hpc.fragment import RunSpec, build_atomic_input
    from qcmb_hpc.plan import make_plan
    from qcmanybody.models.v2 import ManyBodyInput

    marks["imported"] = time.time()
    with open(input_path) as fh:
        inp = ManyBodyInput(**json.load(fh))
    comp = ManyBodyComputer.from_manybodyinput(inp, build_tasks=False)
    plan = make_plan(inp)
    CostModel(plan.core.molecule, plan.specifications).estimate_tasks(plan.tasks)
    spec = RunSpec(molecule=plan.core.molecule, specifications=plan.specifications)
    order = sorted(plan.tasks, key=lambda t: -t.cost)
    items = [build_atomic_input(spec, t.label) for t in order]
    marks["planned"] = time.time()
    if kind == "process":
        from concurrent.futures import ProcessPoolExecutor as Pool

        pool = Pool(max_workers=workers)
    else:
        from mpi4py.futures import MPIPoolExecutor as Pool

        pool = Pool(max_workers=workers)
    with pool:
        futures = [pool.submit(_fragment, it) for it in items]
        outs = [f.result() for f in futures]
    marks["pool_closed"] = time.time()
    props = {t.label: o[0] for t, o in zip(order, outs)}
    analyze = comp.qcmb_core.analyze({t.label: props[t.label] for t in plan.tasks})
    analyze["nbody_number"] = len(props)
    result = comp.get_results(external_results=analyze, component_results={})
    marks["assembled"] = time.time()
    with open(out_path, "w") as fh:
        json.dump({"marks": marks, "fragments": [[s, e] for _, s, e in outs], "return_result": result.return_result}, fh)


# ------------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------------


def _run(cmd, cwd, env):
    t0 = time.time()
    proc = subprocess.run(["timeout", "-k", "10", "600", *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    t1 = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return t0, t1


PHASES = ("imports", "planning", "worker_start", "run", "assembly", "shutdown")  # (they add up to the wall)


def breakdown(launch: float, end: float, started: float, planning: float, assembly: float, spans, workers: int):
    """The phases of one run (:data:`PHASES`, see the module's text) from its timestamps: ``launch``
    and ``end`` seen from outside, ``started`` (epoch s) when the coordinator's run began after its
    imports, ``planning`` and ``assembly`` (s) how long those took, ``spans`` each fragment's
    (start, end)."""
    first = min(s for s, _ in spans)
    last = max(e for _, e in spans)
    seconds = [e - s for s, e in spans]
    lb = max(sum(seconds) / workers, max(seconds))
    return {
        "wall": end - launch,
        "imports": started - launch,
        "planning": planning,
        "worker_start": first - started - planning,
        "to_first_fragment": first - launch,
        "run": last - first,
        "assembly": assembly,
        "shutdown": end - last - assembly,
        "lower_bound": lb,
        "run_over_lb": (last - first) / lb,
    }


def qcmb_breakdown(launch: float, end: float, report, workers: int):
    """:func:`breakdown` of a qcmb_hpc command from its run report (``NAME.report.json``): the
    run's ``started``, its phases (planning = planning, estimates, journal, setup; assembly = the
    report and QCManyBody's assembly) and its successful attempts."""
    ph = report["phases"]
    a = report["attempts"]
    spans = [(s, s + d) for s, d, st in zip(a["start"], a["seconds"], a["status"]) if st == "success"]
    planning = sum(ph.get(k, 0.0) for k in ("planning", "estimates", "journal", "setup"))
    return breakdown(launch, end, report["started"], planning, ph.get("report", 0.0) + ph.get("assembly", 0.0),
                     spans, workers)


def pool_breakdown(launch: float, end: float, out, workers: int):
    """:func:`breakdown` of a pool's script from what :func:`baseline` wrote."""
    m = out["marks"]
    return breakdown(launch, end, m["imported"], m["planned"] - m["imported"], m["assembled"] - m["pool_closed"],
                     out["fragments"], workers)


def import_times(work: str, input_path: str, env) -> dict:
    """Top-level import time (s, cumulative) per role: rank 0 (coordinator) and rank 1 (a worker)."""
    cmd = [common.mpiexec(), "-l", "-n", "2", sys.executable, "-X", "importtime", "-m", "qcmb_hpc", input_path,
           "--import", ENGINES, "--no-progress", "--fresh", "--no-checkpoint"]
    proc = subprocess.run(["timeout", "300", *cmd], cwd=work, env=env, capture_output=True, text=True)
    roles = {"0": 0.0, "1": 0.0}
    for line in proc.stderr.splitlines():
        if "import time:" not in line or line.count("|") != 2:
            continue
        tag, rest = line.split("]", 1)
        cumulative, name = rest.split("|")[1:]
        if not cumulative.strip().isdigit():  # (the header line)
            continue
        if name.startswith(" ") and not name.startswith("  "):  # a top-level import (one space after the bar)
            roles[tag.strip("[ ")] = roles.get(tag.strip("[ "), 0.0) + int(cumulative) / 1e6
    return {"coordinator": roles["0"], "worker": roles["1"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--lb", type=float, default=2.8)
    p.add_argument("--pool", choices=["process", "mpi"], help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.pool:  # a baseline's own process
        baseline(a.pool, a.input, a.workers, a.out)
        return 0

    import shutil

    work = tempfile.mkdtemp(prefix="qcmb_hpc-bench-coldstart-")
    try:
        env = common.child_env()
        input_path = os.path.join(work, "w8.json")
        with open(input_path, "w") as fh:
            fh.write(make_input(base_for(a.lb, a.workers)).model_dump_json())
        me = os.path.abspath(__file__)
        n = a.workers
        commands = {
            "qcmb_hpc multiprocessing": [sys.executable, "-m", "qcmb_hpc", input_path, "--mode", "multiprocessing",
                                         "--workers", str(n), "--import", ENGINES, "--fresh"],
            "ProcessPoolExecutor": [sys.executable, me, "--pool", "process", "--workers", str(n), "--input", input_path],
            "qcmb_hpc MPI": [common.mpiexec(), "-n", str(n + 1), sys.executable, "-m", "qcmb_hpc", input_path,
                             "--import", ENGINES, "--fresh"],
            "MPIPoolExecutor": [common.mpiexec(), "-n", str(n + 1), sys.executable, "-m", "mpi4py.futures", me,
                                "--pool", "mpi", "--workers", str(n), "--input", input_path],
        }
        runs = {k: [] for k in commands}
        loads = []
        for r in range(a.repeat):
            for name, cmd in commands.items():
                run_env = dict(env, XDG_CACHE_HOME=tempfile.mkdtemp(prefix="qcmb_hpc-bench-cache-", dir=work))
                out = os.path.join(work, f"baseline-{r}.json")
                full = cmd + (["--out", out] if "--pool" in cmd else [])
                loads.append(os.getloadavg()[0])
                launch, end = _run(full, work, run_env)
                if name.startswith("qcmb_hpc"):
                    with open(os.path.join(work, "w8.report.json")) as fh:
                        rep = json.load(fh)
                    runs[name].append(qcmb_breakdown(launch, end, rep, n))
                else:
                    with open(out) as fh:
                        runs[name].append(pool_breakdown(launch, end, json.load(fh), n))
                print(f"repeat {r + 1}: {name}: {runs[name][-1]['wall']:.2f} s", flush=True)

        def med(name, key):
            return statistics.median(x[key] for x in runs[name])

        imports = import_times(work, input_path, env)
        ratios = {
            "multiprocessing": med("qcmb_hpc multiprocessing", "wall") / med("ProcessPoolExecutor", "wall"),
            "mpi": med("qcmb_hpc MPI", "wall") / med("MPIPoolExecutor", "wall"),
        }
        data = {
            "workload": f"(H2O){WATERS} NoCP {NBODY}-body, qcmb_sleep, 92 fragments",
            "workers": n,
            "repeat": a.repeat,
            "runs": runs,
            "median": {name: {k: med(name, k) for k in runs[name][0]} for name in runs},
            "ratio": ratios,
            "imports_seconds": imports,
            "loadavg_1min_at_each_run": loads,
            "targets": {"qcmb_hpc / pool <= 0.80 (multiprocessing)": ratios["multiprocessing"] <= 0.80,
                        "qcmb_hpc / pool <= 0.80 (MPI)": ratios["mpi"] <= 0.80},
        }
        common.write_json(NAME, data)
        keys = ["wall", *PHASES, "to_first_fragment", "lower_bound", "run_over_lb"]
        rows = [[name, *(f"{data['median'][name][k]:.2f}" for k in keys)] for name in runs]
        print(common.table(["command (median of %d)" % a.repeat, *keys], rows,
                           f"Cold start, {data['workload']}, {n} workers"))
        print(f"qcmb_hpc / pool: multiprocessing {ratios['multiprocessing']:.2f}, MPI {ratios['mpi']:.2f} (target ≤ 0.80)")
        print(f"imports (cumulative s, top level): coordinator {imports['coordinator']:.2f}, worker rank {imports['worker']:.2f}")
        print(f"load average (1 min) before each run: {', '.join(f'{x:.2f}' for x in loads)}")
        common.print_targets(data)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
