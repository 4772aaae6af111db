"""Progress events: every level starts, every fragment completes once, levels complete when their
last fragment does, one calculation-completed event; console and file reporters."""

import io
import json
from collections import Counter

import pytest

from conftest import quiet, reference
from qcmb_hpc import ConsoleProgressReporter, FileProgressReporter, ParallelManyBodyComputer, ProgressReporter
from qcmb_hpc.plan import make_plan
from qcmb_hpc.testing.inputs import many_body_input


class Recorder(ProgressReporter):
    def __init__(self):
        self.events = []

    def on_level_started(self, level, fragment_count):
        self.events.append(("start", level, fragment_count))

    def on_fragment_completed(self, fragment_label, success):
        self.events.append(("frag", fragment_label, success))

    def on_level_completed(self, level, duration):
        self.events.append(("level", level, duration))

    def on_calculation_completed(self, total_duration):
        self.events.append(("done", total_duration))


@pytest.mark.parametrize("mode", ["sequential", "multiprocessing"])
def test_events(tetramer, mode):
    inp = many_body_input(tetramer, bsse_type=["cp", "vmfc"])
    plan = make_plan(inp)
    expected = Counter(t.nbody for t in plan.tasks)
    rec = Recorder()
    ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode), progress_reporter=rec).compute()
    starts = {e[1]: e[2] for e in rec.events if e[0] == "start"}
    assert starts == dict(expected)
    frags = [e[1] for e in rec.events if e[0] == "frag"]
    assert sorted(frags) == sorted(t.label for t in plan.tasks)
    assert all(e[2] for e in rec.events if e[0] == "frag")
    levels = [e for e in rec.events if e[0] == "level"]
    assert sorted(e[1] for e in levels) == sorted(expected)
    # a level completes right after its last fragment
    for lvl in expected:
        pos = rec.events.index(next(e for e in levels if e[1] == lvl))
        last_frag = max(i for i, e in enumerate(rec.events) if e[0] == "frag" and len(json.loads(e[1])[1]) == lvl)
        assert pos == last_frag + 1
    assert [e[0] for e in rec.events].count("done") == 1 and rec.events[-1][0] == "done"
    # all levels start before any fragment completes (no barriers)
    assert max(i for i, e in enumerate(rec.events) if e[0] == "start") < min(i for i, e in enumerate(rec.events) if e[0] == "frag")


def test_console_plain_lines_when_not_a_terminal(trimer):
    stream = io.StringIO()
    rep = ConsoleProgressReporter(show_progress_bar=True, stream=stream)
    assert rep.use_bar is False
    ParallelManyBodyComputer(many_body_input(trimer), parallel_config=quiet(mode="sequential"), progress_reporter=rep).compute()
    text = stream.getvalue()
    assert "fragments (100%)" in text and "level complete" in text and "all" in text


def test_file_reporter(tmp_path, trimer):
    path = tmp_path / "progress.jsonl"
    rep = FileProgressReporter(str(path))
    inp = many_body_input(trimer, bsse_type=["nocp"])
    ParallelManyBodyComputer(inp, parallel_config=quiet(mode="multiprocessing"), progress_reporter=rep).compute()
    rep.close()
    events = [json.loads(ln) for ln in path.read_text().splitlines()]
    kinds = Counter(e["event"] for e in events)
    n = reference(inp).properties.calcinfo_nmbe
    assert kinds["fragment_completed"] == n
    assert kinds["calculation_completed"] == 1
    assert kinds["level_started"] == kinds["level_completed"] == 3
