"""Streaming geofencing: vehicles entering and leaving zones, with ``dox.geofence``.

Run it as a script: ``python examples/geofencing.py [--vehicles 200] [--steps 60]``
(the test suite runs it, tests/test_examples.py). It needs no download.

1. Make 300 zones (star-shaped polygons, some with holes, some two-part
   multipolygons) over a 100 x 100 km square, as a GeoDataFrame indexed by
   zone name.
2. Make a feed of vehicle positions (random walks), one pandas batch per
   time step, with a ``vehicle`` id column; the feed is a generator, read
   only as fast as the results are consumed (``max_in_flight=4``).
3. ``for batch in dox.geofence(feed, zones, by="vehicle")``: print a few
   enter/exit events, count them, and check every batch's matches against
   ``geopandas.sjoin(predicate="within")``.
"""

from __future__ import annotations

import argparse

import geopandas as gpd
import numpy as np
import pandas as pd
from shapely.geometry import MultiPolygon, Polygon

from dask_oxigdal.analytics import geofence


def zones(n: int = 300, seed: int = 0) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    polys = []
    for i in range(n):
        cx, cy = rng.uniform(0, 100_000, 2)
        r = rng.uniform(1_000, 4_000)
        ang = np.linspace(0, 2 * np.pi, 16, endpoint=False) + rng.uniform(0, 0.3, 16)
        rr = r * rng.uniform(0.6, 1.0, 16)
        shell = np.c_[cx + rr * np.cos(ang), cy + rr * np.sin(ang)]
        holes = (
            [np.c_[cx + 0.3 * r * np.cos(ang[::-1]), cy + 0.3 * r * np.sin(ang[::-1])]]
            if i % 3 == 0
            else []
        )
        p = Polygon(shell, holes)
        if i % 5 == 0:
            p = MultiPolygon([p, Polygon(shell * 0.2 + [0.8 * cx + 2.5 * r, 0.8 * cy + 2.5 * r])])
        polys.append(p)
    return gpd.GeoDataFrame(
        {"kind": ["depot", "school", "park"] * (n // 3)},
        geometry=polys,
        index=pd.Index([f"zone-{i}" for i in range(n)], name="zone"),
    )


def feed(vehicles: int, steps: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 100_000, (vehicles, 2))
    for _ in range(steps):
        pos = pos + rng.normal(0, 700, pos.shape)
        yield pd.DataFrame(
            {"vehicle": [f"truck-{i}" for i in range(vehicles)], "x": pos[:, 0], "y": pos[:, 1]}
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=200)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    z = zones()
    kinds = {"enter": 0, "exit": 0}
    equal = True
    shown = 0
    for batch, frame in zip(
        geofence(feed(args.vehicles, args.steps), z, by="vehicle", max_in_flight=4),
        feed(args.vehicles, args.steps),
        strict=True,
    ):
        for ev in batch.events.itertuples(index=False):
            kinds[ev.kind] += 1
            if shown < 5:
                print(f"step {batch.seq}: {ev.point_id} {ev.kind}s {ev.polygon_id}")
                shown += 1
        pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(frame.x, frame.y))
        sj = gpd.sjoin(pts, z[["geometry"]], predicate="within")
        equal &= set(zip(sj.index, sj["zone"], strict=True)) == set(
            zip(batch.matches.point_id, batch.matches.polygon_id, strict=True)
        )
    print(f"events: {kinds['enter']} enter, {kinds['exit']} exit over {args.steps} batches")
    print(f"matches equal to geopandas.sjoin(within): {equal}")


if __name__ == "__main__":
    main()
