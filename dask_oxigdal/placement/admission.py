"""``ShuffleAdmission``: concurrent shuffles admitted as coflows, smallest bottleneck first.

A *coflow* is the network phase of one shuffle: the tasks that pull (or push)
its pieces across workers. It is recognised from its task keys:

- ``dox.shuffle`` / ``dox.spatial_shuffle``: the concat tasks
  ``oxigdal-...-concat-<token>-<j>`` (each pulls one piece from every split);
- Dask's P2P shuffle: the ``shuffle-transfer-<token>`` tasks (each pushes one
  input partition to the workers that own its output pieces).

How it works
------------
- ``update_graph``: a coflow's tasks are held (like ``Quota`` and
  ``Locality`` do: restricted to an address no worker has), so no byte of the
  shuffle moves before it is admitted. Tasks another policy already holds or
  the user restricted are left alone.
- A coflow is *ready* when all its held tasks are (their inputs are in
  memory, they wait in ``no-worker``). Its size is then known exactly: the
  bytes each worker must send (the inputs it holds), and its *bottleneck* is
  the largest of these (Varys: the time of a coflow is set by its busiest port).
- Admission rounds run ``round`` seconds after a coflow became ready or one
  finished (so that coflows ready at about the same time are compared), and on
  the extension's periodic tick. At most ``slots`` coflows are admitted at a
  time; a tenant may hold ``ceil(slots * weight / sum of weights)`` of them
  (weights of the tenants with a ready or admitted coflow; at least one), so a
  tenant alone may use every slot. Among the coflows whose tenant is under its
  share, the one waiting longer than ``aging`` goes first (oldest first:
  nothing starves), else the smallest bottleneck (Varys' smallest-bottleneck-first).
  Varys knows each coflow's size when it arrives; here a coflow whose inputs
  are still being computed gets an estimate from its nearest ancestors in
  memory, and a ready coflow larger than a pending one waits for it (at most
  ``aging``; a pending coflow of unknown size makes no one wait).
- An admitted coflow's tasks are released at once (one ``transitions`` call).
  With the topology extension installed
  (:func:`dask_oxigdal.placement.topology_cost.install`), each is first pinned
  (loosely) to the worker with the lowest predicted transfer cost of its
  inputs, at most ``ceil(tasks / workers)`` per worker; without it Dask places
  them as usual. The coflow finishes when all its tasks
  are in memory (or erred / forgotten), which frees its slot.

Dask's own network knobs stay in force inside an admitted coflow:
``distributed.worker.connections.incoming`` / ``outgoing`` (concurrent
transfers per worker) and ``distributed.p2p.comm.concurrency`` (P2P sends).
"""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING, Any

from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo

if TYPE_CHECKING:
    from distributed.scheduler import TaskState

__all__ = ["Coflow", "ShuffleAdmission", "choose"]

#: Settings below ``oxigdal.``: ``shuffle-admission.slots``, ``.aging``, ``.round``.
_CONFIG = "shuffle-admission"
_OURS = re.compile(r"^(oxigdal-.+-concat-[0-9a-f]+)-\d+$")
_P2P = re.compile(r"^shuffle-transfer-[0-9a-f]+$")
_DONE = ("memory", "erred", "forgotten")


def coflow_id(key: Any) -> str | None:
    """The coflow a task key belongs to, or ``None``.

    Parameters
    ----------
    key : str or tuple
        A Dask key.

    Returns
    -------
    str or None
    """
    name = key[0] if isinstance(key, tuple) and key else key
    if not isinstance(name, str):
        return None
    m = _OURS.match(name)
    if m:
        return m.group(1)
    if _P2P.match(name):
        return name
    return None


class Coflow:
    """One shuffle's network phase: its held tasks, its size and its state."""

    __slots__ = (
        "admitted_at",
        "bottleneck",
        "bytes",
        "done",
        "done_at",
        "estimate",
        "id",
        "keys",
        "ready",
        "ready_at",
        "seq",
        "state",
        "submitted_at",
        "tenant",
    )

    def __init__(self, cid: str, tenant: str, seq: int, now: float) -> None:
        self.id = cid
        self.tenant = tenant
        self.seq = seq
        self.keys: set[Any] = set()
        self.ready: set[Any] = set()
        self.done = 0
        self.state = "pending"  # pending -> ready -> admitted -> done
        self.submitted_at = now
        self.ready_at: float | None = None
        self.admitted_at: float | None = None
        self.done_at: float | None = None
        self.bytes = 0
        self.bottleneck = 0
        self.estimate: float | None = None

    def record(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "state": self.state,
            "tasks": len(self.keys),
            "bytes": self.bytes,
            "bottleneck": self.bottleneck,
            "waited": (
                None
                if self.admitted_at is None or self.ready_at is None
                else self.admitted_at - self.ready_at
            ),
        }


def choose(
    ready: list[Coflow],
    admitted: list[Coflow],
    slots: int,
    weights: dict[str, float],
    now: float,
    aging: float,
) -> list[Coflow]:
    """The ready coflows to admit now, in admission order (pure: no side effects).

    Parameters
    ----------
    ready : list of Coflow
        Coflows waiting for admission (``ready_at`` and ``bottleneck`` set).
    admitted : list of Coflow
        Coflows admitted and not finished.
    slots : int
        Coflows admitted at once.
    weights : dict
        Tenant -> weight (missing tenants weigh 1).
    now : float
        The current time (same clock as ``ready_at``).
    aging : float
        A coflow ready for longer than this goes before any smaller one.

    Returns
    -------
    list of Coflow
    """
    free = slots - len(admitted)
    if free <= 0 or not ready:
        return []
    active = {c.tenant for c in ready} | {c.tenant for c in admitted}
    total = sum(weights.get(t, 1.0) for t in active)
    cap = {t: max(1, math.ceil(slots * weights.get(t, 1.0) / total)) for t in active}
    held: dict[str, int] = {}
    for c in admitted:
        held[c.tenant] = held.get(c.tenant, 0) + 1

    def rank(c: Coflow) -> tuple:
        waited = now - (c.ready_at if c.ready_at is not None else now)
        if waited >= aging:
            return (0, c.ready_at, c.seq)  # aged: oldest first
        return (1, c.bottleneck, c.bytes, c.seq)  # smallest bottleneck first

    out = []
    for c in sorted(ready, key=rank):
        if free <= 0:
            break
        if held.get(c.tenant, 0) >= cap[c.tenant]:
            continue
        out.append(c)
        held[c.tenant] = held.get(c.tenant, 0) + 1
        free -= 1
    return out


class ShuffleAdmission(SchedulingPolicy):
    """Admit concurrent shuffles as coflows: smallest bottleneck first, fair per tenant, aging.

    Each parameter left out comes from dask config ``oxigdal.shuffle-admission.*``
    (``slots``, ``aging``, ``round``; the shipped ``oxigdal.yaml`` has the defaults).

    Parameters
    ----------
    slots : int, optional
        Coflows admitted at once (default 2).
    aging : float or str, optional
        Seconds (or a duration string) after which a ready coflow goes first,
        whatever its size (default ``"30s"``).
    round : float or str, optional
        Delay of an admission round after a coflow becomes ready or finishes,
        so that coflows ready together are compared (default ``"50ms"``).

    Raises
    ------
    dask_oxigdal.exceptions.ConfigError
        A bad value, named with its key and the valid range.
    """

    name = "ShuffleAdmission"

    def __init__(
        self,
        *,
        slots: int | None = None,
        aging: float | str | None = None,
        round: float | str | None = None,
    ) -> None:
        from dask.utils import parse_timedelta

        from dask_oxigdal.exceptions import ConfigError
        from dask_oxigdal.settings import setting

        super().__init__()
        slots = setting(f"{_CONFIG}.slots", slots)
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ConfigError(f"oxigdal.{_CONFIG}.slots={slots!r} must be an integer >= 1")
        self.slots = slots
        for label, raw in (("aging", aging), ("round", round)):
            raw = setting(f"{_CONFIG}.{label}", raw)
            try:
                value = parse_timedelta(raw)
            except (ValueError, TypeError, KeyError, AttributeError):
                value = None
            if value is None or not value >= 0 or value == float("inf"):
                raise ConfigError(
                    f"oxigdal.{_CONFIG}.{label}={raw!r} is not a duration >= 0 (e.g. '30s', 0.5)"
                )
            setattr(self, label, float(value))
        self.coflows: dict[str, Coflow] = {}
        self.task_coflow: dict[Any, Coflow] = {}
        self.log: list[dict[str, Any]] = []  # admissions, last 1000
        self.completed = 0
        self.placed = 0  # tasks pinned by transfer cost
        self.deferrals = 0  # rounds a ready coflow waited for a smaller pending one
        self._seq = 0
        self._timer = False

    def start(self, extension: Any) -> None:
        """Attach; no transition hook until a shuffle arrives."""
        super().start(extension)
        self.wants_transitions = False

    # ------------------------------------------------------------------ hooks
    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """Hold the network-phase tasks of new shuffles."""
        ext = self.extension
        now = time.monotonic()
        for ts, info in new:
            cid = coflow_id(ts.key)
            if cid is None:
                continue
            if ts.worker_restrictions or ts.host_restrictions or ts.resource_restrictions:
                continue  # held or constrained by someone else
            cid = f"{info.tenant}/{cid}"
            cf = self.coflows.get(cid)
            if cf is None:
                self._seq += 1
                cf = self.coflows[cid] = Coflow(cid, info.tenant, self._seq, now)
            if cf.state != "pending":
                continue  # a late addition to an admitted coflow runs freely
            ext.hold(ts, info, self.name)
            cf.keys.add(ts.key)
            self.task_coflow[ts.key] = cf
            if not self.wants_transitions:
                self.wants_transitions = True
                ext._refresh_transition_policies()

    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Count ready and finished coflow tasks (O(1))."""
        cf = self.task_coflow.get(key)
        if cf is None:
            return
        if finish == "no-worker" and cf.state == "pending":
            cf.ready.add(key)
            if len(cf.ready) == len(cf.keys):
                self._became_ready(cf)
        elif finish in _DONE:
            if cf.state == "admitted":
                cf.done += 1
                del self.task_coflow[key]
                if cf.done >= len(cf.keys):
                    self._finish(cf)
            elif finish == "forgotten":  # cancelled before admission
                del self.task_coflow[key]
                cf.keys.discard(key)
                cf.ready.discard(key)
                if not cf.keys:
                    self.coflows.pop(cf.id, None)
                elif cf.state == "pending" and len(cf.ready) == len(cf.keys):
                    self._became_ready(cf)

    def _became_ready(self, cf: Coflow) -> None:
        cf.state = "ready"
        cf.ready_at = time.monotonic()
        self._schedule()

    def _finish(self, cf: Coflow) -> None:
        cf.state = "done"
        cf.done_at = time.monotonic()
        self.coflows.pop(cf.id, None)
        self.completed += 1
        self._schedule()

    def _schedule(self) -> None:
        if not self._timer:
            self._timer = True
            ext = self.extension
            ext.scheduler.loop.call_later(self.round, ext.run_policy, self, "admit")

    def periodic(self) -> None:
        """Admission round on the extension's tick too."""
        if any(c.state == "ready" for c in self.coflows.values()):
            self._schedule()

    # -------------------------------------------------------------- admission
    def _size(self, cf: Coflow) -> None:
        """Bytes of the coflow's inputs per sending worker; the largest is the bottleneck."""
        tasks = self.extension.scheduler.tasks
        out: dict[str, int] = {}
        seen: set[Any] = set()
        for key in cf.keys:
            ts = tasks.get(key)
            if ts is None:
                continue
            for dts in ts.dependencies:
                if dts.key in seen:
                    continue
                seen.add(dts.key)
                holders = dts.who_has or ()
                if holders:
                    addr = next(iter(holders)).address
                    out[addr] = out.get(addr, 0) + dts.get_nbytes()
        cf.bytes = sum(out.values())
        cf.bottleneck = max(out.values(), default=0)

    def _estimate(self, cf: Coflow) -> float:
        """Bottleneck of a pending coflow from its nearest ancestors in memory (once).

        Infinite when some ancestor within 6 levels is neither in memory nor
        resolved (the size is unknown: nothing waits for it).
        """
        if cf.estimate is not None:
            return cf.estimate
        tasks = self.extension.scheduler.tasks
        out: dict[str, int] = {}
        seen: set[Any] = set()
        frontier = [tasks[k] for k in cf.keys if k in tasks]
        for _ in range(6):
            nxt = []
            for ts in frontier:
                for dts in ts.dependencies:
                    if dts.key in seen:
                        continue
                    seen.add(dts.key)
                    if dts.state == "memory" and dts.who_has:
                        addr = next(iter(dts.who_has)).address
                        out[addr] = out.get(addr, 0) + dts.get_nbytes()
                    else:
                        nxt.append(dts)
            frontier = nxt
            if not frontier or len(seen) > 10_000:
                break
        cf.estimate = float(max(out.values())) if out and not frontier else math.inf
        return cf.estimate

    def admit(self) -> int:
        """One admission round; returns how many coflows were admitted."""
        self._timer = False
        ready = [c for c in self.coflows.values() if c.state == "ready"]
        if not ready:
            return 0
        for c in ready:
            if not c.bytes:
                self._size(c)
        admitted = [c for c in self.coflows.values() if c.state == "admitted"]
        now = time.monotonic()
        # Varys knows coflow sizes up front; here a coflow whose inputs are still computing
        # has an estimate (its nearest ancestors in memory): a larger ready one waits for a
        # smaller pending one, at most `aging`
        pending = [c for c in self.coflows.values() if c.state == "pending"]
        if pending:
            smallest = min(self._estimate(c) for c in pending)
            later = [
                c
                for c in ready
                if c.bottleneck > smallest and now - (c.ready_at or now) < self.aging
            ]
            if later:
                self.deferrals += len(later)
                ready = [c for c in ready if c not in later]
                self._schedule()
        chosen = choose(ready, admitted, self.slots, self.extension.weights, now, self.aging)
        scheduler = self.extension.scheduler
        tasks = scheduler.tasks
        info_map = self.extension.info
        recs: dict[Any, str] = {}
        for cf in chosen:
            cf.state = "admitted"
            cf.admitted_at = now
            self.log.append({**cf.record(), "at": time.time()})
            released = []
            for key in sorted(cf.keys, key=str):
                ts = tasks.get(key)
                info = info_map.get(key)
                if ts is None or info is None:
                    continue
                if self.extension.unhold(ts, info, self.name) and ts.state == "no-worker":
                    recs[key] = "waiting"
                    released.append(ts)
            self._place(released)
            if not cf.keys:
                self._finish(cf)
        del self.log[:-1000]
        if recs:
            self.extension.transitions(recs, f"oxigdal-admission-{time.time()}")
        if any(c.state == "ready" for c in self.coflows.values()) and chosen:
            self._schedule()
        return len(chosen)

    def _place(self, released: list) -> None:
        """Pin released tasks to their cheapest workers by transfer cost (topology known).

        Without the topology extension Dask places them. Each worker takes at
        most ``ceil(tasks / workers)`` of one coflow's tasks, so the shuffle
        still spreads; the pin is loose (Dask may move a task whose worker left).
        """
        from dask_oxigdal.placement.topology_cost import dependency_costs

        scheduler = self.extension.scheduler
        workers = sorted(ws.address for ws in scheduler.running)
        if not released or not workers:
            return
        cap = math.ceil(len(released) / len(workers))
        load: dict[str, int] = {}
        # the heaviest tasks choose first; empty ones fill the slots that are left
        released = sorted(released, key=lambda ts: -sum(d.get_nbytes() for d in ts.dependencies))
        for ts in released:
            if ts.worker_restrictions or ts.host_restrictions or ts.resource_restrictions:
                continue  # the user's own restrictions
            costs = dependency_costs(scheduler, ts, workers)
            if costs is None:
                return
            target = min(workers, key=lambda a: (load.get(a, 0) >= cap, costs[a], load.get(a, 0)))
            load[target] = load.get(target, 0) + 1
            ts.worker_restrictions = {target}
            ts.loose_restrictions = True
        self.placed += sum(load.values())

    def restart(self) -> None:
        """Every task was forgotten."""
        self.coflows.clear()
        self.task_coflow.clear()

    def snapshot(self) -> dict[str, Any]:
        """Settings, coflows by state, the last admissions."""
        states: dict[str, int] = {}
        for c in self.coflows.values():
            states[c.state] = states.get(c.state, 0) + 1
        return {
            "slots": self.slots,
            "aging": self.aging,
            "round": self.round,
            "coflows": states,
            "completed": self.completed,
            "placed_by_cost": self.placed,
            "deferrals": self.deferrals,
            "admissions": self.log[-20:],
        }
