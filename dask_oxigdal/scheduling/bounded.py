"""Bounded per-prefix state: the policies forget idle task prefixes, oldest first.

A cluster that runs many distinct task prefixes (one per file, per tile, per
user function) would otherwise make the scheduler's per-prefix tables (cost
estimates, duration baselines, straggler statistics) and ``status()`` grow
without bound. Each table is capped at ``oxigdal.scheduling.max-prefixes``
entries; past the cap, the periodic tick removes the oldest entries (first
recorded first) of prefixes that have no pending or running task, and the
policy counts them (``evicted_prefixes`` in its ``status()`` entry). A prefix
with live tasks is never evicted; an evicted prefix that comes back starts
again from Dask's own duration estimate.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from dask_oxigdal.scheduling.settings import setting

__all__ = ["LIVE_STATES", "evict_idle", "max_prefixes", "prefix_is_live"]

#: Task states that make a prefix live (its tasks still wait or run).
LIVE_STATES = ("released", "waiting", "no-worker", "queued", "processing")


def max_prefixes(value: Any = None) -> int:
    """``oxigdal.scheduling.max-prefixes`` (or ``value``), checked.

    Parameters
    ----------
    value : int, optional
        An explicit value; ``None`` reads the config.

    Returns
    -------
    int

    Raises
    ------
    ConfigError
        Not an integer >= 1 (the message names the value).
    """
    from dask_oxigdal.exceptions import ConfigError

    n = setting("scheduling.max-prefixes", value)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"oxigdal.scheduling.max-prefixes={n!r} must be an integer >= 1")
    return n


def prefix_is_live(scheduler: Any, name: str) -> bool:
    """Whether the scheduler has a task of prefix ``name`` that waits or runs.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    name : str
        A task prefix name.

    Returns
    -------
    bool
        O(1): reads ``TaskPrefix.states``.
    """
    tp = scheduler.task_prefixes.get(name)
    if tp is None:
        return False
    states = tp.states
    return any(states.get(s, 0) > 0 for s in LIVE_STATES)


def evict_idle(
    table: MutableMapping[str, Any],
    limit: int,
    live: Callable[[str], bool],
    *also: Any,
) -> list[str]:
    """Remove the oldest idle entries of ``table`` until it has at most ``limit``.

    Parameters
    ----------
    table : dict
        Keyed by prefix name, in insertion order (oldest first).
    limit : int
        Entries to keep at most (live entries are kept even above it).
    live : callable
        ``live(name)``: the entry is in use and must stay.
    *also : dict or set
        Other tables keyed by the same names: the evicted names are removed
        from them too.

    Returns
    -------
    list of str
        The evicted names. O(len(table)) when above ``limit``, O(1) otherwise.
    """
    excess = len(table) - limit
    if excess <= 0:
        return []
    victims = []
    for name in table:
        if not live(name):
            victims.append(name)
            if len(victims) >= excess:
                break
    for name in victims:
        del table[name]
        for other in also:
            if isinstance(other, set):
                other.discard(name)
            else:
                other.pop(name, None)
    return victims
