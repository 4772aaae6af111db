"""Running a planned many-body expansion: pick the mode, lay out the resources, open the journal,
start the transport, drive the one coordinator, handle signals and the sequential fallback.

(The design's layout puts this inside ``computer.py``; it lives here so that the computer stays the
thin plan → run → assemble that QCManyBody's own computer is, and so that the MPI phases — what
every rank does, and in which order — are read in one place.)

MPI phases (every rank calls ``compute()``):

1. all ranks: check the world matches the launcher; meet (without spinning) and duplicate the
   world, so the run's messages never mix with the caller's own traffic; split a shared-memory
   communicator to count the ranks on each node (memory and cores are shared among them);
2. rank 0 plans; :func:`~qcmb_hpc.transport.mpi.quiet_bcast` sends ``("SETUP", spec, n_workers)``
   — or ``("ERROR", exc)`` for a bad input, which every rank then raises;
3. ranks 1..n work (spare ranks skip), rank 0 coordinates;
4. rank 0 assembles and broadcasts ``("RESULT", result)`` (always v2: a v1 result does not pickle;
   every rank converts it back) or ``("ERROR", exc)``.

An unexpected exception on any rank prints the rank and the error and calls ``MPI_Abort``: the job
ends in seconds instead of hanging, and the journal holds everything finished.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .checkpoint import Journal, JournalError, decode_properties, plan_totals
from .config import ParallelConfig, ParallelMode
from .coordinator import Coordinator, RunOutcome, WorkerLostError
from .cost import CostModel
from .errors import InputDataError, ParallelExecutionError, QCMBError
from .plan import Plan, RunSpec, worker_parent
from .progress import ProgressReporter, run_tracker
from .progress import make_reporter as progress_reporter_for
from .report import without_attempts
from .resources import Layout, ResourceError, detect_node, plan_layout
from .worker import check_scratch, import_modules, remove_scratch, scratch_root

logger = logging.getLogger("qcmb_hpc")

__all__ = ["resolve_mode", "RunInfo", "run_local", "run_mpi", "STOP_SIGNALS", "stop_received"]

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


@dataclass
class RunInfo:
    mode: str
    workers: int
    layout: Optional[Layout]
    wall: float
    fell_back: Optional[str] = None  #: why the run continued sequentially, if it did
    initial_costs: Optional[Dict[int, float]] = None  #: task id → estimate when the run started
    started: Optional[float] = None  #: wall clock (epoch seconds) when the run started


# ------------------------------------------------------------------------------------------------
# choosing the mode
# ------------------------------------------------------------------------------------------------


def resolve_mode(config: ParallelConfig, environ: Optional[Dict[str, str]] = None) -> ParallelMode:
    """ADAPTIVE → MPI when launched with more than one rank, else MULTIPROCESSING when more than one
    usable core, else SEQUENTIAL. Other modes are taken as given.

    "Launched with more than one rank" is read from the launcher's variables (``PMI_SIZE``,
    ``OMPI_COMM_WORLD_SIZE``, an ``srun`` step's task count), not from ``COMM_WORLD.size``: the
    answer is the same, and a plain ``python`` run never initialises MPI. A launcher whose world
    MPI then sees as one rank is refused by :func:`~qcmb_hpc.transport.mpi.check_world`."""
    from .transport.mpi import under_launcher

    if config.mode != ParallelMode.ADAPTIVE:
        return config.mode
    if under_launcher(environ):
        choice = ParallelMode.MPI
    elif detect_node(environ).cores > 1:
        choice = ParallelMode.MULTIPROCESSING
    else:
        choice = ParallelMode.SEQUENTIAL
    logger.debug("adaptive mode: running %s", choice.value)  # the layout line says it at INFO, once the input is known good
    return choice


# ------------------------------------------------------------------------------------------------
# pieces every mode uses
# ------------------------------------------------------------------------------------------------


def check_programs(plan: Plan) -> None:
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


def make_reporter(config: ParallelConfig, user: Any) -> Optional[ProgressReporter]:
    """:func:`qcmb_hpc.progress.make_reporter` for this run's settings."""
    return progress_reporter_for(config.progress_reporting, user)


def open_journal(config: ParallelConfig, plan: Plan, fresh: bool = False) -> Tuple[Optional[Journal], Dict[int, Dict[str, Any]], Dict[int, Any]]:
    """The journal (None without ``config.checkpoint``) and what it restores: task id → properties,
    and task id → AtomicResult (only when the input keeps cluster results)."""
    if not config.checkpoint:
        return None, {}, {}
    try:
        journal = Journal.open(
            config.checkpoint, plan.fingerprint, fresh=fresh, fragments=len(plan.tasks), info=plan_totals(plan.tasks)
        )
    except JournalError as exc:
        raise InputDataError(str(exc)) from None
    except OSError as exc:
        raise InputDataError(f"checkpoint {config.checkpoint}: {exc.strerror or exc}") from None
    by_label = {t.label: t.id for t in plan.tasks}
    restored: Dict[int, Dict[str, Any]] = {}
    atomic: Dict[int, Any] = {}
    for label, rec in journal.restored.items():
        tid = by_label.get(label)
        if tid is None:
            continue
        restored[tid] = decode_properties(rec["properties"])
        if plan.keep_atomic_results and rec.get("atomic_result") is not None:
            from qcelemental.models.v2 import AtomicResult

            atomic[tid] = AtomicResult(**rec["atomic_result"])
    if journal.torn:
        logger.warning("checkpoint %s ended in a torn record (killed mid-write): that fragment is recomputed", journal.path)
    if restored:
        logger.info("checkpoint %s: %d of %d fragments already done", journal.path, len(restored), len(plan.tasks))
    return journal, restored, atomic


def make_spec(plan: Plan, config: ParallelConfig, layout: Layout) -> RunSpec:
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


def estimate_costs(plan: Plan, config: ParallelConfig) -> CostModel:
    try:
        model = CostModel(plan.core.molecule, plan.specifications, history=config.cost_history)
    except ValueError as exc:
        raise InputDataError(str(exc)) from None
    model.estimate_tasks(plan.tasks)
    return model


def prepare(plan: Plan, config: ParallelConfig, fresh: bool) -> Tuple[CostModel, Optional[Journal], Dict[int, Dict[str, Any]], Dict[int, Any]]:
    """What every mode does before its coordinator starts: the user's modules, a check that every
    program is there, cost estimates, and the journal with what it restores."""
    try:
        import_modules(config.imports)
    except ImportError as exc:
        raise InputDataError(f"imports: {exc}") from None
    check_programs(plan)
    cost = estimate_costs(plan, config)
    journal, restored, atomic = open_journal(config, plan, fresh=fresh)
    return cost, journal, restored, atomic


#: the stop signal a run in this process received (None: none yet). The command line reads it
#: (:func:`stop_received`): once a run is stopping, later stop signals — Slurm sends TERM to every
#: process of the step, srun forwards it again — are ignored, so they cannot kill the process
#: between the end of the run and its report of what it saved.
_STOP_RECEIVED: Optional[str] = None


def stop_received() -> Optional[str]:
    """The stop signal a run in this process received, if any."""
    return _STOP_RECEIVED


class StopSignals:
    """While active (main thread only): SIGINT, SIGTERM and SIGUSR1 ask the coordinator to stop
    (no new work, running fragments get the grace period); a second signal cuts them at once."""

    def __init__(self, coordinator: Coordinator):
        self.coordinator = coordinator
        self.previous: Dict[int, Any] = {}
        self.received: Optional[str] = None

    def _handler(self, signum: int, frame: Any) -> None:
        global _STOP_RECEIVED
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            _STOP_RECEIVED = _STOP_RECEIVED or name
            self.coordinator.request_stop(name)
        else:
            self.coordinator.grace_period = 0.0
            if self.coordinator.stop_deadline is not None:
                self.coordinator.stop_deadline = 0.0

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                sig = getattr(signal, name)
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, prev in self.previous.items():
            signal.signal(sig, prev)


def _local_layout(config: ParallelConfig, mode: ParallelMode, n_tasks: int) -> Layout:
    node = detect_node()
    try:
        if mode == ParallelMode.SEQUENTIAL:
            layout = plan_layout(
                node, max_workers=1, threads_per_worker=config.threads_per_worker or node.cores,
                memory_per_worker=config.memory_per_worker_bytes,
            )
        else:
            layout = plan_layout(
                node,
                max_workers=config.max_workers,
                threads_per_worker=config.threads_per_worker,
                memory_per_worker=config.memory_per_worker_bytes,
                tasks=max(1, n_tasks),
            )
    except ResourceError as exc:
        raise InputDataError(str(exc)) from None
    for w in layout.warnings:
        logger.warning("%s", w)
    layout.scratch = _checked_scratch(config)
    return layout


def _checked_scratch(config: ParallelConfig) -> str:
    """The scratch root this node's workers use; a one-line error if they could not use it."""
    root = scratch_root(config.scratch_directory)
    try:
        check_scratch(root)
    except OSError as exc:
        raise InputDataError(f"scratch directory {root} cannot be used: {exc.strerror or exc}") from None
    return root


def _warm_qcengine() -> None:
    """Import qcengine and run its node detection once, in the parent, before workers fork."""
    import qcengine

    qcengine.config.get_global()


# ------------------------------------------------------------------------------------------------
# one node: sequential and multiprocessing
# ------------------------------------------------------------------------------------------------


def _no_child_processes(spec: RunSpec) -> None:
    """Processes cannot be started: run fragments in this process (no isolated child, so no
    per-fragment timeout either)."""
    if spec.timeout is not None:
        logger.warning("timeout_per_fragment=%g s cannot be enforced without child processes", spec.timeout)
    spec.isolate = False
    spec.timeout = None


def run_local(
    plan: Plan,
    config: ParallelConfig,
    mode: ParallelMode,
    reporter: Optional[ProgressReporter],
    fresh: bool = False,
    fell_back: Optional[str] = None,
) -> Tuple[RunOutcome, Dict[int, Any], RunInfo]:
    """Run on this node. Returns the outcome, restored AtomicResults, and run info.
    ``fell_back``: why this (sequential) run stands in for another mode, if it does."""
    from .transport.inprocess import InProcessTransport
    from .transport.processes import ProcessTransport, TransportStartError

    t0, started = time.perf_counter(), time.time()
    cost, journal, restored, atomic = prepare(plan, config, fresh)
    todo = len(plan.tasks) - len(restored)
    layout = _local_layout(config, mode, todo)
    spec = make_spec(plan, config, layout)
    tracker = run_tracker(reporter, plan.tasks, cost, journal.path if journal else None, mode=mode.value)
    logger.info("qcmb_hpc: %s, %s", mode.value, layout.describe())
    _warm_qcengine()
    endpoint: Any = None
    coords: List[Coordinator] = []
    try:
        if mode == ParallelMode.SEQUENTIAL or todo == 0:
            endpoint = InProcessTransport()
        else:
            try:
                endpoint = ProcessTransport(layout.workers)
            except TransportStartError as exc:
                if not config.fallback_to_sequential:
                    raise ParallelExecutionError(str(exc)) from None
                fell_back = str(exc)
                logger.warning("%s; continuing sequentially in this process (fallback_to_sequential)", exc)
                _no_child_processes(spec)
                endpoint = InProcessTransport()
        coord = _coordinator(plan, config, endpoint, spec, journal, restored, tracker, cost)
        coords.append(coord)
        try:
            with StopSignals(coord):
                outcome = coord.run()
        except WorkerLostError as exc:
            if not config.fallback_to_sequential or isinstance(endpoint, InProcessTransport):
                raise ParallelExecutionError(f"the parallel run broke: {exc}") from None
            fell_back = str(exc)
            logger.warning("the parallel run broke (%s); continuing sequentially (fallback_to_sequential)", exc)
            with contextlib.suppress(Exception):
                endpoint.close()
            spec.isolate = True  # whatever took the workers down must not take this process down
            endpoint = InProcessTransport()
            coord = _coordinator(plan, config, endpoint, spec, journal, None, tracker, cost, previous=coord.out)
            coords.append(coord)
            with StopSignals(coord):
                outcome = coord.run()
        cost.save()  # into config.cost_history, if any (a cache: a failure to write it is a warning)
    finally:
        tracker.close()
        if endpoint is not None:
            endpoint.close()
        if journal is not None:
            journal.close()
        if not config.keep_scratch:
            for c in coords:  # a killed worker could not remove its own
                remove_scratch(c.out.workers.values())
    info = RunInfo(
        mode="sequential" if isinstance(endpoint, InProcessTransport) else mode.value,
        workers=len(endpoint.workers),
        layout=layout,
        wall=time.perf_counter() - t0,
        fell_back=fell_back,
        initial_costs=cost.initial_estimates,
        started=started,
    )
    return outcome, atomic, info


def _coordinator(plan, config, endpoint, spec, journal, restored, tracker, cost, previous=None) -> Coordinator:
    return Coordinator(
        plan.tasks,
        endpoint,
        spec,
        strategy=config.load_balancing,
        work_stealing=config.work_stealing,
        tail_guard=config.tail_guard,
        prefetch=config.prefetch,
        retry_failed=config.retry_failed_fragments,
        max_retries=config.max_retries,
        journal=journal,
        restored=restored,
        tracker=tracker,
        cost_model=cost,
        grace_period=config.grace_period,
        previous=previous,
    )


# ------------------------------------------------------------------------------------------------
# MPI
# ------------------------------------------------------------------------------------------------


def _abort(comm: Any, where: str, exc: BaseException) -> None:  # pragma: no cover - ends the process
    """End the whole MPI job from this rank: one line for a user-fixable problem found on this rank
    only (e.g. its node's memory cannot hold its workers; exit 2), the traceback for anything else."""
    if isinstance(exc, InputDataError):
        sys.stderr.write(f"qcmb_hpc: error: rank {comm.Get_rank()} ({where}): {exc}\n")
        sys.stderr.flush()
        comm.Abort(2)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    sys.stderr.write(f"qcmb_hpc: rank {comm.Get_rank()} ({where}) failed; aborting the MPI job:\n{text}\n")
    sys.stderr.flush()
    comm.Abort(1)


def _node_world_ranks(comm: Any) -> List[int]:
    """The world ranks that share this rank's node (a shared-memory split) — collective."""
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return sorted(node.allgather(comm.Get_rank()))
    finally:
        node.Free()


def workers_on_node(node_ranks: List[int], n_workers: int) -> int:
    """Policy: how many of the world ranks on a node are worker ranks (ranks 1..``n_workers``;
    rank 0 coordinates and spare ranks only wait): they share the node's cores and memory."""
    return sum(1 for r in node_ranks if 1 <= r <= n_workers)


def run_mpi(computer: Any, config: ParallelConfig, reporter: Optional[ProgressReporter], fresh: bool, broadcast_result: bool) -> Any:
    """Every rank calls this; rank 0 returns the result (other ranks too if ``broadcast_result``)."""
    from .transport.mpi import check_world, launcher_size, quiet_barrier, world

    try:
        comm = world()
    except ImportError as exc:
        n = launcher_size()
        if n and n > 1:
            # every one of the n processes would run the whole job on the same journal
            raise ParallelExecutionError(
                f"started by an MPI launcher with {n} ranks, but MPI mode cannot start: {exc} "
                "(install mpi4py built against the launcher's MPI, or run without mpiexec/srun)"
            ) from None
        if not config.fallback_to_sequential:
            raise ParallelExecutionError(f"MPI mode needs mpi4py: {exc}") from None
        logger.warning("MPI mode needs mpi4py (%s); continuing sequentially (fallback_to_sequential)", exc)
        return computer._compute_local(ParallelMode.SEQUENTIAL, fresh, fell_back=f"MPI mode needs mpi4py: {exc}")
    check_world(comm)
    if comm.Get_size() == 1:
        logger.info("MPI world of one rank: running sequentially")
        return computer._compute_local(ParallelMode.SEQUENTIAL, fresh, fell_back="an MPI world of one rank")
    # Meet without spinning (ranks may call compute() seconds apart), then work on a private
    # duplicate of the world: messages of this run can never be taken for the caller's own traffic
    # on COMM_WORLD (or for a previous run's), nor the other way round.
    quiet_barrier(comm)
    comm_rank = comm.Get_rank()
    comm = comm.Dup()
    try:
        result = _run_mpi(comm, computer, config, reporter, fresh, broadcast_result)
    finally:
        comm.Free()
    if comm_rank != 0:
        result, computer.run_info = result
    return result  # v2 (a v1 ManyBodyResult does not pickle); the computer converts on every rank


def _tell(comm: Any, msg: Tuple[Any, ...], where: str) -> None:
    """Rank 0 broadcasts ``msg`` to the ranks waiting for it; if that fails (e.g. it does not
    pickle) they would wait forever, so the job is aborted instead."""
    from .transport.mpi import quiet_bcast

    try:
        quiet_bcast(comm, msg)
    except BaseException as exc:
        _abort(comm, where, exc)
        raise


def _run_mpi(comm: Any, computer: Any, config: ParallelConfig, reporter: Optional[ProgressReporter], fresh: bool, broadcast_result: bool) -> Any:
    from .transport.mpi import MpiCoordinatorEndpoint

    rank, size = comm.Get_rank(), comm.Get_size()
    node_ranks = _node_world_ranks(comm)
    if rank != 0:
        return _mpi_worker(comm, config, node_ranks)

    n_workers = min(size - 1, config.max_workers or size - 1)  # rank 0 decides, and tells the others
    workers_here = workers_on_node(node_ranks, n_workers)
    t0, started = time.perf_counter(), time.time()
    try:
        plan = computer._plan()
        cost, journal, restored, atomic = prepare(plan, config, fresh)
        layout = _mpi_layout(config, max(1, workers_here))
        spec = make_spec(plan, config, layout)
        spec.threads_per_worker = config.threads_per_worker or 0  # 0: each rank decides from its node
        spec.memory_per_worker = config.memory_per_worker_bytes
    except QCMBError as exc:
        _tell(comm, ("ERROR", exc), "planning")
        raise
    except BaseException as exc:
        _abort(comm, "planning", exc)
        raise
    _tell(comm, ("SETUP", spec, n_workers), "sending the run specification")
    logger.info(
        "qcmb_hpc: mpi, %d worker ranks of %d (%d on this node), %s", n_workers, size, workers_here, layout.describe()
    )
    told = False  # whether the other ranks have been told (then they raise the same error)
    try:
        endpoint = MpiCoordinatorEndpoint(comm, n_workers)
        tracker = run_tracker(reporter, plan.tasks, cost, journal.path if journal else None, mode="mpi")
        coord = _coordinator(plan, config, endpoint, spec, journal, restored, tracker, cost)
        with StopSignals(coord):
            outcome = coord.run()
        tracker.close()
        endpoint.close()
        if journal is not None:
            journal.close()
        cost.save()  # into config.cost_history, if any (a cache: a failure to write it is a warning)
        info = RunInfo(
            mode="mpi", workers=n_workers, layout=layout, wall=time.perf_counter() - t0, initial_costs=cost.initial_estimates,
            started=started,
        )
        try:
            result = computer._assemble(plan, outcome, atomic, info)
        except QCMBError as exc:
            told = True
            _tell(comm, ("ERROR", exc), "sending the error")
            raise
    except QCMBError as exc:
        if not told:  # raised while the workers still work: they would never hear of it
            _abort(comm, "coordinator", exc)
        raise
    except BaseException as exc:
        _abort(comm, "coordinator", exc)
        raise
    # (the per-attempt table stays on rank 0: ~100 bytes a fragment, on every rank of a big job)
    _tell(comm, ("RESULT", (result if broadcast_result else None, without_attempts(computer.run_info))), "sending the result")
    return result


def _mpi_layout(config: ParallelConfig, workers_here: int, log: bool = True) -> Layout:
    """This rank's node: threads and memory for each of the ``workers_here`` worker ranks there
    (only rank 0 logs its warnings)."""
    node = detect_node()
    try:
        layout = plan_layout(
            node,
            threads_per_worker=config.threads_per_worker,
            memory_per_worker=config.memory_per_worker_bytes,
            ranks_on_node=max(1, workers_here),
        )
    except ResourceError as exc:
        raise InputDataError(str(exc)) from None
    if log:
        for w in layout.warnings:
            logger.warning("%s", w)
    layout.scratch = _checked_scratch(config)
    return layout


def _mpi_worker(comm: Any, config: ParallelConfig, node_ranks: List[int]) -> Any:
    # the coordinator decides when to stop (the launcher forwards these signals to every rank):
    # ignored while this runs, the caller's handlers are back afterwards
    previous: Dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for name in STOP_SIGNALS:
            sig = getattr(signal, name)
            previous[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        return _mpi_worker_run(comm, config, node_ranks)
    finally:
        for sig, prev in previous.items():
            if prev is not None:
                signal.signal(sig, prev)


def _mpi_worker_run(comm: Any, config: ParallelConfig, node_ranks: List[int]) -> Any:
    from .transport.mpi import MpiWorkerEndpoint, quiet_bcast
    from .worker import Worker

    rank = comm.Get_rank()
    try:
        kind, *rest = quiet_bcast(comm)
    except BaseException as exc:
        _abort(comm, f"rank {rank} receiving the run specification", exc)
        raise
    if kind == "ERROR":
        raise rest[0]
    spec, n_workers = rest  # rank 0's count: a rank must not decide from its own settings whether it works
    try:
        if rank - 1 < n_workers:
            # each rank fits itself to its own node: threads and memory are shared by the ranks there
            layout = _mpi_layout(config, workers_on_node(node_ranks, n_workers), log=False)
            if not spec.threads_per_worker:
                spec.threads_per_worker = layout.threads_per_worker
            if not spec.memory_per_worker:
                spec.memory_per_worker = layout.memory_per_worker
            _warm_qcengine()
            endpoint = MpiWorkerEndpoint(comm)
            worker = Worker(endpoint)
            worker._setup(spec, rank - 1)
            worker.run()
            endpoint.flush()
        kind, payload = quiet_bcast(comm)
    except BaseException as exc:
        _abort(comm, f"worker {rank - 1}" if rank - 1 < n_workers else f"rank {rank} waiting for the result", exc)
        raise
    if kind == "ERROR":
        raise payload
    return payload  # (result, run report)
