"""Spectral indices over dask.array, xarray and rioxarray rasters (GeoTIFFs written here)."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from affine import Affine
from distributed.utils_test import gen_cluster

from dask_oxigdal.raster import STORAGE_ATTRS, nodata_of, typed_nodata
from dask_oxigdal.spectral import ndvi, spectral_index

# rioxarray 0.19 multiplies Affine objects with `*`, which affine 3 flags as pending
# deprecation; that is neither our code nor our test's.
RIO_WARNING = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

CRS = "EPSG:32633"
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4100000.0)


def ndvi_reference(nir, red, nodata=None):
    nir = np.asarray(nir, dtype=np.float64)
    red = np.asarray(red, dtype=np.float64)
    with np.errstate(all="ignore"):
        den = nir + red
        result = np.where(den != 0, (nir - red) / np.where(den != 0, den, 1), np.nan)
    result = result.astype(np.float32)
    if nodata is not None:
        result[(nir == nodata) | (red == nodata)] = np.nan
    return result


def uint16_bands(shape=(40, 50), seed=0):
    rng = np.random.default_rng(seed)
    nir = rng.integers(0, 10000, shape, dtype=np.uint16, endpoint=True)
    red = rng.integers(0, 10000, shape, dtype=np.uint16, endpoint=True)
    nir[0, :4] = 0
    red[1, :3] = 0
    return nir, red


def make_dataarray(data, *, band=None, attrs=None, encoding=None):
    ny, nx = data.shape[-2:]
    coords = {
        "y": 4100000.0 - 5 - 10 * np.arange(ny),
        "x": 500000.0 + 5 + 10 * np.arange(nx),
        "spatial_ref": 0,
    }
    dims = ("y", "x")
    if band is not None:
        coords["band"] = band
    arr = xr.DataArray(data, dims=dims, coords=coords, attrs=dict(attrs or {}))
    arr.encoding.update(encoding or {})
    return arr


# --------------------------------------------------------------------------------------
# dask.array
# --------------------------------------------------------------------------------------
def test_dask_in_dask_out_with_chunks_preserved():
    nir, red = uint16_bands()
    dnir = da.from_array(nir, chunks=(16, 20))
    dred = da.from_array(red, chunks=(16, 20))
    result = ndvi(dnir, dred, nodata=0)
    assert isinstance(result, da.Array)
    assert result.dtype == np.float32
    assert result.chunks == dnir.chunks
    computed = result.compute()
    assert computed.dtype == np.float32
    np.testing.assert_allclose(computed, ndvi_reference(nir, red, 0), rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(computed, ndvi(nir, red, nodata=0))


def test_dask_chunks_are_unified_when_bands_differ():
    nir, red = uint16_bands()
    dnir = da.from_array(nir, chunks=(16, 20))
    dred = da.from_array(red, chunks=(25, 50))
    result = ndvi(dnir, dred)
    assert result.chunks == dnir.chunks  # the first band's chunks
    np.testing.assert_array_equal(result.compute(), ndvi(nir, red))
    flipped = ndvi(dred, dnir)
    assert flipped.chunks == dred.chunks
    np.testing.assert_array_equal(flipped.compute(), ndvi(red, nir))


def test_dask_result_is_lazy():
    loaded = []

    def load(block):
        loaded.append(block.shape)
        return block

    nir, red = uint16_bands((20, 20))
    dnir = da.from_array(nir, chunks=10).map_blocks(load, meta=np.empty((0, 0), nir.dtype))
    dred = da.from_array(red, chunks=10)
    result = spectral_index("evi", nir=dnir, red=dred, blue=dred)
    assert loaded == []
    assert isinstance(result, da.Array)
    values = result.compute(scheduler="sync")
    assert len(loaded) == 4
    expected = spectral_index("evi", nir=nir, red=red, blue=red)
    np.testing.assert_array_equal(values, expected)


@pytest.mark.parametrize("dtype", [np.uint16, np.int8, np.float32, np.float64, np.float16])
def test_dask_every_dtype_and_3d(dtype):
    rng = np.random.default_rng(2)
    nir = (rng.random((3, 8, 9)) * 100).astype(dtype)
    red = (rng.random((3, 8, 9)) * 100).astype(dtype)
    result = ndvi(da.from_array(nir, chunks=(1, 4, 5)), da.from_array(red, chunks=(1, 4, 5)))
    np.testing.assert_array_equal(result.compute(), ndvi(nir, red))


def test_dask_errors():
    a = da.zeros((4, 4), chunks=2, dtype=np.uint16)
    with pytest.raises(ValueError, match=r"'nir' has shape \(4, 4\), 'red' has shape \(4, 3\)"):
        ndvi(a, da.zeros((4, 3), chunks=2, dtype=np.uint16))
    with pytest.raises(ValueError, match="'nir' is uint16, 'red' is float64"):
        ndvi(a, da.zeros((4, 4), chunks=2))
    with pytest.raises(TypeError, match=r"out= is only supported for numpy inputs.*dask"):
        ndvi(a, a, out=np.empty((4, 4), np.float32))
    with pytest.raises(TypeError, match=r"band 'nir' has unsupported dtype bool"):
        ndvi(a.astype(bool), a.astype(bool))
    unknown = a[a[:, 0] >= 0]
    with pytest.raises(
        ValueError, match=r"band 'nir' has unknown chunk sizes.*compute_chunk_sizes"
    ):
        ndvi(unknown, unknown)


def test_mixed_array_kinds_are_rejected_naming_each_band():
    a = np.zeros((4, 4), np.uint16)
    with pytest.raises(
        TypeError,
        match=r"all bands must be of one kind.*nir: numpy.ndarray, "
        r"red: dask.array.core.Array",
    ):
        ndvi(a, da.from_array(a))
    with pytest.raises(TypeError, match=r"red: xarray.core.dataarray.DataArray"):
        ndvi(a, xr.DataArray(a))


@gen_cluster(client=True, timeout=120)
async def test_dask_on_a_distributed_cluster(c, s, a, b):
    nir, red = uint16_bands()
    result = spectral_index(
        "savi", nir=da.from_array(nir, chunks=20), red=da.from_array(red, chunks=20), L=0.25
    )
    values = await c.compute(result)
    np.testing.assert_array_equal(values, spectral_index("savi", nir=nir, red=red, L=0.25))


# --------------------------------------------------------------------------------------
# xarray
# --------------------------------------------------------------------------------------
def test_dataarray_keeps_dims_coords_and_attrs():
    nir, red = uint16_bands()
    attrs = {"AREA_OR_POINT": "Area", "sensor": "MSI", "_FillValue": np.uint16(0)}
    xnir = make_dataarray(nir, band=8, attrs=attrs)
    xred = make_dataarray(red, band=4, attrs=attrs)
    result = ndvi(xnir, xred)
    assert isinstance(result, xr.DataArray)
    assert isinstance(result.data, np.ndarray)
    assert result.dtype == np.float32
    assert result.dims == ("y", "x")
    xr.testing.assert_identical(
        result.x.drop_vars(["band", "spatial_ref"], errors="ignore"),
        xnir.x.drop_vars(["band", "spatial_ref"], errors="ignore"),
    )
    xr.testing.assert_identical(
        result.y.drop_vars(["band", "spatial_ref"], errors="ignore"),
        xnir.y.drop_vars(["band", "spatial_ref"], errors="ignore"),
    )
    assert "spatial_ref" in result.coords
    assert "band" not in result.coords  # conflicting scalar coordinate dropped
    assert result.name == "ndvi"
    assert result.attrs["sensor"] == "MSI" and result.attrs["AREA_OR_POINT"] == "Area"
    assert result.attrs["long_name"] == "NDVI"
    # nodata honoured from _FillValue, written back as NaN (not the integer 0).
    assert np.isnan(result.attrs["_FillValue"])
    assert np.isnan(result.rio.nodata)
    np.testing.assert_allclose(
        result.values, ndvi_reference(nir, red, 0), rtol=1e-6, equal_nan=True
    )


def test_dataarray_storage_attrs_are_not_copied():
    nir, red = uint16_bands((4, 5))
    attrs = {key: 1 for key in STORAGE_ATTRS if key not in ("scale_factor", "add_offset")}
    attrs["keep"] = "me"
    result = ndvi(make_dataarray(nir, attrs=attrs), make_dataarray(red, attrs=attrs))
    assert set(result.attrs) == {"keep", "long_name", "_FillValue"}
    assert np.isnan(result.attrs["_FillValue"])


def test_dataarray_explicit_nodata_overrides_the_attribute():
    nir, red = uint16_bands((6, 7))
    nir[2, 2] = 17
    xnir = make_dataarray(nir, attrs={"_FillValue": 0})
    xred = make_dataarray(red, attrs={"_FillValue": 0})
    result = ndvi(xnir, xred, nodata=17)
    np.testing.assert_allclose(
        result.values, ndvi_reference(nir, red, 17), rtol=1e-6, equal_nan=True
    )


def test_dataarray_per_band_nodata():
    nir = np.array([[5, 9, 3]], np.int16)
    red = np.array([[1, 1, 9]], np.int16)
    result = ndvi(make_dataarray(nir, attrs={"_FillValue": 9}), make_dataarray(red))
    assert np.isnan(result.values).tolist() == [[False, True, False]]
    # rioxarray's in-memory nodata (set_nodata writes no attribute) is seen too.
    xred = make_dataarray(red)
    xred.rio.set_nodata(9, inplace=True)
    result = ndvi(make_dataarray(nir), xred)
    assert np.isnan(result.values).tolist() == [[False, False, True]]


def test_dataarray_without_nodata_and_with_encoded_fill():
    nir = np.array([[0.5, np.nan, 0.0]], np.float32)
    red = np.array([[0.1, 0.1, 0.0]], np.float32)
    plain = ndvi(make_dataarray(nir), make_dataarray(red))
    np.testing.assert_allclose(plain.values, ndvi_reference(nir, red), rtol=1e-6, equal_nan=True)
    # masked=True style: the fill value lives in the encoding, the data hold NaN.
    encoded = make_dataarray(nir, encoding={"_FillValue": 0.0, "dtype": "uint16"})
    assert nodata_of(encoded) is not None and np.isnan(nodata_of(encoded))
    masked = ndvi(encoded, make_dataarray(red))
    np.testing.assert_array_equal(masked.values, plain.values)


def test_dask_backed_dataarray_stays_lazy():
    nir, red = uint16_bands()
    xnir = make_dataarray(nir, attrs={"_FillValue": 0}).chunk({"y": 16, "x": 25})
    xred = make_dataarray(red, attrs={"_FillValue": 0}).chunk({"y": 16, "x": 25})
    result = ndvi(xnir, xred)
    assert isinstance(result.data, da.Array)
    assert result.data.chunks == xnir.data.chunks
    assert result.chunks == xnir.chunks
    np.testing.assert_allclose(
        result.compute().values, ndvi_reference(nir, red, 0), rtol=1e-6, equal_nan=True
    )


def test_dataarray_out_is_written_in_place():
    nir, red = uint16_bands((5, 6))
    out = np.empty((5, 6), np.float32)
    result = ndvi(make_dataarray(nir), make_dataarray(red), out=out)
    assert np.shares_memory(result.data, out)
    np.testing.assert_array_equal(out, ndvi(nir, red))
    out_da = xr.DataArray(np.empty((5, 6), np.float32), dims=("y", "x"))
    result = ndvi(make_dataarray(nir), make_dataarray(red), out=out_da)
    assert np.shares_memory(result.data, out_da.data)
    with pytest.raises(TypeError, match=r"dask-backed xarray\.DataArray"):
        ndvi(make_dataarray(nir).chunk(), make_dataarray(red).chunk(), out=out)


def test_dataarray_mismatches_are_named():
    nir, red = uint16_bands((5, 6))
    xnir = make_dataarray(nir)
    with pytest.raises(ValueError, match=r"same dims: 'nir' has dims \('y', 'x'\), 'red' has "):
        ndvi(xnir, make_dataarray(red).transpose())
    shifted = make_dataarray(red).assign_coords(x=xnir.x + 10)
    with pytest.raises(ValueError, match=r"coordinate 'x' of 'nir' differs from that of 'red'"):
        ndvi(xnir, shifted)
    with pytest.raises(ValueError, match="'nir' is uint16, 'red' is int32"):
        ndvi(xnir, make_dataarray(red.astype(np.int32)))
    with pytest.raises(TypeError, match=r"xarray.Dataset; pass one xarray.DataArray per band"):
        ndvi(xr.Dataset({"nir": xnir}), xnir)


def test_packed_bands_are_unpacked_before_the_index():
    nir, red = uint16_bands((6, 7), seed=3)
    attrs = {"scale_factor": 2.75e-05, "add_offset": -0.2, "_FillValue": 0}
    result = ndvi(make_dataarray(nir, attrs=attrs), make_dataarray(red, attrs=attrs))
    nir_r = np.where(nir == 0, np.nan, nir * 2.75e-05 - 0.2)
    red_r = np.where(red == 0, np.nan, red * 2.75e-05 - 0.2)
    np.testing.assert_allclose(
        result.values, ndvi_reference(nir_r, red_r), rtol=1e-6, equal_nan=True
    )
    assert "scale_factor" not in result.attrs and "add_offset" not in result.attrs
    with pytest.raises(ValueError, match=r"attribute scale_factor='x' of band"):
        ndvi(make_dataarray(nir, attrs={"scale_factor": "x"}), make_dataarray(red))


def test_typed_nodata_rules():
    assert typed_nodata(None, np.uint16) == (0, False)
    assert typed_nodata(0, np.uint16) == (0, True)
    assert typed_nodata(-1, np.uint16)[1] is False
    assert typed_nodata(2.5, np.int32)[1] is False
    assert typed_nodata(float("nan"), np.float32)[1] is False
    value, use = typed_nodata(-3.4e38, np.float32)
    assert use and value == np.float32(-3.4e38) and value.dtype == np.float32
    assert typed_nodata(1e39, np.float32)[1] is False
    assert typed_nodata(float("-inf"), np.float32) == (np.float32(-np.inf), True)


# --------------------------------------------------------------------------------------
# rioxarray: a GeoTIFF written with rasterio, opened with rioxarray.open_rasterio
# --------------------------------------------------------------------------------------
@pytest.fixture
def geotiff(tmp_path):
    nir, red = uint16_bands((30, 40), seed=11)
    path = tmp_path / "scene.tif"
    profile = {
        "driver": "GTiff",
        "width": 40,
        "height": 30,
        "count": 2,
        "dtype": "uint16",
        "crs": CRS,
        "transform": TRANSFORM,
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(red, 1)
        dst.write(nir, 2)
        dst.set_band_description(1, "red")
        dst.set_band_description(2, "nir")
    return path, nir, red


def _check_georeferencing(result, source):
    assert result.rio.crs == source.rio.crs and result.rio.crs.to_string() == CRS
    assert result.rio.transform() == TRANSFORM
    np.testing.assert_array_equal(result.x.values, source.x.values)
    np.testing.assert_array_equal(result.y.values, source.y.values)


@RIO_WARNING
def test_rioxarray_geotiff_ndvi(geotiff):
    path, nir, red = geotiff
    scene = rioxarray.open_rasterio(path)
    assert scene.rio.nodata == 0
    result = ndvi(scene.sel(band=2), scene.sel(band=1))
    expected = ndvi_reference(nir, red, 0)
    np.testing.assert_allclose(result.values, expected, rtol=1e-6, equal_nan=True)
    assert np.isnan(result.values[0, :4]).all() and np.isnan(result.values[1, :3]).all()
    _check_georeferencing(result, scene)
    assert np.isnan(result.rio.nodata)
    assert result.attrs["_FillValue"] != 0 and np.isnan(result.attrs["_FillValue"])


@RIO_WARNING
def test_rioxarray_masked_and_chunked(geotiff):
    path, nir, red = geotiff
    expected = ndvi_reference(nir, red, 0)
    masked = rioxarray.open_rasterio(path, masked=True)
    assert masked.dtype == np.float32
    result = ndvi(masked.sel(band=2), masked.sel(band=1))
    np.testing.assert_allclose(result.values, expected, rtol=1e-6, equal_nan=True)
    _check_georeferencing(result, masked)

    chunked = rioxarray.open_rasterio(path, chunks={"y": 16, "x": 16})
    lazy = ndvi(chunked.sel(band=2), chunked.sel(band=1))
    assert isinstance(lazy.data, da.Array)
    assert lazy.data.chunks == ((16, 14), (16, 16, 8))
    with dask.config.set(scheduler="sync"):
        np.testing.assert_allclose(lazy.values, expected, rtol=1e-6, equal_nan=True)
    _check_georeferencing(lazy, chunked)


@RIO_WARNING
def test_rioxarray_output_round_trips_through_a_geotiff(geotiff, tmp_path):
    path, _, _ = geotiff
    scene = rioxarray.open_rasterio(path)
    result = spectral_index("ndvi", nir=scene.sel(band=2), red=scene.sel(band=1))
    out_path = tmp_path / "ndvi.tif"
    result.rio.to_raster(out_path)
    with rasterio.open(out_path) as src:
        assert src.dtypes == ("float32",)
        assert np.isnan(src.nodata)
        assert src.crs.to_string() == CRS
        assert src.transform == TRANSFORM
        np.testing.assert_array_equal(src.read(1), result.values)


@RIO_WARNING
def test_rioxarray_separate_single_band_files(tmp_path):
    nir, red = uint16_bands((10, 12), seed=5)
    paths = {}
    for name, data in (("nir", nir), ("red", red)):
        paths[name] = tmp_path / f"{name}.tif"
        with rasterio.open(
            paths[name],
            "w",
            driver="GTiff",
            width=12,
            height=10,
            count=1,
            dtype="uint16",
            crs=CRS,
            transform=TRANSFORM,
            nodata=0,
        ) as dst:
            dst.write(data, 1)
    bands = {k: rioxarray.open_rasterio(p) for k, p in paths.items()}
    result = ndvi(bands["nir"], bands["red"])
    assert result.dims == ("band", "y", "x")
    np.testing.assert_allclose(
        result.values[0], ndvi_reference(nir, red, 0), rtol=1e-6, equal_nan=True
    )
    _check_georeferencing(result, bands["nir"])


def test_dataarray_bad_dtype_and_bad_nodata_attribute_are_named():
    flags = np.zeros((2, 3), bool)
    with pytest.raises(TypeError, match="band 'nir' has unsupported dtype bool"):
        ndvi(make_dataarray(flags), make_dataarray(flags))
    data = np.ones((2, 3), np.uint16)
    junk = make_dataarray(data, attrs={"_FillValue": "none"})
    assert nodata_of(junk) == "none"
    with pytest.raises(TypeError, match=r"nodata of band 'nir' must be an int, a float or None"):
        ndvi(junk, make_dataarray(data))
    assert nodata_of(make_dataarray(data)) is None
