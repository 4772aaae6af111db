"""The cost-history file (qcmb_hpc.cost): concurrent writers, corrupt and unwritable files, and
in-run refits that a full history does not switch off."""

import json
import logging
import math
import multiprocessing
import os

import pytest

from qcmb_hpc.cost import HISTORY_WEIGHT, MAX_SAMPLES_PER_KEY, CostModel
from qcmb_hpc.testing.inputs import water_cluster

KEY = "nwchem|hf|energy"


def spec(method="hf", basis="cc-pvdz"):
    return {"program": "nwchem", "specification": {"model": {"method": method, "basis": basis}, "driver": "energy"}}


@pytest.fixture(scope="module")
def trimer():
    return water_cluster(3)


def warnings_of(records):
    return [r.getMessage() for r in records if r.levelno >= logging.WARNING]


def write_history(path, samples):
    path.write_text(json.dumps({"format": "qcmb_hpc-cost-history", "version": 1, "samples": samples}))


# ------------------------------------------------------------------------------------------------
# (c) concurrent writers lose nothing
# ------------------------------------------------------------------------------------------------

WRITERS, ROUNDS, PER_ROUND = 4, 25, 3


def _writer(path, index, barrier):
    model = CostModel(water_cluster(3), {"e": spec()}, history=path)
    barrier.wait()
    for r in range(ROUNDS):
        for j in range(PER_ROUND):  # a distinct time per sample: (writer, round, sample)
            model.observe("e", (1,), (1,), 1.0 + index + r / 100 + j / 10000)
        if not model.save():
            os._exit(3)
    os._exit(0)


def test_concurrent_saves_lose_no_samples(tmp_path):
    path = str(tmp_path / "shared" / "history.json")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(path, i, barrier)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    data = json.loads(open(path).read())
    got = sorted(t for _, t in data["samples"][KEY])
    want = sorted(1.0 + i + r / 100 + j / 10000 for i in range(WRITERS) for r in range(ROUNDS) for j in range(PER_ROUND))
    assert len(got) == len(want) <= MAX_SAMPLES_PER_KEY
    assert got == pytest.approx(want)
    assert data["fits"][KEY]["n"] == len(want)
    # no temporary files left behind; the lock file stays (removing it would race)
    assert sorted(os.listdir(tmp_path / "shared")) == ["history.json", "history.json.lock"]


def test_save_returns_whether_it_wrote_and_never_saves_twice(tmp_path, trimer):
    path = tmp_path / "h.json"
    model = CostModel(trimer, {"e": spec()}, history=str(path))
    assert model.save()  # nothing measured: nothing to write, not a failure
    assert not path.exists()
    model.observe("e", (1,), (1,), 0.5)
    assert model.save() and model.save()
    assert len(json.loads(path.read_text())["samples"][KEY]) == 1
    assert not CostModel(trimer, {"e": spec()}).save()  # no history asked for


# ------------------------------------------------------------------------------------------------
# (d) corrupt or unwritable history: a warning, never an error
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[1, 2, 3]",
        b'"a string"',
        b'{"format": "something-else", "samples": {}}',
        b'{"samples": ["not", "a", "mapping"]}',
        b'{"samples": {"nwchem|hf|energy": [[1.0]]}}',
        b"\xff\xfe\x00binary",
    ],
    ids=["not-json", "list", "string", "other-format", "samples-list", "bad-pair", "binary"],
)
def test_corrupt_history_is_a_warning_and_is_moved_aside(tmp_path, trimer, logged, content):
    path = tmp_path / "history.json"
    path.write_bytes(content)
    model = CostModel(trimer, {"e": spec()}, history=str(path))
    (warning,) = warnings_of(logged)
    assert str(path) in warning and "\n" not in warning
    assert model.fit_for(model.keys["e"]).n == 0  # the defaults
    model.observe("e", (1,), (1,), 0.25)
    assert model.save()
    assert (tmp_path / "history.json.corrupt").read_bytes() == content  # kept, not destroyed
    assert json.loads(path.read_text())["samples"] == {KEY: [[model.size("e", (1,), (1,)), 0.25]]}
    assert any(".corrupt" in w for w in warnings_of(logged))
    assert CostModel(trimer, {"e": spec()}, history=str(path)).fit_for(model.keys["e"]).n == 1


def test_unwritable_history_is_one_warning(tmp_path, trimer, logged):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = blocker / "sub" / "history.json"  # its directory cannot be made
    model = CostModel(trimer, {"e": spec()}, history=str(path))  # nothing there: no history, no warning
    assert not warnings_of(logged)
    model.observe("e", (1,), (1,), 0.25)
    assert model.save() is False
    (warning,) = warnings_of(logged)
    assert str(path) in warning and "not saved" in warning
    assert model.new_samples  # kept: a later save to a good path still has them
    assert model.save(str(tmp_path / "good.json"))


def test_a_directory_as_history_is_a_warning(tmp_path, trimer, logged):
    model = CostModel(trimer, {"e": spec()}, history=str(tmp_path))
    model.observe("e", (1,), (1,), 0.25)
    assert model.save() is False
    assert len(warnings_of(logged)) == 2 and all(str(tmp_path) in w for w in warnings_of(logged))


# ------------------------------------------------------------------------------------------------
# in-run refits with a full history
# ------------------------------------------------------------------------------------------------


def test_a_full_history_does_not_switch_off_in_run_refits(tmp_path, trimer):
    path = tmp_path / "history.json"
    probe = CostModel(trimer, {"e": spec()})
    sizes = [probe.size("e", r, r) for r in [(1,), (1, 2), (1, 2, 3)]]
    old_a, new_a, b = 1e-5, 1e-7, 3.0  # an old machine 100x slower than this one
    write_history(path, {KEY: [[x, old_a * x**b] for x in sizes] * (MAX_SAMPLES_PER_KEY // 3 + 1)})
    model = CostModel(trimer, {"e": spec()}, history=str(path))
    assert len(model.history[("nwchem", "hf", "energy")]) == MAX_SAMPLES_PER_KEY
    x1 = sizes[0]
    assert model.estimate("e", (1,), (1,)) == pytest.approx(old_a * x1**b)
    schedule = []
    for i in range(24):
        model.observe("e", (1,), (1,), new_a * x1**b)
        if model.refit():
            schedule.append(i + 1)
    assert schedule == [3, 6, 12, 24]  # this run's own samples decide when
    # and this run's measurements soon outweigh the history (HISTORY_WEIGHT against 24 samples):
    # in log space the estimate has moved most of the way from the old law to the new one
    moved = math.log(old_a * x1**b / model.estimate("e", (1,), (1,))) / math.log(old_a / new_a)
    assert 24 / (24 + HISTORY_WEIGHT) < moved <= 1.0


def test_history_samples_are_capped_and_keys_checked(tmp_path, trimer):
    path = tmp_path / "history.json"
    write_history(path, {KEY: [[24.0, 1.0]] * (MAX_SAMPLES_PER_KEY + 50), "not-a-key": [[1.0, 1.0]]})
    model = CostModel(trimer, {"e": spec()}, history=str(path))
    assert list(model.history) == [("nwchem", "hf", "energy")]
    assert len(model.history[("nwchem", "hf", "energy")]) == MAX_SAMPLES_PER_KEY
    assert model.fit_for(model.keys["e"])(24.0) == pytest.approx(1.0)


def test_initial_estimates_survive_reestimation(trimer):
    import types

    model = CostModel(trimer, {"hi": spec(method="mp2", basis="sto-3g"), "lo": spec(method="hf")})
    tasks = [
        types.SimpleNamespace(id=i, mc=mc, real=r, basis=r, cost=1.0)
        for i, (mc, r) in enumerate([("hi", (1,)), ("hi", (2,)), ("lo", (1, 2)), ("lo", (1, 2, 3))])
    ]
    first = model.estimate_tasks(tasks)
    for r in [(1,), (2,), (3,)]:
        model.observe("hi", r, r, 50.0)
    for r in [(1, 2), (2, 3), (1, 2, 3)]:
        model.observe("lo", r, r, 1e-4)
    assert model.refit()
    new = model.reestimate(tasks)
    assert new is not None and new != first
    assert model.initial_estimates == first
    assert {t.id: t.cost for t in tasks} == new
