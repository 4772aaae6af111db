"""Killed and stopped jobs lose nothing: SIGKILL midway then rerun (multiprocessing and MPI),
SIGTERM/SIGUSR1/SIGINT (exit 3/3/130, resumable), and the journal's refusals."""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import assert_same_result, cli_env, load_report, reference
from qcmb_hpc.plan import RunSpec, build_atomic_input, make_plan
from qcmb_hpc.testing.engines import fragment_key
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

VENV_BIN = os.path.dirname(sys.executable)
MPIEXEC = os.path.join(VENV_BIN, "mpiexec")


def sleep_input(record_dir, base=0.25, n=4):
    return many_body_input(
        water_cluster(n),
        program="qcmb_sleep",
        keywords={"sleep": {"base": base, "exponent": 0}, "record_dir": str(record_dir)},
        bsse_type=["cp", "nocp"],
        return_total_data=True,
    )


def start(args, cwd, mpi_ranks=None, **env):
    cmd = [sys.executable, "-m", "qcmb_hpc", *args, "--import", "qcmb_hpc.testing.engines", "--no-progress"]
    if mpi_ranks:
        cmd = [MPIEXEC, "-n", str(mpi_ranks), *cmd]
    return subprocess.Popen(cmd, cwd=cwd, env=cli_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def journal_records(path):
    """Complete records in the journal (a torn last line is not counted)."""
    if not os.path.exists(path):
        return []
    data = open(path).read()
    lines = data.split("\n")[:-1]  # the last piece has no newline: torn or empty
    out = []
    for ln in lines[1:]:
        try:
            out.append(json.loads(ln)["label"])
        except ValueError:
            pass
    return out


def wait_for_records(path, count, proc, deadline=60):
    t0 = time.monotonic()
    while len(journal_records(path)) < count:
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.monotonic() - t0 < deadline, "no progress in the journal"
        time.sleep(0.05)


def executions(record_dir, inp):
    """How often each fragment (by label) actually ran."""
    plan = make_plan(inp)
    spec = RunSpec(molecule=plan.core.molecule, specifications=plan.specifications)
    by_key = {fragment_key(build_atomic_input(spec, t.label)[1]): t.label for t in plan.tasks}
    counts = collections.Counter()
    for name in os.listdir(record_dir):
        counts[by_key[name.split(".")[0]]] += 1
    return counts, plan


def worker_scratch(root):
    """The worker scratch directories under ``root``."""
    return sorted(n for n in os.listdir(root) if n.startswith("qcmb_hpc-") and "-w" in n) if os.path.isdir(root) else []


def load(path):
    from qcmanybody.models.v2 import ManyBodyResult

    return ManyBodyResult(**json.loads(open(path).read()))


@pytest.mark.usefixtures("remove_what_killed_ranks_leave")
@pytest.mark.parametrize("mpi_ranks", [None, 3], ids=["multiprocessing", "mpiexec"])
def test_sigkill_midway_then_resume(tmp_path, mpi_ranks):
    rec = tmp_path / "runs"
    rec.mkdir()
    inp = sleep_input(rec)
    path = tmp_path / "job.json"
    path.write_text(inp.serialize("json"))
    ckpt = str(tmp_path / "job.checkpoint.jsonl")
    scratch = tmp_path / "scratch"  # (the workers' scratch root: $TMPDIR)
    scratch.mkdir()
    proc = start([str(path)], tmp_path, mpi_ranks, TMPDIR=str(scratch))
    try:
        wait_for_records(ckpt, 6, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    done_before = journal_records(ckpt)
    assert 6 <= len(done_before) < len(make_plan(inp).tasks)
    assert len(worker_scratch(scratch)) == 2  # killed workers cannot remove their own

    proc = start([str(path)], tmp_path, mpi_ranks, TMPDIR=str(scratch))
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert worker_scratch(scratch) == []  # the rerun removed the killed run's, and its own
    res = load(tmp_path / "job.result.json")
    rep = load_report(tmp_path / "job.result.json")
    counts, plan = executions(rec, inp)
    assert rep["restored"] == len(done_before)
    assert rep["computed"] == len(plan.tasks) - len(done_before)
    for label in done_before:
        assert counts[label] == 1, f"{label} was recomputed"  # finished before the kill: never again
    assert set(counts) == {t.label for t in plan.tasks}
    # the same numbers as a clean run
    clean = tmp_path / "clean"
    clean.mkdir()
    assert_same_result(reference(sleep_input(clean, base=0.0)), res, exact=True, check_shape=False)


@pytest.mark.parametrize(
    "sig,code", [(signal.SIGTERM, 3), (signal.SIGUSR1, 3), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGUSR1", "SIGINT"]
)
def test_signal_stops_flushes_and_resumes(tmp_path, sig, code):
    rec = tmp_path / "runs"
    rec.mkdir()
    inp = sleep_input(rec)
    path = tmp_path / "job.json"
    path.write_text(inp.serialize("json"))
    ckpt = str(tmp_path / "job.checkpoint.jsonl")
    proc = start([str(path), "--grace-period", "20"], tmp_path)
    wait_for_records(ckpt, 3, proc)
    t_sig = time.monotonic()
    os.kill(proc.pid, sig)  # the main process only, as Slurm's `--signal=B:USR1` + a forwarding trap does
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - t_sig < 15  # running fragments (0.25 s each) finish; nothing new starts
    assert proc.returncode == code, err
    assert "run the same command again to resume" in err and signal.Signals(sig).name in err
    assert "Traceback" not in err
    assert not (tmp_path / "job.result.json").exists()
    done = journal_records(ckpt)
    counts, plan = executions(rec, inp)
    assert len(done) < len(plan.tasks)
    # nothing ran that is not in the journal (no new work after the signal; running ones finished)
    assert sum(counts.values()) == len(done)

    proc = start([str(path)], tmp_path)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    res = load(tmp_path / "job.result.json")
    assert load_report(tmp_path / "job.result.json")["restored"] == len(done)
    counts, _ = executions(rec, inp)
    assert all(c == 1 for c in counts.values()) and len(counts) == len(plan.tasks)
    clean = tmp_path / "clean"
    clean.mkdir()
    assert_same_result(reference(sleep_input(clean, base=0.0)), res, exact=True, check_shape=False)


def test_sigterm_to_mpiexec(tmp_path):
    """Under mpiexec the launcher forwards the signal; rank 0 stops the run cleanly (exit 3)."""
    rec = tmp_path / "runs"
    rec.mkdir()
    inp = sleep_input(rec)
    path = tmp_path / "job.json"
    path.write_text(inp.serialize("json"))
    ckpt = str(tmp_path / "job.checkpoint.jsonl")
    proc = start([str(path), "--grace-period", "20"], tmp_path, mpi_ranks=3)
    wait_for_records(ckpt, 3, proc)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "resume" in err
    done = journal_records(ckpt)
    proc = start([str(path)], tmp_path, mpi_ranks=3)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    rep = load_report(tmp_path / "job.result.json")
    assert rep["restored"] == len(done) and rep["computed"] == len(make_plan(inp).tasks) - len(done)
    counts, _ = executions(rec, inp)
    assert all(c == 1 for c in counts.values())


def run_quick(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "qcmb_hpc", *args, "--import", "qcmb_hpc.testing.engines", "--no-progress"],
        cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=240,
    )


def error_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    return lines[0]


def test_journal_from_another_input_is_refused(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(many_body_input(water_cluster(3)).serialize("json"))
    assert run_quick([str(a)], tmp_path).returncode == 0
    # the same checkpoint file, another input
    b = tmp_path / "b.json"
    b.write_text(many_body_input(water_cluster(3), method="mp2").serialize("json"))
    proc = run_quick([str(b), "--checkpoint", str(tmp_path / "a.checkpoint.jsonl")], tmp_path)
    assert proc.returncode == 2
    assert "different input" in error_line(proc)
    proc = run_quick([str(b), "--checkpoint", str(tmp_path / "a.checkpoint.jsonl"), "--fresh"], tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_corrupt_journal_names_the_line(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(many_body_input(water_cluster(3)).serialize("json"))
    assert run_quick([str(a)], tmp_path).returncode == 0
    ck = tmp_path / "a.checkpoint.jsonl"
    lines = ck.read_text().splitlines(keepends=True)
    lines[2] = "{garbage\n"
    ck.write_text("".join(lines))
    proc = run_quick([str(a)], tmp_path)
    assert proc.returncode == 2
    assert "line 3" in error_line(proc)


def test_torn_last_record_is_recomputed(tmp_path):
    a = tmp_path / "a.json"
    inp = many_body_input(water_cluster(3), bsse_type=["nocp"])
    a.write_text(inp.serialize("json"))
    assert run_quick([str(a)], tmp_path).returncode == 0
    ck = tmp_path / "a.checkpoint.jsonl"
    text = ck.read_text()
    n = len(text.splitlines()) - 1
    ck.write_text(text[: -len(text.splitlines()[-1]) // 2 - 1])  # cut the last record in half
    proc = run_quick([str(a)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rep = load_report(tmp_path / "a.result.json")
    assert rep["restored"] == n - 1 and rep["computed"] == 1
    assert_same_result(reference(inp), load(tmp_path / "a.result.json"), exact=True, check_shape=False)
    assert len(ck.read_text().splitlines()) - 1 == n  # the journal is whole again


def _rank_pid(launcher_pid, rank):
    """pid of the MPI rank ``rank`` under this launcher (from PMI_RANK in /proc/<pid>/environ)."""
    import psutil

    for p in psutil.Process(launcher_pid).children(recursive=True):
        try:
            env = open(f"/proc/{p.pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in env and "python" in p.name():
            return p.pid
    return None


@pytest.mark.usefixtures("remove_what_killed_ranks_leave")
def test_dead_rank_ends_job_promptly_and_resume_completes(tmp_path):
    rec = tmp_path / "runs"
    rec.mkdir()
    inp = sleep_input(rec)
    path = tmp_path / "job.json"
    path.write_text(inp.serialize("json"))
    ckpt = str(tmp_path / "job.checkpoint.jsonl")
    proc = start([str(path)], tmp_path, mpi_ranks=3)
    try:
        wait_for_records(ckpt, 4, proc)
        victim = _rank_pid(proc.pid, 2)
        assert victim is not None
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        ended = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert ended < 20, f"the job took {ended:.1f} s to end after a rank died"
    done = journal_records(ckpt)
    lines = open(ckpt).read().splitlines()
    for ln in lines[:-1]:
        json.loads(ln)  # intact, except possibly a torn last line
    proc = start([str(path)], tmp_path, mpi_ranks=3)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    rep = load_report(tmp_path / "job.result.json")
    assert rep["restored"] == len(done)
    counts, plan = executions(rec, inp)
    assert all(counts[label] == 1 for label in done)


def test_second_signal_cuts_running_fragments(tmp_path):
    """Fragments of 60 s and a grace period of 600 s: the first SIGINT would wait for them; a
    second one cuts them, and the job ends at once (incomplete, resumable)."""
    rec = tmp_path / "runs"
    rec.mkdir()
    inp = sleep_input(rec, base=60.0)
    path = tmp_path / "job.json"
    path.write_text(inp.serialize("json"))
    proc = start([str(path), "--grace-period", "600"], tmp_path)
    t0 = time.monotonic()
    while len(os.listdir(rec)) < 2:  # both workers are inside a fragment
        assert proc.poll() is None and time.monotonic() - t0 < 60, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    seen = []
    for line in proc.stderr:  # signals do not queue: send the second once the first was handled
        seen.append(line)
        if "stop requested" in line:
            break
    assert any("600 s" in ln for ln in seen), seen
    os.kill(proc.pid, signal.SIGINT)
    t1 = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - t1 < 10, "the second signal did not cut the running fragments"
    assert proc.returncode == 130, err
    assert "0 of" in err and "resume" in err
    import psutil

    leftover = [p for p in psutil.process_iter(["cmdline"]) if str(path) in " ".join(p.info["cmdline"] or [])]
    assert not leftover, "processes of the stopped run are still alive"


def test_killed_worker_process_others_continue(tmp_path):
    """One worker process dies (SIGKILL from outside, not a fragment failure): its fragments go to
    the others and the run completes with the right numbers."""
    import psutil

    rec = tmp_path / "runs"
    rec.mkdir()
    inp = sleep_input(rec, base=0.2)
    path = tmp_path / "job.json"
    path.write_text(inp.serialize("json"))
    ckpt = str(tmp_path / "job.checkpoint.jsonl")
    proc = start([str(path), "--mode", "multiprocessing", "--workers", "2"], tmp_path)
    wait_for_records(ckpt, 3, proc)
    workers = [c for c in psutil.Process(proc.pid).children() if "python" in c.name()]
    assert len(workers) == 2
    workers[0].kill()
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    res = load(tmp_path / "job.result.json")
    rep = load_report(tmp_path / "job.result.json")
    assert len(rep["lost_workers"]) == 1 and "SIGKILL" in rep["lost_workers"][0]
    assert "fell_back_to_sequential" not in rep
    clean = tmp_path / "clean"
    clean.mkdir()
    assert_same_result(reference(sleep_input(clean, base=0.0)), res, exact=True, check_shape=False)
