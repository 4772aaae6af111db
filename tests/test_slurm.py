"""Every job script in ``slurm/``, submitted with ``sbatch`` to a real single-node Slurm that this
session starts (``tests/slurm_cluster.py``) and always stops, pass or fail. Each job's written result
is compared with sequential ``qcmanybody.v2.ManyBodyComputer`` on the same input, computed here.

Jobs are waited for by polling ``scontrol show job`` against a deadline. The resubmitting script
runs into a real time limit (one minute; Slurm's warning signal comes on its 30-second timer), stops,
requeues itself, resumes and completes — and the journal and the engine's own execution records
show nothing that had finished ran again. It also meets the time limit itself (Slurm's SIGTERM
while a fragment still runs: after the warning, with a grace period longer than what is left, and
with no warning at all) and a ``scancel`` during the grace period (not requeued); a worker rank
killed under ``srun`` ends the MPI job in seconds (``--kill-on-bad-exit``) and a resubmission
resumes; an MPI run whose ranks were all killed is requeued and starts again (MPICH's leftover
shared memory removed). The jobs that sit through a time limit are submitted before the first
test and checked at the end, so the rest of the suite runs meanwhile.

What the scripts' headers carry that only a site knows (partition, node and task counts, memory,
time) is given on the ``sbatch`` command line, as a user would; the variables of the editable header
(ACTIVATE, INPUT, QCMB_ARGS, LAUNCHER, …) come through the environment, which ``sbatch`` exports.

Run: ``python -m pytest -m slurm tests/test_slurm.py`` (as root, Debian ``slurmctld slurmd``
installed; ``nwchem`` for one test). Missing Slurm fails every test with the install command.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import sys
import time

import pytest

from conftest import CLUSTER_CPUS, HERE, PARTITION, REPO, assert_same_result, load_report, reference
from qcmb_hpc.plan import RunSpec, build_atomic_input, make_plan
from qcmb_hpc.resources import MEMORY_SAFETY, WORKER_OVERHEAD
from qcmb_hpc.testing.engines import fragment_key
from qcmb_hpc.testing.inputs import many_body_input, water_cluster
from slurm_cluster import SlurmCluster, mpich_segments

import probe_engine  # noqa: F401  (qcmb_probe, for the reference computed here)

pytestmark = pytest.mark.slurm

SCRIPTS = os.path.join(REPO, "slurm")
VENV_BIN = os.path.dirname(sys.executable)
GiB, MiB = 1024**3, 1024**2
JOB_DEADLINE = 240  # seconds any one job may take before the test gives up on it
#: a job whose rank died must be gone this soon (srun --kill-on-bad-exit: the step is signalled at
#: once, and killed KillWait = 10 s later); without the flag it runs into its 5-minute limit
DEAD_RANK_ENDS_WITHIN = 60


# ------------------------------------------------------------------------------------------------
# the cluster (the session's: the ``slurm`` fixture in conftest.py)
# ------------------------------------------------------------------------------------------------


def job_env(cluster: SlurmCluster, workdir, **header: str):
    """The submission environment: this checkout and the venv, the scripts' header variables."""
    env = cluster.env()
    for k in [k for k in env if k.startswith("QCMB_")]:
        del env[k]
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join([HERE, REPO])
    activate = os.path.join(VENV_BIN, "activate")
    env["ACTIVATE"] = activate if os.path.exists(activate) else ""
    env["MODULES"] = ""
    tmp = os.path.join(str(workdir), "node-tmp")  # the node's $TMPDIR: workers' scratch goes here
    os.makedirs(tmp, exist_ok=True)
    env["TMPDIR"] = tmp
    env.update(header)
    return env


def submit(cluster, script, workdir, *options, **header):
    env = job_env(cluster, workdir, **header)
    return cluster.sbatch(os.path.join(SCRIPTS, script), f"--partition={PARTITION}", *options, cwd=str(workdir), env=env)


def logs(workdir) -> str:
    out = []
    for name in sorted(os.listdir(workdir)):
        if name.endswith(".out"):
            with open(os.path.join(workdir, name), errors="replace") as fh:
                out.append(f"----- {name}\n{fh.read()}")
    return "\n".join(out)


def wait_ok(cluster, job, workdir, timeout=JOB_DEADLINE):
    """Wait for the job (every array task) and require COMPLETED with exit code 0."""
    try:
        records = cluster.wait(job, timeout)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{logs(workdir)}\n{cluster.logs()}", pytrace=False)
    bad = [r for r in records if r.get("JobState") != "COMPLETED" or r.get("ExitCode") != "0:0"]
    assert not bad, f"job {job}: " + ", ".join(f"{r.get('JobId')} {r.get('JobState')} exit {r.get('ExitCode')}" for r in bad) + "\n" + logs(workdir)
    return records


def write_input(path, inp):
    text = inp.serialize("json")
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text if isinstance(text, str) else text.decode())


def load_result(path):
    from qcmanybody.models.v2 import ManyBodyResult

    with open(path) as fh:
        return ManyBodyResult(**json.load(fh))


def usable_each(memory, workers):
    return int(memory * MEMORY_SAFETY) // workers - WORKER_OVERHEAD


def probe_input(n=4, **kw):
    kw.setdefault("bsse_type", ["cp", "nocp"])
    kw.setdefault("driver", "gradient")
    return many_body_input(water_cluster(n), program="qcmb_probe", protocols={"cluster_results": "all"}, **kw)


def rendezvous(workdir, n):
    """Hold every fragment until n workers have started one (see tests/probe_engine.py): then
    "every worker took part" is not a race with a worker that starts late."""
    return {"PROBE_RENDEZVOUS": f"{os.path.join(str(workdir), 'rendezvous')}:{n}"}


def probes(res):
    return [a.extras["probe"] for a in res.cluster_results.values()]


def scratch_worker_ids(res):
    """scratch directory → the worker id in its name; every directory belongs to one worker."""
    out = {}
    for p in probes(res):
        m = re.search(r"-w(\d+)-", os.path.basename(p["scratch_directory"]))
        assert m, p["scratch_directory"]
        out.setdefault(p["scratch_directory"], set()).add(int(m.group(1)))
    assert all(len(v) == 1 for v in out.values()), out
    return {d: next(iter(w)) for d, w in out.items()}


def check_scratch(res, tmpdir):
    """Per-worker scratch under the node's $TMPDIR, one per worker, written to, gone at the end."""
    by_dir = scratch_worker_ids(res)
    assert len(set(by_dir.values())) == len(by_dir), f"two workers shared a scratch directory: {by_dir}"
    for d in by_dir:
        assert os.path.dirname(d) == tmpdir, f"scratch {d} not under $TMPDIR {tmpdir}"
        assert not os.path.exists(d), f"scratch {d} was not removed"
    assert all(p["scratch_writable"] for p in probes(res))
    return by_dir


def wait_for_journal(cluster, job, journal, count, workdir, timeout=120):
    """Until the job's checkpoint journal holds ``count`` records (the job must stay alive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(journal) and len(open(journal).read().splitlines()) - 1 >= count:
            return
        state = cluster.job_info(job)
        assert state and state[0].get("JobState") in ("PENDING", "CONFIGURING", "RUNNING"), f"{state}\n{logs(workdir)}"
        time.sleep(0.1)
    pytest.fail(f"job {job} journaled fewer than {count} fragments in {timeout} s\n{logs(workdir)}", pytrace=False)


def wait_for_log(workdir, text, timeout=60):
    deadline = time.monotonic() + timeout
    while text not in logs(workdir):
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} did not appear in the job's log in {timeout} s\n{logs(workdir)}", pytrace=False)
        time.sleep(0.1)


def labels_by_key(inp):
    """fragment key (the file names the sleep and fault engines write) → the fragment's label."""
    plan = make_plan(inp)
    spec = RunSpec(molecule=plan.core.molecule, specifications=plan.specifications)
    return {fragment_key(build_atomic_input(spec, t.label)[1]): t.label for t in plan.tasks}


def job_pids(job, rank=None):
    """pids of the Python processes ``srun`` started for ``job`` (MPI rank ``rank``, if given),
    found by their environment; each rank's own children (its fragment runner) are left out."""
    out = []
    want = {f"SLURM_JOB_ID={job}".encode()} | ({f"SLURM_PROCID={rank}".encode()} if rank is not None else set())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                if not fh.read().startswith("python"):
                    continue
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{ppid}/comm") as fh:
                if fh.read().strip() != "slurmstepd":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = set(fh.read().split(b"\0"))
        except (OSError, ValueError, IndexError):
            continue
        if want <= env:
            out.append(int(entry))
    return out


# ------------------------------------------------------------------------------------------------
# the scripts
# ------------------------------------------------------------------------------------------------


def test_cluster_is_up(slurm):
    """The harness' own Slurm: the node is idle and takes the declared CPUs (more than the machine's)."""
    info = slurm.run("scontrol", "show", "node", slurm.node).stdout
    assert f"CPUTot={CLUSTER_CPUS}" in info and "State=IDLE" in info, info
    assert slurm.run("srun", "--mpi=list", check=False).returncode == 0


def test_single_node_multiprocessing(slurm, tmp_path):
    workers = min(2, len(os.sched_getaffinity(0)))  # --cpus-per-task=2, on a machine of this many cores
    inp = probe_input()
    write_input(tmp_path / "water4.json", inp)
    job = submit(slurm, "single_node.sbatch", tmp_path, "--cpus-per-task=2", "--mem=2G", "--time=5",
                 INPUT="water4.json", QCMB_ARGS="--import probe_engine", **rendezvous(tmp_path, workers))
    ref = reference(inp)
    wait_ok(slurm, job, tmp_path)
    res = load_result(tmp_path / "water4.result.json")
    assert_same_result(ref, res, exact=True, check_shape=False)
    rep = load_report(tmp_path / "water4.result.json")  # --cpus-per-task=2, on a machine of this many cores
    assert rep["mode"] == "multiprocessing" and rep["workers"] == workers, rep
    # --mem=2G reached qcengine through SLURM_MEM_PER_NODE, less the safety margin, shared by the workers
    assert rep["layout"]["memory_per_worker"] == usable_each(2048 * MiB, workers)
    assert "[SLURM_MEM_PER_NODE]" in logs(tmp_path)
    for p in probes(res):
        assert p["env"]["SLURM_JOB_ID"] == job
        assert p["ncores"] == 1 and p["env"]["OMP_NUM_THREADS"] == "1"
        assert p["memory"] == round(usable_each(2048 * MiB, workers) / GiB, 3)
    assert len(check_scratch(res, str(tmp_path / "node-tmp"))) == workers
    assert os.path.exists(tmp_path / "water4.checkpoint.jsonl")  # kept next to the output: resumable


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_mpi(slurm, tmp_path, launcher):
    inp = probe_input()
    write_input(tmp_path / "water4.json", inp)
    job = submit(slurm, "mpi.sbatch", tmp_path, "--nodes=1", "--ntasks-per-node=3", "--cpus-per-task=1",
                 "--mem-per-cpu=1G", "--time=5", INPUT="water4.json", QCMB_ARGS="--import probe_engine", LAUNCHER=launcher,
                 **rendezvous(tmp_path, 2))
    ref = reference(inp)
    wait_ok(slurm, job, tmp_path)
    text = logs(tmp_path)
    res = load_result(tmp_path / "water4.result.json")
    assert_same_result(ref, res, exact=True, check_shape=False)
    rep = load_report(tmp_path / "water4.result.json")
    # a world of 3 ranks: rank 0 coordinates, 2 worker ranks, both did work
    assert rep["mode"] == "mpi" and rep["workers"] == 2, rep
    assert "2 worker ranks of 3" in text, text
    assert sorted(rep["utilisation"]) == ["0", "1"], rep["utilisation"]
    by_dir = check_scratch(res, str(tmp_path / "node-tmp"))
    assert sorted(set(by_dir.values())) == [0, 1]
    # ranks share the node's memory: SLURM_MEM_PER_CPU × 3 CPUs, split between the 2 worker ranks
    for p in probes(res):
        assert p["env"]["SLURM_JOB_ID"] == job
        assert p["memory"] == round(usable_each(3 * 1024 * MiB, 2) / GiB, 3), p
        assert p["env"]["PMI_RANK"] is None and p["env"]["PMI_FD"] is None  # the engine saw no MPI launcher
    if launcher == "srun":  # srun starts the ranks itself: each fragment's engine ran under rank 1 or 2
        assert sorted({p["env"]["SLURM_PROCID"] for p in probes(res)}) == ["1", "2"]
    else:
        assert f"mpiexec is {os.path.join(VENV_BIN, 'mpiexec')}" in text
    # MPI was qcmb_hpc's own choice (no --mode in the script, none in the job's environment): the
    # CLI's adaptive mode saw the launcher (srun's or Hydra's variables) and ran MPI
    with open(os.path.join(SCRIPTS, "mpi.sbatch")) as fh:
        launches = [ln for ln in fh.read().splitlines() if "python -m qcmb_hpc" in ln and not ln.lstrip().startswith("#")]
    assert len(launches) == 2 and not any("--mode" in ln for ln in launches), launches
    assert not any(k.startswith("QCMB_") for k in job_env(slurm, tmp_path)), "the job would inherit a QCMB_* setting"


def test_mpi_dead_rank_ends_the_job_and_a_resubmission_resumes(slurm, tmp_path):
    """A worker rank SIGKILLed under ``srun --mpi=pmi2``: ``--kill-on-bad-exit=1`` ends the whole
    step (rank 0 would otherwise wait for the dead rank until the time limit); the journal keeps
    what finished, and the same script submitted again resumes and completes, with nothing that
    had been journaled computed again."""
    records = tmp_path / "executions"
    inp = sleep_input(records, base=0.5)  # 29 fragments of 0.5 s on 2 worker ranks: ~8 s of work
    write_input(tmp_path / "water4.json", inp)
    options = ("--nodes=1", "--ntasks-per-node=3", "--cpus-per-task=1", "--mem-per-cpu=1G", "--time=5")
    header = dict(INPUT="water4.json", LAUNCHER="srun", QCMB_ARGS="--import qcmb_hpc.testing.engines --no-progress")
    job = submit(slurm, "mpi.sbatch", tmp_path, *options, **header)
    ref = reference(same_input_on_qcmb_test())
    n = ref.properties.calcinfo_nmbe
    journal = tmp_path / "water4.checkpoint.jsonl"
    wait_for_journal(slurm, job, journal, 4, tmp_path)
    victims = job_pids(job, rank=2)
    assert len(victims) == 1, f"rank 2 of job {job}: {victims}\n{logs(tmp_path)}"
    os.kill(victims[0], signal.SIGKILL)
    t_kill = time.monotonic()
    try:
        (rec,) = slurm.wait(job, DEAD_RANK_ENDS_WITHIN)
    except TimeoutError as exc:
        slurm.run("scancel", job, check=False)
        pytest.fail(f"a dead rank did not end the job (srun without --kill-on-bad-exit=1?): {exc}\n{logs(tmp_path)}", pytrace=False)
    ended = time.monotonic() - t_kill
    text = logs(tmp_path)
    assert rec["JobState"] == "FAILED" and rec["ExitCode"] != "0:0", f"{rec}\n{text}"  # not TIMEOUT, not COMPLETED
    assert "task 2: Killed" in text, text
    assert not job_pids(job), "ranks of the ended job are still running"
    done = journal_labels(journal)  # whole records only, each fragment once
    assert 4 <= len(done) < n and len(set(done)) == len(done), done
    print(f"\ndead rank: job {job} ended {ended:.1f} s after the kill with {len(done)} of {n} fragments journaled")

    job2 = submit(slurm, "mpi.sbatch", tmp_path, *options, **header)
    wait_ok(slurm, job2, tmp_path)
    res = load_result(tmp_path / "water4.result.json")
    assert_same_result(ref, res, exact=True, check_shape=False)
    rep = load_report(tmp_path / "water4.result.json")
    assert rep["mode"] == "mpi" and rep["restored"] == len(done) and rep["computed"] == n - len(done), rep
    label_of = labels_by_key(inp)
    labels = journal_labels(journal)
    assert len(labels) == n and set(labels) == set(label_of.values())
    runs = collections.Counter(label_of[key] for key in executions(records).elements())
    again = [label for label in done if runs[label] != 1]
    assert not again, f"journaled before the kill, yet computed again: {again}"


def test_mpi_refuses_ranks_the_memory_cannot_hold(slurm, tmp_path):
    """Two worker ranks × 1.5 GiB do not fit in 85% of 3 GiB: one line, exit code 2, no result."""
    write_input(tmp_path / "water3.json", many_body_input(water_cluster(3)))
    job = submit(slurm, "mpi.sbatch", tmp_path, "--nodes=1", "--ntasks-per-node=3", "--cpus-per-task=1",
                 "--mem-per-cpu=1G", "--time=5", INPUT="water3.json", LAUNCHER="srun",
                 QCMB_ARGS="--import qcmb_hpc.testing.engines --memory-per-worker 1.5GiB")
    try:
        (rec,) = slurm.wait(job, JOB_DEADLINE)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{logs(tmp_path)}", pytrace=False)
    text = logs(tmp_path)
    assert (rec["JobState"], rec["ExitCode"]) == ("FAILED", "2:0"), text
    errors = [ln for ln in text.splitlines() if ln.startswith("qcmb_hpc: error:")]
    assert len(errors) == 1 and "2 worker ranks on this node × 1.50 GiB" in errors[0] and "at most 1 ranks" in errors[0], text
    assert "Traceback" not in text, text
    assert not (tmp_path / "water3.result.json").exists()


def test_hybrid_ranks_times_threads(slurm, tmp_path):
    inp = probe_input()
    write_input(tmp_path / "water4.json", inp)
    job = submit(slurm, "hybrid.sbatch", tmp_path, "--nodes=1", "--ntasks-per-node=3", "--cpus-per-task=2",
                 "--mem=3G", "--time=5", INPUT="water4.json", QCMB_ARGS="--import probe_engine", **rendezvous(tmp_path, 2))
    ref = reference(inp)
    wait_ok(slurm, job, tmp_path)
    res = load_result(tmp_path / "water4.result.json")
    assert_same_result(ref, res, exact=True, check_shape=False)
    rep = load_report(tmp_path / "water4.result.json")
    assert rep["mode"] == "mpi" and rep["workers"] == 2 and rep["layout"]["threads_per_worker"] == 2, rep
    for p in probes(res):  # --cpus-per-task=2 → qcengine ncores and the thread variables of every engine
        assert p["ncores"] == 2, p
        assert (p["env"]["OMP_NUM_THREADS"], p["env"]["MKL_NUM_THREADS"], p["env"]["OPENBLAS_NUM_THREADS"]) == ("2", "2", "2")
    assert sorted({p["env"]["SLURM_PROCID"] for p in probes(res)}) == ["1", "2"]


def test_array_one_input_per_task(slurm, tmp_path):
    inputs = {
        "a/trimer-cp.json": many_body_input(water_cluster(3), bsse_type=["cp"], driver="energy", return_total_data=True),
        "b/trimer-nocp-grad.json": many_body_input(water_cluster(3), bsse_type=["nocp"], driver="gradient"),
        "c/tetramer-vmfc.json": many_body_input(water_cluster(4), method="mp2", bsse_type=["vmfc"], driver="energy"),
    }
    for name, inp in inputs.items():
        write_input(tmp_path / name, inp)
    (tmp_path / "inputs.txt").write_text("\n".join(inputs) + "\n")
    job = submit(slurm, "array.sbatch", tmp_path, "--array=1-3", "--cpus-per-task=1", "--mem=1G", "--time=5",
                 QCMB_ARGS="--import qcmb_hpc.testing.engines")
    refs = {name: reference(inp) for name, inp in inputs.items()}
    records = wait_ok(slurm, job, tmp_path)
    assert sorted(r.get("ArrayTaskId") for r in records) == ["1", "2", "3"], records
    for i, name in enumerate(inputs, start=1):
        res = load_result(tmp_path / name.replace(".json", ".result.json"))
        assert_same_result(refs[name], res, exact=True, check_shape=False)
        log = (tmp_path / f"qcmb-array-{job}_{i}.out").read_text()
        assert f"input {name}" in log, log


@pytest.mark.nwchem
def test_mpi_nwchem_from_srun_ranks(slurm, tmp_path):
    """An Open MPI program (NWChem) started by a worker rank that srun (MPICH, PMI2) launched."""
    assert shutil.which("nwchem"), "NWChem is not installed: apt-get install -y nwchem"
    inp = many_body_input(water_cluster(3), program="nwchem", method="scf", basis="sto-3g", bsse_type=["nocp"], max_nbody=2)
    write_input(tmp_path / "water3.json", inp)
    job = submit(slurm, "mpi.sbatch", tmp_path, "--nodes=1", "--ntasks-per-node=3", "--cpus-per-task=1",
                 "--mem-per-cpu=1G", "--time=5", INPUT="water3.json", QCMB_ARGS="--max-retries 0", LAUNCHER="srun")
    ref = reference(inp)
    try:
        slurm.wait(job, JOB_DEADLINE)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{logs(tmp_path)}", pytrace=False)
    text = logs(tmp_path)
    if "SLURM's PMI" in text or "PMIx support" in text:
        pytest.fail(
            "NWChem (an Open MPI program) started from an srun rank believed srun had launched it: Open MPI's "
            "schizo/slurm takes SLURM_NODELIST + SLURM_STEP_ID as 'direct launch' and then needs PMI, which the "
            "engine's clean environment removed. qcmb_hpc.engine must also remove SLURM_STEP_ID/SLURM_STEPID "
            "(MPI_ENV_PREFIXES += ('SLURM_STEP',)) for the QC program.\n" + text[-3000:],
            pytrace=False,
        )
    wait_ok(slurm, job, tmp_path)
    res = load_result(tmp_path / "water3.result.json")
    assert_same_result(ref, res, atol=1e-10, check_shape=False)
    rep = load_report(tmp_path / "water3.result.json")
    assert rep["mode"] == "mpi" and rep["workers"] == 2


# ------------------------------------------------------------------------------------------------
# the self-resubmitting job
# ------------------------------------------------------------------------------------------------


def sleep_input(record_dir, base, n=4):
    """``qcmb_sleep`` (``qcmb_test`` numbers after ``base`` seconds) leaving one file per execution."""
    os.makedirs(record_dir, exist_ok=True)
    return many_body_input(
        water_cluster(n), program="qcmb_sleep", bsse_type=["cp", "nocp"], return_total_data=True,
        keywords={"sleep": {"base": base, "exponent": 0}, "record_dir": str(record_dir)},
    )


def same_input_on_qcmb_test(n=4):
    """The reference: qcmb_sleep computes exactly qcmb_test's numbers (it only sleeps first)."""
    return many_body_input(water_cluster(n), program="qcmb_test", bsse_type=["cp", "nocp"], return_total_data=True)


def journal_labels(path):
    with open(path) as fh:
        lines = fh.read().split("\n")
    assert lines[-1] == "", "the journal ends in a torn record"
    return [json.loads(ln)["label"] for ln in lines[1:-1]]


def executions(record_dir):
    return collections.Counter(name.split(".")[0] for name in os.listdir(record_dir))


def assert_nothing_finished_ran_again(inp, workdir, record_dir, text):
    """Each fragment's executions (the engine's records: fragment key, start time) against the run
    that journaled it (the journal's order, and each stopped run's "K of N fragments finished"): no
    fragment may start again in a run after the one that finished it."""
    plan = make_plan(inp)
    spec = RunSpec(molecule=plan.core.molecule, specifications=plan.specifications)
    label_of = {fragment_key(build_atomic_input(spec, t.label)[1]): t.label for t in plan.tasks}
    runs = re.split(r"(?=qcmb job \S+ run \d+ on )", text)[1:]
    starts = [time.mktime(time.strptime(re.search(r"run \d+ on \S+ at (\S+ \S+):", r).group(1), "%Y-%m-%d %H:%M:%S")) for r in runs]
    done_by_run, done = [], 0
    for r in runs[:-1]:  # a run killed before qcmb_hpc listened (exit 138) finished nothing new
        m = re.search(r"stopped by SIGUSR1 with (\d+) of", r)
        done = int(m.group(1)) if m else done
        done_by_run.append(done)
    assert starts and "calculation complete" in runs[-1], text
    finished_in = {}
    for pos, label in enumerate(journal_labels(os.path.join(workdir, "water4.checkpoint.jsonl"))):
        finished_in[label] = next((r for r, k in enumerate(done_by_run) if pos < k), len(done_by_run))
    ran = collections.defaultdict(list)
    for name in os.listdir(record_dir):
        key, _pid, ns = name.split(".")
        ran[label_of[key]].append(int(ns) / 1e9)
    assert set(ran) == set(finished_in) == {t.label for t in plan.tasks}
    for label, times in ran.items():
        r = finished_in[label]
        if r + 1 < len(starts):
            late = [t for t in times if t >= starts[r + 1]]
            assert not late, f"{label} finished in run {r + 1} but ran again in a later run"
    return ran


def one_hang_input(workdir, n=4):
    """``qcmb_fault`` (``qcmb_test`` numbers) whose first attempt at one fragment hangs for an hour
    — a fragment longer than what is left of the time limit — and every other attempt is clean:
    the other fragments' first attempt files are taken beforehand. Returns the input, the fault
    directory (one file per attempt) and the hanging fragment's label."""
    fault_dir = os.path.join(str(workdir), "faults")
    os.makedirs(fault_dir, exist_ok=True)
    inp = many_body_input(
        water_cluster(n), program="qcmb_fault", bsse_type=["cp", "nocp"], return_total_data=True,
        keywords={"fault_dir": fault_dir, "p": 1.0, "kinds": ["hang"], "faulty_attempts": 1, "hang_seconds": 3600},
    )
    label_of = labels_by_key(inp)
    keys = sorted(label_of)
    hung = keys[len(keys) // 2]
    for key in keys:
        if key != hung:
            with open(os.path.join(fault_dir, f"{key}.1"), "w") as fh:
                fh.write("seeded")
    return inp, fault_dir, label_of[hung]


def attempts(inp, fault_dir):
    """fragment label → what each real attempt did ("hang", "ok"), in order."""
    label_of = labels_by_key(inp)
    out = collections.defaultdict(list)
    for name in sorted(os.listdir(fault_dir), key=lambda f: (f.split(".")[0], int(f.split(".")[1]))):
        with open(os.path.join(fault_dir, name)) as fh:
            kind = fh.read()
        if kind != "seeded":
            out[label_of[name.split(".")[0]]].append(kind)
    return out


def assert_resumed_after_the_hang(inp, fault_dir, hung, workdir, ref):
    """The last run restored everything but the fragment that hung, computed that one, and the
    result is QCManyBody's; every other fragment ran exactly once, in the first run."""
    n = ref.properties.calcinfo_nmbe
    res = load_result(os.path.join(str(workdir), "water4.result.json"))
    assert_same_result(ref, res, exact=True, check_shape=False)
    rep = load_report(os.path.join(str(workdir), "water4.result.json"))
    assert (rep["restored"], rep["computed"]) == (n - 1, 1), rep
    labels = journal_labels(os.path.join(str(workdir), "water4.checkpoint.jsonl"))
    assert len(labels) == n and len(set(labels)) == n and labels[-1] == hung, labels
    tries = attempts(inp, fault_dir)
    assert tries[hung] == ["hang", "ok"], tries[hung]
    assert len(tries) == n and all(t == ["ok"] for label, t in tries.items() if label != hung), tries


FIRST_RUN_HANG = '''"""qcmb_first_run_hang (written by tests/test_slurm.py): qcmb_test's numbers; in the
first run of a Slurm job (no SLURM_RESTART_COUNT, or 0) the fragment keywords["hang_key"] hangs
for an hour: a fragment longer than what is left of the time limit, however often it is started
in that run. Every execution leaves "<fragment key>.<run>.<ns>" in keywords["record_dir"]."""
import os
import time

import qcengine
from qcmb_hpc.testing.engines import TestHarness, fragment_key


class FirstRunHang(TestHarness):
    _defaults = {**TestHarness._defaults, "name": "qcmb_first_run_hang"}

    def compute(self, input_model, config):
        kw = input_model.specification.keywords
        key = fragment_key(input_model)
        run = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        open(os.path.join(kw["record_dir"], f"{key}.{run}.{time.time_ns()}"), "w").close()
        if run == 0 and key == kw["hang_key"]:
            time.sleep(3600)
        return super().compute(input_model, config)


if "qcmb_first_run_hang" not in qcengine.list_all_programs():
    qcengine.register_program(FirstRunHang())
'''


def first_run_hang_input(workdir, n=4):
    """An input on ``qcmb_first_run_hang`` (written into ``workdir``, which goes on the job's
    PYTHONPATH) hanging at the plan's middle fragment in a job's first run. Returns the input, the
    record directory and the hanging fragment's label."""
    records = os.path.join(str(workdir), "executions")
    os.makedirs(records, exist_ok=True)
    with open(os.path.join(str(workdir), "first_run_hang.py"), "w") as fh:
        fh.write(FIRST_RUN_HANG)

    def make(hang_key):
        return many_body_input(
            water_cluster(n), program="qcmb_first_run_hang", bsse_type=["cp", "nocp"], return_total_data=True,
            keywords={"record_dir": records, "hang_key": hang_key},
        )

    label_of = labels_by_key(make(""))  # (keywords do not enter a fragment's key)
    keys = sorted(label_of)
    hung = keys[len(keys) // 2]
    return make(hung), records, label_of[hung]


def runs_of(inp, records):
    """fragment label → the runs (SLURM_RESTART_COUNT) in which it was started, in order."""
    label_of = labels_by_key(inp)
    out = collections.defaultdict(list)
    for name in sorted(os.listdir(records), key=lambda f: int(f.split(".")[2])):
        key, run, _ns = name.split(".")
        out[label_of[key]].append(int(run))
    return out


TIME_LIMIT_TEST = "test_resubmit_survives_a_real_time_limit"
TIMEOUT_TEST = "test_resubmit_requeues_at_a_real_timeout"
#: --signal for the runs that meet the time limit with a fragment still running: the warning
#: (which comes 10–40 s into the one-minute run; the grace period of 600 s outlasts the rest of
#: the run), or none at all (@0: Slurm sends no warning; its SIGTERM is the first signal)
TIMEOUT_CASES = {"warned": "--signal=B:USR1@50", "unwarned": "--signal=B:USR1@0"}


def _wanted(request, name):
    return any(getattr(item, "originalname", item.name) == name for item in request.session.items)


@pytest.fixture(scope="module", autouse=True)
def background_jobs(request, slurm, tmp_path_factory):
    """The jobs that sit through a time limit are submitted before the first test of this module
    and checked by the last ones: they mostly sleep (through their time limits and requeues), so the
    other jobs run meanwhile."""
    jobs = {}
    if _wanted(request, TIME_LIMIT_TEST):
        # 29 fragments of 3 s on 2 workers: ~44 s of work after a few seconds of start-up; the limit is
        # one minute, and Slurm's USR1 (@50 s before it) comes on slurmctld's 30-second timer, 10–40 s
        # into every run: the first run is always cut short, and the chain takes 2–4 runs.
        workdir = tmp_path_factory.mktemp("time-limit")
        records = workdir / "executions"
        inp = sleep_input(records, base=3.0)
        write_input(workdir / "water4.json", inp)
        t0 = time.monotonic()
        job = submit(slurm, "resubmit.sbatch", workdir, "--cpus-per-task=2", "--mem=2G", "--time=1", "--signal=B:USR1@50",
                     INPUT="water4.json", QCMB_ARGS="--import qcmb_hpc.testing.engines --no-progress")
        jobs[TIME_LIMIT_TEST] = {"job": job, "workdir": workdir, "records": records, "t0": t0, "input": inp}
    if _wanted(request, TIMEOUT_TEST):
        # one fragment hangs: the other 28 are done in seconds, and the run meets its time limit
        # (60–90 s in: slurmctld's timer) waiting for that one; the requeued run computes it
        for case, signal_option in TIMEOUT_CASES.items():
            workdir = tmp_path_factory.mktemp(f"timeout-{case}")
            inp, records, hung = first_run_hang_input(workdir)
            write_input(workdir / "water4.json", inp)
            job = submit(slurm, "resubmit.sbatch", workdir, "--cpus-per-task=2", "--mem=2G", "--time=1", signal_option,
                         INPUT="water4.json", PYTHONPATH=os.pathsep.join([str(workdir), HERE, REPO]),
                         QCMB_ARGS="--import first_run_hang --no-progress --grace-period 600")
            jobs[(TIMEOUT_TEST, case)] = {"job": job, "workdir": workdir, "input": inp, "records": records,
                                          "hung": hung, "t0": time.monotonic()}
    yield jobs


def test_resubmit_stops_on_bad_input(slurm, tmp_path):
    """Exit code 2 (here: a memory request that fits no worker) ends the chain: no requeue."""
    write_input(tmp_path / "water3.json", many_body_input(water_cluster(3)))
    job = submit(slurm, "resubmit.sbatch", tmp_path, "--cpus-per-task=1", "--mem=1G", "--time=5",
                 INPUT="water3.json", QCMB_ARGS="--import qcmb_hpc.testing.engines --memory-per-worker 4GiB")
    try:
        (rec,) = slurm.wait(job, 120)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{logs(tmp_path)}", pytrace=False)
    text = logs(tmp_path)
    assert (rec["JobState"], rec["ExitCode"], rec["Restarts"]) == ("FAILED", "2:0", "0"), text
    assert "fits no worker" in text and "not requeueing (exit code 2" in text, text
    assert not (tmp_path / "water3.result.json").exists()


def submit_resubmit_under_srun(slurm, tmp_path):
    """resubmit.sbatch with RUN_WITH=srun (3 ranks) on the sleeping (H2O)4 input: (execution
    records, input, job id, the sequential reference, its fragment count, the journal path)."""
    records = tmp_path / "executions"
    inp = sleep_input(records, base=0.5)
    write_input(tmp_path / "water4.json", inp)
    job = submit(slurm, "resubmit.sbatch", tmp_path, "--ntasks=3", "--cpus-per-task=1", "--mem=3G", "--time=5",
                 INPUT="water4.json", RUN_WITH="srun", QCMB_ARGS="--import qcmb_hpc.testing.engines --no-progress")
    ref = reference(same_input_on_qcmb_test())
    return records, inp, job, ref, ref.properties.calcinfo_nmbe, tmp_path / "water4.checkpoint.jsonl"


@pytest.mark.timeout(300)
def test_resubmit_mpi_forwards_the_warning_through_srun(slurm, tmp_path):
    """RUN_WITH=srun: the warning (sent here with ``scancel --batch --signal=USR1``, the way Slurm
    sends it) goes through srun to rank 0; the MPI run stops, checkpoints, requeues and completes."""
    records, inp, job, ref, n, journal = submit_resubmit_under_srun(slurm, tmp_path)
    wait_for_journal(slurm, job, journal, 4, tmp_path)  # some fragments done, far from all: warn now
    slurm.run("scancel", "--batch", "--signal=USR1", job)
    (rec,) = wait_ok(slurm, job, tmp_path, timeout=200)
    text = logs(tmp_path)
    assert rec["Restarts"] == "1", text
    assert "mpi, 2 worker ranks of 3" in text and "requeueing job" in text, text
    res = load_result(tmp_path / "water4.result.json")
    assert_same_result(ref, res, exact=True, check_shape=False)
    rep = load_report(tmp_path / "water4.result.json")
    assert rep["mode"] == "mpi" and 0 < rep["restored"] < n and rep["restored"] + rep["computed"] == n, rep
    labels = journal_labels(journal)
    assert len(labels) == n and len(set(labels)) == n
    runs = executions(records)
    assert len(runs) == n and sum(runs.values()) <= n + 4, runs  # ≤ 2 cut per worker at the stop
    assert_nothing_finished_ran_again(inp, tmp_path, records, text)


@pytest.mark.timeout(300)
def test_resubmit_mpi_requeued_after_its_ranks_were_killed(slurm, tmp_path):
    """RUN_WITH=srun, every rank SIGKILLed (as at the end of a time limit's KillWait), then the job
    requeued: same job id, steps numbered from 0 again, so MPICH's shared-memory segment of the
    killed step is still in /dev/shm under the name the new step would use (its MPI_Init then fails
    or hangs). The requeued run removes it, and resumes."""
    records, inp, job, ref, n, journal = submit_resubmit_under_srun(slurm, tmp_path)
    wait_for_journal(slurm, job, journal, 4, tmp_path)
    ranks = job_pids(job)
    assert len(ranks) == 3, f"ranks of job {job}: {ranks}\n{logs(tmp_path)}"
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)
    try:
        (rec,) = slurm.wait(job, DEAD_RANK_ENDS_WITHIN)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{logs(tmp_path)}", pytrace=False)
    text = logs(tmp_path)
    assert (rec["JobState"], rec["Restarts"]) == ("FAILED", "0"), f"{rec}\n{text}"  # 137: not requeued by itself
    assert "not requeueing (exit code 137" in text, text
    done = journal_labels(journal)
    assert 4 <= len(done) < n, done
    assert mpich_segments([job], steps=1), "the killed ranks left no MPICH segment in /dev/shm (the premise)"
    slurm.run("scontrol", "requeue", job)
    (rec,) = wait_ok(slurm, job, tmp_path, timeout=120)
    text = logs(tmp_path)
    assert rec["Restarts"] == "1" and "calculation complete after 2 run(s)" in text, text
    res = load_result(tmp_path / "water4.result.json")
    assert_same_result(ref, res, exact=True, check_shape=False)
    rep = load_report(tmp_path / "water4.result.json")
    assert rep["mode"] == "mpi" and rep["restored"] == len(done) and rep["computed"] == n - len(done), rep
    label_of = labels_by_key(inp)
    runs = collections.Counter(label_of[key] for key in executions(records).elements())
    assert not [label for label in done if runs[label] != 1], runs


@pytest.mark.timeout(240)
def test_resubmit_cancelled_during_the_grace_period_is_not_requeued(slurm, tmp_path):
    """Warned (USR1), then cancelled while qcmb_hpc waits for a running fragment: the job stays
    cancelled — no requeue — with the journal intact; submitting it again resumes and completes."""
    inp, fault_dir, hung = one_hang_input(tmp_path)
    write_input(tmp_path / "water4.json", inp)
    header = dict(INPUT="water4.json", QCMB_ARGS="--import qcmb_hpc.testing.engines --no-progress --grace-period 600")
    job = submit(slurm, "resubmit.sbatch", tmp_path, "--cpus-per-task=2", "--mem=2G", "--time=5", **header)
    ref = reference(same_input_on_qcmb_test())
    n = ref.properties.calcinfo_nmbe
    journal = tmp_path / "water4.checkpoint.jsonl"
    wait_for_journal(slurm, job, journal, n - 1, tmp_path)  # all but the hanging fragment
    slurm.run("scancel", "--batch", "--signal=USR1", job)
    wait_for_log(tmp_path, "stop requested (SIGUSR1)")
    slurm.run("scancel", job)
    try:
        (rec,) = slurm.wait(job, 60)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{logs(tmp_path)}", pytrace=False)
    text = logs(tmp_path)
    assert (rec["JobState"], rec["Restarts"]) == ("CANCELLED", "0"), f"{rec}\n{text}"
    assert "requeueing job" not in text and "not requeueing" in text, text
    assert "qcmb_hpc exited with code 3 " in text, text  # stopped cleanly, journal flushed
    assert sorted(journal_labels(journal)) == sorted(set(labels_by_key(inp).values()) - {hung})

    job2 = submit(slurm, "resubmit.sbatch", tmp_path, "--cpus-per-task=2", "--mem=2G", "--time=5", **header)
    (rec2,) = wait_ok(slurm, job2, tmp_path)
    assert rec2["Restarts"] == "0", logs(tmp_path)
    assert_resumed_after_the_hang(inp, fault_dir, hung, tmp_path, ref)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(TIMEOUT_CASES))
def test_resubmit_requeues_at_a_real_timeout(slurm, background_jobs, case):
    """Slurm's own time limit ends a run while a fragment still runs — after the warning, during a
    grace period longer than what was left, or with no warning at all. The SIGTERM makes qcmb_hpc
    cut the fragment and flush its journal, the script requeues the job (it is the time limit,
    not a cancellation), and the next run computes only the fragment that was cut."""
    j = background_jobs[(TIMEOUT_TEST, case)]
    job, workdir = j["job"], j["workdir"]
    ref = reference(same_input_on_qcmb_test())
    n = ref.properties.calcinfo_nmbe
    (rec,) = wait_ok(slurm, job, workdir, timeout=240)
    elapsed = time.monotonic() - j["t0"]
    text = logs(workdir)
    runs = re.split(r"(?=qcmb job \S+ run \d+ on )", text)[1:]
    assert rec["Restarts"] == "1" and len(runs) == 2, text
    first, second = runs
    assert "DUE TO TIME LIMIT" in first, first  # Slurm's time limit, not the script, ended run 1
    if case == "warned":
        assert first.index("SIGUSR1 at") < first.index("running ones get 600 s") < first.index("DUE TO TIME LIMIT"), first
    else:
        # (qcmb_hpc may still say SIGUSR1: the script's own, its second stop signal at the limit)
        assert "qcmb job: SIGUSR1 at" not in first, f"Slurm sent a warning after all (--signal=B:USR1@0):\n{first}"
    assert "time limit reached" in first and first.count("requeueing job") == 1, first
    m = re.search(r"stopped by SIG(?:USR1|TERM) with (\d+) of (\d+) fragments finished", first)
    assert m and (int(m.group(1)), int(m.group(2))) == (n - 1, n), first  # qcmb_hpc stopped cleanly
    assert "qcmb_hpc exited with code 3 " in first, first
    assert "calculation complete after 2 run(s)" in second, second

    res = load_result(workdir / "water4.result.json")
    assert_same_result(ref, res, exact=True, check_shape=False)
    rep = load_report(workdir / "water4.result.json")
    assert (rep["restored"], rep["computed"]) == (n - 1, 1), rep
    labels = journal_labels(workdir / "water4.checkpoint.jsonl")
    assert len(labels) == n and len(set(labels)) == n and labels[-1] == j["hung"], labels
    runs = runs_of(j["input"], j["records"])
    assert len(runs) == n and all(r == [0] for label, r in runs.items() if label != j["hung"]), runs
    # the cut fragment ran again in run 2 only; in run 1 it may have been started twice: a worker
    # that Slurm's SIGTERM killed (with the fragment) can have its fragment handed out again in
    # the coordinator loop's pass that also sees the stop request
    hung_runs = runs[j["hung"]]
    assert hung_runs[-1] == 1 and hung_runs.count(1) == 1 and 1 <= hung_runs.count(0) <= 2, hung_runs
    print(f"\ntimeout ({case}): 2 runs in {elapsed:.0f} s; the cut fragment started {hung_runs.count(0)}× in run 1")


@pytest.mark.timeout(420)
def test_resubmit_survives_a_real_time_limit(slurm, background_jobs):
    time_limit_job = background_jobs[TIME_LIMIT_TEST]
    job, workdir, records = time_limit_job["job"], time_limit_job["workdir"], time_limit_job["records"]
    ref = reference(same_input_on_qcmb_test())
    (rec,) = wait_ok(slurm, job, workdir, timeout=360)
    elapsed = time.monotonic() - time_limit_job["t0"]
    text = logs(workdir)
    restarts = int(rec["Restarts"])
    assert restarts >= 1, text
    # every run but the last was warned, stopped with code 3 and requeued (the last may be warned too,
    # while it finishes: it then completes with 0)
    assert text.count("SIGUSR1 at") >= restarts and text.count("requeueing job") == restarts, text
    # (138: the warning came before qcmb_hpc listened — possible on a loaded machine — also requeued)
    assert len(re.findall(r"qcmb_hpc exited with code (?:3|138) ", text)) == restarts, text
    assert "calculation complete after" in text, text

    res = load_result(workdir / "water4.result.json")
    assert_same_result(ref, res, exact=True, check_shape=False)
    n = ref.properties.calcinfo_nmbe
    rep = load_report(workdir / "water4.result.json")
    assert rep["restored"] + rep["computed"] == n, rep
    assert 0 < rep["restored"] < n, rep  # the last run resumed real work, and still had work to do
    # nothing that had finished ran again: the journal holds every fragment once, and the engine
    # ran each fragment once, except at most one cut-off fragment per worker at each stop
    labels = journal_labels(workdir / "water4.checkpoint.jsonl")
    assert len(labels) == n and len(set(labels)) == n
    runs = executions(records)
    assert len(runs) == n, runs
    assert n <= sum(runs.values()) <= n + 2 * restarts, runs
    assert_nothing_finished_ran_again(time_limit_job["input"], workdir, records, text)
    print(f"\nresubmit: {restarts + 1} runs in {elapsed:.0f} s; {sum(runs.values()) - n} fragments cut at a stop")
