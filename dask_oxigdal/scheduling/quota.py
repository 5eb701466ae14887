"""``Quota``: a per-tenant maximum of concurrent tasks.

A tenant with a limit (``oxigdal.tenants.<tenant>.max-tasks``, or the
policy's ``limits`` option) never has more than that many tasks admitted, and
so never more than that many in ``processing`` (on a worker, running or in
its ready heap).

How it works: in ``update_graph`` every new task of a limited tenant is held
by restricting it to an address no worker has; Dask parks it in ``no-worker``
once its dependencies are done. The policy keeps the held tasks of each
tenant in a heap ordered by Dask priority (queue, fair-share tag, ...) and,
from a later event-loop tick (never from inside a transition), admits the
best ones while the tenant has fewer than its limit admitted: it drops the
restriction and sends the task back to ``waiting``, from where Dask queues or
dispatches it as usual. An admitted task stops counting when it finishes,
errs or is forgotten. Held tasks do not count, so a limited tenant's backlog
never blocks other tenants.

Tasks that carry their own worker/host/resource restrictions are not held
(they are rare and Dask already constrains them); they are still counted.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Any

from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo

if TYPE_CHECKING:
    from distributed.scheduler import TaskState

__all__ = ["Quota"]

_DONE = ("memory", "erred", "forgotten")


class Quota(SchedulingPolicy):
    """Per-tenant maximum number of concurrent tasks.

    Parameters
    ----------
    limits : dict, optional
        ``{tenant: max concurrent tasks}``, merged over the ``max-tasks`` keys
        of ``oxigdal.tenants`` (``{tenant: {weight: w, max-tasks: n}}``).
    """

    name = "Quota"

    def __init__(self, *, limits: dict[str, int] | None = None) -> None:
        super().__init__()
        self._limits_option = dict(limits or {})
        self.limits: dict[str, int] = {}
        self.admitted: dict[str, int] = {}
        self.held: dict[str, list[tuple[Any, int, Any]]] = {}
        self.held_keys: set[Any] = set()
        self.max_admitted: dict[str, int] = {}
        self._seq = itertools.count()
        self._release_scheduled = False

    def start(self, extension: Any) -> None:
        """Read the limits (tenant settings, then the ``limits`` option)."""
        super().start(extension)
        limits: dict[str, Any] = {}
        for tenant, options in extension.tenant_options.items():
            value = options.get("max-tasks", options.get("max_tasks"))
            if value is not None:
                limits[tenant] = value
        limits.update(self._limits_option)
        for tenant, value in limits.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"oxigdal.tenants.{tenant}.max-tasks={value!r} must be an integer >= 1"
                )
        self.limits = {str(t): int(v) for t, v in limits.items()}

    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """Hold the new tasks of limited tenants."""
        if not self.limits:
            return
        from dask_oxigdal.scheduling.extension import HOLD_ADDRESS

        for ts, info in new:
            if info.tenant not in self.limits:
                continue
            if ts.worker_restrictions or ts.host_restrictions or ts.resource_restrictions:
                self._admit(info)  # not held, but counted
                continue
            ts.worker_restrictions = {HOLD_ADDRESS}
            ts.loose_restrictions = False
            self.held_keys.add(ts.key)

    def _admit(self, info: TaskInfo) -> None:
        info.admitted = True
        n = self.admitted[info.tenant] = self.admitted.get(info.tenant, 0) + 1
        if n > self.max_admitted.get(info.tenant, 0):
            self.max_admitted[info.tenant] = n

    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Queue held tasks that became runnable; free a slot when an admitted task ends."""
        if not self.limits:
            return
        if finish == "no-worker" and key in self.held_keys:
            ext = self.extension
            ts = ext.scheduler.tasks.get(key)
            heap = self.held.setdefault(info.tenant, [])
            heapq.heappush(heap, (ts.priority or (), next(self._seq), key))
            self._schedule_release()
        elif finish in _DONE:
            self.held_keys.discard(key)
            if info.admitted:
                info.admitted = False
                self.admitted[info.tenant] -= 1
                if self.held.get(info.tenant):
                    self._schedule_release()

    def _schedule_release(self) -> None:
        if not self._release_scheduled:
            self._release_scheduled = True
            ext = self.extension
            ext.scheduler.loop.add_callback(ext.run_policy, self, "release")

    def release(self) -> int:
        """Admit held tasks while their tenant is under its limit (event loop, not a hook).

        Returns
        -------
        int
            The number of tasks admitted.
        """
        self._release_scheduled = False
        ext = self.extension
        scheduler = ext.scheduler
        recs: dict[Any, str] = {}
        for tenant, heap in self.held.items():
            limit = self.limits.get(tenant)
            while heap and (limit is None or self.admitted.get(tenant, 0) < limit):
                _, _, key = heapq.heappop(heap)
                ts = scheduler.tasks.get(key)
                info = ext.info.get(key)
                if (
                    ts is None
                    or info is None
                    or ts.state != "no-worker"
                    or key not in self.held_keys
                ):
                    continue
                self.held_keys.discard(key)
                ts.worker_restrictions = None
                ts.loose_restrictions = False
                self._admit(info)
                recs[key] = "waiting"
        if recs:
            scheduler.transitions(recs, stimulus_id=f"oxigdal-quota-release-{next(self._seq)}")
        return len(recs)

    def restart(self) -> None:
        """Every task was forgotten."""
        self.admitted.clear()
        self.held.clear()
        self.held_keys.clear()

    def snapshot(self) -> dict[str, Any]:
        """Limits, admitted and held tasks per tenant."""
        return {
            "limits": dict(self.limits),
            "admitted": {t: n for t, n in self.admitted.items() if n},
            "held": {t: len(h) for t, h in self.held.items() if h},
            "max_admitted": dict(self.max_admitted),
        }
