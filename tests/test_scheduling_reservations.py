"""Guaranteed slots (``Quota`` with ``guaranteed-slots``) on a real cluster.

A recorder plugin checks the invariant on every transition: while the owner
has ready work (tasks in ``no-worker``, held by the policy) and fewer than its
guaranteed slots in ``processing``, no other tenant's task enters
``processing``. No wall-clock assertions.
"""

from __future__ import annotations

# Import dask_oxigdal before distributed.utils_test (see test_scheduling_fairshare.py).
import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import time

import pytest
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils_test import gen_cluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling.extension import NAME, register, status

NTHREADS = [("127.0.0.1", 2), ("127.0.0.1", 2)]  # 4 slots
GUARANTEE = 3


def sleep_task(i, delay):
    time.sleep(delay)
    return i


class SlotRecorder(SchedulerPlugin):
    """Per-tenant processing / ready counts, checked on every transition."""

    name = "test-slot-recorder"

    def __init__(self, scheduler, owner, guarantee):
        self.scheduler = scheduler
        self.owner = owner
        self.guarantee = guarantee
        self.processing: dict[str, int] = {}
        self.ready: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self.violations: list[tuple] = []
        # (owner processing, others processing) after each owner dispatch
        self.owner_climb: list[tuple[int, int]] = []

    def transition(self, key, start, finish, *args, **kwargs):
        ts = self.scheduler.tasks.get(key)
        tenant = (ts.annotations or {}).get("oxigdal_tenant") if ts is not None else None
        if tenant is None:
            return
        if finish == "no-worker":
            self.ready[tenant] = self.ready.get(tenant, 0) + 1
        if start == "no-worker":
            self.ready[tenant] -= 1
        if start == "processing":
            self.processing[tenant] -= 1
        if finish != "processing":
            return
        n = self.processing[tenant] = self.processing.get(tenant, 0) + 1
        self.peak[tenant] = max(self.peak.get(tenant, 0), n)
        total = sum(self.processing.values())
        self.peak_total = max(self.peak_total, total)
        owner_running = self.processing.get(self.owner, 0)
        if tenant == self.owner:
            self.owner_climb.append((owner_running, total - owner_running))
        elif self.ready.get(self.owner, 0) > 0 and owner_running < self.guarantee:
            self.violations.append((key, dict(self.processing), dict(self.ready)))


@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_guaranteed_slots_are_borrowed_while_idle_and_returned(c, s, a, b):
    await register(
        c,
        # a small weight: fair share alone would give the owner almost nothing, so
        # every slot it holds beyond that comes from its guarantee
        tenants={"owner": {"weight": 0.1, "guaranteed-slots": GUARANTEE}, "b": 1, "c": 1},
    )
    recorder = SlotRecorder(s, "owner", GUARANTEE)
    s.add_plugin(recorder)
    # owner idle: b and c (and their dependencies) use every slot, the guaranteed ones too
    with annotate(tenant="b"):
        fb = c.map(sleep_task, range(120), delay=0.05, key=[f"b-{i}" for i in range(120)])
    with annotate(tenant="c"):
        fc = c.map(sleep_task, range(120), delay=0.05, key=[f"c-{i}" for i in range(120)])
    while sum(f.done() for f in fb + fc) < 20:
        await asyncio.sleep(0.01)
    assert recorder.peak_total == 4, recorder.peak  # work-conserving: no idle thread
    assert recorder.processing.get("owner", 0) == 0
    # the owner arrives: borrowed slots come back as b's and c's tasks finish
    with annotate(tenant="owner"):
        fo = c.map(sleep_task, range(60), delay=0.02, key=[f"o-{i}" for i in range(60)])
    await c.gather(fo)
    others_done = sum(f.done() for f in fb + fc)
    await c.gather(fb + fc)
    assert others_done < 240, "b and c finished before the owner ran: not a contention test"
    assert not recorder.violations, recorder.violations[:5]
    # climbs to its guarantee (fair share may add a slot on top when the owner's
    # tag comes up) ...
    assert recorder.peak["owner"] >= GUARANTEE
    assert recorder.peak_total == 4  # ... and never more than the cluster's slots in use
    # once the owner held its guarantee, the others had the one slot left
    at_guarantee = [others for owner, others in recorder.owner_climb if owner == GUARANTEE]
    assert at_guarantee and max(at_guarantee) <= 4 - GUARANTEE
    snap = (await status(c))["policies"]["Quota"]
    assert snap["guarantees"] == {"owner": GUARANTEE} and snap["slots"] == 4
    assert not snap["admitted"] and not snap["held"]
    print(
        f"\nguaranteed slots: owner peak {recorder.peak['owner']}/{GUARANTEE}, "
        f"others while idle {recorder.peak_total}/4; "
        f"{len(recorder.owner_climb)} owner dispatches, no violations"
    )


def add_all(*xs):
    return sum(xs)


def tree_graph(tenant, n, delay):
    import dask

    layer = [dask.delayed(sleep_task)(i, delay, dask_key_name=f"{tenant}-m{i}") for i in range(n)]
    level = 0
    while len(layer) > 1:
        layer = [
            dask.delayed(add_all)(*layer[i : i + 4], dask_key_name=f"{tenant}-r{level}-{i}")
            for i in range(0, len(layer), 4)
        ]
        level += 1
    return layer[0]


@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_guaranteed_slots_with_dependencies_and_max_tasks(c, s, a, b):
    """The owner runs a map -> tree-reduce; b is capped by max-tasks; invariant holds."""
    await register(
        c,
        tenants={
            "owner": {"weight": 0.1, "guaranteed-slots": 2},
            "b": {"weight": 1, "max-tasks": 3},
            "c": 1,
        },
    )
    recorder = SlotRecorder(s, "owner", 2)
    s.add_plugin(recorder)
    with annotate(tenant="b"):
        fb = c.map(sleep_task, range(60), delay=0.03, key=[f"b-{i}" for i in range(60)])
    with annotate(tenant="c"):
        fc = c.map(sleep_task, range(60), delay=0.03, key=[f"c-{i}" for i in range(60)])
    await asyncio.sleep(0.2)
    with annotate(tenant="owner"):
        total = await c.compute(tree_graph("owner", 40, 0.02))
    assert total == sum(range(40))
    await c.gather(fb + fc)
    assert not recorder.violations, recorder.violations[:5]
    assert recorder.peak["owner"] >= 2 and recorder.peak["b"] <= 3
    assert recorder.peak_total <= 4


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"tenants": {"a": {"guaranteed-slots": 0}}}, "oxigdal.tenants.a.guaranteed-slots=0"),
        ({"tenants": {"a": {"guaranteed-slots": "two"}}}, "'two' must be an integer >= 1"),
        (
            {"tenants": {"a": {"weight": 1, "guaranteed_slot": 2}}},
            "unknown setting(s) 'guaranteed_slot'; valid settings: weight, max-tasks, "
            "guaranteed-slots",
        ),
        (
            {"tenants": {"a": {"max-tasks": 1, "guaranteed-slots": 2}}},
            "guaranteed-slots=2 is more than its max-tasks=1",
        ),
        (
            {
                "tenants": {"a": 1},
                "policies": [
                    {"class": "dask_oxigdal.scheduling.quota.Quota", "guarantees": {"zz": 2}}
                ],
            },
            "unknown tenant 'zz'; configured tenants: a, default",
        ),
    ],
)
def test_bad_guarantee_configuration_names_value_and_choices(options, needle):
    @gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
    async def run(c, s, a):
        import re

        with pytest.raises(ConfigError, match=re.escape(needle)):
            await register(c, **options)
        assert NAME not in s.plugins

    run()
