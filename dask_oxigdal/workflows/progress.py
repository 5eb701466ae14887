"""Per-workflow progress: on the scheduler's event log, the ``/oxigdal/`` page and ``dox.progress``.

The orchestrator of a running workflow logs its step counts on the
:data:`PROGRESS_TOPIC` event topic when it starts, at most every
:data:`INTERVAL` seconds while steps are submitted or finish, and when it
ends. The scheduler keeps those events in Dask's own bounded event log
(``distributed.admin.low-level-log-length`` events per topic): no per-workflow
structure is added to the scheduler, and a finished workflow's progress ages
out of the log like any event.
"""

from __future__ import annotations

import sys
import time
from contextlib import suppress
from typing import Any, TextIO

__all__ = ["INTERVAL", "MAX_SHOWN", "PROGRESS_TOPIC", "latest", "scheduler_progress", "show"]

#: Event topic of workflow progress.
PROGRESS_TOPIC = "oxigdal-workflow-progress"
#: Seconds between two progress events of one running workflow.
INTERVAL = 0.5
#: Workflows listed on the ``/oxigdal/`` page (most recently updated first).
MAX_SHOWN = 50


def event(wid: str, state: str, counts: dict, tenant: Any, where: str) -> dict:
    """The progress event of one workflow (msgpack-serialisable)."""
    c = {k: int(v) for k, v in counts.items()}
    return {
        "workflow": wid,
        "state": state,
        "steps": c,
        "running": max(0, c.get("submitted", 0) - c.get("done", 0) - c.get("failed", 0)),
        "tenant": None if tenant is None else str(tenant),
        "where": where,
        "updated": time.time(),
    }


def latest(events: Any) -> dict[str, dict]:
    """``{workflow id: its newest progress event}`` from ``(time, msg)`` pairs."""
    out: dict[str, dict] = {}
    for _, msg in events:
        if isinstance(msg, dict) and isinstance(msg.get("workflow"), str):
            out[msg["workflow"]] = msg
    return out


def scheduler_progress(scheduler: Any, limit: int = MAX_SHOWN) -> list[dict]:
    """On the scheduler: the newest progress of the most recently updated workflows.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    limit : int
        At most this many workflows.

    Returns
    -------
    list of dict
        ``workflow``, ``state``, ``steps`` (``replayed``, ``submitted``,
        ``done``, ``failed``), ``running``, ``tenant``, ``where``, ``updated``;
        newest first. Reads Dask's bounded event log (at most
        ``distributed.admin.low-level-log-length`` events).
    """
    found = latest(scheduler.get_events(PROGRESS_TOPIC))
    return sorted(found.values(), key=lambda m: m.get("updated") or 0, reverse=True)[:limit]


def _line(status: dict, width: int) -> str:
    steps = status.get("steps") or {}
    done = steps.get("done", 0) + steps.get("replayed", 0) + steps.get("failed", 0)
    total = steps.get("submitted", 0) + steps.get("replayed", 0)
    frac = done / total if total else 0.0
    bar = "#" * int(width * frac)
    return (
        f"{status['id']} {status.get('state')} [{bar:<{width}}] {done}/{total} steps"
        f" ({steps.get('replayed', 0)} replayed, {steps.get('failed', 0)} failed)"
    )


def show(
    *handles: Any,
    stream: TextIO | None = None,
    interval: float = 0.5,
    width: int = 20,
    log_interval: float = 1.0,
) -> list[dict]:
    """Draw one text progress bar per workflow until every one ends (``dox.progress(handle)``).

    A workflow's steps are known only as it runs (its control flow is plain
    Python), so the bar counts finished steps (done, replayed, failed)
    against the steps called so far.

    Parameters
    ----------
    *handles : WorkflowHandle
    stream : file-like, optional
        Default ``sys.stdout``.
    interval : float
        Seconds between two polls of the workflows' status.
    width : int
        Characters of each bar.
    log_interval : float
        Seconds between lines when ``stream`` is not a terminal.

    Returns
    -------
    list of dict
        The final :meth:`~dask_oxigdal.workflows.WorkflowHandle.status` of each.
    """
    from dask_oxigdal.workflows.errors import _TERMINAL

    last = 0.0
    while True:
        statuses = [h.status() for h in handles]
        over = all(s.get("state") in (*_TERMINAL, "interrupted") for s in statuses)
        out = stream or sys.stdout
        line = " | ".join(_line(s, width) for s in statuses)
        tty = bool(getattr(out, "isatty", lambda: False)())
        now = time.monotonic()
        with suppress(ValueError):
            if tty:
                out.write("\r" + line + ("\n" if over else ""))
                out.flush()
            elif over or now - last >= log_interval:
                last = now
                out.write(line + "\n")
                out.flush()
        if over:
            return statuses
        time.sleep(interval)
