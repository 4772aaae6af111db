"""Basis functions without the Basis Set Exchange, or for a basis it does not know: the per-element
estimate, and one log line saying so (not a silent fallback)."""

import logging
import sys

import pytest

from qcmb_hpc import cost
from qcmb_hpc.cost import CostModel, basis_functions
from qcmb_hpc.testing.inputs import water_cluster

WATER = [8, 1, 1]


@pytest.fixture(autouse=True)
def fresh_caches():
    """Forget what this process learnt about the BSE (its import, counts, what was logged)."""

    def clear():
        cost._bse.cache_clear()
        cost._nbf_element.cache_clear()
        cost._FALLBACK_LOGGED.clear()

    clear()
    yield
    clear()


def test_without_the_package_the_fallback_is_used_and_logged_once(monkeypatch, logged):
    monkeypatch.setitem(sys.modules, "basis_set_exchange", None)  # import raises ImportError
    assert basis_functions(WATER, "cc-pvtz") == pytest.approx((14 + 5 + 5) * 2.3)  # BSE would say 58
    assert basis_functions(WATER, "sto-3g") == pytest.approx((14 + 5 + 5) * 0.4)  # BSE would say 7
    model = CostModel(water_cluster(2), {"e": {"program": "nwchem", "specification": {"model": {"method": "hf", "basis": "6-31g"}}}})
    assert model.estimate("e", (1,), (1,)) > 0
    warnings = [r for r in logged if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in logged]
    assert "basis_set_exchange" in warnings[0].getMessage() and "per element" in warnings[0].getMessage()


def test_an_unknown_basis_is_logged_once_per_basis(logged):
    pytest.importorskip("basis_set_exchange")
    assert basis_functions(WATER, "my-own-tz") == pytest.approx((14 + 5 + 5) * 2.3)
    assert basis_functions([6, 7, 1], "my-own-tz") > 0  # other elements of the same basis: no new line
    assert basis_functions(WATER, "cc-pvdz") == 24  # known: no line
    infos = [r.getMessage() for r in logged if r.levelno == logging.INFO]
    assert len(infos) == 1 and "my-own-tz" in infos[0], infos
    assert not [r for r in logged if r.levelno >= logging.WARNING]


def test_an_element_the_basis_lacks_is_logged(logged):
    pytest.importorskip("basis_set_exchange")
    assert basis_functions([86], "cc-pvdz") == pytest.approx(40)  # radon: not in cc-pVDZ
    (info,) = [r.getMessage() for r in logged if r.levelno == logging.INFO]
    assert "cc-pvdz" in info and "86" in info
