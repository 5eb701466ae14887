"""Straggler mitigation on a real cluster: stalled first attempts, a slow worker,
detect-only mode, bad settings."""

from __future__ import annotations

import dask_oxigdal  # noqa: F401

# isort: split
import collections
import os
import time

import pytest
from distributed import get_worker
from distributed.utils_test import gen_cluster

from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling.extension import NAME, register, status

MEDIAN = 0.05


def stragglers(**kwargs):
    return {
        "class": "dask_oxigdal.fault.straggler.Stragglers",
        "action": "reschedule",
        "min-runtime": 2 * MEDIAN,
        **kwargs,
    }


def stall_first_attempt(i, markers, stalled, runs):
    """~MEDIAN of work; the first attempt of a key in ``stalled`` hangs for 80x the median."""
    with open(os.path.join(runs, f"{i}-{time.time_ns()}"), "w"):
        pass
    marker = os.path.join(markers, str(i))
    if i in stalled and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        time.sleep(80 * MEDIAN)  # 4 s: far beyond any detection delay on a loaded CI box
        return ("stalled", i)
    time.sleep(MEDIAN)
    return i


def slow_on_slow_worker(i):
    factor = getattr(get_worker(), "oxigdal_test_slow", 1)
    time.sleep(MEDIAN * factor)
    return i * 2


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2), ("127.0.0.1", 2)], timeout=120)
async def test_stalled_first_attempts_are_rescheduled(c, s, a, b, tmp_path):
    await register(c, policies=[stragglers()])
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    markers.mkdir()
    runs.mkdir()
    stalled = {3, 11}
    futs = c.map(
        stall_first_attempt, range(40), markers=str(markers), stalled=stalled, runs=str(runs)
    )
    # correct results: every key's value comes from a normal (second) attempt
    assert await c.gather(futs) == list(range(40))
    snap = (await status(c))["policies"]["Stragglers"]
    moved = {r["key"] for r in snap["recent"]}
    # both stalled tasks were moved; on a loaded machine a normal task may also
    # overrun the threshold and be moved (once)
    assert {futs[i].key for i in stalled} <= moved
    assert snap["backups"] == len(moved) >= 2
    runs_of = collections.Counter(int(n.split("-")[0]) for n in os.listdir(runs))
    for i in range(40):
        if i in stalled:
            assert runs_of[i] == 2, (i, runs_of[i])  # the hung attempt and its backup
        elif futs[i].key in moved:
            # a normal task moved under load ran at most once more (none when it was
            # moved before its first worker started it)
            assert 1 <= runs_of[i] <= 2, (i, runs_of[i])
        else:
            assert runs_of[i] == 1, (i, runs_of[i])
    events = [e for _, e in await c.get_events("oxigdal") if e.get("kind") == "straggler-backup"]
    assert len(events) == len(moved) and all(e["to"] != e["worker"] for e in events)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)], timeout=120)
async def test_slow_worker_tail_is_moved_to_the_fast_worker(c, s, a, b):
    b.oxigdal_test_slow = 20
    # min-runtime well above the fast worker's 50 ms tasks (a loop lag under load must
    # not make one of them look overdue) and well below the slow worker's 1 s
    await register(c, policies=[stragglers(**{"min-runtime": 8 * MEDIAN})])
    futs = c.map(slow_on_slow_worker, range(30))
    assert await c.gather(futs) == [i * 2 for i in range(30)]
    snap = (await status(c))["policies"]["Stragglers"]
    # the slow worker's tasks ran 20x the median: each one still running when the fast
    # worker ran dry is moved (at most once per task)
    assert snap["backups"] >= 1
    assert all(r["worker"] == b.address for r in snap["recent"])
    assert snap["backups"] == len({r["key"] for r in snap["recent"]})


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)], timeout=120)
async def test_detect_mode_reports_without_moving(c, s, a, tmp_path):
    await register(c, policies=[stragglers(action="detect")])
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    markers.mkdir()
    runs.mkdir()
    futs = c.map(stall_first_attempt, range(12), markers=str(markers), stalled={2}, runs=str(runs))
    results = await c.gather(futs)
    assert results[2] == ("stalled", 2)  # nothing moved: the stalled attempt's value stands
    snap = (await status(c))["policies"]["Stragglers"]
    assert snap["backups"] == 0 and snap["detected"] >= 1
    assert futs[2].key in {r["key"] for r in snap["recent"]}
    assert s.plugins[NAME].get_policy("Stragglers").action == "detect"


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=120)
async def test_bad_straggler_settings_name_the_value(c, s, a):
    with pytest.raises(ConfigError, match=r"'speculate'.*detect, reschedule"):
        await register(c, policies=[stragglers(action="speculate")], replace=True)
    with pytest.raises(ConfigError, match="quantile"):
        await register(c, policies=[stragglers(quantile=1.5)], replace=True)
