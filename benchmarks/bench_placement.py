"""Data placement benchmarks (issue 13): each section beside vanilla Dask, in the same run.

    python benchmarks/bench_placement.py --quick            # smoke test (< 2 min)
    python benchmarks/bench_placement.py                    # the sizes of the issue
    python benchmarks/bench_placement.py --only loss,cache

Sections are the entries of :data:`SECTIONS` (name -> function(quick) -> lines);
add one by adding an entry.

**loss**: ``LocalCluster(n_workers=4, threads_per_worker=1)`` (process
workers). 64 input tiles (each loader sleeps ``load`` seconds: a read from
object storage) are persisted, then a 64-task job reads them; once half of
the job is done, the worker holding the most tiles is SIGKILLed (its nanny
starts a fresh one). Vanilla Dask recomputes the tiles that lived only there;
with ``dox.register`` and ``dox.annotate(replicas=2)`` on the inputs, none is
recomputed (target: 0) and the ``Replicas`` policy reports after how many AMM
cycles every tile has 2 copies again (target: <= 2). The AMM interval is
``distributed.scheduler.active-memory-manager.interval`` (1 s quick, Dask's
2 s otherwise).

**cache**: 3 tenants read tiles through ``dox.cached`` on one worker process
(1 thread) whose cache holds ``capacity`` tiles; their working sets overlap
(``common`` tiles all read, ``own`` tiles each), reads drawn at random.
Isolated per-tenant caches (``dox.cached(key, ...)``: one entry per tenant,
each tenant's budget a third of the cache) against the shared, fair cache
(``dox.cached(key, ..., shared=True)``: one entry, charged to its readers in
equal parts). Hits per cached byte (hits / bytes in the cache at the end):
target >= 2x; and no tenant's hit rate below its isolated one. An exact LRU
replay of isolated caches (a third of the capacity each) is printed beside.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import time
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _machine
import dask
import numpy as np
from bench_placement_topology import cross_ingest  # one check for both scripts
from distributed import Client, LocalCluster, wait

import dask_oxigdal as dox

LOSS = {
    "quick": {"tiles": 64, "nbytes": 256_000, "load": 0.1, "work": 0.05, "amm": "1s"},
    "full": {"tiles": 64, "nbytes": 4_000_000, "load": 0.5, "work": 0.2, "amm": "2s"},
}
CACHE = {
    "quick": {"common": 32, "own": 4, "capacity": 44, "reads": 600, "nbytes": 50_000},
    "full": {"common": 32, "own": 4, "capacity": 44, "reads": 3000, "nbytes": 200_000},
}


def machine() -> str:
    import distributed

    return _machine.describe(f"dask {dask.__version__}, distributed {distributed.__version__}")


def _cluster(n_workers: int) -> LocalCluster:
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
    )


# ------------------------------------------------------------------ loss
def load_tile(i: int, nbytes: int, load: float) -> np.ndarray:
    time.sleep(load)
    return np.full(nbytes, i % 256, dtype="u1")


def process(tile: np.ndarray, work: float) -> int:
    time.sleep(work)
    return int(tile[0])


def _runs(dask_scheduler, keys) -> dict:
    return {
        k: sum(1 for t in dask_scheduler.story(k) if t[0] == k and t[2] == "processing")
        for k in keys
    }


def _copies(client: Client, futures: list) -> dict:
    return {k: len(v) for k, v in client.who_has(futures).items()}


def _loss_run(p: dict, ours: bool) -> dict:
    with (
        dask.config.set({"distributed.scheduler.active-memory-manager.interval": p["amm"]}),
        _cluster(4) as cluster,
        Client(cluster) as client,
    ):
        if ours:
            dox.register(client)
        keys = [f"tile-{i}" for i in range(p["tiles"])]
        args = ([p["nbytes"]] * p["tiles"], [p["load"]] * p["tiles"])
        t0 = time.perf_counter()
        if ours:
            with dox.annotate(replicas=2):
                tiles = client.map(load_tile, range(p["tiles"]), *args, key=keys)
        else:
            tiles = client.map(load_tile, range(p["tiles"]), *args, key=keys)
        wait(tiles)
        loaded = time.perf_counter() - t0
        if ours:
            while min(_copies(client, tiles).values()) < 2:
                time.sleep(0.05)
        replicated = time.perf_counter() - t0
        t1 = time.perf_counter()
        jobs = client.map(process, tiles, work=p["work"], key=[f"job-{i}" for i in range(64)])
        while sum(f.done() for f in jobs) < len(jobs) // 2:
            time.sleep(0.01)
        has_what = client.has_what()
        victim = max(has_what, key=lambda a: sum(str(k).startswith("tile-") for k in has_what[a]))
        lost_tiles = sum(1 for k in has_what[victim] if str(k).startswith("tile-"))
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        killed_at = time.perf_counter() - t1
        wait(jobs)
        job_s = time.perf_counter() - t1
        assert client.gather(jobs) == [i % 256 for i in range(64)]
        runs = client.run_on_scheduler(_runs, keys=keys)
        out = {
            "load_s": round(loaded, 3),
            "replicated_s": round(replicated, 3),
            "killed_after_s": round(killed_at, 3),
            "tiles_on_victim": lost_tiles,
            "job_s": round(job_s, 3),
            "recomputed": sum(1 for n in runs.values() if n > 1),
            "recompute_s": round(sum(n - 1 for n in runs.values()) * p["load"], 3),
        }
        if ours:
            deadline = time.monotonic() + 60
            while True:
                st = dox.status(client)["policies"]["Replicas"]
                if st["restore_cycles"] is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            while min(_copies(client, tiles).values()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            out["restore_cycles"] = st["restore_cycles"]
            out["restore_s"] = round(st["restore_seconds"] or -1.0, 3)
            out["copies_min"] = min(_copies(client, tiles).values())
            out["replica_bytes"] = sum(t["replica_bytes"] for t in st["tenants"].values())
        return out


def bench_loss(quick: bool) -> list[str]:
    p = LOSS["quick" if quick else "full"]
    vanilla = _loss_run(p, ours=False)
    ours = _loss_run(p, ours=True)
    return [
        f"loss: {p['tiles']} tiles x {p['nbytes']:,} B (load {p['load']}s each), "
        f"64-task job ({p['work']}s each), 4 workers x 1 thread, AMM every {p['amm']}; "
        "SIGKILL of the worker holding the most tiles once half the job is done",
        f"  vanilla Dask: {vanilla['recomputed']} tiles recomputed "
        f"({vanilla['recompute_s']}s of loads; {vanilla['tiles_on_victim']} tiles on the victim), "
        f"job {vanilla['job_s']}s",
        f"  replicas=2:   {ours['recomputed']} tiles recomputed ({ours['recompute_s']}s), "
        f"job {ours['job_s']}s; 2 copies of every tile again after "
        f"{ours['restore_cycles']} AMM cycle(s) ({ours['restore_s']}s), "
        f"min copies {ours['copies_min']}; replicating first took "
        f"{ours['replicated_s'] - ours['load_s']:.2f}s",
        f"  targets: 0 recomputed: {ours['recomputed'] == 0}; restored within 2 cycles: "
        f"{ours['restore_cycles'] is not None and ours['restore_cycles'] <= 2}; "
        f"job time ratio vanilla/ours {vanilla['job_s'] / ours['job_s']:.2f}",
        "  json: " + json.dumps({"vanilla": vanilla, "replicas": ours}),
    ]


# ----------------------------------------------------------------- cache
def read_tiles(reads: list, nbytes: int, shared: bool) -> int:
    total = 0
    for key in reads:
        tile = dox.cached(key, lambda: np.ones(nbytes, "u1"), nbytes=nbytes, shared=shared)
        total += int(tile[0])
    return total


BLOCK = 10  # reads per task: one tenant reads BLOCK tiles, tenants drawn per block


def _trace(p: dict, seed: int = 13) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    sets = {
        t: [f"tile/c{i}" for i in range(p["common"])] + [f"tile/{t}{i}" for i in range(p["own"])]
        for t in ("a", "b", "c")
    }
    out = []
    for t in rng.choices("abc", k=3 * p["reads"] // BLOCK):
        out += [(t, rng.choice(sets[t])) for _ in range(BLOCK)]
    return out


def _cache_stats(dask_worker) -> dict:
    cache = dask_worker.extensions["oxigdal-cache"].cache
    return {"tenants": cache.tenant_stats(), "bytes": cache.bytes, "stats": cache.stats()}


def _cache_run(p: dict, shared: bool) -> dict:
    limit = p["capacity"] * p["nbytes"]
    with (
        dask.config.set({"oxigdal.cache.limit": limit, "oxigdal.cache.compression": "none"}),
        _cluster(1) as cluster,
        Client(cluster) as client,
    ):
        dox.register(client, tenants={"a": 1, "b": 1, "c": 1})
        trace = _trace(p)
        for i in range(0, len(trace), BLOCK):
            block = trace[i : i + BLOCK]
            with dox.annotate(tenant=block[0][0]):
                fut = client.submit(
                    read_tiles, [k for _, k in block], p["nbytes"], shared, pure=False
                )
            wait(fut)  # one at a time: both runs see the reads in the same order
        (out,) = client.run(_cache_stats).values()
        return out


def _isolated_lru(p: dict) -> dict:
    """Exact isolated LRU caches of a third of the capacity each, on the same reads."""
    size = p["capacity"] // 3
    caches = {t: OrderedDict() for t in "abc"}
    hits = dict.fromkeys("abc", 0)
    reads = dict.fromkeys("abc", 0)
    for t, key in _trace(p):
        reads[t] += 1
        c = caches[t]
        if key in c:
            hits[t] += 1
            c.move_to_end(key)
        else:
            c[key] = None
            if len(c) > size:
                c.popitem(last=False)
    return {t: hits[t] / max(1, reads[t]) for t in "abc"}


def bench_cache(quick: bool) -> list[str]:
    p = CACHE["quick" if quick else "full"]
    iso = _cache_run(p, shared=False)
    sha = _cache_run(p, shared=True)
    exact = _isolated_lru(p)

    def rate(run: dict, t: str) -> float:
        s = run["tenants"][t]
        return s["hits"] / max(1, s["hits"] + s["misses"])

    def per_byte(run: dict) -> float:
        hits = sum(s["hits"] for s in run["tenants"].values())
        return hits / max(1, run["bytes"])

    ratio = per_byte(sha) / per_byte(iso) if per_byte(iso) else float("inf")
    fair = all(rate(sha, t) >= rate(iso, t) for t in "abc")
    lines = [
        f"cache: 3 tenants x {p['reads']} reads of {p['nbytes']:,} B tiles; working sets "
        f"{p['common']} common + {p['own']} own tiles each; cache of {p['capacity']} tiles "
        "on 1 worker process",
        "  tenant  isolated  shared  (exact isolated LRU replay)",
    ]
    for t in "abc":
        lines.append(f"  {t:6s}  {rate(iso, t):8.3f}  {rate(sha, t):6.3f}  ({exact[t]:.3f})")
    lines += [
        f"  hits per cached MB: isolated {per_byte(iso) * 1e6:.1f}, shared "
        f"{per_byte(sha) * 1e6:.1f}: ratio {ratio:.2f} (target >= 2: {ratio >= 2})",
        f"  no tenant below its isolated hit rate: {fair}",
        "  json: "
        + json.dumps(
            {
                "isolated": {t: rate(iso, t) for t in "abc"},
                "shared": {t: rate(sha, t) for t in "abc"},
                "exact_isolated_lru": exact,
                "hits_per_cached_byte_ratio": ratio,
                "bytes": {"isolated": iso["bytes"], "shared": sha["bytes"]},
            }
        ),
    ]
    return lines


def bench_topology(quick: bool, cross_ingest: float = 0.2) -> list[str]:
    """The two-rack network section: benchmarks/bench_placement_topology.py, in a subprocess.

    It runs its own clusters on the ``throttled://`` backend; a fresh process
    keeps its comm registration and its clusters apart from the other sections.
    ``cross_ingest`` is passed on as its ``--cross-ingest``.
    """
    import subprocess

    cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "bench_placement_topology.py")]
    cmd += ["--cross-ingest", repr(cross_ingest)]
    out = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True)
    if out.returncode:
        return ["topology: failed", out.stdout, out.stderr[-4000:]]
    return ["topology (two racks on 127.0.0.1: 1 Gb/s within, 100 Mb/s across):", out.stdout]


#: Section name -> function(quick) -> printed lines. Add a section by adding an entry.
SECTIONS = {
    "loss": bench_loss,
    "cache": bench_cache,
    "topology": bench_topology,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument(
        "--cross-ingest",
        type=cross_ingest,
        default=0.2,
        metavar="F",
        help="topology: share of each strip's points ingested in the other rack, "
        "0 <= F < 0.5 (default 0.2)",
    )
    args = parser.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    parts = [s for s in args.only.split(",") if s]
    unknown = sorted(set(parts) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown --only sections {unknown}; valid: {','.join(SECTIONS)}")
    print(f"machine: {machine()}")
    print(f"load: {os.getloadavg()}")
    print(f"command: python benchmarks/bench_placement.py {' '.join(argv or sys.argv[1:])}")
    print()
    for name in parts:
        t0 = time.perf_counter()
        extra = {"cross_ingest": args.cross_ingest} if name == "topology" else {}
        print("\n".join(SECTIONS[name](args.quick, **extra)), flush=True)
        print(f"  ({name}: {time.perf_counter() - t0:.1f}s)", end="\n\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
