"""Scheduling policy: which task goes to which worker, and which tasks an idle worker steals.

Pure: no I/O, no clocks, no MPI. The coordinator tells a :class:`Scheduler` what happened (a worker
joined, a task finished or failed, a steal was answered) and asks it what to send. Every mode uses
it; so does the simulation (:mod:`qcmb_hpc.simulate`), which is how behaviour at thousands of workers
is predicted.

Strategies (``LoadBalanceStrategy``):

* ``STATIC`` — a largest-processing-time-first (LPT) partition is computed up front: each task goes
  to the worker with the least estimated work so far; each worker runs its share largest first.
* ``DYNAMIC`` — one queue, largest estimate first; a worker is topped up whenever it has fewer than
  ``1 + prefetch`` tasks outstanding, so it never waits on a round trip.
* ``WORK_STEALING`` — static placement, with stealing.
* ``ADAPTIVE`` — :func:`choose_strategy` picks one per run.

Stealing (``work_stealing=True``, or ``WORK_STEALING``): when a worker has nothing left to receive,
the scheduler picks the worker with the most *unstarted* estimated work (the victim) and takes about
half of it, from the victim's tail (its smallest tasks; the owner works from the head). Work the
coordinator has not sent yet moves at once. Work already sent to the victim is only *requested*:
the victim gives back the tasks it has not started (RETURNED) and keeps the rest, so no task ever
runs twice. One request per victim is in flight at a time. A worker that runs its fragments
inline (not isolated in a child process; its READY says so) reads a STEAL only when its running
fragment ends, by which time it has started the next one: from such a worker only what lies behind
its next task is stealable (:meth:`Scheduler.set_responsive`) — asking for the next task itself only
made the thief wait a whole fragment for it (measured: idle gaps of up to 0.2 s per steal with 16
inline workers). A refused request hands the thief back to the coordinator to be served again.

The tail guard (``tail_guard=True``; on in every run unless ``ParallelConfig.tail_guard`` is
off; it changes DYNAMIC — and ADAPTIVE when that picks DYNAMIC — not the static strategies). With
estimates that are only estimates, what a schedule loses at scale is its end. Without the guard
DYNAMIC tops every worker up to its running task plus ``prefetch`` queued from the first message
on, so the large fragments go out in pairs, the second of each queued behind the first on one
worker. Simulated for (H2O)64 4-body (679,120 fragments) on 65,536 workers with 30 % lognormal
noise between estimate and time, the fragment that ended last was the 112th largest estimate
(45 s): it waited 89 s behind its neighbour, then ran 92 s — makespan / LB 1.279. Stealing cannot
help: nobody is idle that early. Two rules:

* **Queue behind a worker only what will fit.** A task is queued behind the work a worker
  already holds only if all of it, at its upper quantile (estimate × ``risk``: the 90th
  percentile from the cost model's residual spread, :func:`qcmb_hpc.cost.upper_quantile`), ends
  within :data:`TAIL_SHARE` of the balanced time left — the estimated work not yet finished over
  the workers — plus :data:`TAIL_SLACK` of the run's (:func:`may_queue`). A worker holding
  nothing always gets a task. Early in a big run this refuses only pairs of the largest
  fragments; as the run nears its end the time left shrinks and prefetch fades out, so the tail
  is placed one task at a time, each to the first worker that frees up (list scheduling, whose
  end is within one task of the balanced time). What it costs is one round trip before each such
  task (the worker reports, then gets the next): a few per worker per run.
* **Order by the upper quantile**, not the estimate: ``cost × risk``. Within one model chemistry
  that is the estimates' order (one factor); across model chemistries a noisier one goes earlier,
  so what could run longest starts first. With exact estimates (zero residual spread) the order
  is the estimates'.

``benchmarks/bench_simulation.py`` runs both policies side by side (the README has its table).

Costs per event are O(changes), not O(workers) or O(tasks): the stealable load of each worker is
kept incrementally, a max-heap of loads (lazy) picks the victim, and DYNAMIC's queue is a list
sorted once and popped from its end (requeued work goes to a small heap beside it). This is what
lets the simulation (:mod:`qcmb_hpc.simulate`) run ~680k tasks on 64k workers.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from .config import LoadBalanceStrategy

__all__ = [
    "TaskDistributor",
    "PrefetchPolicy",
    "largest_first",
    "lpt_partition",
    "choose_strategy",
    "auto_prefetch",
    "steal_split",
    "makespan_lower_bound",
    "may_queue",
    "queue_limit",
    "TAIL_SHARE",
    "Scheduler",
]

#: the tail guard queues work behind a worker only while it ends, at its upper quantile, within
#: this share of the balanced time left. Chosen in the simulation ((H2O)64 4-body, 30 % noise):
#: 0.5 and 0.7 both reach 1.11 at 65,536 workers, 0.7 costs less with perfect estimates (1.039
#: against 1.047: fewer round trips); 1.0 let an under-estimated large fragment and the next one
#: pair up ((H2O)40 on 9,851 workers: 1.141 against 1.083)
TAIL_SHARE = 0.7
#: ... plus this share of the run's balanced time: an overrun past the balanced end smaller than
#: 1 % of the run is not worth the round trip the guard costs (the task waits for its worker to
#: report and be served). Simulated on the measured 4–16-worker workload (40 draws each): without
#: it the guard lost 0.0007 at 4 workers with ten times the latency; with it, nothing on average
#: at 4–16 workers and either latency, and the same gains at 16 workers and at scale
TAIL_SLACK = 0.01


# ------------------------------------------------------------------------------------------------
# pure functions
# ------------------------------------------------------------------------------------------------


def largest_first(costs: Mapping[int, float], ids: Optional[Iterable[int]] = None) -> List[int]:
    """Task ids by decreasing estimated cost (ties: plan order)."""
    ids = list(costs) if ids is None else list(ids)
    return sorted(ids, key=lambda i: (-costs[i], i))


def lpt_partition(costs: Mapping[int, float], workers: Sequence[int]) -> Dict[int, List[int]]:
    """Largest-processing-time-first partition: each task (largest first) to the least-loaded
    worker. Within a worker, tasks stay largest first. Guarantee: makespan ≤ (4/3 − 1/3m)·OPT."""
    parts: Dict[int, List[int]] = {w: [] for w in workers}
    if not workers:
        return parts
    heap = [(0.0, k, w) for k, w in enumerate(workers)]
    heapq.heapify(heap)
    for tid in largest_first(costs):
        load, k, w = heapq.heappop(heap)
        parts[w].append(tid)
        heapq.heappush(heap, (load + costs[tid], k, w))
    return parts


def choose_strategy(costs: Sequence[float], n_workers: int) -> LoadBalanceStrategy:
    """The ADAPTIVE rule.

    * fewer than 8 tasks per worker → DYNAMIC (hand out on demand; a static split of few tasks is
      at the mercy of every estimate);
    * many tasks (≥ 64 per worker) of similar estimated cost (coefficient of variation < 0.5) →
      WORK_STEALING (a static LPT split needs almost no messages; stealing mends the estimates);
    * otherwise → DYNAMIC (skewed costs: largest first, on demand).
    """
    n = len(costs)
    if n_workers <= 1 or n < 8 * n_workers:
        return LoadBalanceStrategy.DYNAMIC
    mean = sum(costs) / n
    var = sum((c - mean) ** 2 for c in costs) / n
    cv = math.sqrt(var) / mean if mean > 0 else 0.0
    if n >= 64 * n_workers and cv < 0.5:
        return LoadBalanceStrategy.WORK_STEALING
    return LoadBalanceStrategy.DYNAMIC


def auto_prefetch(mean_task_seconds: Optional[float], round_trip_seconds: float = 2e-3, cap: int = 1024) -> int:
    """Tasks to keep queued on a worker beyond the running one: enough to cover a coordinator round
    trip (with margin) — 1 for fragments that take milliseconds or more, up to ``cap`` for tiny ones.
    (The cap was 64: with no-op fragments a worker then emptied its queue and sat out a whole round
    trip every 65 tasks; 1024 keeps three MPI workers busy at tens of thousands of fragments/s.)"""
    if not mean_task_seconds or mean_task_seconds <= 0:
        return 1
    return max(1, min(cap, math.ceil(round_trip_seconds / mean_task_seconds)))


class PrefetchPolicy:
    """How many tasks each worker keeps queued beyond its running one: ``fixed`` if given, else
    :func:`auto_prefetch` of a running mean of this run's fragment times (an exponential average,
    so a run whose fragments shrink — largest first — follows them down)."""

    def __init__(self, fixed: Optional[int] = None):
        self.fixed = fixed
        self.mean: Optional[float] = None

    @property
    def depth(self) -> int:
        return self.fixed if self.fixed is not None else auto_prefetch(self.mean)

    def observe(self, seconds: float) -> int:
        """One more fragment took ``seconds``; returns the depth to use now."""
        self.mean = seconds if self.mean is None else 0.9 * self.mean + 0.1 * seconds
        return self.depth


def steal_split(costs: Sequence[float]) -> int:
    """How many tasks to take from the *tail* of a victim's unstarted list ``costs`` (head first):
    the fewest whose cost reaches half the total, at least one."""
    total = sum(costs)
    taken = 0.0
    k = 0
    for c in reversed(costs):
        if k > 0 and taken >= total / 2:
            break
        taken += c
        k += 1
    return max(1, k) if costs else 0


def queue_limit(
    open_work: float,
    n_workers: int,
    total_work: float = 0.0,
    share: Optional[float] = None,
    slack: Optional[float] = None,
) -> float:
    """How much upper-quantile work a worker may hold with more queued behind it (see
    :func:`may_queue`): ``(share·open_work + slack·total_work) / n_workers``."""
    share = TAIL_SHARE if share is None else share
    slack = TAIL_SLACK if slack is None else slack
    return (share * open_work + slack * total_work) / max(1, n_workers)


def may_queue(
    held: float,
    upper: float,
    open_work: float,
    n_workers: int,
    total_work: float = 0.0,
    share: Optional[float] = None,
    slack: Optional[float] = None,
) -> bool:
    """The tail guard's rule: may a task whose upper-quantile time is ``upper`` wait behind work
    whose upper-quantile times sum to ``held``? Yes if the worker holds nothing, or if all of it
    ends within ``share`` of the balanced time left (``open_work``, the estimated work not
    finished yet, over the workers) plus ``slack`` of the run's balanced time (``total_work``, all
    of the run's estimated work, over the workers): ``held + upper ≤`` :func:`queue_limit`.
    ``share`` and ``slack``: :data:`TAIL_SHARE` and :data:`TAIL_SLACK` unless given."""
    return held <= 0.0 or held + upper <= queue_limit(open_work, n_workers, total_work, share, slack)


def makespan_lower_bound(seconds: Sequence[float], n_workers: int) -> float:
    """LB = max(sum / workers, longest)."""
    if not seconds or n_workers < 1:
        return 0.0
    return max(sum(seconds) / n_workers, max(seconds))


# ------------------------------------------------------------------------------------------------
# the scheduler state machine
# ------------------------------------------------------------------------------------------------


class Scheduler:
    """Placement state for one run. Task ids are ints; ``costs[id]`` is the estimate."""

    def __init__(
        self,
        costs: Mapping[int, float],
        workers: Sequence[int],
        strategy: LoadBalanceStrategy = LoadBalanceStrategy.DYNAMIC,
        stealing: bool = True,
        prefetch: int = 1,
        tail_guard: bool = False,
        risk: Optional[Callable[[int], float]] = None,
    ):
        """``tail_guard`` (DYNAMIC only): the two rules of the module docstring; ``risk``: task id →
        the factor from its estimate to its upper quantile (``None``: 1, the estimates as they are)."""
        self.costs: Dict[int, float] = dict(costs)
        if strategy == LoadBalanceStrategy.ADAPTIVE:
            strategy = choose_strategy(list(self.costs.values()), len(workers))
        self.strategy = strategy
        self.stealing = stealing or strategy == LoadBalanceStrategy.WORK_STEALING
        self.static = strategy in (LoadBalanceStrategy.STATIC, LoadBalanceStrategy.WORK_STEALING)
        self.prefetch = max(0, int(prefetch))
        self.tail_guard = bool(tail_guard) and not self.static
        self._risk = risk if self.tail_guard else None
        # the tail guard's state: estimated work not finished (pending + at workers), and per
        # worker the upper-quantile time of what it holds, summed from each held task's value at
        # sending (kept per task so a changing risk factor leaves no drift)
        self._open = float(sum(self.costs.values()))
        self._total = self._open  # the run's estimated work (may_queue's slack is a share of it)
        self._held: Dict[int, float] = {}
        self._held_upper: Dict[int, float] = {}
        self.workers: List[int] = []
        self.sent: Dict[int, Deque[int]] = {}  # at the worker, FIFO; the head is (probably) running
        self.planned: Dict[int, Deque[int]] = {}  # STATIC: this worker's share, not sent yet
        self.planned_load: Dict[int, float] = {}
        # DYNAMIC's queue, sorted once so the next task is popped from the end in O(1) (a heap of
        # 680k entries costs ~20 comparisons per pop); work handed back later (requeued) goes to
        # the small heap ``central``; the next task is the better of the two heads
        self.queue: List[Tuple[float, int]] = []  # (-cost, id), descending: the next one is last
        self.central: List[Tuple[float, int]] = []  # heap of (-cost, id): requeued work
        self.retry: Deque[Tuple[int, Set[int]]] = collections.deque()  # (id, workers to avoid)
        self.avoid: Dict[int, Set[int]] = {}  # retried task → workers it failed on
        # no new work, only retries (and no stealing): set by the coordinator while retries decide
        # whether failures are systematic (:func:`qcmb_hpc.failures.hold_new_fragments`)
        self.hold_new = False
        self.stealing_from: Dict[int, Tuple[int, List[int]]] = {}  # victim → (thief, ids requested)
        self.thieves: Set[int] = set()  # workers waiting for a steal answer
        self.steals = 0  # steals that moved work
        self.steal_requests = 0  # STEAL messages planned
        self._load: Dict[int, float] = {}
        self._load_heap: List[Tuple[float, int]] = []  # lazy max-heap of (-load, worker)
        # per worker: estimated cost of its unstarted sent work (sent[w][skip:]) not requested by a
        # thief, kept incrementally (a worker can hold hundreds of tiny tasks: recounting them per
        # result was O(prefetch))
        self._unstarted: Dict[int, float] = {}
        self._requested: Dict[int, Set[int]] = {}  # victim → ids requested from it (in flight)
        # how many tasks at the head of sent[w] count as started: 1, or 2 for a worker that reads
        # messages only between fragments (see set_responsive)
        self._skip: Dict[int, int] = {}
        if self.static:
            for w, part in lpt_partition(self.costs, list(workers)).items():
                self.planned[w] = collections.deque(part)
                self.planned_load[w] = sum(self.costs[t] for t in part)
        else:
            self.queue = self._sorted_queue(self.costs)
        for w in workers:
            self.workers.append(w)
            self.sent[w] = collections.deque()
            self.planned.setdefault(w, collections.deque())
            self.planned_load.setdefault(w, 0.0)
            self._update_load(w)

    # -- bookkeeping ------------------------------------------------------------------------------
    def upper(self, tid: int) -> float:
        """The upper-quantile estimate of ``tid`` (``cost × risk``; the cost without a tail guard):
        what DYNAMIC's queue is ordered by."""
        risk = self._risk
        return self.costs[tid] * risk(tid) if risk is not None else self.costs[tid]

    def _sorted_queue(self, ids: Iterable[int]) -> List[Tuple[float, int]]:
        """DYNAMIC's queue of ``ids``: (-upper, id), descending, so the next task is the last."""
        if self._risk is None:
            costs = self.costs
            return sorted(((-costs[i], i) for i in ids), reverse=True)
        upper = self.upper
        return sorted(((-upper(i), i) for i in ids), reverse=True)

    def _hold(self, w: int, ids: Sequence[int], uppers: Optional[Sequence[float]] = None) -> None:
        """Tail guard: ``ids`` are now held by ``w`` (``uppers``: their :meth:`upper`, if known)."""
        if uppers is None:
            uppers = [self.upper(t) for t in ids]
        self._held_upper.update(zip(ids, uppers))
        self._held[w] = self._held.get(w, 0.0) + sum(uppers)

    def _release(self, w: int, tid: int, finished: bool) -> None:
        """Tail guard: ``w`` no longer holds ``tid`` (``finished``: it will not run again)."""
        u = self._held_upper.pop(tid, None)
        if u is None:
            return
        self._held[w] = self._held.get(w, 0.0) - u if self.sent.get(w) else 0.0  # (exact 0 when empty)
        if finished:
            self._open = max(0.0, self._open - self.costs[tid])

    def _update_load(self, w: int) -> None:
        """Recount ``w``'s stealable load exactly: planned work + sent work after the head, minus
        work already requested by a thief (O(outstanding); the frequent changes use the O(1)
        updates in :meth:`_sent_extend` and :meth:`_remove_sent`)."""
        sent = self.sent.get(w)
        if sent is None:
            return
        skip = self._skip.get(w, 1)
        if len(sent) <= skip:
            unstarted = 0.0
        else:
            requested = self._requested.get(w)
            if requested:
                unstarted = sum(self.costs[t] for t in itertools.islice(sent, skip, None) if t not in requested)
            else:
                unstarted = sum(map(self.costs.__getitem__, itertools.islice(sent, skip, None)))
        self._unstarted[w] = unstarted
        self._set_load(w)

    def _sent_extend(self, w: int, ids: List[int], uppers: Optional[List[float]] = None) -> None:
        """Send ``ids`` to ``w`` (bookkeeping): all but those that will start at once are unstarted
        work (``uppers``: their :meth:`upper`, if the caller has them)."""
        q = self.sent[w]
        skip = max(0, self._skip.get(w, 1) - len(q))
        q.extend(ids)
        if self.tail_guard:
            self._hold(w, ids, uppers)
        if len(ids) > skip:
            self._unstarted[w] = self._unstarted.get(w, 0.0) + sum(map(self.costs.__getitem__, ids[skip:]))
        self._set_load(w)

    def set_responsive(self, w: int, responsive: bool) -> None:
        """Whether ``w`` answers a STEAL while a fragment runs (it runs fragments in a child process)
        or only when the fragment has ended (it runs them inline). From a worker of the second kind
        a thief can usefully take only what lies *behind* the next task — the next one will have
        started by the time the request is read; asking for it would only make the thief wait."""
        skip = 1 if responsive else 2
        if self._skip.get(w, 1) != skip:
            self._skip[w] = skip
            self._update_load(w)

    def _set_load(self, w: int) -> None:
        load = self.planned_load.get(w, 0.0) + self._unstarted.get(w, 0.0)
        if load != self._load.get(w):
            self._load[w] = load
            if load > 0:
                heapq.heappush(self._load_heap, (-load, w))
            if len(self._load_heap) > 4 * len(self.workers) + 64:
                self._load_heap = [(-l, v) for v, l in self._load.items() if l > 0]
                heapq.heapify(self._load_heap)

    @property
    def pending(self) -> int:
        """Tasks not yet sent to any worker."""
        return len(self.queue) + len(self.central) + len(self.retry) + sum(len(p) for p in self.planned.values())

    def outstanding(self, w: int) -> int:
        return len(self.sent.get(w, ()))

    def idle(self, w: int) -> bool:
        return not self.sent.get(w)

    def load(self, w: int) -> float:
        """Estimated unstarted work on or planned for ``w``."""
        return self._load.get(w, 0.0)

    # -- giving out work --------------------------------------------------------------------------
    def assign(self, w: int) -> List[int]:
        """Tasks to send to ``w`` now, topping it up to ``1 + prefetch`` outstanding."""
        if w not in self.sent:
            return []
        room = 1 + self.prefetch - len(self.sent[w])
        out: List[int] = []
        # the tail guard: a task may queue behind held work only if it fits (may_queue; the limit
        # does not change within this call, and each task's upper quantile is computed once)
        guard = self.tail_guard
        held = self._held.get(w, 0.0) if guard and self.sent[w] else 0.0
        limit = queue_limit(self._open, len(self.workers), self._total) if guard else 0.0
        uppers: List[float] = []
        while room > 0:
            tid = self._next_for(w, take=not guard)
            if tid is None:
                break
            if guard:
                u = self.upper(tid)
                if held > 0.0 and held + u > limit:
                    break
                self._next_for(w)
                uppers.append(u)
                held += u
            out.append(tid)
            room -= 1
        if out:
            self._sent_extend(w, out, uppers if guard else None)
        return out

    def _next_for(self, w: int, take: bool = True) -> Optional[int]:
        """The next task for ``w``, taken from its queue (``take=False``: only looked at)."""
        # retries first, on a worker that has not tried them (unless every worker left has)
        for k, (tid, _) in enumerate(self.retry):
            if not self._avoids(tid, w):
                if take:
                    del self.retry[k]
                return tid
        if self.hold_new:
            return None
        plan = self.planned.get(w)
        if plan:
            if not take:
                return plan[0]
            tid = plan.popleft()
            self.planned_load[w] -= self.costs[tid]
            return tid
        queue, central = self.queue, self.central
        if queue:
            if central and central[0] < queue[-1]:
                return heapq.heappop(central)[1] if take else central[0][1]
            return queue.pop()[1] if take else queue[-1][1]
        if central:
            return heapq.heappop(central)[1] if take else central[0][1]
        return None

    def _victim(self, thief: int) -> Optional[int]:
        """The worker with the most stealable work, other than the thief and those already
        answering a steal with nothing unsent left. Amortised O(log workers): a worker answering
        a steal leaves the heap until its answer puts it back (:meth:`returned`) — setting such
        workers aside and back on every call made the end of a run O(workers) per steal."""
        heap = self._load_heap
        mine = None
        best = None
        while heap:
            neg, v = heap[0]
            if v not in self.sent or self._load.get(v) != -neg or neg >= 0:
                heapq.heappop(heap)  # stale
                continue
            if v in self.stealing_from and not self.planned.get(v):
                heapq.heappop(heap)  # back when it has answered
                continue
            if v == thief:
                mine = heapq.heappop(heap)
                continue
            best = v
            break
        if mine is not None:
            heapq.heappush(heap, mine)
        return best

    def steal(self, thief: int) -> Optional[Tuple[int, List[int]]]:
        """For an idle ``thief`` with nothing left to receive: either move unsent work to it directly
        — returns ``(thief, ids)``: send them TASKS — or plan a request to a victim — returns
        ``(victim, ids)``: send the victim STEAL(ids). ``None`` if nothing is worth taking."""
        if not self.stealing or self.hold_new or thief in self.thieves or thief not in self.sent:
            return None
        victim = self._victim(thief)
        if victim is None:
            return None
        plan = self.planned[victim]
        if plan:  # not sent yet: move it now, no message needed
            k = steal_split([self.costs[t] for t in plan])
            ids = [plan.pop() for _ in range(k)][::-1]
            moved = sum(self.costs[t] for t in ids)
            self.planned_load[victim] = self.planned_load[victim] - moved if plan else 0.0
            self._sent_extend(thief, ids)
            self.steals += 1
            self._set_load(victim)
            return thief, ids
        unstarted = list(self.sent[victim])[self._skip.get(victim, 1) :]
        if not unstarted:
            return None
        k = steal_split([self.costs[t] for t in unstarted])
        ids = [t for t in unstarted[-k:] if not self._avoids(t, thief)]  # a retry stays off its old workers
        if not ids:
            return None
        self.stealing_from[victim] = (thief, ids)
        self._requested[victim] = set(ids)
        self._unstarted[victim] = self._unstarted.get(victim, 0.0) - sum(self.costs[t] for t in ids)
        self.thieves.add(thief)
        self.steal_requests += 1
        self._set_load(victim)
        return victim, ids

    def returned(
        self, victim: int, given: Sequence[int], refused: Sequence[int] = ()
    ) -> Tuple[Optional[int], List[int]]:
        """The victim's answer to a STEAL: ``given`` left its queue (``refused`` had started). Returns
        ``(thief, ids)``: send the thief ``ids`` — none if all were refused, and then the thief holds
        nothing and must be served again — or ``(None, [])`` if the thief is gone (the ids are
        requeued)."""
        thief, _ = self.stealing_from.pop(victim, (None, []))
        self._requested.pop(victim, None)
        self.thieves.discard(thief)
        given = list(given)
        if given and victim in self.sent:
            gset = set(given)
            self.sent[victim] = collections.deque(t for t in self.sent[victim] if t not in gset)
            self.steals += 1
            if self.tail_guard:
                for t in given:
                    self._release(victim, t, finished=False)
        self._update_load(victim)
        if self._load.get(victim, 0.0) > 0:  # _victim took it off the heap while it answered
            heapq.heappush(self._load_heap, (-self._load[victim], victim))
        if thief is not None and thief in self.sent:
            if given:
                self._sent_extend(thief, given)
            return thief, given  # (thief, []): refused — the thief is free to look for work again
        self.requeue(given)
        return None, []

    # -- results ----------------------------------------------------------------------------------
    def _remove_sent(self, w: int, tid: int, finished: bool = False) -> None:
        q = self.sent.get(w)
        if q is None:
            return
        if q and q[0] == tid:  # the usual case: the head finished, the next one starts
            q.popleft()
            if self.tail_guard:
                self._release(w, tid, finished)
            skip = self._skip.get(w, 1)
            if len(q) <= skip:
                self._unstarted[w] = 0.0  # (exact again: no drift from the running sum)
            else:
                nxt = q[skip - 1]  # no longer unstarted work
                requested = self._requested.get(w)
                if not requested or nxt not in requested:
                    self._unstarted[w] = self._unstarted.get(w, 0.0) - self.costs[nxt]
            self._set_load(w)
            return
        try:
            q.remove(tid)
        except ValueError:
            return
        if self.tail_guard:
            self._release(w, tid, finished)
        self._update_load(w)

    def completed(self, w: int, tid: int) -> None:
        self._remove_sent(w, tid, finished=True)
        self.avoid.pop(tid, None)

    def failed(self, w: int, tid: int, retry: bool, avoid: Iterable[int] = ()) -> None:
        """A failed attempt; ``retry`` puts it back first in line, away from the workers in ``avoid``
        (which neither assignment nor stealing will give it to while another worker is left)."""
        self._remove_sent(w, tid, finished=not retry)
        if retry:
            workers = set(avoid) | {w}
            self.avoid[tid] = workers
            self.retry.append((tid, workers))
        else:
            self.avoid.pop(tid, None)

    def _avoids(self, tid: int, w: int) -> bool:
        """Whether ``tid`` should stay away from ``w`` (it failed there, and another worker is left)."""
        avoid = self.avoid.get(tid)
        return avoid is not None and w in avoid and not all(v in avoid for v in self.workers)

    def requeue(self, ids: Iterable[int]) -> None:
        """Hand tasks out again (a lost worker's, a steal answer nobody waits for): into the shared
        queue, which every strategy draws from once a worker's own share is done."""
        for tid in ids:
            heapq.heappush(self.central, (-self.upper(tid), tid))

    def cancel_steals(self) -> None:
        """Forget the thieves of requests in flight: answers will be requeued, not forwarded."""
        self.stealing_from = {v: (None, ids) for v, (_, ids) in self.stealing_from.items()}  # type: ignore[misc]
        self.thieves.clear()

    def add_worker(self, w: int) -> None:
        """A worker that joined during the run: it starts with nothing planned and draws from the
        shared queue (where a lost worker's work went) or steals."""
        if w in self.sent:
            return
        self.workers.append(w)
        self.sent[w] = collections.deque()
        self.planned.setdefault(w, collections.deque())
        self.planned_load.setdefault(w, 0.0)
        self._update_load(w)

    def remove_worker(self, w: int, drop: Iterable[int] = ()) -> List[int]:
        """``w`` is gone: everything sent to or planned for it is handed out again, except ``drop``.
        Returns the ids that were at the worker (their outcome is unknown)."""
        lost = list(self.sent.pop(w, ()))
        dropped = set(drop)
        if self.tail_guard:
            for t in lost:
                self._release(w, t, finished=t in dropped)
            self._held.pop(w, None)
        plan = list(self.planned.pop(w, ()))
        self.planned_load.pop(w, None)
        if w in self.workers:
            self.workers.remove(w)
        self._load.pop(w, None)
        self._unstarted.pop(w, None)
        self._requested.pop(w, None)
        self._skip.pop(w, None)
        if w in self.stealing_from:
            thief, _ = self.stealing_from.pop(w)
            self.thieves.discard(thief)
        self.thieves.discard(w)
        self.requeue(t for t in lost + plan if t not in dropped)
        return lost

    def reorder(self, costs: Mapping[int, float]) -> None:
        """New estimates: re-sort what has not been handed out (each queue keeps its own tasks)."""
        self.costs.update(costs)
        if self.queue:
            self.queue = self._sorted_queue(t for _, t in self.queue)
        if self.central:
            self.central = [(-self.upper(t), t) for _, t in self.central]
            heapq.heapify(self.central)
        if self.tail_guard:  # what is open, and what each worker holds, at the new figures
            self._total = float(sum(self.costs.values()))
            held = [t for q in self.sent.values() for t in q]
            self._open = sum(self.costs[t] for t in itertools.chain(held, (t for _, t in self.queue), (t for _, t in self.central), (t for t, _ in self.retry)))
            self._held_upper = {}
            self._held = {}
            for w, q in self.sent.items():
                self._hold(w, list(q))
        for w, plan in self.planned.items():
            if plan:
                self.planned[w] = collections.deque(largest_first(self.costs, plan))
                self.planned_load[w] = sum(self.costs[t] for t in plan)
        for w in self.workers:
            self._update_load(w)


class TaskDistributor:
    """The placement policies, for the coordinator and for anyone who wants to see a plan (the
    design document's ``TaskDistributor``): which strategy a run uses, the partition it comes to,
    and the :class:`Scheduler` that carries it out during a run.

    ``distribute_level(fragments, workers)`` gives the partition of ``fragments`` (by their
    ``cost`` estimates) over ``workers`` that the strategy arrives at when the estimates are
    right: largest first onto the least loaded worker. STATIC fixes it up front; DYNAMIC hands
    the same order out on demand, so with exact estimates it ends at the same partition, and with
    wrong ones it mends them as it goes (as stealing does for STATIC). The n-body levels need not
    be distributed one by one — every fragment is independent — so "a level" may be any set."""

    def __init__(self, strategy: LoadBalanceStrategy = LoadBalanceStrategy.DYNAMIC, work_stealing: bool = True):
        self.strategy = LoadBalanceStrategy(strategy)
        self.work_stealing = work_stealing

    def strategy_for(self, costs: Sequence[float], n_workers: int) -> LoadBalanceStrategy:
        """The strategy a run with these estimates uses (ADAPTIVE: :func:`choose_strategy`)."""
        if self.strategy == LoadBalanceStrategy.ADAPTIVE:
            return choose_strategy(list(costs), n_workers)
        return self.strategy

    def distribute_level(self, fragments: Sequence[Any], workers: int) -> List[List[Any]]:
        """``workers`` lists of fragments (each largest first); see the class docstring."""
        by_id = {i: f for i, f in enumerate(fragments)}
        parts = lpt_partition({i: float(f.cost) for i, f in by_id.items()}, list(range(int(workers))))
        return [[by_id[i] for i in parts[w]] for w in range(int(workers))]

    def scheduler(self, costs: Mapping[int, float], workers: Sequence[int], prefetch: int = 1, **kw: Any) -> "Scheduler":
        """The placement state of one run (task id → estimate): what the coordinator asks
        (``kw``: the :class:`Scheduler`'s options, e.g. the tail guard and its risk)."""
        return Scheduler(costs, list(workers), self.strategy, stealing=self.work_stealing, prefetch=prefetch, **kw)

