"""The plan is QCManyBody's: same labels in the same order, and worker-built fragment molecules
identical to those of ``ManyBodyCore.iterate_molecules()``."""

import pytest

from qcmb_hpc.plan import build_atomic_input, build_fragment_molecule, build_tasks, input_fingerprint, make_plan, worker_parent
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


def test_fingerprint_changes_with_what_changes_numbers():
    mol = water_cluster(3)
    base = input_fingerprint(many_body_input(mol))
    assert base == input_fingerprint(many_body_input(mol))
    assert base != input_fingerprint(many_body_input(mol, method="mp2"))
    assert base != input_fingerprint(many_body_input(mol, bsse_type=["nocp"]))
    assert base != input_fingerprint(many_body_input(water_cluster(3, seed=8)))
    assert base != input_fingerprint(many_body_input(mol, keywords={"scf_type": "df"}))
    assert base != input_fingerprint(many_body_input(mol, driver="gradient"))
