"""``python -m qcmb_hpc report``: drawn for a real command-line run (with injected failures, so
there are retries to mark), checked as a person would look at it — valid PNGs of a sensible size,
an HTML page with the pictures embedded and the summary numbers — and from the journal alone for
a killed run; without matplotlib, one line saying what to install."""

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import cli_env, load_report, run_cli
from qcmb_hpc.report import ATTEMPT_COLUMNS
from qcmb_hpc.testing.inputs import many_body_input, water_cluster
from qcmb_hpc.visualize import FIGURES
from test_status import finished_run

ENGINES = ["--import", "qcmb_hpc.testing.engines"]
PNG = b"\x89PNG\r\n\x1a\n"


def png_size(data):
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == PNG, data[:16]
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def run_with_retries(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    faults = d / "faults"
    faults.mkdir()
    kw = {"fault_dir": str(faults), "p": 0.35, "kinds": ["raise", "fail"], "faulty_attempts": 1, "seed": 3}
    return finished_run(d, many_body_input(water_cluster(4), program="qcmb_fault", keywords=kw, bsse_type=["cp", "nocp"]))


def test_report_data_per_attempt(run_with_retries):
    d, plan = run_with_retries
    rep = load_report(d / "w4.result.json")
    cols = rep["attempts"]
    assert set(cols) == set(ATTEMPT_COLUMNS)
    n = len(cols["label"])
    assert all(len(v) == n for v in cols.values())
    ok = [i for i in range(n) if cols["status"][i] == "success"]
    failed = [i for i in range(n) if cols["status"][i] == "failed"]
    assert sorted(cols["label"][i] for i in ok) == sorted(t.label for t in plan.tasks)  # each fragment once
    assert len(failed) == rep["retried_attempts"] > 0
    faulted = sorted(f for f in os.listdir(d / "faults") if open(d / "faults" / f).read() != "ok")
    assert len(failed) == len(faulted)  # every injected fault, and nothing else, is a failed attempt
    for i in failed:
        later = [j for j in ok if cols["label"][j] == cols["label"][i]]
        assert later and cols["attempt"][later[0]] == cols["attempt"][i] + 1  # and then its retry succeeded
        assert cols["error_type"][i] == "random_error"
    assert all(isinstance(cols["start"][i], float) and cols["start"][i] >= rep["started"] - 1 for i in range(n))
    assert {cols["host"][i] for i in range(n)} == {os.uname().nodename}
    assert all(cols["estimate_initial"][i] > 0 and cols["estimate_final"][i] > 0 for i in range(n))
    assert rep["versions"]["programs"] == {"qcmb_fault": "1.0"} and rep["versions"]["qcmb_hpc"]
    assert sum(v["fragments"] for v in rep["levels"].values()) == len(plan.tasks)
    # the journal says the same about each success (what a killed run's report is drawn from)
    recs = [json.loads(ln) for ln in (d / "w4.checkpoint.jsonl").read_text().splitlines()[1:]]
    by_label = {r["label"]: r for r in recs}
    for i in ok:
        r = by_label[cols["label"][i]]
        assert (r["worker"], r["attempt"], r["started"], r["seconds"]) == (
            cols["worker"][i], cols["attempt"][i], cols["start"][i], cols["seconds"][i])


def test_html_report_of_a_real_run(run_with_retries):
    d, plan = run_with_retries
    proc = subprocess.run([sys.executable, "-m", "qcmb_hpc", "report", "w4.result.json"], cwd=d, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "report written to" in proc.stdout
    page = (d / "w4.report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("<figure") == len(FIGURES)
    # the pictures are embedded (self-contained) and are the same as the PNG files beside it
    embedded = re.findall(r'<img alt="(\w+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [name for name, _ in embedded] == list(FIGURES)
    for name, b64 in embedded:
        data = (d / f"w4.report-{name}.png").read_bytes()
        assert base64.b64decode(b64) == data
        w, h = png_size(data)
        assert 500 <= w <= 1400 and 250 <= h <= 1100, (name, w, h)
        assert len(data) > 8000, name  # something is drawn, not an empty canvas
    for needle in ("efficiency against the lower bound", "steals", "retried attempts", "worker restarts",
                   "layout", "versions", "qcmb_fault 1.0", "estimate rank correlation", "hosts"):
        assert needle in page, needle
    rep = load_report(d / "w4.result.json")
    assert f"<th>retried attempts</th><td>{rep['retried_attempts']}</td>" in page
    assert f"{rep['efficiency']:.3f} = lower bound" in page


def test_pictures_show_what_they_should(run_with_retries, tmp_path):
    """The Gantt chart has a row per worker, a colour per n-body level and the retries marked; the
    cost picture carries the rank correlation; read back from matplotlib's own objects."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from qcmb_hpc import visualize as V
    from qcmb_hpc.status import find_run_files

    d, _ = run_with_retries
    data = V.load_run(find_run_files(str(d / "w4.result.json")))
    assert data.source == "report" and len(data.workers) == 2
    fig = V._gantt(data, "level")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:3] == ["1-body", "2-body", "3-body"] and "failed attempt" in labels and "succeeded on a retry" in labels
    assert len(ax.get_yticklabels()) == 2
    fig, rho = V._estimates(data, "level")
    assert rho is not None and f"ρ = {rho:.2f}" in fig.axes[0].get_title()
    assert fig.axes[0].get_xscale() == fig.axes[0].get_yscale() == "log"
    times, busy = V.busy_curve(data.attempts)
    assert max(busy) == 2 and busy[-1] == 0


def test_report_of_a_killed_run_from_its_journal(tmp_path):
    inp = many_body_input(water_cluster(4), program="qcmb_sleep", keywords={"sleep": {"base": 0.3, "exponent": 0}},
                          bsse_type=["nocp"])
    (tmp_path / "k.json").write_text(inp.serialize("json"))
    proc = subprocess.Popen([sys.executable, "-m", "qcmb_hpc", "k.json", *ENGINES, "--no-progress", "--workers", "2"],
                            cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    journal = tmp_path / "k.checkpoint.jsonl"
    t0 = time.monotonic()
    try:
        while not journal.exists() or len(journal.read_text().split("\n")) < 6:  # the header and 4 records
            assert proc.poll() is None, "the run ended early"
            assert time.monotonic() - t0 < 90, "no progress in the journal"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (tmp_path / "k.report.json").exists()
    out = run_cli(["report", "k.json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "k.report.html").read_text()
    assert "Drawn from the journal" in page and "killed" in page
    assert page.count("data:image/png;base64,") == len(FIGURES)
    for name in FIGURES:
        png_size((tmp_path / f"k.report-{name}.png").read_bytes())


def test_without_matplotlib_says_what_to_install(run_with_retries, monkeypatch, capsys):
    from qcmb_hpc import visualize

    d, _ = run_with_retries
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    assert visualize.main([str(d / "w4.result.json"), "-o", str(d / "none.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qcmb_hpc: error: ") and "pip install" in err[0] and "matplotlib" in err[0]
    assert not (d / "none.html").exists()


def test_bad_path_is_one_line(tmp_path):
    out = run_cli(["report", str(tmp_path / "missing.result.json")], cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("qcmb_hpc: error: ") and len(out.stderr.strip().splitlines()) == 1
