"""The ETA: how long a run still needs, weighted by estimated cost (pure policy, no clocks, no I/O).

Fragments of a many-body expansion differ in cost by 100× and more, and the largest run first, so
a count-based ETA (fragments left ÷ fragments per second) is far too pessimistic at the start and
too optimistic at the end. The cost-weighted ETA is

    ETA = (remaining − running credit) / ((done in this run + running credit) / seconds since it started)

in estimated cost, where "estimated cost" is the cost model's *current* estimate of each fragment: when the model
refits (:meth:`qcmb_hpc.cost.CostModel.refit`), both the work done and the work left are priced
again with the new fit, so the rate and the remainder stay in one unit. Fragments restored from a
checkpoint count as done, not into the rate; a fragment that failed for good is done (its time is
spent, nothing of it remains). Before the first fragment of this run finishes there is no rate,
and no ETA (None), rather than a guess.

The *running credit* is the part of the fragments now running that is already done:
``min(age / seconds_per_cost, estimate)`` for each, where ``age`` is how long it has been running
and ``seconds_per_cost`` the seconds one unit of estimated cost has taken in this run (measured
fragment seconds ÷ their estimated cost). Without it the rate is far too low whenever many
fragments run at once: with 16 workers running 16 large fragments that all end together, the first
of them to end would count as the whole rate — an ETA 16 times too long.

And no run ends before its longest running fragment does: the ETA is at least the largest
``estimate · seconds_per_cost · risk − age`` of those running (:meth:`CostLedger.longest_left`).
This is what keeps it honest at the tail, when fewer fragments are left than workers and the rate
of the whole run no longer applies. ``risk`` is the upper-quantile factor the scheduler's tail
guard plans with (:func:`qcmb_hpc.cost.task_risk`: the 90th percentile of the model chemistry's
estimate error): the run ends with the *latest* of the running fragments, and the latest of several
noisy ends lies above their estimates — by their point estimates the ETA ran out while an
under-estimated fragment still ran (``benchmarks/bench_eta.py``, 32 workers).

:class:`CostLedger` keeps the sums. Fragments priced alike (the same program, method, driver and
size: a handful of groups, however many fragments) share a group, so a refit re-prices in
O(groups) and each completion costs O(1).

``benchmarks/bench_eta.py`` and ``tests/test_eta.py`` compare this with a count-based ETA over
whole simulated runs (the real coordinator on a fake clock).
"""

from __future__ import annotations

from array import array
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

__all__ = ["eta_seconds", "running_credit", "CostLedger", "ledger_for"]


def eta_seconds(done: float, remaining: float, elapsed: float) -> Optional[float]:
    """Seconds left at the rate ``done / elapsed`` (any unit of work: estimated cost, or a count
    for the count-based ETA); 0 when nothing remains, None without a rate yet."""
    if remaining <= 0:
        return 0.0
    if done <= 0 or elapsed <= 0:
        return None
    return remaining * elapsed / done


def running_credit(running: Iterable[Tuple[float, float]], seconds_per_cost: Optional[float]) -> float:
    """The estimated cost already done of fragments running now, each ``(age seconds, estimate)``:
    ``min(age / seconds_per_cost, estimate)`` (0 without a measured ``seconds_per_cost``)."""
    if not seconds_per_cost or seconds_per_cost <= 0:
        return 0.0
    return sum(min(max(age, 0.0) / seconds_per_cost, est) for age, est in running)


class CostLedger:
    """Estimated cost of the fragments done (restored, or finished in this run) and left.

    ``groups[i]`` is the pricing group of the task with id ``i``; ``price(group)`` its current
    estimate; ``revision()`` changes whenever prices may have changed (a refit); ``risk(i)`` the
    factor from the task's estimate to its upper quantile (:meth:`longest_left`)."""

    def __init__(
        self,
        groups: Sequence[Hashable],
        price: Callable[[Hashable], float],
        revision: Callable[[], Any] = lambda: None,
        risk: Callable[[int], float] = lambda tid: 1.0,
    ):
        index: Dict[Hashable, int] = {}
        self._of = array("l", [0]) * len(groups)  # task id → group number
        for tid, g in enumerate(groups):
            k = index.get(g)
            if k is None:
                k = index[g] = len(index)
            self._of[tid] = k
        self._keys: List[Hashable] = list(index)
        n = len(self._keys)
        self._total = [0] * n
        for k in self._of:
            self._total[k] += 1
        self._restored = [0] * n
        self._session = [0] * n
        self._price = price
        self._revision = revision
        self._risk = risk
        self._rev: Any = object()  # never equal: price on first use
        self._prices: List[float] = []
        self._sums = (0.0, 0.0, 0.0)
        self._seconds = 0.0  # measured seconds of the fragments done in this run that have one
        self._timed = [0] * n  # those fragments, per group

    def _reprice(self) -> None:
        rev = self._revision()
        if rev == self._rev and self._prices:
            return
        self._rev = rev
        self._prices = [float(self._price(g)) for g in self._keys]
        p = self._prices
        self._sums = (
            sum(c * x for c, x in zip(self._total, p)),
            sum(c * x for c, x in zip(self._restored, p)),
            sum(c * x for c, x in zip(self._session, p)),
        )

    def mark(self, tid: int, restored: bool = False, seconds: Optional[float] = None) -> None:
        """Task ``tid`` is done (``restored``: taken from a checkpoint, not done in this run;
        ``seconds``: how long it took, for :meth:`seconds_per_cost`)."""
        self._reprice()
        k = self._of[tid]
        if seconds is not None and not restored:
            self._seconds += seconds
            self._timed[k] += 1
        total, rest, sess = self._sums
        if restored:
            self._restored[k] += 1
            self._sums = (total, rest + self._prices[k], sess)
        else:
            self._session[k] += 1
            self._sums = (total, rest, sess + self._prices[k])

    def sums(self) -> Tuple[float, float, float]:
        """(total, restored, done in this run) estimated cost, at the current prices."""
        self._reprice()
        return self._sums

    def price(self, tid: int) -> float:
        """The current estimate of task ``tid``."""
        self._reprice()
        return self._prices[self._of[tid]]

    def seconds_per_cost(self) -> Optional[float]:
        """Measured seconds per unit of (current) estimated cost, over the fragments of this run
        that came with their seconds; None before the first."""
        self._reprice()
        cost = sum(c * x for c, x in zip(self._timed, self._prices))
        return self._seconds / cost if cost > 0 and self._seconds > 0 else None

    def running_parts(self, running: Iterable[Tuple[float, int]]) -> Dict[int, Tuple[float, float]]:
        """For each of ``running`` (``(age seconds, task id)``): ``(credit, seconds left)`` —
        :func:`running_credit` of it, and what it still needs by its estimate's upper quantile
        (``risk``) at this run's measured seconds per unit of cost (both 0 before the first
        measurement)."""
        spu = self.seconds_per_cost()
        out: Dict[int, Tuple[float, float]] = {}
        for age, tid in running:
            est = self.price(tid)
            left = max(0.0, est * spu * self._risk(tid) - age) if spu else 0.0
            out[tid] = (running_credit([(age, est)], spu), left)
        return out

    def credit(self, running: Iterable[Tuple[float, int]]) -> float:
        """The total :func:`running_credit` of ``running`` (:meth:`running_parts`)."""
        return sum(c for c, _ in self.running_parts(running).values())

    def longest_left(self, running: Iterable[Tuple[float, int]]) -> float:
        """The most seconds any of ``running`` still needs (:meth:`running_parts`)."""
        return max((left for _, left in self.running_parts(running).values()), default=0.0)

    def eta(self, elapsed: float, credit: float = 0.0, at_least: float = 0.0) -> Optional[float]:
        """The cost-weighted ETA (module docstring) after ``elapsed`` seconds of this run, with
        the :meth:`credit` of the fragments running now, and no less than ``at_least``
        (:meth:`longest_left`)."""
        total, rest, sess = self.sums()
        left = total - rest - sess
        credit = min(credit, left)
        eta = eta_seconds(sess + credit, left - credit, elapsed)
        return max(eta, at_least) if eta is not None and left > 0 else eta


def ledger_for(tasks: Sequence[Any], cost_model: Any = None) -> CostLedger:
    """The ledger of ``tasks`` (ids 0..n-1, in order): priced by ``cost_model``'s current fits
    (:meth:`~qcmb_hpc.cost.CostModel.group`, ``group_estimate``, ``revision``), or without one by
    each task's fixed ``cost``; its upper quantiles are the tail guard's
    (:func:`~qcmb_hpc.cost.task_risk`)."""
    from .cost import task_risk

    ordered = tasks
    if any(t.id != i for i, t in enumerate(tasks)):  # (a plan's tasks are in id order: no sort)
        ordered = sorted(tasks, key=lambda t: t.id)
        if any(t.id != i for i, t in enumerate(ordered)):
            raise ValueError("task ids must be 0..n-1")
    risk = task_risk(cost_model, ordered)
    if cost_model is None or not hasattr(cost_model, "group"):
        return CostLedger([float(t.cost) for t in ordered], float, risk=risk)
    groups = cost_model.groups(ordered) if hasattr(cost_model, "groups") else [cost_model.group(t) for t in ordered]
    return CostLedger(groups, cost_model.group_estimate, lambda: cost_model.revision, risk=risk)
