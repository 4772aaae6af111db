"""Executor plugins: the built-in modes are plugins found through their entry points, a plugin
defined outside the package works through the registry and passes the conformance checks, and
every built-in plugin (and the simulation's transport) passes them too."""

from __future__ import annotations

import pytest

from conftest import quiet, reference
from qcmb_hpc import ParallelConfig, ParallelExecutionPlugin, ParallelManyBodyComputer, register_plugin
from qcmb_hpc.plugins import ENTRY_POINT_GROUP, available_plugins, get_plugin, unregister_plugin
from qcmb_hpc.testing import conformance
from qcmb_hpc.testing.inputs import many_body_input, water_cluster
from test_parity import assert_full_parity

import threads_plugin  # tests/threads_plugin.py: a plugin defined outside the package


def test_builtin_modes_are_plugins_found_by_entry_point():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert {"sequential", "multiprocessing", "mpi"} <= names
    for name in ("sequential", "multiprocessing", "mpi"):
        plugin = get_plugin(name)
        assert isinstance(plugin, ParallelExecutionPlugin) and plugin.name == name


@pytest.fixture
def threads():
    plugin = register_plugin(threads_plugin.ThreadsPlugin)
    yield plugin
    unregister_plugin(plugin.name)


def test_a_plugin_from_outside_runs_a_mode(threads):
    """``mode="threads"`` (and ``QCMB_PARALLEL_MODE=threads``) is accepted once the plugin is known."""
    assert "threads" in available_plugins()
    inp = many_body_input(water_cluster(3), bsse_type=["cp", "nocp"], driver="gradient")
    comp = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="threads", max_workers=2))
    res = comp.compute()
    assert_full_parity(reference(inp), res)
    assert comp.run_info["mode"] == "threads" and comp.run_info["workers"] == 2
    assert ParallelConfig(mode="threads").mode == "threads"


def test_unknown_mode_lists_the_plugins():
    with pytest.raises(ValueError, match="ParallelConfig.mode: invalid value 'warp'.*sequential.*multiprocessing.*mpi"):
        ParallelConfig(mode="warp")


def test_registry_refuses_a_second_plugin_of_the_same_name(threads):
    class Other(ParallelExecutionPlugin):
        name = "threads"

    with pytest.raises(ValueError, match="already registered"):
        register_plugin(Other())
    with pytest.raises(ValueError, match="built-in"):
        unregister_plugin("sequential")
    with pytest.raises(TypeError, match="not a ParallelExecutionPlugin"):
        register_plugin(object())


def test_conformance_of_the_outside_plugin(threads, tmp_path):
    conformance.check_plugin("threads", tmp_path)


@pytest.mark.parametrize("name", ["sequential", "multiprocessing"])
def test_conformance_of_builtin_plugins(name, tmp_path):
    """(``mpi`` runs the same checks under mpiexec: tests/mpi/test_ranks_conformance.py.)"""
    conformance.check_plugin(name, tmp_path)


def test_conformance_of_the_simulation_transport():
    """The simulation's modelled workers keep the transport contract (on its fake clock)."""
    from qcmb_hpc.simulate import SimClock, SimTask, SimTransport

    clock = SimClock()
    costs = [1.0 + (i % 7) for i in range(60)]
    endpoint = SimTransport(costs, 4, clock, latency=1e-4)
    out = conformance.check_endpoint(endpoint, [SimTask(i, c) for i, c in enumerate(costs)], clock=clock)
    assert out.makespan >= max(costs)


def test_conformance_catches_a_broken_pool(tmp_path):
    """The checks fail for a pool whose transport changes a number (so they can fail)."""

    class Corrupting(threads_plugin.ThreadsPlugin):
        name = "corrupting"

        def create_executor(self, config):
            pool = super().create_executor(config)
            real_start = pool.start

            def start(spec, layout):
                endpoint = real_start(spec, layout)
                real_recv = endpoint.recv

                def recv(timeout):
                    msgs = real_recv(timeout)
                    for _, m in msgs:
                        if m[0] == "RESULTS":
                            for out in m[1]:
                                if out.ok and out.id == 0:
                                    out.properties["energy"] += 1e-9
                    return msgs

                endpoint.recv = recv
                return endpoint

            pool.start = start
            return pool

    register_plugin(Corrupting())
    try:
        with pytest.raises(AssertionError, match="corrupting"):
            conformance.check_parity("corrupting")
    finally:
        unregister_plugin("corrupting")


def test_the_readme_shows_the_tested_example_plugin():
    import os

    from conftest import REPO

    readme = open(os.path.join(REPO, "README.md")).read()
    assert open(threads_plugin.__file__).read() in readme, "the README's example plugin is not tests/threads_plugin.py"
