"""The tail guard (qcmb_hpc.schedule) and the residual spread it takes from the cost model
(qcmb_hpc.cost): the rule, the Scheduler's use of it, its bookkeeping, the risk-aware order, the
spread of a fit, and what it changes in a simulated run."""

import math
import random
import types

import pytest

from qcmb_hpc.config import LoadBalanceStrategy, ParallelConfig, config_from_environment
from qcmb_hpc.cost import (
    DEFAULT_SPREAD,
    RISK_Z,
    CostModel,
    fit_power_law,
    shrunk_spread,
    task_risk,
    upper_quantile,
)
from qcmb_hpc.schedule import TAIL_SHARE, Scheduler, largest_first, may_queue
from qcmb_hpc.simulate import noisy, simulate
from qcmb_hpc.testing.inputs import water_cluster

S = LoadBalanceStrategy


# ------------------------------------------------------------------------------------------------
# the rule
# ------------------------------------------------------------------------------------------------


def test_may_queue_rule():
    assert may_queue(0.0, 1e9, 1.0, 4)  # a worker holding nothing always gets a task
    # 4 workers, 40 s of open work: 10 s each; the share of it a held pair may take
    limit = TAIL_SHARE * 10.0
    assert may_queue(limit / 2, limit / 2, 40.0, 4)
    assert not may_queue(limit / 2, limit / 2 + 1e-6, 40.0, 4)
    # the same pair is refused once the time left shrinks
    assert may_queue(1.0, 1.0, 40.0, 4) and not may_queue(1.0, 1.0, 8.0, 4)
    assert may_queue(1.0, 1.0, 8.0, 4, share=1.0)
    # the slack: a share of the run's balanced time (all of its work over the workers), left at the end
    assert not may_queue(1.0, 1.0, 0.0, 4, total_work=400.0, slack=0.0)
    assert may_queue(1.0, 1.0, 0.0, 4, total_work=400.0, slack=0.02)  # 2 ≤ 0.02 · 100
    assert not may_queue(1.0, 1.1, 0.0, 4, total_work=400.0, slack=0.02)


def test_upper_quantile_and_shrinkage():
    assert upper_quantile(0.0) == 1.0  # exact estimates: the estimate is its own upper quantile
    assert upper_quantile(0.3) == pytest.approx(math.exp(RISK_Z * 0.3))
    assert upper_quantile(0.5) > upper_quantile(0.3)
    assert shrunk_spread(None, 0) == DEFAULT_SPREAD  # nothing measured: the default
    assert shrunk_spread(0.1, 0) == DEFAULT_SPREAD
    few, many = shrunk_spread(0.1, 3), shrunk_spread(0.1, 3000)
    assert 0.1 < many < few < DEFAULT_SPREAD  # pooled with the default, the more samples the nearer
    assert many == pytest.approx(0.1, abs=1e-3)


# ------------------------------------------------------------------------------------------------
# the Scheduler
# ------------------------------------------------------------------------------------------------


def test_the_two_largest_do_not_share_a_worker():
    """Today's first round: each worker is topped up to running + 1 queued, so the largest and the
    second largest land on one worker. With the guard they go to two."""
    costs = {0: 50.0, 1: 49.0, **{i: 10.0 for i in range(2, 22)}}  # 4 workers: ~75 s each
    off = Scheduler(costs, [0, 1, 2, 3], S.DYNAMIC, prefetch=1)
    assert off.assign(0) == [0, 1]
    on = Scheduler(costs, [0, 1, 2, 3], S.DYNAMIC, prefetch=1, tail_guard=True)
    assert on.assign(0) == [0]  # 50 + 49 > 0.7 · 75: nothing waits behind the largest
    assert on.assign(1) == [1]
    assert on.assign(2) == [2, 3]  # small enough: prefetch as before
    assert on.assign(0) == []  # still holding the largest


def test_prefetch_fades_out_as_the_run_ends():
    costs = {i: 1.0 for i in range(40)}
    s = Scheduler(costs, [0, 1], S.DYNAMIC, prefetch=1, tail_guard=True)
    depth = []  # tasks the worker holds after each top-up
    for _ in range(40):
        for w in (0, 1):
            s.assign(w)
        depth.append(len(s.sent[0]))
        for w in (0, 1):
            if s.sent[w]:
                s.completed(w, s.sent[w][0])
    # 20 each: queued early (pair ≤ 0.7 of the time left), one at a time for the last few
    assert depth[:10] == [2] * 10
    assert 1 in depth and depth.index(1) >= 14
    assert set(depth[depth.index(1):]) <= {0, 1}
    assert s.pending == 0 and s._open == pytest.approx(0.0)


def test_zero_spread_keeps_the_estimates_order():
    """With exact estimates (every risk factor 1) the queue is the estimates' order."""
    rng = random.Random(5)
    costs = {i: rng.choice([1.0, 2.0, 3.0]) * rng.uniform(0.5, 1.5) for i in range(60)}
    s = Scheduler(costs, [0], S.DYNAMIC, prefetch=0, tail_guard=True, risk=lambda tid: 1.0)
    order = []
    while True:
        got = s.assign(0)
        if not got:
            break
        order += got
        s.completed(0, got[0])
    assert order == largest_first(costs)


def test_a_noisier_model_chemistry_goes_first():
    """Order by the upper quantile: across model chemistries the noisier one goes earlier; within
    one, the estimates' order stands."""
    costs = {0: 10.0, 1: 8.0, 2: 6.0, 3: 5.0}
    risk = {0: 1.1, 1: 1.1, 2: 2.0, 3: 2.0}  # tasks 2, 3: a model chemistry whose estimates scatter
    s = Scheduler(costs, [0], S.DYNAMIC, prefetch=0, tail_guard=True, risk=risk.__getitem__)
    order = []
    for _ in range(4):
        got = s.assign(0)
        order += got
        s.completed(0, got[0])
    assert order == [2, 0, 3, 1]  # 12, 11, 10, 8.8
    plain = Scheduler(costs, [0], S.DYNAMIC, prefetch=0, risk=risk.__getitem__)  # no guard: no risk
    assert plain.assign(0) == [0]


def test_requeued_and_reordered_work_keeps_the_upper_quantile_order():
    costs = {0: 10.0, 1: 8.0, 2: 6.0}
    risk = {0: 1.0, 1: 1.0, 2: 2.0}
    s = Scheduler(costs, [0, 1], S.DYNAMIC, prefetch=0, tail_guard=True, risk=risk.__getitem__)
    assert s.assign(0) == [2]
    s.remove_worker(0)  # its task goes back, and still comes first
    assert s.assign(1) == [2]
    s.completed(1, 2)
    s.reorder({0: 1.0, 1: 8.0})
    assert s.assign(1) == [1]
    assert s._open == pytest.approx(8.0 + 1.0)


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_guard_bookkeeping_through_steals_failures_and_losses(prefetch):
    """Drive a guarded scheduler through completions, failures with retries, steals and a lost
    worker: every task runs once, and the guard's state ends empty (no drift)."""
    rng = random.Random(prefetch)
    costs = {i: rng.lognormvariate(0, 1) for i in range(200)}
    workers = list(range(6))
    s = Scheduler(costs, workers, S.DYNAMIC, stealing=True, prefetch=prefetch, tail_guard=True, risk=lambda t: 1.0 + (t % 3) / 2)
    done, failed_once, inflight = set(), set(), {}
    for step in range(100000):
        for victim, ids in list(inflight.items()):
            del inflight[victim]
            queue = list(s.sent.get(victim, ()))
            given = [t for t in ids if t in queue[1:]]
            s.returned(victim, given, [t for t in ids if t not in given])
        if step == 50 and 5 in s.workers:
            s.remove_worker(5)
            workers = workers[:5]
        for w in workers:
            s.assign(w)
            if s.idle(w) and w not in s.thieves:
                plan = s.steal(w)
                if plan is not None and plan[0] != w:
                    inflight[plan[0]] = plan[1]
            q = s.sent.get(w)
            if q and rng.random() < 0.5:
                t = q[0]
                if t % 17 == 0 and t not in failed_once:
                    failed_once.add(t)
                    s.failed(w, t, retry=True)
                else:
                    assert t not in done
                    done.add(t)
                    s.completed(w, t)
        if len(done) == len(costs) and not inflight:
            break
    assert done == set(costs)
    assert s.pending == 0
    assert s._open == pytest.approx(0.0, abs=1e-9)
    assert not s._held_upper and all(v == 0.0 for v in s._held.values())


def test_static_strategies_have_no_guard():
    costs = {0: 50.0, 1: 49.0, 2: 1.0, 3: 1.0}
    for strategy in (S.STATIC, S.WORK_STEALING):
        s = Scheduler(costs, [0, 1], strategy, prefetch=1, tail_guard=True)
        assert not s.tail_guard


# ------------------------------------------------------------------------------------------------
# the cost model's spread
# ------------------------------------------------------------------------------------------------


def test_fit_spread_is_the_scatter_of_the_log_residuals():
    rng = random.Random(1)
    xs = [rng.uniform(10, 200) for _ in range(3000)]
    exact = fit_power_law([(x, 1e-5 * x**3) for x in xs], 3.5)
    assert exact.spread == pytest.approx(0.0, abs=1e-9) and exact.dof == pytest.approx(2998)
    scattered = fit_power_law([(x, 1e-5 * x**3 * math.exp(rng.gauss(0, 0.4))) for x in xs], 3.5)
    assert scattered.spread == pytest.approx(0.4, abs=0.02)
    # one size only: the exponent is not fitted, one parameter is (one degree of freedom used)
    one = fit_power_law([(50.0, 1.0), (50.0, 2.0), (50.0, 4.0)], 3.5)
    assert one.dof == pytest.approx(2.0) and one.spread == pytest.approx(math.log(2.0))
    assert fit_power_law([(50.0, 1.0)], 3.5).spread is None  # nothing left to measure scatter with


def spec(method="hf", basis="sto-3g"):
    return {"program": "nwchem", "specification": {"model": {"method": method, "basis": basis}, "driver": "energy"}}


FRAGS = [(1,), (2,), (3,), (1, 2), (2, 3), (1, 3), (1, 2, 3)]


def test_cost_model_spread_and_risk_follow_the_samples():
    model = CostModel(water_cluster(3), {"a": spec()})
    key = model.keys["a"]
    assert model.spread(key) == DEFAULT_SPREAD  # before any sample
    assert model.risk("a") == pytest.approx(upper_quantile(DEFAULT_SPREAD))
    rng = random.Random(2)
    for _ in range(200):
        for real in FRAGS:
            x = model.size("a", real, real)
            model.observe("a", real, real, 1e-6 * x**3 * math.exp(rng.gauss(0, 0.05)))
    assert model.refit(force=True)
    assert model.spread(key) < 0.06  # precise estimates, measured: a small spread ...
    assert model.risk("a") == pytest.approx(upper_quantile(model.spread(key)))  # ... and the factor follows (new revision)
    assert model.risk("a") < 1.1


def test_task_risk():
    f = task_risk(None, {})
    assert f(7) == pytest.approx(upper_quantile(DEFAULT_SPREAD))
    model = CostModel(water_cluster(3), {"a": spec(), "b": spec(method="mp2")})
    tasks = {0: types.SimpleNamespace(mc="a"), 1: types.SimpleNamespace(mc="b")}
    g = task_risk(model, tasks)
    assert g(0) == model.risk("a") and g(1) == model.risk("b")


def test_reestimate_when_only_the_upper_quantiles_change_order():
    """Two model chemistries with the same estimates: once one of them proves noisy, its upper
    quantiles go ahead of the other's — a new order for the tail guard, so re-estimates are given."""
    model = CostModel(water_cluster(3), {"a": spec(), "b": spec(method="b3lyp")})  # both x^3.5 by default
    tasks = [types.SimpleNamespace(id=i, mc=mc, real=r, basis=r, cost=1.0) for i, (mc, r) in enumerate([("a", (1, 2)), ("b", (1, 2)), ("a", (1,)), ("b", (1,))])]
    costs = model.estimate_tasks(tasks)
    assert costs[0] == costs[1]
    rng = random.Random(3)
    for mc, sigma in (("a", 0.01), ("b", 0.8)):
        for _ in range(30):
            for real in FRAGS:
                x = model.size(mc, real, real)
                model.observe(mc, real, real, 1e-6 * x**3.5 * math.exp(rng.gauss(0, sigma)))
    assert model.refit(force=True)
    for mc in "ab":  # same medians again: only the spreads differ
        model.fits[model.keys[mc]].prefactor, model.fits[model.keys[mc]].exponent = 1e-6, 3.5
    model.revision += 1
    assert model.spread(model.keys["b"]) > 0.5 > model.spread(model.keys["a"])
    assert model.reestimate(tasks) is not None


# ------------------------------------------------------------------------------------------------
# what it changes in a run (simulated)
# ------------------------------------------------------------------------------------------------


def test_an_under_estimated_largest_fragment_does_not_delay_the_next():
    """100 workers; the largest fragment takes twice its estimate. Without the guard the second
    largest waits behind it on the same worker; with the guard it starts at once elsewhere."""
    est = [50.0, 49.0] + [10.0] * 990  # ~100 s per worker
    act = [100.0] + est[1:]
    kw = dict(actual=act, latency=1e-5, send_cost=0, recv_cost=0, item_cost=0)
    off = simulate(est, 100, tail_guard=False, **kw)
    on = simulate(est, 100, tail_guard=True, **kw)
    assert off.makespan > 145.0  # 100 s, then the 49 s one
    assert on.makespan < 112.0 and on.ratio < 1.1
    assert on.duplicates == 0 and on.never_run == 0


def test_mbe_tail_with_noise_is_shorter_with_the_guard():
    from qcmb_hpc.simulate import mbe_costs

    est, nb = mbe_costs(monomers=16, max_nbody=3, spread=0.35, seed=0)  # 696 fragments
    act = noisy(est, 0.3, seed=1)
    off = simulate(est, 128, actual=act, nbody=nb, tail_guard=False)
    on = simulate(est, 128, actual=act, nbody=nb, tail_guard=True)
    assert on.ratio < off.ratio


def test_the_guard_is_the_default():
    assert ParallelConfig().tail_guard is True
    assert config_from_environment({"QCMB_TAIL_GUARD": "0"}).tail_guard is False
    assert simulate([1.0] * 8, 2).params["tail_guard"] is True
