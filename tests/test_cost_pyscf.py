"""The cost model with PySCF: the method names PySCF takes have their scaling exponents, the basis
functions it counts are PySCF's own, and it calibrates on PySCF's measured times like any
program's (the cost history holds them under ``pyscf``)."""

import json

import pytest

from conftest import quiet
from qcmb_hpc import ParallelManyBodyComputer
from qcmb_hpc.cost import DEFAULT_EXPONENT, basis_functions, method_exponent
from qcmb_hpc.testing.inputs import many_body_input, published_water_cluster

pytestmark = pytest.mark.pyscf


@pytest.mark.parametrize(
    "methods,exponent",
    [
        (["hf", "scf", "rhf", "uhf", "rohf"], 3.5),
        (["b3lyp", "pbe0", "wb97x", "m06-2x", "tpssh", "r2scan", "svwn", "b97m-v", "hse06", "mn15", "pw91", "b88,lyp", "camb3lyp"], 3.5),
        (["mp2", "b2plyp"], 5.0),
        (["ccsd"], 6.0),
        (["ccsd(t)"], 7.0),
    ],
)
def test_pyscf_method_names_have_their_exponent(methods, exponent):
    assert exponent != DEFAULT_EXPONENT
    for m in methods:
        assert method_exponent(m, "pyscf") == exponent, m


@pytest.mark.parametrize("basis", ["cc-pvdz", "aug-cc-pvdz", "def2-svp", "cc-pvtz"])
def test_basis_functions_are_pyscfs(basis):
    from pyscf import gto

    mol = gto.M(atom="O 0 0 0; H 0 0 1.8; H 0 1.8 0", unit="Bohr", basis=basis, verbose=0)
    assert basis_functions([8, 1, 1], basis) == mol.nao


def test_calibrates_on_pyscf_timings(tmp_path):
    hist = tmp_path / "cost.json"
    inp = many_body_input(published_water_cluster(3), program="pyscf", method="hf", basis="sto-3g", bsse_type=["cp", "nocp"])
    comp = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing", max_workers=2, cost_history=str(hist)))
    comp.compute()
    doc = json.loads(hist.read_text())
    samples = doc["samples"]["pyscf|hf|energy"]
    assert len(samples) == comp.run_info["computed"] and all(t > 0 for _, t in samples)
    assert "pyscf|hf|energy" in doc["fits"]
