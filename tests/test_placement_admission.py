"""Shuffle admission: coflows smallest-bottleneck-first, per-tenant shares, aging."""

from __future__ import annotations

# Import dask_oxigdal (which registers the oxigdal.* config defaults) before
# distributed.utils_test (see tests/test_cache_locality.py).
import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import time

import dask
import pandas as pd
import pytest
from distributed.utils_test import gen_cluster

import dask_oxigdal as dox
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.placement.admission import Coflow, ShuffleAdmission, choose, coflow_id
from dask_oxigdal.scheduling.extension import NAME, register

ADMISSION = "dask_oxigdal.placement.admission.ShuffleAdmission"


def _cf(cid, tenant, bottleneck, ready_at, seq):
    c = Coflow(cid, tenant, seq, 0.0)
    c.state, c.ready_at, c.bottleneck, c.bytes = "ready", ready_at, bottleneck, bottleneck
    return c


def test_choose_smallest_bottleneck_first_within_tenant_shares_and_aging():
    big = _cf("big", "a", 10_000_000, 0.0, 1)
    small = _cf("small", "b", 10_000, 1.0, 2)
    # one slot: the smallest bottleneck goes first, whoever was ready first
    assert choose([big, small], [], 1, {}, now=2.0, aging=30) == [small]
    # ... until the larger one has waited `aging`: then it goes first (no starvation)
    assert choose([big, small], [], 1, {}, now=31.0, aging=30) == [big]
    # two slots, two tenants: each tenant may hold one, so a tenant's many small shuffles
    # cannot take the slot of the other tenant's big one
    small2 = _cf("small2", "b", 20_000, 1.0, 3)
    assert choose([big, small, small2], [], 2, {}, now=2.0, aging=30) == [small, big]
    # a tenant alone may use every slot
    assert choose([small, small2], [], 2, {}, now=2.0, aging=30) == [small, small2]
    # weights set the share: b (weight 3) holds 3 of 4 slots while a waits
    many_b = [_cf(f"b{i}", "b", 1000 + i, 1.0, 10 + i) for i in range(4)]
    chosen = choose([big, *many_b], [], 4, {"a": 1, "b": 3}, now=2.0, aging=30)
    assert [c.id for c in chosen] == ["b0", "b1", "b2", "big"]
    # no free slot: nothing
    assert choose([small], [big], 1, {}, now=2.0, aging=30) == []


def test_coflow_ids_and_bad_settings():
    assert coflow_id("oxigdal-shuffle-concat-0a1b-3") == "oxigdal-shuffle-concat-0a1b"
    assert (
        coflow_id("oxigdal-spatial-hilbert-concat-ff00-12") == "oxigdal-spatial-hilbert-concat-ff00"
    )
    assert coflow_id(("shuffle-transfer-deadbeef", 4)) == "shuffle-transfer-deadbeef"
    assert coflow_id("oxigdal-shuffle-split-0a1b-3") is None
    assert coflow_id(("getitem-abc", 1)) is None
    with pytest.raises(ValueError, match=r"slots=0 must be an integer >= 1"):
        ShuffleAdmission(slots=0)
    with pytest.raises(ValueError, match=r"aging='soon' is not a duration"):
        ShuffleAdmission(aging="soon")
    with pytest.raises(ValueError, match=r"round=-1 is not a duration >= 0"):
        ShuffleAdmission(round=-1)


def test_settings_from_dask_config():
    # the shipped defaults
    adm = ShuffleAdmission()
    assert (adm.slots, adm.aging, adm.round) == (2, 30.0, 0.05)
    with dask.config.set(
        {
            "oxigdal.shuffle-admission.slots": 3,
            "oxigdal.shuffle-admission.aging": "2m",
            "oxigdal.shuffle-admission.round": 0.25,
        }
    ):
        adm = ShuffleAdmission()
        assert (adm.slots, adm.aging, adm.round) == (3, 120.0, 0.25)
        assert ShuffleAdmission(slots=1).slots == 1  # an explicit value wins
    for key, bad, match in (
        ("slots", "two", r"oxigdal.shuffle-admission.slots='two' must be an integer >= 1"),
        ("slots", True, r"oxigdal.shuffle-admission.slots=True must be an integer >= 1"),
        ("aging", "-3s", r"oxigdal.shuffle-admission.aging='-3s' is not a duration >= 0"),
        ("round", [1], r"oxigdal.shuffle-admission.round=\[1\] is not a duration >= 0"),
    ):
        with dask.config.set({f"oxigdal.shuffle-admission.{key}": bad}):
            with pytest.raises(ConfigError, match=match):
                ShuffleAdmission()


def _frame(rows, seed):
    return pd.DataFrame({"k": [(i * 7919 + seed) % 97 for i in range(rows)], "v": range(rows)})


async def _until(pred, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=120)
async def test_two_tenants_shuffles_are_admitted_smallest_first_and_both_finish(c, s, a, b):
    import dask.dataframe as dd

    # admission rounds only when this test runs one (the round timer is an hour)
    await register(
        c,
        tenants={"a": 1, "b": 1},
        policies=[{"class": ADMISSION, "slots": 1, "round": "1h", "aging": "1h"}],
    )
    policy = s.plugins[NAME].policies[0]
    big_df, small_df = _frame(40_000, 1), _frame(400, 2)
    big = dox.shuffle(dd.from_pandas(big_df, npartitions=4), "k", npartitions=4)
    small = dox.shuffle(dd.from_pandas(small_df, npartitions=4), "k", npartitions=4)
    with dox.annotate(tenant="a"):
        f_big = c.compute(big)  # the big one is submitted first
    with dox.annotate(tenant="b"):
        f_small = c.compute(small)
    await _until(
        lambda: sorted(cf.state for cf in policy.coflows.values()) == ["ready", "ready"],
        lambda: policy.snapshot(),
    )
    assert policy.admit() == 1  # one slot: the small one
    [first] = policy.log
    assert first["tenant"] == "b" and 0 < first["bottleneck"]
    out_small = await f_small
    assert len(out_small) == len(small_df)
    # the big one still waits: none of its pieces moved
    [cf] = policy.coflows.values()
    assert cf.tenant == "a" and cf.state == "ready" and cf.bottleneck > first["bottleneck"]
    assert not f_big.done()
    assert policy.admit() == 1  # the slot is free again: the big one goes
    out_big = await f_big
    assert len(out_big) == len(big_df)
    assert sorted(out_big["v"]) == list(range(len(big_df)))
    assert [r["tenant"] for r in policy.log] == ["b", "a"]
    assert policy.snapshot()["completed"] == 2 and not policy.coflows


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=120)
async def test_a_stream_of_smaller_shuffles_does_not_starve_a_large_one(c, s, a, b):
    import dask.dataframe as dd

    await register(
        c,
        tenants={"a": 1, "b": 1},
        policies=[{"class": ADMISSION, "slots": 1, "round": "1h", "aging": "500ms"}],
    )
    policy = s.plugins[NAME].policies[0]

    def ready(tenant):
        return [cf for cf in policy.coflows.values() if cf.tenant == tenant and cf.state == "ready"]

    big = dox.shuffle(dd.from_pandas(_frame(20_000, 1), npartitions=4), "k")
    with dox.annotate(tenant="a"):
        f_big = c.compute(big)
    await _until(lambda: ready("a"), lambda: policy.snapshot())
    [big_cf] = ready("a")
    # tenant b keeps a smaller shuffle ready at every round
    for i in range(50):
        small = dox.shuffle(dd.from_pandas(_frame(200, i), npartitions=2), "k")
        with dox.annotate(tenant="b"):
            f_small = c.compute(small)
        await _until(lambda: ready("b"), lambda: policy.snapshot())
        assert policy.admit() == 1
        if policy.log[-1]["tenant"] == "a":
            break
        # smallest bottleneck first while the big one is young
        assert policy.log[-1]["bottleneck"] < big_cf.bottleneck
        await f_small
    else:
        raise AssertionError(f"the large shuffle starved: {policy.snapshot()}")
    # it went once it had waited `aging`, ahead of a smaller ready one
    assert policy.log[-1]["waited"] >= 0.5 and ready("b")
    assert len(await f_big) == 20_000
    assert policy.admit() == 1
    await f_small


def _wait_for(ev):
    ev.wait()


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, timeout=120)
async def test_a_ready_large_shuffle_waits_for_a_smaller_pending_one(c, s, a, b):
    import dask.dataframe as dd
    from distributed import Event

    await register(
        c,
        tenants={"a": 1, "b": 1},
        policies=[{"class": ADMISSION, "slots": 1, "round": "1h", "aging": "1h"}],
    )
    policy = s.plugins[NAME].policies[0]
    big = dox.shuffle(dd.from_pandas(_frame(20_000, 1), npartitions=4), "k")
    with dox.annotate(tenant="a"):
        f_big = c.compute(big)
    await _until(lambda: [cf.state for cf in policy.coflows.values()] == ["ready"], "big ready")
    parts = c.persist(dd.from_pandas(_frame(400, 2), npartitions=2))
    await parts
    # both threads busy: the small shuffle's inputs are in memory, its splits cannot run yet
    ev = Event()
    blockers = [c.submit(_wait_for, ev, workers=[w.address], pure=False) for w in (a, b)]
    await _until(lambda: all(s.workers[w.address].processing for w in (a, b)), "blocked")
    small = dox.shuffle(parts, "k")
    with dox.annotate(tenant="b"):
        f_small = c.compute(small)
    await _until(lambda: len(policy.coflows) == 2, "small submitted")
    assert policy.admit() == 0  # the big one waits for the smaller pending one
    assert policy.deferrals == 1
    await ev.set()
    await c.gather(blockers)
    await _until(
        lambda: sorted(cf.state for cf in policy.coflows.values()) == ["ready", "ready"],
        lambda: policy.snapshot(),
    )
    assert policy.admit() == 1 and policy.log[-1]["tenant"] == "b"
    await f_small
    assert policy.admit() == 1 and policy.log[-1]["tenant"] == "a"
    assert len(await f_big) == 20_000
