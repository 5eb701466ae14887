"""Analytics benchmarks: dox.KMeans beside dask-ml and scikit-learn; dox.geofence beside streamz + sjoin.

    python benchmarks/bench_analytics.py --quick     # small sizes (smoke test)
    python benchmarks/bench_analytics.py             # the sizes of issue 19
    python benchmarks/bench_analytics.py --only kmeans

**kmeans**: ``pixels`` x 6 float32 pixels drawn around 8 centers (made on
the workers of ``LocalCluster(n_workers=2, threads_per_worker=1)`` and
persisted there), ``k = 8``, ``random_state=0``, ``max_iter`` as the
iteration cap and ``tol=1e-4`` for every library: ``dox.KMeans``
(k-means||) and ``dask_ml.cluster.KMeans`` (k-means||) on the cluster,
``sklearn.cluster.KMeans`` (k-means++, ``n_init=1``) on the same pixels in
this process with 2 OpenMP threads. Wall time of the whole fit (init
included), iterations, and inertia relative to scikit-learn's. Targets: at
least 5x faster than dask-ml and 1.5x faster than scikit-learn, inertia
within 0.5% of scikit-learn's.

**geofence**: ``polygons`` synthetic polygons over a 1000 x 1000 square
(star-shaped, every third with a hole, every fifth a two-part multipolygon
whose second part has a hole) and a feed of ``points`` uniform points in
batches of ``batch``: ``dox.geofence`` in process (``max_in_flight=4``),
points/s and the p99 of the per-batch latency (read off the source to
result). Peer: ``streamz.Stream().map(sjoin)`` with geopandas
``sjoin(predicate="within")``, on the first ``peer_batches`` batches. Both
produce the same (point, polygon) pairs on those batches (checked).
Targets: at least 1M points/s and p99 at most 100 ms.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _machine
import numpy as np
import pandas as pd

SIZES = {
    "full": {
        "pixels": 20_000_000,
        "chunk": 1_000_000,
        "max_iter": 10,
        "polygons": 10_000,
        "points": 10_000_000,
        "batch": 100_000,
        "peer_batches": 3,
    },
    "quick": {
        "pixels": 1_000_000,
        "chunk": 250_000,
        "max_iter": 10,
        "polygons": 1_000,
        "points": 1_000_000,
        "batch": 100_000,
        "peer_batches": 2,
    },
}


def machine() -> str:
    import dask
    import sklearn
    import streamz

    try:
        import dask_ml

        dml = dask_ml.__version__
    except Exception as e:  # pragma: no cover - reported, not fatal
        dml = f"unavailable ({type(e).__name__})"
    return _machine.describe(
        f"dask {dask.__version__}, scikit-learn {sklearn.__version__}, dask-ml {dml}, "
        f"streamz {streamz.__version__}"
    )


# ---------------------------------------------------------------- k-means


def _pixels_block(block_id, rows, seed):
    rng = np.random.default_rng([seed, block_id[0]])
    centers = np.random.default_rng(seed).uniform(0, 4000, (8, 6))
    lab = rng.integers(0, 8, rows)
    return (centers[lab] + rng.normal(0, 300, (rows, 6))).astype(np.float32)


def bench_kmeans(size: dict, client) -> list[str]:
    import dask.array as da
    from sklearn.cluster import KMeans as SK
    from threadpoolctl import threadpool_limits

    from dask_oxigdal.analytics import KMeans

    n, chunk, cap = size["pixels"], size["chunk"], size["max_iter"]
    nblocks = n // chunk
    X = da.map_blocks(
        lambda block_id=None: _pixels_block(block_id, chunk, 19),
        chunks=((chunk,) * nblocks, (6,)),
        dtype=np.float32,
    ).persist()
    from distributed import wait

    wait(X)
    out = [f"kmeans: {n:,} pixels x 6 bands float32, k=8, max_iter={cap}, tol=1e-4, seed 0"]
    rows = {}

    KMeans(8, max_iter=2, random_state=0).fit(X[:chunk])  # compile the kernels on the workers
    t0 = time.perf_counter()
    ours = KMeans(8, init="k-means||", max_iter=cap, tol=1e-4, random_state=0).fit(X)
    rows["dox.KMeans"] = (time.perf_counter() - t0, ours.n_iter_, ours.inertia_)

    try:
        from dask_ml.cluster import KMeans as DMK

        t0 = time.perf_counter()
        dm = DMK(n_clusters=8, init="k-means||", max_iter=cap, tol=1e-4, random_state=0).fit(X)
        rows["dask-ml KMeans"] = (time.perf_counter() - t0, dm.n_iter_, float(dm.inertia_))
    except Exception as e:
        out.append(f"  dask-ml failed: {type(e).__name__}: {e}")

    Xn = X.compute()
    with threadpool_limits(2):
        t0 = time.perf_counter()
        sk = SK(8, init="k-means++", n_init=1, max_iter=cap, tol=1e-4, random_state=0).fit(Xn)
        rows["sklearn KMeans (2 thr)"] = (time.perf_counter() - t0, sk.n_iter_, sk.inertia_)
    del Xn
    ref = rows["sklearn KMeans (2 thr)"][2]
    t_ours = rows["dox.KMeans"][0]
    for name, (t, it, inertia) in rows.items():
        out.append(
            f"  {name:24s} {t:8.2f} s  {it:3d} iter  {t / max(it, 1):7.3f} s/iter  "
            f"inertia {inertia / ref - 1:+.3%} vs sklearn  speedup of dox: {t / t_ours:5.2f}x"
        )
    return out


# ---------------------------------------------------------------- geofence


def synthetic_polygons(n: int, seed: int = 0):
    """``n`` valid polygons over [0, 1000]^2: star shapes, holes, two-part multipolygons."""
    import geopandas as gpd
    from shapely.geometry import MultiPolygon, Polygon, box

    rng = np.random.default_rng(seed)
    side = 1000.0 / np.sqrt(n)
    polys = []
    for i in range(n):
        cx, cy = rng.uniform(0, 1000, 2)
        r = side * rng.uniform(0.3, 0.8)
        m = 24
        ang = np.linspace(0, 2 * np.pi, m, endpoint=False) + rng.uniform(0, 0.2, m)
        rr = r * rng.uniform(0.6, 1.0, m)
        shell = np.c_[cx + rr * np.cos(ang), cy + rr * np.sin(ang)]
        holes = []
        if i % 3 == 0:
            holes = [np.c_[cx + 0.3 * r * np.cos(ang[::-1]), cy + 0.3 * r * np.sin(ang[::-1])]]
        p = Polygon(shell, holes)
        if i % 5 == 0:
            b = box(cx + r * 1.1, cy + r * 1.1, cx + r * 1.6, cy + r * 1.6)
            inner = box(cx + r * 1.25, cy + r * 1.25, cx + r * 1.45, cy + r * 1.45)
            p = MultiPolygon([p, Polygon(b.exterior.coords, [inner.exterior.coords])])
        polys.append(p)
    return gpd.GeoSeries(polys, index=pd.RangeIndex(n, name="zone"))


def _feed(points: int, batch: int, seed: int = 1):
    for i in range(points // batch):
        rng = np.random.default_rng([seed, i])
        xy = rng.uniform(0, 1000, (batch, 2))
        yield pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})


def bench_geofence(size: dict) -> list[str]:
    import geopandas as gpd
    import streamz

    from dask_oxigdal.analytics import geofence

    zones = synthetic_polygons(size["polygons"])
    npts, batch = size["points"], size["batch"]
    holes = sum(any(len(q.interiors) for q in getattr(p, "geoms", [p])) for p in zones)
    multi = sum(p.geom_type == "MultiPolygon" for p in zones)
    out = [
        f"geofence: {len(zones):,} polygons ({holes:,} with holes, {multi:,} multipolygons), "
        f"{npts:,} points in batches of {batch:,}"
    ]
    list(geofence(_feed(batch, batch), zones))  # compile
    first = {}
    lat = []
    t0 = time.perf_counter()
    nmatch = 0
    for b in geofence(_feed(npts, batch), zones, max_in_flight=4):
        lat.append(b.latency)
        nmatch += len(b.matches)
        if b.seq < size["peer_batches"]:
            first[b.seq] = b.matches
    wall = time.perf_counter() - t0
    p99 = float(np.percentile(lat, 99)) * 1e3
    out.append(
        f"  dox.geofence            {npts / wall / 1e6:6.2f} M points/s  p99 {p99:6.1f} ms  "
        f"p50 {np.median(lat) * 1e3:6.1f} ms  {nmatch:,} matches  ({wall:.2f} s)"
    )

    polys = gpd.GeoDataFrame(geometry=zones)
    results = []

    def sjoin(df):
        pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(df.x, df.y))
        return gpd.sjoin(pts, polys, predicate="within")

    source = streamz.Stream()
    source.map(sjoin).sink(results.append)
    nb = size["peer_batches"]
    t0 = time.perf_counter()
    for df in _feed(nb * batch, batch):
        source.emit(df)
    pwall = time.perf_counter() - t0
    same = all(
        set(zip(first[i].point_id, first[i].polygon_id, strict=True))
        == set(zip(results[i].index, results[i]["zone"], strict=True))
        for i in range(nb)
    )
    peer_rate = nb * batch / pwall
    out.append(
        f"  streamz + sjoin(within) {peer_rate / 1e6:6.2f} M points/s  "
        f"({nb} batches, {pwall / nb * 1e3:.0f} ms/batch)  matches identical: {same}  "
        f"speedup of dox: {npts / wall / peer_rate:5.2f}x"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument(
        "--only", default="kmeans,geofence", help="comma-separated: kmeans,geofence"
    )
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    only = set(args.only.split(","))
    print(f"machine: {machine()}")
    print(
        f"command: python benchmarks/bench_analytics.py {' '.join(argv or sys.argv[1:])}".rstrip()
    )
    print(f"load: {os.getloadavg()[0]:.2f} (1-min load average at start)")
    print()
    if "kmeans" in only:
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            print("\n".join(bench_kmeans(size, client)), end="\n\n", flush=True)
    if "geofence" in only:
        print("\n".join(bench_geofence(size)), end="\n\n", flush=True)
    print(f"load: {os.getloadavg()[0]:.2f} (1-min load average at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
