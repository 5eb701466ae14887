"""dox.geofence: equal to shapely's contains, enter/exit events, back-pressure, a worker killed."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from dask_oxigdal.analytics import geofence
from dask_oxigdal.analytics.geofencing import END_OF_STREAM, PolygonIndex
from dask_oxigdal.kernels import pip as _k


def _zones(n=60, seed=0):
    rng = np.random.default_rng(seed)
    polys = []
    for i in range(n):
        cx, cy = rng.uniform(0, 100, 2)
        r = rng.uniform(2, 8)
        ang = np.linspace(0, 2 * np.pi, 10, endpoint=False) + rng.uniform(0, 0.5, 10)
        rr = r * rng.uniform(0.5, 1, 10)
        shell = np.c_[cx + rr * np.cos(ang), cy + rr * np.sin(ang)]
        hole = np.c_[cx + 0.2 * r * np.cos(ang[::-1]), cy + 0.2 * r * np.sin(ang[::-1])]
        p = Polygon(shell, [hole]) if i % 3 == 0 else Polygon(shell)
        if i % 5 == 0:
            p = MultiPolygon(
                [
                    p,
                    Polygon(
                        box(cx + 9, cy + 9, cx + 12, cy + 12).exterior,
                        [
                            [
                                (cx + 10, cy + 10),
                                (cx + 11, cy + 10),
                                (cx + 11, cy + 11),
                                (cx + 10, cy + 11),
                            ]
                        ],
                    ),
                ]
            )
        polys.append(p)
    # axis-aligned shapes: horizontal and vertical edges, shared edges, a touching pair
    polys += [box(0, 0, 10, 10), box(10, 0, 20, 10), box(20, 10, 30, 20)]
    assert shapely.is_valid(polys).all()  # the boundary rule assumes valid polygons
    polys.append(Polygon())  # empty: never matches
    return gpd.GeoSeries(polys, index=[f"zone-{i}" for i in range(len(polys))])


def _adversarial(zones, rng):
    coords = shapely.get_coordinates(zones.values)
    mids = (coords[:-1] + coords[1:]) / 2
    thirds = coords[:-1] + (coords[1:] - coords[:-1]) / 3
    near = np.r_[mids, thirds]
    up = np.nextafter(near, np.inf)
    down = np.nextafter(near, -np.inf)
    grid = np.stack(np.meshgrid(np.arange(0, 31, 2.5), np.arange(-2, 22, 2.5)), -1).reshape(-1, 2)
    return np.r_[
        rng.uniform(-5, 115, (20_000, 2)),
        coords,
        near,
        up,
        down,
        np.c_[up[:, 0], down[:, 1]],
        grid,
        [[np.nan, 1.0], [np.inf, 5.0]],
    ]


def _reference(zones, pts):
    """(row, label) pairs from shapely: polygon contains point."""
    P = shapely.points(pts)
    out = set()
    for label, poly in zones.items():
        if poly.is_empty:
            continue
        hit = np.flatnonzero(shapely.contains(poly, P))
        out.update((int(r), label) for r in hit)
    return out


def test_orientation_is_exact_on_nearly_collinear_points():
    rng = np.random.default_rng(1)
    for _ in range(2000):
        a, b = rng.uniform(-1e3, 1e3, 2), rng.uniform(-1e3, 1e3, 2)
        t = rng.uniform(0, 1)
        q = a + t * (b - a)
        q = np.nextafter(q, rng.choice([-np.inf, np.inf], 2)) if rng.random() < 0.5 else q
        exact = (_frac(a[0]) - _frac(q[0])) * (_frac(b[1]) - _frac(q[1])) - (
            _frac(a[1]) - _frac(q[1])
        ) * (_frac(b[0]) - _frac(q[0]))
        sign = (exact > 0) - (exact < 0)
        assert _k.orientation(a[0], a[1], b[0], b[1], q[0], q[1]) == sign


def _frac(v):
    from fractions import Fraction

    return Fraction(float(v))


def test_matches_equal_shapely_contains_on_random_and_adversarial_points():
    zones = _zones()
    rng = np.random.default_rng(2)
    pts = _adversarial(zones, rng)
    ref = _reference(zones, pts)
    batches = np.array_split(np.arange(pts.shape[0]), 5)
    got = set()
    for rows, res in zip(
        batches,
        geofence((pd.DataFrame({"x": pts[r, 0], "y": pts[r, 1]}) for r in batches), zones),
        strict=True,
    ):
        got.update(
            (int(rows[p]), lab)
            for p, lab in zip(res.matches.point_id, res.matches.polygon_id, strict=True)
        )
        assert res.n_points == rows.size
        assert isinstance(res.cpu, float) and 0.0 <= res.cpu  # the kernel's thread time
        assert list(res.matches.columns) == ["point_id", "polygon_id"]
    assert got == ref
    assert len(ref) > 1000
    # equal to geopandas' sjoin(predicate="within") as well
    sj = gpd.sjoin(
        gpd.GeoDataFrame(geometry=gpd.points_from_xy(pts[:-2, 0], pts[:-2, 1])),
        gpd.GeoDataFrame(geometry=zones),
        predicate="within",
    )
    assert set(zip(sj.index, sj["index_right"], strict=True)) == ref


def test_boundary_rule_on_a_square_with_a_hole():
    sq = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(4, 4), (6, 4), (6, 6), (4, 6)]])
    zones = gpd.GeoSeries([sq], index=[7])
    pts = {
        "inside": (2, 2),
        "edge": (5, 0),
        "vertex": (10, 10),
        "in hole": (5, 5),
        "hole edge": (4, 5),
        "hole vertex": (6, 6),
        "outside": (11, 5),
    }
    df = pd.DataFrame(
        {"id": list(pts), "x": [p[0] for p in pts.values()], "y": [p[1] for p in pts.values()]}
    )
    (res,) = geofence([df], zones)
    assert res.matches.to_dict("list") == {"point_id": ["inside"], "polygon_id": [7]}


def test_arrow_batches_and_geometry_columns_are_accepted():
    zones = _zones(10)
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 100, (5000, 2))
    ref = _reference(zones, pts)
    rb = pa.record_batch({"x": pts[:, 0], "y": pts[:, 1]})
    gdf = gpd.GeoDataFrame(geometry=gpd.points_from_xy(pts[:, 0], pts[:, 1]))
    for batch in (rb, pa.Table.from_batches([rb]), gdf):
        (res,) = geofence([batch], zones)
        assert set(zip(res.matches.point_id, res.matches.polygon_id, strict=True)) == ref
    with pytest.raises(ValueError, match=r"needs columns 'x' and 'y'"):
        list(geofence([pd.DataFrame({"lon": [1.0]})], zones))
    with pytest.raises(ValueError, match="valid choices: Polygon, MultiPolygon"):
        geofence([], gpd.GeoSeries([shapely.Point(0, 0)]))
    with pytest.raises(ValueError, match="max_in_flight must be an integer >= 1, got 0"):
        geofence([], zones, max_in_flight=0)


def _trajectory_reference(zones, frames, by):
    """Events by brute force: each id's set of containing polygons, row after row."""
    state: dict = {}
    out = []
    for df in frames:
        evs = []
        for _, row in df.iterrows():
            p = shapely.Point(row.x, row.y)
            now = {lab for lab, poly in zones.items() if not poly.is_empty and poly.contains(p)}
            before = state.get(row[by], set())
            order = list(zones.index)
            evs += [(row[by], lab, "exit") for lab in sorted(before - now, key=order.index)]
            evs += [(row[by], lab, "enter") for lab in sorted(now - before, key=order.index)]
            state[row[by]] = now
        out.append(evs)
    return out


def test_enter_and_exit_events_over_trajectories_across_batches():
    zones = _zones(60, seed=4)
    rng = np.random.default_rng(5)
    pos = rng.uniform(0, 100, (12, 2))
    frames = []
    for _ in range(6):
        rows = []
        for step in range(4):  # several rows of each vehicle per batch, in time order
            pos = pos + rng.normal(0, 4, pos.shape)
            rows += [(step, rng.random(), f"v{i}", x, y) for i, (x, y) in enumerate(pos)]
        rows.sort(key=lambda r: (r[0], r[1]))  # vehicles interleaved
        frames.append(pd.DataFrame([r[2:] for r in rows], columns=["vehicle", "x", "y"]))
    ref = _trajectory_reference(zones, frames, "vehicle")
    got = [
        list(b.events.itertuples(index=False, name=None))
        for b in geofence(frames, zones, by="vehicle", max_in_flight=2)
    ]
    assert got == ref
    assert sum(len(e) for e in ref) > 15
    assert {k for e in ref for _, _, k in e} == {"enter", "exit"}


def test_slow_consumer_bounds_the_batches_in_flight_and_drops_nothing():
    zones = _zones(10)
    pulled = []
    consumed = []

    def source():
        for i in range(20):
            pulled.append(i)
            assert len(pulled) - len(consumed) <= 3, (len(pulled), len(consumed))
            yield pd.DataFrame({"id": [i], "x": [5.0], "y": [5.0]})

    stream = geofence(source(), zones, max_in_flight=3)
    for b in stream:
        time.sleep(0.01)  # a slow sink
        consumed.append(b.seq)
    assert consumed == list(range(20)) and pulled == list(range(20))
    assert stream.max_pending == 3


def test_async_iterator_and_streamz_sources():
    streamz = pytest.importorskip("streamz")
    zones = gpd.GeoSeries([box(0, 0, 10, 10)], index=["a"])

    async def agen():
        for i in range(5):
            await asyncio.sleep(0)
            yield pd.DataFrame({"id": [i], "x": [5.0 + 10 * (i % 2)], "y": [5.0]})

    res = list(geofence(agen(), zones))
    assert [len(b.matches) for b in res] == [1, 0, 1, 0, 1]

    source = streamz.Stream()
    emitted = []

    def emit():
        for i in range(30):
            source.emit(pd.DataFrame({"id": ["car"], "x": [5.0 if i % 3 else 50.0], "y": [5.0]}))
            emitted.append(i)
        source.emit(END_OF_STREAM)

    it = geofence(source, zones, max_in_flight=2)
    t = threading.Thread(target=emit)
    t.start()
    kinds = []
    for b in it:
        # the emitter is held back: at most the in-flight batches plus one queued
        assert len(emitted) <= b.seq + 1 + 2 + 1 + 1
        time.sleep(0.005)
        kinds += b.events.kind.tolist()
    t.join(30)
    assert len(emitted) == 30
    # car: out (i=0), in (1, 2), out (3), in ... -> enter/exit alternate
    assert kinds == ["enter", "exit"] * 9 + ["enter"]


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def test_on_a_cluster_a_killed_worker_loses_no_batch():
    from distributed import Client, LocalCluster

    zones = _zones(80, seed=6)
    rng = np.random.default_rng(7)
    frames = [
        pd.DataFrame({"x": p[:, 0], "y": p[:, 1]})
        for p in (rng.uniform(-5, 115, (3000, 2)) for _ in range(24))
    ]
    local = [b.matches for b in geofence(frames, zones)]
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cl,
        Client(cl) as client,
    ):
        victim = sorted(client.scheduler_info()["workers"])[0]
        pid = client.run(os.getpid, workers=[victim])[victim]

        def feed():
            for i, f in enumerate(frames):
                if i == 8:
                    os.kill(pid, signal.SIGKILL)
                yield f

        got = [b.matches for b in geofence(feed(), zones, client=client, max_in_flight=4)]
    assert len(got) == len(frames)
    for a, b in zip(got, local, strict=True):
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    assert sum(len(m) for m in got) > 100


def test_polygon_index_pickles_and_splits_by_position():
    import pickle

    zones = _zones(20)
    idx = PolygonIndex.from_geometries(zones.values[5:], np.arange(5, len(zones)))
    idx2 = pickle.loads(pickle.dumps(idx))
    pts = np.random.default_rng(8).uniform(0, 100, (2000, 2))
    r, g = idx2.query(pts[:, 0], pts[:, 1])
    ref = {
        (row, pos)
        for row, pos in (
            (int(row), zones.index.get_loc(lab)) for row, lab in _reference(zones.iloc[5:], pts)
        )
    }
    assert set(zip(r.tolist(), g.tolist(), strict=True)) == ref


def test_in_loop_emits_keep_their_order_and_wait_for_room():
    streamz = pytest.importorskip("streamz")
    zones = gpd.GeoSeries([box(0, 0, 10, 10)], index=["a"])
    made, attached = threading.Event(), threading.Event()
    holder: dict = {}
    emitted: list = []

    def frame(i):
        return pd.DataFrame({"id": [i], "x": [5.0], "y": [5.0]})

    async def emitter():
        source = streamz.Stream(asynchronous=True)
        holder["source"] = source
        made.set()
        await asyncio.get_running_loop().run_in_executor(None, attached.wait)
        # overlapping emits (not awaited one by one) must arrive in the order made
        await asyncio.gather(*[source.emit(frame(i)) for i in range(10)])
        for i in range(10, 20):
            await source.emit(frame(i))
            emitted.append(i)
        await source.emit(END_OF_STREAM)

    t = threading.Thread(target=asyncio.run, args=(emitter(),))
    t.start()
    assert made.wait(30)
    it = geofence(holder["source"], zones, max_in_flight=2)
    attached.set()
    got = []
    for b in it:
        # an awaited emit returns only once the pipeline has room: 2 in flight + 1 queued
        assert max(emitted, default=0) <= max(b.seq + 4, 10)
        time.sleep(0.005)
        got.append(int(b.matches.point_id.iloc[0]))
    t.join(30)
    assert got == list(range(20)) and emitted == list(range(10, 20))


def test_classified_grid_cells_equal_shapely_far_from_the_origin():
    # big polygons with holes over many cells (cells wholly inside are classified, not
    # tested), points on the cell lines and at cell corners, coordinates near 1e6
    rng = np.random.default_rng(11)
    off = 1e6
    shell = [(off, off), (off + 50, off + 3), (off + 47, off + 40), (off + 5, off + 52)]
    hole = [(off + 20, off + 20), (off + 20, off + 30), (off + 30, off + 30), (off + 30, off + 20)]
    zones = gpd.GeoSeries(
        [Polygon(shell, [hole]), box(off + 10, off + 10, off + 35.5, off + 35.5)]
        + [
            Polygon(np.c_[off + c[0] + 3 * np.cos(a), off + c[1] + 3 * np.sin(a)])
            for c, a in zip(rng.uniform(0, 60, (40, 2)), [np.linspace(0, 6.2, 9)] * 40, strict=True)
        ]
    )
    idx = PolygonIndex.from_geometries(zones.values)
    assert (idx.items < 0).sum() > 20 and (idx.items >= 0).sum() > 20
    x0, y0, cell, nx, ny = idx.grid
    lines_x = x0 + np.arange(nx + 1) * cell
    lines_y = y0 + np.arange(ny + 1) * cell
    corners = np.stack(np.meshgrid(lines_x, lines_y), -1).reshape(-1, 2)
    on_x = np.c_[np.repeat(lines_x, 20), rng.uniform(y0, y0 + ny * cell, 20 * (nx + 1))]
    on_y = np.c_[rng.uniform(x0, x0 + nx * cell, 20 * (ny + 1)), np.repeat(lines_y, 20)]
    pts = np.r_[rng.uniform(off - 5, off + 65, (20_000, 2)), corners, on_x, on_y]
    pts = np.r_[pts, np.nextafter(pts, np.inf), np.nextafter(pts, -np.inf)]
    r, g = idx.query(pts[:, 0], pts[:, 1])
    ref = {(row, zones.index.get_loc(lab)) for row, lab in _reference(zones, pts)}
    assert set(zip(r.tolist(), g.tolist(), strict=True)) == ref
    assert np.all(np.diff(r) >= 0)  # by row, then polygon
    same_row = np.diff(r) == 0
    assert np.all(np.diff(g)[same_row] > 0)


def test_banded_locate_equals_the_reference_ring_walk():
    from dask_oxigdal.kernels import pip_index as _ki

    zones = _zones(30, seed=12)
    idx = PolygonIndex.from_geometries(zones.values)
    rng = np.random.default_rng(13)
    pts = _adversarial(zones, rng)[:-2]
    for p in range(len(zones) - 1):
        b = idx.bounds[p]
        near = pts[(pts[:, 0] >= b[0]) & (pts[:, 0] <= b[2])][:300]
        for x, y in near:
            a = _k.locate(x, y, p, idx.poly_ring_start, idx.ring_start, idx.xs, idx.ys)
            assert a == _ki.locate_banded(
                x, y, p, idx.bounds, idx.band_off, idx.band_scale, idx.band_starts, idx.seg
            )


def test_one_polygon_with_many_vertices_equals_shapely():
    # one wiggly ring of 20,000 vertices with a hole: many bands, more cells than polygons
    rng = np.random.default_rng(14)
    a = np.linspace(0, 2 * np.pi, 20_000, endpoint=False)
    r = 50 + 5 * np.sin(37 * a) + rng.uniform(0, 0.5, a.size)
    shell = np.c_[r * np.cos(a), r * np.sin(a)]
    poly = Polygon(shell, [np.c_[10 * np.cos(a[::-50]), 10 * np.sin(a[::-50])]])
    assert poly.is_valid
    idx = PolygonIndex.from_geometries(np.array([poly], dtype=object))
    assert idx.band_off[1] > 1000 and idx.grid[3] * idx.grid[4] >= 10_000
    pts = np.r_[rng.uniform(-60, 60, (30_000, 2)), shell[::3], (shell[:-1:3] + shell[1::3]) / 2]
    r_, g = idx.query(pts[:, 0], pts[:, 1])
    shapely.prepare(poly)
    np.testing.assert_array_equal(r_, np.flatnonzero(shapely.contains(poly, shapely.points(pts))))
    assert (g == 0).all() and r_.size > 10_000


def test_default_in_flight_is_the_cpu_count_without_a_client():
    zones = gpd.GeoSeries([box(0, 0, 10, 10)])
    frames = [pd.DataFrame({"x": [5.0], "y": [5.0]}) for _ in range(40)]
    stream = geofence(frames, zones)
    assert [len(b.matches) for b in stream] == [1] * 40
    assert stream.max_pending == min(40, max(os.cpu_count() or 1, 2))
    with pytest.raises(ValueError, match=r"max_in_flight must be an integer >= 1, got 1\.5"):
        geofence(frames, zones, max_in_flight=1.5)
