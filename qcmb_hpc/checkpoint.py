"""The durable journal of finished fragments, and resuming from it.

One JSON object per line. The first line is a header carrying the input's fingerprint (everything
that changes the numbers, see :func:`qcmb_hpc.plan.input_fingerprint`); every other line is one
finished fragment: its label, its properties (floats written with ``repr`` precision, arrays with
their shape, so they read back to the last bit), and where and how long it ran. Only the
coordinator writes; each batch of records is flushed and fsynced before its fragments count.

The header also says who started the journal and what it is for (``pid``, ``host``, ``created``:
the wall-clock start; ``fragments``; ``levels`` and ``model_chemistries``: fragments and initial
estimated cost per n-body level and per model chemistry, :func:`plan_totals`). A record also says
when its attempt started (``started``, wall clock), which attempt of the fragment it was
(``attempt``, 1 = the first) and the fragment's estimated cost (``estimate``: the scheduler's at
the time, after any in-run refit; ``estimate_initial``: the run's first). These are what
``python -m qcmb_hpc status`` and ``report`` need when a job was killed before it could write its
report. Resuming needs none of them: it reads only ``format``, ``fingerprint``, ``label``,
``properties`` and ``atomic_result``, so journals written before these fields existed resume as
they did, and a reader of the other fields (:func:`scan`, :func:`number`) takes a value of the
wrong type as missing rather than as damage.

Reading tolerates a torn last line (the job was killed mid-write): it is cut off and that fragment
is recomputed. Any other damage is a :class:`JournalError` naming the line — a line that is not
JSON, and also a record that is JSON but not a fragment record (:func:`check_record`: ``label`` a
string, ``properties`` an object whose every value decodes with :func:`decode_properties`,
``atomic_result`` absent, null or a valid ``AtomicResult``). A write cut short is never valid JSON, so a record
of the wrong shape is damage, not a torn write, wherever it is. Records are checked when the
journal is read, so a bad one is reported by its line before any work starts, not as a traceback
when the result is assembled.

Reading for status (:func:`scan`, :class:`JournalScanner`) is read-only and takes no lock: the
writer only appends whole lines and fsyncs, so a reader sees complete records and, at worst, a
line being written (a torn tail, not counted until it is whole). One parser
(:func:`parse_lines`) serves both readers.

The heartbeat (:func:`heartbeat_path`: ``<journal>.heartbeat``) is a small JSON file beside the
journal that the running coordinator replaces atomically every few seconds (and at the end) with
its live state: pid, host, when this run started, counts, fragments running, the cost-weighted
ETA. A sidecar rather than journal records because it is a snapshot, not history: nothing in it
has to survive, it never grows the journal or costs an fsync, journals stay readable by older
versions, and a reader sees the old file or the new one, never a part.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

__all__ = [
    "Journal",
    "JournalError",
    "JournalMismatch",
    "encode_properties",
    "decode_properties",
    "check_record",
    "write_atomically",
    "fragment_record",
    "plan_totals",
    "label_parts",
    "number",
    "parse_lines",
    "iter_lines",
    "scan",
    "JournalScanner",
    "heartbeat_path",
    "write_heartbeat",
    "read_heartbeat",
]

FORMAT = "qcmb_hpc-journal"
VERSION = 1


class JournalError(ValueError):
    """The journal cannot be used (corrupt, unreadable)."""


class JournalMismatch(JournalError):
    """The journal belongs to a different input."""


def encode_properties(props: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in props.items():
        if isinstance(v, (float, int, np.floating, np.integer)) and not isinstance(v, bool):
            out[k] = float(v)
        else:
            arr = np.asarray(v, dtype=float)
            out[k] = {"shape": list(arr.shape), "data": arr.ravel().tolist()}
    return out


def decode_properties(data: Dict[str, Any]) -> Dict[str, Any]:
    """The inverse of :func:`encode_properties`. A value that is not what ``encode_properties``
    writes (a number, or ``{"shape": [...], "data": [numbers]}`` with as many numbers as the shape
    holds) is a ``ValueError`` naming the property."""
    if not isinstance(data, dict):
        raise ValueError(f"properties is {_kind(data)}, not an object")
    # (keys interned: JSON's decoder makes each record's own copy of "energy", and a resume keeps
    # 600k records' properties through the run)
    if set(map(type, data.values())) == _FLOATS:  # (the usual record: energies)
        return dict(zip(map(sys.intern, data), data.values()))
    out: Dict[str, Any] = {}
    for k, v in data.items():
        out[sys.intern(k)] = _decode_value(k, v)
    return out


_FLOATS = {float}


def _decode_value(key: str, v: Any) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        raise ValueError(f"property {key!r} is {_kind(v)}, not a number or an array")
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:
            raise ValueError(f"property {key!r} is a number too large for a float") from None
    if not isinstance(v, dict):
        raise ValueError(f"property {key!r} is {_kind(v)}, not a number or an array")
    if set(v) != {"shape", "data"}:
        raise ValueError(f"property {key!r} is an object without exactly 'shape' and 'data'")
    shape, flat = v["shape"], v["data"]
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ValueError(f"property {key!r} has shape {shape!r}, not a list of sizes")
    if not isinstance(flat, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat):
        raise ValueError(f"property {key!r} has data that is not a flat list of numbers")
    size = int(np.prod(shape)) if shape else 1
    if len(flat) != size:
        raise ValueError(f"property {key!r} has {len(flat)} values for shape {shape}")
    try:
        return np.array(flat, dtype=float).reshape(shape)
    except OverflowError:
        raise ValueError(f"property {key!r} has a number too large for a float") from None


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return f"a string ({v[:20]!r})"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def check_record(obj: Dict[str, Any]) -> Dict[str, Any]:
    """Raise ``ValueError`` (saying what is wrong) unless ``obj`` is a fragment record as the
    coordinator writes it: ``label`` a string, ``properties`` decodable, ``atomic_result`` (when
    there) null or a valid ``AtomicResult``. Returns the decoded properties."""
    if "label" not in obj or "properties" not in obj:
        raise ValueError("record without label/properties")
    if not isinstance(obj["label"], str) or not obj["label"]:
        raise ValueError(f"label is {_kind(obj['label'])}, not a fragment label")
    properties = decode_properties(obj["properties"])
    atomic = obj.get("atomic_result")
    if atomic is not None:
        if not isinstance(atomic, dict):
            raise ValueError(f"atomic_result is {_kind(atomic)}, not an object")
        # kept only with protocols.cluster_results="all" (few fragments): validate it as the run
        # will rebuild it, so a bad one is named here rather than failing in pydantic later
        from pydantic import ValidationError
        from qcelemental.models.v2 import AtomicResult

        try:
            AtomicResult.model_validate(atomic)
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {}
            where = ".".join(str(x) for x in first.get("loc", ())) or "?"
            raise ValueError(f"atomic_result is not a valid AtomicResult ({where}: {first.get('msg', 'invalid')})") from None
    return properties


@dataclass
class Restored:
    records: Dict[str, Dict[str, Any]]  #: label → record
    torn: bool  #: a torn last line was cut off


def _same(label: str) -> str:
    return label


class Journal:
    """Append-only journal. ``Journal.open`` reads what is there (resume) and positions for appending."""

    def __init__(self, path: str, fh: Any, restored: Dict[Any, Dict[str, Any]], torn: bool,
                 atomic: Optional[Dict[Any, Dict[str, Any]]] = None):
        self.path = path
        self._fh = fh
        #: what resuming reads, filed under each record's key (see :meth:`open`): its properties,
        #: decoded (:func:`decode_properties`), and, for records that carry one, the AtomicResult
        #: (a dict). Records are checked (:func:`check_record`); nothing else of them is kept: at
        #: 600k records every object per record kept through the run costs ~0.1 GiB.
        self.restored = restored
        self.atomic = atomic or {}
        self.torn = torn
        self.written = 0
        self.seconds = 0.0  #: spent in :meth:`append` (writing, flushing, fsyncing): the report's ``journal_writes``

    # ------------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, path: str, fingerprint: str, *, fresh: bool = False, fragments: int = 0, info: Any = None,
        key: Optional[Callable[[str], Any]] = None,
    ) -> "Journal":
        """Open ``path`` for this input. An existing journal for the same input is read (its records
        are in ``.restored``); one for another input raises :class:`JournalMismatch` unless ``fresh``,
        which replaces it. ``info`` (or what calling it gives: it is called only when a new journal
        is started) goes into a new journal's header (:func:`plan_totals`). ``key``: label → what
        to file a record under (a run gives its task id, so that no label read is kept), None to
        leave the record out; by default the label. A later record of a label replaces an earlier."""
        path = os.path.abspath(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        restored: Dict[Any, Dict[str, Any]] = {}
        atomic: Dict[Any, Dict[str, Any]] = {}
        torn = False
        if os.path.exists(path) and not fresh:
            restored, atomic, good_bytes, torn = cls._read(path, fingerprint, key or _same)
            if good_bytes is None:  # empty file
                fresh = True
            else:
                with open(path, "r+b") as fh:
                    fh.truncate(good_bytes)
        if fresh or not os.path.exists(path):
            header = {
                "format": FORMAT,
                "version": VERSION,
                "fingerprint": fingerprint,
                "created": time.time(),
                "fragments": fragments,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                **((info() if callable(info) else info) or {}),
            }
            write_atomically(path, json.dumps(header) + "\n")
        fh = open(path, "a")
        return cls(path, fh, restored, torn, atomic)

    @staticmethod
    def _read(path: str, fingerprint: str, key: Callable[[str], Any]) -> Tuple[Dict[Any, Dict[str, Any]], Dict[Any, Dict[str, Any]], Optional[int], bool]:
        try:
            return Journal._read_lines(path, fingerprint, key)
        except JournalError:
            with open(path, "rb") as fh:
                if not fh.read().strip():  # only whitespace: an empty journal, not a damaged one
                    return {}, {}, None, False
            raise

    @staticmethod
    def _read_lines(path: str, fingerprint: str, key: Callable[[str], Any]) -> Tuple[Dict[Any, Dict[str, Any]], Dict[Any, Dict[str, Any]], Optional[int], bool]:
        records: Dict[Any, Dict[str, Any]] = {}
        atomic: Dict[Any, Dict[str, Any]] = {}
        state = _Pass()
        with open(path, "rb") as fh:
            # line by line, each record reduced to its properties as it is read: the whole file
            # and every full record at once would be ~1 GB at 600k records, and what outlives a
            # line is interleaved with what does not (pymalloc keeps the holes: ~0.2 GiB at 600k)
            for lineno, obj in iter_lines(fh, path, 1, state):
                if lineno == 1:
                    if obj.get("format") != FORMAT:
                        raise JournalError(f"checkpoint {path} is not a qcmb_hpc journal (line 1)")
                    if obj.get("fingerprint") != fingerprint:
                        raise JournalMismatch(
                            f"checkpoint {path} belongs to a different input (fingerprint differs); "
                            "use --fresh to discard it or --checkpoint to choose another file"
                        )
                    continue
                try:
                    properties = check_record(obj)
                except ValueError as exc:
                    # valid JSON is a complete write: a record of the wrong shape is damage, even last
                    raise JournalError(f"checkpoint {path} is corrupt at line {lineno}: {exc}") from None
                k = key(obj["label"])
                if k is None:
                    continue
                records[k] = properties
                if obj.get("atomic_result") is not None:
                    atomic[k] = obj["atomic_result"]
                else:
                    atomic.pop(k, None)
        if not state.seen:  # an empty file (or only whitespace)
            return {}, {}, None, False
        if state.good == 0:  # not even a header
            if state.torn:
                return {}, {}, None, True
            raise JournalError(f"checkpoint {path} is corrupt at line 1: no header")
        return records, atomic, state.good, state.torn

    def release(self) -> None:
        """Forget what was read (the run has taken what it needs): a resume's records need not
        stay in memory through the run and its assembly."""
        self.restored = {}
        self.atomic = {}

    # ------------------------------------------------------------------------------------------
    def append(self, records: Iterable[Dict[str, Any]]) -> int:
        """Write records, flush and fsync (one fsync per batch). Returns how many were written."""
        t0 = time.perf_counter()
        lines = [json.dumps(r, separators=(",", ":")) + "\n" for r in records]
        if not lines:
            return 0
        self._fh.write("".join(lines))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.written += len(lines)
        self.seconds += time.perf_counter() - t0
        return len(lines)

    def close(self) -> None:
        try:
            self._fh.close()
        except Exception:
            pass


def write_atomically(path: str, text: Union[str, Iterable[str]], durable: bool = True) -> None:
    """Replace ``path`` by ``text`` (or the pieces of it, in order) durably: a uniquely named temporary file in the same directory,
    fsynced, renamed over ``path`` (readers see the old file or the new one, never a part; an
    existing file's permissions are kept, a new file gets those the user's umask gives, as
    ``open`` would), then the directory fsynced. The one way this project writes a whole file:
    the journal's header, the cost history, the command line's result and report, the heartbeat
    (``durable=False``: still atomic for readers, but no fsync — a snapshot replaced every few
    seconds need not survive a crash of the machine)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            for piece in ((text,) if isinstance(text, str) else text):
                fh.write(piece)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        try:  # mkstemp makes 0600: a group on a cluster could not read the result
            mode = os.stat(path).st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path)


def _umask() -> int:
    """This process's umask (reading it means setting it: put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# ------------------------------------------------------------------------------------------------
# what a record and the header say besides the numbers
# ------------------------------------------------------------------------------------------------


def fragment_record(
    label: str,
    out: Any,
    attempt: int = 1,
    estimate: Optional[float] = None,
    estimate_initial: Optional[float] = None,
) -> Dict[str, Any]:
    """The journal record of a successful attempt ``out`` (a FragmentOutcome) of fragment ``label``."""
    rec: Dict[str, Any] = {
        "label": label,
        "properties": encode_properties(out.properties or {}),
        "seconds": out.seconds,
        "worker": out.worker,
        "host": out.host,
        "started": out.started,
        "attempt": attempt,
    }
    if estimate is not None:
        rec["estimate"] = estimate
    if estimate_initial is not None:
        rec["estimate_initial"] = estimate_initial
    if out.atomic_result is not None:
        rec["atomic_result"] = out.atomic_result.model_dump(mode="json")
    return rec


def plan_totals(tasks: Iterable[Any]) -> Dict[str, Any]:
    """Per n-body level and per model chemistry: ``{"fragments": n, "estimate": initial estimated
    cost}`` (keys are strings, as JSON has them), and the whole ``estimate``. (Counted per (level,
    model chemistry, estimate) — a handful of groups — rather than row by row per fragment.)"""
    groups = collections.Counter((t.nbody, t.mc, float(t.cost)) for t in tasks)
    levels: Dict[str, Dict[str, float]] = {}
    mcs: Dict[str, Dict[str, float]] = {}
    total = 0.0
    for (nbody, mc, c), n in groups.items():
        total += c * n
        for table, key in ((levels, str(nbody)), (mcs, str(mc))):
            row = table.get(key)
            if row is None:
                row = table[key] = {"fragments": 0, "estimate": 0.0}
            row["fragments"] += n
            row["estimate"] += c * n
    return {"estimate": total, "levels": levels, "model_chemistries": mcs}


def label_parts(label: str) -> Tuple[str, int]:
    """(model chemistry, n-body level) of a QCManyBody label ``json.dumps([mc, real, basis])``;
    ``("?", 0)`` for a label that is not one."""
    try:
        mc, real, _basis = json.loads(label)
        return str(mc), len(real)
    except (ValueError, TypeError):
        return "?", 0


def number(obj: Any, key: str) -> Optional[float]:
    """``obj[key]`` if it is a finite number (not a boolean), else None: how a reader takes the
    fields resuming does not need — a value of the wrong type is missing, not damage."""
    v = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if v == v and v not in (float("inf"), float("-inf")) else None


# ------------------------------------------------------------------------------------------------
# reading: one parser for resuming and for status
# ------------------------------------------------------------------------------------------------


class _Pass:
    """How far one pass of :func:`iter_lines` got: bytes up to the end of the last good line,
    whether the end was torn, whether anything but whitespace was seen."""

    __slots__ = ("good", "torn", "seen")

    def __init__(self) -> None:
        self.good = 0
        self.torn = False
        self.seen = False


def iter_lines(lines: Iterable[bytes], path: str, first_lineno: int, state: _Pass) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """``(line number, object)`` of each complete JSON-object line of ``lines`` (pieces that end
    with a newline, as iterating a binary file gives them, the last one perhaps without), with
    ``state`` filled in at the end: see :func:`parse_lines` for what is torn and what is damage."""
    bad: Optional[int] = None  # a line that is not a JSON object: torn if it is the last one
    offset = 0
    for k, raw in enumerate(lines):
        if raw.strip():
            state.seen = True
        if not raw.endswith(b"\n"):  # the last piece, without its newline
            if raw.strip():
                state.torn = True
            break
        if bad is not None:  # a bad line with another complete line after it: damage
            raise JournalError(f"checkpoint {path} is corrupt at line {bad}: not a JSON record")
        try:
            obj = _loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
        except ValueError:
            bad = first_lineno + k
            continue
        offset += len(raw)
        state.good = offset
        yield first_lineno + k, obj
    if bad is not None:
        if state.torn:  # ... or with a torn piece after it
            raise JournalError(f"checkpoint {path} is corrupt at line {bad}: not a JSON record")
        state.torn = True  # killed after the newline of a partial write? treat the last line as torn


_scan_once = json.JSONDecoder().scan_once
_JSON_SPACE = " \t\n\r"


def _loads(raw: bytes) -> Any:
    """``json.loads(raw)`` for one journal line, the same value or the same error, without its
    per-call Python overhead (~3× slower than the parse itself: encoding detection, two regular
    expressions) for the usual line — ASCII starting with ``{``, as the journal writes them —
    which goes straight to the decoder's C scanner; anything else to ``json.loads`` itself."""
    if raw[:1] == b"{" and raw[1:2] != b"\x00":  # (json.loads would take such bytes as UTF-8 too)
        try:
            s = raw.decode("utf-8")
            obj, end = _scan_once(s, 0)
        except (UnicodeDecodeError, StopIteration, ValueError):
            return json.loads(raw)  # (its own error, exactly)
        if end == len(s) or not s[end:].strip(_JSON_SPACE):
            return obj
    return json.loads(raw)


def parse_lines(data: bytes, path: str, first_lineno: int = 1) -> Tuple[List[Tuple[int, Dict[str, Any]]], int, bool]:
    """The complete JSON-object lines of ``data`` (a journal, or its part from a line start):
    ``([(line number, object)], bytes up to the end of the last good line, torn)``. A last piece
    without its newline is torn; so is a last line that is not JSON (a partial write that got its
    newline). A line that is not a JSON object anywhere else is a :class:`JournalError`."""
    state = _Pass()
    out = list(iter_lines(io.BytesIO(data), path, first_lineno, state))
    return out, state.good, state.torn


class JournalScanner:
    """Reads a journal that another process may be writing: read-only, no locks, from where the
    last :meth:`update` stopped (a journal replaced or cut back — a ``--fresh`` rerun, a resume
    cutting a torn line — is read again from the start). ``header`` is line 1; ``records`` the
    fragment records (properties dropped: only what status and report need is kept)."""

    KEEP = ("label", "seconds", "worker", "host", "started", "attempt", "estimate", "estimate_initial")

    def __init__(self, path: str):
        self.path = path
        self._reset()

    def _reset(self) -> None:
        self.header: Optional[Dict[str, Any]] = None
        self.records: List[Dict[str, Any]] = []
        self.torn = False
        self._offset = 0
        self._lineno = 1
        self._ident: Any = None

    def update(self) -> "JournalScanner":
        """Read what was appended since the last call. Raises OSError (cannot read) and
        :class:`JournalError` (not a journal, or corrupt before its last line)."""
        with open(self.path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if (st.st_dev, st.st_ino) != self._ident or st.st_size < self._offset:
                self._reset()
                self._ident = (st.st_dev, st.st_ino)
            fh.seek(self._offset)
            data = fh.read()
        parsed, good, self.torn = parse_lines(data, self.path, self._lineno)
        for lineno, obj in parsed:
            if lineno == 1:
                if obj.get("format") != FORMAT:
                    raise JournalError(f"{self.path} is not a qcmb_hpc journal (line 1)")
                self.header = obj
            elif isinstance(obj.get("label"), str):
                self.records.append({k: obj[k] for k in self.KEEP if k in obj})
            else:
                raise JournalError(f"checkpoint {self.path} is corrupt at line {lineno}: record without label")
        self._offset += good
        self._lineno += len(parsed)
        if self.header is None and not self.torn and self._offset == 0 and data.strip():
            raise JournalError(f"checkpoint {self.path} is corrupt at line 1: no header")
        return self


def scan(path: str) -> JournalScanner:
    """The journal at ``path`` as it is now (see :class:`JournalScanner`)."""
    return JournalScanner(path).update()


def heartbeat_path(journal_path: str) -> str:
    """Where the run writing ``journal_path`` keeps its heartbeat."""
    return journal_path + ".heartbeat"


def write_heartbeat(path: str, doc: Dict[str, Any]) -> None:
    """Replace the heartbeat (atomically, without fsync: see the module docstring)."""
    write_atomically(path, json.dumps(doc, separators=(",", ":")), durable=False)


def read_heartbeat(path: str) -> Optional[Dict[str, Any]]:
    """The heartbeat at ``path``, or None if there is none (or it is not one: it is only a hint)."""
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == HEARTBEAT_FORMAT else None


HEARTBEAT_FORMAT = "qcmb_hpc-heartbeat"
