"""The cold-start benchmark's breakdown (``benchmarks/bench_coldstart.py``): built from a real
command's run report and a real pool script's timestamps, every phase is there and none is
negative — a report whose phases overlap, miss the assembly or start after the first fragment
would give a negative one."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import cli_env, run_cli
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import bench_coldstart  # noqa: E402

WORKERS = 2


@pytest.fixture(scope="module")
def sleep_input(tmp_path_factory):
    inp = many_body_input(
        water_cluster(3), program="qcmb_sleep", method="hf", basis="sto-3g", bsse_type=["nocp"], max_nbody=2,
        keywords={"sleep": {"base": 0.002, "exponent": 1.0, "noise": 0.0, "seed": 1}},
    )
    path = tmp_path_factory.mktemp("coldstart") / "w3.json"
    path.write_text(inp.model_dump_json())
    return path


def assert_phases(b):
    assert set(bench_coldstart.PHASES) <= set(b)
    for name in bench_coldstart.PHASES:
        assert b[name] >= 0.0, (name, b)
    assert b["planning"] > 0 and b["assembly"] > 0 and b["run"] > 0
    assert sum(b[p] for p in bench_coldstart.PHASES) == pytest.approx(b["wall"], abs=1e-6)
    assert b["to_first_fragment"] == pytest.approx(b["imports"] + b["planning"] + b["worker_start"], abs=1e-6)
    assert b["lower_bound"] > 0 and b["run_over_lb"] >= 1.0 - 1e-3  # (workers busy at most from first to last)


def test_qcmb_hpc_command_breakdown(sleep_input):
    cwd = sleep_input.parent
    launch = time.time()
    proc = run_cli([str(sleep_input), "--mode", "multiprocessing", "--workers", str(WORKERS), "--import",
                    "qcmb_hpc.testing.engines", "--fresh", "--no-progress"], cwd=cwd)
    end = time.time()
    assert proc.returncode == 0, proc.stderr
    report = json.loads((cwd / "w3.report.json").read_text())
    b = bench_coldstart.qcmb_breakdown(launch, end, report, WORKERS)
    assert_phases(b)


def test_pool_script_breakdown(sleep_input, tmp_path):
    out = tmp_path / "pool.json"
    launch = time.time()
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "bench_coldstart.py"), "--pool", "process", "--workers", str(WORKERS),
         "--input", str(sleep_input), "--out", str(out)],
        cwd=tmp_path, env=cli_env(PYTHONPATH=os.pathsep.join([BENCH, os.path.dirname(BENCH)])),
        capture_output=True, text=True, timeout=240,
    )
    end = time.time()
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert set(data["marks"]) == {"started", "imported", "planned", "pool_closed", "assembled"}
    b = bench_coldstart.pool_breakdown(launch, end, data, WORKERS)
    assert_phases(b)
