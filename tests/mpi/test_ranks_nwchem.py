"""A real engine inside MPI ranks: NWChem (Debian's, an Open MPI program) started from MPICH ranks.
Without the launcher's variables cleaned from its environment it dies in orte_init and the job
hangs; with them cleaned it gives exactly QCManyBody's numbers."""

import os
import shutil

import pytest

from conftest import assert_same_result
from qcmb_hpc.errors import FragmentExecutionError
from ranks_helpers import MPI_TEST_TIMEOUT, mpi_compute, ranks_in_step, root_reference, size  # noqa: F401 (autouse fixture)
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.nwchem, pytest.mark.timeout(MPI_TEST_TIMEOUT)]

_REFERENCE = {}  # the sequential NWChem reference, computed once per session (on rank 0)


def nwchem_reference(inp):
    if "ref" not in _REFERENCE:
        _REFERENCE["ref"] = root_reference(inp, clean_env=True)
    return _REFERENCE["ref"]


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "inline"])
def test_nwchem_in_ranks(isolate):
    if shutil.which("nwchem") is None:
        pytest.fail("NWChem is not installed (Debian package nwchem): this MPI test needs it")
    assert any(k.startswith("PMI_") for k in os.environ), "not started by an MPI launcher"
    inp = many_body_input(water_cluster(2), program="nwchem", method="hf", basis="sto-3g", bsse_type=["cp"], driver="energy")
    # A hang must end as a failure well before the test's timeout: isolated fragments get a
    # timeout (inline ones cannot be cut). One retry: Debian's Open MPI singleton now and then
    # fails to start its local daemon when several NWChems start at once on a loaded machine
    # ("ompi_rte_init failed: Unable to start a daemon on the local node"); a retry is what a run
    # does about that. Broken environment cleaning fails every attempt, so it still fails here.
    try:
        res, comp = mpi_compute(
            inp, imports=[], isolate_fragments=isolate, timeout_per_fragment=60 if isolate else None, max_retries=1
        )
    except FragmentExecutionError as exc:  # show NWChem's own words, not just the first line
        pytest.fail(f"{exc}\n{exc.details()}")
    ref = nwchem_reference(inp)
    assert_same_result(ref, res, atol=1e-10)
    rep = comp.run_info
    assert rep["mode"] == "mpi" and rep["workers"] == size() - 1
    assert rep["computed"] == rep["fragments"] == ref.properties.calcinfo_nmbe
    # the launcher's variables are back in the rank's environment after the run
    assert any(k.startswith("PMI_") for k in os.environ)
