"""The cost model (qcmb_hpc.cost): estimates before anything runs, and calibration from measured times."""

import json
import math
import types

import pytest

from qcmb_hpc.cost import (
    DEFAULT_EXPONENT,
    MAX_SAMPLES_PER_KEY,
    CostModel,
    basis_functions,
    fit_power_law,
    method_exponent,
    spearman,
)
from qcmb_hpc.testing.inputs import water_cluster


def spec(program="nwchem", method="mp2", basis="cc-pvdz", driver="energy"):
    return {"program": program, "specification": {"model": {"method": method, "basis": basis}, "driver": driver}}


def task(tid, mc, real, basis=None):
    return types.SimpleNamespace(id=tid, mc=mc, real=tuple(real), basis=tuple(basis or real), cost=1.0)


@pytest.fixture(scope="module")
def trimer():
    return water_cluster(3)


# ------------------------------------------------------------------------------------------------
# estimates
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,program,exponent",
    [
        ("hf", None, 3.5),
        ("scf", "nwchem", 3.5),
        ("b3lyp", None, 3.5),
        ("b3lyp-d3bj", "psi4", 3.5),  # DFT with a dispersion correction is DFT
        ("b3lyp-d3bj", "s-dftd3", 2.0),  # ... but the dispersion program alone is cheap
        ("gfn2-xtb", "xtb", 2.0),
        ("pm6", None, 2.0),
        ("mp2", None, 5.0),
        ("ri-mp2", None, 5.0),
        ("mp2d", "mp2d", 2.0),
        ("ccsd", None, 6.0),
        ("CCSD(T)", None, 7.0),
        ("some-new-method", None, DEFAULT_EXPONENT),
        ("", None, DEFAULT_EXPONENT),
        (None, None, DEFAULT_EXPONENT),
    ],
)
def test_method_exponent(method, program, exponent):
    assert method_exponent(method, program) == exponent


def test_basis_functions_from_the_basis_set_exchange():
    pytest.importorskip("basis_set_exchange")
    water = [8, 1, 1]
    assert basis_functions(water, "sto-3g") == 7  # O 5, H 1
    assert basis_functions(water, "6-31g") == 13  # O 9, H 2
    assert basis_functions(water, "cc-pvdz") == 24  # O 14, H 5 (spherical)
    assert basis_functions(water, "CC-PVDZ") == 24


def test_basis_functions_fallback_and_no_basis():
    water = [8, 1, 1]
    assert basis_functions(water, "my-own-tz") == pytest.approx((14 + 5 + 5) * 2.3)  # per-element, triple zeta
    assert basis_functions(water, "my-own-dz") == pytest.approx(24)
    assert basis_functions(water, "aug-my-dz") == pytest.approx(24 * 1.6)
    assert basis_functions(water, None) == 3  # no basis: atoms
    assert basis_functions(water, "") == 3


def test_estimates_scale_with_size_counterpoise_and_driver(trimer):
    model = CostModel(trimer, {"e": spec(), "g": spec(driver="gradient"), "h": spec(driver="hessian")})
    mono = model.estimate("e", (1,), (1,))
    dimer = model.estimate("e", (1, 2), (1, 2))
    assert dimer / mono == pytest.approx(2.0**5)  # MP2: nbf^5, twice the basis functions
    cp_mono = model.estimate("e", (1,), (1, 2, 3))  # counterpoise: the whole basis
    assert cp_mono == pytest.approx(model.estimate("e", (1, 2, 3), (1, 2, 3)))
    assert model.estimate("g", (1,), (1,)) == pytest.approx(2 * mono)
    assert model.estimate("h", (1,), (1,)) == pytest.approx(8 * mono)
    assert model.size("e", (1, 2), (1, 2, 3)) == 72.0


def test_methods_without_basis_scale_with_real_atoms(trimer):
    model = CostModel(trimer, {"d": spec(program="s-dftd3", method="b3lyp-d3bj", basis=None)})
    assert model.size("d", (1, 2), (1, 2, 3)) == 6.0  # ghosts do not count
    assert model.estimate("d", (1, 2), (1, 2)) / model.estimate("d", (1,), (1,)) == pytest.approx(4.0)  # exponent 2


def test_estimate_tasks_sets_costs(trimer):
    model = CostModel(trimer, {"e": spec()})
    tasks = [task(0, "e", (1,)), task(1, "e", (1, 2)), task(2, "e", (1, 2, 3))]
    costs = model.estimate_tasks(tasks)
    assert costs == {t.id: t.cost for t in tasks}
    assert costs[0] < costs[1] < costs[2]


# ------------------------------------------------------------------------------------------------
# fitting and rank correlation
# ------------------------------------------------------------------------------------------------


def test_fit_power_law_recovers_the_law():
    a, b = 3e-7, 4.2
    samples = [(x, a * x**b) for x in (10, 20, 35, 50, 80)]
    fit = fit_power_law(samples, default_exponent=3.0)
    assert fit.exponent == pytest.approx(b)
    assert fit.prefactor == pytest.approx(a, rel=1e-9)
    assert fit(40) == pytest.approx(a * 40**b)
    assert fit.n == 5


def test_fit_power_law_with_little_spread_keeps_the_exponent():
    samples = [(24.0, 2.0), (24.0, 2.2), (24.5, 2.1)]
    fit = fit_power_law(samples, default_exponent=3.5)
    assert fit.exponent == 3.5
    assert fit(24.0) == pytest.approx(2.1, rel=0.05)


def test_fit_power_law_edge_cases():
    assert fit_power_law([], 3.0) is None
    assert fit_power_law([(10.0, 0.0), (0.0, 1.0)], 3.0) is None  # nothing usable
    steep = fit_power_law([(x, x**20) for x in (2, 4, 8, 16)], 3.0)
    assert steep.exponent == 8.0  # clamped
    flat = fit_power_law([(x, 1.0 / x) for x in (2, 4, 8, 16)], 3.0)
    assert flat.exponent == 0.5


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.8))  # ties: average ranks
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2, 3], [1, 2]) is None


# ------------------------------------------------------------------------------------------------
# calibration
# ------------------------------------------------------------------------------------------------


def observe_law(model, mc, a, b, frags):
    for real in frags:
        x = model.size(mc, real, real)
        model.observe(mc, real, real, a * x**b)


FRAGS = [(1,), (2,), (3,), (1, 2), (2, 3), (1, 3), (1, 2, 3)]


def test_calibration_refits_and_changes_estimates(trimer):
    model = CostModel(trimer, {"e": spec(method="hf", basis="cc-pvdz")})
    before = model.estimate("e", (1, 2), (1, 2))
    observe_law(model, "e", 2e-5, 2.7, FRAGS)
    assert model.refit()
    x = model.size("e", (1, 2), (1, 2))
    assert model.estimate("e", (1, 2), (1, 2)) == pytest.approx(2e-5 * x**2.7)
    assert model.estimate("e", (1, 2), (1, 2)) != pytest.approx(before)
    fit = model.fits[("nwchem", "hf", "energy")]
    assert fit.exponent == pytest.approx(2.7) and fit.n == len(FRAGS)
    # no new refit until the samples double
    model.observe("e", (1,), (1,), 1.0)
    assert not model.refit()
    assert model.refit(force=True)


def test_cost_history_round_trip(tmp_path, trimer):
    path = str(tmp_path / "sub" / "history.json")
    model = CostModel(trimer, {"e": spec(method="hf")}, history=path)  # no file yet: defaults
    default = model.estimate("e", (1,), (1,))
    observe_law(model, "e", 5e-6, 3.1, FRAGS)
    model.save()
    data = json.loads(open(path).read())
    assert data["format"] == "qcmb_hpc-cost-history"
    assert data["fits"]["nwchem|hf|energy"]["exponent"] == pytest.approx(3.1)
    later = CostModel(trimer, {"x": spec(method="hf")}, history=path)  # another run, same method
    x = later.size("x", (1,), (1,))
    assert later.estimate("x", (1,), (1,)) == pytest.approx(5e-6 * x**3.1)
    assert later.estimate("x", (1,), (1,)) != pytest.approx(default)
    # a further run's measurements are merged, and the kept samples are capped
    observe_law(later, "x", 5e-6, 3.1, FRAGS * (MAX_SAMPLES_PER_KEY // len(FRAGS) + 10))
    later.save()
    data = json.loads(open(path).read())
    assert len(data["samples"]["nwchem|hf|energy"]) == MAX_SAMPLES_PER_KEY
    assert not later.new_samples  # saved once, not twice
    other = CostModel(trimer, {"e": spec(method="ccsd")}, history=path)  # an unmeasured method: defaults
    assert other.fit_for(other.keys["e"]).n == 0


def test_cost_history_unreadable_is_ignored(tmp_path, trimer, caplog):
    # a cache, not an input: the run goes on from the defaults (see tests/test_cost_history.py)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with caplog.at_level("WARNING", logger="qcmb_hpc"):
        model = CostModel(trimer, {"e": spec()}, history=str(bad))
    assert model.fit_for(model.keys["e"]).n == 0
    assert any(str(bad) in r.getMessage() for r in caplog.records)


def test_reestimate_only_when_the_order_changes(trimer):
    model = CostModel(trimer, {"e": spec(method="hf")})
    tasks = [task(i, "e", real) for i, real in enumerate(FRAGS)]
    model.estimate_tasks(tasks)
    observe_law(model, "e", 1e-4, 2.0, FRAGS)
    assert model.refit()
    # one method: a power law keeps the order of its fragments — nothing to re-sort
    assert model.reestimate(tasks) is None


def test_reestimate_when_a_refit_reorders_model_chemistries(trimer):
    # two levels: expensive-looking MP2 monomers, cheap-looking HF dimers/trimers
    model = CostModel(trimer, {"hi": spec(method="mp2", basis="sto-3g"), "lo": spec(method="hf", basis="cc-pvdz")})
    tasks = [task(0, "hi", (1,)), task(1, "hi", (2,)), task(2, "lo", (1, 2)), task(3, "lo", (1, 2, 3))]
    costs = model.estimate_tasks(tasks)
    assert costs[2] > costs[0]
    # measurements say MP2 monomers are far slower than the HF fragments
    observe_law(model, "hi", 50.0, 1.0, [(1,), (2,), (3,)])
    observe_law(model, "lo", 1e-6, 1.0, [(1, 2), (1, 2, 3), (2, 3)])
    assert model.refit()
    new = model.reestimate(tasks)
    assert new is not None and set(new) == {0, 1, 2, 3}
    assert new[0] > new[2] and new[0] > new[3]
    assert all(t.cost == new[t.id] for t in tasks)
    # and once re-estimated, the same fits do not trigger it again
    assert model.reestimate(tasks) is None
