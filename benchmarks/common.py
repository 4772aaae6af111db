"""Shared pieces of the benchmarks: launching MPI children under a hard timeout, result files, tables.

Every benchmark is a script that, run plainly, launches itself under the MPICH wheel's ``mpiexec``
(the one next to this Python; never ``/usr/bin/mpiexec``, which is Open MPI's) with ``--child``,
under ``timeout``, and then prints the table from the JSON file the child wrote to
``benchmarks/results/``. Run from the repository root (``make bench`` does).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
#: where results go: benchmarks/results/, or ``QCMB_BENCH_RESULTS`` (smoke runs that must not replace them)
RESULTS = os.environ.get("QCMB_BENCH_RESULTS") or os.path.join(HERE, "results")

if REPO not in sys.path:
    sys.path.insert(0, REPO)


def mpiexec() -> str:
    """The launcher that belongs to the MPI mpi4py was built against: the MPICH wheel's, beside
    this interpreter (``QCMB_BENCH_MPIEXEC`` overrides)."""
    env = os.environ.get("QCMB_BENCH_MPIEXEC")
    if env:
        return env
    cand = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(cand):
        return cand
    raise SystemExit(
        f"no mpiexec next to {sys.executable}: install the `mpich` wheel in this environment "
        "(do not use /usr/bin/mpiexec: it is Open MPI's and gives N one-rank worlds)"
    )


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, HERE] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


def launch(script: str, ranks: int, args: Sequence[str], timeout: float) -> None:
    """``timeout`` ``mpiexec -n ranks python script --child args``; raise if it fails or times out."""
    cmd = [
        "timeout",
        "-k",
        "10",
        str(int(timeout)),
        mpiexec(),
        "-n",
        str(ranks),
        sys.executable,
        script,
        "--child",
        *args,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(), cwd=REPO)
    if proc.returncode != 0:
        what = "timed out" if proc.returncode in (124, 137) else f"failed with code {proc.returncode}"
        raise SystemExit(f"{os.path.basename(script)} with {ranks} ranks {what} after {time.perf_counter() - t0:.0f} s")


def check_world(expected: int) -> Any:
    """COMM_WORLD, after checking it has the size the launcher was asked for (a mismatched
    launcher gives one-rank worlds)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_size() != expected:
        sys.stderr.write(f"expected a world of {expected} ranks, got {comm.Get_size()}: wrong mpiexec?\n")
        comm.Abort(2)
    return comm


def abort_on_error(comm: Any, fn: Any, *args: Any, **kw: Any) -> Any:
    """Run ``fn``; on any exception print the rank and the error and ``Abort`` (never hang)."""
    try:
        return fn(*args, **kw)
    except BaseException as exc:  # pragma: no cover
        import traceback

        sys.stderr.write(f"rank {comm.Get_rank()}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}\n")
        sys.stderr.flush()
        comm.Abort(1)
        raise


def machine() -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "host": platform.node(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def result_path(name: str) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    return os.path.join(RESULTS, f"{name}.json")


def write_json(name: str, data: Dict[str, Any]) -> str:
    path = result_path(name)
    data = {"benchmark": name, "machine": machine(), **data}
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, default=_default)
    os.replace(tmp, path)
    return path


def read_json(name: str) -> Dict[str, Any]:
    with open(result_path(name)) as fh:
        return json.load(fh)


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "value"):
        return o.value
    return str(o)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: Optional[str] = None) -> str:
    """A plain-text table (also valid Markdown)."""

    def fmt(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            if v != v:
                return "nan"
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(title)
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        lines.append("| " + " | ".join(v.rjust(w) for v, w in zip(c, widths)) + " |")
    return "\n".join(lines)


def water(n: int, spacing: float = 2.9, seed: int = 7) -> Any:
    """The molecule of ``qcmb_hpc.testing.inputs.water_cluster(n)`` — same atoms, geometry and
    fragments — with every fragment's charge (0) and multiplicity (1) given: without them
    qcelemental's charge/multiplicity validation explores fragment combinations (2 s at 20 waters,
    96 s and 8 GB at 25)."""
    from qcelemental.models.v2 import Molecule

    import math

    import numpy as np

    from qcmb_hpc.testing import inputs

    rng = np.random.default_rng(seed)
    side = max(1, math.ceil(n ** (1 / 3)))
    sites = [(i, j, k) for k in range(side) for j in range(side) for i in range(side)][:n]
    geom = []
    for i, j, k in sites:
        rot = inputs._rotation(*rng.uniform(0, 2 * math.pi, size=3))
        geom.append(inputs._WATER @ rot.T + spacing * np.array([i, j, k], dtype=float))
    return Molecule(
        symbols=["O", "H", "H"] * n,
        geometry=np.concatenate(geom) / 0.52917721067,
        fragments=[[3 * f, 3 * f + 1, 3 * f + 2] for f in range(n)],
        molecular_charge=0,
        molecular_multiplicity=1,
        fragment_charges=[0] * n,
        fragment_multiplicities=[1] * n,
        fix_com=True,
        fix_orientation=True,
    )


def max_difference(ref: Any, res: Any) -> float:
    """The largest absolute difference between two ManyBodyResults' numbers (return_result and
    every property): :func:`qcmb_hpc.testing.suite.max_difference`."""
    from qcmb_hpc.testing.suite import max_difference as difference

    return difference(res, ref)


def print_targets(d: Dict[str, Any]) -> None:
    for k, v in d["targets"].items():
        print(f"target {k}: {verdict(v)}")


def have(program: str) -> bool:
    return shutil.which(program) is not None


def verdict(ok: Optional[bool]) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def parse_ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def capture_coordinator_runs() -> Dict[str, Any]:
    """From now on, keep the last coordinator run's start (epoch seconds, ``"t0"``), outcome
    (``"out"``), its attempt timings (``"timings"``: a copy, since assembly consumes the
    outcome's), how many fragments it finished (``"done"``: assembly consumes their properties
    too) and task estimates (``"costs"``) in the returned dict (this process's runs)."""
    import qcmb_hpc.coordinator as coordinator_mod

    captured: Dict[str, Any] = {}
    real_run = coordinator_mod.Coordinator.run

    def run(self):
        captured["t0"] = time.time()
        out = real_run(self)
        captured["out"] = out
        captured["timings"] = list(out.timings)
        captured["done"] = len(out.properties)
        captured["costs"] = {tid: t.cost for tid, t in self.tasks.items()}
        return out

    coordinator_mod.Coordinator.run = run
    return captured
