"""Run every benchmark (``make bench``): each prints its table and writes JSON under benchmarks/results/.

    python benchmarks/run_all.py                      # all nine, in this order
    python benchmarks/run_all.py --only throughput    # one (scheduling, throughput, nwchem, pyscf, simulation, eta, parsl, coldstart, scale)

1. ``bench_scheduling.py`` — makespan / LB per strategy vs MPIPoolExecutor.map and round-robin,
   4, 8, 16 workers (MPI, ``qcmb_sleep``)                                        ~3–4 min
2. ``bench_throughput.py`` — no-op fragments/s with 3 workers vs MPIPoolExecutor; idle CPU  ~1 min
3. ``bench_nwchem.py`` — NWChem, 2 workers vs sequential QCManyBody                ~2 min
4. ``bench_pyscf.py`` — PySCF (H2O)6 DF-MP2/cc-pVDZ, 2 workers (CLI cold, API warm) vs
   sequential QCManyBody, 3 repeats                                               ~10 min
5. ``bench_simulation.py`` — predictions at 1k/16k/64k workers (tail guard on and off), and beside the runs of 1.
   (pure Python, one core)                                                       ~5–10 min
6. ``bench_eta.py`` — the cost-weighted ETA against a count-based one over simulated runs
   (fake clock: no machine timing)                                               ~10 s
7. ``bench_parsl.py`` — the parsl plugin against Parsl's python_app map (largest first) on
   one local block of 4 workers: makespan / LB, whole-process wall, no-op throughput  ~2 min
8. ``bench_coldstart.py`` — the whole command, cold, 8 workers: multiprocessing against
   ProcessPoolExecutor and mpiexec against MPIPoolExecutor (largest first), alternating, 3
   repeats; where the time goes (imports, planning, worker start, run, assembly,
   shutdown); imports per role                                                    ~4 min
9. ``bench_scale.py`` — (H2O)64 4-body NoCP (679,120 fragments, no-op engine): first dispatch,
   phases and peak memory, fresh and resumed from a 600k-record journal; worker overhead  ~10 min

The timing benchmarks want a quiet machine: on a shared one the numbers move with the load.
A summary of every target is printed at the end and written to results/summary.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

ORDER = ["scheduling", "throughput", "nwchem", "pyscf", "simulation", "eta", "parsl", "coldstart", "scale"]
#: seconds each may take before it is killed (the MPI ones also time out each mpiexec world)
TIMEOUTS = {"scheduling": 1500, "throughput": 700, "nwchem": 700, "pyscf": 1500, "simulation": 2400, "eta": 300, "parsl": 1200,
            "coldstart": 1200, "scale": 2400}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", choices=ORDER, help="run only this benchmark (repeatable)")
    a = p.parse_args(argv)
    todo = a.only or ORDER
    failed = []
    t_all = time.perf_counter()
    for name in todo:
        script = os.path.join(common.HERE, f"bench_{name}.py")
        print(f"\n=== {name} " + "=" * (60 - len(name)), flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run([sys.executable, script], env=common.child_env(), cwd=common.REPO, timeout=TIMEOUTS[name]).returncode
        except subprocess.TimeoutExpired:
            rc = "timed out"
        print(f"--- {name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    summary = {}
    for name in ORDER:  # every result present (from this run or an earlier one: see its machine.time)
        try:
            summary[name] = common.read_json(name).get("targets", {})
        except (FileNotFoundError, ValueError):
            summary[name] = None
    print("\n=== targets " + "=" * 50)
    for name, targets in summary.items():
        if name not in todo and targets is None:
            continue
        if not targets:
            print(f"{name}: {'no result' if targets is None else '(no targets: predictions)'}")
            continue
        for k, v in targets.items():
            print(f"{name}: {k}: {common.verdict(v)}")
    common.write_json("summary", {"targets": summary, "failed": failed, "seconds": time.perf_counter() - t_all})
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
