"""Tenant isolation on real clusters (issue 15, item 4): checkpoints, ``dox.cached``
entries and gang names are per tenant; one tenant's failures alone quarantine no
shared worker; per-prefix state and cache reports are bounded, with counters."""

from __future__ import annotations

import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import json
import time

from dask.utils import key_split
from distributed import Event
from distributed.core import Status
from distributed.utils_test import gen_cluster

import dask_oxigdal as dox
from dask_oxigdal.annotations import annotate
from dask_oxigdal.cache import worker_cache
from dask_oxigdal.fault.checkpoint import CheckpointStore
from dask_oxigdal.isolation import TENANT_ANNOTATION, TenantKey
from dask_oxigdal.monitoring.http import state
from dask_oxigdal.monitoring.metrics import metric_families
from dask_oxigdal.scheduling.bounded import LIVE_STATES, prefix_is_live
from dask_oxigdal.scheduling.extension import NAME, register, status

TWO = [("127.0.0.1", 1), ("127.0.0.1", 1)]
TENANTS = {"team-a": 1, "team-b": 1}
KEY = "ndvi-tile-7"


async def _until(predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def value_of(v):
    return v


# --------------------------------------------------------------- guard test
def _seen_by_worker():
    from distributed import get_worker

    w = get_worker()
    key = w.get_current_task()
    return key, dict(w.state.tasks[key].annotations or {})


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_guard_isolation_internals(c, s, a):
    """The distributed internals tenant namespaces rely on (docs/architecture.md)."""
    await register(c, tenants=TENANTS)
    # the scheduler's TaskState.annotations, rewritten in update_graph, reach the worker
    with annotate(tenant="no-such-team"):  # resolved to the default tenant: no annotation
        key, seen = await c.submit(_seen_by_worker, pure=False)
    assert TENANT_ANNOTATION not in seen and key.startswith("_seen_by_worker")
    with annotate(tenant="team-b"):
        _, seen = await c.submit(_seen_by_worker, pure=False)
    assert seen[TENANT_ANNOTATION] == "team-b"
    # TaskPrefix.states counts the live tasks of a prefix by state
    tp = s.task_prefixes[key_split(key)]
    assert isinstance(tp.states, dict) and set(LIVE_STATES) <= set(tp.states)
    assert not prefix_is_live(s, key_split(key)) and not prefix_is_live(s, "nope")


# ---------------------------------------------------------------- checkpoints
async def _checkpointed(c, s, tenant, value):
    """Submit KEY (checkpoint=True) as ``tenant``, return its value, wait until forgotten."""
    kw = {} if tenant is None else {"tenant": tenant}
    with annotate(checkpoint=True, **kw):
        fut = c.submit(value_of, value, key=KEY)
    out = await fut
    del fut
    await _until(lambda: KEY not in s.tasks, f"{KEY} forgotten")
    return out


@gen_cluster(client=True, nthreads=TWO, timeout=120)
async def test_tenants_neither_read_nor_overwrite_each_others_checkpoints(c, s, a, b, tmp_path):
    store = str(tmp_path / "store")
    policy = {"class": "dask_oxigdal.fault.checkpoint.Checkpoint", "store": store}
    await register(c, tenants=TENANTS, policies=[policy])
    assert await _checkpointed(c, s, "team-a", "A") == "A"
    # team-b uses the same key: it computes and saves its own value, it does not read A
    assert await _checkpointed(c, s, "team-b", "B") == "B"
    snap = (await status(c))["policies"]["Checkpoint"]
    assert snap["saved"] == 2 and snap["loaded"] == 0
    # each tenant reads its own checkpoint back (the new value is never computed)
    assert await _checkpointed(c, s, "team-a", "A-recomputed") == "A"
    assert await _checkpointed(c, s, "team-b", "B-recomputed") == "B"
    snap = (await status(c))["policies"]["Checkpoint"]
    assert snap["saved"] == 2 and snap["loaded"] == 2 and snap["corrupt"] == 0
    st = CheckpointStore(store)
    assert st.names() == {st.filename(KEY, "team-a"), st.filename(KEY, "team-b")}
    assert st.load(KEY, "team-a") == "A" and st.load(KEY, "team-b") == "B"
    # the default tenant (no annotation) keeps the file name it always had
    assert await _checkpointed(c, s, None, "D") == "D"
    assert st.filename(KEY) in st.names() and st.load(KEY) == "D"
    assert await _checkpointed(c, s, None, "D-recomputed") == "D"
    assert len({st.filename(KEY), st.filename(KEY, "team-a"), st.filename(KEY, "team-b")}) == 3


def test_checkpoint_file_names_of_tenants_cannot_collide():
    # the tenant form is not UTF-8: no key of the default tenant hashes to it
    names = {
        CheckpointStore.filename("team-a\xffk"),
        CheckpointStore.filename("k", "team-a"),
        CheckpointStore.filename("a\xffk", "team"),
        CheckpointStore.filename("k", "team-b"),
        CheckpointStore.filename("k"),
    }
    assert len(names) == 5


# --------------------------------------------------------------- dox.cached
def cached_value(key, value):
    return dox.cached(key, lambda: value)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)], timeout=120)
async def test_tenants_neither_read_nor_overwrite_each_others_cache_entries(c, s, a):
    await register(c, tenants=TENANTS)

    async def run(tenant, value):
        kw = {} if tenant is None else {"tenant": tenant}
        with annotate(**kw):
            return await c.submit(cached_value, KEY, value, pure=False)

    assert await run("team-a", "A") == "A"
    assert await run("team-b", "B") == "B"  # a miss: team-a's entry is not team-b's
    assert await run("team-a", "A-reloaded") == "A"  # a hit on its own entry
    assert await run("team-b", "B-reloaded") == "B"
    # an unconfigured tenant name is accounted to the default tenant: its namespace
    assert await run(None, "D") == "D"
    assert await run("no-such-team", "D-reloaded") == "D"
    # the worker's cache: the default tenant's key as it always was, one entry per tenant
    assert set(worker_cache(a).keys()) == {
        KEY,
        TenantKey("team-a", KEY),
        TenantKey("team-b", KEY),
    }
    assert ("team-a", KEY) not in worker_cache(a)  # a plain tuple is not a tenant's key
    # the scheduler knows each tenant's entry apart (for locality=KEY of that tenant)
    loc = s.plugins[NAME].get_policy("Locality")
    await _until(lambda: len(loc.homes) == 3, "the cache reports")
    assert set(loc.homes) == {KEY, ("team-a", KEY), ("team-b", KEY)}


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)], timeout=120)
async def test_locality_of_a_tenant_follows_its_own_entries(c, s, a):
    await register(c, tenants=TENANTS)
    with annotate(tenant="team-a", locality=KEY):
        assert await c.submit(cached_value, KEY, "A", pure=False) == "A"
    loc = s.plugins[NAME].get_policy("Locality")
    await _until(lambda: ("team-a", KEY) in loc.homes, "team-a's cache report")
    with annotate(tenant="team-a", locality=KEY):
        assert await c.submit(cached_value, KEY, "A2", pure=False) == "A"
    assert loc.hits >= 1


@gen_cluster(client=True, nthreads=TWO, timeout=120)
async def test_cache_report_is_bounded_per_worker_and_tenant(c, s, a, b):
    locality = {"class": "dask_oxigdal.scheduling.locality.Locality", "max_keys": 50}
    await register(c, tenants=TENANTS, policies=[locality])
    # any peer that can call the handler: 5,000 keys and forged statistics
    ok = await c.scheduler.oxigdal_cache_report(
        worker=a.address,
        added=[f"k{i}" for i in range(5000)] + [["team-a", f"k{i}"] for i in range(60)],
        stats={"hits": 7, "misses": "x" * 1000, "forged": 1, "bytes": True},
    )
    assert ok == "ok"
    loc = s.plugins[NAME].get_policy("Locality")
    assert len(loc.worker_keys[a.address]) == 100  # 50 default + 50 team-a
    assert loc.report_keys_dropped == 4950 + 10
    assert loc.cache_stats[a.address] == {"hits": 7}
    # malformed keys and lists are ignored, not stored
    await c.scheduler.oxigdal_cache_report(
        worker=b.address, added=[1, ["a", "b", "c"], {"x": 1}], removed="nope", stats=[1]
    )
    assert not loc.worker_keys[b.address]
    snap = (await status(c))["policies"]["Locality"]
    assert snap["report_keys_dropped"] == 4960 and snap["max_keys"] == 50
    # removing keys makes room again
    await c.scheduler.oxigdal_cache_report(worker=a.address, removed=["k0", "k1"])
    await c.scheduler.oxigdal_cache_report(worker=a.address, added=["new-1", "new-2", "new-3"])
    assert "new-1" in loc.worker_keys[a.address] and "new-3" not in loc.worker_keys[a.address]


# --------------------------------------------------------------------- gangs
async def gang_member(event_name):
    from distributed import Event, get_client

    await Event(event_name, client=get_client()).wait()
    return event_name


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2), ("127.0.0.1", 2)], timeout=120)
async def test_a_gang_name_used_by_another_tenant_is_a_separate_gang(c, s, a, b):
    gang = {"class": "dask_oxigdal.scheduling.gang.Gang"}
    await register(c, tenants=TENANTS, policies=[gang])
    go = Event("go-gangs")
    with annotate(tenant="team-b", gang="tiles-7"):
        squat = c.map(gang_member, ["go-gangs"] * 2, pure=False)  # the name, live first
    policy = s.plugins[NAME].get_policy("Gang")
    await _until(lambda: policy.started == 1, "team-b's gang to start")
    with annotate(tenant="team-a", gang="tiles-7"):
        mine = c.map(gang_member, ["go-gangs"] * 2, pure=False)
    await _until(lambda: policy.started == 2, "team-a's gang to start too")
    snap = (await status(c))["policies"]["Gang"]
    assert set(snap["gangs"]) == {"team-a/tiles-7", "team-b/tiles-7"}
    assert {g["tenant"] for g in snap["gangs"].values()} == {"team-a", "team-b"}
    assert snap["refused"] == 0 and snap["failed"] == 0
    await go.set()
    assert await c.gather(mine) == ["go-gangs"] * 2
    assert await c.gather(squat) == ["go-gangs"] * 2
    snap = (await status(c))["policies"]["Gang"]
    assert snap["completed"] == 2 and snap["refused"] == 0
    assert snap["started_by_tenant"] == {"team-a": 1, "team-b": 1}


# ----------------------------------------------------------------- quarantine
def fail(x):
    raise RuntimeError(f"bad input {x}")


def quarantine_policy(**kwargs):
    return {
        "class": "dask_oxigdal.fault.quarantine.Quarantine",
        "heartbeat-timeout": 0,
        **kwargs,
    }


async def _fail_on(c, worker, tenant, n, prefix):
    with annotate(tenant=tenant):
        futs = [
            c.submit(fail, i, key=f"{prefix}-{i}", workers=[worker], allow_other_workers=False)
            for i in range(n)
        ]
    for f in futs:
        try:
            await f
        except RuntimeError:
            pass
        else:  # pragma: no cover - the task must fail
            raise AssertionError("the task did not fail")


@gen_cluster(client=True, nthreads=TWO, timeout=120)
async def test_one_tenants_failures_alone_do_not_quarantine_a_shared_worker(c, s, a, b):
    await register(c, tenants=TENANTS, policies=[quarantine_policy(failures=3)])
    q = s.plugins[NAME].get_policy("Quarantine")
    # team-b uses worker a
    with annotate(tenant="team-b"):
        assert await c.submit(value_of, 1, workers=[a.address], pure=False) == 1
    # team-a fails 5 tasks there: one tenant's evidence, on a worker team-b uses
    await _fail_on(c, a.address, "team-a", 5, "only-a")
    assert q.quarantined == [] and s.workers[a.address].status == Status.running
    assert q.one_tenant_refusals >= 3
    events = [e for _, e in await c.get_events("oxigdal") if e.get("kind", "").startswith("quar")]
    assert [e["kind"] for e in events] == ["quarantine-one-tenant"]  # once per window
    assert events[0]["worker"] == a.address and list(events[0]["tenants"]) == ["team-a"]
    snap = (await status(c))["policies"]["Quarantine"]
    assert snap["one_tenant_refusals"] == q.one_tenant_refusals and snap["quarantined"] == []
    # a second tenant's failures complete the evidence: the worker is quarantined
    await _fail_on(c, a.address, "team-b", 1, "also-b")
    await _until(lambda: q.quarantined == [a.address], "worker a quarantined")
    assert "2 tenants" in q.breakers[a.address].reason


@gen_cluster(client=True, nthreads=TWO, timeout=120)
async def test_a_worker_only_one_tenant_uses_is_quarantined_on_its_failures(c, s, a, b):
    # team-b runs elsewhere (worker b): worker a is team-a's alone, today's rule applies
    await register(c, tenants=TENANTS, policies=[quarantine_policy(failures=3)])
    q = s.plugins[NAME].get_policy("Quarantine")
    with annotate(tenant="team-b"):
        assert await c.submit(value_of, 1, workers=[b.address], pure=False) == 1
    await _fail_on(c, a.address, "team-a", 3, "only-a")
    await _until(lambda: q.quarantined == [a.address], "worker a quarantined")
    assert q.one_tenant_refusals == 0


@gen_cluster(client=True, nthreads=TWO, timeout=120)
async def test_a_silent_shared_worker_is_still_quarantined(c, s, a, b):
    await register(
        c, tenants=TENANTS, policies=[quarantine_policy(failures=3, **{"heartbeat-timeout": "3s"})]
    )
    q = s.plugins[NAME].get_policy("Quarantine")
    for tenant in TENANTS:
        with annotate(tenant=tenant):
            assert await c.submit(value_of, 1, workers=[a.address], pure=False) == 1
    # the worker's own health needs no tenant: its heartbeats stop
    a.periodic_callbacks["heartbeat"].stop()
    a.periodic_callbacks["keep-alive"].stop()
    try:
        await _until(lambda: q.quarantined == [a.address], "silent worker quarantined", 30)
        assert "no heartbeat" in q.breakers[a.address].reason
    finally:
        a.periodic_callbacks["heartbeat"].start()
        a.periodic_callbacks["keep-alive"].start()


# -------------------------------------------------------------- bounded state
def one(x):
    return x


# Dask itself slows down with many distinct prefixes live at once (12 s for 1,000
# in one graph here, 40 s for 2,000): the prefixes come in batches, as they would
# from many submissions, and the cap is lowered so that the test stays short.
@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 2)],
    timeout=300,
    config={"oxigdal.scheduling.max-prefixes": 100},
)
async def test_many_distinct_prefixes_leave_bounded_state_and_a_counter(c, s, a):
    await register(c, tenants=TENANTS)
    n, batch = 1200, 200
    for start in range(0, n, batch):
        with annotate(tenant="team-a"):
            futs = c.map(one, range(batch), key=[f"tile{start + i}x-0" for i in range(batch)])
        await c.gather(futs)
        del futs
    ext = s.plugins[NAME]
    limit = ext.get_policy("FairShare").max_prefixes
    assert limit == 100
    await _until(
        lambda: (
            len(ext.get_policy("FairShare").prefix_cost) <= limit
            and len(ext.get_policy("Stragglers").prefixes) <= limit
            and len(ext.get_policy("Monitor").detector.baseline) <= limit
        ),
        "the periodic eviction",
    )
    body = json.dumps(state(s))
    # unbounded, 1,200 prefixes took ~50 KB (5,000: ~190 KB); with the cap of 100, ~9 KB
    assert len(body) < 30_000, len(body)
    snap = (await status(c))["policies"]
    assert snap["FairShare"]["evicted_prefixes"] >= n - limit
    assert snap["FairShare"]["prefixes"] <= limit
    assert snap["Stragglers"]["evicted_prefixes"] >= n - limit
    assert snap["Monitor"]["evicted_prefixes"] >= 1
    fams = {f.name: f for f in metric_families(await status(c))}
    evicted = dict(fams["evicted_prefixes"].samples)
    assert evicted[("FairShare",)] >= n - limit and evicted[("Stragglers",)] >= n - limit
    # still working: a new prefix is tagged and runs
    with annotate(tenant="team-b"):
        assert await c.submit(one, 5, key="fresh-0") == 5
