"""The worked example of CONTRIBUTING.md: a new scheduling policy in under 100 lines.

``Pause`` holds the new tasks of the tenants it pauses, and lets them run
when :meth:`Pause.resume` is called or ``resume-after`` has passed. It uses
the whole policy contract: options checked by the settings helpers, a hold in
``update_graph``, O(1) bookkeeping in ``transition``, work deferred to the
next tick, ``extension.unhold`` + ``extension.transitions`` to release,
``snapshot`` for ``status()`` and ``close`` to give everything back.
"""

from __future__ import annotations

import time

import pytest
from distributed import wait
from distributed.utils_test import gen_cluster, inc

import dask_oxigdal  # noqa: F401  (before distributed.utils_test: see test_scheduling_extension.py)
from dask_oxigdal.annotations import annotate
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling.extension import NAME, register, status
from dask_oxigdal.scheduling.policy import SchedulingPolicy
from dask_oxigdal.settings import duration


# ----------------------------------------------------------- the example policy
class Pause(SchedulingPolicy):
    """Hold the tasks of paused tenants until :meth:`resume` or ``resume_after``.

    Parameters
    ----------
    tenants : list of str
        Tenants paused from the start.
    resume_after : str or float
        Resume a paused tenant this long after its first held task.
    """

    name = "Pause"
    after = ("Quota",)  # Quota (when configured) decides first; we hold on top

    def __init__(self, *, tenants=(), resume_after="1h"):
        super().__init__()
        self.paused = set(tenants)
        self.resume_after = duration("example.resume-after", resume_after)
        self.held: dict = {}  # key -> tenant (our own per-task data)
        self.since: dict = {}  # tenant -> when its first task was held
        self.released = 0

    def update_graph(self, new):
        for ts, info in new:
            if info.tenant in self.paused:
                self.extension.hold(ts, info, self.name)
                self.held[ts.key] = info.tenant
                self.since.setdefault(info.tenant, time.time())

    def transition(self, key, start, finish, info, kwargs):
        if finish == "forgotten":  # O(1): never scan here
            self.held.pop(key, None)

    def periodic(self):
        now = time.time()
        for tenant, since in list(self.since.items()):
            if now - since >= self.resume_after:
                self.resume(tenant)

    def resume(self, tenant):
        """Let ``tenant`` run: unpause it and release its held tasks (next tick)."""
        self.paused.discard(tenant)
        self.since.pop(tenant, None)
        self.defer("_release")  # safe from any hook: merged, run on the next tick

    def _release(self):
        ext = self.extension
        recs = {}
        for key, tenant in list(self.held.items()):
            if tenant in self.paused:
                continue
            del self.held[key]
            ts, info = ext.scheduler.tasks.get(key), ext.info.get(key)
            if ts is not None and info is not None and ext.unhold(ts, info, self.name):
                if ts.state == "no-worker":
                    recs[key] = "waiting"
                self.released += 1
        ext.transitions(recs, f"oxigdal-pause-{time.time()}")

    def close(self):
        self.paused.clear()
        self._release()

    def snapshot(self):
        return {"paused": sorted(self.paused), "held": len(self.held), "released": self.released}


# --------------------------------------------------------------------- tests
POLICIES = [
    {"class": "dask_oxigdal.scheduling.fairshare.FairShare"},
    {"class": "test_example_policy.Pause", "tenants": ["a"]},
]


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_pause_holds_a_tenant_until_resumed(c, s, a):
    await register(c, tenants={"a": 1, "b": 1}, policies=POLICIES)
    with annotate(tenant="a"):
        fa = c.map(inc, range(5), key=[f"a-{i}" for i in range(5)])
    with annotate(tenant="b"):
        fb = c.map(inc, range(5), key=[f"b-{i}" for i in range(5)])
    await wait(fb)  # b runs; a waits in no-worker, held by Pause
    assert {s.tasks[f.key].state for f in fa} == {"no-worker"}
    snap = (await status(c))["policies"]["Pause"]
    assert snap["enabled"] and snap["paused"] == ["a"] and snap["held"] == 5

    s.plugins[NAME].policy("Pause").resume("a")  # on the event loop, as a handler would
    assert await c.gather(fa) == [1, 2, 3, 4, 5]
    snap = (await status(c))["policies"]["Pause"]
    assert snap["paused"] == [] and snap["held"] == 0 and snap["released"] == 5


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_pause_gives_its_tasks_back_when_disabled(c, s, a):
    await register(c, tenants={"a": 1}, policies=POLICIES)
    with annotate(tenant="a"):
        fa = c.map(inc, range(3), key=[f"a-{i}" for i in range(3)])
    ext = s.plugins[NAME]
    pause = ext.policy("Pause")
    for _ in range(100):  # the map's graph reaches the scheduler before a later submit's
        if len(pause.held) == 3:
            break
        await wait(c.submit(inc, 0, pure=False))
    assert len(pause.held) == 3
    ext._disable(pause, "test", RuntimeError("switched off"))  # a policy bug: close() runs
    assert await c.gather(fa) == [1, 2, 3]


@gen_cluster(client=True, nthreads=[])
async def test_pause_checks_its_options(c, s):
    with pytest.raises(ConfigError, match=r"oxigdal\.example\.resume-after='soon'"):
        await register(c, policies=[{"class": "test_example_policy.Pause", "resume-after": "soon"}])
    with pytest.raises(ConfigError, match="has no option 'colour'"):
        await register(
            c, replace=True, policies=[{"class": "test_example_policy.Pause", "colour": 1}]
        )
