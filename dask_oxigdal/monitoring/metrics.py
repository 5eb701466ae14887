"""Metrics derived from the extension's status snapshot (plain dicts, no Prometheus needed).

:func:`metric_families` turns one ``OxigdalScheduling.snapshot()`` (the same
dict ``dox.status(client)`` returns) into metric families. The Prometheus
collector, the ``/oxigdal/`` page and the alert rules all read these, so a
number means the same thing everywhere.

Policies that are not installed read as ``0`` for the gauges the issue lists
(gangs, deadlines, quarantined workers, straggler backups), and
``dask_oxigdal_policy_enabled`` tells which policies are present. Wiring a new
policy counter is one row in :data:`POLICY_METRICS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["POLICY_METRICS", "TENANT_METRICS", "MetricFamily", "metric_families"]


@dataclass
class MetricFamily:
    """One metric family: name (without the ``dask_oxigdal_`` prefix), type, help, samples.

    Attributes
    ----------
    name : str
        Short name; Prometheus adds ``dask_oxigdal_`` (and ``_total`` to counters).
    kind : {"gauge", "counter"}
    documentation : str
    labels : tuple of str
    samples : list of (tuple of str, float)
    """

    name: str
    kind: str
    documentation: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


#: Per-tenant metrics: (name, kind, help, function of the tenant's snapshot dict).
TENANT_METRICS: tuple[tuple[str, str, str, Any], ...] = (
    ("tenant_running", "gauge", "Tasks of the tenant running on workers", lambda t: t["running"]),
    (
        "tenant_queued",
        "gauge",
        "Tasks of the tenant submitted and not finished nor running",
        lambda t: max(t["pending"] - t["running"], 0),
    ),
    (
        "tenant_worker_seconds",
        "counter",
        "Compute seconds used by the tenant's finished tasks",
        lambda t: t["worker_seconds"],
    ),
    (
        "tenant_share",
        "gauge",
        "Tenant's share of recent worker-time (decaying average)",
        lambda t: t["current_share"],
    ),
    (
        "tenant_entitled_share",
        "gauge",
        "Share the tenant is entitled to (weight over the weights of tenants with work)",
        lambda t: t["entitled_share"],
    ),
    ("tenant_weight", "gauge", "Fair-share weight of the tenant", lambda t: t["weight"]),
    (
        "tenant_tasks_completed",
        "counter",
        "Tasks of the tenant that finished",
        lambda t: t["completed"],
    ),
    ("tenant_tasks_erred", "counter", "Tasks of the tenant that erred", lambda t: t["erred"]),
)

#: Policy metrics: (name, kind, help, policy, snapshot key, labels, default when absent).
#: ``labels`` ``("tenant", "queue")`` reads a ``{tenant: {queue: n}}`` value,
#: ``("tenant",)`` a ``{tenant: n}`` value; ``()`` a number, or a list (counted).
POLICY_METRICS: tuple[tuple[str, str, str, str, str, tuple[str, ...], float | None], ...] = (
    (
        "quarantine_one_tenant_refusals",
        "counter",
        "Times one tenant's failures alone reached the threshold on a worker other tenants use",
        "Quarantine",
        "one_tenant_refusals",
        (),
        0,
    ),
    (
        "cache_report_keys_dropped",
        "counter",
        "Cache-report keys dropped past oxigdal.locality.max-keys per worker and tenant",
        "Locality",
        "report_keys_dropped",
        (),
        0,
    ),
    ("gangs_waiting", "gauge", "Gangs waiting to start", "Gang", "waiting", (), 0),
    ("gangs_running", "gauge", "Gangs running", "Gang", "running", (), 0),
    ("gangs_started", "counter", "Gangs started", "Gang", "started", (), 0),
    (
        "gang_restarts",
        "counter",
        "Gangs restarted after a member failed",
        "Gang",
        "restarts",
        (),
        0,
    ),
    (
        "gangs_refused",
        "counter",
        "Gangs refused (larger than the cluster)",
        "Gang",
        "refused",
        (),
        0,
    ),
    (
        "deadlines_met",
        "counter",
        "Tasks that finished before their deadline",
        "Deadline",
        "met",
        ("tenant", "queue"),
        None,
    ),
    (
        "deadlines_missed",
        "counter",
        "Tasks that finished after their deadline",
        "Deadline",
        "missed",
        ("tenant", "queue"),
        None,
    ),
    (
        "deadlines_failed",
        "counter",
        "Deadline jobs whose tasks erred or were cancelled (neither met nor missed)",
        "Deadline",
        "failed",
        ("tenant", "queue"),
        None,
    ),
    (
        "deadlines_rejected",
        "counter",
        "Submissions rejected as impossible",
        "Deadline",
        "rejected",
        (),
        0,
    ),
    (
        "workers_quarantined",
        "gauge",
        "Workers in quarantine",
        "Quarantine",
        "quarantined",
        (),
        0,
    ),
    (
        "straggler_backups",
        "counter",
        "Backup copies launched for stragglers",
        "Stragglers",
        "backups",
        (),
        0,
    ),
    ("retries", "counter", "Tasks retried with backoff", "Retries", "retried", (), None),
    ("checkpoints_saved", "counter", "Checkpoints saved", "Checkpoint", "saved", (), None),
    ("checkpoints_loaded", "counter", "Checkpoints loaded", "Checkpoint", "loaded", (), None),
    ("checkpoints_corrupt", "counter", "Corrupt checkpoints", "Checkpoint", "corrupt", (), None),
    (
        "locality_hits",
        "counter",
        "Tasks placed on a worker with their data",
        "Locality",
        "hits",
        (),
        None,
    ),
    (
        "desired_workers",
        "gauge",
        "Workers the Autoscaling policy wants for the tenant (its fair share when capped)",
        "Autoscaling",
        "desired_workers",
        ("tenant",),
        None,
    ),
    (
        "forecast_task_seconds",
        "gauge",
        "Forecast work arriving per forecast interval for the tenant (task-seconds)",
        "Autoscaling",
        "forecast_task_seconds",
        ("tenant",),
        None,
    ),
    (
        "locality_misses",
        "counter",
        "Tasks placed away from their data",
        "Locality",
        "misses",
        (),
        None,
    ),
)


def _number(value: Any) -> float:
    if isinstance(value, (list, tuple, set, dict)):
        return float(len(value))
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def metric_families(snapshot: dict[str, Any]) -> list[MetricFamily]:
    """The metric families of one status snapshot.

    Parameters
    ----------
    snapshot : dict
        ``OxigdalScheduling.snapshot()`` or ``dox.status(client)``.

    Returns
    -------
    list of MetricFamily
        Empty when the extension is not installed.
    """
    if not snapshot.get("installed"):
        return []
    out: list[MetricFamily] = []
    tenants = snapshot.get("tenants") or {}
    for name, kind, doc, fn in TENANT_METRICS:
        fam = MetricFamily(name, kind, doc, ("tenant",))
        for tenant, t in sorted(tenants.items()):
            try:
                fam.samples.append(((tenant,), float(fn(t))))
            except (KeyError, TypeError, ValueError):
                continue
        out.append(fam)

    policies = snapshot.get("policies") or {}
    monitor = policies.get("Monitor") or {}
    depth = MetricFamily(
        "queue_depth", "gauge", "Tasks waiting in each priority queue (not running)", ("queue",)
    )
    running = MetricFamily("queue_running", "gauge", "Running tasks of each queue", ("queue",))
    for queue in snapshot.get("queues") or ():
        depth.samples.append(((queue,), _number((monitor.get("queue_depth") or {}).get(queue, 0))))
        running.samples.append(
            ((queue,), _number((monitor.get("queue_running") or {}).get(queue, 0)))
        )
    out += [depth, running]

    for name, kind, doc, policy, key, labels, default in POLICY_METRICS:
        fam = MetricFamily(name, kind, doc, labels)
        value = (policies.get(policy) or {}).get(key)
        if labels == ("tenant", "queue"):
            for tenant, per_queue in sorted((value or {}).items()):
                if isinstance(per_queue, dict):
                    for queue, n in sorted(per_queue.items()):
                        fam.samples.append(((str(tenant), str(queue)), _number(n)))
                else:
                    fam.samples.append(((str(tenant), ""), _number(per_queue)))
        elif labels == ("tenant",):
            for tenant, n in sorted((value or {}).items()):
                fam.samples.append(((str(tenant),), _number(n)))
        elif value is not None:
            fam.samples.append(((), _number(value)))
        elif default is not None:
            fam.samples.append(((), float(default)))
        out.append(fam)

    enabled = MetricFamily(
        "policy_enabled",
        "gauge",
        "1 for each installed policy that is enabled, else 0",
        ("policy",),
    )
    for pname, p in sorted(policies.items()):
        enabled.samples.append(((pname,), 1.0 if p.get("enabled", True) else 0.0))
    out.append(enabled)

    evicted = MetricFamily(
        "evicted_prefixes",
        "counter",
        "Idle task prefixes forgotten by each policy's bounded tables",
        ("policy",),
    )
    for pname, p in sorted(policies.items()):
        if isinstance(p, dict) and p.get("evicted_prefixes") is not None:
            evicted.samples.append(((pname,), _number(p["evicted_prefixes"])))
    out.append(evicted)

    alerts = MetricFamily("alerts", "counter", "Alerts raised, per rule", ("rule",))
    for rule, n in sorted((monitor.get("alerts_by_rule") or {}).items()):
        alerts.samples.append(((rule,), _number(n)))
    out.append(alerts)

    out.append(
        MetricFamily(
            "tasks_tracked",
            "gauge",
            "Live tasks tracked by the extension",
            (),
            [((), _number(snapshot.get("tasks_tracked", 0)))],
        )
    )
    out.append(
        MetricFamily(
            "malformed_tasks",
            "counter",
            "Tasks rejected for malformed oxigdal annotations",
            (),
            [((), _number(snapshot.get("malformed_tasks", 0)))],
        )
    )

    if snapshot.get("topology"):  # the topology extension (dask_oxigdal.placement)
        from dask_oxigdal.placement.topology_cost import metric_families as topology_families

        out += topology_families(snapshot["topology"])

    coordinator = active_coordinator(snapshot)
    if coordinator is not None:
        role = MetricFamily(
            "coordinator_role", "gauge", "1 for this node's coordinator role", ("role",)
        )
        role.samples.append(((str(coordinator.get("role", "unknown")),), 1.0))
        out.append(role)
        out.append(
            MetricFamily(
                "coordinator_has_leader",
                "gauge",
                "1 when the coordinator knows a leader",
                (),
                [((), 1.0 if coordinator.get("leader") else 0.0)],
            )
        )
        for key, doc in (
            ("commit_index", "Raft commit index of the coordinator"),
            ("queued_writes", "Writes waiting to be replicated"),
        ):
            out.append(
                MetricFamily(
                    f"coordinator_{key}", "gauge", doc, (), [((), _number(coordinator.get(key, 0)))]
                )
            )
    return out


def active_coordinator(snapshot: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``coordinator`` part of a status snapshot, or ``None`` when it is off.

    The extension always reports the key (``{"role": "disabled"}`` when
    ``oxigdal.coordinator.enabled`` is off); metrics, alerts and the status
    widget only show an enabled coordinator.

    Parameters
    ----------
    snapshot : mapping
        ``dox.status(client)`` or the extension's snapshot.

    Returns
    -------
    mapping or None
    """
    coordinator = snapshot.get("coordinator")
    if not isinstance(coordinator, Mapping) or coordinator.get("role") == "disabled":
        return None
    return coordinator
