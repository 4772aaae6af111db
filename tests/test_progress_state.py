"""The progress state every mode reports (ProgressTracker → on_progress → console, heartbeat): from
the start of the run, with fragments running, elapsed time from the start and the cost-weighted
ETA, in the bar and in the plain lines; what a stop says; the heartbeat's last word; the summary
line says what the efficiency is measured against."""

import io
import logging

import pytest

from conftest import quiet
from qcmb_hpc import ConsoleProgressReporter, ParallelManyBodyComputer, ProgressReporter
from qcmb_hpc.checkpoint import heartbeat_path, read_heartbeat
from qcmb_hpc.eta import CostLedger
from qcmb_hpc.progress import Heartbeat, MultiProgressReporter, ProgressTracker, format_duration
from qcmb_hpc.report import summary_line
from qcmb_hpc.testing.inputs import many_body_input
from test_progress import Pty


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeCoordinator:
    """What the tracker asks a coordinator: what each worker runs, and who is alive."""

    def __init__(self):
        self.heads = {}
        self.live = {0, 1}

    def running_fragments(self):
        return dict(self.heads)


class Events(ProgressReporter):
    def __init__(self):
        self.seen = []

    def on_progress(self, state):
        self.seen.append(("state", state))

    def on_fragment_completed(self, fragment_label, success):
        self.seen.append(("frag", fragment_label))

    def on_level_completed(self, level, duration):
        self.seen.append(("level", level))

    def states(self):
        return [s for kind, s in self.seen if kind == "state"]


def tracker(reporter, clock, heartbeat=None):
    # 4 tasks: two large (level 2, 10 units each), two small (level 1, 1 unit each)
    costs = [10.0, 10.0, 1.0, 1.0]
    t = ProgressTracker(reporter, [2, 2, 1, 1], clock=clock, ledger=CostLedger(costs, float), heartbeat=heartbeat, interval=1.0)
    coord = FakeCoordinator()
    t.attach(coord)
    return t, coord


def test_state_from_the_start_then_per_completion_and_on_ticks():
    clock, rec = Clock(), Events()
    t, coord = tracker(rec, clock)
    coord.heads = {0: 0, 1: 1}  # the workers run the two large fragments
    t.start([1], [3])  # one small fragment restored from a checkpoint
    first = rec.states()[-1]
    assert (first.done, first.restored, first.total, first.elapsed, first.eta) == (1, 1, 4, 0.0, None)
    assert first.cost_total == 22.0 and first.cost_restored == 1.0 and first.running == 2
    # time passes: ticks report it, at most every second
    n = len(rec.states())
    clock.now += 0.5
    t.tick()
    assert len(rec.states()) == n  # not due yet
    clock.now += 0.6
    t.tick()
    st = rec.states()[-1]
    assert len(rec.states()) == n + 1 and st.running == 2 and st.workers == 2 and st.elapsed == pytest.approx(1.1)
    assert st.eta is None  # nothing of this run has finished: no rate, no guess
    # the first large fragment ends after 10 s (1 s per unit); the other one has run as long
    clock.now = 110.0
    coord.heads = {1: 1, 0: 2}
    t.completed("big0", 2, True, 0, 10.0)
    kinds = [k for k, _ in rec.seen[-2:]]
    assert kinds == ["state", "frag"]  # the state that counts it comes first
    st = rec.states()[-1]
    assert st.done == 2 and st.cost_session == 10.0
    # ETA: left 11 units, less the credit for the other large one (10 s at 1 s/unit: all of its 10)
    # → 1 unit left at (10 + 10) units per 10 s → 0.5 s; but worker 0 has just started a small
    # fragment (1 unit = 1 s), and no run ends before its longest running fragment does → 1 s
    assert st.eta == pytest.approx(1.0)
    assert st.cost_fraction == pytest.approx(11.0 / 22.0)


def test_a_level_completes_after_its_last_fragment_and_its_state():
    clock, rec = Clock(), Events()
    t, _ = tracker(rec, clock)
    t.start()
    for tid, lvl in ((2, 1), (3, 1)):
        t.completed(f"f{tid}", lvl, True, tid, 1.0)
    assert [k for k, _ in rec.seen[-5:]] == ["state", "frag", "state", "frag", "level"]


def test_stopping_is_in_the_state():
    clock, rec = Clock(), Events()
    t, _ = tracker(rec, clock)
    t.start()
    t.stopping("SIGINT")
    assert rec.states()[-1].stopping == "SIGINT"


@pytest.mark.parametrize(
    "how,expect",
    [("all", "finished"), ("one failed", "failed"), ("stopped", "stopped"), ("broken", "broken")],
)
def test_heartbeat_says_how_the_run_ended(tmp_path, how, expect):
    clock = Clock()
    path = str(tmp_path / "j.jsonl.heartbeat")
    t, _ = tracker(None, clock, heartbeat=Heartbeat(path, interval=3600.0, info={"mode": "test"}))
    t.start()
    beat = read_heartbeat(path)
    assert beat["state"] == "running" and beat["total"] == 4 and beat["mode"] == "test" and beat["pid"] > 0
    if how == "stopped":
        t.stopping("SIGTERM")
        assert read_heartbeat(path)["state"] == "stopping"
    if how in ("all", "one failed"):
        for tid in range(4):
            t.completed(f"f{tid}", [2, 2, 1, 1][tid], not (how == "one failed" and tid == 0), tid)
        assert read_heartbeat(path)["state"] != expect  # interval: not rewritten at every completion
    t.close()
    beat = read_heartbeat(path)
    assert beat["state"] == expect
    t.close()  # once only
    assert read_heartbeat(path) == beat


def test_console_bar_from_the_start():
    """The bar is drawn as the run starts — before any fragment finishes — with what runs, the
    elapsed time and (until the first result) no ETA; then the cost-weighted ETA."""
    clock = Clock()
    pty_ = Pty(columns=100)
    stream = pty_.stream()
    rep = ConsoleProgressReporter(show_progress_bar=True, stream=stream)
    t, coord = tracker(rep, clock)
    coord.heads = {0: 0, 1: 1}
    t.start()
    clock.now += 2.0
    t.tick()
    before = rep._bar.format_meter(**rep._bar.format_dict)
    assert "0/4 frag" in before and "2 running" in before and "elapsed" in before and "ETA after the first result" in before
    clock.now = 110.0
    t.completed("big0", 2, True, 0, 10.0)
    after = rep._bar.format_meter(**rep._bar.format_dict)
    assert "1/4 frag" in after and "ETA " in after and "ETA after" not in after
    for tid, lvl in ((1, 2), (2, 1), (3, 1)):
        t.completed(f"f{tid}", lvl, True, tid, 1.0)
    t.finish()
    stream.close()
    pty_.close_slave()
    text = pty_.text()
    assert "0/4 frag" in text and "4/4 frag" in text


def test_plain_lines_carry_the_same():
    clock = Clock()
    stream = io.StringIO()
    rep = ConsoleProgressReporter(show_progress_bar=True, stream=stream, interval=0.0)
    t, coord = tracker(rep, clock)
    coord.heads = {0: 0, 1: 1}
    t.start()
    clock.now += 1.0
    t.tick()  # nothing finished yet: a line all the same (a Slurm log is not silent for minutes)
    clock.now = 110.0
    t.completed("big0", 2, True, 0, 10.0)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("qcmb_hpc: 4 of 4 fragments to run;") and "elapsed" in lines[0]
    assert lines[1].startswith("qcmb_hpc: 0/4 fragments (0%), 0% of the estimated cost, 2 running,")
    assert "ETA after the first result" in lines[1]
    assert lines[2].startswith("qcmb_hpc: 1/4 fragments (25%), 45% of the estimated cost, 2 running,")
    assert "ETA " in lines[2] and "elapsed" in lines[2]


def test_plain_lines_of_a_real_run_have_the_eta(trimer):
    stream = io.StringIO()
    rep = ConsoleProgressReporter(show_progress_bar=False, stream=stream)
    ParallelManyBodyComputer(many_body_input(trimer, bsse_type=["nocp"]), parallel_config=quiet(mode="multiprocessing"),
                             progress_reporter=rep).compute()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("qcmb_hpc: ") and "fragments to run" in lines[0]
    progress = [ln for ln in lines if "fragments (" in ln]
    assert len(progress) >= 2 and all("elapsed" in ln and "running" in ln for ln in progress)
    assert all("ETA " in ln for ln in progress[:-1]) and "ETA" not in progress[-1]  # none once all is done
    assert progress[-1].startswith("qcmb_hpc: 7/7 fragments (100%), 100% of the estimated cost, 0 running")
    assert any(" 1 running" in ln or " 2 running" in ln for ln in progress[:-1])


def test_multi_reporter_forwards_progress_and_skips_who_lacks_it():
    rec = Events()

    class Old:
        def on_fragment_completed(self, label, success):
            self.got = label

    old = Old()
    m = MultiProgressReporter([rec, old])
    clock = Clock()
    t, _ = tracker(m, clock)
    t.start()
    t.completed("x", 1, True, 2, 1.0)
    assert rec.states() and old.got == "x"


def test_stop_message_says_what_a_second_signal_does(logged):
    from qcmb_hpc.coordinator import Coordinator
    from qcmb_hpc.simulate import SimClock, SimTask, SimTransport

    clock = SimClock()
    tr = SimTransport([1.0] * 4, 2, clock)
    coord = Coordinator([SimTask(i, 1.0) for i in range(4)], tr, None, clock=clock, grace_period=5.0)
    coord.request_stop("SIGINT")
    coord.run()
    text = [r.getMessage() for r in logged if r.levelno == logging.WARNING and "stop requested" in r.getMessage()]
    assert text and "a second Ctrl-C stops them at once" in text[0] and "5 s to finish" in text[0]


def test_summary_line_names_what_the_efficiency_is_measured_against():
    rep = {"fragments": 47, "computed": 47, "workers": 8, "mode": "mpi", "strategy": "dynamic", "wall_seconds": 900.0,
           "makespan_seconds": 850.0, "efficiency": 0.94, "lower_bound_seconds": 799.0}
    line = summary_line(rep)
    assert "wall 900.00 s, of which 850.00 s running fragments" in line
    assert "efficiency 0.94 (lower bound 799.00 s / the 850.00 s running fragments)" in line


def test_format_duration():
    assert [format_duration(s) for s in (0, 42, 63, 3600 + 5 * 60, 3 * 86400 + 4 * 3600)] == ["0s", "42s", "1m03s", "1h05m", "3d04h"]


def test_cli_writes_a_heartbeat_beside_the_journal(tmp_path, trimer):
    from conftest import run_cli

    inp = many_body_input(trimer, bsse_type=["nocp"])
    (tmp_path / "t.json").write_text(inp.serialize("json"))
    proc = run_cli([str(tmp_path / "t.json"), "--import", "qcmb_hpc.testing.engines"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    beat = read_heartbeat(heartbeat_path(str(tmp_path / "t.checkpoint.jsonl")))
    assert beat["state"] == "finished" and beat["done"] == beat["total"] > 0
    # the CLI's own progress (stderr is a pipe here): the plain lines, from the start
    assert "fragments to run" in proc.stderr and "elapsed" in proc.stderr
