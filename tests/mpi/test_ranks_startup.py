"""Start-up under MPI: QCEngine's node description (the CPU description) is computed once per
node, not once per rank, with the same values — the CPU brand and host in every fragment's
provenance are still this node's."""

import pytest

from ranks_helpers import MPI_TEST_TIMEOUT, gather, mpi_compute, ranks_in_step, rank  # noqa: F401 (autouse fixture)
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(MPI_TEST_TIMEOUT)]


def test_node_description_once_per_node(monkeypatch):
    import qcengine.config

    import qcmb_hpc.engine

    truth = qcengine.config.get_global()  # what this rank would compute itself
    calls = []
    real = qcmb_hpc.engine.cpu_description
    monkeypatch.setattr(qcmb_hpc.engine, "cpu_description", lambda: calls.append(1) or real())
    monkeypatch.setattr(qcengine.config, "_global_values", None)  # as in a fresh process ...
    monkeypatch.setattr(qcmb_hpc.engine, "_early_cpu_info", None)  # ... that has not described its CPU
    inp = many_body_input(water_cluster(3), bsse_type=["cp"], protocols={"cluster_results": "all"})
    res, _ = mpi_compute(inp)
    counts = gather(len(calls), "CPU descriptions")
    assert sum(counts) == 1, counts  # one node here: one rank described the CPU (rank 0 needs none)
    assert counts[0] == 0
    for atomic in res.cluster_results.values():  # every fragment's provenance, from the worker ranks
        assert atomic.provenance.cpu == truth["cpu_brand"] and atomic.provenance.hostname == truth["hostname"]
