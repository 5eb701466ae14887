"""dox.shuffle and dox.spatial_shuffle against Dask / dask-geopandas on real data.

Data: Natural Earth low-res countries and the OSM sample shipped in pyogrio's
test fixtures (read from the installed package, no download).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dask
import dask.dataframe as dd
import dask_geopandas
import geopandas
import numpy as np
import pandas as pd
import pyogrio
import pytest

import dask_oxigdal as dox

FIXTURES = Path(pyogrio.__file__).parent / "tests" / "fixtures"


@pytest.fixture(scope="module", autouse=True)
def _sync_scheduler():
    with dask.config.set(scheduler="sync"):
        yield


@pytest.fixture(scope="module")
def countries() -> geopandas.GeoDataFrame:
    return geopandas.read_file(FIXTURES / "naturalearth_lowres" / "naturalearth_lowres.shp")


@pytest.fixture(scope="module")
def osm_points(countries) -> geopandas.GeoDataFrame:
    """Every feature of the OSM sample (points, lines, polygons) plus a point inside each country."""
    pyogrio.set_gdal_config_options({"OSM_USE_CUSTOM_INDEXING": "NO"})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GDAL notes about the OSM driver
            layers = [
                pyogrio.read_dataframe(FIXTURES / "sample.osm.pbf", layer=layer)[
                    ["osm_id", "geometry"]
                ]
                for layer in ("points", "lines", "multipolygons")
            ]
    finally:
        pyogrio.set_gdal_config_options({"OSM_USE_CUSTOM_INDEXING": None})
    inside = geopandas.GeoDataFrame(
        {"osm_id": [f"country-{i}" for i in range(len(countries))]},
        geometry=countries.representative_point().to_numpy(),
        crs=countries.crs,
    )
    gdf = pd.concat([*layers, inside], ignore_index=True)
    gdf = gdf[~gdf.geometry.is_empty & gdf.geometry.notna()].reset_index(drop=True)
    gdf["osm_id"] = [f"{i}:{v}" for i, v in enumerate(gdf["osm_id"].astype(str))]
    assert len(gdf) > 200
    return geopandas.GeoDataFrame(gdf, geometry="geometry", crs=countries.crs)


def _parts(ddf) -> list:
    return list(dask.compute(*ddf.to_delayed()))


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 6000
    return pd.DataFrame(
        {
            "i": rng.integers(-500, 500, n),
            "f": np.where(rng.random(n) < 0.05, np.nan, rng.normal(size=n)),
            "s": rng.choice(["alpha", "beta", "gamma", "delta", ""], n),
            "v": rng.random(n),
        },
        index=pd.Index(rng.permutation(n), name="row"),
    )


@pytest.mark.parametrize("on", ["i", "f", "s", "row"])
@pytest.mark.parametrize("nout", [1, 4, 9])
def test_shuffle_same_partitions_as_dask(on, nout):
    ddf = dd.from_pandas(_frame(), npartitions=5)
    ours = _parts(dox.shuffle(ddf, on, nout))
    ref = _parts(ddf.shuffle(on=on, npartitions=nout, shuffle_method="tasks"))
    assert len(ours) == len(ref) == nout
    for a, b in zip(ours, ref, strict=True):
        pd.testing.assert_frame_equal(a.sort_index(), b.sort_index())


def test_shuffle_geopandas_backed(countries):
    g = dask_geopandas.from_geopandas(countries, npartitions=4)
    out = dox.shuffle(g, "continent", 3)
    assert isinstance(out, dask_geopandas.GeoDataFrame)
    ours = _parts(out)
    ref = _parts(g.shuffle(on="continent", npartitions=3, shuffle_method="tasks"))
    for a, b in zip(ours, ref, strict=True):
        assert isinstance(a, geopandas.GeoDataFrame)
        assert a.crs == countries.crs
        pd.testing.assert_frame_equal(a.sort_index(), b.sort_index())


def test_shuffle_bad_input():
    ddf = dd.from_pandas(_frame(), npartitions=2)
    with pytest.raises(KeyError, match="'nope' not found"):
        dox.shuffle(ddf, "nope", 2)
    with pytest.raises(ValueError, match="one key column"):
        dox.shuffle(ddf, ["i", "s"], 2)
    with pytest.raises(ValueError, match="npartitions"):
        dox.shuffle(ddf, "i", 0)
    with pytest.raises(TypeError, match="dask DataFrame"):
        dox.shuffle(_frame(), "i", 2)


@pytest.mark.parametrize("by", ["hilbert", "morton"])
def test_spatial_shuffle_equals_dask_geopandas(by, countries, osm_points):
    for gdf, nparts in ((countries, 5), (osm_points, 4)):
        g = dask_geopandas.from_geopandas(gdf, npartitions=3)
        ref = g.spatial_shuffle(by=by, npartitions=nparts, calculate_partitions=False)
        ours = dox.spatial_shuffle(g, by=by, divisions=ref.divisions)
        assert ours.divisions == tuple(int(d) for d in ref.divisions)
        for a, b in zip(_parts(ours), _parts(ref), strict=True):
            assert a.index.name == b.index.name == f"{by}_distance"
            assert _rows(a) == _rows(b)
            assert len(a)


def _rows(part) -> list:
    return sorted(zip(part.index.tolist(), part.geometry.to_wkb(), strict=True))


def test_spatial_shuffle_balanced_and_sorted(osm_points):
    g = dask_geopandas.from_geopandas(osm_points, npartitions=3)
    out = dox.spatial_shuffle(g, npartitions=4)
    parts = _parts(out)
    assert sum(len(p) for p in parts) == len(osm_points)
    for p in parts:
        assert p.index.is_monotonic_increasing
    # near-equal: within a histogram bin's worth of the ideal size
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= max(4, len(osm_points) // 10), sizes
    # spatial_partitions cover their partitions
    for box, p in zip(out.spatial_partitions, parts, strict=True):
        assert box.covers(p.geometry).all()


@pytest.mark.parametrize("by", ["hilbert", "morton", "tile", "strip", "hash"])
def test_sjoin_on_our_partitions_equals_geopandas(by, countries, osm_points):
    polys = dox.spatial_shuffle(
        dask_geopandas.from_geopandas(countries, npartitions=3), by=by, npartitions=6
    )
    pts = dox.spatial_shuffle(
        dask_geopandas.from_geopandas(osm_points, npartitions=2), by=by, npartitions=4
    )
    joined = dask_geopandas.sjoin(pts, polys, predicate="intersects")
    if by not in ("hash",):
        assert joined.npartitions < pts.npartitions * polys.npartitions  # pairs pruned
    got = joined.compute()
    want = geopandas.sjoin(osm_points, countries, predicate="intersects")
    assert sorted(zip(got["osm_id"], got["name"], strict=True)) == sorted(
        zip(want["osm_id"], want["name"], strict=True)
    )
    assert len(want) > 0


def test_spatial_shuffle_bad_input(countries):
    g = dask_geopandas.from_geopandas(countries, npartitions=2)
    with pytest.raises(ValueError, match=r"unknown spatial shuffle method by='zorder'.*hilbert"):
        dox.spatial_shuffle(g, by="zorder")
    with pytest.raises(ValueError, match="level"):
        dox.spatial_shuffle(g, level=17)
    with pytest.raises(ValueError, match="divisions"):
        dox.spatial_shuffle(g, by="tile", divisions=[0, 5])
    with pytest.raises(TypeError, match=r"dask_geopandas\.GeoDataFrame"):
        dox.spatial_shuffle(countries)
    bad = countries.copy()
    bad.loc[0, "geometry"] = None
    with pytest.raises(ValueError, match="empty or missing"):
        dox.spatial_shuffle(
            dask_geopandas.from_geopandas(bad, npartitions=2), npartitions=2
        ).compute()


@pytest.mark.parametrize("by", ["hilbert", "morton", "tile", "strip", "hash"])
def test_spatial_shuffle_degenerate_extent_and_empty_partitions(by, countries):
    same = geopandas.GeoDataFrame(
        {"a": [1, 2, 3]}, geometry=geopandas.points_from_xy([1] * 3, [1] * 3)
    )
    out = dox.spatial_shuffle(
        dask_geopandas.from_geopandas(same, npartitions=2), by=by, npartitions=2
    )
    assert sorted(pd.concat(_parts(out))["a"]) == [1, 2, 3]
    # input partitions that are empty after a filter
    g = dask_geopandas.from_geopandas(countries.sort_values("continent"), npartitions=6)
    africa = g[g.continent == "Africa"]
    out = dox.spatial_shuffle(africa, by=by, npartitions=4)
    parts = _parts(out)
    want = countries[countries.continent == "Africa"]
    assert sorted(pd.concat(parts)["name"]) == sorted(want["name"])
    for box, p in zip(out.spatial_partitions, parts, strict=True):
        assert box.covers(p.geometry).all() if len(p) else box.is_empty
