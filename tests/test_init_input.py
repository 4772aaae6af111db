"""``python -m qcmb_hpc init``: from an XYZ file to a ManyBodyInput — fragments by connectivity or
given, charges and multiplicities, one-line errors — and end to end: init → run → the result of
``qcmanybody.v2.ManyBodyComputer`` on the same input."""

import json
import shutil

import pytest

from conftest import assert_same_result, load_report, run_cli
from test_cli import load_result
from test_pyscf_parity import one_thread_reference
from qcmb_hpc.cli import bundled_example
from qcmb_hpc.init_input import main

XYZ = bundled_example().replace("water6_pyscf.json", "water3.xyz")


def write_xyz(path, atoms, comment="test"):
    path.write_text(f"{len(atoms)}\n{comment}\n" + "".join(f"{s} {x} {y} {z}\n" for s, (x, y, z) in atoms))
    return path


def read(path):
    from qcmanybody.models.v2 import ManyBodyInput

    return ManyBodyInput(**json.loads(path.read_text()))


def test_fragments_by_connectivity(tmp_path, capsys):
    out = tmp_path / "w3.json"
    assert main([XYZ, "--method", "mp2", "--basis", "cc-pvdz", "--bsse", "cp,nocp", "--max-nbody", "2", "-o", str(out)]) == 0
    inp = read(out)
    assert [list(f) for f in inp.molecule.fragments] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert list(inp.molecule.fragment_charges) == [0, 0, 0] and list(inp.molecule.fragment_multiplicities) == [1, 1, 1]
    spec = inp.specification.specification["(auto)"]
    assert (spec.program, spec.model.method, spec.model.basis) == ("pyscf", "mp2", "cc-pvdz")
    assert inp.specification.keywords.max_nbody == 2
    assert "3 fragments by connectivity (3 × H2O)" in capsys.readouterr().out


def test_given_fragments_charges_and_reordering(tmp_path, capsys):
    """A water and a hydroxide whose atoms are interleaved: given fragments, reordered to be
    contiguous (and said so), charges and multiplicities per fragment."""
    xyz = write_xyz(tmp_path / "mix.xyz", [
        ("O", (0, 0, 0)), ("O", (2.8, 0, 0)), ("H", (0.96, 0, 0)), ("H", (-0.24, 0.93, 0)), ("H", (3.1, 0.9, 0)),
    ])
    out = tmp_path / "mix.json"
    assert main([str(xyz), "--fragments", "1,3,4 2,5", "--charges", "0,-1", "--multiplicities", "1,1", "-o", str(out)]) == 0
    mol = read(out).molecule
    assert list(mol.symbols) == ["O", "H", "H", "O", "H"]
    assert list(mol.fragment_charges) == [0, -1] and mol.molecular_charge == -1
    assert "reordered" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,needle",
    [
        (["nope.xyz"], "does not exist"),
        (["BAD"], "not an XYZ file"),
        ([XYZ, "--fragments", "1-3 4-6"], "atom 7 is in no fragment"),
        ([XYZ, "--fragments", "1-3 3-6 7-9"], "atom 3 is in more than one fragment"),
        ([XYZ, "--fragments", "1-3 4-6 7-10"], "atom 10 does not exist"),
        ([XYZ, "--charges", "0,0"], "2 values for 3 fragments"),
        ([XYZ, "--charges", "1,0,0", "--multiplicities", "1,1,1"], "do not fit"),
        ([XYZ, "--bsse", "cp,xyz"], "xyz given"),
        ([XYZ, "--max-nbody", "4"], "--max-nbody 4"),
        ([XYZ, "--keywords", "{oops"], "--keywords is not valid JSON"),
        (["ONE"], "found 1 fragment"),
        ([XYZ, "--driver", "force"], "invalid choice"),
        (["EXISTS"], "exists; use --force"),
    ],
)
def test_errors_are_one_line_exit_2(tmp_path, capsys, args, needle):
    bad = tmp_path / "bad.xyz"
    bad.write_text("three\nno\nO 0 0 0\n")
    one = write_xyz(tmp_path / "one.xyz", [("O", (0, 0, 0)), ("H", (0.96, 0, 0)), ("H", (-0.24, 0.93, 0))])
    exists = tmp_path / "exists.json"
    exists.write_text("{}")
    subst = {"BAD": str(bad), "ONE": str(one), "EXISTS": XYZ}
    argv = [subst.get(a, a) for a in args] + ["-o", str(exists if args == ["EXISTS"] else tmp_path / "out.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qcmb_hpc init: error: ") and needle in err[0], err


@pytest.mark.pyscf
def test_init_then_run_equals_upstream(tmp_path):
    """The README's first example, end to end through the command line (smaller: HF/STO-3G), bit for
    bit against upstream (one PySCF thread on both sides, see tests/test_pyscf_parity.py)."""
    shutil.copy(XYZ, tmp_path / "water.xyz")
    proc = run_cli(["init", "water.xyz", "--program", "pyscf", "--method", "hf", "--basis", "sto-3g", "--bsse", "cp,nocp",
                    "--max-nbody", "3", "--keywords", '{"scf_conv_tol": 1e-10}', "-o", "water.json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(["water.json", "--no-progress", "--threads-per-worker", "1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = load_result(tmp_path / "water.result.json")
    assert_same_result(one_thread_reference(read(tmp_path / "water.json")), res, exact=True, check_shape=False)
    assert load_report(tmp_path / "water.result.json")["computed"] == res.properties.calcinfo_nmbe
