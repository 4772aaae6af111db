"""What the coordinator keeps alive while QCManyBody assembles the result: at 680k fragments the
result object alone is ~1.2 GiB, so the run's own state must be gone by then, and each
fragment's properties must not live twice (as analyze's dict and as the result's model)."""

from __future__ import annotations

import weakref

import qcmanybody.core
from qcmanybody.models.v2 import ManyBodyResult

import qcmb_hpc.coordinator
import qcmb_hpc.progress
from qcmb_hpc import ParallelManyBodyComputer
from qcmb_hpc.computer import _CLUSTER_PROPERTIES, dict_value_model, validate_in_place
from qcmb_hpc.testing.inputs import many_body_input

from conftest import assert_same_result, quiet, reference


def test_the_run_state_is_gone_when_assembly_starts(trimer, monkeypatch, tmp_path):
    """The coordinator (its task tables, the scheduler) and the progress tracker refer to each
    other; the collector is paused through assembly, so only the references being dropped frees
    them — checked at QCManyBody's analyze, with a journal and progress (the defaults' state)."""
    made = []
    for cls in (qcmb_hpc.coordinator.Coordinator, qcmb_hpc.progress.ProgressTracker):
        init = cls.__init__

        def tracked(self, *a, _init=init, **k):
            _init(self, *a, **k)
            made.append(weakref.ref(self))

        monkeypatch.setattr(cls, "__init__", tracked)
    alive_at_analyze = []
    analyze = qcmanybody.core.ManyBodyCore.analyze

    def watched(self, *a, **k):
        alive_at_analyze.extend(type(r()).__name__ for r in made if r() is not None)
        return analyze(self, *a, **k)

    monkeypatch.setattr(qcmanybody.core.ManyBodyCore, "analyze", watched)
    inp = many_body_input(trimer, driver="gradient", bsse_type=["cp", "nocp"])
    config = quiet(mode="multiprocessing", max_workers=2, checkpoint=str(tmp_path / "run.jsonl"))
    res = ParallelManyBodyComputer(inp, parallel_config=config).compute()
    assert len(made) == 2  # (one coordinator, one tracker: what was watched ran)
    assert alive_at_analyze == []
    assert_same_result(reference(inp), res)


def test_cluster_properties_validated_in_place_are_what_pydantic_makes_and_are_kept(trimer):
    """The models made one by one equal pydantic's own validation of the dicts, and the result
    object takes them as they are (no second copy)."""
    ref = reference(many_body_input(trimer, bsse_type=["cp", "nocp", "vmfc"]))
    assert _CLUSTER_PROPERTIES is dict_value_model(ManyBodyResult, "cluster_properties") is not None
    dicts = {k: v.model_dump(exclude_unset=True) for k, v in ref.cluster_properties.items()}
    models = dict(dicts)
    validate_in_place(models, _CLUSTER_PROPERTIES)
    assert all(isinstance(m, _CLUSTER_PROPERTIES) for m in models.values()) and list(models) == list(dicts)
    fields = {k: getattr(ref, k) for k in ManyBodyResult.model_fields}
    from_dicts = ManyBodyResult(**{**fields, "cluster_properties": dicts})
    from_models = ManyBodyResult(**{**fields, "cluster_properties": models})
    assert from_models == from_dicts == ref
    assert all(from_models.cluster_properties[k] is m for k, m in models.items())
    assert {k: m.model_fields_set for k, m in from_models.cluster_properties.items()} == {
        k: m.model_fields_set for k, m in from_dicts.cluster_properties.items()
    }


def _bits(x):
    import struct

    return struct.pack("<d", x) if isinstance(x, float) else x


def test_fragment_properties_give_the_same_dicts_in_the_same_order():
    """Numbers-only properties kept as columns come back bit for bit (NaN, -0.0, inf), any other
    (arrays, other keys, ints) as it was; order, length and lookup are a dict's."""
    import numpy as np

    from qcmb_hpc.computer import FragmentProperties

    given = {
        "a": {"energy": -76.1},
        "b": {"energy": float("nan")},
        "c": {"energy": -0.0},
        "d": {"energy": -76.1, "gradient": np.arange(6.0).reshape(2, 3)},
        "e": {"energy": float("inf")},
        "f": {"dipole": 1.5},
        "g": {"energy": 3},
    }
    fp = FragmentProperties(list(given), (dict(v) for v in given.values()))
    assert list(fp) == list(given) and len(fp) == len(given)
    for got, (label, want) in zip(fp.values(), given.items()):
        assert list(got) == list(want) and fp[label].keys() == want.keys()
        for k in want:
            if isinstance(want[k], np.ndarray):
                assert np.array_equal(got[k], want[k]) and fp[label][k] is got[k]
            else:
                assert type(got[k]) is type(want[k]) and _bits(got[k]) == _bits(want[k]), (label, k)
    assert [k for k, _ in fp.items()] == list(given)
    assert dict(FragmentProperties([], [])) == {}
    # every fragment alike: whole columns (one key, several keys, none)
    for same in ({"energy": -0.0}, {"energy": -1.5, "extra": float("nan")}, {}):
        n = {k: {key: v * (i + 1) for key, v in same.items()} for i, k in enumerate("xyz")}
        fp = FragmentProperties(list(n), (dict(v) for v in n.values()))
        assert fp._other == {} or not same
        assert [(k, [_bits(x) for x in v.values()], list(v)) for k, v in fp.items()] == [
            (k, [_bits(x) for x in v.values()], list(v)) for k, v in n.items()
        ]
        assert [list(v) for v in fp.values()] == [list(v) for v in n.values()] and fp["y"].keys() == n["y"].keys()
    import pytest

    with pytest.raises(ValueError, match="labels"):
        FragmentProperties(["a", "b"], [{"energy": 1.0}])


def test_analyze_reads_fragment_properties_as_it_reads_the_dict(trimer):
    """QCManyBody's analyze gives the same output from the columns as from the dicts, bit for bit
    (an energy run, all columns; a gradient run, none)."""
    import numpy as np

    from qcmb_hpc.computer import FragmentProperties
    from qcmb_hpc.plan import make_plan

    for driver in ("energy", "gradient"):
        inp = many_body_input(trimer, driver=driver, bsse_type=["cp", "nocp", "vmfc"])
        ref = reference(inp)
        props = {lbl: {"energy": p.return_energy, **({"gradient": np.asarray(p.return_gradient)} if driver == "gradient" else {})}
                 for lbl, p in ref.cluster_properties.items()}
        plan = make_plan(inp)
        want = plan.core.analyze(props)
        got = make_plan(inp).core.analyze(FragmentProperties(list(props), (dict(v) for v in props.values())))
        assert list(got) == list(want) and got["stdout"] == want["stdout"]
        assert list(got["component_properties"]) == list(want["component_properties"])
        for key in ("ret_energy", "energy_body_dict", "results"):
            assert repr(got[key]) == repr(want[key]), (driver, key)
