"""The command line: exit codes, bad inputs (one line on stderr, exit 2), default output name,
--import, environment vs flags, YAML and v1 input, and the bundled example."""

import json
import os

import numpy as np
import pytest

from conftest import assert_same_result, load_report, reference, run_cli
from qcmb_hpc.plan import RunSpec, build_atomic_input, make_plan
from qcmb_hpc.testing.engines import fragment_key
from qcmb_hpc.testing.inputs import many_body_input
from test_parity import assert_full_parity


def write_input(path, inp):
    path.write_text(inp.serialize("json") if isinstance(inp.serialize("json"), str) else inp.serialize("json").decode())
    return path


def one_error_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("qcmb_hpc: error: "), lines[0]
    return lines[0]


def load_result(path):
    from qcmanybody.models.v2 import ManyBodyResult

    return ManyBodyResult(**json.loads(path.read_text()))


@pytest.fixture
def trimer_input(tmp_path, trimer):
    inp = many_body_input(trimer, bsse_type=["cp", "nocp"], driver="gradient", return_total_data=True)
    return inp, write_input(tmp_path / "trimer.json", inp)


def test_success_default_output_and_checkpoint(tmp_path, trimer_input):
    inp, path = trimer_input
    proc = run_cli([str(path), "--import", "qcmb_hpc.testing.engines", "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "trimer.result.json"
    assert out.exists()
    assert (tmp_path / "trimer.checkpoint.jsonl").exists()
    res = load_result(out)
    assert_same_result(reference(inp), res, exact=True, check_shape=False)
    assert "N-Body" in proc.stdout and "fragments" in proc.stdout and "wall" in proc.stdout
    # the n-body table and a one-line summary
    assert any(ln.startswith("qcmb_hpc: ") and "worker" in ln for ln in proc.stdout.splitlines())


def test_output_flag_yaml_and_modes(tmp_path, trimer):
    import yaml

    inp = many_body_input(trimer, bsse_type=["vmfc"], driver="energy")
    path = tmp_path / "in.yaml"
    path.write_text(yaml.safe_dump(json.loads(inp.serialize("json"))))
    for mode in ("sequential", "multiprocessing"):
        out = tmp_path / f"out-{mode}.json"
        proc = run_cli(
            [str(path), "-o", str(out), "--mode", mode, "--import", "qcmb_hpc.testing.engines", "--no-progress", "--no-checkpoint"],
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        res = load_result(out)
        assert load_report(out)["mode"] == mode
        assert_same_result(reference(inp), res, exact=True, check_shape=False)
    assert not list(tmp_path.glob("*.checkpoint.jsonl"))


def test_v1_input_gives_v1_result(tmp_path, trimer):
    inp = many_body_input(trimer, bsse_type=["cp"], driver="energy")
    v1 = inp.convert_v(1)
    path = tmp_path / "v1.json"
    path.write_text(v1.json())
    proc = run_cli([str(path), "--import", "qcmb_hpc.testing.engines", "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "v1.result.json").read_text())
    assert data.get("schema_version") == 1
    ref = reference(inp)
    assert abs(data["return_result"] - ref.return_result) == 0.0
    # the whole v1 result, field by field, as upstream's v1 computer writes it
    from qcmanybody.v1 import ManyBodyComputer as V1Computer

    assert_full_parity(json.loads(V1Computer.from_manybodyinput(v1).json()), data)


def test_environment_and_flags(tmp_path, trimer_input):
    inp, path = trimer_input
    proc = run_cli(
        [str(path), "--import", "qcmb_hpc.testing.engines", "--no-progress", "--workers", "2"],
        cwd=tmp_path,
        env={"QCMB_MAX_WORKERS": "1", "QCMB_PARALLEL_MODE": "multiprocessing", "QCMB_LOAD_BALANCING": "static"},
    )
    assert proc.returncode == 0, proc.stderr
    rep = load_report(tmp_path / "trimer.result.json")
    assert rep["workers"] == 2  # the flag wins over QCMB_MAX_WORKERS
    assert rep["strategy"] == "static"  # the variable applies where no flag is given


def test_import_user_engine(tmp_path, trimer):
    import custom_engine  # noqa: F401  (so the in-test reference can run it too)

    inp = many_body_input(trimer, program="my_engine", bsse_type=["cp", "nocp"])
    path = write_input(tmp_path / "mine.json", inp)
    proc = run_cli([str(path), "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "my_engine" in one_error_line(proc)
    for mode in ("sequential", "multiprocessing"):
        proc = run_cli([str(path), "--import", "custom_engine", "--mode", mode, "--no-progress", "--fresh"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert_same_result(reference(inp), load_result(tmp_path / "mine.result.json"), exact=True, check_shape=False)


def test_fragment_failure_exit_1(tmp_path, trimer):
    inp = many_body_input(trimer, method="bad")
    path = write_input(tmp_path / "bad_method.json", inp)
    proc = run_cli([str(path), "--import", "qcmb_hpc.testing.engines", "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "failed" in proc.stderr and "qcmb_test" in proc.stderr and "input_error" in proc.stderr
    assert "is not known" in proc.stderr  # the engine's own message


def _journal_labels(path):
    lines = path.read_text().splitlines()
    return [json.loads(ln)["label"] for ln in lines[1:]]


def test_parallel_machinery_broken_without_fallback_exit_4(tmp_path, trimer):
    """Without isolation a 'kill' fault takes each worker process down. With
    --no-fallback-to-sequential that is exit 4, the error on stderr's last line (no traceback) and
    the checkpoint left valid; with the fallback (the default) the same faults give exit 0 and the
    right result, computed sequentially."""
    import shutil

    faults = tmp_path / "faults"
    faults.mkdir()
    kw = {"fault_dir": str(faults), "p": 1.0, "kinds": ["kill"], "faulty_attempts": 1}
    inp = many_body_input(trimer, program="qcmb_fault", keywords=kw, bsse_type=["cp"])
    path = write_input(tmp_path / "kill.json", inp)
    args = [str(path), "--import", "qcmb_hpc.testing.engines", "--no-progress", "--mode", "multiprocessing",
            "--workers", "2", "--no-isolate-fragments"]
    proc = run_cli([*args, "--no-fallback-to-sequential"], cwd=tmp_path)
    assert proc.returncode == 4, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("qcmb_hpc: error: ") and "every worker is gone" in last, proc.stderr
    assert "killed by SIGKILL" in last
    assert not (tmp_path / "kill.result.json").exists()
    ckpt = tmp_path / "kill.checkpoint.jsonl"
    assert json.loads(ckpt.read_text().splitlines()[0])["format"] == "qcmb_hpc-journal"
    # quieter logging leaves exactly the one error line
    shutil.rmtree(faults)
    faults.mkdir()
    proc = run_cli([*args, "--no-fallback-to-sequential", "--log-level", "ERROR"], cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert "every worker is gone" in one_error_line(proc)
    # the same faults with the fallback: the run continues sequentially and is right
    shutil.rmtree(faults)
    faults.mkdir()
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "continuing sequentially" in proc.stderr
    res = load_result(tmp_path / "kill.result.json")
    rep = load_report(tmp_path / "kill.result.json")
    assert rep["mode"] == "sequential" and rep["lost_workers"]
    ref = reference(many_body_input(trimer, program="qcmb_fault", keywords={**kw, "p": 0.0}, bsse_type=["cp"]))
    assert_same_result(ref, res, exact=True, check_shape=False)


def test_fragment_that_keeps_failing_exit_1_after_finishing_the_others(tmp_path, trimer):
    """One fragment fails with a retryable error on every attempt (1 + --max-retries); every other
    fragment is finished and in the checkpoint; stderr names the label, the program and each
    attempt; a rerun does not recompute what was saved."""
    faults = tmp_path / "faults"
    faults.mkdir()
    max_retries = 2
    kw = {"fault_dir": str(faults), "p": 1.0, "kinds": ["fail"], "faulty_attempts": max_retries + 1}
    inp = many_body_input(trimer, program="qcmb_fault", keywords=kw, bsse_type=["cp", "nocp"], driver="gradient")
    plan = make_plan(inp)
    spec = RunSpec(molecule=plan.core.molecule, specifications=plan.specifications)
    key_of = {t.label: fragment_key(build_atomic_input(spec, t.label)[1]) for t in plan.tasks}
    bad = plan.tasks[len(plan.tasks) // 2].label
    # every other fragment has used up its faulty attempts already (the engine counts attempts with
    # files "<key>.<n>" in fault_dir): its next attempt succeeds; `bad` fails every attempt
    for label, key in key_of.items():
        if label != bad:
            for n in range(1, max_retries + 2):
                (faults / f"{key}.{n}").write_text("pre")
    path = write_input(tmp_path / "flaky.json", inp)
    proc = run_cli(
        [str(path), "--import", "qcmb_hpc.testing.engines", "--no-progress", "--mode", "multiprocessing",
         "--workers", "2", "--max-retries", str(max_retries)],
        cwd=tmp_path,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    err = proc.stderr
    assert f"fragment {bad} (program qcmb_fault) failed after {max_retries + 1} attempt(s)" in err, err
    assert "random_error" in err and "injected failure" in err  # the engine's own message
    for k in range(1, max_retries + 2):
        assert f"attempt {k} on worker" in err, err
    n = len(plan.tasks)
    assert f"{n - 1} of {n} finished and checkpointed" in err, err
    assert not (tmp_path / "flaky.result.json").exists()
    ckpt = tmp_path / "flaky.checkpoint.jsonl"
    saved = _journal_labels(ckpt)
    assert sorted(saved) == sorted(t.label for t in plan.tasks if t.label != bad)  # all the others, once each
    # the bad fragment really ran 1 + max_retries times, retried on the other worker
    assert len([f for f in os.listdir(faults) if f.startswith(key_of[bad] + ".")]) == max_retries + 1
    import re

    assert len(set(re.findall(r"attempt \d+ on worker (\d+)", err))) == 2, err
    # the rerun restores the others and only tries the bad one again (its faulty attempts are used up)
    proc = run_cli([str(path), "--import", "qcmb_hpc.testing.engines", "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rep = load_report(tmp_path / "flaky.result.json")
    assert rep["restored"] == n - 1 and rep["computed"] == 1
    ref = reference(many_body_input(trimer, program="qcmb_fault", keywords={**kw, "p": 0.0}, bsse_type=["cp", "nocp"], driver="gradient"))
    assert_same_result(ref, load_result(tmp_path / "flaky.result.json"), exact=True, check_shape=False)


def _bad_inputs(tmp_path, trimer):
    cases = {}
    cases["missing file"] = ([str(tmp_path / "nope.json")], "does not exist")
    cases["directory"] = ([str(tmp_path)], "directory")
    (tmp_path / "garbage.json").write_text("{not json")
    cases["not JSON"] = ([str(tmp_path / "garbage.json")], "not valid JSON")
    (tmp_path / "garbage.txt").write_text("key: [unclosed")
    cases["neither JSON nor YAML"] = ([str(tmp_path / "garbage.txt")], "neither JSON nor YAML")
    (tmp_path / "binary.json").write_bytes(b"\x00\xff\xfe\x80")
    cases["binary"] = ([str(tmp_path / "binary.json")], "not text")
    (tmp_path / "list.json").write_text("[1, 2]")
    cases["not a mapping"] = ([str(tmp_path / "list.json")], "does not hold a ManyBodyInput")
    (tmp_path / "wrong.json").write_text(json.dumps({"molecule": {"symbols": ["He"], "geometry": [0, 0, 0]}}))
    cases["wrong schema"] = ([str(tmp_path / "wrong.json")], "not a valid ManyBodyInput")
    unknown = many_body_input(trimer, program="no_such_program")
    write_input(tmp_path / "unknown.json", unknown)
    cases["unknown program"] = ([str(tmp_path / "unknown.json")], "no_such_program")
    from qcelemental.models.v2 import Molecule

    one = many_body_input(Molecule(symbols=["He", "He"], geometry=[0, 0, 0, 0, 0, 5]))
    write_input(tmp_path / "onefrag.json", one)
    cases["one fragment"] = ([str(tmp_path / "onefrag.json")], "needs the molecule cut into fragments")
    d = json.loads(one.model_dump_json())
    d["molecule"]["fragments"] = [[0, 1]]
    d["specification"]["keywords"]["max_nbody"] = 2
    (tmp_path / "onefrag2.json").write_text(json.dumps(d))
    cases["one explicit fragment, max_nbody 2"] = ([str(tmp_path / "onefrag2.json")], "the molecule has one fragment")
    (tmp_path / "water.xyz").write_text("3\nwater\nO 0 0 0\nH 0 0.76 0.59\nH 0 -0.76 0.59\n")
    cases["an XYZ file"] = ([str(tmp_path / "water.xyz")], "python -m qcmb_hpc init")
    d = json.loads(many_body_input(trimer).model_dump_json())
    d["specification"]["keywords"]["bsse_type"] = ["cpp"]
    (tmp_path / "bsse.json").write_text(json.dumps(d))
    cases["bad bsse_type"] = ([str(tmp_path / "bsse.json")], "Input should be 'nocp', 'cp' or 'vmfc'")
    good = write_input(tmp_path / "good.json", many_body_input(trimer))
    cases["bad workers"] = ([str(good), "--workers", "-1"], "--workers")
    cases["bad memory"] = ([str(good), "--memory-per-worker", "lots"], "--memory-per-worker")
    cases["bad mode"] = ([str(good), "--mode", "warp"], "--mode")
    cases["bad timeout"] = ([str(good), "--timeout-per-fragment", "-3"], "--timeout-per-fragment")
    cases["unknown flag"] = ([str(good), "--frobnicate"], "unrecognized arguments")
    cases["bad import"] = ([str(good), "--import", "no_such_module_xyz"], "no_such_module_xyz")
    cases["memory fits no worker"] = ([str(good), "--memory-per-worker", "100TiB"], "fits no worker")
    return cases


def test_bad_inputs_exit_2_one_line(tmp_path, trimer):
    for name, (args, needle) in _bad_inputs(tmp_path, trimer).items():
        proc = run_cli([*args, "--import", "qcmb_hpc.testing.engines", "--no-progress"], cwd=tmp_path)
        assert proc.returncode == 2, (name, proc.returncode, proc.stderr)
        line = one_error_line(proc)
        assert needle in line, (name, line)


def test_bad_environment_variable_exit_2(tmp_path, trimer):
    good = write_input(tmp_path / "good.json", many_body_input(trimer))
    proc = run_cli([str(good)], cwd=tmp_path, env={"QCMB_MAX_WORKERS": "many"})
    assert proc.returncode == 2
    assert "QCMB_MAX_WORKERS" in one_error_line(proc)


@pytest.mark.pyscf
def test_bundled_example_without_input(tmp_path):
    """``python -m qcmb_hpc`` with no input: the published (H2O)6 ring, DF-MP2/cc-pVDZ with PySCF,
    CP and NoCP through 3-body, on all cores. Its chemistry is checked (attractive, a few kcal/mol
    per hydrogen bond, CP less bound than NoCP); the PySCF parity tests prove the assembly."""
    from qcmanybody.models.v2 import ManyBodyInput

    from qcmb_hpc.cli import bundled_example, load_input
    from qcmb_hpc.testing.inputs import published_water_cluster

    inp = ManyBodyInput(**load_input(bundled_example()))
    spec = inp.specification.specification["(auto)"]
    assert (spec.program, spec.model.method, spec.model.basis) == ("pyscf", "mp2", "cc-pvdz")
    assert sorted(b.value for b in inp.specification.keywords.bsse_type) == ["cp", "nocp"]
    assert inp.specification.keywords.max_nbody == 3
    assert np.allclose(inp.molecule.geometry, published_water_cluster(6).geometry, atol=1e-8)
    proc = run_cli(["--no-progress"], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr
    res = load_result(tmp_path / "water6_pyscf.result.json")
    cp, nocp = (res.properties.cp_corrected_interaction_energy * 627.5095, res.properties.nocp_corrected_interaction_energy * 627.5095)
    assert -8 * 6 < cp < -3 * 6 and nocp < cp, (cp, nocp)  # six hydrogen bonds; NoCP has the basis set superposition error
    assert load_report(tmp_path / "water6_pyscf.result.json")["computed"] == 82


def test_files_are_made_with_the_users_umask(tmp_path, trimer_input):
    """Result, report and journal are readable as the umask allows (a group on a cluster), not 0600."""
    import stat

    inp, path = trimer_input
    old = os.umask(0o027)
    try:
        proc = run_cli([str(path), "--import", "qcmb_hpc.testing.engines", "--no-progress"], cwd=tmp_path)
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    for name in ("trimer.result.json", "trimer.report.json", "trimer.checkpoint.jsonl"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name


def test_result_file_is_exactly_serialize_json_written_in_pieces(tmp_path, trimer):
    """The result file's text is QCSchema's own ``serialize("json")``, whichever way it is cut
    (big dicts a few entries at a time: the cluster properties and results, numpy arrays inside),
    and for a v1 result too."""
    from qcelemental.util.serialization import JSONArrayEncoder

    from qcmb_hpc.cli import _write_json, json_pieces

    inp = many_body_input(trimer, bsse_type=["cp", "nocp"], driver="gradient", protocols={"cluster_results": "all"})
    res = reference(inp)
    want = res.serialize("json")
    assert len(res.cluster_properties) > 3 and len(res.cluster_results) > 3
    encode = JSONArrayEncoder().encode
    for chunk in (1, 2, 3, len(res.cluster_properties), 10000):
        assert "".join(json_pieces(res.model_dump(), encode, chunk=chunk)) == want, chunk
    for data in ({}, [1, {"a": 2}], {"a": {}, "b": {"x": float("nan")}}, {1: {"a": 1}}):
        assert "".join(json_pieces(data, encode, chunk=1)) == encode(data)
    _write_json(str(tmp_path / "r.json"), res)
    assert (tmp_path / "r.json").read_text() == want
    v1 = res.convert_v(1)
    _write_json(str(tmp_path / "r1.json"), v1)
    assert (tmp_path / "r1.json").read_text() == v1.serialize("json")
