"""Real engines: s-dftd3 (pip) and NWChem (Debian ``nwchem``), each compared with sequential
``qcmanybody.v2.ManyBodyComputer`` on the same input in the same test."""

import shutil

import pytest

from conftest import assert_same_result, quiet, reference
from qcmb_hpc import ParallelManyBodyComputer
from qcmb_hpc.testing.inputs import many_body_input, water_cluster


@pytest.mark.parametrize("mode", ["sequential", "multiprocessing"])
def test_dftd3_parity(mode):
    inp = many_body_input(
        water_cluster(4), program="s-dftd3", method="b3lyp-d3bj", basis=None, bsse_type=["cp", "nocp", "vmfc"],
        return_total_data=True,
    )
    ref = reference(inp)
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode)).compute()
    assert_same_result(ref, res, exact=True)


@pytest.fixture(scope="module")
def nwchem():
    # NWChem is part of this project's test setup (.ci/run installs it): missing is a failure, not a skip
    assert shutil.which("nwchem"), "NWChem is not installed: apt-get install -y nwchem"


@pytest.mark.nwchem
@pytest.mark.parametrize(
    "name,kw",
    [
        ("cp+nocp energy", dict(bsse_type=["cp", "nocp"], driver="energy", return_total_data=True)),
        ("vmfc energy", dict(bsse_type=["vmfc"], driver="energy")),
        ("cp gradient", dict(bsse_type=["cp"], driver="gradient", max_nbody=2)),
    ],
)
def test_nwchem_trimer(nwchem, name, kw):
    inp = many_body_input(water_cluster(3), program="nwchem", method="scf", basis="sto-3g", **kw)
    ref = reference(inp)
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing", max_workers=2)).compute()
    assert_same_result(ref, res, atol=1e-10)
    assert res.extras["qcmb_hpc"]["workers"] == 2
