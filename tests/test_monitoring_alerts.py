"""Alerts: threshold rules and task-duration anomalies, as ``oxigdal`` events and log records."""

from __future__ import annotations

import dask_oxigdal  # noqa: F401  (registers the oxigdal config defaults first)

# isort: split
import asyncio
import logging
import time

import pytest
from distributed import Event, wait
from distributed.utils_test import gen_cluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.monitoring.alerts import AlertRule, DurationAnomalyDetector, parse_rules
from dask_oxigdal.scheduling.extension import register, status


def block(x, ev):
    ev.wait()
    return x


def nap(seconds):
    time.sleep(seconds)
    return seconds


def monitor(**kwargs):
    return [
        {"class": "dask_oxigdal.scheduling.fairshare.FairShare"},
        {"class": "dask_oxigdal.monitoring.monitor.Monitor", **kwargs},
    ]


async def alerts_of(c, rule):
    return [
        msg
        for _, msg in await c.get_events("oxigdal")
        if isinstance(msg, dict) and msg.get("kind") == "alert" and msg.get("rule") == rule
    ]


async def wait_for_alert(c, rule, timeout=60):
    for _ in range(int(timeout / 0.05)):
        found = await alerts_of(c, rule)
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {rule!r} alert")


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=120)
async def test_threshold_rule_raises_an_alert_event_and_a_log_record(c, s, a, caplog):
    rules = [{"name": "backlog", "metric": "tenant-queued", "above": 3, "severity": "critical"}]
    await register(c, tenants={"team-a": 1}, policies=monitor(rules=rules), interval="50ms")
    ev = Event()
    with caplog.at_level(logging.WARNING, logger="dask_oxigdal.monitoring"):
        with annotate(tenant="team-a"):
            futs = c.map(block, range(8), ev=ev)
        found = await wait_for_alert(c, "backlog")
    alert = found[0]
    assert alert["subject"] == "team-a"
    assert alert["value"] > 3 and alert["threshold"] == 3
    assert alert["severity"] == "critical"
    assert "tenant-queued of team-a" in alert["message"]
    assert any("oxigdal alert: backlog" in r.getMessage() for r in caplog.records)
    st = await status(c)
    assert st["policies"]["Monitor"]["alerts_by_rule"]["backlog"] >= 1
    assert st["policies"]["Monitor"]["recent_alerts"][-1]["rule"] == "backlog"
    await ev.set()
    await wait(futs)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=120)
async def test_a_prefix_suddenly_much_slower_raises_an_anomaly(c, s, a):
    await register(c, policies=monitor(rules=[]), interval="50ms")
    # a baseline of 50 ms: a 10 ms nap stretched by loop or GIL lag on a loaded machine
    # could already look anomalous (3x the median and 50 ms over it)
    fast = c.map(nap, [0.05] * 15, key=[f"nap-{i}" for i in range(15)])
    await wait(fast)
    # wait for two periodic runs to judge them: regular durations raise nothing
    st = await status(c)
    n = st["policies"]["Monitor"]["history_samples"]
    while (await status(c))["policies"]["Monitor"]["history_samples"] < n + 2:
        await asyncio.sleep(0.05)
    assert await alerts_of(c, "task-duration-anomaly") == []

    slow = c.map(nap, [0.6, 0.6], key=["nap-15", "nap-16"])
    await wait(slow)
    found = await wait_for_alert(c, "task-duration-anomaly")
    alert = found[0]
    assert alert["subject"] == "nap"
    assert alert["value"] >= 0.6
    assert alert["value"] > 5 * alert["median"]
    assert alert["zscore"] > 5


def test_rule_hold_cooldown_and_rearm():
    rule = AlertRule("backlog", "tenant-queued", above=3, for_="10s")
    snap = {"tenants": {"a": {"pending": 10, "running": 0}, "b": {"pending": 1, "running": 0}}}
    assert rule.evaluate(snap, now=100.0, cooldown=60) == []  # breach starts
    assert rule.evaluate(snap, now=105.0, cooldown=60) == []  # held 5 s < 10 s
    fired = rule.evaluate(snap, now=110.0, cooldown=60)
    assert [a["subject"] for a in fired] == ["a"]
    assert rule.evaluate(snap, now=120.0, cooldown=60) == []  # cooldown
    assert len(rule.evaluate(snap, now=171.0, cooldown=60)) == 1  # still breached after it
    clear = {"tenants": {"a": {"pending": 0, "running": 0}}}
    assert rule.evaluate(clear, now=172.0, cooldown=60) == []
    assert rule.evaluate(snap, now=173.0, cooldown=60) == []  # re-armed: hold again
    assert len(rule.evaluate(snap, now=183.0, cooldown=60)) == 1


def test_builtin_rule_metrics():
    starved = AlertRule("starved", "tenant-share-ratio", below=0.5)
    snap = {
        "tenants": {
            "a": {"entitled_share": 0.5, "current_share": 0.1, "pending": 5, "running": 0},
            "b": {"entitled_share": 0.5, "current_share": 0.9, "pending": 5, "running": 1},
            "idle": {"entitled_share": 0.0, "current_share": 0.0, "pending": 0, "running": 0},
        },
        "policies": {
            "Deadline": {"met": {"a": {"batch": 8}}, "missed": {"a": {"batch": 2}}},
            "Quarantine": {"quarantined": ["tcp://w:1"]},
        },
        "coordinator": {"role": "follower", "leader": None},
    }
    assert [a["subject"] for a in starved.evaluate(snap, 0.0, 60)] == ["a"]
    miss = AlertRule("miss", "deadline-miss-rate", above=0.1)
    assert miss.evaluate(snap, 0.0, 60)[0]["value"] == pytest.approx(0.2)
    quarantined = AlertRule("q", "quarantined-workers", above=0)
    assert quarantined.evaluate(snap, 0.0, 60)[0]["value"] == 1
    leader = AlertRule("leader", "coordinator-has-leader", below=1)
    assert leader.evaluate(snap, 0.0, 60)[0]["subject"] == "coordinator"
    # absent policies / coordinator: nothing to alert on
    assert quarantined.evaluate({"policies": {}}, 0.0, 60) == []
    assert leader.evaluate({}, 0.0, 60) == []


def test_bad_rules_name_the_value_and_the_choices():
    with pytest.raises(ConfigError, match=r"unknown metric 'cpu'.*valid metrics: .*tenant-queued"):
        parse_rules([{"metric": "cpu", "above": 1}])
    with pytest.raises(ConfigError, match="exactly one of 'above' or 'below'"):
        parse_rules([{"metric": "tenant-queued", "above": 1, "below": 2}])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) treshold"):
        parse_rules([{"metric": "tenant-queued", "treshold": 1}])
    with pytest.raises(ConfigError, match="severity 'loud'"):
        parse_rules([{"metric": "tenant-queued", "above": 1, "severity": "loud"}])
    with pytest.raises(ConfigError, match="two rules are named 'x'"):
        parse_rules([{"name": "x", "metric": "tenant-queued", "above": 1}] * 2)
    with pytest.raises(ConfigError, match="min-samples"):
        DurationAnomalyDetector(window=5, min_samples=10)


def test_default_rules_parse():
    from dask_oxigdal.scheduling.settings import setting

    names = [r.name for r in parse_rules(setting("monitoring.rules"))]
    assert names == [
        "tenant-starved",
        "deadline-miss-rate",
        "worker-quarantined",
        "coordinator-without-leader",
    ]


def test_one_slow_task_is_noise_a_slower_prefix_is_an_anomaly():
    d = DurationAnomalyDetector(window=20, min_samples=10, threshold=5, min_ratio=3)
    for _ in range(15):
        d.observe("tile", 0.1)
    assert d.check() == []
    # a single 1 s task among normal ones: a GC pause or a busy host
    for x in (0.1, 1.0, 0.1, 0.1):
        d.observe("tile", x)
    assert d.check() == []
    # the prefix becomes 5x slower: two in a row, even across two checks
    d.observe("tile", 0.5)
    assert d.check() == []
    d.observe("tile", 0.55)
    (finding,) = d.check()
    assert finding["prefix"] == "tile" and finding["value"] == 0.55 and finding["count"] == 2
    assert finding["median"] == 0.1
    # sub-millisecond jitter is never an anomaly (min-excess)
    for _ in range(15):
        d.observe("noop", 30e-6)
    d.check()
    for _ in range(5):
        d.observe("noop", 400e-6)
    assert d.check() == []


def test_a_tenant_with_long_running_tasks_is_not_starved():
    rule = AlertRule("starved", "tenant-share-ratio", below=0.5)
    # b has run nothing to completion yet, but holds half of the running tasks
    snap = {
        "tenants": {
            "a": {"entitled_share": 0.5, "current_share": 1.0, "pending": 9, "running": 2},
            "b": {"entitled_share": 0.5, "current_share": 0.0, "pending": 9, "running": 2},
        }
    }
    assert rule.evaluate(snap, 0.0, 60) == []
    snap["tenants"]["b"]["running"] = 0
    assert [a["subject"] for a in rule.evaluate(snap, 1.0, 60)] == ["b"]


def test_disabled_coordinator_raises_no_leader_alert():
    """The extension reports ``{"role": "disabled"}`` when the coordinator is off:
    that must not read as a coordinator without a leader."""
    from dask_oxigdal.monitoring.alerts import RULE_METRICS

    metric = RULE_METRICS["coordinator-has-leader"]
    assert metric({"coordinator": {"role": "disabled"}}) == {}
    assert metric({}) == {}
    assert metric({"coordinator": {"role": "follower", "leader": None}}) == {"coordinator": 0.0}
    assert metric({"coordinator": {"role": "leader", "leader": "127.0.0.1:1"}}) == {
        "coordinator": 1.0
    }
