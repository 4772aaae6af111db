"""A fragment that fails raises FragmentExecutionError naming its label, program, attempts and the
engine's message — after every other fragment has finished."""

import pytest

from conftest import quiet
from qcmb_hpc import FragmentExecutionError, ParallelManyBodyComputer
from qcmb_hpc.plan import make_plan
from qcmb_hpc.testing.inputs import many_body_input


@pytest.mark.parametrize("mode", ["sequential", "multiprocessing"])
def test_input_error_fails_at_once(trimer, mode):
    inp = many_body_input(trimer, method="bad", bsse_type=["nocp"])
    with pytest.raises(FragmentExecutionError) as err:
        ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode, max_retries=3)).compute()
    exc = err.value
    n = len(make_plan(inp).tasks)
    assert len(exc.failures) == n  # every fragment fails the same way
    for f in exc.failures:
        assert f["program"] == "qcmb_test"
        assert len(f["attempts"]) == 1  # input errors are not retried
        assert f["attempts"][0]["error_type"] == "input_error"
        assert "is not known" in f["attempts"][0]["error_message"]
    assert "is not known" in str(exc) and "qcmb_test" in str(exc)
    assert isinstance(exc, RuntimeError)  # like upstream's RuntimeError


def test_failure_only_where_it_fails(tetramer, tmp_path):
    """Multilevel: one model chemistry fails, the other finishes; both are accounted for."""
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
    assert {f["label"] for f in err.value.failures} == broken
    assert err.value.completed == len(plan.tasks) - len(broken)
    # every fragment that could finish is in the journal
    lines = ckpt.read_text().splitlines()
    assert len(lines) - 1 == len(plan.tasks) - len(broken)
