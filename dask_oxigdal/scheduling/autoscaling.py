"""``Autoscaling``: a tenant-, deadline- and forecast-aware ``Scheduler.adaptive_target``.

Dask's deployment tools ask the scheduler how many workers it wants:
``distributed.deploy.Adaptive`` (LocalCluster, SpecCluster, dask-jobqueue)
calls the ``adaptive_target`` RPC handler, the dask-kubernetes operator and
KEDA read the ``/api/v1/adaptive_target`` route or the
``dask_scheduler_desired_workers`` gauge, and every one of them then asks
``workers_to_close`` which workers to retire. While this policy is in
``oxigdal.scheduling.policies`` all of these answer with *our* target and
*our* choice of workers (the methods are replaced on the scheduler instance,
and in ``Scheduler.handlers``, when the policy starts; ``close()`` puts Dask's
back).

This module keeps the counters (work per tenant and prefix, ready tasks,
wanted cached tiles, arriving work) and answers the two calls; the rules are
in ``autoscaling_target``, the hooks and the choice of workers to close in
``autoscaling_close``, settings and forecast models in ``autoscaling_rules``
(docs/autoscaling.md explains each rule). Every change of the target is an
``autoscale`` event on the ``oxigdal`` topic, with its rule and tenant.
"""

from __future__ import annotations

import collections
import math
import statistics
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import dask.config
from dask.utils import parse_timedelta

from dask_oxigdal.scheduling import autoscaling_close, autoscaling_target
from dask_oxigdal.scheduling._dask import prefix_estimate
from dask_oxigdal.scheduling.autoscaling_rules import (
    FORECAST_MODELS,
    RULES,
    Forecaster,
    Ramp,
    StartLatency,
    feed,
    parse_settings,
    plain,
    water_fill,
)
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo

if TYPE_CHECKING:
    from distributed.scheduler import TaskState, WorkerState

    from dask_oxigdal.scheduling.extension import OxigdalScheduling

__all__ = ["FORECAST_MODELS", "RULES", "Autoscaling", "Forecaster", "water_fill"]

_READY = frozenset({"processing", "queued", "no-worker"})
_DONE = frozenset({"memory", "erred", "forgotten"})
#: Points kept in the workers-over-time history of the snapshot.
_HISTORY = 600


class Autoscaling(SchedulingPolicy):
    """Tenant-, deadline- and forecast-aware ``adaptive_target`` and ``workers_to_close``.

    Not in the default policy list: add
    ``{"class": "dask_oxigdal.scheduling.autoscaling.Autoscaling"}`` to
    ``oxigdal.scheduling.policies``, after ``Deadline`` and ``Gang``.
    Arguments default to ``None``, meaning ``oxigdal.autoscaling.*`` (see
    docs/autoscaling.md).

    Parameters
    ----------
    minimum, maximum : int, optional
        Bounds of the target (workers); ``maximum`` ``None``: unbounded.
    cooldown : str or float, optional
        How long the raw target must stay lower, and how long after the target
        last rose, before the target steps down.
    hysteresis : float, optional
        Relative dead band: the raw target counts as lower only when below
        ``target * (1 - hysteresis)`` (and at least one worker lower).
    max_down_fraction : float, optional
        At most this fraction of the target (at least one worker) per step down.
    start_latency : str or float, optional
        Worker start latency assumed until one is measured.
    idle_timeout : str or float, optional
        A worker that has run nothing for this long, and holds neither a key
        that an unfinished task needs nor a wanted cached tile, is released
        (while the raw target is below the workers) without waiting for the
        step-down. ``None`` and ``oxigdal.autoscaling.idle-timeout: null``:
        the cooldown.
    gang_timeout : str or float, optional
        How long a gang larger than the cluster waits for workers while this
        policy is on and ``oxigdal.gang.timeout`` is ``0s``.
    forecast : dict, optional
        ``{"model": ..., "interval": ..., "season": ..., "alpha": ..., "beta": ...,
        "gamma": ...}`` merged over ``oxigdal.autoscaling.forecast``.
    """

    name = "Autoscaling"

    def __init__(
        self,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        cooldown: str | float | None = None,
        hysteresis: float | None = None,
        max_down_fraction: float | None = None,
        start_latency: str | float | None = None,
        gang_timeout: str | float | None = None,
        forecast: dict[str, Any] | None = None,
        idle_timeout: str | float | None = None,
    ) -> None:
        super().__init__()
        settings = parse_settings(
            minimum=minimum,
            maximum=maximum,
            cooldown=cooldown,
            hysteresis=hysteresis,
            max_down_fraction=max_down_fraction,
            start_latency=start_latency,
            gang_timeout=gang_timeout,
            forecast=forecast,
            idle_timeout=idle_timeout,
        )
        self.minimum: int = settings["minimum"]
        self.maximum: int | None = settings["maximum"]
        self.cooldown: float = settings["cooldown"]
        self.hysteresis: float = settings["hysteresis"]
        self.max_down_fraction: float = settings["max_down_fraction"]
        self.assumed_latency: float = settings["start_latency"]
        self.gang_timeout: float = settings["gang_timeout"]
        self.idle_timeout: float = settings["idle_timeout"]
        # address -> when the worker last had nothing to run (updated by compute)
        self.idle_since: dict[str, float] = {}
        self.idle_released = 0
        self.forecast_released = 0
        self.model: str = settings["model"]
        self.forecast_interval: float = settings["interval"]
        self.season: int = settings["season"]
        self.alpha, self.beta, self.gamma = settings["alpha"], settings["beta"], settings["gamma"]
        # work without a deadline, per tenant: {prefix name: [unfinished tasks, TaskPrefix]};
        # its ready tasks (a deadline job's tasks are counted by the Deadline policy)
        self.live: dict[str, dict[str, list]] = {}
        self.ready: dict[str, int] = {}
        self._tenant_of: dict[Any, tuple[str, str]] = {}
        # locality key -> unfinished tasks that want it
        self.wanted: dict[Hashable, int] = {}
        self._locality_of: dict[Any, Hashable] = {}
        # forecast state
        self.models: dict[str, Forecaster] = {}
        self.arrived: dict[str, float] = {}
        self.bucket_start = 0.0
        # decisions
        self.target = 0
        self.last_up = 0.0
        self.last_step = 0.0
        self.below_since: float | None = None
        # workers asked for, not yet arrived, given up by the last smooth()
        self.cancelled = 0
        self.decision: dict[str, Any] = {"rule": None, "tenant": None, "rules": {}}
        self.per_tenant: dict[str, dict[str, float]] = {}
        self.decisions = 0
        self.history: collections.deque = collections.deque(maxlen=_HISTORY)
        # worker start latency, from the target's rises to the workers' arrivals
        self.latency = StartLatency(self.assumed_latency)
        # how fast a worker that joins while work waits runs its first tasks
        self.ramp = Ramp()
        # when a deployment tool last read the target (adaptive_target), newest last
        self.reads: collections.deque = collections.deque(maxlen=9)
        self._saved: dict[str, Any] = {}
        self._installed = False

    # ------------------------------------------------------------------ setup
    def start(self, extension: OxigdalScheduling) -> None:
        """Replace ``adaptive_target`` / ``workers_to_close`` on the scheduler."""
        super().start(extension)
        scheduler = extension.scheduler
        now = time.time()
        self.bucket_start = now
        self.last_up = now
        self.target = len(scheduler.workers)
        autoscaling_close.install(self, scheduler)
        self._installed = True

    def close(self) -> None:
        """Give Dask its own ``adaptive_target`` / ``workers_to_close`` back."""
        if not self._installed or self.extension is None:
            return
        self._installed = False
        autoscaling_close.uninstall(self, self.extension.scheduler)

    @property
    def start_latency(self) -> float:
        """Measured worker start latency (seconds, the median), else the configured guess."""
        return self.latency.value

    # -------------------------------------------------------------- tracking
    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """Count the new tasks' work per tenant and prefix; record arrivals.

        A deadline job's tasks (``Deadline`` runs first and sets ``info.edf``)
        are left to the deadline rule, which sizes them by their deadline: they
        count neither as demand nor as arriving work for the forecast.
        """
        live = self.live
        arrived = self.arrived
        tenant_of = self._tenant_of
        cost_cache: dict[str, float] = {}
        deadline = False
        for ts, info in new:
            tenant = info.tenant
            prefix = ts.prefix
            pname = prefix.name
            if info.edf is not None:
                deadline = True
            else:
                cost = cost_cache.get(pname)
                if cost is None:
                    cost = cost_cache[pname] = self.task_cost(prefix)
                arrived[tenant] = arrived.get(tenant, 0.0) + cost
                per = live.get(tenant)
                if per is None:
                    per = live[tenant] = {}
                entry = per.get(pname)
                if entry is None:
                    per[pname] = [1, prefix]
                else:
                    entry[0] += 1
                tenant_of[ts.key] = (tenant, pname)
            lkey = info.annotations.locality
            if lkey is not None:
                try:
                    hash(lkey)
                except TypeError:
                    continue
                self._locality_of[ts.key] = lkey
                self.wanted[lkey] = self.wanted.get(lkey, 0) + 1
        if deadline:
            # a new deadline job: the target reflects it now, not at the next tick
            ext = self.extension
            ext.scheduler.loop.add_callback(ext.run_policy, self, "compute", None)

    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Ready-task counts and unfinished work per tenant, without deadline tasks (O(1)).

        A task finished on a worker that joined while work waited times that
        worker's first tasks (:class:`Ramp`).
        """
        if self.ramp.fresh and finish == "memory" and start == "processing":
            address = kwargs.get("worker")
            if address in self.ramp.fresh:
                scheduler = self.extension.scheduler
                ws = scheduler.workers.get(address)
                waiting = bool(scheduler.queued) or (
                    ws is not None and len(ws.processing) >= ws.nthreads
                )
                self.ramp.finished(address, kwargs.get("thread"), kwargs.get("startstops"), waiting)
        if info.edf is None:
            if finish in _READY:
                if start not in _READY:
                    self.ready[info.tenant] = self.ready.get(info.tenant, 0) + 1
            elif start in _READY:
                self.ready[info.tenant] = self.ready.get(info.tenant, 0) - 1
        if finish in _DONE:
            where = self._tenant_of.pop(key, None)
            if where is not None:
                per = self.live[where[0]]
                entry = per[where[1]]
                entry[0] -= 1
                if entry[0] <= 0:
                    del per[where[1]]
            lkey = self._locality_of.pop(key, None) if self._locality_of else None
            if lkey is not None:
                n = self.wanted[lkey] - 1
                if n > 0:
                    self.wanted[lkey] = n
                else:
                    del self.wanted[lkey]
        elif finish == "released" and start == "memory":
            # a result lost (its worker died) or released: it may run again
            if info.edf is None and key not in self._tenant_of:
                ts = self.extension.scheduler.tasks.get(key)
                if ts is not None:
                    self._retrack(key, info, ts)

    def _retrack(self, key: Any, info: TaskInfo, ts: Any) -> None:
        per = self.live.setdefault(info.tenant, {})
        entry = per.get(ts.prefix.name)
        if entry is None:
            per[ts.prefix.name] = [1, ts.prefix]
        else:
            entry[0] += 1
        self._tenant_of[key] = (info.tenant, ts.prefix.name)

    def restart(self) -> None:
        """Every task was forgotten."""
        self.live.clear()
        self.ready.clear()
        self._tenant_of.clear()
        self.wanted.clear()
        self._locality_of.clear()

    def task_cost(self, prefix: Any) -> float:
        """Estimated seconds of one task of ``prefix``, for capacity.

        Dask's measured mean (``prefix_estimate``) when there is one, else
        Dask's ``unknown-task-duration``, the guess Dask's own target uses.
        Not FairShare's cost: it is re-tagged only when the mean moves by
        ``retag-factor``, and it guesses an unmeasured prefix as the median of
        the work running (a fair place in the queue, not a size: a new prefix
        of 0.5 s tasks among 2 s ones was sized at 4 s a task).

        Parameters
        ----------
        prefix : distributed.scheduler.TaskPrefix

        Returns
        -------
        float
        """
        estimate = prefix_estimate(prefix)
        if estimate is not None:
            return estimate
        return float(self.extension.scheduler.UNKNOWN_TASK_DURATION)

    def _policy(self, name: str) -> Any:
        ext = self.extension
        return None if ext is None else ext.policy(name)

    # ---------------------------------------------------------------- periodic
    def periodic(self) -> None:
        """Close forecast intervals; recompute the target (snapshot, metrics, events)."""
        now = time.time()
        self._roll(now)
        self.compute(None, now=now)

    def _roll(self, now: float) -> None:
        elapsed = int((now - self.bucket_start) // self.forecast_interval)
        if elapsed > 0:
            arrived, self.arrived = self.arrived, {}
            # after a long pause feed at most two seasons of empty intervals
            feed(self.models, arrived, min(elapsed, 2 * self.season + 1), self._new_model)
            self.bucket_start += elapsed * self.forecast_interval

    def _new_model(self) -> Forecaster:
        return Forecaster(self.model, self.alpha, self.beta, self.gamma, self.season)

    # ------------------------------------------------------------------ target
    def adaptive_target(self, target_duration: float | str | None = None) -> int:
        """``Scheduler.adaptive_target``: the desired number of workers.

        Parameters
        ----------
        target_duration : str or float, optional
            What ``Adaptive`` passes; default ``distributed.adaptive.target-duration``.

        Returns
        -------
        int
        """
        ext = self.extension
        result = (
            ext.run_policy(self, "compute", target_duration, None, True)
            if ext is not None
            else None
        )
        if result is None:  # the policy failed (and is now disabled): Dask decides
            return self._dask_adaptive_target(target_duration)
        return result

    def compute(
        self,
        target_duration: float | str | None = None,
        now: float | None = None,
        read: bool = False,
    ) -> int:
        """Compute, record and return the target (workers).

        Parameters
        ----------
        target_duration : str or float, optional
        now : float, optional
        read : bool
            A deployment tool reads the target now (``adaptive_target``): the
            workers it asks for are asked for now, not at its next read.

        Returns
        -------
        int
        """
        ext = self.extension
        now = time.time() if now is None else now
        if target_duration is None:
            target_duration = dask.config.get("distributed.adaptive.target-duration", "5s")
        duration = max(float(parse_timedelta(target_duration)), 1e-3)
        n = len(ext.scheduler.workers)
        found = autoscaling_target.evaluate(self, duration, now)
        self.per_tenant = found["per_tenant"]
        raw = found["raw"]
        target = autoscaling_target.smooth(self, raw, n, now)
        reason = found["rule"]
        # forecast-idle: when the forecast sees no demand coming back within the
        # start latency that would need the workers the cooldown holds, holding
        # idle ones is pure cost; only outside the dead band (below_since set)
        peak = found["forecast_peak"]
        gate = (
            peak is not None
            and target > raw
            and self.below_since is not None
            and max(raw, peak, self.minimum) < target
        )
        idle = autoscaling_close.idle_workers(self, now, 0.0 if gate else None)
        if self.cancelled:
            # workers asked for but not arrived, that no rule needs any more
            reason = "pending"
        elif target > raw:
            reason = "cooldown" if target >= self.target else "step-down"
        if gate:
            # every idle worker that nothing needs goes now, down to the forecast's peak
            # (and never the workers on their way that smooth() kept)
            released = max(raw, peak, max(n, target) - len(idle), self.minimum)
            if idle and released < target:
                self.forecast_released += target - released
                target, reason = released, "forecast-idle"
                self.last_step = now
            since = self.idle_since
            idle = [a for a in idle if now - since.get(a, now) >= self.idle_timeout]
        if target > raw:
            # the idle timer: workers idle for idle_timeout that nothing needs go now
            released = max(raw, max(n, target) - len(idle), self.minimum)
            if idle and released < target:
                self.idle_released += target - released
                target, reason = released, "idle"
                self.last_step = now
        detail = found["detail"]
        tenant = detail[0] if isinstance(detail, tuple) else detail
        rules = {r: found["rules"][r] for r in RULES}
        if read:
            self.reads.append(now)
        # workers are asked for when the deployment tool reads the target: now
        # if this is a read, else at its next read (the target it reads then)
        self.latency.track(target, n, now if read else self.next_read(now))
        if target != self.target:
            self.decisions += 1
            ext.emit(
                "autoscale",
                previous=self.target,
                target=target,
                workers=n,
                rule=reason,
                tenant=tenant,
                detail=plain(detail),
                rules=rules,
                cancelled=self.cancelled,
                deadline_jobs=found["deadline_jobs"],
                forecast_peak=peak,
            )
            self.target = target
        self.decision = {
            "rule": reason,
            "tenant": tenant,
            "raw": raw,
            "rules": rules,
            "cancelled": self.cancelled,
            "deadline_jobs": found["deadline_jobs"],
            "forecast_peak": peak,
            "target_duration": duration,
            "at": now,
        }
        if not self.history or now - self.history[-1][0] >= 0.5:
            self.history.append((now, n, target, found["demand"]))
        return target

    def next_read(self, now: float) -> float:
        """When the deployment tool will next read the target (``adaptive_target``).

        ``Adaptive`` polls every ``interval`` (1 s by default), the
        dask-kubernetes operator every 5 s: a target raised between two polls
        is acted on at the next one. From the last 9 reads: the last read
        plus whole median intervals, the first such time not before ``now``.
        ``now`` when fewer than 3 reads are known, when ``now`` is not after
        the last read, or when the reads stopped (more than 3 intervals ago).

        Parameters
        ----------
        now : float

        Returns
        -------
        float
        """
        reads = self.reads
        if len(reads) < 3 or now <= reads[-1]:
            return now
        gaps = [b - a for a, b in zip(reads, list(reads)[1:], strict=False) if b > a]
        if not gaps:
            return now
        interval = statistics.median(gaps)
        since = now - reads[-1]
        if interval <= 0 or since > 3 * interval:
            return now
        return reads[-1] + math.ceil(since / interval - 1e-9) * interval

    def add_worker(self, address: str) -> None:
        """A worker arrived: a start latency sample if it answers a request (:class:`StartLatency`).

        If tasks were waiting for a thread (queued, unrunnable, or more tasks
        processing on some worker than it has threads), its first tasks are
        timed (:class:`Ramp`). O(workers) per arrival.
        """
        now = time.time()
        self.latency.arrived(now)
        scheduler = self.extension.scheduler
        backlog = bool(scheduler.queued) or bool(scheduler.unrunnable)
        if not backlog:
            backlog = any(len(ws.processing) > ws.nthreads for ws in scheduler.workers.values())
        self.ramp.joined(address, now, backlog)

    def remove_worker(self, address: str, stimulus_id: str) -> None:
        """A worker left: stop timing its tasks."""
        self.ramp.left(address)

    # -------------------------------------------------------------- scale-down
    def protected(self) -> dict[str, str]:
        """Workers that should not be closed, and why (``{address: reason}``).

        See :func:`dask_oxigdal.scheduling.autoscaling_close.protected`.

        Returns
        -------
        dict
        """
        return autoscaling_close.protected(self)

    def workers_to_close(
        self,
        memory_ratio: int | float | None = None,
        n: int | None = None,
        key: Callable[[WorkerState], Hashable] | bytes | None = None,
        minimum: int | None = None,
        target: int | None = None,
        attribute: str = "address",
    ) -> list[str]:
        """``Scheduler.workers_to_close``: the workers whose loss costs least.

        Same arguments and result as Dask's. Candidates are ranked: idle
        before busy, then fewest keys, then fewest bytes. A worker running a
        gang member or a deadline job's task comes only after every other
        choice; one holding a cached tile that an unfinished task wants is
        never chosen. With ``target`` (what ``Adaptive`` asks) only idle
        workers are chosen: retiring a busy one would hold ``Adaptive``'s
        loop, and any scale-up, until its running task's result is copied
        off; it goes at a later call, once idle. Without ``n``/``target`` only
        idle workers are chosen, while the others keep ``memory_ratio``
        (default 2) times the stored bytes, as in Dask. ``n`` keeps Dask's
        meaning: busy workers after the idle ones.

        Returns
        -------
        list of str
            The chosen workers' ``attribute`` (address by default).
        """
        ext = self.extension
        if ext is not None and self.name not in ext.disabled:
            try:
                return autoscaling_close.closable(
                    self, memory_ratio, n, key, minimum, target=target, attribute=attribute
                )
            except Exception as e:
                ext._disable(self, "workers_to_close", e)
        # the policy failed (and is now disabled): Dask decides
        return self._dask_workers_to_close(
            memory_ratio=memory_ratio,
            n=n,
            key=key,
            minimum=minimum,
            target=target,
            attribute=attribute,
        )

    # ---------------------------------------------------------------- status
    def snapshot(self) -> dict[str, Any]:
        """Target, its rule and tenant, per-tenant demand/forecast/target, history."""
        tenants = sorted(self.per_tenant.items())
        return {
            "target": self.target,
            "rule": self.decision.get("rule"),
            "tenant": self.decision.get("tenant"),
            "raw_target": self.decision.get("raw"),
            "rules": dict(self.decision.get("rules") or {}),
            "deadline_jobs": list(self.decision.get("deadline_jobs") or []),
            "decisions": self.decisions,
            "start_latency": self.start_latency,
            "start_latency_measured": self.latency.measured is not None,
            "start_latency_cautious": self.latency.cautious,
            "latency_samples": self.latency.count,
            "latency_ambiguous": self.latency.ambiguous,
            "ramp": {
                "first_task_delay": self.ramp.delay,
                "task_gap": self.ramp.gap,
                "first_task_delay_per_burst_worker": self.ramp.per_worker,
                "samples": len(self.ramp.delays),
            },
            "forecast_model": self.model,
            "cooldown": self.cooldown,
            "idle_timeout": self.idle_timeout,
            "idle_released": self.idle_released,
            "forecast_released": self.forecast_released,
            "forecast_peak": self.decision.get("forecast_peak"),
            "minimum": self.minimum,
            "maximum": self.maximum,
            "tenants": {t: dict(v) for t, v in tenants},
            "desired_workers": {t: v.get("desired_workers", 0) for t, v in tenants},
            "forecast_task_seconds": {t: v.get("forecast_task_seconds", 0.0) for t, v in tenants},
            "history": [list(h) for h in list(self.history)[-120:]],
        }
