"""Fragments that fail, hang or crash; workers that die; a parallel machinery that cannot start.
The final result equals the fault-free one, no fragment is lost and none is counted twice."""

import collections
import json
import os

import pytest

from conftest import assert_same_result, quiet, reference
from qcmb_hpc import FragmentExecutionError, ParallelExecutionError, ParallelManyBodyComputer
from qcmb_hpc.plan import make_plan
from qcmb_hpc.testing.inputs import many_body_input


def fault_input(mol, fault_dir, **fault):
    kw = {"fault_dir": str(fault_dir), "p": 0.6, "seed": 3, "faulty_attempts": 1, "hang_seconds": 120, **fault}
    return many_body_input(mol, program="qcmb_fault", keywords=kw, bsse_type=["cp", "nocp"], driver="gradient")


def attempts_by_kind(fault_dir):
    kinds = collections.Counter()
    per_fragment = collections.Counter()
    for name in os.listdir(fault_dir):
        key, _, _ = name.rpartition(".")
        per_fragment[key] += 1
        kinds[open(os.path.join(fault_dir, name)).read()] += 1
    return kinds, per_fragment


def journal_labels(path):
    lines = open(path).read().splitlines()
    return [json.loads(ln)["label"] for ln in lines[1:]]


@pytest.mark.parametrize("mode", ["sequential", "multiprocessing"])
def test_faults_give_fault_free_result(tetramer, tmp_path, mode):
    faults = tmp_path / "faults"
    faults.mkdir()
    clean = tmp_path / "clean"
    clean.mkdir()
    ref = reference(fault_input(tetramer, clean, p=0.0))  # the same engine, no faults: upstream QCManyBody
    inp = fault_input(tetramer, faults)
    ckpt = tmp_path / "run.jsonl"
    cfg = quiet(report_in_extras=True, mode=mode, timeout_per_fragment=1.5, max_retries=2, checkpoint=str(ckpt))
    res = ParallelManyBodyComputer(inp, parallel_config=cfg).compute()
    assert_same_result(ref, res, exact=True)
    kinds, per_fragment = attempts_by_kind(faults)
    for kind in ("raise", "fail", "hang", "kill", "ok"):
        assert kinds[kind] > 0, kinds  # every kind of fault happened
    n = len(make_plan(inp).tasks)
    labels = journal_labels(ckpt)
    assert len(labels) == n == len(set(labels))  # nothing lost, nothing counted twice
    rep = res.extras["qcmb_hpc"]
    assert rep["computed"] == n and rep["failed"] == 0
    assert rep["retried_attempts"] == sum(kinds[k] for k in ("raise", "fail", "hang", "kill"))
    assert len(per_fragment) == n and max(per_fragment.values()) == 2
    # the faults cost only the workers' children: no worker was lost, nothing fell back, and each
    # killed or hung attempt was followed by a fresh child (unless it was its worker's last one)
    assert rep["mode"] == mode
    assert not rep["lost_workers"] and "fell_back_to_sequential" not in rep
    crashes = kinds["kill"] + kinds["hang"]
    assert crashes - rep["workers"] <= rep["restarts"] <= crashes and rep["restarts"] > 0, (rep["restarts"], kinds)


def test_fault_that_keeps_failing_names_everything(trimer, tmp_path):
    faults = tmp_path / "f"
    faults.mkdir()
    inp = fault_input(trimer, faults, p=1.0, kinds=["fail"], faulty_attempts=99)
    with pytest.raises(FragmentExecutionError) as err:
        ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing", max_retries=2)).compute()
    f = err.value.failures[0]
    assert len(f["attempts"]) == 3  # 1 + max_retries
    workers = {a["worker"] for a in f["attempts"]}
    assert len(workers) == 2  # retried on the other worker
    assert "injected failure" in str(err.value) and f["program"] == "qcmb_fault"
    assert "attempt 1 on worker" in err.value.details()


def test_no_retries_when_disabled(trimer, tmp_path):
    faults = tmp_path / "f"
    faults.mkdir()
    inp = fault_input(trimer, faults, p=1.0, kinds=["raise"])
    with pytest.raises(FragmentExecutionError) as err:
        ParallelManyBodyComputer(inp, parallel_config=quiet(mode="sequential", retry_failed_fragments=False)).compute()
    assert all(len(f["attempts"]) == 1 for f in err.value.failures)


def test_input_errors_are_not_retried(trimer, tmp_path):
    faults = tmp_path / "f"
    faults.mkdir()
    inp = fault_input(trimer, faults, p=1.0, kinds=["input"], faulty_attempts=99)
    with pytest.raises(FragmentExecutionError) as err:
        ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing", max_retries=5)).compute()
    assert all(len(f["attempts"]) == 1 and f["attempts"][0]["error_type"] == "input_error" for f in err.value.failures)


def test_timeout_kills_and_retries(trimer, tmp_path):
    faults = tmp_path / "f"
    faults.mkdir()
    clean = tmp_path / "c"
    clean.mkdir()
    inp = fault_input(trimer, faults, p=0.5, kinds=["hang"])
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing", timeout_per_fragment=1.0)).compute()
    assert_same_result(reference(fault_input(trimer, clean, p=0.0)), res, exact=True)
    kinds, _ = attempts_by_kind(faults)
    assert kinds["hang"] > 0


def test_dead_workers_fall_back_to_sequential(trimer, tmp_path, caplog):
    """Without isolation a 'kill' fault takes the worker process itself down. With every worker
    gone, the run continues sequentially (isolated) and still gives the right answer."""
    faults = tmp_path / "f"
    faults.mkdir()
    clean = tmp_path / "c"
    clean.mkdir()
    inp = fault_input(trimer, faults, p=1.0, kinds=["kill"])
    scratch = tmp_path / "scratch"
    cfg = quiet(report_in_extras=True, mode="multiprocessing", max_workers=2, isolate_fragments=False, max_retries=3,
                scratch_directory=str(scratch))
    res = ParallelManyBodyComputer(inp, parallel_config=cfg).compute()
    assert list(scratch.iterdir()) == []  # the killed workers' scratch directories are removed too
    assert_same_result(reference(fault_input(trimer, clean, p=0.0)), res, exact=True)
    rep = res.extras["qcmb_hpc"]
    assert "fell_back_to_sequential" in rep and rep["lost_workers"]


def test_dead_workers_without_fallback_is_parallel_error(trimer, tmp_path):
    faults = tmp_path / "f"
    faults.mkdir()
    inp = fault_input(trimer, faults, p=1.0, kinds=["kill"])
    cfg = quiet(mode="multiprocessing", max_workers=2, isolate_fragments=False, fallback_to_sequential=False)
    with pytest.raises(ParallelExecutionError, match="every worker is gone"):
        ParallelManyBodyComputer(inp, parallel_config=cfg).compute()


def test_pool_that_cannot_start_falls_back(trimer, monkeypatch):
    from qcmb_hpc.transport import processes

    def broken(self, n):
        raise processes.TransportStartError("cannot fork (simulated)")

    monkeypatch.setattr(processes.ProcessTransport, "__init__", broken)
    inp = many_body_input(trimer)
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(report_in_extras=True, mode="multiprocessing")).compute()
    assert res.extras["qcmb_hpc"]["mode"] == "sequential"
    assert "cannot fork" in res.extras["qcmb_hpc"]["fell_back_to_sequential"]
    assert_same_result(reference(inp), res, exact=True)
    with pytest.raises(ParallelExecutionError, match="cannot fork"):
        ParallelManyBodyComputer(inp, parallel_config=quiet(report_in_extras=True, mode="multiprocessing", fallback_to_sequential=False)).compute()


@pytest.mark.parametrize("mode", ["multiprocessing", "sequential"])
def test_no_process_can_be_started(trimer, tmp_path, monkeypatch, mode):
    """``os.fork`` fails as it does at the process limit (BlockingIOError). The run continues in
    the calling process — no fork at all, isolation on by default notwithstanding — keeps what
    was checkpointed before, and says it fell back."""
    import os

    inp = many_body_input(trimer, bsse_type=["cp", "nocp"])
    ck = str(tmp_path / "j.jsonl")
    ParallelManyBodyComputer(inp, parallel_config=quiet(mode="sequential", checkpoint=ck)).compute()
    lines = open(ck).read().splitlines()
    with open(ck, "w") as fh:  # keep the header and three fragments
        fh.write("\n".join(lines[:4]) + "\n")
    forks = []

    def no_fork():
        forks.append(1)
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    comp = ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode, checkpoint=ck))
    res = comp.compute()
    assert_same_result(reference(inp), res, exact=True)
    rep = comp.run_info
    assert rep["mode"] == "sequential" and rep["restored"] == 3
    if mode == "multiprocessing":
        assert "Resource temporarily unavailable" in rep["fell_back_to_sequential"]
    assert len(forks) == 1  # tried once (the pool, or the isolating child), never again
