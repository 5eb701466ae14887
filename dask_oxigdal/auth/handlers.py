"""What the guard checks on the wire: handler tables, the caller's identity, the stream filter.

- :data:`ADMIN_OPS`, :data:`WORKER_OPS`, :data:`WORKER_STREAM_OPS`: which
  scheduler handlers and stream operations need which role;
- :class:`Identity` and :func:`current_identity`: the principal of the comm
  whose handler is running;
- ``_Handlers``: the ``Scheduler.handlers`` dict that wraps every handler
  stored in it; ``_StreamFilter``: the comm a client's batched stream is read
  through (see :mod:`dask_oxigdal.auth.guard`).
"""

from __future__ import annotations

import inspect
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dask_oxigdal.auth.rbac import Principal

if TYPE_CHECKING:
    from dask_oxigdal.auth.guard import AuthGuard

__all__ = [
    "ADMIN_OPS",
    "WORKER_OPS",
    "WORKER_STREAM_OPS",
    "Identity",
    "current_identity",
]

#: Scheduler handlers only the ``admin`` role may call.
ADMIN_OPS = frozenset(
    {
        "unregister_scheduler_plugin",
        "register_worker_plugin",
        "unregister_worker_plugin",
        "register_nanny_plugin",
        "unregister_nanny_plugin",
        "run_function",
        "restart",
        "restart_workers",
        "retire_workers",
        "terminate",
        "proxy",
        "feed",
        "dump_cluster_state_to_url",
        "workers_to_close",
        "set_resources",
        "rebalance",
    }
)
#: Handlers for workers and nannies (the ``worker`` role, or ``admin``).
WORKER_OPS = frozenset(
    {
        "register-worker",
        "register_nanny",
        "unregister",
        "heartbeat_worker",
        "add_keys",
        "oxigdal_cache_report",
        # issue 18: the shared cache's directory and copies, a running worker's labels
        "oxigdal_cache_where",
        "oxigdal_cache_replicate",
        "oxigdal_topology",
    }
)
#: Worker handlers too frequent to audit when allowed.
_QUIET = frozenset({"heartbeat_worker", "add_keys", "oxigdal_cache_report", "oxigdal_cache_where"})
#: ``broadcast`` messages any principal may send to the workers.
_SAFE_BROADCASTS = frozenset({"versions", "get_story"})
#: Event topics only admins may write to.
_PROTECTED_TOPICS = frozenset({"oxigdal", "all"})
#: Worker-stream operations a client's stream must not carry.
WORKER_STREAM_OPS = frozenset(
    {
        "task-finished",
        "task-erred",
        "release-worker-data",
        "add-keys",
        "long-running",
        "reschedule",
        "keep-alive",
        "log-event",
        "worker-status-change",
        "request-refresh-who-has",
        "oxigdal_transfers",  # transfer reports for the topology cost model
    }
)

_WRAPPED = "_oxigdal_auth_wrapped"


@dataclass(frozen=True)
class Identity:
    """A principal as seen on one comm."""

    principal: Principal
    credential: str | None
    peer: str | None

    @property
    def name(self) -> str:
        """The principal's name."""
        return self.principal.name


_CURRENT: ContextVar[Identity | None] = ContextVar("oxigdal_auth_identity", default=None)


def current_identity() -> Identity | None:
    """The identity of the comm whose handler is running, or ``None``.

    Returns
    -------
    Identity or None
    """
    return _CURRENT.get()


def _expects_comm(func: Any) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return bool(params) and next(iter(params)) == "comm"


class _Handlers(dict):
    """``Scheduler.handlers`` whose ``[op] = handler`` stores the guarded handler."""

    def __init__(self, guard: AuthGuard, items: Any) -> None:
        super().__init__()
        self.guard = guard
        for op, handler in items:
            self[op] = handler

    def __setitem__(self, op: str, handler: Any) -> None:
        super().__setitem__(op, self.guard.wrap(op, handler))


class _StreamFilter:
    """A comm whose ``read()`` drops foreign-client and worker-only stream messages."""

    def __init__(self, comm: Any, guard: AuthGuard, client: str, ident: Identity) -> None:
        object.__setattr__(self, "_comm", comm)
        object.__setattr__(self, "_guard", guard)
        object.__setattr__(self, "_client", client)
        object.__setattr__(self, "_ident", ident)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._comm, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._comm, name, value)

    async def read(self, *args: Any, **kwargs: Any) -> Any:
        msgs = await self._comm.read(*args, **kwargs)
        if not isinstance(msgs, (list, tuple)):
            msgs = [msgs]
        client = self._client
        keep = []
        for msg in msgs:
            if isinstance(msg, dict):
                op = msg.get("op")
                claimed = msg.get("client", client)
                if claimed == client and op not in WORKER_STREAM_OPS:
                    keep.append(msg)
                    continue
                self._guard.stream_dropped(self._ident, client, op, claimed, msg)
            elif msg == "OK":
                keep.append(msg)
        return keep
