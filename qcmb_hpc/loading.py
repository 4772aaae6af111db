"""Loading code by name: the user's modules (``--import``, ``ParallelConfig.imports``), plugins
from entry points, subcommands and harnesses by ``module:attribute``. One place, so that
whatever a module raises while it imports comes out the same way everywhere."""

from __future__ import annotations

import importlib
from typing import Any, Iterable

__all__ = ["import_modules", "load_object", "instantiate"]


def import_modules(names: Iterable[str]) -> None:
    """Import the user's modules (e.g. ones that call ``qcengine.register_program``). A module
    that cannot be imported — missing, or raising anything while it imports — is an
    :class:`~qcmb_hpc.errors.InputDataError` naming it (the command line's one line, exit 2)."""
    from .errors import InputDataError

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise InputDataError(f"module {name!r} cannot be imported: {exc}") from exc
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise InputDataError(f"module {name!r} failed to import: {type(exc).__name__}: {first}") from exc


def load_object(where: str) -> Any:
    """``"package.module:attribute"`` → the attribute."""
    module, _, attr = where.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def instantiate(obj: Any) -> Any:
    """A class → an instance made with no arguments; anything else as it is."""
    return obj() if isinstance(obj, type) else obj
