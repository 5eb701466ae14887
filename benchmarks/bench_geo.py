"""Geo benchmarks: locality, Dask shuffle, spatial shuffle, kNN, each beside its peers.

    python benchmarks/bench_geo.py --quick      # small sizes (smoke test, ~1-2 min)
    python benchmarks/bench_geo.py              # the sizes of issue 8
    python benchmarks/bench_geo.py --only locality,knn

**locality**: ``passes`` passes over ``tiles`` tiles whose loader sleeps
``load`` seconds (a read from object storage), each task calling
``dox.cached(tile, loader)``, on ``LocalCluster(n_workers=4,
threads_per_worker=1)`` (process workers), once with ``dox.register`` and
tasks annotated ``locality=tile`` (the Locality policy), once on vanilla Dask
with the same per-worker cache and no policy. Hit rate over passes 2..n (the
first pass can only miss) and total time; target: hit rate >= 90% and at
least 2x faster than vanilla.

**shuffle**: ``dox.shuffle(ddf, "key", 64)`` against ``ddf.shuffle(on="key",
npartitions=64, shuffle_method="p2p" | "tasks")``, ``rows`` rows (int64 key,
int64 and two float64 columns) made on the workers in 16 partitions, on 2
process workers x 1 thread; the time to compute every output partition's
length (the shuffle itself dominates). Target: faster than the faster peer.

**spatial**: ``dox.spatial_shuffle(by="hilbert")`` against dask-geopandas'
``spatial_shuffle`` (both computing ``spatial_partitions``), ``points``
random points in 8 partitions -> 16, same cluster, then every output
partition's length. Target: at least 2x faster.

**knn**: ``dox.knn`` of ``queries`` random queries, k=10, among ``points``
points in 16 Hilbert-sorted partitions (same cluster), against a
single-machine ``cKDTree`` (build + query) and numpy brute force (timed on
a subset of the queries and scaled, stated in the note). Reports the pruning
ratio.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _machine
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster

import dask_oxigdal as dox

SIZES = {
    "full": {
        "tiles": 64,
        "passes": 5,
        "load": 0.2,
        "rows": 10_000_000,
        "points": 1_000_000,
        "queries": 10_000,
        "brute": 200,
    },
    "quick": {
        "tiles": 16,
        "passes": 3,
        "load": 0.05,
        "rows": 1_000_000,
        "points": 100_000,
        "queries": 1_000,
        "brute": 100,
    },
}


def machine() -> str:
    """This machine and the library versions that matter here."""
    import dask
    import dask_geopandas
    import scipy

    return _machine.describe(
        f"dask {dask.__version__}, dask-geopandas {dask_geopandas.__version__}, "
        f"scipy {scipy.__version__}"
    )


# ------------------------------------------------------------------ locality
def tile_task(tile: int, load: float) -> float:
    """One tile pass: the cached tile (loaded in ``load`` seconds on a miss), reduced."""

    def loader():
        time.sleep(load)
        return np.full(4096, tile, dtype=np.float64)

    return float(dox.cached(f"tile/{tile}", loader).mean())


def _cache_stats(dask_worker) -> dict:
    from dask_oxigdal.cache import worker_cache

    return worker_cache(dask_worker).stats()


def run_locality(size: dict, with_policy: bool) -> dict:
    tiles, passes, load = size["tiles"], size["passes"], size["load"]
    with (
        LocalCluster(
            n_workers=4,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        if with_policy:
            dox.register(client)
        client.run(lambda: None)
        per_pass = []
        pass_times = []
        t0 = time.perf_counter()
        for _ in range(passes):
            tp = time.perf_counter()
            futures = []
            for t in range(tiles):
                if with_policy:
                    with dox.annotate(locality=f"tile/{t}"):
                        futures.append(client.submit(tile_task, t, load, pure=False))
                else:
                    futures.append(client.submit(tile_task, t, load, pure=False))
            client.gather(futures)
            pass_times.append(time.perf_counter() - tp)
            stats = client.run(_cache_stats)
            per_pass.append(sum(s["hits"] for s in stats.values()))
        total = time.perf_counter() - t0
    hits_after_first = per_pass[-1] - per_pass[0]
    return {
        "time": total,
        "hit_rate": hits_after_first / (tiles * (passes - 1)),
        "hits": per_pass[-1],
        "passes": pass_times,
    }


def _fmt(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


def bench_locality(size: dict) -> list[str]:
    ours = run_locality(size, True)
    vanilla = run_locality(size, False)
    speedup = vanilla["time"] / ours["time"]
    ok = ours["hit_rate"] >= 0.9 and speedup >= 2
    return [
        f"**locality: {size['passes']} passes x {size['tiles']} tiles, loader "
        f"{size['load'] * 1000:.0f} ms, 4 workers x 1 thread**",
        "",
        "| run | hit rate (passes 2..n) | total time | vanilla time / ours | per pass |",
        "|---|---:|---:|---:|---|",
        f"| Locality policy + dox.cached | {ours['hit_rate']:.1%} | {ours['time']:.2f} s | "
        f"{speedup:.2f} | {_fmt(ours['passes'])} |",
        f"| vanilla Dask + dox.cached | {vanilla['hit_rate']:.1%} | {vanilla['time']:.2f} s | "
        f"| {_fmt(vanilla['passes'])} |",
        "",
        f"target hit rate >= 90% and >= 2x: {'met' if ok else 'MISSED'}",
    ]


# ------------------------------------------------------------------ shuffle
def make_part(i: int, rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(i)
    return pd.DataFrame(
        {
            "key": rng.integers(0, 1_000_000, rows),
            "a": rng.integers(0, 100, rows),
            "x": rng.random(rows),
            "y": rng.random(rows),
        }
    )


def _lengths(ddf) -> int:
    return int(ddf.map_partitions(len).compute().sum())


def _time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_shuffle(size: dict, client: Client, repeat: int) -> list[str]:
    import dask.dataframe as dd

    nin = 16
    rows = size["rows"]
    ddf = dd.from_map(make_part, range(nin), rows=rows // nin)
    ddf = ddf.persist()
    client.wait_for_workers(2)
    from distributed import wait

    wait(ddf)
    runs = {
        "dox.shuffle": lambda: _lengths(dox.shuffle(ddf, "key", 64)),
        'ddf.shuffle(shuffle_method="p2p")': lambda: _lengths(
            ddf.shuffle(on="key", npartitions=64, shuffle_method="p2p")
        ),
        'ddf.shuffle(shuffle_method="tasks")': lambda: _lengths(
            ddf.shuffle(on="key", npartitions=64, shuffle_method="tasks")
        ),
    }
    times = {name: min(_time_once(fn) for _ in range(repeat)) for name, fn in runs.items()}
    ours = times["dox.shuffle"]
    best_peer = min(v for k, v in times.items() if k != "dox.shuffle")
    lines = [
        f"**Dask shuffle: {rows:,} rows, 16 -> 64 partitions, 2 workers x 1 thread**",
        "",
        "| implementation | time | peer time / ours |",
        "|---|---:|---:|",
    ]
    for name, t in times.items():
        ratio = "" if name == "dox.shuffle" else f"{t / ours:.2f}"
        lines.append(f"| {name} | {t:.2f} s | {ratio} |")
    lines += ["", f"target faster than the faster peer: {'met' if ours < best_peer else 'MISSED'}"]
    return lines


# ------------------------------------------------------------------ spatial
def bench_spatial(size: dict, client: Client, repeat: int) -> list[str]:
    import dask_geopandas
    import geopandas

    n = size["points"]
    rng = np.random.default_rng(1)
    gdf = geopandas.GeoDataFrame(
        {"v": rng.random(n)},
        geometry=geopandas.points_from_xy(rng.normal(0, 30, n), rng.normal(0, 15, n)),
    )
    g = dask_geopandas.from_geopandas(gdf, npartitions=8).persist()

    def ours():
        return _lengths(dox.spatial_shuffle(g, by="hilbert", npartitions=16))

    def peer():
        return _lengths(g.spatial_shuffle(by="hilbert", npartitions=16))

    t_ours = min(_time_once(ours) for _ in range(repeat))
    t_peer = min(_time_once(peer) for _ in range(repeat))
    ratio = t_peer / t_ours
    return [
        f"**spatial shuffle (hilbert): {n:,} points, 8 -> 16 partitions, with spatial_partitions**",
        "",
        "| implementation | time | peer time / ours |",
        "|---|---:|---:|",
        f"| dox.spatial_shuffle | {t_ours:.2f} s | |",
        f"| dask_geopandas spatial_shuffle | {t_peer:.2f} s | {ratio:.2f} |",
        "",
        f"target >= 2x: {'met' if ratio >= 2 else 'MISSED'}",
    ]


# ------------------------------------------------------------------ knn
def bench_knn(size: dict, client: Client) -> list[str]:
    import dask.dataframe as dd
    from scipy.spatial import cKDTree

    from dask_oxigdal.partitioning import HilbertPartitioner

    n, nq, k = size["points"], size["queries"], 10
    rng = np.random.default_rng(2)
    pts = np.column_stack([rng.random(n), rng.random(n)])
    q = np.column_stack([rng.random(nq), rng.random(nq)])
    order = np.argsort(HilbertPartitioner((0, 0, 1, 1), 1).distances(pts[:, 0], pts[:, 1]))
    frame = pd.DataFrame({"x": pts[order, 0], "y": pts[order, 1]})
    ddf = dd.from_pandas(frame, npartitions=16, sort=False).persist()
    sorted_pts = frame.to_numpy()

    t0 = time.perf_counter()
    d, _, stats = dox.knn(ddf, q, k, return_stats=True)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    rd, _ = cKDTree(sorted_pts).query(q, k)
    t_tree = time.perf_counter() - t0
    exact = bool((d == rd).all())
    sub = q[: size["brute"]]
    t0 = time.perf_counter()
    for row in sub:
        dist = np.hypot(sorted_pts[:, 0] - row[0], sorted_pts[:, 1] - row[1])
        np.sort(np.partition(dist, k)[:k])
    t_brute = (time.perf_counter() - t0) * nq / len(sub)
    return [
        f"**kNN: {n:,} points (16 partitions) x {nq:,} queries, k={k}**",
        "",
        "| implementation | time | time / ours |",
        "|---|---:|---:|",
        f"| dox.knn (2 workers) | {t_ours:.2f} s | |",
        f"| scipy cKDTree, one process (build + query) | {t_tree:.2f} s | {t_tree / t_ours:.2f} |",
        f"| numpy brute force (timed on {len(sub)} queries, scaled) | {t_brute:.1f} s | "
        f"{t_brute / t_ours:.1f} |",
        "",
        f"pruning ratio {stats['pruning_ratio']:.3f} ({stats['pairs_searched']:,} of "
        f"{stats['pairs_total']:,} query-partition pairs searched); distances equal "
        f"cKDTree's: {exact}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--only", default="locality,shuffle,spatial,knn")
    args = parser.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    size = SIZES["quick" if args.quick else "full"]
    parts = set(args.only.split(","))
    unknown = parts - {"locality", "shuffle", "spatial", "knn"}
    if unknown:
        parser.error(f"unknown --only parts {sorted(unknown)}; valid: locality,shuffle,spatial,knn")
    repeat = 1 if args.quick else 2
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/bench_geo.py {' '.join(argv or sys.argv[1:])}".rstrip())
    print()
    if "locality" in parts:
        print("\n".join(bench_locality(size)), end="\n\n", flush=True)
    if parts & {"shuffle", "spatial", "knn"}:
        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                host="127.0.0.1",
            ) as cluster,
            Client(cluster) as client,
        ):
            if "shuffle" in parts:
                print("\n".join(bench_shuffle(size, client, repeat)), end="\n\n", flush=True)
            if "spatial" in parts:
                print("\n".join(bench_spatial(size, client, repeat)), end="\n\n", flush=True)
            if "knn" in parts:
                print("\n".join(bench_knn(size, client)), end="\n\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
