"""The parity matrix of this project on the real PySCF engine: every BSSE treatment (cp, nocp,
vmfc, together), multilevel with and without a supersystem, energy / gradient / Hessian —
``ParallelManyBodyComputer`` sequentially and with 2 worker processes against
``qcmanybody.v2.ManyBodyComputer`` with the same harness, every field of the result
(:func:`test_parity.assert_full_parity`). The MPI side is ``tests/mpi/test_ranks_pyscf.py``.

Small: the cyclic water trimer (``examples/water3.xyz``; its first two waters for the Hessians),
HF/STO-3G and friends. Bit for bit:
every side runs PySCF on one thread (``QCENGINE_NCORES=1`` for the reference, one thread per
worker here) — PySCF's threaded integral sums round differently with another thread count
(~1e-13, enough to change the last digits of QCManyBody's printed tables).
"""

from __future__ import annotations

import os

import pytest

from conftest import quiet, reference
from qcmb_hpc import ParallelManyBodyComputer
from qcmb_hpc.testing.inputs import many_body_input, published_water_cluster
from test_parity import assert_full_parity

pytestmark = pytest.mark.pyscf

TIGHT = {"scf_conv_tol": 1e-11, "scf_conv_tol_grad": 1e-7}
SPECS = {
    "hi": {"program": "pyscf", "method": "mp2", "basis": "6-31g", "keywords": TIGHT},
    "lo": {"program": "pyscf", "method": "hf", "basis": "sto-3g", "keywords": TIGHT},
    "ss": {"program": "pyscf", "method": "b3lyp", "basis": "sto-3g", "keywords": {**TIGHT, "grid_level": 1}},
}

#: name → ManyBodyInput keywords (levels get their specifications from SPECS, else HF/STO-3G)
MATRIX = {
    "cp-nocp-vmfc-gradient": dict(bsse_type=["cp", "nocp", "vmfc"], driver="gradient"),
    "vmfc-cp-hessian-ie": dict(bsse_type=["vmfc", "cp"], driver="hessian", return_total_data=False),
    "nocp-energy-total-max2": dict(bsse_type=["nocp"], driver="energy", return_total_data=True, max_nbody=2),
    "ml-ss-nocp-cp-energy": dict(levels={1: "hi", 2: "lo", "supersystem": "ss"}, bsse_type=["nocp", "cp"], driver="energy"),
    "ml-1-2-cp-gradient-total": dict(levels={1: "hi", 2: "lo"}, bsse_type=["cp"], driver="gradient", return_total_data=True),
    "ml-ss-cp-hessian": dict(levels={1: "lo", "supersystem": "ss"}, bsse_type=["cp"], driver="hessian"),
}
RUNS = [("sequential", None), ("multiprocessing", 2)]


def water_dimer():
    from qcelemental.models.v2 import Molecule

    d = published_water_cluster(3).model_dump()
    return Molecule(
        symbols=d["symbols"][:6], geometry=d["geometry"][:6], fragments=[[0, 1, 2], [3, 4, 5]],
        fragment_charges=[0, 0], fragment_multiplicities=[1, 1], fix_com=True, fix_orientation=True,
    )


def matrix_input(name):
    kw = dict(MATRIX[name])
    levels = kw.get("levels")
    if levels is not None:
        kw["specifications"] = {mc: SPECS[mc] for mc in levels.values()}
    mol = water_dimer() if kw["driver"] == "hessian" else published_water_cluster(3)
    return many_body_input(mol, program="pyscf", method="hf", basis="sto-3g", keywords=TIGHT, **kw)


def test_matrix_covers_every_treatment():
    kws = list(MATRIX.values())
    assert {b for kw in kws for b in kw["bsse_type"]} == {"cp", "nocp", "vmfc"}
    assert {kw["driver"] for kw in kws} == {"energy", "gradient", "hessian"}
    multilevel = [kw for kw in kws if "levels" in kw]
    assert any("supersystem" in kw["levels"] for kw in multilevel) and any("supersystem" not in kw["levels"] for kw in multilevel)
    assert {kw["driver"] for kw in multilevel} == {"energy", "gradient", "hessian"}


def one_thread_reference(inp):
    """Upstream's result with QCEngine giving PySCF one core (its default is all of them)."""
    old = os.environ.get("QCENGINE_NCORES")
    os.environ["QCENGINE_NCORES"] = "1"
    try:
        return reference(inp)
    finally:
        if old is None:
            del os.environ["QCENGINE_NCORES"]
        else:
            os.environ["QCENGINE_NCORES"] = old


@pytest.fixture(scope="module", params=sorted(MATRIX))
def case(request):
    inp = matrix_input(request.param)
    return request.param, inp, one_thread_reference(inp)


@pytest.mark.parametrize("mode,workers", RUNS, ids=[m for m, _ in RUNS])
def test_pyscf_parity(case, mode, workers):
    name, inp, ref = case
    comp = ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode, max_workers=workers, threads_per_worker=1))
    res = comp.compute()
    assert_full_parity(ref, res)
    rep = comp.run_info
    assert rep["mode"] == mode and rep["computed"] == ref.properties.calcinfo_nmbe and rep["failed"] == 0
