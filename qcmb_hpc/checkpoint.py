"""The durable journal of finished fragments, and resuming from it.

One JSON object per line. The first line is a header carrying the input's fingerprint (everything
that changes the numbers, see :func:`qcmb_hpc.plan.input_fingerprint`); every other line is one
finished fragment: its label, its properties (floats written with ``repr`` precision, arrays with
their shape, so they read back to the last bit), and where and how long it ran. Only the
coordinator writes; each batch of records is flushed and fsynced before its fragments count.

Reading tolerates a torn last line (the job was killed mid-write): it is cut off and that fragment
is recomputed. Any other damage is a :class:`JournalError` naming the line — a line that is not
JSON, and also a record that is JSON but not a fragment record (:func:`check_record`: ``label`` a
string, ``properties`` an object whose every value decodes with :func:`decode_properties`,
``atomic_result`` absent, null or a valid ``AtomicResult``). A write cut short is never valid JSON, so a record
of the wrong shape is damage, not a torn write, wherever it is. Records are checked when the
journal is read, so a bad one is reported by its line before any work starts, not as a traceback
when the result is assembled.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

__all__ = ["Journal", "JournalError", "JournalMismatch", "encode_properties", "decode_properties", "check_record", "write_atomically"]

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
    out: Dict[str, Any] = {}
    for k, v in data.items():
        out[k] = _decode_value(k, v)
    return out


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


def check_record(obj: Dict[str, Any]) -> None:
    """Raise ``ValueError`` (saying what is wrong) unless ``obj`` is a fragment record as the
    coordinator writes it: ``label`` a string, ``properties`` decodable, ``atomic_result`` (when
    there) null or a valid ``AtomicResult``."""
    if "label" not in obj or "properties" not in obj:
        raise ValueError("record without label/properties")
    if not isinstance(obj["label"], str) or not obj["label"]:
        raise ValueError(f"label is {_kind(obj['label'])}, not a fragment label")
    decode_properties(obj["properties"])
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


@dataclass
class Restored:
    records: Dict[str, Dict[str, Any]]  #: label → record
    torn: bool  #: a torn last line was cut off


class Journal:
    """Append-only journal. ``Journal.open`` reads what is there (resume) and positions for appending."""

    def __init__(self, path: str, fh: Any, restored: Dict[str, Dict[str, Any]], torn: bool, lines: Optional[Dict[str, int]] = None):
        self.path = path
        self._fh = fh
        self.restored = restored  #: label → record (checked with :func:`check_record`)
        self.lines = lines or {}  #: label → the line its record is on (to name it in a later error)
        self.torn = torn
        self.written = 0

    # ------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str, fingerprint: str, *, fresh: bool = False, fragments: int = 0) -> "Journal":
        """Open ``path`` for this input. An existing journal for the same input is read (its records
        are in ``.restored``); one for another input raises :class:`JournalMismatch` unless ``fresh``,
        which replaces it."""
        path = os.path.abspath(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        restored: Dict[str, Dict[str, Any]] = {}
        lines: Dict[str, int] = {}
        torn = False
        if os.path.exists(path) and not fresh:
            restored, good_bytes, torn, lines = cls._read(path, fingerprint)
            if good_bytes is None:  # empty file
                fresh = True
            else:
                with open(path, "r+b") as fh:
                    fh.truncate(good_bytes)
        if fresh or not os.path.exists(path):
            header = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "created": time.time(), "fragments": fragments}
            write_atomically(path, json.dumps(header) + "\n")
        fh = open(path, "a")
        return cls(path, fh, restored, torn, lines)

    @staticmethod
    def _read(path: str, fingerprint: str) -> Tuple[Dict[str, Dict[str, Any]], Optional[int], bool, Dict[str, int]]:
        with open(path, "rb") as fh:
            data = fh.read()
        if not data.strip():
            return {}, None, False, {}
        lines = data.split(b"\n")
        # a file that does not end in a newline has a torn last line
        complete, tail = lines[:-1], lines[-1]
        torn = bool(tail.strip())
        offset = 0
        records: Dict[str, Dict[str, Any]] = {}
        where: Dict[str, int] = {}
        good = 0
        for lineno, raw in enumerate(complete, start=1):
            line_end = offset + len(raw) + 1
            try:
                obj = json.loads(raw)
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
            except ValueError:
                if lineno == len(complete) and not torn:
                    torn = True  # killed after the newline of a partial write? treat the last line as torn
                    break
                raise JournalError(f"checkpoint {path} is corrupt at line {lineno}: not a JSON record") from None
            if lineno == 1:
                if obj.get("format") != FORMAT:
                    raise JournalError(f"checkpoint {path} is not a qcmb_hpc journal (line 1)")
                if obj.get("fingerprint") != fingerprint:
                    raise JournalMismatch(
                        f"checkpoint {path} belongs to a different input (fingerprint differs); "
                        "use --fresh to discard it or --checkpoint to choose another file"
                    )
            else:
                try:
                    check_record(obj)
                except ValueError as exc:
                    # valid JSON is a complete write: a record of the wrong shape is damage, even last
                    raise JournalError(f"checkpoint {path} is corrupt at line {lineno}: {exc}") from None
                records[obj["label"]] = obj
                where[obj["label"]] = lineno
            offset = line_end
            good = line_end
        if good == 0:  # not even a header
            if torn:
                return {}, None, True, {}
            raise JournalError(f"checkpoint {path} is corrupt at line 1: no header")
        return records, good, torn, where

    # ------------------------------------------------------------------------------------------
    def append(self, records: Iterable[Dict[str, Any]]) -> int:
        """Write records, flush and fsync (one fsync per batch). Returns how many were written."""
        lines = [json.dumps(r, separators=(",", ":")) + "\n" for r in records]
        if not lines:
            return 0
        self._fh.write("".join(lines))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.written += len(lines)
        return len(lines)

    def close(self) -> None:
        try:
            self._fh.close()
        except Exception:
            pass


def write_atomically(path: str, text: str) -> None:
    """Replace ``path`` by ``text`` durably: a uniquely named temporary file in the same directory,
    fsynced, renamed over ``path`` (readers see the old file or the new one, never a part; an
    existing file's permissions are kept, a new file gets those the user's umask gives, as
    ``open`` would), then the directory fsynced. The one way this project writes a whole file:
    the journal's header, the cost history, the command line's result and report."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
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
