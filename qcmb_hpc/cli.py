"""``python -m qcmb_hpc [INPUT] [options]``: run a ManyBodyInput (JSON or YAML, schema v1 or v2).

``python -m qcmb_hpc status PATH`` says how far along a run is (:mod:`qcmb_hpc.status`) and
``python -m qcmb_hpc report PATH`` draws its report (:mod:`qcmb_hpc.visualize`); see
:data:`SUBCOMMANDS`.

Exit codes (:data:`EXIT_CODES`):

====  ====================================================================================
0     success: the result is written
1     a fragment failed for good (after retries); every other fragment is in the checkpoint
2     bad usage or bad input (missing/unreadable file, not JSON/YAML, not a ManyBodyInput,
      unknown program, one-fragment molecule, bad option value, checkpoint of another input,
      corrupt checkpoint, resources that fit no worker)
3     stopped by SIGTERM or SIGUSR1 (e.g. Slurm's time-limit warning) before the end:
      incomplete, resumable — run the same command again
4     the parallel machinery failed and ``--no-fallback-to-sequential`` was given
130   interrupted (SIGINT / Ctrl-C): incomplete, resumable
====  ====================================================================================

Errors a user can cause print one line on stderr, never a traceback. Settings come from the
``QCMB_*`` environment variables, then the flags (flags win). Without ``--mode`` (or
``QCMB_PARALLEL_MODE``) the mode is adaptive: MPI under mpiexec/srun, else all cores of this node.

Cost history: unlike the Python API (no history unless asked), the command line records every
run's fragment timings, and calibrates its estimates from earlier runs, in a per-user cache file
(:func:`default_cost_history`: ``$XDG_CACHE_HOME/qcmb_hpc/cost_history.json``, else
``~/.cache/qcmb_hpc/cost_history.json``). ``--cost-history PATH`` / ``QCMB_COST_HISTORY`` choose
another file (``none`` for none); ``--no-cost-history`` keeps none. The history never fails a run:
a file that cannot be read or written is a one-line warning (see :mod:`qcmb_hpc.cost`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence

from .config import SETTINGS, ParallelConfig, ParallelMode, config_values_from_environment
from .errors import FragmentExecutionError, IncompleteRunError, InputDataError, ParallelExecutionError

__all__ = [
    "main",
    "EXIT_CODES",
    "load_input",
    "default_output",
    "default_checkpoint",
    "default_report",
    "SUBCOMMANDS",
    "default_cost_history",
    "bundled_example",
]

EXIT_OK, EXIT_FRAGMENT, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_PARALLEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FRAGMENT: "a fragment failed for good",
    EXIT_USAGE: "bad usage or bad input",
    EXIT_INCOMPLETE: "stopped by SIGTERM/SIGUSR1: incomplete, resumable",
    EXIT_PARALLEL: "the parallel machinery failed (no fallback)",
    EXIT_INTERRUPTED: "interrupted (SIGINT): incomplete, resumable",
}

logger = logging.getLogger("qcmb_hpc")
_SETTING = {s.name: s for s in SETTINGS}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(message)


def bundled_example() -> str:
    """Path of the example run when no INPUT is given: the (H2O)6 ring (a published structure),
    DF-MP2/cc-pVDZ with PySCF (installed by pip alone), CP and NoCP through 3-body."""
    from importlib import resources

    return str(resources.files("qcmb_hpc.examples").joinpath("water6_pyscf.json"))


def default_output(input_path: str) -> str:
    """``water.json`` → ``water.result.json`` (in the input's directory)."""
    stem, _ = os.path.splitext(input_path)
    return stem + ".result.json"


def _output_stem(output_path: str) -> str:
    for suffix in (".result.json", ".json"):
        if output_path.endswith(suffix):
            return output_path[: -len(suffix)]
    return output_path


def default_checkpoint(output_path: str) -> str:
    """Next to the output: ``water.result.json`` → ``water.checkpoint.jsonl``."""
    return _output_stem(output_path) + ".checkpoint.jsonl"


def default_report(output_path: str) -> str:
    """Next to the output: ``water.result.json`` → ``water.report.json`` (how the run went)."""
    return _output_stem(output_path) + ".report.json"


def default_cost_history(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The command line's per-user cost history: ``$XDG_CACHE_HOME/qcmb_hpc/cost_history.json``
    (an absolute ``XDG_CACHE_HOME`` only, as the XDG spec says), else under ``~/.cache``; None if
    there is no home directory to put it in."""
    env = os.environ if environ is None else environ
    cache = env.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(cache):
        home = env.get("HOME") or os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        cache = os.path.join(home, ".cache")
    return os.path.join(cache, "qcmb_hpc", "cost_history.json")


def with_cost_history(
    config: ParallelConfig, args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None
) -> ParallelConfig:
    """The command line's cost-history policy: ``--no-cost-history`` → none; a path (or ``none``)
    from ``--cost-history`` or ``QCMB_COST_HISTORY`` → that; else :func:`default_cost_history`."""
    env = os.environ if environ is None else environ
    given = args.cfg_cost_history is not None
    if args.no_cost_history:
        if given:
            raise UsageError("--cost-history and --no-cost-history exclude each other")
        return config.replace(cost_history=None)
    if given or env.get(_SETTING["cost_history"].env):
        return config
    return config.replace(cost_history=default_cost_history(env))


def load_input(path: str) -> Dict[str, Any]:
    """Read a ManyBodyInput document (JSON, or YAML for .yaml/.yml or when it is not JSON)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise InputDataError(f"input file {path} does not exist") from None
    except IsADirectoryError:
        raise InputDataError(f"input {path} is a directory, not a file") from None
    except OSError as exc:
        raise InputDataError(f"cannot read input file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputDataError(f"input file {path} is not text (JSON or YAML expected)") from None
    ext = os.path.splitext(path)[1].lower()
    if ext == ".xyz" or _looks_like_xyz(text):
        stem = os.path.splitext(os.path.basename(path))[0]
        raise InputDataError(
            f"input file {path} is an XYZ geometry, not a ManyBodyInput; make an input from it with "
            f"`python -m qcmb_hpc init {path} --program pyscf --method mp2 --basis cc-pvdz --bsse cp --max-nbody 3 -o {stem}.json`"
        )
    data: Any = None
    if ext in (".yaml", ".yml"):
        data = _yaml(path, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if ext == ".json":
                raise InputDataError(f"input file {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
            data = _yaml(path, text, hint="neither JSON nor YAML")
    if not isinstance(data, dict):
        raise InputDataError(f"input file {path} does not hold a ManyBodyInput (expected a mapping, got {type(data).__name__})")
    return data


def _looks_like_xyz(text: str) -> bool:
    """An XYZ file: an atom count, a comment line, then that many ``symbol x y z`` lines."""
    lines = text.strip().splitlines()
    if len(lines) < 3 or not lines[0].strip().isdigit():
        return False
    first_atom = lines[2].split()
    return len(first_atom) >= 4 and first_atom[0][:1].isalpha()


def _yaml(path: str, text: str, hint: str = "not valid YAML") -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputDataError(f"input file {path} is {hint}{where}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m qcmb_hpc",
        description="Run a QCManyBody many-body expansion in parallel (one node, or MPI under mpiexec/srun). "
        "Also: `python -m qcmb_hpc status PATH` (how far along a run is) and `python -m qcmb_hpc report PATH` "
        "(its report as HTML with pictures); each takes --help.",
        epilog="Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()),
    )
    p.add_argument("input", nargs="?", help="ManyBodyInput as JSON or YAML (v1 or v2); default: the bundled example")
    p.add_argument("-o", "--output", help="where to write the ManyBodyResult JSON (default: INPUT with .result.json)")
    p.add_argument("--fresh", action="store_true", help="ignore and replace an existing checkpoint")
    p.add_argument("--no-checkpoint", action="store_true", help="keep no checkpoint (not resumable)")
    p.add_argument(
        "--no-cost-history",
        action="store_true",
        help="neither read nor write a cost history (default: the per-user one, "
        "$XDG_CACHE_HOME/qcmb_hpc/cost_history.json or ~/.cache/qcmb_hpc/cost_history.json)",
    )
    for s in SETTINGS:
        dest = "cfg_" + s.name
        if s.name == "imports":
            p.add_argument(s.flag, dest=dest, action="append", metavar=s.metavar, help=s.help + " (repeatable)")
        elif s.is_bool:
            p.add_argument(s.flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=s.help)
        else:
            p.add_argument(s.flag, dest=dest, metavar=s.metavar, default=None, help=s.help)
    return p


def config_from_args(args: argparse.Namespace, environ: Optional[Dict[str, str]] = None) -> ParallelConfig:
    """Defaults < ``QCMB_*`` environment < flags. A bad value names its flag or variable."""
    values: Dict[str, Any] = {"mode": ParallelMode.ADAPTIVE}
    values.update(config_values_from_environment(environ))
    for s in SETTINGS:
        raw = getattr(args, "cfg_" + s.name)
        if raw is None:
            continue
        try:
            values[s.name] = s.parse(raw)
        except ValueError as exc:
            shown = ",".join(raw) if isinstance(raw, list) else raw
            raise InputDataError(f"{s.flag} {shown}: {exc}") from None
    return ParallelConfig.from_dict(values)


def _write_json(path: str, result: Any) -> None:
    """The result as QCSchema JSON: exactly ``result.serialize("json")``'s text, written in pieces
    for a v2 model (at 680k fragments the whole text, and its bytes as written, are ~0.2 GiB
    over the result itself)."""
    from qcelemental.models.v2.basemodels import ProtoModel
    from qcelemental.util.serialization import JSONArrayEncoder

    from .checkpoint import write_atomically

    if isinstance(result, ProtoModel):  # (its serialize("json") is json.dumps(model_dump(), cls=JSONArrayEncoder))
        write_atomically(path, json_pieces(result.model_dump(), JSONArrayEncoder().encode))
        return
    text = result.serialize("json") if hasattr(result, "serialize") else result.json()
    write_atomically(path, text.decode() if isinstance(text, bytes) else text)


def json_pieces(data: Any, encode: Callable[[Any], str], chunk: int = 10000) -> Iterator[str]:
    """``encode(data)``'s text (a JSON encoder's, without indent or sorting) in pieces: a dict is
    written entry by entry, and a dict value of more than ``chunk`` entries ``chunk`` entries at
    a time, so that no more than that much of the text exists at once."""
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        yield encode(data)
        return
    yield "{"
    for n, (key, value) in enumerate(data.items()):
        yield (", " if n else "") + encode(key) + ": "
        if isinstance(value, dict) and len(value) > chunk and all(isinstance(k, str) for k in value):
            items = iter(value.items())
            first = True
            while True:
                part = dict(itertools.islice(items, chunk))
                if not part:
                    break
                yield ("{" if first else ", ") + encode(part)[1:-1]
                first = False
            yield "}"
        else:
            yield encode(value)
    yield "}"


#: what to say when the molecule is not cut into fragments
FRAGMENTS_HINT = (
    "a many-body expansion needs the molecule cut into fragments (molecule.fragments: one list of "
    "atom indices per fragment); `python -m qcmb_hpc init FILE.xyz ...` finds them by connectivity"
)


def _computer(data: Dict[str, Any], config: ParallelConfig) -> Any:
    """The computer for an input document; an input QCManyBody refuses is one line (InputDataError)."""
    from .computer import ParallelManyBodyComputer, coerce_input
    from .errors import describe_validation_error

    try:
        model, _ = coerce_input(data)
        nfrag = len(model.molecule.fragments or [])
        if nfrag <= 1:
            raise InputDataError(f"the molecule has {'one fragment' if nfrag else 'no fragments'}: {FRAGMENTS_HINT}")
        return ParallelManyBodyComputer(data, parallel_config=config)
    except InputDataError:
        raise
    except Exception as exc:
        if type(exc).__name__ != "ValidationError":  # pydantic's (v2, or v1 for a v1 input)
            raise
        raise InputDataError(f"not a valid ManyBodyInput: {describe_validation_error(exc)}") from None


def _write_report(path: str, comp: Any, t0: float) -> Optional[Dict[str, Any]]:
    """Write the computer's run report (rank 0; wall time of the whole command) to ``path``;
    returns it (None if the run got no report). A report that cannot be written is a warning:
    the result is what matters."""
    rep = dict(getattr(comp, "run_info", None) or {})
    if not rep or _rank() != 0:
        return rep or None
    rep["wall_seconds"] = time.perf_counter() - t0
    from .checkpoint import write_atomically

    try:
        write_atomically(path, json.dumps(rep, indent=1, default=str))
    except OSError as exc:
        logger.warning("cannot write the run report %s: %s", path, exc.strerror or exc)
    return rep


def _setup_logging(level: str) -> None:
    log = logging.getLogger("qcmb_hpc")
    if not any(getattr(h, "_qcmb_cli", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        h._qcmb_cli = True  # type: ignore[attr-defined]
        log.addHandler(h)
        log.propagate = False
    log.setLevel(level)


def _rank() -> int:
    """This process's MPI rank: from mpi4py once MPI is initialised, else from the launcher's
    variables (so an error found before MPI starts is printed by rank 0 only). Never imports
    mpi4py (that would initialise MPI)."""
    mod = sys.modules.get("mpi4py.MPI")
    if mod is not None:
        try:
            if mod.Is_initialized() and not mod.Is_finalized():
                return mod.COMM_WORLD.Get_rank()
        except Exception:
            pass
    from .launcher import launcher_rank

    return launcher_rank()


def _fail(code: int, message: str) -> int:
    if _rank() == 0:
        print(f"qcmb_hpc: error: {message}", file=sys.stderr, flush=True)
    return code


class _Stopped(BaseException):
    """SIGTERM or SIGUSR1 outside a run (before it started): end with the resumable code."""


def _signal_outside_run(signum: int, frame: Any) -> None:
    """The command line's handler for SIGINT/SIGTERM/SIGUSR1 whenever no run's own handlers are
    active: before a run, end at once (nothing is lost: the journal holds what any earlier run
    finished); after a run was stopped, ignore — it is saving and about to say how to resume."""
    from .signals import stop_received

    if stop_received() is not None:
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise _Stopped(signal.Signals(signum).name)


#: ``python -m qcmb_hpc NAME ...``: commands other than running an input, each ``module:function``
#: taking the remaining arguments and returning the exit code (imported only when used). A file
#: whose name is one of these is run as ``./NAME``.
SUBCOMMANDS: Dict[str, str] = {
    "init": "qcmb_hpc.init_input:main",  # a ManyBodyInput from an XYZ file
    "status": "qcmb_hpc.status:main",  # how far along a run is (read-only, safe while it runs)
    "report": "qcmb_hpc.visualize:main",  # the run report as HTML with pictures
}


def _subcommand(argv: Sequence[str]) -> Optional[int]:
    """Run ``argv[0]`` as a subcommand if it names one; None otherwise."""
    if not argv or argv[0] not in SUBCOMMANDS:
        return None
    from .loading import load_object

    return load_object(SUBCOMMANDS[argv[0]])(list(argv[1:]))


def command() -> None:
    """The ``python -m qcmb_hpc`` and ``qcmb-hpc`` process: :func:`main`, then the exit with the
    collector off. The interpreter's teardown runs full collections over everything the stack
    imported and built; under ``mpiexec -n 9`` on 2 cores that was 1.3–1.7 s of wall at the end of
    every job (0.25 s with the heap frozen). The exit is otherwise the usual one (``atexit``
    handlers, MPI_Finalize by mpi4py): a rank that leaves with ``os._exit`` after MPI_Finalize is
    reported by MPICH's launcher as killed."""
    import gc

    code = main()
    gc.disable()
    gc.freeze()
    sys.exit(code)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    code = _subcommand(argv)
    if code is not None:
        return code
    from .signals import handling

    try:
        with handling(_signal_outside_run):
            return _main(argv)
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    except _Stopped as exc:
        return _fail(EXIT_INCOMPLETE, f"stopped by {exc}; run the same command again to resume")


def _main(argv: Optional[Sequence[str]]) -> int:

    try:
        args = build_parser().parse_args(argv)
        config = with_cost_history(config_from_args(args), args)
    except UsageError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except (InputDataError, ValueError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    _setup_logging(config.log_level)
    input_path = args.input or bundled_example()
    output = args.output or (default_output(input_path) if args.input else os.path.basename(default_output(input_path)))
    if not args.no_checkpoint and not config.checkpoint:
        config = config.replace(checkpoint=default_checkpoint(output))
    elif args.no_checkpoint:
        config = config.replace(checkpoint=None)
    t0 = time.perf_counter()
    report_path = default_report(output)
    made: list = []

    def computer() -> Any:
        """Import the user's modules, read and check the input — on the process that coordinates
        only (a worker imports the modules as it sets up; an MPI worker rank never reads the input,
        nor imports QCManyBody's planning). Inside the run, so the pool is already there: a bad
        module or input is told to every process, and QCEngine's node detection (started as a
        local pool is entered) runs meanwhile."""
        from .loading import import_modules

        import_modules(config.imports)
        made.append(_computer(load_input(input_path), config))
        return made[0]

    try:
        from .driver import run

        result = run(computer, fresh=args.fresh, broadcast_result=False, config=config)
        comp = made[0] if made else None
        if comp is not None:
            result = comp.in_input_version(result)
    except InputDataError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except FragmentExecutionError as exc:
        _write_report(report_path, made[0] if made else None, t0)
        if _rank() == 0:
            print(f"qcmb_hpc: error: {exc}", file=sys.stderr)
            print(exc.details(), file=sys.stderr)
            print(f"qcmb_hpc: every attempt, with the engine's whole output: {report_path} (\"failures\")", file=sys.stderr, flush=True)
        return EXIT_FRAGMENT
    except IncompleteRunError as exc:
        _write_report(report_path, made[0] if made else None, t0)
        code = EXIT_INTERRUPTED if exc.reason == "SIGINT" else EXIT_INCOMPLETE
        return _fail(code, str(exc))
    except ParallelExecutionError as exc:
        return _fail(EXIT_PARALLEL, str(exc))
    if _rank() != 0:
        return EXIT_OK
    try:
        _write_json(output, result)
    except OSError as exc:
        return _fail(EXIT_USAGE, f"cannot write {output}: {exc.strerror or exc}")
    from .report import summary_line

    if result.stdout:
        print(result.stdout)
    rep = _write_report(report_path, comp, t0)
    if rep:
        print(summary_line(rep))
    print(f"qcmb_hpc: result written to {output} (how the run went: {report_path})", flush=True)
    return EXIT_OK
