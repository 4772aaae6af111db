"""MPI mode with the real PySCF engine: cases of the PySCF parity matrix
(``tests/test_pyscf_parity.py``) that together hold every BSSE treatment, multilevel with a
supersystem, and energy, gradient and Hessian, give bit for bit the result of
``qcmanybody.v2.ManyBodyComputer`` (one thread everywhere) on every rank. (The whole matrix runs
on one node; ``make test-mpi`` runs this file in worlds of 2, 3 and 5.)"""

import pytest

from ranks_helpers import MPI_TEST_TIMEOUT, mpi_compute, on_root, ranks_in_step, size  # noqa: F401 (autouse fixture)
from test_parity import assert_full_parity
from test_pyscf_parity import MATRIX, matrix_input, one_thread_reference

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.pyscf, pytest.mark.timeout(MPI_TEST_TIMEOUT)]


CASES = ["cp-nocp-vmfc-gradient", "ml-ss-nocp-cp-energy", "ml-ss-cp-hessian"]


def test_cases_cover_the_matrix():
    kws = [MATRIX[c] for c in CASES]
    assert {b for kw in kws for b in kw["bsse_type"]} == {"cp", "nocp", "vmfc"}
    assert {kw["driver"] for kw in kws} == {"energy", "gradient", "hessian"}
    assert any("supersystem" in kw.get("levels", {}) for kw in kws)


@pytest.mark.parametrize("case", CASES)
def test_pyscf_parity_mpi(case):
    inp = matrix_input(case)
    res, comp = mpi_compute(inp, imports=[], threads_per_worker=1)
    ref = on_root(lambda: one_thread_reference(inp), "the QCManyBody reference")
    assert_full_parity(ref, res)
    rep = comp.run_info
    assert rep["mode"] == "mpi" and rep["workers"] == size() - 1
    assert rep["computed"] == rep["fragments"] == ref.properties.calcinfo_nmbe
