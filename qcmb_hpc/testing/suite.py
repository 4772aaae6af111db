"""Test utilities of the design document: :class:`ParallelTestSuite` (compare a parallel result
with the sequential one, whole; time a system against sequential QCManyBody and the lower bound)
and its :class:`BenchmarkResult`. The project's own tests and benchmarks use them, so "the same
result" means one thing everywhere.

The comparison walks the two results' model dumps recursively — properties, ``return_result``,
``cluster_properties``, cluster/component results (every ``AtomicResult`` field by field), the
molecule, ``input_data``, ``stdout``, ``success``, provenance, ``extras`` — numbers and arrays to a
tolerance (or bit for bit), everything else exactly. Only measured times
(``provenance.wall_time``, :data:`VOLATILE`) are passed over. Works for v2 and v1 results, and for
dumps read back from JSON (``flat_arrays``: JSON flattens arrays, so only their sizes are compared).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

__all__ = ["ParallelTestSuite", "BenchmarkResult", "result_differences", "VOLATILE"]

#: fields that are measurements of a run, not results: key → the key of the dict holding it
VOLATILE = {"wall_time": "provenance"}


def _dump(x: Any) -> Any:
    if isinstance(x, dict):
        return dict(x)
    if hasattr(x, "model_dump"):
        return x.model_dump()
    return x.dict()  # pydantic v1 (schema v1 results)


def _as_float_array(v: Any) -> Optional[np.ndarray]:
    """``v`` as a float array, or None when it is not a (rectangular, numeric) array."""
    if not isinstance(v, (list, tuple, np.ndarray)) or len(v) == 0:
        return None
    try:
        return np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        return None


def _walk(x: Any, y: Any, path: str, atol: float, exact: bool, flat: bool) -> Iterator[str]:
    """Every difference between ``x`` and ``y`` below ``path``, as a sentence naming where."""
    if isinstance(x, dict):
        if not isinstance(y, dict):
            yield f"{path}: {type(x).__name__} vs {type(y).__name__}"
            return
        if set(x) != set(y):
            yield f"{path}: keys differ: {sorted(map(str, set(x) ^ set(y)))}"
        for k in x:
            if k not in y or (k in VOLATILE and path.endswith(f"[{VOLATILE[k]!r}]")):
                continue  # (a measured time is not a result)
            yield from _walk(x[k], y[k], f"{path}[{k!r}]", atol, exact, flat)
        return
    if x is None or y is None or isinstance(x, (str, bool)) or isinstance(y, (str, bool)):
        if x != y:
            yield f"{path}: {x!r} vs {y!r}"
        return
    if isinstance(x, (int, float, np.number)):
        if not isinstance(y, (int, float, np.number)):
            yield f"{path}: {x!r} vs {y!r}"
            return
        yield from _close(x, y, path, atol, exact, flat)
        return
    if isinstance(x, (list, tuple, np.ndarray)):
        ax, ay = _as_float_array(x), _as_float_array(y)
        if ax is not None or ay is not None:
            if ax is None or ay is None:
                yield f"{path}: {x!r} vs {y!r}"
            else:
                yield from _close(ax, ay, path, atol, exact, flat)
            return
        if not isinstance(y, (list, tuple, np.ndarray)) or len(x) != len(y):
            yield f"{path}: {x!r} vs {y!r}"
            return
        for i, (xi, yi) in enumerate(zip(x, y)):
            yield from _walk(xi, yi, f"{path}[{i}]", atol, exact, flat)
        return
    if hasattr(x, "model_dump") or hasattr(x, "dict"):
        yield from _walk(_dump(x), _dump(y), path, atol, exact, flat)
        return
    if x != y:
        yield f"{path}: {x!r} vs {y!r}"


def _close(x: Any, y: Any, path: str, atol: float, exact: bool, flat: bool) -> Iterator[str]:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x == y:
        return  # (equal numbers, the common case: no array needed)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape == y.shape and np.array_equal(x, y, equal_nan=True):
        return
    if flat:
        if x.size != y.size:
            yield f"{path}: size {x.size} vs {y.size}"
            return
        x, y = x.ravel(), y.ravel()
    elif x.shape != y.shape:
        yield f"{path}: shape {x.shape} vs {y.shape}"
        return
    if x.size == 0:
        return
    diff = float(np.nanmax(np.abs(x - y))) if np.isfinite(x).any() or np.isfinite(y).any() else 0.0
    if not np.allclose(x, y, atol=atol, rtol=0.0, equal_nan=True):
        yield f"{path} differs by {diff:.3g} (> {atol})"
    elif exact and not np.array_equal(x, y, equal_nan=True):
        yield f"{path} differs in the last bits ({diff:.3g})"


def result_differences(
    parallel: Any, sequential: Any, tolerance: float = 1e-10, exact: bool = False, flat_arrays: bool = False
) -> List[str]:
    """Every difference between two results (models or dumps), each naming its place."""
    return list(_walk(_dump(sequential), _dump(parallel), "result", tolerance, exact, flat_arrays))


def max_difference(parallel: Any, sequential: Any) -> float:
    """The largest absolute difference of the numbers of two results: ``return_result`` and every
    property (numbers, arrays, and the values of dict-valued properties)."""
    a, b = _dump(sequential), _dump(parallel)
    worst = 0.0
    for x, y in _number_pairs({"r": a.get("return_result"), "p": a.get("properties")},
                              {"r": b.get("return_result"), "p": b.get("properties")}):
        if x.size == y.size and x.size:
            worst = max(worst, float(np.nanmax(np.abs(x.ravel() - y.ravel()))))
    return worst


def _number_pairs(x: Any, y: Any) -> Iterator[tuple]:
    """The numeric leaves of two like-shaped dumps, as pairs of float arrays."""
    if isinstance(x, dict) and isinstance(y, dict):
        for k in x:
            if k in y:
                yield from _number_pairs(x[k], y[k])
        return
    ax = _as_float_array(x if isinstance(x, (list, tuple, np.ndarray)) else [x]) if not isinstance(x, (str, bool)) and x is not None else None
    ay = _as_float_array(y if isinstance(y, (list, tuple, np.ndarray)) else [y]) if not isinstance(y, (str, bool)) and y is not None else None
    if ax is not None and ay is not None:
        yield ax, ay


@dataclass
class BenchmarkResult:
    """One system timed in parallel beside sequential QCManyBody (:meth:`ParallelTestSuite.benchmark_performance`)."""

    fragments: int
    workers: int
    mode: str
    sequential_seconds: float  #: ``qcmanybody.v2.ManyBodyComputer.from_manybodyinput``, whole call
    parallel_seconds: float  #: ``ParallelManyBodyComputer(...).compute()``, whole call
    speedup: float
    lower_bound_seconds: float  #: max(fragment seconds / workers, longest fragment), of the parallel run
    efficiency: Optional[float]  #: lower bound / makespan of the parallel run
    identical: bool  #: every field equal to the tolerance
    max_difference: float  #: largest difference of return_result and properties
    estimate_rank_correlation: Optional[float]
    load_average: List[float] = field(default_factory=list)  #: 1-minute load average before, after
    report: Dict[str, Any] = field(default_factory=dict, repr=False)  #: the parallel run's report

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class ParallelTestSuite:
    """Utilities for testing parallel execution (the design document's names)."""

    def __init__(self, tolerance: float = 1e-10, exact: bool = False):
        self.tolerance = tolerance
        self.exact = exact

    def differences(self, parallel_result: Any, sequential_result: Any, tolerance: Optional[float] = None,
                    flat_arrays: bool = False) -> List[str]:
        """Every place where the two results differ (empty: identical)."""
        tol = self.tolerance if tolerance is None else tolerance
        return result_differences(parallel_result, sequential_result, tol, self.exact, flat_arrays)

    def number_differences(self, parallel_result: Any, sequential_result: Any, tolerance: Optional[float] = None,
                           flat_arrays: bool = False) -> List[str]:
        """Differences of the numbers only — properties, ``return_result``, ``stdout`` — for two
        results whose inputs differ in what does not change them (e.g. a fault injector's
        settings, against its fault-free run)."""

        def numbers(r: Any) -> Dict[str, Any]:
            d = _dump(r)
            return {k: d.get(k) for k in ("properties", "return_result", "stdout")}

        return self.differences(numbers(parallel_result), numbers(sequential_result), tolerance, flat_arrays)

    def validate_parallel_results(self, parallel_result: Any, sequential_result: Any, tolerance: float = 1e-10) -> bool:
        """Whether the parallel result is the sequential one: every field, numbers to ``tolerance``."""
        found = _walk(_dump(sequential_result), _dump(parallel_result), "result", tolerance, self.exact, False)
        return next(found, None) is None  # (the first difference settles it)

    def assert_parallel_results(self, parallel_result: Any, sequential_result: Any, tolerance: Optional[float] = None,
                                flat_arrays: bool = False) -> None:
        """``AssertionError`` naming the first differences, if there are any."""
        found = self.differences(parallel_result, sequential_result, tolerance, flat_arrays)
        if found:
            more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
            raise AssertionError("; ".join(found[:5]) + more)

    def benchmark_performance(self, system: Any, parallel_config: Any, sequential: Any = None) -> BenchmarkResult:
        """Time ``system`` (a ManyBodyInput, model or dict) with ``parallel_config`` against
        sequential QCManyBody in this process (``sequential``: a result computed before, to skip
        that run; its time is then 0). Engines must be registered in this process."""
        from ..computer import ParallelManyBodyComputer
        from ..plan import UPSTREAM_COMPUTER

        load = [os.getloadavg()[0]]
        t_seq = 0.0
        if sequential is None:
            t0 = time.perf_counter()
            sequential = UPSTREAM_COMPUTER.from_manybodyinput(system)
            t_seq = time.perf_counter() - t0
        comp = ParallelManyBodyComputer(system, parallel_config=parallel_config)
        t0 = time.perf_counter()
        result = comp.compute()
        t_par = time.perf_counter() - t0
        load.append(os.getloadavg()[0])
        rep = dict(comp.run_info or {})
        return BenchmarkResult(
            fragments=int(rep.get("fragments", 0)),
            workers=int(rep.get("workers", 0)),
            mode=str(rep.get("mode", "")),
            sequential_seconds=t_seq,
            parallel_seconds=t_par,
            speedup=(t_seq / t_par) if t_par > 0 and t_seq > 0 else 0.0,
            lower_bound_seconds=float(rep.get("lower_bound_seconds") or 0.0),
            efficiency=rep.get("efficiency"),
            identical=self.validate_parallel_results(result, sequential, self.tolerance),
            max_difference=max_difference(result, sequential),
            estimate_rank_correlation=rep.get("estimate_rank_correlation"),
            load_average=load,
            report=rep,
        )
