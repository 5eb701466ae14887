"""``OxigdalScheduling``: the scheduler plugin that hosts the scheduling policies.

Built like ``distributed/active_memory_manager.py`` and ``stealing.py``: one
:class:`~distributed.diagnostics.plugin.SchedulerPlugin` with a stable name,
a list of small policy objects configured as ``{class: dotted.path, **kwargs}``
(``oxigdal.scheduling.policies``), a ``PeriodicCallback`` stored in
``scheduler.periodic_callbacks``, and a scheduler handler
(``oxigdal_status``) that returns a JSON-serialisable snapshot.

This module holds the plugin hooks, the policies' lifecycle and their error
isolation; the rest is in sibling modules, each with one job:

- :mod:`~dask_oxigdal.scheduling.configure`: options over ``oxigdal.*``, policies built;
- :mod:`~dask_oxigdal.scheduling.tenants`: tenant settings (one ``TenantSettings`` each);
- :mod:`~dask_oxigdal.scheduling.parsing`: each task's annotations, tenant and queue;
- :mod:`~dask_oxigdal.scheduling.holds`: holding, rejecting and failing tasks;
- :mod:`~dask_oxigdal.scheduling.accounting`: per-tenant usage, coordinator sync;
- :mod:`~dask_oxigdal.scheduling.snapshot`: the status snapshot;
- :mod:`dask_oxigdal.client`: ``register`` and ``status`` (re-exported here).

Error isolation: tasks whose ``oxigdal_*`` annotations are malformed are held
(restricted to an address no worker has) and then failed with a
``ValueError``, without touching other submissions. A policy that fails
while it handles one task's input (a :data:`TASK_FAULTS` exception from its
``update_graph`` or ``transition`` hook) fails that task (or that
submission) with :class:`~dask_oxigdal.exceptions.TaskRejected` and stays
enabled; any other exception is the policy's own fault: it is logged and
the policy is disabled, never the scheduler.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from dask_oxigdal import config as _config  # noqa: F401  (registers the defaults)
from dask_oxigdal.client import register, status
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.isolation import stamp_tenant
from dask_oxigdal.scheduling import events as _events
from dask_oxigdal.scheduling import snapshot as _snapshot
from dask_oxigdal.scheduling.accounting import Accounting, restore_from_coordinator
from dask_oxigdal.scheduling.configure import make_policy, resolve
from dask_oxigdal.scheduling.holds import HOLD_ADDRESS, NAME, Holds, error_text
from dask_oxigdal.scheduling.host import PolicyHost, is_task_fault
from dask_oxigdal.scheduling.parsing import AnnotationCache
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo
from dask_oxigdal.scheduling.settings import setting
from dask_oxigdal.scheduling.tenants import TENANT_KEYS, resolve_tenant

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler, TaskState

__all__ = ["HOLD_ADDRESS", "NAME", "TENANT_KEYS", "OxigdalScheduling", "register", "status"]

logger = logging.getLogger(__name__)
#: Unknown tenant names warned about, at most (each once).
_WARN_TENANTS = 64

#: Name of the scheduler handler that returns the snapshot.
STATUS_HANDLER = "oxigdal_status"

_error_text = error_text

#: Called with each started extension, by dotted path (``"module:function"``),
#: imported when the extension starts. Each returns ``{what: set up (bool)}``,
#: merged into ``OxigdalScheduling.monitoring``. Observability attaches itself
#: this way, so ``scheduling/`` never imports ``monitoring/`` (which imports
#: ``scheduling/``). Append to it to attach more.
START_HOOKS: list[str] = ["dask_oxigdal.monitoring.hooks:attach"]


class OxigdalScheduling(PolicyHost, SchedulerPlugin):
    """The dask-oxigdal scheduler extension.

    Install it with :func:`register` (from a client) or
    ``dask scheduler --preload dask_oxigdal.preload``. Arguments default to
    ``None``, meaning "read ``oxigdal.*`` from the scheduler's dask config".

    Parameters
    ----------
    policies : list of dict, optional
        ``[{"class": "dotted.path", **kwargs}, ...]``
        (``oxigdal.scheduling.policies``).
    tenants : dict, optional
        ``{tenant: weight}`` (or ``{tenant: {"weight": w, "max-tasks": n,
        "guaranteed-slots": g}}``), merged over ``oxigdal.tenants``.
    queues : list of str, optional
        Queue names, highest priority first (``oxigdal.scheduling.queues``).
    default_queue : str, optional
        Queue of tasks without a ``queue`` annotation.
    default_tenant : str, optional
        Tenant of tasks without a ``tenant`` annotation, and of unknown tenants
        unless ``strict``.
    strict : bool, optional
        Reject (err) tasks of tenants that are not configured.
    interval : str or float, optional
        Period of the ``PeriodicCallback`` (``oxigdal.scheduling.interval``).
    usage_half_life : str or float, optional
        Half-life of the "current share" usage average.
    """

    name = NAME
    idempotent = True

    def __init__(
        self,
        *,
        policies: list[dict[str, Any]] | None = None,
        tenants: Mapping[str, Any] | None = None,
        queues: list[str] | None = None,
        default_queue: str | None = None,
        default_tenant: str | None = None,
        strict: bool | None = None,
        interval: str | float | None = None,
        usage_half_life: str | float | None = None,
    ) -> None:
        # Only plain options here: the plugin is pickled on the client.
        self.options = {
            "policies": policies,
            "tenants": dict(tenants) if tenants is not None else None,
            "queues": list(queues) if queues is not None else None,
            "default_queue": default_queue,
            "default_tenant": default_tenant,
            "strict": strict,
            "interval": interval,
            "usage_half_life": usage_half_life,
        }
        self.scheduler: Scheduler | None = None
        self.policies: list[SchedulingPolicy] = []
        self.disabled: dict[str, str] = {}
        self.info: dict[Any, TaskInfo] = {}
        #: held, rejected and malformed tasks (``hold``/``unhold``/``reject``)
        self.holds = Holds(self)
        #: per-tenant ledgers; ``usage`` is its ``{tenant: TenantUsage}``
        self.accounting = Accounting()
        self.usage = self.accounting.usage
        #: tasks failed because a policy could not handle their input, per policy
        self.task_faults: dict[str, int] = {}
        self._transition_policies: list[SchedulingPolicy] = []
        self._annotations: AnnotationCache | None = None
        self.started_at = 0.0
        #: the replicated-state handle (dask_oxigdal.coordination.Coordinator), or None
        #: when ``oxigdal.coordinator.enabled`` is off
        self.coordinator: Any = None
        self.monitoring: dict[str, bool] = {}
        #: identity/RBAC/audit (dask_oxigdal.auth.guard.AuthGuard) with oxigdal.auth.enabled
        self.auth: Any = None
        #: unknown tenant names already warned about
        self._unknown_tenants: set[str] = set()

    # ------------------------------------------------------------------ setup
    def _configure(self) -> None:
        r = resolve(self.options, self.coordinator)
        #: ``{tenant: TenantSettings}`` of the configured tenants
        self.tenants = r.tenants
        self.weights = {t: s.weight for t, s in r.tenants.items()}
        #: the per-tenant settings as ``oxigdal.tenants`` mappings, for policies such as Quota
        self.tenant_options = {t: s.options() for t, s in r.tenants.items()}
        self.default_tenant = r.default_tenant
        self.weights.setdefault(self.default_tenant, 1.0)
        self.strict = r.strict
        self.queues = r.queues
        self.queue_rank = {q: i for i, q in enumerate(self.queues)}
        self.default_queue = r.default_queue
        self.interval = r.interval
        self.usage_half_life = self.accounting.half_life = r.usage_half_life
        self.policies = r.policies
        self._annotations = AnnotationCache(self.resolve_tenant, self.queues, self.default_queue)

    #: build one policy from its ``{class: ..., **kwargs}`` entry
    _make_policy = staticmethod(make_policy)

    async def start(self, scheduler: Scheduler) -> None:
        """Attach to the scheduler: policies, handler and periodic callback.

        Parameters
        ----------
        scheduler : distributed.Scheduler
            The scheduler (``register_scheduler_plugin`` calls this).
        """
        if self.scheduler is not None:
            return
        if self.coordinator is None and setting("coordinator.enabled"):
            from dask_oxigdal.coordination import Coordinator

            self.coordinator = Coordinator(emit=self.emit)
            self.scheduler = scheduler  # for emit() while the coordinator starts
            try:
                await self.coordinator.start(scheduler.loop)
            except BaseException:
                # a corrupt journal or bad settings fail the start, loudly
                coordinator, self.coordinator = self.coordinator, None
                await coordinator.close(timeout=0)
                raise
            finally:
                self.scheduler = None
        self._configure()
        self._check_order()
        self.scheduler = scheduler
        self.accounting.nbytes_of = self._nbytes
        self.started_at = time.time()
        for policy in self.policies:
            try:
                policy.start(self)
            except ConfigError:
                # bad settings fail the registration (the client sees the error);
                # the policies started before give back what they took
                self._close_policies()
                self.scheduler = None
                raise
            except Exception as e:
                self._disable(policy, "start", e)
        self._refresh_transition_policies()
        self._coordinator_restore()
        if setting("auth.enabled"):
            from dask_oxigdal.auth.guard import AuthGuard

            self.auth = AuthGuard(self)
            self.auth.install()
        scheduler.handlers[STATUS_HANDLER] = self.status_handler
        # observability: Prometheus collector and the /oxigdal/ page (never raises)
        self.monitoring = self._run_start_hooks()
        old = scheduler.periodic_callbacks.pop(NAME, None)
        if old is not None:  # left by an extension that was unregistered (replace=True)
            old.stop()
            previous = getattr(old.callback, "__self__", None)
            if isinstance(previous, OxigdalScheduling) and previous is not self:
                previous._close_policies()
        pc = PeriodicCallback(self._periodic, self.interval * 1000.0)
        scheduler.periodic_callbacks[NAME] = pc
        pc.start()
        scheduler.log_event(NAME, {"action": "started", "policies": self.policy_names()})

    async def close(self) -> None:
        """Stop the periodic callback and remove the handler."""
        if self.scheduler is None:
            return
        pc = self.scheduler.periodic_callbacks.pop(NAME, None)
        if pc is not None:
            pc.stop()
        self.scheduler.handlers.pop(STATUS_HANDLER, None)
        if self.auth is not None:
            self.auth.uninstall()
        if self.coordinator is not None:
            self._coordinator_sync()
            await self.coordinator.close()

    def _run_start_hooks(self) -> dict[str, bool]:
        done: dict[str, bool] = {}
        for path in START_HOOKS:
            module, _, attr = path.partition(":")
            try:
                hook = getattr(importlib.import_module(module), attr)
                done.update(hook(self))
            except Exception:
                logger.exception("dask-oxigdal: start hook %s failed", path)
        return done

    # ---------------------------------------------------- annotations/tenants
    def resolve_tenant(self, tenant: str | None) -> str:
        """The accounting tenant of a task's ``tenant`` annotation.

        Parameters
        ----------
        tenant : str or None
            The annotation value.

        Returns
        -------
        str
            ``tenant`` if configured, else the default tenant (``strict``
            rejects it instead).

        Raises
        ------
        ValueError
            Unknown tenant with ``strict``.
        """
        listed = self.auth is None
        resolved = resolve_tenant(
            tenant, self.weights, self.default_tenant, self.strict, list_tenants=listed
        )
        if resolved != tenant and tenant is not None:
            warned = self._unknown_tenants
            if tenant not in warned and len(warned) < _WARN_TENANTS:
                # once per name (and a bounded number of names): a typo or a tenant
                # missing from oxigdal.tenants is otherwise silently someone else's
                warned.add(tenant)
                known = f"; configured tenants: {', '.join(sorted(self.weights))}" if listed else ""
                logger.warning(
                    "dask-oxigdal: unknown tenant %r is accounted to the default tenant %r%s "
                    "(add it to oxigdal.tenants, or set oxigdal.scheduling.strict to reject it)",
                    tenant,
                    resolved,
                    known,
                )
        return resolved

    def _parse(self, annotations: Any) -> tuple[Any, str, str]:
        assert self._annotations is not None
        return self._annotations.parse(annotations)

    # ------------------------------------------------------------ plugin hooks
    def update_graph(
        self,
        scheduler: Scheduler,
        *,
        client: str,
        keys: set,
        tasks: list,
        annotations: dict,
        priority: dict,
        stimulus_id: str,
        **kwargs: Any,
    ) -> None:
        """Record the new tasks, hold malformed ones, let policies rewrite priorities."""
        stasks = scheduler.tasks
        new: list[tuple[TaskState, TaskInfo]] = []
        info_map = self.info
        malformed = self.holds.malformed
        auth = self.auth
        denied = 0
        for key in tasks:
            if key in info_map or key in malformed:
                continue
            ts = stasks.get(key)
            if ts is None or ts.state != "released" or ts.run_spec is None:
                continue
            try:
                parsed, tenant, queue = self._parse(ts.annotations)
                if auth is not None:
                    tenant, queue = auth.admit(client, parsed, parsed.queue)
            except PermissionError as e:
                denied += 1
                denied_msg = str(e)
                self.holds.hold_malformed(ts, denied_msg, e)
                continue
            except ValueError as e:
                self.holds.hold_malformed(ts, error_text(e).removeprefix(f"{type(e).__name__}: "))
                continue
            except Exception as e:  # anything else about one task's annotations: its fault too
                self.holds.hold_malformed(ts, error_text(e))
                continue
            info = TaskInfo(tenant, queue, self.queue_rank[queue], parsed)
            info_map[key] = info
            # the worker learns the resolved tenant from the task (tenant namespaces)
            stamp_tenant(ts, parsed.tenant, info.tenant, self.default_tenant)
            new.append((ts, info))
            self.accounting.submitted(tenant)
        if denied:
            auth.denied_tasks(client, denied, denied_msg)
        if not new:
            return
        new.sort(key=lambda pair: pair[0].priority or ())
        for policy in self._active():
            try:
                policy.update_graph(new)
            except Exception as e:
                if not is_task_fault(e):
                    self._disable(policy, "update_graph", e)
                    continue
                # the policy stopped part-way through this submission: its tasks
                # cannot be known to be handled, so the whole submission is failed
                # (the policies before it see them err; the ones after never see them)
                self._task_fault(policy, "update_graph", [(ts.key, i) for ts, i in new], e)
                return

    # ------------------------------------------------- holds shared by policies
    def hold(self, ts: TaskState, info: TaskInfo, by: str) -> None:
        """Hold a task for policy ``by``: :meth:`Holds.hold <dask_oxigdal.scheduling.holds.Holds.hold>`."""
        self.holds.hold(ts, info, by)

    def unhold(self, ts: TaskState, info: TaskInfo, by: str) -> bool:
        """Drop the hold of ``by``; ``True`` when none is left: :meth:`Holds.unhold <dask_oxigdal.scheduling.holds.Holds.unhold>`."""
        return self.holds.unhold(ts, info, by)

    def reject(self, ts: TaskState, info: TaskInfo, exc: BaseException) -> None:
        """Fail a task with ``exc`` from a later tick: :meth:`Holds.reject <dask_oxigdal.scheduling.holds.Holds.reject>`."""
        self.holds.reject(ts, info, exc)

    def transitions(self, recs: dict, stimulus_id: str) -> None:
        """Enact a policy's ``{key: state}`` recommendations (never from a ``transition`` hook).

        Policies call this, not ``scheduler.transitions``
        (:meth:`Holds.transitions <dask_oxigdal.scheduling.holds.Holds.transitions>`);
        from a ``transition`` hook, :meth:`~SchedulingPolicy.defer` the work first.
        """
        self.holds.transitions(recs, stimulus_id)

    @property
    def malformed(self) -> dict[Any, str]:
        """``{key: message}`` of the held tasks whose annotations are malformed."""
        return self.holds.malformed

    @property
    def malformed_tasks(self) -> int:
        """How many tasks were held because their annotations are malformed."""
        return self.holds.malformed_tasks

    @property
    def _rejected(self) -> dict[Any, BaseException]:
        return self.holds.rejected

    def transition(
        self,
        key: Any,
        start: str,
        finish: str,
        *args: Any,
        stimulus_id: str,
        **kwargs: Any,
    ) -> None:
        """Per-task accounting and policy notifications (O(1))."""
        info = self.info.get(key)
        if info is None:
            holds = self.holds
            if holds.malformed and key in holds.malformed:
                holds.malformed_transition(key, finish)
            return
        self.holds.rejected_transition(key, finish)
        self.accounting.transition(key, info, start, finish, kwargs)
        for policy in self._transition_policies:
            try:
                policy.transition(key, start, finish, info, kwargs)
            except Exception as e:
                if is_task_fault(e):
                    self._task_fault(policy, "transition", [(key, info)], e)
                else:
                    self._disable(policy, "transition", e)
        if finish == "forgotten":
            del self.info[key]
            self.accounting.forgotten(info)

    def _nbytes(self, key: Any) -> int:
        ts = self.scheduler.tasks.get(key) if self.scheduler else None
        return ts.nbytes if ts is not None and ts.nbytes > 0 else 0

    def restart(self, scheduler: Scheduler) -> None:
        """Forget per-task state (every task was released); keep cumulative counters."""
        self.info.clear()
        self.holds.restart()
        self.accounting.restart()
        for policy in self._active():
            self._call(policy, "restart")

    def _periodic(self) -> None:
        scheduler = self.scheduler
        if scheduler is not None and scheduler.plugins.get(self.name) is not self:
            # unregistered: distributed's remove_plugin never calls close(); stop
            # ticking and let the policies give back what they hold
            pc = scheduler.periodic_callbacks.get(NAME)
            if pc is not None and getattr(pc.callback, "__self__", None) is self:
                pc.stop()
                del scheduler.periodic_callbacks[NAME]
            self._close_policies()
            return
        for policy in self._active():
            self._call(policy, "periodic")
        if self.coordinator is not None:
            self._coordinator_sync()

    # ------------------------------------------------------------ coordinator
    def _coordinator_restore(self) -> None:
        """Restore the usage ledgers recorded by the coordinator; record the tenants' settings."""
        restore_from_coordinator(self)

    def _coordinator_sync(self) -> None:
        """Write each tenant's usage since the last tick (one command per tenant), then flush."""
        if not self.accounting.restored:
            self._coordinator_restore()
        self.accounting.sync(self.coordinator)

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        """Tell the policies that a worker joined."""
        for policy in self._active():
            self._call(policy, "add_worker", worker)

    def remove_worker(
        self, scheduler: Scheduler, worker: str, *, stimulus_id: str, **kwargs: Any
    ) -> None:
        """Tell the policies that a worker left."""
        for policy in self._active():
            self._call(policy, "remove_worker", worker, stimulus_id)

    def emit(self, kind: str, **fields: Any) -> None:
        """Publish ``{"kind": kind, **fields}`` on the ``oxigdal`` event topic.

        Clients see it with ``client.get_events("oxigdal")`` and
        ``client.subscribe_topic("oxigdal", handler)``; it is also logged at
        INFO level on the ``dask_oxigdal.scheduling`` logger.

        Parameters
        ----------
        kind : str
            Event kind, e.g. ``"deadline-missed"``.
        **fields
            msgpack-serialisable values.

        Notes
        -----
        With a coordinator, every event but the coordinator's own is also
        appended to its replicated audit log (best effort: skipped while the
        write queue is half full).
        """
        _events.emit(self, kind, **fields)

    # ----------------------------------------------------------------- status
    def tenant_snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-tenant accounting: usage, counters, current and entitled share.

        Returns
        -------
        dict
            ``{tenant: {...}}``, JSON-serialisable.
        """
        return self.accounting.tenant_snapshot(self.weights)

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable snapshot of the extension and of every policy.

        Returns
        -------
        dict
            See :func:`dask_oxigdal.scheduling.snapshot.snapshot`.
        """
        return _snapshot.snapshot(self)

    def status_handler(self) -> dict[str, Any] | None:
        """Scheduler handler ``oxigdal_status``: :meth:`snapshot`.

        ``None`` once this extension was unregistered. With ``oxigdal.auth``,
        a principal without the ``admin`` role gets only its own tenants.
        """
        scheduler = self.scheduler
        if scheduler is None or scheduler.plugins.get(self.name) is not self:
            return None
        snap = self.snapshot()
        if self.auth is not None:
            from dask_oxigdal.auth.guard import current_identity

            view = self.auth.user_view(snap, current_identity())
            if view is not None:
                return view
            snap["auth"] = self.auth.snapshot()
        return snap
