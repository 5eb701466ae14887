"""Fair share decides between tenants, never inside one: differential tests against vanilla Dask.

Each seed generates a random workload (maps with random ``priority=``,
dependent chains, persists of small graphs, sub-tasks submitted from a task
with ``get_client``) and new or same ``fifo_timeout`` generations. The
workload is submitted to a single one-thread worker that is blocked by a
clog task, then released; the worker records the order in which tasks start.
The same workload runs on a vanilla cluster and on one with the extension
(full default policy list) side by side, and the orders must be identical.

With two tenants, each tenant's own start order (its tasks taken alone) must
equal the order vanilla Dask gives that tenant's workload alone. There the
workloads are independent tasks (maps, persists, generations, priorities):
which of a chain's tasks starts first also depends on when a dependent task
reaches the worker, and with another tenant's tasks in between that timing
changes even on vanilla Dask, so it is not a property of the priorities.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time

import dask
import pytest
from distributed import (
    Client,
    Event,
    Scheduler,
    Worker,
    fire_and_forget,
    get_client,
    get_worker,
)
from distributed.utils_test import gen_cluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.scheduling import _submitting
from dask_oxigdal.scheduling.extension import register

#: seeds per test; the four differential tests run 200 seeds in all in CI
SEEDS = int(os.environ.get("OXIGDAL_ORDER_SEEDS", "50"))
#: seconds each task sleeps: long against a loopback message, so that a task
#: that became ready when the previous one ended reaches the worker before the
#: running one ends (on vanilla too: otherwise the order depends on that race)
DELAY = 0.01
#: the same, for workloads with chains and sub-tasks (a dependent is sent to the
#: worker only after its dependency ended); longer, for a loaded CI machine
CHAIN_DELAY = 0.03
#: runs of a seed before a difference counts: on a heavily loaded machine either
#: cluster can lose the race above once; a real difference in order repeats
ATTEMPTS = 3

#: scheduler address -> Scheduler, for the sub-task parents (in-process workers)
SCHEDULERS: dict[str, Scheduler] = {}


def rec(*deps):
    """Record this task's start on its worker."""
    w = get_worker()
    w.__dict__.setdefault("_oxigdal_order", []).append(w.get_current_task())
    time.sleep(w.__dict__.get("_oxigdal_delay", DELAY))
    return 1


def arrived(scheduler, worker, keys) -> bool:
    """Every key is on the scheduler, and on the worker if the scheduler sent it there."""
    for k in keys:
        ts = scheduler.tasks.get(k)
        if ts is None or ts.state == "released":
            return False
        if ts.state == "processing" and k not in worker.state.tasks:
            return False
    return True


def spawn(subkeys, priority):
    """A parent task: submit sub-tasks, wait until the scheduler has them, return."""
    w = get_worker()
    w.__dict__.setdefault("_oxigdal_order", []).append(w.get_current_task())
    client = get_client()
    futs = client.map(rec, range(len(subkeys)), key=list(subkeys), priority=priority)
    scheduler = SCHEDULERS[w.scheduler.address]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not arrived(scheduler, w, subkeys):
        time.sleep(0.005)
    time.sleep(w.__dict__.get("_oxigdal_delay", DELAY))
    fire_and_forget(futs)
    return 1


def make_workload(seed: int, prefix: str, *, shared: bool = False) -> list[dict]:
    """A random list of submissions (plain data, replayed on every cluster).

    ``shared``: a workload that shares the cluster with another tenant's. Its
    tasks are independent (maps and persists of flat lists) and every
    submission starts a new ``fifo_timeout`` generation: generations are
    global, so another tenant's submission in between would otherwise move
    this tenant's "same generation" submissions into a later one than when
    it runs alone, which changes Dask's own priorities.
    """
    rnd = random.Random(seed)
    kinds = ["map", "map", "flat"] if shared else ["map", "map", "persist", "chain", "spawn"]
    ops = []
    for j in range(rnd.randint(3, 6)):
        ops.append(
            {
                "kind": rnd.choice(kinds),
                "priority": rnd.choice([-1, 0, 0, 1, 2]),
                # fifo_timeout 0: a new generation; 1 h: the same one as the last submission
                "fifo": "0ms" if shared else rnd.choice(["0ms", "1h"]),
                "name": f"{prefix}{j}",
                "n": rnd.randint(1, 4),
            }
        )
    return ops


async def submit(c, ops: list[dict], tenant: str | None = None) -> tuple[list, list[str]]:
    """Submit ``ops``; return the futures and every key (sub-tasks included)."""
    futures: list = []
    keys: list[str] = []
    for op in ops:
        name, n, prio, fifo = op["name"], op["n"], op["priority"], op["fifo"]
        ctx = annotate(tenant=tenant) if tenant else dask.annotate()
        with ctx:
            if op["kind"] == "map":
                ks = [f"{name}-m{i}" for i in range(n)]
                futures += c.map(rec, range(n), key=ks, priority=prio, fifo_timeout=fifo)
                keys += ks
            elif op["kind"] == "chain":
                prev = None
                for i in range(n + 1):
                    k = f"{name}-c{i}"
                    args = (prev,) if prev is not None else (i,)
                    prev = c.submit(rec, *args, key=k, priority=prio, fifo_timeout=fifo)
                    futures.append(prev)
                    keys.append(k)
            elif op["kind"] == "flat":
                parts = [dask.delayed(rec)(i, dask_key_name=f"{name}-f{i}") for i in range(n)]
                futures += c.persist(parts, priority=prio, fifo_timeout=fifo)
                keys += [f"{name}-f{i}" for i in range(n)]
            elif op["kind"] == "persist":
                leaves = [dask.delayed(rec)(i, dask_key_name=f"{name}-l{i}") for i in range(n + 1)]
                top = dask.delayed(rec)(*leaves, dask_key_name=f"{name}-t")
                (p,) = c.persist([top], priority=prio, fifo_timeout=fifo)
                futures.append(p)
                keys += [f"{name}-l{i}" for i in range(n + 1)] + [f"{name}-t"]
            else:  # spawn
                subkeys = [f"{name}-s{i}" for i in range(n)]
                futures.append(
                    c.submit(
                        spawn, subkeys, -prio, key=f"{name}-p", priority=prio, fifo_timeout=fifo
                    )
                )
                keys += [f"{name}-p", *subkeys]
    return futures, keys


async def run_blocked(
    c, s, w, workloads: list[tuple[list[dict], str | None]], delay: float = DELAY
) -> list[str]:
    """Block the worker, submit the workloads (interleaved), release; the start order."""
    w.__dict__["_oxigdal_order"] = []
    w.__dict__["_oxigdal_delay"] = delay
    ev = Event(client=c)
    clog = c.submit(lambda ev: ev.wait(), ev, key="clog", pure=False)
    while "clog" not in w.state.tasks or w.state.tasks["clog"].state != "executing":
        await asyncio.sleep(0.005)
    futures: list = []
    keys: list[str] = []
    # interleave the tenants' submissions one op at a time
    longest = max(len(ops) for ops, _ in workloads)
    for j in range(longest):
        for ops, tenant in workloads:
            if j < len(ops):
                more, k = await submit(c, ops[j : j + 1], tenant)
                futures += more
                keys += k
                del more
    top = [k for k in keys if not k.endswith(tuple(f"-s{i}" for i in range(9)))]
    while not arrived(s, w, top):
        await asyncio.sleep(0.005)
    await ev.set()
    await clog
    del clog
    await c.gather(futures)
    while len(w.__dict__["_oxigdal_order"]) < len(keys):
        await asyncio.sleep(0.005)
    order = list(w.__dict__["_oxigdal_order"])
    del futures
    while s.tasks:
        await asyncio.sleep(0.005)
    return order


@contextlib.asynccontextmanager
async def with_extension(s, tenants=None):
    """A second one-thread cluster beside ``s``, with the extension registered."""
    SCHEDULERS[s.address] = s
    async with Scheduler(dashboard_address=":0", host="127.0.0.1") as s2:
        async with Worker(s2.address, nthreads=1, host="127.0.0.1") as w2:
            async with Client(s2.address, asynchronous=True) as c2:
                SCHEDULERS[s2.address] = s2
                await register(c2, tenants=tenants or {})
                try:
                    yield c2, s2, w2
                finally:
                    SCHEDULERS.pop(s2.address, None)
                    SCHEDULERS.pop(s.address, None)
                assert not s2.plugins["oxigdal"].disabled


SAT = {"queue on scheduler": 1.0, "queue on worker": float("inf")}


def one_thread_cluster(saturation: str):
    """``gen_cluster`` with one one-thread worker at ``SAT[saturation]``, no stealing."""
    return gen_cluster(
        client=True,
        nthreads=[("127.0.0.1", 1)],
        timeout=600,
        config={
            "distributed.scheduler.worker-saturation": SAT[saturation],
            "distributed.worker.memory.pause": False,
            "distributed.scheduler.work-stealing": False,
        },
    )


@pytest.mark.parametrize("saturation", list(SAT))
def test_single_tenant_order_is_vanilla(saturation):
    """One tenant (no annotations): the start order is vanilla Dask's, seed by seed."""

    @one_thread_cluster(saturation)
    async def check(c, s, a):
        async with with_extension(s) as (c2, s2, w2):
            for seed in range(SEEDS):
                ops = make_workload(seed, f"w{seed}-")
                for _ in range(ATTEMPTS):
                    vanilla = await run_blocked(c, s, a, [(ops, None)], delay=CHAIN_DELAY)
                    ours = await run_blocked(c2, s2, w2, [(ops, None)], delay=CHAIN_DELAY)
                    if ours == vanilla:
                        break
                assert ours == vanilla, f"seed {seed}: {make_workload(seed, '')}"
        assert "oxigdal" not in s.plugins  # the first cluster stayed vanilla

    check()


@pytest.mark.parametrize("saturation", list(SAT))
def test_two_tenants_each_keep_their_vanilla_order(saturation):
    """Two tenants interleaved: each one's own start order is vanilla's for its workload alone."""

    @one_thread_cluster(saturation)
    async def check(c, s, a):
        async with with_extension(s, tenants={"a": 2, "b": 1}) as (c2, s2, w2):
            for seed in range(SEEDS):
                ops_a = make_workload(seed, f"a{seed}-", shared=True)
                ops_b = make_workload(seed + 10_000, f"b{seed}-", shared=True)
                for _ in range(ATTEMPTS):
                    alone_a = await run_blocked(c, s, a, [(ops_a, None)])
                    alone_b = await run_blocked(c, s, a, [(ops_b, None)])
                    both = await run_blocked(c2, s2, w2, [(ops_a, "a"), (ops_b, "b")])
                    if [k for k in both if k.startswith("a")] == alone_a and [
                        k for k in both if k.startswith("b")
                    ] == alone_b:
                        break
                assert [k for k in both if k.startswith("a")] == alone_a, f"seed {seed} tenant a"
                assert [k for k in both if k.startswith("b")] == alone_b, f"seed {seed} tenant b"
                assert sorted(both) == sorted(alone_a + alone_b)

    check()


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_guard_update_graph_stream_handler(c, s, a):
    """``Scheduler.stream_handlers["update-graph"]`` is a coroutine function taking
    ``submitting_task``; the wrapper passes it on and Dask's sub-task generation holds."""
    import inspect

    original = s.stream_handlers["update-graph"]
    assert inspect.iscoroutinefunction(original)
    assert "submitting_task" in inspect.signature(original).parameters
    assert _submitting.install(s)
    assert s.stream_handlers["update-graph"] is not original
    assert _submitting.install(s)  # idempotent
    _submitting.uninstall(s)
    assert s.stream_handlers["update-graph"] is original
