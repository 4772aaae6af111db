"""Signals: the one save/restore of handlers (:func:`handling`), and what a stop request does
during a run (:class:`StopSignals`).

SIGINT, SIGTERM and SIGUSR1 are the *stop signals* (Ctrl-C; Slurm's TERM at the time limit and
the USR1 warning ``--signal=B:USR1@120`` sends before it). During a run they ask the coordinator
to stop; worker processes and worker ranks ignore them (the coordinator decides, and tells them).
Handlers can only be set from the main thread: elsewhere :func:`handling` changes nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Dict, Iterator, Optional, Sequence

__all__ = ["STOP_SIGNALS", "handling", "StopSignals", "stop_received"]

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


@contextlib.contextmanager
def handling(handler: Any, names: Sequence[str] = STOP_SIGNALS) -> Iterator[Dict[int, Any]]:
    """While active, ``handler`` (a function, ``signal.SIG_IGN`` or ``SIG_DFL``) handles the
    signals ``names`` (main thread only); the handlers before are back afterwards. Yields them."""
    previous: Dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for name in names:
            sig = getattr(signal, name)
            previous[sig] = signal.signal(sig, handler)
    try:
        yield previous
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)


#: the stop signal a run in this process received (None: none yet). The command line reads it
#: (:func:`stop_received`): once a run is stopping, later stop signals — Slurm sends TERM to every
#: process of the step, srun forwards it again — are ignored, so they cannot kill the process
#: between the end of the run and its report of what it saved.
_STOP_RECEIVED: Optional[str] = None


def stop_received() -> Optional[str]:
    """The stop signal a run in this process received, if any."""
    return _STOP_RECEIVED


class StopSignals:
    """While active: a stop signal asks the coordinator to stop (no new work, running fragments
    get the grace period); a second one cuts them at once."""

    def __init__(self, coordinator: Any):
        self.coordinator = coordinator
        self.received: Optional[str] = None
        self._active: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        global _STOP_RECEIVED
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            _STOP_RECEIVED = _STOP_RECEIVED or name
            self.coordinator.request_stop(name)
        else:
            self.coordinator.grace_period = 0.0
            if self.coordinator.stop_deadline is not None:
                self.coordinator.stop_deadline = 0.0

    def __enter__(self) -> "StopSignals":
        self._active = handling(self._handler)
        self._active.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._active.__exit__(*exc)
