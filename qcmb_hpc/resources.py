"""Node resources → how many workers, how many threads each, how much memory each.

Reading (mechanism): cores from CPU affinity, the cgroup CPU quota and Slurm's
``SLURM_CPUS_PER_TASK`` / ``SLURM_CPUS_ON_NODE``; memory from the cgroup limit,
``SLURM_MEM_PER_NODE`` / ``SLURM_MEM_PER_CPU`` and psutil's available memory. For each the smallest
wins, and memory keeps a safety margin (:data:`MEMORY_SAFETY`) because QC programs overshoot what
they are told.

Arithmetic (policy, pure): :func:`plan_layout` turns those figures and the user's overrides
(``max_workers``, ``threads_per_worker``, ``memory_limit_per_worker``) into a :class:`Layout`, or a
:class:`ResourceError` with a one-line reason when they cannot fit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

from .config import format_bytes

__all__ = [
    "ResourceError",
    "NodeResources",
    "Layout",
    "detect_cores",
    "detect_memory",
    "detect_node",
    "plan_layout",
    "MEMORY_SAFETY",
    "WORKER_OVERHEAD",
]

#: fraction of the usable memory handed to QC programs
MEMORY_SAFETY = 0.85
#: memory a worker's own Python processes need besides its QC program (worker + isolated child)
WORKER_OVERHEAD = 256 * 1024**2


class ResourceError(ValueError):
    """The requested layout does not fit the resources (a user-fixable problem)."""


@dataclass
class NodeResources:
    cores: int
    memory: int  #: bytes usable on this node by this job (before the safety margin)
    sources: Dict[str, str] = field(default_factory=dict)


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
        s = f"{self.workers} workers × {self.threads_per_worker} {t}, {format_bytes(self.memory_per_worker)} each"
        if self.scratch:
            s += f", scratch {self.scratch}"
        return s + f" (of {self.cores} cores [{self.sources.get('cores', '?')}], {format_bytes(self.memory)} [{self.sources.get('memory', '?')}])"


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _cgroup_dirs(cgroup_root: str, proc_cgroup: Optional[str]) -> Dict[str, list]:
    """Directories to look in for each controller, this process's cgroup first, then its ancestors."""
    out: Dict[str, list] = {"v2": [], "cpu": [], "memory": []}
    text = proc_cgroup if proc_cgroup is not None else (_read("/proc/self/cgroup") or "")
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.strip("/")
        chain = []
        while True:
            chain.append(rel)
            if not rel:
                break
            rel = rel.rsplit("/", 1)[0] if "/" in rel else ""
        if controllers == "":
            out["v2"] = [os.path.join(cgroup_root, p) for p in chain]
        for ctl in controllers.split(","):
            if ctl in ("cpu", "memory"):
                out[ctl] = [os.path.join(cgroup_root, ctl, p) for p in chain]
    if not any(out.values()):
        out["v2"] = [cgroup_root]
    return out


def cgroup_limits(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: Optional[str] = None) -> Tuple[Optional[float], Optional[int]]:
    """``(cpus, memory_bytes)`` allowed by cgroups (v2 or v1), None where unlimited."""
    dirs = _cgroup_dirs(cgroup_root, proc_cgroup)
    cpus: Optional[float] = None
    mem: Optional[int] = None
    for d in dirs["v2"]:
        cm = _read(os.path.join(d, "cpu.max"))
        if cm:
            quota, _, period = cm.partition(" ")
            if quota != "max" and period:
                c = int(quota) / int(period)
                cpus = c if cpus is None else min(cpus, c)
        mm = _read(os.path.join(d, "memory.max"))
        if mm and mm != "max":
            mem = int(mm) if mem is None else min(mem, int(mm))
    for d in dirs["cpu"]:
        q, p = _read(os.path.join(d, "cpu.cfs_quota_us")), _read(os.path.join(d, "cpu.cfs_period_us"))
        if q and p and int(q) > 0:
            c = int(q) / int(p)
            cpus = c if cpus is None else min(cpus, c)
    for d in dirs["memory"]:
        mm = _read(os.path.join(d, "memory.limit_in_bytes"))
        if mm and int(mm) < 2**62:
            mem = int(mm) if mem is None else min(mem, int(mm))
    return cpus, mem


def _slurm_int(environ: Mapping[str, str], name: str) -> Optional[int]:
    raw = environ.get(name)
    if not raw:
        return None
    try:
        return int(raw.split("(")[0].split(",")[0])  # e.g. SLURM_CPUS_ON_NODE=8, SLURM_TASKS_PER_NODE=2(x3)
    except ValueError:
        return None


def detect_cores(
    environ: Optional[Mapping[str, str]] = None,
    affinity: Optional[int] = None,
    cgroup_cpus: Optional[float] = None,
) -> Tuple[int, str]:
    """Cores this process may use and where that figure came from (the smallest source wins)."""
    environ = os.environ if environ is None else environ
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            affinity = os.cpu_count() or 1
    candidates = [(affinity, "CPU affinity")]
    if cgroup_cpus is not None:
        candidates.append((max(1, math.floor(cgroup_cpus)), "cgroup cpu quota"))
    per_task = _slurm_int(environ, "SLURM_CPUS_PER_TASK")
    on_node = _slurm_int(environ, "SLURM_CPUS_ON_NODE")
    if per_task:
        candidates.append((per_task, "SLURM_CPUS_PER_TASK"))
    elif on_node and environ.get("SLURM_JOB_ID"):
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
    candidates = [(available, "available memory")]
    if cgroup_memory is not None:
        candidates.append((cgroup_memory, "cgroup memory limit"))
    per_node = _slurm_int(environ, "SLURM_MEM_PER_NODE")
    per_cpu = _slurm_int(environ, "SLURM_MEM_PER_CPU")
    if per_node:
        candidates.append((per_node * 1024**2, "SLURM_MEM_PER_NODE"))
    elif per_cpu:
        ncpu = cpus_on_node or _slurm_int(environ, "SLURM_CPUS_ON_NODE") or 1
        candidates.append((per_cpu * 1024**2 * ncpu, "SLURM_MEM_PER_CPU"))
    n, src = min(candidates, key=lambda c: c[0])
    return int(n), src


def detect_node(environ: Optional[Mapping[str, str]] = None, cgroup_root: str = "/sys/fs/cgroup") -> NodeResources:
    """Cores and memory usable by this job on this node."""
    cpus, mem = cgroup_limits(cgroup_root)
    cores, csrc = detect_cores(environ, cgroup_cpus=cpus)
    memory, msrc = detect_memory(environ, cgroup_memory=mem)
    return NodeResources(cores=cores, memory=memory, sources={"cores": csrc, "memory": msrc})


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
) -> Layout:
    """Workers, threads and memory for one node.

    * Without ``ranks_on_node`` (multiprocessing): workers = cores // threads (default 1 thread);
      ``max_workers`` replaces that count.
    * With ``ranks_on_node`` (MPI: the ranks sharing this node, each one worker): threads default to
      cores // ranks, and the node's memory is shared among the ranks.
    * ``memory_per_worker`` lowers the worker count to what the usable memory holds (a
      :class:`ResourceError` if not even one fits); without it, each worker gets an equal share.

    Usable memory is :data:`MEMORY_SAFETY` of the node's, less :data:`WORKER_OVERHEAD` per worker.
    More workers × threads than cores is allowed only when asked for explicitly, with a warning.
    """
    usable = int(node.memory * MEMORY_SAFETY)
    warnings = []
    if ranks_on_node is not None:
        workers = max(1, int(ranks_on_node))
        threads = threads_per_worker or max(1, node.cores // workers)
    else:
        threads = threads_per_worker or 1
        workers = max_workers if max_workers is not None else max(1, node.cores // threads)
    if workers * threads > node.cores:
        warnings.append(
            f"{workers} workers × {threads} threads oversubscribe the {node.cores} usable cores "
            f"({node.sources.get('cores', 'detected')})"
        )
    if memory_per_worker is not None:
        fit = usable // (memory_per_worker + WORKER_OVERHEAD)
        if fit < 1:
            raise ResourceError(
                f"memory_limit_per_worker={format_bytes(memory_per_worker)} fits no worker: "
                f"{format_bytes(usable)} usable ({node.sources.get('memory', 'detected')}, "
                f"{int(MEMORY_SAFETY * 100)}% of it, less {format_bytes(WORKER_OVERHEAD)} per worker for its processes)"
            )
        if ranks_on_node is not None and fit < workers:
            raise ResourceError(
                f"{workers} ranks on this node × {format_bytes(memory_per_worker)} each do not fit in "
                f"{format_bytes(usable)} usable memory ({node.sources.get('memory', 'detected')}); "
                f"use at most {fit} ranks per node or less memory per worker"
            )
        if fit < workers:
            warnings.append(
                f"memory_limit_per_worker={format_bytes(memory_per_worker)} lowers the workers from {workers} to {fit}"
            )
            workers = int(fit)
        mem_each = int(memory_per_worker)
    else:
        mem_each = max(64 * 1024**2, usable // workers - WORKER_OVERHEAD)
    return Layout(
        workers=workers,
        threads_per_worker=threads,
        memory_per_worker=mem_each,
        cores=node.cores,
        memory=node.memory,
        sources=dict(node.sources),
        warnings=warnings,
    )
