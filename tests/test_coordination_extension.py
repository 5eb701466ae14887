"""The scheduler extension with the coordinator: off by default, writes batched, no-leader behaviour.

Also guards the pysyncobj internals the coordinator relies on.
"""

from __future__ import annotations

import dask_oxigdal  # noqa: F401  (registers the oxigdal.* defaults before utils_test)

# isort: split
import asyncio
import inspect
import time

import dask
import pysyncobj
import pysyncobj.syncobj
import pysyncobj.tcp_connection
import pysyncobj.transport
import pytest
from _coord_procs import Group
from distributed.utils_test import gen_cluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.coordination.client import GroupClient
from dask_oxigdal.scheduling.extension import register, status


def _ext(s):
    return s.plugins["oxigdal"]


@gen_cluster(client=True)
async def test_coordinator_is_off_by_default(c, s, a, b):
    await register(c)
    assert _ext(s).coordinator is None
    snap = await status(c)
    assert snap["coordinator"] == {
        "role": "disabled",
        "leader": None,
        "commit_index": 0,
        "queued_writes": 0,
    }


async def _until(predicate, timeout=120, what="a condition", info=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {info() if info else ''}")
        await asyncio.sleep(0.05)


@pytest.mark.slow
def test_no_leader_keeps_scheduling_queues_bounded_writes_and_alerts(tmp_path):
    group = Group(tmp_path)
    group.start_all()
    config = {
        "oxigdal.coordinator.enabled": True,
        "oxigdal.coordinator.mode": "observer",
        "oxigdal.coordinator.partners": group.addresses,
        "oxigdal.coordinator.password-file": group.password_file,
        "oxigdal.coordinator.queue-size": 2,
        "oxigdal.coordinator.commit-timeout": "1s",
        "oxigdal.coordinator.start-timeout": "120s",  # 3 node processes start on 2 cores
        "oxigdal.scheduling.interval": "100ms",
    }

    @gen_cluster(client=True, config=config, timeout=360)
    async def run(c, s, a, b):
        await register(c, tenants={"t1": 1, "t2": 1, "t3": 1})
        coord = _ext(s).coordinator
        assert coord.ready and coord.snapshot()["role"] == "observer"
        with annotate(tenant="t1"):
            await c.gather(c.map(time.sleep, [0.01] * 10, key=[f"x-{i}" for i in range(10)]))
        await _until(
            lambda: coord.state.usage.get("t1", {}).get("completed") == 10,
            what="t1",
            info=lambda: (coord.snapshot(), dict(coord.state.usage), coord.node.view()),
        )
        max_queued = [0]
        enqueue = coord._enqueue

        def watched_enqueue(op, **args):  # records the longest queue seen (the real method runs)
            out = enqueue(op, **args)
            max_queued[0] = max(max_queued[0], coord.queued_writes)
            return out

        coord._enqueue = watched_enqueue
        dropped_before = coord.counters["dropped"]  # writes may already drop under load
        for proc in group.procs:
            proc.stop()  # SIGSTOP every node: no leader
        try:
            # scheduling goes on from the last known state; writes queue up to the bound
            for tenant in ("t1", "t2", "t3"):
                with annotate(tenant=tenant):
                    futs = c.map(time.sleep, [0.01] * 5, key=[f"{tenant}-{i}" for i in range(5)])
                    await c.gather(futs)
            await _until(lambda: coord.counters["dropped"] > dropped_before, what="a dropped write")
            snap = (await status(c))["coordinator"]
            # The queue counts the batch in flight. A batch sent just before the SIGSTOPs
            # may still be acknowledged afterwards (its reply was already on the wire), and
            # that frees its places after the drop: never more than the bound.
            assert snap["queue_bound"] == 2
            assert snap["queued_writes"] <= 2, snap
            assert max_queued[0] == 2
            await _until(
                lambda: any(
                    e.get("alert") in ("coordinator-no-leader", "coordinator-queue-full")
                    for _, e in s.get_events("oxigdal")
                ),
                what="an alert",
            )
            alerts = [
                e
                for _, e in s.get_events("oxigdal")
                if e.get("kind") == "alert" and e.get("alert", "").startswith("coordinator-")
            ]
            assert alerts[0]["queue_bound"] == 2
        finally:
            for proc in group.procs:
                proc.cont()
        # the group heals: the queue drains, and every completion is recorded exactly once
        # (a delta whose write was dropped goes with a later tick)
        expected = {"t1": 15, "t2": 5, "t3": 5}

        def recorded():
            return {t: coord.state.usage.get(t, {}).get("completed") for t in expected}

        await _until(
            lambda: (
                coord.queued_writes == 0 and coord._in_flight is None and recorded() == expected
            ),
            what="drain",
            info=lambda: (coord.snapshot(), recorded()),
        )
        await asyncio.sleep(0.5)  # more ticks: nothing is counted twice
        assert recorded() == expected
        assert {t: _ext(s).usage[t].completed for t in expected} == expected
        assert coord.queued_writes == 0

    try:
        run()
    finally:
        group.stop_all()


def test_coordinator_not_ready_at_start_restores_the_ledgers_on_a_later_tick(tmp_path):
    group = Group(tmp_path, n=1)
    try:
        group.start_all()
        with GroupClient(group.addresses, password=group.password) as gc:
            gc.call(
                "usage_add",
                tenant="t1",
                worker_seconds=7.5,
                completed=3,
                deadline=time.monotonic() + 60,
            )
            # a tenant registered at run time before the restart (not in the config)
            gc.call("tenant_set", tenant="t2", weight=4.0, deadline=time.monotonic() + 60)
        group.procs[0].stop()  # frozen: the scheduler's replica cannot be ready at start
        config = {
            "oxigdal.coordinator.enabled": True,
            "oxigdal.coordinator.mode": "observer",
            "oxigdal.coordinator.partners": group.addresses,
            "oxigdal.coordinator.password-file": group.password_file,
            "oxigdal.coordinator.start-timeout": "1s",
            "oxigdal.scheduling.interval": "100ms",
        }

        @gen_cluster(client=True, config=config, timeout=120)
        async def run(c, s, a, b):
            def events(kind):
                return [e for _, e in s.get_events("oxigdal") if e.get("kind") == kind]

            try:
                await register(c, tenants={"t1": 1})
                ext = _ext(s)
                coord = ext.coordinator
                assert coord.ready is False
                assert [e["alert"] for e in events("alert")] == ["coordinator-not-ready"]
                assert events("coordinator-restored") == []
                assert "t1" not in ext.usage or ext.usage["t1"].worker_seconds == 0
                assert "t2" not in ext.weights
            finally:
                group.procs[0].cont()
            # a later tick sees the replica ready and restores the ledgers, once
            await _until(lambda: events("coordinator-restored"), what="the restore")
            assert coord.ready is True
            assert len(events("coordinator-ready")) == 1
            assert ext.usage["t1"].worker_seconds == 7.5
            assert ext.usage["t1"].completed == 3
            # the recorded tenant that the configuration does not name joins late
            assert ext.weights["t2"] == 4.0 and ext.weights["t1"] == 1.0
            with annotate(tenant="t1"):
                await c.gather(c.map(time.sleep, [0.01] * 3, key=[f"y-{i}" for i in range(3)]))
            # the ledger goes on from the restored one, without counting it twice
            await _until(
                lambda: coord.state.usage["t1"]["completed"] == 6,
                timeout=30,
                what="the new completions",
                info=lambda: (dict(coord.state.usage), coord.snapshot(), ext.usage["t1"].completed),
            )
            await asyncio.sleep(0.5)
            assert ext.usage["t1"].completed == coord.state.usage["t1"]["completed"] == 6
            assert len(events("coordinator-restored")) == 1
            assert (await status(c))["coordinator"]["ready"] is True

        run()
    finally:
        group.stop_all()


# ------------------------------------------------------ pysyncobj internals we rely on
def test_guard_pysyncobj_internals():
    """Fails loudly if a pysyncobj release changes what the coordinator relies on."""
    # the journal is created through this module-level name (journal.install wraps it)
    assert callable(pysyncobj.syncobj.createJournal)
    src = inspect.getsource(pysyncobj.syncobj.SyncObj.__init__)
    assert "createJournal(self.__conf.journalFile)" in src
    # a custom serializer gets (filename, data[1:]); the deserializer returns data[1:]
    ser = inspect.getsource(pysyncobj.serializer.Serializer)
    assert "self.__serializer(tmpFile, data[1:])" in ser
    assert "return (None,) + self.__deserializer(self.__fileName)" in ser
    # observers, leaders, positions
    for name in ("_getLeader", "_isLeader", "isReady", "destroy_synchronous", "addNodeToCluster"):
        assert callable(getattr(pysyncobj.SyncObj, name)), name
    for prop in ("raftCommitIndex", "raftLastApplied", "raftCurrentTerm"):
        assert isinstance(getattr(pysyncobj.SyncObj, prop), property), prop
    assert pysyncobj.FAIL_REASON.SUCCESS == 0
    conf = pysyncobj.SyncObjConf()
    for attr in ("serializer", "deserializer", "onStateChanged", "dynamicMembershipChange"):
        assert hasattr(conf, attr), attr
    # a voting node binds conf.bindAddress when it is set (else 0.0.0.0 / ::)
    src = inspect.getsource(pysyncobj.transport.TCPTransport._createServer)
    assert "bindAddr = conf.bindAddress" in src and "if bindAddr is not None:" in src
    # with a password, a message is decrypted (Fernet: HMAC checked first) before unpickling
    src = inspect.getsource(pysyncobj.tcp_connection.TcpConnection)
    assert src.index("self.encryptor.decrypt(data)") < src.index(
        "pickle.loads(zlib.decompress(data))"
    )
    # log commands: a type byte, then (for these types) a pickle the journal turns into JSON
    t = pysyncobj.syncobj._COMMAND_TYPE
    assert (t.REGULAR, t.NO_OP, t.MEMBERSHIP, t.VERSION) == (0, 1, 2, 3)
    # pinned: earlier releases lost committed data after simultaneous restarts
    from pysyncobj.version import VERSION

    assert tuple(int(x) for x in VERSION.split(".")[:3]) >= (0, 3, 17)
    assert dask.config.get("oxigdal.coordinator.enabled") is False


def test_corrupt_journal_fails_the_extension_start_loudly(tmp_path):
    data_dir = tmp_path / "coord"
    config = {
        "oxigdal.coordinator.enabled": True,
        "oxigdal.coordinator.data-dir": str(data_dir),
    }

    @gen_cluster(client=True, config=config)
    async def first(c, s, a, b):
        await register(c, tenants={"t1": 2})
        coord = _ext(s).coordinator
        assert (await status(c))["coordinator"]["role"] == "leader"
        await _until(lambda: "t1" in coord.state.tenants, what="the recorded tenant")

    @gen_cluster(client=True, config=config)
    async def second(c, s, a, b):
        with pytest.raises(Exception, match="HMAC mismatch"):
            await register(c)
        assert "oxigdal" not in s.plugins or _ext(s).coordinator is None

    first()
    journal = data_dir / "embedded.journal"
    raw = bytearray(journal.read_bytes())
    raw[-3] ^= 0xFF
    journal.write_bytes(bytes(raw))
    second()


def _gang_member(i, name):
    from distributed import Event

    Event(f"{name}-go").wait(60)
    return i


def test_gang_leases_and_the_audit_log_are_written_to_the_coordinator(tmp_path):
    config = {
        "oxigdal.coordinator.enabled": True,
        "oxigdal.coordinator.data-dir": str(tmp_path),
        "oxigdal.scheduling.interval": "100ms",
    }

    @gen_cluster(client=True, config=config, timeout=120)
    async def run(c, s, a, b):
        from distributed import Event

        await register(c, tenants={"t": 1})
        coord = _ext(s).coordinator
        await _until(lambda: coord.ready, what="the embedded coordinator")
        with annotate(tenant="t", gang="pair"):
            members = c.map(_gang_member, [0, 1], name="pair", key=["pair-0", "pair-1"])
        # while the gang runs, its workers are leased to it in the replicated state
        await _until(
            lambda: set(coord.state.leases) == {a.address, b.address},
            what="the leases",
            info=lambda: (coord.state.leases, coord.snapshot()),
        )
        # gang names are per tenant: the holder names the tenant (not the default one)
        assert set(coord.state.leases.values()) == {"gang/t/pair"}
        await Event("pair-go").set()
        assert await c.gather(members) == [0, 1]
        # finished: the leases are vacated; the policy events are in the audit log
        await _until(lambda: coord.state.leases == {}, what="the vacated leases")
        await _until(
            lambda: "gang-started" in [e.get("kind") for e in coord.state.audit],
            what="the audit entry",
        )
        entry = next(e for e in coord.state.audit if e.get("kind") == "gang-started")
        assert entry["gang"] == "pair" and entry["tenant"] == "t" and entry["seq"] >= 1
        assert not [e for e in coord.state.audit if str(e.get("kind")).startswith("coordinator-")]

    run()
