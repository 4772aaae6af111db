"""One helper: the cyclic garbage collector paused while a bulk of long-lived objects is built.

Building the ~680k tasks of a large expansion (or the dicts of the results, or QCManyBody's
``analyze`` on them) allocates millions of containers that live to the end of the run. CPython's
collector runs a young collection every 700 allocations and a full one whenever the long-lived
objects grew by a quarter, each traversing everything tracked: measured at (H2O)64 4-body,
planning took 12.1 s with it and 6.2 s without. Nothing built in such a phase is cyclic garbage,
so pausing it loses nothing; whatever cyclic garbage other code leaves meanwhile is collected by
the first collection after the pause.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

__all__ = ["paused_gc"]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The collector off for the block (nested blocks are fine: the outermost turns it back on)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
