"""``ParallelManyBodyComputer``: QCManyBody's ``ManyBodyComputer`` with a parallel middle.

plan (QCManyBody's planning code, on the computer's own fields) →
run (:mod:`qcmb_hpc.driver`: one coordinator over the chosen plugin's worker pool) →
assemble (QCManyBody: ``ManyBodyCore.analyze`` on the complete dict in plan order, then the same
``get_results``). The numbers are therefore QCManyBody's own, whatever the mode or the order in
which fragments finished.
"""

from __future__ import annotations

import logging
import typing
from array import array
from typing import Any, ClassVar, Dict, Iterable, Iterator, List, Mapping, MutableMapping, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from qcmanybody.models.v2 import ManyBodyInput, ManyBodyResult
from qcmanybody.v2 import ManyBodyComputer

from .config import ParallelConfig, config_from_environment
from .errors import FragmentExecutionError, IncompleteRunError, InputDataError
from .gcpause import paused_gc
from .plan import KEYWORD_FIELDS, Plan, make_plan
from .progress import ProgressReporter
from .report import Phases, peak_rss, run_report

logger = logging.getLogger("qcmb_hpc")

__all__ = ["ParallelManyBodyComputer", "coerce_input"]


def dict_value_model(model: Any, field: str) -> Optional[type]:
    """The pydantic model ``X`` of ``model``'s field ``field`` if that is a ``Dict[str, X]``, else None."""
    args = typing.get_args(model.model_fields[field].annotation)
    value = args[1] if len(args) == 2 else None
    return value if isinstance(value, type) and issubclass(value, BaseModel) else None


def validate_in_place(values: MutableMapping[str, Any], model: Optional[type]) -> None:
    """Each dict of ``values`` replaced by the ``model`` pydantic validates from it, where it is — what
    pydantic does to a ``Dict[str, model]`` field (which then takes the instances as they are) —
    so that each dict is freed as its model is made, rather than all of them living beside all
    the models (at 680k fragments, ~0.2 GiB at the coordinator's peak)."""
    if model is None:
        return
    validate = model.__pydantic_validator__.validate_python  # (model_validate's own call, ~15 % faster alone)
    if not model.model_config.get("frozen"):
        for key, value in values.items():
            if isinstance(value, dict):
                values[key] = validate(value)
        return
    # A frozen model's set of explicitly set fields never changes after validation (assignment
    # raises; copies copy it), and it is the set of the given keys: models made from the same
    # keys share one (~0.2 kB a fragment).
    shared: Dict[Tuple[str, ...], set] = {}
    set_attribute = object.__setattr__
    for key, value in values.items():
        if isinstance(value, dict):
            made = validate(value)
            keys = tuple(value)
            same = shared.get(keys)
            if same is None:
                shared[keys] = made.__pydantic_fields_set__
            elif same == made.__pydantic_fields_set__:
                set_attribute(made, "__pydantic_fields_set__", same)
            values[key] = made


_CLUSTER_PROPERTIES = dict_value_model(ManyBodyResult, "cluster_properties")


_FLOAT = {float}


def _as_columns(given: List[Dict[str, Any]]) -> Tuple[Tuple[str, ...], List[array], Dict[int, Dict[str, Any]]]:
    """(the first fragment's keys, a column of doubles per key, position → properties kept as
    they are: those with other keys, or values that are not ``float``). Whole columns at a time
    when every fragment qualifies (the usual case: ~0.1 µs a fragment), else fragment by fragment."""
    if not given:
        return (), [], {}
    keys = tuple(given[0])
    if set(map(tuple, given)) == {keys}:
        columns = [[p[k] for p in given] for k in keys]
        if all(set(map(type, c)) == _FLOAT for c in columns):
            return keys, [array("d", c) for c in columns], {}
    arrays: List[array] = [array("d") for _ in keys]
    other: Dict[int, Dict[str, Any]] = {}
    for i, props in enumerate(given):
        values = tuple(props.values())
        if tuple(props) == keys and set(map(type, values)) <= _FLOAT:
            for column, value in zip(arrays, values):
                column.append(value)
        else:
            other[i] = props
            for column in arrays:
                column.append(0.0)
    return keys, arrays, other


class FragmentProperties(Mapping):
    """Label → a fragment's properties (a dict), what QCManyBody's ``analyze`` reads, in plan
    order. Properties that are all numbers (``float``) under the same keys — an energy run's
    ``{"energy": ...}`` — are kept as columns of doubles (bit for bit the same numbers) and each
    dict is made as it is read; any other is kept as it is. At 680k fragments that is 680k small
    dicts fewer beside ``analyze``'s own working set, the coordinator's peak (~0.1 GiB)."""

    def __init__(self, labels: List[str], properties: Iterable[Dict[str, Any]]):
        given = list(properties)
        if len(given) != len(labels):
            raise ValueError(f"{len(labels)} labels for {len(given)} sets of properties")
        self._labels = labels
        self._keys, self._columns, self._other = _as_columns(given)
        self._index: Optional[Dict[str, int]] = None

    def _at(self, i: int) -> Dict[str, Any]:
        other = self._other.get(i)
        if other is not None:
            return other
        return {key: column[i] for key, column in zip(self._keys, self._columns)}  # type: ignore[arg-type]

    def __getitem__(self, label: str) -> Dict[str, Any]:
        if self._index is None:  # (analyze reads in order: values() and items() need no index)
            self._index = {lbl: i for i, lbl in enumerate(self._labels)}
        return self._at(self._index[label])

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def _dicts(self) -> Iterator[Dict[str, Any]]:
        """Every fragment's dict, in order (analyze reads them all, twice)."""
        keys, columns = self._keys, self._columns
        if self._other or not columns:
            return (self._at(i) for i in range(len(self._labels)))
        if len(keys) == 1:
            key = keys[0]
            return ({key: v} for v in columns[0])
        return (dict(zip(keys, vs)) for vs in zip(*columns))

    def values(self):  # type: ignore[override]
        return self._dicts()

    def items(self):  # type: ignore[override]
        return zip(self._labels, self._dicts())


def coerce_input(data: Any) -> Tuple[ManyBodyInput, int]:
    """A v2 ``ManyBodyInput`` from a v2/v1 model or dict, and the schema version it came in.
    An invalid dict raises what QCManyBody's models raise (pydantic's ``ValidationError``: the
    v2 model's, or the v1 model's for a dict that says it is v1)."""
    if isinstance(data, ManyBodyInput):
        return data, 2
    if hasattr(data, "convert_v") and getattr(data, "schema_version", None) == 1:
        return data.convert_v(2), 1
    if not isinstance(data, dict):
        raise InputDataError(f"input_data must be a ManyBodyInput (v1 or v2) or a dict, not {type(data).__name__}")
    version = data.get("schema_version")
    looks_v1 = version == 1 or data.get("schema_name") == "qcschema_manybodyinput"
    v2_error: Optional[Exception] = None
    if not looks_v1:
        try:
            return ManyBodyInput(**data), 2
        except (ValidationError, TypeError) as exc:
            v2_error = exc
        if version == 2:
            raise v2_error
    from qcmanybody.models.v1 import ManyBodyInput as ManyBodyInputV1

    try:
        return ManyBodyInputV1(**data).convert_v(2), 1
    except Exception:  # pydantic.v1's ValidationError
        if v2_error is not None:
            raise v2_error from None
        raise


#: ``parallel_config`` not given: the class's :attr:`ParallelManyBodyComputer.default_parallel_config`
_DEFAULT = object()


class ParallelManyBodyComputer(ManyBodyComputer):
    """Drop-in for ``qcmanybody.v2.ManyBodyComputer`` that runs the fragments in parallel.

    ``ParallelManyBodyComputer(input_data, parallel_config=None, progress_reporter=None, **fields)``:
    ``input_data`` is a v2 or v1 ``ManyBodyInput`` (model or dict); ``parallel_config`` a
    :class:`ParallelConfig`, a dict of its fields, or None (sequential, exactly as before).
    ``fields`` are the computer's own fields (``bsse_type``, ``max_nbody``, ``levels``, …) and
    take effect as on QCManyBody's computer: the plan is made from the computer's fields, by
    QCManyBody's own planning code. Any other keyword is a ``TypeError``.
    ``.compute()`` returns the ``ManyBodyResult`` (the input's schema version), field for field
    QCManyBody's; the run report is :attr:`run_info` (and in ``extras`` with
    ``ParallelConfig(report_in_extras=True)``). Invalid input raises what QCManyBody raises
    (pydantic's ``ValidationError``); qcmb_hpc's own checks raise :class:`InputDataError`.
    """

    # QCManyBody's computer accepts (and ignores) any extra keyword; a parallel run that silently
    # ignored e.g. a misspelt max_nbody would run another expansion than the one asked for
    model_config = ConfigDict(extra="forbid")

    #: the configuration used when none is passed (:func:`qcmb_hpc.parallelize` makes subclasses
    #: with their own); None: sequential
    default_parallel_config: ClassVar[Any] = None
    default_progress_reporter: ClassVar[Any] = None

    parallel_config: Any = Field(None, exclude=True, description="ParallelConfig for the run.")
    progress_reporter: Any = Field(None, exclude=True, description="Optional progress reporter(s).")
    input_schema_version: int = Field(2, exclude=True, description="Schema version of the input as given.")
    run_info: Any = Field(None, exclude=True, description="Report of the last compute().")
    field_overrides: Dict[str, Any] = Field(default_factory=dict, exclude=True, description="Fields given beside input_data.")

    def __init__(
        self,
        input_data: Any = None,
        parallel_config: Union[ParallelConfig, Dict[str, Any], None] = _DEFAULT,  # type: ignore[assignment]
        progress_reporter: Any = _DEFAULT,
        **kwargs: Any,
    ):
        if parallel_config is _DEFAULT:
            parallel_config = type(self).default_parallel_config
        if progress_reporter is _DEFAULT:
            progress_reporter = type(self).default_progress_reporter
        config = ParallelConfig.coerce(parallel_config)
        ours = {"input_schema_version", "run_info", "field_overrides"}
        known = set(ManyBodyComputer.model_fields) - {"task_list", "qcmb_core"}
        unknown = sorted(set(kwargs) - known - ours)
        if unknown:
            raise TypeError(
                f"ParallelManyBodyComputer got unknown keyword(s) {', '.join(unknown)}; "
                f"the computer's fields are {', '.join(sorted(known))}, and parallel_config, progress_reporter"
            )
        if input_data is not None and "molecule" not in kwargs:
            model, version = coerce_input(input_data)
            overrides = {k: v for k, v in kwargs.items() if k in known and k != "input_data"}
            kwargs = {
                "molecule": model.molecule,
                "driver": model.specification.driver,
                **{k: v for k, v in model.specification.keywords.model_dump(exclude_unset=True).items() if k in KEYWORD_FIELDS},
                "input_data": model,
                "input_schema_version": version,
                **kwargs,
                "field_overrides": overrides,
            }
        elif input_data is not None:
            kwargs["input_data"] = input_data
        super().__init__(parallel_config=config, progress_reporter=progress_reporter, **kwargs)

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_manybodyinput(
        cls, input_model: Any, build_tasks: bool = True, parallel_config: Any = _DEFAULT, **kwargs: Any
    ):
        """Like ``qcmanybody.v2.ManyBodyComputer.from_manybodyinput``: with ``build_tasks`` run and
        return the ``ManyBodyResult``; without, return the planned computer (``qcmb_core`` set)."""
        comp = cls(input_model, parallel_config=parallel_config, **kwargs)
        if not build_tasks:
            comp.build_plan()
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
        from .driver import run

        logging.getLogger("qcmb_hpc").setLevel(self.parallel_config.log_level)
        return self.in_input_version(run(self, fresh=fresh, broadcast_result=broadcast_result))

    def in_input_version(self, result: Any) -> Any:
        """The v2 result in the schema version of the input (the one place results are converted).
        A v1 caller would have used QCManyBody's v1 computer, which stamps its own routine."""
        if result is None or self.input_schema_version != 1:
            return result
        v1 = result.convert_v(1)
        return v1.copy(update={"provenance": v1.provenance.copy(update={"routine": "qcmanybody.v1.computer"})})

    def build_plan(self) -> Plan:
        """QCManyBody's plan of this computer (its own fields, its own planning code). A
        ``ValueError`` QCManyBody raises while planning comes out as an :class:`InputDataError`
        (a ``ValueError`` too) with its first line."""
        try:
            return make_plan(self, self.field_overrides)
        except ValidationError:
            raise
        except ValueError as exc:
            raise InputDataError(str(exc).strip().splitlines()[0]) from None

    def assemble(self, plan: Plan, outcome: Any, atomic: Dict[int, Any], info: Any):
        """The v2 ``ManyBodyResult`` from a run's outcome (QCManyBody's ``analyze`` and
        ``get_results``, on the fragments in plan order), with the run report in :attr:`run_info`;
        a failed or stopped run raises (:class:`FragmentExecutionError`, :class:`IncompleteRunError`).
        The run's state is consumed (the outcome's properties and timings, the plan's tasks, the
        core's compute lists): what is left of them is in the result and the report."""
        phases = getattr(info, "phases", None) or Phases()
        with paused_gc():  # (the report and QCManyBody's analyze: ~10^6 long-lived objects at scale)
            return self._assemble(plan, outcome, atomic, info, phases)

    def _assemble(self, plan: Plan, outcome: Any, atomic: Dict[int, Any], info: Any, phases: Phases):
        config: ParallelConfig = self.parallel_config
        with phases("report"):
            report = run_report(
                outcome, plan.tasks, info.workers, info.mode, info.wall, initial_costs=info.initial_costs,
                specifications=plan.specifications, started=getattr(info, "started", None),
            )
        # (the per-attempt timings and the initial estimates now live in the report)
        outcome.timings, info.initial_costs = [], None
        # (the same dict as phases.seconds: assembly, timed below, shows in it too)
        report["phases"] = phases.seconds
        report["first_dispatch_seconds"] = getattr(info, "first_dispatch", None)
        report["peak_rss_bytes"] = peak_rss()  # (so far: a stopped or failed run has it too)
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
            # every failed fragment in the report (the CLI writes it to NAME.report.json), each engine text up to 10k characters
            report["failures"] = [{**f, "attempts": [{**a, "error_message": a["error_message"][:10000]} for a in f["attempts"]]} for f in failures]
            if outcome.systematic:
                report["systematic_failure"] = outcome.systematic
            raise FragmentExecutionError(failures, completed=done, total=len(plan.tasks), systematic=outcome.systematic)
        if outcome.incomplete:
            raise IncompleteRunError(outcome.stop_reason or "a stop request", done, len(plan.tasks), config.checkpoint)

        with phases("assembly"):
            # (where the memory goes at scale: QCManyBody's result object holds one set of
            # properties per fragment, ~1.7 kB each; the peaks before and after each step are in
            # the report. The run's state is consumed as it is handed on — the outcome's
            # properties (analyze copies what it needs), the plan's tasks (their labels are the
            # result's keys) — so that little but the result is alive at its peak.)
            properties, outcome.properties = outcome.properties, {}
            tasks, plan.tasks = plan.tasks, []
            component_properties = FragmentProperties([t.label for t in tasks], (properties.pop(t.id) for t in tasks))
            del properties
            component_results = {}
            if plan.keep_atomic_results:
                merged = {**atomic, **outcome.atomic_results}
                component_results = {t.label: merged[t.id] for t in tasks if t.id in merged}
            del tasks
            memory = report["peak_rss_steps_bytes"] = {"before_assembly": report["peak_rss_bytes"]}
            analyze_back = plan.core.analyze(component_properties)
            # QCManyBody's compute lists (built lazily, rebuilt if asked for): get_results does
            # not use them, and at 680k fragments they are ~0.15 GiB.
            plan.core.mc_compute_dict = None
            memory["analyze"] = peak_rss()
            analyze_back["nbody_number"] = len(component_properties)
            del component_properties
            validate_in_place(analyze_back["component_properties"], _CLUSTER_PROPERTIES)
            result = plan.upstream.get_results(external_results=analyze_back, component_results=component_results)
        report["peak_rss_bytes"] = memory["get_results"] = peak_rss()  # now through assembly
        if config.report_in_extras:
            result = result.model_copy(update={"extras": {**result.extras, "qcmb_hpc": report}})
        return result
