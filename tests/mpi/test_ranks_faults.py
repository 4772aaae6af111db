"""MPI mode with injected faults (the reliability issue): fragments that raise, return a failed
result, hang past the timeout or kill their own process are retried; the result equals the
fault-free one (QCManyBody on the same input without faults), no fragment is lost and none is
counted twice, and every MPI rank survives."""

import collections
import json
import os

import pytest

from ranks_helpers import MPI_TEST_TIMEOUT, mpi_compute, ranks_in_step, root_reference, shared_dir, size  # noqa: F401
from qcmb_hpc.plan import make_plan
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(MPI_TEST_TIMEOUT)]


def fault_input(fault_dir, **fault):
    kw = {"fault_dir": fault_dir, "p": 0.6, "seed": 3, "faulty_attempts": 1, "hang_seconds": 120, **fault}
    return many_body_input(water_cluster(4), program="qcmb_fault", keywords=kw, bsse_type=["cp", "nocp"], driver="gradient")


def test_faults_under_mpi(shared_dir):
    faults = os.path.join(shared_dir, "faults")
    clean = os.path.join(shared_dir, "clean")
    journal = os.path.join(shared_dir, "run.jsonl")
    from ranks_helpers import rank, sync

    if rank() == 0:
        os.makedirs(faults)
        os.makedirs(clean)
    sync("fault dirs")
    inp = fault_input(faults)
    res, _ = mpi_compute(inp, timeout_per_fragment=1.5, max_retries=2, checkpoint=journal, report_in_extras=True)
    from conftest import assert_same_result

    assert_same_result(root_reference(fault_input(clean, p=0.0)), res, exact=True)
    kinds = collections.Counter(open(os.path.join(faults, f)).read() for f in os.listdir(faults))
    for kind in ("raise", "fail", "hang", "kill", "ok"):
        assert kinds[kind] > 0, kinds
    n = len(make_plan(inp).tasks)
    labels = [json.loads(ln)["label"] for ln in open(journal).read().splitlines()[1:]]
    assert len(labels) == n == len(set(labels))
    rep = res.extras["qcmb_hpc"]
    assert rep["computed"] == n and rep["failed"] == 0 and rep["workers"] == size() - 1
    assert not rep["lost_workers"]  # the crashes took only the fragments' own processes
