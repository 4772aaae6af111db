"""The one backoff: how every loop here waits when nothing happened (the coordinator's, the
worker's, MPI's non-blocking barriers and send drains).

Waits start at :data:`MIN_WAIT` and double up to a cap; anything happening resets them. Nobody
spins (MPICH's blocking receive busy-polls a core; an ``Iprobe`` + sleep loop with this backoff
costs ~2 % of a core per idle rank), and a loop that was just busy reacts within microseconds.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

__all__ = ["Backoff", "MIN_WAIT", "wait_until"]

MIN_WAIT = 1e-5


class Backoff:
    """``wait`` is how long to wait now: 0 after :meth:`reset` (something happened), then, after
    each :meth:`advance` (nothing happened), ``MIN_WAIT`` doubling up to ``cap``."""

    def __init__(self, cap: float):
        self.cap = cap
        self.wait = 0.0

    def reset(self) -> None:
        self.wait = 0.0

    def advance(self, cap: Optional[float] = None) -> None:
        """Nothing happened: wait longer next time (up to ``cap``, or the backoff's own cap)."""
        self.wait = min(max(self.wait * 2, MIN_WAIT), self.cap if cap is None else cap)

    def sleep(self) -> None:
        """Nothing happened: sleep, then wait longer next time."""
        self.advance()
        time.sleep(self.wait)


def wait_until(test: Callable[[], bool], cap: float, timeout: Optional[float] = None) -> bool:
    """Sleep with a backoff until ``test()`` is true (returns True) or ``timeout`` seconds passed
    (returns False)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    backoff = Backoff(cap)
    while not test():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        backoff.sleep()
    return True
