"""Checkpoint / resume on real clusters: resume after a killed cluster (exactly-once
execution of checkpointed tasks, upstream not re-run), corruption detection, fsspec stores."""

from __future__ import annotations

import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import os
import random
import threading
import time

import fsspec
import pytest
from dask import delayed
from distributed import Client, LocalCluster
from distributed.utils_test import gen_cluster
from fsspec.implementations.local import LocalFileSystem

from dask_oxigdal.annotations import annotate
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.fault.checkpoint import CheckpointCorrupt, CheckpointStore
from dask_oxigdal.scheduling.extension import NAME, register, status

TWO = [("127.0.0.1", 1), ("127.0.0.1", 1)]


def checkpoint_policy(store):
    return {"class": "dask_oxigdal.fault.checkpoint.Checkpoint", "store": str(store)}


def counted(name, runs, value, *deps):
    """Record one execution of ``name`` in ``runs`` (a side-effect file), return value + deps."""
    with open(os.path.join(runs, f"{name}-{time.time_ns()}-{random.random()}"), "w"):
        pass
    return value + sum(deps)


def _scheduler_keys(dask_scheduler):
    return [str(k) for k in dask_scheduler.tasks]


def _runs(runs):
    out = {}
    for n in os.listdir(runs):
        name = n.split("-")[0]
        out[name] = out.get(name, 0) + 1
    return out


def _graph(runs, n):
    """load_i (not checkpointed) -> tile_i (checkpointed) -> total (checkpointed)."""
    tiles = []
    for i in range(n):
        load = delayed(counted, pure=True)(f"load{i}", runs, i, dask_key_name=f"load_{i}")
        with annotate(checkpoint=True):
            tiles.append(
                delayed(counted, pure=True)(f"tile{i}", runs, 100, load, dask_key_name=f"tile_{i}")
            )
    with annotate(checkpoint=True):
        total = delayed(counted, pure=True)("total", runs, 0, *tiles, dask_key_name="total")
    return tiles, total


def _cluster():
    return LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        worker_dashboard_address=":0",
    )


def test_resume_after_killed_cluster_runs_checkpointed_tasks_once(tmp_path):
    store, runs = tmp_path / "store", tmp_path / "runs"
    runs.mkdir()
    n = 6
    expected = sum(100 + i for i in range(n))
    # run 1: only the tiles are computed, then the whole cluster is killed
    with _cluster() as cluster, Client(cluster) as c:
        register(c, policies=[checkpoint_policy(store)])
        tiles, _ = _graph(str(runs), n)
        assert c.compute(tiles, sync=True) == [100 + i for i in range(n)]
        assert status(c)["policies"]["Checkpoint"]["saved"] == n
        pids = c.run(os.getpid)
        for pid in pids.values():
            os.kill(pid, 9)
    # run 2: a new cluster and client submit the full graph with the same keys
    with _cluster() as cluster, Client(cluster) as c:
        register(c, policies=[checkpoint_policy(store)])
        _, total = _graph(str(runs), n)
        assert c.compute(total, sync=True) == expected
        snap = status(c)["policies"]["Checkpoint"]
        assert snap["loaded"] == n and snap["saved"] == 1 and snap["corrupt"] == 0
        # the cut-off upstream tasks are forgotten, not left behind in the scheduler
        deadline = time.monotonic() + 60
        while any(k.startswith("load_") for k in c.run_on_scheduler(_scheduler_keys)):
            assert time.monotonic() < deadline, "upstream tasks left in the scheduler"
            time.sleep(0.05)
    counts = _runs(runs)
    # checkpointed tasks ran exactly once across both runs; upstream loads were not re-run
    assert counts == {
        **{f"tile{i}": 1 for i in range(n)},
        **{f"load{i}": 1 for i in range(n)},
        "total": 1,
    }


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)], timeout=120)
async def test_corrupt_checkpoint_is_recomputed_and_reported(c, s, a, b, tmp_path):
    store, runs = tmp_path / "store", tmp_path / "runs"
    runs.mkdir()
    await register(c, policies=[checkpoint_policy(store)])
    tiles, _ = _graph(str(runs), 3)
    assert await c.compute(tiles[1]) == 101
    del tiles
    deadline = time.monotonic() + 60
    while "tile_1" in s.tasks or "load_1" in s.tasks:  # wait until the scheduler forgot them
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    st = CheckpointStore(str(store))
    path = st.path("tile_1")
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0xFF
    open(path, "wb").write(bytes(data))
    # resubmitted: the loader detects the flip, the task is recomputed from its input
    tiles, _ = _graph(str(runs), 3)
    assert await c.compute(tiles[1]) == 101
    snap = (await status(c))["policies"]["Checkpoint"]
    assert snap["corrupt"] == 1 and snap["saved"] == 2
    events = [e for _, e in await c.get_events("oxigdal") if e.get("kind") == "checkpoint-corrupt"]
    assert [e["key"] for e in events] == ["tile_1"]
    assert _runs(runs) == {"load1": 2, "tile1": 2}
    assert st.load("tile_1") == 101  # rewritten, valid again


def _sample_file(tmp_path):
    st = CheckpointStore(str(tmp_path / "s"))
    st.save("k", {"a": list(range(50)), "b": "x" * 40})
    return st, open(st.path("k"), "rb").read()


_OFFSETS = sorted({0, 1, 4, 5, 6, 40, 69, 70, 71, 80, 90, 100, 150, 200, 250, -2, -1})


@pytest.mark.parametrize("offset", _OFFSETS)
def test_every_single_byte_flip_is_detected(tmp_path, offset):
    _st, data = _sample_file(tmp_path)
    pos = offset % len(data)
    for bit in (0x01, 0x80, 0xFF):
        bad = bytearray(data)
        bad[pos] ^= bit
        with pytest.raises(CheckpointCorrupt):
            CheckpointStore.decode(bytes(bad))


@pytest.mark.parametrize("cut", [0, 1, 5, 10, 70, 71, 72, 100, -50, -1])
def test_every_truncation_is_detected(tmp_path, cut):
    st, data = _sample_file(tmp_path)
    with open(st.path("k"), "wb") as f:
        f.write(data[: cut % len(data)])
    with pytest.raises(CheckpointCorrupt):
        st.load("k")


def test_all_offsets_exhaustively_for_a_small_file(tmp_path):
    st = CheckpointStore(str(tmp_path / "s"))
    st.save("k", 12345)
    data = open(st.path("k"), "rb").read()
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(CheckpointCorrupt):
            CheckpointStore.decode(bytes(bad))
    for cut in range(len(data)):
        with pytest.raises(CheckpointCorrupt):
            CheckpointStore.decode(data[:cut])
    assert CheckpointStore.decode(data) == 12345


def test_fsspec_memory_store_and_missing_file():
    url = f"memory://oxigdal-test-{time.time_ns()}"
    st = CheckpointStore(url)
    entry = st.save(("tile", 3), [1, 2, 3])
    assert st.load(("tile", 3)) == [1, 2, 3]
    assert entry["nbytes"] == len(fsspec.filesystem("memory").cat(st.path(("tile", 3))))
    assert st.names() == {st.filename(("tile", 3))}
    st.delete(("tile", 3))
    with pytest.raises(CheckpointCorrupt, match="missing"):
        st.load(("tile", 3))
    with pytest.raises(ValueError, match="not valid"):
        CheckpointStore("")


class GatedFS(LocalFileSystem):
    """A local filesystem under the ``oxgated://`` scheme whose first read of a
    checkpoint file waits for ``gate``: a loader task that is still loading.

    (gen_cluster runs the workers in this process, so they see the registration
    and the class attributes.)
    """

    protocol = "oxgated"
    gate = threading.Event()
    reads: list = []

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("oxgated://"):
            path = path[len("oxgated://") :]
        return super()._strip_protocol(path)

    @classmethod
    def reset(cls):
        cls.gate = threading.Event()
        cls.reads = []

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode and str(path).endswith(".ckpt"):
            type(self).reads.append(path)
            if len(type(self).reads) == 1:
                type(self).gate.wait(60)
        return super()._open(path, mode, **kwargs)


fsspec.register_implementation("oxgated", GatedFS, clobber=True)


async def _until(predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _stored_then_blocked_loader(c, s, tmp_path):
    """Checkpoint tile_1, forget it, resubmit it: its loader blocks in its first read."""
    GatedFS.reset()
    store, runs = f"oxgated://{tmp_path}/store", tmp_path / "runs"
    runs.mkdir()
    await register(c, policies=[checkpoint_policy(store)])
    tiles, _ = _graph(str(runs), 2)
    assert await c.compute(tiles[1]) == 101
    del tiles
    await _until(lambda: "tile_1" not in s.tasks and "load_1" not in s.tasks, "forgotten")
    tiles, _ = _graph(str(runs), 2)
    fut = c.compute(tiles[1])
    await _until(lambda: GatedFS.reads, "the loader to start reading")
    ts = s.tasks["tile_1"]
    assert ts.state == "processing" and not ts.dependencies  # a loader, blocked
    return fut, ts, runs


async def _assert_loaded_not_corrupt(c, s, fut, runs):
    assert await fut == 101
    snap = (await status(c))["policies"]["Checkpoint"]
    assert snap["corrupt"] == 0, snap
    assert snap["loaded"] == 1 and snap["saved"] == 1, snap
    events = [e for _, e in await c.get_events("oxigdal") if e.get("kind") == "checkpoint-corrupt"]
    assert events == []
    # served from the checkpoint: neither the tile nor its input ran again
    assert _runs(runs) == {"load1": 1, "tile1": 1}
    assert len(GatedFS.reads) == 2  # the abandoned first read, and the one that served it
    assert s.plugins[NAME].get_policy("Checkpoint").store.filename("tile_1") in (
        s.plugins[NAME].get_policy("Checkpoint").known
    )


@gen_cluster(client=True, nthreads=TWO, timeout=120)
async def test_loader_whose_worker_closes_mid_load_is_not_corrupt(c, s, a, b, tmp_path):
    fut, ts, runs = await _stored_then_blocked_loader(c, s, tmp_path)
    victim = a if ts.processing_on.address == a.address else b
    try:
        # the worker leaves while its loader reads: processing -> released, not a failure
        await victim.close(executor_wait=False)
        await _assert_loaded_not_corrupt(c, s, fut, runs)
    finally:
        GatedFS.gate.set()  # let the abandoned thread return


@gen_cluster(client=True, nthreads=TWO, timeout=120)
async def test_loader_moved_by_the_scheduler_is_not_corrupt(c, s, a, b, tmp_path):
    fut, ts, runs = await _stored_then_blocked_loader(c, s, tmp_path)
    other = b.address if ts.processing_on.address == a.address else a.address
    try:
        # what Stragglers and Quarantine do: release the processing task, elsewhere
        ts.worker_restrictions = {other}
        ts.loose_restrictions = True
        s.transitions({"tile_1": "released"}, stimulus_id="test-move-loader")
        await _assert_loaded_not_corrupt(c, s, fut, runs)
    finally:
        GatedFS.gate.set()


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=120)
async def test_bad_store_url_fails_registration_naming_the_value(c, s, a, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    bad = [
        ("nosuch://bucket/ckpt", r"'nosuch://bucket/ckpt'.*unknown scheme 'nosuch'.*valid schemes"),
        (str(afile / "store"), r"afile/store'.*not usable.*afile' is not a directory"),
        ("", "not valid"),
    ]
    for url, match in bad:
        with pytest.raises(ConfigError, match=match):
            await register(c, policies=[checkpoint_policy(url)], replace=True)
    # a policy started before the failing one gives back what it took
    quarantine = {"class": "dask_oxigdal.fault.quarantine.Quarantine"}
    with pytest.raises(ConfigError, match="nosuch"):
        await register(c, policies=[quarantine, checkpoint_policy("nosuch://x")], replace=True)
    await _until(
        lambda: s.stream_handlers["worker-status-change"] == s.handle_worker_status_change,
        "the failed start's Quarantine to close",
    )
    # the valid schemes are listed, so the user can pick one
    with pytest.raises(ConfigError) as info:
        CheckpointStore("nosuch://x")
    assert "file" in str(info.value) and "memory" in str(info.value)
    # a good store registers and works: the policy is enabled, not silently off
    await register(c, policies=[checkpoint_policy(tmp_path / "ok")], replace=True)
    runs = tmp_path / "runs"
    runs.mkdir()
    tiles, _ = _graph(str(runs), 1)
    assert await c.compute(tiles[0]) == 100
    snap = await status(c)
    assert snap["disabled"] == {} and snap["policies"]["Checkpoint"]["saved"] == 1
