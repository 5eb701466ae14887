"""``dox.cached``: a per-worker LRU cache for data a task loads itself.

>>> import dask_oxigdal as dox
>>> def ndvi_of_tile(path):
...     scene = dox.cached(path, lambda: read_tile(path))   # inside a task
...     return dox.ndvi(scene[3], scene[2])

Each worker holds one :class:`WorkerCache` (in ``worker.extensions``), a
byte-limited LRU (``oxigdal.cache.limit``). When it is over its limit, it
first compresses its coldest entries with lz4 (``oxigdal.cache.compression``;
needs the optional ``lz4`` package, extra ``cache``), then evicts the coldest
ones. It co-operates with the worker's memory manager: a periodic callback on
the worker evicts cold entries while the process memory is above
``oxigdal.cache.evict-at`` of the worker's memory limit, a fraction below
Dask's own ``distributed.worker.memory.target`` / ``spill`` thresholds, so the
cache gives memory back before Dask starts spilling task results to disk.

Every change (new key, eviction, hit, miss) is reported, coalesced, to the
scheduler's ``oxigdal_cache_report`` handler (installed by the
:class:`~dask_oxigdal.scheduling.locality.Locality` policy). The scheduler thus
knows which worker holds which key (the ``Locality`` policy places tasks
annotated ``locality=KEY`` there) and shows per-worker hits, misses and
evictions in ``dox.status(client)["policies"]["Locality"]["cache"]``.
Outside a worker (local schedulers) one process-wide cache is used.

Entries are per tenant: inside a task of a tenant other than the default one,
``cached(key, ...)`` stores and finds ``TenantKey(tenant, key)``, so a task of
another tenant that uses the same ``key`` neither reads nor replaces it (the
tenant is the one the scheduler resolved for the task, see
:mod:`dask_oxigdal.isolation`). Tasks of the default tenant (every task of a
cluster without tenants) use ``key`` itself, as before.
"""

from __future__ import annotations

import logging
import numbers
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import dask
from dask.utils import parse_bytes

from dask_oxigdal import config as _config  # noqa: F401  (registers the defaults)
from dask_oxigdal.isolation import TenantKey, current_tenant

__all__ = ["COMPRESSIONS", "WorkerCache", "cached", "scoped_key", "worker_cache"]

logger = logging.getLogger(__name__)

#: Valid values of ``oxigdal.cache.compression``.
COMPRESSIONS = ("auto", "lz4", "none")
EXTENSION = "oxigdal-cache"
REPORT_HANDLER = "oxigdal_cache_report"
#: Seconds between report attempts to a scheduler without the report handler.
_RETRY_UNSUPPORTED = 30.0

try:  # optional dependency (extra "cache")
    import lz4.frame as _lz4
except ImportError:  # pragma: no cover - lz4 is in the "all" extra
    _lz4 = None


def _parse_limit(limit: Any, memory_limit: int | None) -> int:
    if isinstance(limit, str) and limit.strip().endswith("%"):
        try:
            frac = float(limit.strip()[:-1]) / 100.0
        except ValueError:
            frac = -1.0
        if not 0 <= frac <= 1:
            raise ValueError(
                f"oxigdal.cache.limit={limit!r}: a percentage must be between 0% and 100%"
            )
        if not memory_limit:
            from distributed.system import MEMORY_LIMIT

            memory_limit = MEMORY_LIMIT
        return int(frac * memory_limit)
    try:
        value = parse_bytes(limit) if isinstance(limit, str) else int(limit)
    except (ValueError, TypeError):
        raise ValueError(
            f"oxigdal.cache.limit={limit!r} is not valid: give bytes (an int or a string "
            'such as "2GiB") or a percentage of worker memory such as "10%"'
        ) from None
    if isinstance(limit, bool) or value < 0:
        raise ValueError(f"oxigdal.cache.limit={limit!r} must be >= 0")
    return value


class _Entry:
    __slots__ = ("compressed", "nbytes", "stored", "value")

    def __init__(self, value: Any, nbytes: int) -> None:
        self.value = value
        self.nbytes = nbytes
        self.stored = nbytes
        self.compressed = False


class WorkerCache:
    """A thread-safe, byte-limited LRU with optional lz4 compression of cold entries.

    Parameters
    ----------
    limit : int, str, optional
        Byte limit, or a percentage of ``memory_limit`` (``oxigdal.cache.limit``).
    compression : {"auto", "lz4", "none"}, optional
        ``oxigdal.cache.compression``; ``auto`` uses lz4 when it is installed.
    memory_limit : int, optional
        The worker's memory limit (for percentages and the memory monitor).
    on_change : callable, optional
        Called (with no argument, from the calling thread) after every change.
    """

    def __init__(
        self,
        limit: Any = None,
        compression: str | None = None,
        memory_limit: int | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if limit is None:
            limit = dask.config.get("oxigdal.cache.limit")
        self.limit = _parse_limit(limit, memory_limit)
        compression = compression or dask.config.get("oxigdal.cache.compression")
        if compression not in COMPRESSIONS:
            raise ValueError(
                f"oxigdal.cache.compression={compression!r} is not valid; choose one of "
                f"{COMPRESSIONS}"
            )
        if compression == "lz4" and _lz4 is None:
            raise ValueError(
                "oxigdal.cache.compression='lz4' needs the lz4 package "
                "(pip install 'dask-oxigdal[cache]'), or use 'auto' / 'none'"
            )
        self.compress = compression != "none" and _lz4 is not None
        self.memory_limit = memory_limit
        self.on_change = on_change
        self._data: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Event] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.compressions = 0
        self.too_large = 0
        self.added: set[Hashable] = set()
        self.removed: set[Hashable] = set()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def keys(self) -> list[Hashable]:
        """Keys from coldest to hottest."""
        with self._lock:
            return list(self._data)

    def stats(self) -> dict[str, Any]:
        """Counters: hits, misses, evictions, compressions, entries, bytes, limit."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "compressions": self.compressions,
            "too_large": self.too_large,
            "entries": len(self._data),
            "bytes": self.bytes,
            "limit": self.limit,
        }

    def get(self, key: Hashable, loader: Callable[[], Any], nbytes: int | None = None) -> Any:
        """The cached value of ``key``, or ``loader()`` (stored when it fits).

        Concurrent misses of one key (several threads of one worker) call
        ``loader`` once: the others wait for it and then hit. If the loader
        raises, or its value is not stored, a waiting thread loads in turn.
        """
        while True:
            with self._lock:
                entry = self._data.get(key)
                if entry is not None:
                    self.hits += 1
                    self._data.move_to_end(key)
                    if entry.compressed:
                        value = pickle.loads(_lz4.decompress(entry.value))
                        self.bytes += entry.nbytes - entry.stored
                        entry.value, entry.stored, entry.compressed = value, entry.nbytes, False
                        self._make_room()
                    value = entry.value
                    break
                pending = self._loading.get(key)
                if pending is None:
                    self.misses += 1
                    done = self._loading[key] = threading.Event()
                    break
            pending.wait()
        if entry is not None:
            self._changed()
            return value
        try:
            value = loader()
            if nbytes is None:
                from dask.sizeof import sizeof

                nbytes = sizeof(value)
            self.put(key, value, int(nbytes))
        finally:
            with self._lock:
                del self._loading[key]
            done.set()
        return value

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        """Store ``value`` (of ``nbytes``) as the hottest entry, making room first."""
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= old.stored
            if nbytes > self.limit:
                self.too_large += 1
                if old is not None:
                    self.removed.add(key)
                    self.added.discard(key)
            else:
                self._data[key] = _Entry(value, nbytes)
                self.bytes += nbytes
                self.added.add(key)
                self.removed.discard(key)
                self._make_room()
        self._changed()

    def _make_room(self) -> None:
        if self.bytes <= self.limit:
            return
        if self.compress:
            for entry in list(self._data.values())[:-1]:
                if self.bytes <= self.limit:
                    return
                if entry.compressed or entry.stored == 0:
                    continue
                blob = _lz4.compress(pickle.dumps(entry.value, protocol=5))
                if len(blob) < 0.9 * entry.nbytes:
                    self.bytes += len(blob) - entry.stored
                    entry.value, entry.stored, entry.compressed = blob, len(blob), True
                    self.compressions += 1
        while self.bytes > self.limit and self._data:
            self._evict_one()

    def _evict_one(self) -> None:
        key, entry = self._data.popitem(last=False)
        self.bytes -= entry.stored
        self.evictions += 1
        self.removed.add(key)
        self.added.discard(key)

    def evict(self, nbytes: int) -> int:
        """Evict the coldest entries until ``nbytes`` are freed (or the cache is empty).

        Parameters
        ----------
        nbytes : int
            Bytes to free.

        Returns
        -------
        int
            Bytes freed.
        """
        freed = 0
        with self._lock:
            while freed < nbytes and self._data:
                before = self.bytes
                self._evict_one()
                freed += before - self.bytes
        if freed:
            self._changed()
        return freed

    def take_changes(self) -> tuple[list, list]:
        """Keys added and removed since the last call (for the scheduler report).

        Only ``str`` keys are reported (``locality=`` annotations are
        strings): a key of the default tenant as itself, a
        ``TenantKey(tenant, key)`` as ``[tenant, key]``.
        """
        with self._lock:
            added = [r for r in map(_reported, self.added) if r is not None]
            removed = [r for r in map(_reported, self.removed) if r is not None]
            self.added.clear()
            self.removed.clear()
        return added, removed

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _reported(key: Hashable) -> Any:
    if isinstance(key, str):
        return key
    if type(key) is TenantKey and isinstance(key.key, str):
        return [key.tenant, key.key]
    return None


def _evict_at_warning(evict_at: float) -> str | None:
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


class _WorkerBinding:
    """Ties a :class:`WorkerCache` to a worker: reports and the memory monitor."""

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
        #: why evict-at cannot work as documented, or None (also logged)
        self.evict_at_warning = _evict_at_warning(self.evict_at)
        if self.evict_at_warning:
            logger.warning(self.evict_at_warning)
        self._scheduled = False
        self._inflight = False
        self._dirty = False
        self.reports = 0
        self.report_errors = 0
        #: monotonic time before which reports are skipped (the scheduler has no handler)
        self.unsupported_until = 0.0
        interval_ms = 1000 * dask.utils.parse_timedelta(
            dask.config.get("distributed.worker.memory.monitor-interval")
        )
        self.monitor = PeriodicCallback(self.check_memory, interval_ms)
        worker.periodic_callbacks[EXTENSION] = self.monitor
        worker.loop.add_callback(self.monitor.start)

    def check_memory(self) -> None:
        """Evict cold entries while process memory is above ``evict-at`` of the limit."""
        limit = self.worker.memory_manager.memory_limit
        if not limit or not self.cache.bytes:
            return
        memory = self.worker.monitor.get_process_memory()
        excess = memory - self.evict_at * limit
        if excess > 0:
            self.cache.evict(int(excess))

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
                    self.cache.added.update(added)
                    self.cache.removed.update(removed)


_LOCAL: list[WorkerCache] = []
_LOCAL_LOCK = threading.Lock()


def worker_cache(worker: Any = None) -> WorkerCache:
    """The :class:`WorkerCache` of ``worker`` (default: the current one), created on first use.

    Parameters
    ----------
    worker : distributed.Worker, optional
        Defaults to the worker running the current task; outside a worker,
        one process-wide cache.

    Returns
    -------
    WorkerCache
    """
    if worker is None:
        from distributed import get_worker

        try:
            worker = get_worker()
        except ValueError:
            worker = None
    if worker is None:
        with _LOCAL_LOCK:
            if not _LOCAL:
                _LOCAL.append(WorkerCache())
            return _LOCAL[0]
    binding = worker.extensions.get(EXTENSION)
    if binding is None:
        with _LOCAL_LOCK:
            binding = worker.extensions.get(EXTENSION)
            if binding is None:
                binding = worker.extensions[EXTENSION] = _WorkerBinding(worker)
    return binding.cache


def cached(key: Hashable, loader: Callable[[], Any], *, nbytes: int | None = None) -> Any:
    """This worker's cached value for ``key``, or ``loader()`` (then cached).

    Call it inside a task. Annotate the task with ``dox.annotate(locality=key)``
    so that the ``Locality`` policy runs it where ``key`` is cached.

    Parameters
    ----------
    key : hashable
        Cache key (for locality a ``str`` such as ``"tile/3/4"``).
    loader : callable
        Called with no argument on a miss; its result is stored.
    nbytes : int, optional
        Size of the value; defaults to ``dask.sizeof``.

    Returns
    -------
    object
        The value. A hit returns the same object every time (do not mutate it).
        Entries are per tenant: a task of another tenant that uses the same
        ``key`` gets its own entry (see :mod:`dask_oxigdal.isolation`).

    Raises
    ------
    TypeError
        If ``key`` is unhashable or ``loader`` is not callable.
    """
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"cache key must be hashable, got {type(key).__name__}: {key!r}") from None
    if not callable(loader):
        raise TypeError(f"loader must be callable, got {type(loader).__name__}")
    if nbytes is not None and (
        isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Integral) or nbytes < 0
    ):
        raise ValueError(
            f"nbytes must be an integer >= 0 (or None: measure the value), got {nbytes!r}"
        )
    return worker_cache().get(scoped_key(key), loader, nbytes)


def scoped_key(key: Hashable) -> Hashable:
    """The key under which :func:`cached` stores ``key`` for the task running now.

    Parameters
    ----------
    key : hashable
        The key a task passes to :func:`cached`.

    Returns
    -------
    hashable
        ``key`` itself for the default tenant (and outside a task), else
        ``TenantKey(tenant, key)`` for the running task's tenant, e.g. to ask
        ``scoped_key(k) in worker_cache()``.
    """
    tenant = current_tenant()
    return key if tenant is None else TenantKey(tenant, key)
