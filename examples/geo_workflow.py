"""A geopandas workflow on Dask: Natural Earth -> spatial join -> kNN -> NDVI tiles with locality.

Run it as a script: ``python examples/geo_workflow.py`` (the test suite runs
it, tests/test_examples.py). It needs no download. The Natural Earth low-res countries ship with pyogrio's test fixtures.

1. Read the countries and spatially shuffle them along a Hilbert curve with
   ``dox.spatial_shuffle``. The result gets ``spatial_partitions``.
2. Make points inside and around the countries, shuffle them the same way,
   and ``dask_geopandas.sjoin`` them. Only partition pairs whose boxes meet
   are joined. Check the result against ``geopandas.sjoin``.
3. ``dox.knn``: the 3 nearest boundary vertices of a few cities, exactly as
   a single-machine ``cKDTree`` finds them.
4. NDVI over 16 tiles, three passes, on 4 workers. Each task loads its tile
   through ``dox.cached`` and is annotated ``locality=tile``. The Locality
   policy runs passes 2 and 3 where the tiles are cached.
"""

from __future__ import annotations

import time
from pathlib import Path

import dask
import dask_geopandas
import geopandas
import numpy as np
import pyogrio
import shapely
from distributed import Client, LocalCluster
from scipy.spatial import cKDTree

import dask_oxigdal as dox

NATURAL_EARTH = (
    Path(pyogrio.__file__).parent
    / "tests"
    / "fixtures"
    / "naturalearth_lowres"
    / "naturalearth_lowres.shp"
)


def load_tile(tile: int) -> dict[str, np.ndarray]:
    """Stand-in for reading a 256 x 256 scene tile from object storage (~100 ms)."""
    time.sleep(0.1)
    rng = np.random.default_rng(tile)
    return {
        "nir": rng.uniform(0.2, 0.6, (256, 256)).astype(np.float32),
        "red": rng.uniform(0.05, 0.3, (256, 256)).astype(np.float32),
    }


def tile_ndvi(tile: int) -> tuple[int, float, bool]:
    """Mean NDVI of one tile, from this worker's cache when the tile is there."""
    from dask_oxigdal.cache import worker_cache

    was_cached = f"tile/{tile}" in worker_cache()
    bands = dox.cached(f"tile/{tile}", lambda: load_tile(tile))
    return tile, float(dox.ndvi(bands["nir"], bands["red"]).mean()), was_cached


def main() -> None:
    """Run the four steps and print what each one found."""
    with (
        LocalCluster(
            n_workers=4,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        dox.register(client)

        # 1. Natural Earth countries, Hilbert-partitioned
        countries = geopandas.read_file(NATURAL_EARTH)
        gcountries = dask_geopandas.from_geopandas(countries, npartitions=4)
        by_curve = dox.spatial_shuffle(gcountries, by="hilbert", npartitions=8)
        sizes = by_curve.map_partitions(len).compute().tolist()
        print(f"countries: {len(countries)} in 8 Hilbert partitions of sizes {sizes}")

        # 2. A spatially partitioned join
        rng = np.random.default_rng(0)
        points = geopandas.GeoDataFrame(
            {"pid": np.arange(5000)},
            geometry=geopandas.points_from_xy(
                rng.uniform(-180, 180, 5000), rng.uniform(-60, 80, 5000)
            ),
            crs=countries.crs,
        )
        gpoints = dox.spatial_shuffle(
            dask_geopandas.from_geopandas(points, npartitions=4), npartitions=6
        )
        joined = dask_geopandas.sjoin(gpoints, by_curve, predicate="within")
        print(
            f"sjoin: {joined.npartitions} partition pairs joined out of "
            f"{gpoints.npartitions * by_curve.npartitions}"
        )
        got = joined.compute()
        want = geopandas.sjoin(points, countries, predicate="within")
        same = sorted(zip(got.pid, got.name, strict=True)) == sorted(
            zip(want.pid, want.name, strict=True)
        )
        print(f"sjoin: {len(got)} points on land; equal to geopandas.sjoin: {same}")

        # 3. Exact kNN: the boundary vertices nearest to a few cities
        xy = shapely.get_coordinates(countries.geometry.to_numpy())
        vertices = geopandas.GeoDataFrame(geometry=geopandas.points_from_xy(xy[:, 0], xy[:, 1]))
        gvertices = dox.spatial_shuffle(
            dask_geopandas.from_geopandas(vertices, npartitions=4), npartitions=8
        )
        cities = {"Paris": (2.35, 48.86), "Nairobi": (36.82, -1.29), "Lima": (-77.04, -12.05)}
        queries = np.array(list(cities.values()))
        dist, idx, stats = dox.knn(gvertices, queries, 3, return_stats=True)
        # dox.knn's indices count rows through the partitions in order
        ordered = np.concatenate(
            [part.get_coordinates().to_numpy() for part in dask.compute(*gvertices.to_delayed())]
        )
        ref, _ = cKDTree(ordered).query(queries, 3)
        for (name, _), d, i in zip(cities.items(), dist, idx, strict=True):
            nearest = np.round(ordered[i[0]], 2).tolist()
            print(
                f"kNN: {name}: nearest boundary vertex {nearest}, the 3 nearest at "
                f"{np.round(d, 3).tolist()} degrees"
            )
        print(
            f"kNN: equal to cKDTree: {bool((dist == ref).all())}; pruning ratio "
            f"{stats['pruning_ratio']:.2f}"
        )

        # 4. NDVI tile passes with the Locality policy
        for npass in range(1, 4):
            t0 = time.perf_counter()
            futures = []
            for tile in range(16):
                with dox.annotate(locality=f"tile/{tile}"):
                    futures.append(client.submit(tile_ndvi, tile, pure=False))
            results = client.gather(futures)
            hits = sum(cached for _, _, cached in results)
            print(
                f"NDVI pass {npass}: {time.perf_counter() - t0:.2f} s, "
                f"{hits}/16 tiles from the worker cache, mean NDVI "
                f"{np.mean([r[1] for r in results]):.3f}"
            )
        locality = dox.status(client)["policies"]["Locality"]
        print(
            f"Locality policy: hits={locality['hits']} misses={locality['misses']} "
            f"waits={locality['waits']}"
        )
        for worker, counters in locality["cache"].items():
            print(
                f"  cache of {worker}: hits={counters['hits']} misses={counters['misses']} "
                f"evictions={counters['evictions']}"
            )


if __name__ == "__main__":
    main()
