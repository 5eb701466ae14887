"""Worker quarantine on real clusters: a broken worker, a hung (SIGSTOPped) worker,
the half-open probe, the last healthy worker, a worker that un-pauses itself."""

from __future__ import annotations

import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import os
import signal
import time

import pytest
from distributed import Client, LocalCluster, WorkerPlugin, get_worker, wait
from distributed.core import Status
from distributed.utils_test import gen_cluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.scheduling.extension import NAME, register, status

TWO = [("127.0.0.1", 1), ("127.0.0.1", 1)]
RETRIES = {"class": "dask_oxigdal.fault.retry.Retries", "backoff": 0.02, "jitter": 0.0}


def quarantine(**kwargs):
    return {"class": "dask_oxigdal.fault.quarantine.Quarantine", **kwargs}


def work(x):
    """Fails on a worker whose ``oxigdal_test_broken`` attribute is set (a missing module)."""
    time.sleep(0.005)
    if getattr(get_worker(), "oxigdal_test_broken", False):
        raise ImportError("No module named 'osgeo' on this worker")
    return x + 1


class BreakWorker(WorkerPlugin):
    """Marks one worker as lacking a module; removing the plugin fixes it."""

    name = "oxigdal-test-break-worker"

    def __init__(self, address):
        self.address = address

    def setup(self, worker):
        if worker.address == self.address:
            worker.oxigdal_test_broken = True

    def teardown(self, worker):
        worker.oxigdal_test_broken = False


async def _until(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _policy(s):
    return s.plugins[NAME].get_policy("Quarantine")


def _kinds(events, worker):
    return [e["kind"] for _, e in events if e.get("worker") == worker]


@gen_cluster(client=True, nthreads=TWO, timeout=120)
async def test_broken_worker_is_quarantined_probed_and_readmitted(c, s, a, b):
    await c.register_plugin(BreakWorker(b.address))
    assert b.oxigdal_test_broken and not getattr(a, "oxigdal_test_broken", False)
    # vanilla Dask: the same job (its oxigdal annotations mean nothing to Dask) fails
    with annotate(retries=3):
        futs = c.map(work, range(20), key=[f"vanilla-{i}" for i in range(20)])
    with pytest.raises(ImportError, match="osgeo"):
        await c.gather(futs)
    del futs

    await register(c, policies=[RETRIES, quarantine(failures=3, cooldown=0.3)])
    with annotate(retries=3):
        futs = c.map(work, range(40), key=[f"job-{i}" for i in range(40)])
    assert await c.gather(futs) == list(range(1, 41))
    snap = (await status(c))["policies"]["Quarantine"]
    assert b.address in snap["quarantined"] or snap["workers"][b.address]["opened"] >= 1
    assert a.address not in snap["quarantined"]

    # fixed: after the cooldown one probe task runs on b and b is readmitted
    await c.unregister_worker_plugin(BreakWorker.name)
    assert not b.oxigdal_test_broken
    i = 0

    async def probe_until_readmitted():
        nonlocal i
        while _policy(s).breakers[b.address].state != "closed":
            with annotate(retries=3):
                await c.gather(
                    c.map(work, range(i, i + 4), key=[f"p-{j}" for j in range(i, i + 4)])
                )
            i += 4
            await asyncio.sleep(0.05)

    await asyncio.wait_for(probe_until_readmitted(), 60)
    kinds = _kinds(await c.get_events("oxigdal"), b.address)
    assert kinds[0] == "worker-quarantined"
    assert "worker-probing" in kinds and kinds[-1] == "worker-readmitted"
    assert kinds.index("worker-probing") < len(kinds) - 1
    snap = (await status(c))["policies"]["Quarantine"]
    assert snap["quarantined"] == [] and snap["events"] == len(kinds)
    assert s.workers[b.address].status == Status.running
    # readmitted: b gets work again
    futs = c.map(work, range(100, 120), key=[f"after-{j}" for j in range(20)])
    await c.gather(futs)
    assert any(s.tasks[f.key].who_has == {s.workers[b.address]} for f in futs)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=120)
async def test_never_quarantines_the_last_healthy_worker(c, s, a):
    a.oxigdal_test_broken = True
    await register(c, policies=[quarantine(failures=2)])
    futs = c.map(work, range(6))
    await asyncio.gather(*futs, return_exceptions=True)
    snap = (await status(c))["policies"]["Quarantine"]
    assert snap["quarantined"] == [] and snap["refused"] >= 1
    assert s.workers[a.address].status == Status.running
    a.oxigdal_test_broken = False
    assert await c.submit(work, 1, pure=False) == 2


@gen_cluster(client=True, nthreads=TWO, timeout=120)
async def test_failures_of_a_buggy_prefix_on_every_worker_do_not_quarantine(c, s, a, b):
    await register(c, policies=[quarantine(failures=2)])

    def buggy(x):
        raise ValueError("a bug in the task, not in the worker")

    futs = c.map(buggy, range(12))
    await asyncio.gather(*futs, return_exceptions=True)
    snap = (await status(c))["policies"]["Quarantine"]
    failed_on = {f"{s.tasks[f.key].erred_on}" for f in futs}
    assert len(failed_on) > 1  # both workers saw the bug
    assert snap["quarantined"] == [] and snap["failures_seen"] == 12


@gen_cluster(client=True, nthreads=TWO, timeout=120)
async def test_quarantine_is_reapplied_when_the_worker_unpauses_itself(c, s, a, b):
    await register(c, policies=[quarantine(cooldown="1h")])
    q = _policy(s)
    assert await c.run_on_scheduler(lambda dask_scheduler: True)
    assert q.quarantine(b.address, "test")
    assert s.workers[b.address].status == Status.paused
    # the worker's own memory monitor pauses and resumes it
    b.status = Status.paused
    b.status = Status.running
    await _until(lambda: q.breakers[b.address].reported == "running", what="status message")
    assert s.workers[b.address].status == Status.paused
    assert s.workers[b.address] not in s.running
    futs = c.map(work, range(10))
    await c.gather(futs)
    assert all(s.tasks[f.key].who_has == {s.workers[a.address]} for f in futs)
    # a manual quarantine of the other (last healthy) worker is refused
    assert not q.quarantine(a.address, "test")


def test_hung_worker_is_quarantined_within_seconds_and_readmitted():
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            worker_dashboard_address=":0",
        ) as cluster,
        Client(cluster) as c,
    ):
        register(c, policies=[quarantine(**{"heartbeat-timeout": "2s", "cooldown": "0.5s"})])
        pids = c.run(os.getpid)
        hung, healthy = sorted(pids)
        pid = pids[hung]
        os.kill(pid, signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()
            deadline = stopped_at + 60
            while hung not in status(c)["policies"]["Quarantine"]["quarantined"]:
                assert time.monotonic() < deadline, "hung worker not quarantined"
                time.sleep(0.1)
            # Dask's own worker-ttl (5 min) has not removed it: it is still a member
            assert hung in c.scheduler_info()["workers"]
            # work goes to the healthy worker and completes
            futs = c.map(lambda x: x * 2, range(20))
            wait(futs, timeout=60)
            assert c.gather(futs) == [x * 2 for x in range(20)]
            assert all(set(w) == {healthy} for w in c.who_has(futs).values())
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while status(c)["policies"]["Quarantine"]["quarantined"]:
            assert time.monotonic() < deadline, "worker not readmitted after SIGCONT"
            wait(c.map(lambda x: x + 1, range(4), pure=False), timeout=60)
            time.sleep(0.1)
        kinds = _kinds(c.get_events("oxigdal"), hung)
        assert kinds[0] == "worker-quarantined" and kinds[-1] == "worker-readmitted"
