"""Scheduler restart recovery, end to end.

A ``dask scheduler --preload dask_oxigdal.preload`` process with the embedded
coordinator runs a two-tenant workload; the test SIGKILLs it in the middle,
starts a new scheduler with the same coordinator configuration (and no tenant
settings of its own) and checks that usage ledgers, quotas, the quarantine
list and the checkpoint manifest come back.
"""

from __future__ import annotations

import json
import os
import sys
import time

import cloudpickle
import pytest
import yaml
from _coord_procs import PYTHON, Proc, free_port, wait_for
from distributed import Client

import dask_oxigdal as dox
from dask_oxigdal.annotations import annotate

# the scheduler cannot import this module: ship the run_on_scheduler functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _coordinator_state(dask_scheduler):
    coord = dask_scheduler.plugins["oxigdal"].coordinator
    st = coord.state
    return {
        "usage": dict(st.usage),
        "tenants": dict(st.tenants),
        "quarantine": dict(st.quarantine),
        "manifest": dict(st.manifest),
        "queued": coord.queued_writes,
    }


def _record_policy_state(quarantined, dask_scheduler=None):
    # the quarantine and checkpoint policies write through these calls
    coord = dask_scheduler.plugins["oxigdal"].coordinator
    coord.quarantine_set(quarantined, "open", "3 failures in 60s")
    coord.manifest_put(
        "ndvi-tile-7", {"path": "/tmp/ckpt/7.npy", "sha256": "ab" * 32, "nbytes": 42}
    )


def _start_scheduler(tmp_path, port, tenants, name):
    conf_dir = tmp_path / f"config-{name}"
    conf_dir.mkdir()
    config = {
        "oxigdal": {
            "coordinator": {"enabled": True, "data-dir": str(tmp_path / "coord")},
            "scheduling": {"interval": "100ms"},
        },
        "distributed": {"scheduler": {"work-stealing": False}},
    }
    if tenants:
        config["oxigdal"]["tenants"] = tenants
    (conf_dir / "dask.yaml").write_text(yaml.safe_dump(config))
    return Proc(
        [
            PYTHON,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-address",
            ":0",
            "--preload",
            "dask_oxigdal.preload",
        ],
        env={"DASK_CONFIG": str(conf_dir)},
        log=str(tmp_path / f"{name}.log"),
    )


def _start_worker(tmp_path, address, name, port=None):
    return Proc(
        [
            PYTHON,
            "-m",
            "distributed.cli.dask_worker",
            address,
            *(["--worker-port", str(port)] if port else []),
            "--nthreads",
            "2",
            "--no-nanny",
            "--host",
            "127.0.0.1",
            "--dashboard-address",
            ":0",
        ],
        log=str(tmp_path / f"{name}.log"),
    )


def _connect(address, proc):
    deadline = time.monotonic() + 120
    while True:
        try:
            return Client(address, timeout=10)
        except OSError:
            if not proc.alive() or time.monotonic() > deadline:
                raise AssertionError(f"scheduler did not start:\n{proc.output()}") from None
            time.sleep(0.2)


@pytest.mark.slow
def test_scheduler_sigkill_restores_ledgers_quotas_quarantine_and_manifest(tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    qport = free_port()
    quarantined = f"tcp://127.0.0.1:{qport}"  # a worker address recorded as quarantined
    tenants = {"team-a": {"weight": 3, "max-tasks": 2}, "team-b": 1}
    procs = []
    try:
        s1 = _start_scheduler(tmp_path, port, tenants, "scheduler-1")
        procs.append(s1)
        w1 = _start_worker(tmp_path, address, "worker-1")
        procs.append(w1)
        with _connect(address, s1) as client:
            client.wait_for_workers(1, timeout=120)
            client.run_on_scheduler(_record_policy_state, quarantined)
            with annotate(tenant="team-a"):
                fa = client.map(time.sleep, [0.02] * 30, key=[f"a-{i}" for i in range(30)])
            with annotate(tenant="team-b"):
                fb = client.map(time.sleep, [0.02] * 30, key=[f"b-{i}" for i in range(30)])
            client.gather(fa + fb)
            before = dox.status(client)
            assert before["coordinator"]["role"] == "leader"
            assert before["policies"]["Quota"]["limits"] == {"team-a": 2}

            def recorded():
                st = client.run_on_scheduler(_coordinator_state)
                usage = st["usage"]
                done = all(usage.get(t, {}).get("completed") == 30 for t in ("team-a", "team-b"))
                return st if done and st["manifest"] and st["quarantine"] else None

            rec = wait_for(recorded, 120, "the usage ledger to be recorded")
            # more work is running when the scheduler is killed
            with annotate(tenant="team-a"):
                running = client.map(time.sleep, [0.5] * 20, key=[f"a2-{i}" for i in range(20)])
            wait_for(
                lambda: dox.status(client)["tenants"]["team-a"]["running"] > 0,
                120,
                "team-a to run",
            )
            del running
            s1.kill()
        w1.kill()

        s2 = _start_scheduler(tmp_path, port, None, "scheduler-2")
        procs.append(s2)
        with _connect(address, s2) as client:
            # a healthy worker, then one at the address recorded as quarantined:
            # the Quarantine policy opens its breaker again when it joins
            procs.append(_start_worker(tmp_path, address, "worker-2"))
            client.wait_for_workers(1, timeout=120)
            procs.append(_start_worker(tmp_path, address, "worker-3", port=qport))
            # (not wait_for_workers(2): it counts running workers, and this one is
            # paused as soon as it joins)
            wait_for(
                lambda: (
                    dox.status(client)["policies"]["Quarantine"]["quarantined"] == [quarantined]
                ),
                120,  # includes starting worker-3's process on a loaded machine
                "the restored quarantine to apply to the returning worker",
            )
            after = dox.status(client)
            st = client.run_on_scheduler(_coordinator_state)
        for tenant in ("team-a", "team-b"):
            recorded_ws = rec["usage"][tenant]["worker_seconds"]
            assert recorded_ws > 0
            # fair share continues from the recorded usage, not from zero
            assert after["tenants"][tenant]["worker_seconds"] >= recorded_ws
            assert after["tenants"][tenant]["completed"] >= 30
            assert after["tenants"][tenant]["lifetime_share"] > 0
        # quotas and weights come back although scheduler-2 has no tenant settings
        assert after["tenants"]["team-a"]["weight"] == 3
        assert after["policies"]["Quota"]["limits"] == {"team-a": 2}
        assert st["quarantine"][quarantined]["state"] == "open"
        assert st["manifest"]["ndvi-tile-7"]["nbytes"] == 42
        # the policies read the restored state: the breaker, and the manifest entry
        # among the checkpoints the Checkpoint policy knows
        breaker = after["policies"]["Quarantine"]["workers"][quarantined]
        assert breaker["state"] == "open" and breaker["reason"].startswith("restored"), breaker
        assert after["policies"]["Checkpoint"]["known"] >= 1
        assert after["coordinator"]["role"] == "leader"
        json.dumps(after)
        # the journal is private to the scheduler's user
        for name in os.listdir(tmp_path / "coord"):
            assert os.stat(tmp_path / "coord" / name).st_mode & 0o077 == 0, name
    finally:
        for p in procs:
            p.kill()


# ----------------------------------------------- the embedded coordinator's address
def _settings(data_dir):
    from dask_oxigdal.coordination import CoordinatorSettings

    return CoordinatorSettings.from_config(
        data_dir=str(data_dir), start_timeout="30s", commit_timeout="2s"
    )


async def _until_async(predicate, timeout, what):
    import asyncio

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def _committed(coord):
    coord.flush()
    await _until_async(lambda: (coord.flush(), coord.queued_writes == 0)[1], 60, "the writes")


def _dump_members(data_dir):
    from dask_oxigdal.coordination import journal
    from dask_oxigdal.coordination.node import embedded_secret

    key = journal.derive_key(embedded_secret(str(data_dir)))
    raft = journal.read_dump(str(data_dir / "embedded.dump"), key=key)["raft"]
    return sorted(str(getattr(n, "address", n)) for n in raft[2])


async def _first_run(data_dir):
    """Start the embedded coordinator, record state, compact the log into the dump, stop."""
    from dask_oxigdal.coordination import Coordinator

    coord = Coordinator(_settings(data_dir))
    try:
        assert await coord.start() is True
        address = coord.address
        coord.tenant_set("team-a", weight=3.0, max_tasks=2)
        coord.usage_add("team-a", 12.5, completed=5)
        coord.quarantine_set("tcp://127.0.0.1:1", "open", "3 failures")
        await _committed(coord)
        # a full dump (log compaction): pysyncobj records the member list in it
        dump = data_dir / "embedded.dump"
        coord.node.forceLogCompaction()
        await _until_async(dump.exists, 60, "the log compaction dump")
    finally:
        await coord.close()
    assert _dump_members(data_dir) == [address]
    return address


async def _restart(data_dir):
    """Start the embedded coordinator again; its address, readiness and restored state."""
    from dask_oxigdal.coordination import Coordinator

    coord = Coordinator(_settings(data_dir))
    try:
        ready = await coord.start()
        st = coord.state
        out = {
            "address": coord.address,
            "ready": ready,
            "role": coord.role,
            "tenants": dict(st.tenants),
            "usage": dict(st.usage),
            "quarantine": {k: v["state"] for k, v in st.quarantine.items()},
        }
        if ready:
            # and it takes writes again
            coord.usage_add("team-a", 1.0)
            await _committed(coord)
            out["usage_after"] = coord.state.usage["team-a"]["worker_seconds"]
        return out
    finally:
        await coord.close()


def _check_restored(out, worker_seconds=12.5):
    assert out["ready"] is True, out
    assert out["role"] == "leader", out
    assert out["tenants"] == {"team-a": {"weight": 3.0, "max_tasks": 2}}
    assert out["usage"]["team-a"]["worker_seconds"] == worker_seconds
    assert out["usage"]["team-a"]["completed"] == 5
    assert out["quarantine"] == {"tcp://127.0.0.1:1": "open"}


def test_embedded_coordinator_reuses_its_address_after_log_compaction(tmp_path):
    import asyncio

    data_dir = tmp_path / "coord"
    address = asyncio.run(_first_run(data_dir))
    out = asyncio.run(_restart(data_dir))
    assert out["address"] == address  # recorded in the data dir, reused
    _check_restored(out)
    assert out["usage_after"] == 13.5
    # the address file is private like the journal
    assert os.stat(data_dir / "embedded.address").st_mode & 0o077 == 0


def test_embedded_coordinator_on_a_new_port_after_log_compaction_restores_its_state(tmp_path):
    import asyncio
    import socket

    data_dir = tmp_path / "coord"
    address = asyncio.run(_first_run(data_dir))
    # another process took the recorded port: the node falls back to a new one
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", int(address.rpartition(":")[2])))
        blocker.listen()
        out = asyncio.run(_restart(data_dir))
    finally:
        blocker.close()
    assert out["address"] != address
    _check_restored(out)
    assert out["usage_after"] == 13.5
    # the dump still names the old address (no compaction since): the next start reuses
    # the new recorded address and still drops the former one from the member list
    assert _dump_members(data_dir) == [address]
    again = asyncio.run(_restart(data_dir))
    assert again["address"] == out["address"]
    _check_restored(again, worker_seconds=13.5)
    assert again["usage_after"] == 14.5
