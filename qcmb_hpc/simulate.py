"""Discrete-event simulation of a run: the real coordinator and scheduler, modelled workers, a fake clock.

This is the fourth transport (see :mod:`qcmb_hpc.transport`). :func:`simulate` builds the *real*
:class:`~qcmb_hpc.coordinator.Coordinator` (and so the real :class:`~qcmb_hpc.schedule.Scheduler`) on
a :class:`SimTransport`, whose workers are modelled: each keeps a FIFO queue, runs one task at a time
for its *actual* duration, answers STEAL with the tasks it has not started, batches fast results
exactly as :mod:`qcmb_hpc.worker` does, and says BYE on STOP. Every message takes a modelled latency
(fixed, plus optional seeded exponential jitter; each direction of each worker's channel stays FIFO,
as MPI guarantees). Time never passes for real: ``recv`` advances the fake clock to the next event.

What is modelled, and how:

* task durations — ``actual`` seconds (given, or the estimate times a seeded lognormal ``noise``)
  plus ``task_overhead`` per task on the worker; the scheduler only ever sees the estimates;
* the coordinator's own work — ``send_cost`` fake seconds per message it sends, ``recv_cost`` per
  message it receives and ``item_cost`` per task id or result inside them (the real Python
  coordinator is one core; at tens of thousands of workers its throughput is what limits);
* how the coordinator waits — ``wake="poll"`` as the MPI endpoint does (it sleeps the whole
  timeout, backing off 10 µs → ``max_wait``, then drains everything that arrived), or
  ``wake="event"`` as the process transport does (it wakes on the first arrival). Empty polls are
  not executed one by one: nothing changes between them, so the clock jumps straight to the first
  poll at or after the next arrival (this keeps 64k-worker runs fast);
* worker start-up — ``startup`` seconds from SETUP to READY;
* responsiveness — ``responsive=True`` workers (fragments in an isolated child process) answer a
  STEAL at once; ``responsive=False`` ones (fragments inline) read their messages only when the
  running fragment ends, as :class:`~qcmb_hpc.worker.Worker` with an inline runner does (READY
  says which, and the scheduler takes it into account).

Not modelled: failures, CPU contention between workers, the size of messages.

``simulate(..., tasks=, cost_model=, reporter=)`` runs real :class:`~qcmb_hpc.plan.FragmentTask`
objects (their ``cost`` the estimates) with a real :class:`~qcmb_hpc.cost.CostModel`, which then
observes the modelled times and refits during the run as it does in a real one, and reports
progress through the real :class:`~qcmb_hpc.progress.ProgressTracker` on the fake clock: this is
how the cost-weighted ETA is measured over whole runs (``benchmarks/bench_eta.py``).

Making it fast enough for ~680k tasks on 64k workers (about a minute) took, besides the event
queues here, making the coordinator and scheduler O(changes) per event: an ordered idle pool
(taking the first key of a plain dict after many deletions scans the deleted slots), goodbyes
counted per message, victims that are answering a steal kept off the load heap until they answer,
stealable load kept incrementally, DYNAMIC's queue sorted once instead of a 680k-entry heap, and
re-estimation only when a cost refit changes the order (see the modules).

:func:`mbe_costs` synthesises an MBE-like cost list (C(m, n) fragments per n-body level, cost
growing with the fragment's size, lognormal spread) without QCManyBody's planning — planning the
labels of (H2O)64 4-body (679,120 fragments) alone takes QCManyBody ~6 s.

Result: :class:`SimResult` — makespan (the coordinator's, from its start to every BYE, as a real
run reports it) and ``finish`` (the last result in), the lower bound ``LB = max(sum/workers,
longest)`` of the actual durations, ``ratio = makespan / LB`` and ``efficiency = LB / makespan``,
steals, messages, and checks (every task ran exactly once).

Run ``python -m qcmb_hpc.simulate --workers 1024 16384 65536`` for the (H2O)64 4-body prediction.
"""

from __future__ import annotations

import argparse
import collections
import gc
import heapq
import itertools
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

from . import transport as T
from .config import LoadBalanceStrategy
from .engine import FragmentOutcome
from .schedule import makespan_lower_bound
from .worker import FAST_FRAGMENT, FLUSH_AGE, FLUSH_COUNT

__all__ = ["SimClock", "SimTask", "SimTransport", "SimResult", "simulate", "mbe_costs", "noisy"]

_TO_WORKER, _FINISH, _TO_COORD = 0, 1, 2
_REAL: Dict[int, Tuple[int, ...]] = {}  # shared "real fragments" tuples, one per n-body level
_PROPS: Dict[str, Any] = {"energy": 0.0}  # one shared dict: 680k results must not mean 680k dicts


class SimClock:
    """The fake clock; ``clock()`` is what the coordinator calls."""

    __slots__ = ("now",)

    def __init__(self, start: float = 0.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


class SimTask:
    """The little of a :class:`~qcmb_hpc.plan.FragmentTask` the coordinator uses (slots: ~680k of them)."""

    __slots__ = ("id", "cost", "real")
    mc = "sim"
    basis: Tuple[int, ...] = ()
    label = ""

    def __init__(self, tid: int, cost: float, nbody: int = 1):
        self.id = tid
        self.cost = cost
        real = _REAL.get(nbody)
        if real is None:
            real = _REAL[nbody] = (0,) * nbody
        self.real = real

    @property
    def nbody(self) -> int:
        return len(self.real)

    def wire(self) -> Tuple[int, str]:
        return (self.id, "")


class _Worker:
    __slots__ = (
        "queue", "running", "run_end", "unsent", "unsent_since", "last_seconds", "busy", "done", "stopped", "deferred"
    )

    def __init__(self) -> None:
        self.queue: Deque[int] = collections.deque()
        self.running = -1
        self.run_end = 0.0
        self.unsent: List[FragmentOutcome] = []
        self.unsent_since = 0.0
        self.last_seconds = 0.0
        self.busy = 0.0
        self.done = 0
        self.stopped = False
        self.deferred: List[T.Message] = []


class SimTransport:
    """Coordinator endpoint whose workers are modelled on a fake clock (see the module docstring)."""

    def __init__(
        self,
        actual: Sequence[float],
        n_workers: int,
        clock: SimClock,
        *,
        latency: float = 8e-6,
        jitter: float = 0.0,
        send_cost: float = 0.0,
        recv_cost: float = 0.0,
        item_cost: float = 0.0,
        task_overhead: float = 0.0,
        startup: float = 0.0,
        wake: str = "poll",
        max_wait: float = 1e-3,
        responsive: bool = True,
        seed: int = 0,
    ):
        if wake not in ("poll", "event"):
            raise ValueError("wake must be 'poll' or 'event'")
        self.actual = actual
        self.workers = list(range(n_workers))
        self.clock = clock
        self.latency = latency
        self.jitter = jitter
        self.send_cost = send_cost
        self.recv_cost = recv_cost
        self.item_cost = item_cost
        self.task_overhead = task_overhead
        self.startup = startup
        self.wake = wake
        self.max_wait = max_wait
        self.responsive = responsive
        self._rng = random.Random(seed)
        # events (time, seq, kind, worker, payload): finishes in a heap; messages, whose times only
        # grow when the latency is fixed, in two FIFO queues (an event that would break their order
        # — jitter — goes to the heap instead); the next event is the earliest of the three heads
        self._heap: List[Tuple[float, int, int, int, Any]] = []
        self._wq: Deque[Tuple[float, int, int, int, Any]] = collections.deque()  # to workers
        self._cq: Deque[Tuple[float, int, int, int, Any]] = collections.deque()  # to the coordinator
        self._seq = itertools.count()
        self._w = [_Worker() for _ in range(n_workers)]
        self._last_to_w = [0.0] * n_workers  # FIFO per channel
        self._last_to_c = [0.0] * n_workers
        self.runs = [0] * len(actual)  #: attempts started per task (must end as all ones)
        self.events = 0
        self.messages_to_workers = 0
        self.messages_to_coordinator = 0
        self.counts: Dict[str, int] = collections.Counter()
        self.last_result = 0.0

    # -- the coordinator's side ---------------------------------------------------------------
    def setup(self, spec: Any) -> None:
        """As the MPI endpoint: the spec went out in a broadcast; each worker is READY ``startup`` later."""
        now = self.clock.now
        for w in self.workers:
            self._to_coord(w, now + self.startup, (T.READY, {"pid": 0, "host": "sim", "isolated": self.responsive}))

    def send(self, worker: int, msg: T.Message) -> None:
        clock = self.clock
        clock.now += self.send_cost + (self.item_cost * len(msg[1]) if msg[0] in (T.TASKS, T.STEAL) else 0.0)
        t = clock.now + self._delay()
        last = self._last_to_w[worker]
        if t < last:
            t = last
        self._last_to_w[worker] = t
        self.messages_to_workers += 1
        self.counts[msg[0]] += 1
        self._push(self._wq, (t, next(self._seq), _TO_WORKER, worker, msg))

    def recv(self, timeout: float) -> List[Tuple[int, T.Message]]:
        clock = self.clock
        now = clock.now
        out: List[Tuple[int, T.Message]] = []
        if timeout <= 0:
            self._advance(now, out)
        elif not (self._heap or self._wq or self._cq):
            clock.now = now + timeout  # nothing will ever happen: let the coordinator's timeouts run
            return out
        else:
            # wait: skip the empty polls in between (nothing changes in them); see module docstring
            horizon = now + timeout
            first = self._next_arrival()
            if first is None:
                clock.now = horizon
                return out
            if self.wake == "event":
                horizon = max(now, first)
            elif first > horizon:
                wait = timeout
                t = horizon
                while t < first and wait < self.max_wait:
                    wait = min(2 * wait, self.max_wait)
                    t += wait
                if t < first:
                    t += math.ceil((first - t) / self.max_wait) * self.max_wait
                horizon = t
            self._advance(horizon, out)
            if clock.now < horizon:
                clock.now = horizon
        if out:
            cost = self.recv_cost * len(out)
            if self.item_cost:
                cost += self.item_cost * sum(len(m[1]) for _, m in out if m[0] == T.RESULTS)
            clock.now += cost
        return out

    def close(self) -> None:
        self._heap.clear()
        self._wq.clear()
        self._cq.clear()

    # -- the event machinery --------------------------------------------------------------------
    def _delay(self) -> float:
        if self.jitter > 0:
            return self.latency + self._rng.expovariate(1.0 / self.jitter)
        return self.latency

    def _to_coord(self, w: int, t: float, msg: T.Message) -> None:
        t += self._delay()
        last = self._last_to_c[w]
        if t < last:
            t = last
        self._last_to_c[w] = t
        self.messages_to_coordinator += 1
        self.counts[msg[0]] += 1
        self._push(self._cq, (t, next(self._seq), _TO_COORD, w, msg))

    def _push(self, fifo: Deque[Tuple[float, int, int, int, Any]], ev: Tuple[float, int, int, int, Any]) -> None:
        if fifo and fifo[-1][0] > ev[0]:
            heapq.heappush(self._heap, ev)
        else:
            fifo.append(ev)

    def _peek(self) -> Any:
        """The source (heap or FIFO) whose head is the next event, or None."""
        heap, wq, cq = self._heap, self._wq, self._cq
        best: Any = heap if heap else None
        head = heap[0] if heap else None
        if wq and (head is None or wq[0] < head):
            best, head = wq, wq[0]
        if cq and (head is None or cq[0] < head):
            best = cq
        return best

    def _pop(self, src: Any) -> Tuple[float, int, int, int, Any]:
        return heapq.heappop(src) if src is self._heap else src.popleft()

    def _next_arrival(self) -> Optional[float]:
        """Process worker-side events until a message for the coordinator is next in line; return
        its arrival time (None: nothing will ever arrive)."""
        while True:
            src = self._peek()
            if src is None:
                return None
            ev = src[0]
            if ev[2] == _TO_COORD:
                return ev[0]
            self._pop(src)
            self._worker_event(ev)

    def _advance(self, horizon: float, out: List[Tuple[int, T.Message]]) -> None:
        """Process every event up to ``horizon``; messages for the coordinator go to ``out``."""
        while True:
            src = self._peek()
            if src is None or src[0][0] > horizon:
                return
            ev = self._pop(src)
            if ev[2] == _TO_COORD:
                out.append((ev[3], ev[4]))
            else:
                self._worker_event(ev)

    # -- the modelled worker (mirrors qcmb_hpc.worker.Worker) -----------------------------------
    def _worker_event(self, ev: Tuple[float, int, int, int, Any]) -> None:
        self.events += 1
        t, _, kind, w, payload = ev
        st = self._w[w]
        if st.stopped:
            return
        if kind == _FINISH:
            if st.running != payload:
                return  # cut by STOP
            if st.deferred:  # an inline worker reads its messages before it reports and starts the next
                msgs, st.deferred = st.deferred, []
                for msg in msgs:
                    self._handle(w, st, t, msg)
                    if st.stopped:
                        return
            self._finished(w, st, t)
        elif kind == _TO_WORKER:
            if not self.responsive and st.running >= 0:
                st.deferred.append(payload)  # inside an inline fragment: read when it ends
            else:
                self._handle(w, st, t, payload)

    def _handle(self, w: int, st: _Worker, t: float, msg: T.Message) -> None:
        kind = msg[0]
        if kind == T.TASKS:
            st.queue.extend(tid for tid, _ in msg[1])
            if st.running < 0:
                self._start_next(w, st, t)
        elif kind == T.STEAL:
            wanted = set(msg[1])
            given = [tid for tid in st.queue if tid in wanted]
            if given:
                gset = set(given)
                st.queue = collections.deque(tid for tid in st.queue if tid not in gset)
            refused = sorted(wanted - set(given))
            self._to_coord(w, t, (T.RETURNED, given, refused))
        elif kind == T.STOP:
            st.running = -1  # a running fragment is cut (an inline one has just ended)
            if st.unsent:
                self._flush(w, st, t)
            st.stopped = True
            self._to_coord(w, t, (T.BYE, {"busy": st.busy, "done": st.done, "restarts": 0, "host": "sim"}))
        elif kind == T.SETUP:
            pass
        else:
            raise RuntimeError(f"simulated worker {w}: unknown message {kind!r}")

    def _start_next(self, w: int, st: _Worker, t: float) -> None:
        if st.unsent and (
            st.last_seconds > FAST_FRAGMENT or len(st.unsent) >= FLUSH_COUNT or t - st.unsent_since > FLUSH_AGE
        ):
            self._flush(w, st, t)
        tid = st.queue.popleft()
        self.runs[tid] += 1
        st.running = tid
        st.run_end = t + self.actual[tid] + self.task_overhead
        heapq.heappush(self._heap, (st.run_end, next(self._seq), _FINISH, w, tid))

    def _finished(self, w: int, st: _Worker, t: float) -> None:
        tid = st.running
        seconds = self.actual[tid] + self.task_overhead
        st.running = -1
        st.busy += seconds
        st.done += 1
        st.last_seconds = seconds
        out = FragmentOutcome(tid, True, _PROPS, None, None, None, True, t - seconds, seconds, w, "sim")
        if not st.unsent:
            st.unsent_since = t
        st.unsent.append(out)
        if not st.queue or seconds > FAST_FRAGMENT:
            self._flush(w, st, t)
        if st.queue:
            self._start_next(w, st, t)

    def _flush(self, w: int, st: _Worker, t: float) -> None:
        batch, st.unsent = st.unsent, []
        if t > self.last_result:
            self.last_result = t
        self._to_coord(w, t, (T.RESULTS, batch))

    # -- after the run --------------------------------------------------------------------------
    def worker_busy(self) -> List[float]:
        return [st.busy for st in self._w]


@dataclass
class SimResult:
    workers: int
    tasks: int
    strategy: str
    makespan: float  #: the coordinator's (start → every BYE), as a real run reports it
    finish: float  #: when the last result reached the coordinator
    lower_bound: float  #: max(sum of actual durations / workers, longest)
    ratio: float  #: makespan / lower_bound (1 is perfect)
    efficiency: float  #: lower_bound / makespan
    steals: int
    steal_requests: int
    messages: int
    results_messages: int
    duplicates: int  #: tasks started more than once (must be 0)
    never_run: int  #: tasks never started (must be 0 for a complete run)
    completed: int
    mean_utilisation: float
    sim_seconds: float  #: wall time the simulation took
    events: int
    params: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def noisy(costs: Sequence[float], sigma: float, seed: int = 0) -> List[float]:
    """``costs`` each times a seeded lognormal factor ``exp(N(0, sigma))`` (the truth behind estimates)."""
    if sigma <= 0:
        return [float(c) for c in costs]
    try:
        import numpy as np

        rng = np.random.default_rng(seed)
        return (np.asarray(costs, dtype=float) * np.exp(rng.normal(0.0, sigma, len(costs)))).tolist()
    except ImportError:  # pragma: no cover
        r = random.Random(seed)
        return [c * math.exp(r.gauss(0.0, sigma)) for c in costs]


def mbe_costs(
    monomers: int = 64,
    max_nbody: int = 4,
    base: float = 0.2,
    exponent: float = 3.0,
    spread: float = 0.35,
    seed: int = 0,
) -> Tuple[List[float], List[int]]:
    """An MBE-like cost list without QCManyBody's planning: C(monomers, n) fragments at each level
    n = 1..max_nbody (in plan order: monomers first), each costing ``base · n^exponent`` (the
    fragment is n monomers; ``exponent`` ~3 for SCF) times a seeded lognormal factor of width
    ``spread`` (geometry, convergence). Returns ``(costs, nbody)``. (H2O)64 4-body: 679,120."""
    counts = [math.comb(monomers, n) for n in range(1, max_nbody + 1)]
    nbody = [n for n, c in zip(range(1, max_nbody + 1), counts) for _ in range(c)]
    costs = [base * n**exponent for n in nbody]
    return noisy(costs, spread, seed), nbody


def simulate(
    estimates: Sequence[float],
    workers: int,
    *,
    actual: Optional[Sequence[float]] = None,
    noise: float = 0.0,
    seed: int = 0,
    strategy: Any = LoadBalanceStrategy.DYNAMIC,
    work_stealing: bool = True,
    prefetch: Optional[int] = None,
    latency: float = 8e-6,
    jitter: float = 0.0,
    send_cost: float = 5e-6,
    recv_cost: float = 5e-6,
    item_cost: float = 10e-6,
    task_overhead: float = 0.0,
    startup: float = 0.0,
    wake: str = "poll",
    max_wait: float = 1e-3,
    responsive: bool = True,
    nbody: Optional[Sequence[int]] = None,
    tasks: Optional[Sequence[Any]] = None,
    cost_model: Any = None,
    reporter: Any = None,
    progress_interval: float = 0.5,
    tail_guard: bool = True,
) -> SimResult:
    """Run the real coordinator over ``workers`` modelled workers.

    ``estimates`` are what the scheduler sees; the tasks really take ``actual`` (default: the
    estimates times a seeded lognormal ``noise``) plus ``task_overhead``. See the module docstring
    for the other parameters; the coordinator-cost defaults are of the order measured for the
    MPI coordinator (``benchmarks/bench_throughput.py``).

    ``tasks``: objects with ``id`` (0..n-1), ``cost``, ``nbody``, ``mc``, ``real``, ``basis``,
    ``label`` (FragmentTasks) to run instead of tasks made from ``estimates`` (pass their costs as
    ``estimates``); ``cost_model`` observes and refits as in a real run; ``reporter`` gets the
    progress events (tracker interval ``progress_interval`` fake seconds). ``tail_guard``: the
    scheduler's (:mod:`qcmb_hpc.schedule`; on, as in a run with the defaults)."""
    from .coordinator import Coordinator
    from .eta import ledger_for
    from .progress import ProgressTracker

    t_wall = time.perf_counter()
    n = len(estimates)
    if actual is None:
        actual = noisy(estimates, noise, seed + 1) if noise > 0 else [float(c) for c in estimates]
    if len(actual) != n:
        raise ValueError("actual and estimates differ in length")
    strategy = LoadBalanceStrategy(strategy) if not isinstance(strategy, LoadBalanceStrategy) else strategy
    if tasks is None:
        tasks = [SimTask(i, float(estimates[i]), nbody[i] if nbody is not None else 1) for i in range(n)]
    elif len(tasks) != n:
        raise ValueError("tasks and estimates differ in length")
    clock = SimClock()
    tracker = None
    if reporter is not None:
        tracker = ProgressTracker(
            reporter, [t.nbody for t in tasks], clock=clock, ledger=ledger_for(tasks, cost_model), interval=progress_interval
        )
    tr = SimTransport(
        actual,
        workers,
        clock,
        latency=latency,
        jitter=jitter,
        send_cost=send_cost,
        recv_cost=recv_cost,
        item_cost=item_cost,
        task_overhead=task_overhead,
        startup=startup,
        wake=wake,
        max_wait=max_wait,
        responsive=responsive,
        seed=seed,
    )
    coord = Coordinator(
        tasks,
        tr,
        None,
        strategy=strategy,
        work_stealing=work_stealing,
        prefetch=prefetch,
        retry_failed=False,
        clock=clock,
        start_timeout=max(600.0, 10 * startup),
        cost_model=cost_model,
        tracker=tracker,
        tail_guard=tail_guard,
    )
    del tasks
    # the run allocates millions of small objects and frees few: the cyclic collector would walk
    # them all again and again (it is most of the time at 64k workers), and there are no cycles here
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        out = coord.run()
    finally:
        if gc_was_enabled:
            gc.enable()
    tr.close()
    durations = [a + task_overhead for a in actual]
    lb = makespan_lower_bound(durations, workers)
    busy = tr.worker_busy()
    makespan = out.makespan
    res = SimResult(
        workers=workers,
        tasks=n,
        strategy=out.strategy,
        makespan=makespan,
        finish=tr.last_result,
        lower_bound=lb,
        ratio=makespan / lb if lb > 0 else float("nan"),
        efficiency=lb / makespan if makespan > 0 else float("nan"),
        steals=out.steals,
        steal_requests=out.steal_requests,
        messages=tr.messages_to_workers + tr.messages_to_coordinator,
        results_messages=tr.counts[T.RESULTS],
        duplicates=sum(1 for r in tr.runs if r > 1),
        never_run=sum(1 for r in tr.runs if r == 0),
        completed=len(out.properties),
        mean_utilisation=(sum(busy) / (workers * makespan)) if makespan > 0 else float("nan"),
        sim_seconds=time.perf_counter() - t_wall,
        events=tr.events,
        params=dict(
            noise=noise,
            seed=seed,
            work_stealing=work_stealing,
            tail_guard=tail_guard,
            prefetch=prefetch,
            latency=latency,
            jitter=jitter,
            send_cost=send_cost,
            recv_cost=recv_cost,
            item_cost=item_cost,
            task_overhead=task_overhead,
            startup=startup,
            wake=wake,
            max_wait=max_wait,
            responsive=responsive,
        ),
    )
    return res


# ------------------------------------------------------------------------------------------------
# command line: predictions for an MBE-sized task set
# ------------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qcmb_hpc.simulate", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1024, 16384, 65536])
    p.add_argument("--monomers", type=int, default=64)
    p.add_argument("--max-nbody", type=int, default=4)
    p.add_argument("--base", type=float, default=0.2, help="seconds of a monomer fragment")
    p.add_argument("--exponent", type=float, default=3.0)
    p.add_argument("--spread", type=float, default=0.35, help="lognormal spread of the estimates across fragments")
    p.add_argument("--noise", type=float, default=0.3, help="lognormal noise of the actual time against the estimate")
    p.add_argument("--strategies", nargs="+", default=["dynamic", "work_stealing"])
    p.add_argument("--no-tail-guard", dest="tail_guard", action="store_false", help="the scheduler without its tail guard")
    p.add_argument("--latency", type=float, default=8e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    est, nb = mbe_costs(a.monomers, a.max_nbody, a.base, a.exponent, a.spread, a.seed)
    act = noisy(est, a.noise, a.seed + 1)
    rows = []
    print(f"{len(est)} tasks; sum {sum(act):.4g} s; longest {max(act):.4g} s")
    print(f"{'workers':>8} {'strategy':>14} {'makespan':>10} {'LB':>10} {'ratio':>6} {'steals':>7} {'sim s':>7}")
    for w in a.workers:
        for s in a.strategies:
            r = simulate(est, w, actual=act, strategy=s, latency=a.latency, seed=a.seed, nbody=nb, tail_guard=a.tail_guard)
            rows.append(r.to_dict())
            print(f"{w:>8} {r.strategy:>14} {r.makespan:>10.2f} {r.lower_bound:>10.2f} {r.ratio:>6.3f} {r.steals:>7} {r.sim_seconds:>7.1f}")
            sys.stdout.flush()
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
