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

The target
----------
The largest of these rules, in threads (then divided by the mean threads
per worker, rounded up):

``demand``
    for each tenant, its unfinished work (estimated seconds per task prefix)
    over ``target_duration`` (the value ``Adaptive`` passes, else
    ``distributed.adaptive.target-duration``), at most its ready tasks (no
    more threads than tasks that can run) and at most its quota
    (``max-tasks``); summed over tenants. Fair share is work-conserving, so
    the sum gives every tenant its need; when ``maximum`` caps the target the
    per-tenant figures are cut back by weighted water-filling (each tenant's
    fair share of what is left).
``guaranteed``
    the guaranteed slots of the tenants that have work.
``gang``
    the largest gang waiting to start (it must fit at once).
``deadline``
    earliest deadline first: for each live deadline job, the remaining work of
    it and of every job due no later, over (deadline - now - measured worker
    start latency); a job whose deadline is closer than a new worker's start
    adds nothing (new workers would come too late).
``forecast``
    each tenant's forecast arriving work (task-seconds per forecast interval,
    ``oxigdal.autoscaling.forecast``), looking ahead by the measured worker start
    latency, over the interval; summed over tenants, capped by quota.
``memory``
    Dask's own rule: twice the workers when more than 60% of their memory is used.

then clamped to ``oxigdal.autoscaling.minimum`` / ``maximum`` (``Adaptive`` also
applies its own ``minimum`` / ``maximum``).

Scaling down is slow on purpose: the target goes down only after the raw
target stayed below the current one by more than ``hysteresis`` for
``cooldown`` (and ``cooldown`` after the last change), by at most
``max-down-fraction`` of the workers per step; it never goes below the number
of workers that ``workers_to_close`` would keep (busy ones, ones that hold a
gang member, a deadline job's task or a wanted cached tile).

Every change of the target is published as an ``autoscale`` event on the
``oxigdal`` topic, with the rule and tenant that decided it.
"""

from __future__ import annotations

import collections
import math
import pickle
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import dask.config
from dask.utils import parse_timedelta

from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo
from dask_oxigdal.scheduling.settings import setting

if TYPE_CHECKING:
    from distributed.scheduler import TaskState, WorkerState

    from dask_oxigdal.scheduling.extension import OxigdalScheduling

__all__ = ["FORECAST_MODELS", "RULES", "Autoscaling", "Forecaster"]

#: Valid ``oxigdal.autoscaling.forecast.model`` values.
FORECAST_MODELS = ("none", "ewma", "holt", "holt-winters")
#: The rules of the target, in the order ties are reported.
RULES = ("demand", "guaranteed", "gang", "deadline", "forecast", "memory")

_READY = frozenset({"processing", "queued", "no-worker"})
_DONE = frozenset({"memory", "erred", "forgotten"})
#: Longest worker start latency sample kept (seconds): a worker that took longer
#: was most likely never requested by this target.
_MAX_LATENCY = 600.0
#: Points kept in the workers-over-time history of the snapshot.
_HISTORY = 600


class Forecaster:
    """A per-tenant model of the work arriving in each interval; plain Python.

    ``ewma`` is exponential smoothing of the level; ``holt`` adds a linear
    trend; ``holt-winters`` adds an additive seasonal term of ``season``
    intervals (started at zero, so it learns the season while it runs).
    ``none`` always forecasts 0.

    Parameters
    ----------
    model : {"none", "ewma", "holt", "holt-winters"}
    alpha, beta, gamma : float
        Smoothing factors in [0, 1] of the level, the trend and the season.
    season : int
        Intervals per season (``holt-winters``).
    """

    __slots__ = ("alpha", "beta", "gamma", "level", "model", "n", "season", "seasonal", "trend")

    def __init__(self, model: str, alpha: float, beta: float, gamma: float, season: int) -> None:
        self.model = model
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.season = season
        self.level = 0.0
        self.trend = 0.0
        self.seasonal = [0.0] * season if model == "holt-winters" else []
        self.n = 0

    def update(self, y: float) -> None:
        """Add the work observed in the interval that just ended.

        Parameters
        ----------
        y : float
            Task-seconds that arrived in it.
        """
        if self.model == "none":
            return
        a = self.alpha
        if self.n == 0:
            self.level = y
            self.n = 1
            if self.seasonal:
                self.seasonal[0] = 0.0
            return
        if self.model == "ewma":
            self.level = a * y + (1 - a) * self.level
        else:
            s = 0.0
            slot = self.n % self.season if self.seasonal else 0
            if self.seasonal:
                s = self.seasonal[slot]
            previous = self.level
            self.level = a * (y - s) + (1 - a) * (self.level + self.trend)
            self.trend = self.beta * (self.level - previous) + (1 - self.beta) * self.trend
            if self.seasonal:
                g = self.gamma
                self.seasonal[slot] = g * (y - self.level) + (1 - g) * s
        self.n += 1

    def predict(self, h: int) -> float:
        """Forecast work (task-seconds) of the ``h``-th interval ahead (``h >= 1``).

        Parameters
        ----------
        h : int

        Returns
        -------
        float
            Never negative.
        """
        if self.model == "none" or self.n == 0:
            return 0.0
        value = self.level
        if self.model != "ewma":
            value += h * self.trend
        if self.seasonal:
            value += self.seasonal[(self.n + h - 1) % self.season]
        return max(value, 0.0)


def _seconds(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    try:
        seconds = parse_timedelta(value)
    except (TypeError, ValueError, KeyError):
        seconds = None
    if seconds is None or not (seconds >= 0 and math.isfinite(seconds)):
        raise ConfigError(
            f"oxigdal.autoscaling.{name}={value!r} is not a duration >= 0 "
            "(give seconds or a string like '30s')"
        )
    return float(seconds)


def _fraction(name: str, value: Any, *, low: float = 0.0, high: float = 1.0) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (low <= value <= high)
        or math.isnan(value)
    ):
        raise ConfigError(
            f"oxigdal.autoscaling.{name}={value!r} must be a number in [{low:g}, {high:g}]"
        )
    return float(value)


def _count(name: str, value: Any, *, low: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(
            f"oxigdal.autoscaling.{name}={value!r} must be an integer >= {low}"
            + (" or null" if allow_none else "")
        )
    return value


def water_fill(needs: dict[str, float], weights: dict[str, float], capacity: float) -> dict:
    """Weighted max-min fair split of ``capacity`` among ``needs``.

    Parameters
    ----------
    needs : dict
        ``{tenant: need}``.
    weights : dict
        ``{tenant: weight}`` (missing: 1).
    capacity : float

    Returns
    -------
    dict
        ``{tenant: allocation}``; each at most its need, summing to at most ``capacity``.
    """
    alloc = {t: 0.0 for t in needs}
    active = {t for t, n in needs.items() if n > 0}
    left = float(capacity)
    while active and left > 1e-9:
        total_w = sum(weights.get(t, 1.0) for t in active)
        satisfied = set()
        given = 0.0
        for t in active:
            share = left * weights.get(t, 1.0) / total_w
            want = needs[t] - alloc[t]
            if want <= share:
                alloc[t] = needs[t]
                given += want
                satisfied.add(t)
        if not satisfied:
            for t in active:
                alloc[t] += left * weights.get(t, 1.0) / total_w
            break
        left -= given
        active -= satisfied
    return alloc


class Autoscaling(SchedulingPolicy):
    """Tenant-, deadline- and forecast-aware ``adaptive_target`` and ``workers_to_close``.

    Not in the default policy list: add
    ``{"class": "dask_oxigdal.scheduling.autoscaling.Autoscaling"}`` to
    ``oxigdal.scheduling.policies``. Arguments default to ``None``, meaning
    ``oxigdal.autoscaling.*`` (see docs/autoscaling.md).

    Parameters
    ----------
    minimum, maximum : int, optional
        Bounds of the target (workers); ``maximum`` ``None``: unbounded.
    cooldown : str or float, optional
        How long the raw target must stay lower, and how long after the last
        change, before the target steps down.
    hysteresis : float, optional
        Relative dead band: the raw target counts as lower only when below
        ``workers * (1 - hysteresis)`` (and at least one worker lower).
    max_down_fraction : float, optional
        At most this fraction of the workers (at least one) per step down.
    start_latency : str or float, optional
        Worker start latency assumed until one is measured.
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
    ) -> None:
        super().__init__()
        self.minimum = _count("minimum", setting("autoscaling.minimum", minimum), low=0)
        raw_max = maximum if maximum is not None else setting("autoscaling.maximum")
        self.maximum = _count("maximum", raw_max, low=1, allow_none=True)
        if self.maximum is not None and self.maximum < self.minimum:
            raise ConfigError(
                f"oxigdal.autoscaling.maximum={self.maximum!r} is below "
                f"minimum={self.minimum!r}: give maximum >= minimum"
            )
        self.cooldown = _seconds("cooldown", setting("autoscaling.cooldown", cooldown))
        self.hysteresis = _fraction(
            "hysteresis", setting("autoscaling.hysteresis", hysteresis), high=0.9
        )
        self.max_down_fraction = _fraction(
            "max-down-fraction", setting("autoscaling.max-down-fraction", max_down_fraction)
        )
        self.assumed_latency = _seconds(
            "start-latency", setting("autoscaling.start-latency", start_latency)
        )
        self.gang_timeout = _seconds(
            "gang-timeout", setting("autoscaling.gang-timeout", gang_timeout)
        )
        fc = dict(setting("autoscaling.forecast") or {})
        if forecast is not None:
            if not isinstance(forecast, dict):
                raise ConfigError(
                    f"oxigdal.autoscaling.forecast={forecast!r} must be a mapping with keys "
                    "model, interval, season, alpha, beta, gamma"
                )
            unknown = sorted(
                set(forecast) - {"model", "interval", "season", "alpha", "beta", "gamma"}
            )
            if unknown:
                raise ConfigError(
                    f"oxigdal.autoscaling.forecast: unknown key(s) {unknown}; valid keys: "
                    "model, interval, season, alpha, beta, gamma"
                )
            fc.update(forecast)
        self.model = fc.get("model")
        if self.model not in FORECAST_MODELS:
            raise ConfigError(
                f"oxigdal.autoscaling.forecast.model={self.model!r} is not valid; choose one "
                f"of {', '.join(FORECAST_MODELS)}"
            )
        self.forecast_interval = _seconds("forecast.interval", fc.get("interval"))
        if not self.forecast_interval > 0:
            raise ConfigError(
                f"oxigdal.autoscaling.forecast.interval={fc.get('interval')!r} must be > 0"
            )
        self.season = _count("forecast.season", fc.get("season"), low=1)
        self.alpha = _fraction("forecast.alpha", fc.get("alpha"))
        self.beta = _fraction("forecast.beta", fc.get("beta"))
        self.gamma = _fraction("forecast.gamma", fc.get("gamma"))
        # per tenant: {prefix name: [unfinished tasks, TaskPrefix]}; ready tasks
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
        self.last_change = 0.0
        self.below_since: float | None = None
        self.decision: dict[str, Any] = {"rule": None, "tenant": None, "rules": {}}
        self.per_tenant: dict[str, dict[str, float]] = {}
        self.decisions = 0
        self.history: collections.deque = collections.deque(maxlen=_HISTORY)
        # worker start latency: times at which not-yet-arrived workers were asked for
        self._requests: collections.deque = collections.deque()
        self.latency_samples = 0
        self.measured_latency: float | None = None
        self._saved: dict[str, Any] = {}
        self._installed = False

    # ------------------------------------------------------------------ setup
    def start(self, extension: OxigdalScheduling) -> None:
        """Replace ``adaptive_target`` / ``workers_to_close`` on the scheduler."""
        super().start(extension)
        scheduler = extension.scheduler
        now = time.time()
        self.bucket_start = now
        self.last_change = now
        self.target = len(scheduler.workers)
        inst = vars(scheduler)
        self._saved = {
            "adaptive_target": inst.get("adaptive_target"),
            "workers_to_close": inst.get("workers_to_close"),
            "handler_adaptive_target": scheduler.handlers.get("adaptive_target"),
            "handler_workers_to_close": scheduler.handlers.get("workers_to_close"),
        }
        self._dask_adaptive_target = scheduler.adaptive_target
        self._dask_workers_to_close = scheduler.workers_to_close
        scheduler.adaptive_target = self.adaptive_target
        scheduler.workers_to_close = self.workers_to_close
        scheduler.handlers["adaptive_target"] = self.adaptive_target
        scheduler.handlers["workers_to_close"] = self.workers_to_close
        self._installed = True

    def close(self) -> None:
        """Give Dask its own ``adaptive_target`` / ``workers_to_close`` back."""
        if not self._installed or self.extension is None:
            return
        self._installed = False
        scheduler = self.extension.scheduler
        inst = vars(scheduler)
        for name in ("adaptive_target", "workers_to_close"):
            if getattr(inst.get(name), "__self__", None) is self:
                saved = self._saved.get(name)
                if saved is None:
                    del inst[name]
                else:
                    inst[name] = saved
            handler = scheduler.handlers.get(name)
            if getattr(handler, "__self__", None) is self:
                saved = self._saved.get(f"handler_{name}")
                if saved is None:
                    scheduler.handlers.pop(name, None)
                else:
                    scheduler.handlers[name] = saved

    @property
    def start_latency(self) -> float:
        """Measured worker start latency (seconds), else the configured guess."""
        if self.measured_latency is not None:
            return self.measured_latency
        return self.assumed_latency

    # -------------------------------------------------------------- tracking
    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """Count the new tasks' work per tenant and prefix; record arrivals."""
        live = self.live
        arrived = self.arrived
        tenant_of = self._tenant_of
        cost_cache: dict[str, float] = {}
        deadline = False
        for ts, info in new:
            tenant = info.tenant
            prefix = ts.prefix
            pname = prefix.name
            per = live.get(tenant)
            if per is None:
                per = live[tenant] = {}
            entry = per.get(pname)
            if entry is None:
                per[pname] = [1, prefix]
            else:
                entry[0] += 1
            tenant_of[ts.key] = (tenant, pname)
            if info.edf is not None:
                deadline = True
            cost = cost_cache.get(pname)
            if cost is None:
                cost = cost_cache[pname] = self.task_cost(prefix)
            arrived[tenant] = arrived.get(tenant, 0.0) + cost
            lkey = info.annotations.locality
            if lkey is not None:
                try:
                    hash(lkey)
                except TypeError:
                    continue
                self._locality_of[ts.key] = lkey
                self.wanted[lkey] = self.wanted.get(lkey, 0) + 1
        if deadline:
            # a new deadline job (Deadline runs first): the target reflects it now,
            # not at the next tick
            ext = self.extension
            ext.scheduler.loop.add_callback(ext.run_policy, self, "compute", None)

    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Ready-task counts and unfinished work per tenant (O(1))."""
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
            if key not in self._tenant_of:
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
        """Estimated seconds of one task of ``prefix`` (the ``Deadline`` policy's estimate).

        Parameters
        ----------
        prefix : distributed.scheduler.TaskPrefix

        Returns
        -------
        float
        """
        ext = self.extension
        deadline = self._policy("Deadline")
        if deadline is not None:
            return float(deadline.task_cost(prefix))
        duration = prefix.duration_average
        if duration is not None and duration >= 0:
            return float(duration)
        if prefix.max_exec_time > 0:
            return 2.0 * prefix.max_exec_time
        return float(ext.scheduler.UNKNOWN_TASK_DURATION)

    def _policy(self, name: str) -> Any:
        ext = self.extension
        if ext is None or name in ext.disabled:
            return None
        for policy in ext.policies:
            if policy.name == name or type(policy).__name__ == name:
                return policy
        return None

    # ---------------------------------------------------------------- periodic
    def periodic(self) -> None:
        """Close forecast intervals; recompute the target (snapshot, metrics, events)."""
        now = time.time()
        self._roll(now)
        self.compute(None, now=now)

    def _roll(self, now: float) -> None:
        interval = self.forecast_interval
        elapsed = int((now - self.bucket_start) // interval)
        if elapsed <= 0:
            return
        arrived, self.arrived = self.arrived, {}
        tenants = set(arrived) | set(self.models)
        # after a long pause feed at most two seasons of empty intervals
        steps = min(elapsed, 2 * self.season + 1)
        for tenant in tenants:
            model = self.models.get(tenant)
            if model is None:
                model = self.models[tenant] = Forecaster(
                    self.model, self.alpha, self.beta, self.gamma, self.season
                )
            model.update(arrived.get(tenant, 0.0))
            for _ in range(steps - 1):
                model.update(0.0)
        self.bucket_start += elapsed * interval

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
        result = ext.run_policy(self, "compute", target_duration) if ext is not None else None
        if result is None:  # the policy failed (and is now disabled): Dask decides
            return self._dask_adaptive_target(target_duration)
        return result

    def compute(self, target_duration: float | str | None = None, now: float | None = None) -> int:
        """Compute, record and return the target (workers).

        Parameters
        ----------
        target_duration : str or float, optional
        now : float, optional

        Returns
        -------
        int
        """
        ext = self.extension
        scheduler = ext.scheduler
        now = time.time() if now is None else now
        if target_duration is None:
            target_duration = dask.config.get("distributed.adaptive.target-duration", "5s")
        target_duration = max(float(parse_timedelta(target_duration)), 1e-3)
        workers = scheduler.workers
        n = len(workers)
        nthreads = scheduler.total_nthreads
        per_worker = nthreads / n if n else 1.0
        latency = self.start_latency

        weights = ext.weights
        limits = self._limits()
        rules: dict[str, float] = {}
        why: dict[str, Any] = {}
        per_tenant: dict[str, dict[str, float]] = {}

        # demand
        demand: dict[str, float] = {}
        for tenant, per in self.live.items():
            if not per:
                continue
            work = 0.0
            for count, prefix in per.values():
                work += count * self.task_cost(prefix)
            need = min(math.ceil(work / target_duration), max(self.ready.get(tenant, 0), 0))
            limit = limits.get(tenant)
            if limit is not None:
                need = min(need, limit)
            demand[tenant] = float(need)
            per_tenant.setdefault(tenant, {})["demand_work"] = work
        total_demand = sum(demand.values())
        if total_demand > nthreads > 0:
            # workers asked for now arrive after the start latency: ask only for
            # the work the current threads will not have done by then
            work = sum(
                min(per_tenant[t]["demand_work"], demand[t] * target_duration) for t in demand
            )
            useful = math.ceil(max(work - nthreads * latency, 0.0) / target_duration)
            total_demand = min(total_demand, max(float(nthreads), float(useful)))
        rules["demand"] = total_demand
        why["demand"] = max(demand, key=demand.get) if demand else None

        # guaranteed slots of tenants with work
        guaranteed = 0.0
        gtenant = None
        for tenant, options in ext.tenant_options.items():
            g = options.get("guaranteed-slots", options.get("guaranteed_slots"))
            usage = ext.usage.get(tenant)
            if g and usage is not None and usage.pending > 0:
                guaranteed += g
                if gtenant is None or g > guaranteed - g:
                    gtenant = tenant
        rules["guaranteed"] = guaranteed
        why["guaranteed"] = gtenant

        # largest waiting gang
        gang_need = 0.0
        gang_why = None
        gang = self._policy("Gang")
        if gang is not None:
            for g in gang.waiting.values():
                if g.k > gang_need:
                    gang_need = float(g.k)
                    gang_why = (g.tenant, g.name)
        rules["gang"] = gang_need
        why["gang"] = gang_why

        # deadlines (EDF cumulative)
        deadline_need = 0.0
        deadline_why = None
        dl = self._policy("Deadline")
        if dl is not None and dl.jobs:
            cumulative = 0.0
            tasks = 0
            for job in sorted(dl.jobs.values(), key=lambda j: j.deadline):
                cumulative += job.remaining()
                tasks += len(job.keys) - job.done
                slack = job.deadline - now - latency
                if slack <= 0:
                    continue
                need = min(math.ceil(cumulative / slack), tasks)
                if need > deadline_need:
                    deadline_need = float(need)
                    deadline_why = (job.tenant, job.deadline)
        rules["deadline"] = deadline_need
        why["deadline"] = deadline_why

        # forecast
        horizon = 1 + math.ceil(latency / self.forecast_interval)
        forecast: dict[str, float] = {}
        forecast_seconds: dict[str, float] = {}
        for tenant, model in self.models.items():
            ahead = max(model.predict(h) for h in range(1, horizon + 1))
            forecast_seconds[tenant] = ahead
            need = ahead / self.forecast_interval
            limit = limits.get(tenant)
            if limit is not None:
                need = min(need, limit)
            forecast[tenant] = need
        rules["forecast"] = float(math.ceil(sum(forecast.values()) - 1e-9))
        why["forecast"] = max(forecast, key=forecast.get) if forecast else None

        # Dask's memory rule (in workers: convert to threads)
        limit_bytes = sum(ws.memory_limit for ws in workers.values())
        used = sum(ws.nbytes for ws in workers.values())
        rules["memory"] = (
            2 * n * per_worker if limit_bytes > 0 and used > 0.6 * limit_bytes else 0.0
        )
        why["memory"] = None

        rule = max(RULES, key=lambda r: (rules[r], -RULES.index(r)))
        threads = rules[rule]
        raw = math.ceil(threads / per_worker - 1e-9) if threads > 0 else 0
        if raw == 0 and (scheduler.queued or scheduler.unrunnable) and not n:
            raw = 1
        clamp = None
        if raw < self.minimum:
            raw, clamp = self.minimum, "minimum"
        if self.maximum is not None and raw > self.maximum:
            raw, clamp = self.maximum, "maximum"

        # per-tenant figures (desired workers: the tenant's own need, fair-shared when capped)
        needs: dict[str, float] = {}
        for tenant in set(demand) | set(forecast) | {t for t, _ in filter(None, [gang_why])}:
            own = max(demand.get(tenant, 0.0), forecast.get(tenant, 0.0))
            if gang_why is not None and gang_why[0] == tenant:
                own = max(own, gang_need)
            needs[tenant] = own
        if dl is not None:
            for job in dl.jobs.values():
                slack = job.deadline - now - latency
                if slack > 0:
                    own = min(math.ceil(job.remaining() / slack), len(job.keys) - job.done)
                    needs[job.tenant] = max(needs.get(job.tenant, 0.0), float(own))
        capacity = raw * per_worker
        if sum(needs.values()) > capacity:
            alloc = water_fill(needs, weights, capacity)
        else:
            alloc = needs
        for tenant in sorted(set(needs) | set(forecast_seconds)):
            entry = per_tenant.setdefault(tenant, {})
            entry["demand_threads"] = demand.get(tenant, 0.0)
            entry["forecast_task_seconds"] = forecast_seconds.get(tenant, 0.0)
            entry["desired_workers"] = math.ceil(alloc.get(tenant, 0.0) / per_worker - 1e-9)
        self.per_tenant = per_tenant

        target = self._smooth(raw, n, now)
        reason = clamp or rule
        tenant = None
        detail = why.get(rule)
        if isinstance(detail, tuple):
            tenant = detail[0]
        elif isinstance(detail, str):
            tenant = detail
        if target != raw and target > raw:
            reason = "cooldown" if target >= self.target else "step-down"
        self._track_requests(target, n, now)
        if target != self.target:
            self.decisions += 1
            ext.emit(
                "autoscale",
                previous=self.target,
                target=target,
                workers=n,
                rule=reason,
                tenant=tenant,
                detail=_plain(detail),
                rules={r: rules[r] for r in RULES},
            )
            self.target = target
            self.last_change = now
        self.decision = {
            "rule": reason,
            "tenant": tenant,
            "raw": raw,
            "rules": {r: rules[r] for r in RULES},
            "target_duration": target_duration,
        }
        if not self.history or now - self.history[-1][0] >= 0.5:
            self.history.append((now, n, target, sum(demand.values())))
        return target

    def _limits(self) -> dict[str, int]:
        quota = self._policy("Quota")
        if quota is not None and getattr(quota, "limits", None):
            return dict(quota.limits)
        out = {}
        for tenant, options in self.extension.tenant_options.items():
            value = options.get("max-tasks", options.get("max_tasks"))
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                out[tenant] = value
        return out

    def _smooth(self, raw: int, n: int, now: float) -> int:
        """Up at once; down after ``cooldown`` below, by at most a fraction per step."""
        current = max(self.target, 0)
        if raw >= current:
            self.below_since = None
            return raw
        band = max(1.0, self.hysteresis * current)
        if raw > current - band:
            self.below_since = None
            return current
        if self.below_since is None:
            self.below_since = now
        if now - max(self.below_since, self.last_change) < self.cooldown:
            return current
        step = max(1, math.floor(current * self.max_down_fraction))
        target = max(raw, current - step)
        # never below the workers that workers_to_close would keep
        if target < n:
            protected = self.protected()
            keep = sum(
                1
                for address, ws in self.extension.scheduler.workers.items()
                if ws.processing or ws.long_running or address in protected
            )
            target = max(target, keep, self.minimum)
        return target

    def _track_requests(self, target: int, n: int, now: float) -> None:
        """Remember when each not-yet-arrived worker was asked for (start latency)."""
        outstanding = self._requests
        have = n + len(outstanding)
        if target > have:
            outstanding.extend([now] * (target - have))
        elif target < have:
            for _ in range(min(have - max(target, n), len(outstanding))):
                outstanding.pop()

    def add_worker(self, address: str) -> None:
        """A worker arrived: a start latency sample if one was asked for."""
        if self._requests:
            sample = time.time() - self._requests.popleft()
            if 0 <= sample <= _MAX_LATENCY:
                self.latency_samples += 1
                if self.measured_latency is None:
                    self.measured_latency = sample
                else:
                    self.measured_latency = 0.7 * self.measured_latency + 0.3 * sample

    # -------------------------------------------------------------- scale-down
    def protected(self) -> dict[str, str]:
        """Workers that should not be closed, and why.

        A worker running a gang member (``gang``) or a task of a deadline job
        (``deadline``), or one whose cache holds a tile that an unfinished task
        wants (``cached-tile``, only with the ``Locality`` policy).

        Returns
        -------
        dict
            ``{address: reason}``.
        """
        ext = self.extension
        info = ext.info
        out: dict[str, str] = {}
        for address, ws in ext.scheduler.workers.items():
            for ts in ws.processing:
                i = info.get(ts.key)
                if i is None:
                    continue
                if i.gang is not None:
                    out[address] = "gang"
                    break
                if i.edf is not None:
                    out[address] = "deadline"
                    break
        locality = self._policy("Locality")
        if locality is not None and self.wanted:
            wanted = self.wanted
            for address, keys in locality.worker_keys.items():
                if address in out:
                    continue
                if any(k in wanted for k in keys):
                    out[address] = "cached-tile"
        return out

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
        never chosen. Without ``n``/``target`` only idle workers are chosen,
        while the others keep ``memory_ratio`` (default 2) times the stored
        bytes, as in Dask.

        Returns
        -------
        list of str
            The chosen workers' ``attribute`` (address by default).
        """
        result = self._safe_closable(memory_ratio, n, key, minimum, target, attribute)
        if result is None:  # the policy failed (and is now disabled): Dask decides
            return self._dask_workers_to_close(
                memory_ratio=memory_ratio,
                n=n,
                key=key,
                minimum=minimum,
                target=target,
                attribute=attribute,
            )
        return result

    def _safe_closable(
        self,
        memory_ratio: float | None,
        n: int | None,
        key: Any,
        minimum: int | None,
        target: int | None,
        attribute: str,
    ) -> list | None:
        ext = self.extension
        if ext is None or self.name in ext.disabled:
            return None
        try:
            return self._closable(memory_ratio, n, key, minimum, target=target, attribute=attribute)
        except Exception as e:
            ext._disable(self, "workers_to_close", e)
            return None

    def _closable(
        self,
        memory_ratio: float | None,
        n: int | None,
        key: Any,
        minimum: int | None,
        target: int | None = None,
        attribute: str = "address",
    ) -> list[str]:
        scheduler = self.extension.scheduler
        workers = scheduler.workers
        if target is not None and n is None:
            n = len(workers) - target
        if n is not None:
            n = max(n, 0)
            target = len(workers) - n
        if n is None and memory_ratio is None:
            memory_ratio = 2
        if key is None:

            def key(ws: Any) -> Any:
                return ws.address

        elif isinstance(key, bytes):
            key = pickle.loads(key)
        valid = [ws for ws in workers.values() if not ws.long_running]
        for plugin in list(scheduler.plugins.values()):
            valid = plugin.valid_workers_downscaling(scheduler, valid)
        protected = self.protected()
        groups: dict[Any, list] = {}
        for ws in valid:
            groups.setdefault(key(ws), []).append(ws)
        limit = sum(ws.memory_limit for ws in valid)
        total = sum(ws.nbytes for ws in valid)

        def cost(group: Any) -> tuple:
            members = groups[group]
            reasons = {protected.get(ws.address) for ws in members}
            busy = any(ws.processing for ws in members)
            return (
                "cached-tile" in reasons,
                bool(reasons - {None, "cached-tile"}),
                busy,
                sum(len(ws.has_what) for ws in members),
                sum(ws.nbytes for ws in members),
                str(group),
            )

        order = sorted(groups, key=cost)
        chosen: list = []
        remain = len(workers)
        for group in order:
            members = groups[group]
            c = cost(group)
            if c[0]:
                break  # a wanted cached tile: never
            if n is None and (c[1] or c[2]):
                break  # only idle, unprotected workers without a count
            if minimum and remain - len(members) < minimum:
                break
            if n is not None:
                if remain - len(members) < (target or 0):
                    break
            else:
                group_limit = sum(ws.memory_limit for ws in members)
                if limit - group_limit < memory_ratio * total:
                    break
            limit -= sum(ws.memory_limit for ws in members)
            chosen.append(group)
            remain -= len(members)
        return [getattr(ws, attribute) for g in chosen for ws in groups[g]]

    # ---------------------------------------------------------------- status
    def snapshot(self) -> dict[str, Any]:
        """Target, its rule and tenant, per-tenant demand/forecast/target, history."""
        return {
            "target": self.target,
            "rule": self.decision.get("rule"),
            "tenant": self.decision.get("tenant"),
            "raw_target": self.decision.get("raw"),
            "rules": dict(self.decision.get("rules") or {}),
            "decisions": self.decisions,
            "start_latency": self.start_latency,
            "start_latency_measured": self.measured_latency is not None,
            "latency_samples": self.latency_samples,
            "forecast_model": self.model,
            "cooldown": self.cooldown,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "tenants": {t: dict(v) for t, v in sorted(self.per_tenant.items())},
            "desired_workers": {
                t: v.get("desired_workers", 0) for t, v in sorted(self.per_tenant.items())
            },
            "forecast_task_seconds": {
                t: v.get("forecast_task_seconds", 0.0) for t, v in sorted(self.per_tenant.items())
            },
            "history": [list(h) for h in list(self.history)[-120:]],
        }


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
