"""Steal races, driven deterministically without MPI: the real :class:`~qcmb_hpc.coordinator.Coordinator`
(with its :class:`~qcmb_hpc.schedule.Scheduler`) and real :class:`~qcmb_hpc.worker.Worker` loops
exchange the protocol's messages through a simulated network whose every delivery, worker step and
fragment completion is chosen by the test — so "the victim starts the task just as it is stolen"
happens exactly when the test says, not when the machine's timing happens to allow it.

* Scripted cases pin the three orders of a steal against the victim's progress (the STEAL arrives
  before the victim starts the task, after it started it, after it finished it) and a stop
  request while a steal is in flight.
* Seeded random schedules (many interleavings, several strategies, prefetch depths, inline and
  isolated workers, failing attempts, stop requests) check the invariants on every run: a task
  never runs on two workers at once, never succeeds twice, is never lost (every result produced
  reaches the coordinator; a finished run has every task), results are routed to the right task,
  and no message is left in flight when the run ends (MPI reuses its communicator and tag).

The network keeps per-pair FIFO order, as MPI guarantees for one source, destination and tag.
"""

from __future__ import annotations

import collections
import logging
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

import qcmb_hpc.worker as worker_module
from qcmb_hpc import transport as T
from qcmb_hpc.config import LoadBalanceStrategy
from qcmb_hpc.coordinator import Coordinator
from qcmb_hpc.engine import FragmentOutcome
from qcmb_hpc.plan import FragmentTask
from qcmb_hpc.worker import Worker

SLOW = 0.5  # seconds an outcome reports: results are sent at once
FAST = 1e-4  # below the worker's FAST_FRAGMENT: results are batched while the queue is not empty


class Violation(AssertionError):
    pass


class FakeRunner:
    """A worker's runner whose fragment runs until the simulation finishes it."""

    isolated = True

    def __init__(self, net: "Net", wid: int):
        self.net, self.wid = net, wid
        self.task: Optional[int] = None
        self.finished = False
        self.restarts = 0

    @property
    def busy(self) -> bool:
        return self.task is not None

    def start(self, task_id: int, label: str) -> None:
        assert self.task is None
        self.net.on_start(self.wid, task_id, label)
        self.task, self.finished = task_id, False

    def poll(self) -> Optional[FragmentOutcome]:
        if self.task is not None and self.finished:
            tid, self.task = self.task, None
            return self.net.on_finish(self.wid, tid)
        return None

    def waitable(self) -> List[Any]:
        return []

    def cancel(self) -> Optional[FragmentOutcome]:
        if self.task is None:
            return None
        tid, self.task = self.task, None
        self.net.on_cut(self.wid, tid)
        return FragmentOutcome(id=tid, ok=False, error_type="cancelled", error_message="cut")

    def close(self) -> None:
        pass


class WorkerEnd:
    max_wait = 0.0

    def __init__(self, net: "Net", wid: int):
        self.net, self.wid = net, wid

    def send(self, msg: T.Message) -> None:
        self.net.from_worker(self.wid, msg)

    def poll(self) -> Optional[T.Message]:
        box = self.net.inbox[self.wid]
        return box.popleft() if box else None

    def wait(self, timeout: float, also: Any = ()) -> None:
        pass


class CoordEnd:
    max_wait = 0.0

    def __init__(self, net: "Net", n: int):
        self.net = net
        self.workers = list(range(n))

    def setup(self, spec: Any) -> None:
        pass

    def send(self, wid: int, msg: T.Message) -> None:
        self.net.in_flight[wid].append(msg)
        if msg[0] == T.STEAL:
            self.net.steals_sent.append((wid, list(msg[1])))

    def recv(self, timeout: float) -> List[Tuple[int, T.Message]]:
        return self.net.advance()

    def close(self) -> None:
        pass


class Net:
    """The simulated network, workers and fragments. ``driver`` decides what happens at each of the
    coordinator's receives; it returns how many of the messages waiting for the coordinator to hand
    over (None: all)."""

    def __init__(self, n_workers: int, tasks: Dict[int, float], fail_first: Optional[set] = None, seconds: Optional[Dict[int, float]] = None):
        self.n = n_workers
        self.in_flight: Dict[int, collections.deque] = {w: collections.deque() for w in range(n_workers)}
        self.inbox: Dict[int, collections.deque] = {w: collections.deque() for w in range(n_workers)}
        self.to_coord: collections.deque = collections.deque()
        self.workers: Dict[int, Worker] = {}
        self.runners: Dict[int, FakeRunner] = {}
        for w in range(n_workers):
            wk = Worker(WorkerEnd(self, w))
            wk.id = w
            wk.runner = self.runners.setdefault(w, FakeRunner(self, w))
            self.workers[w] = wk
        self.ready: set = set()
        self.running: Dict[int, int] = {}  # task → worker
        self.executions: collections.Counter = collections.Counter()
        self.ran_on: Dict[int, List[int]] = collections.defaultdict(list)
        self.successes: collections.Counter = collections.Counter()
        self.produced: set = set()  # tasks whose successful outcome a worker received
        self.fail_first = set(fail_first or ())
        self.seconds = seconds or {}
        self.returned: List[Tuple[int, List[int], List[int]]] = []
        self.steals_sent: List[Tuple[int, List[int]]] = []
        self.byes: set = set()
        self.driver: Callable[["Net"], Optional[int]] = lambda net: None
        self.calls = 0
        self.time = 0.0

    # -- what workers and fragments do ------------------------------------------------------------
    def on_start(self, wid: int, tid: int, label: str) -> None:
        if tid in self.running:
            raise Violation(f"task {tid} started on worker {wid} while running on worker {self.running[tid]}")
        if self.successes[tid]:
            raise Violation(f"task {tid} started on worker {wid} after it had succeeded")
        assert label == f"t{tid}"
        self.running[tid] = wid
        self.executions[tid] += 1
        self.ran_on[tid].append(wid)

    def on_finish(self, wid: int, tid: int) -> FragmentOutcome:
        del self.running[tid]
        secs = self.seconds.get(tid, SLOW)
        if tid in self.fail_first and self.executions[tid] == 1:
            return FragmentOutcome(id=tid, ok=False, error_type="random_error", error_message="injected", seconds=secs)
        self.successes[tid] += 1
        self.produced.add(tid)
        return FragmentOutcome(id=tid, ok=True, properties={"energy": float(tid)}, seconds=secs)

    def on_cut(self, wid: int, tid: int) -> None:
        del self.running[tid]

    def from_worker(self, wid: int, msg: T.Message) -> None:
        if msg[0] == T.RETURNED:
            self.returned.append((wid, list(msg[1]), list(msg[2])))
        if msg[0] == T.BYE:
            self.byes.add(wid)
        self.to_coord.append((wid, msg))

    # -- actions the drivers use ----------------------------------------------------------------
    def make_ready(self, w: int, isolated: bool = True) -> None:
        if w not in self.ready:
            self.ready.add(w)
            self.to_coord.append((w, (T.READY, {"pid": 1000 + w, "host": "sim", "isolated": isolated})))

    def deliver(self, w: int, k: Optional[int] = None) -> None:
        q = self.in_flight[w]
        for _ in range(len(q) if k is None else min(k, len(q))):
            self.inbox[w].append(q.popleft())

    def step(self, w: int) -> None:
        if w in self.ready and not self.workers[w].stopped:
            self.workers[w].step(0.0)

    def finish(self, w: int) -> None:
        r = self.runners[w]
        if r.task is not None:
            r.finished = True

    def flush_everything(self) -> None:
        for w in range(self.n):
            self.make_ready(w)
            self.deliver(w)
            self.finish(w)
            self.step(w)
            self.step(w)

    def advance(self) -> List[Tuple[int, T.Message]]:
        self.calls += 1
        if self.calls > 200_000:
            raise Violation("no progress: the run does not end")
        k = self.driver(self)
        n = len(self.to_coord) if k is None else min(k, len(self.to_coord))
        return [self.to_coord.popleft() for _ in range(n)]

    def clock(self) -> float:
        self.time += 1e-3
        return self.time

    def pending_messages(self) -> int:
        return len(self.to_coord) + sum(len(q) for q in self.in_flight.values()) + sum(len(q) for q in self.inbox.values())


def make_coordinator(net: Net, costs: Dict[int, float], strategy: str, prefetch: int, **kw: Any) -> Coordinator:
    tasks = [FragmentTask(id=t, label=f"t{t}", mc="m", real=(1,), basis=(1,), cost=c) for t, c in costs.items()]
    return Coordinator(
        tasks,
        CoordEnd(net, net.n),
        spec=None,
        strategy=LoadBalanceStrategy(strategy),
        work_stealing=True,
        prefetch=prefetch,
        max_retries=3,
        clock=net.clock,
        grace_period=kw.pop("grace_period", 0.05),
        **kw,
    )


def check_invariants(net: Net, out: Any, all_tasks: set) -> None:
    assert all(c <= 1 for c in net.successes.values()), f"a task succeeded twice: {net.successes}"
    assert set(out.properties) == net.produced, (
        f"results produced but lost: {net.produced - set(out.properties)}; "
        f"counted but never produced: {set(out.properties) - net.produced}"
    )
    for tid, props in out.properties.items():
        assert props == {"energy": float(tid)}, f"task {tid} got another task's result: {props}"
    if not out.incomplete:
        assert set(out.properties) == all_tasks and not out.failures
    assert not net.running, f"fragments still running at the end: {net.running}"
    assert net.byes == net.ready, f"workers that never said goodbye: {net.ready - net.byes}"
    assert net.pending_messages() == 0, (
        f"messages left in flight: to coordinator {list(net.to_coord)}, "
        f"to workers {({w: list(q) + list(net.inbox[w]) for w, q in net.in_flight.items() if q or net.inbox[w]})}"
    )


@pytest.fixture(autouse=True)
def deterministic_batching(monkeypatch):
    """The worker batches fast results by wall-clock age; make that age never the reason, so a
    schedule is the same on every run."""
    monkeypatch.setattr(worker_module, "FLUSH_AGE", 1e9)


# ------------------------------------------------------------------------------------------------
# scripted: the three orders of a steal against the victim's progress
# ------------------------------------------------------------------------------------------------

COSTS = {0: 10.0, 1: 5.0, 2: 1.0}  # largest first: worker 0 gets [0, 1] (prefetch 1), worker 1 gets [2]


def scripted(
    script: Callable[[Net, Coordinator], Iterator[None]],
    fail_first: Optional[set] = None,
    costs: Dict[int, float] = COSTS,
    n_workers: int = 2,
    seconds: Optional[Dict[int, float]] = None,
) -> Tuple[Net, Any]:
    """Run the coordinator while ``script`` drives the network; each ``yield`` hands every waiting
    message to the coordinator (one turn of its loop). When the script ends, everything simply
    flows to the end."""
    net = Net(n_workers, costs, fail_first=fail_first, seconds=seconds)
    # the scripts need worker 0 to hold a queued task: without the tail guard (with it a handful of
    # tasks on two workers is all tail, and nothing waits behind a running task)
    coord = make_coordinator(net, costs, "dynamic", prefetch=1, tail_guard=False)
    gen = script(net, coord)
    state = {"done": False}

    def driver(n: Net) -> Optional[int]:
        if not state["done"]:
            try:
                next(gen)
                return None
            except StopIteration:
                state["done"] = True
        n.flush_everything()
        return None

    net.driver = driver
    out = coord.run()
    check_invariants(net, out, set(costs))
    return net, out


def until_steal_in_flight(net: Net) -> Iterator[None]:
    """Worker 0 runs task 0 with task 1 queued; worker 1 finishes task 2 and, idle, makes the
    coordinator ask worker 0 for task 1 (the STEAL is left in flight)."""
    net.make_ready(0)
    yield
    net.deliver(0)
    net.step(0)
    assert net.running == {0: 0} and [t for t, _ in net.workers[0].queue] == [1], "precondition: worker 0 runs 0, holds 1"
    net.make_ready(1)
    yield
    net.deliver(1)
    net.step(1)
    assert net.running.get(2) == 1, "precondition: worker 1 runs task 2"
    net.finish(1)
    net.step(1)
    yield  # RESULTS(2) → worker 1 is idle → STEAL([1]) to worker 0
    assert list(net.in_flight[0]) == [(T.STEAL, [1])], f"precondition: a STEAL for task 1 in flight, got {list(net.in_flight[0])}"


def test_steal_arrives_before_the_victim_starts_the_task():
    def script(net, coord):
        yield from until_steal_in_flight(net)
        net.deliver(0)
        net.step(0)  # task 1 not started: given back
        assert net.returned == [(0, [1], [])]
        yield  # RETURNED → TASKS([1]) to worker 1

    net, out = scripted(script)
    assert net.ran_on == {0: [0], 1: [1], 2: [1]}
    assert out.steal_requests == 1 and out.steals == 1


def test_victim_starts_the_task_just_as_it_is_stolen():
    def script(net, coord):
        yield from until_steal_in_flight(net)
        net.finish(0)
        net.step(0)  # the victim has not seen the STEAL: it sends RESULTS(0) and starts task 1
        assert net.running == {1: 0}
        net.deliver(0)
        net.step(0)  # now the STEAL: task 1 has started → refused
        assert net.returned == [(0, [], [1])]
        yield

    net, out = scripted(script)
    assert net.ran_on == {0: [0], 1: [0], 2: [1]}
    assert net.executions == {0: 1, 1: 1, 2: 1}
    assert out.steal_requests == 1 and out.steals == 0


def test_refused_thief_looks_for_work_again():
    """After a refusal the thief holds nothing and has asked for nothing: it must be considered
    again. Here the victim's task then fails, and its retry may only go to the thief (a retry
    avoids the worker it failed on) — a thief left aside would leave the run waiting forever."""

    def script(net, coord):
        yield from until_steal_in_flight(net)
        net.finish(0)
        net.step(0)  # RESULTS(0), starts 1
        net.deliver(0)
        net.step(0)  # STEAL refused: 1 has started
        assert net.returned == [(0, [], [1])]
        yield

    net, out = scripted(script, fail_first={1})
    assert net.ran_on[1] == [0, 1], net.ran_on  # failed on the victim, retried on the former thief
    assert len(out.attempts[1]) == 1 and 1 in out.properties


def test_victim_finished_the_task_before_the_steal_arrives():
    """RESULTS for the requested task reach the coordinator before the refusal does."""

    def script(net, coord):
        yield from until_steal_in_flight(net)
        net.finish(0)
        net.step(0)  # RESULTS(0), starts 1
        net.finish(0)
        net.step(0)  # RESULTS(1)
        net.deliver(0)
        net.step(0)  # RETURNED([], [1])
        assert net.returned == [(0, [], [1])]
        kinds = [m[0] for _, m in net.to_coord]
        assert kinds == [T.RESULTS, T.RESULTS, T.RETURNED], kinds
        yield

    net, out = scripted(script)
    assert net.executions == {0: 1, 1: 1, 2: 1} and net.ran_on[1] == [0]


def test_stop_while_a_steal_is_in_flight():
    """A stop request (signal) while the STEAL is in flight: the stolen task is neither run twice
    nor lost track of — it is simply not started, and the run ends incomplete and resumable."""

    def script(net, coord):
        yield from until_steal_in_flight(net)
        coord.request_stop("SIGTERM")
        yield  # the coordinator asks again for what worker 0 has not started
        net.deliver(0)
        net.step(0)
        net.step(0)
        yield
        net.finish(0)
        net.step(0)
        yield

    net, out = scripted(script)
    assert out.incomplete and out.stop_reason == "SIGTERM"
    assert net.executions == {0: 1, 2: 1} and 1 not in out.properties
    assert net.returned and net.returned[0] == (0, [1], [])


def test_stop_cuts_the_running_fragment_but_keeps_finished_unsent_results():
    """Fast results are batched while the next fragment runs; a stop that cuts that fragment after
    the grace period must still deliver the batch (it is finished work, journaled before the end)."""

    def script(net, coord):
        net.make_ready(0)
        yield  # TASKS([0, 1])
        net.deliver(0)
        net.step(0)  # starts 0
        net.finish(0)
        net.step(0)  # 0 done (fast: its result waits in the batch), starts 1
        assert net.running == {1: 0} and [o.id for o in net.workers[0].unsent] == [0], "precondition"
        coord.request_stop("SIGTERM")
        while not any(m[0] == T.STOP for m in net.in_flight[0]):
            yield  # the grace period runs out on the coordinator's clock while 1 still runs
        net.deliver(0)
        net.step(0)  # STEAL (1 has started: refused), STOP: 1 is cut, the batch is sent, BYE
        yield

    net, out = scripted(script, costs={0: 2.0, 1: 1.0}, n_workers=1, seconds={0: FAST, 1: SLOW})
    assert out.incomplete and 0 in out.properties and 1 not in out.properties
    assert net.executions == {0: 1, 1: 1}


# ------------------------------------------------------------------------------------------------
# seeded random interleavings
# ------------------------------------------------------------------------------------------------


def random_driver(rng: random.Random, stop_at: Optional[int], coord_ref: Dict[str, Coordinator]):
    def driver(net: Net) -> Optional[int]:
        if stop_at is not None and net.calls == stop_at:
            coord_ref["coord"].request_stop("SIGTERM")
        for _ in range(rng.randint(1, 4)):
            w = rng.randrange(net.n)
            r = rng.random()
            if w not in net.ready:
                if r < 0.3:
                    net.make_ready(w, isolated=rng.random() < 0.7)
            elif r < 0.35:
                net.deliver(w, rng.randint(1, 2))
            elif r < 0.75:
                net.step(w)
            else:
                net.finish(w)
        return rng.randint(0, 3) if rng.random() < 0.7 else 0

    return driver


def simulate(seed: int, strategy: str, tail_guard: bool = True) -> Tuple[Net, Any]:
    rng = random.Random(seed)
    n_workers = rng.randint(2, 4)
    n_tasks = rng.randint(3, 16)
    costs = {t: rng.choice([1.0, 2.0, 3.0, 5.0, 8.0]) * rng.uniform(0.5, 1.5) for t in range(n_tasks)}
    fail_first = {t for t in costs if rng.random() < 0.15}
    seconds = {t: (FAST if rng.random() < 0.5 else SLOW) for t in costs}
    net = Net(n_workers, costs, fail_first=fail_first, seconds=seconds)
    stop_at = rng.randint(5, 60) if rng.random() < 0.2 else None
    holder: Dict[str, Coordinator] = {}
    net.driver = random_driver(rng, stop_at, holder)
    coord = make_coordinator(net, costs, strategy, prefetch=rng.randint(0, 4), tail_guard=tail_guard)
    holder["coord"] = coord
    out = coord.run()
    check_invariants(net, out, set(costs))
    if not out.incomplete:
        for t in costs:  # each task ran once, plus once more if its first attempt failed
            assert net.executions[t] == 1 + (t in fail_first), (t, net.executions[t], net.ran_on[t])
    return net, out


class Duplicates(logging.Handler):
    """Collects the coordinator's "ignoring a second result" warnings (a duplicate reached it)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "second result" in record.getMessage():
            self.seen.append(record.getMessage())


@pytest.mark.parametrize("strategy", ["dynamic", "dynamic-no-tail-guard", "work_stealing", "static"])
def test_random_interleavings_never_run_a_task_twice_or_lose_one(strategy, monkeypatch):
    tail_guard = not strategy.endswith("-no-tail-guard")
    strategy = strategy.replace("-no-tail-guard", "")
    log = logging.getLogger("qcmb_hpc.coordinator")
    duplicates = Duplicates()
    monkeypatch.setattr(log, "propagate", False)  # the injected failures' retry warnings are noise here
    log.addHandler(duplicates)
    seen = collections.Counter()
    try:
        for seed in range(300):
            try:
                net, out = simulate(seed, strategy, tail_guard)
            except AssertionError as exc:
                raise AssertionError(f"seed {seed} ({strategy}): {exc}") from None
            assert not duplicates.seen, f"seed {seed} ({strategy}): {duplicates.seen}"
            seen["refused"] += sum(1 for _, _, refused in net.returned if refused)
            seen["given"] += sum(1 for _, given, _ in net.returned if given)
            seen["stopped"] += out.incomplete
            seen["retried"] += bool(out.attempts)
    finally:
        log.removeHandler(duplicates)
    # the schedules did exercise what they are meant to
    assert seen["refused"] > 0, seen  # the victim had started (or finished) a task asked for
    assert seen["given"] > 0, seen
    assert seen["stopped"] > 0 and seen["retried"] > 0, seen
