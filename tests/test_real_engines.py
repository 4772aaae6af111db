"""Real engines: s-dftd3 (pip) and NWChem (Debian ``nwchem``), each compared with sequential
``qcmanybody.v2.ManyBodyComputer`` on the same input in the same test."""

import shutil

import pytest

from conftest import assert_same_result, quiet, reference
from qcmb_hpc import ParallelManyBodyComputer
from qcmb_hpc.testing.inputs import many_body_input, water_cluster


@pytest.mark.parametrize("mode", ["sequential", "multiprocessing"])
def test_dftd3_parity(mode):
    inp = many_body_input(
        water_cluster(4), program="s-dftd3", method="b3lyp-d3bj", basis=None, bsse_type=["cp", "nocp", "vmfc"],
        return_total_data=True,
    )
    ref = reference(inp)
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode)).compute()
    assert_same_result(ref, res, exact=True)


@pytest.fixture(scope="module")
def nwchem():
    # NWChem is part of this project's test setup (.ci/run installs it): missing is a failure, not a skip
    assert shutil.which("nwchem"), "NWChem is not installed: apt-get install -y nwchem"


@pytest.mark.nwchem
@pytest.mark.parametrize(
    "name,kw",
    [
        ("cp+nocp energy", dict(bsse_type=["cp", "nocp"], driver="energy", return_total_data=True)),
        ("vmfc energy", dict(bsse_type=["vmfc"], driver="energy")),
        ("cp gradient", dict(bsse_type=["cp"], driver="gradient", max_nbody=2)),
    ],
)
def test_nwchem_trimer(nwchem, name, kw):
    inp = many_body_input(water_cluster(3), program="nwchem", method="scf", basis="sto-3g", **kw)
    ref = reference(inp)
    comp = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing", max_workers=2))
    res = comp.compute()
    assert_same_result(ref, res, atol=1e-10)
    assert comp.run_info["workers"] == 2


@pytest.mark.nwchem
def test_nwchem_basis_typo_is_said_once(nwchem, tmp_path):
    """A basis NWChem does not know: QCEngine calls it an unknown error (retryable), so each
    fragment is retried — but the first three fail alike, the run stops, and the few lines on
    stderr quote NWChem's own words and say what to fix (not pages of output per fragment)."""
    from conftest import load_report, run_cli

    inp = many_body_input(water_cluster(3), program="nwchem", method="scf", basis="cc-pvdzz", bsse_type=["cp", "nocp"])
    (tmp_path / "typo.json").write_text(inp.model_dump_json())
    proc = run_cli(["typo.json", "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) < 15, proc.stderr
    err = [ln for ln in lines if ln.startswith("qcmb_hpc: error:")]
    assert len(err) == 1 and "systematic" in err[0] and "basis set's name" in err[0]
    assert "non-existing file: /usr/share/nwchem/libraries/cc-pvdzz" in err[0]
    rep = load_report(tmp_path / "typo.result.json")
    ran = sum(len(f["attempts"]) for f in rep["failures"])
    assert len(rep["failures"]) == 3 and ran == 9, ran  # 3 fragments × (1 + max_retries), then the stop
    assert rep["systematic_failure"]["error_type"] == "unknown_error"
