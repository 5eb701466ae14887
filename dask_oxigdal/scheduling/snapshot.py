"""The extension's status snapshot (``dox.status(client)``, the ``oxigdal_status`` handler)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dask_oxigdal.scheduling.holds import NAME

if TYPE_CHECKING:
    from dask_oxigdal.scheduling.extension import OxigdalScheduling

__all__ = ["COORDINATOR_DISABLED", "snapshot"]

#: The ``coordinator`` entry of a snapshot without a coordinator.
COORDINATOR_DISABLED = {"role": "disabled", "leader": None, "commit_index": 0, "queued_writes": 0}


def snapshot(ext: OxigdalScheduling) -> dict[str, Any]:
    """JSON-serialisable snapshot of the extension and of every policy.

    Parameters
    ----------
    ext : OxigdalScheduling

    Returns
    -------
    dict
        ``installed``, ``policies`` (each with ``enabled`` and its own
        state), ``disabled`` (name -> reason), ``tenants``, ``queues``,
        ``tasks_tracked``, ``malformed_tasks``, ``task_faults`` (policy ->
        tasks it rejected because it could not handle their input).
    """
    policies: dict[str, Any] = {}
    for policy in ext.policies:
        name = ext.policy_name(policy)
        try:
            state = policy.snapshot()
        except Exception as e:  # a broken snapshot must not break status()
            state = {"error": f"{type(e).__name__}: {e}"}
        policies[name] = {"enabled": name not in ext.disabled, **state}
    return {
        "installed": True,
        "name": NAME,
        "started_at": ext.started_at,
        "policies": policies,
        "disabled": dict(ext.disabled),
        "tenants": ext.tenant_snapshot(),
        "queues": list(ext.queues),
        "default_queue": ext.default_queue,
        "default_tenant": ext.default_tenant,
        "strict": ext.strict,
        "tasks_tracked": len(ext.info),
        "malformed_tasks": ext.holds.malformed_tasks,
        "task_faults": dict(ext.task_faults),
        "topology": _topology_status(ext.scheduler),
        "coordinator": (
            ext.coordinator.snapshot()
            if ext.coordinator is not None
            else dict(COORDINATOR_DISABLED)
        ),
    }


def _topology_status(scheduler: Any) -> dict[str, Any] | None:
    """The topology extension's snapshot (``dask_oxigdal.placement``), ``None`` when absent."""
    from dask_oxigdal.placement.topology_cost import topology_status

    return topology_status(scheduler)
