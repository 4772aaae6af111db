"""``WorkerPool``: one run's workers, as an executor plugin provides them.

The run driver (:mod:`qcmb_hpc.driver`) does everything else — planning, the journal, the cost
model, the one coordinator loop, retries, progress, assembly — the same for every way of running.
A pool only says where the coordinator runs, starts the workers behind a transport endpoint, and
shuts them down again. Its life, as the driver uses it::

    with plugin.create_executor(config) as pool:         # __enter__: meet the other processes, if any
        if pool.coordinates:                               # the one process that runs the coordinator
            layout = pool.layout(resources, tasks)         # workers and what each gets
            endpoint = pool.start(spec, layout)            # start them: a CoordinatorEndpoint
            ...  the coordinator runs over the endpoint; the driver assembles ...
            result, report = pool.share(result, report)    # what every process returns
        else:
            pool.serve()                                   # be a worker (or a spare) until the run ends
            result, report = pool.share()
    # __exit__: the workers are shut down and cleaned up, also after an error

A pool of one process (``coordinates`` always true) keeps the defaults of :meth:`share`,
:meth:`serve` and :meth:`fail`; an SPMD pool (MPI: every rank enters the same pool) overrides them.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

__all__ = ["WorkerPool"]


class WorkerPool:
    """Base class of the executors plugins create (:meth:`ParallelExecutionPlugin.create_executor`)."""

    #: what the run report calls this way of running (the plugin's name, as a rule)
    mode: str = ""
    #: whether this process runs the coordinator (an SPMD pool: one of its processes)
    coordinates: bool = True
    #: when the workers cannot start or all die, may the run go on sequentially in this process?
    #: (MPI: no — a rank that dies ends the job, and the ranks cannot be told apart from here)
    can_fall_back: bool = False
    #: whether a worker's death leaves the others running (multiprocessing: yes; MPI: the job ends)
    survives_worker_loss: bool = False
    #: set when this pool stands in for the one asked for: why (the run report says it fell back)
    fell_back: Optional[str] = None
    #: the coordinator's error as an SPMD pool's other processes received it (they raise it too;
    #: an error of their own instead ends the job)
    told: Optional[BaseException] = None

    def __init__(self, config: Any):
        self.config = config
        self.endpoint: Any = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- on the coordinating process -------------------------------------------------------------
    def layout(self, resources: Any, tasks: int) -> Any:
        """How many workers to start and what each gets (a :class:`~qcmb_hpc.resources.Layout`),
        from the :class:`~qcmb_hpc.resources.ResourceManager`; ``tasks``: fragments to run."""
        return resources.layout(tasks=tasks)

    def describe(self, layout: Any) -> str:
        """The line the run starts with."""
        return f"{self.mode}, {layout.describe()}"

    def start(self, spec: Any, layout: Any) -> Any:
        """Start ``layout.workers`` workers; return the coordinator's endpoint (the coordinator
        sends the SETUP with ``spec`` through it)."""
        raise TypeError(f"{type(self).__name__} does not start workers (a WorkerPool must define start)")

    def share(self, result: Any = None, report: Any = None, error: Optional[BaseException] = None) -> Tuple[Any, Any]:
        """After the run: the coordinator's result and report for every process of the pool; or
        its error, which every process raises. One process: itself."""
        if error is not None:
            raise error
        return result, report

    def fail(self, where: str, exc: BaseException) -> None:
        """An unexpected exception in this process (``where``: what it was doing). One process:
        nothing to do, it propagates. An SPMD pool ends the whole job, which would otherwise
        wait for this process for ever."""

    def close(self) -> None:
        """Shut the workers down and release what the pool holds (idempotent)."""
        if self.endpoint is not None:
            endpoint, self.endpoint = self.endpoint, None
            endpoint.close()

    # -- on the other processes of an SPMD pool ------------------------------------------------------
    def serve(self) -> None:
        """Be a worker (or a spare) until the coordinator ends the run."""
        raise TypeError(f"{type(self).__name__} runs in one process: it has no workers to serve as")
