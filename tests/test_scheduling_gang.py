"""Gang (all-or-nothing) admission on real clusters.

Gang members rendezvous at a barrier built from ``distributed.Event``: each
member sets its own "arrived" event, then waits (with a timeout) for every
other member's. A member that starts while another member of its gang cannot
run times out. A recorder plugin checks every transition: the members of a
gang enter ``processing`` in one ``Scheduler.transitions`` call (one
stimulus), each on a worker with an idle thread. Worker side, a member
records whether the background tasks that block the gang's threads had been
released when it started (``gate``): always with a gang, never for the first
members under vanilla Dask. No wall-clock assertions.
"""

from __future__ import annotations

# Import dask_oxigdal before distributed.utils_test (see test_scheduling_extension.py).
import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import inspect
import os
import signal
import time

import dask
import pytest
from distributed import Event, Nanny, Queue, Variable, Worker, get_worker, wait
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.scheduler import Scheduler, WorkerState
from distributed.utils_test import gen_cluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.exceptions import ConfigError, DeadlineInfeasible, GangError, GangTooLarge
from dask_oxigdal.scheduling.extension import NAME, register, status
from dask_oxigdal.scheduling.gang import Gang

NTHREADS = [("127.0.0.1", 2), ("127.0.0.1", 2)]  # 4 slots
FAIRSHARE = {"class": "dask_oxigdal.scheduling.fairshare.FairShare"}
QUOTA = {"class": "dask_oxigdal.scheduling.quota.Quota"}
#: The barrier timeout of every gang member, with and without the extension: generous,
#: so no test passes or fails because a member gave up waiting.
BARRIER_TIMEOUT = 90


def gang_policy(**kwargs):
    return {"class": "dask_oxigdal.scheduling.gang.Gang", **kwargs}


def member(i, gang, k, timeout, hold=None, gate=None):
    """A gang member: rendezvous with the other ``k - 1`` members, then return.

    With ``gate`` (an ``Event`` name), put ``(i, whether it was set)`` on the
    queue ``<gang>-gate`` when the member starts.
    """
    start = time.time()
    if gate is not None:
        Queue(f"{gang}-gate").put((i, Event(gate).is_set()))
    Queue(f"{gang}-starts").put(i)
    Event(f"{gang}-arrived-{i}").set()
    for j in range(k):
        if not Event(f"{gang}-arrived-{j}").wait(timeout):
            raise TimeoutError(f"gang {gang}: member {i} waited {timeout}s for member {j}")
    if hold is not None:
        Event(hold).wait(120)
    return gang, i, get_worker().address, start, time.time()


def background(i, ev):
    ev.wait(120)
    return i


def slowinc(x, delay=0.02):
    time.sleep(delay)
    return x + 1


class GangRecorder(SchedulerPlugin):
    """Every entry of a gang member into ``processing``: stimulus, worker load."""

    name = "test-gang-recorder"

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.entries: dict[str, list[tuple[str, str, int, int]]] = {}

    def transition(self, key, start, finish, *args, stimulus_id=None, **kwargs):
        if finish != "processing":
            return
        ts = self.scheduler.tasks[key]
        gang = (ts.annotations or {}).get("oxigdal_gang")
        if gang is None:
            return
        ws = ts.processing_on
        busy = len(ws.processing) - len(ws.long_running)  # includes this task
        self.entries.setdefault(gang, []).append((stimulus_id, ws.address, busy, ws.nthreads))


async def _until(predicate, timeout=60):
    """Poll ``predicate`` (a plain or a coroutine function) until it is true."""
    deadline = time.monotonic() + timeout
    while True:
        ok = predicate()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def _held(s, futs):
    return all(f.key in s.tasks and s.tasks[f.key].state == "no-worker" for f in futs)


def _gang_snapshot(s):
    return s.plugins[NAME].get_policy("Gang").snapshot()


async def _gate(name):
    """``[(member, gate was set when it started)]`` of gang ``name``, in start order."""
    q = await Queue(f"{name}-gate")  # created on the scheduler before qsize()
    return [await q.get() for _ in range(await q.qsize())]


async def _submit_gangs_under_load(c, s, timeout):
    """Two ordinary tasks block 2 of the 4 slots; 40 small tasks queue; two gangs of 3.

    The members' ``gate`` is the event that releases the two ordinary tasks.
    """
    bg_go = Event("bg-go")
    bg = c.map(background, range(2), ev=bg_go, key=["bg-0", "bg-1"])
    await _until(lambda: sum(len(ws.executing) for ws in s.workers.values()) == 2)
    small = c.map(slowinc, range(40), key=[f"small-{i}" for i in range(40)])
    gangs = {}
    for name in ("A", "B"):
        with annotate(gang=name):
            gangs[name] = c.map(
                member,
                range(3),
                gang=name,
                k=3,
                timeout=timeout,
                gate="bg-go",
                key=[f"{name}-{i}" for i in range(3)],
            )
    return bg_go, bg, small, gangs


@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_gangs_complete_atomically_under_load(c, s, a, b):
    # no slot reservation here: the small ordinary tasks run while the gangs wait
    await register(c, policies=[FAIRSHARE, QUOTA, gang_policy(reserve_wait="0s")])
    recorder = GangRecorder(s)
    s.add_plugin(recorder)
    bg_go, bg, small, gangs = await _submit_gangs_under_load(c, s, timeout=BARRIER_TIMEOUT)
    # only 2 slots can free up while the background runs: no member may start
    await _until(lambda: _gang_snapshot(s)["waiting"] == 2)
    await wait(small)
    assert not recorder.entries
    assert all(s.tasks[f"{g}-{i}"].state == "no-worker" for g in "AB" for i in range(3))
    await bg_go.set()
    results = {name: await c.gather(futs) for name, futs in gangs.items()}
    await wait(bg)

    for name, rows in results.items():
        assert sorted(r[1] for r in rows) == [0, 1, 2]
        # worker side: no member started while the ordinary tasks held the threads it
        # needed (3 of 4 slots, 2 blocked); vanilla Dask starts members at once
        # (test_vanilla_dask_times_out_on_the_same_workload). That members overlapped
        # needs no check: the barrier makes every successful run overlap.
        gate = await _gate(name)
        assert sorted(i for i, _ in gate) == [0, 1, 2], gate
        assert all(opened for _, opened in gate), gate
        entries = recorder.entries[name]
        assert len(entries) == 3
        # one Scheduler.transitions call released the whole gang ...
        assert len({stim for stim, *_ in entries}) == 1, entries
        # ... each member onto an idle thread of its worker
        assert all(busy <= nthreads for _, _, busy, nthreads in entries), entries
        # spread (the default): 3 members on 2 workers of 2 threads -> both workers
        assert len({addr for _, addr, _, _ in entries}) == 2
    # two gangs of 3 on 4 slots: one after the other, never interleaved
    stims = [recorder.entries[g][0][0] for g in "AB"]
    assert stims[0] != stims[1]
    snap = (await status(c))["policies"]["Gang"]
    assert snap["started"] == 2 and snap["completed"] == 2
    assert snap["partial_starts"] == 0 and snap["waiting"] == 0 and snap["running"] == 0
    assert snap["refused"] == 0 and snap["restarts"] == 0


class PendingAtGangStart(SchedulerPlugin):
    """How many background tasks were not finished when the gang's first member started."""

    name = "test-pending-at-gang-start"

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.pending: int | None = None

    def transition(self, key, start, finish, *args, **kwargs):
        if finish != "processing" or self.pending is not None:
            return
        ts = self.scheduler.tasks[key]
        if (ts.annotations or {}).get("oxigdal_gang") is not None:
            self.pending = sum(
                1
                for t in self.scheduler.tasks.values()
                if str(t.key).startswith("bg-") and t.state != "memory"
            )


@pytest.mark.parametrize("reserve_wait", ["0s", "120s"])
@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_head_gang_reserves_freed_slots(c, s, a, b, reserve_wait):
    """With a reserve wait, freed slots go to the head gang, not to queued small tasks."""
    await register(c, policies=[FAIRSHARE, QUOTA, gang_policy(reserve_wait=reserve_wait)])
    probe = PendingAtGangStart(s)
    s.add_plugin(probe)
    bg = c.map(slowinc, range(300), delay=0.005, key=[f"bg-{i}" for i in range(300)])
    await _until(lambda: len(s.queued) > 100)
    with annotate(gang="R"):
        futs = c.map(member, range(3), gang="R", k=3, timeout=60, key=[f"R-{i}" for i in range(3)])
    rows = await c.gather(futs)
    assert len(rows) == 3
    await wait(bg)
    snap = (await status(c))["policies"]["Gang"]
    assert snap["reserved_tasks"] == 0 and snap["reserving"] is None
    if reserve_wait == "0s":
        # Dask refills a freed thread from its queue at once: the gang gets 3 idle
        # threads only when the queue is empty (at most the in-flight tasks left)
        assert probe.pending <= 6 and snap["reservations"] == 0
    else:
        # the queued small tasks were held back until the gang had its slots
        assert probe.pending > 100 and snap["reservations"] == 1


@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_reservation_takes_turns_so_ordinary_tasks_progress(c, s, a, b):
    """A gang that cannot fit reserves for reserve-wait, then lets ordinary tasks run."""
    await register(
        c, policies=[FAIRSHARE, QUOTA, gang_policy(reserve_wait="0.3s")], interval="50ms"
    )
    ev = Event("turns-go")
    hold = c.map(background, range(2), ev=ev, key=["bg-hold-0", "bg-hold-1"])
    await _until(lambda: sum(len(ws.executing) for ws in s.workers.values()) == 2)
    with annotate(gang="T"):  # needs 3 idle threads: cannot start while 2 are held
        futs = c.map(member, range(3), gang="T", k=3, timeout=60, key=[f"T-{i}" for i in range(3)])
    await _until(lambda: _held(s, futs))
    small = c.map(slowinc, range(100), delay=0.001, key=[f"small-{i}" for i in range(100)])
    # the ordinary tasks finish although the gang keeps waiting
    await wait(small)
    snap = _gang_snapshot(s)
    assert snap["waiting"] == 1 and snap["started"] == 0
    assert snap["reservations"] >= 1
    await ev.set()
    assert len(await c.gather(futs)) == 3
    await wait(hold)


class HeldRecorder(SchedulerPlugin):
    """Ordinary (non-gang) tasks that were sent to ``no-worker`` (held), by key prefix."""

    name = "test-held-recorder"

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.held: dict[str, list] = {}

    def transition(self, key, start, finish, *args, **kwargs):
        if finish != "no-worker":
            return
        ts = self.scheduler.tasks.get(key)
        if ts is None or (ts.annotations or {}).get("oxigdal_gang") is not None:
            return
        self.held.setdefault(str(key).split("-")[0], []).append(key)


@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_reservation_never_holds_a_deadline_job(c, s, a, b):
    """A waiting gang holds the ordinary tasks of its queue, not a deadline job's (EDF)."""
    deadline = {"class": "dask_oxigdal.scheduling.deadline.Deadline"}
    await register(c, policies=[FAIRSHARE, QUOTA, gang_policy(reserve_wait="120s"), deadline])
    recorder = HeldRecorder(s)
    s.add_plugin(recorder)
    ev = Event("edf-go")
    hold = c.map(background, range(2), ev=ev, key=["bg-edf-0", "bg-edf-1"])
    await _until(lambda: sum(len(ws.executing) for ws in s.workers.values()) == 2)
    with annotate(queue="batch", gang="E"):  # 3 members, 2 idle threads: cannot start
        futs = c.map(member, range(3), gang="E", k=3, timeout=60, key=[f"E-{i}" for i in range(3)])
    await _until(lambda: _held(s, futs) and _gang_snapshot(s)["reserving"] == "E")
    # the same queue, with a deadline: queued by Dask (60 root tasks), never held
    with annotate(queue="batch", deadline="1h"):
        due = c.map(slowinc, range(60), delay=0.001, key=[f"due-{i}" for i in range(60)])
    await _until(lambda: "due" in recorder.held or all(f.done() for f in due))
    assert "due" not in recorder.held, recorder.held["due"][:5]
    await wait(due)
    assert _gang_snapshot(s)["reserving"] == "E"
    await ev.set()
    assert len(await c.gather(futs)) == 3
    await wait(hold)


@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_reservation_never_holds_a_higher_priority_queue(c, s, a, b):
    """A waiting gang of queue "batch" holds queued "batch" tasks, never "interactive" ones."""
    await register(c, policies=[FAIRSHARE, QUOTA, gang_policy(reserve_wait="120s")])
    recorder = HeldRecorder(s)
    s.add_plugin(recorder)
    ev = Event("rank-go")
    hold = c.map(background, range(2), ev=ev, key=["bg-rank-0", "bg-rank-1"])
    await _until(lambda: sum(len(ws.executing) for ws in s.workers.values()) == 2)
    with annotate(queue="batch", gang="L"):  # 3 members, 2 idle threads: cannot start
        futs = c.map(member, range(3), gang="L", k=3, timeout=60, key=[f"L-{i}" for i in range(3)])
    await _until(lambda: _held(s, futs) and _gang_snapshot(s)["reserving"] == "L")
    # a higher-priority queue: queued by Dask (60 root tasks on 2 idle threads), never held
    with annotate(queue="interactive"):
        hi = c.map(slowinc, range(60), delay=0.001, key=[f"hi-{i}" for i in range(60)])
    await _until(lambda: "hi" in recorder.held or all(f.done() for f in hi))
    assert "hi" not in recorder.held, recorder.held["hi"][:5]
    await wait(hi)
    snap = _gang_snapshot(s)
    assert snap["reserving"] == "L" and snap["started"] == 0 and snap["reserved_tasks"] == 0
    # the gang's own queue is held for it (the check above can fail)
    with annotate(queue="batch"):
        same = c.map(slowinc, range(60), delay=0.001, key=[f"same-{i}" for i in range(60)])
    await _until(lambda: "same" in recorder.held)
    assert _gang_snapshot(s)["reserved_tasks"] > 0
    await ev.set()
    assert len(await c.gather(futs)) == 3
    await wait(same + hold)
    snap = _gang_snapshot(s)
    assert snap["reserving"] is None and snap["reserved_tasks"] == 0 and snap["started"] == 1


@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_gang_blocked_by_its_quota_reserves_nothing(c, s, a, b):
    """Freed threads cannot start a gang its quota blocks: ordinary tasks are not held."""
    await register(
        c,
        tenants={"t": {"weight": 1, "max-tasks": 3}, "u": 1},
        policies=[FAIRSHARE, QUOTA, gang_policy(reserve_wait="120s")],
    )
    recorder = HeldRecorder(s)
    s.add_plugin(recorder)
    ev = Event("quota-block")
    with annotate(tenant="t"):
        one = c.submit(background, 0, ev=ev, key="t-one")
    await _until(lambda: "t-one" in s.tasks and s.tasks["t-one"].state == "processing")
    with annotate(tenant="t", gang="qb"):  # 3 idle threads, but room for 2 in t's quota
        futs = c.map(
            member, range(3), gang="qb", k=3, timeout=60, key=[f"qb-{i}" for i in range(3)]
        )
    await _until(lambda: _held(s, futs))
    gang = s.plugins[NAME].get_policy("Gang")
    assert gang.release() == 0
    assert gang.snapshot()["reservations"] == 0 and gang.reserving is None
    with annotate(tenant="u"):
        small = c.map(slowinc, range(60), delay=0.001, key=[f"u-{i}" for i in range(60)])
    await _until(lambda: "u" in recorder.held or all(f.done() for f in small))
    assert "u" not in recorder.held, recorder.held["u"][:5]
    await wait(small)
    assert _gang_snapshot(s)["reservations"] == 0
    await ev.set()
    await one
    assert len(await c.gather(futs)) == 3


@gen_cluster(client=True, nthreads=NTHREADS, timeout=120)
async def test_vanilla_dask_deadlocks_on_the_same_workload(c, s, a, b):
    """Without the extension the members of a gang start in whatever slots are free.

    Same workload and the same (generous) barrier timeout as
    test_gangs_complete_atomically_under_load, where no member starts while the two
    ordinary tasks hold their threads and both gangs complete. Here members take the
    two free threads and wait there for gang mates that cannot get one: every thread
    of the cluster is taken and no gang can rendezvous (a deadlock that only the
    barrier timeout would break).
    """
    recorder = GangRecorder(s)
    s.add_plugin(recorder)
    bg_go, bg, small, gangs = await _submit_gangs_under_load(c, s, timeout=BARRIER_TIMEOUT)
    members = gangs["A"] + gangs["B"]
    member_keys = {f.key for f in members}

    def executing():
        return [str(ts.key) for w in (a, b) for ts in w.state.executing]

    # all 4 threads taken: the 2 ordinary tasks and 2 members waiting at their barrier
    await _until(lambda: len(executing()) == 4 and sum(k in member_keys for k in executing()) == 2)
    running = [k for k in executing() if k in member_keys]

    gate_queues = [await Queue("A-gate"), await Queue("B-gate")]  # created on the scheduler

    async def started():  # executing on the worker is not yet in the function: wait for it
        queued = sum([await q.qsize() for q in gate_queues])
        own = [
            await Event(f"{k.split('-')[0]}-arrived-{k.split('-')[1]}").is_set() for k in running
        ]
        return queued == 2 and all(own)

    await _until(started)
    # each running member waits for a member of its gang of 3 that has no thread
    for key in running:
        gang = key.split("-")[0]
        arrived = [await Event(f"{gang}-arrived-{j}").is_set() for j in range(3)]
        assert not all(arrived), (key, arrived)
    assert not any(f.done() for f in members)
    # members were sent to workers whose threads were all busy (they queued there)
    entries = [e for g in recorder.entries.values() for e in g]
    assert len(entries) == 6
    assert any(busy > nthreads for _, _, busy, nthreads in entries), entries
    # worker side, the gate check of the gang test fails here: members started
    # while the ordinary tasks still held their threads
    gate = await _gate("A") + await _gate("B")
    assert gate and not any(opened for _, opened in gate), gate
    # break the deadlock from outside (the barrier timeout would, after 90 s)
    for gang in "AB":
        for j in range(3):
            await Event(f"{gang}-arrived-{j}").set()
    await bg_go.set()
    assert len(await c.gather(members)) == 6
    await wait(bg + small)


@gen_cluster(client=True, nthreads=NTHREADS, timeout=60)
async def test_pack_placement_fills_one_worker(c, s, a, b):
    await register(c, policies=[gang_policy(placement="pack")])
    with annotate(gang="P"):
        futs = c.map(member, range(2), gang="P", k=2, timeout=60, key=["P-0", "P-1"])
    rows = await c.gather(futs)
    assert len({r[2] for r in rows}) == 1


@gen_cluster(client=True, nthreads=NTHREADS, timeout=60)
async def test_gang_too_big_is_refused_at_once(c, s, a, b):
    await register(c)  # the default policies include Gang
    with annotate(gang="huge"):
        futs = c.map(
            member, range(5), gang="huge", k=5, timeout=60, key=[f"h-{i}" for i in range(5)]
        )
    with pytest.raises(GangTooLarge, match=r"'huge' needs 5 worker slots .* the cluster has 4"):
        await futs[0]
    await wait(futs)
    assert all(f.status == "error" for f in futs)
    snap = (await status(c))["policies"]["Gang"]
    assert snap["refused"] == 1 and snap["started"] == 0
    # the cluster is fine afterwards
    with annotate(gang="ok"):
        rows = await c.gather(c.map(member, range(4), gang="ok", k=4, timeout=60))
    assert len(rows) == 4


@gen_cluster(client=True, nthreads=NTHREADS, timeout=90)
async def test_gang_too_big_waits_for_the_cluster_to_grow(c, s, a, b):
    await register(c, policies=[gang_policy(timeout="60s")])
    with annotate(gang="grow"):
        futs = c.map(
            member, range(5), gang="grow", k=5, timeout=60, key=[f"g-{i}" for i in range(5)]
        )
    await _until(lambda: _held(s, futs))
    async with Worker(s.address, nthreads=1):
        rows = await c.gather(futs)
    assert sorted(r[1] for r in rows) == list(range(5))
    snap = (await status(c))["policies"]["Gang"]
    assert snap["refused"] == 0 and snap["started"] == 1


@gen_cluster(client=True, nthreads=NTHREADS, timeout=60)
async def test_gang_too_big_errs_after_the_timeout(c, s, a, b):
    await register(c, policies=[gang_policy(timeout="0.5s")], interval="100ms")
    with annotate(gang="never"):
        futs = c.map(
            member, range(6), gang="never", k=6, timeout=60, key=[f"n-{i}" for i in range(6)]
        )
    with pytest.raises(GangTooLarge, match=r"waited oxigdal\.gang\.timeout=0\.5s"):
        await futs[0]


@gen_cluster(client=True, nthreads=NTHREADS, timeout=60)
async def test_malformed_gangs_are_refused_with_a_clear_error(c, s, a, b):
    await register(c)
    ev = Event("hold-live")
    with annotate(gang="dup"):
        live = c.map(
            member, range(2), gang="dup", k=2, timeout=60, hold="hold-live", key=["d-0", "d-1"]
        )
    await _until(lambda: _gang_snapshot(s)["running"] == 1)
    with annotate(gang="dup"):
        again = c.submit(member, 0, gang="dup2", k=1, timeout=60, key="d-again")
    with pytest.raises(GangError, match="'dup' is already live"):
        await again
    with annotate(gang="pinned"):
        pinned = c.submit(member, 0, gang="pinned", k=1, timeout=60, workers=[a.address])
    with pytest.raises(GangError, match="restrictions"):
        await pinned
    await ev.set()
    assert len(await c.gather(live)) == 2


@gen_cluster(client=True, nthreads=NTHREADS, timeout=60)
async def test_gang_counts_against_its_tenants_quota(c, s, a, b):
    # tenant "t" may run 3 tasks at once: with one running, a gang of 3 must wait
    await register(
        c,
        tenants={"t": {"weight": 1, "max-tasks": 3}},
        policies=[FAIRSHARE, QUOTA, gang_policy()],
    )
    ev = Event("quota-hold")
    with annotate(tenant="t"):
        one = c.submit(background, 0, ev=ev, key="t-one")
    await _until(lambda: "t-one" in s.tasks and s.tasks["t-one"].state == "processing")
    with annotate(tenant="t", gang="q"):
        futs = c.map(member, range(3), gang="q", k=3, timeout=60, key=[f"q-{i}" for i in range(3)])
    await _until(lambda: _held(s, futs))
    # 3 free slots on the cluster, but only 2 left in the tenant's quota
    s.plugins[NAME].get_policy("Gang").release()
    assert all(s.tasks[f.key].state == "no-worker" for f in futs)
    await ev.set()
    await one
    rows = await c.gather(futs)
    assert len(rows) == 3
    quota = (await status(c))["policies"]["Quota"]
    assert quota["max_admitted"]["t"] == 3


def hour_long(x):  # its duration estimate is configured to 1h below; it really is instant
    return x


@gen_cluster(
    client=True,
    nthreads=NTHREADS,
    timeout=60,
    config={"distributed.scheduler.default-task-durations": {"hour_long": "1h"}},
)
async def test_gang_members_rejected_by_another_policy_never_start(c, s, a, b):
    """A gang held by Gang and failed by Deadline (infeasible): errs, never starts, is dropped."""
    deadline = {"class": "dask_oxigdal.scheduling.deadline.Deadline", "infeasible": "reject"}
    await register(c, policies=[FAIRSHARE, QUOTA, gang_policy(), deadline])
    with annotate(gang="dl", deadline="1min"):
        futs = c.map(hour_long, range(2), key=["hour_long-0", "hour_long-1"])
    with pytest.raises(DeadlineInfeasible, match="cannot be met"):
        await futs[0]
    await wait(futs)
    await _until(lambda: _gang_snapshot(s)["waiting"] == 0)
    snap = _gang_snapshot(s)
    assert snap["started"] == 0 and snap["partial_starts"] == 0 and snap["gangs"] == {}


def test_bad_gang_options_are_rejected():
    with pytest.raises(ConfigError, match=r"placement='scatter' .* spread, pack"):
        Gang(placement="scatter")
    with pytest.raises(ConfigError, match="max-restarts=-1"):
        Gang(max_restarts=-1)
    with pytest.raises(ConfigError, match="timeout='soon'"):
        Gang(timeout="soon")


def attempt_member(i, gang, k, timeout=BARRIER_TIMEOUT):
    """A gang member that rendezvouses on fresh state at each attempt.

    The attempt number is read from the ``Variable`` ``<gang>-attempt`` (the test
    bumps it before it kills a worker), so a restarted attempt cannot pass the
    barrier on events set by the killed one. Each run is recorded worker side on
    the queue ``<gang>-runs``. After the barrier, the member holds its thread until
    the test sets ``<gang>-<attempt>-release``.
    """
    attempt = Variable(f"{gang}-attempt").get(timeout=30)
    address = get_worker().address
    Queue(f"{gang}-runs").put((attempt, i, address))
    Event(f"{gang}-{attempt}-arrived-{i}").set()
    for j in range(k):
        if not Event(f"{gang}-{attempt}-arrived-{j}").wait(timeout):
            raise TimeoutError(f"gang {gang} attempt {attempt}: member {i} waited for {j}")
    Event(f"{gang}-{attempt}-release").wait(timeout)
    return gang, attempt, i, address


async def _rendezvoused(gang, attempt, k):
    for j in range(k):
        assert await Event(f"{gang}-{attempt}-arrived-{j}").wait(60), (gang, attempt, j)


async def _kill_worker_running(c, s, key):
    """SIGKILL the worker process running ``key`` (its nanny restarts it)."""
    address = s.tasks[key].processing_on.address
    pid = (await c.run(os.getpid, workers=[address]))[address]
    os.kill(pid, signal.SIGKILL)
    return address


async def _all_running(s, n):
    """Wait until ``n`` workers are running: a slow Nanny must not make the gang pack."""
    while len(s.running) < n:
        await asyncio.sleep(0.01)


async def _runs(gang):
    q = await Queue(f"{gang}-runs")  # created on the scheduler before qsize()
    return sorted([await q.get() for _ in range(await q.qsize())])


# one worker with 2 threads and two with 1. The members of a 2-gang go to the
# 2-thread worker and a 1-thread one (spread). When the 1-thread one dies, the
# survivor is released but Python cannot stop its thread: the scheduler counts
# the 2-thread worker as fully idle and places a member there again.
NANNIES = [("127.0.0.1", 2), ("127.0.0.1", 1), ("127.0.0.1", 1)]


@gen_cluster(client=True, Worker=Nanny, nthreads=NANNIES, timeout=120)
async def test_whole_gang_restart_relaunches_every_member(c, s, *nannies):
    """SIGKILL of a worker running a member: every member runs again, on fresh state."""
    await register(c)  # the default policies include Gang
    await _all_running(s, len(NANNIES))
    await Variable("K-attempt").set(0)
    with annotate(gang="K"):
        futs = c.map(attempt_member, range(2), gang="K", k=2, key=["K-0", "K-1"])
    await _rendezvoused("K", 0, 2)
    on = {key: s.tasks[key].processing_on for key in ("K-0", "K-1")}
    assert len(set(on.values())) == 2  # spread
    victim = next(key for key, ws in on.items() if ws.nthreads == 1)
    survivor = next(key for key in on if key != victim)
    await Variable("K-attempt").set(1)  # read by the members of the next attempt
    await _kill_worker_running(c, s, victim)
    # the restarted gang rendezvouses on attempt-1 events only: both members ran again
    await _rendezvoused("K", 1, 2)
    await Event("K-1-release").set()
    rows = await c.gather(futs)
    assert sorted((r[1], r[2]) for r in rows) == [(1, 0), (1, 1)]
    runs = await _runs("K")
    # worker side: every member ran twice, once per attempt (the survivor too: it was
    # not left running alone, nor resumed where its killed attempt still ran)
    assert [(att, i) for att, i, _ in runs] == [(0, 0), (0, 1), (1, 0), (1, 1)], runs
    first = {i: w for att, i, w in runs if att == 0}
    assert first[int(survivor[-1])] == on[survivor].address
    await Event("K-0-release").set()  # the survivor's thread of the killed attempt
    snap = (await status(c))["policies"]["Gang"]
    assert snap["restarts"] == 1 and snap["started"] == 2 and snap["completed"] == 1
    assert snap["partial_starts"] == 0 and snap["failed"] == 0 and snap["gangs"] == {}
    events = [e for _, e in await c.get_events(NAME) if e.get("kind") == "gang-restarted"]
    assert [(e["gang"], e["restarts"]) for e in events] == [("K", 1)]


@gen_cluster(
    client=True,
    Worker=Nanny,
    nthreads=NANNIES,
    timeout=120,
    config={"oxigdal.gang.max-restarts": 1},
)
async def test_gang_errs_when_max_restarts_is_exhausted(c, s, *nannies):
    """One restart is allowed: the second lost member errs the gang, naming the limit."""
    await register(c)
    assert s.plugins[NAME].get_policy("Gang").max_restarts == 1
    await Variable("X-attempt").set(0)
    with annotate(gang="X"):
        futs = c.map(attempt_member, range(2), gang="X", k=2, key=["X-0", "X-1"])
    await _rendezvoused("X", 0, 2)
    await Variable("X-attempt").set(1)
    await _kill_worker_running(c, s, "X-1")
    await _rendezvoused("X", 1, 2)  # restart 1 of 1: the gang runs again
    await Event("X-0-release").set()  # the survivor's thread of the killed attempt
    assert _gang_snapshot(s)["gangs"]["X"]["restarts"] == 1
    await Variable("X-attempt").set(2)
    await _kill_worker_running(c, s, "X-0")
    for fut in futs:
        with pytest.raises(
            GangError, match=r"gang 'X' lost a member 2 times; oxigdal\.gang\.max-restarts=1"
        ):
            await fut
    await Event("X-1-release").set()
    # no third attempt was started
    assert {att for att, _, _ in await _runs("X")} == {0, 1}
    snap = (await status(c))["policies"]["Gang"]
    assert snap["restarts"] == 2 and snap["failed"] == 1 and snap["refused"] == 1
    assert snap["started"] == 2 and snap["completed"] == 0 and snap["gangs"] == {}
    assert snap["waiting"] == 0 and snap["running"] == 0
    events = [e for _, e in await c.get_events(NAME) if e.get("kind") == "gang-refused"]
    assert len(events) == 1 and events[0]["gang"] == "X" and "max-restarts=1" in events[0]["error"]


@pytest.mark.parametrize("placement", ["spread", "pack"])
@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)] * 3, timeout=60)
async def test_placement_spreads_or_packs_members(c, s, a, b, w, placement):
    """Members per worker, as seen by the members: spread uses distinct workers first."""
    with dask.config.set({"oxigdal.gang.placement": placement}):
        await register(c, policies=[gang_policy()])
    assert _gang_snapshot(s)["placement"] == placement
    expected = {  # k -> sorted members per used worker (3 workers of 2 threads)
        "spread": {2: [1, 1], 3: [1, 1, 1], 4: [1, 1, 2]},
        "pack": {2: [2], 3: [1, 2], 4: [2, 2]},
    }[placement]
    for k, counts in expected.items():
        name = f"{placement}-{k}"
        with annotate(gang=name):
            futs = c.map(
                member,
                range(k),
                gang=name,
                k=k,
                timeout=BARRIER_TIMEOUT,
                key=[f"{name}-{i}" for i in range(k)],
            )
        rows = await c.gather(futs)
        per_worker = {}
        for row in rows:
            per_worker[row[2]] = per_worker.get(row[2], 0) + 1
        assert sorted(per_worker.values()) == counts, (k, per_worker)


# ----------------------------------------------- distributed internals we use
@gen_cluster(client=True, nthreads=NTHREADS)
async def test_guard_gang_release_internals(c, s, a, b):
    """What a gang release relies on: running workers, slots, pinned no-worker -> processing."""
    assert isinstance(s.running, set) and all(isinstance(ws, WorkerState) for ws in s.running)
    for attr in ("processing", "long_running", "nthreads", "address", "executing"):
        assert hasattr(WorkerState, attr) or attr in WorkerState.__slots__, attr
    # work stealing never moves a task pinned (loose_restrictions=False) to one worker
    import inspect

    from distributed.stealing import WorkStealing

    src = inspect.getsource(WorkStealing._get_thief)
    assert "valid_workers(ts)" in src and "not ts.loose_restrictions" in src
    assert ("no-worker", "processing") in Scheduler._TRANSITIONS_TABLE
    assert ("processing", "released") in Scheduler._TRANSITIONS_TABLE
    # a held task pinned to a worker and transitioned goes to that worker at once
    from dask_oxigdal.scheduling.extension import HOLD_ADDRESS

    fut = c.submit(slowinc, 1, key="pin-me", workers=[HOLD_ADDRESS], allow_other_workers=False)
    await _until(lambda: "pin-me" in s.tasks and s.tasks["pin-me"].state == "no-worker")
    ts = s.tasks["pin-me"]
    ts.worker_restrictions = {b.address}
    s.transitions({"pin-me": "processing"}, stimulus_id="guard")
    assert ts.state == "processing" and ts.processing_on.address == b.address
    assert await fut == 2
