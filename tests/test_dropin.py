"""Drop-in for QCManyBody: the same result object, the computer's own fields, unused model
chemistries ignored, parallelizing code you do not own (``qcmb_hpc.parallelize``, a class swapped
by hand, the QCEngine procedure ``qcmb_hpc``), reporters of any shape, and a configuration that
validates every assignment."""

from __future__ import annotations

import io

import pytest

from conftest import quiet, reference
from qcmb_hpc import ConsoleProgressReporter, ParallelConfig, ParallelManyBodyComputer, parallelize
from qcmb_hpc.errors import InputDataError
from qcmb_hpc.testing.inputs import many_body_input, water_cluster
from test_parity import assert_full_parity

TRIMER = water_cluster(3)


def test_result_is_upstreams_and_the_report_stays_on_the_computer():
    inp = many_body_input(TRIMER, bsse_type=["cp", "nocp"], driver="gradient")
    comp = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing", max_workers=2))
    res = comp.compute()
    ref = reference(inp)
    assert res.extras == ref.extras == {}
    assert_full_parity(ref, res)
    assert comp.run_info["mode"] == "multiprocessing" and comp.run_info["computed"] == ref.properties.calcinfo_nmbe


# ------------------------------------------------------------------------------------------------
# what is checked, what takes effect
# ------------------------------------------------------------------------------------------------


def test_unused_model_chemistry_is_ignored_and_a_used_missing_program_refused():
    specs = {
        "hi": {"program": "qcmb_test", "method": "mp2", "basis": "cc-pvdz"},
        "lo": {"program": "qcmb_test", "method": "hf", "basis": "sto-3g"},
        "c4": {"program": "cfour", "method": "ccsd", "basis": "cc-pvdz"},  # no level uses it; not installed
    }
    inp = many_body_input(TRIMER, levels={1: "hi", 3: "lo"}, specifications=specs, bsse_type=["nocp"])
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing", max_workers=2)).compute()
    assert_full_parity(reference(inp), res)
    used = many_body_input(TRIMER, levels={1: "hi", 3: "c4"}, specifications=specs, bsse_type=["nocp"])
    with pytest.raises(InputDataError, match="program 'cfour' \\(model chemistry 'c4'\\) is not available"):
        ParallelManyBodyComputer(used, parallel_config=quiet(mode="multiprocessing")).compute()


def test_computer_fields_take_effect_as_upstreams_do():
    """Fields given beside the input are the computer's fields, and the plan is made from them:
    the numbers are those of upstream's computer for an input with those keywords."""
    inp = many_body_input(TRIMER, bsse_type=["cp", "nocp"], driver="energy")
    comp = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="sequential"), max_nbody=2, bsse_type=["nocp"])
    assert comp.max_nbody == 2 and [b.value for b in comp.bsse_type] == ["nocp"]
    res = comp.compute()
    want = reference(many_body_input(TRIMER, bsse_type=["nocp"], max_nbody=2, driver="energy"))
    assert res.return_result == want.return_result
    assert res.properties.model_dump() == want.properties.model_dump()
    assert res.input_data == inp  # as upstream: the input as given is stored
    # and they are part of the checkpoint's fingerprint (another expansion must not resume this one)
    assert comp.build_plan().fingerprint != ParallelManyBodyComputer(inp).build_plan().fingerprint


def test_unknown_keyword_is_refused():
    inp = many_body_input(TRIMER)
    with pytest.raises(TypeError, match="unknown keyword.*maxnbody"):
        ParallelManyBodyComputer(inp, maxnbody=2)
    with pytest.raises(TypeError, match="unknown keyword.*workers"):
        ParallelManyBodyComputer.from_manybodyinput(inp, workers=2)


def test_invalid_input_raises_what_upstream_raises():
    import pydantic
    from qcmanybody.v2 import ManyBodyComputer

    inp = many_body_input(TRIMER)
    data = inp.model_dump()
    data["specification"]["keywords"]["max_nbody"] = 5
    for cls in (ManyBodyComputer, ParallelManyBodyComputer):
        with pytest.raises(pydantic.ValidationError, match="max_nbody=5 should be between 1 and 3"):
            cls.from_manybodyinput(data, build_tasks=False)


# ------------------------------------------------------------------------------------------------
# parallelizing code you do not own
# ------------------------------------------------------------------------------------------------


def _third_party_program(inp):
    """Code written for QCManyBody: it looks its class up when it runs."""
    import qcmanybody
    from qcmanybody.v2 import ManyBodyComputer

    assert qcmanybody.v2.ManyBodyComputer is ManyBodyComputer
    return ManyBodyComputer.from_manybodyinput(inp)


def test_parallelize_context_manager():
    import qcmanybody
    import qcmanybody.v1
    import qcmanybody.v2

    originals = (qcmanybody.ManyBodyComputer, qcmanybody.v1.ManyBodyComputer, qcmanybody.v2.ManyBodyComputer)
    inp = many_body_input(TRIMER, bsse_type=["vmfc"], driver="gradient")
    ref = reference(inp)
    with parallelize(quiet(mode="multiprocessing", max_workers=2)) as cls:
        assert qcmanybody.v2.ManyBodyComputer is cls and qcmanybody.ManyBodyComputer is cls
        assert qcmanybody.v1.ManyBodyComputer is cls and issubclass(cls, ParallelManyBodyComputer)
        res = _third_party_program(inp)
        v1 = qcmanybody.ManyBodyComputer.from_manybodyinput(inp.convert_v(1))
    assert (qcmanybody.ManyBodyComputer, qcmanybody.v1.ManyBodyComputer, qcmanybody.v2.ManyBodyComputer) == originals
    assert_full_parity(ref, res)
    assert_full_parity(originals[0].from_manybodyinput(inp.convert_v(1)), v1)
    with pytest.raises(RuntimeError, match="inside"):
        with parallelize(quiet(mode="sequential")):
            raise RuntimeError("inside")
    assert qcmanybody.v2.ManyBodyComputer is originals[2]  # restored after an exception too


def test_swapping_the_class_by_hand_does_not_recurse(monkeypatch):
    import qcmanybody.v2

    monkeypatch.setattr(qcmanybody.v2, "ManyBodyComputer", ParallelManyBodyComputer)
    inp = many_body_input(TRIMER, bsse_type=["cp"])
    res = _third_party_program(inp)
    assert_full_parity(reference(inp), res)


@pytest.mark.parametrize("version", [2, 1])
def test_qcengine_procedure(version):
    import qcengine

    inp = many_body_input(TRIMER, bsse_type=["cp", "nocp"], driver="gradient")
    given = inp if version == 2 else inp.convert_v(1)
    res = qcengine.compute(given, "qcmb_hpc", task_config={"ncores": 2, "memory": 2}, raise_error=True)
    ref = qcengine.compute(given, "qcmanybody", raise_error=True)
    assert res.schema_version == ref.schema_version == version
    assert_full_parity(ref, res)


def test_procedure_resources_from_task_config():
    from qcengine.config import TaskConfig

    from qcmb_hpc.dropin import config_from_task_config
    from qcmb_hpc.resources import WORKER_OVERHEAD

    cfg = config_from_task_config(TaskConfig(ncores=4, memory=2.0, scratch_directory="/tmp", nnodes=1, retries=0, mpiexec_command=None))
    assert cfg.max_workers == 4 and cfg.scratch_directory == "/tmp"
    assert cfg.memory_limit_per_worker == 2 * 1024**3 // 4 - WORKER_OVERHEAD
    # more memory than the node has (QCEngine's default fills in the node's): an equal share instead
    assert config_from_task_config(TaskConfig(ncores=2, memory=1e6, nnodes=1, retries=0, mpiexec_command=None, scratch_directory=None)).memory_limit_per_worker is None


# ------------------------------------------------------------------------------------------------
# reporters
# ------------------------------------------------------------------------------------------------


class DesignDocReporter:
    """The design document's four methods, no base class."""

    def __init__(self):
        self.events = []

    def on_level_started(self, level, fragment_count):
        self.events.append(("level_started", level))

    def on_fragment_completed(self, fragment_label, success):
        self.events.append(("fragment", success))

    def on_level_completed(self, level, duration):
        self.events.append(("level_completed", level))

    def on_calculation_completed(self, total_duration):
        self.events.append(("done",))


def test_reporter_without_base_class_survives_retries_and_resume(tmp_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    kw = {"fault_dir": str(faults), "p": 1.0, "seed": 3, "faulty_attempts": 1, "kinds": ["fail"]}
    inp = many_body_input(TRIMER, program="qcmb_fault", keywords=kw, bsse_type=["cp"])
    ck = str(tmp_path / "j.jsonl")
    rep = DesignDocReporter()
    ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing", max_workers=2, checkpoint=ck), progress_reporter=rep).compute()
    n = sum(1 for e in rep.events if e[0] == "fragment")
    assert n > 0 and all(e[1] for e in rep.events if e[0] == "fragment") and rep.events[-1] == ("done",)
    again = DesignDocReporter()  # a resume: every fragment restored
    ParallelManyBodyComputer(inp, parallel_config=quiet(mode="sequential", checkpoint=ck), progress_reporter=again).compute()
    assert again.events[-1] == ("done",) and not any(e[0] == "fragment" for e in again.events)


def test_callers_reporter_replaces_the_console_one(capsys):
    """The design document's example passes a console reporter *and* progress_reporting=True:
    one reporter reports (no second bar, no line printed twice)."""
    stream = io.StringIO()
    inp = many_body_input(TRIMER, bsse_type=["cp"])
    cfg = ParallelConfig(mode="sequential", progress_reporting=True)
    ParallelManyBodyComputer(inp, parallel_config=cfg, progress_reporter=ConsoleProgressReporter(stream=stream)).compute()
    lines = stream.getvalue().splitlines()
    assert lines and len(lines) == len(set(lines)), lines
    assert "qcmb_hpc:" not in capsys.readouterr().err  # the built-in console reporter did not run
    # a list keeps both
    mine = DesignDocReporter()
    stream2 = io.StringIO()
    ParallelManyBodyComputer(inp, parallel_config=cfg, progress_reporter=[ConsoleProgressReporter(stream=stream2), mine]).compute()
    assert stream2.getvalue() and mine.events[-1] == ("done",)


def test_a_reporter_that_raises_does_not_end_the_run(caplog):
    class Broken:
        def on_fragment_completed(self, label, success):
            raise ZeroDivisionError("oops")

    inp = many_body_input(TRIMER, bsse_type=["cp"])
    res = ParallelManyBodyComputer(inp, parallel_config=quiet(mode="sequential"), progress_reporter=Broken()).compute()
    assert_full_parity(reference(inp), res)
    warnings = [r.getMessage() for r in caplog.records if "progress reporter" in r.getMessage()]
    assert len(warnings) == 1 and "ZeroDivisionError" in warnings[0]


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------


def test_config_validates_every_assignment():
    cfg = ParallelConfig()
    cfg.memory_limit_per_worker = "2GB"
    assert cfg.memory_limit_per_worker == 2 * 10**9
    cfg.memory_limit_per_worker = cfg.memory_limit_per_worker  # reads back in a form that can be assigned again
    cfg.mode = "sequential"
    assert cfg.mode.value == "sequential"
    with pytest.raises(ValueError, match="^ParallelConfig.memory_limit_per_worker: invalid value '2 apples'"):
        cfg.memory_limit_per_worker = "2 apples"
    with pytest.raises(ValueError, match="^ParallelConfig.mode: invalid value 'fast'"):
        cfg.mode = "fast"
    with pytest.raises(AttributeError, match="no setting 'max_worker'"):
        cfg.max_worker = 3
    assert cfg.mode.value == "sequential" and cfg.memory_limit_per_worker == 2 * 10**9  # unchanged by the refusals
    # the same message as at construction
    with pytest.raises(ValueError, match="^ParallelConfig.max_retries: invalid value -1: must be at least 0$"):
        ParallelConfig(max_retries=-1)
    with pytest.raises(ValueError, match="^ParallelConfig.max_retries: invalid value -1: must be at least 0$"):
        cfg.max_retries = -1
