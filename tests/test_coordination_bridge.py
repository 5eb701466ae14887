"""``Coordinator`` (the event-loop bridge) against a real node process on 127.0.0.1.

Readiness re-checked on the tick, alerts re-armed after recovery, resent
batches applied once. The node is a ``python -m dask_oxigdal.coordination``
process stopped by pid (SIGSTOP freezes it: no leader answers); the
coordinator is an observer in this process, driven by a ticker that calls
:meth:`Coordinator.flush` like the extension's periodic callback.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from _coord_procs import Group, wait_for

from dask_oxigdal.coordination import Coordinator, CoordinatorSettings
from dask_oxigdal.coordination.client import GroupClient


@pytest.fixture
def group(tmp_path):
    g = Group(tmp_path, n=1)
    try:
        g.start_all()
        yield g
    finally:
        g.stop_all()


def _coordinator(group, events, **overrides):
    settings = CoordinatorSettings.from_config(
        mode="observer",
        partners=group.addresses,
        password=group.password,
        **{"start_timeout": "60s", **overrides},
    )

    def emit(kind, **fields):
        events.append({"kind": kind, **fields})

    return Coordinator(settings, emit=emit)


def _kinds(events, kind, alert=None):
    return [e for e in events if e["kind"] == kind and (alert is None or e["alert"] == alert)]


async def _until(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class Ticker:
    """Calls ``coord.flush()`` every 50 ms, as the extension's periodic callback does."""

    def __init__(self, coord):
        self.coord = coord
        self.task = None

    async def _run(self):
        while True:
            self.coord.flush()
            await asyncio.sleep(0.05)

    async def __aenter__(self):
        self.task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


def _read(group, section, key=None):
    with GroupClient(group.addresses, password=group.password) as c:
        value = c.call("read", section=section, key=key, deadline=time.monotonic() + 60).value
        return value, c.node.view()["meta"]


def _seed(group):
    with GroupClient(group.addresses, password=group.password) as c:
        c.call(
            "usage_add", tenant="t", worker_seconds=7.5, completed=3, deadline=time.monotonic() + 60
        )


def test_readiness_is_rechecked_on_the_tick_and_on_ready_runs_once(group):
    _seed(group)
    group.procs[0].stop()  # frozen: the observer never hears of a leader
    events: list[dict] = []

    async def run():
        coord = _coordinator(group, events, start_timeout="1s", commit_timeout="30s")
        try:
            assert await coord.start() is False
            assert coord.ready is False
            calls = []
            coord.on_ready(lambda: calls.append(dict(coord.state.usage)))
            assert len(_kinds(events, "alert", "coordinator-not-ready")) == 1
            # a write while there is no leader: it fails fast (missing_leader) on each
            # tick and stays queued; nothing piles up in pysyncobj's queue
            coord.usage_add("t", 1.0)
            async with Ticker(coord):
                await _until(lambda: coord.counters["retried"] >= 3, "failed attempts")
                assert coord.last_error == "missing_leader"
                assert calls == [] and coord.queued_writes == 1
                group.procs[0].cont()
                # the tick notices readiness: the restore callbacks run, once
                await _until(lambda: calls, "on_ready")
                await _until(lambda: coord.queued_writes == 0, "the queued write")
                await asyncio.sleep(0.3)  # more ticks
            assert coord.ready is True
            # once, with the recorded state (the queued write may have committed first)
            assert len(calls) == 1
            assert calls[0]["t"]["completed"] == 3
            assert calls[0]["t"]["worker_seconds"] in (7.5, 8.5)
            assert len(_kinds(events, "coordinator-ready")) == 1
            late = []
            coord.on_ready(lambda: late.append(1))  # already ready: called at once
            assert late == [1]
            assert coord.snapshot()["ready"] is True
        finally:
            await coord.close()

    asyncio.run(run())
    usage, meta = _read(group, "usage", "t")
    # the write was applied once, and no copy of it reached the log
    assert usage["worker_seconds"] == 8.5
    assert meta["duplicates"] == 0


def test_alerts_are_rearmed_when_their_condition_clears(group):
    events: list[dict] = []

    async def burst(coord, n):
        for i in range(n):
            coord.tenant_set(f"burst-{i}", weight=1.0)
        await _until(lambda: coord.queued_writes == 0, "the burst to commit")

    async def outage(coord):
        group.procs[0].stop()
        try:
            coord.usage_add("t", 1.0)
            await _until(
                lambda: (
                    coord._no_leader_since is not None and "coordinator-no-leader" in coord._alerted
                ),
                "the no-leader alert",
            )
        finally:
            group.procs[0].cont()
        await _until(
            lambda: coord.queued_writes == 0 and coord._no_leader_since is None, "recovery"
        )

    async def run():
        coord = _coordinator(group, events, queue_size=3, commit_timeout="5s")
        try:
            assert await coord.start() is True
            async with Ticker(coord):
                await burst(coord, 5)  # 3 queued, 2 dropped: one queue-full alert
                await outage(coord)
                await outage(coord)
                await burst(coord, 5)  # the queue-full alert was re-armed too
        finally:
            await coord.close()
        return coord

    coord = asyncio.run(run())
    assert coord.counters["dropped"] == 4
    assert len(_kinds(events, "alert", "coordinator-queue-full")) == 2
    # each outage alerts (the earlier queue-full alert does not silence it) and recovers
    assert len(_kinds(events, "alert", "coordinator-no-leader")) == 2
    assert len(_kinds(events, "coordinator-recovered")) == 2
    assert [
        e["kind"] for e in events if e["kind"] != "alert" or e["alert"] != "coordinator-queue-full"
    ][:4] == ["alert", "coordinator-recovered", "alert", "coordinator-recovered"]


def test_audit_entries_never_crowd_out_state_writes(group):
    events: list[dict] = []

    async def run():
        coord = _coordinator(group, events, queue_size=4)
        try:
            assert await coord.start() is True
            assert coord.audit({"kind": "first"}) is not None  # queue empty: recorded
            coord.tenant_set("a", weight=1.0)
            assert coord.audit({"kind": "skipped"}) is None  # queue half full: skipped
            assert coord.counters["audit_skipped"] == 1
            for tenant in ("b", "c"):  # state writes still fit
                assert coord.tenant_set(tenant, weight=2.0) is not None
            assert coord.counters["dropped"] == 0
            async with Ticker(coord):
                await _until(lambda: coord.queued_writes == 0, "the writes to commit")
        finally:
            await coord.close()

    asyncio.run(run())
    assert events == []  # no queue-full alert
    audit, _ = _read(group, "audit", None)
    kinds = [e["kind"] for e in audit]
    assert "first" in kinds and "skipped" not in kinds


def test_a_resent_batch_is_applied_once(group):
    events: list[dict] = []

    async def run():
        coord = _coordinator(group, events, commit_timeout="0.3s")
        try:
            assert await coord.start() is True
            group.procs[0].stop()  # the leader is known but does not answer
            try:
                rid = coord.usage_add("t", 2.5, completed=1)
                coord.flush()  # sent
                for _ in range(3):  # no answer within commit-timeout: sent again, same id
                    await asyncio.sleep(0.35)
                    coord.flush()
                assert coord.counters["retried"] == 3
                assert coord._in_flight[0][0] == rid
            finally:
                group.procs[0].cont()
            async with Ticker(coord):
                await _until(
                    lambda: coord.queued_writes == 0 and coord._in_flight is None, "the commit"
                )
            assert coord.counters["committed"] == 1
            assert coord.state.usage["t"]["worker_seconds"] == 2.5
        finally:
            await coord.close()

    asyncio.run(run())
    usage, meta = _read(group, "usage", "t")
    # four copies reached the leader; the state machine applied the request id once
    assert usage == {"worker_seconds": 2.5, "completed": 1, "erred": 0, "submitted": 0}
    assert meta["duplicates"] >= 1
    wait_for(lambda: group.procs[0].alive(), 1, "the node")


def test_a_node_never_stopped_does_not_keep_the_interpreter_alive(tmp_path):
    """A process that ends without closing its coordinator still exits.

    (pysyncobj's tick thread is not a daemon: it ends when the thread that created
    the node ends, here the loop's executor thread, which is shut down at exit.
    A node created on a thread that lives for ever would hold the process.)
    """
    script = f"""
import asyncio
from dask_oxigdal.coordination.bridge import Coordinator
from dask_oxigdal.coordination.node import CoordinatorSettings

async def main():
    settings = CoordinatorSettings.from_config(
        mode="embedded", data_dir={str(tmp_path)!r}, start_timeout="60s"
    )
    coord = Coordinator(settings)
    assert await coord.start() is True
    print("ready", coord.snapshot()["role"], flush=True)
    # no coord.close(): the process just ends

asyncio.run(main())
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"the process did not exit:\n{out}\n{err[-2000:]}") from None
    assert proc.returncode == 0, err[-2000:]
    assert out.startswith("ready leader"), out
