"""The run report's estimate quality (qcmb_hpc.report): the estimates the run started with, against
the times of successful attempts only; and the restarts figure."""

import types

import pytest

from qcmb_hpc.coordinator import RunOutcome
from qcmb_hpc.report import estimate_pairs, run_report, successful_seconds, summary_line


def outcome_and_tasks():
    """Five fragments computed (estimates 1..5 at the start, times 10..50), task 0 after a 100 s
    timeout, task 1 after a fast crash; task 5 restored from the checkpoint; task 6 failed for good.
    A refit re-estimated every task afterwards, in the opposite order."""
    out = RunOutcome()
    out.timings = [
        (0, 0, 0.0, 100.0),  # timed out, retried
        (1, 1, 0.0, 0.01),  # crashed, retried
        (6, 1, 0.1, 0.5),  # failed, retried
        (6, 0, 100.0, 0.5),  # failed for good
        (0, 1, 1.0, 10.0),
        (1, 0, 101.0, 20.0),
        (2, 1, 11.0, 30.0),
        (3, 1, 41.0, 40.0),
        (4, 0, 121.0, 50.0),
    ]
    out.properties = {tid: {"energy": 0.0} for tid in (0, 1, 2, 3, 4, 5)}
    out.restored = 1
    out.failures = {6: ["x", "y"]}
    out.attempts = {0: ["timeout"], 1: ["crash"], 6: ["x", "y"]}
    out.makespan = 171.0
    out.strategy = "dynamic"
    out.workers = {0: {"host": "a", "restarts": 2}, 1: {"host": "a", "restarts": 1}, 2: {"host": "b"}}
    initial = {tid: float(tid + 1) for tid in range(7)}
    tasks = [types.SimpleNamespace(id=tid, cost=10.0 - tid) for tid in range(7)]  # re-estimated since
    return out, tasks, initial


def test_successful_seconds_are_the_last_attempt_of_each_success():
    out, _, _ = outcome_and_tasks()
    assert successful_seconds(out.timings, out.properties) == {0: 10.0, 1: 20.0, 2: 30.0, 3: 40.0, 4: 50.0}
    est, meas = estimate_pairs(out.timings, out.properties, {0: 1.0, 2: 3.0})
    assert (est, meas) == ([1.0, 3.0], [10.0, 30.0])


def test_rank_correlation_uses_initial_estimates_and_successful_attempts():
    out, tasks, initial = outcome_and_tasks()
    rep = run_report(out, tasks, 2, "multiprocessing", 200.0, initial_costs=initial)
    assert rep["estimate_rank_correlation"] == pytest.approx(1.0)
    # without the snapshot: the tasks' current (re-estimated) costs — still successful attempts only
    rep_now = run_report(out, tasks, 2, "multiprocessing", 200.0)
    assert rep_now["estimate_rank_correlation"] == pytest.approx(-1.0)


def test_restarts_are_summed_over_workers():
    out, tasks, initial = outcome_and_tasks()
    rep = run_report(out, tasks, 3, "mpi", 200.0, initial_costs=initial)
    assert rep["restarts"] == 3
    assert rep["lost_workers"] == []
    assert "3 worker restarts" in summary_line(rep)
    out.workers = {}
    rep = run_report(out, tasks, 3, "mpi", 200.0)
    assert rep["restarts"] == 0 and "restart" not in summary_line(rep)
