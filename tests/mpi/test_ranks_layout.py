"""How the ranks are used: more ranks than fragments, a single worker, spare ranks, adaptive mode;
what a run leaves behind on every rank (signal handlers, the caller's own messages); idle ranks
do not spin."""

import signal
import time

import pytest

from conftest import assert_same_result
from ranks_helpers import (  # noqa: F401 (ranks_in_step, shared_dir: fixtures)
    MPI_TEST_TIMEOUT,
    gather,
    mpi_compute,
    rank,
    ranks_in_step,
    root_reference,
    size,
    tcomm,
)
from qcmb_hpc.plan import make_plan
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(MPI_TEST_TIMEOUT)]

DIMER = water_cluster(2)
TRIMER = water_cluster(3)


def worker_ids(res):
    """The workers that ran something, from the run report."""
    return {int(w) for w in res.extras["qcmb_hpc"]["utilisation"]}


@pytest.mark.parametrize(
    "kw", [dict(bsse_type=["nocp"], max_nbody=1), dict(bsse_type=["nocp"]), dict(bsse_type=["cp"], driver="gradient")]
)
def test_more_ranks_than_fragments(kw):
    inp = many_body_input(DIMER, **kw)
    n_tasks = len(make_plan(inp).tasks)
    if size() - 1 <= n_tasks:
        pytest.skip(f"needs more than {n_tasks} worker ranks (-n {n_tasks + 2} or more)")
    res, _ = mpi_compute(inp, report_in_extras=True)
    assert_same_result(root_reference(inp), res, exact=True)
    rep = res.extras["qcmb_hpc"]
    assert rep["workers"] == size() - 1 > rep["fragments"] == n_tasks
    assert rep["computed"] == n_tasks
    assert len(worker_ids(res)) <= n_tasks


def test_max_workers_above_size_uses_every_rank():
    inp = many_body_input(TRIMER, bsse_type=["cp"], driver="energy")
    res, _ = mpi_compute(inp, report_in_extras=True, max_workers=64)
    assert_same_result(root_reference(inp), res, exact=True)
    assert res.extras["qcmb_hpc"]["workers"] == size() - 1


def test_single_worker():
    """max_workers=1: one rank does everything (at -n 2 that is simply the only worker)."""
    inp = many_body_input(TRIMER, bsse_type=["cp", "nocp"], driver="gradient")
    res, _ = mpi_compute(inp, report_in_extras=True, max_workers=1)
    assert_same_result(root_reference(inp), res, exact=True)
    rep = res.extras["qcmb_hpc"]
    assert rep["workers"] == 1
    assert worker_ids(res) == {0}
    assert rep["computed"] == rep["fragments"]


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("max_workers", [1, 2])
def test_spare_ranks_get_the_result(max_workers):
    """Ranks beyond max_workers do no work, wait, and still return the result."""
    if max_workers >= size() - 1:
        pytest.skip(f"max_workers={max_workers} leaves no spare rank at -n {size()}")
    inp = many_body_input(TRIMER, bsse_type=["vmfc"], driver="gradient")
    res, _ = mpi_compute(inp, report_in_extras=True, max_workers=max_workers, load_balancing="dynamic")
    assert_same_result(root_reference(inp), res, exact=True)
    rep = res.extras["qcmb_hpc"]
    assert rep["workers"] == max_workers
    assert worker_ids(res) <= set(range(max_workers))
    # and a spare rank is ready for the next run straight away
    res2, _ = mpi_compute(inp, report_in_extras=True)
    assert_same_result(res, res2, exact=True)


@pytest.mark.mpi(min_size=3)
def test_spare_ranks_take_no_share_of_the_node():
    """max_workers=1 with every rank on this node: the one worker rank gets the node's cores and
    memory; the spare ranks (which only wait for the result) take no share of either — on rank 0,
    which plans, and on the worker rank itself, which fits itself to its node."""
    from qcmb_hpc.resources import detect_node, plan_layout

    inp = many_body_input(TRIMER, bsse_type=["cp"], driver="energy")
    res, _ = mpi_compute(inp, report_in_extras=True, max_workers=1)
    assert_same_result(root_reference(inp), res, exact=True)
    rep = res.extras["qcmb_hpc"]
    alone = plan_layout(detect_node(), ranks_on_node=1)
    shared = plan_layout(detect_node(), ranks_on_node=size() - 1)
    assert alone.memory_per_worker > 1.5 * shared.memory_per_worker  # the test can tell them apart
    for what, got in (("rank 0's plan", rep["layout"]), ("the worker rank", rep["worker_layout"]["0"])):
        threads = got.get("threads_per_worker", got.get("threads"))
        memory = got.get("memory_per_worker", got.get("memory"))
        assert threads == alone.threads_per_worker, (what, got)
        assert memory > 0.8 * alone.memory_per_worker, (what, got, alone.memory_per_worker)


def test_adaptive_mode_picks_mpi():
    inp = many_body_input(TRIMER, bsse_type=["cp"], driver="energy")
    res, _ = mpi_compute(inp, report_in_extras=True, mode="adaptive")
    assert res.extras["qcmb_hpc"]["mode"] == "mpi"
    assert res.extras["qcmb_hpc"]["workers"] == size() - 1
    assert_same_result(root_reference(inp), res, exact=True)


def test_signal_handlers_are_restored():
    """Worker ranks ignore SIGINT/SIGTERM/SIGUSR1 while they work (the coordinator decides when to
    stop) — and give the caller its handlers back afterwards (a rank that kept ignoring SIGTERM
    would outlive Slurm's time limit until SIGKILL)."""
    names = ("SIGINT", "SIGTERM", "SIGUSR1")
    marker = lambda signum, frame: None  # noqa: E731
    before = {n: signal.getsignal(getattr(signal, n)) for n in names}
    signal.signal(signal.SIGUSR1, marker)
    try:
        inp = many_body_input(DIMER, bsse_type=["cp"], driver="energy")
        mpi_compute(inp)
        after = {n: signal.getsignal(getattr(signal, n)) for n in names}
    finally:
        signal.signal(signal.SIGUSR1, before["SIGUSR1"])
    expected = {**before, "SIGUSR1": marker}
    assert after == expected, f"rank {rank()}: handlers {after} after compute(), expected {expected}"


def test_callers_messages_on_comm_world_are_left_alone():
    """A caller's own pending point-to-point messages on COMM_WORLD — even on the transport's tag —
    are neither taken by the run nor lost: they are received intact afterwards."""
    from mpi4py import MPI

    from qcmb_hpc.transport.mpi import TAG

    world = MPI.COMM_WORLD
    me, n = world.Get_rank(), world.Get_size()
    reqs = []
    if me == 0:
        reqs = [world.isend(("from the caller", 0, k), dest=k, tag=TAG) for k in range(1, n)]
    else:
        reqs = [world.isend(("from the caller", me, 0), dest=0, tag=TAG)]
    inp = many_body_input(TRIMER, bsse_type=["cp"], driver="energy")
    res, _ = mpi_compute(inp)
    if me == 0:
        got = sorted(world.recv(source=k, tag=TAG) for k in range(1, n))
        assert got == [("from the caller", k, 0) for k in range(1, n)]
    else:
        assert world.recv(source=0, tag=TAG) == ("from the caller", 0, me)
    MPI.Request.Waitall(reqs)
    assert_same_result(root_reference(inp), res, exact=True)


def test_idle_ranks_do_not_spin():
    """While fragments sleep (qcmb_sleep), the coordinator and every waiting rank use a small part
    of one core: they sleep between polls. A rank in a blocking MPICH receive would use a whole
    core for the whole window. The window is at least the fragments' sleeping time (a lower bound
    that does not depend on the machine's speed); the bounds are generous."""
    warm = many_body_input(DIMER, bsse_type=["nocp"], driver="energy")
    mpi_compute(warm)  # imports, qcengine's node probe and first-call costs are paid here
    sleep = 0.4
    inp = many_body_input(
        DIMER, program="qcmb_sleep", keywords={"sleep": {"base": sleep, "exponent": 0.0}}, bsse_type=["nocp"]
    )
    n_tasks = len(make_plan(inp).tasks)
    max_workers = 1
    c0, w0 = time.process_time(), time.perf_counter()
    res, _ = mpi_compute(inp, report_in_extras=True, max_workers=max_workers)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    assert wall >= n_tasks * sleep  # one worker ran them one after another
    shares = gather(cpu / wall, "CPU shares")
    # rank 0 coordinates (and plans); rank 1 runs the fragments in its child process and waits on
    # it; ranks 2.. are spare and only wait for the result
    assert shares[0] < 0.5, f"rank 0 (coordinator) used {shares[0]:.0%} of a core while waiting: {shares}"
    assert shares[1] < 0.5, f"rank 1 (worker) used {shares[1]:.0%} of a core while its fragments slept: {shares}"
    for r in range(1 + max_workers, size()):
        assert shares[r] < 0.25, f"spare rank {r} used {shares[r]:.0%} of a core while waiting: {shares}"
    assert res.extras["qcmb_hpc"]["workers"] == max_workers
