"""Executor plugins: the ways of running fragments. ``ParallelConfig.mode`` names one.

A plugin (:class:`ParallelExecutionPlugin`) has a ``name`` and makes a
:class:`~qcmb_hpc.pool.WorkerPool` for a run; the run driver does everything else (planning,
journal, cost model, the one coordinator, retries, progress, assembly), the same for every plugin.
The built-in ``sequential``, ``multiprocessing`` and ``mpi`` modes are plugins too, registered
under the entry-point group ``qcmb_hpc.plugins`` like any installed package's::

    [project.entry-points."qcmb_hpc.plugins"]
    threads = "my_package.plugin:ThreadsPlugin"        # a class (made with no arguments) or an instance

so ``pip install`` of such a package is all it takes; :func:`register_plugin` serves a plugin
defined in a script. ``qcmb_hpc.testing.conformance`` checks a plugin does what the driver needs.

Choosing (:func:`select_plugin`): a mode that names a plugin is that plugin; if it cannot run
here (:meth:`ParallelExecutionPlugin.why_not`, e.g. no mpi4py) the run continues sequentially
with a warning (``fallback_to_sequential``) or fails. ``adaptive`` asks every plugin whether it
can handle the situation and takes the one with the highest ``priority`` that can (built in: MPI
under a launcher, else multiprocessing on more than one core, else sequential).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

from .errors import ParallelExecutionError

logger = logging.getLogger("qcmb_hpc")

__all__ = [
    "ENTRY_POINT_GROUP",
    "ParallelExecutionPlugin",
    "SequentialPlugin",
    "MultiprocessingPlugin",
    "MpiPlugin",
    "register_plugin",
    "unregister_plugin",
    "available_plugins",
    "get_plugin",
    "select_plugin",
    "choose_adaptively",
]

ENTRY_POINT_GROUP = "qcmb_hpc.plugins"


class ParallelExecutionPlugin:
    """A way of running fragments (the design document's ``ParallelExecutionPlugin``).

    Subclass it and set :attr:`name`; implement :meth:`create_executor` (and :meth:`why_not` if
    it cannot run everywhere). The driver calls, in order: :meth:`can_handle` (for the adaptive
    mode, or to check the named one), then :meth:`create_executor`, whose pool it enters."""

    #: the mode name users write (``ParallelConfig(mode=name)``, ``--mode name``)
    name: str = ""
    #: the adaptive mode takes, of the plugins that can handle the situation, the highest
    priority: int = 0
    #: one line for ``--help`` and the README
    description: str = ""
    #: whether the adaptive mode may choose it at all (a plugin that needs its own configuration,
    #: such as a scheduler's, is chosen only by name)
    adaptive: bool = False

    def can_handle(self, config: Any) -> bool:
        """Whether this plugin can handle ``config``: its own mode, and nothing stops it here; for
        the adaptive mode, whether this situation is the one it is meant for (read cheaply: the
        MPI plugin looks at the launcher's variables, it does not initialise MPI — what stops it
        is then found as for a mode named explicitly)."""
        if _mode_name(config) == "adaptive":
            return self.adaptive and self.suits(config)
        return _mode_name(config) == self.name and self.why_not(config) is None

    def suits(self, config: Any) -> bool:
        """For the adaptive mode: is this the situation the plugin is for (e.g. under a launcher)?"""
        return True

    def why_not(self, config: Any) -> Optional[str]:
        """Why this plugin cannot run here (a sentence), or None. May raise
        :class:`~qcmb_hpc.errors.ParallelExecutionError` for a situation no fallback may paper
        over (N ranks started by a launcher, but no MPI to tell them apart)."""
        return None

    def create_executor(self, config: Any) -> Any:
        """The :class:`~qcmb_hpc.pool.WorkerPool` for one run (not started yet)."""
        raise TypeError(f"plugin {self.name!r} ({type(self).__name__}) must define create_executor")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _mode_name(config: Any) -> str:
    return config.mode_name


# ------------------------------------------------------------------------------------------------
# the built-in plugins
# ------------------------------------------------------------------------------------------------


class SequentialPlugin(ParallelExecutionPlugin):
    name = "sequential"
    priority = 0
    adaptive = True
    description = "one worker, in this process, one fragment at a time"

    def create_executor(self, config: Any) -> Any:
        from .transport.inprocess import InProcessPool

        return InProcessPool(config)


class MultiprocessingPlugin(ParallelExecutionPlugin):
    name = "multiprocessing"
    priority = 10
    adaptive = True
    description = "worker processes on this node, over pipes"

    def suits(self, config: Any) -> bool:
        from .resources import detect_node

        return detect_node().cores > 1

    def create_executor(self, config: Any) -> Any:
        from .transport.processes import ProcessPool

        return ProcessPool(config)


class MpiPlugin(ParallelExecutionPlugin):
    name = "mpi"
    priority = 20
    adaptive = True
    description = "rank 0 coordinates, ranks 1..N-1 work, over MPI (mpiexec, srun)"

    def suits(self, config: Any) -> bool:
        from .launcher import under_launcher

        return under_launcher()

    def why_not(self, config: Any) -> Optional[str]:
        from .launcher import launcher_size
        from .transport.mpi import check_world, world

        try:
            comm = world()
        except ImportError as exc:
            n = launcher_size()
            if n and n > 1:  # every one of the n processes would run the whole job on the same journal
                raise ParallelExecutionError(
                    f"started by an MPI launcher with {n} ranks, but MPI mode cannot start: {exc} "
                    "(install mpi4py built against the launcher's MPI, or run without mpiexec/srun)"
                ) from None
            return f"MPI mode needs mpi4py: {exc}"
        check_world(comm)
        return None

    def create_executor(self, config: Any) -> Any:
        from .transport.mpi import MpiPool, world

        comm = world()
        if comm.Get_size() == 1:  # (issue 3: "with N=1 it runs sequentially", fallback or not)
            from .transport.inprocess import InProcessPool

            logger.info("MPI world of one rank: running sequentially")
            pool = InProcessPool(config)
            pool.fell_back = "an MPI world of one rank"
            return pool
        return MpiPool(config, comm)


BUILTIN = {p.name: p for p in (SequentialPlugin(), MultiprocessingPlugin(), MpiPlugin())}


# ------------------------------------------------------------------------------------------------
# the registry
# ------------------------------------------------------------------------------------------------

_registry: Optional[Dict[str, ParallelExecutionPlugin]] = None


def _discover() -> Dict[str, ParallelExecutionPlugin]:
    """The plugins installed packages offer under :data:`ENTRY_POINT_GROUP` (the built-in ones
    among them; without package metadata — a source tree not installed — the built-in ones)."""
    from importlib.metadata import entry_points

    from .loading import instantiate

    found: Dict[str, ParallelExecutionPlugin] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugin = instantiate(ep.load())
        except Exception as exc:  # one broken package must not take every mode down
            logger.warning("qcmb_hpc: plugin %r (%s) cannot be loaded: %s: %s", ep.name, ep.value, type(exc).__name__, exc)
            continue
        if not isinstance(plugin, ParallelExecutionPlugin):
            logger.warning("qcmb_hpc: plugin %r (%s) is not a ParallelExecutionPlugin; ignored", ep.name, ep.value)
            continue
        found[plugin.name or ep.name] = plugin
    for name, plugin in BUILTIN.items():
        if name not in found:
            logger.debug("qcmb_hpc: built-in plugin %r not found by entry point (not installed?); using it directly", name)
            found[name] = plugin
    return found


def available_plugins() -> Dict[str, ParallelExecutionPlugin]:
    """Every plugin known in this process: name → plugin (discovered once, plus registered ones)."""
    global _registry
    if _registry is None:
        _registry = _discover()
    return dict(_registry)


def register_plugin(plugin: Any, replace: bool = False) -> ParallelExecutionPlugin:
    """Make a plugin (an instance or a class) known by its ``name`` in this process — for plugins
    defined in a script; installed packages use the entry point. Returns the instance."""
    from .loading import instantiate

    plugin = instantiate(plugin)
    if not isinstance(plugin, ParallelExecutionPlugin) or not plugin.name:
        raise TypeError(f"{plugin!r} is not a ParallelExecutionPlugin with a name")
    available_plugins()
    assert _registry is not None
    if plugin.name in _registry and not replace and _registry[plugin.name] is not plugin:
        raise ValueError(f"a plugin named {plugin.name!r} is already registered ({_registry[plugin.name]!r}); pass replace=True")
    _registry[plugin.name] = plugin
    return plugin


def unregister_plugin(name: str) -> None:
    """Forget a plugin registered in this process (built-in ones cannot be forgotten)."""
    if name in BUILTIN:
        raise ValueError(f"the built-in plugin {name!r} cannot be unregistered")
    available_plugins()
    assert _registry is not None
    _registry.pop(name, None)


def get_plugin(name: str) -> ParallelExecutionPlugin:
    plugins = available_plugins()
    if name not in plugins:
        raise ValueError(f"no plugin named {name!r}; known: {', '.join(sorted(plugins))}")
    return plugins[name]


def plugin_names() -> List[str]:
    return sorted(available_plugins())


def choose_adaptively(config: Any) -> ParallelExecutionPlugin:
    """The adaptive mode's choice: of the plugins that can handle the situation, the one with the
    highest priority (sequential if none)."""
    plugins = available_plugins()
    able = [p for p in plugins.values() if p.can_handle(config)]
    plugin = max(able, key=lambda p: p.priority) if able else plugins["sequential"]
    logger.debug("adaptive mode: running %s", plugin.name)  # the layout line says it at INFO
    return plugin


def select_plugin(config: Any) -> Tuple[ParallelExecutionPlugin, Optional[str]]:
    """The plugin for ``config`` and, if it stands in for the one asked for, why (a sentence)."""
    mode = _mode_name(config)
    plugins = available_plugins()
    plugin = choose_adaptively(config) if mode == "adaptive" else get_plugin(mode)
    reason = plugin.why_not(config)
    if reason is None:
        return plugin, None
    if not config.fallback_to_sequential:
        raise ParallelExecutionError(f"mode {plugin.name!r} cannot run here: {reason}")
    logger.warning("%s; continuing sequentially (fallback_to_sequential)", reason)
    return plugins["sequential"], reason
