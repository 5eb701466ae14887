"""Analytics benchmarks: dox.KMeans beside dask-ml and scikit-learn; dox.geofence beside streamz + sjoin.

    python benchmarks/bench_analytics.py --quick     # small sizes (smoke test)
    python benchmarks/bench_analytics.py             # the sizes of issue 19
    python benchmarks/bench_analytics.py --only kmeans,kmeans-4x
    python benchmarks/bench_analytics.py --only geofence            # in process only

**kmeans**: ``pixels`` x 6 float32 pixels drawn around 8 centers (made on
the workers of ``LocalCluster(n_workers=2, threads_per_worker=1)`` and
persisted there), ``k = 8``, ``random_state=0``, ``max_iter`` as the
iteration cap and ``tol=1e-4`` for every library: ``dox.KMeans``
(k-means||) and ``dask_ml.cluster.KMeans`` (k-means||) on the cluster,
``sklearn.cluster.KMeans`` (k-means++, ``n_init=1``) on the same pixels in
this process with 2 OpenMP threads. Wall time of the whole fit (init
included), iterations, and inertia relative to scikit-learn's. Targets: at
least 5x faster than dask-ml and 1.5x faster than scikit-learn, inertia
within 0.5% of scikit-learn's. Then the **4x-memory run**: pixels of the same kind,
not persisted but generated per pass (``ooc_pixels`` in blocks of
``ooc_chunk`` rows), on a second cluster of 2 workers
whose memory limits add up to a quarter of the input (spilling of managed
data at 60% as usual; pause and terminate off, since a worker process alone
exceeds such a limit); its time and the bytes spilled.

**geofence**: ``polygons`` synthetic polygons over a 1000 x 1000 square
(star-shaped, every third with a hole, every fifth a two-part multipolygon
whose second part has a hole) and a feed of ``points`` uniform points in
batches of ``batch``, made before the clock starts: ``dox.geofence`` in
process (``max_in_flight=4``, then 2: as many batches as threads, so
that no batch waits for a thread, the default on 2 cores) and, with ``geofence-cluster``, on the
2-worker cluster (``client=``, first ``cluster_points`` points). Per run:
wall-clock points/s, p50/p99 of the per-batch latency (read off the source
to result), and, since the machine may be shared, CPU figures that do not
depend on the load: CPU microseconds per point of the whole run (this
process, plus the worker processes on the cluster) and the throughput they
imply on 2 idle cores (``2 / CPU per point``), the kernel's own CPU per
point and the p99 of the kernel's CPU per batch (``GeofenceBatch.cpu``).
``uptime`` before and after. Peer: ``streamz.Stream().map(sjoin)`` with
geopandas ``sjoin(predicate="within")``, on the first ``peer_batches``
batches. Both produce the same (point, polygon) pairs on those batches
(checked). Targets: at least 1M points/s and p99 at most 100 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
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
        "cluster_points": 2_000_000,
        "ooc_pixels": 20_000_000,
        "ooc_chunk": 125_000,
    },
    "quick": {
        "pixels": 1_000_000,
        "chunk": 250_000,
        "max_iter": 10,
        "polygons": 1_000,
        "points": 1_000_000,
        "batch": 100_000,
        "peer_batches": 2,
        "cluster_points": 500_000,
        "ooc_pixels": 2_048_000,
        "ooc_chunk": 16_000,
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


def _spilled_bytes(dask_worker) -> float:
    metrics = getattr(dask_worker.data, "cumulative_metrics", {})
    return float(
        sum(v for (label, unit), v in metrics.items() if "disk" in label and unit == "bytes")
    )


def bench_kmeans_out_of_core(size: dict) -> list[str]:
    """Pixels generated lazily per pass on 2 workers whose memory limits total 1/4 of them."""
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    from dask_oxigdal.analytics import KMeans

    n, chunk, cap = size["ooc_pixels"], size["ooc_chunk"], size["max_iter"]
    nbytes = n * 6 * 4
    limit = nbytes // 8  # per worker: 2 workers hold a quarter of the input
    cfg = {
        # a worker process alone exceeds such a limit: keep the limit on the managed
        # data (spill at 60%, as the test) and never pause or kill the worker
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
        "distributed.worker.memory.terminate": False,
    }
    with (
        dask.config.set(cfg),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit=limit,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        X = da.map_blocks(
            lambda block_id=None: _pixels_block(block_id, chunk, 19),
            chunks=((chunk,) * (n // chunk), (6,)),
            dtype=np.float32,
        )  # not persisted: every pass regenerates the blocks
        KMeans(8, max_iter=1, random_state=0).fit(X[:chunk])  # compile on the workers
        t0 = time.perf_counter()
        km = KMeans(8, init="k-means||", max_iter=cap, tol=1e-4, random_state=0).fit(X)
        t = time.perf_counter() - t0
        spilled = sum(client.run(_spilled_bytes).values())
    return [
        f"kmeans 4x-memory run: {n:,} pixels x 6 bands float32, k=8, max_iter={cap}, seed 0",
        f"  {nbytes / 2**20:,.0f} MiB generated lazily on 2 workers x "
        f"{limit / 2**20:,.0f} MiB memory limit: dox.KMeans {t:8.2f} s  {km.n_iter_:3d} iter  "
        f"{spilled / 2**20:.1f} MiB spilled",
    ]


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


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # pragma: no cover - no uptime binary
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def _run_geofence(feed, zones, peer_batches, **kw):
    """(wall s, process CPU s, kernel CPU s, latencies, cpus, matches, first matches)."""
    from dask_oxigdal.analytics import geofence

    first, lat, cpu = {}, [], []
    nmatch = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for b in geofence(iter(feed), zones, **kw):
        lat.append(b.latency)
        cpu.append(b.cpu)
        nmatch += len(b.matches)
        if b.seq < peer_batches:
            first[b.seq] = b.matches
    wall, pcpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, pcpu, float(sum(cpu)), np.asarray(lat), np.asarray(cpu), nmatch, first


def _geofence_row(name, npts, wall, cpu_s, kernel_s, lat, cpus, nmatch) -> str:
    us = cpu_s / npts * 1e6
    return (
        f"  {name:28s} wall {npts / wall / 1e6:5.2f} M points/s  p99 {np.percentile(lat, 99) * 1e3:6.1f} ms"
        f"  p50 {np.median(lat) * 1e3:6.1f} ms | CPU {us:5.3f} us/point -> {2 / us:5.2f} M points/s"
        f" on 2 cores; kernel {kernel_s / npts * 1e6:5.3f} us/point, p99 {np.percentile(cpus, 99) * 1e3:5.1f} ms"
        f" CPU/batch | {nmatch:,} matches ({wall:.2f} s)"
    )


def bench_geofence(size: dict, client=None) -> list[str]:
    import geopandas as gpd
    import streamz

    from dask_oxigdal.analytics import geofence

    zones = synthetic_polygons(size["polygons"])
    npts, batch = size["points"], size["batch"]
    holes = sum(any(len(q.interiors) for q in getattr(p, "geoms", [p])) for p in zones)
    multi = sum(p.geom_type == "MultiPolygon" for p in zones)
    out = [
        f"geofence: {len(zones):,} polygons ({holes:,} with holes, {multi:,} multipolygons), "
        f"{npts:,} points in batches of {batch:,} (made before timing)",
        f"  uptime at start: {_uptime()}",
    ]
    list(geofence(_feed(batch, batch), zones))  # compile
    feed = list(_feed(npts, batch))
    nb = size["peer_batches"]
    wall, pcpu, kcpu, lat, cpus, nmatch, first = _run_geofence(feed, zones, nb, max_in_flight=4)
    out.append(
        _geofence_row("dox.geofence (4 in flight)", npts, wall, pcpu, kcpu, lat, cpus, nmatch)
    )
    # as many batches in flight as threads: no batch waits for a thread (lower latency)
    w2, pc2, kc2, la2, cp2, nm2, _ = _run_geofence(feed, zones, 0, max_in_flight=2)
    out.append(_geofence_row("dox.geofence (2 in flight)", npts, w2, pc2, kc2, la2, cp2, nm2))
    if client is not None:
        ncl = min(npts, size["cluster_points"])
        cfeed = feed[: ncl // batch]
        list(geofence(cfeed[:1], zones, client=client))  # compile on the workers
        wc0 = sum(client.run(time.process_time).values())
        w, pc, kc, la, cp, nm, cfirst = _run_geofence(cfeed, zones, nb, client=client)
        wcpu = sum(client.run(time.process_time).values()) - wc0
        # CPU: this process plus the worker processes (their whole CPU time, not only the kernel)
        out.append(
            _geofence_row("dox.geofence (2 workers)", ncl, w, pc + wcpu, kc, la, cp, nm)
            + f"  same matches: {all(cfirst[i].equals(first[i]) for i in cfirst)}"
        )
    del feed

    polys = gpd.GeoDataFrame(geometry=zones)
    results = []

    def sjoin(df):
        pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(df.x, df.y))
        return gpd.sjoin(pts, polys, predicate="within")

    source = streamz.Stream()
    source.map(sjoin).sink(results.append)
    pfeed = list(_feed(nb * batch, batch))
    c0, t0 = time.process_time(), time.perf_counter()
    for df in pfeed:
        source.emit(df)
    pwall, pcpu_peer = time.perf_counter() - t0, time.process_time() - c0
    same = all(
        set(zip(first[i].point_id, first[i].polygon_id, strict=True))
        == set(zip(results[i].index, results[i]["zone"], strict=True))
        for i in range(nb)
    )
    peer_rate = nb * batch / pwall
    peer_us = pcpu_peer / (nb * batch) * 1e6
    out.append(
        f"  streamz + sjoin(within)      wall {peer_rate / 1e6:5.2f} M points/s  "
        f"({nb} batches, {pwall / nb * 1e3:.0f} ms/batch) | CPU {peer_us:5.3f} us/point | "
        f"matches identical: {same} | dox speedup: wall {npts / wall / peer_rate:5.2f}x, "
        f"CPU {peer_us / (pcpu / npts * 1e6):5.2f}x"
    )
    out.append(f"  uptime at end: {_uptime()}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument(
        "--only",
        default="kmeans,kmeans-4x,geofence,geofence-cluster",
        help="comma-separated: kmeans, kmeans-4x (the 4x-memory run), geofence, "
        "geofence-cluster (the geofence again with a client of 2 process workers, on the "
        "first cluster_points points)",
    )
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    only = set(args.only.split(","))
    valid = {"kmeans", "kmeans-4x", "geofence", "geofence-cluster"}
    if only - valid:
        parser.error(f"--only: unknown {sorted(only - valid)}; valid: {sorted(valid)}")
    print(f"machine: {machine()}")
    print(
        f"command: python benchmarks/bench_analytics.py {' '.join(argv or sys.argv[1:])}".rstrip()
    )
    print(f"uptime: {_uptime()}")
    print()
    with contextlib.ExitStack() as stack:
        client = None
        if only & {"kmeans", "geofence-cluster"}:  # (the 4x run makes its own cluster)
            from distributed import Client, LocalCluster

            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
                )
            )
            client = stack.enter_context(Client(cluster))
        if "kmeans" in only:
            print("\n".join(bench_kmeans(size, client)), end="\n\n", flush=True)
        if "kmeans-4x" in only:
            print("\n".join(bench_kmeans_out_of_core(size)), end="\n\n", flush=True)
        if only & {"geofence", "geofence-cluster"}:
            gc = client if "geofence-cluster" in only else None
            print("\n".join(bench_geofence(size, gc)), end="\n\n", flush=True)
    print(f"uptime: {_uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
