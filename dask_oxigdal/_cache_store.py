"""The store behind ``dox.cached``: a byte-limited cache, fair between tenants (FairRide-like).

One :class:`WorkerCache` per worker (see :mod:`dask_oxigdal.cache`). Every
entry is charged to the tenants that use it, in equal parts (an entry three
tenants read costs each a third of its bytes). Each tenant has a budget: the
cache's limit split by tenant weight among the tenants that have entries
(``oxigdal.tenants``; weight 1 when unknown). When the cache is over its
limit it first compresses its coldest entries with lz4 (where that saves at
least 10%), then takes bytes back from the tenant furthest over its budget:
that tenant stops paying for its coldest entry; the entry is evicted once no
tenant pays for it. A tenant within its budget thus never loses an entry to
another tenant's pressure, so its hit rate is at least that of an isolated
cache of its budget, and entries shared between tenants cost each of them
less (Pu et al., "FairRide", NSDI 2016, without the blocking of free riders:
a tenant that reads an entry it stopped paying for pays for it again).
"""

from __future__ import annotations

import math
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import dask
from dask.utils import parse_bytes

from dask_oxigdal import config as _config  # noqa: F401  (registers the defaults)

__all__ = ["COMPRESSIONS", "DEFAULT_TENANT", "WorkerCache"]

#: Valid values of ``oxigdal.cache.compression``.
COMPRESSIONS = ("auto", "lz4", "none")
#: The tenant that tasks without a tenant are charged to.
DEFAULT_TENANT = "default"

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


def config_weights() -> dict[str, float]:
    """Tenant weights from ``oxigdal.tenants`` (invalid entries are skipped)."""
    out: dict[str, float] = {}
    tenants = dask.config.get("oxigdal.tenants", default=None) or {}
    if not isinstance(tenants, Mapping):
        return out
    for name, value in tenants.items():
        if isinstance(value, Mapping):
            value = value.get("weight", 1)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value > 0 and math.isfinite(value):
                out[str(name)] = float(value)
    return out


class _Entry:
    __slots__ = ("compressed", "load_seconds", "nbytes", "stored", "users", "value")

    def __init__(self, value: Any, nbytes: int, tenant: str, load_seconds: float) -> None:
        self.value = value
        self.nbytes = nbytes
        self.stored = nbytes
        self.compressed = False
        #: tenants that pay for the entry, in equal parts (an ordered set)
        self.users: dict[str, None] = {tenant: None}
        self.load_seconds = load_seconds


class WorkerCache:
    """A thread-safe, byte-limited cache, fair between tenants, with lz4 for cold entries.

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
    weights : mapping, optional
        Tenant weights for the budgets; default ``oxigdal.tenants`` (1 each).
    """

    def __init__(
        self,
        limit: Any = None,
        compression: str | None = None,
        memory_limit: int | None = None,
        on_change: Callable[[], None] | None = None,
        weights: Mapping[str, float] | None = None,
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
        self.weights: dict[str, float] = dict(config_weights() if weights is None else weights)
        #: fetches a missing key from another worker: ``fetch(key) -> (found, value)``
        self.fetch: Callable[[Hashable], tuple[bool, Any]] | None = None
        self._data: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lru: dict[str, OrderedDict[Hashable, None]] = {}
        self._charge: dict[str, float] = {}
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Event] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.remote_hits = 0
        self.evictions = 0
        self.compressions = 0
        self.too_large = 0
        self.tenant_hits: dict[str, int] = {}
        self.tenant_misses: dict[str, int] = {}
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

    # ------------------------------------------------------------ budgets
    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Replace the tenant weights (e.g. those the scheduler knows)."""
        with self._lock:
            self.weights = {str(t): float(w) for t, w in weights.items() if w > 0}

    def budget(self, tenant: str) -> float:
        """Bytes ``tenant`` may be charged: the limit split by weight among tenants with entries."""
        present = set(self._lru) | {tenant}
        total = sum(self.weights.get(t, 1.0) for t in present)
        return self.limit * self.weights.get(tenant, 1.0) / total if total else 0.0

    def tenant_stats(self) -> dict[str, dict[str, float]]:
        """Per tenant: ``charge`` (bytes), ``budget``, ``entries``, ``hits``, ``misses``."""
        with self._lock:
            tenants = set(self._lru) | set(self.tenant_hits) | set(self.tenant_misses)
            return {
                t: {
                    "charge": self._charge.get(t, 0.0),
                    "budget": self.budget(t),
                    "entries": len(self._lru.get(t, ())),
                    "hits": self.tenant_hits.get(t, 0),
                    "misses": self.tenant_misses.get(t, 0),
                }
                for t in sorted(tenants)
            }

    def stats(self) -> dict[str, Any]:
        """Counters: hits, misses, remote_hits, evictions, compressions, entries, bytes, limit."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "remote_hits": self.remote_hits,
            "evictions": self.evictions,
            "compressions": self.compressions,
            "too_large": self.too_large,
            "entries": len(self._data),
            "bytes": self.bytes,
            "limit": self.limit,
        }

    def _recharge(self, entry: _Entry, sign: int) -> None:
        share = sign * entry.stored / len(entry.users)
        for t in entry.users:
            self._charge[t] = self._charge.get(t, 0.0) + share

    def _add_user(self, key: Hashable, entry: _Entry, tenant: str) -> None:
        lru = self._lru.get(tenant)
        if lru is None:
            lru = self._lru[tenant] = OrderedDict()
        if tenant not in entry.users:
            self._recharge(entry, -1)
            entry.users[tenant] = None
            self._recharge(entry, +1)
        lru[key] = None
        lru.move_to_end(key)

    def _drop_user(self, key: Hashable, entry: _Entry, tenant: str) -> None:
        self._recharge(entry, -1)
        del entry.users[tenant]
        lru = self._lru[tenant]
        del lru[key]
        if not lru:
            del self._lru[tenant]
            self._charge.pop(tenant, None)
        if entry.users:
            self._recharge(entry, +1)

    def _restore(self, entry: _Entry, value: Any, stored: int, compressed: bool) -> None:
        self._recharge(entry, -1)
        self.bytes += stored - entry.stored
        entry.value, entry.stored, entry.compressed = value, stored, compressed
        self._recharge(entry, +1)

    # ------------------------------------------------------------ get / put
    def get(
        self,
        key: Hashable,
        loader: Callable[[], Any],
        nbytes: int | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Any:
        """The cached value of ``key``, or ``loader()`` (stored when it fits).

        Concurrent misses of one key (several threads of one worker) call
        ``loader`` once: the others wait for it and then hit. If the loader
        raises, or its value is not stored, a waiting thread loads in turn.
        On a miss, the value is first asked of another worker's cache
        (``fetch``, set by the worker binding), then loaded.

        Parameters
        ----------
        key : hashable
        loader : callable
        nbytes : int, optional
            Size of the value; default ``dask.sizeof``.
        tenant : str
            The tenant charged for the entry (and counted for the hit / miss).
        """
        import time

        while True:
            with self._lock:
                entry = self._data.get(key)
                if entry is not None:
                    self.hits += 1
                    self.tenant_hits[tenant] = self.tenant_hits.get(tenant, 0) + 1
                    self._data.move_to_end(key)
                    self._add_user(key, entry, tenant)
                    if entry.compressed:
                        value = pickle.loads(_lz4.decompress(entry.value))
                        self._restore(entry, value, entry.nbytes, False)
                        self._make_room()
                    value = entry.value
                    break
                pending = self._loading.get(key)
                if pending is None:
                    self.misses += 1
                    self.tenant_misses[tenant] = self.tenant_misses.get(tenant, 0) + 1
                    done = self._loading[key] = threading.Event()
                    break
            pending.wait()
        if entry is not None:
            self._changed()
            return value
        try:
            found, value, load_seconds = False, None, 0.0
            if self.fetch is not None:
                try:
                    found, value, load_seconds = self.fetch(key)
                except Exception:  # a peer that left, a timeout: load it here
                    found = False
            if found:
                with self._lock:
                    self.remote_hits += 1
            else:
                start = time.perf_counter()
                value = loader()
                load_seconds = time.perf_counter() - start
            if nbytes is None:
                from dask.sizeof import sizeof

                nbytes = sizeof(value)
            self.put(key, value, int(nbytes), tenant=tenant, load_seconds=load_seconds)
        finally:
            with self._lock:
                del self._loading[key]
            done.set()
        return value

    def put(
        self,
        key: Hashable,
        value: Any,
        nbytes: int,
        *,
        tenant: str = DEFAULT_TENANT,
        load_seconds: float = 0.0,
    ) -> None:
        """Store ``value`` (of ``nbytes``) as the hottest entry, charged to ``tenant``."""
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._forget(key, old)
            if nbytes > self.limit:
                self.too_large += 1
                if old is not None:
                    self.removed.add(key)
                    self.added.discard(key)
            else:
                entry = self._data[key] = _Entry(value, nbytes, tenant, load_seconds)
                self.bytes += nbytes
                lru = self._lru.get(tenant)
                if lru is None:
                    lru = self._lru[tenant] = OrderedDict()
                lru[key] = None
                self._recharge(entry, +1)
                self.added.add(key)
                self.removed.discard(key)
                self._make_room()
        self._changed()

    def peek(self, key: Hashable) -> tuple[bool, Any, bool, int, float]:
        """``(found, stored value, compressed, nbytes, load_seconds)``; no hit is counted."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return False, None, False, 0, 0.0
            return True, entry.value, entry.compressed, entry.nbytes, entry.load_seconds

    def _forget(self, key: Hashable, entry: _Entry) -> None:
        """Un-charge and unlist an entry already popped from ``_data``."""
        self.bytes -= entry.stored
        for t in list(entry.users):
            self._drop_user(key, entry, t)

    # ------------------------------------------------------------ eviction
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
                    self._restore(entry, blob, len(blob), True)
                    self.compressions += 1
        while self.bytes > self.limit and self._data:
            self._reclaim_one()

    def _reclaim_one(self) -> int:
        """One step of fair eviction; returns the bytes freed (0 when only a charge moved)."""
        victim = max(self._lru, key=lambda t: self._charge.get(t, 0.0) / max(self.budget(t), 1.0))
        key = next(iter(self._lru[victim]))
        entry = self._data[key]
        if len(entry.users) > 1:
            self._drop_user(key, entry, victim)  # the others keep it, and pay for it
            return 0
        del self._data[key]
        before = self.bytes
        self._forget(key, entry)
        self.evictions += 1
        self.removed.add(key)
        self.added.discard(key)
        return before - self.bytes

    def evict(self, nbytes: int) -> int:
        """Free ``nbytes`` (or empty the cache), fairly between tenants.

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
                freed += self._reclaim_one()
        if freed:
            self._changed()
        return freed

    def take_changes(self) -> tuple[list, list]:
        """Keys added and removed since the last call (for the scheduler report).

        Only ``str`` keys are reported (``locality=`` annotations are
        strings): a key of the default tenant as itself, a
        ``TenantKey(tenant, key)`` as ``[tenant, key]``, a shared entry
        (``SharedKey(key)``) as ``["", key]``.
        """
        from dask_oxigdal.placement.cache_keys import reported

        with self._lock:
            added = [r for r in map(reported, self.added) if r is not None]
            removed = [r for r in map(reported, self.removed) if r is not None]
            self.added.clear()
            self.removed.clear()
        return added, removed

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
