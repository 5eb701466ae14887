"""Tenant namespaces: what ties a task's data and names to its tenant.

The scheduler extension resolves each task's tenant (``TaskInfo.tenant``:
the ``tenant`` annotation, checked against ``oxigdal.tenants``, or the
default tenant). Everything a tenant names itself (checkpoint keys,
``dox.cached`` keys, gang names) is looked up inside that tenant's namespace,
so two tenants that pick the same name get two different things.

- On the scheduler, the policies use ``TaskInfo.tenant`` directly
  (``Checkpoint``, ``Gang``, ``Locality``).
- On a worker, a task learns its tenant from its own annotations: the
  extension writes the resolved tenant into the task's ``oxigdal_tenant``
  annotation before Dask sends the task out (:func:`stamp_tenant`), and
  removes it for the default tenant, whose namespace is the one a
  single-tenant cluster has always used. :func:`current_tenant` reads it back
  inside a running task.

These are namespaces, not a sandbox: the code of a task runs in the worker
process with every other task, and can read that process's memory and any
file the worker can read (see docs/security.md).
"""

from __future__ import annotations

from typing import Any

__all__ = ["TENANT_ANNOTATION", "TenantKey", "current_tenant", "stamp_tenant"]

#: The task annotation that carries a task's (resolved) tenant.
TENANT_ANNOTATION = "oxigdal_tenant"


def stamp_tenant(ts: Any, claimed: str | None, tenant: str, default_tenant: str) -> None:
    """Make a new task's ``oxigdal_tenant`` annotation say its resolved tenant.

    Called by the scheduler extension in ``update_graph``, before Dask sends
    the task to a worker. O(1); does nothing when the annotation already says
    the resolved tenant.

    Parameters
    ----------
    ts : distributed.scheduler.TaskState
        The new task.
    claimed : str or None
        The tenant its annotation claimed (``None``: no annotation).
    tenant : str
        The tenant the extension resolved (``TaskInfo.tenant``).
    default_tenant : str
        The extension's default tenant: its tasks carry no annotation, so
        they share the namespace of a cluster without tenants.
    """
    if tenant == default_tenant:
        if claimed is not None and ts.annotations:
            ts.annotations.pop(TENANT_ANNOTATION, None)
    elif claimed != tenant:
        if ts.annotations is None:
            ts.annotations = {}
        ts.annotations[TENANT_ANNOTATION] = tenant


def current_tenant() -> str | None:
    """The tenant of the task running in this thread; ``None`` for the default tenant.

    Read from the running task's ``oxigdal_tenant`` annotation on its worker
    (written by the scheduler extension, see :func:`stamp_tenant`).

    Returns
    -------
    str or None
        ``None`` outside a task, outside a worker, for tasks of the default
        tenant, and for tasks without an ``oxigdal_tenant`` annotation.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    try:
        key = worker.get_current_task()
    except KeyError:  # a thread that is not running a task
        return None
    ts = worker.state.tasks.get(key)
    annotations = getattr(ts, "annotations", None) if ts is not None else None
    if not annotations:
        return None
    tenant = annotations.get(TENANT_ANNOTATION)
    return tenant if isinstance(tenant, str) else None


class TenantKey:
    """A key in a tenant's namespace (``dox.cached`` entries of non-default tenants).

    Equal only to another ``TenantKey`` of the same tenant and key: never to a
    plain key or tuple a task of another tenant can pass.

    Parameters
    ----------
    tenant : str
        The tenant.
    key : hashable
        The key the tenant's task chose.
    """

    __slots__ = ("_hash", "key", "tenant")

    def __init__(self, tenant: str, key: Any) -> None:
        self.tenant = tenant
        self.key = key
        self._hash = hash((TenantKey, tenant, key))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is TenantKey and other.tenant == self.tenant and other.key == self.key  # type: ignore[attr-defined]
        )

    def __repr__(self) -> str:
        return f"TenantKey({self.tenant!r}, {self.key!r})"

    def __reduce__(self) -> tuple:
        return (TenantKey, (self.tenant, self.key))
