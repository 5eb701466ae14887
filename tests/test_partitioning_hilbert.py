"""HilbertPartitioner: distances identical to geopandas / dask-geopandas, balanced ranges."""

from __future__ import annotations

import os

import dask.config
import dask_geopandas
import geopandas as gpd
import numpy as np
import pytest
import shapely
from dask_geopandas.hilbert_distance import _hilbert_distance as dgpd_hilbert
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_oxigdal.kernels import hilbert as khilbert
from dask_oxigdal.kernels import tiles as ktiles
from dask_oxigdal.partitioning import HilbertPartitioner, SpatialExtent

SETTINGS = settings(max_examples=40, deadline=None)


def natural_earth() -> gpd.GeoDataFrame:
    import pyogrio

    path = os.path.join(
        os.path.dirname(pyogrio.__file__), "tests", "fixtures", "naturalearth_lowres"
    )
    assert os.path.exists(path), f"pyogrio's Natural Earth test fixture is missing: {path}"
    return gpd.read_file(path)


def geopandas_distances(geoms, extent: SpatialExtent, level: int) -> np.ndarray:
    gs = gpd.GeoSeries(geoms)
    return gs.hilbert_distance(total_bounds=extent.bounds, level=level).to_numpy()


def dask_geopandas_distances(geoms, extent: SpatialExtent, level: int) -> np.ndarray:
    gdf = gpd.GeoDataFrame(geometry=gpd.GeoSeries(geoms))
    return dgpd_hilbert(gdf, total_bounds=extent.bounds, level=level).to_numpy()


extents = st.tuples(
    st.floats(-1e5, 1e5), st.floats(-1e5, 1e5), st.floats(1e-2, 1e5), st.floats(1e-2, 1e5)
).map(lambda t: SpatialExtent(t[0], t[1], t[0] + t[2], t[1] + t[3]))


# ---------------------------------------------------------------- distances


@SETTINGS
@given(extents, st.integers(1, 16), st.integers(0, 2**32 - 1))
def test_point_distances_equal_geopandas_and_dask_geopandas(extent, level, seed):
    rng = np.random.default_rng(seed)
    e = extent
    n = 400
    x = rng.uniform(e.minx - 0.2 * e.width, e.maxx + 0.2 * e.width, n)  # some outside: clipped
    y = rng.uniform(e.miny - 0.2 * e.height, e.maxy + 0.2 * e.height, n)
    # the edges: min / max edges, corners, just inside the max edge
    x[:6] = [e.minx, e.maxx, e.maxx, e.minx, np.nextafter(e.maxx, -np.inf), e.maxx]
    y[:6] = [e.miny, e.maxy, e.miny, e.maxy, e.maxy, np.nextafter(e.maxy, -np.inf)]
    pts = shapely.points(x, y)
    hp = HilbertPartitioner(e, 4, level=level)
    ours = hp.distances(x, y)
    assert ours.dtype == np.uint32
    assert int(ours.max()) < 4**level
    np.testing.assert_array_equal(ours, geopandas_distances(pts, e, level))
    np.testing.assert_array_equal(ours, dask_geopandas_distances(pts, e, level))
    np.testing.assert_array_equal(hp.distances(gpd.GeoSeries(pts)), ours)
    np.testing.assert_array_equal(hp.distances(pts), ours)
    np.testing.assert_array_equal(hp.distances(np.column_stack([x, y])), ours)


def test_natural_earth_polygons_equal_geopandas_and_dask_geopandas():
    df = natural_earth()
    assert len(df) > 100 and set(df.geom_type) == {"Polygon", "MultiPolygon"}
    extent = SpatialExtent.from_geometries(df)
    for level in (16, 11, 4, 1):
        hp = HilbertPartitioner(extent, 8, level=level)
        ours = hp.distances(df)
        np.testing.assert_array_equal(ours, geopandas_distances(df.geometry, extent, level))
        np.testing.assert_array_equal(ours, dask_geopandas_distances(df.geometry, extent, level))
        np.testing.assert_array_equal(hp.distances(df.geometry), ours)
        np.testing.assert_array_equal(hp.distances(df.geometry.values), ours)
        np.testing.assert_array_equal(hp.distances(np.asarray(df.geometry.values)), ours)
    # a smaller, off-centre extent: most countries are outside and get clipped
    small = SpatialExtent(-10, 35, 30, 60)
    np.testing.assert_array_equal(
        HilbertPartitioner(small, 2).distances(df), geopandas_distances(df.geometry, small, 16)
    )


def test_default_bounds_match_dask_geopandas_public_api():
    # dask-geopandas' default total_bounds are the total bounds of the geometries
    df = natural_earth()
    ddf = dask_geopandas.from_geopandas(df, npartitions=3)
    expected = ddf.hilbert_distance().compute(scheduler="sync").to_numpy()
    hp = HilbertPartitioner.from_data(df, npartitions=3)
    assert hp.extent == SpatialExtent.from_geometries(df)
    np.testing.assert_array_equal(hp.distances(df), expected)
    explicit = ddf.hilbert_distance(total_bounds=(-50, -50, 50, 50), level=9)
    np.testing.assert_array_equal(
        HilbertPartitioner((-50, -50, 50, 50), 2, level=9).distances(df),
        explicit.compute(scheduler="sync").to_numpy(),
    )


def test_geometries_are_encoded_by_bounds_midpoint_not_centroid():
    # an L-shaped polygon: centroid, representative point and bounds midpoint differ
    poly = shapely.Polygon([(0, 0), (10, 0), (10, 1), (1, 1), (1, 10), (0, 10)])
    extent = SpatialExtent(0, 0, 10, 10)
    hp = HilbertPartitioner(extent, 2)
    d = hp.distances([poly])
    assert d[0] == hp.distances([5.0], [5.0])[0]
    assert d[0] != hp.distances([poly.centroid.x], [poly.centroid.y])[0]
    np.testing.assert_array_equal(d, geopandas_distances([poly], extent, 16))


def test_from_data_with_points():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=1000), rng.normal(size=1000)
    hp = HilbertPartitioner.from_data(x, 4, y=y)
    assert hp.extent == SpatialExtent.from_xy(x, y)
    assert hp.cuts is not None and hp.cuts.shape == (3,)
    with pytest.raises(ValueError, match="empty or missing"):
        HilbertPartitioner.from_data([shapely.Point(0, 0), None], 2)


def test_parallel_kernels_match_serial():
    rng = np.random.default_rng(6)
    n = 150_000
    x, y = rng.uniform(-1, 11, n), rng.uniform(-1, 11, n)
    b = np.column_stack([x - 0.5, y - 0.25, x + 0.5, y + 0.25])
    for level in (16, 7):
        args = (0.0, 0.0, 10.0, 10.0, level)
        serial, parallel = np.empty(n, np.uint32), np.empty(n, np.uint32)
        assert khilbert.hilbert_xy(x, y, *args, serial) == 0
        assert khilbert.hilbert_xy_parallel(x, y, *args, parallel) == 0
        np.testing.assert_array_equal(serial, parallel)
        assert khilbert.hilbert_bounds(b, *args, serial) == 0
        assert khilbert.hilbert_bounds_parallel(b, *args, parallel) == 0
        np.testing.assert_array_equal(serial, parallel)
    hp = HilbertPartitioner((0, 0, 10, 10), 16)
    expected = hp.partition(x, y)
    with dask.config.set({"oxigdal.kernels.parallel-min-elements": 1}):
        got = hp.partition(x, y)
        boxes = shapely.box(*b[:2000].T)
        np.testing.assert_array_equal(
            hp.distances(boxes),
            hp.distances((b[:2000, 0] + b[:2000, 2]) / 2, (b[:2000, 1] + b[:2000, 3]) / 2),
        )
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_array_equal(got.distances, expected.distances)


def test_nan_empty_and_missing_are_errors():
    hp = HilbertPartitioner((0, 0, 1, 1), 2)
    with pytest.raises(ValueError, match=r"1 of 3 points have a NaN coordinate \(first at row 2"):
        hp.distances([0.1, 0.2, 0.3], [0.1, 0.2, np.nan])
    with pytest.raises(ValueError, match=r"empty or missing.*first at row 1"):
        hp.distances([shapely.Point(0, 0), None, shapely.Point(1, 1)])
    with pytest.raises(ValueError, match=r"2 of 2 geometries"):
        hp.distances(gpd.GeoSeries([shapely.Polygon(), shapely.Point()]))
    with pytest.raises(ValueError, match="same length"):
        hp.distances([0.1, 0.2], [0.1])
    # geopandas refuses the same input
    with pytest.raises(ValueError, match="empty or missing"):
        gpd.GeoSeries([shapely.Point(0, 0), None]).hilbert_distance(total_bounds=(0, 0, 1, 1))


def test_infinite_coordinates_are_clipped_like_geopandas():
    hp = HilbertPartitioner((0, 0, 1, 1), 2, level=3)
    d = hp.distances([np.inf, -np.inf, 0.5], [0.5, 0.5, np.inf])
    np.testing.assert_array_equal(d, hp.distances([1.0, 0.0, 0.5], [0.5, 0.5, 1.0]))


def test_empty_input():
    hp = HilbertPartitioner((0, 0, 1, 1), 3, level=4)
    for empty in ([], gpd.GeoSeries([], dtype="geometry"), np.empty((0, 2))):
        d = hp.distances(empty)
        assert d.dtype == np.uint32 and d.shape == (0,)
    assert hp.distances([], []).shape == (0,)
    part = hp.partition([], [])
    assert part.ids.shape == (0,) and part.counts.tolist() == [0, 0, 0]
    # no data: cuts spread evenly over the curve
    np.testing.assert_array_equal(part.cuts, [85, 170])
    assert hp.assign([0.0], [0.0]).tolist() == [0]


def test_validation():
    with pytest.raises(ValueError, match="level must be between 1 and 16; got 17"):
        HilbertPartitioner((0, 0, 1, 1), 2, level=17)
    with pytest.raises(ValueError, match="level must be between 1 and 16; got 0"):
        HilbertPartitioner((0, 0, 1, 1), 2, level=0)
    with pytest.raises(ValueError, match="npartitions must be >= 1; got 0"):
        HilbertPartitioner((0, 0, 1, 1), 0)
    with pytest.raises(TypeError, match="npartitions must be an int"):
        HilbertPartitioner((0, 0, 1, 1), 2.5)
    with pytest.raises(ValueError, match="too small"):
        HilbertPartitioner((0, 0, 1e-310, 1), 2)
    with pytest.raises(TypeError, match="no y"):
        HilbertPartitioner((0, 0, 1, 1), 2).distances(np.zeros(4))
    with pytest.raises(TypeError, match="Dask collection"):
        gs = gpd.GeoSeries([shapely.Point(0, 0)])
        HilbertPartitioner((0, 0, 1, 1), 2).distances(
            dask_geopandas.from_geopandas(gs, npartitions=1)
        )


# ---------------------------------------------------------------- partitions


def reference_partition(d: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy: cuts at ranks i*n//p of the sorted distances, searchsorted right."""
    cuts = np.sort(d)[(np.arange(1, p) * d.shape[0]) // p]
    return cuts, np.searchsorted(cuts, d, side="right")


@SETTINGS
@given(st.integers(1, 3000), st.integers(1, 64), st.integers(0, 2**32 - 1))
def test_partition_balanced_and_contiguous(n, p, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    hp = HilbertPartitioner((0, 0, 1, 1), p)
    part = hp.partition(x, y)
    d = part.distances
    cuts, ids = reference_partition(d, p)
    np.testing.assert_array_equal(part.cuts, cuts)
    np.testing.assert_array_equal(part.ids, ids)
    np.testing.assert_array_equal(part.counts, np.bincount(ids, minlength=p))
    assert part.counts.sum() == n and len(part) == n
    if np.unique(d).shape[0] == n:
        assert part.counts.max() - part.counts.min() <= 1
    # contiguous Hilbert ranges: sorted by distance, ids never decrease
    order = np.argsort(d, kind="stable")
    assert (np.diff(part.ids[order]) >= 0).all()
    # ties are never split
    for value in np.unique(
        d[np.unique(d, return_counts=True)[1][np.searchsorted(np.unique(d), d)] > 1]
    ):
        assert np.unique(part.ids[d == value]).shape[0] == 1
    # new data is assigned with the same cuts
    x2, y2 = rng.uniform(-0.5, 1.5, 500), rng.uniform(-0.5, 1.5, 500)
    np.testing.assert_array_equal(
        hp.assign(x2, y2), np.searchsorted(cuts, hp.distances(x2, y2), side="right")
    )


def test_ties_kept_together():
    x = np.array([0.1] * 7 + [0.9] * 3)
    y = np.array([0.1] * 7 + [0.9] * 3)
    part = HilbertPartitioner((0, 0, 1, 1), 4).partition(x, y)
    assert np.unique(part.ids[:7]).shape == (1,)
    assert np.unique(part.ids[7:]).shape == (1,)
    assert sorted(part.counts.tolist()) == [0, 0, 3, 7]
    everything_on_one_point = HilbertPartitioner((0, 0, 1, 1), 3).partition([1.0] * 5, [1.0] * 5)
    assert everything_on_one_point.counts.tolist() == [0, 0, 5]


def test_single_partition_and_single_row():
    part = HilbertPartitioner((0, 0, 1, 1), 1).partition(
        np.random.default_rng(0).uniform(size=(50, 2))
    )
    assert part.cuts.shape == (0,) and part.counts.tolist() == [50]
    np.testing.assert_array_equal(part.ids, 0)
    part = HilbertPartitioner((0, 0, 1, 1), 3).partition([0.5], [0.5])
    assert part.counts.sum() == 1 and part.ids.shape == (1,)


def test_geodataframe_partition():
    df = natural_earth()
    hp = HilbertPartitioner.from_data(df, 10)
    part = hp.partition(df)
    assert part.counts.sum() == len(df)
    assert part.counts.max() - part.counts.min() <= 1  # distances are distinct here
    np.testing.assert_array_equal(hp.assign(df), part.ids)


@SETTINGS
@given(
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=40).map(sorted),
    st.integers(0, 2**32 - 1),
)
def test_assign_distances_matches_searchsorted(cuts, seed):
    """The bucket-table search, including clustered cuts and values far outside them."""
    rng = np.random.default_rng(seed)
    c = np.asarray(cuts, dtype=np.uint32)
    hp = HilbertPartitioner((0, 0, 1, 1), len(cuts) + 1, cuts=c)
    lo, hi = int(c[0]), int(c[-1])
    d = np.concatenate(
        [
            rng.integers(0, 2**32, 300, dtype=np.uint64),
            rng.integers(
                max(lo - 5, 0), min(hi + 5, 2**32 - 1), 300, dtype=np.uint64, endpoint=True
            ),
            c.astype(np.uint64),
            c.astype(np.uint64) + (c < 2**32 - 1),
            [0, 2**32 - 1],
        ]
    ).astype(np.uint32)
    expected = np.searchsorted(c, d, side="right")
    np.testing.assert_array_equal(hp.assign_distances(d), expected)
    out = np.empty(d.shape[0], dtype=np.int64)
    ktiles.search_right_parallel(c, *ktiles.bin_table(c, ktiles.BUCKETS), d, out)
    np.testing.assert_array_equal(out, expected)


def test_clustered_data_with_outliers():
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.normal(0.3, 1e-4, 20_000), rng.uniform(0, 1, 50)])
    y = np.concatenate([rng.normal(0.6, 1e-4, 20_000), rng.uniform(0, 1, 50)])
    hp = HilbertPartitioner((0, 0, 1, 1), 100)
    part = hp.partition(x, y)
    _cuts, ids = reference_partition(part.distances, 100)
    np.testing.assert_array_equal(part.ids, ids)


def test_fit_and_cuts_round_trip():
    rng = np.random.default_rng(7)
    x, y = rng.uniform(size=1000), rng.uniform(size=1000)
    hp = HilbertPartitioner((0, 0, 1, 1), 5)
    with pytest.raises(RuntimeError, match="call fit"):
        hp.assign(x, y)
    assert hp.fit(x, y) is hp and "fitted" in repr(hp)
    clone = HilbertPartitioner((0, 0, 1, 1), 5, cuts=hp.cuts)
    np.testing.assert_array_equal(clone.assign(x, y), hp.assign(x, y))
    other = HilbertPartitioner((0, 0, 1, 1), 5).fit_distances(hp.distances(x, y))
    np.testing.assert_array_equal(other.cuts, hp.cuts)
    with pytest.raises(ValueError, match="read-only"):
        hp.cuts[0] = 1
    with pytest.raises(ValueError, match="npartitions - 1 = 4"):
        HilbertPartitioner((0, 0, 1, 1), 5, cuts=[1, 2])
    with pytest.raises(ValueError, match="non-decreasing"):
        HilbertPartitioner((0, 0, 1, 1), 3, cuts=[5, 1])
    with pytest.raises(ValueError, match=r"\[0, 4\*\*level\) = \[0, 16\)"):
        HilbertPartitioner((0, 0, 1, 1), 2, level=2, cuts=[16])
    with pytest.raises(TypeError, match="integers"):
        HilbertPartitioner((0, 0, 1, 1), 2, cuts=[1.5])
