"""Parts of the ``Autoscaling`` policy that need no scheduler: settings, forecast, fair split.

Plain Python (no numpy or statsmodels on the scheduler). The policy itself is
:mod:`dask_oxigdal.scheduling.autoscaling`.
"""

from __future__ import annotations

import collections
import math
import statistics
from typing import Any

from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.settings import duration, setting

__all__ = [
    "FORECAST_MODELS",
    "RULES",
    "Forecaster",
    "Ramp",
    "StartLatency",
    "burst_delay",
    "feed",
    "parse_settings",
    "plain",
    "upper_quartile",
    "water_fill",
    "whole_tasks",
]

#: Valid ``oxigdal.autoscaling.forecast.model`` values.
FORECAST_MODELS = ("none", "ewma", "holt", "holt-winters")
#: The rules of the target, in the order ties are reported.
RULES = ("demand", "guaranteed", "gang", "deadline", "forecast", "memory")


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


#: Longest worker start latency sample kept (seconds): a worker that took longer
#: was most likely never requested by this target.
MAX_LATENCY = 600.0


class StartLatency:
    """Worker start latency, measured from the target's rises to the arrivals.

    Every rise of the target above the workers connected plus those already
    asked for records a request time; an arriving worker takes the oldest
    request. When the target falls below that, the deployment gives up workers
    that have not arrived, and which ones it gives up is its own choice (Dask's
    ``Adaptive`` takes them from a set of names, a Kubernetes ReplicaSet the
    newest pods). Each request still outstanding then may stand for any of
    them: it keeps all their times as candidates. A worker that arrives for
    such a request is matched to the candidate nearest to the current
    estimate (with arrivals about one latency after their own request, the
    others are off by the spacing of the requests). Before, every arrival was
    matched to the oldest request, and a run that asked for workers and gave
    some up again measured 48-54 s for a 31 s start; skipping the ambiguous
    arrivals instead left a run without a sample until its 225th second.

    Parameters
    ----------
    assumed : float
        Seconds assumed until a worker's arrival is measured.
    keep : int
        Samples kept; the estimate is their median.
    """

    def __init__(self, assumed: float, keep: int = 9) -> None:
        self.assumed = assumed
        # per outstanding request, oldest first: the times it may have been made at
        self.requests: collections.deque = collections.deque()
        self.samples: collections.deque = collections.deque(maxlen=keep)
        self.count = 0
        self.ambiguous = 0

    @property
    def measured(self) -> float | None:
        """Median of the kept samples (seconds), or None before the first."""
        return statistics.median(self.samples) if self.samples else None

    @property
    def value(self) -> float:
        """The median sample, else the assumed latency (seconds)."""
        measured = self.measured
        return self.assumed if measured is None else measured

    @property
    def cautious(self) -> float:
        """The upper quartile of the samples, else the assumed latency (seconds).

        A deadline is a promise: a worker counted on to arrive in time must
        arrive in time in most starts, not in half of them.
        """
        return upper_quartile(self.samples, self.value)

    def arriving(self, now: float, within: float) -> int:
        """Workers asked for whose expected arrival is within ``within`` seconds of ``now``.

        Expected: the earliest time the request may have been made plus the
        estimate. Requests overdue by more than ``within`` do not count (the
        worker is most likely not coming).
        """
        value = self.value
        return sum(1 for times in self.requests if abs(times[0] + value - now) <= within)

    def latest(self) -> list[float]:
        """The latest time each outstanding request may have been made at, oldest first."""
        return [times[-1] for times in self.requests]

    def track(self, target: int, workers: int, now: float) -> None:
        """Record the target ``target`` given with ``workers`` connected at ``now``."""
        outstanding = self.requests
        have = workers + len(outstanding)
        if target > have:
            outstanding.extend((now,) for _ in range(target - have))
        elif target < have:
            drop = min(have - max(target, workers), len(outstanding))
            if not drop:
                return
            # a worker later than MAX_LATENCY is no sample: older times can go, so
            # the candidates stay bounded while requests stay outstanding
            times = {t for request in outstanding for t in request}
            recent = sorted(t for t in times if now - t <= MAX_LATENCY)
            candidates = tuple(recent) or (max(times),)
            for _ in range(drop):
                outstanding.pop()
            for i in range(len(outstanding)):
                outstanding[i] = candidates

    def arrived(self, now: float) -> None:
        """A worker arrived at ``now``: a sample from its request's nearest candidate time."""
        if not self.requests:
            return
        times = self.requests.popleft()
        if len(times) == 1:
            sample = now - times[0]
        else:
            self.ambiguous += 1
            estimate = self.value
            sample = min((now - t for t in times), key=lambda x: abs(x - estimate))
        if 0 <= sample <= MAX_LATENCY:
            self.count += 1
            self.samples.append(sample)


#: Seconds above which a first-task delay or a gap is idleness, not dispatch.
RAMP_MAX = 5.0
#: Workers that register within this many seconds of the previous one join in one burst.
BURST_GAP = 0.5
#: Bursts smaller than this say nothing of the per-worker delay: in one quick benchmark
#: run a worker that joined alone waited up to 0.3 s for its first task, far more than
#: its registration costs (probably work stolen for it; not verified).
BURST_MIN = 16


class Ramp:
    """How fast a worker that joins while work waits gets going: its first tasks.

    A worker asked for by the deadline rule is counted on for the whole tasks
    it can finish between its arrival and the deadline. It starts its first
    task some time after it registers (the scheduler must hand it queued or
    stolen work), and each next task some time after the previous one ended
    (the result goes to the scheduler, a task comes back). Both are measured
    here, on the first ``tasks`` tasks of each worker that joined while
    tasks were waiting for a thread (queued, unrunnable, or more tasks
    processing than threads), from the ``startstops`` Dask's workers report
    (in the scheduler's clock): ``delay`` is the upper quartile of the last
    ``keep`` first-task starts after the join (larger bursts of joining
    workers wait longer, and a deadline counts on them), ``gap`` the median of the last
    ``2 * keep`` gaps between two tasks of one thread, counted only when the
    next task was already waiting as the last one ended (``waiting``).

    Workers that register together (each within :data:`BURST_GAP` seconds of
    the previous) form a *burst*, and a burst's workers start their first tasks
    together, once the scheduler has registered them all: the delay grows with
    the burst (measured: 0.05 s for 17-18 workers, 0.11-0.12 s for 32, 0.22-0.25
    s for 59). Each first-task sample of a burst of at least :data:`BURST_MIN`
    workers is also kept divided by its burst's size, and :meth:`delay_for`
    extrapolates to a burst of ``n``. (Smaller bursts are left out of this: in
    one quick benchmark run, workers joining alone or two or three together
    waited up to 0.3 s for their first task, 0.1 s a worker of their burst,
    which would plan 1.2 s for a burst of 12.)
    Before the first sample both are 0. A value over :data:`RAMP_MAX`
    seconds is no dispatch delay (the worker had nothing to run) and is
    left out. Only joining workers are watched (O(1) per task
    finished on one of them; nothing for the others), and what a worker that
    has joined long ago does is not what a new one does.

    Parameters
    ----------
    tasks : int
        Tasks watched per joining worker.
    keep : int
        First-task samples kept (and twice as many gaps).
    """

    def __init__(self, tasks: int = 6, keep: int = 16) -> None:
        self.tasks = tasks
        # address -> [joined at, tasks seen, {thread: last stop}, its burst]
        self.fresh: dict[str, list] = {}
        self.delays: collections.deque = collections.deque(maxlen=keep)
        # each first-task delay divided by the size of the burst the worker joined in
        self.per_join: collections.deque = collections.deque(maxlen=keep)
        self.gaps: collections.deque = collections.deque(maxlen=2 * keep)
        self._burst = [-math.inf, 0]  # [last join, workers]

    def joined(self, address: str, now: float, backlog: bool) -> None:
        """A worker registered at ``now``; watched if ``backlog`` (work was waiting).

        Every join counts toward the burst it belongs to, watched or not.
        """
        if now - self._burst[0] > BURST_GAP:
            self._burst = [now, 0]
        self._burst[0] = now
        self._burst[1] += 1
        if backlog:
            self.fresh[address] = [now, 0, {}, self._burst]

    def left(self, address: str) -> None:
        """The worker is gone."""
        self.fresh.pop(address, None)

    def finished(self, address: Any, thread: Any, startstops: Any, waiting: bool = True) -> None:
        """A task ran on ``address`` (``thread``), timed by its ``startstops``.

        ``waiting``: another task was waiting for the thread as this one was
        reported (the gap before this thread's next task is a dispatch gap).
        """
        entry = self.fresh.get(address)
        if entry is None:
            return
        span = None
        for ss in startstops or ():
            if isinstance(ss, dict) and ss.get("action") == "compute":
                span = ss
        if span is None:
            return
        start, stop = span.get("start"), span.get("stop")
        if not isinstance(start, (int, float)) or not isinstance(stop, (int, float)):
            return
        joined, seen, last, burst = entry
        if not seen and start - joined <= RAMP_MAX:
            self.delays.append(max(start - joined, 0.0))
            if burst[1] >= BURST_MIN:
                self.per_join.append(self.delays[-1] / burst[1])
        previous = last.get(thread)
        if previous is not None and start - previous <= RAMP_MAX:
            self.gaps.append(max(start - previous, 0.0))
        if waiting:
            last[thread] = stop
        else:
            last.pop(thread, None)
        entry[1] = seen + 1
        if entry[1] >= self.tasks:
            del self.fresh[address]

    @property
    def delay(self) -> float:
        """Seconds from a join to the first task start: the upper quartile (0 before a sample)."""
        return upper_quartile(self.delays, self.delays[0] if self.delays else 0.0)

    def delay_for(self, workers: int) -> float:
        """The first-task delay of a burst of ``workers`` joining together.

        The larger of :attr:`delay` and ``workers`` times the upper quartile of
        the per-worker delays (each sample divided by its burst's size).

        Parameters
        ----------
        workers : int
            Workers that will join together.

        Returns
        -------
        float
        """
        return burst_delay(workers, self.delay, self.per_worker)

    @property
    def per_worker(self) -> float:
        """First-task delay per worker of a burst: the upper quartile (0 before a sample)."""
        return upper_quartile(self.per_join, self.per_join[0] if self.per_join else 0.0)

    @property
    def gap(self) -> float:
        """Median seconds between two tasks of a new worker's thread (0 before a sample)."""
        return statistics.median(self.gaps) if self.gaps else 0.0

    def whole_tasks(self, window: float, duration: float) -> int:
        """Whole tasks of ``duration`` s a thread arriving ``window`` s before a deadline finishes.

        See :func:`whole_tasks`, with this ramp's ``delay`` and ``gap``.
        """
        return whole_tasks(window, duration, self.delay, self.gap)


def whole_tasks(window: float, duration: float, delay: float, gap: float) -> int:
    """The largest ``k`` with ``delay + k * duration + (k - 1) * gap <= window`` (0 if none).

    Parameters
    ----------
    window : float
        Seconds between a thread's arrival and the deadline.
    duration : float
        Seconds of one task.
    delay, gap : float
        A joining thread's wait for its first task, and between two tasks (:class:`Ramp`).

    Returns
    -------
    int
    """
    if duration <= 0 or window <= 0:
        return 0
    return max(math.floor((window - delay + gap) / (duration + gap) + 1e-9), 0)


def burst_delay(workers: int, delay: float, per_worker: float) -> float:
    """The first-task delay of a burst of ``workers``: ``max(delay, workers * per_worker)``.

    Parameters
    ----------
    workers : int
        Workers that will join together.
    delay, per_worker : float
        :attr:`Ramp.delay` and :attr:`Ramp.per_worker`.

    Returns
    -------
    float
    """
    return max(delay, workers * per_worker)


def upper_quartile(values: Any, default: float) -> float:
    """The upper quartile of ``values`` (inclusive method); ``default`` for fewer than 2.

    Parameters
    ----------
    values : sequence of float
    default : float

    Returns
    -------
    float
    """
    if len(values) < 2:
        return default
    return statistics.quantiles(values, n=4, method="inclusive")[2]


def feed(models: dict, arrived: dict[str, float], steps: int, new: Any) -> None:
    """Close ``steps`` forecast intervals: the work that arrived, then empty ones.

    Parameters
    ----------
    models : dict
        ``{tenant: Forecaster}``; a tenant seen for the first time gets ``new()``.
    arrived : dict
        ``{tenant: task-seconds}`` that arrived in the first of these intervals.
    steps : int
    new : callable
    """
    for tenant in set(arrived) | set(models):
        model = models.get(tenant)
        if model is None:
            model = models[tenant] = new()
        model.update(arrived.get(tenant, 0.0))
        for _ in range(steps - 1):
            model.update(0.0)


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


def plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def parse_settings(**given: Any) -> dict[str, Any]:
    """Check the policy's arguments over ``oxigdal.autoscaling.*``.

    Parameters
    ----------
    **given
        The ``Autoscaling`` arguments; ``None`` means the setting.

    Returns
    -------
    dict
        ``minimum``, ``maximum``, ``cooldown``, ``hysteresis``,
        ``max_down_fraction``, ``start_latency``, ``gang_timeout``, ``idle_timeout`` (seconds)
        and the forecast's ``model``, ``interval``, ``season``, ``alpha``,
        ``beta``, ``gamma``.

    Raises
    ------
    ConfigError
        A value out of range or of the wrong kind, naming it and the valid choices.
    """
    out: dict[str, Any] = {}
    out["minimum"] = _count("minimum", setting("autoscaling.minimum", given["minimum"]), low=0)
    maximum = given["maximum"]
    raw_max = maximum if maximum is not None else setting("autoscaling.maximum")
    out["maximum"] = _count("maximum", raw_max, low=1, allow_none=True)
    if out["maximum"] is not None and out["maximum"] < out["minimum"]:
        raise ConfigError(
            f"oxigdal.autoscaling.maximum={out['maximum']!r} is below "
            f"minimum={out['minimum']!r}: give maximum >= minimum"
        )
    for name in ("cooldown", "start-latency", "gang-timeout"):
        attr = name.replace("-", "_")
        out[attr] = duration(f"autoscaling.{name}", given[attr])
    idle = given.get("idle_timeout")
    if idle is None:
        idle = setting("autoscaling.idle-timeout", None)
    # null (the default): the cooldown
    out["idle_timeout"] = (
        out["cooldown"] if idle is None else duration("autoscaling.idle-timeout", idle)
    )
    out["hysteresis"] = _fraction(
        "hysteresis", setting("autoscaling.hysteresis", given["hysteresis"]), high=0.9
    )
    out["max_down_fraction"] = _fraction(
        "max-down-fraction",
        setting("autoscaling.max-down-fraction", given["max_down_fraction"]),
    )
    keys = ("model", "interval", "season", "alpha", "beta", "gamma")
    fc = dict(setting("autoscaling.forecast") or {})
    forecast = given["forecast"]
    if forecast is not None:
        if not isinstance(forecast, dict):
            raise ConfigError(
                f"oxigdal.autoscaling.forecast={forecast!r} must be a mapping with keys "
                + ", ".join(keys)
            )
        unknown = sorted(set(forecast) - set(keys))
        if unknown:
            raise ConfigError(
                f"oxigdal.autoscaling.forecast: unknown key(s) {unknown}; valid keys: "
                + ", ".join(keys)
            )
        fc.update(forecast)
    out["model"] = fc.get("model")
    if out["model"] not in FORECAST_MODELS:
        raise ConfigError(
            f"oxigdal.autoscaling.forecast.model={out['model']!r} is not valid; choose one "
            f"of {', '.join(FORECAST_MODELS)}"
        )
    out["interval"] = duration("autoscaling.forecast.interval", fc.get("interval"))
    if not out["interval"] > 0:
        raise ConfigError(
            f"oxigdal.autoscaling.forecast.interval={fc.get('interval')!r} must be > 0"
        )
    out["season"] = _count("forecast.season", fc.get("season"), low=1)
    for name in ("alpha", "beta", "gamma"):
        out[name] = _fraction(f"forecast.{name}", fc.get(name))
    return out
