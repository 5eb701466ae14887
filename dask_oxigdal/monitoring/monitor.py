"""``Monitor``: the policy that keeps the live numbers the page, metrics and alerts need.

A :class:`~dask_oxigdal.scheduling.policy.SchedulingPolicy` like the others
(configured in ``oxigdal.scheduling.policies``), so it gets the extension's
hooks and its failures disable it, never the scheduler:

- ``update_graph`` / ``transition`` (O(1)): queue depth and running tasks per
  queue; compute durations of finished tasks per prefix for the anomaly
  detector;
- ``periodic``: a sample of every tenant's share and entitled share (the
  history plotted on ``/oxigdal/``), the alert rules, the anomaly detector.

Alerts go out as ``{"kind": "alert", ...}`` events on the ``oxigdal`` topic
(``client.subscribe_topic("oxigdal", handler)``) and as WARNING records on the
``dask_oxigdal.monitoring`` logger.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.monitoring.alerts import DurationAnomalyDetector, parse_rules
from dask_oxigdal.scheduling._dask import compute_seconds
from dask_oxigdal.scheduling.bounded import evict_idle, max_prefixes, prefix_is_live
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo
from dask_oxigdal.scheduling.settings import setting
from dask_oxigdal.settings import duration

if TYPE_CHECKING:
    from distributed.scheduler import TaskState

    from dask_oxigdal.scheduling.extension import OxigdalScheduling

__all__ = ["Monitor"]

logger = logging.getLogger("dask_oxigdal.monitoring")

_DONE = ("memory", "erred", "forgotten")


class Monitor(SchedulingPolicy):
    """Live metrics history, alert rules and duration anomalies.

    Parameters
    ----------
    rules : list of dict, optional
        Alert rules (``oxigdal.monitoring.rules``).
    history_length : int, optional
        Samples of the share history kept (``oxigdal.monitoring.history-length``).
    alert_cooldown : str or float, optional
        Minimum time between two alerts of one rule and subject.
    recent_alerts : int, optional
        Alerts kept for ``status()`` and the page.
    anomaly : dict, optional
        ``{enabled, window, min-samples, threshold, min-ratio}``.
    """

    name = "Monitor"

    def __init__(
        self,
        *,
        rules: list[dict[str, Any]] | None = None,
        history_length: int | None = None,
        alert_cooldown: str | float | None = None,
        recent_alerts: int | None = None,
        anomaly: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.rules = parse_rules(setting("monitoring.rules", rules))
        length = setting("monitoring.history-length", history_length)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ConfigError(
                f"oxigdal.monitoring.history-length={length!r} must be an integer >= 1"
            )
        self.cooldown = duration("monitoring.alert-cooldown", alert_cooldown)
        keep = setting("monitoring.recent-alerts", recent_alerts)
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError(f"oxigdal.monitoring.recent-alerts={keep!r} must be an integer >= 1")
        a = dict(setting("monitoring.anomaly", None) or {})
        a.update(anomaly or {})
        valid = {
            "enabled",
            "window",
            "min-samples",
            "threshold",
            "min-ratio",
            "min-excess",
            "min-consecutive",
        }
        unknown = sorted(set(a) - valid)
        if unknown:
            raise ConfigError(
                f"oxigdal.monitoring.anomaly: unknown key(s) {', '.join(unknown)}; valid keys: "
                f"{', '.join(sorted(valid))}"
            )
        self.anomaly_enabled = bool(a.get("enabled", True))
        self.detector = DurationAnomalyDetector(
            window=a.get("window", 50),
            min_samples=a.get("min-samples", 10),
            threshold=a.get("threshold", 5.0),
            min_ratio=a.get("min-ratio", 3.0),
            min_excess=duration("monitoring.anomaly.min-excess", a.get("min-excess", "50ms")),
            min_consecutive=a.get("min-consecutive", 2),
        )
        self._anomaly_at: dict[str, float] = {}  # prefix -> last anomaly alert
        # bounded: idle prefixes past oxigdal.scheduling.max-prefixes are forgotten
        self.max_prefixes = max_prefixes()
        self.evicted_prefixes = 0
        self.history: deque = deque(maxlen=length)
        self.alerts: deque = deque(maxlen=keep)
        self.alerts_by_rule: dict[str, int] = {}
        self.queue_depth: dict[str, int] = {}
        self.queue_running: dict[str, int] = {}
        self._open: set = set()  # keys submitted and not finished

    def start(self, extension: OxigdalScheduling) -> None:
        """Attach to the extension."""
        super().start(extension)
        for queue in extension.queues:
            self.queue_depth.setdefault(queue, 0)
            self.queue_running.setdefault(queue, 0)

    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """Count the new tasks in their queue."""
        depth = self.queue_depth
        for ts, info in new:
            self._open.add(ts.key)
            depth[info.queue] = depth.get(info.queue, 0) + 1

    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Queue depth / running per queue, and durations for the anomaly detector (O(1))."""
        q = info.queue
        if finish == "processing":
            self.queue_running[q] = self.queue_running.get(q, 0) + 1
            if key in self._open:
                self.queue_depth[q] -= 1
        elif start == "processing":
            self.queue_running[q] -= 1
            if finish not in _DONE and key in self._open:
                self.queue_depth[q] += 1  # back to waiting (worker lost, stolen, ...)
            if finish == "memory" and self.anomaly_enabled:
                seconds = compute_seconds(kwargs.get("startstops"))
                if seconds > 0:
                    prefix = info.prefix  # set by FairShare; else ask the scheduler
                    if not prefix:
                        ext = self.extension
                        ts = ext.scheduler.tasks.get(key) if ext and ext.scheduler else None
                        prefix = ts.prefix.name if ts is not None else ""
                    if prefix:
                        self.detector.observe(prefix, seconds)
        if finish in _DONE and key in self._open:
            self._open.discard(key)
            if start != "processing":
                self.queue_depth[q] -= 1

    def restart(self) -> None:
        """Every task was forgotten."""
        self._open.clear()
        for q in self.queue_depth:
            self.queue_depth[q] = 0
            self.queue_running[q] = 0

    def periodic(self) -> None:
        """Sample the shares, evaluate the rules and the anomaly detector."""
        ext = self.extension
        assert ext is not None
        now = time.time()
        tenants = ext.tenant_snapshot()
        self.history.append(
            {
                "t": now,
                "share": {t: v["current_share"] for t, v in tenants.items()},
                "entitled": {t: v["entitled_share"] for t, v in tenants.items()},
                "running": {t: v["running"] for t, v in tenants.items()},
            }
        )
        if self.rules:
            snapshot = ext.snapshot()
            for rule in self.rules:
                for alert in rule.evaluate(snapshot, now, self.cooldown):
                    self.raise_alert(alert)
        if self.anomaly_enabled:
            for f in self.detector.check():
                last = self._anomaly_at.get(f["prefix"])
                if last is not None and now - last < self.cooldown:
                    continue
                self._anomaly_at[f["prefix"]] = now
                self.raise_alert(
                    {
                        "rule": "task-duration-anomaly",
                        "metric": "task-duration",
                        "subject": f["prefix"],
                        "value": f["value"],
                        "threshold": self.detector.threshold,
                        "severity": "warning",
                        "median": f["median"],
                        "zscore": f["zscore"],
                        "count": f["count"],
                        "message": (
                            f"task-duration-anomaly: {f['count']} task(s) of prefix "
                            f"{f['prefix']!r} took up to {f['value']:.3g} s, "
                            f"{f['value'] / max(f['median'], 1e-9):.1f}x the median "
                            f"{f['median']:.3g} s (robust z {f['zscore']:.1f})"
                        ),
                    }
                )
        self._evict()

    def _evict(self) -> None:
        """Forget the oldest idle prefixes of the anomaly baselines past ``max_prefixes``."""
        d = self.detector
        limit = self.max_prefixes
        if len(d.baseline) <= limit and len(self._anomaly_at) <= limit:
            return
        scheduler = self.extension.scheduler

        def live(name: str) -> bool:
            return name in d.pending or prefix_is_live(scheduler, name)

        gone = evict_idle(d.baseline, limit, live, d.streaks, self._anomaly_at)
        gone += evict_idle(self._anomaly_at, limit, live)
        self.evicted_prefixes += len(gone)

    def raise_alert(self, alert: dict[str, Any]) -> None:
        """Record an alert, log it and publish it as a ``kind: "alert"`` event.

        Parameters
        ----------
        alert : dict
            ``rule``, ``subject``, ``message``, ``severity`` and figures.
        """
        ext = self.extension
        alert = {"time": time.time(), **alert}
        self.alerts.append(alert)
        self.alerts_by_rule[alert["rule"]] = self.alerts_by_rule.get(alert["rule"], 0) + 1
        level = logging.ERROR if alert.get("severity") == "critical" else logging.WARNING
        logger.log(level, "oxigdal alert: %s", alert["message"])
        if ext is not None:
            ext.emit("alert", **alert)

    def snapshot(self) -> dict[str, Any]:
        """Queue depths, alert counts and the most recent alerts."""
        return {
            "queue_depth": dict(self.queue_depth),
            "queue_running": dict(self.queue_running),
            "alerts": sum(self.alerts_by_rule.values()),
            "alerts_by_rule": dict(self.alerts_by_rule),
            "recent_alerts": list(self.alerts)[-10:],
            "rules": [r.name for r in self.rules],
            "history_samples": len(self.history),
            "anomaly_prefixes": len(self.detector.baseline),
            "evicted_prefixes": self.evicted_prefixes,
        }

    def history_points(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The share history (oldest first), for the ``/oxigdal/`` page.

        Parameters
        ----------
        limit : int, optional
            Keep only the last ``limit`` samples.

        Returns
        -------
        list of dict
        """
        points = list(self.history)
        return points[-limit:] if limit else points
