"""Whole ``mpiexec`` runs in subprocesses (plain pytest, not under MPI): a failing rank ends the job
within seconds with a non-zero code, bad input gives exit code 2 and one and the same line, a
launcher of another MPI is refused loudly, and the CLI picks MPI by itself under ``mpiexec``.

Every run sits under a hard subprocess timeout. The launcher is the one next to this Python (the
MPICH wheel's); ``/usr/bin/mpiexec`` is Debian's Open MPI (installed with nwchem) and is used only
to check that a mismatched launcher is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO, assert_same_result, load_report, reference
from qcmb_hpc.engine import MPI_ENV_PREFIXES
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

pytestmark = pytest.mark.mpi_skip  # launches its own mpiexec: never from inside an MPI rank

PYTHON = sys.executable
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
OPEN_MPI_MPIEXEC = "/usr/bin/mpiexec"

RUN_TIMEOUT = 180  # hard limit of any one mpiexec run (a hang is a failure, not a stuck suite)
ENDS_WITHIN = 15.0  # a failing rank must end the whole job this soon after it failed (typically < 2 s)


pytestmark = pytest.mark.usefixtures("remove_what_killed_ranks_leave")


def launcher() -> str:
    if not os.access(MPIEXEC, os.X_OK):
        pytest.fail(f"no mpiexec next to {PYTHON} (pip install mpich): the MPI tests need it")
    return MPIEXEC


def clean_env(extra_path: str = "") -> dict:
    """This environment without any MPI launcher's variables, with the repository (and
    ``extra_path``) importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(MPI_ENV_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, REPO, env.get("PYTHONPATH", "")) if p)
    env.pop("QCMB_PARALLEL_MODE", None)
    return env


def run(cmd, cwd, extra_path="", timeout=RUN_TIMEOUT):
    t0 = time.time()
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=clean_env(extra_path), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} did not end within {timeout} s (hang); stderr:\n{exc.stderr}")
    return proc, t0, time.time()


def write_input(path, **kw):
    inp = many_body_input(water_cluster(3), **kw)
    with open(path, "w") as fh:
        fh.write(inp.model_dump_json())
    return inp


# ------------------------------------------------------------------------------------------------
# a failing rank ends the job
# ------------------------------------------------------------------------------------------------

SCRIPT = """
import sys, time
import qcmb_hpc.testing.engines
from qcmb_hpc import ParallelManyBodyComputer
from qcmb_hpc.testing.inputs import many_body_input, water_cluster
{setup}
inp = many_body_input(water_cluster(3), {input_kw})
ParallelManyBodyComputer(inp, parallel_config={config}, {extra}).compute()
print("COMPUTE RETURNED", flush=True)
"""

BOOM = """
# imported by the ranks in the run (config.imports): raises on rank 1 only, inside the run
import time
from mpi4py import MPI
if MPI.COMM_WORLD.Get_rank() == 1:
    with open({stamp!r}, "w") as fh:
        fh.write(repr(time.time()))
    raise RuntimeError("injected failure on rank 1 (boom_module)")
"""


def assert_ended_soon(proc, t_fail, t_end, what):
    assert proc.returncode != 0, f"{what}: the job succeeded?\n{proc.stdout}\n{proc.stderr}"
    assert "COMPUTE RETURNED" not in proc.stdout
    assert t_end - t_fail < ENDS_WITHIN, f"{what}: the job took {t_end - t_fail:.1f} s to end after the failure"


def test_worker_rank_raising_aborts_the_job(tmp_path):
    stamp = tmp_path / "failed_at"
    (tmp_path / "boom_module.py").write_text(BOOM.format(stamp=str(stamp)))
    script = SCRIPT.format(
        setup="",
        input_kw="bsse_type=['cp']",
        config=repr({"mode": "mpi", "imports": ["qcmb_hpc.testing.engines", "boom_module"], "progress_reporting": False}),
        extra="",
    )
    proc, _, t_end = run([launcher(), "-n", "3", PYTHON, "-c", script], tmp_path, extra_path=str(tmp_path))
    assert stamp.exists(), f"rank 1 never got to the failure:\n{proc.stderr}"
    assert_ended_soon(proc, float(stamp.read_text()), t_end, "worker rank raising")
    assert "rank 1" in proc.stderr and "injected failure on rank 1 (boom_module)" in proc.stderr, proc.stderr


def test_worker_rank_killed_by_its_fragment_ends_the_job(tmp_path):
    """Without isolation the fragment runs in the rank itself: a fragment that kills its process
    kills the rank, and the launcher ends the others."""
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    script = SCRIPT.format(
        setup="",
        input_kw=f"program='qcmb_fault', keywords={{'fault_dir': {str(fault_dir)!r}, 'p': 1.0, 'kinds': ['kill']}}, bsse_type=['cp']",
        config=repr({"mode": "mpi", "imports": ["qcmb_hpc.testing.engines"], "progress_reporting": False, "isolate_fragments": False}),
        extra="",
    )
    proc, _, t_end = run([launcher(), "-n", "3", PYTHON, "-c", script], tmp_path)
    attempts = list(fault_dir.iterdir())
    assert attempts, f"no fragment ran:\n{proc.stderr}"
    t_fail = min(p.stat().st_mtime for p in attempts)
    assert_ended_soon(proc, t_fail, t_end, "worker rank killed")
    assert "signal 9" in proc.stdout + proc.stderr, proc.stdout + proc.stderr  # the launcher says why


def test_coordinator_raising_aborts_the_job(tmp_path):
    """An exception on rank 0 while the workers work (here: injected where the coordinator counts
    a result; a user's reporter that raises is only logged, it cannot do this)."""
    stamp = tmp_path / "failed_at"
    setup = textwrap.dedent(
        f"""
        from mpi4py import MPI
        import qcmb_hpc.coordinator
        def exploding(self, out):
            open({str(stamp)!r}, "w").write(repr(time.time()))
            raise RuntimeError("injected failure in the coordinator")
        qcmb_hpc.coordinator.Coordinator._count_success = exploding
        """
    )
    script = SCRIPT.format(
        setup=setup,
        input_kw="bsse_type=['cp']",
        config=repr({"mode": "mpi", "imports": ["qcmb_hpc.testing.engines"], "progress_reporting": False}),
        extra="",
    )
    proc, _, t_end = run([launcher(), "-n", "3", PYTHON, "-c", script], tmp_path)
    assert stamp.exists(), f"the reporter was never called:\n{proc.stderr}"
    assert_ended_soon(proc, float(stamp.read_text()), t_end, "coordinator raising")
    assert "rank 0" in proc.stderr and "injected failure in the coordinator" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------------
# the command line under mpiexec
# ------------------------------------------------------------------------------------------------


def error_lines(stderr):
    return [ln for ln in stderr.splitlines() if ln.startswith("qcmb_hpc: error:")]


def error_messages(stderr):
    """The error messages in ``stderr``, split on their prefix rather than on newlines: when several
    ranks print at once, one rank's message can land on another's line."""
    prefix = "qcmb_hpc: error: "
    assert stderr.lstrip().startswith(prefix), stderr
    return [m.strip() for m in stderr.split(prefix) if m.strip()]


@pytest.mark.parametrize("case", ["not-an-input", "unknown-program"])
def test_bad_input_exit_code_2_and_one_line(tmp_path, case):
    """Rejected before MPI starts (not a ManyBodyInput) or by rank 0's planning (unknown program,
    told to every rank): exit code 2, one line, the same on every rank, no traceback."""
    path = tmp_path / "bad.json"
    if case == "not-an-input":
        path.write_text(json.dumps({"molecule": 3}))
        expect = "not a valid ManyBodyInput"
    else:
        write_input(path, program="no_such_program", bsse_type=["cp"])
        expect = "no_such_program"
    proc, _, _ = run([launcher(), "-n", "3", PYTHON, "-m", "qcmb_hpc", str(path)], tmp_path)
    assert proc.returncode == 2, f"exit code {proc.returncode}:\n{proc.stderr}"
    messages = error_messages(proc.stderr)  # nothing else on stderr: no traceback, no MPI noise
    assert len(messages) == 1, proc.stderr
    assert expect in messages[0] and "\n" not in messages[0], proc.stderr
    assert not list(tmp_path.glob("*.result.json"))


def test_bad_input_is_printed_by_rank_0_only(tmp_path):
    """An input rejected before MPI starts is printed by rank 0 only (the rank comes from the
    launcher's variables until MPI is initialised)."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"molecule": 3}))
    proc, _, _ = run([launcher(), "-n", "3", PYTHON, "-m", "qcmb_hpc", str(path)], tmp_path)
    assert proc.returncode == 2
    assert len(error_messages(proc.stderr)) == 1, proc.stderr


def test_cli_under_mpiexec_picks_mpi_and_rank_0_writes_the_one_result(tmp_path):
    """No --mode: MPI under mpiexec. Only rank 0 writes and prints; a spare rank (--workers 1
    at -n 3) leaves cleanly; the file holds QCManyBody's result."""
    from qcmanybody.models.v2 import ManyBodyResult

    inp = write_input(tmp_path / "water3.json", bsse_type=["cp", "nocp"], driver="gradient")
    proc, _, _ = run(
        [launcher(), "-n", "3", PYTHON, "-m", "qcmb_hpc", "water3.json", "--import", "qcmb_hpc.testing.engines", "--workers", "1"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "water3.checkpoint.jsonl", "water3.checkpoint.jsonl.heartbeat", "water3.json", "water3.report.json", "water3.result.json"]
    assert proc.stdout.count("qcmb_hpc: result written to") == 1, proc.stdout
    assert proc.stdout.count("Counterpoise Corrected (CP)") == 1, proc.stdout  # the MBE table, once
    with open(tmp_path / "water3.result.json") as fh:
        res = ManyBodyResult(**json.load(fh))
    rep = load_report(tmp_path / "water3.result.json")
    assert rep["mode"] == "mpi" and rep["workers"] == 1
    assert_same_result(reference(inp), res, exact=True, check_shape=False)


# ------------------------------------------------------------------------------------------------
# a launcher of another MPI
# ------------------------------------------------------------------------------------------------


def test_open_mpi_launcher_is_refused_loudly(tmp_path):
    """Debian's Open MPI mpiexec starting the MPICH-linked mpi4py: refused before MPI_Init with a
    message that says what to use instead; non-zero exit, no result."""
    if not os.access(OPEN_MPI_MPIEXEC, os.X_OK):
        pytest.fail(f"{OPEN_MPI_MPIEXEC} (Open MPI, Debian package openmpi-bin, installed with nwchem) is missing")
    write_input(tmp_path / "water3.json", bsse_type=["cp"])
    cmd = [OPEN_MPI_MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-n", "2", PYTHON, "-m", "qcmb_hpc", "water3.json",
           "--import", "qcmb_hpc.testing.engines"]
    proc, _, _ = run(cmd, tmp_path, timeout=120)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = error_lines(proc.stderr)
    assert lines and all("does not match the MPI mpi4py was built with" in ln for ln in lines), proc.stderr
    assert "Open MPI" in lines[0] and MPIEXEC in lines[0], lines[0]
    assert not list(tmp_path.glob("*.result.json"))


WHEEL_MPICH = (
    "MPICH Version:      5.0.2\nMPICH Release date: unknown\nMPICH Device:       ch4:ucx ofi\n"
    "MPICH configure:    --with-device=ch4:ucx,ofi --with-pm=hydra:gforker\n"
)
OPEN_MPI_ENV = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0", "PMIX_RANK": "0"}
HYDRA_ENV = {"PMI_FD": "9", "PMI_RANK": "0", "PMI_SIZE": "2"}
SRUN_PMIX_ENV = {"PMIX_RANK": "0", "PMIX_NAMESPACE": "slurm.pmix.1.0", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4"}


@pytest.mark.parametrize(
    "env,library,refused",
    [
        (OPEN_MPI_ENV, WHEEL_MPICH, True),  # Debian's mpiexec, the wheel's MPICH
        (SRUN_PMIX_ENV, WHEEL_MPICH, True),  # srun --mpi=pmix, the wheel's MPICH
        (HYDRA_ENV, WHEEL_MPICH, False),  # the wheel's own mpiexec
        ({}, WHEEL_MPICH, False),  # no launcher
        ({**HYDRA_ENV, "PMIX_RANK": "0"}, WHEEL_MPICH, False),  # a PMI launcher that also sets PMIx
        (OPEN_MPI_ENV, "Open MPI v4.1.4, package: Debian OpenMPI", False),
        (SRUN_PMIX_ENV, "Intel(R) MPI Library 2021.6 for Linux* OS", False),  # may speak PMIx: MPI_Init decides
        (OPEN_MPI_ENV, WHEEL_MPICH.replace("--with-pm=hydra:gforker", "--with-pmix=/usr"), False),
    ],
)
def test_check_library(env, library, refused):
    from qcmb_hpc.errors import ParallelExecutionError
    from qcmb_hpc.transport.mpi import check_library

    if refused:
        with pytest.raises(ParallelExecutionError) as ei:
            check_library(library, env)
        msg = str(ei.value)
        assert "does not match the MPI mpi4py was built with" in msg and "MPICH Version: 5.0.2" in msg, msg
        assert "\n" not in msg
        if "OMPI_COMM_WORLD_SIZE" in env:
            assert "with 2 ranks" in msg
    else:
        check_library(library, env)
