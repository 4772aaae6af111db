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
    finished and checkpointed first."""

    def __init__(self, failures: List[Dict[str, Any]], completed: int = 0, total: int = 0):
        self.failures = failures
        self.completed = completed
        self.total = total
        super().__init__(self._message())

    def _message(self) -> str:
        parts = []
        for f in self.failures[:MESSAGE_FAILURES]:
            attempts = f.get("attempts", [])
            last = attempts[-1] if attempts else {}
            where = ", ".join(sorted({f"worker {a.get('worker')}@{a.get('host') or '?'}" for a in attempts}))
            text = (last.get("error_message") or "").strip()
            first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
            parts.append(
                f"fragment {f['label']} (program {f.get('program')}) failed after {len(attempts)} attempt(s) "
                f"on {where or '?'}: {last.get('error_type', 'error')}: {first[:500]}"
            )
        head = f"{len(self.failures)} fragment(s) failed"
        if self.total:
            head += f" ({self.completed} of {self.total} finished and checkpointed)"
        more = len(self.failures) - MESSAGE_FAILURES
        return head + ": " + "; ".join(parts) + (f"; and {more} more (see .failures)" if more > 0 else "")

    def __reduce__(self):
        return (type(self), (self.failures, self.completed, self.total))

    def details(self, limit: Optional[int] = DETAIL_FAILURES) -> str:
        """Every attempt of the first ``limit`` failed fragments (None: all), with the error text."""
        lines = []
        shown = self.failures if limit is None else self.failures[:limit]
        for f in shown:
            lines.append(f"fragment {f['label']} (program {f.get('program')}):")
            for k, a in enumerate(f.get("attempts", []), start=1):
                lines.append(
                    f"  attempt {k} on worker {a.get('worker')} ({a.get('host') or '?'}), {a.get('seconds', 0):.2f} s: "
                    f"{a.get('error_type')}"
                )
                for ln in (a.get("error_message") or "").strip().splitlines()[-20:]:
                    lines.append("    " + ln)
        if len(shown) < len(self.failures):
            lines.append(f"... and {len(self.failures) - len(shown)} more failed fragment(s), not shown")
        return "\n".join(lines)


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
