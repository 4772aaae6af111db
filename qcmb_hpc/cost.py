"""Fragment cost estimates, and their calibration from measured times.

Before anything runs, a fragment's cost is estimated as

    seconds ≈ a · x^b · driver_factor

* ``x`` — the size the method scales with: the number of basis functions of the real *and* ghost
  atoms (a counterpoise fragment costs as much as its full basis), counted with the Basis Set
  Exchange when it knows the basis, else with a per-element table scaled by the basis' zeta level;
  for methods without a basis (dispersion, force fields, semi-empirical) the number of real atoms.
* ``b`` — the method's scaling exponent (:data:`METHOD_EXPONENTS`: HF/DFT 3.5, MP2 5, CCSD 6,
  CCSD(T) 7, dispersion/semi-empirical 2, anything else :data:`DEFAULT_EXPONENT`; dispersion and
  semi-empirical *programs*, :data:`PROGRAM_EXPONENTS`, 2 whatever the method is called).
* ``driver_factor`` — energy 1, gradient 2, Hessian 8.
* ``a`` — 1e-6 s until calibrated.

Calibration: every run records ``(x, measured seconds)`` per (program, method, driver); a
least-squares line in log–log space gives ``a`` and ``b`` (``b`` only with enough spread in ``x``,
clamped to [0.5, 8]). Fits are kept in a cost-history file (``ParallelConfig.cost_history``) that
later runs start from; during a run the model refits as measurements arrive and the coordinator
re-orders the remaining queue when the refit changes the order of the estimates (:meth:`CostModel.
reestimate`: decided among the few (method, size) groups, not per fragment). :func:`spearman`
measures how well estimates ranked the real times.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "METHOD_EXPONENTS",
    "PROGRAM_EXPONENTS",
    "DEFAULT_EXPONENT",
    "DRIVER_FACTORS",
    "method_exponent",
    "basis_functions",
    "CostModel",
    "Fit",
    "fit_power_law",
    "spearman",
]

DEFAULT_EXPONENT = 4.0
DEFAULT_PREFACTOR = 1e-6
DRIVER_FACTORS = {"energy": 1.0, "gradient": 2.0, "hessian": 8.0, "properties": 1.0}

#: (regular expression on the lower-case method name, scaling exponent); first match wins. A
#: dispersion suffix does not make a DFT method cheap ("b3lyp-d3bj" in NWChem or Psi4 is DFT); the
#: dispersion *programs* are told apart by :data:`PROGRAM_EXPONENTS`.
METHOD_EXPONENTS: List[Tuple[str, float]] = [
    (r"ccsd\(t\)|ccsd\[t\]|ccsdt|cc3", 7.0),
    (r"ccsd|cc2|eom|cisd|qcisd", 6.0),
    (r"mp4", 7.0),
    (r"mp3", 6.0),
    (r"^mp2d", 2.0),  # the MP2D dispersion correction, not MP2
    (r"mp2|ri-mp2|dlpno|lmp2|scs", 5.0),
    (r"^hf|^scf|^rhf|^uhf|^rohf|b3lyp|pbe|blyp|tpss|m06|wb97|b97|svwn|lda|bp86|r2scan|scan|cam|^dft", 3.5),
    (r"^d3|^d4|dftd|disp|gcp|^xtb|gfn|^pm\d|^am1|^mndo|^rm1|uff|mmff|^ani|^mace|^orb|aimnet", 2.0),
]

#: programs whose cost follows the program, not the method name (dispersion corrections, whose
#: "method" names a functional; semi-empirical codes, force fields, ML potentials): exponent 2
PROGRAM_EXPONENTS: Dict[str, float] = {
    p: 2.0
    for p in ("dftd3", "s-dftd3", "dftd4", "mp2d", "gcp", "mctc-gcp", "xtb", "mopac", "openmm", "rdkit", "torchani", "aimnet2", "mace")
}

#: basis functions per element when the Basis Set Exchange does not know the basis (double zeta)
_FALLBACK_NBF_DZ = {1: 5, 2: 5}  # H, He
_ZETA = [(r"(^|[^a-z])(5z|v5z|pv5z|qz5)", 7.0), (r"qz|v4z|4z", 4.5), (r"tz|v3z|3z|311", 2.3), (r"sto|minimal|mini", 0.4)]


def method_exponent(method: Optional[str], program: Optional[str] = None) -> float:
    """The scaling exponent of ``method`` (run by ``program``): see :data:`METHOD_EXPONENTS` and
    :data:`PROGRAM_EXPONENTS`; :data:`DEFAULT_EXPONENT` for anything unknown (never an error)."""
    if program and program.strip().lower() in PROGRAM_EXPONENTS:
        return PROGRAM_EXPONENTS[program.strip().lower()]
    m = (method or "").strip().lower()
    for pattern, exponent in METHOD_EXPONENTS:
        if re.search(pattern, m):
            return exponent
    return DEFAULT_EXPONENT


def _fallback_nbf(z: int, basis: str) -> float:
    if z in _FALLBACK_NBF_DZ:
        base = _FALLBACK_NBF_DZ[z]
    elif z <= 10:
        base = 14
    elif z <= 18:
        base = 18
    elif z <= 36:
        base = 31
    else:
        base = 40
    b = basis.lower()
    scale = 1.0
    for pattern, s in _ZETA:
        if re.search(pattern, b):
            scale = s
            break
    if "aug" in b or "diffuse" in b or "+" in b:
        scale *= 1.6
    return base * scale


@lru_cache(maxsize=4096)
def _nbf_element(basis: str, z: int) -> float:
    try:
        import basis_set_exchange as bse

        data = bse.get_basis(basis, elements=[z], header=False)
        shells = data["elements"][str(z)]["electron_shells"]
        n = 0
        for sh in shells:
            pure = sh["function_type"].endswith("spherical")
            ams = sh["angular_momentum"]
            ncontr = len(sh["coefficients"]) if len(ams) == 1 else 1
            for am in ams:
                n += ncontr * ((2 * am + 1) if pure else (am + 1) * (am + 2) // 2)
        if n > 0:
            return float(n)
    except Exception:
        pass
    return _fallback_nbf(z, basis)


def basis_functions(atomic_numbers: Iterable[int], basis: Optional[str]) -> float:
    """Number of basis functions of these atoms in ``basis`` (estimated if BSE does not know it)."""
    if not basis:
        return float(sum(1 for _ in atomic_numbers))
    b = basis.strip().lower()
    return float(sum(_nbf_element(b, int(z)) for z in atomic_numbers))


@dataclass
class Fit:
    prefactor: float
    exponent: float
    n: int = 0  #: measurements behind it (0 = defaults)

    def __call__(self, x: float) -> float:
        return self.prefactor * max(x, 1.0) ** self.exponent


def fit_power_law(samples: Sequence[Tuple[float, float]], default_exponent: float) -> Optional[Fit]:
    """Least squares of log t = log a + b log x. With too little spread in x only ``a`` is fitted
    (``b`` stays at its default). None without samples."""
    pts = [(math.log(max(x, 1.0)), math.log(t)) for x, t in samples if t > 0 and x > 0]
    if not pts:
        return None
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    b = default_exponent
    if n >= 3 and sxx > 0.05 * n:  # x must spread by a few tens of percent
        b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
        b = min(8.0, max(0.5, b))
    log_a = my - b * mx
    return Fit(prefactor=math.exp(log_a), exponent=b, n=n)


def spearman(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Spearman rank correlation (average ranks for ties); None with fewer than 3 pairs."""
    n = len(a)
    if n < 3 or n != len(b):
        return None

    def ranks(v: Sequence[float]) -> List[float]:
        order = sorted(range(n), key=lambda i: v[i])
        r = [0.0] * n
        i = 0
        while i < n:
            j = i
            while j + 1 < n and v[order[j + 1]] == v[order[i]]:
                j += 1
            avg = (i + j) / 2.0
            for k in range(i, j + 1):
                r[order[k]] = avg
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)


Key = Tuple[str, str, str]  # (program, method, driver)

MAX_SAMPLES_PER_KEY = 2000


class CostModel:
    """Estimates and calibrates fragment costs for one run.

    ``specifications`` is mc → {"program", "specification": {"model": {"method", "basis"}, "driver"}}.
    """

    def __init__(self, molecule: Any, specifications: Mapping[str, Mapping[str, Any]], history: Optional[str] = None):
        self.history_path = history
        self.keys: Dict[str, Key] = {}
        self.basis: Dict[str, Optional[str]] = {}
        for mc, chem in specifications.items():
            spec = chem["specification"]
            model = spec.get("model", {})
            driver = spec.get("driver", "energy")
            driver = getattr(driver, "value", driver)
            self.keys[mc] = (str(chem["program"]).lower(), str(model.get("method", "")).lower(), str(driver))
            basis = model.get("basis")
            self.basis[mc] = basis.lower() if isinstance(basis, str) and basis.strip() else None
        self.fits: Dict[Key, Fit] = {}
        self.samples: Dict[Key, List[Tuple[float, float]]] = {}
        self.new_samples: Dict[Key, List[Tuple[float, float]]] = {}
        self._last_fit_n: Dict[Key, int] = {}
        # per-fragment sizes: number of real atoms, basis functions per model chemistry's basis
        numbers = [int(z) for z in molecule.atomic_numbers]
        self._frag_atoms = [len(f) for f in molecule.fragments]
        self._frag_nbf: Dict[Optional[str], List[float]] = {}
        for basis in set(self.basis.values()):
            self._frag_nbf[basis] = [basis_functions([numbers[i] for i in f], basis) for f in molecule.fragments]
        # 1-based lookups (fragment numbers are 1-based): size() is one C-level sum, no cache needed
        self._atoms_1 = [0.0] + [float(a) for a in self._frag_atoms]
        self._nbf_1 = {b: [0.0] + v for b, v in self._frag_nbf.items()}
        #: (key, size) → the estimate last handed out for fragments of that group (see reestimate)
        self._issued: Dict[Tuple[Key, float], float] = {}
        if history:
            self.load(history)

    # -- estimates --------------------------------------------------------------------------------
    def size(self, mc: str, real: Sequence[int], basis_frags: Sequence[int]) -> float:
        """The x the method scales with (see module docstring)."""
        b = self.basis.get(mc)
        if b is None:
            return float(sum(map(self._atoms_1.__getitem__, real)))
        return float(sum(map(self._nbf_1[b].__getitem__, basis_frags)))

    def fit_for(self, key: Key) -> Fit:
        fit = self.fits.get(key)
        if fit is not None:
            return fit
        program, method, driver = key
        return Fit(DEFAULT_PREFACTOR * DRIVER_FACTORS.get(driver, 1.0), method_exponent(method, program), 0)

    def estimate(self, mc: str, real: Sequence[int], basis_frags: Sequence[int]) -> float:
        return self.fit_for(self.keys[mc])(self.size(mc, real, basis_frags))

    def estimate_tasks(self, tasks: Iterable[Any]) -> Dict[int, float]:
        """Estimates for FragmentTasks (also stored on them)."""
        out = {}
        issued = self._issued
        for t in tasks:
            key = self.keys[t.mc]
            x = self.size(t.mc, t.real, t.basis)
            t.cost = self.fit_for(key)(x)
            issued[(key, x)] = t.cost
            out[t.id] = t.cost
        return out

    def reestimate(self, tasks: Iterable[Any]) -> Optional[Dict[int, float]]:
        """After a :meth:`refit`: new estimates for ``tasks`` (FragmentTasks, also stored on them)
        if the refit changed the *order* of the estimates, else None (nothing to re-sort).

        Fragments with the same program, method, driver and size get the same estimate, so the
        order is decided among these groups — a handful, however many fragments there are. A refit
        of one method's power law never changes the order of its own fragments (``a·x^b`` with
        b > 0 is increasing); it can reorder fragments of different model chemistries. When the
        order holds, the scheduler keeps the old figures (O(groups) instead of O(fragments) per
        refit: at ~680k fragments, re-estimating them all at every refit was most of the
        coordinator's time)."""
        issued = self._issued
        if issued and not self._order_changed():
            return None
        out: Dict[int, float] = {}
        fresh: Dict[Tuple[Key, float], float] = {}
        for t in tasks:
            key = self.keys[t.mc]
            x = self.size(t.mc, t.real, t.basis)
            g = (key, x)
            c = fresh.get(g)
            if c is None:
                c = fresh[g] = self.fit_for(key)(x)
            t.cost = c
            out[t.id] = c
        issued.update(fresh)
        for g in issued:  # groups with nothing pending: keep their estimate current too
            if g not in fresh:
                issued[g] = self.fit_for(g[0])(g[1])
        return out

    def _order_changed(self) -> bool:
        groups = sorted(self._issued, key=lambda g: self._issued[g])
        new = {g: self.fit_for(g[0])(g[1]) for g in groups}
        for g1, g2 in zip(groups, groups[1:]):
            o1, o2 = self._issued[g1], self._issued[g2]
            n1, n2 = new[g1], new[g2]
            if (o1 == o2) != (n1 == n2) or (o1 < o2 and not n1 < n2):
                return True
        return False

    # -- calibration ------------------------------------------------------------------------------
    def observe(self, mc: str, real: Sequence[int], basis_frags: Sequence[int], seconds: float) -> None:
        key = self.keys[mc]
        sample = (self.size(mc, real, basis_frags), float(seconds))
        self.samples.setdefault(key, []).append(sample)
        self.new_samples.setdefault(key, []).append(sample)

    def refit(self, force: bool = False) -> bool:
        """Refit keys whose sample count doubled since their last fit (or all, if ``force``).
        Returns whether any fit changed."""
        changed = False
        for key, samples in self.samples.items():
            n = len(samples)
            last = self._last_fit_n.get(key, 0)
            if not force and n < max(3, 2 * last):
                continue
            if len(samples) > MAX_SAMPLES_PER_KEY:
                samples[:] = samples[-MAX_SAMPLES_PER_KEY:]
            fit = fit_power_law(samples, method_exponent(key[1], key[0]))
            if fit is not None:
                self.fits[key] = fit
                self._last_fit_n[key] = n
                changed = True
        return changed

    # -- history file -----------------------------------------------------------------------------
    @staticmethod
    def _key_str(key: Key) -> str:
        return "|".join(key)

    def load(self, path: str) -> None:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise ValueError(f"cost history {path}: cannot read it ({exc})") from None
        for kstr, samples in data.get("samples", {}).items():
            key = tuple(kstr.split("|"))
            if len(key) == 3:
                self.samples.setdefault(key, []).extend((float(x), float(t)) for x, t in samples)  # type: ignore[arg-type]
        self.refit(force=True)
        self._last_fit_n = {k: len(v) for k, v in self.samples.items()}

    def save(self, path: Optional[str] = None) -> None:
        """Merge this run's measurements into the history file (atomically replaced)."""
        path = path or self.history_path
        if not path:
            return
        merged: Dict[str, List[Tuple[float, float]]] = {}
        try:
            with open(path) as fh:
                merged = {k: [tuple(s) for s in v] for k, v in json.load(fh).get("samples", {}).items()}
        except (OSError, ValueError):
            merged = {}
        for key, new in self.new_samples.items():
            lst = merged.setdefault(self._key_str(key), [])
            lst.extend(new)
            del lst[:-MAX_SAMPLES_PER_KEY]
        fits = {}
        for kstr, samples in merged.items():
            key = tuple(kstr.split("|"))
            fit = fit_power_law(samples, method_exponent(key[1], key[0]) if len(key) == 3 else DEFAULT_EXPONENT)
            if fit:
                fits[kstr] = {"prefactor": fit.prefactor, "exponent": fit.exponent, "n": fit.n}
        data = {"format": "qcmb_hpc-cost-history", "version": 1, "fits": fits, "samples": merged}
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".cost-history-")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
        self.new_samples = {}
