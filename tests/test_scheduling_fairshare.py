"""FairShare on a real cluster: weighted shares, vanilla Dask beside it, late tenants,
graphs with dependencies, strict queues.

Shares are measured from worker-side start/stop timestamps that every task
returns, never from wall-clock assertions about the whole run: the machine
that runs the tests is shared and noisy. Each test prints its figures
(``pytest -s``).
"""

from __future__ import annotations

# Import dask_oxigdal (which registers the oxigdal.* config defaults) before
# distributed.utils_test: gen_cluster restores the dask config to a snapshot
# taken when utils_test is first imported, which would otherwise lack them.
import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import itertools
import sys
import time
from pathlib import Path

import pytest
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils_test import async_poll_for, gen_cluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.scheduling.extension import register, status

# workloads and measures shared with benchmarks/bench_scheduling.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _sched_common import (
    ENTITLED,
    TASK,
    WEIGHTS,
    contended_shares,
    jain,
    tree,
    tree_until,
    work,
)

NTHREADS = [("127.0.0.1", 2), ("127.0.0.1", 2)]


def report(label, shares, interval, entitled=ENTITLED):
    j = jain(shares, entitled)
    figures = ", ".join(f"{t}={shares[t]:.3f}" for t in sorted(shares))
    print(f"\n{label}: shares {figures} over {interval:.2f} s contended; Jain {j:.4f}")
    return j


async def submit_maps(c, n=300):
    """Three tenants submit ``n`` tasks each "at the same moment".

    ``fifo_timeout`` keeps the three submissions in one Dask generation even on
    a slow machine; otherwise vanilla Dask would run them first come, first
    served instead of interleaving them.
    """
    futures = []
    for tenant in WEIGHTS:
        with annotate(tenant=tenant):
            futures += c.map(
                work,
                range(n),
                tenant=tenant,
                # one task prefix ("work") for every tenant: the same function, so
                # the same cost; separate prefixes are measured separately, and a
                # noisy first measurement of one of them skews its tenant's tags
                key=[("work", tenant, i) for i in range(n)],
                fifo_timeout="60s",
            )
    results = await c.gather(futures)
    return [rec for recs in results for rec in recs]


# ----------------------------------------------------------- weighted share
@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_weighted_share_root_tasks(c, s, a, b):
    """Weights 2:1:1, 300 x 20 ms tasks each, submitted at once (worker-saturation 1.1)."""
    assert s.WORKER_SATURATION == 1.1  # root tasks wait in scheduler.queued
    await register(c, tenants=WEIGHTS)
    shares, interval = contended_shares(await submit_maps(c))
    j = report("FairShare 2:1:1, root tasks", shares, interval)
    for tenant, entitled in ENTITLED.items():
        assert shares[tenant] == pytest.approx(entitled, rel=0.10), (tenant, shares)
    assert j >= 0.98
    snap = await status(c)
    assert snap["tenants"]["a"]["completed"] == 300
    assert snap["tenants"]["a"]["worker_seconds"] >= 300 * TASK * 0.9


@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_vanilla_dask_splits_evenly(c, s, a, b):
    """The same workload without the extension: an even split, a well below 0.5."""
    shares, interval = contended_shares(await submit_maps(c))
    j = report("vanilla Dask, root tasks", shares, interval)
    assert shares["a"] < 0.40, shares
    assert j < 0.95


# ------------------------------------------------------------- late tenant
class ArrivalClock(SchedulerPlugin):
    """Records, on the scheduler, when each tenant's first graph arrived."""

    name = "test-arrival-clock"

    def __init__(self):
        self.arrived = {}

    def update_graph(self, scheduler, *, tasks, **kwargs):
        for key in tasks:
            ts = scheduler.tasks.get(key)
            tenant = (ts.annotations or {}).get("oxigdal_tenant") if ts else None
            if tenant:
                self.arrived.setdefault(tenant, time.time())


@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_late_tenant_gets_its_share_quickly(c, s, a, b):
    """B arrives 2 s after A's 2,000-task backlog and starts within a few task durations."""
    await register(c, tenants={"a": 1, "b": 1})
    clock = ArrivalClock()
    s.add_plugin(clock)
    with annotate(tenant="a"):
        fa = c.map(work, range(2000), tenant="a", key=[f"a-{i}" for i in range(2000)])
    await asyncio.sleep(2)
    with annotate(tenant="b"):
        fb = c.map(work, range(100), tenant="b", key=[f"b-{i}" for i in range(100)])
    rb = [rec for recs in await c.gather(fb) for rec in recs]
    arrived = clock.arrived["b"]
    first_b = min(rec[1] for rec in rb)
    # B's window ends at its last *start*: once B has nothing left to start, A may take
    # every free slot, and a last B task that runs long (a loaded CI machine stretched a
    # 20 ms sleep once) would otherwise count A's use of the idle slots against B
    last_b = max(rec[1] for rec in rb)
    longest_b = max(rec[2] - rec[1] for rec in rb)
    starts_b = sorted(rec[1] for rec in rb)
    gap_b = max(b - a for a, b in itertools.pairwise(starts_b))
    done_a = [f for f in fa if f.done()]
    ra = [rec for recs in await c.gather(done_a) for rec in recs]
    assert len(ra) < 2000, "A's backlog drained before B ran: not a late-arrival test"
    a_started_before_b = sum(1 for rec in ra if arrived <= rec[1] < first_b)
    a_during_b = sum(1 for rec in ra if first_b <= rec[1] <= last_b)
    delay = first_b - arrived
    print(
        f"\nlate tenant: B's first task started {delay * 1000:.1f} ms "
        f"({delay / TASK:.1f} task durations) after its graph reached the scheduler; "
        f"{a_started_before_b} A tasks started in between; while B ran, A started "
        f"{a_during_b} tasks and B 100 (equal weights); B's longest task took "
        f"{longest_b * 1000:.0f} ms, its longest gap between starts {gap_b * 1000:.0f} ms"
    )
    # A tasks already on the workers (<= 2 x 3 slots) may start first, nothing more
    assert a_started_before_b <= 2 * 4
    # B then gets about its half, not the whole cluster and not nothing
    assert 0.5 * 100 <= a_during_b <= 2.0 * 100, (a_during_b, longest_b, gap_b)
    await c.cancel(fa)


def same_work(i, tenant, delay=TASK):
    return work(i, tenant, delay)


@gen_cluster(
    client=True, nthreads=NTHREADS, timeout=120, config={"oxigdal.scheduling.interval": "50ms"}
)
async def test_late_tenant_same_prefix_is_not_favoured(c, s, a, b):
    """A's backlog was tagged before Dask measured the prefix (default cost 0.5 s,
    real 20 ms); B's tasks of the same prefix arrive once it is measured. FairShare
    re-tags A's pending tasks so both are measured in the same units."""
    await register(c, tenants={"a": 1, "b": 1})
    with annotate(tenant="a"):
        fa = c.map(same_work, range(1500), tenant="a")
    await asyncio.sleep(1.5)
    assert s.task_prefixes["same_work"].duration_average > 0
    fs = s.plugins["oxigdal"].get_policy("FairShare")
    # A alone: the re-tag of A's backlog waits for a competitor (it would not
    # change A's own order)
    assert fs.retags == 0 and "same_work" in fs.deferred
    with annotate(tenant="b"):
        fb = c.map(same_work, range(100), tenant="b", pure=False)
    # B's submission brings the backlog into measured units before B is tagged
    await async_poll_for(lambda: fs.retags >= 1, timeout=30)
    assert not fs.deferred
    rb = [rec for recs in await c.gather(fb) for rec in recs]
    first_b, last_b = min(r[1] for r in rb), max(r[1] for r in rb)
    ra = [rec for recs in await c.gather([f for f in fa if f.done()]) for rec in recs]
    a_during_b = sum(1 for rec in ra if first_b <= rec[1] <= last_b)
    print(f"\nsame prefix, late tenant: while B ran 100 tasks, A started {a_during_b}")
    # without re-tagging A would get ~4 tasks here (25:1 for B)
    assert 0.5 * 100 <= a_during_b <= 2.0 * 100
    # A's remaining backlog is now measured in real costs, and so is where its
    # next submission would start: its lead over the virtual time is about
    # (pending tasks x 20 ms), not (pending tasks x 500 ms)
    snap = fs.snapshot()
    pending = sum(1 for f in fa if not f.done())
    lead = snap["backlog"]["batch"].get("a", 0.0)
    assert lead <= pending * 3 * TASK + 1.0, (lead, pending)
    await c.cancel(fa)


# ----------------------------------------------------- dependencies: map -> tree
@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_weighted_share_with_dependencies(c, s, a, b):
    """Each tenant runs map(200) -> tree-reduce (fan-in 4); weights 2:1:1."""
    await register(c, tenants=WEIGHTS)
    futures = []
    for tenant in WEIGHTS:
        graph = tree(tenant, 200)
        with annotate(tenant=tenant):  # compute-time form
            futures.append(c.compute(graph))
    records = [rec for recs in await c.gather(futures) for rec in recs]
    assert len(records) == 3 * (200 + 50 + 13 + 4 + 1)
    # A tree's tail (the last reduce levels) has too few runnable tasks to use a
    # tenant's share; work conservation rightly hands the rest to the others. The
    # contended interval ends when the first tenant starts its last map task.
    shares, interval = contended_shares(records, until=tree_until(records))
    j = report("FairShare 2:1:1, map -> tree-reduce", shares, interval)
    for tenant, entitled in ENTITLED.items():
        assert shares[tenant] == pytest.approx(entitled, rel=0.10), (tenant, shares)
    assert j >= 0.98


# ------------------------------------------------------------------ queues
@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_queues_are_strict_and_fair_share_applies_within(c, s, a, b):
    await register(c, tenants={"a": 1, "b": 1, "c": 1})
    clock = ArrivalClock()
    s.add_plugin(clock)
    with annotate(tenant="a", queue="background"):
        bg = c.map(work, range(300), tenant="a-bg", key=[f"bg-{i}" for i in range(300)])
    with annotate(tenant="b"):  # default queue: batch
        batch = c.map(work, range(100), tenant="b-batch", key=[f"batch-{i}" for i in range(100)])
    await asyncio.sleep(0.3)
    with annotate(tenant="c", queue="interactive"):
        inter = c.map(work, range(40), tenant="c-int", key=[f"int-{i}" for i in range(40)])
    r_int = [rec for recs in await c.gather(inter) for rec in recs]
    r_batch = [rec for recs in await c.gather(batch) for rec in recs]
    first_int, last_int = min(r[1] for r in r_int), max(r[1] for r in r_int)
    last_batch = max(r[1] for r in r_batch)
    done_bg = [f for f in bg if f.done()]
    r_bg = [rec for recs in await c.gather(done_bg) for rec in recs]
    # while interactive work waits, nothing else starts (beyond what workers already hold)
    others = sum(1 for r in r_batch + r_bg if first_int < r[1] < last_int)
    # once batch is there, background only runs after it drained (again, modulo the
    # workers' slots); background started before batch's graph reached the scheduler
    # (the two graphs are processed one after the other) is not counted
    bg_before_batch_done = sum(1 for r in r_bg if clock.arrived["b"] <= r[1] < last_batch)
    print(
        f"\nqueues: {others} batch/background tasks started while interactive ran; "
        f"{bg_before_batch_done} background tasks started before batch drained"
    )
    assert others <= 2 * 4
    assert bg_before_batch_done <= 2 * 4
    await c.cancel(bg)


# ------------------------------------------------------------ work conserving
@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_work_conserving_single_tenant_uses_every_thread(c, s, a, b):
    await register(c, tenants=WEIGHTS)  # a and c configured but idle
    with annotate(tenant="b"):
        records = [
            rec for recs in await c.gather(c.map(work, range(200), tenant="b")) for rec in recs
        ]
    events = sorted([(r[1], 1) for r in records] + [(r[2], -1) for r in records])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 4


# ------------------------------------------------------------ saturation inf
@gen_cluster(
    client=True,
    nthreads=NTHREADS,
    timeout=120,
    config={"distributed.scheduler.worker-saturation": float("inf")},
)
async def test_worker_saturation_inf_orders_on_the_workers(c, s, a, b):
    """Without scheduler-side queuing every task goes to a worker at once. Each
    worker runs its own ready tasks by fair-share tag, but Dask places each
    tenant's tasks in contiguous blocks per worker, so the cluster-wide share is
    not guaranteed (documented in docs/scheduling.md). Nothing breaks or starves."""
    await register(c, tenants=WEIGHTS)
    shares, interval = contended_shares(await submit_maps(c))
    report("FairShare 2:1:1, worker-saturation inf (not enforced)", shares, interval)
    assert not s.queued
    assert all(share >= 0.15 for share in shares.values()), shares
    # what each worker received carries the fair-share tag after the queue rank
    assert all(len(ts.priority) == 5 for ts in s.tasks.values())


# ------------------------------------------------------------------ quotas
class ProcessingCounter(SchedulerPlugin):
    """Checks, on every transition, how many tasks of each tenant are in processing."""

    name = "test-processing-counter"

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.now = {}
        self.peak = {}

    def transition(self, key, start, finish, *args, **kwargs):
        if "processing" not in (start, finish):
            return
        ts = self.scheduler.tasks.get(key)
        tenant = (ts.annotations or {}).get("oxigdal_tenant") if ts is not None else None
        if tenant is None:
            return
        n = self.now[tenant] = self.now.get(tenant, 0) + (1 if finish == "processing" else -1)
        self.peak[tenant] = max(self.peak.get(tenant, 0), n)


@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_quota_caps_a_tenants_concurrent_tasks(c, s, a, b):
    await register(c, tenants={"a": {"weight": 4, "max-tasks": 3}, "b": 1})
    counter = ProcessingCounter(s)
    s.add_plugin(counter)
    with annotate(tenant="a"):
        fa = c.map(work, range(60), tenant="a", key=[f"qa-{i}" for i in range(60)])
        ta = c.compute(tree("a", 40))  # dependencies: held until their inputs exist
    with annotate(tenant="b"):
        fb = c.map(work, range(60), tenant="b", key=[f"qb-{i}" for i in range(60)])
    ra = [rec for recs in await c.gather(fa) for rec in recs]
    rt = await ta
    rb = [rec for recs in await c.gather(fb) for rec in recs]
    assert len(ra) == 60 and len(rt) == 40 + 10 + 3 + 1 and len(rb) == 60
    assert counter.peak["a"] == 3, counter.peak  # never above, and the quota is used
    assert counter.peak["b"] >= 3, counter.peak  # b is not held back by a's backlog
    snap = (await status(c))["policies"]["Quota"]
    assert snap["limits"] == {"a": 3} and snap["max_admitted"]["a"] == 3
    assert not snap["admitted"] and not snap["held"]
    # concurrency seen on the workers, from the tasks' own timestamps
    events = sorted([(r[1], 1) for r in ra + rt] + [(r[2], -1) for r in ra + rt])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 3


# ----------------------------------------------------- Dask's priority= in a tenant
@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_user_priority_orders_a_tenants_own_work_only(c, s, a, b):
    """A later priority=10 submission of tenant a overtakes a's own backlog at once, and
    b gets the time a borrowed back right after (a's backlog is re-tagged behind it)."""
    await register(c, tenants={"a": 1, "b": 1})
    with annotate(tenant="a"):
        fa = c.map(work, range(300), tenant="a", key=[("work", "pa", i) for i in range(300)])
    with annotate(tenant="b"):
        fb = c.map(work, range(300), tenant="b", key=[("work", "pb", i) for i in range(300)])
    await asyncio.sleep(0.5)
    with annotate(tenant="a"):
        urgent = c.map(
            work,
            range(20),
            tenant="a-urgent",
            key=[("work", "pu", i) for i in range(20)],
            priority=10,
        )
    ru = [rec for recs in await c.gather(urgent) for rec in recs]
    first_u, last_u = min(r[1] for r in ru), max(r[1] for r in ru)
    # let the repayment window pass, then read every task that has run
    await async_poll_for(lambda: sum(f.done() for f in fa + fb) >= 150, timeout=60)
    ra = [rec for recs in await c.gather([f for f in fa if f.done()]) for rec in recs]
    rb = [rec for recs in await c.gather([f for f in fb if f.done()]) for rec in recs]
    a_during = sum(1 for r in ra if first_u < r[1] < last_u)
    # the 40 task starts after the last urgent one: b is repaid the ~20 tasks a borrowed
    # (then they alternate), about 30 of 40; without the re-tag about half (~20 of 40)
    starts = sorted([(r[1], "a") for r in ra + ru] + [(r[1], "b") for r in rb])
    window = [t for t in starts if t[0] > last_u][:40]
    b_window = sum(1 for _, t in window if t == "b")
    fs = s.plugins["oxigdal"].get_policy("FairShare")
    print(
        f"\nuser priority: while a's 20 urgent tasks started, a started {a_during} "
        f"backlog tasks; b started {b_window} of the 40 starts after the last urgent one; "
        f"re-tags {fs.retags}, inserted ahead {fs.inserted_ahead}"
    )
    assert a_during <= 2 * 4  # only what the workers already held
    assert len(window) == 40
    assert b_window >= 26
    await c.cancel(fa + fb)


# --------------------------------------------- a submit loop inside one generation
@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_submit_loop_in_one_generation_is_not_one_task(c, s, a, b):
    """Tenant a submits 300 tasks with separate client.submit calls in one fifo_timeout
    generation (Dask ties them all); b arrives later and still gets its half."""
    await register(c, tenants={"a": 1, "b": 1})
    with annotate(tenant="a"):
        fa = [
            c.submit(work, i, tenant="a", key=("work", "sa", i), fifo_timeout="60s")
            for i in range(300)
        ]
    # every submission reached the scheduler (they are handled one message at a time)
    await async_poll_for(lambda: sum(f.key in s.tasks for f in fa) == 300, timeout=60)
    await async_poll_for(lambda: sum(f.done() for f in fa) >= 8, timeout=60)
    t_submit = time.time()
    with annotate(tenant="b"):
        fb = c.map(work, range(60), tenant="b", key=[("work", "sb", i) for i in range(60)])
    rb = [rec for recs in await c.gather(fb) for rec in recs]
    ra = [rec for recs in await c.gather([f for f in fa if f.done()]) for rec in recs]
    shares, interval = contended_shares(ra + rb)
    first_b = min(r[1] for r in rb) - t_submit
    fs = s.plugins["oxigdal"].get_policy("FairShare")
    print(
        f"\nsubmit loop: b's first task {first_b:.3f} s after its submission; shares "
        f"a={shares['a']:.3f} b={shares['b']:.3f} over {interval:.2f} s; re-tags {fs.retags}"
    )
    # b is not queued behind a's whole tied backlog (300 x 20 ms on 4 threads = 1.5 s)
    a_before_b = sum(1 for r in ra if t_submit < r[1] < min(x[1] for x in rb))
    assert a_before_b <= 2 * 4 + 4
    assert shares["b"] == pytest.approx(0.5, abs=0.1)
    await c.cancel(fa)
