"""The one coordinator loop, for every mode: assign, collect, steal, retry, checkpoint, report, stop.

It talks to its workers only through a transport endpoint (:mod:`qcmb_hpc.transport`) and asks
the :class:`~qcmb_hpc.schedule.Scheduler` (pure policy) what to send where. Time comes from an
injected clock, so the same loop runs against real processes, MPI ranks, or the simulation's
modelled workers on a fake clock.

Invariants:

* a result is journaled (flushed and fsynced, one fsync per batch) before it counts;
* a task is at most at one worker at a time (steals are confirmed by the victim), so none runs
  twice — a retry is a new attempt after the previous one has ended;
* a fragment that keeps failing ends as a failure for good only after every other fragment has
  been given its chance, so everything else is finished and saved;
* a stop request (signal) stops handing out work, gives running fragments ``grace_period``
  seconds, then cuts them; the journal holds everything that finished.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from . import failures
from .backoff import Backoff
from . import transport as T
from .checkpoint import Journal, fragment_record
from .config import LoadBalanceStrategy
from .cost import task_risk
from .engine import FragmentOutcome
from .plan import FragmentTask
from .progress import ProgressTracker
from .schedule import PrefetchPolicy, TaskDistributor

logger = logging.getLogger(__name__)

__all__ = ["Coordinator", "RunOutcome", "Attempt", "WorkerLostError", "should_retry"]


class WorkerLostError(RuntimeError):
    """The parallel machinery broke: every worker is gone, or a worker reported its own failure."""


def should_retry(outcome: FragmentOutcome, attempts: int, retry_enabled: bool, max_retries: int) -> bool:
    """:func:`qcmb_hpc.failures.should_retry` for an outcome."""
    return failures.should_retry(outcome.retryable, attempts, retry_enabled, max_retries)


@dataclass
class Attempt:
    worker: int
    host: str
    error_type: str
    error_message: str
    seconds: float


@dataclass
class RunOutcome:
    properties: Dict[int, Dict[str, Any]] = field(default_factory=dict)  #: task id → properties
    atomic_results: Dict[int, Any] = field(default_factory=dict)
    failures: Dict[int, List[Attempt]] = field(default_factory=dict)  #: failed for good
    attempts: Dict[int, List[Attempt]] = field(default_factory=dict)  #: every failed attempt
    restored: int = 0
    incomplete: bool = False  #: stopped before the end (signal); resumable
    stop_reason: str = ""
    makespan: float = 0.0
    timings: List[Tuple[int, int, float, float]] = field(default_factory=list)  #: (task, worker, start, seconds)
    workers: Dict[int, Dict[str, Any]] = field(default_factory=dict)  #: READY info + BYE stats
    steals: int = 0
    steal_requests: int = 0
    strategy: str = ""
    lost_workers: List[str] = field(default_factory=list)
    #: set when the run stopped because its failures are systematic (:func:`qcmb_hpc.failures.is_systematic`):
    #: {"error_type", "line" (what the engine said), "labels" (the fragments that saw it)}
    systematic: Optional[Dict[str, Any]] = None
    #: the coordinator's clock when the first tasks went to a worker (None: none went)
    first_dispatch: Optional[float] = None


class Coordinator:
    """Runs ``tasks`` on the endpoint's workers. Construct, then :meth:`run`."""

    def __init__(
        self,
        tasks: Sequence[FragmentTask],
        endpoint: Any,
        spec: Any,
        *,
        strategy: LoadBalanceStrategy = LoadBalanceStrategy.DYNAMIC,
        work_stealing: bool = True,
        prefetch: Optional[int] = None,
        retry_failed: bool = True,
        max_retries: int = 2,
        journal: Optional[Journal] = None,
        restored: Optional[Dict[int, Dict[str, Any]]] = None,
        tracker: Optional[ProgressTracker] = None,
        cost_model: Any = None,
        grace_period: float = 30.0,
        clock: Callable[[], float] = time.perf_counter,
        start_timeout: float = 600.0,
        previous: Optional[RunOutcome] = None,
        tail_guard: bool = True,
    ):
        """``previous``: the outcome of a run this one continues (the sequential fallback after the
        parallel machinery broke): its results, attempts and failures carry over — a fragment that
        failed for good stays failed, retries count on — and the progress tracker goes on
        where it was instead of starting again. ``tail_guard``: the scheduler's (see
        :mod:`qcmb_hpc.schedule`), with the cost model's spread as its risk."""
        self.tasks = {t.id: t for t in tasks}
        self.endpoint = endpoint
        self.spec = spec
        self.journal = journal
        self.tracker = tracker
        self.cost_model = cost_model
        self.retry_failed = retry_failed
        self.max_retries = max_retries
        self.grace_period = grace_period
        self.clock = clock
        # (an endpoint whose workers wait in a batch queue says how long to wait for the first one)
        self.start_timeout = getattr(endpoint, "start_timeout", start_timeout)
        self.out = RunOutcome()
        self.continuing = previous is not None
        if previous is not None:
            restored = dict(previous.properties)
            self.out.restored = previous.restored
            self.out.atomic_results.update(previous.atomic_results)
            self.out.timings = list(previous.timings)
            self.out.lost_workers = list(previous.lost_workers)
            self.out.attempts = {tid: list(a) for tid, a in previous.attempts.items()}
            self.out.failures = {tid: self.out.attempts.get(tid, list(a)) for tid, a in previous.failures.items()}
        else:
            restored = restored or {}
            self.out.restored = len(restored)
        for tid, props in restored.items():
            self.out.properties[tid] = props
        todo = {t.id: t.cost for t in tasks if t.id not in restored and t.id not in self.out.failures}
        self.unresolved: Set[int] = set(todo)
        self.scheduler = TaskDistributor(strategy, work_stealing).scheduler(
            todo, endpoint.workers, prefetch=prefetch or 1, tail_guard=tail_guard, risk=task_risk(cost_model, self.tasks)
        )
        self.out.strategy = self.scheduler.strategy.value
        self.ready: Set[int] = set()
        self.live: Set[int] = set(endpoint.workers)
        self._dirty: Set[int] = set()  # workers whose state changed: see what they need
        # workers that got nothing last time, oldest first (an OrderedDict: taking the first of a plain
        # dict after many deletions scans the deleted slots, O(workers) per take)
        self._idle: Dict[int, None] = collections.OrderedDict()
        self.said_bye: Set[int] = set()
        self._batch_ok: Set[int] = set()  # successes of the batch being handled, not yet counted
        self.stop_reason: Optional[str] = None
        self.stop_deadline: Optional[float] = None
        self.stop_sent = False
        self.prefetch = PrefetchPolicy(prefetch)
        self._results_seen = 0
        # per model chemistry: fragments to do, successes, and the signatures of those failed for good
        self._todo_mc = collections.Counter(self.tasks[t].mc for t in todo)
        self._ok_mc: Dict[str, int] = collections.Counter()
        self._failed_mc: Dict[str, List[Tuple[str, str]]] = collections.defaultdict(list)
        self._failed_ids: Dict[str, List[int]] = collections.defaultdict(list)
        # (for the hold on new work) fragments awaiting a retry, and failed for good, with errors that can be systematic
        self._awaiting_retry: Dict[str, Set[int]] = {}  # (no empty sets: the check per batch is O(such model chemistries))
        self._failed_relevant_mc: Dict[str, int] = collections.Counter()
        for tid, attempts in self.out.failures.items():  # a continued run's failures count on ...
            self._note_failure(tid, attempts[-1])
        if previous is not None:  # ... and so do its successes
            self._ok_mc.update(self.tasks[t].mc for t in previous.properties)

    # ------------------------------------------------------------------------------------------
    def request_stop(self, reason: str, grace_period: Optional[float] = None) -> None:
        """Stop handing out work (safe to call from a signal handler); running fragments get
        ``grace_period`` seconds (default: the run's) to finish."""
        if self.stop_reason is None:
            self.stop_reason = reason
            if grace_period is not None:
                self.grace_period = grace_period

    def run(self) -> RunOutcome:
        t_start = self.clock()
        if self.tracker is not None:
            self.tracker.attach(self)
            if not self.continuing:
                self.tracker.start([self.tasks[tid].nbody for tid in self.out.properties], list(self.out.properties))
        self.endpoint.setup(self.spec)
        backoff = Backoff(getattr(self.endpoint, "max_wait", 0.05))
        while True:
            if self.stop_reason is not None and self.stop_deadline is None:
                self._begin_stop()
            if self._finished():
                break
            if not self.ready and self.clock() - t_start > self.start_timeout and not self.stop_sent:
                raise WorkerLostError(f"no worker became ready within {self.start_timeout:.0f} s")
            msgs = self.endpoint.recv(backoff.wait)
            if msgs:
                self._handle_batch(msgs)
                backoff.reset()
            else:
                backoff.advance()
            if self.stop_deadline is None:
                # (a stop requested by a signal since the top of this pass hands out nothing more)
                if msgs and self.stop_reason is None:  # nothing changed otherwise: an idle wait stays cheap
                    self._dispatch()
            elif not self.stop_sent and (self._all_idle() or self.clock() >= self.stop_deadline):
                self._send_stop()
            if self.tracker is not None:
                self.tracker.tick()
        if not self.stop_sent:
            self._send_stop()
        self._await_byes()
        self.out.makespan = self.clock() - t_start
        self.out.steals = self.scheduler.steals
        self.out.steal_requests = self.scheduler.steal_requests
        self.out.incomplete = bool(self.unresolved)
        self.out.stop_reason = self.stop_reason or ""
        if self.tracker is not None and not self.out.incomplete:
            self.tracker.finish()
        return self.out

    # -- loop pieces ------------------------------------------------------------------------------
    def _finished(self) -> bool:
        if self.stop_sent:
            return True
        if not self.unresolved:
            return True
        if not self.live:
            if self.stop_reason is not None:
                return True  # stopping: workers leaving is expected
            raise WorkerLostError("every worker is gone: " + "; ".join(self.out.lost_workers or ["no workers"]))
        return False

    def _all_idle(self) -> bool:
        return all(self.scheduler.idle(w) for w in self.live)

    def _handle_batch(self, msgs: List[Tuple[int, T.Message]]) -> None:
        records: List[Dict[str, Any]] = []
        finished: List[FragmentOutcome] = []
        self._batch_ok.clear()
        for wid, msg in msgs:
            kind = msg[0]
            if kind == T.RESULTS:
                self._dirty.add(wid)
                for out in msg[1]:
                    if self._accept(wid, out):
                        if out.ok:
                            finished.append(out)
                            if self.journal is not None:
                                records.append(self._record(out))
            elif kind == T.READY:
                self.ready.add(wid)
                self._dirty.add(wid)
                self.out.workers.setdefault(wid, {}).update(msg[1])
                # a worker running fragments inline reads a STEAL only between fragments
                self.scheduler.set_responsive(wid, bool(msg[1].get("isolated", True)))
            elif kind == T.RETURNED:
                thief, ids = self.scheduler.returned(wid, msg[1], msg[2] if len(msg) > 2 else ())
                if thief is not None:
                    if ids:
                        self.endpoint.send(thief, (T.TASKS, [self.tasks[t].wire() for t in ids]))
                    self._dirty.add(thief)  # refused, it holds nothing: it must look for work again
                self._dirty.add(wid)
            elif kind == T.BYE:
                self.said_bye.add(wid)
                self.out.workers.setdefault(wid, {}).update(msg[1])
            elif kind == T.FAILED:
                self._lose(wid, str(msg[1]))
                if isinstance(msg[1], str):
                    logger.error("%s", msg[1])
            elif kind == T.LOST:
                self._lose(wid, str(msg[1]))
            elif kind == T.JOINED:
                self._join(wid)
            else:
                raise WorkerLostError(f"unknown message {kind!r} from worker {wid}")
        if records and self.journal is not None:
            self.journal.append(records)  # durable before counted
        for out in finished:
            self._count_success(out)
        self._update_hold()

    def _record(self, out: FragmentOutcome) -> Dict[str, Any]:
        task = self.tasks[out.id]
        initial = getattr(self.cost_model, "initial_estimates", {}).get(out.id)
        attempt = len(self.out.attempts.get(out.id, ())) + 1
        return fragment_record(task.label, out, attempt=attempt, estimate=task.cost, estimate_initial=initial)

    def running_fragments(self) -> Dict[int, int]:
        """Worker → the fragment it is running now (the head of what it was sent), for each live
        worker holding any."""
        sent = self.scheduler.sent
        return {w: q[0] for w in self.live for q in (sent.get(w),) if q}

    def _accept(self, wid: int, out: FragmentOutcome) -> bool:
        """Bookkeeping for one attempt; returns whether it is a success to count."""
        tid = out.id
        if tid not in self.unresolved or tid in self._batch_ok:  # a duplicate can only come from a bug; never count twice
            logger.warning("ignoring a second result for fragment %s from worker %s", tid, wid)
            self.scheduler.completed(wid, tid)
            return False
        self.out.timings.append((tid, wid, out.started, out.seconds))
        if out.ok:
            self.scheduler.completed(wid, tid)
            self._batch_ok.add(tid)
            return True
        if out.error_type == "cancelled" or self.stop_reason is not None:
            # cut by a stop (or failed while stopping, e.g. the signal reached the QC program too):
            # not an attempt that counts; the fragment stays to be done by the resumed run
            self.scheduler.failed(wid, tid, retry=True)
            return False
        task = self.tasks[tid]
        attempt = Attempt(wid, out.host, out.error_type or "unknown_error", out.error_message or "", out.seconds)
        self.out.attempts.setdefault(tid, []).append(attempt)
        n = len(self.out.attempts[tid])
        retry = should_retry(out, n, self.retry_failed, self.max_retries)
        avoid = {a.worker for a in self.out.attempts[tid]}
        self.scheduler.failed(wid, tid, retry=retry, avoid=avoid)
        if retry:
            if failures.can_be_systematic(attempt.error_type):
                self._awaiting_retry.setdefault(task.mc, set()).add(tid)
            # (said once: the progress reporter shows it; the log has it at DEBUG)
            logger.debug("fragment %s attempt %d on worker %d failed (%s); retrying", task.label, n, wid, attempt.error_type)
            if self.tracker is not None:
                self.tracker.retried(task.label, n, f"{attempt.error_type}: {failures.meaningful_line(attempt.error_message)}")
        else:
            self._fail_for_good(tid)
        return False

    def _fail_for_good(self, tid: int) -> None:
        """The fragment's last attempt failed and it gets no other: it ends as a failure."""
        task = self.tasks[tid]
        attempts = self.out.attempts[tid]
        self.out.failures[tid] = attempts
        self.unresolved.discard(tid)
        self._no_longer_awaiting(task.mc, tid)
        logger.debug("fragment %s failed for good after %d attempt(s): %s", task.label, len(attempts), attempts[-1].error_type)
        if self.tracker is not None:
            self.tracker.completed(task.label, task.nbody, False, tid)
        last = attempts[-1]
        seen = self._note_failure(tid, last)
        if self.out.systematic is None and failures.is_systematic(seen, self._ok_mc[task.mc], self._todo_mc[task.mc]):
            alike = [t for t, sig in zip(self._failed_ids[task.mc], seen) if sig == seen[-1]]
            self.out.systematic = {
                "model_chemistry": task.mc,
                "error_type": last.error_type,
                "line": failures.meaningful_line(last.error_message),
                "labels": [self.tasks[t].label for t in alike],
            }
            logger.debug("systematic failure of model chemistry %s: stopping", task.mc)
            self.request_stop("a systematic error", grace_period=0.0)

    def _note_failure(self, tid: int, last: Attempt) -> List[Tuple[str, str]]:
        """Record a failure for good for the systematic-error rule; the signatures of its model chemistry."""
        mc = self.tasks[tid].mc
        self._failed_mc[mc].append(failures.signature(last.error_type, last.error_message))
        self._failed_ids[mc].append(tid)
        if failures.can_be_systematic(last.error_type):
            self._failed_relevant_mc[mc] += 1
        return self._failed_mc[mc]

    def _count_success(self, out: FragmentOutcome) -> None:
        tid = out.id
        task = self.tasks[tid]
        self.out.properties[tid] = out.properties or {}
        self._ok_mc[task.mc] += 1
        self._no_longer_awaiting(task.mc, tid)
        if out.atomic_result is not None:
            self.out.atomic_results[tid] = out.atomic_result
        self.unresolved.discard(tid)
        if self.tracker is not None:
            self.tracker.completed(task.label, task.nbody, True, tid, out.seconds)
        self._results_seen += 1
        self.scheduler.prefetch = self.prefetch.observe(out.seconds)
        if self.cost_model is not None and self.cost_model.observe(task.mc, task.real, task.basis, out.seconds):
            self._refit()  # (the model's own schedule: after 3, 6, 12, … of this run's samples)

    def _no_longer_awaiting(self, mc: str, tid: int) -> None:
        ids = self._awaiting_retry.get(mc)
        if ids is not None:
            ids.discard(tid)
            if not ids:
                del self._awaiting_retry[mc]

    def _update_hold(self) -> None:
        """Hold new work while some model chemistry's retries decide whether its failures are
        systematic (:func:`qcmb_hpc.failures.hold_new_fragments`); on release, the idle workers look
        for work again."""
        held = any(
            failures.hold_new_fragments(len(ids), self._failed_relevant_mc[mc], self._ok_mc[mc])
            for mc, ids in self._awaiting_retry.items()
        )
        if held != self.scheduler.hold_new:
            self.scheduler.hold_new = held
            logger.debug("new fragments %s", "held: retries first" if held else "released")
            if not held:
                self._idle.update((w, None) for w in self.ready)

    def _refit(self) -> None:
        if not self.cost_model.refit():
            return
        # new estimates only if the refit changed their order (else None): re-estimating every
        # pending fragment at every refit was O(fragments) each time
        costs = self.cost_model.reestimate(self.tasks[tid] for tid in self.unresolved)
        if costs is None:
            return
        self.scheduler.reorder(costs)
        logger.debug("cost model refit after %d results; %d pending tasks re-ordered", self._results_seen, len(costs))

    def _dispatch(self) -> None:
        """Top up the workers whose state changed; then let idle workers take (or steal) work while
        there is any. Work is O(changes), not O(workers), per round."""
        dirty, self._dirty = self._dirty, set()
        for w in dirty:
            if w in self.ready and not self._serve(w):
                self._idle[w] = None
        while self._idle:
            w, _ = self._idle.popitem(last=False)  # type: ignore[call-arg]
            if w in self.ready and not self._serve(w):
                self._idle[w] = None
                if not self.scheduler.retry:
                    break  # nobody else would get anything either
                # a retry may be meant for another worker than this one: try each idle one once
                for v in list(self._idle):
                    if v != w and v in self.ready and self._serve(v):
                        del self._idle[v]
                break

    def _serve(self, w: int) -> bool:
        """Send ``w`` what it should get now; returns whether it got (or was promised) anything."""
        sched = self.scheduler
        ids = sched.assign(w)
        if ids:
            self.endpoint.send(w, (T.TASKS, [self.tasks[t].wire() for t in ids]))
            if self.out.first_dispatch is None:
                self.out.first_dispatch = self.clock()
            return True
        if not sched.idle(w):
            return True  # busy enough
        plan = sched.steal(w)
        if plan is None:
            return w in sched.thieves  # waiting for a steal answer counts as served
        target, tids = plan
        if target == w:
            self.endpoint.send(w, (T.TASKS, [self.tasks[t].wire() for t in tids]))
        else:
            self.endpoint.send(target, (T.STEAL, list(tids)))
        return True

    def _join(self, wid: int) -> None:
        """A worker the transport added during the run (a replacement): counted from now on."""
        if wid in self.live or wid in self.out.workers:
            return
        self.live.add(wid)
        self.scheduler.add_worker(wid)
        if self.stop_sent:
            self.endpoint.send(wid, (T.STOP,))

    def _lose(self, wid: int, why: str) -> None:
        if wid in self.said_bye:  # a worker that said goodbye and left is not lost
            self.live.discard(wid)
            return
        if wid not in self.live:
            return
        self.live.discard(wid)
        self.ready.discard(wid)
        self._idle.pop(wid, None)
        last = why.strip().splitlines()[-1] if why.strip() else "no reason given"
        self.out.lost_workers.append(f"worker {wid}: {last}")
        sent = list(self.scheduler.sent.get(wid, ()))
        drop = []
        if sent and sent[0] in self.unresolved:
            # the fragment it was (probably) running counts as a failed attempt, so a fragment that
            # kills its worker cannot take down every worker in turn
            head = sent[0]
            out = FragmentOutcome(id=head, ok=False, error_type="worker_lost", error_message=why[-2000:], worker=wid)
            self.out.attempts.setdefault(head, []).append(Attempt(wid, "", "worker_lost", why[-2000:], 0.0))
            if not should_retry(out, len(self.out.attempts[head]), self.retry_failed, self.max_retries):
                self._fail_for_good(head)
                drop.append(head)
        self.scheduler.remove_worker(wid, drop=drop)
        self._idle.update((w, None) for w in self.ready)  # the lost work is up for grabs
        logger.warning("worker %d lost (%s); its %d task(s) go to the others", wid, last[:200], len(sent))

    def _begin_stop(self) -> None:
        self.stop_deadline = self.clock() + self.grace_period
        again = "Ctrl-C" if self.stop_reason == "SIGINT" else f"{self.stop_reason}"
        if self.grace_period > 0:
            logger.warning(
                "stop requested (%s): no new fragments; running ones get %.0f s to finish (a second %s stops them at once)",
                self.stop_reason, self.grace_period, again,
            )
        else:
            logger.warning("stopping (%s): no new fragments; running ones are cut", self.stop_reason)
        if self.tracker is not None:
            self.tracker.stopping(self.stop_reason)
        self.scheduler.cancel_steals()
        for w in list(self.live):
            unstarted = list(self.scheduler.sent.get(w, ()))[1:]
            if unstarted:
                self.endpoint.send(w, (T.STEAL, unstarted))

    def _send_stop(self) -> None:
        for w in list(self.live):
            self.endpoint.send(w, (T.STOP,))
        self.stop_sent = True

    def _await_byes(self, timeout: float = 30.0) -> None:
        deadline = self.clock() + timeout
        waiting = self.live - self.said_bye  # kept up to date per message: O(messages), not O(workers)
        while waiting and self.clock() < deadline:
            msgs = self.endpoint.recv(0.01)
            if msgs:
                self._handle_batch(msgs)
                for wid, _ in msgs:
                    if wid in self.said_bye or wid not in self.live:
                        waiting.discard(wid)
