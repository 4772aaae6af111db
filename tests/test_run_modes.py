"""Choosing the mode (adaptive), refusing a launcher without MPI, the sequential fallback keeping
everything the parallel phase learnt, and what a run leaves behind in the caller's process."""

import collections
import logging
import os

import pytest

from conftest import assert_same_result, quiet, reference, run_cli
from qcmb_hpc import FragmentExecutionError, InputDataError, ParallelExecutionError, ParallelManyBodyComputer
from qcmb_hpc.config import ParallelConfig, ParallelMode
from qcmb_hpc.engine import THREAD_VARIABLES
from qcmb_hpc.plan import make_plan
from qcmb_hpc.progress import ProgressReporter
from qcmb_hpc.resources import NodeResources
from qcmb_hpc.plugins import choose_adaptively, get_plugin, select_plugin
from qcmb_hpc.testing.inputs import many_body_input
from qcmb_hpc.transport.mpi import workers_on_node

import qcmb_hpc.resources as resources_module
import qcmb_hpc.signals as signals_module

LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_STEP_NUM_TASKS")


def _environ(monkeypatch, environ):
    for var in LAUNCHER_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    for var, value in environ.items():
        monkeypatch.setenv(var, value)


# -- adaptive mode -----------------------------------------------------------------------------


def _node(cores):
    return NodeResources(cores=cores, memory=8 << 30)


@pytest.mark.parametrize(
    "environ, cores, expected",
    [
        ({"PMI_SIZE": "4"}, 2, ParallelMode.MPI),  # Hydra's mpiexec / srun --mpi=pmi2
        ({"OMPI_COMM_WORLD_SIZE": "3"}, 2, ParallelMode.MPI),  # Open MPI's mpiexec
        ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8"}, 2, ParallelMode.MPI),  # any srun step
        ({"PMI_SIZE": "1"}, 2, ParallelMode.MULTIPROCESSING),  # a launcher with one rank: this node's cores
        ({"SLURM_STEP_ID": "batch", "SLURM_STEP_NUM_TASKS": "8"}, 4, ParallelMode.MULTIPROCESSING),  # the batch script
        ({}, 2, ParallelMode.MULTIPROCESSING),
        ({}, 1, ParallelMode.SEQUENTIAL),
    ],
)
def test_adaptive_mode_choice(monkeypatch, caplog, environ, cores, expected):
    """The adaptive mode asks every plugin whether it can handle the situation (the MPI plugin:
    under a launcher, read from the environment without initialising MPI)."""
    monkeypatch.setattr(resources_module, "detect_node", lambda environ=None: _node(cores))
    _environ(monkeypatch, environ)
    with caplog.at_level(logging.DEBUG, logger="qcmb_hpc"):
        plugin = choose_adaptively(ParallelConfig(mode="adaptive"))
    assert plugin.name == expected.value
    assert f"adaptive mode: running {expected.value}" in caplog.text  # the choice is logged


def test_explicit_modes_are_taken_as_given(monkeypatch):
    monkeypatch.setattr(resources_module, "detect_node", lambda environ=None: _node(1))
    _environ(monkeypatch, {"PMI_SIZE": "4"})
    for mode in ("sequential", "multiprocessing", "mpi"):
        assert ParallelConfig(mode=mode).mode is ParallelMode(mode) and get_plugin(mode).name == mode
    for mode in ("sequential", "multiprocessing"):  # (mpi would initialise MPI here: tests/mpi run it)
        assert select_plugin(ParallelConfig(mode=mode)) == (get_plugin(mode), None)


# -- MPI layout policy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "node_ranks, n_workers, expected",
    [
        ([0, 1, 2, 3, 4], 4, 4),  # one node: rank 0 coordinates, 1..4 work
        ([0, 1, 2, 3, 4], 1, 1),  # max_workers=1: ranks 2..4 are spare and take no share
        ([5, 6, 7], 4, 0),  # a node of spare ranks only
        ([4, 5, 6, 7], 6, 3),  # a second node: 4..6 work, 7 is spare
        ([0], 3, 0),  # rank 0 alone on its node
    ],
)
def test_workers_on_node_counts_only_working_ranks(node_ranks, n_workers, expected):
    assert workers_on_node(node_ranks, n_workers) == expected


# -- no MPI under a launcher ---------------------------------------------------------------------


def _no_mpi4py():
    raise ImportError("No module named 'mpi4py'")


def test_launcher_without_mpi4py_is_refused(trimer, monkeypatch):
    """Under mpiexec/srun with N ranks and no usable mpi4py, falling back would make every one of
    the N processes run the whole job (on one journal): refused, whatever fallback_to_sequential says."""
    import qcmb_hpc.transport.mpi as mpi_transport

    monkeypatch.setattr(mpi_transport, "world", _no_mpi4py)
    monkeypatch.setenv("PMI_SIZE", "4")
    inp = many_body_input(trimer)
    with pytest.raises(ParallelExecutionError, match="launcher with 4 ranks.*mpi4py"):
        ParallelManyBodyComputer(inp, parallel_config=quiet(mode="mpi", fallback_to_sequential=True)).compute()


def test_mpi_mode_without_mpi4py_and_no_launcher_falls_back(trimer, monkeypatch):
    import qcmb_hpc.transport.mpi as mpi_transport

    monkeypatch.setattr(mpi_transport, "world", _no_mpi4py)
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_ID"):
        monkeypatch.delenv(var, raising=False)
    inp = many_body_input(trimer)
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(report_in_extras=True, mode="mpi")).compute()
    assert_same_result(reference(inp), res, exact=True)
    assert res.extras["qcmb_hpc"]["mode"] == "sequential"
    assert "MPI mode needs mpi4py" in res.extras["qcmb_hpc"]["fell_back_to_sequential"]
    with pytest.raises(ParallelExecutionError, match="mpi4py"):
        ParallelManyBodyComputer(inp, parallel_config=quiet(report_in_extras=True, mode="mpi", fallback_to_sequential=False)).compute()


# -- the sequential fallback keeps what the parallel phase learnt -------------------------------


class Events(ProgressReporter):
    def __init__(self):
        self.completed = collections.Counter()
        self.levels_started = 0
        self.finished = 0

    def on_level_started(self, level, fragment_count):
        self.levels_started += 1

    def on_fragment_completed(self, fragment_label, success):
        self.completed[fragment_label] += 1

    def on_calculation_completed(self, total_duration):
        self.finished += 1


def test_fallback_keeps_failures_attempts_and_progress(trimer, tmp_path):
    """Every fragment kills whatever runs it on its first attempt, with no retries: the two worker
    processes die (isolation off), taking the fragments they ran with them for good; the run then
    continues sequentially (isolated). The fragments that failed in the parallel phase are not run
    again with a fresh retry budget, their attempts are reported, and the progress reporter hears of
    every fragment exactly once. In the sequential phase every fragment's child is killed alike:
    after three (a systematic failure, :mod:`qcmb_hpc.failures`; the two lost workers' fragments
    do not count, being the machinery's) the run stops."""
    faults = tmp_path / "f"
    faults.mkdir()
    inp = many_body_input(
        trimer,
        program="qcmb_fault",
        keywords={"fault_dir": str(faults), "p": 1.0, "kinds": ["kill"], "faulty_attempts": 1},
        bsse_type=["nocp"],
    )
    n = len(make_plan(inp).tasks)
    events = Events()
    cfg = quiet(mode="multiprocessing", max_workers=2, isolate_fragments=False, max_retries=0)
    comp = ParallelManyBodyComputer(inp, parallel_config=cfg, progress_reporter=events)
    with pytest.raises(FragmentExecutionError) as err:
        comp.compute()
    attempts_on_disk = collections.Counter(name.rpartition(".")[0] for name in os.listdir(faults))
    assert len(attempts_on_disk) == 5 < n and set(attempts_on_disk.values()) == {1}  # nobody ran twice
    failures = err.value.failures
    assert len(failures) == 5 and all(len(f["attempts"]) == 1 for f in failures)
    lost = [f for f in failures if f["attempts"][0]["error_type"] == "worker_lost"]
    assert len(lost) == 2  # the two worker processes, each with the fragment it was running
    assert err.value.systematic["error_type"] == "worker_crash" and len(err.value.systematic["labels"]) == 3
    assert "fell_back_to_sequential" in comp.run_info
    assert sorted(events.completed.values()) == [1] * 5  # every failed fragment reported once
    assert events.levels_started == len({t.nbody for t in make_plan(inp).tasks})  # started once
    assert events.finished == 0  # stopped: not every fragment was done


# -- what a run leaves behind -----------------------------------------------------------------


def test_sequential_run_restores_thread_variables(trimer, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    before = {v: os.environ.get(v) for v in THREAD_VARIABLES}
    inp = many_body_input(trimer)
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="sequential", threads_per_worker=1)).compute()
    assert_same_result(reference(inp), res, exact=True)
    assert {v: os.environ.get(v) for v in THREAD_VARIABLES} == before


# -- bad settings found before any fragment runs: one line ----------------------------------------


def test_unusable_scratch_directory_is_an_input_error(trimer, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    inp = many_body_input(trimer)
    for mode in ("sequential", "multiprocessing"):
        with pytest.raises(InputDataError, match="scratch directory .*a-file.* cannot be used"):
            ParallelManyBodyComputer(
                inp, parallel_config=quiet(mode=mode, scratch_directory=str(blocker / "sub"))
            ).compute()


def test_cli_bad_scratch_and_broken_import_are_one_line_exit_2(trimer, tmp_path):
    inp = many_body_input(trimer)
    path = tmp_path / "in.json"
    path.write_text(inp.model_dump_json())
    (tmp_path / "broken_module.py").write_text("raise RuntimeError('this module is broken')\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [
        (["--scratch-directory", str(blocker / "sub")], "scratch directory"),
        (["--import", "broken_module"], "broken_module"),
    ]
    for extra, needle in cases:
        args = [str(path), "--no-progress", "--mode", "sequential", "--import", "qcmb_hpc.testing.engines", *extra]
        proc = run_cli(args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("qcmb_hpc: error:") and needle in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr


# -- stop signals outside a run (the command line) ----------------------------------------------


def test_cli_signals_outside_a_run(monkeypatch):
    """Before a run, SIGTERM/SIGUSR1 end the command line (exit 3) and SIGINT interrupts it; once a
    run has been stopped, later ones (Slurm signals every process of the step, srun forwards again)
    are ignored, so they cannot kill it before it has said what it saved."""
    import signal

    import qcmb_hpc.cli as cli

    monkeypatch.setattr(signals_module, "_STOP_RECEIVED", None)
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        with pytest.raises(cli._Stopped, match=signal.Signals(sig).name):
            cli._signal_outside_run(sig, None)
    with pytest.raises(KeyboardInterrupt):
        cli._signal_outside_run(signal.SIGINT, None)
    monkeypatch.setattr(signals_module, "_STOP_RECEIVED", "SIGUSR1")
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        assert cli._signal_outside_run(sig, None) is None


def test_a_stopped_run_records_its_signal(trimer, monkeypatch, tmp_path):
    """The run's own handler records the first stop signal for the command line to see."""
    import signal

    monkeypatch.setattr(signals_module, "_STOP_RECEIVED", None)
    inp = many_body_input(
        trimer, program="qcmb_sleep", keywords={"sleep": {"base": 0.05, "exponent": 0.0}}, bsse_type=["nocp"]
    )

    class StopAtFirst(ProgressReporter):
        def on_fragment_completed(self, fragment_label, success):
            if signals_module.stop_received() is None:
                os.kill(os.getpid(), signal.SIGUSR1)

    cfg = quiet(mode="sequential", checkpoint=str(tmp_path / "j.jsonl"), grace_period=5.0)
    from qcmb_hpc import IncompleteRunError

    with pytest.raises(IncompleteRunError):
        ParallelManyBodyComputer(inp, parallel_config=cfg, progress_reporter=StopAtFirst()).compute()
    assert signals_module.stop_received() == "SIGUSR1"


def test_many_failures_are_summarised_not_listed():
    """A run where every fragment fails names a few of them, counts the rest, and keeps all of
    them in ``.failures``."""
    from qcmb_hpc.errors import DETAIL_FAILURES, MESSAGE_FAILURES

    failures = [
        {"label": f"frag{k}", "program": "p", "attempts": [{"worker": 0, "host": "h", "error_type": "e", "error_message": "boom"}]}
        for k in range(100)
    ]
    err = FragmentExecutionError(failures, completed=0, total=100)
    text = str(err)
    assert text.count("failed after") == MESSAGE_FAILURES and f"and {100 - MESSAGE_FAILURES} more" in text
    details = err.details()
    assert details.count("attempt 1 on worker") == DETAIL_FAILURES and f"{100 - DETAIL_FAILURES} more" in details
    assert err.details(limit=None).count("attempt 1 on worker") == 100 and len(err.failures) == 100
