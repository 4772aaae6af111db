"""Inputs for tests, benchmarks and the bundled examples: water clusters and ManyBodyInputs.

* :func:`published_water_cluster` — real structures from the literature (``examples/water3.xyz``,
  the cyclic trimer; ``examples/water6.xyz``, the ring hexamer; the source is the files' comment
  line): for anything that claims to be chemistry.
* :func:`water_cluster` — *synthetic* test inputs: rigid waters on a grid, randomly turned. Their
  contacts are not hydrogen bonds (H···H as close as 1.2 Å) and their interaction energies are
  not physical; they exist to make any number of fragments for tests and scheduling benchmarks.
"""

from __future__ import annotations

import math
from typing import Any, List

import numpy as np

from ..init_input import many_body_input  # noqa: F401 (the builder of every input, re-exported)

__all__ = ["water_cluster", "published_water_cluster", "many_body_input"]

#: waters → the bundled XYZ file of a published structure (see its comment line)
PUBLISHED_WATER_CLUSTERS = {3: "water3.xyz", 6: "water6.xyz"}

# one water (Å): O at the origin, H's in the xy plane
_WATER = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    ca, sa, cb, sb, cc, sc = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(c), math.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


def published_water_cluster(n: int) -> Any:
    """The published (H2O)``n`` structure bundled with qcmb_hpc (n = 3 or 6), one fragment per
    water (neutral singlets), as a v2 ``Molecule`` — the same molecule ``python -m qcmb_hpc init``
    makes of the XYZ file."""
    from importlib import resources

    from ..init_input import build_molecule, fragments_by_connectivity, read_xyz

    if n not in PUBLISHED_WATER_CLUSTERS:
        raise ValueError(f"no published (H2O){n} bundled; there are {sorted(PUBLISHED_WATER_CLUSTERS)}")
    path = resources.files("qcmb_hpc.examples").joinpath(PUBLISHED_WATER_CLUSTERS[n])
    mol = read_xyz(str(path))
    frags = fragments_by_connectivity(mol)
    return build_molecule(mol, frags, [0.0] * len(frags), [1] * len(frags))


def water_cluster(n: int, spacing: float = 2.9, seed: int = 7) -> Any:
    """A *synthetic* test input (not a physical structure): ``n`` waters on a compact 3-D grid (``spacing`` Å between oxygens), each turned by a seeded
    random rotation; one fragment per water. Returns a v2 ``Molecule``."""
    from qcelemental.models.v2 import Molecule

    rng = np.random.default_rng(seed)
    side = max(1, math.ceil(n ** (1 / 3)))
    sites = [(i, j, k) for k in range(side) for j in range(side) for i in range(side)][:n]
    symbols: List[str] = []
    geom: List[np.ndarray] = []
    fragments = []
    for idx, (i, j, k) in enumerate(sites):
        rot = _rotation(*rng.uniform(0, 2 * math.pi, size=3))
        pos = _WATER @ rot.T + spacing * np.array([i, j, k], dtype=float)
        symbols += ["O", "H", "H"]
        geom.append(pos)
        fragments.append([3 * idx, 3 * idx + 1, 3 * idx + 2])
    return Molecule(
        symbols=symbols,
        geometry=np.concatenate(geom) / 0.52917721067,  # Å → bohr
        fragments=fragments,
        fragment_charges=[0.0] * len(fragments),  # given, qcelemental need not search for them
        fragment_multiplicities=[1] * len(fragments),  # (that search takes minutes past ~20 waters)
        molecular_charge=0,
        molecular_multiplicity=1,
        fix_com=True,
        fix_orientation=True,
    )
