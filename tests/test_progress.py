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


# ------------------------------------------------------------------------------------------------
# the bar on a real terminal (a pseudo-terminal), plain lines elsewhere
# ------------------------------------------------------------------------------------------------


class Pty:
    """A pseudo-terminal: ``slave`` is the terminal end (give it to the reporter or a child),
    everything written there is collected from the master end by a thread (so a full pty buffer
    never blocks the writer). ``columns=0`` leaves the size unset, as a fresh pty has it."""

    def __init__(self, columns=0, rows=24):
        import fcntl
        import os
        import struct
        import termios
        import threading

        try:
            self.master, self.slave = os.openpty()
        except OSError as exc:  # a container without /dev/pts
            pytest.skip(f"no pseudo-terminal available: {exc}")
        if columns:
            fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.chunks = []
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self):
        import os

        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every slave end is closed
                break
            if not data:
                break
            self.chunks.append(data)

    def stream(self):
        import os

        return os.fdopen(self.slave, "w", buffering=1, closefd=False)

    def close_slave(self):
        import os

        os.close(self.slave)

    def text(self, timeout=30):
        import os

        self.thread.join(timeout)
        os.close(self.master)
        return b"".join(self.chunks).decode("utf-8", "replace")


def assert_bar(text, total):
    import re

    assert "\r" in text, text  # redrawn in place
    assert "|" in text and "frag" in text, text
    counts = [int(m) for m in re.findall(rf"(\d+)/{total}\b", text)]
    assert counts and max(counts) == total and all(0 <= c <= total for c in counts), text
    assert "100%|" in text and f"{total}/{total}" in text, text
    assert not re.search(r"\d+frag \[", text), text  # never counted past the total (bar lost)


@pytest.mark.parametrize("columns", [0, 100], ids=["size-unset", "100-columns"])
@pytest.mark.parametrize("mode", ["sequential", "multiprocessing"])
def test_console_bar_on_a_terminal(trimer, columns, mode):
    pty_ = Pty(columns=columns)
    stream = pty_.stream()
    rep = ConsoleProgressReporter(show_progress_bar=True, stream=stream)
    assert rep.use_bar is True
    inp = many_body_input(trimer, bsse_type=["cp", "nocp"])
    ParallelManyBodyComputer(inp, parallel_config=quiet(mode=mode), progress_reporter=rep).compute()
    stream.close()
    pty_.close_slave()
    text = pty_.text()
    total = len(make_plan(inp).tasks)
    assert_bar(text, total)
    assert "level complete" in text and f"all {total} fragments done" in text  # lines above the bar
    assert "fragments (100%)" not in text  # not the plain lines


def test_console_bar_starts_at_restored_fragments():
    pty_ = Pty(columns=80)
    stream = pty_.stream()
    rep = ConsoleProgressReporter(show_progress_bar=True, stream=stream)
    rep.on_level_started(1, 3)
    rep.on_level_started(2, 3)
    rep.on_fragments_restored(2)
    for k in range(4):
        rep.on_fragment_completed(f"f{k}", True)
    rep.on_calculation_completed(0.1)
    stream.close()
    pty_.close_slave()
    text = pty_.text()
    assert "2/6" in text and "2 fragments restored" in text
    assert_bar(text, 6)


def test_show_progress_bar_false_gives_lines_on_a_terminal():
    pty_ = Pty(columns=80)
    stream = pty_.stream()
    rep = ConsoleProgressReporter(show_progress_bar=False, stream=stream)
    assert rep.use_bar is False
    rep.on_level_started(1, 4)
    for k in range(4):
        rep.on_fragment_completed(f"f{k}", True)
    rep.on_calculation_completed(0.1)
    stream.close()
    pty_.close_slave()
    text = pty_.text()
    assert "4/4 fragments (100%)" in text and "|" not in text


def test_console_plain_lines_are_periodic():
    """Not a terminal: a line per 10% (or per ``interval`` seconds), not one per fragment."""
    stream = io.StringIO()
    rep = ConsoleProgressReporter(show_progress_bar=True, stream=stream, interval=3600)
    assert rep.use_bar is False
    rep.on_level_started(1, 100)
    for k in range(100):
        rep.on_fragment_completed(f"f{k}", True)
    rep.on_calculation_completed(1.0)
    lines = [ln for ln in stream.getvalue().splitlines() if "fragments (" in ln]
    assert 9 <= len(lines) <= 11, lines
    assert lines[-1].startswith("qcmb_hpc: 100/100 fragments (100%)")
    assert "\r" not in stream.getvalue()


@pytest.mark.parametrize("stderr_is", ["pty", "pipe"])
def test_cli_progress_on_a_terminal_and_on_a_pipe(tmp_path, trimer, stderr_is):
    """The command line's own reporter (progress on by default): a bar when stderr is a terminal,
    plain lines when it is a pipe (a Slurm output file)."""
    import subprocess
    import sys

    from conftest import cli_env

    inp = many_body_input(trimer, bsse_type=["cp", "nocp"])
    path = tmp_path / "p.json"
    path.write_text(inp.serialize("json"))
    env = cli_env()
    cmd = [sys.executable, "-m", "qcmb_hpc", str(path), "--import", "qcmb_hpc.testing.engines", "--mode", "sequential", "--no-checkpoint"]
    total = len(make_plan(inp).tasks)
    if stderr_is == "pty":
        pty_ = Pty(columns=0)
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=pty_.slave, timeout=120)
        pty_.close_slave()
        text = pty_.text()
        assert proc.returncode == 0, text
        assert_bar(text, total)
    else:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        text = proc.stderr
        assert f"{total}/{total} fragments (100%)" in text and "\r" not in text and "|" not in text, text
