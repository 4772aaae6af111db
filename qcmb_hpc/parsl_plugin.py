"""The ``parsl`` executor plugin: the one coordinator here, its workers as long-lived Parsl tasks in
Parsl's blocks (``pip install "qcmb_hpc[parsl]"``; ``--mode parsl``, or ``--parsl-config FILE``).

Parsl provides the providers (local, Slurm, PBS, LSF, Kubernetes, …) and the pilot jobs; qcmb_hpc
provides what it always does — planning, the journal, the cost model, scheduling, stealing,
retries, progress, the result — through the same coordinator as every mode. What runs in the
blocks is the same worker loop as every mode (:class:`~qcmb_hpc.worker.Worker`):

* **One Parsl task per worker, for the whole run.** Each task (:func:`run_worker`) warms QCEngine,
  connects back to the coordinator (:mod:`qcmb_hpc.transport.sockets`: TCP, authenticated with a
  key made for the run) and serves fragments until STOP. A fragment costs one message each way,
  never a Parsl task, so QCEngine's start-up is paid once per worker, stealing and retries work
  as in every mode, and fragments run isolated in the worker's own child process.
* **Resources from qcmb_hpc's layout, inside each block.** The specification goes out with the
  threads and memory the user did not fix left open, and each worker fits them to its node
  (:meth:`~qcmb_hpc.resources.ResourceManager.fit`: the node's cores, cgroup and Slurm limits,
  shared by the workers on it — the block's workers per node, ``PARSL_WORKER_COUNT``).
* **Where workers connect:** the ``address`` of the config's executor if it has one (the address
  Parsl's own workers use to reach this host, e.g. ``address_by_interface("ib0")``); ``127.0.0.1``
  when every block is local; otherwise every address of this host, tried in turn. The port is
  ephemeral.
* **How many workers:** ``--workers N``; else what the config's blocks hold (``max_blocks`` ×
  ``nodes_per_block`` × the executor's workers per node); never more than the fragments to run.
* **A lost worker** (its block killed, preempted, past its walltime; its process dead): its
  socket closes, the coordinator hears LOST at once and hands its fragments to the others (the
  one it was running counts as a failed attempt). A node that vanishes without closing anything is
  noticed by Parsl's heartbeat, which fails the task: LOST too. A lost worker that had finished a
  fragment is replaced: a new Parsl task, which Parsl places in a live block or in a new one its
  scaling strategy starts (``max_blocks`` permitting); a worker lost before it finished anything
  (a broken node, a fragment that kills its process) is not. When every worker is gone and none
  is coming, the run continues sequentially here (``fallback_to_sequential``) or fails.

Configuration (:func:`load_config`): ``ParallelConfig.parsl_config`` (``--parsl-config``,
``QCMB_PARSL_CONFIG``) names a Python file or module exposing a ``parsl.config.Config`` (a variable
``config``, or ``FILE.py:NAME``; a function returning one works too), or is the ``Config`` itself.
Without it: the DataFlowKernel already loaded in this process (``parsl.load(...)``), used as it is
and left loaded; else the built-in local configuration (:func:`default_config`: one
HighThroughputExecutor block on this node, sized by qcmb_hpc's layout, its run directory and the
block's temporary files under a private directory that is removed at the end). A DataFlowKernel
qcmb_hpc made is cleaned up at the end of the run (its blocks cancelled), after the workers have
said goodbye.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from . import transport as T
from .errors import InputDataError
from .plugins import ParallelExecutionPlugin
from .pool import WorkerPool
from .transport.connections import ConnectionEndpoint
from .transport.sockets import SocketTransport, local_addresses

logger = logging.getLogger("qcmb_hpc")

__all__ = ["ParslPlugin", "ParslPool", "load_config", "default_config", "run_worker", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "qcmb_hpc[parsl]"'
#: the built-in local configuration's executor
LOCAL_LABEL = "qcmb_hpc_local"
#: the longest temporary directory a block's manager can use: it makes a Unix socket in it
#: (``pymp-*/listener-*``, at most 107 characters in all)
MAX_SOCKET_DIR = 64
#: a lost worker that served this long is always replaced (see _ParslEndpoint.lost)
LONG_LIVED = 600.0
#: seconds the pool waits for its workers' Parsl tasks to end after the run, before cleaning up
END_WAIT = 15.0


def _parsl():
    try:
        import parsl  # noqa: F401
    except ImportError as exc:
        raise InputDataError(f"mode 'parsl' needs Parsl, which is not installed ({exc}): {INSTALL_HINT}") from None
    from parsl.config import Config

    return Config


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------


def load_config(value: Any) -> Any:
    """The ``parsl.config.Config`` that ``value`` names: the object itself (once: its executors
    start with the run's DataFlowKernel and stop with it), or ``"FILE.py"`` / ``"package.module"``, optionally ``:NAME`` (the
    variable, default ``config``, or the one ``Config`` in it; a function is called). Anything
    wrong is an :class:`~qcmb_hpc.errors.InputDataError` of one line."""
    Config = _parsl()
    if isinstance(value, Config):
        if any(_started(e) for e in value.executors):
            raise InputDataError(
                "this parsl.config.Config's executors have run already (a Config serves one DataFlowKernel): "
                "make a new one, or name a file or module that makes it (--parsl-config)"
            )
        return value
    text = str(value).strip()
    where, name = text, None
    if ":" in text and not os.path.exists(text):
        where, _, name = text.rpartition(":")
    what = f"Parsl config {text}"
    if where.endswith(".py") or os.sep in where or os.path.isfile(where):
        if not os.path.isfile(where):
            raise InputDataError(f"{what}: no such file")
        spec = importlib.util.spec_from_file_location(f"qcmb_hpc_parsl_config_{abs(hash(os.path.abspath(where)))}", where)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise InputDataError(f"{what} failed to load: {type(exc).__name__}: {first}") from None
    else:
        from .loading import import_modules

        import_modules([where])
        module = sys.modules[where]
    found = getattr(module, name or "config", None)
    if found is None and name is None:
        configs = [v for v in vars(module).values() if isinstance(v, Config)]
        found = configs[0] if len(configs) == 1 else None
    if callable(found) and not isinstance(found, Config):
        try:
            found = found()
        except Exception as exc:
            raise InputDataError(f"{what}: {name or 'config'}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(found, Config):
        raise InputDataError(
            f"{what}: no parsl.config.Config named {name or 'config'!r} in it (define `config = Config(...)`, or name it: FILE.py:NAME)"
        )
    return found


def _started(executor: Any) -> bool:
    """Whether a Parsl executor has been started (by a DataFlowKernel, or by hand)."""
    return bool(getattr(executor, "interchange_proc", None) or getattr(executor, "executor", None)
                or getattr(executor, "run_id", None))


def default_config(workers: int, run_dir: str, pythonpath: Optional[str] = None) -> Any:
    """The built-in local configuration: one HighThroughputExecutor block on this node with
    ``workers`` worker processes (qcmb_hpc's layout decides how many), run directory ``run_dir``;
    the block's temporary files (Parsl's managers leave ``pymp-*`` directories behind when they
    are stopped) go under it too, and it imports what this process imports (``pythonpath``)."""
    _parsl()
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    init = []
    tmp = os.path.join(run_dir, "tmp")
    if len(tmp) <= MAX_SOCKET_DIR:
        os.makedirs(tmp, exist_ok=True)
        init.append(f"export TMPDIR={_quote(tmp)}")
    if pythonpath:
        init.append(f"export PYTHONPATH={_quote(pythonpath)}")
    provider = LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init="\n".join(init))
    workers = max(1, int(workers))
    # (heartbeats every 5 s: a worker process that died is restarted within that, not 30 s;
    # HTEX starts min(max_workers_per_node, cores / cores_per_worker) workers: a layout of more
    # workers than cores, which qcmb_hpc has already warned about, gets them all)
    executor = HighThroughputExecutor(
        label=LOCAL_LABEL, address="127.0.0.1", max_workers_per_node=workers, provider=provider,
        cores_per_worker=min(1.0, (os.cpu_count() or 1) / workers), heartbeat_period=5, heartbeat_threshold=30,
    )
    return Config(executors=[executor], run_dir=run_dir, strategy="none", usage_tracking=0)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _user_executors(executors: Sequence[Any]) -> List[Any]:
    return [e for e in executors if not str(getattr(e, "label", "")).startswith("_parsl")]


def capacity(executors: Sequence[Any]) -> Optional[int]:
    """Workers the executors' blocks hold at most (None if one of them does not say)."""
    total = 0
    for ex in executors:
        provider = getattr(ex, "provider", None)
        per_node = getattr(ex, "workers_per_node", None)
        if provider is not None and per_node is not None:
            blocks = max(1, int(getattr(provider, "max_blocks", 1) or 1))
            nodes = max(1, int(getattr(provider, "nodes_per_block", 1) or 1))
            total += int(per_node) * blocks * nodes
        elif getattr(ex, "max_threads", None):
            total += int(ex.max_threads)
        else:
            return None
    return total


def worker_addresses(executors: Sequence[Any]) -> List[str]:
    """Where the workers reach the coordinator: the executors' own ``address`` (what Parsl's
    workers use to reach this host), 127.0.0.1 when every block is local, else every address of
    this host (loopback last)."""
    given = [str(a) for a in (getattr(e, "address", None) for e in executors) if a]
    if given:
        return list(dict.fromkeys(given))
    if all(type(getattr(e, "provider", None)).__name__ in ("LocalProvider", "NoneType") for e in executors):
        return ["127.0.0.1"]
    return local_addresses()


@contextlib.contextmanager
def parsl_scripts_on_path():
    """Parsl starts ``interchange.py`` and ``process_worker_pool.py`` by name: when this Python's
    environment is not activated, put its scripts directory on PATH (for the run)."""
    bindir = os.path.dirname(sys.executable)
    old = os.environ.get("PATH")
    missing = shutil.which("process_worker_pool.py") is None and os.path.exists(os.path.join(bindir, "process_worker_pool.py"))
    if missing:
        os.environ["PATH"] = bindir + os.pathsep + (old or "")
    try:
        yield
    finally:
        if missing:
            if old is None:
                os.environ.pop("PATH", None)
            else:
                os.environ["PATH"] = old


# ------------------------------------------------------------------------------------------------
# the worker side: one Parsl task
# ------------------------------------------------------------------------------------------------


class _FittingEndpoint(ConnectionEndpoint):
    """A worker's end that fits the run specification to this node as it arrives."""

    def __init__(self, conn: Any, fit: Any):
        super().__init__(conn)
        self._fit = fit

    def poll(self) -> Optional[T.Message]:
        msg = super().poll()
        if msg is not None and msg[0] == T.SETUP:
            msg = (T.SETUP, self._fit(msg[1]), *msg[2:])
        return msg


def run_worker(addresses: Sequence[str], port: int, authkey: bytes, slot: int, config: Any, workers: int) -> Dict[str, Any]:
    """One qcmb_hpc worker, as a Parsl task: warm QCEngine, connect back to the coordinator, fit
    the run to this node (shared with the block's other workers here, at most ``workers``), serve
    fragments until STOP. Returns where it ran."""
    from .engine import warm_qcengine
    from .resources import ResourceManager
    from .transport.sockets import connect
    from .worker import Worker

    info = {"host": socket.gethostname(), "pid": os.getpid(), "block": os.environ.get("PARSL_WORKER_BLOCK_ID")}
    warm_qcengine()
    conn = connect(addresses, port, authkey, slot, info)
    here = max(1, min(int(os.environ.get("PARSL_WORKER_COUNT") or 1), int(workers)))
    try:
        Worker(_FittingEndpoint(conn, lambda spec: ResourceManager(config).fit(spec, here))).run()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the coordinator went away: nothing left to do
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return info


# ------------------------------------------------------------------------------------------------
# the coordinator side
# ------------------------------------------------------------------------------------------------


class _ParslEndpoint(SocketTransport):
    """The socket transport whose slots are Parsl tasks; a lost worker that had served is
    replaced by a new task."""

    #: a batch queue may hold the blocks for hours: the coordinator waits for the first worker
    start_timeout = float("inf")

    def __init__(self, pool: "ParslPool", n: int, bind: str):
        super().__init__(n, bind=bind)
        self.pool = pool
        self.stopping = False
        self.initial = n
        self.quick_replacements = 0

    def setup(self, spec: Any) -> None:
        cfg = self.pool.config
        # what the user did not fix, each worker fits to its own node (as MPI ranks do)
        spec = dataclasses.replace(
            spec, threads_per_worker=cfg.threads_per_worker or 0, memory_per_worker=cfg.memory_per_worker_bytes,
            scratch_root=self.pool.scratch_root,
        )
        super().setup(spec)

    def send(self, worker: int, msg: T.Message) -> None:
        if msg[0] == T.STOP:
            self.stopping = True
        super().send(worker, msg)

    def lost(self, w: int, text: str) -> None:
        """Replace a lost worker that had finished a fragment: always if it served ``LONG_LIVED``
        seconds (its block ended: walltime, preemption), else as many times in a run as there
        were workers at the start (workers that keep dying soon are a fault of the node or of
        a fragment, which more workers would only feed)."""
        if self.stopping or w not in self.served or self.pool.dfk is None:
            return
        if time.monotonic() - self.connected_at.get(w, time.monotonic()) < LONG_LIVED:
            if self.quick_replacements >= self.initial:
                logger.warning("qcmb_hpc: worker %d lost and not replaced (%d workers were already replaced soon after starting)",
                               w, self.quick_replacements)
                return
            self.quick_replacements += 1
        new = self.add_worker()
        logger.warning("qcmb_hpc: worker %d lost; a new Parsl task (worker %d) replaces it", w, new)
        self.pool.submit(new)


class ParslPool(WorkerPool):
    """Workers as Parsl tasks (see the module's docstring)."""

    mode = "parsl"
    can_fall_back = True
    survives_worker_loss = True

    def __init__(self, config: Any):
        super().__init__(config)
        self.dfk: Any = None
        self.parsl_config: Any = None
        self.owns_dfk = False
        self.run_dir: Optional[str] = None  #: the built-in configuration's private directory
        self.scratch_root: Optional[str] = config.scratch_directory
        self.n_workers = 0
        self.labels: List[str] = []
        self.addresses: List[str] = []
        self.futures: Dict[int, Any] = {}
        self._app: Any = None
        self._path: Any = None
        self._worker_config: Any = None
        self._lock = threading.Lock()

    # -- before the run ----------------------------------------------------------------------------
    def _executors(self) -> List[Any]:
        if self.parsl_config is not None:
            return _user_executors(self.parsl_config.executors)
        return _user_executors(list(self.dfk.executors.values()))

    def layout(self, resources: Any, tasks: int) -> Any:
        _parsl()
        cfg = self.config
        if cfg.parsl_config is not None:
            self.parsl_config = load_config(cfg.parsl_config)
        else:
            self.dfk = _loaded_dfk()
        if self.parsl_config is None and self.dfk is None:  # the built-in local configuration
            layout = resources.layout(tasks=tasks)
            self.n_workers = layout.workers
            self.scratch_root = layout.scratch  # (this node's: the block is here, its TMPDIR is not)
            return layout
        executors = self._executors()
        if not executors:
            raise InputDataError("the Parsl configuration has no executor to run workers on")
        held = capacity(executors)
        n = cfg.max_workers or held
        if n is None:
            raise InputDataError(
                f"cannot tell how many workers the Parsl executors {', '.join(e.label for e in executors)} hold: give --workers N"
            )
        self.n_workers = max(1, min(int(n), max(1, tasks)))
        self.labels = [e.label for e in executors]
        # the workers fit themselves to their blocks' nodes; this node's figures serve a
        # sequential fallback here, should it come to that
        return dataclasses.replace(resources.layout(tasks=tasks, log=False), workers=self.n_workers)

    def describe(self, layout: Any) -> str:
        if self.parsl_config is None and self.dfk is None:
            return f"parsl (a local block: HighThroughputExecutor, LocalProvider), {layout.describe()}"
        executors = self._executors()
        where = ", ".join(f"{e.label} ({type(getattr(e, 'provider', None)).__name__})" for e in executors)
        fixed = []
        if self.config.threads_per_worker:
            fixed.append(f"{self.config.threads_per_worker} threads")
        if self.config.memory_per_worker_bytes:
            from .config import format_bytes

            fixed.append(format_bytes(self.config.memory_per_worker_bytes))
        each = " and ".join(fixed) + " each" if fixed else "threads and memory fitted to each block's node"
        source = "the loaded DataFlowKernel" if self.parsl_config is None else f"config {self.config.parsl_config}"
        return f"parsl, {self.n_workers} workers as Parsl tasks on {where} ({source}); {each}"

    # -- the run -------------------------------------------------------------------------------------
    def start(self, spec: Any, layout: Any) -> Any:
        from .transport.processes import TransportStartError

        try:
            self._start()
        except InputDataError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            first = (str(exc).strip().splitlines() or [""])[0]
            raise TransportStartError(f"Parsl could not start its workers: {type(exc).__name__}: {first}") from exc
        return self.endpoint

    def _start(self) -> None:
        from parsl.app.python import PythonApp

        self._path = parsl_scripts_on_path()
        self._path.__enter__()
        if self.parsl_config is None and self.dfk is None:
            # (in the temporary directory, not the scratch root: the block's manager makes a Unix
            # socket under it, and a long scratch path would be too long for one)
            self.run_dir = tempfile.mkdtemp(prefix="qcmb_hpc-parsl-")
            pythonpath = os.pathsep.join(os.path.abspath(p) if p else os.getcwd() for p in sys.path)
            self.parsl_config = default_config(self.n_workers, self.run_dir, pythonpath)
            self.labels = [LOCAL_LABEL]
        if self.parsl_config is not None:
            from parsl.dataflow.dflow import DataFlowKernel

            self.dfk = DataFlowKernel(self.parsl_config)
            self.owns_dfk = True
        executors = self._executors()
        self.labels = self.labels or [e.label for e in executors]
        self.addresses = worker_addresses(executors)
        bind = "127.0.0.1" if all(a.startswith("127.") for a in self.addresses) else "0.0.0.0"
        self.endpoint = _ParslEndpoint(self, self.n_workers, bind)
        logger.info("qcmb_hpc: parsl: %d workers connect to %s port %d (Parsl run directory %s)",
                    self.n_workers, ", ".join(self.addresses), self.endpoint.port, self.dfk.run_dir)
        # what a worker needs of the settings to fit itself to its node
        self._worker_config = self.config.replace(parsl_config=None, scratch_directory=self.scratch_root)
        self._app = PythonApp(run_worker, data_flow_kernel=self.dfk, executors=self.labels)
        for w in list(self.endpoint.workers):
            self.submit(w)

    def submit(self, slot: int) -> None:
        """A Parsl task for worker ``slot``."""
        ep = self.endpoint
        fut = self._app(self.addresses, ep.port, ep.authkey, slot, self._worker_config, self.n_workers)
        with self._lock:
            self.futures[slot] = fut
        fut.add_done_callback(lambda f, slot=slot: self._task_ended(slot, f))

    def _task_ended(self, slot: int, fut: Any) -> None:
        """(A Parsl thread.) A worker's task ended: if it failed, its worker is gone (or will not
        come); the transport ignores this for a worker that already left."""
        try:
            exc = fut.exception()
        except BaseException as cancelled:  # (a cancelled future)
            exc = cancelled
        ep = self.endpoint
        if exc is not None and ep is not None:
            first = (str(exc).strip().splitlines() or [""])[0]
            ep.notice_lost(slot, f"the Parsl task of worker {slot} failed: {type(exc).__name__}: {first}")

    # -- after the run ------------------------------------------------------------------------------
    def close(self) -> None:
        endpoint = self.endpoint
        super().close()  # the listener and every connection closed: workers still there leave
        if endpoint is not None:
            started = [f for w, f in self.futures.items() if endpoint.state.get(w) in ("connected", "lost")]
            deadline = time.monotonic() + END_WAIT
            while any(not f.done() for f in started) and time.monotonic() < deadline:
                time.sleep(0.05)
        dfk, self.dfk = self.dfk, None
        if dfk is not None and self.owns_dfk:
            with contextlib.suppress(Exception):
                dfk.cleanup()  # (the blocks are cancelled)
        self.owns_dfk = False
        if self._path is not None:
            path, self._path = self._path, None
            path.__exit__(None, None, None)
        if endpoint is not None and not self.config.keep_scratch:
            from .worker import remove_scratch

            remove_scratch(endpoint.ready.values())  # a killed worker could not remove its own
        if self.run_dir is not None:
            if self.config.keep_scratch:
                logger.info("qcmb_hpc: Parsl's run directory kept: %s", self.run_dir)
            else:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None


def _loaded_dfk() -> Any:
    """The DataFlowKernel this process loaded with ``parsl.load``, if any (and not cleaned up)."""
    from parsl.dataflow.dflow import DataFlowKernelLoader
    from parsl.errors import NoDataFlowKernelError

    try:
        dfk = DataFlowKernelLoader.dfk()
    except NoDataFlowKernelError:
        return None
    return None if getattr(dfk, "cleanup_called", False) else dfk


class ParslPlugin(ParallelExecutionPlugin):
    name = "parsl"
    #: the adaptive mode takes it when a Parsl configuration is given (MPI under a launcher wins)
    priority = 15
    adaptive = True
    description = "workers as long-lived Parsl tasks in Parsl's blocks (local, Slurm, PBS, LSF, Kubernetes, ...), over TCP"

    def suits(self, config: Any) -> bool:
        return getattr(config, "parsl_config", None) is not None

    def why_not(self, config: Any) -> Optional[str]:
        _parsl()  # not installed: a one-line error saying what to install (never a silent sequential run)
        return None

    def create_executor(self, config: Any) -> ParslPool:
        return ParslPool(config)
