"""Identical results to sequential QCManyBody, in sequential and multiprocessing mode, for 1, 2 and
more workers than fragments (deterministic test engine)."""

import pytest

from conftest import assert_same_result, quiet, reference
from qcmb_hpc import ParallelConfig, ParallelManyBodyComputer
from qcmb_hpc.testing.inputs import many_body_input

CASES = {
    "cp-energy-ie": dict(bsse_type=["cp"], driver="energy"),
    "cp-energy-total": dict(bsse_type=["cp"], driver="energy", return_total_data=True),
    "nocp-energy": dict(bsse_type=["nocp"], driver="energy"),
    "vmfc-energy": dict(bsse_type=["vmfc"], driver="energy"),
    "cp-nocp-vmfc-gradient": dict(bsse_type=["cp", "nocp", "vmfc"], driver="gradient"),
    "nocp-cp-gradient-ie": dict(bsse_type=["nocp", "cp"], driver="gradient", return_total_data=False),
    "vmfc-cp-hessian": dict(bsse_type=["vmfc", "cp"], driver="hessian"),
    "cp-max2": dict(bsse_type=["cp", "nocp"], driver="gradient", max_nbody=2),
    "supersystem-ie-only": dict(bsse_type=["cp"], driver="energy", supersystem_ie_only=True),
}

MULTILEVEL = {
    "levels-1-2-ss": dict(
        levels={1: "hi", 2: "lo", "supersystem": "ss"},
        bsse_type=["nocp", "cp"],
    ),
    "levels-2-3": dict(levels={2: "hi", 3: "lo"}, bsse_type=["cp", "vmfc"]),
}
SPECS = {
    "hi": {"program": "qcmb_test", "method": "mp2", "basis": "cc-pvdz"},
    "lo": {"program": "qcmb_test", "method": "hf", "basis": "sto-3g"},
    "ss": {"program": "qcmb_test", "method": "pbe", "basis": "6-31g"},
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("mode,workers", [("sequential", None), ("multiprocessing", 2)])
def test_parity_matrix(trimer, case, mode, workers):
    inp = many_body_input(trimer, **CASES[case])
    ref = reference(inp)
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode, max_workers=workers)).compute()
    assert_same_result(ref, res, exact=True)
    assert res.extras["qcmb_hpc"]["mode"] == mode


@pytest.mark.parametrize("case", sorted(MULTILEVEL))
@pytest.mark.parametrize("driver", ["energy", "gradient"])
@pytest.mark.parametrize("mode", ["sequential", "multiprocessing"])
def test_parity_multilevel(tetramer, case, driver, mode):
    kw = dict(MULTILEVEL[case])
    levels = kw.pop("levels")
    specs = {mc: SPECS[mc] for mc in levels.values()}
    inp = many_body_input(tetramer, driver=driver, levels=levels, specifications=specs, **kw)
    ref = reference(inp)
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode)).compute()
    assert_same_result(ref, res, exact=True)


@pytest.mark.parametrize("workers", [1, 2, 40])
def test_worker_counts(trimer, workers):
    """One worker, two, and more workers than fragments."""
    inp = many_body_input(trimer, bsse_type=["cp", "nocp"], driver="gradient")
    ref = reference(inp)
    cfg = ParallelConfig(mode="multiprocessing", max_workers=workers, progress_reporting=False)
    comp = ParallelManyBodyComputer(inp, parallel_config=cfg)
    res = comp.compute()
    assert_same_result(ref, res, exact=True)
    nfrag = ref.properties.calcinfo_nmbe
    assert res.extras["qcmb_hpc"]["workers"] == min(workers, nfrag)
    assert res.extras["qcmb_hpc"]["computed"] == nfrag


@pytest.mark.parametrize("strategy", ["static", "dynamic", "work_stealing", "adaptive"])
@pytest.mark.parametrize("stealing", [True, False])
def test_strategies_give_same_numbers(tetramer, strategy, stealing):
    inp = many_body_input(tetramer, bsse_type=["vmfc"], driver="energy")
    ref = reference(inp)
    cfg = quiet(mode="multiprocessing", max_workers=3, load_balancing=strategy, work_stealing=stealing)
    res = ParallelManyBodyComputer(inp, parallel_config=cfg).compute()
    assert_same_result(ref, res, exact=True)


def test_cluster_results_protocol_all(trimer):
    """protocols.cluster_results='all' keeps every AtomicResult, as upstream does."""
    inp = many_body_input(trimer, bsse_type=["cp"], driver="energy", protocols={"cluster_results": "all"})
    ref = reference(inp)
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing")).compute()
    assert_same_result(ref, res, exact=True)
    assert set(res.cluster_results) == set(ref.cluster_results) and len(ref.cluster_results) > 0
    for label, atres in ref.cluster_results.items():
        assert res.cluster_results[label].return_result == atres.return_result


def test_isolation_off_same_numbers(trimer):
    inp = many_body_input(trimer, bsse_type=["cp", "nocp"], driver="gradient")
    ref = reference(inp)
    for mode in ("sequential", "multiprocessing"):
        res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode, isolate_fragments=False)).compute()
        assert_same_result(ref, res, exact=True)


def test_none_config_is_sequential(trimer):
    inp = many_body_input(trimer)
    comp = ParallelManyBodyComputer(inp)
    assert comp.parallel_config.mode.value == "sequential"
    res = comp.compute()
    assert res.extras["qcmb_hpc"]["mode"] == "sequential"
    assert_same_result(reference(inp), res, exact=True)
