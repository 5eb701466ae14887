"""Ties a ``dox.cached`` store to its Dask worker: reports, memory monitor, peer fetches.

- **Reports.** Every change (new key, eviction, hit, miss) is reported,
  coalesced, to the scheduler's ``oxigdal_cache_report`` handler (the
  ``Locality`` policy), which thus knows where each key is cached.
- **Memory monitor.** A periodic callback evicts cold entries while the
  process memory is above ``oxigdal.cache.evict-at`` of the worker's limit.
- **Peer fetches (the shared cache).** On a miss, the worker asks the
  scheduler (``oxigdal_cache_where``, the ``SharedCache`` policy) which
  workers hold the key, and asks one of them (``oxigdal_cache_get``, a worker
  handler installed here) for the stored bytes through Dask's comms. The
  holder answers with the value only when sending it is cheaper than loading
  it again (``oxigdal.cache.fetch``: the time its loader took against
  ``nbytes / bandwidth``); a compressed entry travels compressed.
- **Copies** (``dox.cached(..., replicas=N)``): the scheduler has workers
  pull an entry from a holder (:func:`pull_on_worker`, through Dask's ``run``
  handler, which also creates the cache of a worker that has none yet).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import Hashable
from typing import Any

import dask

from dask_oxigdal._cache_store import DEFAULT_TENANT, WorkerCache, _lz4
from dask_oxigdal.placement.cache_keys import from_reported, reported, tenant_of

__all__ = ["EXTENSION", "FETCH_MODES", "WorkerBinding", "evict_at_warning", "pull_on_worker"]

logger = logging.getLogger(__name__)

EXTENSION = "oxigdal-cache"
#: Valid values of ``oxigdal.cache.fetch``.
FETCH_MODES = ("auto", "always", "never")
GET_HANDLER = "oxigdal_cache_get"
#: Seconds between report attempts to a scheduler without the report handler.
_RETRY_UNSUPPORTED = 30.0
#: Fixed cost of one peer fetch (two round trips), seconds.
_FETCH_LATENCY = 0.002


def evict_at_warning(evict_at: float) -> str | None:
    """A message when ``evict-at`` is not below Dask's first memory threshold."""
    thresholds = {
        key: dask.config.get(f"distributed.worker.memory.{key}") for key in ("target", "spill")
    }
    active = {k: float(v) for k, v in thresholds.items() if v is not False and v is not None}
    if not active:
        return None
    key, first = min(active.items(), key=lambda kv: kv[1])
    if evict_at < first:
        return None
    return (
        f"oxigdal.cache.evict-at={evict_at!r} is not below "
        f"distributed.worker.memory.{key}={first!r}: Dask may spill task results "
        "to disk before the cache gives memory back; use a smaller evict-at"
    )


async def pull_on_worker(key: Any, source: str, dask_worker: Any) -> str:
    """Run by the scheduler on a worker (Dask's ``run`` handler): copy ``key`` from ``source``.

    The worker's cache binding (and its handlers) is created if this worker
    never cached anything yet.
    """
    from dask_oxigdal.cache import _binding

    return await _binding(dask_worker).cache_pull(key, source)


class WorkerBinding:
    """One worker's cache: its reports, memory monitor and peer-fetch handlers."""

    def __init__(self, worker: Any) -> None:
        from tornado.ioloop import PeriodicCallback

        self.worker = worker
        mm = worker.memory_manager
        self.cache = WorkerCache(memory_limit=mm.memory_limit, on_change=self.schedule_report)
        self.evict_at = float(dask.config.get("oxigdal.cache.evict-at"))
        if not 0 < self.evict_at <= 1:
            raise ValueError(
                f"oxigdal.cache.evict-at={self.evict_at!r} must be a fraction in (0, 1]"
            )
        self.fetch_mode = dask.config.get("oxigdal.cache.fetch", default="auto")
        if self.fetch_mode not in FETCH_MODES:
            raise ValueError(
                f"oxigdal.cache.fetch={self.fetch_mode!r} is not valid; choose one of {FETCH_MODES}"
            )
        self.fetch_timeout = dask.utils.parse_timedelta(
            dask.config.get("oxigdal.cache.fetch-timeout", default="5s")
        )
        #: why evict-at cannot work as documented, or None (also logged)
        self.evict_at_warning = evict_at_warning(self.evict_at)
        if self.evict_at_warning:
            logger.warning(self.evict_at_warning)
        self._scheduled = False
        self._inflight = False
        self._dirty = False
        self.reports = 0
        self.report_errors = 0
        self.served = 0
        self.declined = 0
        self.pulled = 0
        #: monotonic time before which reports are skipped (the scheduler has no handler)
        self.unsupported_until = 0.0
        #: the same for directory lookups (no SharedCache policy on the scheduler)
        self.where_unsupported_until = 0.0
        interval_ms = 1000 * dask.utils.parse_timedelta(
            dask.config.get("distributed.worker.memory.monitor-interval")
        )
        self.monitor = PeriodicCallback(self.check_memory, interval_ms)
        worker.periodic_callbacks[EXTENSION] = self.monitor
        worker.loop.add_callback(self.monitor.start)
        worker.handlers[GET_HANDLER] = self.cache_get
        if self.fetch_mode != "never":
            self.cache.fetch = self.fetch

    # -------------------------------------------------------------- memory
    def check_memory(self) -> None:
        """Evict cold entries while process memory is above ``evict-at`` of the limit."""
        limit = self.worker.memory_manager.memory_limit
        if not limit or not self.cache.bytes:
            return
        memory = self.worker.monitor.get_process_memory()
        excess = memory - self.evict_at * limit
        if excess > 0:
            self.cache.evict(int(excess))

    # --------------------------------------------------------- peer fetches
    def fetch(self, key: Hashable) -> tuple[bool, Any, float]:
        """From a task thread: ``(found, value, load_seconds)`` of ``key`` from a peer's cache."""
        from distributed.utils import sync

        wire = reported(key)
        if wire is None or self.worker.status.name not in ("running", "paused"):
            return False, None, 0.0
        if time.monotonic() < self.where_unsupported_until:
            return False, None, 0.0
        return sync(self.worker.loop, self._fetch, wire, self.fetch_mode, callback_timeout=None)

    async def _fetch(self, wire: Any, mode: str, source: str | None = None) -> tuple:
        try:
            return await asyncio.wait_for(self._ask(wire, mode, source), self.fetch_timeout)
        except Exception as e:  # a peer that left, a slow network: load it here
            logger.debug("oxigdal cache fetch of %r failed: %s", wire, e)
            return False, None, 0.0

    async def _ask(self, wire: Any, mode: str, source: str | None) -> tuple:
        worker = self.worker
        if source is None:
            reply = await worker.scheduler.oxigdal_cache_where(key=wire, worker=worker.address)
            if not isinstance(reply, dict):
                # no SharedCache policy on the scheduler (it logs the unknown handler):
                # ask again later, without flooding its log
                self.where_unsupported_until = time.monotonic() + _RETRY_UNSUPPORTED
                return False, None, 0.0
            weights = reply.get("weights")
            if isinstance(weights, dict) and weights:
                self.cache.set_weights(weights)
            holders = [h for h in reply.get("holders") or () if isinstance(h, str)]
        else:
            holders = [source]
        for address in holders[:2]:
            async with worker.rpc(address) as peer:
                resp = await peer.oxigdal_cache_get(
                    key=wire, bandwidth=float(worker.bandwidth), mode=mode
                )
            if isinstance(resp, dict) and resp.get("status") == "OK":
                value = resp["value"]
                if resp.get("compressed"):
                    value = pickle.loads(_lz4.decompress(value))
                return True, value, float(resp.get("load_seconds") or 0.0)
            if isinstance(resp, dict) and resp.get("status") == "declined":
                break  # loading is cheaper than any transfer of it
        return False, None, 0.0

    def cache_get(self, key: Any = None, bandwidth: Any = None, mode: str = "auto") -> dict:
        """Worker handler: this cache's stored value of ``key``, when sending it pays."""
        from distributed.protocol import to_serialize

        ckey = from_reported(key)
        if ckey is None:
            return {"status": "missing"}
        found, value, compressed, nbytes, load_seconds = self.cache.peek(ckey)
        if not found:
            return {"status": "missing"}
        if mode == "auto":
            try:
                bw = float(bandwidth)
            except (TypeError, ValueError):
                bw = 0.0
            transfer = _FETCH_LATENCY + (nbytes / bw if bw > 0 else float("inf"))
            if load_seconds < transfer:
                self.declined += 1
                return {"status": "declined"}
        self.served += 1
        return {
            "status": "OK",
            "value": value if compressed else to_serialize(value),
            "compressed": compressed,
            "nbytes": nbytes,
            "load_seconds": load_seconds,
        }

    async def cache_pull(self, key: Any = None, source: Any = None) -> str:
        """Copy ``key`` from ``source``'s cache into this one (``replicas=``; see :func:`pull_on_worker`)."""
        ckey = from_reported(key)
        if ckey is None or not isinstance(source, str) or ckey in self.cache:
            return "skipped"
        found, value, load_seconds = await self._fetch(key, "always", source)
        if not found:
            return "missing"
        from dask.sizeof import sizeof

        tenant = tenant_of(ckey, DEFAULT_TENANT) or DEFAULT_TENANT
        # the copy is charged to its owner (a shared copy to the default tenant
        # until a task of some tenant reads it)
        nbytes = sizeof(value)
        await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: self.cache.put(ckey, value, nbytes, tenant=tenant, load_seconds=load_seconds),
        )
        self.pulled += 1
        return "OK"

    # -------------------------------------------------------------- reports
    def schedule_report(self) -> None:
        self._dirty = True
        if not self._scheduled and not self._inflight:
            self._scheduled = True
            self.worker.loop.add_callback(self._report)

    async def _report(self) -> None:
        self._scheduled = False
        while self._dirty:
            self._dirty = False
            if time.monotonic() < self.unsupported_until:
                continue  # changes stay queued in the cache until the next report
            self._inflight = True
            added, removed = self.cache.take_changes()
            try:
                ok = await self.worker.scheduler.oxigdal_cache_report(
                    worker=self.worker.address,
                    added=added,
                    removed=removed,
                    stats=self.cache.stats(),
                )
            except Exception as e:  # the scheduler is gone or restarting
                ok = None
                logger.debug("oxigdal cache report failed: %s", e)
            finally:
                self._inflight = False
            if ok == "ok":
                self.reports += 1
            else:
                # no Locality policy on the scheduler (an unknown handler answers None
                # and logs a warning there): try again later, without flooding its log
                self.report_errors += 1
                self.unsupported_until = time.monotonic() + _RETRY_UNSUPPORTED
                with self.cache._lock:
                    self.cache.added.update(from_reported(k) for k in added)
                    self.cache.removed.update(from_reported(k) for k in removed)
