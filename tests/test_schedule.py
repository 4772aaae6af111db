"""The scheduling policies (qcmb_hpc.schedule): pure functions and the Scheduler state machine."""

import itertools
import random

import pytest

from qcmb_hpc.config import LoadBalanceStrategy
from qcmb_hpc.schedule import (
    Scheduler,
    auto_prefetch,
    choose_strategy,
    largest_first,
    lpt_partition,
    makespan_lower_bound,
    steal_split,
)

S = LoadBalanceStrategy


# ------------------------------------------------------------------------------------------------
# pure functions
# ------------------------------------------------------------------------------------------------


def test_largest_first_ties_in_plan_order():
    costs = {0: 1.0, 1: 5.0, 2: 5.0, 3: 2.0}
    assert largest_first(costs) == [1, 2, 3, 0]
    assert largest_first(costs, [3, 0, 2]) == [2, 3, 0]


def test_lpt_known_partition():
    costs = dict(enumerate([5.0, 4.0, 3.0, 3.0, 3.0]))
    parts = lpt_partition(costs, [0, 1])
    loads = sorted(sum(costs[t] for t in p) for p in parts.values())
    assert loads == [8.0, 10.0]  # LPT: 5|4, 5|4+3, 5+3|4+3, then 3 → 8 | 10
    for p in parts.values():  # each share largest first
        assert [costs[t] for t in p] == sorted((costs[t] for t in p), reverse=True)
    assert sorted(t for p in parts.values() for t in p) == list(range(5))


def _opt(costs, m):
    best = float("inf")
    for assign in itertools.product(range(m), repeat=len(costs)):
        loads = [0.0] * m
        for c, w in zip(costs, assign):
            loads[w] += c
        best = min(best, max(loads))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_lpt_guarantee_against_brute_force(seed):
    rng = random.Random(seed)
    m = rng.choice([2, 3])
    costs = [rng.choice([1, 2, 3, 5, 8]) * rng.uniform(0.8, 1.2) for _ in range(rng.randint(4, 8))]
    parts = lpt_partition(dict(enumerate(costs)), list(range(m)))
    lpt = max(sum(costs[t] for t in p) for p in parts.values())
    assert lpt <= (4 / 3 - 1 / (3 * m)) * _opt(costs, m) + 1e-9


def test_lpt_more_workers_than_tasks_and_no_workers():
    parts = lpt_partition({0: 1.0, 1: 2.0}, [0, 1, 2, 3])
    assert sorted(len(p) for p in parts.values()) == [0, 0, 1, 1]
    assert lpt_partition({0: 1.0}, []) == {}


def test_choose_strategy_rule():
    assert choose_strategy([1.0] * 10, 4) == S.DYNAMIC  # < 8 tasks per worker
    assert choose_strategy([1.0] * 1000, 1) == S.DYNAMIC  # one worker
    assert choose_strategy([1.0 + 0.01 * (i % 7) for i in range(64 * 4)], 4) == S.WORK_STEALING  # many, similar
    skewed = [1.0] * 200 + [50.0] * 56  # many but skewed (cv ≥ 0.5)
    assert choose_strategy(skewed, 4) == S.DYNAMIC
    assert choose_strategy([1.0] * 100, 4) == S.DYNAMIC  # 25 per worker: not "many"
    assert choose_strategy([0.0] * 600, 4) == S.WORK_STEALING  # zero costs do not divide by zero


def test_adaptive_resolves_in_the_scheduler():
    s = Scheduler({i: 1.0 for i in range(1000)}, [0, 1, 2], S.ADAPTIVE)
    assert s.strategy == S.WORK_STEALING and s.static and s.stealing
    s = Scheduler({i: 1.0 for i in range(5)}, [0, 1, 2], S.ADAPTIVE, stealing=False)
    assert s.strategy == S.DYNAMIC and not s.static and not s.stealing


def test_auto_prefetch():
    assert auto_prefetch(None) == 1
    assert auto_prefetch(0.0) == 1
    assert auto_prefetch(5.0) == 1  # long fragments: one queued is plenty
    assert auto_prefetch(1e-3, round_trip_seconds=2e-3) == 2
    assert auto_prefetch(1e-7) == auto_prefetch(1e-9)  # capped
    assert auto_prefetch(1e-7, cap=64) == 64
    values = [auto_prefetch(10.0**-k) for k in range(0, 9)]
    assert values == sorted(values)  # shorter fragments, deeper queues


def test_steal_split():
    assert steal_split([]) == 0
    assert steal_split([5.0]) == 1
    assert steal_split([1.0, 1.0, 1.0, 1.0]) == 2  # half of the work, from the tail
    assert steal_split([4.0, 1.0, 1.0, 1.0, 1.0]) == 4  # the tail reaches half (4 of 8) after four
    assert steal_split([1.0, 1.0, 6.0]) == 1  # the last task alone is more than half


def test_makespan_lower_bound():
    assert makespan_lower_bound([], 4) == 0.0
    assert makespan_lower_bound([1.0] * 8, 4) == 2.0
    assert makespan_lower_bound([10.0, 1.0, 1.0], 4) == 10.0
    assert makespan_lower_bound([1.0], 0) == 0.0


# ------------------------------------------------------------------------------------------------
# the Scheduler
# ------------------------------------------------------------------------------------------------


def drain(s, workers, rng=None, complete_prob=1.0):
    """Play the coordinator: assign, complete heads, steal when idle. Returns task → worker."""
    rng = rng or random.Random(0)
    ran = {}
    inflight = {}  # victim → (thief, ids) requests in flight (answered next round)
    for _ in range(100000):
        progressed = False
        for victim, ids in list(inflight.items()):
            del inflight[victim]
            queue = list(s.sent.get(victim, ()))
            given = [t for t in ids if t in queue[1:]]
            s.returned(victim, given, [t for t in ids if t not in given])
            progressed = True
        for w in workers:
            got = s.assign(w)
            progressed |= bool(got)
            if s.idle(w):
                plan = s.steal(w)
                if plan is not None:
                    target, ids = plan
                    if target != w:
                        inflight[target] = ids
                    progressed = True
            q = s.sent.get(w)
            if q and rng.random() < complete_prob:
                t = q[0]
                assert t not in ran, f"task {t} ran twice"
                ran[t] = w
                s.completed(w, t)
                progressed = True
        if not progressed and not inflight and all(s.idle(w) for w in workers):
            break
    return ran


@pytest.mark.parametrize("strategy", [S.STATIC, S.DYNAMIC, S.WORK_STEALING, S.ADAPTIVE])
@pytest.mark.parametrize("stealing", [False, True])
def test_every_task_once(strategy, stealing):
    rng = random.Random(3)
    costs = {i: rng.lognormvariate(0, 1) for i in range(300)}
    workers = list(range(7))
    s = Scheduler(costs, workers, strategy, stealing=stealing, prefetch=3)
    ran = drain(s, workers, rng, complete_prob=0.6)
    assert sorted(ran) == sorted(costs)
    assert s.pending == 0
    assert all(s.idle(w) for w in workers)
    assert not s.thieves and not s.stealing_from


def test_dynamic_hands_out_largest_first_and_tops_up():
    costs = {0: 1.0, 1: 3.0, 2: 2.0, 3: 5.0, 4: 4.0}
    s = Scheduler(costs, [0, 1], S.DYNAMIC, stealing=False, prefetch=1)
    assert s.assign(0) == [3, 4]  # running + 1 queued
    assert s.assign(1) == [1, 2]
    assert s.assign(0) == []  # full
    s.completed(0, 3)
    assert s.assign(0) == [0]
    assert s.outstanding(0) == 2


def test_static_follows_the_lpt_plan_and_keeps_to_it_without_stealing():
    costs = {i: float(c) for i, c in enumerate([8, 7, 6, 5, 4, 3, 2, 1])}
    s = Scheduler(costs, [0, 1], S.STATIC, stealing=False, prefetch=0)
    plan = lpt_partition(costs, [0, 1])
    got = {0: [], 1: []}
    for _ in range(8):
        for w in (0, 1):
            ids = s.assign(w)
            got[w] += ids
            for t in ids:
                s.completed(w, t)
    assert got == {0: plan[0], 1: plan[1]}
    # a worker done with its share gets nothing more (no stealing)
    assert s.assign(0) == [] and s.steal(0) is None


def test_steal_moves_unsent_work_at_once():
    costs = {i: 1.0 for i in range(10)}
    s = Scheduler(costs, [0, 1], S.WORK_STEALING, prefetch=0)
    s.planned[1].extend(s.planned[0])  # everything planned for worker 1
    s.planned_load[1] += s.planned_load[0]
    s.planned[0].clear()
    s.planned_load[0] = 0.0
    s._update_load(0)
    s._update_load(1)
    assert s.assign(0) == []
    plan = s.steal(0)
    assert plan is not None
    target, ids = plan
    assert target == 0  # no message to the victim: the tasks go straight to the thief
    assert len(ids) == 5 and s.steals == 1 and s.steal_requests == 0
    assert set(ids).isdisjoint(s.planned[1])
    assert list(s.sent[0]) == ids


def test_steal_from_sent_work_is_a_request_the_victim_confirms():
    costs = {i: 1.0 for i in range(6)}
    s = Scheduler(costs, [0, 1, 2], S.DYNAMIC, prefetch=5)
    assert s.assign(0) == [0, 1, 2, 3, 4, 5]
    assert s.assign(1) == [] and s.idle(1)
    victim, ids = s.steal(1)
    assert victim == 0 and ids == [3, 4, 5]  # the tail, about half; never the head
    assert 1 in s.thieves and s.steal_requests == 1 and s.steals == 0
    assert s.load(0) == pytest.approx(2.0)  # requested work is no longer counted as stealable
    # one request per victim: a second thief finds nothing else to take
    assert s.steal(2) is None
    assert s.steal(1) is None  # and a waiting thief does not ask twice
    # the victim had started 3 meanwhile: it gives 4 and 5, refuses 3
    thief, moved = s.returned(0, [4, 5], [3])
    assert thief == 1 and moved == [4, 5]
    assert list(s.sent[0]) == [0, 1, 2, 3] and list(s.sent[1]) == [4, 5]
    assert s.steals == 1 and not s.thieves and not s.stealing_from
    assert s.load(0) == pytest.approx(3.0)  # 1, 2, 3 unstarted again as far as we know


def test_answer_for_a_vanished_thief_is_requeued():
    costs = {i: float(i + 1) for i in range(4)}
    s = Scheduler(costs, [0, 1], S.DYNAMIC, prefetch=3)
    s.assign(0)
    victim, ids = s.steal(1)
    s.remove_worker(1)
    thief, moved = s.returned(victim, ids)
    assert thief is None and moved == []
    assert sorted(t for _, t in s.central) == sorted(ids)
    s.completed(0, s.sent[0][0])
    assert set(s.assign(0)) <= set(ids) | set(s.sent[0])


def test_cancel_steals_requeues_answers():
    s = Scheduler({i: 1.0 for i in range(4)}, [0, 1], S.DYNAMIC, prefetch=3)
    s.assign(0)
    victim, ids = s.steal(1)
    s.cancel_steals()
    assert not s.thieves
    thief, moved = s.returned(victim, ids)
    assert thief is None and sorted(t for _, t in s.central) == sorted(ids)


def test_unresponsive_worker_keeps_its_next_task():
    """A worker that runs fragments inline reads STEAL only between fragments: by then it has
    started the next one, so a thief may take only what lies behind it."""
    costs = {i: 1.0 for i in range(6)}
    s = Scheduler(costs, [0, 1], S.DYNAMIC, prefetch=2)
    s.set_responsive(0, False)
    assert s.assign(0) == [0, 1, 2]
    assert s.load(0) == pytest.approx(1.0)  # only task 2 is stealable
    victim, ids = s.steal(1)
    assert victim == 0 and ids == [2]
    s.returned(0, [2])
    s2 = Scheduler(costs, [0, 1], S.DYNAMIC, prefetch=1)
    s2.set_responsive(0, False)
    s2.assign(0)  # running + 1 queued: nothing a thief could usefully take
    s2.queue.clear()
    assert s2.load(0) == 0.0 and s2.steal(1) is None


def test_failed_task_is_retried_elsewhere_first():
    s = Scheduler({0: 5.0, 1: 1.0, 2: 1.0}, [0, 1], S.DYNAMIC, stealing=False, prefetch=0)
    assert s.assign(0) == [0]
    s.failed(0, 0, retry=True, avoid={0})
    assert s.assign(0) == [1]  # not the one that failed here
    assert s.assign(1) == [0]  # the retry goes first, on another worker
    s.completed(0, 1)
    s.failed(1, 0, retry=True, avoid={0, 1})  # every worker has tried it: anyone may retry
    assert s.assign(0) == [0]


def test_held_new_work_gives_only_retries_and_steals_nothing():
    s = Scheduler({i: float(10 - i) for i in range(6)}, [0, 1], S.DYNAMIC, stealing=True, prefetch=0)
    assert s.assign(0) == [0] and s.assign(1) == [1]
    s.failed(0, 0, retry=True, avoid={0})
    s.hold_new = True
    assert s.assign(0) == []  # its retry must go elsewhere, and nothing new starts meanwhile
    assert s.steal(0) is None
    s.completed(1, 1)
    assert s.assign(1) == [0] and s.assign(1) == []  # the retry; then nothing (not task 2)
    s.hold_new = False
    assert s.assign(0) == [2]


def test_remove_worker_hands_its_work_out_again():
    costs = {i: float(i + 1) for i in range(8)}
    s = Scheduler(costs, [0, 1], S.STATIC, stealing=False, prefetch=1)
    sent = s.assign(0)
    planned = list(s.planned[0])
    lost = s.remove_worker(0, drop=[sent[0]])
    assert lost == sent
    again = sorted(t for _, t in s.central)
    assert again == sorted(sent[1:] + planned)  # the dropped one is not handed out again
    assert 0 not in s.workers and s.steal(0) is None and s.assign(0) == []


def test_reorder_changes_what_comes_next():
    s = Scheduler({0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}, [0], S.DYNAMIC, stealing=False, prefetch=0)
    assert s.assign(0) == [3]
    s.reorder({0: 10.0, 1: 0.5, 2: 0.1})
    s.completed(0, 3)
    assert s.assign(0) == [0]
    s.completed(0, 0)
    assert s.assign(0) == [1]
    st = Scheduler({i: float(i) for i in range(6)}, [0, 1], S.STATIC, stealing=False)
    st.reorder({i: float(10 - i) for i in range(6)})
    for plan in st.planned.values():
        assert [st.costs[t] for t in plan] == sorted((st.costs[t] for t in plan), reverse=True)


def test_requeued_work_merges_with_the_sorted_queue():
    s = Scheduler({0: 1.0, 1: 5.0, 2: 3.0}, [0], S.DYNAMIC, stealing=False, prefetch=0)
    s.requeue([])
    assert s.assign(0) == [1]
    s.completed(0, 1)
    s.requeue([1])  # handed back (say its worker vanished): the largest again
    assert s.assign(0) == [1]
    s.completed(0, 1)
    assert s.assign(0) == [2]


@pytest.mark.parametrize("seed", range(6))
def test_incremental_loads_match_a_recount(seed):
    """The stealable load kept incrementally (O(1) per change) equals an exact recount after any
    sequence of assignments, completions, steals, answers and failures."""
    rng = random.Random(seed)
    costs = {i: rng.choice([0.1, 1.0, 7.0]) * rng.uniform(0.5, 1.5) for i in range(120)}
    workers = list(range(5))
    strategy = rng.choice([S.STATIC, S.DYNAMIC, S.WORK_STEALING])
    s = Scheduler(costs, workers, strategy, prefetch=rng.choice([1, 3, 8]))
    for w in workers:
        s.set_responsive(w, rng.random() < 0.6)
    inflight = {}
    for _ in range(600):
        w = rng.choice(workers)
        op = rng.random()
        if op < 0.35:
            s.assign(w)
        elif op < 0.7 and s.sent[w]:
            t = s.sent[w][0]
            if rng.random() < 0.1:
                s.failed(w, t, retry=True, avoid={w})
            else:
                s.completed(w, t)
        elif op < 0.85 and s.idle(w):
            plan = s.steal(w)
            if plan and plan[0] != w:
                inflight[plan[0]] = plan[1]
        elif inflight:
            victim = rng.choice(list(inflight))
            ids = inflight.pop(victim)
            q = list(s.sent[victim])
            given = [t for t in ids if t in q[2:]]
            s.returned(victim, given, [t for t in ids if t not in given])
        for v in workers:
            exact = s._load.get(v, 0.0)
            s._update_load(v)
            assert s._load.get(v, 0.0) == pytest.approx(exact, abs=1e-9)


def test_refused_thief_is_handed_back_to_be_served_again():
    s = Scheduler({i: 1.0 for i in range(4)}, [0, 1], S.DYNAMIC, prefetch=3)
    s.assign(0)
    victim, ids = s.steal(1)
    thief, moved = s.returned(victim, [], ids)  # everything had started
    assert thief == 1 and moved == []  # the caller must look for work for the thief again
    assert 1 not in s.thieves and s.idle(1)
    assert list(s.sent[0]) == [0, 1, 2, 3]


def test_retry_is_not_stolen_back_to_a_worker_it_failed_on():
    """A retried task waiting (unstarted) at worker 1 must not be stolen by idle worker 0, where it
    failed; once it has failed on every worker, any worker may take it."""
    from qcmb_hpc.config import LoadBalanceStrategy
    from qcmb_hpc.schedule import Scheduler

    s = Scheduler({0: 5.0, 1: 1.0, 2: 1.0, 3: 1.0}, [0, 1], LoadBalanceStrategy.DYNAMIC, stealing=True, prefetch=1)
    assert s.assign(0) == [0, 1]
    assert s.assign(1) == [2, 3]
    s.failed(0, 0, retry=True, avoid=[0])  # task 0 failed on worker 0
    assert s.assign(0) == []  # ... so worker 0 does not get it back
    s.completed(1, 2)
    assert s.assign(1) == [0]  # worker 1 does, behind its running task 3
    s.completed(0, 1)  # worker 0 is idle now
    assert s.steal(0) is None  # the only unstarted work is task 0: not for worker 0
    s.completed(1, 3)
    s.failed(1, 0, retry=True, avoid=[0, 1])  # failed on every worker
    assert s.assign(0) == [0]
