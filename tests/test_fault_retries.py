"""Retries with backoff on a real cluster: attempts, gaps, a different worker, bad config."""

from __future__ import annotations

import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import itertools
import random
import time

import pytest
from distributed import get_worker
from distributed.utils_test import gen_cluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.fault.retry import backoff_delay
from dask_oxigdal.scheduling.extension import NAME, register, status

RETRIES = {"class": "dask_oxigdal.fault.retry.Retries"}


def flaky(path, fail_times):
    """Append (time, worker) to ``path``; fail the first ``fail_times`` attempts."""
    import time

    with open(path, "a") as f:
        f.write(f"{time.time()} {get_worker().address}\n")
    with open(path) as f:
        n = len(f.readlines())
    if n <= fail_times:
        raise RuntimeError(f"flaky attempt {n}")
    return n


def _attempts(path):
    with open(path) as f:
        return [(float(t), w) for t, w in (line.split() for line in f)]


def test_backoff_schedule_is_exponential_capped_and_jittered():
    rng = random.Random(0)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
        d = backoff_delay(attempt, 1.0, 2.0, 10.0, 0.25, rng)
        assert base * 0.75 <= d <= base * 1.25, (attempt, d)
    assert backoff_delay(3, 0.5, 3.0, 100.0, 0.0, rng) == pytest.approx(4.5)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)], timeout=120)
async def test_exactly_retries_plus_one_attempts_with_backoff_gaps(c, s, a, b, tmp_path):
    await register(
        c, policies=[{**RETRIES, "multiplier": 2.0, "jitter": 0.2, "max-backoff": "10s"}]
    )
    path = str(tmp_path / "attempts")
    with annotate(retries=3, backoff="0.3s"):
        fut = c.submit(flaky, path, 10, pure=False)
    with pytest.raises(RuntimeError, match="flaky attempt 4"):
        await fut
    attempts = _attempts(path)
    assert len(attempts) == 4  # retries + 1
    gaps = [t2 - t1 for (t1, _), (t2, _) in itertools.pairwise(attempts)]
    for i, gap in enumerate(gaps):
        nominal = 0.3 * 2.0**i
        # at least the backoff minus the jitter; dispatch adds latency, never removes it
        assert gap >= nominal * 0.8 - 0.02, (i, gaps)
    # the scheduler's record of the delays follows the schedule within the jitter
    snap = (await status(c))["policies"]["Retries"]
    assert snap["retried"] == 3 and snap["exhausted"] == 1
    delays = [r["delay"] for r in snap["recent"]]
    for i, d in enumerate(delays):
        assert 0.3 * 2**i * 0.8 <= d <= 0.3 * 2**i * 1.2, delays
    # each retry went to the worker it had not failed on most recently
    workers = [w for _, w in attempts]
    assert all(w1 != w2 for w1, w2 in itertools.pairwise(workers)), workers


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)], timeout=120)
async def test_flaky_task_succeeds_on_retry_and_events_are_published(c, s, a, b, tmp_path):
    await register(c, policies=[RETRIES])
    path = str(tmp_path / "attempts")
    with annotate(retries=2, backoff=0.05):
        fut = c.submit(flaky, path, 1, pure=False)
    assert await fut == 2
    events = [e for _, e in await c.get_events("oxigdal") if e.get("kind") == "task-retry"]
    assert len(events) == 1 and events[0]["attempt"] == 1


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=120)
async def test_dask_native_retries_get_the_configured_backoff(c, s, a, tmp_path):
    await register(c, policies=[{**RETRIES, "backoff": "0.2s", "jitter": 0.0}])
    path = str(tmp_path / "attempts")
    fut = c.submit(flaky, path, 1, retries=1, pure=False)
    assert await fut == 2
    (t1, w1), (t2, w2) = _attempts(path)
    assert t2 - t1 >= 0.2 - 0.02
    assert w1 == w2  # a single worker: the loose preference falls back to it


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=120)
async def test_bad_settings_fail_registration_naming_the_value(c, s, a):
    for bad, match in [
        ({"jitter": 2.0}, "jitter"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"backoff": "soon"}, "soon"),
    ]:
        with pytest.raises(ConfigError, match=match):
            await register(c, policies=[{**RETRIES, **bad}], replace=True)
    assert await c.submit(lambda: 1) == 1  # the scheduler is fine


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)], timeout=120)
async def test_retries_compose_with_quota_holds(c, s, a, b, tmp_path):
    # tenant "a" may run one task at a time (Quota holds the rest in no-worker);
    # a failed attempt waits out its backoff, then runs, and the held tasks follow
    await register(
        c,
        tenants={"a": {"weight": 1, "max-tasks": 1}},
        policies=[{"class": "dask_oxigdal.scheduling.quota.Quota"}, {**RETRIES, "backoff": 0.1}],
    )
    path = str(tmp_path / "attempts")
    with annotate(tenant="a", retries=2):
        flaky_fut = c.submit(flaky, path, 1, pure=False)
        others = c.map(lambda x: x + 1, range(5))
    assert await flaky_fut == 2
    assert await c.gather(others) == [1, 2, 3, 4, 5]
    snap = (await status(c))["policies"]
    assert snap["Quota"]["max_admitted"]["a"] == 1
    assert snap["Retries"]["retried"] == 1 and snap["Retries"]["held"] == 0


async def _held(s, key, r):
    deadline = time.monotonic() + 60
    while not (r.held == 1 and key in s.tasks and s.tasks[key].state == "no-worker"):
        assert time.monotonic() < deadline, "the failed attempt was not held"
        await asyncio.sleep(0.02)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)], timeout=120)
async def test_held_retries_are_released_when_the_policy_closes(c, s, a, b, tmp_path):
    hour = {**RETRIES, "backoff": "1h", "max-backoff": "2h", "jitter": 0.0}
    # 1. the extension is removed: the held retry runs now, not in an hour
    await register(c, policies=[hour])
    r = s.plugins[NAME].get_policy("Retries")
    with annotate(retries=2):
        fut = c.submit(flaky, str(tmp_path / "removed"), 1, pure=False)
    await _held(s, fut.key, r)
    await c.unregister_scheduler_plugin(NAME)
    assert await asyncio.wait_for(fut, 60) == 2
    assert r.closed and r.held == 0
    assert NAME not in s.periodic_callbacks  # the removed extension stopped ticking

    # 2. the extension disables the policy (as after an exception in one of its hooks)
    await register(c, policies=[hour], replace=True)
    r = s.plugins[NAME].get_policy("Retries")
    with annotate(retries=2):
        fut = c.submit(flaky, str(tmp_path / "disabled"), 1, pure=False)
    await _held(s, fut.key, r)
    s.plugins[NAME]._disable(r, "test", RuntimeError("a policy error"))
    assert await asyncio.wait_for(fut, 60) == 2
    assert r.held == 0

    # 3. close() directly: returns how many it released
    await register(c, policies=[hour], replace=True)
    r = s.plugins[NAME].get_policy("Retries")
    with annotate(retries=2):
        fut = c.submit(flaky, str(tmp_path / "closed"), 1, pure=False)
    await _held(s, fut.key, r)
    assert r.close() == 1
    assert await asyncio.wait_for(fut, 60) == 2
    assert r.close() == 0  # idempotent
