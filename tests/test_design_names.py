"""Every building block the design document names is importable from ``qcmb_hpc`` itself,
documented, and does what the document says (tested here through that import)."""

from __future__ import annotations

import numpy as np
import pytest

import qcmb_hpc
from conftest import quiet, reference
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

NAMES = [
    "ParallelManyBodyComputer", "ParallelConfig", "ParallelMode", "LoadBalanceStrategy", "ProgressReporter",
    "ConsoleProgressReporter", "FileProgressReporter", "ParallelExecutionPlugin", "WorkerPool", "ResourceManager",
    "TaskDistributor", "FragmentExecutor", "QCEngineAdapter", "ParallelTestSuite", "BenchmarkResult", "MLLoadBalancer",
    "ParallelExecutionError", "FragmentExecutionError",
]


@pytest.mark.parametrize("name", NAMES)
def test_importable_and_documented(name):
    obj = getattr(qcmb_hpc, name)
    assert name in qcmb_hpc.__all__ and (obj.__doc__ or "").strip(), name


def test_resource_manager_worker_count():
    from qcmb_hpc.resources import NodeResources

    node = NodeResources(cores=8, memory=64 << 30)
    assert qcmb_hpc.ResourceManager(qcmb_hpc.ParallelConfig(), node=node).get_optimal_worker_count() == 8
    assert qcmb_hpc.ResourceManager(qcmb_hpc.ParallelConfig(max_workers=3), node=node).get_optimal_worker_count() == 3
    # memory_limit_per_worker lowers the count to what the memory holds (with the safety margin)
    limited = qcmb_hpc.ResourceManager(qcmb_hpc.ParallelConfig(memory_limit_per_worker="16GiB"), node=node)
    assert limited.get_optimal_worker_count() == 3
    assert qcmb_hpc.ResourceManager(qcmb_hpc.ParallelConfig(), node=node).get_optimal_worker_count(tasks=2) == 2


def test_task_distributor_distribute_level():
    from qcmb_hpc.plan import make_plan

    plan = make_plan(many_body_input(water_cluster(4), bsse_type=["cp"]))
    for i, t in enumerate(plan.tasks):
        t.cost = 1.0 + (i % 5)
    for strategy in ("static", "dynamic", "work_stealing", "adaptive"):
        parts = qcmb_hpc.TaskDistributor(strategy).distribute_level(plan.tasks, 3)
        assert len(parts) == 3 and sorted(t.id for p in parts for t in p) == [t.id for t in plan.tasks]
        loads = [sum(t.cost for t in p) for p in parts]
        assert max(loads) - min(loads) <= max(t.cost for t in plan.tasks)  # LPT's balance
        assert all(p == sorted(p, key=lambda t: -t.cost) for p in parts)  # each largest first


def _spec_and_plan(**kw):
    from qcmb_hpc.plan import RunSpec, make_plan

    plan = make_plan(many_body_input(water_cluster(3), **kw))
    return RunSpec(molecule=plan.core.molecule, specifications=plan.specifications), plan


def test_qcengine_adapter_execute_fragment():
    from qcmb_hpc.plan import build_atomic_input

    spec, plan = _spec_and_plan(bsse_type=["cp"], driver="gradient")
    program, atomic_input = build_atomic_input(spec, plan.tasks[-1].label)
    result = qcmb_hpc.QCEngineAdapter(program, qcmb_hpc.ParallelConfig()).execute_fragment(atomic_input)
    assert result.success and result.return_result.shape == (len(atomic_input.molecule.symbols), 3)
    bad_spec, bad_plan = _spec_and_plan(method="bad", bsse_type=["cp"])
    _, bad_input = build_atomic_input(bad_spec, bad_plan.tasks[0].label)
    failed = qcmb_hpc.QCEngineAdapter("qcmb_test", {"ncores": 1}).execute_fragment(bad_input)
    assert not failed.success and failed.error.error_type == "input_error"  # a failed answer, not an exception


def test_fragment_executor_with_the_one_retry_policy(tmp_path):
    """One attempt by default (the coordinator decides about retries in a run); ``max_retries``
    retries in place, by the same policy (an input error is never retried)."""
    faults = tmp_path / "f"
    faults.mkdir()
    spec, plan = _spec_and_plan(program="qcmb_fault", bsse_type=["cp"],
                                keywords={"fault_dir": str(faults), "p": 1.0, "kinds": ["fail"], "faulty_attempts": 2})
    task = plan.tasks[0]
    assert not qcmb_hpc.FragmentExecutor(spec, {"ncores": 1}).execute_fragment(task).ok  # attempt 1 fails
    out = qcmb_hpc.FragmentExecutor(spec, {"ncores": 1}, max_retries=1).execute_fragment(task)  # 2 fails, 3 succeeds
    assert out.ok and out.properties["energy"] < 0 and len(list(faults.iterdir())) == 3
    bad_spec, bad_plan = _spec_and_plan(method="bad", bsse_type=["cp"])
    out = qcmb_hpc.FragmentExecutor(bad_spec, {"ncores": 1}, max_retries=5).execute_fragment(bad_plan.tasks[0])
    assert not out.ok and out.error_type == "input_error" and not out.retryable


def _numeric_leaves(d, path=()):
    """Paths of every number in a model dump (array elements included)."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _numeric_leaves(v, path + (k,))
    elif isinstance(d, (list, tuple)) and d and not isinstance(d[0], str):
        for i, v in enumerate(d):
            yield from _numeric_leaves(v, path + (i,))
    elif isinstance(d, np.ndarray) and d.dtype.kind == "f":
        for i in range(d.size):
            yield path + (("flat", i),)
    elif isinstance(d, float):
        yield path


def _perturbed(d, path, by):
    """Put a changed copy of the number at ``path`` into ``d``; returns how to put it back (arrays
    of a dump may be the model's own, shared with the other result: never changed in place)."""
    *head, last = path
    for k in head[:-1] if isinstance(last, tuple) else head:
        d = d[k]
    if isinstance(last, tuple):  # an element of an array
        key = head[-1]
        original = d[key]
        changed = np.array(original, dtype=float, copy=True)
        changed.ravel()[last[1]] += by
        d[key] = changed
    else:
        key, original = last, d[last]
        d[key] = original + by

    def restore():
        d[key] = original

    return restore


def test_parallel_test_suite_catches_any_single_perturbed_number():
    inp = many_body_input(water_cluster(3), bsse_type=["cp", "nocp"], driver="gradient", return_total_data=True,
                          protocols={"cluster_results": "all"})
    ref = reference(inp)
    res = qcmb_hpc.ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing", max_workers=2)).compute()
    suite = qcmb_hpc.ParallelTestSuite()
    assert suite.validate_parallel_results(res, ref, tolerance=1e-10)
    dump = res.model_dump()
    paths = [p for p in _numeric_leaves(dump) if "wall_time" not in p]
    assert len(paths) > 200
    ref_dump = ref.model_dump()  # (once: dumping a result with every AtomicResult is the slow part)
    for path in paths:
        restore = _perturbed(dump, path, 1e-8)
        assert not suite.validate_parallel_results(dump, ref_dump, tolerance=1e-10), path
        restore()
    assert suite.validate_parallel_results(dump, ref_dump, tolerance=1e-10)


def test_benchmark_performance():
    inp = many_body_input(water_cluster(3), bsse_type=["cp"])
    bench = qcmb_hpc.ParallelTestSuite().benchmark_performance(inp, quiet(mode="multiprocessing", max_workers=2))
    assert isinstance(bench, qcmb_hpc.BenchmarkResult)
    assert bench.identical and bench.max_difference == 0.0 and bench.workers == 2 and bench.mode == "multiprocessing"
    assert bench.fragments == reference(inp).properties.calcinfo_nmbe
    assert bench.sequential_seconds > 0 and bench.parallel_seconds > 0 and bench.lower_bound_seconds > 0
    assert set(bench.to_dict()) >= {"speedup", "efficiency", "load_average"}


def test_ml_load_balancer():
    from qcmb_hpc.plan import make_plan

    inp = many_body_input(water_cluster(4), bsse_type=["nocp"], method="mp2", basis="cc-pvdz")
    balancer = qcmb_hpc.MLLoadBalancer.for_input(inp)
    tasks = make_plan(inp).tasks
    costs = [balancer.predict_fragment_cost(t) for t in tasks]
    by_size = sorted(zip([t.natoms_real + t.natoms_ghost for t in tasks], costs))
    assert all(c > 0 for c in costs) and by_size[0][1] < by_size[-1][1]  # bigger fragments cost more
    dist = balancer.optimize_distribution(tasks, 3)
    assert sorted(dist) == [0, 1, 2] and sorted(t.id for ts in dist.values() for t in ts) == [t.id for t in tasks]


def test_worker_pool_from_a_plugin_is_a_context_manager():
    from qcmb_hpc.plugins import get_plugin

    pool = get_plugin("multiprocessing").create_executor(qcmb_hpc.ParallelConfig())
    assert isinstance(pool, qcmb_hpc.WorkerPool)
    with pool as entered:
        assert entered is pool and pool.coordinates
    assert pool.endpoint is None
