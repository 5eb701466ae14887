"""Topology labels, the transfer-cost model, Locality's use of it, the throttled network."""

from __future__ import annotations

# Import dask_oxigdal (which registers the oxigdal.* config defaults) before
# distributed.utils_test (see tests/test_cache_locality.py).
import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import time
import types

import click
import numpy as np
import pytest
from distributed import Event, get_worker
from distributed.comm import connect, listen
from distributed.utils_test import gen_cluster

import dask_oxigdal as dox
from dask_oxigdal.monitoring.metrics import metric_families
from dask_oxigdal.placement import comm as throttle
from dask_oxigdal.placement.topology import (
    TopologyWorkerPlugin,
    dask_setup,
    kubernetes_labels,
    parse_labels,
    relation,
    resolve_labels,
    worker_labels,
)
from dask_oxigdal.placement.topology_cost import (
    TopologyExtension,
    TransferCostModel,
    topology_status,
)
from dask_oxigdal.scheduling.extension import register

LOCALITY = "dask_oxigdal.scheduling.locality.Locality"


# ------------------------------------------------------------------ label parsing
def test_labels_parse_and_bad_labels_name_the_value_and_valid_keys():
    assert parse_labels("rack=r1, zone=z-1 ,host=node.7") == {
        "rack": "r1",
        "zone": "z-1",
        "host": "node.7",
    }
    assert parse_labels("") == {} and parse_labels(None) == {}
    assert parse_labels({"rack": "r2"}) == {"rack": "r2"}
    with pytest.raises(ValueError, match=r"unknown topology label 'colour'.*host, rack, zone"):
        parse_labels("rack=r1,colour=red", "OXIGDAL_TOPOLOGY")
    with pytest.raises(ValueError, match=r"OXIGDAL_TOPOLOGY: 'rack' in 'rack' is not key=value"):
        parse_labels("rack", "OXIGDAL_TOPOLOGY")
    with pytest.raises(ValueError, match=r"rack='r 1' is not valid"):
        parse_labels("rack=r 1")
    with pytest.raises(ValueError, match=r"'rack' given twice"):
        parse_labels("rack=a,rack=b")
    with pytest.raises(TypeError, match="got int 3"):
        parse_labels(3)
    with pytest.raises(
        ValueError, match=r"TopologyWorkerPlugin\(labels=...\): topology label zone=''"
    ):
        TopologyWorkerPlugin("zone=")
    # the preload's option turns the same error into a click usage error
    with pytest.raises(click.BadParameter, match="unknown topology label 'colour'"):
        dask_setup.callback(None, "colour=red")


def test_label_sources_and_precedence(tmp_path):
    labels_file = tmp_path / "labels"
    labels_file.write_text(
        'app="dask"\n'
        'topology.kubernetes.io/zone="eu-1a"\n'
        'topology.oxigdal.io/rack="rack-7"\n'
        'kubernetes.io/hostname="node-3"\n'
    )
    env = {"OXIGDAL_TOPOLOGY_FILE": str(labels_file)}
    assert kubernetes_labels(environ=env) == {"zone": "eu-1a", "rack": "rack-7", "host": "node-3"}
    assert kubernetes_labels(environ={"NODE_NAME": "n9"}) == {"host": "n9"}
    # file < env var < explicit, per key
    env["OXIGDAL_TOPOLOGY"] = "rack=r1"
    assert resolve_labels(environ=env) == {"zone": "eu-1a", "rack": "r1", "host": "node-3"}
    assert resolve_labels("zone=z9", environ=env)["zone"] == "z9"
    bad = tmp_path / "bad"
    bad.write_text('topology.kubernetes.io/zone="eu 1a"\n')
    with pytest.raises(ValueError, match=r"bad:1 \(topology.kubernetes.io/zone\).*'eu 1a'"):
        kubernetes_labels(environ={"OXIGDAL_TOPOLOGY_FILE": str(bad)})
    with pytest.raises(ValueError, match="OXIGDAL_TOPOLOGY_FILE='/nonexistent/labels'"):
        kubernetes_labels(environ={"OXIGDAL_TOPOLOGY_FILE": "/nonexistent/labels"})
    with pytest.raises(ValueError, match="unknown topology label 'row'"):
        resolve_labels(environ={"OXIGDAL_TOPOLOGY": "row=3"})


def test_relation_classes():
    r1a = {"host": "a", "rack": "r1", "zone": "z1"}
    assert relation(r1a, dict(r1a)) == "same-host"
    assert relation(r1a, {"host": "b", "rack": "r1", "zone": "z1"}) == "same-rack"
    assert relation(r1a, {"host": "b", "rack": "r2", "zone": "z1"}) == "cross-rack"
    assert relation(r1a, {"host": "b", "rack": "r1", "zone": "z2"}) == "cross-zone"
    assert relation({"host": "a"}, {"host": "b"}) == "unknown"


def _labelled(rack, host, **extra):
    return (
        "127.0.0.1",
        1,
        {"plugins": {TopologyWorkerPlugin(f"rack={rack},host={host}")}, **extra},
    )


# ------------------------------------------------------------------ on a cluster
@gen_cluster(
    client=True,
    nthreads=[
        _labelled("r1", "w1"),
        (
            "127.0.0.1",
            1,
            {
                "preload": ["dask_oxigdal.placement.topology"],
                "preload_argv": ["--oxigdal-topology", "rack=r2,zone=z2,host=w2"],
            },
        ),
    ],
    timeout=60,
)
async def test_workers_publish_labels_from_plugin_and_preload(c, s, a, b):
    # both arrive with the registration (Worker.startup_information -> WorkerState.extra)
    assert worker_labels(s.workers[a.address]) == {"rack": "r1", "host": "w1"}
    assert worker_labels(s.workers[b.address]) == {"rack": "r2", "zone": "z2", "host": "w2"}


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_env_labels_through_register_and_the_handler(c, s, a, monkeypatch):
    # a worker without labels: host defaults to its IP
    assert worker_labels(s.workers[a.address]) == {"host": "127.0.0.1"}
    monkeypatch.setenv("OXIGDAL_TOPOLOGY", "zone=z5,rack=r5")
    from dask_oxigdal.placement.topology_cost import register as topo_register

    await topo_register(c)
    assert worker_labels(s.workers[a.address]) == {"zone": "z5", "rack": "r5", "host": "127.0.0.1"}
    ext = s.plugins["oxigdal-topology"]
    # a malformed report is refused with a message, the labels stay
    answer = ext.topology_handler(worker=a.address, labels="rack=r 6")
    assert answer.startswith("error:") and "'r 6'" in answer
    assert worker_labels(s.workers[a.address])["rack"] == "r5"
    assert topology_status(s)["bad_reports"] == 1


class _StubWorker:
    """What the cost model reads of a WorkerState: address, host, topology labels."""

    def __init__(self, addr, rack):
        self.address, self.host = addr, "127.0.0.1"
        self.extra = {"oxigdal_topology": {"rack": rack, "host": addr}}


def _stub_scheduler(**racks):
    """What the cost model reads of a Scheduler; ``racks``: worker address -> rack."""
    workers = {addr: _StubWorker(addr, rack) for addr, rack in racks.items()}
    return types.SimpleNamespace(bandwidth=100e6, bandwidth_workers={}, workers=workers)


def test_cost_model_priors_measurements_and_learned_alpha():
    sched = _stub_scheduler(a="r1", b="r1", c="r2", d="r2")

    m = TransferCostModel(sched)
    assert m.pair_class("a", "b") == "same-rack" and m.pair_class("a", "c") == "cross-rack"
    assert m.bandwidth("a", "c") == (12.5e6, "prior")
    assert m.predict(12.5e6, "a", "c") == pytest.approx(1.004)
    # Dask's measurements, pooled per class (median): one slow pair cannot invert the order
    sched.bandwidth_workers = {
        ("c", "a"): 10e6,
        ("d", "b"): 11e6,
        ("a", "d"): 1e6,
        ("b", "a"): 50e6,
    }
    m._bw_at = -1.0
    assert m.bandwidth("a", "c") == (10e6, "measured")
    assert m.bandwidth("b", "d") == (10e6, "measured")
    assert m.bandwidth("a", "b") == (50e6, "measured")
    # same-rack measured at 1 MB/s (a noisy pair on a busy host): cross-rack is clamped to
    # it, never faster than same-rack
    sched.bandwidth_workers = {("b", "a"): 1e6, ("a", "b"): 1e6, ("c", "a"): 10e6}
    m._bw_at = -1.0
    assert m.bandwidth("a", "c") == (1e6, "measured")
    # a class without measurements keeps its place in the order: its prior, scaled by how
    # the measured classes compare with their priors
    sched.bandwidth_workers = {("c", "a"): 6.25e6}  # cross-rack at half its prior
    m._bw_at = -1.0
    assert m.bandwidth("a", "b") == (125e6 / 2, "prior")
    # observed transfers: 5 ms of overhead + the link's 12.5 MB/s. Dask's figure
    # (bytes / whole duration) counts the overhead in the bandwidth; ours learns the two
    # apart: the overhead from every transfer, the rate from the ones over 1 MB
    sched.bandwidth_workers = {}
    m._bw_at = -1.0
    m.observe("c", "a", 1000, 0.005 + 0.004)  # small: overhead 5 ms beyond the latency prior
    assert m.alpha("cross-rack") == pytest.approx(0.009, rel=0.02)
    for n in (1e6, 2e6, 4e6, 8e6, 2e6):
        m.observe("c", "a", int(n), 0.009 + n / 12.5e6)
    assert m.alpha("cross-rack") == pytest.approx(0.009, rel=0.01)
    assert m.bandwidth("a", "c") == (pytest.approx(12.5e6, rel=0.01), "observed")
    assert m.predict(3e6, "a", "c") == pytest.approx(0.009 + 3e6 / 12.5e6, rel=0.01)
    # the overhead is shared by the classes; only the latency prior differs
    assert m.alpha("same-rack") == pytest.approx(0.005 + 0.002, rel=0.02)
    # one stalled transfer (a busy event loop) does not move the medians
    m.observe("c", "a", 2_000_000, 1.5)
    assert m.predict(3e6, "a", "c") == pytest.approx(0.009 + 3e6 / 12.5e6, rel=0.01)
    snap = m.snapshot()
    assert snap["median_error"] < 0.1
    assert snap["median_error_large"] < 0.1 and snap["large_transfers"] == 6
    assert snap["dask_median_error_large"] > 0.5  # bytes / 100 MB/s: far too fast
    assert snap["transfers_observed"] == 7
    # busy workers answer late: the overhead is also learned per state (how many of the
    # two workers run a task when the transfer starts; the receiver's own waiting task
    # does not count), from the processing counts the transition hook notes
    m.note_processing("a", 0, when=100.0)
    m.note_processing("c", 1, when=100.0)  # c's task waits for the data: c is idle
    m.note_processing("a", 3, when=200.0)
    m.note_processing("c", 2, when=200.0)
    assert m.busy("a", "c", 150.0) == 0 and m.busy("a", "c", 250.0) == 2
    assert m.busy("a", "c", None) is None and m.busy("a", "c", 50.0) == 0
    for _ in range(3):
        m.observe("c", "a", 1000, 0.002 + 0.004, start=150.0)  # idle pair: 2 ms
        m.observe("c", "a", 1000, 0.100 + 0.004, start=250.0)  # busy pair: 100 ms
    assert m.alpha("cross-rack", 0) == pytest.approx(0.006, rel=0.05)
    assert m.alpha("cross-rack", 2) == pytest.approx(0.104, rel=0.05)
    m.reset_errors()  # the scores go, the learned figures stay
    assert m.snapshot()["median_error"] is None and m.alpha("cross-rack") > 0.005
    assert snap["classes"]["cross-rack"]["alpha_source"] == "observed"
    assert snap["classes"]["cross-rack"]["bandwidth_source"] == "observed"
    # same-rack, not observed, follows cross-rack's observed-to-prior ratio (1.0 here)
    assert snap["classes"]["same-rack"]["bandwidth"] == pytest.approx(125e6, rel=0.01)
    with pytest.raises(ValueError, match=r"unknown pair class 'cross-city'.*same-rack"):
        TransferCostModel(sched, {"cross-city": (1e6, 0.0)})


def _model():
    return TransferCostModel(_stub_scheduler(a="r1", b="r1", c="r2"))


def test_transfers_are_scored_with_the_model_as_it_stood_at_their_start():
    m = _model()
    # learned by t=10: 5 ms of overhead beyond the cross-rack latency prior (4 ms)
    for i in range(3):
        m.observe("c", "a", 1000, 0.009, start=9.0 + i * 0.1, now=10.0)
    m.reset_errors(since=15.0)
    # two transfers start together at t=20 and are reported together at t=21: the slow
    # one, reported first, must not teach the model what it "predicted" for the other
    m.observe("c", "a", 1000, 0.204, start=20.0, now=21.0)  # stalled: 200 ms
    m.observe("b", "a", 1000, 0.007, start=20.0, now=21.0)  # same rack: 5 + 2 ms
    ours = [r[5] for r in m.recent]
    assert ours[0] == pytest.approx(0.009, rel=0.01)
    assert ours[1] == pytest.approx(0.007, rel=0.02)  # not the median of 5 and 200 ms
    assert m.snapshot()["median_error"] == pytest.approx((0.204 - 0.009) / 0.204 / 2, rel=0.03)
    assert m.overhead.n == 5  # the model as it is now has learned both
    # rates too: a rate learned after a transfer started does not predict it
    for n in (1e6, 2e6, 4e6):
        m.observe("c", "a", int(n), 0.009 + n / 1e6, start=29.0, now=30.0)  # 1 MB/s
    assert m.bandwidth("a", "c", at=25.0) == (12.5e6, "prior")
    assert m.bandwidth("a", "c")[0] == pytest.approx(1e6, rel=0.05)
    # after a warm-up, a transfer that started before the reset and is reported after
    # it is learned from, not scored
    m.reset_errors(since=40.0)
    learned = m.overhead.n
    m.observe("c", "a", 1000, 0.5, start=39.9, now=40.2)
    assert m.snapshot()["median_error"] is None and m.overhead.n == learned + 1
    m.observe("c", "a", 1000, 0.009, start=40.1, now=40.3)
    assert len(m.errors) == 1


def test_an_idle_pair_not_seen_yet_takes_the_quickest_recent_overhead():
    m = _model()
    m.note_processing("a", 1, when=1.0)
    m.note_processing("c", 2, when=1.0)  # both busy from t=1
    m.note_processing("a", 0, when=50.0)
    m.note_processing("c", 1, when=50.0)  # both idle from t=50
    for i, overhead in enumerate((0.060, 0.080, 0.010, 0.100)):
        m.observe("c", "a", 100, 0.004 + overhead, start=10.0 + i, now=20.0)
    assert m.busy("a", "c", 15.0) == 2 and m.busy("a", "c", 60.0) == 0
    # no idle transfer seen yet: not the busy workers' 70 ms median, the quickest (10 ms)
    assert m.alpha("cross-rack", 0) == pytest.approx(0.004 + 0.010, rel=0.01)
    assert m.alpha("cross-rack", 2) == pytest.approx(0.004 + 0.070, rel=0.01)
    m.reset_errors(since=55.0)
    m.observe("c", "a", 100, 0.004 + 0.012, start=60.0, now=61.0)
    assert m.recent[-1][5] == pytest.approx(0.014, rel=0.01)
    # once the idle state has its own samples, they decide
    assert m.alpha("cross-rack", 0) == pytest.approx(0.004 + 0.012, rel=0.01)


def _two_racks():
    """``gen_cluster``: workers w1, w2 in rack r1 and w3, w4 in r2, with the topology extension."""
    return gen_cluster(
        client=True,
        nthreads=[
            _labelled("r1", "w1"),
            _labelled("r1", "w2"),
            _labelled("r2", "w3"),
            _labelled("r2", "w4"),
        ],
        scheduler_kwargs={"plugins": [TopologyExtension()]},
        timeout=120,
    )


def _block(ev):
    ev.wait()
    return get_worker().address


def _where(dep, key):
    dox.cached(key, lambda: len(dep))
    return get_worker().address


@_two_racks()
async def test_locality_places_a_new_key_by_transfer_cost(c, s, *workers):
    await register(c, policies=[{"class": LOCALITY, "wait": "1h", "prefetch": 0}])
    racks = {w.address: worker_labels(s.workers[w.address])["rack"] for w in workers}
    first = min(racks)  # Dask's tie-break among equally-loaded workers: the smallest address
    # the dependency's holder sits in the other rack than `first`: without the cost, `first`
    # (cross-rack) would get the task; with it, the holder's rack-mate does
    holder = next(a for a in sorted(racks) if racks[a] != racks[first])
    mate = next(a for a in racks if a != holder and racks[a] == racks[holder])
    dep = c.submit(np.ones, 400_000, workers=[holder], pure=False)
    await dep
    ev = Event()
    busy = c.submit(_block, ev, workers=[holder], pure=False)
    while not s.workers[holder].processing:
        await asyncio.sleep(0.01)
    with dox.annotate(locality="tile/cost"):
        addr = await c.submit(_where, dep, "tile/cost", pure=False)
    assert addr == mate
    await ev.set()
    assert await busy == holder
    # the mate's fetch of the dependency reached the model
    deadline = time.monotonic() + 20
    while topology_status(s)["transfers_observed"] < 1:
        assert time.monotonic() < deadline, topology_status(s)
        await asyncio.sleep(0.05)
    snap = topology_status(s)
    assert snap["classes"]["same-rack"]["transfers"] >= 1
    assert snap["median_error"] is not None and snap["dask_median_error"] is not None
    assert snap["workers"][holder]["rack"] == racks[holder]
    # dox.status and /metrics show it
    st = await dox.status(c)
    assert st["topology"]["workers"][mate]["rack"] == racks[holder]
    classes = st["topology"]["classes"]
    # the 3.2 MB same-rack fetch taught the same-rack rate; cross-rack, never observed, is its
    # prior scaled by the same observed-to-prior ratio, so it stays below same-rack
    assert classes["same-rack"]["bandwidth_source"] == "observed", classes
    assert classes["cross-rack"]["bandwidth_source"] == "prior", classes
    assert classes["cross-rack"]["bandwidth"] == pytest.approx(
        classes["same-rack"]["bandwidth"] * 12.5e6 / 125e6
    )
    fams = {f.name: f for f in metric_families(st)}
    assert fams["transfer_bandwidth_bytes"].samples[0][0] == ("cross-rack",)
    assert {s[0] for s in fams["transfer_prediction_median_error"].samples} == {
        ("ours",),
        ("dask",),
    }


def _after(ev, dep):
    return get_worker().address


@_two_racks()
async def test_quota_release_places_held_task_by_transfer_cost(c, s, *workers):
    # tenant "a" may run one task at a time: its second task waits in Quota's hold, and
    # on release it goes to the cheapest worker by transfer cost. Dask's own objective
    # (flat 100 MB/s, then fewest bytes held) would pick a worker of the other rack here.
    await register(c, tenants={"a": {"weight": 1, "max-tasks": 1}, "b": 1})
    racks = {w.address: worker_labels(s.workers[w.address])["rack"] for w in workers}
    holder = sorted(racks)[-1]
    mate = next(a for a in racks if a != holder and racks[a] == racks[holder])
    away = sorted(a for a in racks if racks[a] != racks[holder])
    dep = c.submit(np.ones, 400_000, workers=[holder], pure=False)  # 3.2 MB
    ballast = c.submit(np.ones, 20_000, workers=[mate], pure=False)  # Dask avoids the mate
    await c.wait_for_workers(4)
    await dep, await ballast
    ev, gate = Event(), Event()
    with dox.annotate(tenant="b"):  # the holder's only thread is busy
        busy = c.submit(_block, ev, workers=[holder], pure=False)
    while not s.workers[holder].processing:
        await asyncio.sleep(0.01)
    with dox.annotate(tenant="a"):
        first = c.submit(_block, gate, workers=[away[0]], pure=False)  # a's one slot
        while not s.workers[away[0]].processing:
            await asyncio.sleep(0.01)
        second = c.submit(_after, gate, dep, pure=False)
    ext = s.plugins["oxigdal"]
    while second.key not in ext.info or not ext.info[second.key].holds:
        await asyncio.sleep(0.01)
    assert s.tasks[second.key].state == "no-worker"  # held by Quota
    await gate.set()  # `first` ends, Quota releases `second`
    assert await first == away[0]
    # the holder is busy: its rack-mate fetches the 3.2 MB within the rack
    where = await second
    assert where == mate, (racks, holder, where)
    assert topology_status(s)["placed_held"] >= 1
    await ev.set()
    assert await busy == holder


@_two_racks()
async def test_gang_members_take_their_slots_by_transfer_cost(c, s, *workers):
    # a gang of 4 on 4 one-thread workers: Gang picks the slots (all four here), and
    # each member takes the one that holds its 1.6 MB input, whatever the order
    await register(c)
    addrs = sorted(s.workers)
    deps = [
        c.submit(np.ones, 200_000 + i, workers=[a], pure=False)
        for i, a in enumerate(reversed(addrs))
    ]
    await c.gather(deps)
    with dox.annotate(gang="G"):
        members = c.map(_after, range(4), deps, pure=False, key=[f"G-{i}" for i in range(4)])
    where = await c.gather(members)
    assert where == list(reversed(addrs))
    assert topology_status(s)["placed_held"] >= 4


# ------------------------------------------------------------------ throttled network
async def _send(nbytes_total, chunk, listener_labels, connector_labels):
    throttle.reset_links()
    received = []
    done = asyncio.Event()

    async def handle(comm):
        while True:
            try:
                msg = await comm.read()
            except Exception:
                return
            received.append(len(msg["data"]))
            if msg["last"]:
                done.set()

    lst = listen("throttled://127.0.0.1:0", handle, oxigdal_topology=listener_labels)
    await lst.start()
    assert lst.listen_address.startswith("throttled://127.0.0.1:")
    comm = await connect(lst.contact_address, oxigdal_topology=connector_labels)
    payload = b"x" * chunk
    n = nbytes_total // chunk
    t0 = time.monotonic()
    for i in range(n):
        await comm.write({"data": payload, "last": i == n - 1})
    await asyncio.wait_for(done.wait(), 60)
    elapsed = time.monotonic() - t0
    await comm.close()
    lst.stop()
    [link] = [v for v in throttle.link_stats().values() if v["messages"] >= n]
    return sum(received), elapsed, link


@pytest.mark.parametrize(
    "peer,cls,rate",
    [("rack=r2,host=b", "cross-rack", 100e6 / 8), ("rack=r1,host=b", "same-rack", 1e9 / 8)],
)
def test_throttled_backend_shapes_traffic_within_20_percent(peer, cls, rate):
    # ~0.2 s of shaped transfer at the class's rate
    total = int(rate * 0.2)
    got, elapsed, link = asyncio.run(_send(total, total // 10, "rack=r1,host=a", peer))
    assert got == total // 10 * 10
    assert link["class"] == cls and link["bandwidth"] == rate
    # the throttle's own accounting: every byte written (payload + framing) at the setting
    assert got <= link["bytes"] <= got * 1.01
    assert link["bytes"] / link["transmit_seconds"] == pytest.approx(rate, rel=0.2)
    # the sender waited for the link at least as long as the bytes take at that rate;
    # load can only make the elapsed time longer, never shorter
    assert link["waited_seconds"] >= 0.8 * got / rate
    assert elapsed >= 0.8 * got / rate


def test_unlabelled_ends_are_not_shaped_and_bad_settings_are_named():
    got, _, _ = asyncio.run(_send_unshaped())
    assert got == 1_000_000
    with pytest.raises(ValueError, match=r"'cross-city=1Gbps' is not CLASS=RATE.*cross-rack"):
        throttle.parse_links("cross-city=1Gbps")
    with pytest.raises(ValueError, match=r"rate 'fast' in 'same-rack=fast'"):
        throttle.parse_links("same-rack=fast")
    assert throttle.parse_links("cross-rack=100Mbps@2ms,same-rack=125MB/s") == {
        "cross-rack": (12.5e6, 0.002),
        "same-rack": (125e6, 0.0),
    }


async def _send_unshaped():
    throttle.reset_links()
    out = []

    async def handle(comm):
        out.append(await comm.read())

    lst = listen("throttled://127.0.0.1:0", handle, oxigdal_topology="rack=r1,host=a")
    await lst.start()
    comm = await connect(lst.contact_address)  # this process has no labels: not shaped
    await comm.write({"data": b"x" * 1_000_000})
    while not out:
        await asyncio.sleep(0.01)
    await comm.close()
    lst.stop()
    assert not any(v["messages"] for v in throttle.link_stats().values())
    return len(out[0]["data"]), None, None


@gen_cluster(
    client=True,
    nthreads=[_labelled("r1", "w1"), _labelled("r2", "w2")],
    scheduler_kwargs={"plugins": [TopologyExtension()]},
    timeout=60,
)
async def test_guard_placement_private_attributes(c, s, a, b):
    """The ``distributed`` internals dask_oxigdal.placement relies on (docs/architecture.md)."""
    from distributed.comm import registry
    from distributed.comm.core import Comm
    from distributed.comm.tcp import TCP, BaseTCPBackend, TCPConnector, TCPListener
    from distributed.protocol.serialize import Pickled, Serialize, Serialized, ToPickle

    # worker side: startup_information -> WorkerState.extra; the transfer log's fields
    assert isinstance(a.startup_information, dict)
    assert s.workers[a.address].extra["oxigdal_topology"] == {"rack": "r1", "host": "w1"}
    x = c.submit(np.ones, 200_000, workers=[a.address], pure=False)
    y = c.submit(len, x, workers=[b.address], pure=False)
    assert await y == 200_000
    rec = b.transfer_incoming_log[-1]
    assert rec["who"] == a.address and rec["total"] >= 1_600_000
    assert rec["duration"] > 0 and rec["stop"] >= rec["start"]
    assert "oxigdal-topology" in b.periodic_callbacks and callable(b.batched_send)
    # scheduler side: handlers, stream handlers, bandwidth tables, task placement fields
    assert callable(s.handlers["oxigdal_topology"])
    assert callable(s.stream_handlers["oxigdal_transfers"])
    assert isinstance(s.bandwidth, float) and hasattr(s.bandwidth_workers, "get")
    ts = s.tasks[y.key]
    [dts] = ts.dependencies
    assert a.address in {ws.address for ws in dts.who_has}  # b holds a replica now too
    assert dts.get_nbytes() >= 1_600_000
    assert s.plugins["oxigdal-topology"].model is not None
    # the transition hook saw the tasks enter and leave processing on both workers
    # (TaskState.processing_on on entry, the "worker" keyword on leaving)
    log = s.plugins["oxigdal-topology"].model.busy_log
    assert [n for _, n in log[b.address]][-2:] == [1, 0], log
    assert isinstance(s.workers[b.address].processing, (set, dict))
    # place_released: Dask's objective's inputs, and the loose pin it writes
    ws = s.workers[b.address]
    assert ws in s.running and isinstance(ws.occupancy, float) and ws.nthreads == 1
    assert ts.prefix is not None and hasattr(ts.prefix, "duration_average")
    assert hasattr(ts, "worker_restrictions") and hasattr(ts, "loose_restrictions")
    # comm: the registry, TCP's classes and hooks the throttled backend extends
    assert isinstance(registry.backends, dict) and registry.backends["throttled"]
    assert issubclass(throttle.ThrottledTCP, TCP) and issubclass(TCP, Comm)
    assert TCPConnector.prefix == "tcp://" and TCPListener.comm_class is TCP
    backend = throttle.ThrottledBackend()
    assert isinstance(backend, BaseTCPBackend)
    assert isinstance(backend.get_connector(), throttle.ThrottledConnector)
    assert callable(Comm.handshake_info)
    assert Serialize(1).data == 1 and ToPickle(2).data == 2
    assert Serialized({}, [b"ab"]).frames == [b"ab"] and Pickled({}, [b"c"]).frames == [b"c"]


def test_entry_point_names_the_backend():
    """setup.cfg registers ``throttled`` under ``distributed.comm.backends`` (for any process)."""
    import configparser
    import importlib
    from pathlib import Path

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).parent.parent / "setup.cfg")
    entries = {
        k.strip(): v.strip()
        for k, v in (
            line.split("=", 1)
            for line in cfg["options.entry_points"]["distributed.comm.backends"].split("\n")
            if line.strip()
        )
    }
    module, _, name = entries["throttled"].partition(":")
    assert getattr(importlib.import_module(module), name) is throttle.ThrottledBackend
