"""What a worker needs: :class:`RunSpec` (once per run) and :class:`FragmentTask` (once per fragment).

Planning stays QCManyBody's: the fragments are exactly those of ``ManyBodyCore.iterate_molecules()``,
in the same order and with the same labels. The coordinator only walks the *labels* (cheap); the
fragment ``Molecule`` is built on the worker by :func:`build_fragment_molecule`, which makes the
same ``get_fragment`` call QCManyBody makes (building ~680k molecules on rank 0 would take an hour).
``tests/test_plan.py`` checks both against ``iterate_molecules()`` itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
from qcmanybody import ManyBodyCore
from qcmanybody.utils import labeler

from .fragment import RunSpec, build_atomic_input, build_fragment_molecule, worker_parent  # noqa: F401 (re-exported)
from qcmanybody.v2.computer import ManyBodyComputer as UpstreamComputer

from .gcpause import paused_gc  # noqa: E402

#: QCManyBody's own v2 computer, kept from import time: :func:`qcmb_hpc.parallelize` (and code
#: that parallelizes a program it does not own) may replace ``qcmanybody.v2.ManyBodyComputer``
#: with the parallel class later; planning must still reach the original.
UPSTREAM_COMPUTER = UpstreamComputer

#: the many-body keywords that are fields of the computer (what ``ManyBodyKeywords`` holds)
KEYWORD_FIELDS = ("bsse_type", "embedding_charges", "return_total_data", "levels", "max_nbody", "supersystem_ie_only")

__all__ = ["FragmentTask", "RunSpec", "iterate_labels", "build_tasks", "build_fragment_molecule", "build_atomic_input"]


@dataclass(slots=True)
class FragmentTask:
    """One fragment calculation. On the wire only ``(id, label)`` travels. (Slots: a large
    expansion has ~680k of them on the coordinator.)"""

    id: int  #: position in QCManyBody's plan order
    label: str  #: QCManyBody's label, ``json.dumps([mc, real_frags, basis_frags])``
    mc: str  #: model-chemistry key of the specification
    real: Tuple[int, ...]  #: 1-based real fragments
    basis: Tuple[int, ...]  #: 1-based fragments whose basis functions are present (real + ghost)
    natoms_real: int = 0
    natoms_ghost: int = 0
    cost: float = 1.0  #: estimated seconds (relative units before calibration)

    @property
    def nbody(self) -> int:
        """The n-body level this fragment belongs to (number of real fragments)."""
        return len(self.real)

    @property
    def ghost(self) -> Tuple[int, ...]:
        return tuple(sorted(set(self.basis) - set(self.real)))

    def wire(self) -> Tuple[int, str]:
        return (self.id, self.label)


def iterate_labels(core: ManyBodyCore) -> Iterator[Tuple[str, str, Tuple[int, ...], Tuple[int, ...]]]:
    """``(mc, label, real, basis)`` in exactly the order of ``core.iterate_molecules()``, without
    building any molecule (the same loop over ``core.compute_map``: each fragment where it is first
    met). Duplicates are found on the index tuples themselves — the label encodes exactly
    ``(mc, real, basis)`` — so a label is made once per fragment, not once per occurrence."""
    for mc, pairs in _first_occurrences(core):
        label_of = fast_labeler(mc)
        for real, basis in pairs:
            yield mc, label_of(real, basis), tuple(real), tuple(basis)


def _first_occurrences(core: ManyBodyCore) -> Iterator[Tuple[str, List[Tuple[Any, Any]]]]:
    """Per model chemistry, its ``(real, basis)`` pairs in the order ``iterate_molecules`` first
    meets them (each n-body list of ``compute_map[mc]["all"]`` repeats the lower ones)."""
    for mc, compute_dict in core.compute_map.items():
        seen: set = set()
        pairs: List[Tuple[Any, Any]] = []
        for compute_list in compute_dict["all"].values():
            new = [p for p in compute_list if p not in seen]
            seen.update(new)
            pairs.extend(new)
        yield mc, pairs


def fast_labeler(mc: str) -> Callable[[Tuple[int, ...], Tuple[int, ...]], str]:
    """QCManyBody's ``labeler(mc, real, basis)`` — ``json.dumps([str(mc), real, basis])`` — for one
    model chemistry, without a JSON encoder per call: ``json.dumps`` of a tuple of ints is their
    ``repr`` joined by ", " in brackets, so only the model chemistry needs JSON's quoting, once.
    Checked against ``labeler`` on a fragment: if QCManyBody's labels ever differ, its own
    function is returned."""
    head = "[" + json.dumps(str(mc)) + ", ["
    rep = int.__repr__

    def label_of(real: Tuple[int, ...], basis: Tuple[int, ...]) -> str:
        r = ", ".join(map(rep, real))
        b = r if basis == real else ", ".join(map(rep, basis))
        return f"{head}{r}], [{b}]]"

    if label_of((1, 2), (1, 2, 3)) != labeler(mc, (1, 2), (1, 2, 3)):  # pragma: no cover
        return functools.partial(labeler, mc)
    return label_of


def build_tasks(core: ManyBodyCore) -> List[FragmentTask]:
    """All fragment tasks of a plan, in QCManyBody's order (:func:`iterate_labels`, written out
    here: ~680k tasks at (H2O)64 4-body, where each call per task shows), with atom counts."""
    size = core.fragment_size_dict.__getitem__
    tasks: List[FragmentTask] = []
    append = tasks.append
    i = 0
    with paused_gc():  # (hundreds of thousands of long-lived objects: see qcmb_hpc.gcpause)
        for mc, pairs in _first_occurrences(core):
            label_of = fast_labeler(mc)
            for real, basis in pairs:
                real, basis = tuple(real), tuple(basis)
                nreal = sum(map(size, real))
                nghost = 0 if basis == real else sum(map(size, basis)) - nreal
                append(FragmentTask(i, label_of(real, basis), mc, real, basis, nreal, nghost))
                i += 1
    return tasks


def specifications_from_input(input_model: Any, driver: Any) -> Dict[str, Dict[str, Any]]:
    """mc → {"program", "specification"} exactly as ``qcmanybody.v2.ManyBodyComputer.from_manybodyinput``
    builds them (the atomic driver is replaced by the many-body driver)."""
    specifications: Dict[str, Dict[str, Any]] = {}
    for mtd, spec in input_model.specification.specification.items():
        spec = spec.model_dump()
        specifications[mtd] = {"program": spec.pop("program"), "specification": spec}
        specifications[mtd]["specification"]["driver"] = driver
        specifications[mtd]["specification"].pop("schema_name", None)
    return specifications


def input_fingerprint(input_model: Any, overrides: Optional[Dict[str, Any]] = None) -> str:
    """SHA-256 of everything in a v2 ``ManyBodyInput`` that changes the numbers: molecule,
    driver, many-body keywords, and each model chemistry's program, method, basis and keywords.
    Identifiers, provenance and extras are left out. ``overrides``: computer fields given
    beside the input (``molecule``, ``driver``, many-body keywords), which the run uses instead."""
    dump = input_model.model_dump(mode="json")
    spec = dump["specification"]
    over = json.loads(json.dumps(overrides or {}, default=_json_default))
    keywords = {**spec["keywords"], **{k: v for k, v in over.items() if k in KEYWORD_FIELDS}}
    relevant = {
        "molecule": over.get("molecule", dump["molecule"]),
        "driver": over.get("driver", spec["driver"]),
        "keywords": keywords,
        "specification": spec["specification"],
        "protocols": spec.get("protocols"),
    }
    relevant["molecule"] = dict(relevant["molecule"])
    for key in ("provenance", "id", "extras"):
        relevant["molecule"].pop(key, None)
    text = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Plan:
    """A planned run: QCManyBody's own computer and core (planning and assembly stay theirs), the
    tasks in plan order, and what identifies the input."""

    upstream: Any  #: ``qcmanybody.v2.ManyBodyComputer`` built with ``build_tasks=False``
    core: ManyBodyCore
    tasks: List[FragmentTask]
    specifications: Dict[str, Dict[str, Any]]
    fingerprint: str
    keep_atomic_results: bool

    @property
    def programs(self) -> List[str]:
        return sorted({chem["program"] for chem in self.specifications.values()})


def _json_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, np.ndarray):
        return value.tolist()
    return getattr(value, "value", str(value))


class _ThisComputer:
    """Stands in for the class in QCManyBody's ``from_manybodyinput``: "constructing" it gives
    back the computer already built (with its own fields), so QCManyBody's planning code runs
    on exactly the fields the caller gave."""

    def __init__(self, computer: Any):
        self.computer = computer

    def __call__(self, **_fields_from_the_input: Any) -> Any:
        return self.computer


def make_plan(source: Any, overrides: Optional[Dict[str, Any]] = None) -> Plan:
    """Plan with QCManyBody itself. ``source``: a v2 ``ManyBodyInput`` (planned as
    ``ManyBodyComputer.from_manybodyinput(build_tasks=False)`` plans it), or an already built
    computer (a ``qcmanybody.v2.ManyBodyComputer``, e.g. a :class:`ParallelManyBodyComputer`),
    which is planned from its own fields, as QCManyBody plans from the computer's fields —
    ``overrides`` names the fields given beside the input (for the fingerprint)."""
    if isinstance(source, UPSTREAM_COMPUTER):
        upstream = UPSTREAM_COMPUTER.from_manybodyinput.__func__(_ThisComputer(source), source.input_data, build_tasks=False)
    else:
        upstream = UPSTREAM_COMPUTER.from_manybodyinput(source, build_tasks=False)
    specs = specifications_from_input(upstream.input_data, upstream.driver)
    protocol = upstream.input_data.specification.protocols.cluster_results
    return Plan(
        upstream=upstream,
        core=upstream.qcmb_core,
        tasks=build_tasks(upstream.qcmb_core),
        specifications=specs,
        fingerprint=input_fingerprint(upstream.input_data, overrides),
        keep_atomic_results=getattr(protocol, "value", protocol) == "all",
    )
