"""Resource arithmetic under given environments: Slurm variables, fake cgroup trees (v1, v2, hybrid,
container mount roots) in temporary directories, affinity counts; the refusals; and per-worker
scratch directories in multiprocessing mode (one per worker, never shared, removed unless kept)."""

import os
import re
import subprocess
import sys

import pytest

from conftest import HERE, REPO, assert_same_result, reference
from qcmb_hpc import ParallelManyBodyComputer
from qcmb_hpc.resources import (
    MEMORY_SAFETY,
    MIN_WORKER_MEMORY,
    WORKER_OVERHEAD,
    NodeResources,
    ResourceError,
    cgroup_limits,
    detect_cores,
    detect_memory,
    detect_node,
    detect_node_cores,
    plan_layout,
)
from qcmb_hpc.testing.inputs import many_body_input, water_cluster
from qcmb_hpc.worker import scratch_root

import probe_engine  # noqa: F401  (registers qcmb_probe)

GiB, MiB = 1024**3, 1024**2
JOB = {"SLURM_JOB_ID": "42"}


# ------------------------------------------------------------------------------------------------
# cores
# ------------------------------------------------------------------------------------------------


def test_cores_affinity_alone():
    assert detect_cores({}, affinity=12) == (12, "CPU affinity")


def test_cores_cgroup_quota_rounds_down():
    assert detect_cores({}, affinity=12, cgroup_cpus=2.5) == (2, "cgroup cpu quota")
    assert detect_cores({}, affinity=12, cgroup_cpus=0.5) == (1, "cgroup cpu quota")  # never below one


def test_cores_slurm_cpus_per_task_wins_when_smallest():
    env = {**JOB, "SLURM_CPUS_PER_TASK": "4", "SLURM_CPUS_ON_NODE": "16"}
    assert detect_cores(env, affinity=64) == (4, "SLURM_CPUS_PER_TASK")
    # affinity smaller than what Slurm granted (a declared node bigger than the machine): affinity wins
    assert detect_cores(env, affinity=2) == (2, "CPU affinity")


def test_cores_batch_script_uses_cpus_on_node():
    env = {**JOB, "SLURM_CPUS_ON_NODE": "6", "SLURM_NTASKS": "6"}  # batch step: no SLURM_STEP_ID
    assert detect_cores(env, affinity=64) == (6, "SLURM_CPUS_ON_NODE")


def test_cores_srun_step_shares_node_among_its_tasks():
    env = {**JOB, "SLURM_CPUS_ON_NODE": "16", "SLURM_STEP_ID": "0", "SLURM_STEP_TASKS_PER_NODE": "4(x2),2", "SLURM_NODEID": "2"}
    assert detect_cores(env, affinity=64) == (8, "SLURM_CPUS_ON_NODE/2 tasks")  # node 2 holds 2 tasks
    env["SLURM_NODEID"] = "1"
    assert detect_cores(env, affinity=64) == (4, "SLURM_CPUS_ON_NODE/4 tasks")
    # without per-node counts, SLURM_NTASKS on a one-node step
    env = {**JOB, "SLURM_CPUS_ON_NODE": "12", "SLURM_STEP_ID": "3", "SLURM_NTASKS": "3", "SLURM_NNODES": "1"}
    assert detect_cores(env, affinity=64) == (4, "SLURM_CPUS_ON_NODE/3 tasks")


def test_cores_slurm_variables_outside_a_job_are_ignored():
    assert detect_cores({"SLURM_CPUS_PER_TASK": "1"}, affinity=8) == (8, "CPU affinity")


def test_node_cores_leave_affinity_out():
    env = {**JOB, "SLURM_CPUS_ON_NODE": "16", "SLURM_CPUS_PER_TASK": "4"}
    assert detect_node_cores(env, cpu_count=64) == (16, "SLURM_CPUS_ON_NODE")
    assert detect_node_cores(env, cpu_count=64, cgroup_cpus=8.0) == (8, "cgroup cpu quota")
    assert detect_node_cores({}, cpu_count=6) == (6, "CPUs of the node")


# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------


def test_memory_smallest_source_wins():
    assert detect_memory({}, available=64 * GiB) == (64 * GiB, "available memory")
    env = {**JOB, "SLURM_MEM_PER_NODE": "4096"}
    assert detect_memory(env, available=64 * GiB) == (4 * GiB, "SLURM_MEM_PER_NODE")
    assert detect_memory(env, available=64 * GiB, cgroup_memory=3 * GiB) == (3 * GiB, "cgroup memory limit")
    assert detect_memory(env, available=2 * GiB, cgroup_memory=3 * GiB) == (2 * GiB, "available memory")


def test_memory_per_cpu_times_cpus_on_node():
    env = {**JOB, "SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_ON_NODE": "6"}
    assert detect_memory(env, available=64 * GiB) == (6000 * MiB, "SLURM_MEM_PER_CPU×6")


def test_memory_whole_node_request_is_not_a_limit():
    env = {**JOB, "SLURM_MEM_PER_NODE": "0"}  # --mem=0: all of the node
    assert detect_memory(env, available=5 * GiB) == (5 * GiB, "available memory")


# ------------------------------------------------------------------------------------------------
# cgroups (fake trees; mount points given through a mountinfo text)
# ------------------------------------------------------------------------------------------------


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text + "\n")


def _mountinfo(*mounts):
    """mounts: (fstype, root, mount_point, super_options)"""
    lines = ["22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw"]
    for i, (fstype, root, point, opts) in enumerate(mounts):
        lines.append(f"{30 + i} 22 0:{30 + i} {root} {point} rw,nosuid,nodev,noexec,relatime shared:9 - {fstype} {fstype} {opts}")
    return "\n".join(lines) + "\n"


def test_cgroup_v2_limits_along_the_path(tmp_path):
    base = tmp_path / "cg"
    step = base / "system.slice" / "slurmstepd.scope" / "job_7" / "step_0"
    _write(str(base / "cgroup.controllers"), "cpu memory")
    _write(str(step / "cpu.max"), "max 100000")
    _write(str(step / "memory.max"), "max")
    _write(str(step.parent / "memory.max"), str(6 * GiB))  # the job's limit binds its step
    _write(str(step.parent / "cpu.max"), "250000 100000")
    _write(str(base / "system.slice" / "memory.max"), str(64 * GiB))
    mi = _mountinfo(("cgroup2", "/", str(base), "rw,nsdelegate"))
    cpus, mem = cgroup_limits(proc_cgroup="0::/system.slice/slurmstepd.scope/job_7/step_0\n", mountinfo=mi)
    assert cpus == 2.5 and mem == 6 * GiB


def test_cgroup_v2_unlimited(tmp_path):
    base = tmp_path / "cg"
    _write(str(base / "user" / "cpu.max"), "max 100000")
    _write(str(base / "user" / "memory.max"), "max")
    mi = _mountinfo(("cgroup2", "/", str(base), "rw"))
    assert cgroup_limits(proc_cgroup="0::/user\n", mountinfo=mi) == (None, None)


def test_cgroup_v1_controllers(tmp_path):
    mem, cpu = tmp_path / "memory", tmp_path / "cpu,cpuacct"
    job = "slurm/uid_0/job_5/step_batch"
    _write(str(mem / job / "memory.limit_in_bytes"), str(2 * GiB))
    _write(str(mem / "slurm" / "memory.limit_in_bytes"), "9223372036854771712")  # v1 "unlimited"
    _write(str(cpu / job / "cpu.cfs_quota_us"), "-1")
    _write(str(cpu / "slurm" / "uid_0" / "cpu.cfs_quota_us"), "400000")
    _write(str(cpu / "slurm" / "uid_0" / "cpu.cfs_period_us"), "100000")
    mi = _mountinfo(("cgroup", "/", str(mem), "rw,memory"), ("cgroup", "/", str(cpu), "rw,cpu,cpuacct"))
    proc = f"12:memory:/{job}\n4:cpu,cpuacct:/{job}\n1:name=systemd:/{job}\n"
    assert cgroup_limits(proc_cgroup=proc, mountinfo=mi) == (4.0, 2 * GiB)


def test_cgroup_hybrid_reads_v1_memory_not_the_empty_unified_tree(tmp_path):
    """systemd's hybrid layout (this development machine's): v2 mounted at unified/ with no
    controllers, the limits in the v1 trees."""
    unified, mem = tmp_path / "unified", tmp_path / "memory"
    os.makedirs(unified / "x")
    _write(str(mem / "process_api" / "abc" / "memory.limit_in_bytes"), str(3 * GiB))
    mi = _mountinfo(("cgroup2", "/", str(unified), "rw"), ("cgroup", "/", str(mem), "rw,memory"))
    proc = "4:memory:/process_api/abc\n0::/x\n"
    assert cgroup_limits(proc_cgroup=proc, mountinfo=mi) == (None, 3 * GiB)


def test_cgroup_container_mount_root(tmp_path):
    """In a container the mount's root is the container's own cgroup: /proc/self/cgroup shows the
    host path, which must be read relative to the mount root."""
    mem = tmp_path / "memory"
    _write(str(mem / "memory.limit_in_bytes"), str(1536 * MiB))
    mi = _mountinfo(("cgroup", "/docker/0123abcd", str(mem), "rw,memory"))
    assert cgroup_limits(proc_cgroup="9:memory:/docker/0123abcd\n", mountinfo=mi) == (None, 1536 * MiB)
    # a path outside the mounted root (another namespace): the mount itself is read
    assert cgroup_limits(proc_cgroup="9:memory:/elsewhere\n", mountinfo=mi) == (None, 1536 * MiB)


def test_cgroup_without_mount_table_uses_the_conventional_layout(tmp_path):
    _write(str(tmp_path / "cgroup.controllers"), "cpu memory")
    _write(str(tmp_path / "job" / "memory.max"), str(5 * GiB))
    _write(str(tmp_path / "job" / "cpu.max"), "300000 100000")
    assert cgroup_limits(str(tmp_path), proc_cgroup="0::/job\n", mountinfo="") == (3.0, 5 * GiB)


def test_detect_node_combines_everything(tmp_path):
    base = tmp_path / "cg"
    _write(str(base / "job" / "memory.max"), str(3 * GiB))
    _write(str(base / "job" / "cpu.max"), "600000 100000")
    mi = _mountinfo(("cgroup2", "/", str(base), "rw"))
    env = {**JOB, "SLURM_CPUS_PER_TASK": "4", "SLURM_CPUS_ON_NODE": "8", "SLURM_MEM_PER_NODE": "8192"}
    node = detect_node(env, affinity=32, cpu_count=32, available=100 * GiB, proc_cgroup="0::/job\n", mountinfo=mi)
    assert (node.cores, node.node_cores, node.memory) == (4, 6, 3 * GiB)
    assert node.sources == {"cores": "SLURM_CPUS_PER_TASK", "node_cores": "cgroup cpu quota", "memory": "cgroup memory limit"}


def test_detect_node_on_this_machine_is_sane():
    node = detect_node()
    assert 1 <= node.cores <= len(os.sched_getaffinity(0))
    assert node.memory > 0 and node.node_cores >= 1


# ------------------------------------------------------------------------------------------------
# the layout
# ------------------------------------------------------------------------------------------------


def node(cores=8, memory=32 * GiB, node_cores=None):
    return NodeResources(cores=cores, memory=memory, node_cores=node_cores, sources={"cores": "test", "memory": "test"})


def usable(mem):
    return int(mem * MEMORY_SAFETY)


def test_layout_one_worker_per_core_with_an_equal_memory_share():
    lay = plan_layout(node(8, 32 * GiB))
    assert (lay.workers, lay.threads_per_worker) == (8, 1)
    assert lay.memory_per_worker == usable(32 * GiB) // 8 - WORKER_OVERHEAD
    assert lay.warnings == []
    # the safety margin: everything the workers get, with their overhead, stays within MEMORY_SAFETY
    assert lay.workers * (lay.memory_per_worker + WORKER_OVERHEAD) <= MEMORY_SAFETY * 32 * GiB


def test_layout_threads_per_worker_divides_the_cores():
    lay = plan_layout(node(8), threads_per_worker=4)
    assert (lay.workers, lay.threads_per_worker) == (2, 4)
    lay = plan_layout(node(8), threads_per_worker=3)
    assert (lay.workers, lay.threads_per_worker) == (2, 3)


def test_layout_max_workers_overrides_and_warns_when_oversubscribing():
    lay = plan_layout(node(8), max_workers=3)
    assert lay.workers == 3 and lay.warnings == []
    lay = plan_layout(node(2), max_workers=4, threads_per_worker=2)
    assert (lay.workers, lay.threads_per_worker) == (4, 2)
    assert any("oversubscribe" in w for w in lay.warnings)


def test_layout_no_more_workers_than_tasks_and_they_share_the_memory():
    lay = plan_layout(node(16, 16 * GiB), tasks=3)
    assert lay.workers == 3
    assert lay.memory_per_worker == usable(16 * GiB) // 3 - WORKER_OVERHEAD
    assert plan_layout(node(16, 16 * GiB), max_workers=8, tasks=5).workers == 5
    assert plan_layout(node(16, 16 * GiB), tasks=0).workers == 1


def test_layout_memory_per_worker_lowers_the_worker_count():
    lay = plan_layout(node(16, 16 * GiB), memory_per_worker=4 * GiB)
    expected = usable(16 * GiB) // (4 * GiB + WORKER_OVERHEAD)
    assert lay.workers == expected == 3
    assert lay.memory_per_worker == 4 * GiB
    assert any("holds 3 workers" in w for w in lay.warnings)


def test_layout_memory_per_worker_that_fits_no_worker_is_refused():
    with pytest.raises(ResourceError, match=r"memory_limit_per_worker=8\.00 GiB fits no worker: .*usable of 8\.00 GiB \(test"):
        plan_layout(node(8, 8 * GiB), memory_per_worker=8 * GiB)


def test_layout_too_little_memory_for_any_worker_is_refused():
    with pytest.raises(ResourceError, match="minimum of 128.00 MiB per worker fits no worker"):
        plan_layout(node(8, 300 * MiB))


def test_layout_small_memory_shrinks_the_default_worker_count():
    lay = plan_layout(node(8, 1 * GiB))
    fit = usable(1 * GiB) // (MIN_WORKER_MEMORY + WORKER_OVERHEAD)
    assert lay.workers == fit == 2
    assert lay.memory_per_worker >= MIN_WORKER_MEMORY
    assert lay.warnings


def test_layout_mpi_threads_are_the_ranks_share_of_the_node():
    # ranks bound by the launcher: each sees only its own cores
    assert plan_layout(node(cores=4, node_cores=16), ranks_on_node=4).threads_per_worker == 4
    # unbound ranks: each sees the whole node, the node is shared
    assert plan_layout(node(cores=16, node_cores=16), ranks_on_node=3).threads_per_worker == 5
    # more ranks than cores: one thread each, with a warning
    lay = plan_layout(node(cores=2, node_cores=2), ranks_on_node=3)
    assert lay.threads_per_worker == 1 and any("oversubscribe" in w for w in lay.warnings)


def test_layout_mpi_ranks_share_the_node_memory():
    lay = plan_layout(node(cores=16, memory=20 * GiB, node_cores=16), ranks_on_node=4)
    assert lay.workers == 4
    assert lay.memory_per_worker == usable(20 * GiB) // 4 - WORKER_OVERHEAD


def test_layout_mpi_ranks_that_do_not_fit_are_refused():
    with pytest.raises(ResourceError, match=r"4 worker ranks on this node × 4\.00 GiB .* use at most 2 ranks per node"):
        plan_layout(node(cores=16, memory=10 * GiB, node_cores=16), ranks_on_node=4, memory_per_worker=4 * GiB)


def test_layout_describe_is_one_line():
    lay = plan_layout(node(4, 8 * GiB))
    lay.scratch = "/scratch/x"
    text = lay.describe()
    assert "\n" not in text
    assert re.match(r"4 workers × 1 thread, [0-9.]+ GiB each, scratch /scratch/x \(of 4 cores \[test\], 8\.00 GiB \[test\]\)", text)


def test_cli_refuses_a_memory_limit_that_fits_no_worker(tmp_path, trimer):
    """The refusal reaches the user as one line and exit code 2."""
    inp = many_body_input(trimer)
    path = tmp_path / "trimer.json"
    text = inp.serialize("json")
    path.write_text(text if isinstance(text, str) else text.decode())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, REPO]))
    cp = subprocess.run(
        [sys.executable, "-m", "qcmb_hpc", str(path), "--mode", "multiprocessing", "--memory-per-worker", "64TiB",
         "--import", "qcmb_hpc.testing.engines", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert cp.returncode == 2, cp.stderr
    lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert any("fits no worker" in ln for ln in lines), cp.stderr
    assert "Traceback" not in cp.stderr
    assert not (tmp_path / "trimer.result.json").exists()


# ------------------------------------------------------------------------------------------------
# scratch: one directory per worker, under the configured root, removed at the end unless kept
# ------------------------------------------------------------------------------------------------


def test_scratch_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_TMPDIR", str(tmp_path / "slurm"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    assert scratch_root(str(tmp_path / "mine")) == str(tmp_path / "mine")
    assert scratch_root(None) == str(tmp_path / "slurm")
    monkeypatch.delenv("SLURM_TMPDIR")
    assert scratch_root(None) == str(tmp_path / "tmp")
    monkeypatch.delenv("TMPDIR")
    import tempfile

    assert scratch_root(None) == tempfile.gettempdir()


def _probe_input(n=4):
    return many_body_input(
        water_cluster(n), program="qcmb_probe", bsse_type=["cp", "nocp"], driver="gradient",
        protocols={"cluster_results": "all"},
    )


def _scratch_by_worker(res):
    """scratch directory → worker ids (from the directory name) and child pids that used it."""
    out = {}
    for atres in res.cluster_results.values():
        probe = atres.extras["probe"]
        assert probe["scratch_writable"], probe
        d = probe["scratch_directory"]
        wid = re.search(r"-w(\d+)-", os.path.basename(d)).group(1)
        entry = out.setdefault(d, {"workers": set(), "pids": set()})
        entry["workers"].add(wid)
        entry["pids"].add(probe["pid"])
    return out


@pytest.mark.parametrize("keep", [False, True])
def test_scratch_per_worker_in_multiprocessing(tmp_path, monkeypatch, keep):
    root = tmp_path / "scratch"
    monkeypatch.setenv("SLURM_TMPDIR", str(tmp_path / "not-this-one"))  # the configured root wins
    inp = _probe_input()
    cfg = dict(report_in_extras=True, mode="multiprocessing", max_workers=2, scratch_directory=str(root), keep_scratch=keep,
               imports=["probe_engine"], progress_reporting=False)
    ref = reference(inp)
    # both workers start a fragment before any computes (tests/probe_engine.py), so both take part
    monkeypatch.setenv("PROBE_RENDEZVOUS", f"{tmp_path / 'rendezvous'}:2")
    res = ParallelManyBodyComputer(inp, parallel_config=cfg).compute()
    assert_same_result(ref, res, exact=True)
    rep = res.extras["qcmb_hpc"]
    assert rep["mode"] == "multiprocessing" and rep["workers"] == 2
    used = _scratch_by_worker(res)
    # one directory per worker, each used by that worker only, all under the configured root
    assert len(used) == 2, used
    assert all(os.path.dirname(d) == str(root) for d in used)
    workers = [next(iter(v["workers"])) for v in used.values()]
    assert all(len(v["workers"]) == 1 for v in used.values()) and len(set(workers)) == 2
    pids = [v["pids"] for v in used.values()]
    assert not (pids[0] & pids[1]), "two workers' engines ran in the same process"
    assert not os.path.exists(tmp_path / "not-this-one")
    if keep:
        assert all(os.path.isdir(d) for d in used)
    else:
        assert not any(os.path.exists(d) for d in used)
        assert os.listdir(root) == []


def test_scratch_defaults_to_slurm_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_TMPDIR", str(tmp_path / "job-tmp"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "job-tmp")
    inp = _probe_input(3)
    cfg = dict(mode="multiprocessing", max_workers=2, imports=["probe_engine"], progress_reporting=False)
    res = ParallelManyBodyComputer(inp, parallel_config=cfg).compute()
    used = _scratch_by_worker(res)
    assert used and all(os.path.dirname(d) == str(tmp_path / "job-tmp") for d in used)
    assert os.listdir(tmp_path / "job-tmp") == []
