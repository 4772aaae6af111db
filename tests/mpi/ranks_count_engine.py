"""``qcmb_count``: the ``qcmb_test`` model, recording every execution and optionally holding one
fragment back until the rest has run (registered with qcengine on import; ``--import
ranks_count_engine`` / ``imports=["ranks_count_engine"]``).

keywords:

* ``record_dir`` (required): every execution takes the first free ``<key>.<n>`` file there
  (``O_EXCL``, so across processes and ranks); ``<key>.2`` means the fragment ran twice. The file
  holds the pid of the rank that ran it (the parent of the isolated child).
* ``hold_until``: the *first* fragment to start anywhere (it claims ``first.hold`` with ``O_EXCL``)
  does not finish until ``hold_until`` executions of *other* fragments are recorded (or
  ``hold_timeout`` seconds pass: then it writes ``held-too-long`` and finishes anyway, so a broken
  run ends with a clear failure instead of a hang). The first fragment to start is the head of its
  worker's queue: whatever is queued behind it on that worker can only run meanwhile if it is
  taken away from that worker — i.e. stolen.

* a ``control.json`` file in ``record_dir`` (read at every execution, so that a resumed run with
  the same input — the same fingerprint — behaves differently once it is removed):
  ``{"sigterm_pids": [...]}`` makes the first fragment to start send SIGTERM to those processes and
  then hang until it is cut (or ``held-too-long`` after 60 s).

Every execution that returns also leaves ``<key>.<n>.done``.

The numbers are exactly ``qcmb_test``'s (the program name does not enter the model).
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import qcengine

from qcmb_hpc.testing.engines import TestHarness, _compute_model, _geometry_key

RECORD_SUFFIX = ".run"


def record(record_dir: str, key: str) -> int:
    """Record one execution of ``key``; returns its number (1 for the first)."""
    n = 1
    while True:
        try:
            fd = os.open(os.path.join(record_dir, f"{key}.{n}{RECORD_SUFFIX}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            n += 1
            continue
        os.write(fd, str(os.getppid()).encode())
        os.close(fd)
        return n


def executions(record_dir: str) -> dict:
    """key → number of recorded executions."""
    counts: dict = {}
    for name in os.listdir(record_dir):
        if name.endswith(RECORD_SUFFIX):
            key = name.split(".")[0]
            counts[key] = counts.get(key, 0) + 1
    return counts


def held_too_long(record_dir: str) -> bool:
    return os.path.exists(os.path.join(record_dir, "held-too-long"))


def _claim(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


class CountHarness(TestHarness):
    _defaults = {**TestHarness._defaults, "name": "qcmb_count"}

    def compute(self, input_model: Any, config: Any) -> Any:
        kw = input_model.specification.keywords
        record_dir = kw["record_dir"]
        key = _geometry_key(input_model)
        n = record(record_dir, key)
        control = os.path.join(record_dir, "control.json")
        if os.path.exists(control) and _claim(os.path.join(record_dir, "signal.sent")):
            with open(control) as fh:
                pids = json.load(fh)["sigterm_pids"]
            for pid in pids:
                os.kill(int(pid), signal.SIGTERM)
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline:  # until the run cuts this fragment (kills this process)
                time.sleep(0.01)
            open(os.path.join(record_dir, "held-too-long"), "w").close()
        if kw.get("hold_until") is not None and _claim(os.path.join(record_dir, "first.hold")):
            target = int(kw["hold_until"])
            deadline = time.monotonic() + float(kw.get("hold_timeout", 60.0))
            while True:
                others = sum(c for k, c in executions(record_dir).items() if k != key)
                if others >= target:
                    break
                if time.monotonic() > deadline:
                    open(os.path.join(record_dir, "held-too-long"), "w").close()
                    break
                time.sleep(0.005)
        result = _compute_model(input_model, config, "qcmb_test")
        open(os.path.join(record_dir, f"{key}.{n}.done"), "w").close()
        return result


if "qcmb_count" not in qcengine.list_all_programs():
    qcengine.register_program(CountHarness())
