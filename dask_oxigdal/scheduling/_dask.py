"""Reads of ``distributed``'s scheduler state that several policies share.

Each helper is one formula, used everywhere the policies need it, so that a
change in ``distributed`` is fixed in one place. The private attributes they
read are listed in docs/architecture.md and guarded by
``tests/test_scheduling_extension.py::test_guard_dask_helpers``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from dask.utils import parse_timedelta
from distributed.scheduler import heartbeat_interval
from distributed.worker import Worker

__all__ = [
    "MIN_COST",
    "compute_seconds",
    "dask_heartbeat_interval",
    "idle_threads",
    "prefix_estimate",
]

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


def _worker_default_heartbeat() -> float:
    # A worker heartbeats every ``Worker(heartbeat_interval=)`` ("1s") until the
    # scheduler's first heartbeat reply sets ``heartbeat_interval(n)``.
    param = inspect.signature(Worker.__init__).parameters.get("heartbeat_interval")
    default = None if param is None else param.default
    if default is None or default is inspect.Parameter.empty:
        return 1.0
    return float(parse_timedelta(default, default="ms"))


_WORKER_HEARTBEAT = _worker_default_heartbeat()


def dask_heartbeat_interval(n_workers: int) -> float:
    """Longest interval between two heartbeats of a worker, in seconds.

    Parameters
    ----------
    n_workers : int
        Workers in the cluster.

    Returns
    -------
    float
        ``max(Worker's default heartbeat interval (1 s),
        distributed.scheduler.heartbeat_interval(n_workers))``: 1 s up to 49
        workers, 2 s up to 199, then ``n / 200 + 1``.
    """
    return max(_WORKER_HEARTBEAT, float(heartbeat_interval(max(int(n_workers), 1))))
