"""The Active Memory Manager policies that enact ``replicas=``: ``MinReplicas`` and ``ReduceReplicas``.

Dask's Active Memory Manager (AMM, ``distributed.active_memory_manager``)
already knows how to copy a key to another worker (``acquire-replicas``) and
how to drop a copy without ever losing the last one. These two policies only
decide *what* it should do for keys annotated ``replicas=N``; the AMM and the
workers do the rest.

- :class:`MinReplicas` asks for copies of every annotated key in memory that
  has fewer than N of them, on workers in racks / zones / hosts that hold no
  copy yet (:func:`spread_candidates`).
- :class:`ReduceReplicas` replaces Dask's own ``ReduceReplicas`` (which keeps
  exactly one copy of every key): it keeps N copies of annotated keys and
  behaves exactly like Dask's for all other keys, so the two policies never
  undo each other's work.

Both read the per-key counts from the ``Replicas`` scheduling policy
(:mod:`dask_oxigdal.placement.replicas`), found at run time through the
``oxigdal`` scheduler plugin, so they work whether ``Replicas`` installed
them or ``distributed.scheduler.active-memory-manager.policies`` names them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from distributed.active_memory_manager import ActiveMemoryManagerPolicy, Suggestion

from dask_oxigdal.placement.topology import EXTRA_KEY, worker_labels

if TYPE_CHECKING:
    from distributed.active_memory_manager import SuggestionGenerator
    from distributed.scheduler import TaskState, WorkerState

    from dask_oxigdal.placement.replicas import Replicas

__all__ = [
    "LEVELS",
    "TOPOLOGY_KEY",
    "MinReplicas",
    "ReduceReplicas",
    "spread_candidates",
    "worker_labels",
]

#: Key of ``WorkerState.extra`` where a worker publishes its topology labels
#: (:mod:`dask_oxigdal.placement.topology`).
TOPOLOGY_KEY = EXTRA_KEY
#: Failure domains, widest first; ``host`` falls back to the worker's host name.
LEVELS = ("zone", "rack", "host")


def spread_candidates(
    holders: Iterable[WorkerState],
    running: Iterable[WorkerState],
    labels: dict[Any, dict[str, str]] | None = None,
) -> set[WorkerState] | None:
    """Workers where a new copy adds the most failure-domain diversity.

    The widest level (zone, then rack, then host) at which every worker is
    labelled and some running worker lies in a domain no holder is in decides;
    without such a level, any running worker without a copy.

    Parameters
    ----------
    holders : iterable of WorkerState
        Workers that hold (or are about to receive) a copy.
    running : iterable of WorkerState
        Workers that may receive one.
    labels : dict, optional
        A cache ``{WorkerState: worker_labels(ws)}`` filled as needed.

    Returns
    -------
    set of WorkerState or None
        ``None`` when every running worker already holds a copy.
    """
    if labels is None:
        labels = {}

    def of(ws: Any) -> dict[str, str]:
        found = labels.get(ws)
        if found is None:
            found = labels[ws] = worker_labels(ws)
        return found

    holders = set(holders)
    free = [ws for ws in running if ws not in holders]
    if not free:
        return None
    for level in LEVELS:
        used = {of(ws).get(level) for ws in holders}
        if None in used:
            continue  # a holder without this label: the level says nothing
        fresh = {ws for ws in free if of(ws).get(level) not in used}
        if fresh and all(of(ws).get(level) is not None for ws in fresh):
            return fresh
    return set(free)


def _registry(policy: Any) -> Replicas | None:
    """The ``Replicas`` scheduling policy of the scheduler's ``oxigdal`` plugin, or ``None``."""
    found = policy._replicas
    if found is not None:
        return found
    scheduler = policy.manager.scheduler
    extension = scheduler.plugins.get("oxigdal")
    if extension is None:
        return None
    for candidate in getattr(extension, "policies", ()):
        if getattr(candidate, "name", None) == "Replicas":
            return candidate
    return None


class MinReplicas(ActiveMemoryManagerPolicy):
    """Copy every key annotated ``replicas=N`` until N workers hold it.

    Runs once per AMM cycle over the annotated keys only. Copies go to
    workers in a zone / rack / host without a copy when the topology is known
    (:func:`spread_candidates`); among those the AMM picks the one with the
    least memory. A worker that leaves (even SIGKILLed) is thus replaced by a
    new copy at the next cycle; ``Replicas`` also runs this policy once right
    after a worker leaves.

    Parameters
    ----------
    replicas : Replicas, optional
        The scheduling policy that holds the per-key counts; found through the
        scheduler's ``oxigdal`` plugin when not given.
    """

    __slots__ = ("_replicas", "once")

    def __init__(self, replicas: Replicas | None = None, *, once: bool = False) -> None:
        self._replicas = replicas
        #: a one-off run (after a worker left), not counted as an AMM cycle
        self.once = once

    def run(self) -> SuggestionGenerator:
        """One AMM cycle: suggest the missing copies (see the class docstring)."""
        registry = _registry(self)
        if registry is None:
            return
        yield from registry.min_replicas(self.manager, counted=not self.once)


class ReduceReplicas(ActiveMemoryManagerPolicy):
    """Dask's ``ReduceReplicas`` with the per-key count of ``replicas=N``.

    Drops copies beyond one (beyond N for an annotated key), keeping one more
    for each worker that will run a dependent, as Dask's does. For an
    annotated key, the copies dropped first are those that share a zone /
    rack / host with another copy.

    Parameters
    ----------
    replicas : Replicas, optional
        The scheduling policy that holds the per-key counts; found through the
        scheduler's ``oxigdal`` plugin when not given.
    """

    __slots__ = ("_replicas",)

    def __init__(self, replicas: Replicas | None = None) -> None:
        self._replicas = replicas

    def run(self) -> SuggestionGenerator:
        """One AMM cycle over ``Scheduler.replicated_tasks`` (as Dask's policy)."""
        registry = _registry(self)
        wanted = registry.keys if registry is not None else {}
        pending = self.manager.pending
        labels: dict[Any, dict[str, str]] = {}
        for ts in list(self.manager.scheduler.replicated_tasks):
            entry = wanted.get(ts.key) if wanted else None
            desired = entry[0] if entry is not None else 1
            if not ts.who_has:
                continue
            nwaiters = len(ts.waiters or ())
            if desired < nwaiters < 20:
                # keep a copy for each worker that will run a dependent (as Dask does)
                nwaiters = len({waiter.processing_on or waiter for waiter in ts.waiters or ()})
            ndrop = len(ts.who_has) - max(desired, nwaiters)
            if ts in pending:
                pending_repl, pending_drop = pending[ts]
                ndrop += len(pending_repl) - len(pending_drop)
            for _ in range(max(0, ndrop)):
                candidates = _redundant(ts, pending.get(ts), labels) if desired > 1 else None
                yield Suggestion("drop", ts, candidates)


def _redundant(
    ts: TaskState, pending: tuple[set, set] | None, labels: dict[Any, dict[str, str]]
) -> set | None:
    """Holders of ``ts`` whose failure domain another holder shares (``None``: any)."""
    holders = set(ts.who_has or ())
    if pending is not None:
        holders -= pending[1]
    for level in reversed(LEVELS):
        seen: dict[str, int] = {}
        of = {}
        for ws in holders:
            found = labels.get(ws)
            if found is None:
                found = labels[ws] = worker_labels(ws)
            of[ws] = found.get(level)
            seen[of[ws]] = seen.get(of[ws], 0) + 1
        shared = {ws for ws in holders if seen[of[ws]] > 1}
        if shared:
            return shared
    return None
