"""QCEngine harnesses qcmb_hpc ships (:data:`HARNESSES`: ``pyscf``) and its procedure ``qcmb_hpc``,
registered with QCEngine whenever qcmb_hpc is imported — so they work in every mode and every worker without ``--import``,
and through ``qcengine.compute(atomic_input, "pyscf")`` on their own.

Importing qcmb_hpc imports neither QCEngine nor PySCF (start-up stays lean; PySCF is imported by
the harness when it first computes). :func:`install` registers the harnesses at once if QCEngine
is already imported, else it leaves a one-shot hook on ``sys.meta_path`` that registers them the
moment ``import qcengine`` finishes. A harness already registered under the same name (QCEngine
may one day ship its own ``pyscf``) is left alone.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
from typing import Any, Iterable, List, Optional

from ..loading import instantiate, load_object

__all__ = ["HARNESSES", "install", "register", "warm"]

logger = logging.getLogger("qcmb_hpc")

#: program name → ``module:class`` of its harness
HARNESSES = {"pyscf": "qcmb_hpc.engines.pyscf:PySCFHarness"}


def register() -> List[str]:
    """Register every harness of :data:`HARNESSES` not registered yet, and the procedure
    ``qcmb_hpc`` (:func:`qcmb_hpc.dropin.register_qcengine_procedure`); returns the programs added."""
    import qcengine

    from ..dropin import register_qcengine_procedure

    register_qcengine_procedure()

    known = qcengine.list_all_programs()
    added = []
    for name, where in HARNESSES.items():
        if name in known:
            continue
        qcengine.register_program(instantiate(load_object(where)))
        added.append(name)
    return added


def warm(programs: Iterable[str]) -> List[str]:
    """Import ahead what the harnesses of ``programs`` import on their first calculation (a
    harness's own ``warm()``; PySCF's modules and C libraries: ~0.6-0.8 s of CPU in a fresh
    process), so that a worker is ready before its first fragment arrives, and that fragment's
    time — which the cost model calibrates on — is the calculation's alone. Returns the programs
    warmed. Never raises: a program that cannot be warmed fails in its fragments, with the
    engine's own message."""
    import qcengine

    warmed = []
    for name in dict.fromkeys(programs):
        try:
            fn = getattr(qcengine.get_program(name, check=False), "warm", None)
            if fn is None:
                continue
            fn()
        except Exception as exc:
            logger.debug("qcmb_hpc: could not warm program %r (%s: %s)", name, type(exc).__name__, exc)
            continue
        warmed.append(name)
    return warmed


def _register_quietly() -> None:
    try:
        register()
    except Exception as exc:  # never break `import qcengine` for the caller
        logger.warning("qcmb_hpc: could not register its QCEngine harnesses (%s: %s)", type(exc).__name__, exc)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``qcengine`` is about to be imported, it takes the spec the other
    finders give and makes its loader call :func:`register` once the module has executed."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Optional[Any]:
        if fullname != "qcengine":
            return None
        _uninstall()  # one shot (and no recursion through find_spec below)
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_and_register(module: Any) -> None:
            exec_module(module)
            _register_quietly()

        loader.exec_module = exec_and_register
        return spec


_HOOK = _RegisterAfterImport()


def _uninstall() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def install() -> None:
    """Register now if QCEngine is imported, else as soon as it is (idempotent)."""
    if "qcengine" in sys.modules:
        _uninstall()
        _register_quietly()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
