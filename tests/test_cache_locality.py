"""dox.cached (per-worker LRU) and the Locality policy (delay scheduling) on real clusters.

The last tests guard the ``distributed`` internals both rely on.
"""

from __future__ import annotations

# Import dask_oxigdal (which registers the oxigdal.* config defaults) before
# distributed.utils_test: gen_cluster restores the dask config to a snapshot
# taken when utils_test is first imported, which would otherwise lack them.
import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import threading
import time

import dask
import numpy as np
import pytest
from distributed import Event, get_worker
from distributed.utils_test import gen_cluster

import dask_oxigdal as dox
from dask_oxigdal.cache import EXTENSION, WorkerCache, scoped_key, worker_cache
from dask_oxigdal.scheduling.extension import register, status

LOCALITY = "dask_oxigdal.scheduling.locality.Locality"


# ------------------------------------------------------------------ the cache itself
def test_lru_byte_limit_and_counters():
    cache = WorkerCache(limit=1000, compression="none")
    loads = []

    def loader(i):
        def load():
            loads.append(i)
            return i

        return load

    for i in range(4):
        assert cache.get(f"k{i}", loader(i), nbytes=300) == i
    # 4 x 300 > 1000: the coldest (k0) was evicted
    assert cache.keys() == ["k1", "k2", "k3"]
    assert cache.get("k1", loader(99), nbytes=300) == 1  # hit, becomes hottest
    cache.get("k4", loader(4), nbytes=300)  # evicts k2, the coldest now
    assert cache.keys() == ["k3", "k1", "k4"]
    assert loads == [0, 1, 2, 3, 4]
    s = cache.stats()
    assert (s["hits"], s["misses"], s["evictions"], s["entries"], s["bytes"]) == (1, 5, 2, 3, 900)
    # larger than the whole cache: returned, not stored
    assert cache.get("big", lambda: "x", nbytes=5000) == "x"
    assert "big" not in cache and cache.stats()["too_large"] == 1


def test_cold_entries_are_lz4_compressed_before_eviction():
    import lz4.frame  # noqa: F401  (the compression must be available)

    cache = WorkerCache(limit=3_000_000, compression="lz4")
    arrays = {i: np.full(100_000, i, dtype=np.float64) for i in range(5)}  # 800 kB each
    for i, a in arrays.items():
        cache.get(i, lambda a=a: a)
    s = cache.stats()
    assert s["entries"] == 5 and s["evictions"] == 0  # compressed instead of evicted
    assert s["compressions"] >= 2 and s["bytes"] <= 3_000_000
    for i, a in arrays.items():  # hits decompress transparently
        np.testing.assert_array_equal(cache.get(i, lambda: None), a)
    assert cache.stats()["hits"] == 5


@gen_cluster(client=True, nthreads=[], timeout=60)
async def test_bad_locality_settings_fail_registration(c, s):
    for bad, match in (
        ({"wait": -1}, r"oxigdal.locality.wait=-1 is not a duration >= 0"),
        ({"wait": "soon"}, r"oxigdal.locality.wait='soon' is not a duration >= 0"),
        ({"prefetch": -1}, "prefetch"),
    ):
        with pytest.raises(ValueError, match=match):
            await register(c, policies=[{"class": LOCALITY, **bad}])
    with pytest.raises(Exception, match="list Locality after Quota"):
        await register(
            c,
            tenants={"a": {"weight": 1, "max-tasks": 1}},
            policies=[{"class": LOCALITY}, {"class": "dask_oxigdal.scheduling.quota.Quota"}],
        )


def test_bad_cache_settings():
    with pytest.raises(ValueError, match=r"oxigdal.cache.compression='zstd'.*auto"):
        WorkerCache(limit=10, compression="zstd")
    with pytest.raises(ValueError, match=r"oxigdal.cache.limit='lots'"):
        WorkerCache(limit="lots")
    with pytest.raises(ValueError, match="between 0% and 100%"):
        WorkerCache(limit="150%", memory_limit=1000)
    assert WorkerCache(limit="10%", memory_limit=1000).limit == 100
    assert WorkerCache(limit="2KiB").limit == 2048
    with pytest.raises(TypeError, match="hashable"):
        dox.cached(["a"], lambda: 1)
    with pytest.raises(TypeError, match="callable"):
        dox.cached("a", 1)
    for bad in ("x", -1, 2.5, True):
        with pytest.raises(ValueError, match=rf"nbytes must be an integer >= 0.*got {bad!r}"):
            dox.cached("a", lambda: 1, nbytes=bad)


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    config={"oxigdal.cache.evict-at": 0.7, "distributed.worker.memory.target": 0.6},
    timeout=60,
)
async def test_evict_at_above_dasks_memory_target_is_reported(c, s, a):
    await c.submit(lambda: dox.cached("k", lambda: 1), pure=False)
    binding = a.extensions[EXTENSION]
    assert binding.evict_at_warning == (
        "oxigdal.cache.evict-at=0.7 is not below distributed.worker.memory.target=0.6: "
        "Dask may spill task results to disk before the cache gives memory back; "
        "use a smaller evict-at"
    )


def test_evict_at_below_the_thresholds_is_fine():
    from dask_oxigdal.cache import _evict_at_warning

    with dask.config.set(
        {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": 0.7}
    ):
        assert _evict_at_warning(0.5) is None
        assert "distributed.worker.memory.spill=0.7" in _evict_at_warning(0.7)
    with dask.config.set(
        {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False}
    ):
        assert _evict_at_warning(0.99) is None


def test_concurrent_misses_load_once():
    cache = WorkerCache(limit=10_000, compression="none")
    gate = threading.Event()
    calls = []

    def loader():
        calls.append(1)
        gate.wait(30)
        return "v"

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get("k", loader, nbytes=1)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join(30)
    assert results == ["v"] * 4 and calls == [1]
    assert (cache.stats()["misses"], cache.stats()["hits"]) == (1, 3)

    # a failing loader lets the next caller load
    def boom():
        raise RuntimeError("read failed")

    with pytest.raises(RuntimeError, match="read failed"):
        cache.get("bad", boom)
    assert cache.get("bad", lambda: "ok", nbytes=1) == "ok"


def test_cached_outside_a_worker_uses_a_process_cache():
    calls = []
    assert dox.cached(("local", 1), lambda: calls.append(1) or 42) == 42
    assert dox.cached(("local", 1), lambda: calls.append(1) or 0) == 42
    assert calls == [1]


# ------------------------------------------------------------------ helpers
def _tile_task(tile, loads_event=None):
    def load():
        return np.full(1000, tile, dtype=np.float64)

    held = scoped_key(tile_key(tile)) in worker_cache()  # this tenant's entry
    value = dox.cached(tile_key(tile), load)
    return get_worker().address, held, float(value[0])


def tile_key(tile):
    return f"tile/{tile}"


async def _wait_for(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def _policy(s):
    return s.plugins["oxigdal"].get_policy("Locality")


async def _submit_pass(c, tiles, **annotations):
    futures = []
    for t in tiles:
        with dox.annotate(locality=tile_key(t), **annotations):
            futures.append(c.submit(_tile_task, t, pure=False))
    return await c.gather(futures)


# ------------------------------------------------------------------ locality
@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 3, timeout=120)
async def test_second_pass_runs_where_tiles_are_cached(c, s, *workers):
    await register(c, policies=[{"class": LOCALITY, "wait": "1h"}])
    tiles = range(12)
    first = await _submit_pass(c, tiles)
    assert not any(held for _, held, _ in first)
    policy = _policy(s)
    await _wait_for(lambda: len(policy.homes) == 12)
    home = {tile_key(t): next(iter(policy.homes[tile_key(t)])) for t in tiles}
    assert len(set(home.values())) == 3  # spread over every worker
    for _ in range(2):
        again = await _submit_pass(c, tiles)
        for t, (addr, held, value) in zip(tiles, again, strict=True):
            assert value == t
            assert held, f"tile {t} ran on {addr}, not where it was cached ({home[tile_key(t)]})"
            assert addr == home[tile_key(t)]
    await _wait_for(lambda: sum(w["hits"] for w in policy.cache_stats.values()) == 24)
    st = (await status(c))["policies"]["Locality"]
    assert st["hits"] >= 24 and st["keys"] == 12
    assert set(st["cache"]) == {w.address for w in workers}
    for addr, stats in st["cache"].items():
        assert stats["misses"] == sum(1 for a, _, _ in first if a == addr)
        assert stats["evictions"] == 0 and stats["entries"] == stats["misses"]


def _busy(tile, event_name):
    Event(event_name).wait(60)
    return _tile_task(tile)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=120)
async def test_delay_scheduling_waits_then_moves_and_replicates(c, s, a, b):
    await register(c, policies=[{"class": LOCALITY, "wait": "300ms", "prefetch": 0}])
    policy = _policy(s)
    with dox.annotate(locality="hot"):
        first = await c.submit(lambda: dox.cached("hot", lambda: 1) + 0, pure=False)
    assert first == 1
    await _wait_for(lambda: "hot" in policy.homes)
    (home,) = policy.homes["hot"]
    other = b.address if home == a.address else a.address
    # occupy the home's only thread: hot tasks wait, then go to the other worker
    blocker = c.submit(_busy, 0, "release", workers=[home], pure=False)
    await _wait_for(
        lambda: s.tasks.get(blocker.key) is not None and s.tasks[blocker.key].state == "processing"
    )
    with dox.annotate(locality="hot"):
        moved = c.submit(lambda: (get_worker().address, dox.cached("hot", lambda: 2)), pure=False)
    addr, value = await moved
    assert addr == other and value == 2  # loaded there: the key is replicated
    await Event("release").set()
    await blocker
    st = (await status(c))["policies"]["Locality"]
    assert st["waits"] >= 1 and st["moves"] >= 1
    await _wait_for(lambda: policy.homes.get("hot") == {a.address, b.address})


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=120)
async def test_long_wait_is_bounded_by_a_deadline(c, s, a, b):
    await register(c, policies=[{"class": LOCALITY, "wait": "1h", "prefetch": 0}])
    policy = _policy(s)
    with dox.annotate(locality="k"):
        await c.submit(lambda: dox.cached("k", lambda: 1), pure=False)
    await _wait_for(lambda: "k" in policy.homes)
    (home,) = policy.homes["k"]
    blocker = c.submit(_busy, 0, "go", workers=[home], pure=False)
    await _wait_for(
        lambda: s.tasks.get(blocker.key) is not None and s.tasks[blocker.key].state == "processing"
    )
    # the 1h locality wait would hold it; a 4s deadline caps the wait at 1s
    with dox.annotate(locality="k", deadline="4s"):
        addr = await c.submit(lambda: get_worker().address, pure=False)
    assert addr != home
    await Event("go").set()
    await blocker


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=120)
async def test_locality_keeps_fair_share_and_quota(c, s, a, b):
    """Locality composes with the default FairShare + Quota: limits still hold."""
    await register(
        c,
        tenants={"a": {"weight": 1, "max-tasks": 1}, "b": 1},
        policies=[
            {"class": "dask_oxigdal.scheduling.fairshare.FairShare"},
            {"class": "dask_oxigdal.scheduling.quota.Quota"},
            {"class": LOCALITY, "wait": "1h"},
        ],
    )
    futures = []
    for t in range(6):
        for tenant in ("a", "b"):
            with dox.annotate(locality=tile_key(t), tenant=tenant):
                futures.append(c.submit(_tile_task, t, pure=False))
    results = await c.gather(futures)
    assert [r[2] for r in results] == [float(t) for t in range(6) for _ in "ab"]
    st = await status(c)
    assert st["policies"]["Quota"]["max_admitted"]["a"] == 1
    assert st["policies"]["Locality"]["enabled"] and not st["disabled"]


def _where(tag):
    return get_worker().address, tag


# saturation 1.0: the blocker fills a's only slot, so no b task can be queued behind it
# on a (with 1.1 a 1-thread worker takes 2, and a tie could put one there)
@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)] * 2,
    timeout=120,
    config={"distributed.scheduler.worker-saturation": 1.0},
)
async def test_a_locality_wait_does_not_hold_another_tenants_thread(c, s, a, b):
    """Tenant a's tasks wait for their busy home; tenant b runs on the free thread meanwhile."""
    await register(
        c,
        tenants={"a": 1, "b": 1},
        policies=[
            {"class": "dask_oxigdal.scheduling.fairshare.FairShare"},
            {"class": LOCALITY, "wait": "1h", "prefetch": 0},
        ],
    )
    policy = _policy(s)
    tiles = range(4)
    with dox.annotate(tenant="a"):
        warm = [
            c.submit(_tile_task, t, workers=[a.address], pure=False, key=f"warm-{t}") for t in tiles
        ]
    await c.gather(warm)
    # tenant a's entries are its own: the scheduler knows them as (tenant, key)
    await _wait_for(lambda: all(policy.homes.get(("a", tile_key(t))) == {a.address} for t in tiles))
    # a's home is busy: its locality tasks wait there (up to 1 h) ...
    blocker = c.submit(_busy, 99, "free-a", workers=[a.address], pure=False)
    await _wait_for(
        lambda: s.tasks.get(blocker.key) is not None and s.tasks[blocker.key].state == "processing"
    )
    a_tasks = []
    for t in tiles:
        with dox.annotate(tenant="a", locality=tile_key(t)):
            a_tasks.append(c.submit(_tile_task, t, pure=False, key=f"a-{t}"))
    await _wait_for(lambda: policy.snapshot()["held"] == len(tiles))
    # ... and meanwhile tenant b gets the other worker's thread: all of b's work
    # finishes while every one of a's tasks is still waiting for its home
    with dox.annotate(tenant="b"):
        b_tasks = c.map(_where, range(6), pure=False, key=[f"b-{i}" for i in range(6)])
    b_results = await c.gather(b_tasks)
    assert {addr for addr, _ in b_results} == {b.address}
    assert all(s.tasks[f.key].state == "no-worker" for f in a_tasks)
    # once the home is free, a's tasks run there, from the cache
    await Event("free-a").set()
    for addr, held, value in await c.gather(a_tasks):
        assert addr == a.address and held, (addr, held, value)
    await blocker


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    worker_kwargs={"memory_limit": "4GiB"},
    config={"oxigdal.cache.evict-at": 0.001},
    timeout=120,
)
async def test_cache_gives_memory_back_before_dask_spills(c, s, a):
    await register(c, policies=[{"class": LOCALITY}])

    def fill():
        for i in range(5):
            dox.cached(("blob", i), lambda: np.ones(10_000))
        return len(worker_cache())

    assert await c.submit(fill, pure=False) >= 1
    # process memory is far above 0.1% of 4 GiB: the worker's monitor empties the cache
    cache = a.extensions[EXTENSION].cache
    await _wait_for(lambda: len(cache) == 0)
    assert cache.stats()["evictions"] == 5
    policy = _policy(s)
    await _wait_for(lambda: policy.cache_stats.get(a.address, {}).get("evictions") == 5)
    assert not policy.homes


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=120)
async def test_cache_without_the_extension_still_works(c, s, a):
    def twice():
        first = dox.cached("x", lambda: [1])
        return first is dox.cached("x", lambda: [2])

    assert await c.submit(twice, pure=False)
    binding = a.extensions[EXTENSION]
    await _wait_for(lambda: binding.report_errors >= 1)  # no handler: reported, not fatal
    assert s.status.name == "running"


def _where_with(dep, key):
    dox.cached(key, lambda: len(dep))
    return get_worker().address


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=120)
async def test_new_key_follows_its_dependencies(c, s, a, b):
    await register(c, policies=[{"class": LOCALITY, "wait": "1h"}])
    for holder in (a, b, a):
        dep = c.submit(np.ones, 200_000, workers=[holder.address], pure=False)
        await dep
        with dox.annotate(locality=f"new/{dep.key}"):
            addr = await c.submit(_where_with, dep, f"new/{dep.key}", pure=False)
        assert addr == holder.address
        # the cached key (not the dependency) decides once the key has a home
        other = b if holder is a else a
        dep2 = c.submit(np.ones, 200_000, workers=[other.address], pure=False)
        await dep2
        with dox.annotate(locality=f"new/{dep.key}"):
            addr = await c.submit(_where_with, dep2, f"new/{dep.key}", pure=False)
        assert addr == holder.address


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=120)
async def test_removed_worker_is_no_longer_a_home(c, s, a, b):
    await register(c, policies=[{"class": LOCALITY, "wait": "1h"}])
    policy = _policy(s)
    await _submit_pass(c, range(4))
    await _wait_for(lambda: len(policy.homes) == 4)
    await s.remove_worker(a.address, stimulus_id="test")
    assert all(a.address not in h for h in policy.homes.values())
    again = await _submit_pass(c, range(4))  # homes gone with a: never hangs
    assert {addr for addr, _, _ in again} == {b.address}


# ------------------------------------------------------------------ guards
@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=120)
async def test_guard_worker_internals(c, s, a):
    """Worker attributes the cache relies on."""
    assert isinstance(a.extensions, dict)
    assert isinstance(a.periodic_callbacks, dict)
    assert isinstance(a.memory_manager.memory_limit, int | type(None))
    assert isinstance(a.monitor.get_process_memory(), int)
    assert dask.config.get("distributed.worker.memory.monitor-interval")
    assert dask.config.get("distributed.worker.memory.target") > 0
    # worker.scheduler is an rpc: any handler name becomes a coroutine method, and an
    # unknown handler answers None (logged on the scheduler) instead of raising
    assert await a.scheduler.oxigdal_no_such_handler() is None


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)], timeout=120)
async def test_guard_scheduler_internals_for_locality(c, s, a):
    """Scheduler attributes the Locality policy relies on."""
    assert isinstance(s.handlers, dict)
    assert {ws.address for ws in s.running} == {a.address}
    (ws,) = s.running
    assert ws.nthreads == 2 and isinstance(ws.processing, set | dict)
    # dependencies, who_has (WorkerStates) and nbytes: Dask's own placement inputs
    x = c.submit(np.ones, 1000, pure=False)
    y = c.submit(len, x, pure=False)
    await y
    ts = s.tasks[y.key]
    (dts,) = ts.dependencies
    assert {w.address for w in dts.who_has} == {a.address} and dts.nbytes >= 8000
    ev = Event("guard")
    fut = c.submit(_busy, 1, "guard", pure=False)
    await _wait_for(lambda: len(ws.processing) == 1)
    await ev.set()
    await fut
