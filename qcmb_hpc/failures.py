"""Policy for failed attempts (pure functions, no I/O): retry or not, what the engine really
said, and when the failures are systematic.

* :func:`should_retry` — retry a failed attempt if retries are on, the error can succeed on a
  retry (not an input error) and the fragment has attempts left.
* :func:`meaningful_line` — the line of an engine's error text that says what went wrong (QC
  programs bury it in pages of output: QCEngine's NWChem harness reports an unknown basis as
  ``QCEngine Unknown Error: INPUT:`` followed by the whole input deck and output).
* :func:`is_systematic` — **the rule**: if the first :data:`SYSTEMATIC_AFTER` fragments of a model
  chemistry to fail for good (after their retries) did so before any fragment of that model
  chemistry succeeded in the run, and all with the same error (:func:`signature`), the error is
  the input's or the installation's, not bad luck — every other fragment of it would fail the
  same way. The run stops handing out work (an error found in the first minute is fixed in the
  first minute, not after the other levels' hours); what finished is kept. Errors of the
  machinery rather than the input (a timeout, a worker that was lost, a fragment cut by a stop)
  never count as systematic.
* :func:`hold_new_fragments` — while the evidence for that rule is coming in, no new fragments: once
  :data:`SYSTEMATIC_AFTER` fragments of a model chemistry with no success yet have failed and some of
  them await their retries, the retries go first and nothing new starts until they decide it (a
  success, failures that differ, or the stop). Otherwise a worker whose retries must go to other
  workers (they avoid the one they failed on) tries one new fragment after another while the others
  are busy — every fragment of the run, each failing alike, when the others are slow to come back.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence, Tuple

__all__ = [
    "NON_RETRYABLE_ERRORS",
    "NOT_SYSTEMATIC_ERRORS",
    "SYSTEMATIC_AFTER",
    "should_retry",
    "meaningful_line",
    "signature",
    "can_be_systematic",
    "is_systematic",
    "hold_new_fragments",
    "fix_hint",
]

#: qcengine error types that cannot succeed on a retry (bad method, basis, keywords, program)
NON_RETRYABLE_ERRORS = frozenset({"input_error"})

#: error types about resources or the run itself, never evidence of a systematic input error
NOT_SYSTEMATIC_ERRORS = frozenset({"timeout", "worker_lost", "cancelled"})

#: fragments failed for good, all alike and before any success, that make an error systematic
SYSTEMATIC_AFTER = 3


def should_retry(retryable: bool, attempts: int, retry_enabled: bool, max_retries: int) -> bool:
    """Retry after ``attempts`` failed attempts of a fragment?"""
    return bool(retry_enabled and retryable and attempts < 1 + max_retries)


# lines that are framing, not the error: QCEngine's headers, MPI's abort banner, NWChem's pointers
_NOISE = re.compile(
    r"^(QCEngine \w+ Error: (INPUT|STDOUT|STDERR):?$|STDOUT:|STDERR:|TRACEBACK:|NoneType: None|-+$|=+$|"
    r"MPI_ABORT was invoked|with errorcode|NOTE: invoking MPI_ABORT|You may or may not see output|exactly when Open MPI|"
    r"For more information see|For further details see|current input line|\d+:\s)",
    re.IGNORECASE,
)
_SETTING_LINE = re.compile(r"^[\w .()-]+=\s")  # "hardfail = no": a program's settings, not its error
_ERRORISH = re.compile(
    r"\b(error|errors|fail|fails|failed|failure|not (found|recognized|recognised|available|supported|converged?)|"
    r"non-existing|no such|cannot|can't|could not|unknown|invalid|illegal|unrecognized|missing|exceeded|abort(ed)?)\b",
    re.IGNORECASE,
)
#: true but says nothing a more specific line would not say better
_GENERIC = re.compile(r"^(there is an error in the input file|error|an error occurred)\.?$", re.IGNORECASE)
_PREFIX = re.compile(r"^\[\d+\] ARMCI Error: \d+:")  # NWChem's abort line: the text after it is the message


def meaningful_line(message: Optional[str]) -> str:
    """The line of ``message`` (an engine's error text) that says what went wrong: the first
    specific error-like line of the program's own output that is not framing or a settings
    line (one ending in ``:`` is joined with the next), else the first line that is not
    framing; at most 300 characters."""
    lines = [_PREFIX.sub("", ln.strip()).strip() for ln in (message or "").splitlines()]
    lines = [ln for ln in lines if ln]
    start = 0
    for i, ln in enumerate(lines):  # the program's own output, when QCEngine quotes the input deck first
        if ln.upper().startswith("STDOUT:"):
            start = i + 1
            break
    useful = [ln for ln in lines[start:] if not _NOISE.search(ln)] or [ln for ln in lines if not _NOISE.search(ln)]
    errorish = []
    for i, ln in enumerate(useful):
        if _ERRORISH.search(ln) and not _SETTING_LINE.match(ln):
            if ln.endswith(":") and i + 1 < len(useful) and not _ERRORISH.search(useful[i + 1]):
                ln = f"{ln} {useful[i + 1]}"
            errorish.append(ln.rstrip(":"))
    specific = [ln for ln in errorish if not _GENERIC.match(ln)]
    for found in (specific, errorish, useful, lines):
        if found:
            return _squeeze(found[0])
    return ""


def _squeeze(line: str) -> str:
    return " ".join(line.split())[:300]


def signature(error_type: str, message: Optional[str]) -> Tuple[str, str]:
    """What makes two failures "the same error": the type and the meaningful line, with numbers
    that differ from fragment to fragment (attempt counts, atom indices, timings) blanked out."""
    return error_type or "unknown_error", re.sub(r"\d+(\.\d+)?", "#", meaningful_line(message))


def can_be_systematic(error_type: str) -> bool:
    """Whether a failure with this error type is evidence for the rule (not the machinery's)."""
    return error_type not in NOT_SYSTEMATIC_ERRORS


def is_systematic(failed_for_good: Sequence[Tuple[str, str]], successes: int, todo: int, after: int = SYSTEMATIC_AFTER) -> bool:
    """The rule of the module docstring. ``failed_for_good``: the signatures of the fragments (of one
    model chemistry) that failed for good so far, in order — failures of the machinery
    (:data:`NOT_SYSTEMATIC_ERRORS`) among them are passed over; ``successes``: its fragments this
    run computed; ``todo``: its fragments this run had to compute. With fewer than ``after``
    fragments to do, every one of them must have failed alike."""
    need = max(1, min(after, todo))
    relevant = [s for s in failed_for_good if can_be_systematic(s[0])]
    if successes or len(relevant) < need:
        return False
    return all(s == relevant[0] for s in relevant[:need])


def hold_new_fragments(awaiting_retry: int, failed_for_good: int, successes: int, after: int = SYSTEMATIC_AFTER) -> bool:
    """The hold of the module docstring, for one model chemistry: ``awaiting_retry`` of its fragments
    failed and wait for another attempt, ``failed_for_good`` failed for good (both counting only
    errors that can be systematic); ``successes``: its fragments this run computed. Nothing awaiting
    a retry, nothing to wait for: no hold."""
    return not successes and awaiting_retry > 0 and awaiting_retry + failed_for_good >= after


#: (pattern on the meaningful line, what to do about it)
_HINTS: List[Tuple[str, str]] = [
    (r"basis", "check the basis set's name in the specification (the program does not know it)"),
    (r"method|functional|theory", "check the method's name in the specification (the program does not know it)"),
    (r"keyword|option|directive", "check the keywords in the specification"),
    (r"memory|alloc", "give each worker more memory (--memory-per-worker) or use fewer workers"),
    (r"not found|no such file|command not found|cannot execute|executable", "check that the program is installed and on PATH"),
    (r"converge", "loosen the convergence settings or raise the iteration limits in the keywords"),
]


def fix_hint(error_type: str, line: str) -> str:
    """A short suggestion of what to change, for the message of a systematic failure."""
    for pattern, hint in _HINTS:
        if re.search(pattern, line, re.IGNORECASE):
            return hint
    if error_type == "input_error":
        return "fix the specification (method, basis, keywords) for this program"
    return "fix the input or the installation"


def distinct(items: Iterable[str], limit: int) -> List[str]:
    """The first ``limit`` distinct items, in order."""
    return list(dict.fromkeys(items))[:limit]
