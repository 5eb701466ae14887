"""Replicas (``dox.annotate(replicas=N)``): Dask's AMM keeps N copies on distinct workers."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest
from distributed import Nanny, wait
from distributed.active_memory_manager import ReduceReplicas as DaskReduceReplicas
from distributed.utils_test import gen_cluster

import dask_oxigdal  # noqa: F401
from dask_oxigdal.annotations import MAX_REPLICAS, annotate, parse_annotations
from dask_oxigdal.placement.replicas import Replicas
from dask_oxigdal.placement.replicas_amm import (
    TOPOLOGY_KEY,
    MinReplicas,
    ReduceReplicas,
    spread_candidates,
    worker_labels,
)
from dask_oxigdal.scheduling.extension import register, status

AMM = {"distributed.scheduler.active-memory-manager.interval": "200ms"}
#: Only the policy under test: on a loaded CI box a fresh worker process can take
#: seconds to import the first task's module, which Quarantine may read as a hang.
ONLY = [{"class": "dask_oxigdal.placement.replicas.Replicas"}]


def tile(i):
    return np.full(20_000, i, dtype="u1")


async def _until(predicate, timeout=30.0, what="a condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _copies(s, keys):
    return {k: len(s.tasks[k].who_has or ()) for k in keys}


def _runs(s, key):
    """How many times ``key`` was sent to a worker (its scheduler story)."""
    return sum(1 for t in s.story(key) if t[0] == key and t[2] == "processing")


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("bad", [0, -1, MAX_REPLICAS + 1, 1.5, True, "2", None])
def test_bad_replicas_values_name_the_value_and_the_range(bad):
    if bad is None:
        annotate(replicas=None)  # means "not given"
        return
    with pytest.raises(ValueError) as info:
        annotate(replicas=bad)
    msg = str(info.value)
    assert f"replicas={bad!r}" in msg and f"from 1 to {MAX_REPLICAS}" in msg
    with pytest.raises(ValueError, match=rf"oxigdal_replicas=.*from 1 to {MAX_REPLICAS}"):
        parse_annotations({"oxigdal_replicas": bad})


def test_good_replicas_values_round_trip():
    assert parse_annotations({"oxigdal_replicas": 2}).replicas == 2
    assert parse_annotations({"oxigdal_replicas": MAX_REPLICAS}).replicas == MAX_REPLICAS


def test_bad_settings_are_config_errors():
    with pytest.raises(ValueError, match=r"oxigdal\.replicas\.amm='always'.*auto"):
        Replicas(amm="always")
    with pytest.raises(ValueError, match="max-keys=0"):
        Replicas(max_keys=0)


class _W:
    """A stand-in WorkerState for the pure spreading rule (labels and host only)."""

    def __init__(self, name, host="h", **labels):
        self.address = name
        self.host = host
        self.extra = {TOPOLOGY_KEY: labels} if labels else {}

    def __repr__(self):
        return self.address


def test_spread_prefers_another_zone_then_rack_then_host():
    a = _W("a", zone="z1", rack="r1", host="h1")
    b = _W("b", zone="z1", rack="r2", host="h2")
    c = _W("c", zone="z2", rack="r3", host="h3")
    d = _W("d", zone="z1", rack="r1", host="h4")
    assert worker_labels(a) == {"zone": "z1", "rack": "r1", "host": "h1"}
    assert spread_candidates({a}, [a, b, c, d]) == {c}  # another zone
    assert spread_candidates({a, c}, [a, b, c, d]) == {b}  # both zones used: another rack
    # unlabelled workers: another host, else any worker without a copy
    x, y, z = _W("x", host="1"), _W("y", host="1"), _W("z", host="2")
    assert worker_labels(x) == {"host": "1"}
    assert spread_candidates({x}, [x, y, z]) == {z}
    assert spread_candidates({x, z}, [x, y, z]) == {y}
    assert spread_candidates({x, y, z}, [x, y, z]) is None


# ----------------------------------------------------------- on a real cluster
@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 3, config=AMM)
async def test_reduce_replicas_keeps_annotated_counts_and_reduces_the_rest(c, s, *workers):
    await register(c)
    amm = s.extensions["amm"]
    plain = c.map(tile, range(3), key=[f"plain-{i}" for i in range(3)])
    with annotate(replicas=2):
        kept = c.map(tile, range(3), key=[f"kept-{i}" for i in range(3)])
    await wait(plain + kept)
    # installed on the first annotated task: ours replaces Dask's ReduceReplicas
    assert any(isinstance(p, MinReplicas) for p in amm.policies)
    assert any(isinstance(p, ReduceReplicas) for p in amm.policies)
    assert not any(type(p) is DaskReduceReplicas for p in amm.policies)
    keys = [f.key for f in kept]
    await _until(lambda: set(_copies(s, keys).values()) == {2}, what="2 copies")
    # three copies of everything: Dask's rule would keep 1 of each, ours 2 of the annotated
    await c.replicate(plain + kept, n=3)
    assert set(_copies(s, keys).values()) == {3}
    plain_keys = [f.key for f in plain]
    await _until(
        lambda: (
            set(_copies(s, keys).values()) == {2} and set(_copies(s, plain_keys).values()) == {1}
        ),
        what="annotated keys back to 2 copies, plain keys to 1",
    )
    for _ in range(3):  # further cycles neither add nor drop
        amm.run_once()
        await asyncio.sleep(0.05)
    assert set(_copies(s, keys).values()) == {2}
    assert set(_copies(s, plain_keys).values()) == {1}
    st = (await status(c))["policies"]["Replicas"]
    assert st["installed"] and st["keys"] == 3 and st["under_replicated"] == 0
    assert st["tenants"]["default"]["replica_bytes"] == 3 * 20_000
    # forgotten keys are forgotten by the policy too (bounded state)
    del kept
    await _until(lambda: not s.plugins["oxigdal"].get_policy("Replicas").keys, what="forget")


@gen_cluster(
    client=True,
    nthreads=[
        ("127.0.0.1", 1, {"startup_information": {TOPOLOGY_KEY: lambda w: {"rack": "r1"}}}),
        ("127.0.0.1", 1, {"startup_information": {TOPOLOGY_KEY: lambda w: {"rack": "r1"}}}),
        ("127.0.0.1", 1, {"startup_information": {TOPOLOGY_KEY: lambda w: {"rack": "r2"}}}),
    ],
    config=AMM,
)
async def test_copies_go_to_distinct_racks(c, s, a, b, d):
    await register(c)
    assert worker_labels(s.workers[d.address]) == {"rack": "r2", "host": "127.0.0.1"}
    with annotate(replicas=2):
        futs = c.map(tile, range(6), key=[f"r-{i}" for i in range(6)])
    await wait(futs)
    keys = [f.key for f in futs]
    await _until(lambda: set(_copies(s, keys).values()) == {2}, what="2 copies")
    for k in keys:
        racks = {s.workers[ws.address].extra[TOPOLOGY_KEY]["rack"] for ws in s.tasks[k].who_has}
        assert racks == {"r1", "r2"}, k


# an AMM cycle of 1 s: "restored within 2 cycles" leaves a loaded CI box 2 s for 20 KB copies
@gen_cluster(
    client=True,
    Worker=Nanny,
    nthreads=[("127.0.0.1", 1)] * 3,
    config={"distributed.scheduler.active-memory-manager.interval": "1s"},
    timeout=90,
)
async def test_replicas_restored_after_a_sigkilled_worker_without_recompute(c, s, *nannies):
    await register(c, policies=ONLY, tenants={"team-a": 1})
    with annotate(replicas=2, tenant="team-a"):
        # np.full, not a function of this module: a fresh worker process need not
        # import the test module (seconds on a loaded box) to run it
        futs = c.map(np.full, [20_000] * 8, range(8), dtype="u1", key=[f"t-{i}" for i in range(8)])
    await wait(futs)
    keys = [f.key for f in futs]
    await _until(lambda: set(_copies(s, keys).values()) == {2}, what="2 copies")
    assert {k: _runs(s, k) for k in keys} == dict.fromkeys(keys, 1)
    # SIGKILL the worker holding the most copies (its nanny starts a fresh one)
    victim = max(s.workers.values(), key=lambda ws: len(ws.has_what)).address
    lost = {k for k in keys if victim in {ws.address for ws in s.tasks[k].who_has}}
    assert lost
    pid = (await c.run(os.getpid, workers=[victim]))[victim]
    os.kill(pid, signal.SIGKILL)
    await _until(lambda: victim not in s.workers, what="the scheduler to see the loss")
    policy = s.plugins["oxigdal"].get_policy("Replicas")
    await _until(
        lambda: (
            policy.restore_cycles is not None
            and all(len({ws.address for ws in s.tasks[k].who_has} - {victim}) >= 2 for k in keys)
        ),
        what="2 copies again",
    )
    # nothing was recomputed: every key stayed in memory on its other copy
    assert {k: _runs(s, k) for k in keys} == dict.fromkeys(keys, 1)
    assert all(s.tasks[k].state == "memory" for k in keys)
    assert policy.restore_cycles <= 2
    st = (await status(c))["policies"]["Replicas"]
    assert st["worker_losses"] == 1 and st["restore_cycles"] <= 2
    assert st["tenants"]["team-a"]["keys"] == 8
    assert st["tenants"]["team-a"]["replica_bytes"] >= 8 * 20_000
    assert await c.gather(futs[0]) is not None


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, config=AMM)
async def test_without_annotations_the_amm_is_untouched(c, s, a, b):
    await register(c)
    amm = s.extensions["amm"]
    before = {type(p) for p in amm.policies}
    await wait(c.map(tile, range(4)))
    with annotate(replicas=1):  # one copy is what Dask keeps anyway
        await wait(c.map(tile, range(4, 6)))
    assert {type(p) for p in amm.policies} == before
    assert (await status(c))["policies"]["Replicas"]["installed"] is False


@gen_cluster(
    client=True,
    nthreads=[
        ("127.0.0.1", 1, {"startup_information": {TOPOLOGY_KEY: lambda w: {"rack": "r9"}}}),
        ("127.0.0.1", 1),
    ],
    config=AMM,
)
async def test_guard_replicas_private_attributes(c, s, a, b):
    """What placement/replicas*.py relies on in distributed (docs/architecture.md)."""
    import inspect

    from distributed.active_memory_manager import (
        ActiveMemoryManagerExtension,
        ActiveMemoryManagerPolicy,
        Suggestion,
    )

    amm = s.extensions["amm"]
    assert isinstance(amm, ActiveMemoryManagerExtension)
    assert isinstance(amm.policies, set) and amm.running and amm.interval == 0.2
    for name in ("add_policy", "start", "stop", "run_once"):
        assert callable(getattr(amm, name))
    params = inspect.signature(ActiveMemoryManagerExtension).parameters
    assert {"policies", "register", "start"} <= set(params)
    assert Suggestion("replicate", None, None).op == "replicate"
    assert issubclass(MinReplicas, ActiveMemoryManagerPolicy)
    # startup_information reaches WorkerState.extra; WorkerState.host
    assert s.workers[a.address].extra[TOPOLOGY_KEY] == {"rack": "r9"}
    assert s.workers[b.address].host == "127.0.0.1"
    x = c.submit(tile, 1, key="guard-x")
    await wait(x)
    ts = s.tasks["guard-x"]
    assert isinstance(ts.who_has, set) and ts.nbytes > 0 and ts.state == "memory"
    assert hasattr(ts, "waiters") and hasattr(ts, "processing_on")
    await c.replicate([x], n=2)
    assert ts in s.replicated_tasks  # keys with 2+ copies
    # pending is visible to policies during a cycle, as {ts: (to_replicate, to_drop)}
    seen = []

    class Probe(ActiveMemoryManagerPolicy):
        def run(self):
            seen.append(type(self.manager.pending).__name__)
            yield from ()

    once = ActiveMemoryManagerExtension(s, {Probe()}, register=False, start=False)
    once.run_once()
    assert seen == ["dict"] and not once.running
