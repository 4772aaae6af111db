"""Work stealing between real ranks: a task is never run twice and never lost.

The victim is made deterministically: the ``qcmb_count`` engine (``ranks_count_engine``) holds the
first fragment to start anywhere — the head of its worker's queue — until every other fragment has
been executed. Everything queued behind it on that worker can only run if
the other workers steal it (STEAL → the victim gives back what it has not started → RETURNED), while
the victim's fragment is running. Every execution is recorded in a file, so a fragment run twice (or
never) is seen directly, not inferred from the result. The exact interleaving of "the victim starts
a task just as it is stolen" is driven deterministically, without MPI, in tests/test_steal_race.py;
here the second case releases the held fragment half-way, so the victim starts its own queue while
thieves are still taking from it.
"""

import pytest

from conftest import assert_same_result
from ranks_count_engine import executions, held_too_long
from ranks_helpers import MPI_TEST_TIMEOUT, TEST_ENGINES, mpi_compute, rank, ranks_in_step, root_reference, shared_dir, size  # noqa: F401
from qcmb_hpc.plan import make_plan
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

pytestmark = [pytest.mark.mpi(min_size=3), pytest.mark.timeout(MPI_TEST_TIMEOUT)]  # stealing needs two workers

TRIMER = water_cluster(3)
SHAPE = dict(bsse_type=["cp", "nocp"], driver="gradient")


def run_counted(record_dir, hold_until_fraction, **cfg):
    ref_inp = many_body_input(TRIMER, **SHAPE)
    n_tasks = len(make_plan(ref_inp).tasks)
    hold_until = int((n_tasks - 1) * hold_until_fraction)
    keywords = {"record_dir": record_dir, "hold_until": hold_until, "hold_timeout": 60}
    inp = many_body_input(TRIMER, program="qcmb_count", keywords=keywords, **SHAPE)
    res, _ = mpi_compute(inp, imports=[TEST_ENGINES, "ranks_count_engine"], report_in_extras=True, **cfg)
    return res, ref_inp, n_tasks


@pytest.mark.parametrize("strategy", ["work_stealing", "dynamic"])
def test_held_victim_is_robbed_and_nothing_runs_twice(shared_dir, strategy):
    # (the tail guard would keep the queue behind the held fragment short — nothing to steal: off here)
    res, ref_inp, n_tasks = run_counted(
        shared_dir, 1.0, load_balancing=strategy, work_stealing=True, prefetch=64, retry_failed_fragments=False,
        tail_guard=False,
    )
    assert not held_too_long(shared_dir), "the held fragment's worker kept tasks nobody stole"
    counts = executions(shared_dir)
    assert len(counts) == n_tasks, f"{n_tasks - len(counts)} fragment(s) never ran"
    twice = {k: c for k, c in counts.items() if c != 1}
    assert not twice, f"fragments run more than once: {twice}"
    rep = res.extras["qcmb_hpc"]
    assert rep["steal_requests"] >= 1 and rep["steals"] >= 1, rep
    assert rep["computed"] == n_tasks and rep["retried_attempts"] == 0
    assert_same_result(root_reference(ref_inp), res, exact=True)


@pytest.mark.parametrize("prefetch", [1, 4])
def test_victim_resumes_while_being_robbed(shared_dir, prefetch):
    res, ref_inp, n_tasks = run_counted(
        shared_dir, 0.5, load_balancing="work_stealing", prefetch=prefetch, retry_failed_fragments=False
    )
    assert not held_too_long(shared_dir)
    counts = executions(shared_dir)
    assert len(counts) == n_tasks and set(counts.values()) == {1}, counts
    assert res.extras["qcmb_hpc"]["computed"] == n_tasks
    assert_same_result(root_reference(ref_inp), res, exact=True)
