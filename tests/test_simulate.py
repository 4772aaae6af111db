"""The discrete-event simulation (qcmb_hpc.simulate): the real coordinator and scheduler over modelled
workers on a fake clock. Small cases whose answer is known; no timings of the machine itself."""

import math

import pytest

from qcmb_hpc import transport as T
from qcmb_hpc.config import LoadBalanceStrategy
from qcmb_hpc.coordinator import Coordinator
from qcmb_hpc.simulate import SimClock, SimTask, SimTransport, mbe_costs, noisy, simulate

S = LoadBalanceStrategy
IDEAL = dict(latency=0.0, send_cost=0.0, recv_cost=0.0, item_cost=0.0, wake="event")
ALL = [S.STATIC, S.DYNAMIC, S.WORK_STEALING, S.ADAPTIVE]


def check_complete(r):
    assert r.duplicates == 0, "a task ran twice"
    assert r.never_run == 0, "a task never ran"
    assert r.completed == r.tasks


@pytest.mark.parametrize("strategy", ALL)
def test_equal_tasks_exact(strategy):
    """k equal tasks per worker, no latency, no coordinator cost: makespan is exactly k·c = LB."""
    r = simulate([2.0] * 40, 8, strategy=strategy, **IDEAL)
    check_complete(r)
    assert r.lower_bound == pytest.approx(10.0)
    assert r.makespan == pytest.approx(10.0)
    assert r.ratio == pytest.approx(1.0)
    assert r.steals == 0  # nothing to mend


@pytest.mark.parametrize("strategy", [S.DYNAMIC, S.WORK_STEALING, S.STATIC])
def test_equal_tasks_latency_adds_only_round_trips(strategy):
    lat = 1e-3
    r = simulate([1.0] * 32, 4, strategy=strategy, latency=lat, send_cost=0, recv_cost=0, item_cost=0, wake="event", tail_guard=False)
    check_complete(r)
    # READY, first TASKS, last RESULTS, STOP/BYE: a few one-way latencies on top of the 8 s of work
    assert 8.0 < r.makespan < 8.0 + 10 * lat


def test_tail_guard_costs_a_few_round_trips_per_worker():
    """The tail guard gives each worker its last few tasks one at a time: each of those waits one
    round trip (2 latencies), a few per worker — not one per task."""
    lat = 1e-3
    kw = dict(latency=lat, send_cost=0, recv_cost=0, item_cost=0, wake="event")
    off = simulate([1.0] * 32, 4, tail_guard=False, **kw)
    on = simulate([1.0] * 32, 4, tail_guard=True, **kw)
    check_complete(on)
    extra_round_trips = (on.makespan - off.makespan) / (2 * lat)
    assert 1 <= extra_round_trips <= 5
    long = simulate([1.0] * 400, 4, tail_guard=True, **kw)  # 100 tasks each: still only the last few
    assert long.makespan - 100.0 < 10 * lat + 5 * 2 * lat


@pytest.mark.parametrize("strategy", [S.DYNAMIC, S.WORK_STEALING])
def test_one_huge_task_bounds_the_makespan(strategy):
    costs = [1.0] * 60 + [50.0] + [1.0] * 60  # the huge one in the middle of the plan
    r = simulate(costs, 4, strategy=strategy, **IDEAL)
    check_complete(r)
    assert r.lower_bound == 50.0
    # largest first (dynamic), or stealing round the worker that holds it: nothing runs after it
    assert r.makespan == pytest.approx(50.0, abs=1.0 + 1e-9)


def test_more_workers_than_tasks():
    r = simulate([1.0, 2.0, 3.0], 16, strategy=S.DYNAMIC, **IDEAL)
    check_complete(r)
    assert r.makespan == pytest.approx(3.0)


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("wake", ["poll", "event"])
def test_no_task_runs_twice_with_noise_and_jitter(strategy, wake):
    est, _ = mbe_costs(monomers=10, max_nbody=3, base=0.01, seed=3)
    r = simulate(est, 13, strategy=strategy, noise=0.6, seed=5, jitter=2e-4, latency=5e-5, wake=wake)
    check_complete(r)
    assert r.makespan >= r.lower_bound


def test_steals_happen_and_are_confirmed():
    """A static split made from wrong estimates: idle workers steal; every request is answered by
    the victim (RETURNED), only unstarted tasks move, and none runs twice."""
    n = 200
    est = [1.0] * n
    actual = [5.0 if i % 4 == 0 else 0.2 for i in range(n)]  # the estimates are badly wrong
    clock = SimClock()
    tr = SimTransport(actual, 8, clock, latency=1e-4)
    coord = Coordinator(
        [SimTask(i, est[i]) for i in range(n)], tr, None, strategy=S.STATIC, work_stealing=True, prefetch=4, clock=clock,
        retry_failed=False,
    )
    out = coord.run()
    assert len(out.properties) == n
    assert max(tr.runs) == 1 and min(tr.runs) == 1
    assert out.steal_requests > 0, "no worker asked to steal"
    assert tr.counts[T.STEAL] == out.steal_requests
    assert tr.counts[T.RETURNED] == tr.counts[T.STEAL], "every steal request is answered by its victim"
    assert out.steals > 0, "no steal moved any work"
    # and it helped: compare with the same run without stealing
    clock2 = SimClock()
    tr2 = SimTransport(actual, 8, clock2, latency=1e-4)
    out2 = Coordinator(
        [SimTask(i, est[i]) for i in range(n)], tr2, None, strategy=S.STATIC, work_stealing=False, prefetch=4,
        clock=clock2, retry_failed=False,
    ).run()
    assert out2.steals == 0 and tr2.counts[T.STEAL] == 0
    assert out.makespan < 0.9 * out2.makespan


def test_work_stealing_mends_a_static_split():
    est, _ = mbe_costs(monomers=12, max_nbody=3, base=0.01, seed=1)
    actual = noisy(est, 0.8, seed=2)
    off = simulate(est, 8, actual=actual, strategy=S.STATIC, work_stealing=False)
    on = simulate(est, 8, actual=actual, strategy=S.STATIC, work_stealing=True)
    check_complete(off)
    check_complete(on)
    assert on.steals > 0 and off.steals == 0
    assert on.makespan < off.makespan


def test_dynamic_is_near_the_bound_for_mbe_costs():
    est, nb = mbe_costs(monomers=16, max_nbody=3, base=0.05, seed=4)
    r = simulate(est, 16, noise=0.3, seed=1, strategy=S.DYNAMIC, nbody=nb)
    check_complete(r)
    assert r.ratio < 1.05


def test_poll_wakes_no_earlier_than_event():
    est = [0.01 * (1 + i % 7) for i in range(300)]
    ev = simulate(est, 6, wake="event", latency=1e-4)
    po = simulate(est, 6, wake="poll", latency=1e-4)
    check_complete(ev)
    check_complete(po)
    assert po.makespan >= ev.makespan - 1e-12


def test_coordinator_cost_limits_throughput():
    """Tiny tasks on many workers: the modelled coordinator (not the workers) sets the pace, so
    the makespan is about tasks × per-task coordinator cost."""
    n, per_item = 20000, 50e-6
    r = simulate([1e-6] * n, 64, item_cost=per_item, send_cost=0, recv_cost=0, latency=1e-6)
    check_complete(r)
    assert r.makespan > 0.9 * 2 * n * per_item  # each task: sent once, its result received once
    assert r.results_messages < n  # fast results travel in batches, as the real worker sends them


def test_deterministic():
    est, _ = mbe_costs(monomers=8, max_nbody=3, seed=2)
    a = simulate(est, 5, noise=0.4, seed=9, jitter=1e-4)
    b = simulate(est, 5, noise=0.4, seed=9, jitter=1e-4)
    assert a.makespan == b.makespan and a.steals == b.steals and a.messages == b.messages


def test_mbe_costs_counts_and_shape():
    costs, nbody = mbe_costs(monomers=6, max_nbody=3, base=1.0, exponent=3.0, spread=0.0)
    assert len(costs) == 6 + 15 + 20
    assert nbody[:6] == [1] * 6 and nbody[-1] == 3
    assert costs[0] == 1.0 and costs[6] == 8.0 and costs[-1] == 27.0
    assert sum(math.comb(64, n) for n in range(1, 5)) == 679120


def test_lower_bound_and_ratio_fields():
    r = simulate([3.0, 1.0, 1.0, 1.0], 2, **IDEAL)
    assert r.lower_bound == 3.0
    assert r.makespan == pytest.approx(3.0)
    assert r.efficiency == pytest.approx(1.0)
    d = r.to_dict()
    assert d["workers"] == 2 and d["tasks"] == 4


def test_many_workers_smoke():
    """Thousands of workers, tens of thousands of tasks: finishes, every task once."""
    est, nb = mbe_costs(monomers=24, max_nbody=3, base=0.02, seed=0)
    r = simulate(est, 4096, noise=0.3, seed=1, strategy=S.DYNAMIC, nbody=nb)
    check_complete(r)
    assert r.makespan >= r.lower_bound


def test_inline_workers_are_not_asked_for_their_next_task():
    """Workers running fragments inline read a STEAL only between fragments: with one task queued
    there is nothing a thief could usefully take, so none is requested; deeper queues still are."""
    est, _ = mbe_costs(monomers=10, max_nbody=3, base=0.01, seed=3)
    r = simulate(est, 6, noise=0.5, seed=2, strategy=S.DYNAMIC, prefetch=1, responsive=False)
    check_complete(r)
    assert r.steal_requests == 0
    deep = simulate(est, 6, noise=0.5, seed=2, strategy=S.DYNAMIC, prefetch=4, responsive=False, latency=1e-4)
    check_complete(deep)
    assert deep.steal_requests > 0
    for strategy in ALL:
        check_complete(simulate(est, 7, noise=0.8, seed=4, strategy=strategy, prefetch=3, responsive=False, jitter=1e-4))


def test_command_line(capsys):
    from qcmb_hpc.simulate import main

    assert main(["--monomers", "8", "--max-nbody", "3", "--workers", "4", "16", "--strategies", "dynamic"]) == 0
    out = capsys.readouterr().out
    assert "92 tasks" in out and "dynamic" in out
