"""Prometheus metrics and the queue/tenant numbers behind them, scraped from a live scheduler."""

from __future__ import annotations

import dask_oxigdal  # noqa: F401  (registers the oxigdal config defaults first)

# isort: split
import asyncio
import json

import prometheus_client
from distributed import Event, wait
from distributed.utils_test import gen_cluster
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

from dask_oxigdal.annotations import annotate
from dask_oxigdal.monitoring.metrics import POLICY_METRICS, metric_families
from dask_oxigdal.monitoring.prometheus import PrometheusCollector
from dask_oxigdal.scheduling.extension import register, status

POLICIES = [
    {"class": "dask_oxigdal.scheduling.fairshare.FairShare"},
    {"class": "dask_oxigdal.monitoring.monitor.Monitor", "rules": []},
]
SCHED = {"dashboard_address": "127.0.0.1:0"}


def block(x, ev):
    ev.wait()
    return x


async def scrape(s) -> dict[str, dict[tuple, float]]:
    url = f"http://127.0.0.1:{s.http_server.port}/metrics"
    body = (await AsyncHTTPClient().fetch(url)).body.decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(body):
        for sample in fam.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def wait_for(predicate, timeout=60):
    for _ in range(int(timeout / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], scheduler_kwargs=SCHED, timeout=120)
async def test_metrics_on_the_schedulers_endpoint(c, s, a):
    await register(c, tenants={"team-a": 3, "team-b": 1}, policies=POLICIES)
    ev = Event()
    with annotate(tenant="team-a", queue="interactive"):
        fa = c.map(block, range(4), ev=ev, key=[f"a-{i}" for i in range(4)])
    with annotate(tenant="team-b"):
        fb = c.map(block, range(3), ev=ev, key=[f"b-{i}" for i in range(3)])

    async def one_running():  # and both graphs arrived (they are processed one by one)
        m = await scrape(s)
        running = m.get("dask_oxigdal_tenant_running", {})
        queued = m.get("dask_oxigdal_tenant_queued", {})
        return sum(running.values()) >= 1 and sum(running.values()) + sum(queued.values()) == 7

    await wait_for(one_running)
    m = await scrape(s)
    tenant = lambda name: (("tenant", name),)  # noqa: E731
    queued = m["dask_oxigdal_tenant_queued"]
    running = m["dask_oxigdal_tenant_running"]
    # "running" is Dask's processing state: sent to the worker (saturation may send 2)
    n_running = running[tenant("team-a")] + running[tenant("team-b")]
    assert queued[tenant("team-a")] + queued[tenant("team-b")] + n_running == 7
    assert m["dask_oxigdal_tenant_weight"][tenant("team-a")] == 3.0
    # both tenants have work: entitled shares 3/4 and 1/4
    assert m["dask_oxigdal_tenant_entitled_share"][tenant("team-a")] == 0.75
    assert m["dask_oxigdal_tenant_entitled_share"][tenant("team-b")] == 0.25
    depth = m["dask_oxigdal_queue_depth"]
    assert depth[(("queue", "interactive"),)] + depth[(("queue", "batch"),)] == 7 - n_running
    assert sum(m["dask_oxigdal_queue_running"].values()) == n_running
    # policies not installed on this cluster read 0, and policy_enabled says which are
    assert m["dask_oxigdal_gangs_waiting"][()] == 0
    assert m["dask_oxigdal_workers_quarantined"][()] == 0
    assert m["dask_oxigdal_straggler_backups_total"][()] == 0
    assert m["dask_oxigdal_policy_enabled"] == {
        (("policy", "FairShare"),): 1.0,
        (("policy", "Monitor"),): 1.0,
    }
    assert "dask_oxigdal_coordinator_role" not in m  # no coordinator: no coordinator metrics

    await ev.set()
    await wait(fa + fb)
    m = await scrape(s)
    assert m["dask_oxigdal_tenant_tasks_completed_total"][tenant("team-a")] == 4
    assert m["dask_oxigdal_tenant_tasks_completed_total"][tenant("team-b")] == 3
    assert m["dask_oxigdal_tenant_worker_seconds_total"][tenant("team-a")] > 0
    assert sum(m["dask_oxigdal_queue_depth"].values()) == 0
    assert sum(m["dask_oxigdal_queue_running"].values()) == 0
    # the same numbers as status()
    st = await status(c)
    assert st["policies"]["Monitor"]["queue_depth"] == {
        "interactive": 0,
        "batch": 0,
        "background": 0,
    }
    json.dumps(st)  # still plain JSON


def test_policy_metrics_from_snapshot_keys_of_other_policies():
    snap = {
        "installed": True,
        "tenants": {},
        "queues": ["batch"],
        "policies": {
            "Gang": {"enabled": True, "waiting": 2, "running": 1, "started": 5},
            "Deadline": {
                "enabled": True,
                "met": {"a": {"batch": 4}},
                "missed": {"a": {"batch": 1}},
            },
            "Quarantine": {"enabled": False, "quarantined": ["tcp://x:1", "tcp://y:2"]},
            "Stragglers": {"enabled": True, "backups": 7},
        },
        "coordinator": {"role": "leader", "leader": "n1", "commit_index": 42, "queued_writes": 0},
    }
    fams = {f.name: f for f in metric_families(snap)}
    assert fams["gangs_waiting"].samples == [((), 2.0)]
    assert fams["gangs_running"].samples == [((), 1.0)]
    assert fams["deadlines_met"].samples == [(("a", "batch"), 4.0)]
    assert fams["deadlines_missed"].samples == [(("a", "batch"), 1.0)]
    assert fams["workers_quarantined"].samples == [((), 2.0)]
    assert fams["straggler_backups"].samples == [((), 7.0)]
    assert fams["coordinator_role"].samples == [(("leader",), 1.0)]
    assert fams["coordinator_commit_index"].samples == [((), 42.0)]
    assert fams["coordinator_has_leader"].samples == [((), 1.0)]
    assert dict(fams["policy_enabled"].samples)[("Quarantine",)] == 0.0
    assert metric_families({"installed": False}) == []
    assert {row[3] for row in POLICY_METRICS} >= {"Gang", "Deadline", "Quarantine", "Stragglers"}


def test_guard_distributed_serves_the_global_prometheus_registry():
    # /metrics is distributed's PrometheusHandler: it serves prometheus_client.REGISTRY,
    # where register_collector puts our collector. If distributed stops doing so, fail.
    from distributed.http.scheduler.prometheus import core

    assert core.prometheus_client.REGISTRY is prometheus_client.REGISTRY
    import inspect

    assert "generate_latest()" in inspect.getsource(core.PrometheusHandler.get)
    assert hasattr(PrometheusCollector, "collect") and hasattr(PrometheusCollector, "describe")


def boom():
    raise ValueError("boom")


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


@gen_cluster(client=True, scheduler_kwargs=SCHED, timeout=120)
async def test_metrics_of_every_default_policy_on_a_live_scheduler(c, s, a, b):
    import dask

    await register(c, tenants={"t": 1})  # the default policy list
    defaults = [
        p["class"].rsplit(".", 1)[1] for p in dask.config.get("oxigdal.scheduling.policies")
    ]
    with annotate(tenant="t", gang="pair"):
        await wait(c.map(inc_, [1, 2], key=["pair-0", "pair-1"]))
    with annotate(tenant="t", deadline="10min"):
        await c.submit(inc_, 1, key="dl-met")
    with annotate(tenant="t", deadline="10min"):
        failed = c.submit(boom, key="dl-failed")
    await wait([failed])
    assert failed.status == "error"
    with annotate(tenant="t", deadline="1s"):
        await c.submit(nap, 2.0, key="dl-missed")

    def per_tenant(m, name):
        return sum(v for labels, v in m.get(name, {}).items() if ("tenant", "t") in labels)

    async def counted():
        m = await scrape(s)
        return (
            per_tenant(m, "dask_oxigdal_deadlines_met_total") == 1
            and per_tenant(m, "dask_oxigdal_deadlines_missed_total") == 1
            and per_tenant(m, "dask_oxigdal_deadlines_failed_total") == 1
        )

    await wait_for(counted)
    m = await scrape(s)
    assert m["dask_oxigdal_policy_enabled"] == {(("policy", p),): 1.0 for p in defaults}
    assert m["dask_oxigdal_gangs_started_total"][()] == 1
    assert m["dask_oxigdal_gangs_waiting"][()] == m["dask_oxigdal_gangs_running"][()] == 0
    assert m["dask_oxigdal_workers_quarantined"][()] == 0
    # 2 gang members, the met and the missed task; the erred one is not completed
    assert m["dask_oxigdal_tenant_tasks_completed_total"][(("tenant", "t"),)] == 4
    # the same figures as status()
    st = await status(c)
    assert st["policies"]["Gang"]["started"] == 1
    assert st["policies"]["Gang"]["started_by_tenant"] == {"t": 1}
    deadline = st["policies"]["Deadline"]
    assert sum(deadline["met"]["t"].values()) == sum(deadline["missed"]["t"].values()) == 1
    assert sum(deadline["failed"]["t"].values()) == 1


def inc_(x):
    return x + 1
