"""The client side of the scheduler extension: :func:`register` and :func:`status`.

``dox.register(client)`` pickles an
:class:`~dask_oxigdal.scheduling.extension.OxigdalScheduling` and installs it
on the client's scheduler; ``dox.status(client)`` asks the scheduler handler
``oxigdal_status`` for its snapshot. Nothing here runs on the scheduler.
(``dox.annotate`` lives in :mod:`dask_oxigdal.annotations`.)
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["register", "status"]


def register(client: Client, *, replace: bool = False, **options: Any) -> Any:
    """Install :class:`OxigdalScheduling` on the client's scheduler (idempotent).

    A second call with the extension already installed does nothing (the
    plugin is ``idempotent``), whatever its options; pass ``replace=True`` to
    remove the installed extension (and its state) first.

    Parameters
    ----------
    client : distributed.Client
        A connected client (synchronous or asynchronous).
    replace : bool, default False
        Unregister an installed extension first.
    **options
        :class:`OxigdalScheduling` arguments (``tenants``, ``policies``,
        ``queues``, ``default_queue``, ``strict``, ...). Unset ones are read
        from the scheduler's dask config.

    Returns
    -------
    None or awaitable
        An awaitable with an asynchronous client.
    """
    # imported here: dask_oxigdal.scheduling re-exports this module's functions
    from dask_oxigdal.scheduling.extension import NAME, OxigdalScheduling

    plugin = OxigdalScheduling(**options)
    if not replace:
        return client.register_plugin(plugin)

    async def _replace() -> None:
        try:
            await client.scheduler.unregister_scheduler_plugin(name=NAME)
        except Exception:  # not installed: nothing to replace
            pass
        await client.scheduler.register_scheduler_plugin(
            plugin=_dumps(plugin), name=NAME, idempotent=False
        )

    return client.sync(_replace)


def _dumps(obj: Any) -> bytes:
    from distributed.protocol.pickle import dumps

    return dumps(obj)


def status(client: Client) -> Any:
    """JSON-serialisable snapshot of the scheduler extension and its policies.

    Parameters
    ----------
    client : distributed.Client
        A connected client (synchronous or asynchronous).

    Returns
    -------
    Status or awaitable
        The snapshot, a ``dict`` subclass with an HTML ``_repr_html_`` for
        Jupyter (``{"installed": False}`` when the extension is not
        installed); an awaitable with an asynchronous client.
    """
    from dask_oxigdal.monitoring.status import Status

    async def _status() -> dict[str, Any]:
        # a scheduler without the handler answers None (distributed logs "No handler")
        snap = await client.scheduler.oxigdal_status()
        if not snap:
            return Status({"installed": False})
        # msgpack turns lists into tuples: hand back plain JSON types
        return Status(json.loads(json.dumps(snap)))

    return client.sync(_status)
