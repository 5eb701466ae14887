"""``SharedCache``: the scheduler side of the shared ``dox.cached`` cache.

The ``Locality`` policy already learns from the workers' cache reports which
worker caches which key (its ``homes``). This policy answers two questions
from the workers with it:

- ``oxigdal_cache_where(key, worker)``: which other workers cache ``key``
  (nearest first: same host, then same rack / zone, by
  :func:`~dask_oxigdal.placement.replicas_amm.worker_labels`), with the
  tenants' weights, from which each worker cache computes the tenants'
  budgets. The asking worker then fetches the entry from a holder through
  Dask's comms (see :mod:`dask_oxigdal._cache_worker`).
- ``oxigdal_cache_replicate(key, n, worker)``: a task stored ``key`` with
  ``dox.cached(..., replicas=n)``. The policy asks workers without a copy (in
  other zones / racks / hosts first) to pull it from a holder, and does so
  again on each tick while fewer than ``n`` workers cache it (a worker left,
  or evicted it). Cache entries are not Dask keys, so Dask's Active Memory
  Manager cannot copy them; task results annotated ``replicas=`` are copied
  by the AMM (:mod:`dask_oxigdal.placement.replicas`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dask_oxigdal.annotations import MAX_REPLICAS
from dask_oxigdal.placement.replicas_amm import spread_candidates, worker_labels
from dask_oxigdal.scheduling.policy import SchedulingPolicy
from dask_oxigdal.scheduling.settings import setting

__all__ = ["SharedCache"]

logger = logging.getLogger(__name__)

WHERE_HANDLER = "oxigdal_cache_where"
REPLICATE_HANDLER = "oxigdal_cache_replicate"
#: Seconds before a pull that did not show up in a cache report is tried again.
_PULL_RETRY = 5.0


def _home_key(wire: Any) -> Any:
    """A wire key as ``Locality.homes`` keeps it: ``str`` or ``(tenant, str)``; else ``None``."""
    if isinstance(wire, str):
        return wire
    if (
        isinstance(wire, (list, tuple))
        and len(wire) == 2
        and isinstance(wire[0], str)
        and isinstance(wire[1], str)
    ):
        return (wire[0], wire[1])
    return None


class SharedCache(SchedulingPolicy):
    """Directory of the worker caches and copies of ``replicas=`` entries.

    Parameters
    ----------
    max_keys : int, optional
        ``oxigdal.cache.max-copied-keys``: ``replicas=`` entries tracked at once.
    """

    name = "SharedCache"
    wants_transitions = False

    def __init__(self, *, max_keys: int | None = None) -> None:
        super().__init__()
        self.max_keys = setting("cache.max-copied-keys", max_keys)
        if isinstance(self.max_keys, bool) or not isinstance(self.max_keys, int):
            raise ValueError(f"oxigdal.cache.max-copied-keys={self.max_keys!r} must be an int >= 1")
        if self.max_keys < 1:
            raise ValueError(f"oxigdal.cache.max-copied-keys={self.max_keys!r} must be >= 1")
        #: home key -> wanted copies
        self.wanted: dict[Any, int] = {}
        #: home key -> {target address: monotonic time of the pull request}
        self.pulling: dict[Any, dict[str, float]] = {}
        self.lookups = 0
        self.found = 0
        self.pulls = 0
        self.pull_failures = 0
        self.copied_keys_dropped = 0

    def start(self, extension: Any) -> None:
        """Install the ``oxigdal_cache_where`` and ``oxigdal_cache_replicate`` handlers."""
        super().start(extension)
        handlers = extension.scheduler.handlers
        handlers[WHERE_HANDLER] = self.where
        handlers[REPLICATE_HANDLER] = self.replicate

    def _homes(self, key: Any) -> set[str]:
        ext = self.extension
        for policy in ext.policies:
            if getattr(policy, "name", None) == "Locality":
                return set(policy.homes.get(key, ())) & set(ext.scheduler.workers)
        return set()

    # ------------------------------------------------------------- handlers
    def where(self, key: Any = None, worker: Any = None) -> dict[str, Any]:
        """Scheduler handler: the other workers that cache ``key``, nearest first."""
        self.lookups += 1
        hkey = _home_key(key)
        holders = self._homes(hkey) - {worker} if hkey is not None else set()
        workers = self.extension.scheduler.workers
        me = workers.get(worker) if isinstance(worker, str) else None
        mine = worker_labels(me) if me is not None else {}

        def distance(addr: str) -> tuple:
            theirs = worker_labels(workers[addr])
            return (*(theirs.get(k) != mine.get(k) for k in ("host", "rack", "zone")), addr)

        ordered = sorted(holders, key=distance)
        if ordered:
            self.found += 1
        return {"holders": ordered, "weights": dict(self.extension.weights)}

    def replicate(self, key: Any = None, n: Any = None, worker: Any = None) -> str:
        """Scheduler handler: keep ``n`` cached copies of ``key`` (``dox.cached(replicas=n)``)."""
        hkey = _home_key(key)
        if (
            hkey is None
            or isinstance(n, bool)
            or not isinstance(n, int)
            or not 1 <= n <= MAX_REPLICAS
        ):
            return "invalid"
        if hkey not in self.wanted and len(self.wanted) >= self.max_keys:
            self.copied_keys_dropped += 1
            return "dropped"
        self.wanted[hkey] = n
        self._copy(hkey, also=worker)
        return "ok"

    # ---------------------------------------------------------------- copies
    def _copy(self, hkey: Any, also: str | None = None) -> None:
        scheduler = self.extension.scheduler
        n = self.wanted[hkey]
        homes = self._homes(hkey)
        if also in scheduler.workers:
            homes.add(also)  # the worker that just stored it (its report may be in flight)
        if not homes:
            return
        now = time.monotonic()
        pulling = {
            a: t
            for a, t in self.pulling.get(hkey, {}).items()
            if now - t < _PULL_RETRY and a not in homes and a in scheduler.workers
        }
        held = {scheduler.workers[a] for a in homes | set(pulling)}
        labels: dict[Any, dict[str, str]] = {}
        source = sorted(homes)[0]
        wire = hkey if isinstance(hkey, str) else list(hkey)
        while len(held) < n:
            candidates = spread_candidates(held, scheduler.running, labels)
            if not candidates:
                break
            target = min(candidates, key=lambda ws: (len(ws.has_what), ws.address))
            held.add(target)
            pulling[target.address] = now
            self.pulls += 1
            scheduler.loop.add_callback(self._pull, target.address, wire, source)
        if pulling:
            self.pulling[hkey] = pulling
        else:
            self.pulling.pop(hkey, None)

    async def _pull(self, address: str, wire: Any, source: str) -> None:
        import pickle

        from dask_oxigdal._cache_worker import pull_on_worker

        try:
            # Dask's "run" handler: it also creates the cache of a worker that has none yet
            await self.extension.scheduler.rpc(address).run(
                function=pickle.dumps(pull_on_worker), args=pickle.dumps((wire, source))
            )
        except Exception as e:  # the worker left: the next tick picks another one
            self.pull_failures += 1
            logger.debug("oxigdal cache pull of %r to %s failed: %s", wire, address, e)

    def periodic(self) -> None:
        """Copy the ``replicas=`` entries that fewer workers cache than wanted."""
        for hkey in list(self.wanted):
            if not self._homes(hkey) and not self.pulling.get(hkey):
                del self.wanted[hkey]  # evicted everywhere: nothing left to copy
                continue
            self._copy(hkey)

    def remove_worker(self, address: str, stimulus_id: str) -> None:
        """A worker left: copy what it cached from the remaining holders."""
        for pulling in self.pulling.values():
            pulling.pop(address, None)
        if self.wanted:
            self.periodic()

    def restart(self) -> None:
        """Worker caches survive a restart; nothing to forget."""

    def snapshot(self) -> dict[str, Any]:
        """``lookups``, ``found``, copied keys and pulls."""
        return {
            "lookups": self.lookups,
            "found": self.found,
            "copied_keys": len(self.wanted),
            "max_copied_keys": self.max_keys,
            "copied_keys_dropped": self.copied_keys_dropped,
            "pulls": self.pulls,
            "pull_failures": self.pull_failures,
        }
