"""Workers on one node: long-lived and warm (one process per worker, not per fragment), each with
its own qcengine task_config (ncores = threads, memory, a private scratch) and thread variables;
the upstream-compatible entry points; MPI with one rank runs sequentially."""

import os
import subprocess
import sys
import time


import probe_engine  # noqa: F401  (registers qcmb_probe in this process; workers inherit it)
from conftest import HERE, REPO, assert_same_result, quiet, reference
from qcmb_hpc import ParallelManyBodyComputer
from qcmb_hpc.plan import make_plan
from qcmb_hpc.testing.inputs import many_body_input


def probes(res):
    return [r.extras["probe"] for r in res.cluster_results.values()]


def test_warm_workers_with_their_own_task_config(tetramer):
    inp = many_body_input(tetramer, program="qcmb_probe", bsse_type=["cp", "vmfc"], protocols={"cluster_results": "all"})
    n = len(make_plan(inp).tasks)
    cfg = quiet(mode="multiprocessing", max_workers=2, memory_limit_per_worker="1GiB", threads_per_worker=1)
    res = ParallelManyBodyComputer(inp, parallel_config=cfg).compute()
    assert_same_result(reference(inp), res, exact=True)
    seen = probes(res)
    assert len(seen) == n > 10
    pids = {p["pid"] for p in seen}
    scratches = {p["scratch_directory"] for p in seen}
    assert len(pids) <= 2, "a process per fragment, not per worker"
    assert len(scratches) == len(pids)  # one private scratch per worker
    for p in seen:
        assert p["ncores"] == 1 and p["memory"] == 1.0
        assert p["env"]["OMP_NUM_THREADS"] == p["env"]["MKL_NUM_THREADS"] == p["env"]["OPENBLAS_NUM_THREADS"] == "1"
        assert p["scratch_writable"]
    for d in scratches:
        assert not os.path.exists(d)  # removed at the end


def test_every_worker_warms_its_programs_before_its_first_fragment(trimer):
    """The harness's warm() (PySCF: its imports) runs in each worker before the first fragment
    reaches it, and an isolated child inherits it: no fragment's time includes the warm-up."""
    inp = many_body_input(trimer, program="qcmb_probe", bsse_type=["cp"], protocols={"cluster_results": "all"})
    for isolate in (True, False):
        cfg = quiet(mode="multiprocessing", max_workers=2, isolate_fragments=isolate)
        seen = probes(ParallelManyBodyComputer(inp, parallel_config=cfg).compute())
        for p in seen:
            assert p["warmed_in"] is not None and p["warmed_in"] != os.getpid()  # the worker's own, not ours
            assert p["warmed_in"] == (p["ppid"] if isolate else p["pid"])


def test_from_manybodyinput_like_upstream(trimer):
    inp = many_body_input(trimer, bsse_type=["nocp", "cp"], driver="gradient")
    res = ParallelManyBodyComputer.from_manybodyinput(inp, parallel_config=quiet(mode="multiprocessing"))
    assert_same_result(reference(inp), res, exact=True)
    comp = ParallelManyBodyComputer.from_manybodyinput(inp, build_tasks=False)
    assert comp.qcmb_core is not None and comp.parallel_config.mode.value == "sequential"
    assert [label for _, label, _ in comp.qcmb_core.iterate_molecules()] == [t.label for t in make_plan(inp).tasks]
    from qcmanybody.v2 import ManyBodyComputer

    assert isinstance(comp, ManyBodyComputer)
    # dict input, and v1 input gives a v1 result
    res_dict = ParallelManyBodyComputer(inp.model_dump(), parallel_config={"mode": "sequential", "progress_reporting": False}).compute()
    assert_same_result(reference(inp), res_dict, exact=True)
    res_v1 = ParallelManyBodyComputer(inp.convert_v(1), parallel_config=quiet(mode="sequential")).compute()
    assert res_v1.schema_version == 1
    from test_parity import assert_full_parity

    from qcmanybody.v1 import ManyBodyComputer as V1Computer

    assert_full_parity(V1Computer.from_manybodyinput(inp.convert_v(1)), res_v1)


def test_mpi_world_of_one_runs_sequentially(tmp_path, trimer):
    inp = many_body_input(trimer, bsse_type=["cp"])
    path = tmp_path / "one.json"
    path.write_text(inp.serialize("json"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, REPO]))
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    proc = subprocess.run(
        [mpiexec, "-n", "1", sys.executable, "-m", "qcmb_hpc", str(path), "--mode", "mpi", "--import",
         "qcmb_hpc.testing.engines", "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    from qcmanybody.models.v2 import ManyBodyResult

    res = ManyBodyResult(**json.loads((tmp_path / "one.result.json").read_text()))
    from conftest import load_report

    assert load_report(tmp_path / "one.result.json")["mode"] == "sequential"
    assert_same_result(reference(inp), res, exact=True, check_shape=False)


def test_scratch_of_killed_workers_is_removed_by_the_next_run(tmp_path):
    """Only this host's, only of processes that no longer exist; anything else is left alone."""
    import socket

    from qcmb_hpc.worker import remove_stale_scratch

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    names = {
        "dead": f"qcmb_hpc-{host}-{dead}-w0-abc",
        "alive": f"qcmb_hpc-{host}-{os.getpid()}-w1-abc",
        "other host": f"qcmb_hpc-{host}x-{dead}-w0-abc",
        "dead probe": f"qcmb_hpc-{host}-{dead}-probe-abc",
        "not a worker's": f"qcmb_hpc-{host}-{dead}-journal",
        "someone else's": f"other-{host}-{dead}-w0-abc",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("x")
    # a killed process not reaped yet (a zombie: SIGKILLed workers whose parent died too, for a
    # moment) is gone as well
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 60
    while stat_state(zombie.pid) != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.01)
    names["zombie"] = f"qcmb_hpc-{host}-{zombie.pid}-w2-abc"
    for name in names.values():
        (tmp_path / name).mkdir(exist_ok=True)
    try:
        removed = remove_stale_scratch(str(tmp_path), host)
    finally:
        zombie.wait()
    assert sorted(removed) == sorted(str(tmp_path / names[k]) for k in ("dead", "dead probe", "zombie"))
    assert sorted(os.listdir(tmp_path)) == sorted(n for k, n in names.items() if k not in ("dead", "dead probe", "zombie"))


def stat_state(pid):
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rpartition(")")[2].split()[0]


def test_cpu_description_is_py_cpuinfos():
    """The fast CPU description is py-cpuinfo's ``get_cpu_info()``, field for field (the current
    clock from /proc/cpuinfo, which moves with frequency scaling between any two calls, aside)."""
    import cpuinfo

    from qcmb_hpc.engine import cpu_description

    fast, slow = cpu_description(), cpuinfo.get_cpu_info()
    assert sorted(fast) == sorted(slow) and fast["brand_raw"]
    moving = ("hz_actual", "hz_actual_friendly")
    assert {k: v for k, v in fast.items() if k not in moving} == {k: v for k, v in slow.items() if k not in moving}


def test_node_detection_not_started_when_qcengine_has_its_description():
    """A process whose QCEngine already described the node (a warm MPI world running its next
    ``compute()``, a script that called ``get_global()``) starts no CPU-description subprocess."""
    code = """
import qcengine, qcmb_hpc.engine as e
qcengine.config.get_global()
e.start_node_detection()
assert e._early_cpu_info is None, e._early_cpu_info
print("none started")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "none started", out.stderr


def test_node_detection_started_early_gives_qcengines_own_values():
    """The CPU description computed in the background while the input is planned is what
    QCEngine computes itself (provenance: the CPU brand), and QCEngine takes it."""
    import json

    early = """
import json, qcmb_hpc.engine as e
e.start_node_detection()
v = e.warm_qcengine()
print(json.dumps({k: v[k] for k in ("cpu_brand", "ncores", "hostname")} | {"cpuinfo": sorted(v["cpuinfo"])}))
"""
    own = """
import json, qcengine
v = qcengine.config.get_global()
print(json.dumps({k: v[k] for k in ("cpu_brand", "ncores", "hostname")} | {"cpuinfo": sorted(v["cpuinfo"])}))
"""
    got = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
           for code in (early, own)]
    assert got[0] == got[1] and got[0]["cpu_brand"] and len(got[0]["cpuinfo"]) > 5
