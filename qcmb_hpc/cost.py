"""Fragment cost estimates, and their calibration from measured times.

Before anything runs, a fragment's cost is estimated as

    seconds ≈ a · x^b · driver_factor

* ``x`` — the size the method scales with: the number of basis functions of the real *and* ghost
  atoms (a counterpoise fragment costs as much as its full basis), counted with the Basis Set
  Exchange when it knows the basis, else with a per-element table scaled by the basis' zeta level;
  for methods without a basis (dispersion, force fields, semi-empirical) the number of real atoms.
* ``b`` — the method's scaling exponent (:data:`METHOD_EXPONENTS`: HF/DFT 3.5 (any functional, PySCF's names too), MP2 and double hybrids 5, CCSD 6,
  CCSD(T) 7, dispersion/semi-empirical 2, anything else :data:`DEFAULT_EXPONENT`; dispersion and
  semi-empirical *programs*, :data:`PROGRAM_EXPONENTS`, 2 whatever the method is called).
* ``driver_factor`` — energy 1, gradient 2, Hessian 8.
* ``a`` — 1e-6 s until calibrated.

Calibration: every run records ``(x, measured seconds)`` per (program, method, driver); a
least-squares line in log–log space gives ``a`` and ``b`` (``b`` only with enough spread in ``x``,
clamped to [0.5, 8]). Fits are kept in a cost-history file (``ParallelConfig.cost_history``; the
Python API keeps none unless asked, the command line keeps one per user, see :mod:`qcmb_hpc.cli`)
that later runs start from.

During a run the model refits as this run's measurements arrive — on their own schedule: a
(program, method, driver) is refitted when *this run's* samples of it reach 3, 6, 12, … (a full
history does not postpone it), and in that fit the whole history weighs as
:data:`HISTORY_WEIGHT` samples at most, so what this run measures soon outweighs a history from
another machine or another version of the program (before this run measures anything, the
history alone gives the fit). The coordinator
re-orders the remaining queue when the refit changes the order of the estimates (:meth:`CostModel.
reestimate`: decided among the few (method, size) groups, not per fragment). :func:`spearman`
measures how well estimates ranked the real times; :attr:`CostModel.initial_estimates` keeps the
estimates the run started with, for that measure.

How far to trust an estimate: the spread of the log-residuals. Each fit also measures how far the
measured times scatter around it — the standard deviation of ``log(measured / fitted)`` over the
samples it was fitted to (history and this run, weighted as in the fit; degrees of freedom
corrected for the one or two fitted parameters). :meth:`CostModel.spread` shrinks that towards
:data:`DEFAULT_SPREAD` (0.3, as if the default were :data:`SPREAD_PRIOR_WEIGHT` samples), so a
few lucky samples do not claim a precise model. Before any sample a key's spread is the default,
0.3: what a user sees uncalibrated — the measured scheduling runs (``benchmarks/results/
scheduling.json``: ``qcmb_sleep``, a lognormal 0.25 per fragment, and a sleep of ``atoms^3``
where the model assumes ``nbf^3.5``) scatter by 0.30–0.35 around the default model (with the best
prefactor; 0.24–0.25 around their own calibrated fit) — and the noise the simulation's
predictions assume. :meth:`CostModel.risk` turns the spread into an upper-quantile
factor, ``exp(z·spread)`` with ``z`` the 90th percentile of the normal distribution — a fragment
estimated at ``c`` seconds takes at most ``c·risk`` nine times in ten — which the scheduler's tail
guard uses (:mod:`qcmb_hpc.schedule`; :func:`task_risk` makes the per-task function it takes).

The history file is a cache, never a reason for a run to fail: a missing file is an empty history;
an unreadable or invalid one (not JSON, not a JSON object, not a ``qcmb_hpc-cost-history``) is a
one-line warning and the run starts from the defaults, and :meth:`CostModel.save` then moves it
aside to ``<file>.corrupt`` and starts a new one; a history that cannot be written is a one-line
warning. Several runs (e.g. the tasks of a Slurm job array) can share one file: :meth:`CostModel.
save` merges under an exclusive ``flock`` on ``<file>.lock`` and replaces the file atomically, so no
run's samples are lost (each key keeps its newest :data:`MAX_SAMPLES_PER_KEY`).

Basis functions come from the ``basis_set_exchange`` package (a dependency): when it cannot be
imported, or does not know a basis, the per-element estimate is used and that is logged once (on
the ``qcmb_hpc`` logger: a warning for the missing package, info for an unknown basis).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from .checkpoint import write_atomically

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: saves are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MLLoadBalancer",
    "METHOD_EXPONENTS",
    "PROGRAM_EXPONENTS",
    "DEFAULT_EXPONENT",
    "DRIVER_FACTORS",
    "method_exponent",
    "basis_functions",
    "CostModel",
    "Fit",
    "fit_power_law",
    "DEFAULT_SPREAD",
    "upper_quantile",
    "shrunk_spread",
    "task_risk",
    "spearman",
    "merge_samples",
    "history_document",
    "parse_history",
]

logger = logging.getLogger("qcmb_hpc")

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
    (r"b2plyp|b2gpplyp|dsd-|pwpb95|xyg3", 5.0),  # double hybrids: DFT plus an MP2-like term
    # DFT as PySCF (libxc) names it too: any functional, or "x,c" pairs such as "b88,lyp"
    (r"^hf|^scf|^rhf|^uhf|^rohf|b3lyp|pbe|blyp|lyp|tpss|m06|m11|mn1\d|wb97|b97|svwn|vwn|lda|bp86|b88|pw91|hse|hcth|r2scan|scan|cam|^dft", 3.5),
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


@lru_cache(maxsize=1)
def _bse() -> Any:
    """The ``basis_set_exchange`` module, or None — logged once — when it cannot be imported."""
    try:
        import basis_set_exchange
    except ImportError as exc:
        logger.warning(
            "cost model: basis_set_exchange cannot be imported (%s); basis functions are estimated per element", exc
        )
        return None
    return basis_set_exchange


_FALLBACK_LOGGED: Set[str] = set()


def _bse_nbf(bse: Any, basis: str, z: int) -> int:
    """Basis functions of element ``z`` in ``basis`` by the Basis Set Exchange (KeyError if unknown)."""
    data = bse.get_basis(basis, elements=[z], header=False)
    n = 0
    for sh in data["elements"][str(z)]["electron_shells"]:
        pure = sh["function_type"].endswith("spherical")
        ams = sh["angular_momentum"]
        ncontr = len(sh["coefficients"]) if len(ams) == 1 else 1
        for am in ams:
            n += ncontr * ((2 * am + 1) if pure else (am + 1) * (am + 2) // 2)
    return n


@lru_cache(maxsize=4096)
def _nbf_element(basis: str, z: int) -> float:
    bse = _bse()
    if bse is not None:
        try:
            n = _bse_nbf(bse, basis, z)
        except Exception as exc:  # KeyError: unknown basis or element; anything else: BSE data we cannot read
            reason = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else f"{type(exc).__name__}: {exc}"
        else:
            if n > 0:
                return float(n)
            reason = f"no functions for element {z}"
        if basis not in _FALLBACK_LOGGED:  # once per basis (per process)
            _FALLBACK_LOGGED.add(basis)
            logger.info("cost model: basis %r not from the Basis Set Exchange (%s); estimated per element", basis, reason)
    return _fallback_nbf(z, basis)


def basis_functions(atomic_numbers: Iterable[int], basis: Optional[str]) -> float:
    """Number of basis functions of these atoms in ``basis`` (estimated if BSE does not know it)."""
    if not basis:
        return float(sum(1 for _ in atomic_numbers))
    b = basis.strip().lower()
    return float(sum(_nbf_element(b, int(z)) for z in atomic_numbers))


#: spread (standard deviation of the log-residuals) assumed for a key before it has samples
DEFAULT_SPREAD = 0.3
#: in :func:`shrunk_spread`, the default weighs as this many samples
SPREAD_PRIOR_WEIGHT = 5.0
#: the upper quantile the scheduler plans with: the 90th percentile of N(0, 1)
RISK_Z = 1.2815515655446004


def upper_quantile(spread: float, z: float = RISK_Z) -> float:
    """The factor from an estimate to its upper quantile when log-residuals have standard deviation
    ``spread``: ``exp(z·spread)`` (1 when the estimates are exact)."""
    return math.exp(z * max(0.0, spread))


def shrunk_spread(spread: Optional[float], dof: float, prior: float = DEFAULT_SPREAD, prior_weight: float = SPREAD_PRIOR_WEIGHT) -> float:
    """A fit's residual spread measured with ``dof`` degrees of freedom, pooled (in variance) with
    ``prior`` weighing ``prior_weight`` samples; ``prior`` when nothing was measured."""
    if spread is None or dof <= 0:
        return prior
    return math.sqrt((prior_weight * prior**2 + dof * spread**2) / (prior_weight + dof))


@dataclass
class Fit:
    prefactor: float
    exponent: float
    n: int = 0  #: measurements behind it (0 = defaults)
    #: standard deviation of log(measured / fitted) over the samples (None: too few to tell)
    spread: Optional[float] = None
    dof: float = 0.0  #: the (weighted) degrees of freedom behind ``spread``

    def __call__(self, x: float) -> float:
        return self.prefactor * max(x, 1.0) ** self.exponent


def fit_power_law(
    samples: Sequence[Tuple[float, float]], default_exponent: float, weights: Optional[Sequence[float]] = None
) -> Optional[Fit]:
    """(Weighted) least squares of log t = log a + b log x. With too little spread in x only ``a``
    is fitted (``b`` stays at its default). None without usable samples."""
    ws = weights if weights is not None else [1.0] * len(samples)
    pts = [(math.log(max(x, 1.0)), math.log(t), w) for (x, t), w in zip(samples, ws) if t > 0 and x > 0 and w > 0]
    if not pts:
        return None
    n = len(pts)
    sw = sum(p[2] for p in pts)
    mx = sum(p[0] * p[2] for p in pts) / sw
    my = sum(p[1] * p[2] for p in pts) / sw
    sxx = sum(p[2] * (p[0] - mx) ** 2 for p in pts)
    b = default_exponent
    fitted = 1  # parameters fitted to the samples: log a, and b when x spreads
    if n >= 3 and sxx > 0.05 * sw:  # x must spread by a few tens of percent
        b = sum(p[2] * (p[0] - mx) * (p[1] - my) for p in pts) / sxx
        b = min(8.0, max(0.5, b))
        fitted = 2
    log_a = my - b * mx
    # residual spread, with the degrees of freedom the fit used up (weighted: sw samples' worth)
    dof = sw * (n - fitted) / n
    spread = None
    if dof > 0:
        ss = sum(p[2] * (p[1] - log_a - b * p[0]) ** 2 for p in pts)
        spread = math.sqrt(ss / dof)
    return Fit(prefactor=math.exp(log_a), exponent=b, n=n, spread=spread, dof=dof if spread is not None else 0.0)


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


def _reordered(old: Mapping[Any, float], new: Mapping[Any, float]) -> bool:
    """Whether the values ``new`` order the keys of ``old`` differently (ties included)."""
    keys = sorted(old, key=old.__getitem__)
    for g1, g2 in zip(keys, keys[1:]):
        o1, o2, n1, n2 = old[g1], old[g2], new[g1], new[g2]
        if (o1 == o2) != (n1 == n2) or (o1 < o2 and not n1 < n2):
            return True
    return False


def task_risk(cost_model: Any, tasks: Mapping[int, Any]) -> Callable[[int], float]:
    """The per-task upper-quantile factor the scheduler's tail guard takes (task id → factor):
    ``cost_model.risk`` of the task's model chemistry, or — without a cost model (the simulation
    of bare cost lists) — every task :data:`DEFAULT_SPREAD`'s."""
    risk = getattr(cost_model, "risk", None)
    if risk is None:
        factor = upper_quantile(DEFAULT_SPREAD)
        return lambda tid: factor
    return lambda tid: risk(tasks[tid].mc)


Key = Tuple[str, str, str]  # (program, method, driver)
Sample = Tuple[float, float]  # (x, measured seconds)

MAX_SAMPLES_PER_KEY = 2000
MIN_REFIT_SAMPLES = 3  #: this run's samples of a key before its first in-run refit (then 2×, 4×, …)
HISTORY_WEIGHT = 10.0  #: in an in-run fit, the history of a key weighs as this many samples at most
HISTORY_FORMAT = "qcmb_hpc-cost-history"
LOCK_TIMEOUT = 30.0  #: seconds a save waits for another run's lock before it gives up (a warning)


# ------------------------------------------------------------------------------------------------
# the history document: pure functions (no I/O)
# ------------------------------------------------------------------------------------------------


def _key_str(key: Key) -> str:
    return "|".join(key)


def _str_key(kstr: str) -> Optional[Key]:
    parts = tuple(kstr.split("|"))
    return parts if len(parts) == 3 else None  # type: ignore[return-value]


def parse_history(data: Any) -> Dict[str, List[Sample]]:
    """The samples of a decoded history document (key string → samples). ``ValueError`` with a
    short reason if it is not a cost history."""
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object (a {type(data).__name__})")
    if data.get("format", HISTORY_FORMAT) != HISTORY_FORMAT:
        raise ValueError(f"format {data.get('format')!r}, not {HISTORY_FORMAT!r}")
    samples = data.get("samples", {})
    if not isinstance(samples, dict):
        raise ValueError("'samples' is not an object")
    out: Dict[str, List[Sample]] = {}
    try:
        for kstr, lst in samples.items():
            out[str(kstr)] = [(float(x), float(t)) for x, t in lst]
    except (TypeError, ValueError):
        raise ValueError(f"the samples of {kstr!r} are not [size, seconds] pairs") from None
    return out


def merge_samples(existing: Mapping[str, Sequence[Sample]], new: Mapping[Key, Iterable[Sample]]) -> Dict[str, List[Sample]]:
    """``existing`` (from the file) plus this run's ``new`` samples; each key keeps its newest
    :data:`MAX_SAMPLES_PER_KEY`."""
    merged = {k: list(v) for k, v in existing.items()}
    for key, samples in new.items():
        _append_newest(merged.setdefault(_key_str(key), []), samples)
    return merged


def _append_newest(lst: List[Sample], samples: Iterable[Sample]) -> None:
    """Append ``samples`` to ``lst``, keeping its newest :data:`MAX_SAMPLES_PER_KEY`."""
    lst.extend(samples)
    del lst[:-MAX_SAMPLES_PER_KEY]


def history_document(samples: Mapping[str, Sequence[Sample]]) -> Dict[str, Any]:
    """The JSON document of a history: the samples, and (for people reading it) the fit of each key."""
    fits = {}
    for kstr, lst in samples.items():
        key = _str_key(kstr)
        fit = fit_power_law(lst, method_exponent(key[1], key[0]) if key else DEFAULT_EXPONENT)
        if fit:
            fits[kstr] = {"prefactor": fit.prefactor, "exponent": fit.exponent, "n": fit.n, "spread": shrunk_spread(fit.spread, fit.dof)}
    return {"format": HISTORY_FORMAT, "version": 1, "fits": fits, "samples": {k: [list(s) for s in v] for k, v in samples.items()}}


# ------------------------------------------------------------------------------------------------
# the history file: I/O
# ------------------------------------------------------------------------------------------------


def _read_history(path: str) -> Dict[str, List[Sample]]:
    """The samples in ``path``: FileNotFoundError if there is none, another OSError if it cannot
    be read, ValueError (a short reason) if it is not a cost history."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    return parse_history(data)


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__


@contextlib.contextmanager
def _locked(lock_path: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` (created, never removed: removing a lock file races
    with the next locker). ``TimeoutError`` after ``timeout`` seconds; where the file system has
    no ``flock`` (some NFS/Lustre mounts), unlocked, and that is logged."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(errno.ETIMEDOUT, f"another run held {lock_path} for {timeout:.0f} s") from None
                time.sleep(0.01)
            except OSError as exc:  # ENOLCK, ENOSYS, EOPNOTSUPP: this file system cannot lock
                logger.info("cost history: cannot lock %s (%s); saving without a lock", lock_path, _reason(exc))
                break
        yield
    finally:
        os.close(fd)  # releases the lock


class CostModel:
    """Estimates and calibrates fragment costs for one run.

    ``specifications`` is mc → {"program", "specification": {"model": {"method", "basis"}, "driver"}}.
    ``history``: a cost-history file to start from and (:meth:`save`) to add this run's
    measurements to; None (the default of the Python API: explicit opt-in) keeps none.
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
        #: samples of earlier runs (from the history file), at most MAX_SAMPLES_PER_KEY per key
        self.history: Dict[Key, List[Sample]] = {}
        #: this run's samples not yet saved (the newest MAX_SAMPLES_PER_KEY per key)
        self.new_samples: Dict[Key, Deque[Sample]] = {}
        self._observed: Dict[Key, int] = {}  # this run's measurements per key (all of them)
        self._fitted_at: Dict[Key, int] = {}  # _observed at the key's last in-run fit
        #: task id → the first estimate handed out for it (what the run started with)
        self.initial_estimates: Dict[int, float] = {}
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
        #: key → the risk factor in force when its estimates were last handed out
        self._issued_risk: Dict[Key, float] = {}
        self._risk: Dict[str, float] = {}  # mc → risk factor at revision _risk_revision
        self._risk_revision = -1
        #: changes whenever a fit does (readers of :meth:`group_estimate` re-price on a change)
        self.revision = 0
        if history:
            self.load(history)

    # -- estimates --------------------------------------------------------------------------------
    def size(self, mc: str, real: Sequence[int], basis_frags: Sequence[int]) -> float:
        """The x the method scales with (see module docstring)."""
        lookup, by_real = self._sizer(mc)
        return float(sum(map(lookup, real if by_real else basis_frags)))

    def fit_for(self, key: Key) -> Fit:
        fit = self.fits.get(key)
        if fit is not None:
            return fit
        program, method, driver = key
        return Fit(DEFAULT_PREFACTOR * DRIVER_FACTORS.get(driver, 1.0), method_exponent(method, program), 0)

    def estimate(self, mc: str, real: Sequence[int], basis_frags: Sequence[int]) -> float:
        return self.fit_for(self.keys[mc])(self.size(mc, real, basis_frags))

    def spread(self, key: Key) -> float:
        """The spread of ``key``'s log-residuals (see the module docstring): its fit's, shrunk
        towards :data:`DEFAULT_SPREAD`; the default before the key has samples."""
        fit = self.fits.get(key)
        return shrunk_spread(fit.spread, fit.dof) if fit is not None else DEFAULT_SPREAD

    def risk(self, mc: str) -> float:
        """The upper-quantile factor of model chemistry ``mc``'s estimates (``exp(z·spread)``,
        :func:`upper_quantile`); kept per revision (the scheduler asks once per task)."""
        if self._risk_revision != self.revision:
            self._risk = {}
            self._risk_revision = self.revision
        r = self._risk.get(mc)
        if r is None:
            r = self._risk[mc] = upper_quantile(self.spread(self.keys[mc]))
        return r

    def group(self, task: Any) -> Tuple[Key, float]:
        """The pricing group of a FragmentTask: fragments of one group always get one estimate."""
        return (self.keys[task.mc], self.size(task.mc, task.real, task.basis))

    def groups(self, tasks: Iterable[Any]) -> List[Tuple[Key, float]]:
        """:meth:`group` of each of ``tasks``, in order; one sizer per model chemistry and one
        tuple per group (a ledger of 680k fragments is built in a fraction of a second)."""
        sizers = {mc: self._sizer(mc) for mc in self.keys}
        made: Dict[Tuple[str, float], Tuple[Key, float]] = {}
        out: List[Tuple[Key, float]] = []
        for t in tasks:
            mc = t.mc
            lookup, by_real = sizers[mc]
            x = float(sum(map(lookup, t.real if by_real else t.basis)))
            g = made.get((mc, x))
            if g is None:
                g = made[(mc, x)] = (self.keys[mc], x)
            out.append(g)
        return out

    def group_estimate(self, group: Tuple[Key, float]) -> float:
        """The current estimate of the fragments of ``group`` (after any refit)."""
        return self.fit_for(group[0])(group[1])

    def estimate_tasks(self, tasks: Iterable[Any]) -> Dict[int, float]:
        """Estimates for FragmentTasks (also stored on them; the first one of each task is kept in
        :attr:`initial_estimates`)."""
        out: Dict[int, float] = {}
        # priced once per (model chemistry, size) group — a handful — not per task (fit_for makes
        # a default Fit, matching the method's name against every pattern, at each call)
        prices: Dict[str, Dict[float, float]] = {mc: {} for mc in self.keys}
        sizers = {mc: self._sizer(mc) for mc in self.keys}
        for t in tasks:
            mc = t.mc
            lookup, by_real = sizers[mc]
            x = float(sum(map(lookup, t.real if by_real else t.basis)))
            group = prices[mc]
            c = group.get(x)
            if c is None:
                c = group[x] = self.fit_for(self.keys[mc])(x)
            t.cost = c
            out[t.id] = c
        for mc, group in prices.items():
            for x, c in group.items():
                self._issued[(self.keys[mc], x)] = c
        self._note_issued_risk()
        if not self.initial_estimates:  # (the usual case: one dict of ~680k kept, not two)
            self.initial_estimates = out
            return dict(out)
        for tid, c in out.items():
            self.initial_estimates.setdefault(tid, c)
        return out

    def _note_issued_risk(self) -> None:
        for key in {g[0] for g in self._issued}:
            self._issued_risk[key] = upper_quantile(self.spread(key))

    def _sizer(self, mc: str) -> Tuple[Any, bool]:
        """What :meth:`size` sums for ``mc``: (fragment number → size, whether over the real
        fragments — else over the basis fragments)."""
        b = self.basis.get(mc)
        if b is None:
            return self._atoms_1.__getitem__, True
        return self._nbf_1[b].__getitem__, False

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
        self._note_issued_risk()
        return out

    def _order_changed(self) -> bool:
        """Whether a refit changed the order of the groups' estimates, or of their upper quantiles
        (estimate × :meth:`risk` factor: the order the tail guard hands work out in)."""
        issued, issued_risk = self._issued, self._issued_risk
        new = {g: self.fit_for(g[0])(g[1]) for g in issued}
        risk = {key: upper_quantile(self.spread(key)) for key in {g[0] for g in issued}}
        old_rank = {g: c * issued_risk.get(g[0], 1.0) for g, c in issued.items()}
        new_rank = {g: c * risk[g[0]] for g, c in new.items()}
        return _reordered(issued, new) or _reordered(old_rank, new_rank)

    # -- calibration ------------------------------------------------------------------------------
    def observe(self, mc: str, real: Sequence[int], basis_frags: Sequence[int], seconds: float) -> bool:
        """Record one measurement of this run; returns whether a refit is due (:meth:`refit_due`)."""
        key = self.keys[mc]
        new = self.new_samples.get(key)
        if new is None:
            new = self.new_samples[key] = collections.deque(maxlen=MAX_SAMPLES_PER_KEY)
        new.append((self.size(mc, real, basis_frags), float(seconds)))
        self._observed[key] = self._observed.get(key, 0) + 1
        return self.refit_due(key)

    def refit_due(self, key: Key) -> bool:
        """The refit schedule, the one a run follows: a key is refitted once *this run* has
        :data:`MIN_REFIT_SAMPLES` samples of it, then each time that count has doubled (3, 6, 12, …)
        — however long its history."""
        return self._observed.get(key, 0) >= max(MIN_REFIT_SAMPLES, 2 * self._fitted_at.get(key, 0))

    def refit(self, force: bool = False) -> bool:
        """Refit the keys whose count of *this run's* samples reached :data:`MIN_REFIT_SAMPLES`,
        then doubled since their last fit (all keys with ``force``). History samples take part, but
        weigh together as :data:`HISTORY_WEIGHT` samples at most. Returns whether any fit changed."""
        changed = False
        for key in set(self.history) | set(self.new_samples):
            if not force and not self.refit_due(key):
                continue
            self._fitted_at[key] = self._observed.get(key, 0)
            fit = self._fit(key)
            if fit is not None:
                self.fits[key] = fit
                changed = True
        if changed:
            self.revision += 1
        return changed

    def _fit(self, key: Key) -> Optional[Fit]:
        old = self.history.get(key, [])
        new = list(self.new_samples.get(key, ()))
        w_old = min(1.0, HISTORY_WEIGHT / len(old)) if new and old else 1.0
        return fit_power_law(old + new, method_exponent(key[1], key[0]), [w_old] * len(old) + [1.0] * len(new))

    # -- history file -----------------------------------------------------------------------------
    def load(self, path: str) -> bool:
        """Start from the history in ``path``; returns whether there was one. A missing file is an
        empty history; one that cannot be read or is not a cost history is logged (a warning) and
        ignored — :meth:`save` moves it aside."""
        try:
            samples = _read_history(path)
        except (FileNotFoundError, NotADirectoryError):
            logger.debug("cost history %s: none yet", path)
            return False
        except (OSError, ValueError) as exc:
            logger.warning("cost history %s: ignored, %s", path, _reason(exc))
            return False
        for kstr, lst in samples.items():
            key = _str_key(kstr)
            if key is not None and lst:
                self.history[key] = lst[-MAX_SAMPLES_PER_KEY:]
        self.refit(force=True)
        logger.debug(
            "cost history %s: %d timings of %d program/method/driver",
            path, sum(map(len, self.history.values())), len(self.history),
        )
        return True

    def save(self, path: Optional[str] = None) -> bool:
        """Merge this run's measurements into the history file; returns whether it was written.

        Under an exclusive lock on ``<path>.lock`` (runs sharing the file, e.g. a Slurm job array,
        lose none of each other's samples): read, merge, write a temporary file in the same
        directory, rename it over ``path``. A file that is not a cost history is moved aside to
        ``<path>.corrupt`` (a warning) and a new one started. Any OSError (a directory that cannot be
        made or written, a lock held too long) is a one-line warning and False, never an exception."""
        path = path or self.history_path
        if not path:
            return False
        if not any(self.new_samples.values()):
            return True  # nothing measured: nothing to add
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with _locked(path + ".lock"):
                try:
                    existing = _read_history(path)
                except FileNotFoundError:
                    existing = {}
                except ValueError as exc:
                    os.replace(path, path + ".corrupt")
                    logger.warning("cost history %s: %s; moved to %s.corrupt, starting a new one", path, exc, path)
                    existing = {}
                merged = merge_samples(existing, self.new_samples)
                write_atomically(path, json.dumps(history_document(merged)))
        except OSError as exc:
            logger.warning("cost history %s: this run's timings not saved (%s)", path, _reason(exc))
            return False
        for key, new in self.new_samples.items():  # saved: they are history now (never saved twice)
            _append_newest(self.history.setdefault(key, []), new)
        self.new_samples = {}
        return True


class MLLoadBalancer:
    """The design document's ``MLLoadBalancer``: fragment costs predicted from a model calibrated
    on measured times, and a distribution of fragments optimised with them.

    The model is this module's: basis functions (real and ghost atoms) to the power of the
    method's scaling, times the driver's factor, with the prefactor and exponent fitted per
    program/method/driver in log–log space to this run's and earlier runs' measured times (the
    cost history). There is no learned model beyond that calibrated power law (a richer model
    would have to predict held-out measured times better than it before being switched on).

    ``predict_fragment_cost(task)`` is the current estimate in seconds (relative units before any
    calibration); ``optimize_distribution(tasks, workers)`` places the tasks largest first onto
    the least loaded worker by those predictions (what :class:`~qcmb_hpc.schedule.TaskDistributor`
    does), returning worker → its tasks."""

    def __init__(self, cost_model: "CostModel"):
        self.model = cost_model

    @classmethod
    def for_input(cls, input_data: Any, history: Optional[str] = None) -> "MLLoadBalancer":
        """A balancer for a ManyBodyInput's expansion (planned as QCManyBody plans it)."""
        from .plan import make_plan

        plan = make_plan(input_data)
        return cls(CostModel(plan.core.molecule, plan.specifications, history=history))

    def predict_fragment_cost(self, fragment: Any) -> float:
        return self.model.estimate(fragment.mc, fragment.real, fragment.basis)

    def optimize_distribution(self, fragments: Sequence[Any], workers: Optional[int] = None) -> Dict[int, List[Any]]:
        from .schedule import lpt_partition

        n = int(workers) if workers else max(1, os.cpu_count() or 1)
        frags = list(fragments)
        parts = lpt_partition({i: self.predict_fragment_cost(f) for i, f in enumerate(frags)}, list(range(n)))
        return {w: [frags[i] for i in ids] for w, ids in parts.items()}
