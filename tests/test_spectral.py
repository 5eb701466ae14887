"""Spectral-index kernels and their numpy front end, against plain numpy references."""

from __future__ import annotations

import dask.config
import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dask_oxigdal.kernels import spectral as kernels
from dask_oxigdal.spectral import INDICES, SpectralIndex, ndvi, spectral_index

INT_DTYPES = [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64]
FLOAT_DTYPES = [np.float16, np.float32, np.float64]
ALL_DTYPES = INT_DTYPES + FLOAT_DTYPES

# Independent statement of every index: (bands, parameters with defaults).
ND_BANDS = {
    "NDVI": ("nir", "red"),
    "NDWI": ("green", "nir"),
    "MNDWI": ("green", "swir1"),
    "NDBI": ("swir1", "nir"),
    "NDMI": ("nir", "swir1"),
    "NBR": ("nir", "swir2"),
    "NBR2": ("swir1", "swir2"),
    "GNDVI": ("nir", "green"),
}
PARAMETRIC = {
    "SAVI": (("nir", "red"), {"L": 0.5}),
    "EVI": (("nir", "red", "blue"), {"G": 2.5, "C1": 6.0, "C2": 7.5, "L": 1.0}),
    "EVI2": (("nir", "red"), {"G": 2.5, "C": 2.4, "L": 1.0}),
}
BANDS = {**ND_BANDS, **{k: v[0] for k, v in PARAMETRIC.items()}}

# Results are float32. Computing in float32 (<= 16-bit ints, float16/32) costs a few
# float32 ulps at most; float64 computation rounds once.
RTOL = 1e-6


def reference(name: str, bands: dict[str, np.ndarray], nodata=None, **params) -> np.ndarray:
    """Plain numpy, float64 (long double for the ratio), NaN where the denominator is 0."""
    name = name.upper()
    f = {k: np.asarray(v).astype(np.float64) for k, v in bands.items()}
    with np.errstate(all="ignore"):
        if name in ND_BANDS:
            a, b = (f[k].astype(np.longdouble) for k in ND_BANDS[name])
            num, den = a - b, a + b
        else:
            p = {**PARAMETRIC[name][1], **params}
            if name == "SAVI":
                num = (1 + p["L"]) * (f["nir"] - f["red"])
                den = f["nir"] + f["red"] + p["L"]
            elif name == "EVI":
                num = p["G"] * (f["nir"] - f["red"])
                den = f["nir"] + p["C1"] * f["red"] - p["C2"] * f["blue"] + p["L"]
            else:
                num = p["G"] * (f["nir"] - f["red"])
                den = f["nir"] + p["C"] * f["red"] + p["L"]
        result = np.where(den != 0, num / np.where(den != 0, den, 1), np.nan)
        result = np.asarray(result).astype(np.float32)
    if nodata is not None:
        for v in bands.values():
            result[np.asarray(v) == nodata] = np.nan
    return result


def assert_matches(actual, expected, rtol=RTOL):
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0, equal_nan=True)


def random_band(rng, dtype, shape, low=None, high=None):
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low = info.min if low is None else low
        high = info.max if high is None else high
        return rng.integers(low, high, size=shape, dtype=dtype, endpoint=True)
    low = -1.0 if low is None else low
    high = 1.0 if high is None else high
    return rng.uniform(low, high, size=shape).astype(dtype)


def bands_for(name, rng, dtype, shape, **kw):
    return {b: random_band(rng, dtype, shape, **kw) for b in BANDS[name]}


# --------------------------------------------------------------------------------------
# Every index, every dtype, against the reference
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BANDS))
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_index_and_dtype_matches_numpy(name, dtype):
    rng = np.random.default_rng(abs(hash((name, np.dtype(dtype).name))) % 2**32)
    bands = bands_for(name, rng, dtype, (7, 9))
    # Extremes of the dtype: no overflow or wrap-around anywhere.
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        extremes = np.array([info.max, info.min, info.max, 0], dtype)
        for i, b in enumerate(bands.values()):
            b[0, :4] = np.roll(extremes, i)
            b[1, 0] = info.max
    assert_matches(spectral_index(name, **bands), reference(name, bands))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_ndvi_function_matches_spectral_index_and_reference(dtype):
    rng = np.random.default_rng(3)
    nir, red = (random_band(rng, dtype, (5, 6)) for _ in range(2))
    expected = reference("NDVI", {"nir": nir, "red": red})
    assert_matches(ndvi(nir, red), expected)
    assert_matches(ndvi(nir=nir, red=red), expected)
    np.testing.assert_array_equal(ndvi(nir, red), spectral_index("ndvi", nir=nir, red=red))


def test_uint16_reflectance_does_not_overflow():
    nir = np.array([65535, 40000, 1], dtype=np.uint16)
    red = np.array([65535, 30000, 0], dtype=np.uint16)
    np.testing.assert_array_equal(ndvi(nir, red), np.float32([0.0, 10000 / 70000, 1.0]))


def test_signed_integers_use_their_sign():
    nir = np.array([-128, 100, -5, 127], dtype=np.int8)
    red = np.array([127, -100, -5, 127], dtype=np.int8)
    np.testing.assert_array_equal(
        ndvi(nir, red), np.float32([-255, np.nan, 0, 0]) / np.float32([-1, 1, -10, 254])
    )
    big = np.iinfo(np.int64)
    out = ndvi(np.array([big.max, big.min, big.max]), np.array([big.max, big.min, 1]))
    np.testing.assert_array_equal(out, np.float32([0.0, 0.0, 1.0]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hypothesis_all_indices(data):
    name = data.draw(st.sampled_from(sorted(BANDS)), label="name")
    dtype = np.dtype(data.draw(st.sampled_from(ALL_DTYPES), label="dtype"))
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    if dtype.kind == "f":
        # Parametric indices compute in float64: keep float64 sums within range.
        bound = 1e150 if dtype == np.float64 and name in PARAMETRIC else None
        elements = st.floats(
            min_value=-bound if bound else None,
            max_value=bound,
            width=dtype.itemsize * 8,
            allow_nan=False,
            allow_infinity=False,
        ) | st.just(np.nan)
    else:
        elements = None
    bands = {
        b: data.draw(hnp.arrays(dtype, shape, elements=elements), label=b) for b in BANDS[name]
    }
    params = {}
    if name in PARAMETRIC and data.draw(st.booleans(), label="custom params"):
        for key in PARAMETRIC[name][1]:
            params[key] = data.draw(st.floats(-10, 10), label=key)
    expected = reference(name, bands, **params)
    assert_matches(spectral_index(name, **bands, **params), expected)


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from([np.uint16, np.int16, np.float32, np.float64]),
    data=st.data(),
)
def test_hypothesis_ndvi_with_nodata(dtype, data):
    dtype = np.dtype(dtype)
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=8))
    elements = st.integers(0, 5) if dtype.kind != "f" else st.sampled_from([0.0, 1.0, 2.5, -1.0])
    nir = data.draw(hnp.arrays(dtype, shape, elements=elements))
    red = data.draw(hnp.arrays(dtype, shape, elements=elements))
    nodata = data.draw(st.sampled_from([0, 1, 2]))
    assert_matches(
        ndvi(nir, red, nodata=nodata), reference("NDVI", {"nir": nir, "red": red}, nodata)
    )


# --------------------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0, 2)])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int64])
def test_empty_arrays(shape, dtype):
    a = np.empty(shape, dtype)
    out = ndvi(a, a)
    assert out.shape == shape and out.dtype == np.float32
    evi = spectral_index("evi", nir=a, red=a, blue=a)
    assert evi.shape == shape and evi.dtype == np.float32
    preallocated = np.empty(shape, np.float32)
    assert ndvi(a, a, out=preallocated) is preallocated


def test_one_element_and_zero_d():
    np.testing.assert_array_equal(
        ndvi(np.array([3], np.uint8), np.array([1], np.uint8)), np.float32([0.5])
    )
    zero_d = ndvi(np.uint16(3), np.uint16(1))
    assert isinstance(zero_d, np.ndarray) and zero_d.shape == () and zero_d.dtype == np.float32
    assert zero_d == np.float32(0.5)
    assert np.isnan(ndvi(np.float64(1.0), np.float64(1.0), nodata=1.0))


@pytest.mark.parametrize("name", sorted(BANDS))
def test_nodata_everywhere(name):
    bands = {b: np.full((4, 5), 7, np.uint16) for b in BANDS[name]}
    assert np.isnan(spectral_index(name, **bands, nodata=7)).all()


@pytest.mark.parametrize("name", sorted(BANDS))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_nan_everywhere(name, dtype):
    bands = {b: np.full((3, 4), np.nan, dtype) for b in BANDS[name]}
    assert np.isnan(spectral_index(name, **bands)).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_nan_in_one_band_only(dtype):
    nir = np.array([0.5, np.nan, 0.3], dtype)
    red = np.array([np.nan, 0.1, 0.1], dtype)
    out = ndvi(nir, red)
    assert np.isnan(out[:2]).all() and out[2] == pytest.approx(0.5, rel=1e-3)
    out = spectral_index("evi", nir=nir, red=red, blue=np.array([0.1, 0.1, np.nan], dtype))
    assert np.isnan(out).all()


def test_zero_denominators_are_nan():
    zeros = np.zeros(5, np.uint16)
    assert np.isnan(ndvi(zeros, zeros)).all()
    # nir = -red: denominator 0 with a non-zero numerator (no +-inf).
    nir = np.array([-3, 2, 1], np.int32)
    out = ndvi(nir, -nir)
    assert np.isnan(out).all()
    # SAVI: nir + red + L == 0; EVI2: nir + C * red + L == 0; EVI likewise.
    out = spectral_index("savi", nir=np.array([-0.25, 1.0]), red=np.array([-0.25, 0.0]))
    assert np.isnan(out[0]) and out[1] == pytest.approx(1.0)
    out = spectral_index("evi2", nir=np.array([-1.0]), red=np.array([0.0]))
    assert np.isnan(out).all()
    out = spectral_index("evi", nir=np.array([6.5]), red=np.array([0.0]), blue=np.array([1.0]))
    assert np.isnan(out).all()


def test_huge_floats_do_not_overflow_the_ratio():
    for dtype in (np.float32, np.float64):
        big = np.finfo(dtype).max
        nir = np.array([big, big, big / 2, -big], dtype)
        red = np.array([big, big / 3, big / 2, big / 3], dtype)
        assert_matches(ndvi(nir, red), reference("NDVI", {"nir": nir, "red": red}))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int64, np.float16])
def test_n_dimensional_shapes(dtype):
    rng = np.random.default_rng(4)
    for shape in [(5,), (3, 4), (2, 3, 4), (2, 1, 3, 5), (1, 2, 1, 2, 3)]:
        bands = bands_for("EVI", rng, dtype, shape, low=0, high=1000)
        assert_matches(spectral_index("EVI", **bands), reference("EVI", bands))
        nd = {b: bands[b] for b in ("nir", "red")}
        assert_matches(ndvi(**nd), reference("NDVI", nd))


def _views(rng, dtype):
    base = random_band(rng, dtype, (12, 10), low=0, high=200)
    fortran = np.asfortranarray(base)
    return {
        "step": (base[::2, ::3], base[1::2, ::3]),
        "reversed": (base[::-1], base[:, ::-1]),
        "transposed": (base.T, base.T[::-1]),
        "fortran": (fortran, np.asfortranarray(base[::-1])),
        "mixed C/F": (base, fortran[::-1]),
        "broadcast": (np.broadcast_to(base[0], (4, 10)), base[:4]),
        "3-D slice": (base.reshape(3, 4, 10)[:, 1:3, ::2], base.reshape(3, 4, 10)[:, :2, 1::2]),
    }


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int32, np.float64])
def test_non_contiguous_inputs(dtype):
    rng = np.random.default_rng(5)
    for label, (nir, red) in _views(rng, dtype).items():
        expected = reference("NDVI", {"nir": nir, "red": red})
        assert_matches(ndvi(nir, red), expected)
        out = np.full(nir.shape, -7, np.float32)
        assert ndvi(nir, red, out=out) is out, label
        assert_matches(out, expected)
        blue = np.ascontiguousarray(red)
        bands = {"nir": nir, "red": red, "blue": blue}
        assert_matches(spectral_index("evi", **bands), reference("EVI", bands))


def test_fortran_inputs_give_fortran_output():
    a = np.asfortranarray(np.arange(12, dtype=np.uint16).reshape(3, 4))
    out = ndvi(a, a[::-1].copy(order="F"))
    assert out.flags.f_contiguous
    assert_matches(out, reference("NDVI", {"nir": a, "red": a[::-1]}))


def test_readonly_big_endian_list_and_masked_inputs():
    nir = np.array([[30, 0], [40, 10]], dtype=np.uint16)
    red = np.array([[10, 0], [20, 10]], dtype=np.uint16)
    expected = reference("NDVI", {"nir": nir, "red": red})
    ro = nir.copy()
    ro.setflags(write=False)
    assert_matches(ndvi(ro, red), expected)
    assert_matches(ndvi(nir.astype(">u2"), red.astype(">u2")), expected)
    assert_matches(ndvi(nir.tolist(), red.tolist()), expected)  # int64 lists
    masked = np.ma.masked_array(nir, mask=[[True, False], [False, False]])
    out = ndvi(masked, red)
    assert type(out) is np.ndarray
    assert np.isnan(out[0, 0]) and np.isnan(out[0, 1])
    assert_matches(out[1], expected[1])


def test_float16_is_supported():
    nir = np.array([0.5, 0.25, 0], np.float16)
    red = np.array([0.25, 0.25, 0], np.float16)
    np.testing.assert_array_equal(ndvi(nir, red), np.float32([1 / 3, 0, np.nan]))


# --------------------------------------------------------------------------------------
# nodata semantics
# --------------------------------------------------------------------------------------
def test_nodata_is_cast_to_the_band_dtype_like_gdal():
    f32 = np.array([-3.4e38, 0.5], np.float32)  # holds np.float32(-3.4e38) != -3.4e38
    other = np.array([0.5, 0.25], np.float32)
    out = ndvi(f32, other, nodata=-3.4e38)
    assert np.isnan(out[0]) and not np.isnan(out[1])

    u16 = np.array([0, 9999, 55537], np.uint16)  # 55537 == -9999 wrapped to uint16
    red = np.array([1, 1, 1], np.uint16)
    assert not np.isnan(ndvi(u16, red, nodata=-9999)).any()  # not representable: no match
    assert not np.isnan(ndvi(u16, red, nodata=0.5)).any()
    assert not np.isnan(ndvi(u16, red, nodata=2**70)).any()
    assert np.isnan(ndvi(u16, red, nodata=9999.0)).tolist() == [False, True, False]
    assert np.isnan(ndvi(u16, red, nodata=np.uint16(0))).tolist() == [True, False, False]

    # NaN as nodata: nothing extra to mask.
    f64 = np.array([1.0, 2.0, np.nan])
    assert np.isnan(ndvi(f64, f64 * 0, nodata=np.nan)).tolist() == [False, False, True]
    # Values that overflow the band dtype match nothing.
    assert not np.isnan(ndvi(f32, other, nodata=1e300)).any()


def test_nodata_in_either_band():
    nir = np.array([5, 5, 3, 3], np.int16)
    red = np.array([3, 5, 5, 1], np.int16)
    assert np.isnan(ndvi(nir, red, nodata=5)).tolist() == [True, True, True, False]
    bands = {"nir": nir, "red": red, "blue": np.array([1, 1, 1, 5], np.int16)}
    assert np.isnan(spectral_index("evi", **bands, nodata=5)).all()


# --------------------------------------------------------------------------------------
# out=
# --------------------------------------------------------------------------------------
def test_out_receives_the_result():
    rng = np.random.default_rng(6)
    nir, red = (random_band(rng, np.uint16, (30, 40)) for _ in range(2))
    out = np.empty((30, 40), np.float32)
    assert ndvi(nir, red, out=out) is out
    assert_matches(out, reference("NDVI", {"nir": nir, "red": red}))
    out_f = np.empty((30, 40), np.float32, order="F")
    assert ndvi(nir, red, out=out_f) is out_f
    assert_matches(out_f, reference("NDVI", {"nir": nir, "red": red}))
    big = np.empty((60, 40), np.float32)
    assert ndvi(nir, red, out=big[::2]) is not None
    assert_matches(big[::2], reference("NDVI", {"nir": nir, "red": red}))


def test_out_may_alias_an_input():
    nir = np.array([3.0, 1.0, 0.0], np.float32)
    red = np.array([1.0, 1.0, 0.0], np.float32)
    expected = reference("NDVI", {"nir": nir, "red": red})
    assert ndvi(nir, red, out=nir) is nir
    assert_matches(nir, expected)
    # Partial overlap (shifted view of the same buffer): goes through a temporary.
    buffer = np.array([3.0, 1.0, 2.0, 5.0], np.float32)
    a, shifted = buffer[:3], buffer[1:]
    expected = reference("NDVI", {"nir": a.copy(), "red": np.ones(3, np.float32)})
    ndvi(a, np.ones(3, np.float32), out=shifted)
    assert_matches(shifted, expected)


@pytest.mark.parametrize(
    ("out", "fragment"),
    [
        (np.empty((2, 2), np.float64), "dtype float64 and shape (2, 2)"),
        (np.empty((2, 3), np.float32), "dtype float32 and shape (2, 3)"),
        (np.empty(4, np.float32), "dtype float32 and shape (4,)"),
    ],
)
def test_out_of_wrong_dtype_or_shape(out, fragment):
    a = np.ones((2, 2), np.uint16)
    with pytest.raises(
        ValueError, match=r"out must be float32 with the bands' shape \(2, 2\)"
    ) as e:
        ndvi(a, a, out=out)
    assert fragment in str(e.value)


def test_out_must_be_a_writeable_ndarray():
    a = np.ones(3, np.uint16)
    with pytest.raises(TypeError, match=r"out must be a numpy\.ndarray.*got list"):
        ndvi(a, a, out=[0.0, 0.0, 0.0])
    ro = np.empty(3, np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        ndvi(a, a, out=ro)


# --------------------------------------------------------------------------------------
# Serial and parallel kernels
# --------------------------------------------------------------------------------------
# The parallel kernels share their body with the serial ones (tested on every dtype
# above); one dtype per compute path keeps the suite's compile time down.
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int32, np.float64])
def test_parallel_kernels_match_serial(dtype):
    rng = np.random.default_rng(7)
    names = ["NDVI"] if dtype not in (np.uint16, np.float32) else ["NDVI", "SAVI", "EVI"]
    for name in names:
        bands = bands_for(name, rng, dtype, (33, 17), low=0, high=100)
        bands["nir"][0, :5] = 0
        serial = spectral_index(name, **bands, nodata=0)
        with dask.config.set({"oxigdal.kernels.parallel-min-elements": 1}):
            parallel = spectral_index(name, **bands, nodata=0)
        np.testing.assert_array_equal(serial, parallel)
        assert_matches(parallel, reference(name, bands, nodata=0))


def test_large_input_takes_the_parallel_path():
    rng = np.random.default_rng(8)
    nir, red = (random_band(rng, np.uint16, (300, 301)) for _ in range(2))
    assert_matches(ndvi(nir, red, nodata=0), reference("NDVI", {"nir": nir, "red": red}, 0))


def test_kernels_are_cached_nogil_and_parallel_where_named():
    for name in kernels.__all__:
        dispatcher = getattr(kernels, name)
        assert isinstance(dispatcher, numba.core.registry.CPUDispatcher)
        assert dispatcher.targetoptions["nogil"] is True
        assert bool(dispatcher.targetoptions.get("parallel")) == name.endswith("_parallel")
        assert type(dispatcher._cache).__name__ == "FunctionCache"


# --------------------------------------------------------------------------------------
# Registry, names and errors
# --------------------------------------------------------------------------------------
def test_registry_lists_every_index_with_its_bands_and_parameters():
    assert set(INDICES) == set(BANDS)
    for name, index in INDICES.items():
        assert isinstance(index, SpectralIndex)
        assert index.name == name
        assert index.bands == BANDS[name]
        assert dict(index.params) == (PARAMETRIC[name][1] if name in PARAMETRIC else {})
        assert all(b in index.formula for b in index.bands)
        assert name in spectral_index.__doc__
        assert ", ".join(index.bands) in spectral_index.__doc__
    with pytest.raises(TypeError):
        INDICES["FOO"] = INDICES["NDVI"]  # read-only
    assert "nir" in ndvi.__doc__ and "red" in ndvi.__doc__


def test_registry_entries_are_callable():
    nir, red = np.array([3.0]), np.array([1.0])
    np.testing.assert_array_equal(INDICES["NDVI"](nir=nir, red=red), ndvi(nir, red))


@pytest.mark.parametrize("name", ["ndvi", "NDVI", "Ndvi", "nDvI"])
def test_names_are_case_insensitive(name):
    assert spectral_index(name, nir=np.array([3]), red=np.array([1]))[0] == np.float32(0.5)


def test_parameters_can_be_overridden():
    nir, red, blue = np.array([0.5]), np.array([0.1]), np.array([0.05])
    for name, params in [
        ("SAVI", {"L": 0.25}),
        ("EVI", {"G": 2.0, "C1": 5, "L": 0}),
        ("EVI2", {"C": 2.0}),
    ]:
        bands = (
            {"nir": nir, "red": red, "blue": blue} if name == "EVI" else {"nir": nir, "red": red}
        )
        assert_matches(spectral_index(name, **bands, **params), reference(name, bands, **params))
    # Defaults: SAVI L=0.5, EVI G=2.5 C1=6 C2=7.5 L=1.
    savi = spectral_index("savi", nir=nir, red=red)[0]
    assert savi == pytest.approx(1.5 * 0.4 / 1.1, rel=1e-6)
    evi = spectral_index("evi", nir=nir, red=red, blue=blue)[0]
    assert evi == pytest.approx(2.5 * 0.4 / (0.5 + 0.6 - 0.375 + 1), rel=1e-6)


def test_unknown_index_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown spectral index 'NDXI'") as e:
        spectral_index("NDXI", nir=np.ones(1), red=np.ones(1))
    for name in INDICES:
        assert name in str(e.value)
    with pytest.raises(TypeError, match="index name must be a str, got int 5; available"):
        spectral_index(5, nir=np.ones(1), red=np.ones(1))


def test_missing_band_names_it_and_the_required_ones():
    with pytest.raises(
        TypeError,
        match=r"EVI is missing band\(s\) 'blue'; required bands: "
        r"nir, red, blue",
    ):
        spectral_index("evi", nir=np.ones(1), red=np.ones(1))
    with pytest.raises(TypeError, match=r"'red'.*required bands: nir, red"):
        spectral_index("ndvi", nir=np.ones(1))


def test_unexpected_keyword_names_it_and_the_valid_ones():
    with pytest.raises(
        TypeError,
        match=r"NDVI got unexpected keyword argument\(s\) 'swir1'; "
        r"bands: nir, red",
    ):
        spectral_index("ndvi", nir=np.ones(1), red=np.ones(1), swir1=np.ones(1))
    with pytest.raises(TypeError, match=r"'l'; bands: nir, red; parameters: L"):
        spectral_index("savi", nir=np.ones(1), red=np.ones(1), l=0.3)
    with pytest.raises(TypeError, match=r"'L'; bands: nir, red \(and nodata=, out=\)"):
        spectral_index("ndvi", nir=np.ones(1), red=np.ones(1), L=0.3)


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [
        ("0.5", TypeError, "parameter L must be a real number, got str '0.5'"),
        (True, TypeError, "parameter L must be a real number, got bool True"),
        (None, TypeError, "got NoneType None"),
        (float("nan"), ValueError, "parameter L must be finite, got nan"),
        (float("inf"), ValueError, "must be finite, got inf"),
    ],
)
def test_bad_parameter_values(value, error, fragment):
    with pytest.raises(error, match="SAVI") as e:
        spectral_index("savi", nir=np.ones(1), red=np.ones(1), L=value)
    assert fragment in str(e.value)


@pytest.mark.parametrize("nodata", ["0", True, [0], complex(1, 0)])
def test_bad_nodata_is_named(nodata):
    with pytest.raises(TypeError, match="nodata must be an int, a float or None, got"):
        ndvi(np.ones(2), np.ones(2), nodata=nodata)


def test_nodata_beyond_float64_is_named():
    with pytest.raises(ValueError, match=r"nodata 1000000\d+ is out of the float64 range"):
        ndvi(np.ones(2), np.ones(2), nodata=10**400)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(
        ValueError,
        match=r"same shape: 'nir' has shape \(3, 4\), 'red' has shape \(4, 3\)",
    ):
        ndvi(np.ones((3, 4)), np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"'nir' has shape \(3,\), 'blue' has shape \(2,\)"):
        spectral_index("evi", nir=np.ones(3), red=np.ones(3), blue=np.ones(2))


def test_dtype_mismatch_names_both_dtypes():
    with pytest.raises(
        ValueError, match=r"same dtype: 'nir' is uint16, 'red' is float32; cast one"
    ):
        ndvi(np.ones(3, np.uint16), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="'nir' is int16, 'red' is uint16"):
        ndvi(np.ones(3, np.int16), np.ones(3, np.uint16))


@pytest.mark.parametrize("dtype", [bool, np.complex64, object, "datetime64[s]", "U3"])
def test_unsupported_dtypes_are_named(dtype):
    a = np.zeros(3, dtype=dtype)
    with pytest.raises(TypeError, match=r"band 'nir' has unsupported dtype .*supported: integer"):
        ndvi(a, a)
