"""Worker quarantine on real clusters: a broken worker, a hung (SIGSTOPped) worker,
the half-open probe, the last healthy worker, a worker that un-pauses itself."""

from __future__ import annotations

import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import os
import signal
import sys
import time

import pytest
from distributed import Client, LocalCluster, WorkerPlugin, get_worker, wait
from distributed.core import Status
from distributed.utils_test import gen_cluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.fault.quarantine import (
    dask_heartbeat_interval,
    min_heartbeat_timeout,
)
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
async def test_a_buggy_prefix_that_failed_on_one_worker_first_is_forgiven(c, s, a, b):
    """Its first failures all landed on a; once it fails on b too, a is readmitted."""
    await register(c, policies=[quarantine(failures=2, cooldown="1h")])
    q = _policy(s)

    def buggy(x):
        raise ValueError("a bug in the task, not in the worker")

    first = c.map(buggy, range(2), workers=[a.address], pure=False)
    await asyncio.gather(*first, return_exceptions=True)
    await _until(lambda: q.breakers[a.address].state == "open", what="a quarantined")
    assert (await status(c))["policies"]["Quarantine"]["quarantined"] == [a.address]
    # the same prefix fails on b: a bug in the task, so a was not at fault
    late = c.submit(buggy, 99, workers=[b.address], pure=False)
    await asyncio.gather(late, return_exceptions=True)
    await _until(lambda: s.workers[a.address].status == Status.running, what="a resumed")
    snap = (await status(c))["policies"]["Quarantine"]
    assert snap["quarantined"] == [] and q.breakers[b.address].state == "closed"
    kinds = [e.get("kind") for _, e in s.get_events("oxigdal")]
    assert kinds.count("worker-quarantined") == 1 and kinds.count("worker-readmitted") == 1
    assert await c.submit(work, 1, workers=[a.address], pure=False) == 2  # a runs work again


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
        register(c, policies=[quarantine(**{"heartbeat-timeout": "5s", "cooldown": "0.5s"})])
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


def _inside_transitions(scheduler):
    """Whether the caller runs inside ``scheduler``'s transition engine (a plugin hook)."""
    f = sys._getframe(1)
    while f is not None:
        if (
            f.f_code.co_name in ("_transition", "_transitions")
            and f.f_locals.get("self") is scheduler
        ):
            return True
        f = f.f_back
    return False


async def _probe_until_readmitted(c, q, address, prefix):
    i = 0
    deadline = time.monotonic() + 60
    while q.breakers[address].state != "closed":
        assert time.monotonic() < deadline, "worker not readmitted"
        await c.gather(c.map(work, range(i, i + 4), key=[f"{prefix}-{j}" for j in range(i, i + 4)]))
        i += 4
        await asyncio.sleep(0.05)


@gen_cluster(client=True, nthreads=TWO, timeout=120)
async def test_readmitted_worker_is_resumed_outside_the_transition_engine(c, s, a, b):
    calls = []  # (status, worker, called from inside Scheduler._transition(s))
    plain = s.stream_handlers["worker-status-change"]

    def recording(status, worker, stimulus_id):
        calls.append((getattr(status, "name", status), worker, _inside_transitions(s)))
        plain(status=status, worker=worker, stimulus_id=stimulus_id)

    s.stream_handlers["worker-status-change"] = recording  # Quarantine wraps this one
    await register(c, policies=[quarantine(cooldown=0.2)])
    q = _policy(s)
    assert q.quarantine(b.address, "test")
    assert s.workers[b.address].status == Status.paused
    # cooldown -> half-open (resumed) -> probe (paused) -> probe succeeded -> resumed
    await _probe_until_readmitted(c, q, b.address, "probe")
    await _until(lambda: s.workers[b.address].status == Status.running, what="resume")
    resumes = [inside for st, w, inside in calls if st == "running" and w == b.address]
    assert len(resumes) >= 2, calls  # half-open, then readmission after the probe
    # un-pausing makes Dask dispatch (Scheduler.transitions): never from a transition
    # hook (pausing the worker as its probe is dispatched does not, and may be)
    assert not any(resumes), calls
    # readmitted: b gets tasks again
    futs = c.map(work, range(100, 120), key=[f"after-{j}" for j in range(20)])
    await c.gather(futs)
    assert any(s.tasks[f.key].who_has == {s.workers[b.address]} for f in futs)


@gen_cluster(client=True, nthreads=TWO, timeout=120)
async def test_deferred_resume_skips_a_worker_that_was_quarantined_again(c, s, a, b):
    await register(c, policies=[quarantine(cooldown="1h")])
    q = _policy(s)
    assert q.quarantine(b.address, "test")
    # readmitted, then quarantined again before the deferred resume ran (same tick)
    q._close(b.address)
    assert q.quarantine(b.address, "again")
    await asyncio.sleep(0.2)  # the loop ran the deferred callback
    assert s.workers[b.address].status == Status.paused
    assert q.breakers[b.address].state == "open"


@gen_cluster(client=True, nthreads=TWO, timeout=120)
async def test_closing_the_policy_leaves_no_worker_paused(c, s, a, b):
    def none_paused():
        return all(ws.status == Status.running for ws in s.workers.values())

    async def used_again(address, tag):
        futs = c.map(work, range(30), key=[f"{tag}-{j}" for j in range(30)])
        await c.gather(futs)
        assert any(s.tasks[f.key].who_has == {s.workers[address]} for f in futs), tag

    # 1. the extension is removed from the scheduler
    await register(c, policies=[quarantine(cooldown="1h")])
    q = _policy(s)
    assert q.quarantine(b.address, "test")
    assert s.workers[b.address].status == Status.paused
    await c.unregister_scheduler_plugin(NAME)
    await _until(none_paused, what="resume after removal")
    assert q.closed and q.quarantined == []
    assert s.stream_handlers["worker-status-change"] == s.handle_worker_status_change
    assert NAME not in s.periodic_callbacks  # the removed extension stopped ticking
    await used_again(b.address, "removed")

    # 2. the extension disables the policy (as after an exception in one of its hooks)
    await register(c, policies=[quarantine(cooldown="1h")], replace=True)
    q = _policy(s)
    assert q.quarantine(a.address, "test")
    s.plugins[NAME]._disable(q, "test", RuntimeError("a policy error"))
    await _until(none_paused, what="resume after disable")
    assert s.stream_handlers["worker-status-change"] == s.handle_worker_status_change
    await used_again(a.address, "disabled")

    # 3. the extension is replaced: the new Quarantine starts with every worker running
    await register(c, policies=[quarantine(cooldown="1h")], replace=True)
    old = _policy(s)
    assert old.quarantine(b.address, "test")
    await register(c, policies=[quarantine(cooldown="1h")], replace=True)
    new = _policy(s)
    assert new is not old and old.closed and not new.closed
    await _until(none_paused, what="resume after replace")
    assert new.quarantined == []
    # the new policy still works: it can quarantine and keeps its own handler
    assert new.quarantine(b.address, "test")
    assert s.workers[b.address].status == Status.paused
    assert getattr(s.stream_handlers["worker-status-change"], "_oxigdal_policy", None) is new
    await asyncio.sleep(0.3)  # nothing left over un-pauses it
    assert s.workers[b.address].status == Status.paused
    kinds = _kinds(await c.get_events("oxigdal"), b.address)
    assert kinds.count("worker-readmitted") >= 2


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=120)
async def test_heartbeat_timeout_must_cover_three_dask_heartbeats(c, s, a):
    floor = min_heartbeat_timeout()
    assert floor == 3 * dask_heartbeat_interval(1) >= 3 * 0.5
    for bad in ("1s", 0.5, floor - 0.01):
        with pytest.raises(ConfigError, match=rf"heartbeat-timeout={bad!r}.*>= {floor:g} s"):
            await register(c, policies=[quarantine(**{"heartbeat-timeout": bad})], replace=True)
    await register(c, policies=[quarantine(**{"heartbeat-timeout": 0})], replace=True)
    assert _policy(s).effective_heartbeat_timeout() == 0  # off
    await register(c, policies=[quarantine(**{"heartbeat-timeout": floor})], replace=True)
    q = _policy(s)
    assert q.effective_heartbeat_timeout() == floor
    assert (await status(c))["policies"]["Quarantine"]["settings"][
        "effective_heartbeat_timeout"
    ] == floor
    # Dask asks a large cluster for slower heartbeats: the timeout in effect follows
    assert min_heartbeat_timeout(1000) == 3 * (1000 / 200 + 1) > floor
