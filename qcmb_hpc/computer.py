"""``ParallelManyBodyComputer``: QCManyBody's ``ManyBodyComputer`` with a parallel middle.

plan (QCManyBody: ``ManyBodyComputer.from_manybodyinput(build_tasks=False)``) →
run (:mod:`qcmb_hpc.run`: one coordinator over the chosen transport) →
assemble (QCManyBody: ``ManyBodyCore.analyze`` on the complete dict in plan order, then the same
``get_results``). The numbers are therefore QCManyBody's own, whatever the mode or the order in
which fragments finished.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple, Union

from pydantic import Field, ValidationError
from qcmanybody.models.v2 import ManyBodyInput
from qcmanybody.v2 import ManyBodyComputer

from .config import ParallelConfig, ParallelMode, config_from_environment
from .errors import FragmentExecutionError, IncompleteRunError, InputDataError
from .plan import Plan, make_plan
from .progress import ProgressReporter
from .report import run_report

logger = logging.getLogger("qcmb_hpc")

__all__ = ["ParallelManyBodyComputer", "coerce_input"]


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    more = f" (+{len(exc.errors()) - 3} more)" if len(exc.errors()) > 3 else ""
    return "; ".join(parts) + more


def coerce_input(data: Any) -> Tuple[ManyBodyInput, int]:
    """A v2 ``ManyBodyInput`` from a v2/v1 model or dict, and the schema version it came in."""
    if isinstance(data, ManyBodyInput):
        return data, 2
    if hasattr(data, "convert_v") and getattr(data, "schema_version", None) == 1:
        return data.convert_v(2), 1
    if not isinstance(data, dict):
        raise InputDataError(f"input_data must be a ManyBodyInput (v1 or v2) or a dict, not {type(data).__name__}")
    version = data.get("schema_version")
    looks_v1 = version == 1 or data.get("schema_name") == "qcschema_manybodyinput"
    errors = []
    if not looks_v1:
        try:
            return ManyBodyInput(**data), 2
        except ValidationError as exc:
            errors.append(_validation_message(exc))
        except (TypeError, ValueError) as exc:
            errors.append(str(exc))
        if version == 2:
            raise InputDataError(f"not a valid ManyBodyInput: {errors[0]}")
    try:
        from qcmanybody.models.v1 import ManyBodyInput as ManyBodyInputV1

        return ManyBodyInputV1(**data).convert_v(2), 1
    except Exception as exc:  # pydantic.v1 ValidationError and friends
        text = str(exc).strip().replace("\n", " ")
        errors.append(text[:400])
    raise InputDataError(f"not a valid ManyBodyInput: {errors[0]}")


class ParallelManyBodyComputer(ManyBodyComputer):
    """Drop-in for ``qcmanybody.v2.ManyBodyComputer`` that runs the fragments in parallel.

    ``ParallelManyBodyComputer(input_data, parallel_config=None, progress_reporter=None)``:
    ``input_data`` is a v2 or v1 ``ManyBodyInput`` (model or dict); ``parallel_config`` a
    :class:`ParallelConfig`, a dict of its fields, or None (sequential, exactly as before).
    ``.compute()`` returns the ``ManyBodyResult`` (the input's schema version).
    """

    parallel_config: Any = Field(None, exclude=True, description="ParallelConfig for the run.")
    progress_reporter: Any = Field(None, exclude=True, description="Optional ProgressReporter.")
    input_schema_version: int = Field(2, exclude=True, description="Schema version of the input as given.")
    run_info: Any = Field(None, exclude=True, description="Report of the last compute().")

    def __init__(
        self,
        input_data: Any = None,
        parallel_config: Union[ParallelConfig, Dict[str, Any], None] = None,
        progress_reporter: Optional[ProgressReporter] = None,
        **kwargs: Any,
    ):
        config = ParallelConfig.coerce(parallel_config)
        if input_data is not None and "molecule" not in kwargs:
            model, version = coerce_input(input_data)
            kwargs = {
                "molecule": model.molecule,
                "driver": model.specification.driver,
                **model.specification.keywords.model_dump(exclude_unset=True),
                "input_data": model,
                "input_schema_version": version,
                **kwargs,
            }
        elif input_data is not None:
            kwargs["input_data"] = input_data
        try:
            super().__init__(parallel_config=config, progress_reporter=progress_reporter, **kwargs)
        except ValidationError as exc:
            raise InputDataError(f"not a valid many-body input: {_validation_message(exc)}") from None

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_manybodyinput(
        cls, input_model: Any, build_tasks: bool = True, parallel_config: Any = None, **kwargs: Any
    ):
        """Like ``qcmanybody.v2.ManyBodyComputer.from_manybodyinput``: with ``build_tasks`` run and
        return the ``ManyBodyResult``; without, return the planned computer (``qcmb_core`` set)."""
        comp = cls(input_model, parallel_config=parallel_config, **kwargs)
        if not build_tasks:
            comp.qcmb_core = comp._plan().core
            return comp
        return comp.compute()

    @classmethod
    def from_environment(cls, input_data: Any, progress_reporter: Optional[ProgressReporter] = None, **overrides: Any):
        """Settings from ``QCMB_*`` environment variables (a bad value is a ``ValueError`` naming it);
        ``overrides`` (ParallelConfig fields) win over the environment."""
        config = config_from_environment()
        if overrides:
            config = ParallelConfig.from_dict({**config.to_dict(), **overrides})
        return cls(input_data, parallel_config=config, progress_reporter=progress_reporter)

    # ------------------------------------------------------------------------------------------
    def compute(self, *, fresh: bool = False, broadcast_result: bool = True):  # type: ignore[override]
        """Run every fragment and return the ``ManyBodyResult``.

        ``fresh``: ignore and replace an existing checkpoint. ``broadcast_result`` (MPI): give every
        rank the result (the command line only needs it on rank 0)."""
        from .run import resolve_mode, run_mpi

        config: ParallelConfig = self.parallel_config
        logging.getLogger("qcmb_hpc").setLevel(config.log_level)
        mode = resolve_mode(config)
        if mode == ParallelMode.MPI:
            from .run import make_reporter

            return run_mpi(self, config, make_reporter(config, self.progress_reporter), fresh, broadcast_result)
        return self._compute_local(mode, fresh)

    def _compute_local(self, mode: ParallelMode, fresh: bool = False):
        from .run import make_reporter, run_local

        plan = self._plan()
        reporter = make_reporter(self.parallel_config, self.progress_reporter)
        outcome, atomic, info = run_local(plan, self.parallel_config, mode, reporter, fresh=fresh)
        return self._assemble(plan, outcome, atomic, info)

    def _plan(self) -> Plan:
        try:
            plan = make_plan(self.input_data)
        except ValidationError as exc:
            raise InputDataError(f"not a valid many-body input: {_validation_message(exc)}") from None
        except ValueError as exc:
            raise InputDataError(str(exc).strip().splitlines()[0]) from None
        self.qcmb_core = plan.core
        return plan

    def _assemble(self, plan: Plan, outcome: Any, atomic: Dict[int, Any], info: Any):
        config: ParallelConfig = self.parallel_config
        report = run_report(
            outcome, plan.tasks, info.workers, info.mode, info.wall, initial_costs=info.initial_costs,
            specifications=plan.specifications, started=getattr(info, "started", None),
        )
        if info.fell_back:
            report["fell_back_to_sequential"] = info.fell_back
        if info.layout is not None:
            report["layout"] = {
                "workers": info.layout.workers,
                "threads_per_worker": info.layout.threads_per_worker,
                "memory_per_worker": info.layout.memory_per_worker,
                "scratch": info.layout.scratch,
            }
        self.run_info = report
        done = len(outcome.properties)
        if outcome.failures:
            failures = []
            for tid, attempts in sorted(outcome.failures.items()):
                task = plan.tasks[tid]
                failures.append(
                    {
                        "label": task.label,
                        "program": plan.specifications[task.mc]["program"],
                        "attempts": [a.__dict__ for a in attempts],
                    }
                )
            raise FragmentExecutionError(failures, completed=done, total=len(plan.tasks))
        if outcome.incomplete:
            raise IncompleteRunError(outcome.stop_reason or "a stop request", done, len(plan.tasks), config.checkpoint)

        component_properties = {t.label: outcome.properties[t.id] for t in plan.tasks}
        component_results = {}
        if plan.keep_atomic_results:
            merged = {**atomic, **outcome.atomic_results}
            component_results = {t.label: merged[t.id] for t in plan.tasks if t.id in merged}
        analyze_back = plan.core.analyze(component_properties)
        analyze_back["nbody_number"] = len(component_properties)
        result = plan.upstream.get_results(external_results=analyze_back, component_results=component_results)
        if config.report_in_extras:
            result = result.model_copy(update={"extras": {**result.extras, "qcmb_hpc": report}})
        if self.input_schema_version == 1:
            return result.convert_v(1)
        return result
