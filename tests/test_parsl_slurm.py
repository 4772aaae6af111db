"""The ``parsl`` plugin on the real single-node Slurm the Slurm tests start (the ``slurm`` fixture of
conftest.py): ``python -m qcmb_hpc input.json --parsl-config slurm_config.py`` on the "login node"
(this process's host) runs the coordinator; Parsl's SlurmProvider submits a block with ``sbatch``,
its workers start under ``srun`` in the job, connect back and compute; the result is
``qcmanybody.v2.ManyBodyComputer``'s; the workers fitted their threads and memory to the job's
allocation (not to the login node); the block is cancelled at the end and nothing is left.

Run: ``python -m pytest -m slurm tests/test_parsl_slurm.py`` (``make test-slurm`` runs it).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import pytest

from conftest import HERE, PARTITION, REPO, assert_same_result, load_report, reference
from qcmb_hpc.resources import MEMORY_SAFETY, WORKER_OVERHEAD
from qcmb_hpc.testing.inputs import many_body_input, water_cluster

import probe_engine  # noqa: F401  (qcmb_probe, for the reference computed here)

import parsl  # noqa: F401,E402  (the test extra brings it: without it this fails, it is not skipped)
pytestmark = pytest.mark.slurm

GiB, MiB = 1024**3, 1024**2

SLURM_CONFIG = '''\
"""A Parsl configuration for the test Slurm: one block of one node (2 CPUs, 2 GB) with 2 workers."""
import os

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

config = Config(
    executors=[
        HighThroughputExecutor(
            label="slurm",
            address="127.0.0.1",  # where the job's workers reach this host (one machine here)
            max_workers_per_node=2,
            heartbeat_period=2,
            heartbeat_threshold=10,
            provider=SlurmProvider(
                partition=os.environ["TEST_PARTITION"],
                nodes_per_block=1, init_blocks=1, min_blocks=1, max_blocks=1,
                cores_per_node=2, mem_per_node=2, exclusive=False, walltime="00:10:00",
                launcher=SrunLauncher(), cmd_timeout=60,
            ),
        )
    ],
    run_dir=os.environ["TEST_RUN_DIR"],
    strategy="none",
    usage_tracking=0,
)
'''


def usable_each(memory, workers):
    return int(memory * MEMORY_SAFETY) // workers - WORKER_OVERHEAD


def test_parsl_slurm_provider_runs_the_workers_in_a_job(slurm, tmp_path):
    inp = many_body_input(water_cluster(4), program="qcmb_probe", protocols={"cluster_results": "all"},
                          bsse_type=["cp", "nocp"], driver="gradient")
    (tmp_path / "water4.json").write_text(inp.model_dump_json())
    (tmp_path / "slurm_config.py").write_text(SLURM_CONFIG)
    # the job's $TMPDIR (the workers' scratch goes there): a short path, as the block's manager
    # makes a Unix socket under it
    node_tmp = tempfile.mkdtemp(prefix="qcmb-ptmp-")
    try:
        _run(slurm, tmp_path, inp, node_tmp)
    finally:
        shutil.rmtree(node_tmp, ignore_errors=True)


def _run(slurm, tmp_path, inp, node_tmp):
    import subprocess

    env = slurm.env()
    for k in [k for k in env if k.startswith("QCMB_")]:
        del env[k]
    env.update(
        PATH=os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", ""), "/usr/bin", "/usr/sbin"]),
        PYTHONPATH=os.pathsep.join([HERE, REPO]),
        TMPDIR=node_tmp,
        TEST_PARTITION=PARTITION,
        TEST_RUN_DIR=str(tmp_path / "runinfo"),
    )
    ref = reference(inp)
    before = set(slurm.job_ids())
    cp = subprocess.run(
        [sys.executable, "-m", "qcmb_hpc", "water4.json", "--parsl-config", "slurm_config.py", "--import", "probe_engine",
         "--workers", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
    )
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:] + "\n" + slurm.logs()
    assert "parsl, 2 workers as Parsl tasks on slurm (SlurmProvider)" in cp.stderr, cp.stderr
    from qcmanybody.models.v2 import ManyBodyResult
    import json

    res = ManyBodyResult(**json.loads((tmp_path / "water4.result.json").read_text()))
    assert_same_result(ref, res, exact=True, check_shape=False)
    rep = load_report(tmp_path / "water4.result.json")
    assert rep["mode"] == "parsl" and not rep["lost_workers"], rep
    probes = [a.extras["probe"] for a in res.cluster_results.values()]
    jobs = {p["env"]["SLURM_JOB_ID"] for p in probes}
    assert len(jobs) == 1 and None not in jobs and jobs.isdisjoint(before), jobs  # every fragment ran in the block's job
    for p in probes:
        # fitted inside the block: its 2 CPUs (--cpus-per-task) and 2 GB (--mem) shared by its 2 workers
        assert p["ncores"] == 1 and p["env"]["OMP_NUM_THREADS"] == "1", p
        assert p["memory"] == round(usable_each(2048 * MiB, 2) / GiB, 3), p
        assert os.path.dirname(p["scratch_directory"]) == node_tmp and not os.path.exists(p["scratch_directory"]), p
    # the block was cancelled when the run ended (Parsl's scale-in at cleanup)
    job = next(iter(jobs))
    deadline = time.monotonic() + 60
    while job in slurm.job_ids():
        assert time.monotonic() < deadline, f"the block's job {job} is still there: {slurm.job_info(job)}"
        time.sleep(0.2)
    # (Parsl's cancelled manager leaves its pymp-* there: a job's $TMPDIR is the job's, Slurm's to clear)
    assert not [n for n in os.listdir(node_tmp) if n.startswith("qcmb_hpc-")], os.listdir(node_tmp)
