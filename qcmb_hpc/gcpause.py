"""One helper: the cyclic garbage collector kept off what a run builds in bulk.

Building the ~680k tasks of a large expansion (the restored results, the tracker's tables, the
dicts of QCManyBody's ``analyze``) allocates millions of containers that live to the end of the
run. CPython's collector runs a young collection every 700 allocations and a full one whenever
the long-lived objects grew by a quarter, each traversing everything tracked: at (H2O)64 4-body,
planning took 12.1 s with it and 6.2 s without, and one full collection after it 2.5 s. Nothing
built in such a phase is cyclic garbage, so pausing the collector loses nothing (what cyclic
garbage other code leaves meanwhile is collected by the first collection after the pause).

``paused_gc(freeze=True)`` also moves what exists to the collector's permanent generation at the
end of the block (``gc.freeze``), so that neither the next young collection (which would traverse
everything allocated during the pause) nor any later full one — the loop's own long-lived growth
triggers several — looks at it again; processes forked from a frozen heap (workers) do not touch
it either. Objects freed by their reference counts are freed as ever; only cyclic garbage made
before the freeze waits for the end of the :func:`frozen` block around the run.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

__all__ = ["paused_gc", "frozen"]

_frozen_depth = 0  # (gc.get_freeze_count() walks the permanent generation: a counter instead)


@contextlib.contextmanager
def paused_gc(freeze: bool = False) -> Iterator[None]:
    """The collector off for the block (nested blocks are fine: the outermost turns it back on);
    ``freeze``: what exists at its end goes to the permanent generation (see the module docstring;
    only inside a :func:`frozen` block, which puts it back)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze and _frozen_depth:
            gc.freeze()
        if was:
            gc.enable()


@contextlib.contextmanager
def frozen() -> Iterator[None]:
    """What exists now goes to the permanent generation for the block; the outermost block puts
    everything frozen back under the collector when it ends, however it ends (inner blocks — a
    fork inside a run — leave the run's freeze alone). Forking inside one: the child does not
    touch, and so does not copy, the parent's heap in its collections."""
    global _frozen_depth
    gc.freeze()
    _frozen_depth += 1
    try:
        yield
    finally:
        _frozen_depth -= 1
        if _frozen_depth == 0:
            gc.unfreeze()
