"""PySCF against NWChem, run in the same test: counterpoise-corrected interaction energies of the
water dimer and the cyclic water trimer (``examples/water3.xyz``; the dimer is its first two
waters), HF and MP2 in cc-pVDZ, to 1e-6 Eh.

Each program's defaults differ where it matters, so both are set: spherical d functions (NWChem's
harness writes Cartesian ones unless ``basis__spherical``), a tight SCF, and the same frozen core
(PySCF ``frozen_core`` — its chemcore, which counts real atoms only — and NWChem ``freeze
atomic``, which also leaves ghost atoms' cores alone: one 1s orbital per real oxygen).
"""

import json
import shutil

import pytest

from conftest import quiet
from qcmb_hpc import ParallelManyBodyComputer
from qcmb_hpc.testing.inputs import many_body_input, published_water_cluster

pytestmark = [pytest.mark.pyscf, pytest.mark.nwchem]

KEYWORDS = {
    "pyscf": {"scf_conv_tol": 1e-10, "frozen_core": True},
    "nwchem": {"basis__spherical": True, "scf__thresh": 1e-8, "mp2__freeze": "atomic"},
}


def cluster(n):
    from qcelemental.models.v2 import Molecule

    m = published_water_cluster(3)
    if n == 3:
        return m
    d = m.model_dump()
    return Molecule(
        symbols=d["symbols"][:6], geometry=d["geometry"][:6], fragments=[[0, 1, 2], [3, 4, 5]],
        fragment_charges=[0, 0], fragment_multiplicities=[1, 1], fix_com=True, fix_orientation=True,
    )


def cp_interaction_energies(program, waters):
    """(HF, MP2) CP interaction energies through the full n-body level, from one MP2 run: MP2's
    as QCManyBody assembles it, HF's from the same fragments' SCF energies — the full CP
    expansion telescopes to E(cluster) − Σ E(monomer in the cluster's basis), checked on MP2."""
    inp = many_body_input(
        cluster(waters), program=program, method="mp2", basis="cc-pvdz", keywords=KEYWORDS[program],
        bsse_type=["cp"], protocols={"cluster_results": "all"},
    )
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing", max_workers=2)).compute()
    full = list(range(1, waters + 1))
    parts = {"cluster": {}, "monomers": {}}
    for label, atomic in res.cluster_results.items():
        _, real, basis = json.loads(label)
        if basis == full and real in (full, *([[i] for i in full])):
            key = "cluster" if real == full else "monomers"
            parts[key][tuple(real)] = (atomic.properties.scf_total_energy, atomic.properties.return_energy)
    assert len(parts["cluster"]) == 1 and len(parts["monomers"]) == waters
    (scf_all, mp2_all), = parts["cluster"].values()
    ie_hf = scf_all - sum(e for e, _ in parts["monomers"].values())
    ie_mp2 = mp2_all - sum(e for _, e in parts["monomers"].values())
    assert ie_mp2 == pytest.approx(res.properties.cp_corrected_interaction_energy, abs=1e-10)
    return ie_hf, ie_mp2


@pytest.mark.parametrize("waters", [2, 3], ids=["dimer", "trimer"])
def test_cp_interaction_energies_pyscf_equal_nwchem(waters):
    assert shutil.which("nwchem"), "NWChem is not installed: apt-get install -y nwchem"
    pyscf = cp_interaction_energies("pyscf", waters)
    nwchem = cp_interaction_energies("nwchem", waters)
    for method, e_pyscf, e_nwchem in zip(("HF", "MP2"), pyscf, nwchem):
        assert abs(e_pyscf - e_nwchem) < 1e-6, (method, e_pyscf, e_nwchem)
        # and it is a hydrogen-bonded cluster: a few kcal/mol per hydrogen bond, attractive
        kcal = e_pyscf * 627.5095
        assert {2: -6.0 < kcal < -2.0, 3: -16.0 < kcal < -7.0}[waters], (method, kcal)
    assert pyscf[1] < pyscf[0]  # correlation (dispersion) binds more
