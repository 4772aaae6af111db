"""Inputs for tests, benchmarks and the bundled examples: water clusters and ManyBodyInputs."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["water_cluster", "many_body_input"]

# one water (Å): O at the origin, H's in the xy plane
_WATER = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    ca, sa, cb, sb, cc, sc = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(c), math.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


def water_cluster(n: int, spacing: float = 2.9, seed: int = 7) -> Any:
    """``n`` waters on a compact 3-D grid (``spacing`` Å between oxygens), each turned by a seeded
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


def many_body_input(
    molecule: Any,
    program: str = "qcmb_test",
    method: str = "hf",
    basis: Optional[str] = "sto-3g",
    driver: str = "energy",
    bsse_type: Sequence[str] = ("cp",),
    levels: Optional[Dict[Any, str]] = None,
    specifications: Optional[Dict[str, Dict[str, Any]]] = None,
    keywords: Optional[Dict[str, Any]] = None,
    protocols: Optional[Dict[str, Any]] = None,
    **mb_keywords: Any,
) -> Any:
    """A v2 ``ManyBodyInput``. With ``levels`` pass ``specifications`` (mc → {program, method, basis,
    keywords}); otherwise one "(auto)" specification from program/method/basis."""
    from qcmanybody.models.v2 import ManyBodyInput

    if specifications is None:
        specifications = {"(auto)": {"program": program, "method": method, "basis": basis, "keywords": keywords or {}}}
    specs = {
        mc: {
            "program": s["program"],
            "model": {"method": s["method"], "basis": s.get("basis")},
            "keywords": s.get("keywords", {}),
            "driver": driver,
        }
        for mc, s in specifications.items()
    }
    kw: Dict[str, Any] = {"bsse_type": list(bsse_type), **mb_keywords}
    if levels is not None:
        kw["levels"] = levels
    spec: Dict[str, Any] = {"driver": driver, "keywords": kw, "specification": specs}
    if protocols:
        spec["protocols"] = protocols
    return ManyBodyInput(molecule=molecule, specification=spec)
