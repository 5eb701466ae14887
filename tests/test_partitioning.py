"""SpatialExtent, TilePartitioner, StripPartitioner and LoadBalancedPartitioner."""

from __future__ import annotations

import dataclasses
import itertools
import math

import dask.config
import geopandas as gpd
import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_oxigdal.kernels import tiles as ktiles
from dask_oxigdal.partitioning import (
    LoadBalancedPartitioner,
    SpatialExtent,
    StripPartitioner,
    TilePartitioner,
)

SETTINGS = settings(max_examples=60, deadline=None)


# ---------------------------------------------------------------- references


def ref_edges(lo: float, hi: float, n: int) -> np.ndarray:
    """Plain numpy edges: the documented formula, last edge exactly ``hi``."""
    e = lo + (hi - lo) * np.arange(n, dtype=np.float64) / n
    return np.append(e, hi)


def ref_grid_bounds(xe: np.ndarray, ye: np.ndarray) -> np.ndarray:
    """Row-major bounds from a meshgrid of the edges (row 0 at miny)."""
    x0, y0 = np.meshgrid(xe[:-1], ye[:-1])
    x1, y1 = np.meshgrid(xe[1:], ye[1:])
    return np.stack([x0.ravel(), y0.ravel(), x1.ravel(), y1.ravel()], axis=1)


def ref_cell(v: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Half-open cells, last one closed; -1 outside or NaN."""
    n = e.shape[0] - 1
    i = np.searchsorted(e, v, side="right") - 1
    i = np.where(v == e[-1], n - 1, i)
    return np.where((v >= e[0]) & (v <= e[-1]), i, -1)


def ref_assign(x, y, xe, ye):
    ix, iy = ref_cell(x, xe), ref_cell(y, ye)
    return np.where((ix < 0) | (iy < 0), -1, iy * (xe.shape[0] - 1) + ix)


extents = st.tuples(
    st.floats(-1e6, 1e6),
    st.floats(-1e6, 1e6),
    st.floats(1e-3, 1e6),
    st.floats(1e-3, 1e6),
).map(lambda t: SpatialExtent(t[0], t[1], t[0] + t[2], t[1] + t[3]))


# ---------------------------------------------------------------- SpatialExtent


class TestSpatialExtent:
    def test_properties(self):
        e = SpatialExtent(0, -1, 10, 4)
        assert (e.width, e.height, e.area) == (10.0, 5.0, 50.0)
        assert e.bounds == (0.0, -1.0, 10.0, 4.0)
        assert e.center == (5.0, 1.5)
        assert all(isinstance(v, float) for v in e.bounds)

    def test_frozen_and_hashable(self):
        e = SpatialExtent(0, 0, 1, 1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            e.minx = 5  # type: ignore[misc]
        assert e == SpatialExtent(0.0, 0.0, 1.0, 1.0)
        assert hash(e) == hash(SpatialExtent(0.0, 0.0, 1.0, 1.0))
        assert len({e, SpatialExtent(0.0, 0, 1, 1), SpatialExtent(0, 0, 2, 1)}) == 2

    @pytest.mark.parametrize(
        "bounds",
        [
            (0, 0, 0, 1),
            (0, 0, 1, 0),
            (1, 0, 0, 1),
            (0, 1, 1, 0),
            (math.nan, 0, 1, 1),
            (0, 0, math.inf, 1),
            (-math.inf, 0, 1, 1),
            (-1e308, 0, 1e308, 1),  # width overflows
        ],
    )
    def test_invalid_values(self, bounds):
        with pytest.raises(ValueError, match="minx=") as info:
            SpatialExtent(*bounds)
        assert repr(float(bounds[0])) in str(info.value)

    @pytest.mark.parametrize("bad", ["0", None, True, 1 + 2j, [0]])
    def test_invalid_types(self, bad):
        with pytest.raises(TypeError, match="minx must be a real number"):
            SpatialExtent(bad, 0, 1, 1)

    def test_numpy_scalars(self):
        e = SpatialExtent(np.float32(0.5), np.int64(0), np.float64(2), 3)
        assert e.bounds == (0.5, 0.0, 2.0, 3.0)

    def test_from_bounds(self):
        e = SpatialExtent(1, 2, 3, 4)
        assert SpatialExtent.from_bounds([1, 2, 3, 4]) == e
        assert SpatialExtent.from_bounds(np.array([1.0, 2, 3, 4])) == e
        assert SpatialExtent.from_bounds(iter((1, 2, 3, 4))) == e
        assert SpatialExtent.from_bounds(e) is e
        with pytest.raises(ValueError, match="4 values"):
            SpatialExtent.from_bounds([1, 2, 3])
        with pytest.raises(TypeError, match="sequence"):
            SpatialExtent.from_bounds(5)

    def test_predicates(self):
        e = SpatialExtent(0, 0, 10, 10)
        assert e.contains(SpatialExtent(0, 0, 10, 10))
        assert e.contains((2, 2, 3, 3))
        assert not e.contains((2, 2, 11, 3))
        assert e.intersects((10, 10, 20, 20))  # touching corner counts
        assert not e.intersects((10.5, 0, 20, 20))
        assert e.intersection((5, 5, 20, 20)) == SpatialExtent(5, 5, 10, 10)
        assert e.intersection((10, 0, 20, 20)) is None  # no area
        assert e.union((5, -5, 20, 5)) == SpatialExtent(0, -5, 20, 10)
        assert e.contains_xy(10, 10) is True
        assert e.contains_xy(10.0001, 10) is False
        np.testing.assert_array_equal(
            e.contains_xy([0, 5, np.nan, -1], [0, 5, 5, 5]), [True, True, False, False]
        )
        assert e.to_box().equals(shapely.box(0, 0, 10, 10))

    def test_from_geometries(self):
        geoms = [shapely.Point(0, 1), shapely.box(2, 3, 4, 5), None, shapely.Polygon()]
        expected = SpatialExtent(0, 1, 4, 5)
        assert SpatialExtent.from_geometries(geoms) == expected
        gs = gpd.GeoSeries(geoms)
        assert SpatialExtent.from_geometries(gs) == expected
        assert SpatialExtent.from_geometries(gpd.GeoDataFrame(geometry=gs)) == expected
        assert SpatialExtent.from_geometries(np.array(geoms, dtype=object)) == expected
        assert SpatialExtent.from_geometries(gs.values) == expected

    def test_from_geometries_invalid(self):
        with pytest.raises(ValueError, match="zero geometries"):
            SpatialExtent.from_geometries([])
        with pytest.raises(ValueError, match="all are empty or missing"):
            SpatialExtent.from_geometries([None, shapely.Point()])
        with pytest.raises(ValueError, match="minx < maxx"):
            SpatialExtent.from_geometries([shapely.Point(1, 1)])
        with pytest.raises(TypeError, match="geometries"):
            SpatialExtent.from_geometries(np.zeros(3))

    def test_from_geometries_refuses_dask(self):
        import dask_geopandas

        gs = gpd.GeoSeries([shapely.Point(0, 0), shapely.Point(1, 1)])
        with pytest.raises(TypeError, match="Dask collection"):
            SpatialExtent.from_geometries(dask_geopandas.from_geopandas(gs, npartitions=1))

    def test_from_xy(self):
        assert SpatialExtent.from_xy([0, 3, 1], [5, -1, 2]) == SpatialExtent(0, -1, 3, 5)
        with pytest.raises(ValueError, match="NaN"):
            SpatialExtent.from_xy([0, np.nan], [0, 1])
        with pytest.raises(ValueError, match="zero points"):
            SpatialExtent.from_xy([], [])
        with pytest.raises(ValueError, match="same length"):
            SpatialExtent.from_xy([0, 1], [0])


# ---------------------------------------------------------------- tiles


def check_tiling(tp: TilePartitioner) -> None:
    """Exact cover: shared bit-identical edges, area, bounds vs a numpy reference."""
    part = tp.partition()
    nx, ny = tp.nx, tp.ny
    e = tp.extent
    assert len(part) == nx * ny == tp.npartitions
    assert part.ids.dtype == np.int64 and part.bounds.dtype == np.float64
    assert part.bounds.shape == (nx * ny, 4)
    np.testing.assert_array_equal(part.ids, np.arange(nx * ny))
    xe, ye = part.x_edges, part.y_edges
    np.testing.assert_array_equal(xe, ref_edges(e.minx, e.maxx, nx))
    np.testing.assert_array_equal(ye, ref_edges(e.miny, e.maxy, ny))
    assert xe[0] == e.minx and xe[-1] == e.maxx and ye[0] == e.miny and ye[-1] == e.maxy
    assert (np.diff(xe) > 0).all() and (np.diff(ye) > 0).all()
    np.testing.assert_array_equal(part.bounds, ref_grid_bounds(xe, ye))
    b = part.bounds.reshape(ny, nx, 4)
    # neighbours share bit-identical edges: no gap, no overlap
    np.testing.assert_array_equal(b[:, 1:, 0], b[:, :-1, 2])
    np.testing.assert_array_equal(b[1:, :, 1], b[:-1, :, 3])
    np.testing.assert_array_equal(b[:, 0, 0], e.minx)
    np.testing.assert_array_equal(b[:, -1, 2], e.maxx)
    np.testing.assert_array_equal(b[0, :, 1], e.miny)
    np.testing.assert_array_equal(b[-1, :, 3], e.maxy)
    area = ((part.bounds[:, 2] - part.bounds[:, 0]) * (part.bounds[:, 3] - part.bounds[:, 1])).sum()
    assert math.isclose(area, e.area, rel_tol=1e-9)


@SETTINGS
@given(extents, st.integers(1, 40), st.integers(1, 40))
def test_tiles_cover_extent_exactly(extent, nx, ny):
    check_tiling(TilePartitioner(extent, nx, ny))


@pytest.mark.parametrize("nx,ny", [(1, 1), (3, 2), (4, 4), (1, 5)])
def test_tiles_pairwise_interior_disjoint(nx, ny):
    part = TilePartitioner((-3.3, 1.7, 11.1, 9.9), nx, ny).partition()
    b = part.bounds
    for i, j in itertools.combinations(range(len(part)), 2):
        w = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
        h = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
        assert w <= 0 or h <= 0, (i, j)
    boxes = part.boxes()
    union = shapely.union_all(boxes)
    assert math.isclose(union.area, part.extent.area, rel_tol=1e-12)
    assert union.equals(part.extent.to_box())


def test_tile_layout_is_row_major_from_south_west():
    part = TilePartitioner((0, 0, 4, 2), 4, 2).partition()
    assert part.bounds[0].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert part.bounds[3].tolist() == [3.0, 0.0, 4.0, 1.0]
    assert part.bounds[4].tolist() == [0.0, 1.0, 1.0, 2.0]
    assert part.tile_index(5) == (1, 1)
    with pytest.raises(ValueError, match="between 0 and 7"):
        part.tile_index(8)


def test_partition_arrays_are_read_only():
    part = TilePartitioner((0, 0, 1, 1), 2, 2).partition()
    for a in (part.ids, part.bounds, part.x_edges, part.y_edges):
        with pytest.raises(ValueError, match="read-only"):
            a[0] = 1


@SETTINGS
@given(extents, st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_assign_matches_reference(extent, nx, ny, seed):
    tp = TilePartitioner(extent, nx, ny)
    rng = np.random.default_rng(seed)
    e = extent
    x = rng.uniform(e.minx - 0.1 * e.width, e.maxx + 0.1 * e.width, 300)
    y = rng.uniform(e.miny - 0.1 * e.height, e.maxy + 0.1 * e.height, 300)
    # points exactly on edges and corners, and on the max edges
    x[: nx + 1] = tp.x_edges
    y[: ny + 1] = tp.y_edges
    x[-4:] = [e.maxx, e.maxx, e.minx, np.nan]
    y[-4:] = [e.maxy, e.miny, e.maxy, e.miny]
    ids = tp.assign(x, y)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, ref_assign(x, y, tp.x_edges, tp.y_edges))
    inside = e.contains_xy(x, y)
    assert ((ids >= 0) == inside).all()


def test_each_point_in_exactly_one_tile():
    tp = TilePartitioner((0.1, -7.3, 9.7, 3.3), 7, 5)
    part = tp.partition()
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0.1, 9.7, 500), part.x_edges, np.full(6, 9.7)])
    y = np.concatenate([rng.uniform(-7.3, 3.3, 500), np.full(8, 3.3), part.y_edges])
    ids = tp.assign(x, y)
    b = part.bounds
    last_x = b[:, 2] == tp.extent.maxx
    last_y = b[:, 3] == tp.extent.maxy
    in_x = (b[:, 0] <= x[:, None]) & ((x[:, None] < b[:, 2]) | (last_x & (x[:, None] == b[:, 2])))
    in_y = (b[:, 1] <= y[:, None]) & ((y[:, None] < b[:, 3]) | (last_y & (y[:, None] == b[:, 3])))
    member = in_x & in_y
    assert (member.sum(axis=1) == 1).all()
    np.testing.assert_array_equal(ids, member.argmax(axis=1))


def test_assign_outside_and_nan_is_minus_one():
    tp = TilePartitioner((0, 0, 1, 1), 2, 2)
    ids = tp.assign([-0.1, 1.1, 0.5, np.nan, 0.5, np.inf], [0.5, 0.5, -1e-300, 0.5, np.nan, 0.5])
    np.testing.assert_array_equal(ids, -1)
    assert tp.assign([], []).shape == (0,)
    with pytest.raises(ValueError, match="same length"):
        tp.assign([0.1, 0.2], [0.1])


def test_assign_accepts_coordinates_and_geometries():
    tp = TilePartitioner((0, 0, 4, 4), 4, 4)
    xy = np.array([[0.5, 0.5], [3.5, 3.9], [4.0, 4.0]])
    expected = tp.assign(xy[:, 0], xy[:, 1])
    np.testing.assert_array_equal(expected, [0, 15, 15])
    np.testing.assert_array_equal(tp.assign(xy), expected)
    np.testing.assert_array_equal(tp.partition_points(xy), expected)
    geoms = [shapely.box(0, 0, 1, 1), shapely.Point(3.5, 3.9), None, shapely.Point()]
    # geometries: midpoint of the bounds; empty / missing -> -1
    np.testing.assert_array_equal(tp.assign(gpd.GeoSeries(geoms)), [0, 15, -1, -1])
    with pytest.raises(TypeError, match="no y"):
        tp.assign(np.zeros((3, 3)))


def test_parallel_assign_matches_serial():
    tp = TilePartitioner((0, 0, 10, 10), 13, 7)
    rng = np.random.default_rng(2)
    x, y = rng.uniform(-1, 11, 100_000), rng.uniform(-1, 11, 100_000)
    serial = np.empty(x.shape[0], dtype=np.int64)
    ktiles.assign_points(x, y, tp.x_edges, tp.y_edges, serial)
    parallel = np.empty_like(serial)
    ktiles.assign_points_parallel(x, y, tp.x_edges, tp.y_edges, parallel)
    np.testing.assert_array_equal(serial, parallel)
    with dask.config.set({"oxigdal.kernels.parallel-min-elements": 1}):
        np.testing.assert_array_equal(tp.assign(x, y), serial)
    np.testing.assert_array_equal(serial, ref_assign(x, y, tp.x_edges, tp.y_edges))


def test_single_tile_and_everything_on_one_point():
    tp = TilePartitioner((0, 0, 1, 1), 1, 1)
    check_tiling(tp)
    np.testing.assert_array_equal(tp.assign([1.0] * 5, [1.0] * 5), 0)
    tp = TilePartitioner((0, 0, 1, 1), 3, 3)
    np.testing.assert_array_equal(tp.assign(np.full(10, 1.0), np.full(10, 0.0)), 2)


def test_huge_grids():
    tp = TilePartitioner((0, 0, 1, 1), 2**20, 2**20)
    assert tp.npartitions == 2**40
    ids = tp.assign([0.0, 1.0, 0.5], [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(ids, [0, 2**40 - 1, 2**19 * 2**20 + 2**19])
    with pytest.raises(ValueError, match="max_tiles"):
        tp.partition()
    check_tiling(TilePartitioner((0, 0, 1, 1), 100_000, 1))
    with pytest.raises(ValueError, match="between 1 and"):
        TilePartitioner((0, 0, 1, 1), 2**24 + 1, 1)


def test_grid_too_fine_for_float64():
    with pytest.raises(ValueError, match="too fine"):
        TilePartitioner((1e15, 0, 1e15 + 1, 1), 100, 1)
    with pytest.raises(ValueError, match="too fine"):
        TilePartitioner((0, 0, 1, 5e-324 * 4), 1, 8)


@pytest.mark.parametrize("bad", [0, -3])
def test_tile_counts_validated(bad):
    with pytest.raises(ValueError, match=f"nx must be between 1 and .*; got {bad}"):
        TilePartitioner((0, 0, 1, 1), bad, 1)


@pytest.mark.parametrize("bad", [1.0, "2", True, None])
def test_tile_count_types(bad):
    with pytest.raises(TypeError, match="ny must be an int"):
        TilePartitioner((0, 0, 1, 1), 1, bad)


def test_tile_extent_validated():
    with pytest.raises(ValueError, match="minx < maxx"):
        TilePartitioner((1, 0, 0, 1), 1, 1)
    with pytest.raises(TypeError, match="extent must be"):
        TilePartitioner(3, 1, 1)


# ---------------------------------------------------------------- strips


@pytest.mark.parametrize("axis", ["x", "y"])
def test_strips(axis):
    e = SpatialExtent(-2, 3, 8, 4)
    sp = StripPartitioner(e, 5, axis=axis)
    part = sp.partition()
    assert len(part) == sp.npartitions == 5
    grid = TilePartitioner(e, 5, 1) if axis == "x" else TilePartitioner(e, 1, 5)
    check_tiling(grid)
    np.testing.assert_array_equal(part.bounds, grid.partition().bounds)
    lo, hi = (e.minx, e.maxx) if axis == "x" else (e.miny, e.maxy)
    np.testing.assert_array_equal(sp.edges, ref_edges(lo, hi, 5))
    rng = np.random.default_rng(3)
    x, y = rng.uniform(-3, 9, 400), rng.uniform(2.5, 4.5, 400)
    ids = sp.assign(x, y)
    along = x if axis == "x" else y
    expected = np.where(e.contains_xy(x, y), ref_cell(along, sp.edges), -1)
    np.testing.assert_array_equal(ids, expected)
    assert "axis=" in repr(sp)


def test_strip_axis_validated():
    with pytest.raises(ValueError, match="axis must be one of 'x', 'y'; got 'z'"):
        StripPartitioner((0, 0, 1, 1), 2, axis="z")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be between"):
        StripPartitioner((0, 0, 1, 1), 0)


# ---------------------------------------------------------------- load balancing


@SETTINGS
@given(st.integers(0, 10**7), st.integers(1, 2000))
def test_load_balanced(total, workers):
    lb = LoadBalancedPartitioner(total, workers)
    part = lb.partition()
    assert len(part) == workers == lb.npartitions
    assert part.sizes.sum() == total
    assert part.sizes.max() - part.sizes.min() <= 1
    assert (np.diff(part.sizes) <= 0).all()  # larger ranges first
    assert part.starts[0] == 0 and part.stops[-1] == total
    np.testing.assert_array_equal(part.starts[1:], part.stops[:-1])
    np.testing.assert_array_equal(part.stops - part.starts, part.sizes)
    if total:
        rng = np.random.default_rng(total)
        idx = np.concatenate([[0, total - 1], rng.integers(0, total, 200)])
        expected = np.searchsorted(part.stops, idx, side="right")
        np.testing.assert_array_equal(lb.worker_for_index(idx), expected)
        assert lb.worker_for_index(int(idx[2])) == expected[2]


def test_load_balanced_small_cases():
    assert LoadBalancedPartitioner(10, 3).partition().ranges() == [(0, 4), (4, 7), (7, 10)]
    assert LoadBalancedPartitioner(2, 4).partition().ranges() == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert LoadBalancedPartitioner(0, 2).partition().ranges() == [(0, 0), (0, 0)]
    assert LoadBalancedPartitioner(7, 1).partition().ranges() == [(0, 7)]
    lb = LoadBalancedPartitioner(5, 2)
    np.testing.assert_array_equal(lb.worker_for_index(np.arange(5)), [0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"\[0, 5\); got 5"):
        lb.worker_for_index(5)
    with pytest.raises(ValueError, match="got -1"):
        lb.worker_for_index([0, -1])


def test_load_balanced_validation():
    with pytest.raises(ValueError, match="total_size must be >= 0; got -1"):
        LoadBalancedPartitioner(-1, 2)
    with pytest.raises(ValueError, match="num_workers must be >= 1; got 0"):
        LoadBalancedPartitioner(5, 0)
    with pytest.raises(TypeError, match="num_workers must be an int"):
        LoadBalancedPartitioner(5, 2.0)
    with pytest.raises(TypeError, match="total_size must be an int"):
        LoadBalancedPartitioner(True, 2)


def test_partitioners_pickle_round_trip():
    """Partitioners are shipped to Dask workers: they must pickle."""
    import pickle

    from dask_oxigdal.partitioning import HashPartitioner, HilbertPartitioner, RangePartitioner

    rng = np.random.default_rng(11)
    x, y = rng.uniform(size=200), rng.uniform(size=200)
    extent = SpatialExtent(0, 0, 1, 1)
    assert pickle.loads(pickle.dumps(extent)) == extent
    tp = pickle.loads(pickle.dumps(TilePartitioner(extent, 3, 4)))
    np.testing.assert_array_equal(tp.assign(x, y), TilePartitioner(extent, 3, 4).assign(x, y))
    sp = pickle.loads(pickle.dumps(StripPartitioner(extent, 3, axis="y")))
    assert sp.assign([0.5], [0.9]).tolist() == [2]
    hp = HilbertPartitioner(extent, 4).fit(x, y)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(hp)).assign(x, y), hp.assign(x, y))
    rp = RangePartitioner([0.25, 0.5])
    rp.partitions_for_values(x)  # fills the table cache
    np.testing.assert_array_equal(
        pickle.loads(pickle.dumps(rp)).partitions_for_values(x), rp.partitions_for_values(x)
    )
    assert pickle.loads(pickle.dumps(HashPartitioner(7))).partition_for_key("k") == (
        HashPartitioner(7).partition_for_key("k")
    )
    lb = pickle.loads(pickle.dumps(LoadBalancedPartitioner(10, 3)))
    assert lb.partition().ranges() == [(0, 4), (4, 7), (7, 10)]
