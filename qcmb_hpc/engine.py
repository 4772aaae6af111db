"""Run one fragment through QCEngine, in this process or in an isolated child process.

* :class:`QCEngineAdapter` — the one ``qcengine.compute`` call: this worker's ``task_config``
  (ncores, memory, scratch), the MPI launcher's variables removed from the environment.
* :class:`FragmentExecutor` (:func:`run_fragment`) builds the fragment's ``AtomicInput`` exactly
  as QCManyBody does, runs it through the adapter and turns the answer into a
  :class:`FragmentOutcome`: plain numbers and arrays, timings, and on failure the engine's error
  type and text.
* :class:`InlineRunner` runs fragments in the calling process (fastest; used when isolation is off).
* :class:`ChildRunner` runs them in a long-lived child process the worker owns and reuses (warm:
  qcengine is imported once). A segfault, an out-of-memory kill or a hang costs only the child: the
  runner reports a failed outcome, and starts a fresh child for the next fragment. A fragment that
  passes ``timeout_per_fragment`` has its child killed — with its whole process group, so a QC
  program the child started dies too (the child runs in a session of its own, which also keeps
  terminal and launcher signals away from it: the worker decides when a fragment is cut). The child leaves through ``os._exit``
  (never ``atexit``, which would finalize MPI in a child forked from an MPI rank) and runs engines
  with the MPI launcher's variables removed (an Open MPI program such as NWChem started from an
  MPI rank otherwise dies in ``orte_init``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional

from .failures import NON_RETRYABLE_ERRORS
from .fragment import RunSpec, build_atomic_input
from .gcpause import frozen

logger = logging.getLogger(__name__)

__all__ = [
    "FragmentOutcome",
    "QCEngineAdapter",
    "FragmentExecutor",
    "warm_qcengine",
    "start_node_detection",
    "cpu_description",
    "adopt_node_configuration",
    "run_fragment",
    "InlineRunner",
    "ChildRunner",
    "make_runner",
    "NON_RETRYABLE_ERRORS",
    "MPI_ENV_PREFIXES",
    "clean_mpi_environment",
    "set_thread_environment",
]


#: environment variables of MPI launchers (Open MPI, PMIx, PMI/Slurm PMI2, MPICH/Hydra, Intel MPI),
#: and Slurm's job-step description: Open MPI decides it was started by srun when SLURM_NODELIST and
#: SLURM_STEP_ID are both set, then needs the PMI removed above, and the QC program dies in MPI_Init.
MPI_ENV_PREFIXES = ("OMPI_", "PMIX_", "PMI_", "HYDRA_", "MPICH_", "MPIR_", "I_MPI_", "MPI_LOCAL", "SLURM_STEP")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass
class FragmentOutcome:
    """What comes back from one attempt at one fragment."""

    id: int
    ok: bool
    properties: Optional[Dict[str, Any]] = None  #: {"energy": float, "gradient": ndarray, "hessian": ndarray}
    atomic_result: Any = None  #: the full AtomicResult, only when the input asks for cluster_results="all"
    error_type: Optional[str] = None
    error_message: Optional[str] = None
    retryable: bool = True
    started: float = 0.0  #: wall-clock (time.time) start
    seconds: float = 0.0  #: wall seconds of the attempt
    worker: int = -1  #: filled in by the worker
    host: str = ""


def set_thread_environment(threads: int) -> Dict[str, Optional[str]]:
    """Give the QC program (and any BLAS/OpenMP in this process started later) ``threads`` threads.
    Returns what to put back with :func:`restore_environ` (None: was unset)."""
    saved = {var: os.environ.get(var) for var in THREAD_VARIABLES}
    for var in THREAD_VARIABLES:
        os.environ[var] = str(int(threads))
    return saved


def restore_environ(saved: Mapping[str, Optional[str]]) -> None:
    """Put back environment variables as they were (None: unset)."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _is_mpi_variable(name: str) -> bool:
    return name.startswith(MPI_ENV_PREFIXES)


#: set for the QC program after cleaning: an Open MPI program (Debian's NWChem) started as a
#: singleton runs without starting an ``orted`` daemon, which otherwise fails now and then when
#: several start at once ("ompi_rte_init: Unable to start a daemon on the local node")
SINGLETON_ENVIRONMENT = {"OMPI_MCA_ess_singleton_isolated": "1"}


def _clean_environ() -> Dict[str, str]:
    """Remove the launcher's variables from ``os.environ``; set :data:`SINGLETON_ENVIRONMENT`.
    Returns what to put back (None: was unset)."""
    saved = {k: os.environ.pop(k) for k in [k for k in os.environ if _is_mpi_variable(k)]}
    for k, v in SINGLETON_ENVIRONMENT.items():
        saved.setdefault(k, os.environ.get(k))  # type: ignore[arg-type]
        os.environ[k] = v
    return saved


@contextlib.contextmanager
def clean_mpi_environment() -> Iterator[None]:
    """Remove the MPI launcher's variables from ``os.environ`` while the engine runs (restored after)."""
    saved = _clean_environ()
    try:
        yield
    finally:
        restore_environ(saved)


def _extract_properties(result: Any) -> Dict[str, Any]:
    """The same properties qcmanybody takes from each AtomicResult."""
    props: Dict[str, Any] = {}
    for p in ("energy", "gradient", "hessian"):
        v = getattr(result.properties, f"return_{p}", None)
        if v is not None:
            props[p] = v
    return props


_early_cpu_info: Optional[Any] = None  # (the thread of start_node_detection, then its answer)

#: py-cpuinfo's ``get_cpu_info()`` as its own subprocess computes it (``cpuinfo.py --json``: every
#: source in turn, each filling only the fields still missing), except that the CPUID source's
#: clock measurement — a 1 s sleep in a child process, which its parent busy-waits for — is skipped
#: when an earlier source already gave the clock: py-cpuinfo would discard that measurement.
_CPU_INFO_SCRIPT = r"""
import json, sys
import cpuinfo.cpuinfo as c
seen = {}
copy_fields, raw_hz = c._copy_new_fields, c.CPUID.get_raw_hz
def _copy(info, new):
    seen["info"] = info
    return copy_fields(info, new)
def _hz(self):
    info = seen.get("info") or {}
    return 0 if info.get("hz_actual") and info.get("hz_actual_friendly") else raw_hz(self)
c._copy_new_fields, c.CPUID.get_raw_hz = _copy, _hz
c._check_arch()
info = c._get_cpu_info_internal()
if not info:
    sys.exit(1)
print(json.dumps(info))
"""


def cpu_description() -> Dict[str, Any]:
    """What ``cpuinfo.get_cpu_info()`` returns (QCEngine's CPU description: the brand in every
    result's provenance), in ~0.1 s instead of > 1 s where the clock is known without measuring
    it (see :data:`_CPU_INFO_SCRIPT`); py-cpuinfo's own call if that fails."""
    import json
    import subprocess

    import cpuinfo

    try:
        out = subprocess.run([sys.executable, "-c", _CPU_INFO_SCRIPT], capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            return json.loads(out.stdout, object_hook=cpuinfo.cpuinfo._utf_to_str)
    except (OSError, ValueError, subprocess.SubprocessError, AttributeError):
        pass
    return cpuinfo.get_cpu_info()


def start_node_detection() -> None:
    """Start the slow part of QCEngine's node detection — the CPU description
    (:func:`cpu_description`, a Python subprocess) — in a background thread, so that it runs on
    another core while this process reads the input and plans; :func:`warm_qcengine` takes its
    answer. (Only that call runs in the thread: importing qcengine there would race the main
    thread's imports.)"""
    global _early_cpu_info
    qcng_config = sys.modules.get("qcengine.config")
    if _early_cpu_info is not None or getattr(qcng_config, "_global_values", None) is not None:
        return  # (started already, or this process's QCEngine has its node description)
    import threading

    box: List[Any] = []
    thread = threading.Thread(target=lambda: box.append(cpu_description()), name="qcmb-node-detection", daemon=True)
    thread.box = box  # type: ignore[attr-defined]
    thread.start()
    _early_cpu_info = thread


def warm_qcengine() -> Dict[str, Any]:
    """Import qcengine and run its node detection in this process once, so the processes forked
    from it (workers, isolated children) do not each pay it — with the CPU description
    :func:`start_node_detection` computed if it was started, else :func:`cpu_description` now.
    Returns the node description (QCEngine's ``get_global()``)."""
    global _early_cpu_info
    import qcengine

    if getattr(qcengine.config, "_global_values", None) is not None:
        return qcengine.config.get_global()
    early = _early_cpu_info
    if hasattr(early, "join"):
        early.join()
        _early_cpu_info = early = early.box[0] if early.box else None
    if not early:
        early = cpu_description()
    import cpuinfo

    computed, cpuinfo.get_cpu_info = cpuinfo.get_cpu_info, lambda: dict(early)
    try:
        return qcengine.config.get_global()
    finally:
        cpuinfo.get_cpu_info = computed


def adopt_node_configuration(values: Dict[str, Any]) -> bool:
    """Give this process's QCEngine the node description another process of the same node
    computed (:func:`warm_qcengine` there), instead of computing it again — the values are the
    same (host, CPU brand for provenance, memory, cores), and the detection is not paid twice.
    Returns whether they were taken (not if QCEngine computed its own already, or keeps it
    elsewhere than in this version's ``qcengine.config._global_values``)."""
    import qcengine.config as qcng_config

    if getattr(qcng_config, "_global_values", False) is not None:
        return False
    qcng_config._global_values = dict(values)
    return True


class QCEngineAdapter:
    """The one place fragments meet QCEngine: ``qcengine.compute`` with this worker's
    ``task_config`` (cores, memory, scratch) and with the MPI launcher's variables removed from
    the environment while the program runs (an Open MPI program such as Debian's NWChem, started
    from an MPI rank, dies in ``orte_init`` otherwise). Never raises for an engine's failure: the
    answer is an ``AtomicResult`` or a ``FailedOperation``.

    The design document's ``QCEngineAdapter(qc_program, config)``: ``config`` may be a
    :class:`~qcmb_hpc.config.ParallelConfig` (a standalone call: the task gets one worker's
    share of this node, as :class:`~qcmb_hpc.resources.ResourceManager` lays it out) or, as
    workers pass it, the ``task_config`` dict itself."""

    def __init__(self, qc_program: str, config: Any = None):
        self.qc_program = qc_program
        if config is None or isinstance(config, dict):
            self.task_config = dict(config or {})
        else:
            from .resources import ResourceManager

            layout = ResourceManager(config).layout(tasks=1, log=False)
            self.task_config = {"ncores": layout.threads_per_worker, "memory": round(layout.memory_per_worker / 1024**3, 3),
                                "retries": 0}

    def execute_fragment(self, atomic_input: Any) -> Any:
        import qcengine

        with clean_mpi_environment():
            return qcengine.compute(atomic_input, self.qc_program, raise_error=False, task_config=dict(self.task_config))


class FragmentExecutor:
    """Runs one fragment: builds its ``AtomicInput`` exactly as QCManyBody does, runs it through
    :class:`QCEngineAdapter`, and describes what happened as a :class:`FragmentOutcome` — plain
    numbers and arrays, timings, and on failure the engine's error type and text. Never raises
    for an engine's failure.

    ``execute_fragment(fragment)`` makes one attempt: in a run the coordinator decides about
    retries (a retry goes to another worker). With ``max_retries`` (standalone use) it retries in
    place by the same policy (:func:`qcmb_hpc.failures.should_retry`)."""

    def __init__(self, spec: RunSpec, task_config: Dict[str, Any], max_retries: int = 0):
        self.spec = spec
        self.task_config = task_config
        self.max_retries = max_retries

    def execute_fragment(self, fragment: Any) -> FragmentOutcome:
        """``fragment``: a :class:`~qcmb_hpc.plan.FragmentTask` or a wire ``(id, label)``."""
        from .failures import should_retry

        task_id, label = fragment.wire() if hasattr(fragment, "wire") else fragment
        attempts = 0
        while True:
            out = self._attempt(task_id, label)
            attempts += 1
            if out.ok or not should_retry(out.retryable, attempts, True, self.max_retries):
                return out

    def _attempt(self, task_id: int, label: str) -> FragmentOutcome:
        started = time.time()
        t0 = time.perf_counter()

        def failed(error_type: str, message: str, retryable: bool = True) -> FragmentOutcome:
            return FragmentOutcome(id=task_id, ok=False, error_type=error_type, error_message=message,
                                   retryable=retryable, started=started, seconds=time.perf_counter() - t0)

        try:
            program, inp = build_atomic_input(self.spec, label)
        except Exception as exc:  # a fragment that cannot even be built is an input problem
            return failed("input_error", f"{type(exc).__name__}: {exc}", retryable=False)
        try:
            result = QCEngineAdapter(program, self.task_config).execute_fragment(inp)
        except Exception as exc:  # harness bugs: report, the coordinator decides about retries
            return failed("unknown_error", "".join(traceback.format_exception_only(type(exc), exc)).strip())
        if not getattr(result, "success", False):
            err = getattr(result, "error", None)
            etype = getattr(err, "error_type", "unknown_error") or "unknown_error"
            return failed(etype, getattr(err, "error_message", None) or repr(result), retryable=etype not in NON_RETRYABLE_ERRORS)
        return FragmentOutcome(
            id=task_id,
            ok=True,
            properties=_extract_properties(result),
            atomic_result=result if self.spec.keep_atomic_results else None,
            started=started,
            seconds=time.perf_counter() - t0,
        )


def run_fragment(spec: RunSpec, task_id: int, label: str, task_config: Dict[str, Any]) -> FragmentOutcome:
    """One attempt at one fragment in this process (:class:`FragmentExecutor`)."""
    return FragmentExecutor(spec, task_config).execute_fragment((task_id, label))


# --------------------------------------------------------------------------------------------
# runners: where a worker's fragments execute
# --------------------------------------------------------------------------------------------


class InlineRunner:
    """Runs each fragment synchronously in the worker's own process."""

    isolated = False

    def __init__(self, spec: RunSpec, task_config: Dict[str, Any]):
        self.spec = spec
        self.task_config = task_config
        self._outcome: Optional[FragmentOutcome] = None
        self.restarts = 0

    @property
    def busy(self) -> bool:
        return self._outcome is not None

    def start(self, task_id: int, label: str) -> None:
        self._outcome = run_fragment(self.spec, task_id, label, self.task_config)

    def poll(self) -> Optional[FragmentOutcome]:
        out, self._outcome = self._outcome, None
        return out

    def waitable(self) -> List[Any]:
        return []

    def cancel(self) -> Optional[FragmentOutcome]:
        return self.poll()

    def close(self) -> None:
        self._outcome = None


def _child_main(conn: Any, spec: RunSpec, task_config: Dict[str, Any], close: List[Any]) -> None:  # pragma: no cover
    """The isolated child: receive (id, label), run, send the outcome; leave with os._exit."""
    code = 0
    try:
        for c in close:
            with contextlib.suppress(Exception):
                c.close()
        # A session of its own: signals sent to the worker's process group (Ctrl-C, mpiexec forwarding)
        # do not cut the fragment — the worker decides — and the worker can kill the child together
        # with everything it started (an NWChem process) as one group.
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        # srun delivers signals to every process of the step, whatever its session: the time-limit
        # warning (USR1) must not cut a fragment; the coordinator stops the run gracefully instead
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        _watch_parent(os.getppid())
        _clean_environ()
        set_thread_environment(spec.threads_per_worker)
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg is None:
                break
            task_id, label = msg
            conn.send(run_fragment(spec, task_id, label, task_config))
    except BaseException:
        code = 1
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        os._exit(code)


def _watch_parent(parent: int, interval: float = 0.2) -> None:  # pragma: no cover - child
    """If the worker dies (even by SIGKILL), take this child's whole process group down with it, so
    no orphaned QC program keeps running."""
    import threading

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os.killpg(0, signal.SIGKILL)
            time.sleep(interval)

    threading.Thread(target=watch, name="qcmb-parent-watch", daemon=True).start()


def _describe_exit(exitcode: Optional[int]) -> str:
    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {exitcode}"


class ChildRunner:
    """Runs fragments in a long-lived child process; survives the child's crash, hang or timeout."""

    isolated = True

    def __init__(
        self, spec: RunSpec, task_config: Dict[str, Any], timeout: Optional[float] = None, close_in_child: List[Any] = ()
    ):
        self.close_in_child = list(close_in_child)
        self.spec = spec
        self.task_config = task_config
        self.timeout = timeout
        self._ctx = multiprocessing.get_context("fork")
        self._proc: Any = None
        self._conn: Any = None
        self._task: Optional[tuple] = None
        self._t0 = 0.0
        self._started_wall = 0.0
        self._spawned = 0
        self._host = socket.gethostname()

    @property
    def restarts(self) -> int:
        """Fresh children started after the first (one per crash, kill or timeout)."""
        return max(0, self._spawned - 1)

    # -- lifecycle -----------------------------------------------------------------------------
    def _spawn(self) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        gc.collect()
        with frozen():  # the child does not touch (and so does not copy) the parent's heap in its first gc
            proc = self._ctx.Process(
                target=_child_main,
                args=(child, self.spec, self.task_config, [*self.close_in_child, parent]),
                daemon=True,
            )
            proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self._spawned += 1

    def ensure_started(self) -> None:
        if self._proc is None or not self._proc.is_alive():
            if self._proc is not None:
                self._reap()
            self._spawn()

    def _reap(self) -> None:
        """Kill the child and its whole process group (what the QC program started), and wait."""
        with contextlib.suppress(Exception):
            self._conn.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
        self._proc = self._conn = None

    @property
    def busy(self) -> bool:
        return self._task is not None

    def start(self, task_id: int, label: str) -> None:
        self.ensure_started()
        self._task = (task_id, label)
        self._t0 = time.perf_counter()
        self._started_wall = time.time()
        try:
            self._conn.send(self._task)
        except (OSError, BrokenPipeError):
            pass  # the child died before taking it; poll() reports the crash

    def waitable(self) -> List[Any]:
        return [self._conn] if self._task is not None and self._conn is not None else []

    def _failed(self, error_type: str, message: str) -> FragmentOutcome:
        task_id = self._task[0] if self._task else -1
        self._task = None
        return FragmentOutcome(
            id=task_id,
            ok=False,
            error_type=error_type,
            error_message=message,
            retryable=True,
            started=self._started_wall,
            seconds=time.perf_counter() - self._t0,
            host=self._host,
        )

    def poll(self) -> Optional[FragmentOutcome]:
        """The outcome if the fragment finished, crashed or timed out; else None (does not block)."""
        if self._task is None:
            return None
        try:
            if self._conn.poll():
                out = self._conn.recv()
                self._task = None
                return out
        except (EOFError, OSError):
            pass
        else:
            if self._proc.is_alive():
                if self.timeout is not None and time.perf_counter() - self._t0 > self.timeout:
                    self._reap()
                    return self._failed(
                        "timeout", f"fragment exceeded timeout_per_fragment={self.timeout:g} s and was killed"
                    )
                return None
        # the child is gone
        self._proc.join(5)
        desc = _describe_exit(self._proc.exitcode)
        self._reap()
        return self._failed("worker_crash", f"the process running the fragment {desc}")

    def cancel(self) -> Optional[FragmentOutcome]:
        """Cut the running fragment (kill the child); returns its failed outcome, if one was running."""
        if self._task is None:
            return None
        out = self.poll()
        if out is not None:
            return out
        self._reap()
        return self._failed("cancelled", "the fragment was cut when the run was stopped")

    def close(self) -> None:
        if self._proc is None:
            return
        if self._task is None:
            with contextlib.suppress(Exception):
                self._conn.send(None)
            self._proc.join(2)
        self._reap()
        self._task = None


def make_runner(spec: RunSpec, task_config: Dict[str, Any], close_in_child: List[Any] = ()):
    """A :class:`ChildRunner` when isolation is on or a timeout is set (a hang can only be cut in a
    child), else an :class:`InlineRunner`. ``close_in_child``: inherited connections the child closes."""
    if spec.isolate or spec.timeout is not None:
        runner = ChildRunner(spec, task_config, timeout=spec.timeout, close_in_child=close_in_child)
        try:
            runner.ensure_started()
            return runner
        except OSError as exc:  # e.g. BlockingIOError: the process limit is reached
            logger.warning(
                "cannot start the process that isolates fragments (%s): running them in the worker itself%s",
                exc, " (timeout_per_fragment cannot be enforced)" if spec.timeout is not None else "",
            )
    return InlineRunner(spec, task_config)
