"""The one run driver, for every way of running: plan, pick a plugin, enter its worker pool, run
the one coordinator over the pool's endpoint, assemble — and, when the workers cannot start or
all die, go on sequentially in this process.

    computer (plan, assemble: QCManyBody's)   ←   driver.run   →   plugin → WorkerPool → endpoint
                                                      │
                                               Coordinator (+ Scheduler, CostModel, Journal, tracker)

What every run does on its coordinating process, in order: the user's modules, QCManyBody's
plan, a check that every program used is installed, cost estimates, the journal and what it
restores; the layout (:class:`~qcmb_hpc.resources.ResourceManager`, through the pool); the run
specification; the workers (``pool.start``); the coordinator, under :class:`~qcmb_hpc.signals.StopSignals`;
the cost history; assembly. Errors: an input error found before the workers have their work is
told to every process of the pool (they raise it too); anything unexpected goes to
``pool.fail`` (MPI: the whole job ends at once instead of hanging).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .config import ParallelConfig
from .errors import InputDataError, ParallelExecutionError, QCMBError
from .plugins import get_plugin, select_plugin

# What only the coordinating process needs (planning, the journal, the cost model, assembly:
# QCManyBody and its models) is imported inside the functions that coordinate: a worker rank
# starts on what runs fragments, and no more.

logger = logging.getLogger("qcmb_hpc")

__all__ = ["run", "RunInfo", "check_programs", "open_journal", "make_spec", "prepare"]


@dataclass
class RunInfo:
    mode: str
    workers: int
    layout: Any  #: the Layout this process gave its workers
    wall: float
    fell_back: Optional[str] = None  #: why the run continued sequentially, if it did
    initial_costs: Optional[Dict[int, float]] = None  #: task id → estimate when the run started
    started: Optional[float] = None  #: wall clock (epoch seconds) when the run started
    phases: Any = None  #: seconds per phase so far (:class:`~qcmb_hpc.report.Phases`; assembly adds its own)
    first_dispatch: Optional[float] = None  #: seconds after the start when the first fragment went to a worker


def run(computer: Any, fresh: bool = False, broadcast_result: bool = True, config: Optional[ParallelConfig] = None) -> Any:
    """Run ``computer``'s expansion; every process of the pool returns the v2 result (``None`` on
    the other processes of an SPMD pool without ``broadcast_result``), and has the run report in
    ``computer.run_info``. ``computer`` may be a function that makes it (then ``config`` is the
    run's): it is called only on the process that coordinates — the command line's worker ranks
    never read the input."""
    if config is None:
        config = computer.parallel_config
    plugin, fell_back = select_plugin(config)
    with contextlib.ExitStack() as pools:  # the plugin's pool, and one a fallback starts: shut down on the way out
        pool = pools.enter_context(plugin.create_executor(config))
        fell_back = fell_back or pool.fell_back
        if not pool.coordinates:
            try:
                pool.serve()
                result, report = pool.share()
            except BaseException as exc:
                if exc is not pool.told:  # (the coordinator's error, told to every process, is raised as it is)
                    pool.fail("worker", exc)
                raise
            if not callable(computer):
                computer.run_info = report
            return result if broadcast_result else None
        if callable(computer):
            with telling(pool, "reading the input"):
                computer = computer()
        from .gcpause import frozen

        with frozen():
            return _coordinate(computer, config, pool, pools, fresh, fell_back, broadcast_result)


@contextlib.contextmanager
def telling(pool: Any, where: str) -> Any:
    """Errors in the block reach every process of the pool: an input error (``QCMBError``) as it
    is — they raise it too — anything else as the failure of ``where`` (MPI: the job ends)."""
    try:
        yield
    except QCMBError as exc:
        pool.share(error=exc)
        raise
    except BaseException as exc:
        pool.fail(where, exc)
        raise


def _coordinate(computer: Any, config: ParallelConfig, pool: Any, pools: Any, fresh: bool, fell_back: Optional[str],
                broadcast_result: bool) -> Any:
    # (the run's own state — coordinator, scheduler, tracker, cost model, restored records — ends
    # with _execute's frame: at 680k fragments it is ~0.1 GiB that would sit under the result object)
    from .report import without_attempts

    plan, outcome, atomic, info, pool = _execute(computer, config, pool, pools, fresh, fell_back)
    with telling(pool, "assembling"):
        result = computer.assemble(plan, outcome, atomic, info)
    # (the per-attempt table stays here: ~100 bytes a fragment, on every rank of a big job)
    pool.share(result if broadcast_result else None, without_attempts(computer.run_info))
    return result


def _execute(computer: Any, config: ParallelConfig, pool: Any, pools: Any, fresh: bool, fell_back: Optional[str]) -> Any:
    """Plan and run: (plan, outcome, restored atomic results, RunInfo, the pool that finished)."""
    from . import gcpause
    from .progress import make_reporter, run_tracker
    from .report import Phases
    from .resources import ResourceManager

    t0, started = time.perf_counter(), time.time()
    phases = Phases()  # (the run report's phases: where the time goes)
    with telling(pool, "planning"):
        # (the plan, the restored results, the tracker: built without the collector and never
        # traversed by it during the run, see qcmb_hpc.gcpause)
        with phases("planning"), gcpause.paused_gc(freeze=True):
            plan = computer.build_plan()
        cost, journal, restored, atomic = prepare(plan, config, fresh, phases)
        with phases("setup"), gcpause.paused_gc(freeze=True):
            todo = len(plan.tasks) - len(restored)
            resources = ResourceManager(config)
            if todo == 0 and pool.can_fall_back:  # nothing to run: no worker processes to start
                pool = pools.enter_context(get_plugin("sequential").create_executor(config))
            layout = pool.layout(resources, todo)
            spec = make_spec(plan, config, layout)
            tracker = run_tracker(make_reporter(config.progress_reporting, computer.progress_reporter), plan.tasks, cost,
                                  journal.path if journal else None, mode=pool.mode)
    logger.info("qcmb_hpc: %s", pool.describe(layout))
    coords: List[Any] = []
    try:
        try:
            t_start = time.perf_counter()
            outcome, pool, fell_back = _run_coordinator(
                plan, config, pool, pools, spec, layout, journal, restored, tracker, cost, coords, fell_back)
            loop = sum(c.out.makespan for c in coords)
            phases.add("start", time.perf_counter() - t_start - loop)
            phases.add("loop", loop)
        finally:
            tracker.close()
            if journal is not None:
                journal.close()
                phases.add("journal_writes", journal.seconds)
        cost.save()  # into config.cost_history, if any (a cache: a failure to write it is a warning)
    except QCMBError as exc:
        if not pool.can_fall_back:  # (an SPMD pool's workers are still working: they would never hear)
            pool.fail("coordinator", exc)
        raise
    except BaseException as exc:
        pool.fail("coordinator", exc)
        raise
    info = RunInfo(
        mode=pool.mode, workers=len(coords[-1].endpoint.workers), layout=layout, wall=time.perf_counter() - t0,
        fell_back=fell_back, initial_costs=cost.initial_estimates, started=started, phases=phases,
        first_dispatch=None if coords[0].out.first_dispatch is None else coords[0].out.first_dispatch - t0,
    )
    return plan, outcome, atomic, info, pool


def _run_coordinator(plan, config, pool, pools, spec, layout, journal, restored, tracker, cost, coords, fell_back):
    """Start the pool's workers and run the coordinator over them; if they cannot start or all
    die (and the pool allows it), go on sequentially in this process with what finished. Returns
    (outcome, the pool that finished the run, why it fell back)."""
    from .coordinator import WorkerLostError
    from .signals import StopSignals
    from .transport.processes import TransportStartError

    def sequentially(why: str) -> Any:
        pool.close()
        return pools.enter_context(get_plugin("sequential").create_executor(config)), why

    try:
        endpoint = pool.start(spec, layout)
    except TransportStartError as exc:
        if not (pool.can_fall_back and config.fallback_to_sequential):
            raise ParallelExecutionError(str(exc)) from None
        logger.warning("%s; continuing sequentially in this process (fallback_to_sequential)", exc)
        pool, fell_back = sequentially(str(exc))
        spec = _no_child_processes(spec)
        endpoint = pool.start(spec, layout)
    coord = _coordinator(plan, config, endpoint, spec, journal, restored, tracker, cost)
    coords.append(coord)
    try:
        with StopSignals(coord):
            return coord.run(), pool, fell_back
    except WorkerLostError as exc:
        if not (pool.can_fall_back and config.fallback_to_sequential):
            raise ParallelExecutionError(f"the parallel run broke: {exc}") from None
        logger.warning("the parallel run broke (%s); continuing sequentially (fallback_to_sequential)", exc)
        pool, fell_back = sequentially(str(exc))
    # whatever took the workers down must not take this process down: fragments in a child
    spec = dataclasses.replace(spec, isolate=True)
    coord = _coordinator(plan, config, pool.start(spec, layout), spec, journal, None, tracker, cost, previous=coord.out)
    coords.append(coord)
    with StopSignals(coord):
        return coord.run(), pool, fell_back


def _no_child_processes(spec: Any) -> Any:
    """Processes cannot be started: run fragments in this process (no isolated child, so no
    per-fragment timeout either)."""
    if spec.timeout is not None:
        logger.warning("timeout_per_fragment=%g s cannot be enforced without child processes", spec.timeout)
    return dataclasses.replace(spec, isolate=False, timeout=None)


def _coordinator(plan, config, endpoint, spec, journal, restored, tracker, cost, previous=None) -> Any:
    from .coordinator import Coordinator

    return Coordinator(
        plan.tasks,
        endpoint,
        spec,
        strategy=config.load_balancing,
        work_stealing=config.work_stealing,
        prefetch=config.prefetch,
        retry_failed=config.retry_failed_fragments,
        max_retries=config.max_retries,
        journal=journal,
        restored=restored,
        tracker=tracker,
        cost_model=cost,
        grace_period=config.grace_period,
        previous=previous,
        tail_guard=config.tail_guard,
    )


# ------------------------------------------------------------------------------------------------
# what every run does before its coordinator starts
# ------------------------------------------------------------------------------------------------


def check_programs(plan: Any) -> None:
    """Every program the plan uses must be known to qcengine and installed: a one-line error
    otherwise. A model chemistry that no level uses is ignored, as QCManyBody ignores it."""
    import qcengine

    used = {t.mc for t in plan.tasks}
    for mc, chem in plan.specifications.items():
        if mc not in used:
            continue
        prog = chem["program"]
        try:
            qcengine.get_program(prog)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputDataError(f"program {prog!r} (model chemistry {mc!r}) is not available: {msg}") from None


def open_journal(config: ParallelConfig, plan: Any, fresh: bool = False) -> Tuple[Any, Dict[int, Dict[str, Any]], Dict[int, Any]]:
    """The journal (None without ``config.checkpoint``) and what it restores: task id → properties,
    and task id → AtomicResult (only when the input keeps cluster results)."""
    from .checkpoint import Journal, JournalError, plan_totals

    if not config.checkpoint:
        return None, {}, {}
    ids: Dict[str, int] = {}

    def task_id(label: str) -> Optional[int]:  # (the plan's own id: no label read is kept; None: not in the plan)
        if not ids:  # (at the first record: a new journal has none)
            ids.update((t.label, t.id) for t in plan.tasks)
        return ids.get(label)

    try:
        journal = Journal.open(
            config.checkpoint, plan.fingerprint, fresh=fresh, fragments=len(plan.tasks), info=lambda: plan_totals(plan.tasks),
            key=task_id,
        )
    except JournalError as exc:
        raise InputDataError(str(exc)) from None
    except OSError as exc:
        raise InputDataError(f"checkpoint {config.checkpoint}: {exc.strerror or exc}") from None
    ids.clear()
    restored: Dict[int, Dict[str, Any]] = journal.restored  # (decoded as the journal was read)
    atomic: Dict[int, Any] = {}
    if plan.keep_atomic_results and journal.atomic:
        from qcelemental.models.v2 import AtomicResult

        atomic = {tid: AtomicResult(**rec) for tid, rec in journal.atomic.items()}
    journal.release()  # (taken: the records need not stay in memory through the run)
    if journal.torn:
        logger.warning("checkpoint %s ended in a torn record (killed mid-write): that fragment is recomputed", journal.path)
    if restored:
        logger.info("checkpoint %s: %d of %d fragments already done", journal.path, len(restored), len(plan.tasks))
    return journal, restored, atomic


def make_spec(plan: Any, config: ParallelConfig, layout: Any) -> Any:
    from .fragment import RunSpec, worker_parent

    return RunSpec(
        molecule=worker_parent(plan.core.molecule),
        specifications=plan.specifications,
        embedding_charges=plan.core.embedding_charges or None,
        keep_atomic_results=plan.keep_atomic_results,
        imports=list(config.imports),
        threads_per_worker=layout.threads_per_worker,
        memory_per_worker=layout.memory_per_worker,
        scratch_root=config.scratch_directory,  # None: each worker resolves $SLURM_TMPDIR/$TMPDIR on its node
        keep_scratch=config.keep_scratch,
        timeout=config.timeout_per_fragment,
        isolate=config.isolate_fragments,
        log_level=config.log_level,
    )


def estimate_costs(plan: Any, config: ParallelConfig) -> Any:
    from .cost import CostModel

    try:
        model = CostModel(plan.core.molecule, plan.specifications, history=config.cost_history)
    except ValueError as exc:
        raise InputDataError(str(exc)) from None
    model.estimate_tasks(plan.tasks)
    return model


def prepare(plan: Any, config: ParallelConfig, fresh: bool, phases: Any = None) -> Tuple[Any, Any, Dict[int, Dict[str, Any]], Dict[int, Any]]:
    """What every run does before its coordinator starts: the user's modules, a check that every
    program is there, cost estimates, and the journal with what it restores (timed into
    ``phases``, a :class:`~qcmb_hpc.report.Phases`)."""
    from .gcpause import paused_gc
    from .loading import import_modules
    from .report import Phases

    phases = phases or Phases()
    with phases("planning"):
        import_modules(config.imports)
        check_programs(plan)
    with paused_gc(freeze=True):  # (a dict per task, per restored record: see qcmb_hpc.gcpause)
        with phases("estimates"):
            cost = estimate_costs(plan, config)
        with phases("journal"):
            journal, restored, atomic = open_journal(config, plan, fresh=fresh)
    return cost, journal, restored, atomic
