"""Base class of the scheduling policies and the per-task record they share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dask_oxigdal.exceptions import TaskRejected

if TYPE_CHECKING:
    from distributed.scheduler import TaskState

    from dask_oxigdal.scheduling.extension import OxigdalScheduling

__all__ = ["TASK_FAULTS", "SchedulingPolicy", "TaskInfo"]

#: Exceptions that, raised by a policy while it handles one task (its
#: ``update_graph`` or ``transition`` hook), are the fault of that task's input
#: rather than of the policy: the task is failed with
#: :class:`~dask_oxigdal.exceptions.TaskRejected` and the policy stays enabled.
#: ``ConfigError`` (a ``ValueError``) is excluded: bad settings are the policy's.
TASK_FAULTS: tuple[type[BaseException], ...] = (
    TaskRejected,
    ValueError,
    TypeError,
    ArithmeticError,
)


class TaskInfo:
    """What the extension knows about one live task it has seen in ``update_graph``.

    One instance per task, created when the task enters the scheduler and
    dropped when it is forgotten. A new policy keeps its own per-task data in
    its own dicts (keyed by task key, dropped on ``forgotten``), as ``Gang``
    does with its reservation holds; ``start_tag``, ``finish_tag``, ``pseq``,
    ``dprio``, ``oseq``, ``prefix`` (``FairShare``, on its per-transition
    path, where a slot is cheaper than a dict lookup), ``gang`` and ``edf``
    (``Gang`` and ``Deadline``, both read by ``Autoscaling``) are the
    remaining policy-owned slots.
    """

    __slots__ = (
        "admitted",
        "annotations",
        "done",
        "dprio",
        "edf",
        "finish_tag",
        "gang",
        "holds",
        "nbytes",
        "oseq",
        "prefix",
        "pseq",
        "queue",
        "rank",
        "restrictions",
        "running",
        "start_tag",
        "tenant",
    )

    def __init__(self, tenant: str, queue: str, rank: int, annotations: Any) -> None:
        self.tenant = tenant
        self.queue = queue
        self.rank = rank
        self.annotations = annotations
        self.start_tag = 0.0
        self.finish_tag = 0.0
        self.running = False
        self.done = False
        self.nbytes = 0
        self.pseq = 0
        #: Dask's own priority of the task (``FairShare``), and its place in the
        #: tenant's sorted list of live tasks (0 when not listed)
        self.dprio: tuple = ()
        self.oseq = 0
        self.prefix = ""
        self.admitted = False
        #: policies holding the task (``OxigdalScheduling.hold``), ``None`` when none
        self.holds: set[str] | None = None
        #: the task's own (worker, host, loose) restrictions, saved while it is held
        self.restrictions: tuple[Any, Any, bool] | None = None
        #: the task's gang (``Gang`` policy; read by ``Autoscaling``), ``None`` for ordinary tasks
        self.gang: Any = None
        #: absolute deadline (UNIX time) the ``Deadline`` policy orders it by, or ``None``
        self.edf: float | None = None

    def __repr__(self) -> str:
        return (
            f"<TaskInfo tenant={self.tenant!r} queue={self.queue!r} "
            f"tags=({self.start_tag:.4g}, {self.finish_tag:.4g})>"
        )


class SchedulingPolicy:
    """A policy of :class:`~dask_oxigdal.scheduling.extension.OxigdalScheduling`.

    Policies decide, the extension enacts. Each hook is called by the
    extension inside a ``try``, and what happens to an exception depends on
    whose fault it is:

    - **the task's fault.** An exception of one of the :data:`TASK_FAULTS`
      types (:class:`~dask_oxigdal.exceptions.TaskRejected`, ``ValueError``,
      ``TypeError``, ``ArithmeticError`` such as ``OverflowError``; not
      ``ConfigError``) raised by :meth:`transition` fails the task the call
      was about; raised by :meth:`update_graph`, it fails every task of that
      submission (the policy stopped part-way, so none of them is known to be
      handled; the policies after it do not see them). The tasks err with
      ``TaskRejected``, whose message names the policy, the hook and the
      original error; the event ``{"action": "task-rejected", ...}`` is
      published on the ``oxigdal`` topic and ``status()["task_faults"]``
      counts them. The policy **stays enabled**: one tenant's annotations
      cannot switch a policy off for everyone. A policy that finds a task's
      input unusable should raise ``TaskRejected`` with a message that names
      the value and the valid choices.
    - **the policy's own fault.** Any other exception (``KeyError``,
      ``AttributeError``, ``RuntimeError``, ...), and any exception from the
      hooks that are not about one task's input (:meth:`start`,
      :meth:`periodic`, :meth:`add_worker`, :meth:`remove_worker`,
      :meth:`restart`, deferred work run with
      :meth:`~dask_oxigdal.scheduling.extension.OxigdalScheduling.run_policy`),
      is logged, reported with ``scheduler.log_event("oxigdal", {"action":
      "policy-disabled", ...})`` and the policy is disabled; the scheduler
      and the other policies carry on.

    The annotations a policy sees were validated by
    :func:`~dask_oxigdal.annotations.parse_annotations` (types and ranges), so
    ordinary arithmetic on them does not overflow; the rule above is the
    safety net for what validation cannot foresee. A policy whose bug raises a
    ``ValueError`` for every task therefore fails every task (loudly, naming
    itself) instead of being switched off.

    Subclasses override the hooks they need; the extension only calls the
    ``transition`` hook of policies that override it (it runs on every task
    transition and must be O(1)).

    Policies decide, the extension enacts: a policy holds and releases tasks
    with ``extension.hold`` / ``extension.unhold`` / ``extension.reject``,
    enacts its recommendations with ``extension.transitions(recs,
    stimulus_id)`` (never from its ``transition`` hook: :meth:`defer` the work
    to the next tick), and finds another policy with
    ``extension.policy(name)``. :meth:`close` gives back what the policy holds.

    Parameters
    ----------
    **kwargs
        Policy-specific options, from the ``{class: ..., **kwargs}`` entry in
        ``oxigdal.scheduling.policies``.
    """

    #: Name in the status snapshot; defaults to the class name.
    name: str = ""
    #: Names of the policies that, when configured, must come before this one in
    #: ``oxigdal.scheduling.policies`` (the extension checks it at start).
    after: tuple[str, ...] = ()
    #: Whether the extension calls :meth:`transition` (when overridden); a policy
    #: with nothing to do for its configuration sets it to ``False`` in ``start``.
    wants_transitions: bool = True

    def __init__(self, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(
                f"{type(self).__name__} got unexpected option(s): {', '.join(sorted(kwargs))}"
            )
        self.extension: OxigdalScheduling | None = None

    def start(self, extension: OxigdalScheduling) -> None:
        """Attach to the extension (called once, on the event loop)."""
        self.extension = extension

    def close(self) -> None:
        """Give back what the policy holds (the policy was disabled or its extension removed).

        Called on the event loop, outside a transition hook; must be idempotent.
        """

    def defer(self, method: str, *args: Any) -> None:
        """Run ``self.<method>(*args)`` on the next event-loop tick, once.

        Requests for the same method and arguments made before it runs merge
        into one call. The call goes through ``extension.run_policy``: it is
        skipped when the policy was disabled meanwhile, and an exception
        disables the policy. Safe from any hook, ``transition`` included.

        Parameters
        ----------
        method : str
            Name of a method of this policy.
        *args
            Hashable arguments.
        """
        ext = self.extension
        if ext is None or ext.scheduler is None:
            return
        pending = self.__dict__.setdefault("_deferred", set())
        request = (method, args)
        if request in pending:
            return
        pending.add(request)
        ext.scheduler.loop.add_callback(self._run_deferred, request)

    def _run_deferred(self, request: tuple[str, tuple]) -> None:
        self.__dict__.get("_deferred", set()).discard(request)
        ext = self.extension
        if ext is not None:
            ext.run_policy(self, request[0], *request[1])

    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """New tasks entered the scheduler, before Dask transitions them.

        Parameters
        ----------
        new : list of (TaskState, TaskInfo)
            The new tasks of one submission, sorted by Dask's own priority.
        """

    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """A task the extension knows changed state (O(1) work only)."""

    def periodic(self) -> None:
        """Periodic work, from the extension's ``PeriodicCallback``."""

    def add_worker(self, address: str) -> None:
        """A worker joined the cluster (``SchedulerPlugin.add_worker``)."""

    def remove_worker(self, address: str, stimulus_id: str) -> None:
        """A worker left the cluster (called after Dask re-planned its tasks)."""

    def restart(self) -> None:
        """The scheduler restarted: every task was forgotten."""

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state and counters for ``status()``."""
        return {}
