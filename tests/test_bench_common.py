"""The benchmarks' own harness (``benchmarks/common.py``): what the scheduling and Parsl tables are
computed from must still be there after ``compute()`` — assembly consumes the run's outcome."""

import os
import sys

from conftest import quiet
from qcmb_hpc import ParallelManyBodyComputer
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import common  # noqa: E402


def test_captured_run_keeps_its_timings(monkeypatch):
    import qcmb_hpc.coordinator as coordinator_mod

    monkeypatch.setattr(coordinator_mod.Coordinator, "run", coordinator_mod.Coordinator.run)  # (restored after)
    captured = common.capture_coordinator_runs()
    inp = many_body_input(water_cluster(3), bsse_type=["nocp"])
    comp = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing", max_workers=2))
    comp.compute()
    n = len(comp.build_plan().tasks)
    assert len(captured["timings"]) == len(captured["costs"]) == captured["done"] == n > 0
    assert {w for _t, w, _s, _sec in captured["timings"]} <= {0, 1}
    assert all(sec >= 0 for *_, sec in captured["timings"]) and captured["out"].makespan > 0
    assert min(start for _t, _w, start, _s in captured["timings"]) >= captured["t0"] - 1.0
