"""``Gang``: all-or-nothing admission of the tasks submitted with one ``gang=`` name.

What a gang is
--------------
The tasks of one submission (one ``client.map`` / ``submit`` / ``compute``
call) that carry the same ``gang`` annotation form a gang of ``k`` members.
No member starts until ``k`` worker slots (idle worker threads) can be given
to it at once; the members are then dispatched together, one slot each.

How it works
------------
- ``update_graph``: the members are held (restricted to
  :data:`~dask_oxigdal.scheduling.extension.HOLD_ADDRESS` through
  :meth:`OxigdalScheduling.hold`); Dask parks each one in ``no-worker`` once
  its dependencies are done. A gang larger than the cluster's slots
  (``Scheduler.total_nthreads``) is refused with :class:`GangTooLarge`, at
  once or after ``oxigdal.gang.timeout`` when set (while the ``Autoscaling``
  policy is on, a ``0s`` timeout means ``oxigdal.autoscaling.gang-timeout``).
- From a later event-loop tick (scheduled when a member becomes ready, when
  any task leaves ``processing``, when a worker joins, and periodically), the
  policy looks at the waiting gangs in (queue, arrival) order. A gang starts
  when all its members are in ``no-worker``, the running workers have ``k``
  idle threads (``nthreads - len(processing)``), and its tenant's quota has
  room for ``k`` tasks (``Quota.headroom``). Each member is then pinned to a
  chosen worker (``worker_restrictions = {address}``) and all members are
  transitioned to ``processing`` in one ``Scheduler.transitions`` call: Dask
  sends them in the same event-loop tick.
- Placement: ``spread`` (default; distinct workers where possible, the
  workers with most idle threads first) or ``pack`` (fill the worker with
  most idle threads first).
- Head of line and reservation: the *head* gang is the first waiting gang (in
  queue order) that is ready and could run on this cluster but lacks idle
  threads: it is not bigger than the cluster and its tenant's quota has room
  for its ``k`` members (``Quota.headroom``). A gang its quota blocks is
  skipped, since freed threads would not let it start: it reserves nothing,
  and only its own tenant's later gangs wait behind it. For ``oxigdal.gang.reserve-wait`` the head gang
  *reserves*: later gangs do not start ahead of it, and the ordinary tasks
  waiting in Dask's queue (``scheduler.queued``) whose queue rank is the
  gang's or lower are held back (moved to ``no-worker``), so the threads that
  free up add up for it. Ordinary tasks of a higher-priority queue are never
  held for it, nor are tasks Dask does not queue (non-root tasks, or all tasks
  with ``worker-saturation: inf``). Then the reservation lifts for as long
  again (smaller gangs may start around it, held tasks go back to Dask), and
  so on in turns. With ``reserve-wait: 0s`` nothing is held back: a freed
  thread goes to whatever Dask runs next. See docs/gangs-and-deadlines.md.
- Names are per tenant: a live gang is known by (tenant, name), so a name
  one tenant uses neither blocks nor joins another tenant's gang of the same
  name (the tenant is the task's resolved ``TaskInfo.tenant``).
- Whole-gang restart: when a running member leaves ``processing`` without
  finishing (its worker died), every member that has not finished is held
  again and released from its worker; the gang goes back to waiting and starts
  again as a whole. ``oxigdal.gang.max-restarts`` bounds the restarts; past it
  the members err with :class:`GangError`.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

from dask_oxigdal.exceptions import ConfigError, GangError, GangTooLarge
from dask_oxigdal.scheduling._dask import idle_threads
from dask_oxigdal.scheduling.gang_phases import GangPhases
from dask_oxigdal.scheduling.gangs import _LEFT, PLACEMENTS, _away_from_previous, _Gang, place
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo
from dask_oxigdal.scheduling.settings import setting
from dask_oxigdal.settings import duration

if TYPE_CHECKING:
    from distributed.scheduler import TaskState

    from dask_oxigdal.scheduling.extension import OxigdalScheduling

__all__ = ["PLACEMENTS", "Gang"]


class Gang(GangPhases, SchedulingPolicy):
    """All-or-nothing admission of gangs (``annotate(gang=...)``).

    Parameters
    ----------
    placement : {"spread", "pack"}, optional
        Where the members go (``oxigdal.gang.placement``).
    timeout : str or float, optional
        How long a gang larger than the cluster waits for workers to join
        before it errs (``oxigdal.gang.timeout``); ``0``/``None`` in the
        config: refuse at once.
    max_restarts : int, optional
        Whole-gang restarts allowed per gang (``oxigdal.gang.max-restarts``).
    reserve_wait : str or float, optional
        How long the head gang keeps later gangs from starting ahead of it
        (``oxigdal.gang.reserve-wait``).
    shrink_wait : str or float, optional
        How long an accepted gang waits when workers left and the cluster
        became smaller than the gang, before it errs
        (``oxigdal.gang.shrink-wait``; at least ``timeout``).
    """

    name = "Gang"

    def __init__(
        self,
        *,
        placement: str | None = None,
        timeout: str | float | None = None,
        max_restarts: int | None = None,
        reserve_wait: str | float | None = None,
        shrink_wait: str | float | None = None,
    ) -> None:
        super().__init__()
        placement = setting("gang.placement", placement)
        if placement not in PLACEMENTS:
            raise ConfigError(
                f"oxigdal.gang.placement={placement!r} is not valid; choose one of "
                f"{', '.join(PLACEMENTS)}"
            )
        self.placement = placement
        timeout = setting("gang.timeout", timeout)
        self.timeout = duration("gang.timeout", timeout) if timeout else 0.0
        restarts = setting("gang.max-restarts", max_restarts)
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
            raise ConfigError(f"oxigdal.gang.max-restarts={restarts!r} must be an integer >= 0")
        self.max_restarts = restarts
        self.reserve_wait = duration("gang.reserve-wait", reserve_wait)
        self.shrink_wait = duration("gang.shrink-wait", shrink_wait)
        self.gangs: dict[tuple[str, str], _Gang] = {}  # live gangs by (tenant, name)
        self.waiting: dict[int, _Gang] = {}  # by seq (arrival order)
        self._seq = itertools.count(1)
        self.started = 0
        self.started_by_tenant: dict[str, int] = {}
        self.completed = 0
        self.restarts = 0
        self.refused = 0
        self.failed = 0
        self.partial_starts = 0
        self.reservations = 0
        # the head gang the queued ordinary tasks are held for, and those tasks
        self.reserving: _Gang | None = None
        self.reserved: set = set()
        # ordinary tasks that entered scheduler.queued during the reservation
        self._arrivals: set = set()

    def start(self, extension: OxigdalScheduling) -> None:
        """Attach to the extension."""
        super().start(extension)

    # ----------------------------------------------------------- submission
    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """Group the new tasks by gang name and hold them."""
        groups: dict[str, list[tuple[TaskState, TaskInfo]]] = {}
        for ts, info in new:
            name = info.annotations.gang
            if name is not None:
                groups.setdefault(name, []).append((ts, info))
        if not groups:
            return
        ext = self.extension
        assert ext is not None and ext.scheduler is not None
        for name, members in groups.items():
            keys = [ts.key for ts, _ in members]
            gang = _Gang(name, keys, members[0][1], next(self._seq))
            error = self._check(gang, members)
            for ts, info in members:
                info.gang = gang
                ext.hold(ts, info, self.name)
            if error is not None:
                self._refuse(gang, error)
                continue
            self.gangs[gang.ident] = gang
            self.waiting[gang.seq] = gang
        self._schedule()

    def _check(self, gang: _Gang, members: list[tuple[TaskState, TaskInfo]]) -> Exception | None:
        ext = self.extension
        scheduler = ext.scheduler
        live = self.gangs.get(gang.ident)
        if live is not None:
            return GangError(
                f"gang {gang.name!r} is already live ({live.k} members, {live.state}); "
                "gang names must be unique until the gang's tasks are done"
            )
        keys = set(gang.keys)
        tenants = set()
        for ts, info in members:
            tenants.add((info.tenant, info.queue))
            if ts.host_restrictions or ts.resource_restrictions or ts.worker_restrictions:
                return GangError(
                    f"gang {gang.name!r}: member {ts.key!r} has worker/host/resource "
                    "restrictions; the Gang policy places members itself"
                )
            if any(dts.key in keys for dts in ts.dependencies):
                return GangError(
                    f"gang {gang.name!r}: member {ts.key!r} depends on another member; "
                    "members must be able to run at the same time"
                )
        if len(tenants) > 1:
            return GangError(
                f"gang {gang.name!r} mixes tenants/queues {sorted(tenants)}; "
                "give all members the same tenant and queue"
            )
        total = scheduler.total_nthreads
        if gang.k > total:
            wait = self._wait_for_workers()
            if not wait:
                return self._too_large(gang, total)
            gang.expires = time.time() + wait
        return None

    def _wait_for_workers(self) -> float:
        """How long a gang larger than the cluster waits for workers to join.

        ``oxigdal.gang.timeout``; when that is ``0s`` and the ``Autoscaling``
        policy is on, its ``gang-timeout`` (the autoscaler adds the workers).
        """
        if self.timeout:
            return self.timeout
        autoscaling = self.extension.policy("Autoscaling")
        if autoscaling is not None:
            return float(getattr(autoscaling, "gang_timeout", 0.0) or 0.0)
        return 0.0

    def _too_large(self, gang: _Gang, total: int) -> GangTooLarge:
        wait = self._wait_for_workers()
        if self.timeout:
            hint = f"it waited oxigdal.gang.timeout={self.timeout:g}s for workers to join"
        elif wait:
            hint = (
                f"it waited oxigdal.autoscaling.gang-timeout={wait:g}s for workers to join "
                "(the Autoscaling policy is on)"
            )
        else:
            hint = "set oxigdal.gang.timeout to wait for workers to join (autoscaling)"
        return GangTooLarge(
            f"gang {gang.name!r} needs {gang.k} worker slots (threads) at once but the "
            f"cluster has {total}; {hint}"
        )

    def _refuse(self, gang: _Gang, error: Exception) -> None:
        ext = self.extension
        tasks = ext.scheduler.tasks
        gang.state = "failed"
        self.refused += 1
        self._leases(gang, occupy=False)
        self.waiting.pop(gang.seq, None)
        if self.gangs.get(gang.ident) is gang:
            del self.gangs[gang.ident]
        for key in gang.keys:
            ts = tasks.get(key)
            info = ext.info.get(key)
            if ts is not None and info is not None and key not in gang.done:
                ext.reject(ts, info, error)
        ext.emit("gang-refused", gang=gang.name, tenant=gang.tenant, k=gang.k, error=str(error))

    # ----------------------------------------------------------- transitions
    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Track members (O(1)); schedule a release pass when slots or members free up."""
        gang = info.gang
        if gang is None:
            if self.waiting:
                if start == "processing":
                    self._schedule()
                elif (
                    finish == "queued"
                    and self.reserving is not None
                    and info.rank >= self.reserving.rank
                ):
                    self._arrivals.add(key)
                    self._schedule()
            return
        if finish == "processing":
            if gang.state in ("waiting", "restarting"):
                # a member reached a worker outside a gang launch: must never happen
                self.partial_starts += 1
        elif finish == "no-worker":
            if gang.state == "waiting":
                self._schedule()
        elif finish in ("memory", "erred"):
            gang.done.add(key)
            # unpin: a lost result is recomputed like any task, not on a dead worker
            ts = self.extension.scheduler.tasks.get(key)
            if ts is not None and ts.worker_restrictions and info.holds is None:
                ts.worker_restrictions = None
            if len(gang.done) == gang.k:
                if gang.state == "running":
                    gang.state = "done"
                    self.completed += 1
                elif gang.state != "done":
                    gang.state = "failed"  # its members erred before it started
                self.waiting.pop(gang.seq, None)
                self._forget(gang)
            if self.waiting:
                self._schedule()
        elif start == "processing" and finish in _LEFT:
            if gang.state == "running":
                # the member lost its worker (or was released): restart the whole gang
                gang.state = "restarting"
                ext = self.extension
                ext.scheduler.loop.add_callback(ext.run_policy, self, "restart_gang", gang)
        if finish == "forgotten":
            gang.done.add(key)
            if len(gang.done) == gang.k:
                self.waiting.pop(gang.seq, None)
                self._forget(gang)

    def _forget(self, gang: _Gang) -> None:
        self._leases(gang, occupy=False)
        if self.gangs.get(gang.ident) is gang:
            del self.gangs[gang.ident]

    def _leases(self, gang: _Gang, *, occupy: bool) -> None:
        """Record (or end) the gang's worker leases in the coordinator, if any.

        A lease is a replicated record of which gang runs on a worker
        (``gang/NAME`` for the default tenant, ``gang/TENANT/NAME`` for
        another), not a lock: Dask's thread slots admit the tasks, and a
        worker that hosts two gangs keeps the first one's lease.
        """
        coord = getattr(self.extension, "coordinator", None)
        if coord is None or not gang.workers:
            return
        holder = (
            f"gang/{gang.name}"
            if gang.tenant == self.extension.default_tenant
            else f"gang/{gang.tenant}/{gang.name}"
        )
        write = coord.lease_occupy if occupy else coord.lease_vacate
        for worker in gang.workers:
            write(worker, holder)

    def _schedule(self) -> None:
        self.defer("release")

    # --------------------------------------------------------------- release
    def free_slots(self) -> dict[Any, int]:
        """Idle threads of the running workers: ``{WorkerState: n}``, only ``n > 0``.

        Returns
        -------
        dict
        """
        free = {}
        for ws in self.extension.scheduler.running:
            n = idle_threads(ws)
            if n > 0:
                free[ws] = n
        return free

    def place(self, free: dict[Any, int], k: int) -> list[Any] | None:
        """Choose ``k`` slots among ``free`` with this policy's placement (:func:`.gangs.place`)."""
        return place(free, k, self.placement)

    def release(self) -> int:
        """Start every waiting gang that fits now, in (queue, arrival) order.

        Called from the event loop (a callback), never from a transition hook.
        Also starts or ends the head gang's slot reservation.

        Returns
        -------
        int
            The number of gangs started.
        """
        if not self.waiting:
            if self.reserving is not None:
                self._unreserve()
            return 0
        ext = self.extension
        scheduler = ext.scheduler
        tasks = scheduler.tasks
        quota = self._quota()
        free = self.free_slots()
        started = 0
        now = time.time()
        head_blocked = False
        reserve_for = None
        quota_blocked: set[str] = set()  # tenants with a gang their quota blocks
        for gang in sorted(self.waiting.values(), key=lambda g: (g.rank, g.seq)):
            members = [tasks.get(key) for key in gang.keys if key not in gang.done]
            if not members or any(ts is None or ts.state != "no-worker" for ts in members):
                continue  # not all ready (dependencies, or still being released)
            if gang.k > scheduler.total_nthreads:
                continue  # too big for now: periodic() errs it after the timeout
            if gang.tenant in quota_blocked:
                continue  # the same tenant's earlier gang waits for the same quota
            room = quota.headroom(gang.tenant) if quota is not None else len(members)
            if room < len(members):
                # its quota blocks it: freed threads would not start it, so it
                # reserves nothing and holds back only its own tenant's later gangs
                gang.blocked_since = None
                quota_blocked.add(gang.tenant)
                continue
            workers = self.place(free, len(members))
            if workers is None:
                if head_blocked:
                    continue  # backfill: smaller gangs behind may still fit
                head_blocked = True
                if gang.blocked_since is None:
                    gang.blocked_since = now
                if self._in_reserve_phase(gang, now):
                    # hold later gangs and queued ordinary tasks back: freed slots
                    # add up for the head gang
                    reserve_for = gang
                    break
                continue
            self._launch(gang, members, workers, quota)
            started += 1
        if reserve_for is not None:
            self._reserve(reserve_for)
        elif self.reserving is not None:
            self._unreserve()
        return started

    def _launch(self, gang: _Gang, members: list, workers: list, quota: Any) -> None:
        ext = self.extension
        info_map = ext.info
        recs = {}
        if any(info_map[ts.key].holds != {self.name} for ts in members):
            return  # held by another policy as well (e.g. a rejection): do not start
        if gang.previous:
            workers = _away_from_previous(members, workers, gang.previous)
        elif "oxigdal-topology" in ext.scheduler.plugins:  # which slot: by transfer cost
            from dask_oxigdal.placement.topology_cost import assign_by_cost

            workers = assign_by_cost(ext.scheduler, members, workers)
        for ts, ws in zip(members, workers, strict=True):
            ext.unhold(ts, info_map[ts.key], self.name)
            ts.worker_restrictions = {ws.address}
            ts.loose_restrictions = False
            if quota is not None:
                quota.admit(info_map[ts.key])
            recs[ts.key] = "processing"
        del self.waiting[gang.seq]
        gang.state = "running"
        gang.blocked_since = None
        gang.started_at = time.time()
        gang.workers = sorted({ws.address for ws in workers})
        ext.transitions(recs, f"oxigdal-gang-{gang.name}-{next(self._seq)}")
        missing = [ts.key for ts in members if ts.state != "processing"]
        if missing:
            # a pinned worker vanished in between: undo as a whole-gang restart
            self.partial_starts += 1
            gang.state = "restarting"
            self.restart_gang(gang, reason="launch-failed")
            return
        self.started += 1
        self.started_by_tenant[gang.tenant] = self.started_by_tenant.get(gang.tenant, 0) + 1
        self._leases(gang, occupy=True)
        ext.emit(
            "gang-started",
            gang=gang.name,
            k=gang.k,
            tenant=gang.tenant,
            workers=gang.workers,
            waited=gang.started_at - gang.submitted,
            restarts=gang.restarts,
        )

    def _quota(self) -> Any:
        quota = self.extension.policy("Quota")
        return quota if quota is not None and getattr(quota, "enabled", False) else None

    # --------------------------------------------------------------- restart
    def periodic(self) -> None:
        """Err gangs still too big after the timeout; retry releases (workers joined)."""
        if not self.waiting:
            return
        total = self.extension.scheduler.total_nthreads
        now = time.time()
        for gang in list(self.waiting.values()):
            if gang.k > total:
                if gang.expires is None:
                    # accepted when the cluster was big enough: workers left since
                    gang.expires = now + max(self._wait_for_workers(), self.shrink_wait)
                if now >= gang.expires:
                    self._refuse(gang, self._too_large(gang, total))
            else:
                gang.expires = None
        self._schedule()

    def add_worker(self, address: str) -> None:
        """New slots: try to start waiting gangs."""
        if self.waiting:
            self._schedule()

    def restart(self) -> None:
        """Every task was forgotten."""
        self.gangs.clear()
        self.waiting.clear()
        self.reserving = None
        self.reserved.clear()
        self._arrivals.clear()

    def snapshot(self) -> dict[str, Any]:
        """Counters and the live gangs."""
        running = sum(1 for g in self.gangs.values() if g.state == "running")
        return {
            "placement": self.placement,
            "waiting": len(self.waiting),
            "running": running,
            "started": self.started,
            "started_by_tenant": dict(self.started_by_tenant),
            "completed": self.completed,
            "restarts": self.restarts,
            "refused": self.refused,
            "failed": self.failed,
            "reservations": self.reservations,
            "reserving": self._label(self.reserving) if self.reserving is not None else None,
            "reserved_tasks": len(self.reserved),
            "partial_starts": self.partial_starts,
            "gangs": {
                self._label(g): {
                    "k": g.k,
                    "state": g.state,
                    "tenant": g.tenant,
                    "queue": g.queue,
                    "restarts": g.restarts,
                    "workers": g.workers,
                }
                for g in self.gangs.values()
            },
        }

    def _label(self, gang: _Gang) -> str:
        """A gang's name in ``snapshot()``: ``NAME`` (default tenant) or ``TENANT/NAME``."""
        if self.extension is None or gang.tenant == self.extension.default_tenant:
            return gang.name
        return f"{gang.tenant}/{gang.name}"
