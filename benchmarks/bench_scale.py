"""Benchmark 7: the first minute at scale, and where the time goes.

(H2O)64 NoCP up to 4-body — 679,120 fragments — with the no-op engine (``noop_engine.py``:
``qcmb_noop``; no fragment molecule is built, qcengine is not entered), the defaults a user gets
(multiprocessing on all cores, isolated fragments, a fsynced checkpoint journal), measured on the
coordinating process:

* **CLI, cold**: ``python -m qcmb_hpc big.json --import noop_engine`` as a new process, as a user
  runs it (progress lines to a file, the per-user cost history in a cache directory of this
  benchmark). Time from the process start (just before it is launched) to the first fragment
  sent to a worker, the run report's ``phases`` and the coordinator's peak RSS. **It does not run
  all 679,120 fragments**: the benchmark sends SIGTERM once ``--stop-after`` fragments (default
  20,000) are in the journal (the run stops cleanly, exit 3, resumable) — a no-op loop of all of
  them takes minutes here and is not what is measured.
* **resume**: a journal of ``--resume-records`` records (default 600,000) is written the way a run
  writes it (``fragment_record``, ``Journal.append``; the largest fragments first, as a run hands
  them out), then the same command runs the remaining 79,120 fragments *to completion*: time from
  the process start until dispatch of the rest starts, the journal restore, the loop, the report and
  QCManyBody's assembly, and the peak RSS through assembly.
* **API**: the same two cases through ``ParallelManyBodyComputer(inp, parallel_config={"mode":
  "multiprocessing", "checkpoint": ...}).compute()`` in a fresh process of this benchmark (imports
  outside the timing: "first dispatch" is counted from the ``compute()`` call); the fresh case is
  stopped after ``--stop-after`` completions by a progress reporter that sends the process SIGTERM.
* **30k**: (H2O)30 NoCP up to 4-body (31,930 fragments), CLI and API, run to completion,
  ``--repeat`` times each (median): the same phases.
* **memory beside sequential QCManyBody**: ``qcmanybody.v2.ManyBodyComputer.from_manybodyinput``
  on the 30k input with QCEngine's ``qcmb_noop`` program, in a fresh process (``--repeat-upstream``
  runs, default 1): its wall and peak RSS, per fragment above the process's RSS before the run,
  beside the API runs' (the same base), and what that rate comes to at 679,120 fragments.
* **worker overhead**: per fragment on a worker, outside the engine: building the fragment
  molecule, the ``AtomicInput``, QCEngine's own overhead per ``compute`` call (the no-op harness
  does nothing), pickling a task and an outcome message; 4-body fragments of the (H2O)64 parent.

Phases (the run report's ``phases``, :class:`qcmb_hpc.report.Phases`): planning (QCManyBody's plan
as tasks, the program check), estimates (the cost model), journal (open, restore), setup (layout,
tracker), start (workers), loop (the coordinator's run; of it, journal writes), report,
assembly (``analyze`` + ``get_results``). "launch" is the process start to the run's start
(imports, reading the input). Peak RSS is the coordinator's (``ru_maxrss``, in the report), and,
for the CLI, the ``VmHWM`` last seen from outside (which includes writing the result and report).

Targets (issue #12, items 5 and 7): first fragment dispatched ≤ 10 s after start (CLI, cold);
coordinator peak ≤ 1.5 GiB through assembly; resume from 600k records dispatching the rest
≤ 30 s after start.

    python benchmarks/bench_scale.py [--repeat 3] [--stop-after 20000] [--resume-records 600000]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

NAME = "scale"
GiB = 1024**3
PHASES = ("planning", "estimates", "journal", "setup", "start", "loop", "journal_writes", "report", "assembly")


def write_input(path: str, waters: int, nbody: int) -> None:
    from qcmb_hpc.testing.inputs import many_body_input

    inp = many_body_input(common.water(waters), program="qcmb_noop", bsse_type=["nocp"], max_nbody=nbody)
    with open(path, "w") as fh:
        fh.write(inp.model_dump_json())


class _Watch:
    """Watches a running process from outside: the lines of its journal and its VmHWM."""

    def __init__(self, pid: int, journal: str):
        self.pid, self.journal = pid, journal
        self.lines = 0
        self._offset = 0
        self.hwm = 0

    def poll(self) -> None:
        try:
            with open(f"/proc/{self.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        self.hwm = max(self.hwm, int(line.split()[1]) * 1024)
        except (OSError, ValueError):
            pass
        try:
            with open(self.journal, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return
        self._offset += len(data)
        self.lines += data.count(b"\n")


def cli_run(work: str, name: str, stop_after: Optional[int], timeout: float) -> Dict[str, Any]:
    """One cold ``python -m qcmb_hpc`` run; SIGTERM once ``stop_after`` records are journaled."""
    env = {k: v for k, v in common.child_env().items() if not k.startswith("QCMB_")}
    env["XDG_CACHE_HOME"] = os.path.join(work, "cache")  # this benchmark's own per-user cost history
    cmd = [sys.executable, "-m", "qcmb_hpc", f"{name}.json", "--import", "noop_engine"]
    journal = os.path.join(work, f"{name}.checkpoint.jsonl")
    before = 0
    if os.path.exists(journal):
        with open(journal, "rb") as fh:
            before = fh.read().count(b"\n")
    with open(os.path.join(work, f"{name}.stderr"), "w") as err:
        load = os.getloadavg()[0]
        t_wall = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=err)
        watch = _Watch(proc.pid, journal)
        signalled = None
        while proc.poll() is None:
            watch.poll()
            if stop_after and signalled is None and watch.lines - before - (1 if before == 0 else 0) >= stop_after:
                proc.send_signal(signal.SIGTERM)
                signalled = time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                raise SystemExit(f"{name}: the CLI took more than {timeout:.0f} s")
            time.sleep(0.02)
        wall = time.perf_counter() - t0
    if proc.returncode not in ((3,) if stop_after else (0,)):
        with open(os.path.join(work, f"{name}.stderr")) as fh:
            tail = fh.read()[-3000:]
        raise SystemExit(f"{name}: the CLI ended with {proc.returncode}: {tail}")
    with open(os.path.join(work, f"{name}.report.json")) as fh:
        rep = json.load(fh)
    launch = rep["started"] - t_wall
    return {
        "wall": wall,
        "launch": launch,
        "first_dispatch_from_start": launch + rep["first_dispatch_seconds"],
        "phases": rep.get("phases", {}),
        "peak_rss": rep.get("peak_rss_bytes"),
        "peak_rss_steps": rep.get("peak_rss_steps_bytes"),
        "peak_rss_polled": watch.hwm or None,
        "computed": rep["computed"],
        "restored": rep["restored"],
        "fragments": rep["fragments"],
        "stopped_at": signalled,
        "loadavg": load,
    }


def api_run(work: str, name: str, stop_after: Optional[int], timeout: float) -> Dict[str, Any]:
    return _child_run(work, name, "api", "the API run", timeout,
                      ["--api-child", os.path.join(work, f"{name}.json"), "--checkpoint", os.path.join(work, f"{name}.checkpoint.jsonl"),
                       "--stop-after", str(stop_after or 0)])


def _child_run(work: str, name: str, kind: str, what: str, timeout: float, args: List[str]) -> Dict[str, Any]:
    """This script run again as a fresh child process (``args`` choose the child); what it wrote,
    with the load average at its start."""
    out = os.path.join(work, f"{name}.{kind}.json")
    cmd = [sys.executable, os.path.abspath(__file__), *args, "--out", out]
    load = os.getloadavg()[0]
    env = {k: v for k, v in common.child_env().items() if not k.startswith("QCMB_")}
    proc = subprocess.run(cmd, env=env, cwd=work, timeout=timeout, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: {what} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    with open(out) as fh:
        res = json.load(fh)
    res["loadavg"] = load
    return res


def api_child(a: argparse.Namespace) -> None:
    """In a fresh process: imports first (outside the timing), then ``compute()``."""
    import noop_engine  # noqa: F401
    from qcmb_hpc import IncompleteRunError, ParallelManyBodyComputer

    with open(a.api_child) as fh:
        data = json.load(fh)

    class StopAfter:
        """Sends this process SIGTERM after ``n`` completions: the run stops as on a signal."""

        def __init__(self, n: int):
            self.n = n

        def on_fragment_completed(self, label: str, success: bool) -> None:
            self.n -= 1
            if self.n == 0:
                os.kill(os.getpid(), signal.SIGTERM)

    cfg = {"mode": "multiprocessing", "checkpoint": a.checkpoint, "progress_reporting": False, "log_level": "WARNING"}
    base = _rss()
    comp = ParallelManyBodyComputer(data, parallel_config=cfg, progress_reporter=StopAfter(a.stop_after) if a.stop_after else None)
    t0 = time.perf_counter()
    try:
        comp.compute()
    except IncompleteRunError:
        if not a.stop_after:
            raise
    wall = time.perf_counter() - t0
    rep = comp.run_info
    with open(a.out, "w") as fh:
        json.dump({
            "wall": wall, "launch": 0.0, "first_dispatch_from_start": rep["first_dispatch_seconds"],
            "phases": rep["phases"], "peak_rss": rep["peak_rss_bytes"], "peak_rss_steps": rep.get("peak_rss_steps_bytes"),
            "base_rss": base,
            "computed": rep["computed"],
            "restored": rep["restored"], "fragments": rep["fragments"],
        }, fh)


def _rss() -> int:
    """This process's resident memory now, bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def upstream_child(a: argparse.Namespace) -> None:
    """In a fresh process: sequential ``qcmanybody.v2.ManyBodyComputer.from_manybodyinput`` on the
    same input with the same no-op program (QCEngine's ``qcmb_noop``), imports outside the timing;
    its wall and its peak RSS, and the RSS before it started (the same base as the API child's)."""
    import resource

    import noop_engine  # noqa: F401
    from qcmanybody.v2 import ManyBodyComputer

    from qcmb_hpc.computer import coerce_input

    with open(a.upstream_child) as fh:
        inp, _ = coerce_input(json.load(fh))
    base = _rss()
    t0 = time.perf_counter()
    res = ManyBodyComputer.from_manybodyinput(inp)
    wall = time.perf_counter() - t0
    with open(a.out, "w") as fh:
        json.dump({"wall": wall, "base_rss": base, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   "fragments": len(res.cluster_properties)}, fh)


def upstream_run(work: str, name: str, timeout: float) -> Dict[str, Any]:
    return _child_run(work, name, "upstream", "the sequential QCManyBody run", timeout,
                      ["--upstream-child", os.path.join(work, f"{name}.json")])


def memory_per_fragment(c: Dict[str, Any]) -> Optional[float]:
    """Bytes per fragment of a run's peak above its base (the process before the run)."""
    if not c.get("peak_rss") or not c.get("base_rss") or not c.get("fragments"):
        return None
    return (c["peak_rss"] - c["base_rss"]) / c["fragments"]


def synthesize_journal(path: str, input_path: str, records: int) -> Dict[str, Any]:
    """A journal of ``records`` finished fragments, written as a run writes it: its header, then
    records (``fragment_record``) in the order a run hands fragments out (largest estimate first)."""
    from qcmb_hpc import ParallelManyBodyComputer
    from qcmb_hpc.checkpoint import Journal, fragment_record, plan_totals
    from qcmb_hpc.cost import CostModel
    from qcmb_hpc.engine import FragmentOutcome

    t0 = time.perf_counter()
    with open(input_path) as fh:
        plan = ParallelManyBodyComputer(json.load(fh)).build_plan()
    CostModel(plan.core.molecule, plan.specifications).estimate_tasks(plan.tasks)
    order = sorted(plan.tasks, key=lambda t: (-t.cost, t.id))[:records]
    if os.path.exists(path):
        os.unlink(path)
    journal = Journal.open(path, plan.fingerprint, fresh=True, fragments=len(plan.tasks), info=plan_totals(plan.tasks))
    now = time.time()
    batch = []
    for k, t in enumerate(order):
        out = FragmentOutcome(id=t.id, ok=True, properties={"energy": 0.0}, started=now + k * 1e-5, seconds=1e-5,
                              worker=k % 2, host="bench")
        batch.append(fragment_record(t.label, out, attempt=1, estimate=t.cost, estimate_initial=t.cost))
        if len(batch) == 10000:
            journal.append(batch)
            batch = []
    journal.append(batch)
    journal.close()
    return {"records": len(order), "bytes": os.path.getsize(path), "seconds": time.perf_counter() - t0}


def worker_overhead(input_path: str, samples: int = 300, repeat: int = 5) -> Dict[str, Any]:
    """Microseconds per fragment on a worker, outside the engine (medians of ``repeat`` passes over
    ``samples`` 4-body fragments of the big input's parent)."""
    import noop_engine  # noqa: F401
    import qcengine
    from qcelemental.models.v2 import AtomicInput

    from qcmb_hpc import ParallelManyBodyComputer
    from qcmb_hpc.engine import FragmentExecutor, FragmentOutcome, QCEngineAdapter
    from qcmb_hpc.plan import RunSpec, build_atomic_input, build_fragment_molecule, worker_parent
    from qcmb_hpc import transport as T

    with open(input_path) as fh:
        plan = ParallelManyBodyComputer(json.load(fh)).build_plan()
    spec = RunSpec(molecule=worker_parent(plan.core.molecule), specifications=plan.specifications, isolate=False)
    step = max(1, len(plan.tasks) // samples)
    tasks = [t for t in plan.tasks if t.nbody == max(x.nbody for x in plan.tasks[-50:])][::step][:samples] or plan.tasks[:samples]
    task_config = spec.task_config(None)
    qcengine.config.get_global()
    program, inp = build_atomic_input(spec, tasks[0].label)
    real_compute = noop_engine.NoopHarness.compute
    # the engine's own work: the no-op harness, timed inside qcengine's call
    inside = []

    def timed_compute(self, input_model, config):
        t = time.perf_counter()
        res = real_compute(self, input_model, config)
        inside.append(time.perf_counter() - t)
        return res

    def per(fn, items) -> float:
        runs = []
        for _ in range(repeat):
            t = time.perf_counter()
            for x in items:
                fn(x)
            runs.append((time.perf_counter() - t) / len(items) * 1e6)
        return statistics.median(runs)

    mols = [build_fragment_molecule(spec.molecule, t.real, t.basis) for t in tasks]
    chem = spec.specifications[tasks[0].mc]
    inputs = [build_atomic_input(spec, t.label)[1] for t in tasks]
    out = {
        "fragments": len(tasks),
        "nbody": tasks[0].nbody,
        "fragment_molecule_us": per(lambda t: build_fragment_molecule(spec.molecule, t.real, t.basis), tasks),
        "atomic_input_us": per(lambda m: AtomicInput(molecule=m, specification=chem["specification"]), mols),
        "build_atomic_input_us": per(lambda t: build_atomic_input(spec, t.label), tasks),
    }
    noop_engine.NoopHarness.compute = timed_compute
    try:
        adapter = QCEngineAdapter(program, task_config)
        out["qcengine_compute_us"] = per(adapter.execute_fragment, inputs)
        out["engine_itself_us"] = statistics.median(inside) * 1e6
        out["qcengine_overhead_us"] = out["qcengine_compute_us"] - out["engine_itself_us"]
        executor = FragmentExecutor(spec, task_config)
        # the whole attempt through the real path (the no-op shortcut of run_fragment bypassed)
        out["fragment_executor_us"] = per(lambda t: executor.execute_fragment((t.id, t.label)), tasks)
    finally:
        noop_engine.NoopHarness.compute = real_compute
    msg_tasks = (T.TASKS, [t.wire() for t in tasks[:1]])
    outcome = FragmentOutcome(id=1, ok=True, properties={"energy": -76.1234}, started=time.time(), seconds=0.01, worker=1, host="node")
    out["task_message_us"] = per(lambda m: pickle.loads(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL)), [msg_tasks] * 2000)
    out["result_message_us"] = per(lambda m: pickle.loads(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL)), [(T.RESULTS, [outcome])] * 2000)
    out["outside_engine_us"] = out["fragment_executor_us"] - out["engine_itself_us"] + out["task_message_us"] + out["result_message_us"]
    return out


def median_run(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per field, the median over repeated runs (phases too)."""
    keys = {k for r in runs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out: Dict[str, Any] = {k: statistics.median(r[k] for r in runs if r.get(k) is not None) for k in keys
                           if any(r.get(k) is not None for r in runs)}
    names = {p for r in runs for p in r["phases"]}
    out["phases"] = {p: statistics.median(r["phases"].get(p, 0.0) for r in runs) for p in names}
    steps = {k for r in runs for k in (r.get("peak_rss_steps") or {})}
    if steps:
        out["peak_rss_steps"] = {k: statistics.median(r["peak_rss_steps"][k] for r in runs if (r.get("peak_rss_steps") or {}).get(k))
                                 for k in steps}
    out["runs"] = runs
    return out


def run(a: argparse.Namespace) -> Dict[str, Any]:
    work = tempfile.mkdtemp(prefix="qcmb_bench_scale-")
    try:
        return _run(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(a: argparse.Namespace, work: str) -> Dict[str, Any]:
    big, small = os.path.join(work, "big.json"), os.path.join(work, "small.json")
    write_input(big, a.waters, a.nbody)
    write_input(small, a.small_waters, a.nbody)
    out: Dict[str, Any] = {"waters": a.waters, "nbody": a.nbody, "small_waters": a.small_waters, "stop_after": a.stop_after,
                           "resume_records": a.resume_records, "repeat": a.repeat, "repeat_big": a.repeat_big, "cases": {}}
    cases = out["cases"]

    def say(name: str, r: Dict[str, Any]) -> None:
        ph = r["phases"]
        print(f"  {name}: load {r.get('loadavg', 0):.2f}, wall {r['wall']:.1f} s, first dispatch {r['first_dispatch_from_start']:.1f} s, "
              f"peak {(r.get('peak_rss') or 0) / GiB:.2f} GiB, " + ", ".join(f"{p} {ph[p]:.2f}" for p in PHASES if p in ph), flush=True)

    nb, ns = fragments(a.waters, a.nbody), fragments(a.small_waters, a.nbody)
    out["fragments"], out["small_fragments"] = nb, ns
    # a first small CLI run, not counted: the cost history starts (as a user's would after one run)
    cli_run(work, "small", None, a.timeout)
    for label, fn, name, stop, n, journal in [
        (f"{ns:,} CLI", cli_run, "small", None, a.repeat, None),
        (f"{ns:,} API", api_run, "small", None, a.repeat, None),
        (f"{nb:,} CLI fresh (stopped)", cli_run, "big", a.stop_after, a.repeat_big, None),
        (f"{nb:,} API fresh (stopped)", api_run, "big", a.stop_after, a.repeat_big, None),
        (f"{nb:,} CLI resume", cli_run, "big", None, a.repeat_big, "resume"),
        (f"{nb:,} API resume", api_run, "big", None, a.repeat_big, "resume"),
    ]:
        if a.only and not any(w in label for w in a.only):
            continue
        if journal and "journal" not in out:
            print(f"writing a journal of {a.resume_records} records ...", flush=True)
            out["journal"] = synthesize_journal(os.path.join(work, "resume.jsonl"), big, a.resume_records)
        runs = []
        for _ in range(n):
            path = os.path.join(work, f"{name}.checkpoint.jsonl")
            if journal:
                shutil.copyfile(os.path.join(work, "resume.jsonl"), path)
            elif os.path.exists(path):
                os.unlink(path)
            runs.append(fn(work, name, stop, a.timeout))
            say(label, runs[-1])
        cases[label] = median_run(runs)
    if a.repeat_upstream and (not a.only or any(w in "upstream" for w in a.only)):
        runs = []
        for _ in range(a.repeat_upstream):
            runs.append(upstream_run(work, "small", a.timeout))
            r = runs[-1]
            print(f"  {ns:,} qcmanybody.v2 sequential: load {r['loadavg']:.2f}, wall {r['wall']:.1f} s, "
                  f"peak {r['peak_rss'] / GiB:.2f} GiB (base {r['base_rss'] / GiB:.2f})", flush=True)
        out["upstream_small"] = {k: statistics.median(r[k] for r in runs) for k in ("wall", "base_rss", "peak_rss", "fragments")}
        out["upstream_small"]["runs"] = runs
    if not a.only or "overhead" in a.only:
        print("worker overhead ...", flush=True)
        out["worker_overhead"] = worker_overhead(big)
    fresh, resume = cases.get(f"{nb:,} CLI fresh (stopped)"), cases.get(f"{nb:,} CLI resume")
    peaks = [p for k, c in cases.items() if k.startswith(f"{nb:,}") for p in (c.get("peak_rss"), c.get("peak_rss_polled")) if p]
    out["targets"] = {
        "first dispatch<=10s (CLI cold)": None if fresh is None else fresh["first_dispatch_from_start"] <= 10.0,
        "coordinator peak<=1.5GiB through assembly": max(peaks) <= 1.5 * GiB if peaks and resume else None,
        "resume from the journal dispatches the rest<=30s (CLI cold)": None if resume is None else resume["first_dispatch_from_start"] <= 30.0,
    }
    return out


def fragments(waters: int, nbody: int) -> int:
    """Fragments of a NoCP expansion of ``waters`` monomers through ``nbody``."""
    from math import comb

    return sum(comb(waters, k) for k in range(1, nbody + 1))


def report() -> Dict[str, Any]:
    d = common.read_json(NAME)
    cases = d["cases"]
    headers = ["case", "fragments run", "launch", *PHASES, "wall", "first dispatch", "peak GiB"]
    rows = []
    for name, c in cases.items():
        ph = c["phases"]
        peak = max(x for x in (c.get("peak_rss"), c.get("peak_rss_polled")) if x) / GiB if c.get("peak_rss") else None
        rows.append([name, int(c["computed"]), c.get("launch"), *[ph.get(p) for p in PHASES], c["wall"],
                     c["first_dispatch_from_start"], peak])
    print(common.table(headers, rows, f"Where the time goes (seconds; (H2O){d['waters']} and (H2O){d['small_waters']} NoCP "
                                      f"{d['nbody']}-body, no-op engine, 2 workers, isolation + journal)"))
    print(f"the fresh {d.get('fragments', 0):,}-fragment runs are stopped (SIGTERM) after {d['stop_after']:,} fragments; the resume runs start from a journal "
          f"of {d['resume_records']:,} records and run the rest to completion. {d.get('small_fragments', 0):,}: median of {d['repeat']}; {d.get('fragments', 0):,}: "
          f"median of {d['repeat_big']}. launch: process start to run start (CLI; the API counts from compute()).")
    loads = sorted({round(r['loadavg'], 2) for c in cases.values() for r in c['runs'] if 'loadavg' in r})
    if loads:
        print(f"load average (1 min) at the runs: {min(loads):.2f}–{max(loads):.2f}")
    steps = [[name, *[(c["peak_rss_steps"] or {}).get(k, 0) / GiB for k in ("before_assembly", "analyze", "get_results")]]
             for name, c in cases.items() if c.get("peak_rss_steps")]
    if steps:
        print(common.table(["case", "before assembly", "after analyze", "after get_results"], steps,
                           "Coordinator peak RSS, GiB, through assembly (QCManyBody's analyze, then its ManyBodyResult)"))
    print_memory(d)
    w = d.get("worker_overhead")
    if w:
        print_overhead(d, w)
    common.print_targets(d)
    return d


def print_memory(d: Dict[str, Any]) -> None:
    """Peak memory per fragment beside sequential QCManyBody's on the same input (the API runs
    and QCManyBody both in a fresh process, above the RSS before the run), and what each would
    hold at the big case's size at that rate."""
    up = d.get("upstream_small")
    if not up:
        return
    nb, ns = d.get("fragments", 0), d.get("small_fragments", 0)
    rows = [[f"qcmanybody.v2 sequential, {ns:,}", up["wall"], up["peak_rss"] / GiB, memory_per_fragment(up) / 1024,
             (up["base_rss"] + memory_per_fragment(up) * nb) / GiB, None]]
    for name, c in d["cases"].items():
        per = memory_per_fragment(c)
        if per is None or "API" not in name or c["computed"] + c.get("restored", 0) < c["fragments"]:
            continue  # (a stopped run did not assemble)
        measured = c["peak_rss"] / GiB
        rows.append([f"qcmb_hpc {name}", c["wall"], measured, per / 1024,
                     (c["base_rss"] + per * nb) / GiB if c["fragments"] != nb else None, measured if c["fragments"] == nb else None])
    print(common.table(["run", "wall s", "peak GiB", "kB / fragment above base", f"at {nb:,} (rate x fragments) GiB",
                        f"measured at {nb:,} GiB"], rows,
                       "Memory beside sequential QCManyBody (its loop keeps every AtomicResult; qcmb_hpc keeps the numbers)"))


def print_overhead(d: Dict[str, Any], w: Dict[str, Any]) -> None:
    rows = [
        ["fragment molecule (get_fragment, as QCManyBody)", w["fragment_molecule_us"]],
        ["AtomicInput (validation)", w["atomic_input_us"]],
        ["build_atomic_input (both, qcmb_hpc's call)", w["build_atomic_input_us"]],
        ["qcengine.compute, the no-op harness itself", w["engine_itself_us"]],
        ["qcengine.compute, QCEngine's own overhead", w["qcengine_overhead_us"]],
        ["FragmentExecutor, one whole attempt", w["fragment_executor_us"]],
        ["task message (pickle + unpickle)", w["task_message_us"]],
        ["result message (pickle + unpickle)", w["result_message_us"]],
        ["outside the engine, per fragment", w["outside_engine_us"]],
    ]
    print(common.table(["per fragment on a worker", "µs"], rows, f"Worker overhead ({w['nbody']}-body fragments of (H2O){d['waters']}, median of 5)"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--waters", type=int, default=64)
    p.add_argument("--nbody", type=int, default=4)
    p.add_argument("--small-waters", type=int, default=30)
    p.add_argument("--stop-after", type=int, default=20000, help="fragments before a fresh 680k run is stopped")
    p.add_argument("--resume-records", type=int, default=600000)
    p.add_argument("--repeat", type=int, default=3, help="runs of each 30k case (median)")
    p.add_argument("--repeat-big", type=int, default=1, help="runs of each 680k case (median)")
    p.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    p.add_argument("--only", action="append", help="run only the cases whose name holds this (repeatable: CLI, API, resume, ...)")
    p.add_argument("--repeat-upstream", type=int, default=1,
                   help="runs of sequential qcmanybody.v2 on the small case (the memory baseline; 0: none)")
    p.add_argument("--api-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--upstream-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.api_child:
        api_child(a)
        return 0
    if a.upstream_child:
        upstream_child(a)
        return 0
    common.write_json(NAME, run(a))
    report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
