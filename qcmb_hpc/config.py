"""User settings: :class:`ParallelConfig` and the enums it uses.

Every setting is declared once, in :data:`SETTINGS` (through the field metadata of
:class:`ParallelConfig`): its type, default, ``QCMB_*`` environment variable and command-line flag.
The dataclass, :func:`config_from_environment`, the CLI parser and the README's settings table
are all generated from that one declaration, so a field added later gets its variable and its
flag for free.

Values are validated on construction: a bad value is a :class:`ValueError` that names the field
(or the environment variable / flag it came from) and the value.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

__all__ = [
    "ParallelMode",
    "LoadBalanceStrategy",
    "ParallelConfig",
    "parse_memory",
    "format_bytes",
    "config_from_environment",
    "settings_table",
]


class ParallelMode(str, enum.Enum):
    """How fragments are run: the built-in executor plugins (:mod:`qcmb_hpc.plugins`). A mode may
    also be any other plugin's name, as a string."""

    SEQUENTIAL = "sequential"  #: one worker, in this process (a thread), one fragment at a time
    MULTIPROCESSING = "multiprocessing"  #: one node, worker processes over pipes
    MPI = "mpi"  #: rank 0 coordinates, ranks 1..N-1 work, over MPI point-to-point messages
    ADAPTIVE = "adaptive"  #: the plugins decide: MPI under a launcher, else multiprocessing if >1 core, else sequential


class LoadBalanceStrategy(str, enum.Enum):
    """How tasks are placed on workers (see the README and :mod:`qcmb_hpc.schedule`)."""

    STATIC = "static"  #: LPT partition computed up front
    DYNAMIC = "dynamic"  #: one queue, largest estimate first, handed out on demand
    WORK_STEALING = "work_stealing"  #: static placement + idle workers steal unstarted work
    ADAPTIVE = "adaptive"  #: chosen per run from the task count and cost spread


# --------------------------------------------------------------------------------------------
# value parsers: each takes the raw value (any type) and returns the typed value or raises
# ValueError with a short reason (the caller adds which field/variable/flag it was).
# --------------------------------------------------------------------------------------------

_MEM_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_MEM_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory(value: Union[str, int, float]) -> int:
    """Parse a memory size to bytes.

    ``"2GB"`` is 2·10⁹ bytes, ``"2GiB"`` and ``"2G"`` are 2·2³⁰ (the single-letter suffixes follow
    Slurm, which means powers of 1024), ``"512MiB"``, ``"1.5 GiB"``; a bare number is bytes.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as '2GB' or '512MiB'")
    if isinstance(value, (int, float)):
        nbytes = float(value)
    else:
        m = _MEM_RE.match(str(value))
        if not m or m.group(2).lower() not in _MEM_UNITS:
            raise ValueError("expected a size such as '2GB', '2GiB' or '512MiB'")
        nbytes = float(m.group(1)) * _MEM_UNITS[m.group(2).lower()]
    if not math.isfinite(nbytes) or nbytes <= 0:
        raise ValueError("a memory size must be positive")
    return int(nbytes)


def format_bytes(nbytes: float) -> str:
    """``1610612736`` → ``'1.50 GiB'``."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.2f} {unit}"
    return f"{int(nbytes)} B"


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on", "y"):
        return True
    if s in ("0", "false", "no", "off", "n"):
        return False
    raise ValueError("expected true or false")


def _parse_int(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        try:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                ivalue = int(value)
            else:
                ivalue = int(str(value).strip())
        except ValueError:
            raise ValueError("expected an integer") from None
        if ivalue < minimum:
            raise ValueError(f"must be at least {minimum}")
        return ivalue

    return parse


def _parse_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    try:
        seconds = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be a positive number of seconds")
    return seconds


def _parse_enum(enum_cls: type) -> Callable[[Any], enum.Enum]:
    def parse(value: Any) -> enum.Enum:
        if isinstance(value, enum_cls):
            return value
        s = str(value).strip().lower().replace("-", "_")
        for member in enum_cls:
            if s in (member.value, member.name.lower()):
                return member
        choices = ", ".join(m.value for m in enum_cls)
        raise ValueError(f"expected one of: {choices}")

    return parse


def _parse_mode(value: Any) -> Union["ParallelMode", str]:
    """A built-in mode (a :class:`ParallelMode`) or the name of any executor plugin known here
    (:mod:`qcmb_hpc.plugins`: installed through the entry point, or registered) as a string."""
    if isinstance(value, ParallelMode):
        return value
    s = str(value).strip()
    try:
        return _parse_enum(ParallelMode)(s)
    except ValueError:
        pass
    from .plugins import plugin_names

    names = plugin_names()
    if s in names:
        return s
    choices = list(dict.fromkeys([m.value for m in ParallelMode] + names))
    raise ValueError(f"expected one of: {', '.join(choices)} (an executor plugin's name)")


def _parse_log_level(value: Any) -> str:
    s = str(value).strip().upper()
    if s not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected one of: DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return s


def _parse_path(value: Any) -> Optional[str]:
    if value is False:  # (Python's "off"; str() would make a file named "False")
        return None
    if value is True:
        raise ValueError("expected a path, or false/none for none")
    s = str(value)
    if not s.strip():
        raise ValueError("must not be empty")
    return s


_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _parse_modules(value: Any) -> List[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    else:
        items = [str(v).strip() for v in value]
    items = [v for v in items if v]
    for item in items:
        if not _MODULE_NAME.match(item):
            raise ValueError(f"{item!r} is not a module name")
    return items


def _parse_parsl_config(value: Any) -> Any:
    """A Parsl configuration: ``FILE.py`` or ``package.module``, optionally ``:NAME`` (read when
    the run starts: :func:`qcmb_hpc.parsl_plugin.load_config`), or a ``parsl.config.Config``."""
    if not isinstance(value, str):
        if type(value).__module__.split(".")[0] == "parsl" and hasattr(value, "executors"):
            return value
        raise ValueError("expected a Python file or module with a parsl.config.Config, or the Config itself")
    s = value.strip()
    where = s.rpartition(":")[0] if ":" in s and not os.path.exists(s) else s
    if where.endswith(".py") or os.sep in where:
        if not os.path.isfile(where):
            raise ValueError("no such file")
    elif not _MODULE_NAME.match(where):
        raise ValueError("expected FILE.py or a module name, optionally :NAME")
    return s


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse_optional(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "auto")):
            return None
        return parse(value)

    return parse_optional


def _setting(
    default: Any,
    parse: Callable[[Any], Any],
    help: str,
    *,
    env: Optional[str] = None,
    flag: Optional[str] = None,
    metavar: str = "VALUE",
    default_factory: Optional[Callable[[], Any]] = None,
    shown: Optional[str] = None,
):
    meta = {"parse": parse, "help": help, "env": env, "flag": flag, "metavar": metavar, "shown": shown}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ParallelConfig:
    """How a many-body expansion is run. Every field can also come from a ``QCMB_*`` environment
    variable and a command-line flag (see :func:`settings_table`)."""

    mode: Union[ParallelMode, str] = _setting(
        ParallelMode.MULTIPROCESSING,
        _parse_mode,
        "sequential, multiprocessing, mpi, adaptive, or any executor plugin's name",
        env="QCMB_PARALLEL_MODE",
        metavar="MODE",
    )
    max_workers: Optional[int] = _setting(
        None,
        _optional(_parse_int(1)),
        "number of workers (default: usable cores / threads per worker; MPI: ranks - 1); on one node never more than the fragments to compute",
        flag="--workers",
        metavar="N",
        shown='auto',
    )
    memory_limit_per_worker: Optional[Union[str, int]] = _setting(
        None,
        _optional(parse_memory),
        "memory for each worker's QC program, e.g. 2GB, 512MiB; lowers the worker count to what fits",
        env="QCMB_MEMORY_LIMIT",
        flag="--memory-per-worker",
        metavar="SIZE",
        shown='an equal share',
    )
    timeout_per_fragment: Optional[float] = _setting(
        None,
        _optional(_parse_seconds),
        "seconds after which a fragment is killed and counts as failed (retryable)",
        metavar="SECONDS",
        shown='none',
    )
    load_balancing: LoadBalanceStrategy = _setting(
        LoadBalanceStrategy.DYNAMIC,
        _parse_enum(LoadBalanceStrategy),
        "static, dynamic, work_stealing or adaptive",
        metavar="STRATEGY",
    )
    work_stealing: bool = _setting(True, _parse_bool, "idle workers take unstarted tasks from busy ones")
    tail_guard: bool = _setting(
        True,
        _parse_bool,
        "dynamic: order by each fragment's upper-quantile time and queue a fragment behind another only if both fit in the time left (see How work is scheduled)",
    )
    retry_failed_fragments: bool = _setting(True, _parse_bool, "retry a failed fragment (on another worker)")
    max_retries: int = _setting(2, _parse_int(0), "retries per fragment after the first attempt", metavar="N")
    fallback_to_sequential: bool = _setting(
        True, _parse_bool, "if the parallel machinery cannot start or breaks, continue sequentially"
    )
    progress_reporting: bool = _setting(True, _parse_bool, "report progress on the console", flag="--progress")
    log_level: str = _setting("INFO", _parse_log_level, "DEBUG, INFO, WARNING or ERROR", metavar="LEVEL")
    threads_per_worker: Optional[int] = _setting(
        None,
        _optional(_parse_int(1)),
        "cores each worker's QC program uses (qcengine ncores, OMP/MKL/OpenBLAS threads); default 1",
        metavar="N",
        shown='1 (sequential: all cores)',
    )
    isolate_fragments: bool = _setting(
        True,
        _parse_bool,
        "run fragments in a child process each worker owns, so a crash or hang costs only that child",
    )
    checkpoint: Optional[str] = _setting(
        None,
        _optional(_parse_path),
        "journal of finished fragments; a rerun with the same input resumes from it",
        metavar="PATH",
        shown='none (CLI: next to the output)',
    )
    scratch_directory: Optional[str] = _setting(
        None,
        _optional(_parse_path),
        "where per-worker scratch directories go (default $SLURM_TMPDIR, $TMPDIR or the system temp)",
        metavar="DIR",
        shown='auto',
    )
    keep_scratch: bool = _setting(False, _parse_bool, "keep per-worker scratch directories (debugging)")
    cost_history: Optional[str] = _setting(
        None,
        _optional(_parse_path),
        "file of measured fragment times; calibrates the cost model for later runs (`none`: keep none)",
        metavar="PATH",
        shown="none (CLI: `~/.cache/qcmb_hpc/cost_history.json`, under `$XDG_CACHE_HOME` if set; `--no-cost-history`)",
    )
    prefetch: Optional[int] = _setting(
        None,
        _optional(_parse_int(1)),
        "tasks queued on each worker beyond the running one (default: automatic)",
        metavar="N",
        shown='auto',
    )
    grace_period: float = _setting(
        30.0,
        _parse_seconds,
        "on SIGTERM/SIGINT/SIGUSR1, seconds running fragments get to finish before they are cut",
        metavar="SECONDS",
    )
    report_in_extras: bool = _setting(
        False,
        _parse_bool,
        "also put the run report in the result's `extras[\"qcmb_hpc\"]` (off: the result is exactly QCManyBody's)",
    )
    imports: List[str] = _setting(
        None,
        _parse_modules,
        "modules imported in the coordinator and every worker before any fragment runs",
        flag="--import",
        metavar="MODULE",
        default_factory=list,
    )

    parsl_config: Optional[Any] = _setting(
        None,
        _optional(_parse_parsl_config),
        "Parsl configuration for the `parsl` mode: a Python file or module with a `parsl.config.Config` (`config`, or `FILE.py:NAME`); implies `--mode parsl` in the adaptive mode",
        metavar="FILE_OR_MODULE",
        shown="none (the loaded DataFlowKernel, else one local block)",
    )

    def __setattr__(self, name: str, value: Any) -> None:
        """Every assignment — in the constructor and after it — is parsed and validated: a bad
        value is a ``ValueError`` naming the field, at the assignment (not deep inside a run
        later), and the field reads back in its parsed form (an enum, bytes, seconds), which
        can be assigned again. A name that is not a setting is an ``AttributeError``."""
        f = _FIELDS.get(name)
        if f is None:
            raise AttributeError(f"ParallelConfig has no setting {name!r}; settings: {', '.join(sorted(_FIELDS))}")
        try:
            parsed = f.metadata["parse"](value)
        except ValueError as exc:
            raise ValueError(f"ParallelConfig.{name}: invalid value {value!r}: {exc}") from None
        object.__setattr__(self, name, parsed)

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> "ParallelConfig":
        """Build from a mapping of field names to values; unknown names are an error."""
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"ParallelConfig: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**data)

    @classmethod
    def coerce(cls, value: Union["ParallelConfig", Mapping[str, Any], None]) -> "ParallelConfig":
        """``ParallelConfig`` → itself; dict → :meth:`from_dict`; ``None`` → sequential."""
        if isinstance(value, ParallelConfig):
            return value
        if value is None:
            return cls(mode=ParallelMode.SEQUENTIAL)
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise ValueError(f"parallel_config must be a ParallelConfig, a dict or None, got {type(value).__name__}")

    def replace(self, **changes: Any) -> "ParallelConfig":
        return dataclasses.replace(self, **changes)

    @property
    def mode_name(self) -> str:
        """The mode as a plugin name (a built-in mode's value, or a plugin's own name)."""
        return str(getattr(self.mode, "value", self.mode))

    @property
    def memory_per_worker_bytes(self) -> Optional[int]:
        return None if self.memory_limit_per_worker is None else int(self.memory_limit_per_worker)

    def to_dict(self) -> Dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.value if isinstance(v, enum.Enum) else v
        return out


_FIELDS: Dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(ParallelConfig)}


# --------------------------------------------------------------------------------------------
# the table everything else is generated from
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    flag: str
    default: Any
    help: str
    metavar: str
    is_bool: bool
    parse: Callable[[Any], Any]
    shown: Optional[str] = None


def _settings() -> List[Setting]:
    out = []
    for f in dataclasses.fields(ParallelConfig):
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(
            Setting(
                name=f.name,
                env=meta["env"] or "QCMB_" + f.name.upper(),
                flag=meta["flag"] or "--" + f.name.replace("_", "-"),
                default=default,
                help=meta["help"],
                metavar=meta["metavar"],
                is_bool=isinstance(default, bool),
                parse=meta["parse"],
                shown=meta["shown"],
            )
        )
    return out


SETTINGS: List[Setting] = _settings()


def config_values_from_environment(environ: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The fields set by ``QCMB_*`` variables, parsed; a bad value raises ``ValueError`` naming the variable."""
    environ = os.environ if environ is None else environ
    values: Dict[str, Any] = {}
    for s in SETTINGS:
        raw = environ.get(s.env)
        if raw is None or raw == "":
            continue
        try:
            values[s.name] = s.parse(raw)
        except ValueError as exc:
            raise ValueError(f"environment variable {s.env}={raw!r}: {exc}") from None
    return values


def config_from_environment(
    environ: Optional[Mapping[str, str]] = None, base: Optional[Mapping[str, Any]] = None
) -> ParallelConfig:
    """A :class:`ParallelConfig` from ``QCMB_*`` variables, on top of ``base`` (field → value)."""
    values = dict(base or {})
    values.update(config_values_from_environment(environ))
    return ParallelConfig.from_dict(values)


def settings_table() -> str:
    """The README's settings table (markdown)."""

    def show(v: Any) -> str:
        if isinstance(v, enum.Enum):
            return f"`{v.value}`"
        if v is None:
            return "none"
        if isinstance(v, list):
            return "none" if not v else ", ".join(v)
        return f"`{v}`"

    rows = ["| ParallelConfig field | environment variable | CLI flag | default | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        flag = f"`{s.flag}` / `--no-{s.flag[2:]}`" if s.is_bool else f"`{s.flag} {s.metavar}`"
        default = s.shown if s.shown is not None else show(s.default)
        rows.append(f"| `{s.name}` | `{s.env}` | {flag} | {default} | {s.help} |")
    return "\n".join(rows)
