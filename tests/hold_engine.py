"""``qcmb_hold``: the deterministic ``qcmb_test`` model, whose fragments can be held.

With ``HOLD_DIR=<directory>`` in the environment (not in the input, so the sequential reference is
unaffected), every fragment leaves a marker ``<worker's scratch name>.<n>`` there (holding the
pid of the process that computes it), and each worker's second and later fragments wait until
``<directory>/open`` exists (at most 240 s). A test can then act while every worker holds a
fragment — kill one, wait for another to join — and let them go on. Worker scratch names are
``qcmb_hpc-<host>-<worker pid>-w<id>-…``, so a marker says which worker and which process.

Registered with qcengine on import (``imports=["hold_engine"]`` with ``tests/`` importable).
"""

from __future__ import annotations

import os
import time
from typing import Any

import qcengine

from qcmb_hpc.testing.engines import TestHarness, _compute_model

__all__ = ["HoldHarness", "markers"]

HOLD_SECONDS = 240.0


def markers(directory: str) -> dict:
    """worker scratch name → the markers of its fragments (sorted)."""
    out: dict = {}
    for name in os.listdir(directory):
        if name != "open":
            worker, _, n = name.rpartition(".")
            out.setdefault(worker, []).append(int(n))
    return {w: sorted(v) for w, v in out.items()}


def _hold(scratch: Any) -> None:
    directory = os.environ.get("HOLD_DIR")
    if not directory or not scratch:
        return
    me = os.path.basename(str(scratch).rstrip("/"))
    n = 1 + len([f for f in os.listdir(directory) if f.rpartition(".")[0] == me])
    with open(os.path.join(directory, f"{me}.{n}"), "w") as fh:
        fh.write(str(os.getpid()))
    deadline = time.monotonic() + HOLD_SECONDS
    while n >= 2 and not os.path.exists(os.path.join(directory, "open")) and time.monotonic() < deadline:
        time.sleep(0.02)


class HoldHarness(TestHarness):
    _defaults = {**TestHarness._defaults, "name": "qcmb_hold"}

    def compute(self, input_model: Any, config: Any) -> Any:
        _hold(config.scratch_directory)
        return _compute_model(input_model, config, self.name)


if "qcmb_hold" not in qcengine.list_all_programs():
    qcengine.register_program(HoldHarness())
