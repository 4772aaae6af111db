"""A fragment that fails raises FragmentExecutionError naming its label, program, attempts and the
engine's message — after every other fragment has finished; unless the failures are systematic
(the first fragments of a model chemistry all fail alike: :mod:`qcmb_hpc.failures`), when the run
stops at once and says what the engine said, once."""

import collections
import json
import os

import pytest

from conftest import quiet
from qcmb_hpc import FragmentExecutionError, ParallelManyBodyComputer
from qcmb_hpc.failures import SYSTEMATIC_AFTER
from qcmb_hpc.plan import make_plan
from qcmb_hpc.testing.inputs import many_body_input


@pytest.mark.parametrize("mode", ["sequential", "multiprocessing"])
def test_input_error_fails_at_once(trimer, mode):
    inp = many_body_input(trimer, method="bad", bsse_type=["nocp"])
    with pytest.raises(FragmentExecutionError) as err:
        ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode, max_retries=3)).compute()
    exc = err.value
    n = len(make_plan(inp).tasks)
    # every fragment would fail the same way: the first three do, and the run stops
    assert len(exc.failures) == SYSTEMATIC_AFTER < n and exc.systematic is not None
    assert exc.systematic["error_type"] == "input_error" and "is not known" in exc.systematic["line"]
    for f in exc.failures:
        assert f["program"] == "qcmb_test"
        assert len(f["attempts"]) == 1  # input errors are not retried
        assert f["attempts"][0]["error_type"] == "input_error"
        assert "is not known" in f["attempts"][0]["error_message"]
    assert "is not known" in str(exc) and "qcmb_test" in str(exc)
    assert isinstance(exc, RuntimeError)  # like upstream's RuntimeError


def test_failure_only_where_it_fails(tetramer, tmp_path):
    """Multilevel: one model chemistry fails systematically while the other succeeds. The run
    stops at the third failure (successes of the good level do not make the broken one's errors
    bad luck), and the journal holds exactly what finished."""
    specs = {
        "good": {"program": "qcmb_test", "method": "hf", "basis": "sto-3g"},
        "broken": {"program": "qcmb_test", "method": "bad", "basis": "sto-3g"},
    }
    inp = many_body_input(tetramer, levels={1: "good", 2: "broken"}, specifications=specs, bsse_type=["nocp"])
    ckpt = tmp_path / "c.jsonl"
    with pytest.raises(FragmentExecutionError) as err:
        ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing", checkpoint=str(ckpt))).compute()
    plan = make_plan(inp)
    broken = {t.label for t in plan.tasks if t.mc == "broken"}
    failed = {f["label"] for f in err.value.failures}
    assert failed <= broken and len(failed) == SYSTEMATIC_AFTER and err.value.systematic["model_chemistry"] == "broken"
    # every fragment that finished is in the journal, and none of the broken level's
    journal = [json.loads(ln)["label"] for ln in ckpt.read_text().splitlines()[1:]]
    assert len(journal) == err.value.completed and not set(journal) & broken


def _failing_everywhere(mol, fault_dir, **kw):
    """qcmb_fault failing every attempt with the same (retryable) error."""
    keywords = {"fault_dir": str(fault_dir), "p": 1.0, "kinds": ["fail"], "faulty_attempts": 1000, **kw}
    return many_body_input(mol, program="qcmb_fault", keywords=keywords, bsse_type=["cp", "nocp"])


@pytest.mark.parametrize("mode", ["sequential", "multiprocessing"])
def test_systematic_retryable_error_stops_after_three_fragments(tetramer, tmp_path, mode):
    """Every attempt fails alike: three fragments fail for good (each after its retries), then the
    run stops. The engine ran for a handful of fragments, not once per fragment and attempt (3 × n)."""
    faults = tmp_path / "f"
    faults.mkdir()
    inp = _failing_everywhere(tetramer, faults)
    n = len(make_plan(inp).tasks)
    with pytest.raises(FragmentExecutionError) as err:
        ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode, max_workers=2, max_retries=2)).compute()
    exc = err.value
    assert exc.systematic is not None and len(exc.failures) == 3 and exc.completed == 0 and n > 20
    # one file per engine attempt (qcmb_fault: <fragment>.<attempt>)
    per_fragment = collections.Counter(f.split(".")[0] for f in os.listdir(faults))
    ran = sum(per_fragment.values())
    assert max(per_fragment.values()) == 3 and ran >= 9, per_fragment
    # new fragments are held once three have failed alike (failures.hold_new_fragments): at most
    # the two before that and what the two workers held (1 + prefetch each) ever started — however
    # slow one worker is to come back for the retries the other's failures must leave to it
    assert len(per_fragment) <= SYSTEMATIC_AFTER - 1 + 2 * 2 < n, per_fragment
    msg = str(exc)
    assert "«qcmb_fault: injected failure (attempt #)»" not in msg  # what the engine said, verbatim
    assert "qcmb_fault: injected failure" in msg and "systematic" in msg and "\n" not in msg
    assert exc.details().count("fragment ") == 1  # one fragment's attempts shown: the others are alike


def test_errors_that_differ_are_not_systematic(tetramer, tmp_path):
    """Failures that are not alike (a different error for some fragments) run to the end: every
    other fragment is tried."""
    faults = tmp_path / "f"
    faults.mkdir()
    inp = many_body_input(
        tetramer, program="qcmb_fault", bsse_type=["nocp"],
        keywords={"fault_dir": str(faults), "p": 1.0, "kinds": ["fail", "raise"], "faulty_attempts": 1000, "seed": 1},
    )
    n = len(make_plan(inp).tasks)
    with pytest.raises(FragmentExecutionError) as err:
        ParallelManyBodyComputer(inp, parallel_config=quiet(mode="sequential", max_retries=0)).compute()
    said = {a["error_message"].split(":")[-1].strip() for f in err.value.failures for a in f["attempts"]}
    assert err.value.systematic is None and len(err.value.failures) == n and len(said) == 2, said


def test_meaningful_line_of_real_engine_texts():
    from qcmb_hpc.failures import is_systematic, meaningful_line, signature

    nwchem = (
        "QCEngine Unknown Error: INPUT:\necho\nbasis\n  O library cc-pvdzz\nend\n\nSTDOUT:\n\n"
        "    hardfail = no \n Attempting to read a basis set from a  non-existing file:\n"
        " /usr/share/nwchem/libraries/cc-pvdzz\n ----\n bas_tag_lib: failed opening basis file 0\n"
        " There is an error in the specified basis set\n\nSTDERR:\n[0] ARMCI Error: 0:bas_tag_lib: failed opening basis file:\n"
        "MPI_ABORT was invoked on rank 0 in communicator MPI COMMUNICATOR 3 DUP FROM 0\nwith errorcode -1.\n"
    )
    assert meaningful_line(nwchem) == "Attempting to read a basis set from a non-existing file: /usr/share/nwchem/libraries/cc-pvdzz"
    assert meaningful_line("QCEngine Input Error: Method not recognized: hff") == "QCEngine Input Error: Method not recognized: hff"
    same = signature("random_error", "failure (attempt 1)")
    assert same == signature("random_error", "failure (attempt 2)")
    assert is_systematic([same] * 3, successes=0, todo=10)
    assert not is_systematic([same] * 3, successes=1, todo=10)  # one success: bad luck after all
    assert not is_systematic([same] * 2, successes=0, todo=10)
    assert is_systematic([same] * 2, successes=0, todo=2)
    assert not is_systematic([same, same, signature("random_error", "other")], successes=0, todo=10)
    assert not is_systematic([signature("timeout", "exceeded")] * 3, successes=0, todo=10)  # resources, not input


def test_hold_new_fragments_while_retries_decide():
    from qcmb_hpc.failures import hold_new_fragments

    assert hold_new_fragments(awaiting_retry=3, failed_for_good=0, successes=0)
    assert hold_new_fragments(awaiting_retry=1, failed_for_good=2, successes=0)
    assert not hold_new_fragments(awaiting_retry=2, failed_for_good=0, successes=0)  # not yet a pattern
    assert not hold_new_fragments(awaiting_retry=3, failed_for_good=0, successes=1)  # it works somewhere
    assert not hold_new_fragments(awaiting_retry=0, failed_for_good=5, successes=0)  # nothing would decide it
