"""Errors a user can cause, failing fragments, retries and a stop signal under MPI: every rank ends
the same way (the same exception and message), and nothing hangs."""

import json
import os

import pytest

from conftest import assert_same_result
from ranks_count_engine import held_too_long
from ranks_helpers import (  # noqa: F401 (ranks_in_step, shared_dir: fixtures)
    MPI_TEST_TIMEOUT,
    TEST_ENGINES,
    gather,
    mpi_compute,
    rank,
    ranks_in_step,
    root_reference,
    shared_dir,
    size,
    sync,
)
from qcmb_hpc.errors import FragmentExecutionError, IncompleteRunError, InputDataError
from qcmb_hpc.plan import make_plan
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(MPI_TEST_TIMEOUT)]

TRIMER = water_cluster(3)


def same_everywhere(exc_info):
    """The exception's type and message, identical on every rank."""
    mine = (type(exc_info.value).__name__, str(exc_info.value))
    everyone = gather(mine, "error messages")
    assert all(e == mine for e in everyone), f"ranks disagree: {everyone}"
    return mine


def test_unknown_program_is_the_same_error_on_every_rank():
    inp = many_body_input(TRIMER, program="no_such_program", bsse_type=["cp"])
    with pytest.raises(InputDataError) as ei:
        mpi_compute(inp)
    _, msg = same_everywhere(ei)
    assert "no_such_program" in msg and "\n" not in msg


def test_fragment_failing_for_good_is_the_same_error_on_every_rank(shared_dir):
    inp = many_body_input(
        TRIMER,
        program="qcmb_fault",
        keywords={"fault_dir": shared_dir, "p": 1.0, "kinds": ["fail"], "faulty_attempts": 1000},
        bsse_type=["cp"],
    )
    n_tasks = len(make_plan(inp).tasks)
    with pytest.raises(FragmentExecutionError) as ei:
        mpi_compute(inp, max_retries=1)
    same_everywhere(ei)
    exc = ei.value
    # every fragment fails alike: systematic after the first three (each after its retry)
    assert len(exc.failures) == min(3, n_tasks) and exc.completed == 0 and exc.systematic is not None
    assert all(len(f["attempts"]) == 2 for f in exc.failures)  # 1 + max_retries
    assert all(a["error_type"] == "random_error" for f in exc.failures for a in f["attempts"])


def test_faults_are_retried_on_other_ranks_and_the_result_is_exact(shared_dir):
    """Exceptions, failed results and killed children (isolated fragments): retried, and the result
    is still bit for bit QCManyBody's (qcmb_fault computes the qcmb_test model)."""
    kw = dict(bsse_type=["cp", "nocp"], driver="gradient")
    inp = many_body_input(
        TRIMER,
        program="qcmb_fault",
        keywords={"fault_dir": shared_dir, "p": 0.5, "kinds": ["raise", "fail", "kill"], "seed": 3},
        **kw,
    )
    res, _ = mpi_compute(inp, max_retries=2, load_balancing="dynamic", report_in_extras=True)
    ref = root_reference(many_body_input(TRIMER, **kw))
    assert_same_result(ref, res, exact=True)
    faults = 0
    for name in os.listdir(shared_dir):
        with open(os.path.join(shared_dir, name)) as fh:
            faults += fh.read() != "ok"
    rep = res.extras["qcmb_hpc"]
    assert faults > 0 and rep["retried_attempts"] == faults
    assert rep["failed"] == 0 and rep["computed"] == rep["fragments"]


def test_sigterm_stops_every_rank_and_the_run_resumes(shared_dir):
    """Slurm's time limit: SIGTERM to every rank while a fragment runs. Workers ignore it, the
    coordinator stops (no new work, the running fragment is cut after the grace period), every rank
    raises the same IncompleteRunError, and running again resumes from the checkpoint: exactly the
    fragments not journaled run, once, and the result is exact."""
    kw = dict(bsse_type=["cp", "nocp"], driver="gradient")
    inp = many_body_input(TRIMER, program="qcmb_count", keywords={"record_dir": shared_dir}, **kw)
    n_tasks = len(make_plan(inp).tasks)
    cfg = dict(
        imports=[TEST_ENGINES, "ranks_count_engine"],
        checkpoint=os.path.join(shared_dir, "run.checkpoint.jsonl"),
        grace_period=0.5,
    )
    pids = gather(os.getpid(), "pids")
    if rank() == 0:
        with open(os.path.join(shared_dir, "control.json"), "w") as fh:
            json.dump({"sigterm_pids": pids}, fh)
    sync("control file")
    with pytest.raises(IncompleteRunError) as ei:
        mpi_compute(inp, **cfg)
    _, msg = same_everywhere(ei)
    assert "SIGTERM" in msg
    completed = ei.value.completed
    assert completed < n_tasks
    assert not held_too_long(shared_dir), "the running fragment was not cut"
    sync("first run checked")
    if rank() == 0:
        os.remove(os.path.join(shared_dir, "control.json"))
    before = set(os.listdir(shared_dir))
    sync("control file removed")

    res, _ = mpi_compute(inp, report_in_extras=True, **cfg)
    new_runs = [n for n in set(os.listdir(shared_dir)) - before if n.endswith(".run")]
    keys = [n.split(".")[0] for n in new_runs]
    rep = res.extras["qcmb_hpc"]
    assert rep["restored"] == completed and rep["computed"] == n_tasks - completed
    assert len(keys) == len(set(keys)) == n_tasks - completed, "the resumed run ran a fragment twice or one it had"
    assert_same_result(root_reference(many_body_input(TRIMER, **kw)), res, exact=True)
