"""What a worker needs to run fragments — :class:`RunSpec` (once per run) and, per fragment, its
molecule and ``AtomicInput`` built from QCManyBody's label — and nothing that plans: a worker (an
MPI rank, a forked process, a Parsl task) imports this, not QCManyBody's planning and assembly.

The fragment ``Molecule`` is built exactly as ``ManyBodyCore.iterate_molecules`` builds it
(the same ``get_fragment`` call; ``tests/test_plan.py`` checks both against it), the
``AtomicInput`` exactly as ``ManyBodyComputer.from_manybodyinput`` does.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["RunSpec", "worker_parent", "build_fragment_molecule", "build_atomic_input", "delabel"]


@dataclass
class RunSpec:
    """Everything a worker needs, sent once per run (broadcast in MPI mode)."""

    molecule: Any  #: the parent ``qcelemental.models.v2.Molecule``
    specifications: Dict[str, Dict[str, Any]]  #: mc → {"program": str, "specification": dict}, as qcmanybody builds
    embedding_charges: Optional[Dict[int, List[float]]] = None
    keep_atomic_results: bool = False  #: protocols.cluster_results == "all"
    imports: List[str] = field(default_factory=list)
    threads_per_worker: int = 1
    memory_per_worker: Optional[int] = None  #: bytes
    scratch_root: Optional[str] = None  #: a directory per worker is made under it
    keep_scratch: bool = False
    timeout: Optional[float] = None  #: seconds per fragment
    isolate: bool = True  #: run fragments in a child process
    log_level: str = "INFO"

    def task_config(self, scratch_directory: Optional[str]) -> Dict[str, Any]:
        """qcengine ``task_config`` for one worker: its cores, its memory (GiB), its scratch."""
        cfg: Dict[str, Any] = {"ncores": int(self.threads_per_worker), "retries": 0}
        if self.memory_per_worker:
            cfg["memory"] = round(self.memory_per_worker / 1024**3, 3)
        if scratch_directory:
            cfg["scratch_directory"] = scratch_directory
        return cfg


def worker_parent(molecule: Any) -> Any:
    """The parent molecule as shipped to workers: identical, with its masses and real flags stored.
    (``Molecule.masses`` recomputes every mass from the periodic table on each access when they are
    not stored, and ``get_fragment`` reads it once per atom: O(parent atoms × fragment atoms) per
    fragment, most of the time it takes to build one. The fragments come out the same.)"""
    return molecule.model_copy(update={"masses_": np.asarray(molecule.masses), "real_": np.asarray(molecule.real)})


def build_fragment_molecule(parent: Any, real: Tuple[int, ...], basis: Tuple[int, ...], embedding_charges=None):
    """The fragment molecule, made exactly as ``ManyBodyCore.iterate_molecules`` makes it."""
    ghost_atoms = list(set(basis) - set(real))
    real_0 = [x - 1 for x in real]
    ghost_0 = [x - 1 for x in ghost_atoms]
    mol = parent.get_fragment(real_0, ghost_0, orient=False, group_fragments=False)
    updates: Dict[str, Any] = {"fix_com": True, "fix_orientation": True}
    if parent.fix_symmetry == "c1":
        updates["fix_symmetry"] = "c1"
    mol = mol.model_copy(update=updates)
    if embedding_charges:
        nfragments = len(parent.fragments)
        embedding_frags = list(set(range(1, nfragments + 1)) - set(basis))
        charges = []
        for ifr in embedding_frags:
            positions = parent.get_fragment(ifr - 1).geometry.tolist()
            charges.extend([[chg, i] for i, chg in zip(positions, embedding_charges[ifr])])
        mol.extras["embedding_charges"] = charges
    return mol


def build_atomic_input(spec: RunSpec, label: str):
    """``(program, AtomicInput)`` for one fragment, as qcmanybody builds it."""
    from qcelemental.models.v2 import AtomicInput

    mc, real, basis = delabel(label)
    mol = build_fragment_molecule(spec.molecule, tuple(real), tuple(basis), spec.embedding_charges)
    chem = spec.specifications[mc]
    inp = AtomicInput(molecule=mol, specification=copy.deepcopy(chem["specification"]))
    if mol.extras.get("embedding_charges"):
        if chem["program"] == "psi4":
            fkw = inp.specification.keywords.get("function_kwargs", {})
            fkw.update({"external_potentials": mol.extras["embedding_charges"]})
            inp.specification.keywords["function_kwargs"] = fkw
        else:
            raise ValueError(f"Don't know how to handle external charges in {chem['program']}")
    return chem["program"], inp


def delabel(label: str) -> Tuple[str, List[int], List[int]]:
    """QCManyBody's opaque label ``json.dumps([mc, real, basis])`` → its parts, as
    ``qcmanybody.utils.delabeler`` reads it (without importing QCManyBody on a worker)."""
    mc, real, basis = json.loads(label)
    return str(mc), real, basis
