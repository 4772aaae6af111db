"""Regenerate the bundled example inputs: ``python examples/make_examples.py``."""

import json
import os

from qcmb_hpc.testing.inputs import many_body_input, water_cluster

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name, inp):
    with open(os.path.join(HERE, name), "w") as fh:
        fh.write(json.dumps(json.loads(inp.serialize("json")), indent=1) + "\n")


if __name__ == "__main__":
    # the default of `python -m qcmb_hpc`: s-dftd3 (pip install dftd3), 6 waters, CP+NoCP through 3-body
    write(
        "water6_dftd3.json",
        many_body_input(water_cluster(6), program="s-dftd3", method="b3lyp-d3bj", basis=None,
                        bsse_type=["cp", "nocp"], max_nbody=3, return_total_data=True),
    )
    # NWChem (apt-get install nwchem): water trimer SCF/STO-3G, CP+NoCP+VMFC
    write(
        "water3_nwchem.json",
        many_body_input(water_cluster(3), program="nwchem", method="scf", basis="sto-3g",
                        bsse_type=["cp", "nocp", "vmfc"], return_total_data=True),
    )
    # NWChem, 6 waters through 2-body (the MPI benchmark's real-engine case)
    write(
        "water6_nwchem.json",
        many_body_input(water_cluster(6), program="nwchem", method="scf", basis="sto-3g",
                        bsse_type=["nocp"], max_nbody=2, return_total_data=True),
    )
