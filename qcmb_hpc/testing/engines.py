"""Engines for tests and benchmarks, registered with qcengine when this module is imported
(``--import qcmb_hpc.testing.engines`` makes them available in every worker of every mode).

* ``qcmb_test`` — a deterministic model potential: fast, ghost atoms act through the basis only
  (they lower the energy of nearby real atoms, like basis-set superposition, and carry no charge),
  analytic energy and gradient, Hessian by central differences of the gradient. The method and
  basis names change the numbers, so multilevel inputs are meaningful.
* ``qcmb_sleep`` — ``qcmb_test`` that first sleeps for a modelled time (``keywords["sleep"]``:
  ``base · n^exponent · lognormal(noise)``, n = real+ghost atoms, noise seeded by the geometry), a
  stand-in for expensive QC with an MBE-like skewed cost spread. With ``keywords["record_dir"]``
  every execution leaves a file there (``<fragment key>.<pid>.<ns>``), so tests can count runs.
* ``qcmb_fault`` — ``qcmb_test`` with injected faults: per attempt of a fragment (attempts counted
  with exclusive files in ``keywords["fault_dir"]``, so across processes and ranks), with seeded
  probability ``p``, it raises, returns a failed result, hangs, or kills its own process. Only the
  first ``faulty_attempts`` attempts can fault, so a run with enough retries always succeeds.

None of them is chemistry; they exist so that parity, scheduling and fault handling can be tested
fast and exactly.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import time
import zlib
from typing import Any, Dict, Tuple

import numpy as np
import qcengine
from qcelemental.models.v2 import AtomicResult, FailedOperation, Provenance
from qcengine.exceptions import InputError, RandomError
from qcengine.programs.model import ProgramHarness

__all__ = ["model_energy_gradient", "fragment_key", "TestHarness", "SleepHarness", "FaultHarness", "register"]

_D, _A, _R0 = 0.01, 1.0, 2.0  # Morse pair term (hartree, 1/bohr, bohr)
_C, _S = 1e-3, 3.0  # ghost (basis-only) attraction
_NU, _LAM = 1e-3, 6.0  # three-body term


def _method_factor(method: str) -> float:
    return 1.0 + (zlib.crc32(method.lower().encode()) % 1000) / 5000.0


def _basis_factor(basis: Any) -> float:
    if not basis:
        return 1.0
    return 0.5 + (zlib.crc32(str(basis).lower().encode()) % 1000) / 1000.0


def model_energy_gradient(
    symbols_z: np.ndarray, geom: np.ndarray, real: np.ndarray, method: str, basis: Any
) -> Tuple[float, np.ndarray]:
    """Energy (hartree) and gradient (hartree/bohr, natom × 3, ghost atoms included) of the model."""
    m = _method_factor(method)
    bf = _basis_factor(basis)
    n = len(symbols_z)
    grad = np.zeros((n, 3))
    e = 0.0
    ri = np.flatnonzero(real)
    gi = np.flatnonzero(~real)
    for i in ri:
        e += -0.5 * float(symbols_z[i]) ** 1.5 * m
    # real–real pairs (Morse)
    for a_idx, i in enumerate(ri):
        for j in ri[a_idx + 1 :]:
            d = geom[i] - geom[j]
            r = math.sqrt(float(d @ d))
            x = math.exp(-_A * (r - _R0))
            e += m * _D * ((1 - x) ** 2 - 1)
            dv = m * _D * 2 * (1 - x) * _A * x
            g = dv * d / r
            grad[i] += g
            grad[j] -= g
    # real–ghost pairs: basis-only attraction
    for i in ri:
        for j in gi:
            d = geom[i] - geom[j]
            r2 = float(d @ d)
            w = -m * _C * bf * math.exp(-r2 / _S**2)
            e += w
            g = w * (-2.0 / _S**2) * d
            grad[i] += g
            grad[j] -= g
    # real triples
    nr = len(ri)
    if nr >= 3:
        pos = geom[ri]
        diff = pos[:, None, :] - pos[None, :, :]
        dist = np.sqrt((diff**2).sum(-1))
        for a in range(nr):
            for b in range(a + 1, nr):
                for c in range(b + 1, nr):
                    s = dist[a, b] + dist[a, c] + dist[b, c]
                    t = m * _NU * math.exp(-s / _LAM)
                    e += t
                    f = -t / _LAM
                    for (p, q) in ((a, b), (a, c), (b, c)):
                        u = diff[p, q] / dist[p, q]
                        grad[ri[p]] += f * u
                        grad[ri[q]] -= f * u
    return e, grad


def _compute_model(input_model: Any, config: Any, program: str) -> AtomicResult:
    mol = input_model.molecule
    spec = input_model.specification
    z = np.asarray(mol.atomic_numbers)
    geom = np.asarray(mol.geometry, dtype=float).reshape(-1, 3)
    real = np.asarray(mol.real, dtype=bool) if mol.real is not None else np.ones(len(z), dtype=bool)
    method = spec.model.method
    basis = spec.model.basis
    if method.lower() in ("bad", "unknown-method"):
        raise InputError(f"{program}: method {method!r} is not known")
    energy, grad = model_energy_gradient(z, geom, real, method, basis)
    props: Dict[str, Any] = {"return_energy": energy, "calcinfo_natom": len(z)}
    driver = spec.driver.value if hasattr(spec.driver, "value") else str(spec.driver)
    if driver in ("gradient", "hessian"):
        props["return_gradient"] = grad
    if driver == "hessian":
        h = 1e-5
        flat = geom.ravel()
        hess = np.zeros((flat.size, flat.size))
        for k in range(flat.size):
            gp, gm = flat.copy(), flat.copy()
            gp[k] += h
            gm[k] -= h
            _, g1 = model_energy_gradient(z, gp.reshape(-1, 3), real, method, basis)
            _, g2 = model_energy_gradient(z, gm.reshape(-1, 3), real, method, basis)
            hess[k] = (g1 - g2).ravel() / (2 * h)
        hess = 0.5 * (hess + hess.T)
        props["return_hessian"] = hess
    ret = {"energy": energy, "gradient": props.get("return_gradient"), "hessian": props.get("return_hessian")}.get(driver)
    if ret is None:
        raise InputError(f"{program}: driver {driver!r} is not supported")
    return AtomicResult(
        input_data=input_model,
        molecule=mol,
        properties=props,
        return_result=ret,
        success=True,
        provenance=Provenance(creator=program, version="1.0", routine="qcmb_hpc.testing.engines"),
    )


class TestHarness(ProgramHarness):
    _defaults = {"name": "qcmb_test", "scratch": False, "thread_safe": True, "thread_parallel": False, "node_parallel": False, "managed_memory": False}

    @staticmethod
    def found(raise_error: bool = False) -> bool:
        return True

    def get_version(self) -> str:
        return "1.0"

    def compute(self, input_model: Any, config: Any) -> AtomicResult:
        return _compute_model(input_model, config, self.name)


def _geometry_key(input_model: Any) -> str:
    mol = input_model.molecule
    h = hashlib.sha1()
    h.update(np.asarray(mol.geometry, dtype=float).round(8).tobytes())
    h.update(np.asarray(mol.real if mol.real is not None else [], dtype=bool).tobytes())
    h.update(input_model.specification.model.method.encode())
    return h.hexdigest()


def fragment_key(input_model: Any) -> str:
    """The key the sleep and fault engines file a fragment's executions under."""
    return _geometry_key(input_model)


def sleep_seconds(input_model: Any) -> float:
    """The modelled time of one fragment (see module docstring)."""
    kw = dict(input_model.specification.keywords.get("sleep", {}))
    base = float(kw.get("base", 0.01))
    exponent = float(kw.get("exponent", 2.0))
    noise = float(kw.get("noise", 0.0))
    seed = int(kw.get("seed", 0))
    n = len(input_model.molecule.symbols)
    t = base * n**exponent
    if noise > 0:
        rng = np.random.default_rng(int(_geometry_key(input_model)[:12], 16) + seed)
        t *= math.exp(rng.normal(0.0, noise))
    return t


class SleepHarness(TestHarness):
    _defaults = {**TestHarness._defaults, "name": "qcmb_sleep"}

    def compute(self, input_model: Any, config: Any) -> AtomicResult:
        record_dir = input_model.specification.keywords.get("record_dir")
        if record_dir:  # one file per execution, so tests can count how often a fragment ran
            name = f"{_geometry_key(input_model)}.{os.getpid()}.{time.time_ns()}"
            open(os.path.join(record_dir, name), "w").close()
        time.sleep(sleep_seconds(input_model))
        return _compute_model(input_model, config, self.name)


class FaultHarness(TestHarness):
    """See the module docstring; keywords: fault_dir (required), p, seed, kinds, faulty_attempts,
    hang_seconds."""

    _defaults = {**TestHarness._defaults, "name": "qcmb_fault"}

    def compute(self, input_model: Any, config: Any) -> Any:
        kw = input_model.specification.keywords
        fault_dir = kw.get("fault_dir")
        if not fault_dir:
            raise InputError("qcmb_fault needs keywords.fault_dir")
        key = _geometry_key(input_model)
        attempt = 1
        while True:  # the attempt number: the first free "<key>.<n>" file, taken atomically
            try:
                fd = os.open(os.path.join(fault_dir, f"{key}.{attempt}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                attempt += 1
        p = float(kw.get("p", 0.3))
        kinds = list(kw.get("kinds", ["raise", "fail", "hang", "kill"]))
        kind = "ok"
        if attempt <= int(kw.get("faulty_attempts", 1)):
            rng = np.random.default_rng(int(key[:12], 16) + 7919 * attempt + int(kw.get("seed", 0)))
            if rng.random() < p:
                kind = kinds[int(rng.integers(len(kinds)))]
        os.write(fd, kind.encode())  # what this attempt did, for the tests to count
        os.close(fd)
        if kind == "raise":
            raise RandomError(f"qcmb_fault: injected exception (attempt {attempt})")
        if kind == "fail":
            return FailedOperation(
                input_data=input_model,
                error={"error_type": "random_error", "error_message": f"qcmb_fault: injected failure (attempt {attempt})"},
            )
        if kind == "hang":
            time.sleep(float(kw.get("hang_seconds", 3600)))
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "input":
            raise InputError("qcmb_fault: injected input error")
        return _compute_model(input_model, config, self.name)


def register() -> None:
    """Register the three engines with qcengine (idempotent)."""
    for harness in (TestHarness(), SleepHarness(), FaultHarness()):
        if harness.name not in qcengine.list_all_programs():
            qcengine.register_program(harness)


register()
