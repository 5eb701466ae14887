"""OxigdalScheduling on a real cluster: install, status, robustness, accounting, guards.

The last section guards every ``distributed`` internal the extension relies
on: if a ``distributed`` release changes one, a test here fails and names it.
"""

from __future__ import annotations

# Import dask_oxigdal (which registers the oxigdal.* config defaults) before
# distributed.utils_test: gen_cluster restores the dask config to a snapshot
# taken when utils_test is first imported, which would otherwise lack them.
import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import json
import operator
import time

import dask
import pytest
from distributed import Event, Scheduler, wait
from distributed.collections import HeapSet
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.scheduler import TaskPrefix, TaskState
from distributed.utils_test import captured_logger, gen_cluster
from tornado.ioloop import PeriodicCallback

from dask_oxigdal.annotations import annotate
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling.extension import (
    HOLD_ADDRESS,
    NAME,
    STATUS_HANDLER,
    OxigdalScheduling,
    register,
    status,
)
from dask_oxigdal.scheduling.fairshare import FairShare
from dask_oxigdal.scheduling.policy import SchedulingPolicy

FAIRSHARE = {"class": "dask_oxigdal.scheduling.fairshare.FairShare"}


def inc(x):
    return x + 1


def boom(x):
    raise RuntimeError(f"boom {x}")


def slowinc(x, delay=0.01):
    time.sleep(delay)
    return x + 1


def block(x, ev):
    ev.wait()
    return x


class BoomInUpdateGraph(SchedulingPolicy):
    name = "boom-update-graph"

    def update_graph(self, new):
        raise RuntimeError("policy bug in update_graph")


class BoomInTransition(SchedulingPolicy):
    name = "boom-transition"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def transition(self, key, start, finish, info, kwargs):
        self.calls += 1
        if finish == "processing":
            raise RuntimeError("policy bug in transition")


class CountingPeriodic(SchedulingPolicy):
    name = "counting"

    def __init__(self):
        super().__init__()
        self.ticks = 0

    def periodic(self):
        self.ticks += 1


def _ext(s: Scheduler) -> OxigdalScheduling:
    ext = s.plugins[NAME]
    assert isinstance(ext, OxigdalScheduling)
    return ext


# ------------------------------------------------------------------ tenants
@gen_cluster(client=True)
async def test_an_unknown_tenant_is_accounted_to_default_with_one_warning(c, s, a, b):
    """A tenant annotation not in oxigdal.tenants (a typo, a missing entry) runs as
    the default tenant, and the scheduler says so once per name."""
    await register(c, tenants={"a": 2})
    with captured_logger("dask_oxigdal.scheduling.extension") as log:
        for i in range(2):
            with annotate(tenant="typo"):
                assert await c.submit(inc, i, key=f"typo-{i}") == i + 1
        with annotate(tenant="a"):
            assert await c.submit(inc, 5, key="known") == 6
    lines = [line for line in log.getvalue().splitlines() if "unknown tenant" in line]
    assert len(lines) == 1 and "'typo'" in lines[0] and "'default'" in lines[0]
    assert "configured tenants: a, default" in lines[0]
    snap = await status(c)
    assert "typo" not in snap["tenants"] and snap["tenants"]["a"]["completed"] == 1
    assert snap["tenants"]["default"]["completed"] == 2


# ------------------------------------------------------------------ install
@gen_cluster(client=True)
async def test_register_is_idempotent(c, s, a, b):
    assert await status(c) == {"installed": False}
    await register(c, tenants={"a": 2})
    ext = _ext(s)
    assert OxigdalScheduling.name == "oxigdal" and OxigdalScheduling.idempotent is True
    assert STATUS_HANDLER in s.handlers
    assert isinstance(s.periodic_callbacks[NAME], PeriodicCallback)
    assert s.periodic_callbacks[NAME].is_running()
    # a second register is a no-op: same object, options unchanged, no warning
    await register(c, tenants={"zzz": 5})
    assert _ext(s) is ext
    assert "zzz" not in ext.weights and ext.weights["a"] == 2.0
    # replace=True installs a fresh extension with the new options
    await register(c, replace=True, tenants={"zzz": 5})
    assert _ext(s) is not ext and _ext(s).weights["zzz"] == 5.0
    assert ext.scheduler is s  # the old one was closed, not the scheduler
    assert s.periodic_callbacks[NAME].is_running()


@gen_cluster(client=True)
async def test_status_is_a_json_snapshot_with_accounting(c, s, a, b):
    await register(c, tenants={"a": 2, "b": 1})
    with annotate(tenant="a"):
        ok = c.map(slowinc, range(10), delay=0.02)
    with annotate(tenant="b"):
        bad = c.map(boom, range(3))
    await wait(ok + bad)
    snap = await status(c)
    assert json.loads(json.dumps(snap, allow_nan=False)) == snap
    assert snap["installed"] is True
    assert snap["policies"]["FairShare"]["enabled"] is True
    ta, tb = snap["tenants"]["a"], snap["tenants"]["b"]
    assert (ta["submitted"], ta["completed"], ta["erred"], ta["pending"]) == (10, 10, 0, 0)
    assert (tb["submitted"], tb["completed"], tb["erred"]) == (3, 0, 3)
    # worker-seconds come from the workers' startstops (10 x >= 20 ms)
    assert ta["worker_seconds"] >= 10 * 0.02 * 0.9
    assert ta["bytes_in_memory"] > 0
    assert 0.0 < ta["lifetime_share"] <= 1.0
    assert snap["tenants"]["default"]["weight"] == 1.0
    # releasing results frees their bytes
    del ok
    while (await status(c))["tenants"]["a"]["bytes_in_memory"]:
        await asyncio.sleep(0.01)


@gen_cluster(client=True)
async def test_cancelled_tasks_are_counted(c, s, a, b):
    await register(c, tenants={"a": 1})
    ev = Event()
    with annotate(tenant="a"):
        futs = c.map(block, range(20), ev=ev)
    while not any(ts.state == "processing" for ts in s.tasks.values()):
        await asyncio.sleep(0.01)
    await c.cancel(futs)
    # cancel-keys goes on the batched stream and Event.set on its own comm: wait for
    # the cancellation to reach the scheduler, or a running task may finish first
    while any(f.key in s.tasks for f in futs):
        await asyncio.sleep(0.01)
    await ev.set()
    while _ext(s).info:
        await asyncio.sleep(0.01)
    snap = (await status(c))["tenants"]["a"]
    assert snap["cancelled"] == 20 and snap["pending"] == 0 and snap["running"] == 0


@gen_cluster(client=True, scheduler_kwargs={"dashboard_address": ":0"})
async def test_entitled_share_counts_tenants_with_work(c, s, a, b):
    await register(c, tenants={"a": 3, "b": 1})
    ev = Event()
    with annotate(tenant="a"):
        fa = c.map(block, range(4), ev=ev)
    with annotate(tenant="b"):
        fb = c.map(block, range(4, 8), ev=ev)

    async def both_arrived():  # the two graphs reach the scheduler one after the other
        tenants = (await status(c))["tenants"]
        return all(tenants.get(t, {}).get("submitted") == 4 for t in "ab")

    for _ in range(1200):
        if await both_arrived():
            break
        await asyncio.sleep(0.05)
    tenants = (await status(c))["tenants"]
    assert tenants["a"]["entitled_share"] == pytest.approx(0.75)
    assert tenants["b"]["entitled_share"] == pytest.approx(0.25)
    assert tenants["default"]["entitled_share"] == 0.0
    await ev.set()
    await wait(fa + fb)


@gen_cluster(
    client=True,
    scheduler_kwargs={
        "preload": ["dask_oxigdal.preload"],
        "preload_argv": [
            [
                "--oxigdal-tenant",
                "a=3",
                "--oxigdal-tenant",
                "b=1,max-tasks=5,guaranteed-slots=1",
                "--oxigdal-queues",
                "hi,lo",
                "--oxigdal-default-queue",
                "lo",
            ]
        ],
    },
)
async def test_preload_installs_the_extension_with_its_options(c, s, a, b):
    ext = _ext(s)
    assert ext.weights["a"] == 3.0
    assert ext.weights["b"] == 1.0
    quota = ext.get_policy("Quota").snapshot()
    assert quota["limits"]["b"] == 5, quota
    assert quota["guarantees"]["b"] == 1, quota
    assert ext.queues == ["hi", "lo"]
    snap = await status(c)
    assert snap["queues"] == ["hi", "lo"]
    # register() after the preload is a no-op
    await register(c, tenants={"a": 1})
    assert _ext(s) is ext and ext.weights["a"] == 3.0


@gen_cluster(client=True)
async def test_policies_come_from_config(c, s, a, b):
    policies = [{"class": "dask_oxigdal.scheduling.fairshare.FairShare", "default-task-cost": "2s"}]
    with dask.config.set({"oxigdal.scheduling.policies": policies}):
        await register(c)
    fs = _ext(s).get_policy("FairShare")
    assert isinstance(fs, FairShare) and fs.default_task_cost == 2.0


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"queues": []}, "queues"),
        ({"default_queue": "nope"}, "'nope'"),
        ({"tenants": {"a": -1}}, "oxigdal.tenants.a"),
        ({"policies": [{"class": "no.such.Policy"}]}, "no.such.Policy"),
        ({"policies": [{"klass": "x"}]}, "'class'"),
        (
            {"policies": [{"class": "dask_oxigdal.scheduling.fairshare.FairShare", "wieght": 2}]},
            "no option 'wieght'; valid options: default-task-cost, max-prefixes, retag-factor",
        ),
    ],
)
def test_bad_configuration_is_reported_to_the_client(options, needle):
    @gen_cluster(client=True)
    async def run(c, s, a, b):
        with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
            await register(c, **options)
        assert NAME not in s.plugins

    run()


# --------------------------------------------------------------- robustness
@gen_cluster(client=True)
async def test_malformed_annotations_err_only_their_submission(c, s, a, b):
    await register(c, tenants={"a": 1, "b": 1})
    with annotate(tenant="a"):
        good = c.map(slowinc, range(30), key=[f"good-{i}" for i in range(30)])
    # hand-written annotations, as from a client without dask-oxigdal
    with dask.annotate(oxigdal_tenant="b", oxigdal_deadline="soon"):
        bad = c.map(inc, range(30), key=[f"bad-{i}" for i in range(30)])
        bad_total = c.submit(sum, bad, key="bad-total")
    with dask.annotate(oxigdal_tenant=""):
        bad_tenant = c.submit(inc, 1, key="bad-tenant")
    with dask.annotate(oxigdal_tennant="a"):
        bad_key = c.submit(inc, 1, key="bad-key")
    assert await c.gather(good) == list(range(1, 31))
    for fut, needle in [
        (bad[0], "oxigdal_deadline='soon'"),
        (bad_tenant, "oxigdal_tenant=''"),
        (bad_key, "'oxigdal_tennant'"),
    ]:
        with pytest.raises(ValueError, match=needle):
            await fut
    with pytest.raises(ValueError, match="oxigdal_deadline='soon'"):
        await bad_total
    assert all(s.tasks[f"bad-{i}"].state == "erred" for i in range(30))
    snap = await status(c)
    assert snap["malformed_tasks"] == 33
    assert snap["tenants"]["a"]["completed"] == 30 and snap["tenants"]["a"]["erred"] == 0
    assert snap["policies"]["FairShare"]["enabled"] is True
    # the cluster keeps working, for every tenant
    with annotate(tenant="b"):
        assert await c.submit(inc, 41, key="b-after") == 42
    # held tasks are failed by the extension, their dependents by Dask's propagation
    events = [e for _, e in s.get_events(NAME) if e.get("action") == "malformed-annotations"]
    assert {e["key"] for e in events} == {f"bad-{i}" for i in range(30)} | {"bad-tenant", "bad-key"}


@gen_cluster(client=True)
async def test_strict_rejects_unknown_tenants_and_unknown_queues(c, s, a, b):
    await register(c, tenants={"a": 1}, strict=True)
    with annotate(tenant="a"):
        ok = c.submit(inc, 1, key="ok")
    with annotate(tenant="mallory"):
        nope = c.submit(inc, 1, key="nope")
    with annotate(tenant="a", queue="urgent"):
        badq = c.submit(inc, 1, key="badq")
    assert await ok == 2
    with pytest.raises(ValueError, match=r"unknown tenant 'mallory'.*configured tenants: a"):
        await nope
    with pytest.raises(ValueError, match=r"unknown queue 'urgent'.*interactive, batch, background"):
        await badq


@gen_cluster(client=True)
async def test_unknown_tenants_are_accounted_to_default(c, s, a, b):
    await register(c, tenants={"a": 1})
    with annotate(tenant="someone-else"):
        assert await c.submit(inc, 1, key="x") == 2
    assert await c.submit(inc, 2, key="y") == 3  # no annotation at all
    snap = await status(c)
    assert snap["tenants"]["default"]["completed"] == 2
    assert "someone-else" not in snap["tenants"]


@gen_cluster(client=True)
async def test_policy_exception_disables_only_that_policy(c, s, a, b):
    boom_tr = BoomInTransition()
    await register(c, policies=[BoomInUpdateGraph(), FAIRSHARE, boom_tr], tenants={"a": 1})
    ext = _ext(s)
    with annotate(tenant="a"):
        futs = c.map(slowinc, range(20))
    assert await c.gather(futs) == list(range(1, 21))
    snap = await status(c)
    assert set(snap["disabled"]) == {"boom-update-graph", "boom-transition"}
    assert "policy bug in update_graph" in snap["disabled"]["boom-update-graph"]
    assert snap["policies"]["boom-transition"]["enabled"] is False
    assert snap["policies"]["FairShare"]["enabled"] is True
    assert snap["policies"]["FairShare"]["tasks_tagged"] == 20
    assert snap["tenants"]["a"]["completed"] == 20
    calls = ext.get_policy("boom-transition").calls
    # a disabled policy is not called again; the scheduler keeps working
    with annotate(tenant="a"):
        assert await c.submit(inc, 1, key="after") == 2
    assert ext.get_policy("boom-transition").calls == calls
    events = [e for _, e in s.get_events(NAME) if e.get("action") == "policy-disabled"]
    assert {e["policy"] for e in events} == {"boom-update-graph", "boom-transition"}


@gen_cluster(client=True, config={"oxigdal.scheduling.interval": "10ms"})
async def test_periodic_callback_drives_policies(c, s, a, b):
    await register(c, policies=[CountingPeriodic()])
    policy = _ext(s).get_policy("counting")
    while policy.ticks < 3:
        await asyncio.sleep(0.01)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_survives_restart_and_disconnects_and_worker_churn(c, s, a):
    from distributed import Client, Worker

    await register(c, tenants={"a": 1, "b": 1})
    ext = _ext(s)
    ev = Event()
    # a second client disconnects with work queued
    async with Client(s.address, asynchronous=True) as c2:
        with annotate(tenant="b"):
            queued = c2.map(block, range(50), ev=ev)
        while not any(ts.state == "processing" for ts in s.tasks.values()):
            await asyncio.sleep(0.01)
        del queued
    # workers join and leave while tenant a works
    with annotate(tenant="a"):
        futs = c.map(slowinc, range(40), delay=0.01)
    async with Worker(s.address, nthreads=1):
        await ev.set()
        await asyncio.sleep(0.1)
    assert await c.gather(futs) == list(range(1, 41))
    with annotate(tenant="a"):
        pending = c.map(slowinc, range(100), delay=0.05)
    while not any(ts.state == "processing" for ts in s.tasks.values()):
        await asyncio.sleep(0.01)
    # plain Workers (no Nanny) are shut down by restart: bring a new one
    await c.restart(wait_for_workers=False)
    assert _ext(s) is ext and not ext.info
    del pending
    async with Worker(s.address, nthreads=1):
        with annotate(tenant="a"):
            assert await c.submit(inc, 1, key="after-restart") == 2
    snap = await status(c)
    assert snap["tenants"]["b"]["cancelled"] >= 1
    assert snap["tenants"]["a"]["completed"] >= 41
    assert not snap["disabled"]


# ----------------------------------------------- distributed internals we use
def test_guard_plugin_api():
    """SchedulerPlugin hooks and registration semantics the extension relies on."""
    import inspect

    for hook in ("start", "close", "update_graph", "transition", "restart"):
        assert hasattr(SchedulerPlugin, hook), hook
    params = inspect.signature(SchedulerPlugin.update_graph).parameters
    for name in ("client", "keys", "tasks", "annotations", "priority", "stimulus_id"):
        assert name in params, name
    params = inspect.signature(Scheduler.register_scheduler_plugin).parameters
    assert "idempotent" in params
    # the plugin is called BEFORE the new tasks are transitioned
    src = inspect.getsource(Scheduler._create_taskstate_from_graph)
    assert src.index("plugin.update_graph(") < src.index("self.transitions(recommendations")


def test_guard_task_and_prefix_attributes():
    """TaskState/TaskPrefix attributes read or written by the policies."""
    for attr in (
        "priority",
        "annotations",
        "worker_restrictions",
        "loose_restrictions",
        "host_restrictions",
        "resource_restrictions",
        "prefix",
        "state",
        "run_spec",
        "nbytes",
    ):
        assert attr in TaskState.__slots__ or hasattr(TaskState, attr), attr
    for attr in ("duration_average", "max_exec_time"):
        assert attr in TaskPrefix.__slots__, attr


@gen_cluster(client=True)
async def test_guard_scheduler_internals(c, s, a, b):
    """Scheduler attributes and state-machine paths the extension relies on."""
    # queued: a HeapSet keyed by TaskState.priority, cached at insertion
    assert isinstance(s.queued, HeapSet)
    assert s.queued.key is not None
    assert isinstance(s.periodic_callbacks, dict)
    assert isinstance(s.handlers, dict)
    assert isinstance(s.plugins, dict)
    assert callable(s.transition) and callable(s.transitions)
    assert hasattr(s, "loop") and callable(s.loop.add_callback)
    # Dask's own priority: a 3-tuple of numbers (-user priority, generation, order)
    fut = c.submit(inc, 1, key="shape", priority=5)
    await fut
    ts = s.tasks["shape"]
    prio = ts.priority
    assert isinstance(prio, tuple) and len(prio) == 3 and prio[0] == -5
    assert all(isinstance(x, (int, float)) for x in prio)
    assert s.queued.key(ts) == operator.attrgetter("priority")(ts)
    # per-prefix duration estimates (the fair-share cost)
    assert ts.prefix.name == "shape"  # key_split of the key
    assert isinstance(ts.prefix.duration_average, (int, float))  # -1: no estimate yet
    assert isinstance(ts.prefix.max_exec_time, (int, float))
    # the transition hook receives the worker's startstops on processing -> memory
    seen = {}

    class Spy(SchedulerPlugin):
        name = "spy"

        def transition(self, key, start, finish, *args, **kwargs):
            if key == "spied" and finish == "memory":
                seen.update(kwargs)

    s.add_plugin(Spy())
    await c.submit(slowinc, 1, key="spied")
    assert seen["startstops"] and {"action", "start", "stop"} <= set(seen["startstops"][0])
    assert any(ss["action"] == "compute" for ss in seen["startstops"])
    assert "nbytes" in seen


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2), ("127.0.0.1", 3)])
async def test_guard_total_nthreads_and_lifo_recommendations(c, s, a, b):
    """Guaranteed slots: the cluster's slots and the order admitted tasks are dispatched in."""
    import inspect

    # Quota counts one slot per worker thread
    assert isinstance(s.total_nthreads, int) and s.total_nthreads == 5
    # Scheduler.transitions pops recommendations last-in first-out and follows each
    # task's chain before the next: Quota.release inserts its admissions reversed
    src = inspect.getsource(Scheduler._transitions)
    assert "recommendations.popitem()" in src
    recs = {"x": 1, "y": 2}
    assert recs.popitem()[0] == "y"


@gen_cluster(client=True)
async def test_guard_rewritten_priority_orders_the_queue(c, s, a, b):
    """update_graph's rewrite is what scheduler.queued caches (root tasks, saturation 1.1)."""
    await register(c, tenants={"a": 1, "b": 1})
    ev = Event()
    with annotate(tenant="a"):
        fa = c.map(block, range(40), ev=ev, key=[f"a-{i}" for i in range(40)])
    with annotate(tenant="b"):
        fb = c.map(block, range(40), ev=ev, key=[f"b-{i}" for i in range(40)])
    while len(s.queued) < 60:
        await asyncio.sleep(0.01)
    order = [ts.key[0] for ts in s.queued.sorted()]
    # tenants alternate in the heap (fair share), not a's 40 then b's 40 (FIFO)
    assert order[:20].count("a") == pytest.approx(10, abs=3)
    for ts in s.queued:
        assert len(ts.priority) == 5 and s.queued.key(ts) == ts.priority
    await ev.set()
    await wait(fa + fb)


@gen_cluster(client=True)
async def test_guard_hold_address_sends_tasks_to_no_worker(c, s, a, b):
    """A task restricted to an address no worker has waits in scheduler.unrunnable."""
    assert HOLD_ADDRESS not in s.workers
    fut = c.submit(inc, 1, key="held", workers=[HOLD_ADDRESS], allow_other_workers=False)
    while "held" not in s.tasks or s.tasks["held"].state != "no-worker":
        await asyncio.sleep(0.01)
    assert s.tasks["held"] in s.unrunnable
    del fut


def test_preload_tenant_options_are_validated():
    import click

    from dask_oxigdal.preload import parse_tenant_options

    assert parse_tenant_options(("a=2", "team-b=0.5")) == {"a": 2.0, "team-b": 0.5}
    assert parse_tenant_options(("c=1,max-tasks=10,guaranteed_slots=2",)) == {
        "c": {"weight": 1.0, "max-tasks": 10, "guaranteed-slots": 2}
    }
    for bad in ("a", "a=", "=2", "a=-1", "a=zero", "a=nan", "a=inf"):
        with pytest.raises(click.BadParameter, match="NAME=WEIGHT"):
            parse_tenant_options((bad,))
    with pytest.raises(click.BadParameter, match=r"'slots=2'.*max-tasks=N, guaranteed-slots=N"):
        parse_tenant_options(("a=1,slots=2",))
    for bad in ("a=1,max-tasks=-1", "a=1,max-tasks=x", "a=1,guaranteed-slots=1.5"):
        with pytest.raises(click.BadParameter, match="non-negative integer"):
            parse_tenant_options((bad,))
