"""The task that submitted the graph being added, for ``SchedulerPlugin.update_graph``.

Dask gives sub-tasks (submitted from a task through ``worker_client`` or
``get_client``) the generation ``parent.priority[0] - 0.01``, so that they run
before the work of later graphs. Once ``FairShare`` has rewritten the parent's
priority, its first element is the queue rank, not Dask's; to give the
sub-task Dask's own generation back, the policy needs to know the parent.
``SchedulerPlugin.update_graph`` is not told it, but the ``update-graph``
stream message carries it (``submitting_task``).

:func:`install` wraps ``Scheduler.stream_handlers["update-graph"]`` (a
coroutine function, awaited by ``Server.handle_stream`` for each message) so
that the message's ``submitting_task`` is visible, through a context variable,
to the plugin hooks that Dask calls synchronously while it handles that
message. The wrapper passes every argument on unchanged. It is listed with
the other private attributes in docs/architecture.md and guarded by
``tests/test_scheduling_order.py::test_guard_update_graph_stream_handler``.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler

__all__ = ["install", "submitting_task", "uninstall"]

_SUBMITTING: ContextVar[Any] = ContextVar("oxigdal_submitting_task", default=None)

#: attribute set on the wrapper, holding the handler it wraps
_WRAPPED = "_oxigdal_wrapped"


def submitting_task() -> Any:
    """The key of the task that submitted the graph being handled, or ``None``.

    Returns
    -------
    object
        A Dask key while the scheduler handles an ``update-graph`` message sent
        from inside a task; ``None`` otherwise.
    """
    return _SUBMITTING.get()


def install(scheduler: Scheduler) -> bool:
    """Wrap the scheduler's ``update-graph`` stream handler (idempotent).

    Parameters
    ----------
    scheduler : distributed.Scheduler

    Returns
    -------
    bool
        ``True`` if the handler is wrapped (now or before), ``False`` if the
        scheduler has no such coroutine handler (a newer ``distributed``).
    """
    handlers = scheduler.stream_handlers
    original = handlers.get("update-graph")
    if original is None:
        return False
    if getattr(original, _WRAPPED, None) is not None:
        return True
    import inspect

    if not inspect.iscoroutinefunction(original):
        return False

    async def update_graph(*args: Any, **kwargs: Any) -> Any:
        token = _SUBMITTING.set(kwargs.get("submitting_task"))
        try:
            return await original(*args, **kwargs)
        finally:
            _SUBMITTING.reset(token)

    setattr(update_graph, _WRAPPED, original)
    handlers["update-graph"] = update_graph
    return True


def uninstall(scheduler: Scheduler) -> None:
    """Put the original ``update-graph`` handler back, if :func:`install` wrapped it.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    """
    handler = scheduler.stream_handlers.get("update-graph")
    original = getattr(handler, _WRAPPED, None)
    if original is not None:
        scheduler.stream_handlers["update-graph"] = original
