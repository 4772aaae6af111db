"""Regenerate the bundled example inputs: ``python examples/make_examples.py``.

Every example is a published water cluster (the XYZ files here say where each comes from), cut
into one fragment per water exactly as ``python -m qcmb_hpc init FILE.xyz`` does:

* ``water6.xyz`` — the (H2O)6 ring, the TIP5P global minimum of the Cambridge Cluster Database
  (James, Wales and Hernández-Rojas, Chem. Phys. Lett. 415, 302 (2005));
* ``water3.xyz`` — the cyclic (H2O)3 of Psi4's test suite (from J. Chem. Theory Comput. 11, 2126
  (2015)).
"""

import json
import os

from qcmb_hpc.testing.inputs import many_body_input, published_water_cluster

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name, inp):
    with open(os.path.join(HERE, name), "w") as fh:
        fh.write(json.dumps(json.loads(inp.serialize("json")), indent=1) + "\n")


if __name__ == "__main__":
    hexamer, trimer = published_water_cluster(6), published_water_cluster(3)
    # the default of `python -m qcmb_hpc`: PySCF (pip), DF-MP2/cc-pVDZ, CP+NoCP through 3-body
    write(
        "water6_pyscf.json",
        many_body_input(hexamer, program="pyscf", method="mp2", basis="cc-pvdz", keywords={"density_fitting": True},
                        bsse_type=["cp", "nocp"], max_nbody=3),
    )
    # s-dftd3 (pip install dftd3), ~3 ms a fragment: CP+NoCP through 3-body
    write(
        "water6_dftd3.json",
        many_body_input(hexamer, program="s-dftd3", method="b3lyp-d3bj", basis=None,
                        bsse_type=["cp", "nocp"], max_nbody=3, return_total_data=True),
    )
    # NWChem (apt-get install nwchem): water trimer SCF/STO-3G, CP+NoCP+VMFC
    write(
        "water3_nwchem.json",
        many_body_input(trimer, program="nwchem", method="scf", basis="sto-3g",
                        bsse_type=["cp", "nocp", "vmfc"], return_total_data=True),
    )
    # NWChem, 6 waters through 2-body
    write(
        "water6_nwchem.json",
        many_body_input(hexamer, program="nwchem", method="scf", basis="sto-3g",
                        bsse_type=["nocp"], max_nbody=2, return_total_data=True),
    )
