"""The command line keeps a per-user cost history by default: run it twice and the second run
starts from what the first measured; ``--no-cost-history`` and ``--cost-history PATH``; a cache
that cannot be written is one warning line, not a failure."""

import json

import pytest

from conftest import run_cli as run_qcmb_hpc
from qcmb_hpc.cli import build_parser, config_from_args, default_cost_history, with_cost_history
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

KEY = "qcmb_test|hf|energy"


def run_cli(args, cwd, cache, env=None):
    base = ["--import", "qcmb_hpc.testing.engines", "--no-progress", "--mode", "sequential", "--no-checkpoint"]
    return run_qcmb_hpc([*args, *base], cwd, env={"XDG_CACHE_HOME": str(cache), **(env or {})})


@pytest.fixture
def input_file(tmp_path):
    path = tmp_path / "trimer.json"
    path.write_text(many_body_input(water_cluster(3), bsse_type=["cp"]).model_dump_json())
    return path


def computed(path):
    """Fragments computed by the run whose result is ``path`` (from its NAME.report.json)."""
    from conftest import load_report

    return load_report(path)["computed"]


def test_the_cli_records_and_reuses_a_per_user_history(tmp_path, input_file):
    cache = tmp_path / "cache"
    history = cache / "qcmb_hpc" / "cost_history.json"
    # run 1: no history yet; it is made, with this run's timings
    p1 = run_cli([str(input_file), "-o", str(tmp_path / "r1.json")], tmp_path, cache)
    assert p1.returncode == 0, p1.stderr
    n = computed(tmp_path / "r1.json")
    assert n > 3
    data = json.loads(history.read_text())
    assert data["format"] == "qcmb_hpc-cost-history"
    assert len(data["samples"][KEY]) == n and data["fits"][KEY]["n"] == n
    # run 2 starts from it (its cost model says so at DEBUG) and adds its own timings
    p2 = run_cli([str(input_file), "-o", str(tmp_path / "r2.json"), "--log-level", "DEBUG"], tmp_path, cache)
    assert p2.returncode == 0, p2.stderr
    assert f"cost history {history}: {n} timings of 1 program/method/driver" in p2.stderr, p2.stderr
    data = json.loads(history.read_text())
    assert len(data["samples"][KEY]) == 2 * n and data["fits"][KEY]["n"] == 2 * n
    # --no-cost-history: neither read nor written
    before = history.read_text()
    p3 = run_cli([str(input_file), "-o", str(tmp_path / "r3.json"), "--no-cost-history", "--log-level", "DEBUG"], tmp_path, cache)
    assert p3.returncode == 0, p3.stderr
    assert history.read_text() == before and "cost history" not in p3.stderr
    # --cost-history PATH: that file instead of the cache
    other = tmp_path / "mine.json"
    p4 = run_cli([str(input_file), "-o", str(tmp_path / "r4.json"), "--cost-history", str(other)], tmp_path, cache)
    assert p4.returncode == 0, p4.stderr
    assert len(json.loads(other.read_text())["samples"][KEY]) == n
    assert history.read_text() == before


def test_an_unwritable_cache_is_one_warning_not_an_error(tmp_path, input_file):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    proc = run_cli([str(input_file), "-o", str(tmp_path / "r.json")], tmp_path, blocker)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r.json").exists()
    lines = [ln for ln in proc.stderr.splitlines() if "cost history" in ln]
    assert len(lines) == 1 and "not saved" in lines[0] and str(blocker) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_both_history_flags_are_a_usage_error(tmp_path, input_file):
    proc = run_cli([str(input_file), "--no-cost-history", "--cost-history", "x.json"], tmp_path, tmp_path / "cache")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["qcmb_hpc: error: --cost-history and --no-cost-history exclude each other"]


# ------------------------------------------------------------------------------------------------
# the policy, without a subprocess
# ------------------------------------------------------------------------------------------------


def cli_config(argv, env):
    args = build_parser().parse_args(argv)
    return with_cost_history(config_from_args(args, env), args, env)


def test_default_cost_history_location():
    assert default_cost_history({"XDG_CACHE_HOME": "/c", "HOME": "/h"}) == "/c/qcmb_hpc/cost_history.json"
    assert default_cost_history({"HOME": "/h"}) == "/h/.cache/qcmb_hpc/cost_history.json"
    assert default_cost_history({"XDG_CACHE_HOME": "relative", "HOME": "/h"}) == "/h/.cache/qcmb_hpc/cost_history.json"


def test_cost_history_settings_precedence():
    env = {"HOME": "/h"}
    assert cli_config([], env).cost_history == "/h/.cache/qcmb_hpc/cost_history.json"
    assert cli_config(["--no-cost-history"], env).cost_history is None
    assert cli_config(["--cost-history", "/x.json"], env).cost_history == "/x.json"
    assert cli_config(["--cost-history", "none"], env).cost_history is None
    assert cli_config([], {**env, "QCMB_COST_HISTORY": "/e.json"}).cost_history == "/e.json"
    assert cli_config([], {**env, "QCMB_COST_HISTORY": "none"}).cost_history is None
    assert cli_config(["--cost-history", "/x.json"], {**env, "QCMB_COST_HISTORY": "/e.json"}).cost_history == "/x.json"
    assert cli_config(["--no-cost-history"], {**env, "QCMB_COST_HISTORY": "/e.json"}).cost_history is None
