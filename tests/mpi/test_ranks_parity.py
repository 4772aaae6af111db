"""MPI mode gives bit-for-bit the result of ``qcmanybody.v2.ManyBodyComputer`` on every rank, for
the one-node parity matrix (``tests/test_parity.py``: bsse types and their combinations,
return_total_data, energy/gradient/hessian, multilevel with "supersystem", every strategy)."""

import pytest

from conftest import assert_same_result
from ranks_helpers import MPI_TEST_TIMEOUT, mpi_compute, ranks_in_step, root_reference, size  # noqa: F401 (autouse fixture)
from test_parity import MATRIX, SPECS, assert_full_parity, matrix_input  # the same matrix as the one-node tests
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(MPI_TEST_TIMEOUT)]

TRIMER = water_cluster(3)
TETRAMER = water_cluster(4)


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_parity_matrix(case):
    inp = matrix_input(case)
    res, comp = mpi_compute(inp)
    ref = root_reference(inp)
    assert_full_parity(ref, res)
    rep = comp.run_info  # every rank has the run report
    assert rep["mode"] == "mpi"
    assert rep["workers"] == size() - 1
    assert rep["computed"] == rep["fragments"] == ref.properties.calcinfo_nmbe


@pytest.mark.parametrize("driver", ["energy", "gradient"])
def test_parity_multilevel_tetramer(driver):
    """Multilevel with a supersystem two bodies above the levels (4 waters, levels 1 and 2)."""
    specs = {mc: SPECS[mc] for mc in ("hi", "lo", "ss")}
    inp = many_body_input(
        TETRAMER, driver=driver, levels={1: "hi", 2: "lo", "supersystem": "ss"}, specifications=specs, bsse_type=["nocp", "cp"]
    )
    res, _ = mpi_compute(inp)
    assert_full_parity(root_reference(inp), res)


@pytest.mark.parametrize("strategy", ["static", "dynamic", "work_stealing", "adaptive"])
@pytest.mark.parametrize("stealing", [True, False])
def test_strategies(strategy, stealing):
    inp = many_body_input(TETRAMER, bsse_type=["vmfc"], driver="energy")
    res, _ = mpi_compute(inp, load_balancing=strategy, work_stealing=stealing, prefetch=2)
    assert_same_result(root_reference(inp), res, exact=True)


def test_v1_input_gives_v1_result():
    """A v1 ManyBodyInput comes back as a v1 ManyBodyResult on every rank (converted after the
    broadcast, so every rank holds the same schema)."""
    inp = many_body_input(TRIMER, bsse_type=["cp", "nocp"], driver="gradient")
    v1 = inp.convert_v(1)
    res, _ = mpi_compute(v1)
    assert res.schema_version == 1
    # QCManyBody's v1 computer, run here (a v1 result does not pickle, so it cannot come from rank 0;
    # the test engine is deterministic, so every rank computes the same reference)
    from qcmanybody.v1 import ManyBodyComputer as V1Computer

    assert_full_parity(V1Computer.from_manybodyinput(v1), res)


def test_cluster_results_all():
    """protocols.cluster_results='all': every AtomicResult travels from its rank to every rank."""
    inp = many_body_input(TRIMER, bsse_type=["cp"], driver="energy", protocols={"cluster_results": "all"})
    res, _ = mpi_compute(inp)
    ref = root_reference(inp)
    assert_same_result(ref, res, exact=True)
    assert set(res.cluster_results) == set(ref.cluster_results) and len(ref.cluster_results) > 0
    for label, atres in ref.cluster_results.items():
        assert res.cluster_results[label].return_result == atres.return_result
