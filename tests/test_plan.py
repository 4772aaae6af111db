"""The plan is QCManyBody's: same labels in the same order, and worker-built fragment molecules
identical to those of ``ManyBodyCore.iterate_molecules()``."""

import pytest

from qcmb_hpc.plan import build_atomic_input, build_fragment_molecule, make_plan, worker_parent
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

INPUTS = {
    "cp": dict(bsse_type=["cp"]),
    "vmfc-nocp": dict(bsse_type=["vmfc", "nocp"], driver="gradient"),
    "multilevel": dict(
        levels={1: "a", 2: "b", "supersystem": "c"},
        specifications={
            "a": {"program": "qcmb_test", "method": "mp2", "basis": "cc-pvdz"},
            "b": {"program": "qcmb_test", "method": "hf", "basis": "sto-3g"},
            "c": {"program": "qcmb_test", "method": "pbe", "basis": "6-31g"},
        },
        bsse_type=["nocp", "cp"],
    ),
}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_labels_and_molecules_match_iterate_molecules(name):
    inp = many_body_input(water_cluster(4), **INPUTS[name])
    plan = make_plan(inp)
    upstream = list(plan.core.iterate_molecules())
    assert [t.label for t in plan.tasks] == [label for _, label, _ in upstream]
    assert [t.mc for t in plan.tasks] == [mc for mc, _, _ in upstream]
    assert [t.id for t in plan.tasks] == list(range(len(upstream)))
    shipped = worker_parent(plan.core.molecule)
    assert shipped.model_dump() == plan.core.molecule.model_dump() or shipped == plan.core.molecule
    for task, (_, _, mol) in zip(plan.tasks, upstream):
        for parent in (plan.core.molecule, shipped):
            built = build_fragment_molecule(parent, task.real, task.basis)
            assert built == mol, task.label
            assert built.serialize("json") == mol.serialize("json"), task.label
        assert task.natoms_real + task.natoms_ghost == len(mol.symbols)
        assert task.nbody == len(task.real)


def test_atomic_input_carries_spec_and_driver():
    inp = many_body_input(water_cluster(3), driver="gradient", keywords={"x": 1})
    plan = make_plan(inp)
    from qcmb_hpc.plan import RunSpec

    spec = RunSpec(molecule=plan.core.molecule, specifications=plan.specifications)
    program, ai = build_atomic_input(spec, plan.tasks[-1].label)
    assert program == "qcmb_test"
    assert ai.specification.driver == "gradient" and ai.specification.keywords == {"x": 1}


def _fp(inp):
    """The fingerprint as a run computes it (of the input as QCManyBody validated it)."""
    return make_plan(inp).fingerprint


def _with_molecule(mol, **update):
    from qcelemental.models.v2 import Molecule

    data = mol.model_dump()
    data.update(update)
    return Molecule(**data)


def _variants():
    """name → a ManyBodyInput that differs from the base in one thing that changes the numbers."""
    import numpy as np

    mol = water_cluster(3)
    geom = np.array(mol.geometry, dtype=float)
    moved = geom.copy()
    moved[4, 1] += 1e-9  # one coordinate of one atom, by a billionth of a bohr
    specs = {
        "a": {"program": "qcmb_test", "method": "hf", "basis": "sto-3g"},
        "b": {"program": "qcmb_test", "method": "mp2", "basis": "sto-3g"},
    }
    return {
        "geometry": many_body_input(_with_molecule(mol, geometry=moved)),
        "another cluster": many_body_input(water_cluster(3, seed=8)),
        "symbols": many_body_input(_with_molecule(mol, symbols=["O", "H", "H"] * 2 + ["S", "H", "H"])),
        "ghost atom": many_body_input(_with_molecule(mol, real=[True] * 8 + [False])),
        "fragmentation": many_body_input(_with_molecule(mol, fragments=[[0, 1, 2], [3, 4, 5, 6, 7, 8]],
                                                        fragment_charges=[0.0, 0.0], fragment_multiplicities=[1, 1])),
        "fragment charges": many_body_input(_with_molecule(mol, fragment_charges=[1.0, -1.0, 0.0], fragment_multiplicities=[2, 2, 1])),
        "program": many_body_input(mol, program="qcmb_sleep"),
        "method": many_body_input(mol, method="mp2"),
        "basis": many_body_input(mol, basis="cc-pvdz"),
        "no basis": many_body_input(mol, basis=None),
        "keywords": many_body_input(mol, keywords={"scf_type": "df"}),
        "keyword value": many_body_input(mol, keywords={"scf_type": "pk"}),
        "driver gradient": many_body_input(mol, driver="gradient"),
        "driver hessian": many_body_input(mol, driver="hessian"),
        "bsse_type": many_body_input(mol, bsse_type=["nocp"]),
        "bsse_type added": many_body_input(mol, bsse_type=["cp", "vmfc"]),
        "max_nbody": many_body_input(mol, max_nbody=2),
        "return_total_data": many_body_input(mol, return_total_data=True),
        "supersystem_ie_only": many_body_input(mol, supersystem_ie_only=True),
        "levels": many_body_input(mol, levels={1: "a", 3: "b"}, specifications=specs),
        "levels swapped": many_body_input(mol, levels={1: "b", 3: "a"}, specifications=specs),
        "cluster_results protocol": many_body_input(mol, protocols={"cluster_results": "all"}),
    }


def test_fingerprint_changes_with_what_changes_numbers():
    base_inp = many_body_input(water_cluster(3), keywords={})
    base = _fp(base_inp)
    assert base == _fp(many_body_input(water_cluster(3)))  # deterministic
    seen = {base: "base"}
    for name, inp in _variants().items():
        fp = _fp(inp)
        assert fp != base, f"the fingerprint does not change with {name}"
        assert fp not in seen, f"{name} gives the fingerprint of {seen[fp]}"
        seen[fp] = name


def test_fingerprint_ignores_what_does_not_change_numbers():
    """Parallel settings are not part of it (it is a function of the input alone); nor are
    identifiers, provenance, extras, the order of keywords, or the way the input arrives (model,
    dict, JSON text as the command line reads it, schema v1)."""
    import json

    from qcmanybody.models.v2 import ManyBodyInput

    mol = water_cluster(3)
    inp = many_body_input(mol, keywords={"a": 1, "b": {"c": 2.5, "d": [1, 2]}}, driver="gradient")
    base = _fp(inp)
    same = {
        "keyword order": many_body_input(mol, keywords={"b": {"d": [1, 2], "c": 2.5}, "a": 1}, driver="gradient"),
        "dict": ManyBodyInput(**inp.model_dump()),
        "JSON text": ManyBodyInput(**json.loads(inp.serialize("json"))),
        "molecule id/provenance/extras": inp.model_copy(
            update={"molecule": _with_molecule(mol, id="w3", extras={"note": 1},
                                               provenance={"creator": "me", "version": "9", "routine": "hand"})}
        ),
        "input id and provenance": ManyBodyInput(
            **{**inp.model_dump(), "id": "job-42", "provenance": {"creator": "me", "version": "1", "routine": "x"}}
        ),
    }
    for name, other in same.items():
        assert _fp(other) == base, f"{name} changes the fingerprint"
    from qcmb_hpc.computer import ParallelManyBodyComputer

    for cfg in ({"mode": "sequential"}, {"mode": "multiprocessing", "max_workers": 7, "load_balancing": "static",
                "work_stealing": False, "timeout_per_fragment": 5, "max_retries": 0, "threads_per_worker": 2,
                "memory_limit_per_worker": "1GiB", "isolate_fragments": False, "checkpoint": "/tmp/x.jsonl"}):
        assert ParallelManyBodyComputer(inp, parallel_config=cfg).build_plan().fingerprint == base, cfg
    # a v1 input is converted to v2 first: the same fingerprint, so v1 and v2 runs resume each other
    assert ParallelManyBodyComputer(inp.convert_v(1)).build_plan().fingerprint == base


def test_journal_from_other_parallel_settings_resumes(tmp_path):
    """End to end: a journal written in one mode with one layout is taken up in full by a run in
    another mode with other workers, strategy and limits (nothing recomputed, same numbers)."""
    import sys

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from conftest import assert_same_result, quiet, reference

    from qcmb_hpc.computer import ParallelManyBodyComputer

    inp = many_body_input(water_cluster(3), bsse_type=["cp", "nocp"], driver="gradient")
    ck = str(tmp_path / "j.jsonl")
    first = ParallelManyBodyComputer(inp, parallel_config=quiet(report_in_extras=True, mode="sequential", checkpoint=ck)).compute()
    cfg = quiet(report_in_extras=True, mode="multiprocessing", max_workers=2, load_balancing="static", work_stealing=False,
                timeout_per_fragment=60, max_retries=0, isolate_fragments=False, checkpoint=ck)
    second = ParallelManyBodyComputer(inp, parallel_config=cfg).compute()
    n = len(make_plan(inp).tasks)
    assert second.extras["qcmb_hpc"]["restored"] == n and second.extras["qcmb_hpc"]["computed"] == 0
    assert_same_result(first, second, exact=True)
    assert_same_result(reference(inp), second, exact=True)
