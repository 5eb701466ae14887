"""Per-tenant accounting, and its sync with the coordinator.

One :class:`TenantUsage` per tenant: tasks submitted, completed, erred,
cancelled, pending and running; worker-seconds (the sum of the ``compute``
spans Dask reports); bytes in memory; and a recent-usage average with the
half-life ``oxigdal.scheduling.usage-half-life``. :meth:`Accounting.transition`
updates them in O(1) per task transition; :meth:`Accounting.tenant_snapshot`
turns them into shares for ``status()``.

With a coordinator, :meth:`Accounting.restore` adds the ledgers recorded
before a restart (and records the tenants' settings), and
:meth:`Accounting.sync` writes each tenant's deltas once per tick.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dask_oxigdal.scheduling._dask import compute_seconds
from dask_oxigdal.scheduling.tenants import recorded_tenants

if TYPE_CHECKING:
    from dask_oxigdal.scheduling.policy import TaskInfo

__all__ = ["Accounting", "TenantUsage", "restore_from_coordinator"]


class TenantUsage:
    """Per-tenant counters (plain attributes, read by ``tenant_snapshot``)."""

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


def _no_nbytes(key: Any) -> int:
    return 0


class Accounting:
    """The per-tenant ledgers of one extension.

    Parameters
    ----------
    half_life : float
        Half-life of the recent-usage average (seconds).
    """

    def __init__(self, half_life: float = 60.0) -> None:
        self.half_life = half_life
        #: ``(key) -> int``: a task's size in memory when the transition has none
        self.nbytes_of: Any = _no_nbytes
        #: tenant -> usage (the extension's ``usage``)
        self.usage: dict[str, TenantUsage] = {}
        self.restored = False

    def tenant(self, tenant: str) -> TenantUsage:
        """The usage record of ``tenant`` (created on first use)."""
        usage = self.usage.get(tenant)
        if usage is None:
            usage = self.usage[tenant] = TenantUsage()
        return usage

    def submitted(self, tenant: str) -> None:
        """A task of ``tenant`` entered the scheduler."""
        usage = self.tenant(tenant)
        usage.submitted += 1
        usage.pending += 1

    def transition(
        self,
        key: Any,
        info: TaskInfo,
        start: str,
        finish: str,
        kwargs: Mapping[str, Any],
    ) -> None:
        """Account one transition of a known task (O(1)); ``forgotten`` is :meth:`forgotten`.

        Parameters
        ----------
        key : object
        info : TaskInfo
        start, finish : str
        kwargs : mapping
            The transition hook's keyword arguments (``startstops``, ``nbytes``).
        """
        usage = self.usage[info.tenant]
        if finish == "processing":
            info.running = True
            usage.running += 1
        elif start == "processing":
            info.running = False
            usage.running -= 1
        if finish == "memory":
            if start == "processing":
                self._account(usage, compute_seconds(kwargs.get("startstops")))
            nbytes = kwargs.get("nbytes")
            if nbytes is None:
                nbytes = self.nbytes_of(key)
            info.nbytes = nbytes
            usage.bytes_in_memory += nbytes
            if not info.done:
                info.done = True
                usage.completed += 1
                usage.pending -= 1
        elif finish == "erred":
            if start == "processing":
                self._account(usage, compute_seconds(kwargs.get("startstops")))
            if not info.done:
                info.done = True
                usage.erred += 1
                usage.pending -= 1
        if start == "memory":
            usage.bytes_in_memory -= info.nbytes
            info.nbytes = 0

    def forgotten(self, info: TaskInfo) -> None:
        """A known task was forgotten: cancelled unless it finished."""
        if not info.done:
            usage = self.usage[info.tenant]
            usage.cancelled += 1
            usage.pending -= 1

    def _account(self, usage: TenantUsage, seconds: float) -> None:
        now = time.time()
        usage.worker_seconds += seconds
        usage.recent = usage.recent * 0.5 ** ((now - usage.recent_at) / self.half_life)
        usage.recent += seconds
        usage.recent_at = now

    def restart(self) -> None:
        """Every task was released: zero the live counters, keep the cumulative ones."""
        for usage in self.usage.values():
            usage.pending = usage.running = 0
            usage.bytes_in_memory = 0

    # ----------------------------------------------------------------- status
    def tenant_snapshot(self, weights: Mapping[str, float]) -> dict[str, dict[str, Any]]:
        """Per-tenant accounting: usage, counters, current and entitled share.

        Parameters
        ----------
        weights : mapping
            ``{tenant: weight}`` of the configured tenants.

        Returns
        -------
        dict
            ``{tenant: {...}}``, JSON-serialisable.
        """
        now = time.time()
        recent = {
            t: u.recent * 0.5 ** ((now - u.recent_at) / self.half_life)
            for t, u in self.usage.items()
        }
        total_recent = sum(recent.values())
        total_ws = sum(u.worker_seconds for u in self.usage.values())
        active = {t for t, u in self.usage.items() if u.pending > 0}
        active_weight = sum(weights.get(t, 1.0) for t in active)
        out: dict[str, dict[str, Any]] = {}
        for tenant in sorted(set(self.usage) | set(weights)):
            u = self.usage.get(tenant) or TenantUsage()
            weight = weights.get(tenant, 1.0)
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

    # ------------------------------------------------------------ coordinator
    def restore(self, coord: Any) -> bool:
        """Add the usage ledgers recorded by the coordinator (once, when it is ready).

        Parameters
        ----------
        coord : dask_oxigdal.coordination.Coordinator or None

        Returns
        -------
        bool
            Whether this call restored them.
        """
        if coord is None or self.restored or not coord.ready:
            return False
        self.restored = True
        for tenant, rec in coord.state.usage.items():
            u = self.tenant(tenant)
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
                    * 0.5 ** (max(u.recent_at - rec["recent_at"], 0.0) / self.half_life)
                    + u.recent
                )
        return True

    def sync(self, coord: Any) -> None:
        """Write each tenant's usage since the last call (one command per tenant), then flush.

        Parameters
        ----------
        coord : dask_oxigdal.coordination.Coordinator
        """
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


def restore_from_coordinator(ext: Any) -> None:
    """Restore the ledgers the coordinator recorded; record the tenants' settings (once).

    Tenants recorded but not configured are added (their weights; quotas
    apply from a restart); the configured tenants' settings are written when
    they differ from the recorded ones. Emits ``coordinator-restored``.

    Parameters
    ----------
    ext : OxigdalScheduling
        A configured extension with a coordinator.
    """
    coord = ext.coordinator
    if not ext.accounting.restore(coord):
        return
    state = coord.state
    # ready only after start: _configure could not merge the recorded tenants
    for tenant, entry in recorded_tenants(coord).items():
        if tenant not in ext.tenant_options and entry.get("weight") is not None:
            ext.weights[tenant] = float(entry["weight"])
            ext.tenant_options[tenant] = dict(entry)
    if ext._annotations is not None:
        ext._annotations.clear()  # a recorded tenant is no longer the default one
    for tenant, options in ext.tenant_options.items():
        settings = {
            "weight": ext.weights.get(tenant),
            "max_tasks": options.get("max-tasks", options.get("max_tasks")),
            "guaranteed_slots": options.get("guaranteed-slots", options.get("guaranteed_slots")),
        }
        recorded = state.tenants.get(tenant, {})
        if any(v is not None and recorded.get(k) != v for k, v in settings.items()):
            coord.tenant_set(tenant, **settings)
    ext.emit(
        "coordinator-restored",
        tenants=sorted(state.tenants),
        usage={t: r.get("worker_seconds", 0.0) for t, r in state.usage.items()},
        quarantine=len(state.quarantine),
        manifest=len(state.manifest),
    )
