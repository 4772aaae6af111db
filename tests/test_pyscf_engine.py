"""The ``pyscf`` QCEngine harness on its own: registration, methods, drivers, keywords, errors,
ghost atoms, resources — and its derivatives against finite differences of its own energies
(gradients) and gradients (Hessians), ghost atoms included.

Finite differences are directional: along a few seeded random directions of all atoms, one that
moves only the ghost atoms and one that moves only the real ones, ``g·d`` against
``(E(x+hd) − E(x−hd)) / 2h`` (and ``H·d`` against the same difference of gradients). A wrong
row — a ghost atom's, say — shows in every direction that moves it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import qcmb_hpc  # noqa: F401  (registers the harness)

pytestmark = pytest.mark.pyscf

H = 1e-3  # bohr: central differences with an error of ~h² · third derivative
TIGHT = {"scf_conv_tol": 1e-12, "scf_conv_tol_grad": 1e-8}


def water_pair(ghost_second=True):
    """Two H-bonded waters of the cyclic trimer in examples/water3.xyz; the second as ghosts."""
    from qcmb_hpc.testing.inputs import published_water_cluster

    m = published_water_cluster(3)
    d = m.model_dump()
    return type(m)(
        symbols=d["symbols"][:6],
        geometry=d["geometry"][:6],
        real=[True] * 3 + [not ghost_second] * 3,
        fix_com=True,
        fix_orientation=True,
    )


def atomic_input(molecule, method="hf", basis="6-31g", driver="energy", keywords=None):
    from qcelemental.models.v2 import AtomicInput

    return AtomicInput(
        molecule=molecule,
        specification={"driver": driver, "model": {"method": method, "basis": basis}, "keywords": keywords or {}},
    )


def compute(molecule, raise_error=True, task_config=None, **kw):
    import qcengine

    return qcengine.compute(atomic_input(molecule, **kw), "pyscf", raise_error=raise_error, task_config=task_config or {"ncores": 1})


def moved(molecule, step):
    d = molecule.model_dump()
    d["geometry"] = np.asarray(molecule.geometry) + step.reshape(-1, 3)
    return type(molecule)(**{k: d[k] for k in ("symbols", "geometry", "real", "fix_com", "fix_orientation")})


def directions(molecule, seed=3):
    rng = np.random.default_rng(seed)
    n = 3 * len(molecule.symbols)
    real = np.repeat(np.asarray(molecule.real), 3)
    dirs = [rng.normal(size=n) for _ in range(2)]
    dirs.append(np.where(real, 0.0, rng.normal(size=n)))  # only the ghost atoms move
    dirs.append(np.where(real, rng.normal(size=n), 0.0))  # only the real atoms move
    return [d / np.linalg.norm(d) for d in dirs if np.any(d)]


# ------------------------------------------------------------------------------------------------
# registration, schema, properties
# ------------------------------------------------------------------------------------------------


def test_import_is_lean_and_registers_on_qcengine_import():
    """``import qcmb_hpc`` imports neither QCEngine nor PySCF; once QCEngine is imported the
    harness is registered (and PySCF still not imported: only computing imports it)."""
    code = (
        "import sys, qcmb_hpc\n"
        "assert 'qcengine' not in sys.modules and 'pyscf' not in sys.modules, sorted(m for m in sys.modules if m.startswith(('qcengine', 'pyscf')))\n"
        "import qcengine\n"
        "assert 'pyscf' in qcengine.list_all_programs()\n"
        "assert 'pyscf' not in sys.modules\n"
        "print(type(qcengine.get_program('pyscf')).__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "qcmb_hpc.engines.pyscf"


def test_warm_imports_pyscf_and_a_process_forked_afterwards_still_runs_threaded():
    """``qcmb_hpc.engines.warm`` (what every worker runs before its first fragment) imports what a
    calculation imports, skips programs without a warm-up or unknown to QCEngine, and starts no
    OpenMP team: an isolated child forked afterwards computes on 2 threads (GNU OpenMP's pool does
    not survive fork; a team started before the fork would make it hang or fall back to 1)."""
    code = (
        "import os, sys, qcmb_hpc, qcengine\n"
        "sys.path.insert(0, %r)\n"
        "from test_pyscf_engine import compute, water_pair\n"
        "from qcmb_hpc.engines import warm\n"
        "assert 'pyscf' not in sys.modules\n"
        "print(warm(['pyscf', 'nwchem', 'no-such-program', 'pyscf']))\n"
        "print(sorted(m for m in ('pyscf.gto', 'pyscf.scf', 'pyscf.df', 'pyscf.mp', 'pyscf.dft', 'threadpoolctl') if m in sys.modules))\n"
        "import qcmb_hpc.engines.pyscf as h\n"
        "sys.stdout.flush()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    from pyscf import lib\n"
        "    seen = []\n"
        "    real = h._run\n"
        "    h._run = lambda *a: (seen.append(lib.num_threads()), real(*a))[1]\n"
        "    ok = compute(water_pair(), basis='sto-3g', task_config={'ncores': 2}).success\n"
        "    os._exit(0 if ok and seen == [2] else 3)\n"
        "print(os.waitpid(pid, 0)[1])\n"
    ) % os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == [
        "['pyscf']", "['pyscf.df', 'pyscf.dft', 'pyscf.gto', 'pyscf.mp', 'pyscf.scf', 'threadpoolctl']", "0"]


def test_a_harness_already_registered_is_kept():
    import qcengine

    from qcmb_hpc.engines import install, register

    mine = qcengine.get_program("pyscf", check=False)
    assert register() == [] and install() is None
    assert qcengine.get_program("pyscf", check=False) is mine


def test_v2_result_properties_and_provenance():
    mol = water_pair(ghost_second=False)
    res = compute(mol, method="mp2", basis="cc-pvdz", keywords={"frozen_core": True})
    p = res.properties
    assert res.schema_version == 2 and res.success
    assert res.provenance.creator == "PySCF" and res.provenance.version and res.provenance.routine == "qcmb_hpc.engines.pyscf"
    assert p.calcinfo_nbasis == p.calcinfo_nmo == 48 and p.calcinfo_natom == 6
    assert p.calcinfo_nalpha == p.calcinfo_nbeta == 10
    assert p.scf_iterations > 0 and p.nuclear_repulsion_energy > 0
    assert p.return_energy == res.return_result == p.mp2_total_energy
    assert p.mp2_total_energy == pytest.approx(p.scf_total_energy + p.mp2_correlation_energy, abs=1e-12)
    assert p.mp2_correlation_energy == pytest.approx(p.mp2_same_spin_correlation_energy + p.mp2_opposite_spin_correlation_energy, abs=1e-12)
    assert p.scf_one_electron_energy + p.scf_two_electron_energy + p.nuclear_repulsion_energy == pytest.approx(p.scf_total_energy, abs=1e-10)
    assert "converged SCF energy" in res.stdout
    # frozen core is the two oxygen 1s orbitals: less correlation than all-electron
    ae = compute(mol, method="mp2", basis="cc-pvdz")
    assert ae.properties.scf_total_energy == pytest.approx(p.scf_total_energy, abs=1e-9)
    assert ae.properties.mp2_correlation_energy < p.mp2_correlation_energy < 0


def test_v1_dict_input_gives_v1_result():
    import qcengine

    mol = water_pair(ghost_second=False)
    d = {"molecule": mol.convert_v(1).model_dump(), "driver": "energy", "model": {"method": "hf", "basis": "sto-3g"}}
    res = qcengine.compute(d, "pyscf", raise_error=True, task_config={"ncores": 1})
    assert res.schema_version == 1
    assert res.return_result == pytest.approx(compute(mol, basis="sto-3g").return_result, abs=1e-10)


@pytest.mark.parametrize(
    "method,driver,keywords",
    [("ccsd", "energy", {}), ("ccsd(t)", "energy", {"frozen_core": True}), ("pbe0", "gradient", {}), ("hf", "energy", {"density_fitting": True}), ("mp2", "energy", {"density_fitting": True})],
)
def test_methods_run(method, driver, keywords):
    res = compute(water_pair(ghost_second=False), method=method, basis="6-31g", driver=driver, keywords=keywords)
    p = res.properties
    if method.startswith("ccsd"):
        assert p.ccsd_correlation_energy < 0 and p.ccsd_total_energy == pytest.approx(p.scf_total_energy + p.ccsd_correlation_energy)
    if method == "ccsd(t)":
        assert p.return_energy == p.ccsd_prt_pr_total_energy < p.ccsd_total_energy
    if driver == "gradient":
        assert np.asarray(res.return_result).shape == (6, 3)
        assert np.abs(np.asarray(res.return_result).sum(axis=0)).max() < 1e-5  # translational invariance


def test_density_fitting_is_close_to_exact_integrals():
    mol = water_pair(ghost_second=False)
    exact = compute(mol, method="mp2", basis="cc-pvdz").return_result
    df = compute(mol, method="mp2", basis="cc-pvdz", keywords={"density_fitting": True}).return_result
    assert df != exact and abs(df - exact) < 1e-3


def test_open_shell_references():
    """OH radical: UHF by default from the multiplicity, ROHF on request (higher than UHF), RHF refused."""
    from qcelemental.models.v2 import Molecule

    oh = Molecule(symbols=["O", "H"], geometry=[0, 0, 0, 0, 0, 1.83], molecular_multiplicity=2)
    uhf = compute(oh, basis="6-31g")
    rohf = compute(oh, basis="6-31g", keywords={"reference": "rohf"})
    assert rohf.return_result == pytest.approx(compute(oh, method="rohf", basis="6-31g").return_result, abs=1e-9)
    assert uhf.return_result < rohf.return_result
    assert uhf.properties.calcinfo_nalpha == 5 and uhf.properties.calcinfo_nbeta == 4
    assert compute(oh, method="ccsd", basis="6-31g", keywords={"reference": "rohf"}).success
    for kw in ({"method": "rhf"}, {"keywords": {"reference": "rhf"}}, {"method": "mp2", "keywords": {"reference": "rohf"}}, {"driver": "hessian", "keywords": {"reference": "rohf"}}):
        res = compute(oh, raise_error=False, **{"basis": "6-31g", **kw})
        assert not res.success and res.error.error_type == "input_error", res.error


# ------------------------------------------------------------------------------------------------
# ghost atoms
# ------------------------------------------------------------------------------------------------


def test_ghost_atoms_carry_basis_functions_only():
    """A monomer with its partner ghosted: the partner's basis functions, but not its nuclei or
    electrons (same nuclear repulsion and electron count as the monomer alone, a lower energy)."""
    from qcelemental.models.v2 import Molecule

    ghosted = water_pair(ghost_second=True)
    d = ghosted.model_dump()
    alone = Molecule(symbols=d["symbols"][:3], geometry=d["geometry"][:3], fix_com=True, fix_orientation=True)
    a = compute(alone, method="mp2", basis="cc-pvdz")
    g = compute(ghosted, method="mp2", basis="cc-pvdz")
    assert g.properties.calcinfo_nbasis == 2 * a.properties.calcinfo_nbasis == 48
    assert (g.properties.calcinfo_nalpha, g.properties.calcinfo_nbeta) == (a.properties.calcinfo_nalpha, a.properties.calcinfo_nbeta) == (5, 5)
    assert g.properties.nuclear_repulsion_energy == pytest.approx(a.properties.nuclear_repulsion_energy, abs=1e-10)
    bsse = g.return_result - a.return_result
    assert -5e-3 < bsse < -1e-5  # the ghost basis lowers the energy (basis set superposition), a little


# ------------------------------------------------------------------------------------------------
# derivatives against finite differences (ghost atoms included)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,basis,keywords,ghosts,tol",
    [
        ("hf", "6-31g", {}, True, 5e-7),
        ("mp2", "6-31g*", {"frozen_core": True}, True, 5e-7),
        ("hf", "6-31g", {"reference": "uhf", "density_fitting": True}, True, 5e-7),
        ("b3lyp", "6-31g", {}, True, 3e-6),
        ("b3lyp", "6-31g", {"grid_response": True}, False, 5e-7),
    ],
    ids=["rhf", "mp2-fc", "df-uhf", "b3lyp (the grid does not follow)", "b3lyp grid_response"],
)
def test_gradient_matches_energy_differences(method, basis, keywords, ghosts, tol):
    """Ghost atoms' rows included; a DFT gradient without the grid's response is the slope of
    the energy only to ~1e-6 (the grid moves with the atoms), with it (no ghosts: see below) exact."""
    mol = water_pair(ghost_second=ghosts)
    kw = dict(method=method, basis=basis, keywords={**TIGHT, **keywords})
    grad = np.asarray(compute(mol, driver="gradient", **kw).return_result)
    assert grad.shape == (6, 3)
    if ghosts:
        assert np.abs(grad[3:]).max() > 1e-5  # the ghost atoms' basis functions feel a force
    for d in directions(mol):
        fd = (compute(moved(mol, H * d), **kw).return_result - compute(moved(mol, -H * d), **kw).return_result) / (2 * H)
        assert abs(grad.ravel() @ d - fd) < tol, (grad.ravel() @ d, fd)


@pytest.mark.parametrize(
    "method,keywords,ndir,tol",
    [("hf", {}, 3, 5e-6), ("b3lyp", {"grid_level": 4}, 2, 5e-5)],
    ids=["rhf", "b3lyp (no grid response in PySCF's Hessian)"],
)
def test_hessian_matches_gradient_differences(method, keywords, ndir, tol):
    """HF: exact (the difference's own error, ~h², is ~1e-6 here). DFT: PySCF's Hessian has no
    grid response, ~1e-5 from differences of gradients on a level-4 grid."""
    mol = water_pair(ghost_second=True)
    kw = dict(method=method, basis="sto-3g", keywords={**TIGHT, **keywords})
    hess = np.asarray(compute(mol, driver="hessian", **kw).return_result)
    assert hess.shape == (18, 18) and np.allclose(hess, hess.T, atol=1e-6)
    for d in directions(mol)[:ndir]:
        gp = np.asarray(compute(moved(mol, H * d), driver="gradient", **kw).return_result).ravel()
        gm = np.asarray(compute(moved(mol, -H * d), driver="gradient", **kw).return_result).ravel()
        fd = (gp - gm) / (2 * H)
        assert np.abs(hess @ d - fd).max() < tol, np.abs(hess @ d - fd).max()


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,error_type,words",
    [
        (dict(keywords={"scf_maxiter": 5}), "input_error", "unknown keyword 'scf_maxiter'"),
        (dict(keywords={"scf_max_cycle": "many"}), "input_error", "'scf_max_cycle' must be an integer"),
        (dict(method="xyzzy"), "input_error", "unknown method 'xyzzy'"),
        (dict(basis="cc-pvdz-nonsense"), "input_error", "basis 'cc-pvdz-nonsense' is not known to PySCF"),
        (dict(basis=None), "input_error", "needs a basis"),
        (dict(method="mp2", driver="hessian"), "input_error", "driver 'hessian' with method 'mp2'"),
        (dict(method="ccsd(t)", driver="gradient"), "input_error", "driver 'gradient' with method 'ccsd(t)'"),
        (dict(method="mp2", driver="gradient", keywords={"density_fitting": True}), "input_error", "DF-MP2 gradient"),
        (dict(driver="properties"), "input_error", "driver 'properties'"),
        (dict(keywords={"scf_max_cycle": 2}), "convergence_error", "SCF did not converge in 2 iterations"),
        (dict(method="pbe", driver="gradient", keywords={"grid_response": True}), "input_error", "grid_response with ghost atoms"),
    ],
)
def test_errors(kw, error_type, words):
    res = compute(water_pair(ghost_second=True), raise_error=False, **{"basis": "6-31g", **kw})
    assert not res.success
    assert res.error.error_type == error_type
    assert words in res.error.error_message


def test_input_errors_are_not_retried_by_qcmb_hpc():
    from qcmb_hpc.engine import NON_RETRYABLE_ERRORS

    assert "input_error" in NON_RETRYABLE_ERRORS


# ------------------------------------------------------------------------------------------------
# resources: threads, memory, scratch
# ------------------------------------------------------------------------------------------------


def test_task_config_sets_threads_memory_and_scratch(monkeypatch, tmp_path):
    """ncores → PySCF's OpenMP threads, BLAS held to one; memory (GiB) → Mole.max_memory (MB);
    scratch_directory → PySCF's temporary files (a directory of their own, removed afterwards);
    all put back after the call."""
    from pyscf import lib
    from threadpoolctl import threadpool_info

    import qcmb_hpc.engines.pyscf as harness

    seen = {}
    real_run = harness._run

    def spy(inp, req, config, stdout):
        seen["threads"] = lib.num_threads()
        seen["blas"] = {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}
        seen["tmpdir"] = lib.param.TMPDIR
        out = real_run(inp, req, config, stdout)
        seen["listing"] = os.listdir(lib.param.TMPDIR)
        return out

    real_build = harness.build_mole

    def build(*a, **k):
        mol = real_build(*a, **k)
        seen["max_memory"] = mol.max_memory
        return mol

    monkeypatch.setattr(harness, "_run", spy)
    monkeypatch.setattr(harness, "build_mole", build)
    before = (lib.num_threads(), lib.param.TMPDIR)
    scratch = tmp_path / "scratch"
    res = compute(water_pair(), method="ccsd", basis="6-31g", task_config={"ncores": 1, "memory": 1.5, "scratch_directory": str(scratch)})
    assert res.success
    assert seen["threads"] == 1 and seen["blas"] == {1}
    assert seen["max_memory"] == pytest.approx(1.5 * 2**30 / 1e6)
    assert os.path.dirname(seen["tmpdir"]) == str(scratch)
    assert list(scratch.iterdir()) == []  # nothing left behind
    assert (lib.num_threads(), lib.param.TMPDIR) == before
    two = {}

    def spy2(inp, req, config, stdout):
        two.update(t=lib.num_threads(), blas={p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
        return real_run(inp, req, config, stdout)

    monkeypatch.setattr(harness, "_run", spy2)
    compute(water_pair(), basis="sto-3g", task_config={"ncores": 2})
    assert two["t"] == 2 and two["blas"] == {1}  # OpenMP's threads; numpy's BLAS does not add a pool


def test_one_core_uses_one_core():
    """CPU time of the whole process over wall time of an MP2 gradient given ncores=1 (a fresh
    process: nothing else runs in it). A load on the machine can only lower the ratio, so the
    bound is safe on a busy machine and fails if PySCF or BLAS start threads of their own."""
    code = (
        "import time, qcmb_hpc, qcengine, sys\n"
        "sys.path.insert(0, %r)\n"
        "from test_pyscf_engine import atomic_input, water_pair\n"
        "qcengine.config.get_global()\n"
        "inp = atomic_input(water_pair(), method='mp2', basis='6-31g*', driver='gradient')\n"
        "qcengine.compute(inp, 'pyscf', raise_error=True, task_config={'ncores': 1})  # imports, warm\n"
        "c0, t0 = time.process_time(), time.perf_counter()\n"
        "for _ in range(2): qcengine.compute(inp, 'pyscf', raise_error=True, task_config={'ncores': 1})\n"
        "print((time.process_time() - c0) / (time.perf_counter() - t0))\n"
    ) % os.path.dirname(os.path.abspath(__file__))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr
    ratio = float(out.stdout.strip().splitlines()[-1])
    assert ratio < 1.15, f"{ratio:.2f} cores busy with ncores=1"
