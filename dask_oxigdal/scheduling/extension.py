"""``OxigdalScheduling``: the scheduler plugin that hosts the scheduling policies.

Built like ``distributed/active_memory_manager.py`` and ``stealing.py``: one
:class:`~distributed.diagnostics.plugin.SchedulerPlugin` with a stable name,
a list of small policy objects configured as ``{class: dotted.path, **kwargs}``
(``oxigdal.scheduling.policies``), a ``PeriodicCallback`` stored in
``scheduler.periodic_callbacks``, and a scheduler handler
(``oxigdal_status``) that returns a JSON-serialisable snapshot.

The extension itself owns what every policy shares:

- the parsed annotations of each live task (:class:`TaskInfo`), its tenant
  and its queue; tenants come from ``oxigdal.tenants`` (or ``register``
  options), queues from ``oxigdal.scheduling.queues``;
- per-tenant accounting (worker-seconds, completed / erred / cancelled tasks,
  bytes in memory, recent and entitled share);
- robustness: tasks whose ``oxigdal_*`` annotations are malformed are held
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
import inspect
import json
import logging
import math
import pickle
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dask.utils import parse_timedelta
from distributed.diagnostics.plugin import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from dask_oxigdal import config as _config  # noqa: F401  (registers the defaults)
from dask_oxigdal.annotations import parse_annotations
from dask_oxigdal.exceptions import ConfigError, TaskRejected
from dask_oxigdal.isolation import stamp_tenant
from dask_oxigdal.monitoring.status import Status
from dask_oxigdal.scheduling.policy import TASK_FAULTS, SchedulingPolicy, TaskInfo
from dask_oxigdal.scheduling.settings import setting

if TYPE_CHECKING:
    from distributed import Client
    from distributed.scheduler import Scheduler, TaskState

__all__ = ["HOLD_ADDRESS", "OxigdalScheduling", "register", "status"]

logger = logging.getLogger(__name__)

#: A worker address no worker can have: tasks restricted to it wait in ``no-worker``.
HOLD_ADDRESS = "oxigdal-hold://nowhere:0"

#: Longest error text kept in events, logs and task errors (characters).
_MAX_ERROR = 500


def _error_text(exc: BaseException) -> str:
    """``"Type: message"``, cut to :data:`_MAX_ERROR` characters; never raises."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:
        text = f"{type(exc).__name__} (no message)"
    if len(text) > _MAX_ERROR:
        text = text[:_MAX_ERROR] + f"... ({len(text)} characters)"
    return text


def _is_task_fault(exc: BaseException) -> bool:
    """Whether ``exc``, raised while a policy handled one task, is that task's fault."""
    return isinstance(exc, TASK_FAULTS) and not isinstance(exc, ConfigError)


#: Name of the plugin, of its periodic callback and prefix of its handlers.
NAME = "oxigdal"
STATUS_HANDLER = "oxigdal_status"


def _import_class(path: str) -> type:
    module, _, attr = path.rpartition(".")
    if not module:
        raise ConfigError(
            f"oxigdal.scheduling.policies: class {path!r} is not a dotted path "
            "(e.g. dask_oxigdal.scheduling.fairshare.FairShare)"
        )
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"oxigdal.scheduling.policies: cannot import {path!r}: {e}") from e


#: Keys of a tenant's settings mapping (``oxigdal.tenants.<tenant>``).
TENANT_KEYS = frozenset(
    {"weight", "max-tasks", "max_tasks", "guaranteed-slots", "guaranteed_slots"}
)


def _parse_tenants(tenants: Mapping[str, Any] | None) -> dict[str, float]:
    weights: dict[str, float] = {}
    for name, value in (tenants or {}).items():
        if isinstance(value, Mapping):
            unknown = sorted(str(k) for k in value if str(k) not in TENANT_KEYS)
            if unknown:
                raise ConfigError(
                    f"oxigdal.tenants.{name}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                    "valid settings: weight, max-tasks, guaranteed-slots"
                )
            value = value.get("weight", 1)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"oxigdal.tenants.{name}: weight {value!r} is not a number "
                "(give a positive number, or a mapping with a 'weight' key)"
            )
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"oxigdal.tenants.{name}: weight {value!r} must be > 0")
        weights[str(name)] = float(value)
    return weights


def _recorded_tenants(coordinator: Any) -> dict[str, Any]:
    """Tenant settings recorded by the coordinator, as ``oxigdal.tenants`` mappings."""
    if coordinator is None or not coordinator.ready:
        return {}
    out: dict[str, Any] = {}
    for tenant, rec in coordinator.state.tenants.items():
        entry = {}
        for key, name in (
            ("weight", "weight"),
            ("max_tasks", "max-tasks"),
            ("guaranteed_slots", "guaranteed-slots"),
        ):
            if rec.get(key) is not None:
                entry[name] = rec[key]
        out[str(tenant)] = entry
    return out


class _TenantUsage:
    """Per-tenant counters (plain attributes, read by ``snapshot``)."""

    __slots__ = (
        "bytes_in_memory",
        "cancelled",
        "completed",
        "erred",
        "pending",
        "recent",
        "recent_at",
        "running",
        "submitted",
        "synced",
        "worker_seconds",
    )

    def __init__(self) -> None:
        self.submitted = 0
        self.completed = 0
        self.erred = 0
        self.cancelled = 0
        self.pending = 0
        self.running = 0
        self.worker_seconds = 0.0
        self.bytes_in_memory = 0
        self.recent = 0.0
        self.recent_at = time.time()
        # (worker_seconds, completed, erred) already written to the coordinator
        self.synced = (0.0, 0, 0)


def _compute_seconds(kwargs: Mapping[str, Any]) -> float:
    total = 0.0
    for ss in kwargs.get("startstops") or ():
        if ss.get("action") == "compute":
            total += ss["stop"] - ss["start"]
    return total


class OxigdalScheduling(SchedulerPlugin):
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
        self.usage: dict[str, _TenantUsage] = {}
        self.malformed: dict[Any, str] = {}
        self.malformed_tasks = 0
        self._to_fail: set[Any] = set()
        # key -> the exception of a held task that is not a ValueError (PermissionError)
        self._malformed_exc: dict[Any, BaseException] = {}
        self._fail_scheduled = False
        # key -> exception of tasks a policy rejected (``reject``), failed once in no-worker
        self._rejected: dict[Any, BaseException] = {}
        self._reject_scheduled = False
        #: tasks failed because a policy could not handle their input, per policy
        self.task_faults: dict[str, int] = {}
        self._transition_policies: list[SchedulingPolicy] = []
        self._parse_cache: dict[Any, Any] = {}
        self.started_at = 0.0
        #: the replicated-state handle (dask_oxigdal.coordination.Coordinator), or None
        #: when ``oxigdal.coordinator.enabled`` is off
        self.coordinator: Any = None
        self._restored = False
        self.monitoring: dict[str, bool] = {}
        #: identity/RBAC/audit (dask_oxigdal.auth.guard.AuthGuard) with oxigdal.auth.enabled
        self.auth: Any = None

    # ------------------------------------------------------------------ setup
    def _configure(self) -> None:
        o = self.options

        def cfg(key: str) -> Any:
            return setting(key.removeprefix("oxigdal."))

        tenants = _recorded_tenants(self.coordinator)
        for name, value in {**(cfg("oxigdal.tenants") or {}), **(o["tenants"] or {})}.items():
            # configured settings win over the recorded ones they name
            recorded = tenants.get(str(name), {})
            tenants[str(name)] = (
                {**recorded, **value}
                if isinstance(value, Mapping)
                else ({**recorded, "weight": value} if recorded else value)
            )
        self.weights = _parse_tenants(tenants)
        #: the raw per-tenant settings (weight or mapping), for policies such as Quota
        self.tenant_options = {
            str(k): dict(v) if isinstance(v, Mapping) else {"weight": v} for k, v in tenants.items()
        }
        self.default_tenant = str(o["default_tenant"] or cfg("oxigdal.scheduling.default-tenant"))
        self.weights.setdefault(self.default_tenant, 1.0)
        strict = o["strict"]
        self.strict = bool(cfg("oxigdal.scheduling.strict") if strict is None else strict)
        queues = o["queues"] if o["queues"] is not None else cfg("oxigdal.scheduling.queues")
        if not queues or not all(isinstance(q, str) and q for q in queues):
            raise ConfigError(
                f"oxigdal.scheduling.queues={queues!r}: give a non-empty list of queue names"
            )
        if len(set(queues)) != len(queues):
            raise ConfigError(f"oxigdal.scheduling.queues={queues!r} has duplicates")
        self.queues = list(queues)
        self.queue_rank = {q: i for i, q in enumerate(self.queues)}
        self.default_queue = o["default_queue"] or cfg("oxigdal.scheduling.default-queue")
        if self.default_queue not in self.queue_rank:
            raise ConfigError(
                f"oxigdal.scheduling.default-queue={self.default_queue!r} is not one of "
                f"the queues {self.queues}"
            )
        interval = o["interval"] or cfg("oxigdal.scheduling.interval")
        self.interval = parse_timedelta(interval)
        half_life = o["usage_half_life"] or cfg("oxigdal.scheduling.usage-half-life")
        self.usage_half_life = parse_timedelta(half_life)
        specs = o["policies"] if o["policies"] is not None else cfg("oxigdal.scheduling.policies")
        self.policies = [self._make_policy(spec) for spec in specs or ()]

    @staticmethod
    def _make_policy(spec: Any) -> SchedulingPolicy:
        if isinstance(spec, SchedulingPolicy):
            return spec
        if not isinstance(spec, Mapping) or "class" not in spec:
            raise ConfigError(
                f"oxigdal.scheduling.policies: entry {spec!r} is not a mapping with a 'class' key"
            )
        kwargs = {str(k).replace("-", "_"): v for k, v in spec.items() if k != "class"}
        cls = _import_class(spec["class"])
        if not (isinstance(cls, type) and issubclass(cls, SchedulingPolicy)):
            raise ConfigError(
                f"oxigdal.scheduling.policies: {spec['class']!r} is not a SchedulingPolicy"
            )
        try:
            accepted = inspect.signature(cls).parameters.values()
        except (TypeError, ValueError):  # no introspectable signature: let the call decide
            accepted = None
        if accepted is not None and not any(p.kind is p.VAR_KEYWORD for p in accepted):
            valid = sorted(
                p.name.replace("_", "-")
                for p in accepted
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            )
            unknown = sorted(k for k in kwargs if k.replace("_", "-") not in valid)
            if unknown:
                raise ConfigError(
                    f"oxigdal.scheduling.policies: {spec['class']!r} has no option "
                    f"{', '.join(repr(k.replace('_', '-')) for k in unknown)}; "
                    f"valid options: {', '.join(valid) or '(none)'}"
                )
        return cls(**kwargs)

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
        self.scheduler = scheduler
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
        from dask_oxigdal.monitoring.hooks import attach

        self.monitoring = attach(self)
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

    def policy_names(self) -> list[str]:
        """Names of the configured policies, in order."""
        return [self._policy_name(p) for p in self.policies]

    @staticmethod
    def _policy_name(policy: SchedulingPolicy) -> str:
        return policy.name or type(policy).__name__

    def get_policy(self, name: str) -> SchedulingPolicy:
        """The policy called ``name`` (its ``name`` or class name).

        Parameters
        ----------
        name : str
            Policy name.

        Returns
        -------
        SchedulingPolicy
        """
        for policy in self.policies:
            if self._policy_name(policy) == name:
                return policy
        raise KeyError(f"no policy {name!r}; policies are {self.policy_names()}")

    # --------------------------------------------------------- policy errors
    def _refresh_transition_policies(self) -> None:
        self._transition_policies = [
            p
            for p in self.policies
            if self._policy_name(p) not in self.disabled
            and type(p).transition is not SchedulingPolicy.transition
            and p.wants_transitions
        ]

    def _active(self) -> Iterable[SchedulingPolicy]:
        return [p for p in self.policies if self._policy_name(p) not in self.disabled]

    def run_policy(self, policy: SchedulingPolicy, method: str, *args: Any) -> Any:
        """Call ``policy.<method>(*args)`` unless the policy is disabled; disable it if it raises.

        Policies use this for deferred work (``scheduler.loop.add_callback``).

        Parameters
        ----------
        policy : SchedulingPolicy
        method : str
        *args
            Passed on.

        Returns
        -------
        object
            What the method returned, or ``None``.
        """
        if self._policy_name(policy) in self.disabled:
            return None
        return self._call(policy, method, *args)

    def _call(self, policy: SchedulingPolicy, method: str, *args: Any) -> Any:
        try:
            return getattr(policy, method)(*args)
        except Exception as e:
            self._disable(policy, method, e)
            return None

    def _disable(self, policy: SchedulingPolicy, method: str, exc: BaseException) -> None:
        name = self._policy_name(policy)
        logger.exception("oxigdal policy %s failed in %s(); disabling it", name, method)
        self.disabled[name] = f"{type(exc).__name__} in {method}(): {exc}"
        self._refresh_transition_policies()
        if self.scheduler is not None and callable(getattr(policy, "close", None)):
            # a policy that holds something (paused workers, held tasks) gives it
            # back; later, on the event loop, since this may run in a transition hook
            self.scheduler.loop.add_callback(self._close_policy, policy)
        if self.scheduler is not None:
            self.scheduler.log_event(
                NAME,
                {
                    "action": "policy-disabled",
                    "policy": name,
                    "method": method,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )

    def _task_fault(
        self,
        policy: SchedulingPolicy,
        method: str,
        tasks: list[tuple[Any, TaskInfo]],
        exc: BaseException,
    ) -> None:
        """``policy`` failed in ``method`` on the input of ``tasks`` (key, info): fail them.

        The policy stays enabled. Tasks already finished or forgotten are only
        counted and reported.
        """
        tasks = [(key, info) for key, info in tasks if key not in self._rejected]
        if not tasks:
            return  # already being failed (the policy raised again on a later transition)
        name = self._policy_name(policy)
        text = _error_text(exc)
        self.task_faults[name] = self.task_faults.get(name, 0) + len(tasks)
        first = tasks[0][0]
        what = f"task {first!r}" if len(tasks) == 1 else f"{len(tasks)} tasks of one submission"
        logger.warning(
            "oxigdal policy %s failed in %s() on %s; rejecting it: %s", name, method, what, text
        )
        error = TaskRejected(
            f"{what} rejected by dask-oxigdal: policy {name} could not handle "
            f"{'its' if len(tasks) == 1 else 'their'} annotations/events in {method}(): {text}"
        )
        for key, info in tasks:
            ts = self.scheduler.tasks.get(key) if self.scheduler is not None else None
            if (
                ts is not None
                and not info.done
                and ts.state not in ("forgotten", "memory", "erred")
                and self.info.get(key) is info
            ):
                self.reject(ts, info, error)
        if self.scheduler is not None:
            self.scheduler.log_event(
                NAME,
                {
                    "action": "task-rejected",
                    "policy": name,
                    "method": method,
                    "key": str(first),
                    "tasks": len(tasks),
                    "error": text,
                },
            )

    def _close_policies(self) -> None:
        """Close every policy that has a ``close()`` (this extension is gone)."""
        for policy in self.policies:
            if callable(getattr(policy, "close", None)):
                self._close_policy(policy)

    def _close_policy(self, policy: SchedulingPolicy) -> None:
        try:
            policy.close()  # type: ignore[attr-defined]
        except Exception:
            logger.exception("oxigdal policy %s failed in close()", self._policy_name(policy))

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
        if tenant is None:
            return self.default_tenant
        if tenant in self.weights:
            return tenant
        if self.strict:
            if self.auth is not None:  # never list the other tenants to a principal
                raise ValueError(f"unknown tenant {tenant!r} (oxigdal.scheduling.strict is on)")
            raise ValueError(
                f"unknown tenant {tenant!r} (oxigdal.scheduling.strict is on); "
                f"configured tenants: {', '.join(sorted(self.weights))}"
            )
        return self.default_tenant

    def _parse(self, annotations: Mapping[str, Any] | None) -> tuple[Any, str, str]:
        if annotations:
            # the type is part of the key: 1 == True == 1.0, but only some are valid
            items = tuple(
                (k, type(v), v)
                for k, v in annotations.items()
                if isinstance(k, str) and k.startswith("oxigdal_")
            )
        else:
            items = ()
        try:
            return self._parse_cache[items]
        except KeyError:
            pass
        except Exception:  # unhashable values (or a hash that raises): parse without the cache
            items = None
        parsed = parse_annotations(
            {k: v for k, _, v in items} if items is not None else annotations
        )
        tenant = self.resolve_tenant(parsed.tenant)
        queue = parsed.queue if parsed.queue is not None else self.default_queue
        if queue not in self.queue_rank:
            raise ValueError(
                f"unknown queue {queue!r} (annotation oxigdal_queue); valid queues "
                f"(highest priority first): {', '.join(self.queues)}"
            )
        result = (parsed, tenant, queue)
        if items is not None:
            if len(self._parse_cache) > 4096:
                self._parse_cache.clear()
            self._parse_cache[items] = result
        return result

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
        auth = self.auth
        denied = 0
        for key in tasks:
            if key in info_map or key in self.malformed:
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
                self._hold_malformed(ts, denied_msg, e)
                continue
            except ValueError as e:
                self._hold_malformed(ts, _error_text(e).removeprefix(f"{type(e).__name__}: "))
                continue
            except Exception as e:  # anything else about one task's annotations: its fault too
                self._hold_malformed(ts, _error_text(e))
                continue
            info = TaskInfo(tenant, queue, self.queue_rank[queue], parsed)
            info_map[key] = info
            # the worker learns the resolved tenant from the task (tenant namespaces)
            stamp_tenant(ts, parsed.tenant, info.tenant, self.default_tenant)
            new.append((ts, info))
            usage = self.usage.get(tenant)
            if usage is None:
                usage = self.usage[tenant] = _TenantUsage()
            usage.submitted += 1
            usage.pending += 1
        if denied:
            auth.denied_tasks(client, denied, denied_msg)
        if not new:
            return
        new.sort(key=lambda pair: pair[0].priority or ())
        for policy in self._active():
            try:
                policy.update_graph(new)
            except Exception as e:
                if not _is_task_fault(e):
                    self._disable(policy, "update_graph", e)
                    continue
                # the policy stopped part-way through this submission: its tasks
                # cannot be known to be handled, so the whole submission is failed
                # (the policies before it see them err; the ones after never see them)
                self._task_fault(policy, "update_graph", [(ts.key, i) for ts, i in new], e)
                return

    def _hold_malformed(
        self, ts: TaskState, message: str, exc: BaseException | None = None
    ) -> None:
        # Restricting a task to an address no worker has sends it to no-worker;
        # the transition hook then fails it from a later event-loop tick.
        self.malformed[ts.key] = message
        if exc is not None:
            self._malformed_exc[ts.key] = exc
        self.malformed_tasks += 1
        ts.worker_restrictions = {HOLD_ADDRESS}
        ts.host_restrictions = None  # a host restriction would add its workers back
        ts.loose_restrictions = False

    # ------------------------------------------------- holds shared by policies
    def hold(self, ts: TaskState, info: TaskInfo, by: str) -> None:
        """Hold a task for policy ``by``: restrict it to :data:`HOLD_ADDRESS`.

        A held task waits in ``no-worker`` (once its dependencies are done).
        Several policies may hold the same task; it is runnable again only when
        every one of them called :meth:`unhold`. The task's own restrictions
        (``workers=``, ``allow_other_workers=``, host names) are saved by the
        first hold and restored by the last :meth:`unhold`; a host restriction
        is cleared meanwhile (Dask adds the workers of a restricted host to the
        valid ones, which would let a held task run). ``resources=`` are left
        as they are: Dask intersects them with the hold address, which no
        worker has.

        Parameters
        ----------
        ts : distributed.scheduler.TaskState
        info : TaskInfo
        by : str
            Name of the holding policy.
        """
        if info.holds is None:
            info.holds = {by}
            if info.restrictions is None and ts.worker_restrictions != {HOLD_ADDRESS}:
                info.restrictions = (
                    ts.worker_restrictions,
                    ts.host_restrictions,
                    ts.loose_restrictions,
                )
        else:
            info.holds.add(by)
        ts.worker_restrictions = {HOLD_ADDRESS}
        ts.host_restrictions = None
        ts.loose_restrictions = False

    def unhold(self, ts: TaskState, info: TaskInfo, by: str) -> bool:
        """Drop the hold of policy ``by``; lift the restriction when no hold remains.

        Parameters
        ----------
        ts : distributed.scheduler.TaskState
        info : TaskInfo
        by : str
            Name of the policy that held it.

        Returns
        -------
        bool
            ``True`` when no policy holds the task any more: the caller may
            then send it on (``waiting``, or pin it to a worker first).
        """
        holds = info.holds
        if holds:
            holds.discard(by)
            if holds:
                return False
        info.holds = None
        saved, info.restrictions = info.restrictions, None
        if ts.worker_restrictions == {HOLD_ADDRESS}:
            if saved is None:
                ts.worker_restrictions = None
            else:
                ts.worker_restrictions, ts.host_restrictions, ts.loose_restrictions = saved
        return True

    def reject(self, ts: TaskState, info: TaskInfo, exc: BaseException) -> None:
        """Fail a task with ``exc`` (its futures raise it), from a later event-loop tick.

        The task is held; once it is in ``no-worker`` it is transitioned to
        ``erred``. A task in ``processing`` is released first (its worker is
        told to drop it), so it comes back to ``no-worker`` and is failed there.
        Never re-enters the state machine: safe from any policy hook.

        Parameters
        ----------
        ts : distributed.scheduler.TaskState
        info : TaskInfo
        exc : BaseException
            Picklable exception; its message should name the reason.
        """
        self._rejected[ts.key] = exc
        self.hold(ts, info, "reject")
        if ts.state in ("no-worker", "processing", "queued"):
            self._schedule_reject()

    def _schedule_reject(self) -> None:
        if not self._reject_scheduled and self.scheduler is not None:
            self._reject_scheduled = True
            self.scheduler.loop.add_callback(self._fail_rejected)

    def _fail_rejected(self) -> None:
        self._reject_scheduled = False
        scheduler = self.scheduler
        if scheduler is None:
            return
        stimulus_id = f"oxigdal-reject-{time.time()}"
        release: dict = {}
        recs: dict = {}
        for key, exc in list(self._rejected.items()):
            ts = scheduler.tasks.get(key)
            if ts is None:
                del self._rejected[key]
                continue
            if ts.state in ("processing", "queued"):
                release[key] = "released"
                continue
            if ts.state != "no-worker":
                continue
            del self._rejected[key]
            recs.update(self._erred(key, exc, f"{type(exc).__name__}: {exc}", stimulus_id))
        if release:
            # processing/queued -> released -> waiting -> no-worker (held) -> erred
            scheduler.transitions(release, stimulus_id)
        if recs:
            scheduler.transitions(recs, stimulus_id)

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
            if self.malformed and key in self.malformed:
                self._malformed_transition(key, finish)
            return
        if finish == "no-worker" and self._rejected and key in self._rejected:
            self._schedule_reject()
        elif finish in ("erred", "forgotten", "memory") and self._rejected:
            self._rejected.pop(key, None)
        usage = self.usage[info.tenant]
        if finish == "processing":
            info.running = True
            usage.running += 1
        elif start == "processing":
            info.running = False
            usage.running -= 1
        if finish == "memory":
            if start == "processing":
                self._account(usage, _compute_seconds(kwargs))
            nbytes = kwargs.get("nbytes")
            if nbytes is None:
                ts = self.scheduler.tasks.get(key) if self.scheduler else None
                nbytes = ts.nbytes if ts is not None and ts.nbytes > 0 else 0
            info.nbytes = nbytes
            usage.bytes_in_memory += nbytes
            if not info.done:
                info.done = True
                usage.completed += 1
                usage.pending -= 1
        elif finish == "erred":
            if start == "processing":
                self._account(usage, _compute_seconds(kwargs))
            if not info.done:
                info.done = True
                usage.erred += 1
                usage.pending -= 1
        if start == "memory":
            usage.bytes_in_memory -= info.nbytes
            info.nbytes = 0
        for policy in self._transition_policies:
            try:
                policy.transition(key, start, finish, info, kwargs)
            except Exception as e:
                if _is_task_fault(e):
                    self._task_fault(policy, "transition", [(key, info)], e)
                else:
                    self._disable(policy, "transition", e)
        if finish == "forgotten":
            del self.info[key]
            if not info.done:
                usage.cancelled += 1
                usage.pending -= 1

    def _account(self, usage: _TenantUsage, seconds: float) -> None:
        now = time.time()
        usage.worker_seconds += seconds
        usage.recent = usage.recent * 0.5 ** ((now - usage.recent_at) / self.usage_half_life)
        usage.recent += seconds
        usage.recent_at = now

    def _malformed_transition(self, key: Any, finish: str) -> None:
        if finish == "no-worker":
            self._to_fail.add(key)
            if not self._fail_scheduled and self.scheduler is not None:
                self._fail_scheduled = True
                # Never re-enter the state machine from inside a transition hook.
                self.scheduler.loop.add_callback(self._fail_malformed)
        elif finish in ("erred", "forgotten", "memory"):
            self.malformed.pop(key, None)
            self._to_fail.discard(key)
            if self._malformed_exc:
                self._malformed_exc.pop(key, None)

    def _erred(self, key: Any, exc: BaseException, text: str, stimulus_id: str) -> dict:
        """Transition a ``no-worker`` task to ``erred`` with ``exc``; the follow-up recs."""
        assert self.scheduler is not None
        return self.scheduler.transition(
            key,
            "erred",
            stimulus_id=stimulus_id,
            exception=pickle.dumps(exc),
            exception_text=text,
            cause=key,
        )

    def _fail_malformed(self) -> None:
        self._fail_scheduled = False
        scheduler = self.scheduler
        if scheduler is None:
            return
        keys, self._to_fail = self._to_fail, set()
        stimulus_id = f"oxigdal-malformed-annotations-{time.time()}"
        recs: dict = {}
        for key in keys:
            ts = scheduler.tasks.get(key)
            message = self.malformed.get(key)
            if ts is None or message is None or ts.state != "no-worker":
                continue
            exc = self._malformed_exc.pop(key, None) or ValueError(
                f"task {key!r} rejected by dask-oxigdal: {message}"
            )
            recs.update(self._erred(key, exc, str(exc), stimulus_id))
            scheduler.log_event(
                NAME, {"action": "malformed-annotations", "key": str(key), "error": message}
            )
        if recs:
            scheduler.transitions(recs, stimulus_id)

    def restart(self, scheduler: Scheduler) -> None:
        """Forget per-task state (every task was released); keep cumulative counters."""
        self.info.clear()
        self.malformed.clear()
        self._malformed_exc.clear()
        self._to_fail.clear()
        self._rejected.clear()
        for usage in self.usage.values():
            usage.pending = usage.running = 0
            usage.bytes_in_memory = 0
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
        coord = self.coordinator
        if coord is None or self._restored or not coord.ready:
            return
        self._restored = True
        state = coord.state
        # ready only after start: _configure could not merge the recorded tenants;
        # add those that are not configured (weights; quotas apply from a restart)
        for tenant, entry in _recorded_tenants(coord).items():
            if tenant not in self.tenant_options and entry.get("weight") is not None:
                self.weights[tenant] = float(entry["weight"])
                self.tenant_options[tenant] = dict(entry)
        for tenant, rec in state.usage.items():
            u = self.usage.get(tenant)
            if u is None:
                u = self.usage[tenant] = _TenantUsage()
            ws, done, erred = (
                rec.get("worker_seconds", 0.0),
                rec.get("completed", 0),
                rec.get("erred", 0),
            )
            u.worker_seconds += ws
            u.completed += done
            u.erred += erred
            u.submitted += done + erred
            u.synced = (u.synced[0] + ws, u.synced[1] + done, u.synced[2] + erred)
            if "recent" in rec:
                u.recent = (
                    rec["recent"]
                    * 0.5 ** (max(u.recent_at - rec["recent_at"], 0.0) / self.usage_half_life)
                    + u.recent
                )
        for tenant, options in self.tenant_options.items():
            settings = {
                "weight": self.weights.get(tenant),
                "max_tasks": options.get("max-tasks", options.get("max_tasks")),
                "guaranteed_slots": options.get(
                    "guaranteed-slots", options.get("guaranteed_slots")
                ),
            }
            recorded = state.tenants.get(tenant, {})
            if any(v is not None and recorded.get(k) != v for k, v in settings.items()):
                coord.tenant_set(tenant, **settings)
        self.emit(
            "coordinator-restored",
            tenants=sorted(state.tenants),
            usage={t: r.get("worker_seconds", 0.0) for t, r in state.usage.items()},
            quarantine=len(state.quarantine),
            manifest=len(state.manifest),
        )

    def _coordinator_sync(self) -> None:
        """Write each tenant's usage since the last tick (one command per tenant), then flush."""
        coord = self.coordinator
        if not self._restored:
            self._coordinator_restore()
        for tenant, u in self.usage.items():
            ws, done, erred = u.synced
            if u.worker_seconds != ws or u.completed != done or u.erred != erred:
                rid = coord.usage_add(
                    tenant,
                    u.worker_seconds - ws,
                    completed=u.completed - done,
                    erred=u.erred - erred,
                    recent=u.recent,
                    recent_at=u.recent_at,
                )
                if rid is not None:  # queue full: the delta goes with the next tick
                    u.synced = (u.worker_seconds, u.completed, u.erred)
        coord.flush()

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
        msg = {"kind": kind, **fields}
        logger.info("oxigdal event %s", msg)
        if self.scheduler is not None:
            self.scheduler.log_event(NAME, msg)
        coord = self.coordinator
        if coord is not None and not kind.startswith("coordinator-"):
            # the coordinator's append-only audit log (best effort, batched)
            alert = fields.get("alert")
            if not (isinstance(alert, str) and alert.startswith("coordinator-")):
                try:
                    coord.audit({**msg, "at": time.time()})
                except Exception:
                    logger.debug("oxigdal: audit entry %s not recorded", kind, exc_info=True)

    # ----------------------------------------------------------------- status
    def tenant_snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-tenant accounting: usage, counters, current and entitled share.

        Returns
        -------
        dict
            ``{tenant: {...}}``, JSON-serialisable.
        """
        now = time.time()
        recent = {
            t: u.recent * 0.5 ** ((now - u.recent_at) / self.usage_half_life)
            for t, u in self.usage.items()
        }
        total_recent = sum(recent.values())
        total_ws = sum(u.worker_seconds for u in self.usage.values())
        active = {t for t, u in self.usage.items() if u.pending > 0}
        active_weight = sum(self.weights.get(t, 1.0) for t in active)
        out: dict[str, dict[str, Any]] = {}
        for tenant in sorted(set(self.usage) | set(self.weights)):
            u = self.usage.get(tenant) or _TenantUsage()
            weight = self.weights.get(tenant, 1.0)
            out[tenant] = {
                "weight": weight,
                "submitted": u.submitted,
                "completed": u.completed,
                "erred": u.erred,
                "cancelled": u.cancelled,
                "pending": u.pending,
                "running": u.running,
                "worker_seconds": u.worker_seconds,
                "bytes_in_memory": u.bytes_in_memory,
                "current_share": recent.get(tenant, 0.0) / total_recent if total_recent else 0.0,
                "lifetime_share": u.worker_seconds / total_ws if total_ws else 0.0,
                "entitled_share": weight / active_weight if tenant in active else 0.0,
            }
        return out

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable snapshot of the extension and of every policy.

        Returns
        -------
        dict
            ``installed``, ``policies`` (each with ``enabled`` and its own
            state), ``disabled`` (name -> reason), ``tenants``, ``queues``,
            ``tasks_tracked``, ``malformed_tasks``, ``task_faults`` (policy ->
            tasks it rejected because it could not handle their input).
        """
        policies: dict[str, Any] = {}
        for policy in self.policies:
            name = self._policy_name(policy)
            try:
                state = policy.snapshot()
            except Exception as e:  # a broken snapshot must not break status()
                state = {"error": f"{type(e).__name__}: {e}"}
            policies[name] = {"enabled": name not in self.disabled, **state}
        return {
            "installed": True,
            "name": NAME,
            "started_at": self.started_at,
            "policies": policies,
            "disabled": dict(self.disabled),
            "tenants": self.tenant_snapshot(),
            "queues": list(self.queues),
            "default_queue": self.default_queue,
            "default_tenant": self.default_tenant,
            "strict": self.strict,
            "tasks_tracked": len(self.info),
            "malformed_tasks": self.malformed_tasks,
            "task_faults": dict(self.task_faults),
            "topology": _topology_status(self.scheduler),
            "coordinator": (
                self.coordinator.snapshot()
                if self.coordinator is not None
                else {"role": "disabled", "leader": None, "commit_index": 0, "queued_writes": 0}
            ),
        }

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


def _topology_status(scheduler: Any) -> dict[str, Any] | None:
    """The topology extension's snapshot (``dask_oxigdal.placement``), ``None`` when absent."""
    from dask_oxigdal.placement.topology_cost import topology_status

    return topology_status(scheduler)


def register(client: Client, *, replace: bool = False, **options: Any) -> Any:
    """Install :class:`OxigdalScheduling` on the client's scheduler (idempotent).

    A second call with the extension already installed does nothing (the
    plugin is ``idempotent``), whatever its options; pass ``replace=True`` to
    remove the installed extension (and its state) first.

    Parameters
    ----------
    client : distributed.Client
        A connected client (synchronous or asynchronous).
    replace : bool, default False
        Unregister an installed extension first.
    **options
        :class:`OxigdalScheduling` arguments (``tenants``, ``policies``,
        ``queues``, ``default_queue``, ``strict``, ...). Unset ones are read
        from the scheduler's dask config.

    Returns
    -------
    None or awaitable
        An awaitable with an asynchronous client.
    """
    plugin = OxigdalScheduling(**options)
    if not replace:
        return client.register_plugin(plugin)

    async def _replace() -> None:
        try:
            await client.scheduler.unregister_scheduler_plugin(name=NAME)
        except Exception:  # not installed: nothing to replace
            pass
        await client.scheduler.register_scheduler_plugin(
            plugin=_dumps(plugin), name=NAME, idempotent=False
        )

    return client.sync(_replace)


def _dumps(obj: Any) -> bytes:
    from distributed.protocol.pickle import dumps

    return dumps(obj)


def status(client: Client) -> Any:
    """JSON-serialisable snapshot of the scheduler extension and its policies.

    Parameters
    ----------
    client : distributed.Client
        A connected client (synchronous or asynchronous).

    Returns
    -------
    Status or awaitable
        The snapshot, a ``dict`` subclass with an HTML ``_repr_html_`` for
        Jupyter (``{"installed": False}`` when the extension is not
        installed); an awaitable with an asynchronous client.
    """

    async def _status() -> dict[str, Any]:
        # a scheduler without the handler answers None (distributed logs "No handler")
        snap = await client.scheduler.oxigdal_status()
        if not snap:
            return Status({"installed": False})
        # msgpack turns lists into tuples: hand back plain JSON types
        return Status(json.loads(json.dumps(snap)))

    return client.sync(_status)
