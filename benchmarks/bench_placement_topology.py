"""Topology-aware placement and shuffle admission on an emulated two-rack network.

    python benchmarks/bench_placement_topology.py            # full run
    python benchmarks/bench_placement_topology.py --quick    # smoke test, < 2 min
    python benchmarks/bench_placement_topology.py --json out.json
    python benchmarks/bench_placement_topology.py --cross-ingest 0.1
    python benchmarks/bench_placement_topology.py --quick --record rec.json
    python benchmarks/bench_placement_topology.py --replay rec.json   # offline, seconds
    python benchmarks/bench_placement_topology.py --quick --small-warmup  # cold start

The network: a scheduler and 4 one-thread worker processes on 127.0.0.1,
connected by the ``throttled://`` comm backend
(:mod:`dask_oxigdal.placement.comm`): workers w0, w1 in rack r1, w2, w3 in
rack r2; 1 Gb/s within a rack, 100 Mb/s across (the defaults).

The workload: two tenants run a spatial join at the same time: points are
shuffled by their x strip (the join key) and each output partition is joined
with a table of strip cells. Tenant "big" moves ~10x the bytes of tenant
"small"; "big" is submitted first. Two data layouts run, each with its own
clusters, vanilla and ours on the same (seeded) data:

- **mixed** (``--cross-ingest F``, default 0.2): each strip's points were
  ingested mostly (1 - F) by its home rack and F by the other rack, as a
  region's data mostly lives near where it was collected;
- **rack-aligned** (F = 0): every strip's points were ingested in its own
  rack. With ``--quick`` it runs 1 measured round instead of 2.

Each layout prints its floor (the fewest cross-rack bytes any placement of
whole output partitions moves in that data) beside ours and vanilla.

- **vanilla**: Dask's own ``DataFrame.shuffle(on=..., method="tasks")``,
  no plugin: Dask places each output task on a holder of its inputs by
  occupancy and bytes, assuming 100 MB/s between any two workers.
- **ours**: ``dox.shuffle`` (the same output partitions) with
  ``ShuffleAdmission`` (one coflow at a time, smallest bottleneck first) and the
  topology extension (labels from ``OXIGDAL_TOPOLOGY``; each output task is
  pinned to the cheapest worker by predicted transfer cost).

Figures: cross-rack bytes (the throttle's accounting in each worker process),
mean shuffle completion time of the two tenants, and the median relative
error of the predicted transfer time of each worker-to-worker transfer (ours
and Dask's ``bytes / Scheduler.bandwidth`` side by side; all transfers, those
over 1 MB, and by size). Two warm-up rounds run first: a small one (200 rows per worker, to warm up
the code paths), then one of the measured rounds' size and shape on other data
(other seeds, so nothing is cached), as the cost model of a long-lived shared
cluster has seen such traffic before. Bytes and errors are counted over the
measured rounds after them (the model keeps what it learned). The errors of the
full-size warm-up round itself, which the model meets having seen only the
small round, are printed as the *cold-start* figure. ``--small-warmup`` skips
the full-size warm-up (the benchmark before issue 18's fourth session: the
measured rounds are then scored from the cold start).

``--record PATH`` also writes what the cost model saw in the "ours" runs
(every report with its arrival time, the busy log, heartbeat metrics, the
workers' transfer logs, every shaped write and every task's computation);
``--replay PATH`` feeds such a file through the current model in seconds, to
try a change of the model on the same transfers.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import itertools
import json
import os
import statistics
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dask
import dask.dataframe as dd
import distributed
from distributed import Client, Nanny, Scheduler, SpecCluster

import dask_oxigdal as dox
from dask_oxigdal.placement import comm as throttle  # noqa: F401  (registers throttled://)
from dask_oxigdal.placement.topology_cost import register as register_topology
from dask_oxigdal.placement.topology_cost import topology_status

RACKS = {"w0": "r1", "w1": "r1", "w2": "r2", "w3": "r2"}
NSTRIPS = 8
ROUND_TIMEOUT = 300  # seconds: a round that takes longer fails with the scheduler's state


def _cluster() -> SpecCluster:
    workers = {
        name: {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "host": "127.0.0.1",
                "protocol": "throttled://",
                "env": {"OXIGDAL_TOPOLOGY": f"rack={rack},host={name}"},
                "preload": ["dask_oxigdal.placement.comm"],
                "memory_limit": "1GiB",
            },
        }
        for name, rack in RACKS.items()
    }
    scheduler = {
        "cls": Scheduler,
        "options": {"protocol": "throttled://", "host": "127.0.0.1", "dashboard_address": ":0"},
    }
    return SpecCluster(workers=workers, scheduler=scheduler, asynchronous=True)


def _points(strips: list[int], rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    strip = rng.choice(np.asarray(strips), rows)
    x = strip + rng.random(rows)
    return pd.DataFrame(
        {
            "strip": strip.astype("int64"),
            "x": x,
            "y": rng.random(rows),
            "payload": rng.random(rows),
            "payload2": rng.random(rows),
        }
    )


def _join(part: pd.DataFrame) -> int:
    cells = pd.DataFrame({"strip": np.arange(NSTRIPS), "cell_id": np.arange(NSTRIPS) * 10})
    return len(part.merge(cells, on="strip"))


def cross_ingest(value: str) -> float:
    """The ``--cross-ingest`` option: a share F with 0 <= F < 0.5."""
    try:
        f = float(value)
    except ValueError:
        f = float("nan")
    if not 0.0 <= f < 0.5:  # also rejects nan
        raise argparse.ArgumentTypeError(
            f"{value!r} is not valid: must be a number F with 0 <= F < 0.5 (the share of "
            "each strip's points ingested in the other rack; 0 = rack-aligned, default 0.2)"
        )
    return f


def _inputs(client: Client, addrs: dict[str, str], rows: int, seed: int, cross: float = 0.2):
    """Input partitions on the workers: each rack holds ``1 - cross`` of its half's strips,
    ``cross`` of the other's (``rows`` per worker; no partition for a share of 0)."""
    half = {"r1": list(range(NSTRIPS // 2)), "r2": list(range(NSTRIPS // 2, NSTRIPS))}
    futures = []
    i = 0
    for name, rack in RACKS.items():
        other = "r2" if rack == "r1" else "r1"
        for strips, n in ((half[rack], int(rows * (1 - cross))), (half[other], int(rows * cross))):
            if n:
                futures.append(
                    client.submit(_points, strips, n, seed + i, workers=[addrs[name]], pure=False)
                )
            i += 1
    return futures


def _piece_bytes(part: pd.DataFrame) -> dict[int, int]:
    """Bytes of each output partition's piece of one input partition (the shuffle's split)."""
    from dask_oxigdal.tables import hash_partition

    return {
        int(pid): int(piece.memory_usage(index=True).sum())
        for pid, piece in hash_partition(part, "strip", NSTRIPS).items()
    }


async def _layout(client: Client, parts, addrs: dict[str, str]) -> dict[str, float]:
    """What any placement of whole output partitions must move across racks, in this data.

    ``floor``: the least cross-rack bytes over every assignment of the output
    partitions to racks (at most one partition per worker slot: 2 per worker);
    ``blind``: the expected cross-rack bytes of a rack-blind placement (each
    partition on a worker drawn uniformly), as Dask's own placement is.
    """
    rack_of = {addrs[name]: rack for name, rack in RACKS.items()}
    who = await client.who_has(parts)
    pieces = await client.gather(client.map(_piece_bytes, parts, pure=False))
    held: dict[int, dict[str, int]] = {}  # partition -> rack -> bytes held there
    for fut, sizes in zip(parts, pieces, strict=True):
        rack = rack_of[who[fut.key][0]]
        for pid, n in sizes.items():
            held.setdefault(pid, {}).setdefault(rack, 0)
            held[pid][rack] += n
    racks = sorted(set(RACKS.values()))
    slots = {r: 2 * sum(1 for x in RACKS.values() if x == r) for r in racks}
    pids = sorted(held)

    def moved(pid: int, rack: str) -> int:
        return sum(n for r, n in held[pid].items() if r != rack)

    best = None
    for choice in itertools.product(racks, repeat=len(pids)):
        if any(choice.count(r) > slots[r] for r in racks):
            continue
        total = sum(moved(pid, r) for pid, r in zip(pids, choice, strict=True))
        best = total if best is None else min(best, total)
    workers_per_rack = {r: sum(1 for x in RACKS.values() if x == r) for r in racks}
    blind = sum(moved(pid, r) * workers_per_rack[r] / len(RACKS) for pid in pids for r in racks)
    return {"floor": float(best or 0), "blind": float(blind)}


async def _cross_rack_bytes(client: Client) -> dict[str, int]:
    def collect():
        from dask_oxigdal.placement import comm

        out: dict[str, int] = {}
        for link in comm.link_stats().values():
            out[link["class"]] = out.get(link["class"], 0) + link["bytes"]
        return out

    per_worker = await client.run(collect)
    total: dict[str, int] = {}
    for d in per_worker.values():
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


async def run(
    mode: str,
    rows_big: int,
    rows_small: int,
    repeats: int,
    cross: float,
    record=None,
    full_warmup: bool = True,
) -> dict:
    """One cluster, ``repeats`` rounds of the two tenants' joins in the layout whose
    other-rack ingest share is ``cross``; figures of the run. ``record``: a list that
    receives the model's inputs (see :func:`_recorder`). ``full_warmup``: after the
    small warm-up round, run one round of the measured rounds' size and shape (its
    prediction errors are reported as the cold-start figure, ``cold``)."""
    async with _cluster() as cluster, Client(cluster, asynchronous=True) as client:
        await client.wait_for_workers(len(RACKS))
        info = (await client.scheduler.identity())["workers"]
        addrs = {str(w["name"]): a for a, w in info.items()}
        assert set(addrs) == set(RACKS), addrs
        if mode == "ours":
            await dox.register(
                client,
                tenants={"big": 1, "small": 1},
                policies=[
                    {"class": "dask_oxigdal.scheduling.fairshare.FairShare"},
                    {
                        "class": "dask_oxigdal.placement.admission.ShuffleAdmission",
                        "slots": 1,
                        "round": "250ms",
                    },
                ],
            )
            await register_topology(client)
            if record is not None:
                rec = _recorder(cluster.scheduler)
                await client.run(_record_writes)
        completions: dict[str, list[float]] = {"big": [], "small": []}
        layout = {"floor": 0.0, "blind": 0.0}
        warm = _inputs(client, addrs, 200, 10_000, cross)  # warm up both code paths and the model
        await distributed.wait(warm)
        await _one_round(client, mode, warm, warm, {"big": [], "small": []})
        cold = None
        if full_warmup:
            # a round of the same size and shape as a measured one, on other data (other
            # seeds: nothing cached), as a long-lived cluster's model has seen such traffic
            # before; its own errors are the cold-start figure (the model has seen only the
            # small round above, as the measured rounds had with --small-warmup)
            if mode == "ours":
                await client.run_on_scheduler(_reset_errors)
                if record is not None:
                    rec["cold_from"] = len(rec["transfers"])
                    rec["cold_reset_at"] = time.time()
            big_w = _inputs(client, addrs, rows_big, 20_000, cross)
            small_w = _inputs(client, addrs, rows_small, 20_050, cross)
            await distributed.wait(big_w + small_w)
            await _one_round(client, mode, big_w, small_w, {"big": [], "small": []})
            del big_w, small_w
            if mode == "ours":
                await asyncio.sleep(1.5)  # the round's last reports (sent every 0.5 s)
                cold = await client.run_on_scheduler(_scheduler_snapshot)
        await client.run(_reset_links)
        if mode == "ours":  # errors are scored over the measured rounds, as bytes are
            await client.run_on_scheduler(_reset_errors)
            if record is not None:
                rec["scored_from"] = len(rec["transfers"])
                rec["reset_at"] = time.time()
        for r in range(repeats):
            big_in = _inputs(client, addrs, rows_big, 100 * r, cross)
            small_in = _inputs(client, addrs, rows_small, 100 * r + 50, cross)
            await distributed.wait(big_in + small_in)
            if mode == "ours":  # the same data in both modes (seeded): measure it once
                for k, v in (await _layout(client, big_in + small_in, addrs)).items():
                    layout[k] += v
            await _one_round(client, mode, big_in, small_in, completions)
            del big_in, small_in
        links = await _cross_rack_bytes(client)
        out = {
            "mode": mode,
            "completion_big": statistics.mean(completions["big"]),
            "completion_small": statistics.mean(completions["small"]),
            "mean_completion": statistics.mean(completions["big"] + completions["small"]),
            "bytes_by_class": links,
            "cross_rack_bytes": links.get("cross-rack", 0),
        }
        if mode == "ours":
            snap = await client.run_on_scheduler(_scheduler_snapshot)
            out.update(snap)
            out["layout"] = layout
            out["cold"] = cold
            if record is not None:
                rec["sampler"].cancel()
                del rec["sampler"]
                rec["busy_log"] = {
                    a: list(v) for a, v in _model(cluster.scheduler).busy_log.items()
                }
                rec["labels"] = {
                    a: dict(ws.extra.get("oxigdal_topology") or {})
                    for a, ws in cluster.scheduler.workers.items()
                }
                rec["worker_logs"] = await client.run(_incoming_log)
                rec["writes"] = await client.run(_recorded_writes)
                rec["compute"] = [  # (worker, start, stop) of every task's computation
                    [m["worker"], ss["start"], ss["stop"]]
                    for m in rec.pop("_stream").buffer
                    for ss in m.get("startstops", ())
                    if ss.get("action") == "compute"
                ]
                record.append(rec)
        else:
            out["dask_median_error"] = None
        return out


def _model(scheduler):
    from dask_oxigdal.placement.topology_cost import _extension

    return _extension(scheduler).model


def _recorder(scheduler) -> dict:
    """Record what the cost model sees, to evaluate variants offline (``--record``).

    ``transfers``: every ``observe`` call's arguments plus the wall time it was
    made (the report's arrival); ``scored_from``: the first one after the reset
    of the scores, ``reset_at``: when that was;
    ``metrics``: each worker's heartbeat metrics when they change (sampled
    every 20 ms: ``time``, ``event_loop_interval``, ``cpu``, executing tasks,
    transfers in and out, tasks processing). At the end: ``busy_log`` (the
    transition hook's log), ``labels``, ``worker_logs`` (each worker's
    ``transfer_incoming_log``), ``writes`` (every shaped write, see
    :func:`_record_writes`) and ``compute`` (every task's computation, from a
    task-stream plugin). The scheduler runs in this process, so this reads it
    directly.
    """
    import dask_oxigdal.placement.topology_cost as tc

    model = _model(scheduler)
    tc._BUSY_LOG = 1_000_000  # keep the whole run (recording only)
    rec: dict = {"transfers": [], "metrics": [], "scored_from": 0}
    observe = model.observe

    def recording_observe(dst, src, nbytes, duration, start=None, *args):
        rec["transfers"].append([dst, src, nbytes, duration, start, time.time(), *args])
        return observe(dst, src, nbytes, duration, start, *args)

    model.observe = recording_observe
    seen: dict[str, object] = {}

    async def sample():
        while True:
            now = time.time()
            for addr, ws in list(scheduler.workers.items()):
                m = ws.metrics
                stamp = m.get("time")
                if seen.get(addr) == stamp:
                    continue
                seen[addr] = stamp
                tr = m.get("transfer") or {}
                rec["metrics"].append(
                    [
                        addr,
                        now,
                        stamp,
                        m.get("event_loop_interval"),
                        m.get("cpu"),
                        (m.get("task_counts") or {}).get("executing", 0),
                        tr.get("incoming_count"),
                        tr.get("outgoing_count"),
                        len(ws.processing),
                    ]
                )
            await asyncio.sleep(0.02)

    rec["sampler"] = asyncio.ensure_future(sample())
    from distributed.diagnostics.task_stream import TaskStreamPlugin

    rec["_stream"] = TaskStreamPlugin(scheduler, maxlen=1_000_000)
    scheduler.add_plugin(rec["_stream"], name="oxigdal-record-stream")
    return rec


def replay(path: str) -> list[str]:
    """Replay a ``--record`` file through the current :class:`TransferCostModel`, offline.

    Each recorded report is observed again in its order, with its start and
    arrival times, on a stand-in scheduler that has only what the model reads
    (the workers' labels and the busy log the transition hook kept); Dask's
    measured bandwidths are left out. Returns one line per layout: the median
    error over the scored transfers, overall and by size, and the cold-start
    figure (the full-size warm-up round's) where the record has one.
    """
    from collections import deque
    from types import SimpleNamespace

    from dask_oxigdal.placement.topology import EXTRA_KEY
    from dask_oxigdal.placement.topology_cost import TransferCostModel

    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    lines = []
    for rec in records:
        workers = {
            a: SimpleNamespace(address=a, host="127.0.0.1", extra={EXTRA_KEY: labels})
            for a, labels in rec["labels"].items()
        }
        sched = SimpleNamespace(workers=workers, bandwidth=100e6, bandwidth_workers={})
        model = TransferCostModel(sched)
        model.busy_log = {a: deque(v) for a, v in rec["busy_log"].items()}
        transfers = rec["transfers"]
        cold = ""
        for i, (dst, src, nbytes, duration, start, arrival, *_) in enumerate(transfers):
            if i == rec.get("cold_from"):  # the full-size warm-up round starts
                model.reset_errors(since=rec["cold_reset_at"])
            if i == rec["scored_from"]:  # older records: the first scored report's arrival
                if "cold_from" in rec and model.errors:
                    cold = f" (cold start {statistics.median(model.errors):.1%} over " + (
                        f"{len(model.errors)})"
                    )
                model.reset_errors(since=rec.get("reset_at", arrival))
            model.observe(dst, src, nbytes, duration, start, now=arrival)
        rows = list(model.recent)
        by_size = []
        for lo, hi, name in ((0, 1e4, "<10KB"), (1e4, 1e6, "10KB-1MB"), (1e6, 1e12, ">=1MB")):
            errs = [abs(r[5] - r[4]) / r[4] for r in rows if lo <= r[3] < hi]
            if errs:
                by_size.append(f"{name} [{len(errs)}, {statistics.median(errs):.0%}]")
        lines.append(
            f"{rec.get('layout', '?'):12s} median error {statistics.median(model.errors):.1%} "
            f"over {len(model.errors)} transfers{cold}; by size: {', '.join(by_size)}"
        )
    return lines


def _incoming_log(dask_worker=None) -> list:
    """A worker's ``transfer_incoming_log`` (keys counted, not listed), for ``--record``."""
    return [
        {k: (len(v) if k == "keys" else v) for k, v in r.items()}
        for r in dask_worker.transfer_incoming_log
    ]


def _record_writes(dask_worker=None) -> None:
    """Log every shaped write in this worker process: (called, written, peer process,
    class, bytes, link delay), for ``--record``."""
    from dask_oxigdal.placement import comm

    if getattr(comm.ThrottledTCP.write, "_recording", False):
        return
    write = comm.ThrottledTCP.write
    log = comm._recorded_writes = []  # on the module: this function travels by value

    async def recording_write(self, msg, serializers=None, on_error="message"):
        t0 = time.time()
        link = self._get_link()
        free = link.free_at - time.monotonic() if link is not None else 0.0
        n = await write(self, msg, serializers=serializers, on_error=on_error)
        if link is not None:
            log.append([t0, time.time(), self.peer_address, link.cls, n, max(0.0, free)])
        return n

    recording_write._recording = True
    comm.ThrottledTCP.write = recording_write


def _recorded_writes(dask_worker=None) -> list:
    from dask_oxigdal.placement import comm

    return list(getattr(comm, "_recorded_writes", ()))


def _reset_errors(dask_scheduler=None):
    from dask_oxigdal.placement.topology_cost import _extension

    _extension(dask_scheduler).model.reset_errors()


def _reset_links():
    from dask_oxigdal.placement import comm

    comm.reset_links()


def _scheduler_snapshot(dask_scheduler=None):
    snap = topology_status(dask_scheduler)
    from dask_oxigdal.scheduling.extension import NAME

    policy = dask_scheduler.plugins[NAME].policies[-1]
    admission = policy.snapshot()
    return {
        "admission": {
            k: admission[k] for k in ("completed", "placed_by_cost", "deferrals", "coflows")
        },
        "admission_order": [r["tenant"] for r in policy.log],
        "median_error": snap["median_error"],
        "dask_median_error": snap["dask_median_error"],
        "large_transfers": snap["large_transfers"],
        "median_error_large": snap["median_error_large"],
        "dask_median_error_large": snap["dask_median_error_large"],
        "error_by_size": _error_by_size(dask_scheduler),
        "transfers_observed": snap["transfers_observed"],
        "classes": snap["classes"],
    }


def _error_by_size(scheduler) -> dict[str, list]:
    """Median error of both models by transfer size: ``{range: [transfers, ours, Dask's]}``."""
    from dask_oxigdal.placement.topology_cost import _extension

    recent = list(_extension(scheduler).model.recent)
    out = {}
    for lo, hi, name in ((0, 1e4, "<10KB"), (1e4, 1e6, "10KB-1MB"), (1e6, 1e12, ">=1MB")):
        rows = [r for r in recent if lo <= r[3] < hi]
        if rows:
            out[name] = [
                len(rows),
                statistics.median(abs(r[5] - r[4]) / r[4] for r in rows),
                statistics.median(abs(r[6] - r[4]) / r[4] for r in rows),
            ]
    return out


async def _one_round(client, mode, big_in, small_in, completions) -> None:
    meta = _points([0], 0, 0)
    jobs = {}
    for tenant, parts in (("big", big_in), ("small", small_in)):
        ddf = dd.from_delayed(parts, meta=meta, verify_meta=False)
        if mode == "ours":
            shuffled = dox.shuffle(ddf, "strip", npartitions=NSTRIPS)
        else:
            shuffled = ddf.shuffle(on="strip", npartitions=NSTRIPS)  # Dask's default (P2P)
        joined = shuffled.map_partitions(_join, meta=(None, "int64")).sum()
        jobs[tenant] = joined
    t0 = time.monotonic()
    futures = {}
    for tenant, job in jobs.items():  # big first
        with dox.annotate(tenant=tenant):
            futures[tenant] = client.compute(job)

    async def wait(tenant):
        await futures[tenant]
        completions[tenant].append(time.monotonic() - t0)

    try:
        await asyncio.wait_for(asyncio.gather(*(wait(t) for t in futures)), ROUND_TIMEOUT)
    except TimeoutError:
        stuck = await client.run_on_scheduler(_stuck)
        raise RuntimeError(
            f"{mode}: a round did not finish in {ROUND_TIMEOUT} s; scheduler: {stuck}"
        ) from None


def _stuck(dask_scheduler=None) -> dict:
    """Unfinished tasks by (prefix, state), and the admission policy's state if any."""
    states: dict[str, int] = {}
    for ts in dask_scheduler.tasks.values():
        if ts.state not in ("memory", "released", "forgotten"):
            name = f"{ts.prefix.name if ts.prefix else '?'}:{ts.state}"
            states[name] = states.get(name, 0) + 1
    out: dict = {"tasks": states}
    from dask_oxigdal.scheduling.extension import NAME

    ext = dask_scheduler.plugins.get(NAME)
    if ext is not None:
        out["admission"] = ext.policies[-1].snapshot()
    return out


def _report(name: str, cross: float, vanilla: dict, ours: dict, repeats: int) -> dict:
    """Print one layout's figures, labelled; return its ratios."""
    lay = ours["layout"]
    out = {
        "layout": name,
        "cross_ingest": cross,
        "rounds": repeats,
        "vanilla": vanilla,
        "ours": ours,
        "cross_rack_ratio": ours["cross_rack_bytes"] / max(1, vanilla["cross_rack_bytes"]),
        "ours_over_floor": ours["cross_rack_bytes"] / max(1.0, lay["floor"]),
        "floor_ratio": lay["floor"] / max(1.0, lay["blind"]),
        "speedup_mean_completion": vanilla["mean_completion"] / ours["mean_completion"],
    }
    share = f"{1 - cross:.0%} in its home rack, {cross:.0%} in the other"
    print(f"== layout {name}: each strip's points ingested {share}; {repeats} measured round(s)")
    for mode, r in (("vanilla", vanilla), ("ours", ours)):
        print(
            f"  {mode:8s} cross-rack {r['cross_rack_bytes'] / 1e6:8.1f} MB   "
            f"completion big {r['completion_big']:.2f} s small {r['completion_small']:.2f} s "
            f"mean {r['mean_completion']:.2f} s"
        )
    print(
        f"  floor    cross-rack {lay['floor'] / 1e6:8.1f} MB   (fewest any placement of whole "
        f"partitions moves; rack-blind placement {lay['blind'] / 1e6:.1f} MB on average; "
        "in-memory bytes, the wire adds framing)"
    )
    print(
        f"  [{name}] cross-rack bytes ratio ours/vanilla: {out['cross_rack_ratio']:.2f} "
        f"(target <= 0.5); floor/rack-blind (best possible ratio): {out['floor_ratio']:.2f}; "
        f"ours/floor: {out['ours_over_floor']:.2f}"
    )
    print(
        f"  [{name}] completion ratio vanilla/ours (mean): "
        f"{out['speedup_mean_completion']:.2f}x (target >= 1.5)"
    )
    print(
        f"  [{name}] prediction error (median, predicted transfer time): ours "
        f"{ours['median_error']:.1%} (target <= 20%), Dask's model "
        f"{ours['dask_median_error']:.1%} over {_scored(ours)} scored transfers "
        f"({ours['transfers_observed']} observed in all rounds); "
        f"over 1 MB ({ours['large_transfers']}): ours {_pct(ours['median_error_large'])}, "
        f"Dask's {_pct(ours['dask_median_error_large'])}"
    )
    cold = ours.get("cold")
    if cold:
        print(
            f"  [{name}] cold start (the full-size warm-up round, after only the small one): "
            f"ours {_pct(cold['median_error'])}, Dask's {_pct(cold['dask_median_error'])} "
            f"over {_scored(cold)} transfers; over 1 MB ({cold['large_transfers']}): "
            f"ours {_pct(cold['median_error_large'])}"
        )
    print(
        f"  [{name}] error by size [transfers, ours, Dask's]: "
        + ", ".join(
            f"{k} [{n}, {a:.0%}, {b:.0%}]" for k, (n, a, b) in ours["error_by_size"].items()
        )
    )
    print(
        f"  [{name}] admission order (ours, warm-up rounds first): "
        f"{' '.join(ours['admission_order'])}"
    )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: smaller data, 2 rounds (1 in the rack-aligned layout)",
    )
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument(
        "--record",
        metavar="PATH",
        help="write what the cost model saw (transfers, heartbeat metrics, busy log) "
        "to this JSON file, to evaluate model variants offline",
    )
    p.add_argument(
        "--cross-ingest",
        type=cross_ingest,
        default=0.2,
        metavar="F",
        help="share of each strip's points ingested in the other rack, 0 <= F < 0.5 "
        "(default 0.2); a rack-aligned layout (F = 0) also runs unless F is 0",
    )
    p.add_argument(
        "--small-warmup",
        action="store_true",
        help="warm up with the small round only (200 rows per worker), as before issue 18's "
        "fourth session: the measured rounds are then scored from a cold start; by default "
        "a round of the measured rounds' size follows it (its errors are printed as the "
        "cold-start figure)",
    )
    p.add_argument(
        "--replay",
        metavar="PATH",
        help="replay a --record file through the current cost model (offline, seconds) "
        "and print its median errors; runs no cluster",
    )
    args = p.parse_args(argv)
    if args.replay:
        print("\n".join(replay(args.replay)))
        return 0
    rows_big, rows_small, repeats = (150_000, 15_000, 2) if args.quick else (300_000, 30_000, 5)
    layouts = [("mixed" if args.cross_ingest else "rack-aligned", args.cross_ingest, repeats)]
    if args.cross_ingest:  # the second layout: fewer rounds in --quick, to keep it short
        layouts.append(("rack-aligned", 0.0, 1 if args.quick else repeats))
    # a last resort against a hang anywhere (start-up, teardown): the threads' stacks, then exit
    faulthandler.dump_traceback_later(900 * len(layouts) if args.quick else 3600, exit=True)
    print(f"machine: {_describe()}; load {os.getloadavg()[0]:.1f}")
    print(
        "warm-up: "
        + (
            "small round only (cold start)"
            if args.small_warmup
            else "small round, then one round of the measured size (other data)"
        )
    )
    reports = []
    records: list | None = [] if args.record else None
    with dask.config.set({"distributed.scheduler.work-stealing": True}):
        for name, cross, n in layouts:
            t0 = time.monotonic()
            full = not args.small_warmup
            vanilla = asyncio.run(run("vanilla", rows_big, rows_small, n, cross, None, full))
            ours = asyncio.run(run("ours", rows_big, rows_small, n, cross, records, full))
            if records:
                records[-1]["layout"] = name
            reports.append(_report(name, cross, vanilla, ours, n))
            print(f"  ({name}: {time.monotonic() - t0:.1f} s)", flush=True)
    print("summary (ratios; cross-rack is ours/vanilla, completion is vanilla/ours):")
    for r in reports:
        print(
            f"  {r['layout']:12s} F={r['cross_ingest']:.2f} rounds={r['rounds']}: "
            f"cross-rack {r['cross_rack_ratio']:.2f} (floor {r['floor_ratio']:.2f}, "
            f"ours/floor {r['ours_over_floor']:.2f}), completion {r['speedup_mean_completion']:.2f}x, "
            f"prediction error ours {r['ours']['median_error']:.1%} / "
            f"Dask's {r['ours']['dask_median_error']:.1%}"
            + (
                f" (cold start: ours {_pct(r['ours']['cold']['median_error'])})"
                if r["ours"].get("cold")
                else ""
            )
        )
    result = {"machine": _describe(), "load": os.getloadavg(), **reports[0], "layouts": reports}
    if args.record:
        with open(args.record, "w", encoding="utf-8") as f:
            json.dump(records, f)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=str)
    return 0


def _scored(snap: dict) -> int:
    """How many transfers a :func:`_scheduler_snapshot`'s errors were scored over."""
    return sum(n for n, _, _ in snap["error_by_size"].values())


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _describe() -> str:
    from _machine import describe

    return describe(f"dask {dask.__version__}, distributed {distributed.__version__}")


if __name__ == "__main__":
    sys.exit(main())
