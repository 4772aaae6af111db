"""The errors qcmb_hpc raises. All pickle (they travel from rank 0 to every MPI rank)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

__all__ = [
    "describe_validation_error",
    "QCMBError",
    "InputDataError",
    "ParallelExecutionError",
    "FragmentExecutionError",
    "IncompleteRunError",
]


def describe_validation_error(exc: BaseException, limit: int = 3) -> str:
    """One line for a pydantic ``ValidationError`` (v2 or v1): ``field.path: problem; …``. A list
    of allowed values is said with each value once (an enum with aliases repeats them)."""
    import re

    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return " ".join(str(exc).split())[:400]
    parts = []
    items = list(errors())
    for err in items[:limit]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
        msg = str(err.get("msg", ""))
        m = re.match(r"^(Input should be )(.*)$", msg)
        if m:
            choices = list(dict.fromkeys(re.findall(r"'[^']*'", m.group(2))))
            if len(choices) > 1:
                msg = m.group(1) + ", ".join(choices[:-1]) + " or " + choices[-1]
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(parts) + more


class QCMBError(Exception):
    """Base class."""


class InputDataError(QCMBError, ValueError):
    """The input cannot be run as given (bad molecule, unknown program, bad setting, foreign
    checkpoint). The CLI prints it on one line and exits 2."""


class ParallelExecutionError(QCMBError, RuntimeError):
    """The parallel machinery failed (workers could not start, a transport broke, every worker was
    lost) — not the chemistry. With ``fallback_to_sequential`` the run continues sequentially instead."""


#: failed fragments named in the message of a :class:`FragmentExecutionError` / shown by its
#: ``details()`` (a run where every one of 680k fragments fails must not print 680k paragraphs)
MESSAGE_FAILURES = 5
DETAIL_FAILURES = 20


class FragmentExecutionError(QCMBError, RuntimeError):
    """One or more fragments failed for good. ``failures`` holds, per fragment, its label, program
    and every attempt (worker, host, error type and the engine's message). Every other fragment was
    finished and checkpointed first — unless the failures were systematic (``systematic``: the
    first fragments to fail all failed alike before any succeeded, see
    :func:`qcmb_hpc.failures.is_systematic`), when the run stopped at once, keeping what finished."""

    def __init__(
        self, failures: List[Dict[str, Any]], completed: int = 0, total: int = 0, systematic: Optional[Dict[str, Any]] = None
    ):
        self.failures = failures
        self.completed = completed
        self.total = total
        self.systematic = systematic
        super().__init__(self._systematic_message() if systematic else self._message())

    def _systematic_message(self) -> str:
        from .failures import distinct, fix_hint

        s = self.systematic or {}
        labels = s.get("labels", [])
        programs = ", ".join(distinct((f.get("program") or "?" for f in self.failures), 3))
        shown = "; ".join(labels[:3]) + (f"; and {len(labels) - 3} more" if len(labels) > 3 else "")
        return (
            f"{programs} failed the same way for the first {len(labels)} fragments and none succeeded, so the run "
            f"stopped (a systematic error: the other fragments would fail alike): {s.get('error_type')}: "
            f"«{s.get('line')}» (fragments {shown}). To fix: {fix_hint(s.get('error_type', ''), s.get('line', ''))}; "
            f"then run again ({self.completed} of {self.total} fragments finished and kept)"
        )

    def _message(self) -> str:
        from .failures import meaningful_line

        parts = []
        for f in self.failures[:MESSAGE_FAILURES]:
            attempts = f.get("attempts", [])
            last = attempts[-1] if attempts else {}
            where = ", ".join(sorted({f"worker {a.get('worker')}@{a.get('host') or '?'}" for a in attempts}))
            parts.append(
                f"fragment {f['label']} (program {f.get('program')}) failed after {len(attempts)} attempt(s) "
                f"on {where or '?'}: {last.get('error_type', 'error')}: {meaningful_line(last.get('error_message'))}"
            )
        head = f"{len(self.failures)} fragment(s) failed"
        if self.total:
            head += f" ({self.completed} of {self.total} finished and checkpointed)"
        more = len(self.failures) - MESSAGE_FAILURES
        return head + ": " + "; ".join(parts) + (f"; and {more} more (see .failures)" if more > 0 else "")

    def __reduce__(self):
        return (type(self), (self.failures, self.completed, self.total, self.systematic))

    def details(self, limit: Optional[int] = DETAIL_FAILURES, lines: int = 1) -> str:
        """Every attempt of the first ``limit`` failed fragments (None: all): where it ran, how long,
        and what the engine said — its meaningful line, or the last ``lines`` lines of its text
        when ``lines`` > 1. (A systematic failure shows one fragment: the others are alike.)"""
        from .failures import meaningful_line

        out = []
        if self.systematic and limit is not None:
            limit = 1
        shown = self.failures if limit is None else self.failures[:limit]
        for f in shown:
            out.append(f"fragment {f['label']} (program {f.get('program')}):")
            for k, a in enumerate(f.get("attempts", []), start=1):
                text = a.get("error_message") or ""
                said = [meaningful_line(text)] if lines <= 1 else text.strip().splitlines()[-lines:]
                out.append(
                    f"  attempt {k} on worker {a.get('worker')} ({a.get('host') or '?'}), {a.get('seconds', 0):.2f} s: "
                    f"{a.get('error_type')}: " + (said[0] if lines <= 1 else "")
                )
                if lines > 1:
                    out.extend("    " + ln for ln in said)
        if len(shown) < len(self.failures):
            out.append(f"... and {len(self.failures) - len(shown)} more failed fragment(s), not shown")
        return "\n".join(out)


class IncompleteRunError(QCMBError, RuntimeError):
    """The run was stopped (a signal: SIGTERM, SIGINT, SIGUSR1) before every fragment finished.
    Everything finished is in the checkpoint; running the same input again resumes."""

    def __init__(self, reason: str, completed: int, total: int, checkpoint: Optional[str]):
        self.reason = reason
        self.completed = completed
        self.total = total
        self.checkpoint = checkpoint
        where = f"; {checkpoint} holds them: run the same command again to resume" if checkpoint else (
            "; no checkpoint was kept (set ParallelConfig.checkpoint to make runs resumable)"
        )
        super().__init__(f"stopped by {reason} with {completed} of {total} fragments finished{where}")

    def __reduce__(self):
        return (type(self), (self.reason, self.completed, self.total, self.checkpoint))
