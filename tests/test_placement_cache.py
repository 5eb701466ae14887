"""The shared, tenant-fair ``dox.cached`` cache: fair eviction, peer fetches, copies."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from distributed import wait
from distributed.utils_test import gen_cluster

import dask_oxigdal as dox
from dask_oxigdal._cache_store import WorkerCache
from dask_oxigdal.annotations import MAX_REPLICAS
from dask_oxigdal.cache import EXTENSION, SharedKey, worker_cache
from dask_oxigdal.isolation import TenantKey
from dask_oxigdal.placement.cache_keys import from_reported, reported
from dask_oxigdal.scheduling.extension import register, status

KB = 1000


# ------------------------------------------------------------ the store alone
def _load(cache, key, tenant, size=100 * KB):
    return cache.get(key, lambda: b"x" * size, size, tenant=tenant)


def test_greedy_tenant_cannot_evict_a_tenant_within_its_budget():
    cache = WorkerCache(limit=1000 * KB, compression="none", weights={})
    for i in range(4):  # tenant a: 400 KB, within its half
        _load(cache, TenantKey("a", f"k{i}"), "a")
    for i in range(50):  # tenant b streams 5 MB through the cache
        _load(cache, TenantKey("b", f"k{i}"), "b")
        for j in range(4):
            _load(cache, TenantKey("a", f"k{j}"), "a")
    assert all(TenantKey("a", f"k{i}") in cache for i in range(4))
    stats = cache.tenant_stats()
    assert stats["a"]["misses"] == 4 and stats["a"]["hits"] == 200
    assert stats["b"]["charge"] <= 600 * KB  # b got the rest, not more
    assert cache.bytes <= cache.limit
    assert stats["a"]["budget"] == stats["b"]["budget"] == 500 * KB


def test_weights_split_the_budget_and_an_idle_cache_is_work_conserving():
    cache = WorkerCache(limit=900 * KB, compression="none", weights={"a": 2, "b": 1})
    for i in range(9):
        _load(cache, TenantKey("b", f"k{i}"), "b")
    assert len(cache) == 9  # alone, b may use the whole cache
    for i in range(9):
        _load(cache, TenantKey("a", f"k{i}"), "a")
    stats = cache.tenant_stats()
    assert stats["a"]["budget"] == 600 * KB and stats["b"]["budget"] == 300 * KB
    assert stats["a"]["charge"] == 600 * KB and stats["b"]["charge"] == 300 * KB


def test_a_shared_entry_is_charged_to_its_users_in_equal_parts():
    cache = WorkerCache(limit=1000 * KB, compression="none", weights={})
    key = SharedKey("tile/1")
    for tenant in ("a", "b", "c"):
        _load(cache, key, tenant, size=300 * KB)
    stats = cache.tenant_stats()
    assert {t: stats[t]["charge"] for t in "abc"} == dict.fromkeys("abc", 100 * KB)
    assert cache.misses == 1 and cache.hits == 2
    # b streams its own data: it stops paying for the shared tile, a and c keep it
    for i in range(20):
        _load(cache, TenantKey("b", f"own{i}"), "b", size=200 * KB)
    assert key in cache
    stats = cache.tenant_stats()
    assert stats["a"]["charge"] + stats["c"]["charge"] >= 300 * KB - 1


def test_no_tenant_below_its_isolated_hit_rate():
    """Overlapping working sets: shared hits >= isolated hits for every tenant."""
    rng = random.Random(7)
    limit, size = 1200 * KB, 100 * KB
    sets = {"a": range(0, 12), "b": range(6, 18), "c": range(12, 40)}  # c is greedy
    trace = [(t, rng.choice(list(sets[t]))) for t in rng.choices("aabbc", k=3000)]
    shared = WorkerCache(limit=limit, compression="none", weights={})
    isolated = {t: WorkerCache(limit=limit // 3, compression="none", weights={}) for t in sets}
    for tenant, k in trace:
        _load(shared, SharedKey(f"tile/{k}"), tenant, size)
        _load(isolated[tenant], f"tile/{k}", tenant, size)
    got = shared.tenant_stats()
    for tenant in sets:
        iso = isolated[tenant].hits / (isolated[tenant].hits + isolated[tenant].misses)
        mine = got[tenant]["hits"] / (got[tenant]["hits"] + got[tenant]["misses"])
        assert mine >= iso, (tenant, mine, iso)
    assert shared.hits > sum(c.hits for c in isolated.values())


def test_compression_still_pays_before_eviction():
    pytest.importorskip("lz4")
    cache = WorkerCache(limit=250 * KB, compression="lz4", weights={})
    for i in range(3):
        cache.get(f"z{i}", lambda: np.zeros(100 * KB, "u1"), 100 * KB, tenant="a")
    assert len(cache) == 3 and cache.compressions >= 1 and cache.evictions == 0
    assert cache.get("z0", lambda: None, tenant="a").sum() == 0


def test_wire_keys_round_trip():
    for key in ("k", TenantKey("t", "k"), SharedKey("k")):
        assert from_reported(reported(key)) == key
    assert reported(("tuple",)) is None and from_reported([1, 2]) is None


@pytest.mark.parametrize("bad", [0, MAX_REPLICAS + 1, 1.5, True, "2"])
def test_bad_cache_replicas_values_name_the_value_and_the_range(bad):
    with pytest.raises(ValueError) as info:
        dox.cached("k", lambda: 1, replicas=bad)
    assert f"replicas={bad!r}" in str(info.value)
    assert f"from 1 to {MAX_REPLICAS}" in str(info.value)
    with pytest.raises(ValueError, match="shared='yes'"):
        dox.cached("k", lambda: 1, shared="yes")


# ------------------------------------------------------- on a real cluster
LOADS = "oxigdal-test-loads"


def load_tile(key, seed):
    """A task: the cached tile ``key``; the loader counts its runs on the worker."""
    from distributed import get_worker

    worker = get_worker()

    def loader():
        counts = worker.__dict__.setdefault(LOADS, {})
        counts[key] = counts.get(key, 0) + 1
        rng = np.random.default_rng(seed)
        return rng.integers(0, 255, 200_000, dtype="u1")

    tile = dox.cached(key, loader)
    return tile.tobytes(), worker.address


async def _until(predicate, timeout=30.0, what="a condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, config={"oxigdal.cache.fetch": "always"})
async def test_cross_worker_fetch_returns_the_same_bytes(c, s, a, b):
    await register(c)
    first, where_a = await c.submit(load_tile, "tile/7", 1, workers=[a.address], pure=False)
    assert where_a == a.address
    locality = s.plugins["oxigdal"].get_policy("Locality")
    await _until(lambda: "tile/7" in locality.homes, what="the cache report")
    second, where_b = await c.submit(load_tile, "tile/7", 1, workers=[b.address], pure=False)
    assert where_b == b.address
    assert second == first  # the same bytes
    assert a.__dict__[LOADS] == {"tile/7": 1} and LOADS not in b.__dict__  # loaded once
    assert worker_cache(b).remote_hits == 1 and b.extensions[EXTENSION].cache.misses == 1
    assert a.extensions[EXTENSION].served == 1
    st = (await status(c))["policies"]["SharedCache"]
    assert st["lookups"] >= 1 and st["found"] == 1


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2)
async def test_auto_fetch_declines_when_reloading_is_cheaper(c, s, a, b):
    # the loader takes microseconds: sending 200 KB at Dask's estimated bandwidth costs more
    await register(c)
    first, _ = await c.submit(load_tile, "tile/8", 2, workers=[a.address], pure=False)
    locality = s.plugins["oxigdal"].get_policy("Locality")
    await _until(lambda: "tile/8" in locality.homes, what="the cache report")
    second, _ = await c.submit(load_tile, "tile/8", 2, workers=[b.address], pure=False)
    assert second == first
    assert b.__dict__[LOADS] == {"tile/8": 1} and a.extensions[EXTENSION].declined == 1


def greedy(tenant, i, size):
    return dox.cached(f"{tenant}/{i}", lambda: np.ones(size, "u1"), nbytes=size).nbytes


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    config={"oxigdal.cache.limit": 1_000_000, "oxigdal.cache.compression": "none"},
)
async def test_budgets_hold_under_pressure_from_a_greedy_tenant(c, s, a):
    await register(c, tenants={"small": 1, "greedy": 1})
    with dox.annotate(tenant="small"):
        await wait(c.map(greedy, ["small"] * 4, range(4), size=100_000, pure=False))
    for round_ in range(5):
        with dox.annotate(tenant="greedy"):
            await wait(
                c.map(greedy, ["greedy"] * 10, range(round_ * 10, round_ * 10 + 10), size=100_000)
            )
        with dox.annotate(tenant="small"):
            await wait(c.map(greedy, ["small"] * 4, range(4), size=100_000, pure=False))
    cache = worker_cache(a)
    stats = cache.tenant_stats()
    assert stats["small"]["misses"] == 4  # never evicted: every later read hit
    assert stats["small"]["hits"] == 20
    assert stats["greedy"]["charge"] <= 600_000 and cache.bytes <= cache.limit
    assert stats["greedy"]["budget"] == stats["small"]["budget"] == 500_000


def cache_with_copies(key):
    from distributed import get_worker

    dox.cached(key, lambda: np.arange(50_000), replicas=2)
    return get_worker().address


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 3)
async def test_cached_replicas_are_copied_to_another_worker(c, s, a, b, w3):
    await register(c)
    await c.submit(cache_with_copies, "copy/1", workers=[a.address])
    locality = s.plugins["oxigdal"].get_policy("Locality")
    await _until(lambda: len(locality.homes.get("copy/1", ())) == 2, what="a second copy")
    holders = locality.homes["copy/1"]
    other = next(w for w in (b, w3) if w.address in holders)
    assert np.array_equal(worker_cache(other)._data["copy/1"].value, np.arange(50_000))
    st = (await status(c))["policies"]["SharedCache"]
    assert st["copied_keys"] == 1 and st["pulls"] >= 1


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2)
async def test_guard_shared_cache_private_attributes(c, s, a, b):
    """What _cache_worker.py / placement/cache_directory.py rely on (docs/architecture.md)."""
    import pickle

    from distributed.utils import sync

    from dask_oxigdal._cache_worker import GET_HANDLER, pull_on_worker

    assert callable(sync)
    await register(c)
    # a custom worker handler answers an rpc; Worker.rpc is an async context manager
    a.handlers["oxigdal_guard"] = lambda x=None: {"echo": x}
    async with b.rpc(a.address) as peer:
        assert await peer.oxigdal_guard(x=3) == {"echo": 3}
    assert isinstance(a.bandwidth, (int, float)) and a.bandwidth > 0
    assert a.status.name == "running"
    # Worker.run through the scheduler's rpc: stdlib-pickled function and args,
    # the worker passed as dask_worker, a coroutine awaited
    assert GET_HANDLER not in b.handlers
    out = await s.rpc(b.address).run(
        function=pickle.dumps(pull_on_worker), args=pickle.dumps(("nothing", a.address))
    )
    assert out["status"] == "OK"  # the result ("missing") comes back serialized
    assert GET_HANDLER in b.handlers  # the cache of b was created


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 3)
async def test_cached_copies_are_made_again_after_a_worker_leaves(c, s, a, b, w3):
    await register(c)
    await c.submit(cache_with_copies, "copy/2", workers=[a.address])
    locality = s.plugins["oxigdal"].get_policy("Locality")
    await _until(lambda: len(locality.homes.get("copy/2", ())) == 2, what="a second copy")
    gone = next(addr for addr in locality.homes["copy/2"] if addr != a.address)
    await s.remove_worker(gone, stimulus_id="test-leave", close=True)
    await _until(
        lambda: len(set(locality.homes.get("copy/2", ())) - {gone}) == 2, what="a new copy"
    )
    assert set(locality.homes["copy/2"]) == {w.address for w in (a, b, w3)} - {gone}


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_peer_fetches_back_off_without_the_extension(c, s, a):
    def miss(key):
        return dox.cached(key, lambda: [key])[0]

    assert await c.submit(miss, "w/1", pure=False) == "w/1"  # no register: no directory
    binding = a.extensions[EXTENSION]
    assert binding.where_unsupported_until > 0  # asked once, then waits 30 s
    assert await c.submit(miss, "w/2", pure=False) == "w/2"
    assert s.status.name == "running"
