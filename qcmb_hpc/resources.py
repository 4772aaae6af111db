"""Node resources → how many workers, how many threads each, how much memory each.

Reading (mechanism). Two figures for cores, because MPI ranks share a node:

* ``cores`` — what *this process* may use: CPU affinity, the cgroup CPU quota, and Slurm's
  ``SLURM_CPUS_PER_TASK``; without it, inside an ``srun`` step, ``SLURM_CPUS_ON_NODE`` divided by
  the step's tasks on this node (``SLURM_STEP_TASKS_PER_NODE``, else ``SLURM_NTASKS`` on one node);
  in the batch script, ``SLURM_CPUS_ON_NODE``.
* ``node_cores`` — what the job may use on this node, shared by all its ranks there: the cgroup
  CPU quota, ``SLURM_CPUS_ON_NODE`` and the machine's CPU count. CPU affinity is left out on
  purpose: a launcher that binds each rank sees only the rank's own cores there.

Memory is per node (ranks on a node share it): the cgroup limit (v2 ``memory.max`` or v1
``memory.limit_in_bytes``, the smallest along this process's cgroup and its ancestors),
``SLURM_MEM_PER_NODE`` or ``SLURM_MEM_PER_CPU`` × ``SLURM_CPUS_ON_NODE``, and psutil's available
memory. For every figure the smallest source wins, and its name is kept for the one-line layout.

The cgroup of this process is found through ``/proc/self/cgroup`` and the cgroup mounts in
``/proc/self/mountinfo`` (cgroup v2, v1, and the hybrid layout with v2 under ``unified/``; a
container's mount root is taken into account), so limits are read where they really are.

Arithmetic (policy, pure): :func:`plan_layout` turns those figures and the user's overrides
(``max_workers``, ``threads_per_worker``, ``memory_limit_per_worker``) into a :class:`Layout`, or a
:class:`ResourceError` with a one-line reason when they cannot fit. QC programs overshoot what they
are told, so only :data:`MEMORY_SAFETY` of the memory is handed out, and each worker's own Python
processes are reserved :data:`WORKER_OVERHEAD` besides what its QC program gets.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .config import format_bytes
from .launcher import in_slurm_step

__all__ = [
    "ResourceManager",
    "ResourceError",
    "NodeResources",
    "Layout",
    "cgroup_limits",
    "detect_cores",
    "detect_node_cores",
    "detect_memory",
    "detect_node",
    "plan_layout",
    "MEMORY_SAFETY",
    "WORKER_OVERHEAD",
    "MIN_WORKER_MEMORY",
]

#: fraction of the usable memory handed out (QC programs overshoot what they are told)
MEMORY_SAFETY = 0.85
#: memory a worker's own Python processes need besides its QC program (worker + isolated child)
WORKER_OVERHEAD = 256 * 1024**2
#: the least memory worth giving a QC program; a layout that leaves less is refused or shrunk
MIN_WORKER_MEMORY = 128 * 1024**2
#: cgroup v1 writes "no limit" as a huge number (2^63 rounded down to the page size)
_V1_UNLIMITED = 2**60


class ResourceError(ValueError):
    """The requested layout does not fit the resources (a user-fixable problem)."""


@dataclass
class NodeResources:
    cores: int  #: cores this process may use
    memory: int  #: bytes usable on this node by this job (before the safety margin)
    sources: Dict[str, str] = field(default_factory=dict)
    node_cores: Optional[int] = None  #: cores of this job on this node, shared by its ranks (None: ``cores``)


@dataclass
class Layout:
    workers: int  #: workers on this node (multiprocessing) or in total (MPI, see ``describe``)
    threads_per_worker: int
    memory_per_worker: int  #: bytes for each worker's QC program
    cores: int
    memory: int
    sources: Dict[str, str] = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    scratch: str = ""

    def describe(self) -> str:
        t = "thread" if self.threads_per_worker == 1 else "threads"
        w = "worker" if self.workers == 1 else "workers"
        s = f"{self.workers} {w} × {self.threads_per_worker} {t}, {format_bytes(self.memory_per_worker)} each"
        if self.scratch:
            s += f", scratch {self.scratch}"
        return s + f" (of {self.cores} cores [{self.sources.get('cores', '?')}], {format_bytes(self.memory)} [{self.sources.get('memory', '?')}])"


# ------------------------------------------------------------------------------------------------
# cgroups
# ------------------------------------------------------------------------------------------------


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _cgroup_mounts(mountinfo: str) -> List[Tuple[str, str, str, List[str]]]:
    """``(fstype, mount_root, mount_point, super_options)`` of every cgroup/cgroup2 mount."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 1 or rf[0] not in ("cgroup", "cgroup2"):
            continue
        opts = rf[2].split(",") if len(rf) > 2 else []
        out.append((rf[0], _unescape(lf[3]), _unescape(lf[4]), opts))
    return out


def _cgroup_chain(mount_point: str, mount_root: str, path: str) -> List[str]:
    """This process's cgroup directory under ``mount_point`` and its ancestors up to the mount."""
    path = "/" + path.strip("/")
    root = "/" + mount_root.strip("/")
    if root == "/":
        rel = path
    elif path == root or path.startswith(root + "/"):
        rel = path[len(root):]
    else:  # the process's path is outside what is mounted (another cgroup namespace): read the mount
        rel = "/"
    parts = [p for p in rel.split("/") if p]
    chain = []
    for i in range(len(parts), -1, -1):
        chain.append(os.path.join(mount_point, *parts[:i]))
    return chain


def _controller_dirs(proc_cgroup: str, mountinfo: str, cgroup_root: str) -> Dict[str, List[str]]:
    """Directories to read each kind of limit from: ``v2``, ``cpu`` (v1) and ``memory`` (v1), each
    this process's cgroup first, then its ancestors."""
    out: Dict[str, List[str]] = {"v2": [], "cpu": [], "memory": []}
    membership: Dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            membership["v2"] = path
        for ctl in controllers.split(","):
            if ctl in ("cpu", "memory"):
                membership[ctl] = path
    mounts = _cgroup_mounts(mountinfo)
    if mounts:
        for fstype, mroot, mpoint, opts in mounts:
            if fstype == "cgroup2" and "v2" in membership and not out["v2"]:
                out["v2"] = _cgroup_chain(mpoint, mroot, membership["v2"])
            elif fstype == "cgroup":
                for ctl in ("cpu", "memory"):
                    if ctl in opts and ctl in membership and not out[ctl]:
                        out[ctl] = _cgroup_chain(mpoint, mroot, membership[ctl])
        return out
    # no mount table (tests, unusual systems): the conventional layout under cgroup_root
    if "v2" in membership and os.path.exists(os.path.join(cgroup_root, "cgroup.controllers")):
        out["v2"] = _cgroup_chain(cgroup_root, "/", membership["v2"])
    for ctl in ("cpu", "memory"):
        if ctl in membership:
            out[ctl] = _cgroup_chain(os.path.join(cgroup_root, ctl), "/", membership[ctl])
    return out


def cgroup_limits(
    cgroup_root: str = "/sys/fs/cgroup",
    proc_cgroup: Optional[str] = None,
    mountinfo: Optional[str] = None,
) -> Tuple[Optional[float], Optional[int]]:
    """``(cpus, memory_bytes)`` allowed by cgroups (v2 or v1), None where unlimited.

    ``proc_cgroup`` and ``mountinfo`` default to ``/proc/self/cgroup`` and ``/proc/self/mountinfo``
    (tests pass their own, with mount points in a temporary directory). The limit is the smallest
    along this process's cgroup and its ancestors (a parent's limit binds its children)."""
    if proc_cgroup is None:
        proc_cgroup = _read("/proc/self/cgroup") or ""
    if mountinfo is None:
        mountinfo = _read("/proc/self/mountinfo") or ""
    dirs = _controller_dirs(proc_cgroup, mountinfo, cgroup_root)
    cpus: Optional[float] = None
    mem: Optional[int] = None

    def lower_cpus(c: float) -> None:
        nonlocal cpus
        if c > 0:
            cpus = c if cpus is None else min(cpus, c)

    def lower_mem(m: int) -> None:
        nonlocal mem
        if 0 < m < _V1_UNLIMITED:
            mem = m if mem is None else min(mem, m)

    for d in dirs["v2"]:
        cm = _read(os.path.join(d, "cpu.max"))
        if cm:
            quota, _, period = cm.partition(" ")
            if quota != "max":
                try:
                    lower_cpus(int(quota) / int(period or 100000))
                except ValueError:
                    pass
        for name in ("memory.max", "memory.high"):
            mm = _read(os.path.join(d, name))
            if mm and mm != "max" and mm.isdigit():
                lower_mem(int(mm))
    for d in dirs["cpu"]:
        q, p = _read(os.path.join(d, "cpu.cfs_quota_us")), _read(os.path.join(d, "cpu.cfs_period_us"))
        try:
            if q and p and int(q) > 0:
                lower_cpus(int(q) / int(p))
        except ValueError:
            pass
    for d in dirs["memory"]:
        mm = _read(os.path.join(d, "memory.limit_in_bytes"))
        if mm and mm.isdigit():
            lower_mem(int(mm))
    return cpus, mem


# ------------------------------------------------------------------------------------------------
# Slurm
# ------------------------------------------------------------------------------------------------


def _slurm_int(environ: Mapping[str, str], name: str) -> Optional[int]:
    """A positive integer from a Slurm variable (``8``; ``2(x3),1`` → its first count), else None."""
    raw = environ.get(name)
    if not raw:
        return None
    try:
        n = int(raw.split("(")[0].split(",")[0])
    except ValueError:
        return None
    return n if n > 0 else None


def _expand_counts(spec: str) -> List[int]:
    """Slurm's compressed per-node counts: ``2(x3),1`` → ``[2, 2, 2, 1]``."""
    out: List[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        count, _, rep = part.partition("(x")
        n = int(count)
        out.extend([n] * (int(rep.rstrip(")")) if rep else 1))
    return out


def _step_tasks_here(environ: Mapping[str, str]) -> Optional[int]:
    """Tasks of the current srun step on this node (None when not in a step or unknown)."""
    if not in_slurm_step(environ):
        return None
    spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if spec:
        try:
            counts = _expand_counts(spec)
            idx = int(environ.get("SLURM_NODEID", "0") or 0)
            if counts:
                return counts[idx] if 0 <= idx < len(counts) else counts[0]
        except ValueError:
            pass
    nodes = _slurm_int(environ, "SLURM_STEP_NUM_NODES") or _slurm_int(environ, "SLURM_NNODES")
    ntasks = _slurm_int(environ, "SLURM_STEP_NUM_TASKS") or _slurm_int(environ, "SLURM_NTASKS")
    if ntasks and nodes == 1:
        return ntasks
    return None


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def detect_cores(
    environ: Optional[Mapping[str, str]] = None,
    affinity: Optional[int] = None,
    cgroup_cpus: Optional[float] = None,
) -> Tuple[int, str]:
    """Cores this process may use and where that figure came from (the smallest source wins)."""
    environ = os.environ if environ is None else environ
    if affinity is None:
        affinity = _affinity()
    candidates = [(int(affinity), "CPU affinity")]
    if cgroup_cpus is not None:
        candidates.append((max(1, math.floor(cgroup_cpus)), "cgroup cpu quota"))
    if environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID"):
        per_task = _slurm_int(environ, "SLURM_CPUS_PER_TASK")
        on_node = _slurm_int(environ, "SLURM_CPUS_ON_NODE")
        tasks_here = _step_tasks_here(environ)
        if per_task:
            candidates.append((per_task, "SLURM_CPUS_PER_TASK"))
        elif on_node and tasks_here:
            candidates.append((max(1, on_node // tasks_here), f"SLURM_CPUS_ON_NODE/{tasks_here} tasks"))
        elif on_node:
            candidates.append((on_node, "SLURM_CPUS_ON_NODE"))
    n, src = min(candidates, key=lambda c: c[0])
    return max(1, int(n)), src


def detect_node_cores(
    environ: Optional[Mapping[str, str]] = None,
    cpu_count: Optional[int] = None,
    cgroup_cpus: Optional[float] = None,
) -> Tuple[int, str]:
    """Cores this job may use on this node, shared by all its ranks there (affinity left out: a
    launcher that binds ranks shows each rank only its own cores)."""
    environ = os.environ if environ is None else environ
    if cpu_count is None:
        cpu_count = os.cpu_count() or 1
    candidates = [(int(cpu_count), "CPUs of the node")]
    if cgroup_cpus is not None:
        candidates.append((max(1, math.floor(cgroup_cpus)), "cgroup cpu quota"))
    if environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID"):
        on_node = _slurm_int(environ, "SLURM_CPUS_ON_NODE")
        if on_node:
            candidates.append((on_node, "SLURM_CPUS_ON_NODE"))
    n, src = min(candidates, key=lambda c: c[0])
    return max(1, int(n)), src


def detect_memory(
    environ: Optional[Mapping[str, str]] = None,
    available: Optional[int] = None,
    cgroup_memory: Optional[int] = None,
    cpus_on_node: Optional[int] = None,
) -> Tuple[int, str]:
    """Bytes this job may use on this node and where that figure came from (the smallest wins)."""
    environ = os.environ if environ is None else environ
    if available is None:
        import psutil

        available = int(psutil.virtual_memory().available)
    candidates = [(int(available), "available memory")]
    if cgroup_memory is not None:
        candidates.append((int(cgroup_memory), "cgroup memory limit"))
    if environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID"):
        per_node = _slurm_int(environ, "SLURM_MEM_PER_NODE")  # MB; 0 (= the whole node) is ignored
        per_cpu = _slurm_int(environ, "SLURM_MEM_PER_CPU")
        if per_node:
            candidates.append((per_node * 1024**2, "SLURM_MEM_PER_NODE"))
        elif per_cpu:
            ncpu = cpus_on_node or _slurm_int(environ, "SLURM_CPUS_ON_NODE") or 1
            candidates.append((per_cpu * 1024**2 * ncpu, f"SLURM_MEM_PER_CPU×{ncpu}"))
    n, src = min(candidates, key=lambda c: c[0])
    return int(n), src


def detect_node(
    environ: Optional[Mapping[str, str]] = None,
    cgroup_root: str = "/sys/fs/cgroup",
    *,
    affinity: Optional[int] = None,
    cpu_count: Optional[int] = None,
    available: Optional[int] = None,
    proc_cgroup: Optional[str] = None,
    mountinfo: Optional[str] = None,
) -> NodeResources:
    """Cores and memory usable by this job on this node (keyword arguments replace what would be
    read from the system, for tests)."""
    cpus, mem = cgroup_limits(cgroup_root, proc_cgroup=proc_cgroup, mountinfo=mountinfo)
    cores, csrc = detect_cores(environ, affinity=affinity, cgroup_cpus=cpus)
    node_cores, nsrc = detect_node_cores(environ, cpu_count=cpu_count, cgroup_cpus=cpus)
    memory, msrc = detect_memory(environ, available=available, cgroup_memory=mem)
    return NodeResources(
        cores=cores, memory=memory, node_cores=node_cores, sources={"cores": csrc, "memory": msrc, "node_cores": nsrc}
    )


# ------------------------------------------------------------------------------------------------
# arithmetic
# ------------------------------------------------------------------------------------------------


def plan_layout(
    node: NodeResources,
    *,
    max_workers: Optional[int] = None,
    threads_per_worker: Optional[int] = None,
    memory_per_worker: Optional[int] = None,
    ranks_on_node: Optional[int] = None,
    tasks: Optional[int] = None,
) -> Layout:
    """Workers, threads and memory for one node.

    * Multiprocessing (no ``ranks_on_node``): workers = cores // threads (threads default 1);
      ``max_workers`` replaces that count. Workers that the memory cannot hold are dropped, with a
      warning.
    * MPI (``ranks_on_node`` = the worker ranks sharing this node, each one worker): threads default
      to this rank's share, ``min(cores, node_cores // ranks_on_node)``; the node's memory is shared
      among the ranks. The ranks are fixed by the launcher, so memory that cannot hold them all is a
      :class:`ResourceError` saying how many would fit.
    * ``tasks`` (multiprocessing): never more workers than fragments to run, so the memory is
      shared among the workers that will really run.
    * ``memory_per_worker`` gives each QC program that much (lowering the worker count to what fits,
      or an error if not one does); without it each worker gets an equal share, and a share below
      :data:`MIN_WORKER_MEMORY` lowers the count (multiprocessing) or is an error (MPI).

    Usable memory is :data:`MEMORY_SAFETY` of the node's; each worker's own processes are reserved
    :data:`WORKER_OVERHEAD` of it besides its QC program's memory. More workers × threads than
    cores is allowed (the user asked for it), with a warning.
    """
    usable = int(node.memory * MEMORY_SAFETY)
    warnings: List[str] = []
    where = node.sources.get("memory", "detected")
    mpi = ranks_on_node is not None
    if mpi:
        workers = max(1, int(ranks_on_node))
        node_cores = node.node_cores or node.cores
        threads = threads_per_worker or max(1, min(node.cores, node_cores // workers))
        cores_here = node_cores
    else:
        threads = threads_per_worker or 1
        workers = max_workers if max_workers is not None else max(1, node.cores // threads)
        if tasks is not None:
            workers = max(1, min(workers, int(tasks)))
        cores_here = node.cores
    if workers < 1 or threads < 1:
        raise ResourceError(f"workers ({workers}) and threads per worker ({threads}) must be at least 1")
    if workers * threads > cores_here:
        warnings.append(
            f"{workers} {'ranks' if mpi else 'workers'} × {threads} threads oversubscribe the {cores_here} usable cores "
            f"({node.sources.get('node_cores' if mpi else 'cores', 'detected')})"
        )
    need_each = (memory_per_worker if memory_per_worker is not None else MIN_WORKER_MEMORY) + WORKER_OVERHEAD
    fit = usable // need_each
    if fit < 1:
        what = (
            f"memory_limit_per_worker={format_bytes(memory_per_worker)}"
            if memory_per_worker is not None
            else f"the minimum of {format_bytes(MIN_WORKER_MEMORY)} per worker"
        )
        raise ResourceError(
            f"{what} fits no worker: {format_bytes(usable)} usable of {format_bytes(node.memory)} ({where}, "
            f"{int(MEMORY_SAFETY * 100)}% of it, less {format_bytes(WORKER_OVERHEAD)} per worker for its own processes)"
        )
    if fit < workers:
        if mpi:
            raise ResourceError(
                f"{workers} worker ranks on this node × {format_bytes(need_each - WORKER_OVERHEAD)} each "
                f"(+{format_bytes(WORKER_OVERHEAD)} for their processes) do not fit in {format_bytes(usable)} usable memory "
                f"({where}); use at most {fit} ranks per node, ask for more memory, or lower memory_limit_per_worker"
            )
        warnings.append(
            f"{format_bytes(usable)} usable memory ({where}) holds {fit} workers of "
            f"{format_bytes(need_each - WORKER_OVERHEAD)}, not {workers}: running {fit}"
        )
        workers = int(fit)
    if memory_per_worker is not None:
        mem_each = int(memory_per_worker)
    else:
        mem_each = usable // workers - WORKER_OVERHEAD
    sources = dict(node.sources)
    if mpi:
        sources["cores"] = node.sources.get("node_cores", node.sources.get("cores", "detected"))
    return Layout(
        workers=workers,
        threads_per_worker=threads,
        memory_per_worker=mem_each,
        cores=cores_here,
        memory=node.memory,
        sources=sources,
        warnings=warnings,
    )


# ------------------------------------------------------------------------------------------------
# the one home of the layout
# ------------------------------------------------------------------------------------------------


class ResourceManager:
    """Cores, memory, threads and scratch for a run — every mode, every node. The coordinator asks
    it how many workers to start and what each gets; every worker rank asks it again on its own
    node (ranks sharing a node share its cores and memory).

    The design document's ``ResourceManager(config).get_optimal_worker_count()`` is here, with
    two differences kept on purpose: memory is counted with a safety margin and a per-worker
    overhead (QC programs overshoot what they are told; each worker's own Python processes need
    memory too), and on one node there are never more workers than fragments to run (idle forks
    would hold memory reservations for nothing)."""

    def __init__(self, config: Any, node: Optional[NodeResources] = None, environ: Optional[Mapping[str, str]] = None):
        self.config = config
        self.node = node if node is not None else detect_node(environ)

    def get_optimal_worker_count(self, tasks: Optional[int] = None) -> int:
        """Workers for one node: usable cores / threads per worker, or ``max_workers``, lowered to
        what the memory holds and (with ``tasks``) to the fragments there are."""
        return self.layout(tasks=tasks, log=False).workers

    def layout(self, tasks: Optional[int] = None, sequential: bool = False, log: bool = True) -> Layout:
        """One node's workers (multiprocessing; ``sequential``: one worker with every core)."""
        cfg = self.config
        if sequential:
            return self._layout(dict(max_workers=1, threads_per_worker=cfg.threads_per_worker or self.node.cores), log)
        return self._layout(dict(max_workers=cfg.max_workers, threads_per_worker=cfg.threads_per_worker,
                                 tasks=max(1, tasks) if tasks is not None else None), log)

    def rank_layout(self, workers_on_node: int, log: bool = True) -> Layout:
        """This MPI rank's share of its node, which ``workers_on_node`` worker ranks share."""
        return self._layout(dict(threads_per_worker=self.config.threads_per_worker, ranks_on_node=max(1, workers_on_node)), log)

    def _layout(self, kw: Dict[str, Any], log: bool) -> Layout:
        from .errors import InputDataError

        try:
            layout = plan_layout(self.node, memory_per_worker=self.config.memory_per_worker_bytes, **kw)
        except ResourceError as exc:
            raise InputDataError(str(exc)) from None
        if log:
            import logging

            for w in layout.warnings:
                logging.getLogger("qcmb_hpc").warning("%s", w)
        layout.scratch = self.scratch()
        return layout

    def scratch(self) -> str:
        """The scratch root this node's workers use, checked (a one-line error if unusable)."""
        from .errors import InputDataError
        from .worker import check_scratch, scratch_root

        root = scratch_root(self.config.scratch_directory)
        try:
            check_scratch(root)
        except OSError as exc:
            raise InputDataError(f"scratch directory {root} cannot be used: {exc.strerror or exc}") from None
        return root

    def fit(self, spec: Any, workers_on_node: int) -> Any:
        """A worker rank's copy of the run specification with the threads and memory its node
        gives it filled in where the coordinator left them open (0 / None: "fit to the node")."""
        if spec.threads_per_worker and spec.memory_per_worker:
            return spec
        layout = self.rank_layout(workers_on_node, log=False)
        import dataclasses

        return dataclasses.replace(
            spec,
            threads_per_worker=spec.threads_per_worker or layout.threads_per_worker,
            memory_per_worker=spec.memory_per_worker or layout.memory_per_worker,
        )
