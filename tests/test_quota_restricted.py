"""Quotas hold for every task: ``max-tasks`` bounds restricted tasks too.

A tenant with ``max-tasks: 1`` submits tasks with ``workers=[...]`` +
``allow_other_workers=True``, strict ``workers=``, host names, ``resources=``
and ``locality=``: a scheduler plugin counts the tenant's tasks in
``processing`` on every transition, and the count never exceeds 1. The tasks
still run where they asked (their restrictions are restored on admission) and
give correct results.
"""

from __future__ import annotations

import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import time

import dask
import pytest
from distributed import get_worker
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils_test import gen_cluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.scheduling.extension import HOLD_ADDRESS, NAME, register, status

GPU = {"resources": {"GPU": 1}}
# 4 single-thread workers, the first two with a "GPU" resource
NTHREADS = [("127.0.0.1", 1, GPU), ("127.0.0.1", 1, GPU), ("127.0.0.1", 1), ("127.0.0.1", 1)]


def work(x, delay=0.02):
    time.sleep(delay)
    return x + 1, get_worker().address


class ProcessingCounter(SchedulerPlugin):
    """Counts the tasks of one tenant in ``processing``; remembers the maximum."""

    name = "processing-counter"

    def __init__(self, scheduler, tenant):
        self.scheduler = scheduler
        self.tenant = tenant
        self.now = 0
        self.max = 0

    def transition(self, key, start, finish, *args, **kwargs):
        ts = self.scheduler.tasks.get(key)
        if ts is None or (ts.annotations or {}).get("oxigdal_tenant") != self.tenant:
            return
        if finish == "processing":
            self.now += 1
            self.max = max(self.max, self.now)
        elif start == "processing":
            self.now -= 1


@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_max_tasks_holds_for_restricted_tasks(c, s, a, b, w3, w4):
    await register(c, tenants={"a": {"weight": 1, "max-tasks": 1}, "b": 1})
    counter = ProcessingCounter(s, "a")
    s.add_plugin(counter)
    n = 6
    with annotate(tenant="a"):
        loose = c.map(
            work,
            range(n),
            key=[f"loose-{i}" for i in range(n)],
            workers=[a.address, b.address],
            allow_other_workers=True,
        )
        strict = c.map(work, range(n), key=[f"strict-{i}" for i in range(n)], workers=[w3.address])
        hosts = c.map(work, range(n), key=[f"host-{i}" for i in range(n)], workers=["127.0.0.1"])
        gpu = c.map(work, range(n), key=[f"gpu-{i}" for i in range(n)], resources={"GPU": 1})
    with annotate(tenant="a", locality="tile/1/2"):
        local = c.map(work, range(n), key=[f"local-{i}" for i in range(n)])
    # another tenant is not limited: its restricted tasks run beside them
    with annotate(tenant="b"):
        other = c.map(work, range(n), key=[f"b-{i}" for i in range(n)], workers=[w4.address])
    # while they wait, the held tasks keep their own restrictions for later
    ext = s.plugins[NAME]
    while not all(f.key in ext.info for f in strict + other):
        await asyncio.sleep(0.01)
    held = [ext.info[f.key] for f in strict if f.key in ext.info and ext.info[f.key].holds]
    assert held and all(i.restrictions == ({w3.address}, None, False) for i in held)

    results = {
        name: await c.gather(futs)
        for name, futs in [
            ("loose", loose),
            ("strict", strict),
            ("hosts", hosts),
            ("gpu", gpu),
            ("local", local),
            ("other", other),
        ]
    }
    for name, rows in results.items():
        assert [r for r, _ in rows] == list(range(1, n + 1)), name
    # the restrictions were given back on admission: each ran where it asked
    assert {w for _, w in results["strict"]} == {w3.address}
    assert {w for _, w in results["gpu"]} <= {a.address, b.address}
    assert {w for _, w in results["other"]} == {w4.address}
    assert counter.max == 1, counter.max  # never two of tenant a's tasks at once
    assert counter.now == 0
    quota = (await status(c))["policies"]["Quota"]
    assert quota["max_admitted"]["a"] == 1
    assert not ext.disabled
    for key in ("strict-0", "gpu-0", "host-0", "loose-0"):
        ts = s.tasks[key]
        assert HOLD_ADDRESS not in (ts.worker_restrictions or ())
    assert s.tasks["host-0"].host_restrictions == {"127.0.0.1"}
    assert s.tasks["loose-0"].loose_restrictions is True
    assert s.tasks["gpu-0"].resource_restrictions == {"GPU": 1}


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2), ("127.0.0.1", 2)], timeout=120)
async def test_max_tasks_holds_with_two_threads_per_worker(c, s, a, b):
    """max-tasks 2 on 4 threads, pinned and loose tasks mixed in one submission."""
    await register(c, tenants={"a": {"weight": 1, "max-tasks": 2}})
    counter = ProcessingCounter(s, "a")
    s.add_plugin(counter)
    with annotate(tenant="a"):
        futs = [
            c.submit(
                work,
                i,
                key=f"mixed-{i}",
                workers=[(a if i % 2 else b).address],
                allow_other_workers=i % 3 == 0,
            )
            for i in range(16)
        ]
        plain = c.map(work, range(16), key=[f"plain-{i}" for i in range(16)])
    assert [r for r, _ in await c.gather(futs)] == list(range(1, 17))
    assert [r for r, _ in await c.gather(plain)] == list(range(1, 17))
    assert counter.max == 2, counter.max


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1, GPU)])
async def test_guard_hold_with_host_and_resource_restrictions(c, s, a):
    """valid_workers: host restrictions are a union with the worker ones, resources an
    intersection. So a hold clears host_restrictions and keeps resource_restrictions."""
    fut = c.submit(work, 1, key="guard")
    await fut
    ts = s.tasks["guard"]  # valid_workers reads only the restrictions
    ts.worker_restrictions = {HOLD_ADDRESS}
    ts.host_restrictions = {"127.0.0.1"}
    assert s.valid_workers(ts) == {s.workers[a.address]}  # the host lets it run
    ts.host_restrictions = None
    ts.resource_restrictions = {"GPU": 1}
    assert s.valid_workers(ts) == set()  # the resource does not
    ts.worker_restrictions = None
    assert s.valid_workers(ts) == {s.workers[a.address]}


@gen_cluster(client=True)
async def test_malformed_tasks_with_host_restrictions_are_held_then_failed(c, s, a, b):
    """A hand-made bad annotation on a task restricted to a host name never runs."""
    await register(c)
    with dask.annotate(oxigdal_retries=10**9):
        bad = c.submit(work, 1, key="bad-host", workers=["127.0.0.1"], allow_other_workers=True)
    with pytest.raises(ValueError, match="oxigdal_retries=1000000000"):
        await bad
    # it never ran (before the fix the host restriction let it run and return)
    assert s.tasks["bad-host"].state == "erred"
