"""``python -m qcmb_hpc status``: a finished, a running and a killed job (a real command-line run
in a subprocess, status read from here while it writes), --json, --watch, a torn last line, every
way of naming the run, and bad paths (one line, exit 2). The state rules themselves
(:func:`qcmb_hpc.status.summarize`) are checked with made-up heartbeats."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import cli_env, run_cli
from qcmb_hpc.checkpoint import Journal, encode_properties, heartbeat_path
from qcmb_hpc.plan import make_plan
from qcmb_hpc.status import find_run_files, main as status_main, summarize
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

ENGINES = ["--import", "qcmb_hpc.testing.engines"]


def status(*args):
    """(exit code, stdout) of the status command, in this process."""
    out = io.StringIO()
    code = status_main(list(args), out=out, sleep=lambda s: None)
    return code, out.getvalue()


def status_json(path):
    code, text = status(str(path), "--json")
    assert code == 0, text
    return json.loads(text)


def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("qcmb_hpc: error: "), err
    assert "Traceback" not in err
    return lines[0]


def finished_run(d, inp):
    """Run ``inp`` as ``d/w4.json`` on the command line (multiprocessing, 2 workers) to the end."""
    (d / "w4.json").write_text(inp.serialize("json"))
    proc = run_cli([str(d / "w4.json"), *ENGINES, "--no-progress", "--workers", "2"], cwd=d)
    assert proc.returncode == 0, proc.stderr
    return d, make_plan(inp)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished command-line run."""
    return finished_run(tmp_path_factory.mktemp("finished"), many_body_input(water_cluster(4), bsse_type=["nocp"], max_nbody=3))


def test_finished_job(finished):
    d, plan = finished
    s = status_json(d / "w4.checkpoint.jsonl")
    n = len(plan.tasks)
    assert s["state"] == "finished"
    assert s["total"] == s["done"] == s["done_this_run"] == n
    assert s["failed"] == 0 and s["retried"] == 0 and s["eta"] is None
    assert s["levels"] == {"1": {"done": 4, "total": 4}, "2": {"done": 6, "total": 6}, "3": {"done": 4, "total": 4}}
    assert s["model_chemistries"] == {"(auto)": {"done": n, "total": n}}
    assert s["cost_fraction"] == pytest.approx(1.0)
    assert s["pid"] and s["host"] == socket.gethostname() and s["mode"] == "multiprocessing"
    code, text = status(str(d / "w4.checkpoint.jsonl"))
    assert code == 0
    assert text.splitlines()[0] == "w4.checkpoint.jsonl: finished"
    assert f"fragments: {n}/{n} done (100%), 0 failed" in text
    assert "by n-body level: 1-body 4/4, 2-body 6/6, 3-body 4/4" in text


@pytest.mark.parametrize("name", ["w4.json", "w4.result.json", "w4.report.json", "w4.checkpoint.jsonl", "."])
def test_any_file_of_the_run_names_it(finished, name, monkeypatch):
    d, _ = finished
    monkeypatch.chdir(d)
    files = find_run_files(name)
    assert os.path.samefile(files.journal, d / "w4.checkpoint.jsonl")
    assert status_json(name)["state"] == "finished"


def test_the_command_line_entry(finished):
    d, plan = finished
    proc = subprocess.run(
        [sys.executable, "-m", "qcmb_hpc", "status", "w4.json"], cwd=d, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("w4.checkpoint.jsonl: finished")


def test_bad_paths_are_one_line_exit_2(tmp_path, capsys):
    code, _ = status(str(tmp_path / "nope.json"))
    assert code == 2 and "does not exist" in one_error_line(capsys)
    (tmp_path / "notes.txt").write_text("hello\n")
    code, _ = status(str(tmp_path / "notes.txt"))
    assert code == 2 and "not a qcmb_hpc run" in one_error_line(capsys)
    code, _ = status(str(tmp_path))
    assert code == 2 and "no journal" in one_error_line(capsys)
    # a journal that is corrupt before its last line
    bad = tmp_path / "bad.checkpoint.jsonl"
    bad.write_text('{"format": "qcmb_hpc-journal", "fingerprint": "x", "fragments": 3}\nnot json\n{"label": "a", "properties": {}}\n')
    code, _ = status(str(bad))
    assert code == 2 and "corrupt at line 2" in one_error_line(capsys)
    code, _ = status("--watch", "0", str(bad))
    assert code == 2 and "--watch" in one_error_line(capsys)


def _record(label, k, started):
    return {"label": label, "properties": encode_properties({"energy": -1.0 - k}), "seconds": 1.0, "worker": k % 2,
            "host": "h", "started": started, "attempt": 1}


def test_torn_last_line_is_not_counted_and_reading_changes_nothing(tmp_path):
    """The writer is mid-line: status counts the whole records only, and leaves the file as it is
    (the writer appends on; the next read sees the finished line)."""
    plan = make_plan(many_body_input(water_cluster(3), bsse_type=["nocp"]))
    path = tmp_path / "t.checkpoint.jsonl"
    j = Journal.open(str(path), plan.fingerprint, fragments=len(plan.tasks))
    labels = [t.label for t in plan.tasks]
    j.append([_record(labels[0], 0, time.time()), _record(labels[1], 1, time.time())])
    whole = json.dumps(_record(labels[2], 2, time.time()), separators=(",", ":")) + "\n"
    j._fh.write(whole[:25])  # a write caught half way
    j._fh.flush()
    before = path.read_bytes()
    s = status_json(path)
    assert s["done"] == 2 and s["total"] == len(plan.tasks)
    assert path.read_bytes() == before
    j._fh.write(whole[25:])
    j._fh.flush()
    assert status_json(path)["done"] == 3
    j.close()


def test_old_journal_without_the_new_fields(tmp_path):
    """A journal of an earlier version (no pid, host, totals, starts or estimates): status still
    counts it and says what it cannot tell."""
    path = tmp_path / "old.checkpoint.jsonl"
    lines = [json.dumps({"format": "qcmb_hpc-journal", "version": 1, "fingerprint": "f", "created": 0.0, "fragments": 5})]
    lines += [json.dumps({"label": json.dumps(["(auto)", [k], [k]]), "properties": {"energy": -1.0}, "seconds": 0.1, "worker": 0, "host": "h"}) for k in (1, 2)]
    path.write_text("\n".join(lines) + "\n")
    s = status_json(path)
    assert (s["done"], s["total"], s["state"]) == (2, 5, "unknown")
    assert s["levels"] == {"1": {"done": 2, "total": 0}}
    code, text = status(str(path))
    assert code == 0 and "2/5 done" in text and "failures not known" in text


def test_new_fields_of_the_wrong_type_are_missing_not_damage(tmp_path):
    """A record whose start, attempt or estimate is not a number still resumes (resuming needs none
    of them) and still counts for status, which takes those values as unknown."""
    plan = make_plan(many_body_input(water_cluster(3), bsse_type=["nocp"]))
    path = tmp_path / "odd.checkpoint.jsonl"
    Journal.open(str(path), plan.fingerprint, fragments=len(plan.tasks)).close()
    odd = {**_record(plan.tasks[0].label, 0, "yesterday"), "attempt": True, "estimate_initial": "big", "seconds": None}
    with open(path, "a") as fh:
        fh.write(json.dumps(odd) + "\n")
    j = Journal.open(str(path), plan.fingerprint)
    assert list(j.restored) == [plan.tasks[0].label]
    j.close()
    s = status_json(path)
    assert s["done"] == 1 and s["retried"] == 0


# ------------------------------------------------------------------------------------------------
# a running job, then killed
# ------------------------------------------------------------------------------------------------


def wait_for(predicate, what, proc, deadline=90.0):
    t0 = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        assert time.monotonic() - t0 < deadline, f"no {what} within {deadline} s"
        time.sleep(0.05)


def test_running_then_killed_job(tmp_path, capsys):
    inp = many_body_input(
        water_cluster(4), program="qcmb_sleep", keywords={"sleep": {"base": 0.4, "exponent": 0}},
        bsse_type=["cp", "nocp"], return_total_data=True,
    )
    n = len(make_plan(inp).tasks)
    path = tmp_path / "job.json"
    path.write_text(inp.serialize("json"))
    cmd = [sys.executable, "-m", "qcmb_hpc", str(path), *ENGINES, "--no-progress", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    journal = tmp_path / "job.checkpoint.jsonl"
    try:
        # status from here while the job writes: running, with progress, an ETA and fragments running
        def progressed():
            if not os.path.exists(heartbeat_path(str(journal))):
                return None
            s = status_json(journal)
            # (the heartbeat is replaced every 2 s: wait for one written after the first results)
            ok = s["state"] == "running" and s["done"] >= 2 and s["eta_source"] == "the run's cost-weighted ETA"
            return s if ok and s["running"] else None

        s = wait_for(progressed, "progress", proc)
        assert s["pid"] == proc.pid and s["total"] == n and s["done"] < n
        assert s["running"] in (1, 2) and s["workers"] == 2
        assert s["eta"] > 0 and s["rate"] > 0 and s["eta_source"] == "the run's cost-weighted ETA"
        code, text = status(str(journal))
        assert code == 0 and text.startswith(f"job.checkpoint.jsonl: running (pid {proc.pid} on {socket.gethostname()})")
        assert " running" in text and "ETA " in text and "elapsed" in text
        # --watch: a bounded number of refreshes while it runs, one JSON object each
        code, text = status(str(journal), "--watch", "0.01", "--count", "3", "--json")
        rows = [json.loads(ln) for ln in text.splitlines()]
        assert code == 0 and len(rows) == 3 and all(r["state"] == "running" for r in rows)
        assert rows[0]["done"] <= rows[-1]["done"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    # killed: no report was written, status says so from the journal and the stale heartbeat
    assert not (tmp_path / "job.report.json").exists()
    s = status_json(journal)
    assert s["state"] == "killed" and 2 <= s["done"] < n and s["total"] == n
    assert s["eta"] is None and s["running"] is None
    code, text = status(str(journal))
    assert text.startswith(f"job.checkpoint.jsonl: killed (pid {proc.pid} on {socket.gethostname()} is gone)")
    assert f"{s['done']}/{n} done" in text and "run the same command again to resume" in text
    # --watch on a job that is not running: one refresh and done
    code, text = status(str(journal), "--watch", "0.01")
    assert code == 0 and text.count("killed") == 1


def test_watch_runs_until_the_job_ends(tmp_path):
    """--watch refreshes while the heartbeat says running, and stops at the refresh that sees the
    end (here the 'job' is this test, rewriting the heartbeat between refreshes)."""
    from qcmb_hpc.progress import Heartbeat, ProgressState

    journal = tmp_path / "w.checkpoint.jsonl"
    Journal.open(str(journal), "f", fragments=2).close()
    hb = Heartbeat(heartbeat_path(str(journal)), interval=0.0)
    states = iter(["running", "running", "finished"])

    def step(_seconds):
        state = next(states)
        hb.beat(ProgressState(started=time.time(), elapsed=1.0, total=2, done=2 if state == "finished" else 1),
                force=True, how=state if state == "finished" else None)

    step(0)
    out = io.StringIO()
    code = status_main([str(journal), "--watch", "1", "--json"], out=out, sleep=step)
    rows = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert code == 0 and [r["state"] for r in rows] == ["running", "running", "finished"]


# ------------------------------------------------------------------------------------------------
# the rules, with made-up heartbeats
# ------------------------------------------------------------------------------------------------

HEADER = {"format": "qcmb_hpc-journal", "created": 1000.0, "fragments": 4, "pid": 11, "host": "me", "estimate": 10.0,
          "levels": {"1": {"fragments": 2, "estimate": 2.0}, "2": {"fragments": 2, "estimate": 8.0}}}
RECORDS = [{"label": json.dumps(["(auto)", [1], [1]]), "started": 1010.0, "seconds": 5.0, "estimate_initial": 1.0, "attempt": 2}]


def hb(**kw):
    return {"format": "qcmb_hpc-heartbeat", "state": "running", "pid": 22, "pid_started": 999.0, "host": "me",
            "updated": 1100.0, "interval": 10.0, "started": 1001.0, "eta": 50.0, "running": 2, "failed": 0, "retried": 1, **kw}


@pytest.mark.parametrize(
    "heartbeat,alive,now,state",
    [
        (hb(), True, 1105.0, "running"),
        (hb(), False, 1105.0, "killed"),  # same host, the pid is gone (or is another process now)
        (hb(state="stopping"), True, 1105.0, "stopping"),
        (hb(host="node7"), None, 1105.0, "running"),  # another host: a fresh heartbeat is life
        (hb(host="node7"), None, 1100.0 + 3 * 10 + 31, "lost"),  # ... a stale one is not
        (hb(state="finished"), False, 1105.0, "finished"),
        (hb(state="stopped"), False, 1105.0, "stopped"),
        (hb(state="failed"), False, 1105.0, "failed"),
        (None, True, 1105.0, "running"),  # no heartbeat (older version): the header's pid
        (None, False, 1105.0, "not running"),
        (hb(started=900.0), True, 1105.0, "running"),  # a heartbeat from before this journal: ignored
    ],
)
def test_state_rules(heartbeat, alive, now, state):
    asked = []

    def is_alive(pid, started):
        asked.append(pid)
        assert alive is not None, "asked about a process on another host"
        return alive

    s = summarize(HEADER, RECORDS, heartbeat, now, "me", alive=is_alive)
    assert s["state"] == state
    if heartbeat is not None and heartbeat["started"] >= 1000 and heartbeat["host"] == "me" and heartbeat["state"] == "running":
        assert asked == [22]
    if s["state"] == "running" and heartbeat is not None and heartbeat["started"] >= 1000:
        assert s["eta"] == pytest.approx(50.0 - (now - 1100.0)) and s["running"] == 2
    if heartbeat is None or heartbeat["started"] < 1000:
        assert s["retried"] == 1  # from the records' attempt numbers
        if s["state"] == "running":  # the journal's own cost-weighted ETA: 1 of 10 done in 105 s, 9 left
            assert s["eta"] == pytest.approx(9 * 105.0) and s["eta_source"] == "cost-weighted, from the journal"
    assert s["levels"] == {"1": {"done": 1, "total": 2}, "2": {"done": 0, "total": 2}}
