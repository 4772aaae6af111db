"""The ``parsl`` executor plugin (qcmb_hpc.parsl_plugin) with Parsl's local provider: found through
its entry point; every conformance check (parity with ``qcmanybody.v2.ManyBodyComputer`` among
them) through a loaded DataFlowKernel, and a run with the built-in local configuration; a worker
block killed for real in the middle of a run loses nothing (its fragments run elsewhere, a
replacement worker joins, the result is the fault-free one); the configuration from a file or
module, and the one-line errors. Every run's blocks are gone afterwards and nothing of Parsl's is
left in the temporary directory. (On the real single-node Slurm: tests/test_parsl_slurm.py.)
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import HERE, REPO, assert_same_result, quiet, reference, run_cli
from qcmb_hpc import ParallelConfig, ParallelManyBodyComputer
from qcmb_hpc.plugins import ENTRY_POINT_GROUP, get_plugin
from qcmb_hpc.testing import conformance
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

import hold_engine  # noqa: F401  (qcmb_hold, for the reference computed here)

import parsl  # noqa: E402  (the test extra brings it: without it this fails, it is not skipped)

DEADLINE = 240  # seconds any wait of these tests may take before it fails


def parsl_processes():
    """pids of Parsl's block managers and interchanges on this machine."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if b"process_worker_pool.py" in cmd or b"interchange.py" in cmd:
            out.append(int(entry))
    return out


def wait_for(test, what, timeout=DEADLINE, alive=None, why=lambda: ""):
    """Poll ``test()`` until true; fail after ``timeout`` s (or at once when ``alive()`` is false)."""
    deadline = time.monotonic() + timeout
    while not test():
        if alive is not None and not alive():
            pytest.fail(f"gave up waiting for {what}: the run ended {why()}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen in {timeout} s", pytrace=False)
        time.sleep(0.05)


def ours_in_tmp():
    tmp = tempfile.gettempdir()
    return set(glob.glob(os.path.join(tmp, "pymp-*")) + glob.glob(os.path.join(tmp, "qcmb_hpc-parsl-*")))


@pytest.fixture(autouse=True)
def leaves_nothing():
    """No block, interchange or temporary file of Parsl's outlives a test."""
    before, procs = ours_in_tmp(), set(parsl_processes())
    yield
    wait_for(lambda: not (set(parsl_processes()) - procs), "Parsl's processes to end", timeout=60)
    assert ours_in_tmp() <= before, f"left in {tempfile.gettempdir()}: {sorted(ours_in_tmp() - before)}"


@pytest.fixture
def block_tmp():
    """The blocks' temporary directory (Parsl's managers leave ``pymp-*`` in it when stopped): a
    short path — a manager makes a Unix socket there — removed afterwards."""
    path = tempfile.mkdtemp(prefix="qcmb-parsl-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def local_config(run_dir, tmp, blocks=1, workers_per_block=2, max_blocks=None, strategy="none", label="local"):
    """A Parsl configuration with local blocks, run directory ``run_dir``, temporary files in ``tmp``."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    provider = LocalProvider(init_blocks=blocks, min_blocks=0, max_blocks=max_blocks or blocks, worker_init=f"export TMPDIR={tmp}")
    # (heartbeats every 2 s: a dead worker process is restarted, a lost block noticed, that soon)
    executor = HighThroughputExecutor(label=label, address="127.0.0.1", max_workers_per_node=workers_per_block, provider=provider,
                                      heartbeat_period=2, heartbeat_threshold=10)
    return Config(executors=[executor], run_dir=str(run_dir), strategy=strategy, strategy_period=0.5, usage_tracking=0)


@pytest.fixture
def importable(monkeypatch):
    """Blocks start new interpreters: they import tests/ and this checkout through PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([HERE, REPO, os.environ.get("PYTHONPATH", "")]))


# ------------------------------------------------------------------------------------------------


def test_the_plugin_is_found_by_its_entry_point(tmp_path):
    from importlib.metadata import entry_points

    from qcmb_hpc.parsl_plugin import ParslPlugin

    assert "parsl" in {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    plugin = get_plugin("parsl")
    assert isinstance(plugin, ParslPlugin)
    assert plugin.create_executor(ParallelConfig(mode="parsl")).survives_worker_loss
    # a Parsl configuration makes the adaptive mode choose Parsl (outside an MPI launcher)
    from qcmb_hpc.plugins import choose_adaptively

    (tmp_path / "site.py").write_text("config = None\n")
    cfg = ParallelConfig(mode="adaptive", parsl_config=str(tmp_path / "site.py"))
    assert choose_adaptively(cfg).name == "parsl"
    assert choose_adaptively(ParallelConfig(mode="adaptive")).name != "parsl"


@pytest.fixture
def loaded(tmp_path, block_tmp):
    """A DataFlowKernel loaded with ``parsl.load`` (one local block of 2 workers), as a Parsl user
    would have it: every run of the conformance checks uses it, warm, and leaves it loaded."""
    run_dir = tmp_path / "parsl-loaded"
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([HERE, REPO, old or ""])
    from qcmb_hpc.parsl_plugin import parsl_scripts_on_path

    with parsl_scripts_on_path():  # (Parsl starts its scripts by name: this venv's bin on PATH)
        dfk = parsl.load(local_config(run_dir, block_tmp))
        try:
            yield dfk
        finally:
            dfk.cleanup()
            parsl.clear()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
        wait_for(lambda: not parsl_processes(), "the loaded DataFlowKernel's block to end", timeout=60)


def test_conformance_through_a_loaded_dataflowkernel(loaded, tmp_path):
    conformance.check_plugin("parsl", tmp_path)
    assert not loaded.cleanup_called  # the user's DataFlowKernel: used, not cleaned up
    assert loaded.task_count > 2  # (its tasks were the workers of every run)


def test_builtin_local_configuration(tmp_path):
    """Without a configuration or a loaded DataFlowKernel: one local block sized by qcmb_hpc's
    layout, its run directory private and removed (checked by ``leaves_nothing``), the exact result."""
    from qcmb_hpc.parsl_plugin import _loaded_dfk

    assert _loaded_dfk() is None
    inp = many_body_input(water_cluster(3), bsse_type=["cp", "nocp"], driver="gradient")
    comp = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="parsl", max_workers=2, imports=[conformance.ENGINES]))
    res = comp.compute()
    assert_same_result(reference(inp), res, exact=True)
    rep = comp.run_info
    assert rep["mode"] == "parsl" and rep["workers"] == 2 and not rep["lost_workers"], rep
    ran = {w: info for w, info in rep["worker_layout"].items() if info["host"]}
    assert ran and all(info["threads"] == 1 for info in ran.values()), rep["worker_layout"]


def meet(folder, n, deadline):
    """A Parsl task: arrive at the barrier in ``folder`` and wait (until ``deadline``) for ``n``
    tasks to be there at once; returns how many were."""
    import os
    import time

    open(os.path.join(folder, str(os.getpid())), "w").close()
    while len(os.listdir(folder)) < n and time.time() < deadline:
        time.sleep(0.02)
    return len(os.listdir(folder))


def test_builtin_configuration_starts_every_worker(tmp_path):
    """The built-in block runs as many workers at once as qcmb_hpc's layout asks for, also more
    than the cores (HTEX by itself starts one per core): ``cores + 1`` tasks meet at a barrier."""
    from parsl.app.python import PythonApp

    from qcmb_hpc.parsl_plugin import default_config, parsl_scripts_on_path

    n = (os.cpu_count() or 1) + 1
    folder = tmp_path / "barrier"
    folder.mkdir()
    run_dir = tempfile.mkdtemp(prefix="qcmbp-")  # (short: the block's TMPDIR goes under it)
    with parsl_scripts_on_path():
        dfk = parsl.load(default_config(n, run_dir, pythonpath=HERE))
        try:
            app = PythonApp(meet, data_flow_kernel=dfk)
            deadline = time.time() + 60
            met = [f.result(timeout=DEADLINE) for f in [app(str(folder), n, deadline) for _ in range(n)]]
        finally:
            dfk.cleanup()
            parsl.clear()
            shutil.rmtree(run_dir, ignore_errors=True)
    assert met == [n] * n, f"{met}: not all {n} workers ran at once"


def test_a_killed_block_loses_nothing(tmp_path, block_tmp, importable, monkeypatch):
    """Two blocks of one worker each; every worker finishes a fragment and holds the next; one
    block is killed for real (SIGKILL to its process group: the manager, the worker, the bash
    around them; the worker's fragment child follows its parent). Its held fragment counts as a
    failed attempt and runs elsewhere; a replacement worker (a new Parsl task, in a block Parsl's
    strategy starts) joins and works; the result is exactly the fault-free one."""
    hold = tmp_path / "hold"
    hold.mkdir()
    monkeypatch.setenv("HOLD_DIR", str(hold))
    inp = many_body_input(water_cluster(3), program="qcmb_hold", bsse_type=["cp", "nocp"], driver="gradient")
    ref = reference(inp)
    journal = str(tmp_path / "run.checkpoint.jsonl")
    cfg = local_config(tmp_path / "runinfo", block_tmp, blocks=2, workers_per_block=1, max_blocks=3, strategy="simple")
    config = ParallelConfig(mode="parsl", parsl_config=cfg, max_workers=2, imports=["hold_engine"], checkpoint=journal,
                            progress_reporting=False, fallback_to_sequential=False)
    comp = ParallelManyBodyComputer(inp, parallel_config=config)
    box = {}

    def run():
        try:
            box["result"] = comp.compute()
        except BaseException as exc:  # (reported by the test below)
            box["error"] = exc

    thread = threading.Thread(target=run, name="parsl-run")
    thread.start()
    try:
        holding = lambda: [w for w, ns in hold_engine.markers(str(hold)).items() if len(ns) >= 2]
        wait_for(lambda: len(holding()) == 2, "both workers holding their second fragment", alive=thread.is_alive, why=lambda: repr(box))
        victim = sorted(holding())[0]
        worker_pid = int(victim.split("-")[-3])
        child_pid = int(open(hold / f"{victim}.2").read())
        group = os.getpgid(worker_pid)
        assert group != os.getpgrp()
        os.killpg(group, signal.SIGKILL)
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in (worker_pid, child_pid)), "the killed block's processes to go")
        wait_for(lambda: len(hold_engine.markers(str(hold))) == 3, "a replacement worker to start a fragment", alive=thread.is_alive, why=lambda: repr(box))
    finally:
        (hold / "open").touch()
        thread.join(DEADLINE)
    assert not thread.is_alive(), "the run did not end"
    assert "error" not in box, repr(box.get("error"))
    assert_same_result(ref, box["result"], exact=True)
    rep = comp.run_info
    assert len(rep["lost_workers"]) == 1 and f"pid {worker_pid}" in rep["lost_workers"][0], rep["lost_workers"]
    assert rep["workers"] == 3 and rep["retried_attempts"] == 1, rep
    worked = {w for w, u in rep["utilisation"].items() if u}
    assert len(worked) == 3, rep["utilisation"]  # the two first workers and the replacement
    with open(journal) as fh:
        labels = [json.loads(line)["label"] for line in fh.read().splitlines()[1:]]
    assert len(labels) == len(set(labels)) == rep["fragments"]  # each fragment once: nothing ran twice


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------


def test_load_config_from_a_file_a_module_and_an_object(tmp_path):
    from qcmb_hpc.errors import InputDataError
    from qcmb_hpc.parsl_plugin import load_config

    f = tmp_path / "site_config.py"
    f.write_text("from parsl.config import Config\nfrom parsl.executors import ThreadPoolExecutor\n"
                 "config = Config(executors=[ThreadPoolExecutor(label='a', max_threads=3)])\n"
                 "def other():\n    return Config(executors=[ThreadPoolExecutor(label='b', max_threads=1)])\n")
    assert [e.label for e in load_config(str(f)).executors] == ["a"]
    assert [e.label for e in load_config(f"{f}:other").executors] == ["b"]
    sys.path.insert(0, str(tmp_path))
    try:
        assert [e.label for e in load_config("site_config").executors] == ["a"]
    finally:
        sys.path.remove(str(tmp_path))
    original = load_config(str(f))
    assert load_config(original) is original
    original.executors[0].start()  # (as a run would: a Config's executors start once)
    try:
        with pytest.raises(InputDataError, match="executors have run already"):
            load_config(original)
    finally:
        original.executors[0].shutdown()
    (tmp_path / "empty.py").write_text("x = 1\n")
    (tmp_path / "broken.py").write_text("raise RuntimeError('no such partition')\n")
    for value, message in [(tmp_path / "empty.py", "no parsl.config.Config named 'config'"),
                           (f"{f}:nothing", "no parsl.config.Config named 'nothing'"),
                           (tmp_path / "broken.py", "failed to load: RuntimeError: no such partition"),
                           ("no_such_module_here", "cannot be imported")]:
        with pytest.raises(InputDataError, match=message):
            load_config(str(value))
    with pytest.raises(ValueError, match="parsl_config.*no such file"):
        ParallelConfig(parsl_config=str(tmp_path / "missing.py"))
    with pytest.raises(ValueError, match="parsl_config"):
        ParallelConfig(parsl_config=42)


def test_command_line_errors_are_one_line(tmp_path):
    inp = many_body_input(water_cluster(3), bsse_type=["cp"])
    (tmp_path / "in.json").write_text(inp.model_dump_json())
    (tmp_path / "empty.py").write_text("x = 1\n")
    cases = [
        (["--parsl-config", str(tmp_path / "missing.py")], "--parsl-config"),
        (["--parsl-config", str(tmp_path / "empty.py")], "no parsl.config.Config named 'config'"),
    ]
    for args, text in cases:
        cp = run_cli(["in.json", "--import", conformance.ENGINES, *args], cwd=tmp_path)
        lines = cp.stderr.strip().splitlines()
        assert cp.returncode == 2 and len(lines) == 1 and lines[0].startswith("qcmb_hpc: error: ") and text in lines[0], cp.stderr


def test_without_parsl_the_mode_says_what_to_install(tmp_path):
    """``--mode parsl`` where Parsl cannot be imported: one line naming the extra, exit 2 —
    never a sequential run of a job meant for a cluster."""
    blocker = tmp_path / "block"
    (blocker / "parsl").mkdir(parents=True)
    (blocker / "parsl" / "__init__.py").write_text("raise ImportError('No module named parsl (hidden by the test)')\n")
    inp = many_body_input(water_cluster(3), bsse_type=["cp"])
    (tmp_path / "in.json").write_text(inp.model_dump_json())
    env = {"PYTHONPATH": os.pathsep.join([str(blocker), HERE, REPO])}
    cp = subprocess.run([sys.executable, "-m", "qcmb_hpc", "in.json", "--mode", "parsl", "--import", conformance.ENGINES],
                        cwd=tmp_path, env={**{k: v for k, v in os.environ.items() if not k.startswith("QCMB_")}, **env},
                        capture_output=True, text=True, timeout=120)
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode == 2 and len(lines) == 1, cp.stderr
    assert lines[0].startswith("qcmb_hpc: error: mode 'parsl' needs Parsl") and 'pip install "qcmb_hpc[parsl]"' in lines[0], cp.stderr
    assert not (tmp_path / "in.result.json").exists()
