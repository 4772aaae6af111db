"""Identical results to sequential QCManyBody, in sequential and multiprocessing mode, for 1, 2 and
more workers than fragments (deterministic test engine).

The matrix (issue 2): bsse_type cp, nocp, vmfc and combinations; multilevel ``levels`` with and
without "supersystem"; ``return_total_data`` true and false; drivers energy, gradient and hessian.
Each input is computed once by ``qcmanybody.v2.ManyBodyComputer`` (a module-scoped fixture) and then
by ``ParallelManyBodyComputer`` in every mode × worker count; the *whole* result is compared
(:func:`assert_full_parity`: every field of the model dump, recursively, arrays to 1e-10 — in fact
bit for bit — and nothing may differ: the run report is not in ``extras`` unless asked for).

"More workers than fragments" is asked for through the public API (``max_workers`` = fragments + 3),
which the resource layout caps to the fragment count; :func:`test_idle_workers_beyond_fragments`
lifts that cap so that workers which never receive a task really run alongside the busy ones.
"""

from __future__ import annotations

import pytest

from conftest import assert_same_result, quiet, reference
from qcmb_hpc import ParallelConfig, ParallelManyBodyComputer
from qcmb_hpc.testing.suite import ParallelTestSuite
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

SPECS = {
    "hi": {"program": "qcmb_test", "method": "mp2", "basis": "cc-pvdz"},
    "lo": {"program": "qcmb_test", "method": "hf", "basis": "sto-3g"},
    "ss": {"program": "qcmb_test", "method": "pbe", "basis": "6-31g"},
}

# name → (waters, ManyBodyInput keywords); levels get their specifications from SPECS
MATRIX = {
    # one model chemistry (trimer)
    "cp-energy-ie": (3, dict(bsse_type=["cp"], driver="energy", return_total_data=False)),
    "cp-energy-total": (3, dict(bsse_type=["cp"], driver="energy", return_total_data=True)),
    "nocp-energy-ie": (3, dict(bsse_type=["nocp"], driver="energy", return_total_data=False)),
    "nocp-gradient-total": (3, dict(bsse_type=["nocp"], driver="gradient", return_total_data=True)),
    "vmfc-energy-total": (3, dict(bsse_type=["vmfc"], driver="energy", return_total_data=True)),
    "vmfc-gradient-ie": (3, dict(bsse_type=["vmfc"], driver="gradient", return_total_data=False)),
    "cp-nocp-vmfc-gradient-default": (3, dict(bsse_type=["cp", "nocp", "vmfc"], driver="gradient")),
    "nocp-cp-gradient-ie": (3, dict(bsse_type=["nocp", "cp"], driver="gradient", return_total_data=False)),
    "cp-hessian-total": (3, dict(bsse_type=["cp"], driver="hessian", return_total_data=True)),
    "vmfc-cp-hessian-ie": (3, dict(bsse_type=["vmfc", "cp"], driver="hessian", return_total_data=False)),
    "nocp-vmfc-hessian-total": (3, dict(bsse_type=["nocp", "vmfc"], driver="hessian", return_total_data=True)),
    "cp-nocp-max2-gradient": (3, dict(bsse_type=["cp", "nocp"], driver="gradient", max_nbody=2)),
    "cp-supersystem-ie-only": (3, dict(bsse_type=["cp"], driver="energy", supersystem_ie_only=True)),
    # multilevel (trimer: few fragments, so "more workers than fragments" stays cheap; the
    # tetramer, where the supersystem lies well above the levels, is test_parity_multilevel_tetramer)
    "ml-ss-nocp-energy-ie": (
        3,
        dict(levels={1: "hi", 2: "lo", "supersystem": "ss"}, bsse_type=["nocp"], driver="energy", return_total_data=False),
    ),
    "ml-ss-cp-gradient-total": (
        3,
        dict(levels={1: "hi", 2: "lo", "supersystem": "ss"}, bsse_type=["cp"], driver="gradient", return_total_data=True),
    ),
    "ml-ss-nocp-cp-hessian-total": (
        3,
        dict(levels={1: "hi", "supersystem": "ss"}, bsse_type=["nocp", "cp"], driver="hessian", return_total_data=True),
    ),
    "ml-2-3-cp-energy-total": (
        3,
        dict(levels={2: "hi", 3: "lo"}, bsse_type=["cp"], driver="energy", return_total_data=True),
    ),
    "ml-2-3-nocp-gradient-ie": (
        3,
        dict(levels={2: "hi", 3: "lo"}, bsse_type=["nocp"], driver="gradient", return_total_data=False),
    ),
    "ml-1-3-vmfc-hessian-ie": (
        3,
        dict(levels={1: "lo", 3: "hi"}, bsse_type=["vmfc"], driver="hessian", return_total_data=False),
    ),
}

#: (mode, workers): workers "many" = more than the fragments of the input
RUNS = [(mode, w) for mode in ("sequential", "multiprocessing") for w in (1, 2, "many")]


def matrix_input(name):
    waters, kw = MATRIX[name]
    kw = dict(kw)
    levels = kw.get("levels")
    if levels is not None:
        kw["specifications"] = {mc: SPECS[mc] for mc in levels.values()}
    return many_body_input(water_cluster(waters), **kw)


# ------------------------------------------------------------------------------------------------
# the full comparison
# ------------------------------------------------------------------------------------------------


def assert_full_parity(ref, res, atol=1e-10, exact=True, flat_arrays=False, report=False):
    """``res`` is ``ref`` (with ``report=True``: plus ``extras["qcmb_hpc"]``), every field, by
    :class:`qcmb_hpc.ParallelTestSuite` (numbers to ``atol``, and bit for bit with ``exact``;
    ``flat_arrays`` for dumps read back from JSON)."""
    b = _dump(res)
    if report:
        extras_b = dict(b.get("extras") or {})
        assert "qcmb_hpc" in extras_b, "the run report is missing from extras"
        extras_b.pop("qcmb_hpc")
        b["extras"] = extras_b
    ParallelTestSuite(exact=exact).assert_parallel_results(b, ref, tolerance=atol, flat_arrays=flat_arrays)


def _dump(x):
    if isinstance(x, dict):
        return dict(x)
    return x.model_dump() if hasattr(x, "model_dump") else x.dict()  # (pydantic v1: schema v1 results)


# ------------------------------------------------------------------------------------------------
# the matrix
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(MATRIX))
def case(request):
    """(name, input, upstream result, fragment count): one upstream computation per input."""
    inp = matrix_input(request.param)
    ref = reference(inp)
    return request.param, inp, ref, ref.properties.calcinfo_nmbe


@pytest.mark.parametrize("mode,workers", RUNS, ids=[f"{m}-{w}" for m, w in RUNS])
def test_parity_matrix(case, mode, workers):
    name, inp, ref, nfrag = case
    asked = nfrag + 3 if workers == "many" else workers
    comp = ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode, max_workers=asked))
    res = comp.compute()
    assert_full_parity(ref, res)
    rep = comp.run_info
    assert rep["mode"] == mode
    assert rep["computed"] == nfrag and rep["failed"] == 0
    # sequential is one in-process worker whatever is asked; multiprocessing runs what was asked
    # but never more workers than fragments (resources.plan_layout caps the count) — nor more than
    # this machine's memory holds (each worker is reserved a few hundred MiB)
    if mode == "sequential":
        assert rep["workers"] == 1
    else:
        assert rep["workers"] == expected_workers(asked, nfrag) <= min(asked, nfrag)


def expected_workers(asked, nfrag):
    from qcmb_hpc.resources import detect_node, plan_layout

    return plan_layout(detect_node(), max_workers=asked, tasks=nfrag).workers


def test_matrix_covers_issue_2():
    """The matrix holds every combination issue 2 names (so a later edit cannot thin it)."""
    kws = [kw for _, kw in MATRIX.values()]
    bsse = {tuple(sorted(kw["bsse_type"])) for kw in kws}
    for one in ("cp", "nocp", "vmfc"):
        assert any(one in b and len(b) == 1 for b in bsse), one
    assert any(len(b) == 3 for b in bsse) and any(len(b) == 2 for b in bsse)
    assert {kw["driver"] for kw in kws} == {"energy", "gradient", "hessian"}
    assert {kw.get("return_total_data") for kw in kws} >= {True, False, None}
    multilevel = [kw for kw in kws if "levels" in kw]
    assert any("supersystem" in kw["levels"] for kw in multilevel)
    assert any("supersystem" not in kw["levels"] for kw in multilevel)
    assert {kw["driver"] for kw in multilevel} == {"energy", "gradient", "hessian"}
    assert {kw.get("return_total_data") for kw in multilevel} >= {True, False}


@pytest.mark.parametrize("driver", ["energy", "gradient"])
@pytest.mark.parametrize("mode,workers", [("sequential", None), ("multiprocessing", 2)])
def test_parity_multilevel_tetramer(tetramer, driver, mode, workers):
    """Multilevel with a supersystem two bodies above the levels (4 waters, levels 1 and 2)."""
    specs = {mc: SPECS[mc] for mc in ("hi", "lo", "ss")}
    inp = many_body_input(
        tetramer, driver=driver, levels={1: "hi", 2: "lo", "supersystem": "ss"}, specifications=specs, bsse_type=["nocp", "cp"]
    )
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode, max_workers=workers)).compute()
    assert_full_parity(reference(inp), res)


IDLE_CASES = ["cp-hessian-total", "ml-ss-cp-gradient-total", "cp-energy-ie"]


@pytest.mark.parametrize("name", IDLE_CASES)
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "inline"])
def test_idle_workers_beyond_fragments(monkeypatch, name, isolate):
    """Workers that never get a fragment: the layout's cap to the fragment count is lifted, so
    fragments + 2 workers start, at least two of them stay idle, and the result is still upstream's.
    (The layout reserves a few hundred MiB per worker; the test engine uses none, so the node's
    memory is raised to what the count needs, lest a small CI machine run fewer workers.)"""
    import dataclasses

    import qcmb_hpc.resources as run_mod
    from qcmb_hpc.resources import MEMORY_SAFETY, MIN_WORKER_MEMORY, WORKER_OVERHEAD

    real_plan_layout = run_mod.plan_layout

    def uncapped(node, **kw):
        kw.pop("tasks", None)
        need = int((kw.get("max_workers") or 1) * (MIN_WORKER_MEMORY + WORKER_OVERHEAD) / MEMORY_SAFETY) + 1
        return real_plan_layout(dataclasses.replace(node, memory=max(node.memory, need)), **kw)

    monkeypatch.setattr(run_mod, "plan_layout", uncapped)
    inp = matrix_input(name)
    ref = reference(inp)
    nfrag = ref.properties.calcinfo_nmbe
    cfg = quiet(mode="multiprocessing", max_workers=nfrag + 2, isolate_fragments=isolate)
    comp = ParallelManyBodyComputer(inp, parallel_config=cfg)
    res = comp.compute()
    assert_full_parity(ref, res)
    rep = comp.run_info
    assert rep["workers"] == nfrag + 2 and rep["computed"] == nfrag and not rep.get("lost_workers")
    ran = [w for w, u in rep["utilisation"].items() if u is not None]  # workers that ran a fragment
    assert rep["workers"] - len(ran) >= 2, rep["utilisation"]  # (and the others never did)


# ------------------------------------------------------------------------------------------------
# other ways of running that must not change a number
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["static", "dynamic", "work_stealing", "adaptive"])
@pytest.mark.parametrize("stealing", [True, False])
def test_strategies_give_same_numbers(tetramer, strategy, stealing):
    inp = many_body_input(tetramer, bsse_type=["vmfc"], driver="energy")
    ref = reference(inp)
    cfg = quiet(mode="multiprocessing", max_workers=3, load_balancing=strategy, work_stealing=stealing)
    res = ParallelManyBodyComputer(inp, parallel_config=cfg).compute()
    assert_full_parity(ref, res)


def test_cluster_results_protocol_all(trimer):
    """protocols.cluster_results='all' keeps every AtomicResult, as upstream does."""
    inp = many_body_input(trimer, bsse_type=["cp"], driver="gradient", protocols={"cluster_results": "all"})
    ref = reference(inp)
    assert len(ref.cluster_results) > 0
    for mode in ("sequential", "multiprocessing"):
        res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode)).compute()
        assert_full_parity(ref, res)  # every AtomicResult, field by field
        assert set(res.cluster_results) == set(ref.cluster_results)


def test_isolation_off_same_numbers(trimer):
    inp = many_body_input(trimer, bsse_type=["cp", "nocp"], driver="gradient")
    ref = reference(inp)
    for mode in ("sequential", "multiprocessing"):
        res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode, isolate_fragments=False)).compute()
        assert_full_parity(ref, res)


def test_none_config_is_sequential(trimer):
    inp = many_body_input(trimer)
    comp = ParallelManyBodyComputer(inp)
    assert comp.parallel_config.mode.value == "sequential"
    res = comp.compute()
    assert comp.run_info["mode"] == "sequential"
    assert_full_parity(reference(inp), res)


def test_config_object_and_conftest_comparison_agree(trimer):
    """A ParallelConfig object works like the dict, and conftest's comparison agrees."""
    inp = many_body_input(trimer, bsse_type=["cp", "nocp"], driver="gradient")
    ref = reference(inp)
    res = ParallelManyBodyComputer(inp, parallel_config=ParallelConfig(mode="multiprocessing", max_workers=2, progress_reporting=False)).compute()
    assert_full_parity(ref, res)
    assert_same_result(ref, res, exact=True)


@pytest.mark.parametrize("mode", ["sequential", "multiprocessing"])
def test_v1_input_gives_full_v1_result(trimer, mode):
    """A v1 ManyBodyInput gives, field by field, the v1 ManyBodyResult of upstream's v1 computer
    (what a v1 caller uses) — and that of upstream's v2 computer converted to v1 but for
    ``provenance.routine``, which names the computer."""
    from qcmanybody import ManyBodyComputer as V1Computer

    inp = many_body_input(trimer, bsse_type=["cp", "nocp"], driver="gradient", return_total_data=True)
    v1 = inp.convert_v(1)
    res = ParallelManyBodyComputer(v1, parallel_config=quiet(mode=mode, max_workers=2)).compute()
    ref = reference(inp).convert_v(1)
    assert res.schema_version == 1 and type(res) is type(ref)
    assert_full_parity(V1Computer.from_manybodyinput(v1), res)
    dumped, ref2 = res.dict(), ref.dict()
    assert (dumped["provenance"].pop("routine"), ref2["provenance"].pop("routine")) == ("qcmanybody.v1.computer", "qcmanybody.v2.computer")
    assert_full_parity(ref2, dumped)


def test_full_parity_detects_differences(trimer):
    """The comparison itself: a change anywhere — deep in a property, in a cluster result, in
    extras — is caught."""
    inp = many_body_input(trimer, bsse_type=["cp"], driver="gradient", return_total_data=True)
    ref = reference(inp)
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="sequential")).compute()
    assert_full_parity(ref, res)
    with pytest.raises(AssertionError, match="qcmb_hpc"):
        assert_full_parity(ref, ref, report=True)  # asked for, the run report must be there
    with_report = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="sequential", report_in_extras=True)).compute()
    with pytest.raises(AssertionError, match="extras"):
        assert_full_parity(ref, with_report)  # by default the result is upstream's: no report in extras
    assert_full_parity(ref, with_report, report=True)
    d = res.model_dump()
    d["properties"]["return_gradient"] = d["properties"]["return_gradient"] + 1e-9
    with pytest.raises(AssertionError, match="return_gradient"):
        assert_full_parity(ref, d)
    d = res.model_dump()
    d["return_result"] = d["return_result"].copy()
    d["return_result"][0, 0] += 1e-14
    with pytest.raises(AssertionError, match="last bits"):
        assert_full_parity(ref, d)
    assert_full_parity(ref, d, exact=False)  # within 1e-10
    d = res.model_dump()
    label = next(iter(d["cluster_properties"]))
    d["cluster_properties"][label]["return_energy"] += 1e-6
    with pytest.raises(AssertionError, match="cluster_properties"):
        assert_full_parity(ref, d)
    d = res.model_dump()
    d["extras"]["other"] = 1
    with pytest.raises(AssertionError, match="extras"):
        assert_full_parity(ref, d)
