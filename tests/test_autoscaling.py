"""The Autoscaling policy on real clusters: Dask's Adaptive follows our target.

Scale-up/down is driven by ``distributed.deploy.Adaptive`` on a LocalCluster
(in-process workers, so that workers start in a fraction of a second on a
2-core machine); the other tests call the scheduler's ``adaptive_target`` /
``workers_to_close`` (the methods and RPC handlers Adaptive and the HTTP
route use). Intervals and the cooldown are short through config. No
wall-clock assertions: every wait is "until a condition holds".
"""

from __future__ import annotations

# Import dask_oxigdal before distributed.utils_test (see test_scheduling_extension.py).
import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import datetime
import inspect
import math
import statistics
import time

import dask
import pytest
from distributed import Client, Event, LocalCluster, Worker, get_worker
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.scheduler import Scheduler
from distributed.utils_test import gen_cluster
from tornado.httpclient import AsyncHTTPClient

import dask_oxigdal as dox
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.monitoring.metrics import metric_families
from dask_oxigdal.scheduling.autoscaling import Autoscaling, Forecaster, water_fill
from dask_oxigdal.scheduling.autoscaling_rules import StartLatency
from dask_oxigdal.scheduling.extension import register, status

AUTOSCALING = {"class": "dask_oxigdal.scheduling.autoscaling.Autoscaling"}
FAIRSHARE = {"class": "dask_oxigdal.scheduling.fairshare.FairShare"}
QUOTA = {"class": "dask_oxigdal.scheduling.quota.Quota"}
GANG = {"class": "dask_oxigdal.scheduling.gang.Gang"}
DEADLINE = {"class": "dask_oxigdal.scheduling.deadline.Deadline"}
LOCALITY = {"class": "dask_oxigdal.scheduling.locality.Locality", "wait": "1h"}


#: One thread; a task costs 200 s by Dask's guess; target-duration 1 h (deadline tests).
_ONE_THREAD_200S_TASKS = dict(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    timeout=60,
    config={
        "distributed.scheduler.unknown-task-duration": "200s",
        "distributed.adaptive.target-duration": "1h",
    },
)


async def _deadline_and_autoscaling(c, s):
    """FairShare, Deadline and Autoscaling (400 s start latency, 1 h cooldown)."""
    await register(
        c,
        policies=[FAIRSHARE, DEADLINE, {**AUTOSCALING, "start-latency": "400s", "cooldown": "1h"}],
    )
    ext = s.plugins["oxigdal"]
    return ext.get_policy("Autoscaling"), ext.get_policy("Deadline")


async def _until(predicate, timeout=45.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.05)


async def _held_and_busy(c, s, holder, busy, gate):
    """``x`` in memory on ``holder``; ``z`` running on ``busy`` until event ``gate``;
    ``y`` waiting for both (so ``holder`` holds a key a waiting task needs)."""
    x = c.submit(_sleep, 1, 0.0, workers=[holder], pure=False)
    await x
    z = c.submit(_wait_event, gate, 1, workers=[busy], pure=False)
    y = c.submit(_add, x, z, pure=False)
    zkey, ykey = z.key, y.key
    await _until(lambda: s.tasks.get(zkey) is not None and s.tasks[zkey].state == "processing")
    await _until(lambda: s.tasks.get(ykey) is not None and s.tasks[ykey].state == "waiting")
    return x, y, z


def _sleep(x, seconds=0.2):
    time.sleep(seconds)
    return x


def _wait_event(name, x=None):
    Event(name).wait(60)
    return x


def _events(s, kind="autoscale"):
    return [e for _, e in s.get_events("oxigdal") if e.get("kind") == kind]


class ComputeCounter(SchedulerPlugin):
    """Counts how often each key finished computing (processing -> memory)."""

    name = "compute-counter"

    def __init__(self):
        self.computed: dict = {}

    def transition(self, key, start, finish, *args, **kwargs):
        if start == "processing" and finish == "memory":
            self.computed[key] = self.computed.get(key, 0) + 1


# ------------------------------------------------------------------- guards
@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_guard_adaptive_target_hooks(c, s, a):
    """What the override relies on in distributed (docs/architecture.md)."""
    # the RPC handlers are bound methods taken at Scheduler.__init__: we replace them too
    assert s.handlers["adaptive_target"] == s.adaptive_target
    assert s.handlers["workers_to_close"] == s.workers_to_close
    params = inspect.signature(Scheduler.workers_to_close).parameters
    assert list(params)[1:] == ["memory_ratio", "n", "key", "minimum", "target", "attribute"]
    assert "target_duration" in inspect.signature(Scheduler.adaptive_target).parameters
    # the HTTP route, the JSON route and the Prometheus gauge call it through the instance
    from distributed.http.scheduler import api
    from distributed.http.scheduler import json as json_route
    from distributed.http.scheduler.prometheus import core

    assert "scheduler.adaptive_target()" in inspect.getsource(api.AdaptiveTargetHandler)
    assert "scheduler.adaptive_target()" in inspect.getsource(json_route)
    assert "self.server.adaptive_target()" in inspect.getsource(core)
    # Dask's own target and retire_workers ask the instance for workers_to_close
    assert "self.workers_to_close(" in inspect.getsource(Scheduler.adaptive_target)
    assert "self.workers_to_close(" in inspect.getsource(Scheduler.retire_workers)
    ws = s.workers[a.address]
    for attr in ("processing", "has_what", "nbytes", "memory_limit", "long_running", "nthreads"):
        assert hasattr(ws, attr), attr
    assert hasattr(SchedulerPlugin, "valid_workers_downscaling")

    await register(c, policies=[AUTOSCALING])
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    for name in ("adaptive_target", "workers_to_close"):
        assert getattr(s, name).__self__ is policy
        assert s.handlers[name].__self__ is policy
    assert await c.scheduler.adaptive_target(target_duration="5s") == 1
    # replacing the extension closes the policy: Dask's own methods are back
    await register(c, replace=True, policies=[FAIRSHARE])
    for name in ("adaptive_target", "workers_to_close"):
        assert getattr(s, name).__func__ is getattr(Scheduler, name)
        assert s.handlers[name].__func__ is getattr(Scheduler, name)


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    timeout=60,
)
async def test_http_gauge_and_metrics_follow_our_target(c, s, a):
    await register(c, policies=[FAIRSHARE, GANG, AUTOSCALING])
    ev = Event("as-http-block")
    with dox.annotate(gang="big", tenant="default"):
        gang = c.map(_wait_event, ["as-http-block"] * 3, range(3), pure=False)
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    await _until(lambda: s.plugins["oxigdal"].get_policy("Gang").waiting)
    assert s.adaptive_target() == 3  # the waiting gang (Dask's rule would ask 1)
    port = s.http_server.port
    body = (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")).body.decode()
    assert "dask_scheduler_desired_workers 3.0" in body
    assert 'dask_oxigdal_desired_workers{tenant="default"} 3.0' in body
    assert 'dask_oxigdal_forecast_task_seconds{tenant="default"}' in body
    snap = await status(c)
    auto = snap["policies"]["Autoscaling"]
    assert auto["target"] == 3 and auto["rule"] == "gang" and auto["tenant"] == "default"
    assert auto["tenants"]["default"]["desired_workers"] == 3
    names = {f.name for f in metric_families(snap)}
    assert {"desired_workers", "forecast_task_seconds"} <= names
    events = _events(s)
    assert events[-1]["rule"] == "gang" and events[-1]["target"] == 3
    assert policy.gang_timeout > 0
    await ev.set()
    del gang


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=60)
async def test_a_waiting_gang_asks_for_its_threads_beside_the_busy_ones(c, s, a, b):
    """A gang of 2 on 2 threads busy with tasks Dask does not queue (Gang cannot
    hold them back): the target is 2 idle threads more, not the 2 there are."""
    await register(c, policies=[FAIRSHARE, GANG, AUTOSCALING])
    busy = [
        c.submit(_wait_event, "as-gang-busy", i, workers=[w.address], pure=False)
        for i, w in enumerate((a, b))
    ]
    await _until(lambda: all(len(s.workers[w.address].processing) == 1 for w in (a, b)))
    with dox.annotate(gang="pair", tenant="default"):
        gang = c.map(_wait_event, ["as-gang-busy"] * 2, range(10, 12), pure=False)
    await _until(lambda: s.plugins["oxigdal"].get_policy("Gang").waiting)
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    assert s.adaptive_target() == 4
    assert policy.decision["rule"] == "gang" and policy.decision["rules"]["gang"] == 2
    await Event("as-gang-busy").set()
    await c.gather(busy + gang)


# ------------------------------------------------------------- scale up/down
def test_adapt_scales_up_for_a_gang_and_a_deadline_then_down_without_recomputing():
    """LocalCluster + Adaptive(minimum=1, maximum=6): gang of 4, a deadline job, a tree."""
    config = {
        "distributed.adaptive.interval": "100ms",
        "distributed.adaptive.wait-count": 1,
        "distributed.scheduler.unknown-task-duration": "1s",
        "oxigdal.scheduling.interval": "100ms",
        "oxigdal.autoscaling.cooldown": "1s",
        "oxigdal.autoscaling.max-down-fraction": 0.5,
        "oxigdal.autoscaling.start-latency": "200ms",
        "oxigdal.autoscaling.forecast.model": "none",
    }
    with dask.config.set(config):
        asyncio.run(_adapt_scenario())


async def _adapt_scenario():
    async with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address=":0",
        asynchronous=True,
    ) as cluster:
        s = cluster.scheduler
        counter = ComputeCounter()
        s.add_plugin(counter)
        async with Client(cluster, asynchronous=True) as c:
            await register(c, policies=[FAIRSHARE, GANG, DEADLINE, AUTOSCALING])
            # target_duration=60s: Dask's occupancy rule alone would keep 1 worker
            cluster.adapt(minimum=1, maximum=6, target_duration="60s")

            # 1. a gang of 4 on a 1-thread cluster waits for workers (no GangTooLarge)
            with dox.annotate(gang="four"):
                gang = c.map(_sleep, range(4), pure=False)
            assert await c.gather(gang) == [0, 1, 2, 3]
            assert any(e["rule"] == "gang" and e["target"] >= 4 for e in _events(s))
            await _until(lambda: len(s.workers) == 1)  # back down after the cooldown
            downs = [e for e in _events(s) if e["target"] < e["previous"]]
            assert downs and all(e["previous"] - e["target"] <= 2 for e in downs)

            # 2. a deadline job that one worker cannot meet: 12 x 1 s due in 8 s (new
            # workers help while the measured start latency is below 8 - 1 s)
            with dox.annotate(deadline="8s"):
                job = c.map(_sleep, range(12), seconds=1.0, pure=False)
            await _until(lambda: len(s.workers) > 1)
            assert any(e["rule"] == "deadline" for e in _events(s))
            await c.gather(job)
            await _until(lambda: len(s.workers) == 1)

            # 3. a tree reduction held in memory on several workers, then a scale-down
            leaves = c.map(_sleep, range(16), seconds=0.3, pure=False)
            with dox.annotate(gang="spread"):  # a gang of 4 makes the cluster grow
                spread = c.map(_sleep, range(4), pure=False)
            level = leaves
            while len(level) > 1:
                level = [c.submit(sum, level[i : i + 2]) for i in range(0, len(level), 2)]
            total = await level[0]
            assert total == sum(range(16))
            await c.gather(spread)
            assert (
                len({next(iter(ts.who_has)).address for ts in (s.tasks[f.key] for f in leaves)}) > 1
            )
            keys = [f.key for f in leaves]
            await _until(lambda: len(s.workers) == 1)  # retired: data moved off first
            assert await c.gather(leaves) == list(range(16))
            assert all(counter.computed.get(k) == 1 for k in keys)
            assert max(counter.computed.values()) == 1, "a task was computed twice"


# ------------------------------------------------------------------- quota
@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_tenant_over_its_quota_triggers_no_scale_up(c, s, a):
    await register(
        c,
        tenants={"capped": {"weight": 1, "max-tasks": 1}, "free": 1},
        # no start latency: every backlog is worth a new worker
        policies=[FAIRSHARE, QUOTA, {**AUTOSCALING, "start-latency": "0s"}],
    )
    with dox.annotate(tenant="capped"):
        capped = c.map(_sleep, range(8), pure=False)
    await _until(lambda: s.tasks.get(capped[-1].key) is not None and len(s.unrunnable) > 0)
    # Dask's own rule counts the held tasks; ours caps the tenant at its quota
    targets = [s.adaptive_target(target_duration="100ms")]
    dask_target = Scheduler.adaptive_target(s, target_duration="100ms")
    while not all(f.done() for f in capped):
        targets.append(s.adaptive_target(target_duration="100ms"))
        await asyncio.sleep(0.05)
    assert max(targets) == 1, targets
    assert dask_target > 1  # the same backlog asks Dask for more workers
    # the same work of a tenant without a quota does ask for more
    with dox.annotate(tenant="free"):
        free = c.map(_sleep, range(8), pure=False)
    await _until(lambda: s.adaptive_target(target_duration="100ms") > 1)
    await c.gather(free)


# ------------------------------------------------------------- cached tiles
def _load_tile(tile):
    return get_worker().address, float(dox.cached(tile, lambda: [float(tile[-1])] * 1000)[0])


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=60)
async def test_worker_holding_a_wanted_tile_is_not_closed(c, s, a, b):
    await register(c, policies=[LOCALITY, AUTOSCALING])
    locality = s.plugins["oxigdal"].get_policy("Locality")
    # the tile lives in a's cache; b holds more keys (Dask's choice would be a)
    addr, _ = await c.submit(_load_tile, "tile/1", workers=[a.address], pure=False)
    assert addr == a.address
    await _until(lambda: locality.homes.get("tile/1") == {a.address})
    held = c.map(lambda x: x, range(5), workers=[b.address], pure=False)
    await c.gather(held)
    assert Scheduler.workers_to_close(s, n=1) == [a.address]
    # a task that wants the tile, waiting on a dependency
    gate = Event("as-tile-gate")
    dep = c.submit(_wait_event, "as-tile-gate", workers=[b.address], pure=False)
    with dox.annotate(locality="tile/1"):
        wanting = c.submit(lambda _, t: _load_tile(t), dep, "tile/1", pure=False)
    await _until(lambda: s.tasks.get(wanting.key) is not None)
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    assert policy.protected() == {a.address: "cached-tile"}
    assert a.address not in s.workers_to_close(n=1)
    assert a.address not in await c.scheduler.workers_to_close(target=1)
    assert a.address not in s.workers_to_close()
    await gate.set()
    assert (await wanting)[0] == a.address
    await _until(lambda: not policy.wanted)
    assert s.workers_to_close(n=1) == [a.address]  # no longer wanted: cheapest again
    del held


# -------------------------------------------------------------- bad config
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cooldown": "-5s"}, r"oxigdal.autoscaling.cooldown='-5s' is not a duration"),
        ({"cooldown": "soon"}, r"oxigdal.autoscaling.cooldown='soon'"),
        (
            {"forecast": {"model": "arima"}},
            r"forecast.model='arima' is not valid; choose one of none, ewma, holt, holt-winters",
        ),
        ({"forecast": {"modle": "holt"}}, r"unknown key\(s\) \['modle'\]"),
        ({"max_down_fraction": 1.5}, r"max-down-fraction=1.5 must be a number in \[0, 1\]"),
        ({"minimum": 3, "maximum": 2}, r"maximum=2 is below minimum=3"),
        ({"forecast": {"interval": 0}}, r"forecast.interval=0 must be > 0"),
        ({"idle_timeout": "later"}, r"oxigdal.autoscaling.idle-timeout='later'"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_value(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Autoscaling(**kwargs)


def test_bad_config_from_dask_config():
    with dask.config.set({"oxigdal.autoscaling.forecast.model": "prophet"}):
        with pytest.raises(ConfigError, match=r"'prophet'.*none, ewma, holt, holt-winters"):
            Autoscaling()


# ---------------------------------------------------------------- forecast
def test_holt_winters_learns_a_season_and_holt_a_trend():
    pattern = [0, 0, 10, 40, 10, 0]
    hw = Forecaster("holt-winters", 0.3, 0.05, 0.6, season=len(pattern))
    for _ in range(6):
        for y in pattern:
            hw.update(y)
    ahead = [hw.predict(h) for h in range(1, 7)]
    assert ahead.index(max(ahead)) == pattern.index(40)
    holt = Forecaster("holt", 0.5, 0.5, 0.0, season=1)
    for y in range(0, 50, 5):
        holt.update(float(y))
    assert holt.predict(2) > holt.predict(1) > 45
    assert Forecaster("none", 0.5, 0.1, 0.1, 4).predict(1) == 0.0
    ewma = Forecaster("ewma", 0.5, 0.0, 0.0, 1)
    for y in (4.0, 4.0, 4.0):
        ewma.update(y)
    assert ewma.predict(3) == 4.0


def test_spare_seconds_count_a_deadlines_workers_on_their_way_after_its_work():
    """Before a worker asked for now starts (31 s), 2 running threads and the 24
    threads on their way that a deadline counts on (arriving at 256.1) do 179.6 s
    of work; the deadline's 116 s come first. Workers on their way that no
    deadline counts on are not capacity: they were asked for for this work."""
    from dask_oxigdal.scheduling.autoscaling_target import spare_seconds

    arrivals = [256.1] * 24 + [258.0] * 5
    assert spare_seconds(230.0, 31.0, 2, 1.0, arrivals, 24, 116.0) == pytest.approx(63.6)
    # none claimed: the running threads' 62 s all go to the deadline
    assert spare_seconds(230.0, 31.0, 2, 1.0, arrivals, 0, 116.0) == 0.0
    # no deadline: the running threads' whole horizon, as before
    assert spare_seconds(230.0, 31.0, 2, 1.0, [], 0, 0.0) == 62.0
    # an overdue worker counts from now; 2 threads a worker: 3 claimed threads, 2 workers
    assert spare_seconds(230.0, 31.0, 0, 2.0, [225.0, 240.0, 250.0], 3, 0.0) == 104.0


@gen_cluster(**_ONE_THREAD_200S_TASKS)
async def test_ordinary_work_the_spare_seconds_absorb_asks_for_no_worker(c, s, a):
    """Work queued behind a deadline job (no thread free now) asks for new workers
    only for what the spare seconds before their arrival will not do."""
    from dask_oxigdal.scheduling.autoscaling_target import _demand_rule

    await register(c, policies=[FAIRSHARE, {**AUTOSCALING, "start-latency": "400s"}])
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    futures = c.map(_wait_event, ["as-spare-gate"] * 4, range(4), pure=False)
    await _until(lambda: sum(1 for f in futures if f.key in s.tasks) == 4)
    await _until(lambda: sum(policy.ready.values()) == 4)
    # 4 tasks of 200 s (Dask's guess), to finish in 100 s: 4 threads
    assert _demand_rule(policy, 100.0, 0.0, 0.0, {})[0] == 4.0
    # 250 s of them done before new workers would arrive: 2 threads for the rest
    assert _demand_rule(policy, 100.0, 0.0, 250.0, {})[0] == 2.0
    # all of them: none
    assert _demand_rule(policy, 100.0, 0.0, 400.0, {})[0] == 0.0
    await Event("as-spare-gate").set()
    await c.gather(futures)


def test_start_latency_matches_an_ambiguous_arrival_to_its_nearest_request():
    """Workers asked for and partly given up: the deployment chooses which pending
    ones go, so a later arrival may answer any of them; it is matched to the
    request time nearest to the estimate, not to the oldest."""
    lat = StartLatency(30.0)  # assumed 30 s; the deployment takes 31 s
    assert lat.value == lat.cautious == 30.0  # nothing measured: the assumed value
    lat.track(2, 0, now=0.0)  # 2 asked for at t=0
    lat.track(4, 0, now=10.0)  # 2 more at t=10
    lat.track(2, 0, now=15.0)  # 2 given up: the deployment chooses which (here the t=0 ones)
    lat.track(4, 0, now=20.0)  # 2 more asked for at t=20
    for arrival in (41.0, 41.0, 51.0, 51.0):  # each 31 s after its own request
        lat.arrived(arrival)
    # matched to the oldest (t=0), the first two would measure 41 s
    assert list(lat.samples) == [31.0, 31.0, 31.0, 31.0]
    assert lat.ambiguous == 2 and lat.value == 31.0
    # the estimate is the median; deadlines use the upper quartile
    lat = StartLatency(10.0)
    for start, took in ((100.0, 5.0), (200.0, 6.0), (300.0, 7.0), (400.0, 8.0)):
        lat.track(5, 4, now=start)
        lat.arrived(start + took)
        lat.track(4, 4, now=start + took)  # the worker left again
    assert list(lat.samples) == [5.0, 6.0, 7.0, 8.0] and lat.ambiguous == 0
    assert lat.value == 6.5 and lat.cautious == 7.25
    lat.arrived(450.0)  # a worker nobody asked for: no sample
    assert lat.count == 4
    # due within 3 s: the requests whose earliest time plus the estimate is that close
    lat.track(6, 4, now=600.0)
    assert lat.arriving(608.0, 3.0) == 2 and lat.arriving(602.0, 3.0) == 0
    assert lat.latest() == [600.0, 600.0]
    # candidate times older than the longest latency kept are dropped at the next give-up
    lat.track(7, 4, now=1000.0)  # a third request, at t=1000
    lat.track(6, 4, now=1100.0)  # one given up: candidates {600, 1000}, both recent
    assert list(lat.requests) == [(600.0, 1000.0)] * 2
    lat.track(5, 4, now=1500.0)  # another: 600 is now older than 600 s, 1000 is not
    assert list(lat.requests) == [(1000.0,)]


def test_water_fill_is_weighted_max_min_fair():
    assert water_fill({"a": 10, "b": 1}, {"a": 1, "b": 1}, 5) == {"a": 4, "b": 1}
    alloc = water_fill({"a": 10, "b": 10}, {"a": 3, "b": 1}, 8)
    assert alloc == pytest.approx({"a": 6, "b": 2})
    assert water_fill({"a": 2}, {}, 10) == {"a": 2}


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    config={"oxigdal.scheduling.interval": "100ms"},
    timeout=60,
)
async def test_gang_larger_than_the_cluster_waits_then_errs_after_the_autoscaling_timeout(c, s, a):
    from dask_oxigdal.exceptions import GangTooLarge

    await register(c, policies=[GANG, {**AUTOSCALING, "gang-timeout": "1s"}])
    with dox.annotate(gang="too-big"):
        futures = c.map(_sleep, range(3), pure=False)
    gang = s.plugins["oxigdal"].get_policy("Gang")
    # accepted: waiting for workers (gangs are keyed by (tenant, name))
    await _until(lambda: any(g.name == "too-big" for g in gang.gangs.values()))
    assert s.adaptive_target() == 3
    with pytest.raises(GangTooLarge, match=r"oxigdal.autoscaling.gang-timeout=1s"):
        await futures[0]


# --------------------------------------------------------- deadline rule
@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    config={"distributed.scheduler.unknown-task-duration": "1s"},
    timeout=60,
)
async def test_deadline_rule_sizes_by_the_slack_not_by_target_duration(c, s, a):
    """A loose deadline asks fewer workers than Dask's rule, a tight one more."""
    await register(c, policies=[FAIRSHARE, DEADLINE, {**AUTOSCALING, "start-latency": "0s"}])
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    dl = s.plugins["oxigdal"].get_policy("Deadline")
    blocker = Event("as-slack-block")
    # the one thread is busy: nothing below finishes while the targets are read
    busy = c.submit(_wait_event, "as-slack-block", pure=False)
    await _until(
        lambda: s.tasks.get(busy.key) is not None and s.tasks[busy.key].state == "processing"
    )
    with dox.annotate(deadline="1h"):
        loose = c.map(_wait_event, ["as-slack-block"] * 20, range(20), pure=False)
    await _until(lambda: len(dl.jobs) == 1)
    # 20 s of work due in an hour: one thread (plus one for the running task without a
    # deadline); Dask's rule wants all of it done in 1 s
    assert s.adaptive_target(target_duration="1s") == 2
    assert policy.decision["rules"]["deadline"] == 1 and policy.decision["rules"]["demand"] == 1
    assert Scheduler.adaptive_target(s, target_duration="1s") >= 5
    # the forecast counts arriving work without a deadline only: the busy task
    cost = policy.task_cost(s.tasks[busy.key].prefix)
    assert policy.arrived == {"default": pytest.approx(cost)}
    with dox.annotate(deadline="10s"):
        tight = c.map(_wait_event, ["as-slack-block"] * 80, range(20, 100), pure=False)
    await _until(lambda: len(dl.jobs) == 2)
    # EDF: the tight job first; its work over the time left (less one task), which
    # only shrinks, so this is a lower bound while the deadline is ahead
    job = min(dl.jobs.values(), key=lambda j: j.deadline)
    left = job.deadline - time.time() - job.work / len(job.keys)
    assert left > 0
    expected = math.ceil(job.remaining() / left)
    assert expected >= 3
    assert s.adaptive_target(target_duration="30s") >= expected
    assert policy.decision["rule"] == "deadline"
    assert Scheduler.adaptive_target(s, target_duration="30s") < expected
    await blocker.set()
    await c.gather([busy, *loose, *tight])


def test_step_down_waits_for_the_cooldown_then_steps_by_a_fraction():
    """``smooth``: up at once; down after ``cooldown``, <= 25 % a step, one step per gap.

    All 12 workers have arrived (``n=12``): the slow step-down of running workers.
    """
    from dask_oxigdal.scheduling.autoscaling_target import smooth

    policy = Autoscaling(cooldown="8s", hysteresis=0.1, max_down_fraction=0.25)
    policy.target = 2
    assert smooth(policy, 12, 12, 100.0) == 12  # up: at once
    policy.target = 12
    assert smooth(policy, 11, 12, 101.0) == 12  # inside the dead band (10 %, >= 1 worker)
    assert smooth(policy, 2, 12, 102.0) == 12  # lower, but not for the cooldown yet
    assert smooth(policy, 2, 12, 109.0) == 12  # 7 s below, 9 s since the rise
    assert smooth(policy, 2, 12, 110.0) == 9  # 8 s below: a step of 25 %
    policy.target = 9
    assert smooth(policy, 2, 12, 110.5) == 9  # next step after max(1 s, 8 s x 0.25) = 2 s
    assert smooth(policy, 2, 12, 112.0) == 7
    policy.target = 7
    assert smooth(policy, 12, 12, 113.0) == 12  # up again at once; the cooldown restarts
    policy.target = 12
    assert smooth(policy, 2, 12, 120.0) == 12  # lower from here
    assert smooth(policy, 2, 12, 127.5) == 12
    assert smooth(policy, 2, 12, 128.0) == 9


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_no_worker_for_work_done_before_it_could_start(c, s, a):
    """A backlog the current threads finish before a new worker starts asks for none."""
    await register(c, policies=[FAIRSHARE, {**AUTOSCALING, "start-latency": "1h"}])
    blocker = Event("as-latency-block")
    futures = c.map(_wait_event, ["as-latency-block"] * 10, range(10), pure=False)
    await _until(lambda: sum(1 for f in futures if f.key in s.tasks) == 10)
    # Dask's rule asks for the backlog to be done in 100 ms
    assert Scheduler.adaptive_target(s, target_duration="100ms") > 1
    # ours: the one thread does it all in less than the hour a new worker takes
    assert s.adaptive_target(target_duration="100ms") == 1
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    assert policy.decision["rules"]["demand"] == 1
    await blocker.set()
    await c.gather(futures)


def _add(x, y):
    return x + y


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 3, timeout=60)
async def test_idle_timer_releases_an_idle_worker_but_not_one_holding_wanted_keys(c, s, a, b, w):
    """Idle for ``idle-timeout`` and holding nothing needed: released before the cooldown."""
    from dask_oxigdal.scheduling.autoscaling_close import idle_workers

    await register(c, policies=[{**AUTOSCALING, "cooldown": "1h", "idle-timeout": "200ms"}])
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    assert policy.idle_timeout == 0.2 and policy.target == 3
    # a holds x, which y needs; y also waits for z, which b runs until the event is set
    x, y, z = await _held_and_busy(c, s, a.address, b.address, "as-idle-gate")
    # one thread of work: the raw target is below 3 workers; the cooldown (1 h) holds
    # the step-down, but w has run nothing for the idle timeout and holds nothing
    await _until(lambda: s.adaptive_target() == 2)
    assert policy.decision["rule"] == "idle"
    assert policy.decision["raw"] < 2
    assert any(e["rule"] == "idle" for e in _events(s))
    # a is idle too, but holds x, which y still needs: never released by the timer
    assert idle_workers(policy, time.time() + 3600) == [w.address]
    assert s.adaptive_target() == 2
    assert list(await c.scheduler.workers_to_close(target=2)) == [w.address]
    snap = await status(c)
    assert snap["policies"]["Autoscaling"]["idle_released"] >= 1
    await Event("as-idle-gate").set()
    assert await y == 2
    del x, y, z
    # nothing is needed any more: a's key has no waiter, so a may go too
    await _until(lambda: a.address in idle_workers(policy, time.time() + 3600))


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=60)
async def test_deadline_rule_counts_the_running_threads(c, s, a, b):
    """A deadline job the running threads meet asks for no new worker, even one a new
    worker could not help with (start latency 1 h)."""
    await register(
        c, policies=[FAIRSHARE, DEADLINE, {**AUTOSCALING, "start-latency": "1h", "cooldown": "1h"}]
    )
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    dl = s.plugins["oxigdal"].get_policy("Deadline")
    gate = Event("as-running-gate")
    with dox.annotate(deadline="10min"):
        futures = c.map(_wait_event, ["as-running-gate"] * 6, range(6), pure=False)
    await _until(lambda: len(dl.jobs) == 1)
    job = next(iter(dl.jobs.values()))
    assert job.remaining() < 60  # a few seconds of work, due in 10 minutes
    # the deadline is sooner than a new worker could start, yet the job is not "late":
    # one running thread does it in time, so it needs 1 thread and no new worker
    assert s.adaptive_target(target_duration="1s") <= 2
    assert policy.decision["rules"]["deadline"] == 1
    assert policy.decision["rules"]["demand"] == 0
    await gate.set()
    await c.gather(futures)


def _quick(x):
    return x


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)] * 2,
    timeout=60,
    config={"distributed.scheduler.unknown-task-duration": "10ms"},
)
async def test_a_new_deadline_prefix_is_sized_by_dask_s_guess(c, s, a, b):
    """An unmeasured prefix costs ``unknown-task-duration`` (Dask's guess), not
    FairShare's median of the measured work, when the target is sized."""
    await register(
        c, policies=[FAIRSHARE, DEADLINE, {**AUTOSCALING, "start-latency": "0s", "cooldown": "1h"}]
    )
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    dl = s.plugins["oxigdal"].get_policy("Deadline")
    await c.gather(c.map(_sleep, range(4), seconds=0.3, pure=False))  # measured: 0.3 s
    gate = Event("as-guess-gate")
    busy = c.map(_wait_event, ["as-guess-gate"] * 2, range(2), pure=False)
    await _until(lambda: sum(len(ws.processing) for ws in s.workers.values()) == 2)
    with dox.annotate(deadline="30s"):
        due = c.map(_quick, range(400), pure=False)
    await _until(lambda: len(dl.jobs) == 1)
    job = next(iter(dl.jobs.values()))
    # the Deadline policy took FairShare's guess for the new prefix (about 0.3 s a
    # task: 120 s of work, more than the 2 threads do in 30 s) ...
    assert job.work / len(job.keys) > 0.1
    # ... the target takes Dask's 10 ms: 4 s of work, one running thread
    s.adaptive_target()
    assert policy.decision["rules"]["deadline"] == 1
    await gate.set()
    await c.gather(due + busy)


# ------------------------------------------- pending workers, useful windows
def _wait_again(name, x=None):
    Event(name).wait(60)
    return x


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)] * 2,
    timeout=60,
    config={
        "distributed.scheduler.unknown-task-duration": "1s",
        "distributed.adaptive.target-duration": "1s",
    },
)
async def test_workers_not_arrived_are_given_up_running_ones_step_down_slowly(c, s, a, b):
    """When the raw target drops, the cooldown holds the running workers only: the
    workers asked for for a peak that is gone, and not yet arrived, are given up."""
    await register(
        c, policies=[FAIRSHARE, {**AUTOSCALING, "start-latency": "0s", "cooldown": "1h"}]
    )
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    futures = c.map(_wait_event, ["as-pending-gate"] * 10, range(10), pure=False)
    await _until(lambda: sum(1 for f in futures if f.key in s.tasks) == 10)
    # 10 s of work to do in 1 s: 10 workers, 8 of them not arrived (none will: no Adaptive)
    await _until(lambda: s.adaptive_target() == 10)
    await Event("as-pending-gate").set()
    await c.gather(futures)
    # the peak is gone (raw target 0); the 1 h cooldown still holds the 2 running
    # workers, but not the 8 that never arrived
    await _until(lambda: s.adaptive_target() == 2)
    pending = [e for e in _events(s) if e["rule"] == "pending"]
    assert pending and pending[-1]["previous"] == 10 and pending[-1]["target"] == 2
    assert pending[-1]["cancelled"] == 8 and pending[-1]["workers"] == 2
    assert s.adaptive_target() == 2
    assert policy.decision["rule"] == "cooldown" and policy.decision["raw"] == 0
    # new work (a prefix not measured yet: 1 s a task): up at once
    more = c.map(_wait_again, ["as-pending-gate-2"] * 6, range(6), pure=False)
    await _until(lambda: s.adaptive_target() == 6)
    await Event("as-pending-gate-2").set()
    await c.gather(more)


@gen_cluster(**_ONE_THREAD_200S_TASKS)
async def test_deadline_asks_only_for_new_threads_that_finish_a_task_in_time(c, s, a):
    """A new thread counts for the whole tasks it can finish between its arrival
    (now + start latency) and the deadline; none fits: no new thread for it."""
    from dask_oxigdal.scheduling.autoscaling_target import _deadline_rule, _thread_waits

    policy, dl = await _deadline_and_autoscaling(c, s)
    base = time.time()
    # a task costs 200 s (Dask's guess); a new worker arrives 400 s from base. Job A is
    # due 840 s from base: 440 s after the arrival, two whole tasks. Job B is due 500 s
    # from base: 100 s after it, no whole task. (Long, so that no deadline passes under load.)
    with dox.annotate(deadline=datetime.datetime.fromtimestamp(base + 840)):
        a_jobs = c.map(_wait_event, ["as-fit-gate"] * 40, range(40), pure=False)
    with dox.annotate(deadline=datetime.datetime.fromtimestamp(base + 500)):
        b_jobs = c.map(_wait_event, ["as-fit-gate"] * 4, range(40, 44), pure=False)
    await _until(lambda: len(dl.jobs) == 2)
    p = policy.task_cost(s.tasks[a_jobs[0].key].prefix)
    assert p == 200.0
    # sized at base (no await between the reads and the rule: nothing moves)
    ((wait, _),) = _thread_waits(policy, base)  # the task it runs: at most one 200 s task
    assert 0 < wait <= p
    policy.latency.requests.clear()  # as if no worker had been asked for yet
    _, _, _, late, notes, _ = _deadline_rule(policy, base, 400.0, 1.0)
    note_b, note_a = notes
    assert note_b["tasks_fit"] == 0 and note_b["new_threads"] == 0
    assert "no task fits" in note_b["reason"]
    assert late == {"default": [pytest.approx(4 * p), 4]}  # left to the demand rule
    assert note_a["tasks_fit"] == 2 and note_a["window"] == pytest.approx(440.0)
    existing = max(840 - p - wait, 0.0)  # what the running thread does for A in time
    work = 44 * p  # A and B: EDF runs B first
    assert note_a["new_threads"] == math.ceil((work - existing) / (2 * p) - 1e-9)
    # sized by the window less a task (440 - 200 = 240 s of work a thread): more
    assert note_a["new_threads"] < math.ceil((work - existing) / (440.0 - p))
    # the target, at the real time: its event and the status give each job's reason
    s.adaptive_target()
    jobs = policy.decision["deadline_jobs"]
    assert [j["deadline"] for j in jobs] == [note_b["deadline"], note_a["deadline"]]
    assert jobs[0]["tasks_fit"] == 0 and jobs[0]["new_threads"] == 0
    assert jobs[1]["tasks_fit"] == math.floor(jobs[1]["window"] / p + 1e-9)
    assert any(e.get("deadline_jobs") for e in _events(s))
    snap = await status(c)
    assert snap["policies"]["Autoscaling"]["deadline_jobs"][0]["tasks_fit"] == 0
    # a joining worker starts its first task 30 s after it registers and the next
    # one 30 s after the first ended (as measured by the ramp): in A's 440 s,
    # 30 + 200 + 30 + 200 > 440, one whole task a new thread; twice the threads
    assert snap["policies"]["Autoscaling"]["ramp"]["samples"] == 0
    policy.ramp.delays.append(30.0)
    policy.ramp.gaps.append(30.0)
    policy.latency.requests.clear()  # the target above asked for workers: none asked yet
    _, _, _, _, ramped, _ = _deadline_rule(policy, base, 400.0, 1.0)
    assert ramped[1]["tasks_fit"] == 1
    assert ramped[1]["new_threads"] == math.ceil((work - existing) / p - 1e-9)
    # a burst starts later the larger it is: 10 s for a burst of 5 joining workers
    # (2 s a worker). Two tasks fit after 10 s (10 + 400 <= 440), but the ~22 workers
    # that two tasks each need would wait 44 s: one task each, so about twice as many
    policy.ramp.delays.clear()
    policy.ramp.gaps.clear()
    policy.ramp.delays.append(10.0)
    policy.ramp.per_join.append(2.0)
    policy.latency.requests.clear()
    _, _, _, _, burst, _ = _deadline_rule(policy, base, 400.0, 1.0)
    assert burst[1]["tasks_fit"] == 1
    assert burst[1]["new_threads"] == math.ceil((work - existing) / p - 1e-9)
    # 0.05 s a worker: the burst's delay stays under the 10 s measured, two tasks fit
    policy.ramp.per_join[0] = 0.05
    policy.latency.requests.clear()
    _, _, _, _, small, _ = _deadline_rule(policy, base, 400.0, 1.0)
    assert small[1]["tasks_fit"] == 2
    assert small[1]["new_threads"] == math.ceil((work - existing) / (2 * p) - 1e-9)
    # the burst is at most the maximum: 2 s a worker, but at most 5 workers, 10 s
    policy.ramp.per_join[0] = 2.0
    policy.maximum = 5
    policy.latency.requests.clear()
    _, _, _, _, capped, _ = _deadline_rule(policy, base, 400.0, 1.0)
    assert capped[1]["tasks_fit"] == 2
    # no task would fit after the burst's delay (100 s a worker): still one a thread, the
    # job stays the deadline rule's (not left to the demand rule, which asks for less)
    policy.maximum = None
    policy.ramp.per_join[0] = 100.0
    policy.latency.requests.clear()
    _, _, _, late, slow, _ = _deadline_rule(policy, base, 400.0, 1.0)
    assert slow[1]["tasks_fit"] == 1 and "default" in late  # B, as before: not A
    assert late["default"][1] == 4
    assert slow[1]["new_threads"] == math.ceil((work - existing) / p - 1e-9)
    policy.ramp.delays.clear()
    policy.ramp.per_join.clear()
    await Event("as-fit-gate").set()
    await c.gather(a_jobs + b_jobs)


def test_ramp_times_the_first_tasks_of_a_worker_that_joined_with_work_waiting():
    """Delay to the first task, gaps between a thread's tasks; only workers that
    joined while work waited, only their first tasks."""
    from dask_oxigdal.scheduling.autoscaling_rules import Ramp

    def ran(start, stop):
        return [
            {"action": "transfer", "start": start - 5, "stop": start - 4},
            {"action": "compute", "start": start, "stop": stop},
        ]

    ramp = Ramp(tasks=3)
    assert (ramp.delay, ramp.gap) == (0.0, 0.0)
    assert ramp.whole_tasks(2.0, 0.5) == 4  # nothing measured: 4 x 0.5 s in 2 s
    ramp.joined("tcp://idle", 100.0, backlog=False)  # nothing waited: not timed
    ramp.joined("tcp://new", 100.0, backlog=True)
    ramp.finished("tcp://idle", 1, ran(100.4, 100.9))
    ramp.finished("tcp://old", 1, ran(100.0, 100.5))  # joined before: not timed
    assert not ramp.delays and set(ramp.fresh) == {"tcp://new"}
    ramp.finished("tcp://new", 1, ran(100.3, 100.8))  # first task: 0.3 s after the join
    ramp.finished("tcp://new", 2, ran(100.4, 100.9))  # another thread's first task
    ramp.finished("tcp://new", 1, ran(100.9, 101.4))  # 0.1 s after thread 1's last
    assert list(ramp.delays) == [pytest.approx(0.3)]
    assert list(ramp.gaps) == [pytest.approx(0.1)]
    assert "tcp://new" not in ramp.fresh  # its first 3 tasks are timed
    ramp.finished("tcp://new", 1, ran(101.6, 102.1))
    assert list(ramp.gaps) == [pytest.approx(0.1)]
    assert ramp.finished("tcp://new", 1, [{"action": "compute"}]) is None  # no times: ignored
    # 0.3 + 3 x 0.5 + 2 x 0.1 = 2.0 s: 3 tasks in a 2 s window, not 4
    assert ramp.whole_tasks(2.0, 0.5) == 3
    assert ramp.whole_tasks(1.99, 0.5) == 2
    assert ramp.whole_tasks(0.3, 0.5) == 0 and ramp.whole_tasks(-1.0, 0.5) == 0
    ramp.joined("tcp://gone", 200.0, backlog=True)
    ramp.left("tcp://gone")
    assert "tcp://gone" not in ramp.fresh
    # nothing waited for the thread as its task ended: the next gap is idleness;
    # a first task 6 s after the join: the worker had nothing to run, no sample
    ramp.joined("tcp://late", 300.0, backlog=True)
    ramp.finished("tcp://late", 1, ran(306.0, 306.5), waiting=False)
    ramp.finished("tcp://late", 1, ran(307.0, 307.5))
    assert list(ramp.delays) == [pytest.approx(0.3)]
    assert list(ramp.gaps) == [pytest.approx(0.1)]
    ramp.finished("tcp://late", 1, ran(307.6, 308.1))
    assert list(ramp.gaps) == [pytest.approx(0.1), pytest.approx(0.1)]


def test_a_larger_burst_of_joining_workers_is_expected_to_start_later():
    """Workers that register together start their first tasks together, later the
    more of them there are: each sample of a large burst is kept per worker of it."""
    from dask_oxigdal.scheduling.autoscaling_rules import BURST_GAP, BURST_MIN, Ramp

    def first_task(ramp, address, start):
        ramp.finished(address, 1, [{"action": "compute", "start": start, "stop": start + 0.1}])

    ramp = Ramp(tasks=1, keep=2 * BURST_MIN)
    assert ramp.delay_for(40) == 0.0  # nothing measured
    # a small burst: its delays count, but say nothing per worker (work stolen for a
    # worker joining alone takes a while, whatever the burst)
    for i in range(3):
        ramp.joined(f"tcp://s{i}", 50.0, backlog=True)
        first_task(ramp, f"tcp://s{i}", 50.3)
    assert list(ramp.delays) == pytest.approx([0.3] * 3)
    assert not ramp.per_join and ramp.delay_for(12) == pytest.approx(0.3)
    # a burst of BURST_MIN (each within BURST_GAP of the previous), then one alone
    n = BURST_MIN
    for i in range(n):
        ramp.joined(f"tcp://b{i}", 100.0 + i * BURST_GAP / 2, backlog=True)
    ramp.joined("tcp://alone", 110.0, backlog=True)
    for i in range(n):
        first_task(ramp, f"tcp://b{i}", 100.0 + n * BURST_GAP / 2 + 0.1)
    first_task(ramp, "tcp://alone", 110.1)
    delays = [n * BURST_GAP / 2 + 0.1 - i * BURST_GAP / 2 for i in range(n)]
    assert list(ramp.delays) == pytest.approx([0.3] * 3 + delays + [0.1])
    assert list(ramp.per_join) == pytest.approx([d / n for d in delays])
    per = statistics.quantiles(ramp.per_join, n=4, method="inclusive")[2]
    assert ramp.per_worker == pytest.approx(per)
    assert ramp.delay_for(1) == pytest.approx(ramp.delay)  # the measured delay at least
    assert ramp.delay_for(4 * n) == pytest.approx(4 * n * per)
    assert ramp.delay_for(4 * n) > ramp.delay


def test_workers_are_asked_for_at_the_deployment_tool_s_next_read():
    """A target raised between two reads of ``adaptive_target`` is acted on at the
    next read: the request is stamped then, and a deadline's window starts then."""
    policy = Autoscaling(start_latency="30s")
    assert policy.next_read(100.0) == 100.0  # no reads yet: now
    policy.reads.extend([10.0, 11.0, 12.0, 13.0])  # Adaptive polls every second
    assert policy.next_read(13.3) == pytest.approx(14.0)
    assert policy.next_read(14.0) == pytest.approx(14.0)
    assert policy.next_read(15.5) == pytest.approx(16.0)
    assert policy.next_read(12.5) == 12.5  # not after the last read
    assert policy.next_read(17.0) == 17.0  # no read for 4 intervals: the reads stopped
    policy.reads.clear()
    policy.reads.extend([0.0, 5.0, 10.0])  # the operator polls every 5 s
    assert policy.next_read(10.1) == pytest.approx(15.0)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_a_worker_joining_with_queued_work_is_timed_by_the_ramp(c, s, a):
    """A real join with tasks queued: its first task's delay and its gaps are measured."""
    await register(c, policies=[FAIRSHARE, AUTOSCALING])
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    futures = c.map(_sleep, range(12), [0.2] * 12, pure=False)
    await _until(lambda: len(s.queued) > 0)
    async with Worker(s.address, nthreads=1, host="127.0.0.1") as w:
        await c.gather(futures)
        ramp = policy.ramp
        assert len(ramp.delays) == 1 and 0.0 <= ramp.delays[0] < 60.0
        assert ramp.gaps and all(g >= 0.0 for g in ramp.gaps)
        assert len(s.workers[w.address].has_what) >= 2  # gaps between w's own tasks
    assert w.address not in ramp.fresh
    snap = await status(c)
    assert snap["policies"]["Autoscaling"]["ramp"]["samples"] == 1


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=60)
async def test_adaptive_s_target_call_closes_no_busy_worker(c, s, a, b):
    """``workers_to_close(target=...)`` (Adaptive) offers idle workers only; ``n=`` keeps
    Dask's meaning (busy workers after idle ones)."""
    await register(c, policies=[FAIRSHARE, AUTOSCALING])
    busy = c.submit(_wait_event, "as-busy-gate", 1, workers=[a.address], pure=False)
    await _until(lambda: bool(s.workers[a.address].processing))
    assert s.workers_to_close(target=1) == [b.address]
    assert list(await c.scheduler.workers_to_close(target=0)) == [b.address]  # a runs a task
    assert set(s.workers_to_close(n=2)) == {a.address, b.address}
    await Event("as-busy-gate").set()
    assert await busy == 1
    await _until(lambda: not s.workers[a.address].processing)
    assert set(s.workers_to_close(target=0)) == {a.address, b.address}


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    timeout=60,
    config={"distributed.scheduler.unknown-task-duration": "200s"},
)
async def test_a_thread_waits_for_the_task_it_runs_not_for_all_assigned_to_it(c, s, a):
    """EDF runs a deadline job's tasks before the tasks waiting on a worker, so the
    deadline rule counts a thread free once its running task ends, not after the
    worker's whole occupancy."""
    from dask_oxigdal.scheduling.autoscaling_target import _thread_waits

    await register(c, policies=[FAIRSHARE, DEADLINE, AUTOSCALING])
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    # 5 tasks of 200 s (Dask's guess) pinned to the one thread: 1 runs, 4 wait there
    futures = c.map(_wait_event, ["as-waits-gate"] * 5, range(5), workers=[a.address], pure=False)
    ws = s.workers[a.address]
    await _until(lambda: len(ws.processing) == 5)
    assert ws.occupancy == pytest.approx(5 * 200.0)
    ((wait, threads),) = _thread_waits(policy, time.time())
    assert threads == 1 and 0 < wait <= 200.0
    await Event("as-waits-gate").set()
    await c.gather(futures)


@gen_cluster(**_ONE_THREAD_200S_TASKS)
async def test_deadline_keeps_the_workers_on_their_way_once_no_new_one_would_help(c, s, a):
    """Workers asked for a deadline count for the tasks they finish after their own
    arrival: when a worker asked for *now* would come too late, the ones already on
    their way still help, and the target keeps them instead of giving them up."""
    from dask_oxigdal.scheduling.autoscaling_target import _deadline_rule

    policy, dl = await _deadline_and_autoscaling(c, s)
    base = time.time()
    # tasks of 200 s (Dask's guess), due 840 s from base; a worker asked for at
    # base arrives at base + 400 and finishes 2 whole tasks in time
    with dox.annotate(deadline=datetime.datetime.fromtimestamp(base + 840)):
        jobs = c.map(_wait_event, ["as-arriving-gate"] * 40, range(40), pure=False)
    await _until(lambda: len(dl.jobs) == 1)
    target = s.adaptive_target()
    asked = len(policy.latency.requests)
    assert target > 1 and asked == target - 1, policy.decision  # new workers, on their way
    # the read (adaptive_target, as Adaptive calls it) is recorded; with fewer than 3
    # reads no interval is known, so the requests are stamped when the target rose
    assert len(policy.reads) >= 1 and max(policy.latency.latest()) <= policy.reads[-1]
    # 300 s later a worker asked for then would arrive 60 s before the deadline,
    # too late for a 200 s task; the ones asked for at base still finish 2 each
    need, _, _, late, notes, _ = _deadline_rule(policy, base + 300, 400.0, 1.0)
    (note,) = notes
    assert note["tasks_fit"] == 0 and note["new_threads"] == 0
    assert note["arriving_threads"] == asked and "on their way" in note["reason"]
    assert late == {} and need >= asked
    # the target at that time keeps them: nothing given up
    assert policy.compute(now=base + 300) == target and policy.cancelled == 0
    await Event("as-arriving-gate").set()
    await c.gather(jobs)


_TWO_THREADS_200S_TASKS = dict(
    client=True,
    nthreads=[("127.0.0.1", 1)] * 2,
    timeout=60,
    config={
        "distributed.scheduler.unknown-task-duration": "200s",
        "distributed.adaptive.target-duration": "10s",
    },
)


async def _peak_on_its_way(c, s, gate):
    """10 tasks of 200 s (Dask's guess) waiting on event ``gate``, with a 20 s start
    latency and a 1 h cooldown: new workers asked for. Returns ``(policy, futures,
    time of their request)``."""
    await register(
        c, policies=[FAIRSHARE, {**AUTOSCALING, "start-latency": "20s", "cooldown": "1h"}]
    )
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    futures = c.map(_wait_event, [gate] * 10, range(10), pure=False)
    await _until(lambda: sum(1 for f in futures if f.key in s.tasks) == 10)
    # 2000 s of work: new workers, though they arrive only 20 s after they are asked for
    await _until(lambda: s.adaptive_target() > 2)
    return policy, futures, policy.latency.latest()[0]


@gen_cluster(**_TWO_THREADS_200S_TASKS)
async def test_workers_due_within_seconds_are_not_given_up(c, s, a, b):
    """A worker due within 3 s is kept when the peak it was asked for is gone:
    Adaptive would close it three polls later, killing it if it joined meanwhile.
    Once overdue by more than that, it is given up like the others."""
    policy, futures, asked = await _peak_on_its_way(c, s, "as-due-gate")
    target = policy.target
    await Event("as-due-gate").set()
    await c.gather(futures)
    # the peak is gone; 1 s before the workers are due, they are kept
    assert policy.compute(now=asked + 19.0) == target and policy.cancelled == 0
    # 4 s overdue: given up; the 1 h cooldown still holds the 2 running workers
    assert policy.compute(now=asked + 24.0) == 2
    assert policy.cancelled == target - 2


@gen_cluster(**_TWO_THREADS_200S_TASKS)
async def test_a_dip_shorter_than_3s_gives_up_no_worker_on_its_way(c, s, a, b):
    """Workers on their way (due 20 s after they were asked for) are given up only
    once the raw target has stayed lower for 3 s, not at the first evaluation
    below: a worker given up and asked for again pays a whole start again."""
    _, futures, asked = await _peak_on_its_way(c, s, "as-dip-gate")
    released = time.time()  # the raw target cannot fall before the tasks end
    await Event("as-dip-gate").set()
    await c.gather(futures)
    await _until(lambda: s.adaptive_target() == 2)
    (gave_up,) = [at for at, e in s.get_events("oxigdal") if e.get("rule") == "pending"]
    # 3 s after the raw target fell, long before they were due (not overdue)
    assert gave_up - released >= 3.0 and gave_up < asked + 17.0


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 3, timeout=60)
async def test_forecast_idle_releases_idle_workers_only_when_no_demand_returns(c, s, a, b, w):
    """The cooldown (1 h) holds idle workers while the forecast sees demand coming
    back within the start latency; once it sees none, the idle ones that hold
    nothing needed go at once (rule ``forecast-idle``); a busy worker stays."""
    from dask_oxigdal.scheduling.autoscaling_rules import feed

    forecast = {"model": "holt", "interval": "1h", "alpha": 1.0, "beta": 1.0}
    await register(
        c,
        policies=[
            {
                **AUTOSCALING,
                "cooldown": "1h",
                "idle-timeout": "1h",
                "start-latency": "1s",
                "forecast": forecast,
            }
        ],
    )
    policy = s.plugins["oxigdal"].get_policy("Autoscaling")
    assert policy.target == 3
    # a busy: its task waits for an event; b holds x, which y (waiting on z) needs
    _x, y, _z = await _held_and_busy(
        c, s, b.address, a.address, "as-forecast-gate"
    )  # kept: futures
    # no forecast yet (no interval closed): the cooldown holds all three
    assert s.adaptive_target() == 3 and policy.decision["rule"] == "cooldown"
    # a forecast of demand coming back: 3 threads in the next interval (a falling
    # trend: 9 then 6 intervals' worth, so none at the horizon, 2 intervals ahead)
    hour = policy.forecast_interval
    policy.models.clear()
    feed(policy.models, {"t": 9 * hour}, 1, policy._new_model)
    feed(policy.models, {"t": 6 * hour}, 1, policy._new_model)
    policy.bucket_start = time.time()  # no interval closes during the test
    assert s.adaptive_target() == 3
    assert policy.decision["rule"] == "cooldown" and policy.decision["forecast_peak"] == 3
    assert policy.decision["raw"] < 3 and policy.decision["rules"]["forecast"] == 0
    assert not [e for e in _events(s) if e["rule"] == "forecast-idle"]
    # a forecast of no demand coming back: the idle worker w goes now; a (busy)
    # and b (holds x, which y needs) stay
    feed(policy.models, {"t": 0.0}, 3, policy._new_model)
    assert policy.decision["forecast_peak"] == 3  # not recomputed yet
    assert s.adaptive_target() == 2
    assert policy.decision["rule"] == "forecast-idle" and policy.decision["forecast_peak"] == 0
    events = [e for e in _events(s) if e["rule"] == "forecast-idle"]
    assert events and events[-1]["previous"] == 3 and events[-1]["target"] == 2
    assert list(await c.scheduler.workers_to_close(target=2)) == [w.address]
    assert policy.snapshot()["forecast_released"] == 1
    await Event("as-forecast-gate").set()
    assert await y == 2


# ------------------------------------------------ the benchmark's starting worker
@gen_cluster(nthreads=[], timeout=60)
async def test_guard_benchmark_worker_registers_at_its_join_time(s):
    """benchmarks/bench_autoscaling.py's ``JoinAtWorker`` overrides Dask's private
    ``Worker._register_with_scheduler`` (awaited by ``Worker.start_unsafe``): it is
    built and listening early, and joins the scheduler only at ``join_at``."""
    import os
    import sys

    from distributed import Worker

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    from bench_autoscaling import JoinAtWorker

    assert inspect.iscoroutinefunction(Worker._register_with_scheduler)
    assert "self._register_with_scheduler()" in inspect.getsource(Worker.start_unsafe)
    join_at = time.monotonic() + 1.0
    worker = JoinAtWorker(s.address, nthreads=1, join_at=join_at, host="127.0.0.1")
    start = asyncio.ensure_future(worker.start())
    await asyncio.sleep(0.5)
    assert worker.listener is not None and not s.workers  # listening, not joined
    await start
    assert time.monotonic() >= join_at and worker.address in s.workers
    await worker.close()
