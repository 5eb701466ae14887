"""``Quota``: per-tenant maximum concurrent tasks and guaranteed slots.

**Maximum** (``oxigdal.tenants.<tenant>.max-tasks``, or the policy's
``limits`` option): a limited tenant never has more than that many tasks
admitted, and so never more than that many in ``processing`` (on a worker,
running or in its ready heap).

**Guaranteed slots** (``oxigdal.tenants.<tenant>.guaranteed-slots``, or the
``guarantees`` option): a *slot* is one task in ``processing``; the cluster
has as many slots as its workers have threads (``scheduler.total_nthreads``).
A tenant with ``g`` guaranteed slots (an *owner*) always gets up to ``g``
slots when it has ready work. While it is idle, other tenants may borrow its
slots, so no thread sits idle. When it has ready work again, every slot that
frees goes to it until it holds its ``g`` slots; other tenants get a freed
slot only once no owner with ready work is below its guarantee. A borrowed
slot goes back when the borrowing task finishes: Dask cannot pre-empt a task
that is running on a worker thread.

How it works: in ``update_graph`` new tasks are held by restricting them to an
address no worker has; Dask parks each in ``no-worker`` once its
dependencies are done. Without guarantees only the tasks of limited tenants
are held; with guarantees every task is (the policy then decides who gets each
slot). The policy keeps the held tasks of each tenant in a heap ordered by
Dask priority (queue, fair-share tag, ...) and, from a later event-loop tick
(never from inside a transition), admits tasks: it drops the restriction and
sends the task back to ``waiting``, from where Dask queues or dispatches it as
usual. Admission runs in two passes:

1. owners below their guarantee (and their ``max-tasks``), best priority
   first, while the cluster has a free slot;
2. every tenant below its ``max-tasks``, best priority first (fair share and
   queues decide), while the cluster has a free slot (no slot limit without
   guarantees).

An admitted task stops counting when it finishes, errs or is forgotten. Held
tasks do not count, so a limited tenant's backlog never blocks other tenants.

Tasks that carry their own restrictions (``workers=``, ``allow_other_workers=``,
host names, ``resources=``) are held and admitted like the others: the hold
saves their restrictions and the admission restores them
(:meth:`OxigdalScheduling.hold <dask_oxigdal.scheduling.extension.OxigdalScheduling.hold>`),
so Dask then places them as they asked. So is a task with a ``locality``
annotation (``Locality``, listed after ``Quota``, leaves held tasks to it).
The bound holds for every task of a limited tenant: its tasks in
``processing`` never exceed its ``max-tasks``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo

if TYPE_CHECKING:
    from distributed.scheduler import TaskState

__all__ = ["Quota"]

_DONE = ("memory", "erred", "forgotten")


def _per_tenant(
    extension: Any, key: str, option: dict[str, Any], option_name: str
) -> dict[str, int]:
    """``{tenant: n}`` from ``oxigdal.tenants.<tenant>.<key>``, then the policy option."""
    values: dict[str, Any] = {}
    for tenant, options in extension.tenant_options.items():
        value = options.get(key, options.get(key.replace("-", "_")))
        if value is not None:
            values[tenant] = value
    for tenant, value in option.items():
        if str(tenant) not in extension.weights:
            raise ConfigError(
                f"Quota({option_name}=...): unknown tenant {tenant!r}; configured tenants: "
                f"{', '.join(sorted(extension.weights))}"
            )
        values[str(tenant)] = value
    for tenant, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"oxigdal.tenants.{tenant}.{key}={value!r} must be an integer >= 1")
    return {str(t): int(v) for t, v in values.items()}


class Quota(SchedulingPolicy):
    """Per-tenant maximum of concurrent tasks, and guaranteed slots.

    Parameters
    ----------
    limits : dict, optional
        ``{tenant: max concurrent tasks}``, merged over the ``max-tasks`` keys
        of ``oxigdal.tenants`` (``{tenant: {weight: w, max-tasks: n}}``).
    guarantees : dict, optional
        ``{tenant: guaranteed slots}``, merged over the ``guaranteed-slots``
        keys of ``oxigdal.tenants``. Tenants must be configured ones.
    """

    name = "Quota"

    def __init__(
        self,
        *,
        limits: dict[str, int] | None = None,
        guarantees: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self._limits_option = dict(limits or {})
        self._guarantees_option = dict(guarantees or {})
        self.limits: dict[str, int] = {}
        self.guarantees: dict[str, int] = {}
        self.admitted: dict[str, int] = {}
        self.admitted_total = 0
        self.held: dict[str, list[tuple[Any, int, Any]]] = {}
        self.held_keys: set[Any] = set()
        self.max_admitted: dict[str, int] = {}
        self.slots = 0
        self.enabled = False
        self._gangs = False
        self._seq = itertools.count()

    def start(self, extension: Any) -> None:
        """Read the limits and guarantees (tenant settings, then the options)."""
        super().start(extension)
        self.limits = _per_tenant(extension, "max-tasks", self._limits_option, "limits")
        self.guarantees = _per_tenant(
            extension, "guaranteed-slots", self._guarantees_option, "guarantees"
        )
        self.enabled = self.wants_transitions = bool(self.limits or self.guarantees)
        # gang members are admitted by the Gang policy (all together), not held here
        self._gangs = "Gang" in extension.policy_names()
        for tenant, g in self.guarantees.items():
            limit = self.limits.get(tenant)
            if limit is not None and g > limit:
                raise ConfigError(
                    f"oxigdal.tenants.{tenant}.guaranteed-slots={g} is more than its "
                    f"max-tasks={limit}: give guaranteed-slots <= max-tasks"
                )

    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """Hold the new tasks (of limited tenants; of every tenant with guarantees)."""
        if not (self.limits or self.guarantees):
            return
        gate = bool(self.guarantees)
        limits = self.limits
        ext = self.extension
        gangs = self._gangs
        for ts, info in new:
            if not gate and info.tenant not in limits:
                continue
            if gangs and info.annotations.gang is not None:
                continue  # the Gang policy admits its members (see headroom/admit)
            # restricted tasks too: the hold saves their restrictions, release restores them
            ext.hold(ts, info, self.name)
            self.held_keys.add(ts.key)

    def headroom(self, tenant: str) -> float:
        """How many more tasks of ``tenant`` may be admitted now (``inf`` if unlimited).

        The ``Gang`` policy starts a gang of ``k`` members only when this is at
        least ``k``, so a gang's slots count against its tenant's quota.

        Parameters
        ----------
        tenant : str

        Returns
        -------
        float
        """
        room = math.inf
        limit = self.limits.get(tenant)
        if limit is not None:
            room = limit - self.admitted.get(tenant, 0)
        if self.guarantees:
            slots = self.extension.scheduler.total_nthreads
            reserved = sum(
                max(0, g - self.admitted.get(t, 0))
                for t, g in self.guarantees.items()
                if t != tenant and self._top(t) is not None
            )
            room = min(room, slots - self.admitted_total - reserved)
        return room

    def admit(self, info: TaskInfo) -> None:
        """Count a task admitted by another policy (a gang member) against its tenant.

        Parameters
        ----------
        info : TaskInfo
        """
        if self.enabled and not info.admitted:
            self._admit(info)

    def _admit(self, info: TaskInfo) -> None:
        info.admitted = True
        self.admitted_total += 1
        n = self.admitted[info.tenant] = self.admitted.get(info.tenant, 0) + 1
        if n > self.max_admitted.get(info.tenant, 0):
            self.max_admitted[info.tenant] = n

    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Queue held tasks that became runnable; free a slot when an admitted task ends."""
        if not self.enabled:
            return
        if finish == "no-worker":
            if key in self.held_keys:
                ts = self.extension.scheduler.tasks.get(key)
                heap = self.held.get(info.tenant)
                if heap is None:
                    heap = self.held[info.tenant] = []
                heapq.heappush(heap, (ts.priority or (), next(self._seq), key))
                self._schedule_release()
        elif finish in _DONE:
            if self.held_keys:
                self.held_keys.discard(key)
            if info.admitted:
                info.admitted = False
                self.admitted[info.tenant] -= 1
                self.admitted_total -= 1
                if self.held_keys:
                    self._schedule_release()

    def _schedule_release(self) -> None:
        self.defer("release")

    def _top(self, tenant: str) -> tuple[Any, int, Any] | None:
        """The best held task of ``tenant`` that is still waiting in ``no-worker``."""
        heap = self.held.get(tenant)
        tasks = self.extension.scheduler.tasks
        while heap:
            key = heap[0][2]
            ts = tasks.get(key)
            if ts is not None and ts.state == "no-worker" and key in self.held_keys:
                return heap[0]
            heapq.heappop(heap)
        return None

    def _admit_best(self, order: list[Any], slots: float, eligible: Callable[[str], bool]) -> None:
        """Admit the best held task among ``eligible`` tenants while a slot is free."""
        info_map = self.extension.info
        while self.admitted_total < slots:
            best = None
            for tenant in self.held:
                if not eligible(tenant):
                    continue
                top = self._top(tenant)
                if top is not None and (best is None or top < best[0]):
                    best = (top, tenant)
            if best is None:
                return
            _, _, key = heapq.heappop(self.held[best[1]])
            info = info_map.get(key)
            self.held_keys.discard(key)
            if info is None:
                continue
            self._admit(info)
            order.append(key)

    def release(self) -> int:
        """Admit held tasks: owners below their guarantee first, then by priority.

        Called from the event loop (a callback), never from a transition hook.

        Returns
        -------
        int
            The number of tasks admitted.
        """
        scheduler = self.extension.scheduler
        limits, guarantees, admitted = self.limits, self.guarantees, self.admitted
        order: list[Any] = []
        if guarantees:
            self.slots = scheduler.total_nthreads
            slots: float = self.slots
            self._admit_best(
                order,
                slots,
                lambda t: t in guarantees and admitted.get(t, 0) < guarantees[t],
            )
        else:
            slots = math.inf
        self._admit_best(order, slots, lambda t: t not in limits or admitted.get(t, 0) < limits[t])
        if not order:
            return 0
        tasks = scheduler.tasks
        info_map = self.extension.info
        free = []
        for key in order:
            # another policy may still hold it: then that policy sends it on
            if self.extension.unhold(tasks[key], info_map[key], self.name):
                free.append(key)
        # Dask pops recommendations last-in first-out (and follows each task's
        # chain, waiting -> processing, before the next): insert the first
        # admitted last, so that tasks reach the workers in admission order.
        recs = {key: "waiting" for key in reversed(free)}
        self.extension.transitions(recs, f"oxigdal-quota-release-{next(self._seq)}")
        return len(order)

    def periodic(self) -> None:
        """Admit held tasks when slots appeared without a task finishing (a worker joined)."""
        if (
            self.guarantees
            and self.held_keys
            and self.extension.scheduler.total_nthreads > (self.admitted_total)
        ):
            self._schedule_release()

    def restart(self) -> None:
        """Every task was forgotten."""
        self.admitted.clear()
        self.admitted_total = 0
        self.held.clear()
        self.held_keys.clear()

    def snapshot(self) -> dict[str, Any]:
        """Limits, guarantees, admitted and held tasks per tenant."""
        return {
            "limits": dict(self.limits),
            "guarantees": dict(self.guarantees),
            "slots": self.slots,
            "admitted": {t: n for t, n in self.admitted.items() if n},
            "held": {t: len(h) for t, h in self.held.items() if h},
            "max_admitted": dict(self.max_admitted),
        }
