"""The journal: records read back to the last bit; a torn last line is tolerated; any other damage —
including a record that is valid JSON but not a fragment record — is "corrupt at line N", reported
when the journal is opened (API: InputDataError; CLI: one line, exit 2), never a traceback later."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import cli_env, quiet, reference
from qcmb_hpc import ParallelManyBodyComputer
from qcmb_hpc.checkpoint import Journal, JournalError, JournalMismatch, check_record, decode_properties, encode_properties
from qcmb_hpc.errors import InputDataError
from qcmb_hpc.plan import make_plan
from qcmb_hpc.testing.inputs import many_body_input

FP = "f" * 64


def good_record(label, k=0):
    props = {"energy": -76.0 - k / 7, "gradient": np.arange(9.0).reshape(3, 3) / (k + 3), "hessian": np.eye(2) / 3}
    return {"label": label, "properties": encode_properties(props), "seconds": 0.01, "worker": 0, "host": "h"}


def write_journal(path, records, header=None, tail=""):
    header = header or {"format": "qcmb_hpc-journal", "version": 1, "fingerprint": FP, "created": 0.0, "fragments": 9}
    lines = [json.dumps(header)] + [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n" + tail)
    return path


# every way a record can be valid JSON and still not be a fragment record
MALFORMED = {
    "energy a string": {"label": "L", "properties": {"energy": "abc"}},
    "energy null": {"label": "L", "properties": {"energy": None}},
    "energy a boolean": {"label": "L", "properties": {"energy": True}},
    "energy a list": {"label": "L", "properties": {"energy": [1.0, 2.0]}},
    "no label": {"properties": {"energy": -1.0}},
    "no properties": {"label": "L"},
    "label a number": {"label": 123, "properties": {"energy": -1.0}},
    "label empty": {"label": "", "properties": {"energy": -1.0}},
    "label null": {"label": None, "properties": {"energy": -1.0}},
    "properties a list": {"label": "L", "properties": [1, 2]},
    "properties a string": {"label": "L", "properties": "energy=1"},
    "array without data": {"label": "L", "properties": {"gradient": {"shape": [3, 3]}}},
    "array without shape": {"label": "L", "properties": {"gradient": {"data": [1.0]}}},
    "array too few values": {"label": "L", "properties": {"gradient": {"shape": [3, 3], "data": [1.0] * 8}}},
    "array too many values": {"label": "L", "properties": {"gradient": {"shape": [2], "data": [1.0] * 3}}},
    "array shape not sizes": {"label": "L", "properties": {"gradient": {"shape": [-1, 3], "data": [1.0] * 3}}},
    "array shape a string": {"label": "L", "properties": {"gradient": {"shape": "3x3", "data": [1.0] * 9}}},
    "array data strings": {"label": "L", "properties": {"gradient": {"shape": [2], "data": ["a", "b"]}}},
    "array data nested": {"label": "L", "properties": {"gradient": {"shape": [2, 1], "data": [[1.0], [2.0]]}}},
    "array extra key": {"label": "L", "properties": {"gradient": {"shape": [1], "data": [1.0], "x": 1}}},
    "number too large": {"label": "L", "properties": {"energy": 10**400}},
    "atomic_result a string": {"label": "L", "properties": {"energy": -1.0}, "atomic_result": "lost"},
    "atomic_result invalid": {"label": "L", "properties": {"energy": -1.0}, "atomic_result": {"x": 1}},
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
@pytest.mark.parametrize("where", ["middle", "last"])
def test_malformed_record_is_corrupt_at_its_line(tmp_path, name, where):
    bad = MALFORMED[name]
    records = [good_record("A", 1), good_record("B", 2)]
    records.insert(1 if where == "middle" else 2, bad)
    line = 3 if where == "middle" else 4  # the header is line 1
    path = write_journal(tmp_path / "j.jsonl", records)
    before = path.read_bytes()
    with pytest.raises(JournalError) as err:
        Journal.open(str(path), FP)
    assert not isinstance(err.value, JournalMismatch)
    msg = str(err.value)
    assert f"is corrupt at line {line}:" in msg and str(path) in msg, msg
    assert "\n" not in msg
    assert path.read_bytes() == before  # a corrupt journal is left as it is, for the user to look at


def test_messages_say_what_is_wrong(tmp_path):
    expect = {
        "energy a string": "property 'energy' is a string ('abc')",
        "no label": "without label/properties",
        "label a number": "label is int",
        "properties a list": "properties is a list",
        "array too few values": "property 'gradient' has 8 values for shape [3, 3]",
        "atomic_result a string": "atomic_result is a string",
        "atomic_result invalid": "atomic_result is not a valid AtomicResult",
    }
    for name, needle in expect.items():
        path = write_journal(tmp_path / f"{name}.jsonl", [good_record("A"), MALFORMED[name]])
        with pytest.raises(JournalError, match="corrupt at line 3") as err:
            Journal.open(str(path), FP)
        assert needle in str(err.value), (name, str(err.value))


def test_check_record_accepts_what_the_coordinator_writes():
    check_record(good_record("A"))
    check_record({**good_record("A"), "atomic_result": None})
    check_record({"label": "A", "properties": {}})  # nothing but a label (e.g. an empty property set)
    check_record({"label": "A", "properties": {"energy": float("nan"), "e2": 3}})  # ints are numbers


def test_encode_decode_round_trip_to_the_last_bit():
    rng = np.random.default_rng(1)
    props = {
        "energy": float(rng.normal()) * 1e-3 - 76.0,
        "int": 3,
        "numpy scalar": np.float64(1) / 3,
        "gradient": rng.normal(size=(9, 3)),
        "hessian": rng.normal(size=(27, 27)),
        "empty": np.zeros((0, 3)),
        "zero-d": np.asarray(2.0) / 7,
    }
    back = decode_properties(json.loads(json.dumps(encode_properties(props))))
    assert set(back) == set(props)
    for k, v in props.items():
        a, b = np.asarray(v, dtype=float), np.asarray(back[k])
        assert a.shape == b.shape and np.array_equal(a, b), k


def test_torn_last_line_still_tolerated(tmp_path):
    full = json.dumps(good_record("C", 3))
    # a write cut short: no newline at the end
    path = write_journal(tmp_path / "torn.jsonl", [good_record("A"), good_record("B")], tail=full[: len(full) // 2])
    j = Journal.open(str(path), FP)
    try:
        assert j.torn and sorted(j.restored) == ["A", "B"]
    finally:
        j.close()
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 3  # cut back to whole records
    # a partial write that still got its newline: the last line is not JSON, so it is torn too
    path = write_journal(tmp_path / "torn2.jsonl", [good_record("A"), full[:40]])
    j = Journal.open(str(path), FP)
    try:
        assert j.torn and sorted(j.restored) == ["A"]
    finally:
        j.close()
    # ... but not JSON in the middle is corruption
    path = write_journal(tmp_path / "mid.jsonl", [good_record("A"), full[:40], good_record("B")])
    with pytest.raises(JournalError, match="corrupt at line 3"):
        Journal.open(str(path), FP)


def test_atomic_results_written_by_a_run_pass(tmp_path, trimer):
    """Records with the AtomicResult (cluster_results="all") are accepted, and a resume rebuilds them."""
    inp, ck = _computed_journal(tmp_path, trimer, keep=True)
    n = len(make_plan(inp).tasks)
    j = Journal.open(str(ck), make_plan(inp).fingerprint)
    try:
        assert len(j.restored) == n and sorted(j.atomic) == sorted(j.restored) and all(j.atomic.values())
    finally:
        j.close()
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(report_in_extras=True, mode="sequential", checkpoint=str(ck))).compute()
    assert res.extras["qcmb_hpc"]["restored"] == n and len(res.cluster_results) == n


def test_restored_records_decode(tmp_path):
    recs = [good_record(lbl, k) for k, lbl in enumerate("ABC")]
    path = write_journal(tmp_path / "ok.jsonl", recs)
    j = Journal.open(str(path), FP)
    try:
        assert not j.torn and sorted(j.restored) == ["A", "B", "C"]
        for rec in recs:
            got, want = j.restored[rec["label"]], decode_properties(rec["properties"])  # (decoded as read)
            assert got["gradient"].shape == (3, 3) and all(np.array_equal(got[k], want[k]) for k in want)
        j.append([good_record("D", 4)])
    finally:
        j.close()
    j = Journal.open(str(path), FP)
    try:
        assert sorted(j.restored) == ["A", "B", "C", "D"] and j.atomic == {}
    finally:
        j.close()
    # filed under the key the caller gives (a run: its task ids), records it has no key for left out;
    # a later record of a label replaces the earlier one
    again = {**good_record("B", 7), "properties": {"energy": -7.5}}
    with open(path, "a") as fh:
        fh.write(json.dumps(again) + "\n")
    j = Journal.open(str(path), FP, key={"A": 10, "B": 11}.get)
    try:
        assert sorted(j.restored) == [10, 11] and j.restored[11] == {"energy": -7.5}
        assert np.array_equal(j.restored[10]["gradient"], decode_properties(recs[0]["properties"])["gradient"])
    finally:
        j.close()


# ------------------------------------------------------------------------------------------------
# end to end: the API and the command line report it before any work
# ------------------------------------------------------------------------------------------------


def _computed_journal(tmp_path, trimer, keep=False):
    protocols = {"cluster_results": "all"} if keep else None
    inp = many_body_input(trimer, bsse_type=["cp", "nocp"], driver="gradient", protocols=protocols)
    ck = tmp_path / "run.jsonl"
    ParallelManyBodyComputer(inp, parallel_config=quiet(mode="sequential", checkpoint=str(ck))).compute()
    return inp, ck


@pytest.mark.parametrize("damage", ["energy a string", "no label", "array too few values", "atomic_result"])
def test_api_reports_corrupt_record_before_running(tmp_path, trimer, damage):
    inp, ck = _computed_journal(tmp_path, trimer, keep=damage == "atomic_result")
    lines = ck.read_text().splitlines(keepends=True)
    rec = json.loads(lines[3])
    if damage == "energy a string":
        rec["properties"]["energy"] = "abc"
    elif damage == "no label":
        del rec["label"]
    elif damage == "atomic_result":
        assert rec["atomic_result"]["success"] is True
        del rec["atomic_result"]["molecule"]
    else:
        rec["properties"]["gradient"]["data"].pop()
    lines[3] = json.dumps(rec) + "\n"
    ck.write_text("".join(lines))
    before = ck.read_bytes()
    with pytest.raises(InputDataError, match="corrupt at line 4"):
        ParallelManyBodyComputer(inp, parallel_config=quiet(report_in_extras=True, mode="multiprocessing", checkpoint=str(ck))).compute()
    assert ck.read_bytes() == before
    # --fresh (compute(fresh=True)) replaces it and runs
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(report_in_extras=True, mode="sequential", checkpoint=str(ck))).compute(fresh=True)
    assert res.extras["qcmb_hpc"]["computed"] == len(make_plan(inp).tasks)
    assert res.return_result.tolist() == reference(inp).return_result.tolist()


def test_cli_corrupt_record_one_line_exit_2(tmp_path, trimer):
    inp = many_body_input(trimer, bsse_type=["cp"])
    path = tmp_path / "a.json"
    path.write_text(inp.serialize("json"))
    env = cli_env()
    cmd = [sys.executable, "-m", "qcmb_hpc", str(path), "--import", "qcmb_hpc.testing.engines", "--no-progress", "--mode", "sequential"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ck = tmp_path / "a.checkpoint.jsonl"
    lines = ck.read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])
    last["properties"] = {"energy": "abc"}
    lines[-1] = json.dumps(last) + "\n"  # the last record, complete (newline) but malformed
    ck.write_text("".join(lines))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("qcmb_hpc: error: "), proc.stderr
    assert f"is corrupt at line {len(lines)}" in err[0] and "'energy'" in err[0], err[0]
