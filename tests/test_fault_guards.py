"""Guards: every ``distributed`` internal the fault-tolerance policies rely on.

If a ``distributed`` release changes one of these, a test here fails and names it
(see the private-attribute table in docs/architecture.md).
"""

from __future__ import annotations

import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import inspect

from dask._task_spec import Task
from dask.utils import parse_timedelta
from distributed import Event
from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.metrics import time
from distributed.scheduler import Scheduler, TaskState, WorkerState
from distributed.utils_test import gen_cluster
from distributed.worker import Worker

DOC = "see the private-attribute table in docs/architecture.md"


def test_guard_worker_and_task_state_attributes():
    ws_slots = set(WorkerState.__slots__) if hasattr(WorkerState, "__slots__") else set()
    ws_attrs = ws_slots | set(vars(WorkerState))
    for name in ("last_seen", "executing", "processing", "nthreads", "status", "address"):
        assert name in ws_attrs or name in WorkerState.__init__.__code__.co_names, name
    for name in (
        "retries",
        "processing_on",
        "run_spec",
        "dependencies",
        "dependents",
        "waiters",
        "waiting_on",
        "worker_restrictions",
        "loose_restrictions",
        "erred_on",
        "who_wants",
        "prefix",
        "state",
        "host_restrictions",
        "resource_restrictions",
    ):
        assert name in set(TaskState.__slots__) | set(vars(TaskState)), name
    sig = inspect.signature(Scheduler.handle_worker_status_change)
    assert list(sig.parameters)[1:] == ["status", "worker", "stimulus_id"]


class _Recorder(SchedulerPlugin):
    name = "guard-recorder"

    def __init__(self):
        self.log = []

    def transition(self, key, start, finish, *args, stimulus_id, **kwargs):
        self.log.append((key, start, finish, stimulus_id))


def _flaky_once(path):
    import os

    if not os.path.exists(path):
        open(path, "w").close()
        raise RuntimeError("first attempt fails")
    return 1


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_guard_failed_retry_reaches_plugins_as_processing_released_waiting(c, s, a, tmp_path):
    rec = _Recorder()
    s.add_plugin(rec)
    fut = c.submit(_flaky_once, str(tmp_path / "m"), retries=1, key="flaky")
    # the retry counter is decremented *before* the task leaves processing
    seen = {}
    orig = rec.transition

    def transition(key, start, finish, *args, stimulus_id, **kwargs):
        if key == "flaky" and start == "processing" and finish == "released":
            seen["retries"] = s.tasks[key].retries
        orig(key, start, finish, *args, stimulus_id=stimulus_id, **kwargs)

    rec.transition = transition
    assert await fut == 1
    steps = [(st, fi) for k, st, fi, _ in rec.log if k == "flaky"]
    i = steps.index(("processing", "released"))
    assert steps[i + 1] == ("released", "waiting")
    assert seen["retries"] == 0
    assert next(
        sid for k, st, fi, sid in rec.log if (k, st, fi) == ("flaky", "processing", "released")
    ).startswith("task-erred")


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)], timeout=60)
async def test_guard_pause_via_status_handler_and_stream_handler_lookup(c, s, a, b):
    # the worker stream looks its handler up per message: a replaced entry is used
    assert s.stream_handlers["worker-status-change"] == s.handle_worker_status_change
    s.handle_worker_status_change(Status.paused, b.address, "guard")
    ws = s.workers[b.address]
    assert ws.status == Status.paused and ws not in s.running
    futs = c.map(lambda x: x + 1, range(10))
    await c.gather(futs)
    assert all(s.tasks[f.key].who_has == {s.workers[a.address]} for f in futs)
    s.handle_worker_status_change(Status.running, b.address, "guard")
    assert ws in s.running
    called = []
    orig = s.stream_handlers["worker-status-change"]

    def wrapper(**kwargs):
        called.append(kwargs)
        orig(**kwargs)

    s.stream_handlers["worker-status-change"] = wrapper
    try:
        b.status = Status.paused
        while not called:
            await asyncio.sleep(0.02)
        assert set(called[0]) >= {"status", "worker", "stimulus_id"}
    finally:
        s.stream_handlers["worker-status-change"] = orig
        b.status = Status.running


def _block(ev):
    ev.wait()
    return 1


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)], timeout=60)
async def test_guard_last_seen_executing_and_release_of_a_processing_task(c, s, a, b):
    ev = Event()
    fut = c.submit(_block, ev, key="blocked", workers=[a.address], allow_other_workers=True)
    while "blocked" not in a.state.tasks or a.state.tasks["blocked"].state != "executing":
        await asyncio.sleep(0.02)
    ws = s.workers[a.address]
    before = ws.last_seen
    while not ws.executing:  # filled from the next heartbeat: {TaskState: seconds}
        await asyncio.sleep(0.05)
    assert ws.last_seen >= before
    ((ts, seconds),) = ws.executing.items()
    assert isinstance(ts, TaskState) and ts.key == "blocked" and seconds >= 0
    assert ws.nthreads == 1 and ts in ws.processing
    # releasing a processing task sends it elsewhere; the old thread keeps running
    ts.worker_restrictions = {b.address}
    ts.loose_restrictions = True
    s.transitions({"blocked": "released"}, stimulus_id="guard")
    while s.tasks["blocked"].processing_on is not s.workers[b.address]:
        await asyncio.sleep(0.02)
    await ev.set()
    assert await fut == 1


def _double(x):
    return 2 * x


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_guard_run_spec_rewrite_in_update_graph(c, s, a):
    class Rewrite(SchedulerPlugin):
        name = "guard-rewrite"

        def update_graph(self, scheduler, *, tasks, **kwargs):
            for key in tasks:
                ts = scheduler.tasks[key]
                if key == "outer" and isinstance(ts.run_spec, Task):
                    ts.run_spec = Task(key, _double, ts.run_spec)  # nested task runs first

    s.add_plugin(Rewrite())
    assert await c.submit(lambda: 21, key="outer") == 42


def test_guard_heartbeat_interval_of_workers():
    """Quarantine's minimum heartbeat-timeout is 3x the longest worker heartbeat interval."""
    import distributed.scheduler as sched

    hi = getattr(sched, "heartbeat_interval", None)
    assert callable(hi), f"distributed.scheduler.heartbeat_interval(n) is gone; {DOC}"
    assert isinstance(hi(1), (int, float)) and hi(1) > 0, hi(1)
    assert hi(1000) > hi(1), "heartbeat_interval(n) no longer grows with the cluster"
    param = inspect.signature(Worker.__init__).parameters.get("heartbeat_interval")
    assert param is not None, f"Worker(heartbeat_interval=) is gone; {DOC}"
    assert parse_timedelta(param.default, default="ms") > 0, param.default
    # the scheduler tells each worker the interval in its heartbeat reply
    assert "heartbeat-interval" in inspect.getsource(Scheduler.heartbeat_worker), DOC


def _compute_startstops(startstops):
    return [ss for ss in startstops or () if ss.get("action") == "compute"]


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)], timeout=60)
async def test_guard_fault_private_attributes(c, s, a, b):
    """Each private attribute the fault policies read (docs/architecture.md), on a live cluster."""
    seen = {}

    class Probe(SchedulerPlugin):
        name = "guard-fault-probe"

        def transition(self, key, start, finish, *args, **kwargs):
            if key == "probe" and (start, finish) == ("processing", "memory"):
                seen["startstops"] = kwargs.get("startstops")

    s.add_plugin(Probe())
    # Checkpoint lists remote stores with Scheduler.loop.asyncio_loop.run_in_executor
    loop = getattr(s.loop, "asyncio_loop", None)
    assert isinstance(loop, asyncio.AbstractEventLoop), f"Scheduler.loop.asyncio_loop; {DOC}"
    assert await loop.run_in_executor(None, lambda: 7) == 7
    for name in ("stream_handlers", "periodic_callbacks", "plugins", "workers", "tasks"):
        assert isinstance(getattr(s, name, None), dict), f"Scheduler.{name}; {DOC}"
    assert isinstance(s.running, set) and all(isinstance(ws, WorkerState) for ws in s.running)
    assert callable(s.loop.add_callback) and callable(s.loop.call_later)

    ev = Event()
    fut = c.submit(_block, ev, key="held", workers=[a.address])
    while "held" not in s.tasks or s.tasks["held"].state != "processing":
        await asyncio.sleep(0.02)
    ts = s.tasks["held"]
    ws = s.workers[a.address]
    # Stragglers: TaskState.state, processing_on; WorkerState.last_seen (heartbeat age)
    assert ts.state == "processing" and ts.processing_on is ws, f"TaskState.state; {DOC}"
    assert isinstance(ws.last_seen, float) and abs(time() - ws.last_seen) < 60, ws.last_seen
    # Checkpoint: TaskState.who_wants (a set of ClientState) of a requested key
    assert ts.who_wants and all(hasattr(cs, "client_key") for cs in ts.who_wants), DOC
    # Quarantine: WorkerState.status, Status.paused / Status.running
    assert ws.status == Status.running and Status.paused.name == "paused", DOC
    assert isinstance(ts.host_restrictions, (set, type(None)))
    assert isinstance(ts.resource_restrictions, (dict, type(None)))
    await ev.set()
    assert await fut == 1
    # a released key that nobody wants has no who_wants
    del fut
    while "held" in s.tasks:
        await asyncio.sleep(0.02)

    # Stragglers: the transition kwarg startstops, with a "compute" entry
    assert await c.submit(_double, 4, key="probe") == 8
    compute = _compute_startstops(seen.get("startstops"))
    assert compute and compute[0]["stop"] >= compute[0]["start"], f"startstops; {DOC}"
