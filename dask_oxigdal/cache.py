"""``dox.cached``: a worker cache for data a task loads itself, shared across the cluster.

>>> import dask_oxigdal as dox
>>> def ndvi_of_tile(path):
...     scene = dox.cached(path, lambda: read_tile(path))   # inside a task
...     return dox.ndvi(scene[3], scene[2])

Each worker holds one :class:`WorkerCache` (in ``worker.extensions``), a
byte-limited cache (``oxigdal.cache.limit``), fair between tenants. When it
is over its limit, it first compresses its coldest entries with lz4
(``oxigdal.cache.compression``; needs the optional ``lz4`` package, extra
``cache``), then takes bytes back from the tenant furthest over its budget
(the limit split by tenant weight; an entry several tenants use is charged
to each in equal parts; see :mod:`dask_oxigdal._cache_store`). It co-operates with the worker's memory manager: a periodic callback on
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

The cache is shared across the cluster: on a miss, a worker fetches the
entry from another worker's cache through Dask's comms when that is cheaper
than loading it (``oxigdal.cache.fetch``; the ``SharedCache`` policy is the
directory, see :mod:`dask_oxigdal._cache_worker`). ``replicas=N`` keeps N
workers caching an entry.

Entries are per tenant: inside a task of a tenant other than the default one,
``cached(key, ...)`` stores and finds ``TenantKey(tenant, key)``, so a task of
another tenant that uses the same ``key`` neither reads nor replaces it (the
tenant is the one the scheduler resolved for the task, see
:mod:`dask_oxigdal.isolation`). Tasks of the default tenant (every task of a
cluster without tenants) use ``key`` itself, as before. With ``shared=True``
every tenant reads and stores one entry, ``SharedKey(key)``, charged to the
tenants that use it in equal parts: use it only for data any tenant may
read (a public source whose version or ETag is in the key).

Modules: this one (the API), :mod:`dask_oxigdal._cache_store` (the store and
its fair eviction), :mod:`dask_oxigdal._cache_worker` (reports, memory
monitor, peer fetches), :mod:`dask_oxigdal.placement.cache_keys` (key kinds)
and :mod:`dask_oxigdal.placement.cache_directory` (the scheduler side).
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Callable, Hashable
from typing import Any

from dask_oxigdal import config as _config  # noqa: F401  (registers the defaults)
from dask_oxigdal._cache_store import COMPRESSIONS, DEFAULT_TENANT, WorkerCache
from dask_oxigdal._cache_worker import EXTENSION, WorkerBinding, evict_at_warning
from dask_oxigdal.isolation import TenantKey, current_tenant
from dask_oxigdal.placement.cache_keys import SharedKey, reported

__all__ = [
    "COMPRESSIONS",
    "EXTENSION",
    "SharedKey",
    "WorkerCache",
    "cached",
    "scoped_key",
    "worker_cache",
]

REPORT_HANDLER = "oxigdal_cache_report"
# kept for callers of the former single module
_WorkerBinding = WorkerBinding
_evict_at_warning = evict_at_warning

_LOCAL: list[WorkerCache] = []
_LOCAL_LOCK = threading.Lock()


def _binding(worker: Any) -> WorkerBinding:
    binding = worker.extensions.get(EXTENSION)
    if binding is None:
        with _LOCAL_LOCK:
            binding = worker.extensions.get(EXTENSION)
            if binding is None:
                binding = worker.extensions[EXTENSION] = WorkerBinding(worker)
    return binding


def _current_worker() -> Any:
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


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
        worker = _current_worker()
    if worker is None:
        with _LOCAL_LOCK:
            if not _LOCAL:
                _LOCAL.append(WorkerCache())
            return _LOCAL[0]
    return _binding(worker).cache


def _check_replicas(replicas: Any) -> int | None:
    if replicas is None:
        return None
    from dask_oxigdal.annotations import MAX_REPLICAS

    if (
        isinstance(replicas, bool)
        or not isinstance(replicas, numbers.Integral)
        or not 1 <= replicas <= MAX_REPLICAS
    ):
        raise ValueError(
            f"replicas={replicas!r} is not valid: expected an int from 1 to {MAX_REPLICAS} "
            "(workers that cache the entry)"
        )
    return int(replicas)


def cached(
    key: Hashable,
    loader: Callable[[], Any],
    *,
    nbytes: int | None = None,
    shared: bool = False,
    replicas: int | None = None,
) -> Any:
    """This worker's cached value for ``key``, another worker's, or ``loader()`` (then cached).

    Call it inside a task. Annotate the task with ``dox.annotate(locality=key)``
    so that the ``Locality`` policy runs it where ``key`` is cached.

    Parameters
    ----------
    key : hashable
        Cache key (for locality, peer fetches and copies a ``str`` such as
        ``"tile/3/4"``). Dask keys never change; put the source's version or
        ETag in ``key`` and an entry never needs invalidating.
    loader : callable
        Called with no argument on a miss that no other worker's cache can
        serve more cheaply; its result is stored.
    nbytes : int, optional
        Size of the value; defaults to ``dask.sizeof``.
    shared : bool, optional
        One entry for every tenant (charged to the tenants that use it in
        equal parts) instead of one per tenant. Only for data every tenant
        may read.
    replicas : int, optional
        Keep the entry cached on this many workers (in distinct zones / racks
        / hosts when known): after a miss here, other workers copy it. From 1
        to ``MAX_REPLICAS`` (32); ``str`` keys only.

    Returns
    -------
    object
        The value. A hit returns the same object every time (do not mutate it).
        Entries are per tenant: a task of another tenant that uses the same
        ``key`` gets its own entry (see :mod:`dask_oxigdal.isolation`), unless
        ``shared=True``.

    Raises
    ------
    TypeError
        If ``key`` is unhashable or ``loader`` is not callable.
    ValueError
        A bad ``nbytes``, ``shared`` or ``replicas``; the message names the
        value and the valid range.
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
    if not isinstance(shared, bool):
        raise ValueError(f"shared={shared!r} is not valid: expected True or False")
    replicas = _check_replicas(replicas)
    tenant = current_tenant()
    if shared:
        skey: Hashable = SharedKey(key)
    else:
        skey = key if tenant is None else TenantKey(tenant, key)
    worker = _current_worker()
    cache = worker_cache(worker)
    missed = cache.misses
    value = cache.get(skey, loader, nbytes, tenant=tenant or DEFAULT_TENANT)
    if replicas is not None and replicas > 1 and worker is not None and cache.misses != missed:
        wire = reported(skey)
        if wire is not None and skey in cache:
            _ask_for_copies(worker, wire, replicas)
    return value


def _ask_for_copies(worker: Any, wire: Any, replicas: int) -> None:
    async def ask() -> None:
        try:
            await worker.scheduler.oxigdal_cache_replicate(
                key=wire, n=replicas, worker=worker.address
            )
        except Exception:  # no SharedCache policy, or the scheduler is away
            pass

    worker.loop.add_callback(ask)


def scoped_key(key: Hashable, *, shared: bool = False) -> Hashable:
    """The key under which :func:`cached` stores ``key`` for the task running now.

    Parameters
    ----------
    key : hashable
        The key a task passes to :func:`cached`.
    shared : bool, optional
        As passed to :func:`cached`.

    Returns
    -------
    hashable
        ``SharedKey(key)`` when ``shared``; else ``key`` itself for the
        default tenant (and outside a task), or ``TenantKey(tenant, key)`` for
        the running task's tenant, e.g. to ask ``scoped_key(k) in worker_cache()``.
    """
    if shared:
        return SharedKey(key)
    tenant = current_tenant()
    return key if tenant is None else TenantKey(tenant, key)
