"""Conformance checks for an executor plugin (:class:`~qcmb_hpc.plugins.ParallelExecutionPlugin`):
what the run driver needs of any way of running fragments. A plugin author runs them in pytest::

    from qcmb_hpc.testing import conformance

    def test_my_plugin(tmp_path):
        conformance.check_plugin("my-mode", tmp_path)      # or the plugin object itself

Each check raises ``AssertionError`` saying what is wrong. They use the deterministic test engines
(:mod:`qcmb_hpc.testing.engines`, imported in every worker through ``imports``):

* :func:`check_pool` — the pool is a :class:`~qcmb_hpc.pool.WorkerPool`, its endpoint a
  :class:`~qcmb_hpc.transport.CoordinatorEndpoint`, and :func:`check_endpoint` holds for it: every
  worker says READY, every task comes back exactly once, steals of started work are refused, STOP
  gets a BYE from every worker;
* :func:`check_parity` — results equal to ``qcmanybody.v2.ManyBodyComputer``'s, every field;
* :func:`check_failing_fragment` — a fragment that always fails is retried, then reported (label,
  program, attempts, the engine's words), and every other fragment is finished and journaled;
* :func:`check_dying_fragment` — a fragment that kills the process running it (a segfault, the
  OOM killer) costs an attempt, and the run still ends with the exact result;
* :func:`check_lost_worker` — only for pools that say ``survives_worker_loss``: a worker process
  that dies leaves the others (or the sequential fallback) to finish, with the exact result;
* :func:`check_stop_signal` — SIGTERM during the run stops it (``IncompleteRunError``), the journal
  holds what finished, and the same run resumes to the exact result.

:func:`check_endpoint` also takes a bare endpoint (the simulation's
:class:`~qcmb_hpc.simulate.SimTransport`, a fake clock) with the tasks it models.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from .. import transport as T
from .engines import fragment_key
from .inputs import many_body_input, water_cluster
from .suite import ParallelTestSuite

__all__ = [
    "check_plugin",
    "check_pool",
    "check_endpoint",
    "check_parity",
    "check_failing_fragment",
    "check_dying_fragment",
    "check_lost_worker",
    "check_stop_signal",
]

ENGINES = "qcmb_hpc.testing.engines"


def _plugin(plugin: Any) -> Any:
    from ..plugins import ParallelExecutionPlugin, get_plugin

    if isinstance(plugin, str):
        return get_plugin(plugin)
    assert isinstance(plugin, ParallelExecutionPlugin), f"{plugin!r} is not a ParallelExecutionPlugin"
    return plugin


def _config(plugin: Any, **kw: Any) -> Any:
    from ..config import ParallelConfig

    values = {"mode": plugin.name, "imports": [ENGINES], "progress_reporting": False, "max_workers": 2, **kw}
    return ParallelConfig(**values)


def _reference(inp: Any) -> Any:
    from ..plan import UPSTREAM_COMPUTER

    return UPSTREAM_COMPUTER.from_manybodyinput(inp)


def _compute(inp: Any, config: Any, **kw: Any) -> Any:
    from ..computer import ParallelManyBodyComputer

    comp = ParallelManyBodyComputer(inp, parallel_config=config, **kw)
    return comp.compute(), comp


def check_plugin(plugin: Union[str, Any], tmp_path: Any, workers: int = 2) -> None:
    """Every check below, on ``plugin`` (a name or the plugin), using ``tmp_path`` (a directory)."""
    plugin = _plugin(plugin)
    check_pool(plugin, workers=workers)
    check_parity(plugin, workers=workers)
    check_failing_fragment(plugin, tmp_path, workers=workers)
    check_dying_fragment(plugin, tmp_path, workers=workers)
    if plugin.create_executor(_config(plugin)).survives_worker_loss:
        check_lost_worker(plugin, tmp_path, workers=workers)
    check_stop_signal(plugin, tmp_path, workers=workers)


# ------------------------------------------------------------------------------------------------
# the transport contract
# ------------------------------------------------------------------------------------------------


def check_endpoint(endpoint: Any, tasks: Sequence[Any], spec: Any = None, clock: Optional[Callable[[], float]] = None) -> Any:
    """Drive the real coordinator over ``endpoint`` with ``tasks``; every task comes back exactly
    once, every worker said READY before work and BYE after STOP. Returns the outcome."""
    import time

    from ..coordinator import Coordinator

    assert isinstance(endpoint, T.CoordinatorEndpoint), f"{type(endpoint).__name__} does not have the CoordinatorEndpoint calls"
    assert endpoint.workers == list(range(len(endpoint.workers))) and endpoint.workers, f"workers must be 0..n-1: {endpoint.workers}"
    coord = Coordinator(tasks, endpoint, spec, clock=clock or time.perf_counter, retry_failed=False)
    out = coord.run()
    ids = sorted(t.id for t in tasks)
    assert not out.failures and not out.lost_workers, f"failures {out.failures}, lost {out.lost_workers}"
    assert sorted(out.properties) == ids, "not every task came back"
    attempts: Dict[int, int] = {}
    for tid, *_ in out.timings:
        attempts[tid] = attempts.get(tid, 0) + 1
    twice = {t: n for t, n in attempts.items() if n != 1}
    assert not twice, f"tasks run more than once: {twice}"
    assert set(out.workers) == set(endpoint.workers), f"READY from {sorted(out.workers)}, not every worker"
    assert coord.said_bye >= set(endpoint.workers), f"no BYE from {sorted(set(endpoint.workers) - coord.said_bye)}"
    return out


def check_pool(plugin: Union[str, Any], workers: int = 2) -> None:
    """The plugin's pool starts workers behind an endpoint that keeps the contract, and shuts them
    down on leaving (checked on a small expansion's real fragments)."""
    from ..driver import make_spec
    from ..plan import make_plan
    from ..pool import WorkerPool
    from ..resources import ResourceManager

    plugin = _plugin(plugin)
    config = _config(plugin, max_workers=workers)
    plan = make_plan(many_body_input(water_cluster(3), bsse_type=["cp", "nocp"], driver="gradient"))
    pool = plugin.create_executor(config)
    assert isinstance(pool, WorkerPool), f"{plugin!r}.create_executor gave {type(pool).__name__}, not a WorkerPool"
    with pool:
        if not pool.coordinates:  # an SPMD pool: the other processes serve, as in a run
            pool.serve()
            pool.share()
            return
        layout = pool.layout(ResourceManager(config), len(plan.tasks))
        assert layout.workers >= 1
        endpoint = pool.start(make_spec(plan, config, layout), layout)
        check_endpoint(endpoint, plan.tasks, make_spec(plan, config, layout))
        pool.share(None, None)


# ------------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------------

PARITY_INPUTS = {
    "cp+nocp gradient": dict(bsse_type=["cp", "nocp"], driver="gradient", return_total_data=True),
    "vmfc hessian": dict(bsse_type=["vmfc"], driver="hessian"),
    "multilevel with supersystem": dict(
        bsse_type=["nocp", "cp"], driver="energy", levels={1: "hi", 2: "lo", "supersystem": "ss"},
        specifications={"hi": {"program": "qcmb_test", "method": "mp2", "basis": "cc-pvdz"},
                        "lo": {"program": "qcmb_test", "method": "hf", "basis": "sto-3g"},
                        "ss": {"program": "qcmb_test", "method": "pbe", "basis": "6-31g"}},
    ),
}


def check_parity(plugin: Union[str, Any], workers: int = 2) -> None:
    """Every field of the result equal to QCManyBody's own, bit for bit, for a few inputs."""
    plugin = _plugin(plugin)
    suite = ParallelTestSuite(exact=True)
    for name, kw in PARITY_INPUTS.items():
        inp = many_body_input(water_cluster(3), **kw)
        res, _ = _compute(inp, _config(plugin, max_workers=workers))
        found = suite.differences(res, _reference(inp), tolerance=1e-10)
        assert not found, f"{plugin.name}, {name}: {'; '.join(found[:3])}"


def _faulty(tmp_path: Any, name: str, kinds: List[str], every_attempt: bool, only_one: bool = False, **inp_kw: Any):
    """(input, its plan, fault dir, the fault-free result): qcmb_fault faulting with ``kinds``;
    with ``only_one``, just the middle fragment faults (the others' faulty attempts are used up
    beforehand: the engine counts attempts with files in the fault directory)."""
    from ..plan import RunSpec, build_atomic_input, make_plan

    faults = os.path.join(str(tmp_path), f"faults-{name}")
    os.makedirs(faults, exist_ok=True)
    attempts = 3 if every_attempt else 1  # (the checks allow 1 or 2 retries: "every attempt" is 3)
    kw = {"fault_dir": faults, "p": 1.0, "kinds": kinds, "faulty_attempts": attempts}
    inp = many_body_input(water_cluster(3), program="qcmb_fault", keywords=kw, **{"bsse_type": ["cp"], **inp_kw})
    plan = make_plan(inp)
    if only_one:
        spec = RunSpec(molecule=plan.core.molecule, specifications=plan.specifications)
        for i, t in enumerate(plan.tasks):
            if i != len(plan.tasks) // 2:
                key = fragment_key(build_atomic_input(spec, t.label)[1])
                for n in range(1, attempts + 1):
                    open(os.path.join(faults, f"{key}.{n}"), "w").write("pre")
    clean = {**kw, "p": 0.0, "fault_dir": faults + "-none"}
    os.makedirs(clean["fault_dir"], exist_ok=True)
    reference = _reference(many_body_input(water_cluster(3), program="qcmb_fault", keywords=clean, **{"bsse_type": ["cp"], **inp_kw}))
    return inp, plan, faults, reference


def check_failing_fragment(plugin: Union[str, Any], tmp_path: Any, workers: int = 2) -> None:
    """One fragment fails every attempt: it is retried (``max_retries``), then reported with its
    label, program, each attempt and the engine's own message; every other fragment finished and
    is in the journal."""
    from ..errors import FragmentExecutionError

    plugin = _plugin(plugin)
    inp, plan, _, _ = _faulty(tmp_path, f"{plugin.name}-failing", ["fail"], every_attempt=True, only_one=True)
    bad = plan.tasks[len(plan.tasks) // 2].label
    journal = os.path.join(str(tmp_path), f"{plugin.name}-failing.jsonl")
    try:
        _compute(inp, _config(plugin, max_workers=workers, max_retries=1, checkpoint=journal))
    except FragmentExecutionError as exc:
        assert [f["label"] for f in exc.failures] == [bad], exc.failures
        attempts = exc.failures[0]["attempts"]
        assert len(attempts) == 2 and all("injected failure" in a["error_message"] for a in attempts), attempts
        assert exc.failures[0]["program"] == "qcmb_fault" and exc.completed == len(plan.tasks) - 1
        assert bad in str(exc) and "injected failure" in str(exc)
    else:
        raise AssertionError(f"{plugin.name}: a fragment that always fails did not raise FragmentExecutionError")
    import json

    with open(journal) as fh:
        labels = [json.loads(ln)["label"] for ln in fh.read().splitlines()[1:]]
    assert sorted(labels) == sorted(t.label for t in plan.tasks if t.label != bad), "the journal lacks finished fragments"


def check_dying_fragment(plugin: Union[str, Any], tmp_path: Any, workers: int = 2) -> None:
    """Every fragment's first attempt kills the process it runs in (isolated fragments: the
    worker's child); each costs an attempt, the retries succeed, the result is exact."""
    plugin = _plugin(plugin)
    inp, _, _, reference = _faulty(tmp_path, f"{plugin.name}-dying", ["kill"], every_attempt=False)
    res, comp = _compute(inp, _config(plugin, max_workers=workers, isolate_fragments=True, max_retries=2))
    found = ParallelTestSuite(exact=True).number_differences(res, reference)
    assert not found, f"{plugin.name}: {'; '.join(found[:3])}"
    assert comp.run_info["retried_attempts"] > 0 and comp.run_info["restarts"] > 0, comp.run_info


def check_lost_worker(plugin: Union[str, Any], tmp_path: Any, workers: int = 2) -> None:
    """Fragments run inside the worker processes (no isolation) and kill them: the run goes on
    with the others or sequentially, and ends with the exact result."""
    plugin = _plugin(plugin)
    inp, _, _, reference = _faulty(tmp_path, f"{plugin.name}-lost", ["kill"], every_attempt=False)
    res, comp = _compute(inp, _config(plugin, max_workers=workers, isolate_fragments=False, max_retries=3))
    found = ParallelTestSuite(exact=True).number_differences(res, reference)
    assert not found, f"{plugin.name}: {'; '.join(found[:3])}"
    assert comp.run_info["lost_workers"], comp.run_info


def check_stop_signal(plugin: Union[str, Any], tmp_path: Any, workers: int = 2) -> None:
    """SIGTERM after the first finished fragment: the run stops (``IncompleteRunError``, nothing
    new handed out, running fragments finish), the journal holds what finished, and running the
    same input again resumes to the exact result without recomputing it."""
    from ..errors import IncompleteRunError

    plugin = _plugin(plugin)
    inp = many_body_input(water_cluster(4), program="qcmb_sleep", keywords={"sleep": {"base": 0.02, "exponent": 0.0}},
                          bsse_type=["cp"])
    journal = os.path.join(str(tmp_path), f"{plugin.name}-stopped.jsonl")

    class SignalAtFirst:
        sent = False

        def on_fragment_completed(self, fragment_label: str, success: bool) -> None:
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

    try:
        _compute(inp, _config(plugin, max_workers=workers, checkpoint=journal, grace_period=10.0), progress_reporter=SignalAtFirst())
    except IncompleteRunError as exc:
        assert exc.reason == "SIGTERM" and 0 < exc.completed < exc.total, (exc.completed, exc.total)
        done = exc.completed
    else:
        raise AssertionError(f"{plugin.name}: SIGTERM did not stop the run")
    res, comp = _compute(inp, _config(plugin, max_workers=workers, checkpoint=journal))
    assert comp.run_info["restored"] == done and comp.run_info["computed"] == comp.run_info["fragments"] - done, comp.run_info
    found = ParallelTestSuite(exact=True).differences(res, _reference(inp))
    assert not found, f"{plugin.name}: {'; '.join(found[:3])}"
