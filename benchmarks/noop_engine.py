"""``qcmb_noop``: a fragment that costs nothing, for measuring the coordinator + worker + transport path.

Importing this module (``imports=["noop_engine"]`` sends the import to every worker):

* registers a qcengine program ``qcmb_noop`` that returns energy 0 at once (so planning, the
  program check and a sequential reference work as for any program);
* wraps :func:`qcmb_hpc.engine.run_fragment`, the one call a worker's runner makes per fragment,
  so that a fragment of ``qcmb_noop`` returns its outcome without building the fragment molecule
  or entering ``qcengine.compute`` (~3 ms of pydantic and bookkeeping that would otherwise be all
  one measured). Everything around it — the coordinator loop, the scheduler, the worker loop,
  pickling, MPI messages, result batching, journal-less bookkeeping — is the real code.
"""

from __future__ import annotations

import time
from typing import Any, Dict

import qcengine
from qcelemental.models.v2 import AtomicResult, Provenance
from qcengine.programs.model import ProgramHarness

from qcmb_hpc import engine as _engine

NAME = "qcmb_noop"


class NoopHarness(ProgramHarness):
    _defaults = {
        "name": NAME,
        "scratch": False,
        "thread_safe": True,
        "thread_parallel": False,
        "node_parallel": False,
        "managed_memory": False,
    }

    @staticmethod
    def found(raise_error: bool = False) -> bool:
        return True

    def get_version(self) -> str:
        return "1.0"

    def compute(self, input_model: Any, config: Any) -> AtomicResult:
        return AtomicResult(
            input_data=input_model,
            molecule=input_model.molecule,
            properties={"return_energy": 0.0},
            return_result=0.0,
            success=True,
            provenance=Provenance(creator=NAME, version="1.0", routine="noop_engine"),
        )


if NAME not in qcengine.list_all_programs():
    qcengine.register_program(NoopHarness())

_real_run_fragment = getattr(_engine.run_fragment, "_real", _engine.run_fragment)
_is_noop: Dict[int, bool] = {}


def run_fragment(spec: Any, task_id: int, label: str, task_config: Dict[str, Any]) -> Any:
    key = id(spec)
    noop = _is_noop.get(key)
    if noop is None:
        noop = _is_noop[key] = all(c["program"] == NAME for c in spec.specifications.values())
    if not noop:
        return _real_run_fragment(spec, task_id, label, task_config)
    t0 = time.perf_counter()
    started = time.time()
    return _engine.FragmentOutcome(
        id=task_id, ok=True, properties={"energy": 0.0}, started=started, seconds=time.perf_counter() - t0
    )


run_fragment._real = _real_run_fragment  # type: ignore[attr-defined]
_engine.run_fragment = run_fragment
