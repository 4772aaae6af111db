"""QCEngine harness ``pyscf``: PySCF (``pip install pyscf``) as a QCEngine program.

``qcengine.compute(atomic_input, "pyscf")`` once :mod:`qcmb_hpc` has been imported (it registers
the harness, see :mod:`qcmb_hpc.engines`). Takes and returns QCSchema v2 models (QCEngine hands
harnesses v2 inputs and converts the result back to what the caller gave).

What it runs (``model.method``, case-insensitive):

========================  ===============================  ======================================
method                    energy                           gradient / Hessian
========================  ===============================  ======================================
``hf`` ``scf``            RHF, UHF or ROHF                 both (no ROHF Hessian: PySCF has none)
``rhf`` ``uhf`` ``rohf``  the same, reference fixed
any functional PySCF      RKS, UKS or ROKS                 both (no ROKS Hessian); Hessians omit
knows (``b3lyp``,                                          the grid response (PySCF does not
``pbe0``, ``wb97x``...)                                    have it): ~1e-5–1e-4 from differences
``mp2``                   MP2 (DF-MP2 with density         gradient (not with density fitting,
                          fitting) on RHF or UHF           which PySCF lacks); no Hessian
``ccsd`` ``ccsd(t)``      CCSD, CCSD(T) on RHF/UHF         energy only
                          (CCSD also on ROHF)
========================  ===============================  ======================================

The reference comes from the multiplicity (singlet: restricted, else unrestricted) unless the
``reference`` keyword or an ``rhf``/``uhf``/``rohf`` method says otherwise. ROHF-MP2 and
ROHF-CCSD(T) are refused: PySCF would run them on non-canonical ROHF orbitals.

Keywords (``specification.keywords``, see :data:`KEYWORDS`) map to PySCF settings; an unknown
keyword, a value of the wrong type, an unknown method or basis, and a driver the method cannot do
are a QCEngine ``InputError`` naming what is wrong (qcmb_hpc never retries those). An SCF (or CC)
that does not converge is a ``ConvergenceError``: a failed result that says so.

The molecule: geometry in bohr as QCSchema has it; atoms with ``real`` false are ghost atoms
(PySCF ``ghost-X``: basis functions, no nuclear charge, no electrons — what counterpoise needs);
charge and multiplicity are the molecule's (QCManyBody sets each fragment's). Gradients are
``(natom, 3)`` and Hessians ``(3·natom, 3·natom)`` over *all* atoms, ghosts included, as every
QCEngine harness returns them and QCManyBody expects: the rows of a ghost atom are the derivative
of the energy with respect to where its basis functions sit, which the counterpoise-corrected
gradient needs (QCManyBody adds them to the real atom's rows in the fragment that owns it).

Resources (QCEngine's ``task_config``): ``ncores`` → PySCF's OpenMP threads
(``pyscf.lib.num_threads``), with the BLAS libraries of the process (numpy's) held to one thread
(``threadpoolctl``: a second thread pool competing with OpenMP's for the same cores only slows
PySCF down, see :data:`BLAS_THREADS_MEASURED`), both put back afterwards;
``memory`` (GiB) → ``Mole.max_memory`` (MB); ``scratch_directory`` → PySCF's temporary files
(``lib.param.TMPDIR``) go to a directory of their own there, removed afterwards (kept with
``scratch_messy``). No SCF checkpoint file is written.

Two PySCF 2.14 facts the harness works around: ``dsyevr`` (scipy-openblas) stops with "Internal
Error" on the DIIS matrix of some tightly converged SCFs, so PySCF's DIIS gets an eigensolver that
retries with ``evd`` (:func:`_sturdy_eigh`); and DFT gradients with the grid response are wrong
when there are ghost atoms (~1e-5 Eh/bohr against differences of the energy), so that pair is an
input error — without the grid response a DFT gradient is ~1e-6 from the energy's slope on a
default grid, as in other programs.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Iterator, Optional, Tuple

from qcelemental.models.v2 import AtomicInput, AtomicResult
from qcelemental.util import safe_version, which_import

from qcengine.config import TaskConfig
from qcengine.exceptions import ConvergenceError, InputError
from qcengine.programs.model import ProgramHarness

__all__ = ["PySCFHarness", "KEYWORDS", "MB_PER_GIB"]

#: seconds of DF-RHF + DF-MP2/cc-pVDZ (PySCF 2.14, 2 cores, numpy's scipy-openblas with pthreads)
#: by (OpenMP threads, numpy BLAS threads): a water monomer in the basis of the (H2O)6 ring, and
#: the ring itself. Two OpenMP threads with one BLAS thread is fastest in both.
BLAS_THREADS_MEASURED = {
    "monomer in the hexamer's basis": {(1, 1): 0.73, (2, 1): 0.48, (1, 2): 1.01, (2, 2): 1.62},
    "(H2O)6": {(1, 1): 1.32, (2, 1): 0.87, (1, 2): 1.80, (2, 2): 2.07},
}

logger = logging.getLogger("qcmb_hpc")

MB_PER_GIB = 2**30 / 1e6  # PySCF's max_memory is in MB of 10^6 bytes (it compares it with RSS / 1e6)

HF_METHODS = {"hf": None, "scf": None, "rhf": "rhf", "uhf": "uhf", "rohf": "rohf"}
CORRELATED = ("mp2", "ccsd", "ccsd(t)")
REFERENCES = {"rhf": "r", "rks": "r", "uhf": "u", "uks": "u", "rohf": "ro", "roks": "ro"}
INIT_GUESSES = ("minao", "atom", "huckel", "1e", "sap")


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise TypeError("true or false")


def _int(lo: int = 0, hi: Optional[int] = None) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise TypeError(f"an integer from {lo}" + (f" to {hi}" if hi is not None else " up"))
        return v

    return parse


def _positive(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise TypeError("a positive number")
    return float(v)


def _nonnegative(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise TypeError("a number ≥ 0")
    return float(v)


def _fraction(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise TypeError("a number from 0 to below 1")
    return float(v)


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str) or v.lower() not in allowed:
            raise TypeError("one of " + ", ".join(allowed))
        return v.lower()

    return parse


def _name(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise TypeError("a name")
    return v.strip()


def _frozen(v: Any) -> Any:
    if isinstance(v, bool) or (isinstance(v, int) and v >= 0):
        return v
    raise TypeError("true (the usual core: PySCF's chemcore), false, or a number of orbitals")


def _grid(v: Any) -> Tuple[int, int]:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
        return int(v[0]), int(v[1])
    raise TypeError("[radial points, angular points]")


@dataclass(frozen=True)
class Keyword:
    parse: Callable[[Any], Any]
    default: Any
    help: str


#: every keyword the harness takes: name → (parser, default, what it sets)
KEYWORDS: Dict[str, Keyword] = {
    "reference": Keyword(_choice(*REFERENCES), None, "rhf/uhf/rohf (rks/uks/roks alike); default: from the multiplicity"),
    "scf_conv_tol": Keyword(_positive, 1e-9, "SCF energy convergence (Eh): mf.conv_tol"),
    "scf_conv_tol_grad": Keyword(_positive, None, "SCF orbital gradient convergence: mf.conv_tol_grad (PySCF: sqrt(conv_tol))"),
    "scf_max_cycle": Keyword(_int(1), 100, "SCF iterations at most: mf.max_cycle"),
    "scf_init_guess": Keyword(_choice(*INIT_GUESSES), "minao", "initial guess: mf.init_guess"),
    "scf_level_shift": Keyword(_nonnegative, 0.0, "level shift (Eh): mf.level_shift"),
    "scf_damp": Keyword(_fraction, 0.0, "density damping: mf.damp"),
    "scf_diis_space": Keyword(_int(1), 8, "DIIS vectors: mf.diis_space"),
    "density_fitting": Keyword(_bool, False, "density fitting: SCF with mf.density_fit(), MP2 as DF-MP2, CCSD with DF integrals"),
    "auxbasis": Keyword(_name, None, "auxiliary basis of the SCF's density fitting (PySCF's default: the basis' JK-fit set)"),
    "frozen_core": Keyword(_frozen, False, "frozen core of MP2/CC: true = PySCF's chemcore of the real atoms, or a number of orbitals"),
    "grid_level": Keyword(_int(0, 9), None, "DFT grid level 0–9: mf.grids.level (PySCF's default 3)"),
    "grid_atom_grid": Keyword(_grid, None, "DFT grid [radial, angular] per atom: mf.grids.atom_grid"),
    "grid_prune": Keyword(_bool, True, "prune the DFT grid (PySCF's NWChem-style pruning); false: no pruning"),
    "grid_response": Keyword(_bool, False, "DFT gradients with the grid's response to the atoms moving (not with ghost atoms)"),
    "cc_conv_tol": Keyword(_positive, 1e-8, "CC energy convergence (Eh): mycc.conv_tol"),
    "cc_max_cycle": Keyword(_int(1), 100, "CC iterations at most: mycc.max_cycle"),
    "cart": Keyword(_bool, False, "Cartesian d, f, ... functions (NWChem's default) instead of spherical"),
    "ecp": Keyword(_name, None, "effective core potentials: mol.ecp (default: the basis' own, e.g. def2-*)"),
    "verbose": Keyword(_int(0, 9), 4, "PySCF's print level of the output kept in the result's stdout"),
}


@dataclass
class Request:
    """What to run, checked before PySCF does anything."""

    kind: str  #: "hf", "dft" or one of CORRELATED
    xc: Optional[str]
    reference: str  #: "r", "u" or "ro"
    driver: str
    basis: str
    options: Dict[str, Any]


def parse_request(inp: AtomicInput) -> Request:
    """The :class:`Request` of ``inp``, or ``InputError`` naming what is wrong."""
    spec = inp.specification
    driver = getattr(spec.driver, "value", spec.driver)
    method = (spec.model.method or "").strip().lower()
    basis = spec.model.basis
    if not isinstance(basis, str) or not basis.strip():
        raise InputError(f"pyscf needs a basis set name (model.basis), got {basis!r}")
    options = {}
    for key, value in spec.keywords.items():
        kw = KEYWORDS.get(key.lower())
        if kw is None:
            raise InputError(f"pyscf: unknown keyword {key!r}; known: {', '.join(sorted(KEYWORDS))}")
        try:
            options[key.lower()] = kw.parse(value)
        except TypeError as exc:
            raise InputError(f"pyscf: keyword {key!r} must be {exc}, got {value!r}") from None
    for key, kw in KEYWORDS.items():
        options.setdefault(key, kw.default)

    xc = None
    if method in HF_METHODS:
        kind, ref_from_method = "hf", HF_METHODS[method]
    elif method in CORRELATED:
        kind, ref_from_method = method, None
    else:
        kind, ref_from_method, xc = "dft", None, _functional(method)
    ref_kw = options["reference"]
    if ref_from_method and ref_kw and REFERENCES[ref_kw] != REFERENCES[ref_from_method]:
        raise InputError(f"pyscf: method {method!r} and keyword reference={ref_kw!r} contradict each other")
    ref_name = ref_from_method or ref_kw
    mult = int(round(inp.molecule.molecular_multiplicity))
    reference = REFERENCES[ref_name] if ref_name else ("r" if mult == 1 else "u")
    if reference == "r" and mult != 1:
        raise InputError(f"pyscf: a restricted closed-shell reference needs a singlet, the molecule has multiplicity {mult}")
    if reference == "ro" and kind in ("mp2", "ccsd(t)"):
        raise InputError(f"pyscf: {method} on an ROHF reference is not available (PySCF has no semicanonical ROHF {method})")
    _check_driver(method, kind, driver, reference, options)
    if options["grid_response"] and not all(inp.molecule.real):
        # PySCF 2.14's grid response sizes the Becke cells of ghost atoms by their nuclear charge
        # (0), its DFT energy by their element: the gradient is then ~1e-5 off the energy's slope
        raise InputError("pyscf: grid_response with ghost atoms is not available (PySCF's grid response treats ghost atoms unlike its energy)")
    return Request(kind=kind, xc=xc, reference=reference, driver=driver, basis=basis.strip(), options=options)


def _functional(method: str) -> str:
    from pyscf.dft import libxc

    if not method:
        raise InputError("pyscf: no method given (model.method)")
    try:
        libxc.parse_xc(method)
    except (KeyError, ValueError) as exc:
        raise InputError(f"pyscf: unknown method {method!r}: not hf, mp2, ccsd, ccsd(t) nor a functional PySCF knows ({exc})") from None
    return method


def _check_driver(method: str, kind: str, driver: str, reference: str, options: Dict[str, Any]) -> None:
    if driver == "energy":
        return
    name = {"r": "RHF", "u": "UHF", "ro": "ROHF"}[reference]
    if driver == "gradient":
        if kind in ("hf", "dft"):
            return
        if kind == "mp2":
            if options["density_fitting"]:
                raise InputError("pyscf: driver 'gradient' with method 'mp2' and density_fitting is not available (PySCF has no DF-MP2 gradient)")
            return
    elif driver == "hessian":
        if kind in ("hf", "dft") and reference != "ro":
            return
        if kind in ("hf", "dft"):
            raise InputError(f"pyscf: driver 'hessian' with method {method!r} on an {name} reference is not available (PySCF has no ROHF/ROKS Hessian)")
    raise InputError(
        f"pyscf: driver {driver!r} with method {method!r} is not available "
        "(gradients: HF, DFT, MP2; Hessians: HF, DFT; energies: all)"
    )


def _sturdy_eigh(a: Any, *args: Any, **kwargs: Any) -> Any:
    """``scipy.linalg.eigh``, retried with LAPACK's divide-and-conquer driver when the default
    (``evr``) fails. The DIIS matrix of a tightly converged SCF — a border of ones around error
    overlaps of ~1e-13 — makes scipy-openblas's ``dsyevr`` stop with "Internal Error" (seen with
    scipy 1.17 on water with ghost atoms); ``evd`` handles it."""
    import scipy.linalg

    try:
        return scipy.linalg.eigh(a, *args, **kwargs)
    except scipy.linalg.LinAlgError:
        if kwargs.get("driver") not in (None, "evr"):
            raise
        return scipy.linalg.eigh(a, *args, **{**kwargs, "driver": "evd"})


class _DIISScipy:
    """What ``pyscf.lib.diis`` sees as ``scipy`` while the harness computes: scipy, with
    :func:`_sturdy_eigh` for ``linalg.eigh``."""

    def __init__(self, scipy: Any):
        import types

        self._scipy = scipy
        self.linalg = types.SimpleNamespace(**{**vars(scipy.linalg), "eigh": _sturdy_eigh})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scipy, name)


#: the process in which PySCF's OpenMP (its own GNU libgomp) ran a team of more than one thread
_OPENMP_POOL_PID: Optional[int] = None
_WARNED_FORK = False


def usable_threads(ncores: int) -> int:
    """``ncores``, or 1 in a process forked from one whose PySCF already ran threaded: libgomp's
    thread pool does not survive ``fork`` and the child's next parallel region with more than one
    thread waits forever for threads that are not there (measured: PySCF 2.14, a bare
    ``os.fork``). qcmb_hpc's workers fork from a coordinator that never runs PySCF, so this only
    bites a process that ran PySCF itself before forking (a notebook, a test comparing with
    upstream); its children then compute on one thread, with a warning, instead of hanging."""
    global _OPENMP_POOL_PID, _WARNED_FORK
    if ncores > 1 and _OPENMP_POOL_PID not in (None, os.getpid()):
        if not _WARNED_FORK:
            _WARNED_FORK = True
            logger.warning(
                "pyscf: this process was forked from one whose PySCF ran threaded (pid %d); "
                "computing on 1 thread instead of %d (GNU OpenMP does not survive fork)", _OPENMP_POOL_PID, ncores,
            )
        return 1
    if ncores > 1 and _OPENMP_POOL_PID is None:
        _OPENMP_POOL_PID = os.getpid()
    return ncores


@contextlib.contextmanager
def pyscf_context(config: TaskConfig) -> Iterator[str]:
    """PySCF's threads, BLAS threads and temporary-file directory for one calculation, and the
    sturdier DIIS eigensolver; yields the directory (removed afterwards unless ``scratch_messy``).
    Everything is put back as it was."""
    import scipy
    from pyscf import lib
    from pyscf.lib import diis

    ncores = usable_threads(max(1, int(config.ncores or 1)))
    parent = config.scratch_directory or None
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmpdir = tempfile.mkdtemp(prefix="qcmb_pyscf_", dir=parent)
    old_threads, old_tmpdir, old_scipy = lib.num_threads(), lib.param.TMPDIR, diis.scipy
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - a dependency; without it BLAS keeps its own count
            pass
        else:
            # PySCF parallelizes with OpenMP, its own BLAS single-threaded inside those regions;
            # numpy's BLAS (a pthreads OpenBLAS in the wheels) running a second pool on the same
            # cores made each calculation 2.4-3.4x slower here (BLAS_THREADS_MEASURED)
            stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        lib.num_threads(ncores)
        lib.param.TMPDIR = tmpdir
        diis.scipy = _DIISScipy(scipy)
        try:
            yield tmpdir
        finally:
            lib.num_threads(old_threads)
            lib.param.TMPDIR = old_tmpdir
            diis.scipy = old_scipy
            if not config.scratch_messy:
                if os.listdir(tmpdir):  # PySCF's temporary files close (and delete) when collected
                    gc.collect()
                shutil.rmtree(tmpdir, ignore_errors=True)


def default_ecp(basis: str) -> Optional[str]:
    """The basis' own effective core potentials for the families that come with them (def2-*,
    cc-pVXZ-PP, LANL2, Stuttgart, SBKJC, CRENB: PySCF applies them only to the heavy elements
    they are made for); None for all-electron basis sets."""
    b = basis.lower()
    if b.startswith("def2") or b.endswith("-pp") or any(f in b for f in ("lanl", "stuttgart", "sbkjc", "crenb")):
        return basis
    return None


def build_mole(inp: AtomicInput, req: Request, memory_gib: Optional[float], stdout: Any) -> Any:
    """The PySCF ``Mole`` of the input's molecule (bohr; ghost atoms as ``ghost-X``)."""
    from pyscf import gto

    mol_in = inp.molecule
    charge = float(mol_in.molecular_charge)
    if abs(charge - round(charge)) > 1e-8:
        raise InputError(f"pyscf: the molecular charge must be an integer, got {charge}")
    mult = float(mol_in.molecular_multiplicity)
    if abs(mult - round(mult)) > 1e-8:
        raise InputError(f"pyscf: the multiplicity must be an integer, got {mult}")
    atoms = [
        (sym if real else f"ghost-{sym}", tuple(float(x) for x in xyz))
        for sym, real, xyz in zip(mol_in.symbols, mol_in.real, mol_in.geometry)
    ]
    mol = gto.Mole()
    mol.atom = atoms
    mol.unit = "Bohr"
    mol.basis = req.basis
    mol.ecp = req.options["ecp"] or default_ecp(req.basis)
    mol.cart = req.options["cart"]
    mol.charge = int(round(charge))
    mol.spin = int(round(mult)) - 1
    mol.symmetry = False  # QCSchema's orientation is kept as given
    mol.verbose = req.options["verbose"]
    mol.stdout = stdout
    if memory_gib:
        mol.max_memory = float(memory_gib) * MB_PER_GIB
    try:
        mol.build(dump_input=False, parse_arg=False)
    except Exception as exc:  # BasisNotFoundError, KeyError (element missing), RuntimeError (electrons vs spin)
        from pyscf.gto.basis import BasisNotFoundError

        what = f"basis {req.basis!r} is not known to PySCF" if isinstance(exc, BasisNotFoundError) else "cannot build the molecule"
        raise InputError(f"pyscf: {what}: {type(exc).__name__}: {exc}") from None
    if mol.nelectron == 0:
        raise InputError("pyscf: the molecule has no electrons (only ghost atoms?)")
    return mol


def _scf(mol: Any, req: Request) -> Any:
    from pyscf import dft, scf

    o = req.options
    if req.kind == "dft":
        cls = {"r": dft.RKS, "u": dft.UKS, "ro": dft.ROKS}[req.reference]
        mf = cls(mol, xc=req.xc)
        if o["grid_level"] is not None:
            mf.grids.level = o["grid_level"]
        if o["grid_atom_grid"] is not None:
            mf.grids.atom_grid = o["grid_atom_grid"]
        if not o["grid_prune"]:
            mf.grids.prune = None
    else:
        mf = {"r": scf.RHF, "u": scf.UHF, "ro": scf.ROHF}[req.reference](mol)
    # no checkpoint file: nothing left in scratch, no disk traffic (PySCF opened one already)
    with contextlib.suppress(Exception):
        mf._chkfile.close()
    mf._chkfile = mf.chkfile = None
    mf.conv_tol = o["scf_conv_tol"]
    if o["scf_conv_tol_grad"] is not None:
        mf.conv_tol_grad = o["scf_conv_tol_grad"]
    mf.max_cycle = o["scf_max_cycle"]
    mf.init_guess = o["scf_init_guess"]
    mf.level_shift = o["scf_level_shift"]
    mf.damp = o["scf_damp"]
    mf.diis_space = o["scf_diis_space"]
    if o["density_fitting"]:
        mf = mf.density_fit(auxbasis=o["auxbasis"])
    return mf


def _frozen_orbitals(mol: Any, req: Request) -> Optional[int]:
    fc = req.options["frozen_core"]
    if fc is False or fc == 0:
        return None
    if fc is True:
        from pyscf.data.elements import chemcore

        return chemcore(mol) or None  # ghost atoms have no core: chemcore counts real atoms only
    return int(fc)


def _run(inp: AtomicInput, req: Request, config: TaskConfig, stdout: io.StringIO) -> Dict[str, Any]:
    """Run the calculation; returns the AtomicResult fields that depend on it."""
    import numpy as np

    mol = build_mole(inp, req, config.memory, stdout)
    mf = _scf(mol, req)
    e_scf = mf.kernel()
    if not mf.converged:
        raise ConvergenceError(
            f"PySCF's SCF did not converge in {mf.max_cycle} iterations (last energy {e_scf:.10f} Eh; "
            "try the keywords scf_max_cycle, scf_level_shift, scf_damp)"
        )
    nalpha, nbeta = mol.nelec
    props: Dict[str, Any] = {
        "calcinfo_nbasis": int(mol.nao),
        "calcinfo_nmo": int(np.asarray(mf.mo_energy).shape[-1]),
        "calcinfo_nalpha": int(nalpha),
        "calcinfo_nbeta": int(nbeta),
        "calcinfo_natom": int(mol.natm),
        "nuclear_repulsion_energy": float(mol.energy_nuc()),
        "scf_total_energy": float(e_scf),
        "scf_iterations": int(mf.cycles),
        "scf_dipole_moment": np.asarray(mf.dip_moment(unit="AU", verbose=0), dtype=float),
    }
    summary = getattr(mf, "scf_summary", {}) or {}
    if "e1" in summary:
        props["scf_one_electron_energy"] = float(summary["e1"])
    if req.kind != "dft" and "e2" in summary:  # (DFT: PySCF folds exact exchange into its exc)
        props["scf_two_electron_energy"] = float(summary["e2"])
    energy = float(e_scf)
    post = None
    if req.kind == "mp2":
        from pyscf import mp

        post = mp.MP2(mf, frozen=_frozen_orbitals(mol, req))
        e_corr = post.kernel()[0]
        energy = float(post.e_tot)
        props.update(mp2_correlation_energy=float(e_corr), mp2_doubles_energy=float(e_corr), mp2_total_energy=energy, mp2_singles_energy=0.0)
        if getattr(post, "e_corr_ss", None) is not None:
            props["mp2_same_spin_correlation_energy"] = float(post.e_corr_ss)
            props["mp2_opposite_spin_correlation_energy"] = float(post.e_corr_os)
    elif req.kind in ("ccsd", "ccsd(t)"):
        from pyscf import cc

        post = cc.CCSD(mf, frozen=_frozen_orbitals(mol, req))
        post.conv_tol = req.options["cc_conv_tol"]
        post.max_cycle = req.options["cc_max_cycle"]
        post.kernel()
        if not post.converged:
            raise ConvergenceError(f"PySCF's CCSD did not converge in {post.max_cycle} iterations (try cc_max_cycle)")
        e_ccsd = float(post.e_tot)
        props.update(ccsd_correlation_energy=float(post.e_corr), ccsd_total_energy=e_ccsd)
        energy = e_ccsd
        if req.kind == "ccsd(t)":
            e_t = float(post.ccsd_t())
            energy = e_ccsd + e_t
            props.update(ccsd_prt_pr_correlation_energy=float(post.e_corr) + e_t, ccsd_prt_pr_total_energy=energy)
    props["return_energy"] = energy
    result: Any = energy
    if req.driver == "gradient":
        g = (post if post is not None else mf).nuc_grad_method()
        if req.kind == "dft":
            g.grid_response = req.options["grid_response"]
        result = np.asarray(g.kernel(), dtype=float).reshape(mol.natm, 3)
        props["return_gradient"] = result
        if post is None:
            props["scf_total_gradient"] = result
    elif req.driver == "hessian":
        h = mf.Hessian().kernel()  # (natm, natm, 3, 3)
        n = 3 * mol.natm
        result = np.asarray(h, dtype=float).transpose(0, 2, 1, 3).reshape(n, n)
        props["return_hessian"] = props["scf_total_hessian"] = result
    return {"properties": props, "return_result": result}


class PySCFHarness(ProgramHarness):
    """PySCF as a QCEngine program (see the module docstring)."""

    _defaults: ClassVar[Dict[str, Any]] = {
        "name": "pyscf",
        "scratch": True,
        "thread_safe": False,  # PySCF's thread count and temporary directory are process-wide
        "thread_parallel": True,
        "node_parallel": False,
        "managed_memory": True,
    }
    version_cache: ClassVar[Dict[str, str]] = {}

    @staticmethod
    def found(raise_error: bool = False) -> bool:
        return which_import(
            "pyscf", return_bool=True, raise_error=raise_error, raise_msg="Please install PySCF: pip install pyscf"
        )

    def get_version(self) -> str:
        self.found(raise_error=True)
        which_prog = which_import("pyscf")
        if which_prog not in self.version_cache:
            import pyscf

            self.version_cache[which_prog] = safe_version(pyscf.__version__)
        return self.version_cache[which_prog]

    def warm(self) -> None:
        """Import what every calculation imports (see :func:`qcmb_hpc.engines.warm`); no
        OpenMP team is started, so a process forked afterwards still runs threaded."""
        if not self.found():
            return
        import threadpoolctl  # noqa: F401
        from pyscf import df, dft, gto, lib, mp, scf  # noqa: F401
        from pyscf.lib import diis  # noqa: F401

        self.get_version()

    def compute(self, input_model: AtomicInput, config: TaskConfig) -> AtomicResult:
        self.found(raise_error=True)
        req = parse_request(input_model)
        stdout = io.StringIO()
        with pyscf_context(config):
            out = _run(input_model, req, config, stdout)
        return AtomicResult(
            input_data=input_model,
            molecule=input_model.molecule,
            properties=out["properties"],
            return_result=out["return_result"],
            stdout=stdout.getvalue() or None,
            success=True,
            provenance={"creator": "PySCF", "version": self.get_version(), "routine": "qcmb_hpc.engines.pyscf"},
            extras={},
        )
