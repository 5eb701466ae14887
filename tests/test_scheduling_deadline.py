"""Deadline scheduling on real clusters: EDF order, admission control, miss events.

No wall-clock assertions: order is observed on a saturated one-thread
worker, infeasibility comes from a configured per-prefix duration estimate
(``distributed.scheduler.default-task-durations``), and misses from tasks
that block on an ``Event`` past their deadline.
"""

from __future__ import annotations

# Import dask_oxigdal before distributed.utils_test (see test_scheduling_extension.py).
import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import datetime
import time

import pytest
from distributed import Event, Worker, wait
from distributed.utils_test import gen_cluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.exceptions import ConfigError, DeadlineInfeasible, DeadlineMissed
from dask_oxigdal.scheduling.deadline import EDF_BASE, Deadline
from dask_oxigdal.scheduling.extension import NAME, register, status

FAIRSHARE = {"class": "dask_oxigdal.scheduling.fairshare.FairShare"}


def deadline_policy(**kwargs):
    return {"class": "dask_oxigdal.scheduling.deadline.Deadline", **kwargs}


def stamp(x):
    return x, time.time()


def block(x, ev):
    ev.wait(120)
    return x


def hour_long(x):  # its duration estimate is configured to 1h below; it really is instant
    return x


def fail_odd(x):
    if x % 2:
        raise ValueError(f"task {x} failed on purpose")
    return x


async def _until(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


# worker-saturation inf: every task goes to the worker, which runs its ready tasks by
# priority (with the default 1.1 the later ones wait in scheduler.queued, same order)
@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    timeout=60,
    config={"distributed.scheduler.worker-saturation": float("inf")},
)
async def test_edf_order_on_a_saturated_worker(c, s, a):
    await register(c, tenants={"a": 1, "b": 1}, policies=[FAIRSHARE, deadline_policy()])
    ev = Event("edf-go")
    blocker = c.submit(block, -1, ev=ev, key="blocker")
    await _until(lambda: a.state.executing_count == 1)
    # submitted latest deadline first; ordinary work first of all
    plain = c.submit(stamp, "plain", key="plain")
    futs = {}
    for minutes, tenant in ((40, "a"), (10, "b"), (30, "a"), (20, "b")):
        with annotate(tenant=tenant, deadline=f"{minutes}min"):
            futs[minutes] = c.submit(stamp, minutes, key=f"d-{minutes}")
    await _until(lambda: len(a.state.ready) == 5)
    await ev.set()
    rows = await c.gather([plain, *futs.values()])
    await blocker
    order = [x for x, _ in sorted(rows, key=lambda r: r[1])]
    assert order == [10, 20, 30, 40, "plain"]
    ts = s.tasks["d-10"]
    # (queue rank, EDF key, Dask's priority...): the EDF key replaces the fair-share tag
    assert ts.priority[0] == s.tasks["plain"].priority[0]
    assert ts.priority[1] < 0 and ts.priority[1] + EDF_BASE == pytest.approx(
        ts.annotations["oxigdal_deadline"]
    )
    snap = (await status(c))["policies"]["Deadline"]
    assert snap["met"] == {"a": {"batch": 2}, "b": {"batch": 2}}
    assert snap["missed"] == {} and snap["rejected"] == 0 and snap["warned"] == 0


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_edf_does_not_cross_queues(c, s, a):
    await register(c, policies=[FAIRSHARE, deadline_policy()])
    ev = Event("queues-go")
    blocker = c.submit(block, -1, ev=ev, key="blocker")
    await _until(lambda: a.state.executing_count == 1)
    with annotate(queue="background", deadline="10min"):
        urgent_bg = c.submit(stamp, "background-10min", key="bg")
    with annotate(queue="interactive"):
        inter = c.submit(stamp, "interactive", key="inter")
    await _until(lambda: len(a.state.ready) == 2)
    await ev.set()
    rows = await c.gather([urgent_bg, inter])
    await blocker
    assert [x for x, _ in sorted(rows, key=lambda r: r[1])] == ["interactive", "background-10min"]


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    timeout=60,
    config={"distributed.scheduler.default-task-durations": {"hour_long": "1h"}},
)
async def test_infeasible_deadline_is_rejected_with_the_estimate(c, s, a):
    await register(c, policies=[FAIRSHARE, deadline_policy(infeasible="reject")])
    with annotate(tenant="default", deadline="1min"):
        futs = c.map(hour_long, range(3), key=[f"hour_long-{i}" for i in range(3)])
    with pytest.raises(
        DeadlineInfeasible, match=r"cannot be met: 3 task\(s\) .* estimated to finish"
    ):
        await futs[0]
    await wait(futs)
    assert all(f.status == "error" for f in futs)
    # a feasible deadline next to it is accepted and met
    with annotate(deadline="10min"):
        assert await c.submit(stamp, 1, key="feasible") is not None
    snap = (await status(c))["policies"]["Deadline"]
    assert snap["rejected"] == 1 and snap["met"] == {"default": {"batch": 1}}
    events = [e for _, e in await c.get_events(NAME) if e.get("kind") == "deadline-rejected"]
    assert events and events[0]["tasks"] == 3 and events[0]["estimate"] > events[0]["deadline"]


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    timeout=60,
    config={"distributed.scheduler.default-task-durations": {"hour_long": "1h"}},
)
async def test_infeasible_deadline_is_warned_and_accepted(c, s, a):
    await register(c, policies=[FAIRSHARE, deadline_policy(infeasible="warn")])
    alerts = []
    c.subscribe_topic(NAME, lambda event: alerts.append(event[1]))
    with annotate(deadline="1min"):
        assert await c.submit(hour_long, 7, key="hour_long-7") == 7
    await _until(lambda: any(e.get("alert") == "deadline-infeasible" for e in alerts))
    alert = next(e for e in alerts if e.get("alert") == "deadline-infeasible")
    assert alert["kind"] == "alert" and "estimated to finish" in alert["message"]
    snap = (await status(c))["policies"]["Deadline"]
    assert snap["warned"] == 1 and snap["rejected"] == 0


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_missed_deadline_reaches_a_subscribed_client_and_work_continues(c, s, a):
    await register(c, tenants={"t": 1}, policies=[FAIRSHARE, deadline_policy(infeasible="accept")])
    received = []
    c.subscribe_topic(NAME, lambda event: received.append(event[1]))
    ev = Event("miss-go")
    with annotate(tenant="t", queue="interactive", deadline="1s"):
        fut = c.submit(block, 5, ev=ev, key="late")
    await _until(lambda: any(e.get("kind") == "deadline-missed" for e in received))
    missed = next(e for e in received if e["kind"] == "deadline-missed")
    assert missed["tenant"] == "t" and missed["queue"] == "interactive"
    assert missed["unfinished"] == 1 and missed["on_miss"] == "continue"
    # the work keeps running by default
    assert s.tasks["late"].state == "processing"
    await ev.set()
    assert await fut == 5
    snap = (await status(c))["policies"]["Deadline"]
    assert snap["missed"] == {"t": {"interactive": 1}} and snap["met"] == {}


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_on_miss_cancel_errs_the_unfinished_work(c, s, a):
    await register(c, policies=[FAIRSHARE, deadline_policy(infeasible="accept", on_miss="cancel")])
    ev = Event("cancel-go")
    blocker = c.submit(block, -1, ev=ev, key="blocker")
    await _until(lambda: a.state.executing_count == 1)
    with annotate(deadline="1s"):
        futs = c.map(block, range(2), ev=ev, key=["c-0", "c-1"])
    with pytest.raises(DeadlineMissed, match=r"passed; oxigdal\.deadline\.on-miss=cancel"):
        await futs[0]
    await wait(futs)
    assert all(f.status == "error" for f in futs)
    await ev.set()
    assert await blocker == -1
    snap = (await status(c))["policies"]["Deadline"]
    assert snap["cancelled"] == 2 and snap["missed"] == {"default": {"batch": 1}}


async def _events(c, kind):
    return [e for _, e in await c.get_events(NAME) if e.get("kind") == kind]


async def _until_event(c, kind, timeout=30):
    deadline = time.monotonic() + timeout
    while not (found := await _events(c, kind)):
        assert time.monotonic() < deadline, f"no {kind!r} event"
        await asyncio.sleep(0.02)
    return found


@pytest.mark.parametrize("mode", ["warn", "reject"])
@gen_cluster(client=True, nthreads=[], timeout=60)
async def test_deadline_with_no_workers_is_reported_not_a_crash(c, s, mode):
    """No workers: the estimate is unknown (inf); the job is warned/rejected, the policy lives."""
    await register(c, policies=[FAIRSHARE, deadline_policy(infeasible=mode)])
    with annotate(deadline="10min"):
        futs = c.map(stamp, range(2), key=["nw-0", "nw-1"])
    kind = "deadline-rejected" if mode == "reject" else "alert"
    event = (await _until_event(c, kind))[0]
    assert "cannot be estimated: no workers" in event["message"], event
    assert event["estimate"] is None and event["tasks"] == 2
    if mode == "reject":
        with pytest.raises(DeadlineInfeasible, match="cannot be estimated: no workers"):
            await futs[0]
        await wait(futs)
        assert all(f.status == "error" for f in futs)
    else:
        assert event["alert"] == "deadline-infeasible"
        assert all(f.status == "pending" for f in futs)
    state = await status(c)
    assert state["disabled"] == {}, state["disabled"]
    snap = state["policies"]["Deadline"]
    assert snap["enabled"] is True
    assert snap["rejected" if mode == "reject" else "warned"] == 1
    # a worker joins: a job with a feasible deadline is accepted and runs
    async with Worker(s.address, nthreads=1):
        with annotate(deadline="10min"):
            assert (await c.submit(stamp, "late-worker", key="feasible"))[0] == "late-worker"
        if mode == "warn":
            assert [x for x, _ in await c.gather(futs)] == [0, 1]
        snap = (await status(c))["policies"]["Deadline"]
    assert snap["enabled"] is True and (await status(c))["disabled"] == {}
    assert snap["met"] == {"default": {"batch": 1 if mode == "reject" else 2}}
    assert snap["warned"] == (1 if mode == "warn" else 0)
    assert snap["rejected"] == (1 if mode == "reject" else 0)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_errored_or_cancelled_jobs_count_as_failed_not_met(c, s, a):
    await register(c, policies=[FAIRSHARE, deadline_policy(infeasible="accept")])
    with annotate(deadline="10min"):
        good = c.map(fail_odd, [0, 2], key=["good-0", "good-2"])
    await wait(good)
    with annotate(deadline="10min"):  # one task of the job raises
        mixed = c.map(fail_odd, [4, 5], key=["mixed-4", "mixed-5"])
    await wait(mixed)
    assert mixed[0].status == "finished" and mixed[1].status == "error"
    snap = (await status(c))["policies"]["Deadline"]
    assert snap["met"] == {"default": {"batch": 1}}
    assert snap["failed"] == {"default": {"batch": 1}} and snap["missed"] == {}
    failed = await _until_event(c, "deadline-failed")
    assert failed[0]["tasks"] == 2 and failed[0]["failed"] == 1
    # a job cancelled by its client before it finished
    ev = Event("cancel-job")
    with annotate(deadline="10min"):
        gone = c.map(block, range(2), ev=ev, key=["gone-0", "gone-1"])
    await _until(lambda: a.state.executing_count == 1)
    await c.cancel(gone)
    await _until(lambda: "gone-0" not in s.tasks and "gone-1" not in s.tasks)
    await ev.set()
    snap = (await status(c))["policies"]["Deadline"]
    assert snap["met"] == {"default": {"batch": 1}} and snap["missed"] == {}
    assert snap["failed"] == {"default": {"batch": 2}} and snap["live_jobs"] == 0
    assert snap["accepted"] == 3


def probe(x):  # estimated at 2 min (configured below); instant
    return x


def busy(x, ev):  # estimated at 4 min; blocks until the test lets it go
    ev.wait(120)
    return x


def job(x, ev):  # estimated at 2 min; blocks until the test lets it go
    ev.wait(120)
    return x


def tiny(x, ev):  # estimated at 1 s; blocks until the test lets it go
    ev.wait(120)
    return x


@pytest.mark.parametrize("mode", ["reject", "warn"])
@pytest.mark.parametrize(
    "backlog, feasible",
    [
        ("none", True),
        ("workers", False),  # ordinary work on the workers (Scheduler.total_occupancy)
        ("earlier-deadline", False),  # deadline work due no later, queued by Dask
        ("later-deadline", True),  # deadline work due later: EDF runs the probe first
    ],
)
@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    timeout=60,
    config={
        "distributed.scheduler.default-task-durations": {
            "probe": "120s",
            "busy": "240s",
            "job": "120s",
            "tiny": "1s",
        }
    },
)
async def test_admission_counts_the_backlog_ahead(c, s, a, backlog, feasible, mode):
    """The same probe (1 task, 2 min estimated, deadline in 9 min) alone and behind a backlog.

    Alone it is feasible (now + 2 s + 2 min). Behind 2 x 4 min of ordinary work on
    the worker, or behind a deadline job of 4 x 2 min due at the same time, it is
    not (now + ~8 min + 2 min), although its own size did not change. A deadline
    job due later does not count: the probe goes before it. Every task blocks on an
    Event, so nothing finishes (and no estimate changes) while the probe is judged;
    the margins are a minute or more.
    """
    await register(c, policies=[FAIRSHARE, deadline_policy(infeasible=mode)])
    ev = Event("backlog-go")
    # two blockers fill the thread and Dask's saturation slots (worker-saturation 1.1):
    # the 4 root tasks of a deadline job then wait in scheduler.queued, off the workers
    blockers = c.map(tiny, range(2), ev=ev, key=["tiny-0", "tiny-1"])
    await _until(lambda: len(s.workers[a.address].processing) == 2)
    now = time.time()
    due = datetime.datetime.fromtimestamp(now + 9 * 60, tz=datetime.UTC)
    ahead = []
    if backlog == "workers":  # 2 tasks: not root-ish on 1 thread, so sent to the worker
        ahead = c.map(busy, range(2), ev=ev, key=["busy-0", "busy-1"])
        await _until(lambda: all(f.key in s.tasks for f in ahead))
        assert s.total_occupancy >= 8 * 60
    elif backlog in ("earlier-deadline", "later-deadline"):
        # feasible itself: now + 2 s + 4 x 2 min <= its deadline (9 or 10 min)
        later = datetime.timedelta(minutes=1 if backlog == "later-deadline" else 0)
        with annotate(deadline=due + later):
            ahead = c.map(job, range(4), ev=ev, key=[f"job-{i}" for i in range(4)])
        await _until(lambda: all(f.key in s.tasks for f in ahead))
        # queued, or moved ahead of the ordinary blocker waiting on the worker
        # (dispatch): they count with their job, not in the occupancy
        assert all(s.tasks[f.key].state in ("queued", "processing") for f in ahead)
    snap = (await status(c))["policies"]["Deadline"]
    assert snap["accepted"] == (1 if backlog.endswith("deadline") else 0)
    assert snap["rejected"] == 0 and snap["warned"] == 0

    with annotate(deadline=due):
        fut = c.submit(probe, "probe", key="probe")
    if feasible:
        await ev.set()
        assert await fut == "probe"
        snap = (await status(c))["policies"]["Deadline"]
        assert snap["rejected"] == 0 and snap["warned"] == 0
        assert not await _events(c, "alert") and not await _events(c, "deadline-rejected")
    else:
        kind = "deadline-rejected" if mode == "reject" else "alert"
        event = (await _until_event(c, kind))[0]
        assert event["tasks"] == 1 and event["deadline"] == pytest.approx(due.timestamp())
        # about now + 8 min (backlog) + 2 min (probe) against now + 9 min
        assert event["estimate"] - event["deadline"] > 30, event
        assert "cannot be met: 1 task(s)" in event["message"]
        if mode == "reject":
            with pytest.raises(DeadlineInfeasible, match=r"cannot be met: 1 task\(s\)"):
                await fut
            await ev.set()
        else:
            assert event["alert"] == "deadline-infeasible"
            await ev.set()
            assert await fut == "probe"  # accepted, with the warning
        snap = (await status(c))["policies"]["Deadline"]
        assert snap["rejected" if mode == "reject" else "warned"] == 1
        assert snap["warned" if mode == "reject" else "rejected"] == 0
    await wait(blockers + ahead)


def test_bad_deadline_options_are_rejected():
    with pytest.raises(ConfigError, match=r"infeasible='drop' .* reject, warn, accept"):
        Deadline(infeasible="drop")
    with pytest.raises(ConfigError, match=r"on-miss='kill' .* continue, cancel"):
        Deadline(on_miss="kill")


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_deadline_must_follow_fairshare(c, s, a):
    with pytest.raises(ConfigError, match="Deadline must come after FairShare"):
        await register(c, policies=[deadline_policy(), FAIRSHARE])


# ----------------------------------------------- distributed internals we use
@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)])
async def test_guard_deadline_estimate_internals(c, s, a):
    """Occupancy, unknown-task duration and the loop timers the Deadline policy uses."""
    assert isinstance(s.total_occupancy, (int, float)) and s.total_occupancy >= 0
    assert isinstance(s.UNKNOWN_TASK_DURATION, (int, float)) and s.UNKNOWN_TASK_DURATION > 0
    assert s.total_nthreads == 2  # 0 without workers: Deadline.estimate() is then inf
    handle = s.loop.call_later(3600, lambda: None)
    s.loop.remove_timeout(handle)
    # Dask's priority: element 1 (generation) is >= 0, so a negative EDF key sorts first
    fut = c.submit(stamp, 1, key="gen")
    await fut
    assert s.tasks["gen"].priority[1] >= 0


# ------------------------------------- dispatch ahead of work queued on workers
def stamp_where(x):
    from distributed import get_worker

    return x, time.time(), get_worker().address


def _starts(rows, address):
    """The values run on ``address``, in start order (one thread: one task at a time)."""
    return [x for x, _, w in sorted(rows, key=lambda r: r[1]) if w == address]


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)],
    timeout=60,
    config={"distributed.scheduler.work-stealing": False},
)
async def test_rootish_deadline_job_runs_ahead_of_work_queued_on_workers(c, s, a, b):
    """A root-ish deadline job is not left in scheduler.queued behind the workers' backlog."""
    await register(c, tenants={"a": 1, "b": 1}, policies=[FAIRSHARE, deadline_policy()])
    ev = Event("dispatch-go")
    blockers = [
        c.submit(block, f"blocker-{i}", ev=ev, key=f"blocker-{i}", workers=[w.address])
        for i, w in enumerate((a, b))
    ]
    await _until(lambda: a.state.executing_count == 1 and b.state.executing_count == 1)
    # tenant a: small groups (one task each, not root-ish), sent to the busy workers
    with annotate(tenant="a"):
        plain = [c.submit(stamp_where, f"plain{i}", key=f"plain{i}") for i in range(12)]
        # and a root-ish job without a deadline (one submission): it waits in scheduler.queued
        names = [f"bulk-{i}" for i in range(6)]
        bulk = c.map(stamp_where, names, key=names)
    await _until(lambda: len(a.state.ready) + len(b.state.ready) == 12)
    await _until(lambda: len(s.queued) == 6)
    assert s.is_rootish(s.tasks["bulk-0"])
    # tenant b: a root-ish deadline job, 3 x the cluster's threads
    with annotate(tenant="b", deadline="10min"):
        names = [f"d-{i}" for i in range(6)]
        urgent = c.map(stamp_where, names, key=names)
    await _until(lambda: all(n in s.tasks for n in names))
    assert s.is_rootish(s.tasks["d-0"])
    on = {}
    # one wave per worker (ceil(1.1 x 1 thread) = 2) goes to the saturated workers
    # (without the move they stay queued until the workers drain: fails here)
    await _until(
        lambda: sum(s.tasks[f"d-{i}"].state == "processing" for i in range(6)) == 4, timeout=20
    )
    for i in range(6):
        ts = s.tasks[f"d-{i}"]
        assert ts.worker_restrictions is None and not ts.loose_restrictions  # lifted
        if ts.processing_on is not None:
            on[ts.key] = ts.processing_on.address
    assert sorted(on.values()) == sorted([a.address] * 2 + [b.address] * 2)
    queued = {ts.key for ts in s.queued}
    assert queued == {f"d-{i}" for i in range(6)} - set(on) | {f"bulk-{i}" for i in range(6)}
    ext = s.plugins[NAME]
    assert ext.policy("Deadline").dispatched == 4
    # a new worker gets the queued work as usual: the rest of the job, then bulk
    async with Worker(s.address, nthreads=1) as w:
        await _until(lambda: not any(s.tasks[f"d-{i}"].state == "queued" for i in range(6)))
        # work without a deadline is never moved to the saturated workers
        for i in range(6):
            ts = s.tasks[f"bulk-{i}"]
            assert ts.state in ("queued", "memory") or ts.processing_on.address == w.address
        await ev.set()
        rows = await c.gather([*plain, *bulk, *urgent])
        await c.gather(blockers)
    for worker in (a, b):
        starts = _starts(rows, worker.address)
        # the deadline tasks sent to the worker ran before its queued backlog
        assert sorted(starts[:2]) == sorted(k for k, addr in on.items() if addr == worker.address)
    assert {x for x, _, addr in rows if x.startswith("d-") and addr == w.address} == (
        {f"d-{i}" for i in range(6)} - set(on)
    )
    snap = (await status(c))["policies"]["Deadline"]
    assert snap["met"] == {"b": {"batch": 1}} and snap["dispatched"] >= 4


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_guard_deadline_dispatch_internals(c, s, a):
    """What ``Deadline.dispatch`` relies on, on plain Dask (no extension registered).

    ``Scheduler.queued.peek()`` is the front by priority; ``idle_task_count`` holds
    the workers with a free slot; a loosely restricted task is not root-ish, and
    ``queued -> released`` then places it on its worker even when that worker is
    saturated; ``WorkerState.processing``/``nthreads``, ``TaskState.processing_on``.
    """
    assert isinstance(s.WORKER_SATURATION, float) and s.WORKER_SATURATION == 1.1
    ev = Event("guard-dispatch")
    busy = [c.submit(block, f"busy{i}", ev=ev, key=f"busy{i}") for i in range(3)]
    ws = s.workers[a.address]
    await _until(lambda: len(ws.processing) == 3)
    assert ws in s.running and ws not in s.idle_task_count and ws.nthreads == 1
    names = [f"root-{i}" for i in range(4)]
    roots = c.map(stamp, names, key=names)
    await _until(lambda: len(s.queued) == 4)
    ts = s.queued.peek()
    assert ts.key == "root-0" and s.is_rootish(ts)
    ts.worker_restrictions = {a.address}
    ts.loose_restrictions = True
    assert not s.is_rootish(ts)
    s.transitions({ts.key: "released"}, "oxigdal-guard-dispatch")
    assert ts.state == "processing" and ts.processing_on is ws and ts not in s.queued
    ts.worker_restrictions = None
    ts.loose_restrictions = False
    assert len(ws.processing) == 4 and s.queued.peek().key == "root-1"
    await ev.set()
    await wait(busy + roots)
