"""dox.knn against a single-machine scipy cKDTree on Natural Earth coordinates."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.dataframe as dd
import dask_geopandas
import geopandas
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
from scipy.spatial import cKDTree

import dask_oxigdal as dox

FIXTURES = Path(pyogrio.__file__).parent / "tests" / "fixtures"


@pytest.fixture(scope="module", autouse=True)
def _sync_scheduler():
    with dask.config.set(scheduler="sync"):
        yield


@pytest.fixture(scope="module")
def vertices() -> pd.DataFrame:
    """Every boundary vertex of the Natural Earth countries (shared borders: duplicates)."""
    countries = geopandas.read_file(FIXTURES / "naturalearth_lowres" / "naturalearth_lowres.shp")
    xy = shapely.get_coordinates(countries.geometry.to_numpy())
    assert len(xy) > 5000
    assert len(np.unique(xy, axis=0)) < len(xy)  # duplicate points are in the data
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})


def _queries(n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(-180, 180, n), rng.uniform(-90, 90, n)])


def _check_exact(d, i, pts: np.ndarray, q: np.ndarray, k: int) -> None:
    """Distances equal cKDTree's bit for bit; indices name points at those distances."""
    rd, ri = cKDTree(pts).query(q, k)
    rd = np.asarray(rd).reshape(len(q), k)
    ri = np.asarray(ri).reshape(len(q), k)
    np.testing.assert_array_equal(d, rd)
    finite = np.isfinite(d)
    assert (i[~finite] == len(pts)).all()
    # every returned index is a point at exactly the returned distance, no repeats
    diff = pts[i[finite]] - q[np.nonzero(finite)[0]]
    np.testing.assert_allclose(np.hypot(diff[:, 0], diff[:, 1]), d[finite], rtol=1e-12)
    for row in range(len(q)):
        assert len(set(i[row][finite[row]])) == finite[row].sum()
    # where a distance is unique (also against the (k+1)-th), the indices are cKDTree's
    ext = np.asarray(cKDTree(pts).query(q, k + 1)[0]).reshape(len(q), k + 1)
    untied = np.ones_like(ext, dtype=bool)
    untied[:, 1:] &= ext[:, 1:] != ext[:, :-1]
    untied[:, :-1] &= ext[:, :-1] != ext[:, 1:]
    untied = untied[:, :k] & finite
    np.testing.assert_array_equal(i[untied], ri[untied])


@pytest.mark.parametrize("k", [1, 5, 16])
def test_knn_equals_ckdtree_sorted_partitions(vertices, k):
    ddf = dd.from_pandas(vertices.sort_values("x", ignore_index=True), npartitions=12)
    pts = ddf.compute()[["x", "y"]].to_numpy()
    q = _queries(400)
    d, i, stats = dox.knn(ddf, q, k, return_stats=True)
    assert d.shape == i.shape == (400, k)
    _check_exact(d, i, pts, q, k)
    assert stats["partitions"] == 12
    assert stats["pairs_searched"] < stats["pairs_total"]  # partitions were pruned
    assert 0 < stats["pruning_ratio"] < 1


def test_knn_geodataframe_points_and_queries(vertices):
    pts = vertices.to_numpy()
    g = geopandas.GeoDataFrame(geometry=geopandas.points_from_xy(pts[:, 0], pts[:, 1]))
    gd = dox.spatial_shuffle(dask_geopandas.from_geopandas(g, npartitions=4), npartitions=8)
    order = np.concatenate(
        [p.geometry.get_coordinates().to_numpy() for p in dask.compute(*gd.to_delayed())]
    )
    q = geopandas.GeoSeries(geopandas.points_from_xy(*_queries(200, seed=5).T))
    d, i = dox.knn(gd, q, 4)
    _check_exact(d, i, order, q.get_coordinates().to_numpy(), 4)


def test_knn_duplicates_ties_and_queries_on_points(vertices):
    pts = vertices.to_numpy()
    ddf = dd.from_pandas(vertices, npartitions=7)
    q = pts[::97]  # queries exactly on (often duplicated) data points
    d, i = dox.knn(ddf, q, 3)
    _check_exact(d, i, pts, q, 3)
    assert (d[:, 0] == 0).all()


def test_knn_k_larger_than_n_and_empty_partitions():
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    frame = pd.DataFrame({"x": pts[:, 0], "y": pts[:, 1]})
    ddf = dd.from_pandas(frame, npartitions=4)
    ddf = ddf[ddf.x < 3]  # last partition becomes empty
    q = np.array([[0.1, 0.1], [4.0, 4.0]])
    d, i, stats = dox.knn(ddf, q, 5, return_stats=True)
    assert stats["partitions"] == 3
    _check_exact(d, i, pts[:3], q, 5)
    assert np.isinf(d[:, 3:]).all() and (i[:, 3:] == 3).all()
    # no points at all
    d, i = dox.knn(ddf[ddf.x > 100], q, 2)
    assert np.isinf(d).all() and (i == 0).all()


def test_knn_dask_queries_and_column_names(vertices):
    frame = vertices.rename(columns={"x": "lon", "y": "lat"})
    ddf = dd.from_pandas(frame, npartitions=5)
    qf = pd.DataFrame(_queries(50, seed=9), columns=["lon", "lat"])
    d, i = dox.knn(ddf, dd.from_pandas(qf, npartitions=2), 2, x="lon", y="lat")
    _check_exact(d, i, frame.to_numpy(), qf.to_numpy(), 2)


def test_knn_bad_input(vertices):
    ddf = dd.from_pandas(vertices, npartitions=2)
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        dox.knn(ddf, _queries(3), 0)
    with pytest.raises(KeyError, match="'lon'"):
        dox.knn(ddf, _queries(3), 1, x="lon")
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        dox.knn(ddf, np.zeros((3, 3)), 1)
    nan = vertices.copy()
    nan.loc[3, "x"] = np.nan
    with pytest.raises(ValueError, match="finite"):
        dox.knn(dd.from_pandas(nan, npartitions=2), _queries(3), 1)
    polys = geopandas.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)])
    with pytest.raises(ValueError, match="Point geometries; got Polygon"):
        dox.knn(dask_geopandas.from_geopandas(polys, npartitions=1), _queries(3), 1)
