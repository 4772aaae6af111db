"""The durable journal of finished fragments, and resuming from it.

One JSON object per line. The first line is a header carrying the input's fingerprint (everything
that changes the numbers, see :func:`qcmb_hpc.plan.input_fingerprint`); every other line is one
finished fragment: its label, its properties (floats written with ``repr`` precision, arrays with
their shape, so they read back to the last bit), and where and how long it ran. Only the
coordinator writes; each batch of records is flushed and fsynced before its fragments count.

Reading tolerates a torn last line (the job was killed mid-write): it is cut off and that fragment
is recomputed. Any other damage is a :class:`JournalError` naming the line.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

__all__ = ["Journal", "JournalError", "JournalMismatch", "encode_properties", "decode_properties"]

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
    out: Dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out[k] = np.array(v["data"], dtype=float).reshape(v["shape"])
        else:
            out[k] = float(v)
    return out


@dataclass
class Restored:
    records: Dict[str, Dict[str, Any]]  #: label → record
    torn: bool  #: a torn last line was cut off


class Journal:
    """Append-only journal. ``Journal.open`` reads what is there (resume) and positions for appending."""

    def __init__(self, path: str, fh: Any, restored: Dict[str, Dict[str, Any]], torn: bool):
        self.path = path
        self._fh = fh
        self.restored = restored
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
        torn = False
        if os.path.exists(path) and not fresh:
            restored, good_bytes, torn = cls._read(path, fingerprint)
            if good_bytes is None:  # empty file
                fresh = True
            else:
                with open(path, "r+b") as fh:
                    fh.truncate(good_bytes)
        if fresh or not os.path.exists(path):
            tmp = path + ".new"
            with open(tmp, "w") as fh:
                header = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "created": time.time(), "fragments": fragments}
                fh.write(json.dumps(header) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(path)
        fh = open(path, "a")
        return cls(path, fh, restored, torn)

    @staticmethod
    def _read(path: str, fingerprint: str) -> Tuple[Dict[str, Dict[str, Any]], Optional[int], bool]:
        with open(path, "rb") as fh:
            data = fh.read()
        if not data.strip():
            return {}, None, False
        lines = data.split(b"\n")
        # a file that does not end in a newline has a torn last line
        complete, tail = lines[:-1], lines[-1]
        torn = bool(tail.strip())
        offset = 0
        records: Dict[str, Dict[str, Any]] = {}
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
                if "label" not in obj or "properties" not in obj:
                    raise JournalError(f"checkpoint {path} is corrupt at line {lineno}: record without label/properties")
                records[obj["label"]] = obj
            offset = line_end
            good = line_end
        if good == 0:  # not even a header
            if torn:
                return {}, None, True
            raise JournalError(f"checkpoint {path} is corrupt at line 1: no header")
        return records, good, torn

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


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
