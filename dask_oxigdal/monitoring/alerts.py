"""Alert rules on the metrics, and anomaly detection on task durations.

Threshold rules come from ``oxigdal.monitoring.rules``; each is a mapping

``{name: ..., metric: ..., above: x | below: x, for: duration, severity: ...}``

where ``metric`` is one of :data:`RULE_METRICS` (a function of the status
snapshot returning ``{subject: value}``, e.g. one value per tenant). A rule
fires for a subject once its condition has held for ``for``; it fires again
only after the condition cleared, or after ``oxigdal.monitoring.alert-cooldown``.

Anomalies: per task prefix, a window of recent compute durations; a new
duration whose robust z-score ``(x - median) / (1.4826 * MAD)`` exceeds
``anomaly.threshold``, which is more than ``anomaly.min-ratio`` times the
median and at least ``anomaly.min-excess`` above it is anomalous;
``anomaly.min-consecutive`` anomalous durations in a row raise
``task-duration-anomaly`` for that prefix (at most once per
``alert-cooldown`` per prefix).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.monitoring.metrics import active_coordinator
from dask_oxigdal.settings import duration

__all__ = ["RULE_METRICS", "AlertRule", "DurationAnomalyDetector", "parse_rules"]


def _tenant_share_ratio(s: dict[str, Any]) -> dict[str, float]:
    # received / entitled share of tenants with work waiting (only they can be
    # starved). "Received" is the larger of the recent worker-time share (which
    # only moves when tasks finish) and the share of the running tasks (which
    # counts a tenant whose long tasks are still running).
    tenants = s.get("tenants") or {}
    total_running = sum(t.get("running", 0) for t in tenants.values())
    out = {}
    for tenant, t in tenants.items():
        entitled = t.get("entitled_share", 0.0)
        if entitled > 0 and t.get("pending", 0) > t.get("running", 0):
            running = t.get("running", 0) / total_running if total_running else 0.0
            out[tenant] = max(t.get("current_share", 0.0), running) / entitled
    return out


def _deadline_miss_rate(s: dict[str, Any]) -> dict[str, float]:
    d = (s.get("policies") or {}).get("Deadline") or {}

    def total(v: Any) -> float:
        if isinstance(v, Mapping):
            return sum(total(x) for x in v.values())
        return float(v or 0)

    met, missed = total(d.get("met")), total(d.get("missed"))
    return {"all": missed / (met + missed)} if met + missed > 0 else {}


def _quarantined(s: dict[str, Any]) -> dict[str, float]:
    q = (s.get("policies") or {}).get("Quarantine")
    if not q:
        return {}
    return {"cluster": float(len(q.get("quarantined") or ()))}


def _coordinator_has_leader(s: dict[str, Any]) -> dict[str, float]:
    c = active_coordinator(s)
    if c is None:
        return {}
    return {"coordinator": 1.0 if c.get("leader") else 0.0}


def _tenant_field(field: str) -> Callable[[dict[str, Any]], dict[str, float]]:
    def fn(s: dict[str, Any]) -> dict[str, float]:
        out = {}
        for tenant, t in (s.get("tenants") or {}).items():
            if field == "queued":
                out[tenant] = float(max(t.get("pending", 0) - t.get("running", 0), 0))
            else:
                out[tenant] = float(t.get(field, 0))
        return out

    return fn


def _queue_depth(s: dict[str, Any]) -> dict[str, float]:
    m = (s.get("policies") or {}).get("Monitor") or {}
    return {q: float(n) for q, n in (m.get("queue_depth") or {}).items()}


def _disabled_policies(s: dict[str, Any]) -> dict[str, float]:
    return {"extension": float(len(s.get("disabled") or {}))}


#: Metrics a rule can watch: name -> function of the snapshot -> {subject: value}.
RULE_METRICS: dict[str, Callable[[dict[str, Any]], dict[str, float]]] = {
    "tenant-share-ratio": _tenant_share_ratio,
    "tenant-queued": _tenant_field("queued"),
    "tenant-running": _tenant_field("running"),
    "tenant-erred": _tenant_field("erred"),
    "queue-depth": _queue_depth,
    "deadline-miss-rate": _deadline_miss_rate,
    "quarantined-workers": _quarantined,
    "coordinator-has-leader": _coordinator_has_leader,
    "disabled-policies": _disabled_policies,
}

SEVERITIES = ("info", "warning", "critical")
RULE_KEYS = frozenset({"name", "metric", "above", "below", "for", "severity"})


class AlertRule:
    """One threshold rule (see the module docstring).

    Parameters
    ----------
    name : str
    metric : str
        One of :data:`RULE_METRICS`.
    above, below : float, optional
        Exactly one: fire when the value is ``> above`` or ``< below``.
    for_ : str or float
        How long the condition must hold.
    severity : {"info", "warning", "critical"}
    """

    def __init__(
        self,
        name: str,
        metric: str,
        *,
        above: float | None = None,
        below: float | None = None,
        for_: str | float = 0,
        severity: str = "warning",
    ) -> None:
        if metric not in RULE_METRICS:
            raise ConfigError(
                f"alert rule {name!r}: unknown metric {metric!r}; valid metrics: "
                f"{', '.join(sorted(RULE_METRICS))}"
            )
        if (above is None) == (below is None):
            raise ConfigError(f"alert rule {name!r}: give exactly one of 'above' or 'below'")
        threshold = above if above is not None else below
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ConfigError(f"alert rule {name!r}: threshold {threshold!r} is not a number")
        if severity not in SEVERITIES:
            raise ConfigError(
                f"alert rule {name!r}: severity {severity!r}; valid: {', '.join(SEVERITIES)}"
            )
        self.name = name
        self.metric = metric
        self.above = above
        self.below = below
        self.threshold = float(threshold)
        self.hold = duration(f"monitoring.rules.{name}.for", for_ or 0)
        self.severity = severity
        self.since: dict[str, float] = {}  # subject -> when the condition started holding
        self.fired: dict[str, float] = {}  # subject -> when it last fired

    def breached(self, value: float) -> bool:
        """Whether ``value`` breaks the threshold."""
        return value > self.threshold if self.above is not None else value < self.threshold

    def evaluate(self, snapshot: dict[str, Any], now: float, cooldown: float) -> list[dict]:
        """The alerts this rule raises now (and update its hold/fired state).

        Parameters
        ----------
        snapshot : dict
            Status snapshot.
        now : float
            Current time (seconds).
        cooldown : float
            Minimum seconds between two alerts of one subject.

        Returns
        -------
        list of dict
        """
        values = RULE_METRICS[self.metric](snapshot)
        alerts = []
        for subject in list(self.since):
            if subject not in values or not self.breached(values[subject]):
                del self.since[subject]
                self.fired.pop(subject, None)  # cleared: re-arm
        for subject, value in values.items():
            if not self.breached(value):
                continue
            since = self.since.setdefault(subject, now)
            if now - since < self.hold:
                continue
            last = self.fired.get(subject)
            if last is not None and now - last < cooldown:
                continue
            if last is not None and since <= last:
                # still the same breach: re-alert only after the cooldown
                pass
            self.fired[subject] = now
            op = ">" if self.above is not None else "<"
            alerts.append(
                {
                    "rule": self.name,
                    "metric": self.metric,
                    "subject": subject,
                    "value": value,
                    "threshold": self.threshold,
                    "severity": self.severity,
                    "message": (
                        f"{self.name}: {self.metric} of {subject} is {value:.4g} "
                        f"({op} {self.threshold:g}"
                        + (f" for {self.hold:g} s" if self.hold else "")
                        + ")"
                    ),
                }
            )
        return alerts


def parse_rules(rules: Any) -> list[AlertRule]:
    """Build the rules of ``oxigdal.monitoring.rules``.

    Parameters
    ----------
    rules : list of dict

    Returns
    -------
    list of AlertRule

    Raises
    ------
    ConfigError
        A malformed rule, naming it and the valid choices.
    """
    if rules is None:
        return []
    if not isinstance(rules, (list, tuple)):
        raise ConfigError(f"oxigdal.monitoring.rules={rules!r}: give a list of rule mappings")
    out = []
    names = set()
    for i, rule in enumerate(rules):
        if not isinstance(rule, Mapping) or "metric" not in rule:
            raise ConfigError(
                f"oxigdal.monitoring.rules[{i}]={rule!r}: give a mapping with at least "
                "'metric' and 'above' or 'below'"
            )
        unknown = sorted(str(k) for k in rule if k not in RULE_KEYS)
        if unknown:
            raise ConfigError(
                f"oxigdal.monitoring.rules[{i}]: unknown key(s) {', '.join(unknown)}; "
                f"valid keys: {', '.join(sorted(RULE_KEYS))}"
            )
        name = str(rule.get("name") or rule["metric"])
        if name in names:
            raise ConfigError(f"oxigdal.monitoring.rules: two rules are named {name!r}")
        names.add(name)
        out.append(
            AlertRule(
                name,
                rule["metric"],
                above=rule.get("above"),
                below=rule.get("below"),
                for_=rule.get("for", 0),
                severity=rule.get("severity", "warning"),
            )
        )
    return out


class DurationAnomalyDetector:
    """Robust z-score of task durations per prefix (median and MAD over a window).

    Parameters
    ----------
    window : int
        Durations kept per prefix (the baseline).
    min_samples : int
        Baseline size before a prefix can be judged.
    threshold : float
        Robust z-score above which a duration is anomalous.
    min_ratio : float
        ... and it must also exceed ``min_ratio`` times the median (so tiny
        absolute jitter on very regular tasks raises nothing) ...
    min_excess : float
        ... and exceed the median by at least this many seconds (a 40 µs task
        taking 400 µs is scheduling noise, not an anomaly).
    min_consecutive : int
        Anomalous durations in a row (in completion order) before the prefix
        is reported: a single slow task among normal ones is noise (a garbage
        collection, a busy host), a prefix that became slower stays slow.
    """

    def __init__(
        self,
        window: int = 50,
        min_samples: int = 10,
        threshold: float = 5.0,
        min_ratio: float = 3.0,
        min_excess: float = 0.05,
        min_consecutive: int = 2,
    ) -> None:
        if not (
            isinstance(window, int) and isinstance(min_samples, int) and 2 <= min_samples <= window
        ):
            raise ConfigError(
                f"oxigdal.monitoring.anomaly: need integers 2 <= min-samples ({min_samples!r}) "
                f"<= window ({window!r})"
            )
        if not (threshold > 0 and min_ratio >= 1):
            raise ConfigError(
                f"oxigdal.monitoring.anomaly: threshold={threshold!r} must be > 0 and "
                f"min-ratio={min_ratio!r} >= 1"
            )
        self.window = window
        self.min_samples = min_samples
        self.threshold = float(threshold)
        self.min_ratio = float(min_ratio)
        if not min_excess >= 0:
            raise ConfigError(f"oxigdal.monitoring.anomaly: min-excess={min_excess!r} must be >= 0")
        self.min_excess = float(min_excess)
        if (
            isinstance(min_consecutive, bool)
            or not isinstance(min_consecutive, int)
            or min_consecutive < 1
        ):
            raise ConfigError(
                f"oxigdal.monitoring.anomaly: min-consecutive={min_consecutive!r} must be an "
                "integer >= 1"
            )
        self.min_consecutive = min_consecutive
        self.streaks: dict[str, tuple[int, float, float]] = {}
        self.baseline: dict[str, deque] = {}
        self.pending: dict[str, list[float]] = {}

    def observe(self, prefix: str, seconds: float) -> None:
        """Record one duration (O(1); judged in :meth:`check`)."""
        pending = self.pending.get(prefix)
        if pending is None:
            pending = self.pending[prefix] = []
        if len(pending) < 4 * self.window:
            pending.append(seconds)

    def check(self) -> list[dict[str, Any]]:
        """Judge the durations observed since the last call; one finding per anomalous prefix.

        Returns
        -------
        list of dict
            ``{"prefix", "value" (the slowest anomalous duration), "median",
            "zscore", "count"}``.
        """
        findings = []
        pending, self.pending = self.pending, {}
        for prefix, values in pending.items():
            base = self.baseline.get(prefix)
            if base is None:
                base = self.baseline[prefix] = deque(maxlen=self.window)
            # (consecutive anomalous durations, slowest of them, its z-score)
            streak, worst_x, worst_z = self.streaks.get(prefix, (0, 0.0, 0.0))
            fired = None
            median = 0.0
            if len(base) >= self.min_samples:
                median = statistics.median(base)
                mad = statistics.median(abs(b - median) for b in base)
                scale = max(1.4826 * mad, 0.05 * median, 1e-6)
                for x in values:
                    z = (x - median) / scale
                    if (
                        z > self.threshold
                        and x > self.min_ratio * median
                        and x - median >= self.min_excess
                    ):
                        streak += 1
                        if z > worst_z:
                            worst_x, worst_z = x, z
                        if streak >= self.min_consecutive:
                            fired = (worst_x, worst_z, streak)
                    else:  # one slow task among normal ones (GC, a busy host): noise
                        streak, worst_x, worst_z = 0, 0.0, 0.0
            if fired is not None:
                streak, worst_x, worst_z = 0, 0.0, 0.0
                findings.append(
                    {
                        "prefix": prefix,
                        "value": fired[0],
                        "median": median,
                        "zscore": fired[1],
                        "count": fired[2],
                    }
                )
            self.streaks[prefix] = (streak, worst_x, worst_z)
            base.extend(values)
        return findings
