"""Reads of ``distributed``'s scheduler state that several policies share.

Each helper is one formula, used everywhere the policies need it, so that a
change in ``distributed`` is fixed in one place. The private attributes they
read are listed in docs/architecture.md and guarded by
``tests/test_scheduling_extension.py::test_guard_dask_helpers``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MIN_COST", "compute_seconds", "idle_threads", "prefix_estimate"]

#: Smallest duration estimate (seconds): a cost of 0 would make a prefix free.
MIN_COST = 1e-6


def compute_seconds(startstops: Iterable[Mapping[str, Any]] | None) -> float:
    """Seconds a task computed: the sum of its ``compute`` spans.

    A task that ran more than once on a worker (a retry after a lost worker
    is a new run, but one execution can report several spans) counts every
    span; 0.0 when none was reported.

    Parameters
    ----------
    startstops : iterable of dict or None
        The ``startstops`` the scheduler's transition hook receives
        (``{"action": "compute", "start": t0, "stop": t1}``, ...).

    Returns
    -------
    float
    """
    total = 0.0
    for ss in startstops or ():
        if ss.get("action") == "compute":
            total += ss["stop"] - ss["start"]
    return total


def prefix_estimate(prefix: Any) -> float | None:
    """Dask's duration estimate (seconds) of a task prefix, ``None`` if it has none.

    ``TaskPrefix.duration_average`` when set (at least :data:`MIN_COST`), else
    twice the longest execution time seen in a worker heartbeat
    (``TaskPrefix.max_exec_time``, as Dask's own occupancy estimate does),
    else ``None``.

    Parameters
    ----------
    prefix : distributed.scheduler.TaskPrefix

    Returns
    -------
    float or None
    """
    duration = prefix.duration_average
    if duration is not None and duration >= 0:
        return max(float(duration), MIN_COST)
    if prefix.max_exec_time > 0:
        return 2.0 * prefix.max_exec_time
    return None


def idle_threads(ws: Any) -> int:
    """Threads of a worker with nothing to run: ``nthreads`` less its busy tasks.

    A task that seceded (``long_running``, e.g. one waiting in
    ``worker_client``) does not occupy a thread, as in Dask's own
    idle/saturated bookkeeping. May be negative (a worker is sent more tasks
    than threads).

    Parameters
    ----------
    ws : distributed.scheduler.WorkerState

    Returns
    -------
    int
    """
    return ws.nthreads - (len(ws.processing) - len(ws.long_running))
