"""Spectral indices (NDVI, NDWI, EVI, SAVI, ...) over numpy, dask.array and xarray bands.

>>> import numpy as np
>>> from dask_oxigdal.spectral import ndvi, spectral_index
>>> nir = np.array([[4000, 3000], [0, 2500]], dtype=np.uint16)
>>> red = np.array([[1000, 3000], [0, 500]], dtype=np.uint16)
>>> ndvi(nir, red, nodata=0)
array([[0.6      , 0.       ],
       [      nan, 0.6666667]], dtype=float32)
>>> spectral_index("savi", nir=nir / 10000, red=red / 10000, L=0.5)[0, 0]
np.float32(0.45)

Every index is listed in :data:`INDICES` with its bands, parameters and
formula. Names are case-insensitive. Bands are passed as keyword arguments named
after the spectral band (``nir``, ``red``, ``green``, ``blue``, ``swir1``,
``swir2``), parameters under their usual symbols (``L``, ``G``, ``C1``, ...).

Semantics, for every index and every input kind:

* inputs of any integer or floating dtype (all bands of one index must share
  shape and dtype); integers are converted to floating point before any
  arithmetic, so there is no overflow or wrap-around;
* the output is float32, NaN where any band is NaN or equals the nodata value,
  or where the denominator is 0;
* ``nodata`` is compared in each band's dtype, as GDAL does: the value is cast to
  the band dtype (a float nodata of -3.4e38 matches float32 pixels holding
  ``np.float32(-3.4e38)``). A value the dtype cannot hold exactly (-9999 or 0.5
  for uint16 data, 1e40 for float32) matches no pixel. NaN means "no nodata"
  (NaN pixels are NaN in the output anyway);
* numpy in -> numpy out; dask.array in -> lazy dask.array out; xarray.DataArray
  in -> DataArray out (see :mod:`dask_oxigdal.raster`). DataArrays bring their
  own nodata (``.rio.nodata`` / ``_FillValue``) and, when they carry CF packing
  attributes (``scale_factor`` / ``add_offset``, as rioxarray leaves them
  without ``mask_and_scale``), are unpacked before the index is computed.

Precision: for the normalized differences, integers of at most 16 bits are
computed in float32, where their sums and differences are exact (the result is
the correctly rounded quotient); float16 and float32 inputs are computed in
float32 too (a few float32 ulps at most; huge values that would overflow are
halved first). Everything else, and every index with coefficients (EVI, EVI2,
SAVI), is computed in float64 and rounded once to float32: 64-bit integers
beyond 2**53 are rounded when converted, and float64 inputs beyond ~1e307 can
overflow the coefficients' sums.

Threads: on numpy input of at least ``oxigdal.kernels.parallel-min-elements``
pixels the parallel kernel runs on ``numba.get_num_threads()`` threads, except
inside a multi-threaded Dask worker, where it runs serially (see
:mod:`dask_oxigdal.kernels._parallel`).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from dask_oxigdal import raster
from dask_oxigdal._spectral_numpy import _check_out, _flatten, _launch
from dask_oxigdal.kernels._parallel import serial_kernels

__all__ = ["INDICES", "SpectralIndex", "ndvi", "spectral_index"]


@dataclass(frozen=True, eq=False)
class SpectralIndex:
    """One entry of :data:`INDICES`.

    Attributes
    ----------
    name : str
        Canonical (upper-case) name, e.g. ``"NDVI"``.
    long_name : str
        Human-readable name.
    bands : tuple of str
        Required band keywords, in formula order.
    params : mapping of str to float
        Parameters and their defaults (read-only; empty for most indices).
    formula : str
        The formula in terms of the band and parameter names.
    reference : str
        Where the index is defined.
    """

    name: str
    long_name: str
    bands: tuple[str, ...]
    formula: str
    reference: str
    params: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    _family: str = field(default="normalized_difference", repr=False)
    _coefficients: Callable[[Mapping[str, float]], tuple[float, ...]] = field(
        default=lambda p: (), repr=False
    )

    def __call__(self, *, nodata: Any = None, out: Any = None, **bands_and_params: Any) -> Any:
        """Compute this index; same as ``spectral_index(self.name, ...)``."""
        return spectral_index(self.name, nodata=nodata, out=out, **bands_and_params)


def _nd(name: str, long_name: str, a: str, b: str, reference: str) -> SpectralIndex:
    return SpectralIndex(
        name=name,
        long_name=long_name,
        bands=(a, b),
        formula=f"({a} - {b}) / ({a} + {b})",
        reference=reference,
    )


_REGISTRY = [
    _nd("NDVI", "Normalized Difference Vegetation Index", "nir", "red", "Rouse et al. 1974"),
    _nd("NDWI", "Normalized Difference Water Index (McFeeters)", "green", "nir", "McFeeters 1996"),
    _nd("MNDWI", "Modified Normalized Difference Water Index", "green", "swir1", "Xu 2006"),
    _nd("NDBI", "Normalized Difference Built-up Index", "swir1", "nir", "Zha et al. 2003"),
    _nd("NDMI", "Normalized Difference Moisture Index", "nir", "swir1", "Gao 1996 (as NDWI)"),
    _nd("NBR", "Normalized Burn Ratio", "nir", "swir2", "Key & Benson 2006"),
    _nd("NBR2", "Normalized Burn Ratio 2", "swir1", "swir2", "USGS Landsat NBR2"),
    _nd("GNDVI", "Green Normalized Difference Vegetation Index", "nir", "green", "Gitelson 1996"),
    SpectralIndex(
        name="SAVI",
        long_name="Soil Adjusted Vegetation Index",
        bands=("nir", "red"),
        formula="(1 + L) * (nir - red) / (nir + red + L)",
        reference="Huete 1988",
        params=MappingProxyType({"L": 0.5}),
        _family="linear2",
        _coefficients=lambda p: (1.0 + p["L"], 1.0, p["L"]),
    ),
    SpectralIndex(
        name="EVI",
        long_name="Enhanced Vegetation Index",
        bands=("nir", "red", "blue"),
        formula="G * (nir - red) / (nir + C1 * red - C2 * blue + L)",
        reference="Huete et al. 2002",
        params=MappingProxyType({"G": 2.5, "C1": 6.0, "C2": 7.5, "L": 1.0}),
        _family="evi",
        _coefficients=lambda p: (p["G"], p["C1"], p["C2"], p["L"]),
    ),
    SpectralIndex(
        name="EVI2",
        long_name="Two-band Enhanced Vegetation Index",
        bands=("nir", "red"),
        formula="G * (nir - red) / (nir + C * red + L)",
        reference="Jiang et al. 2008",
        params=MappingProxyType({"G": 2.5, "C": 2.4, "L": 1.0}),
        _family="linear2",
        _coefficients=lambda p: (p["G"], p["C"], p["L"]),
    ),
]

#: Every supported index by canonical (upper-case) name; read-only.
#: ``INDICES["SAVI"].bands == ("nir", "red")``, ``INDICES["SAVI"].params == {"L": 0.5}``.
INDICES: Mapping[str, SpectralIndex] = MappingProxyType({i.name: i for i in _REGISTRY})


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------
def ndvi(nir: Any, red: Any, *, nodata: Any = None, out: Any = None) -> Any:
    """Normalized Difference Vegetation Index, ``(nir - red) / (nir + red)``.

    Parameters
    ----------
    nir : array-like, dask.array.Array or xarray.DataArray
        Near-infrared band, any integer or floating dtype (e.g. uint16
        reflectance), any shape.
    red : same kind as `nir`
        Red band, same shape and dtype as `nir`.
    nodata : int or float, optional
        Pixels of either band equal to this value (after casting it to the band
        dtype) give NaN. For DataArrays, None (the default) reads each band's
        own nodata (``band.rio.nodata``, or ``_FillValue`` in its attributes or
        encoding); for numpy and dask input, None means no nodata.
    out : numpy.ndarray, optional
        Preallocated C- or F-contiguous float32 array of the bands' shape to
        write into (numpy input, or numpy-backed DataArrays). Other layouts
        work but go through a temporary.

    Returns
    -------
    numpy.ndarray, dask.array.Array or xarray.DataArray
        float32, the kind and shape of the inputs (``out`` itself when given);
        NaN where a band is NaN or nodata, or where ``nir + red == 0``.

    Raises
    ------
    ValueError
        If the bands differ in shape or dtype, or `out` is not float32 of that
        shape.
    TypeError
        If a band has an unsupported dtype (bool, complex, object), the bands
        mix array kinds, or `nodata` is not a real number.

    See Also
    --------
    spectral_index : every other index, by name.

    Examples
    --------
    >>> import numpy as np
    >>> ndvi(np.array([300, 0], np.uint16), np.array([100, 0], np.uint16))
    array([0.5, nan], dtype=float32)
    """
    return spectral_index("NDVI", nir=nir, red=red, nodata=nodata, out=out)


def spectral_index(
    name: str, *, nodata: Any = None, out: Any = None, **bands_and_params: Any
) -> Any:
    """Compute the spectral index `name` from bands passed by keyword.

    Parameters
    ----------
    name : str
        Index name, case-insensitive; one of :data:`INDICES`:

        ========  ======================  =====================================================
        name      bands                   formula (parameter defaults)
        ========  ======================  =====================================================
        NDVI      nir, red                (nir - red) / (nir + red)
        NDWI      green, nir              (green - nir) / (green + nir)  (McFeeters)
        MNDWI     green, swir1            (green - swir1) / (green + swir1)
        NDBI      swir1, nir              (swir1 - nir) / (swir1 + nir)
        NDMI      nir, swir1              (nir - swir1) / (nir + swir1)
        NBR       nir, swir2              (nir - swir2) / (nir + swir2)
        NBR2      swir1, swir2            (swir1 - swir2) / (swir1 + swir2)
        GNDVI     nir, green              (nir - green) / (nir + green)
        SAVI      nir, red                (1 + L) (nir - red) / (nir + red + L)  (L=0.5)
        EVI       nir, red, blue          G (nir - red) / (nir + C1 red - C2 blue + L)
                                          (G=2.5, C1=6, C2=7.5, L=1)
        EVI2      nir, red                G (nir - red) / (nir + C red + L)  (G=2.5, C=2.4, L=1)
        ========  ======================  =====================================================

    nodata : int or float, optional
        Pixels where any band equals this value (cast to the band dtype) give
        NaN. For DataArrays, None reads each band's own nodata
        (``band.rio.nodata`` or ``_FillValue``); otherwise None means none.
        Masked arrays (:class:`numpy.ma.MaskedArray`) give NaN where masked.
    out : numpy.ndarray, optional
        Preallocated float32 output of the bands' shape (numpy input, or
        numpy-backed DataArrays). C- or F-contiguous arrays are written
        directly, others through a temporary.
    **bands_and_params
        The index's bands (numpy arrays or array-likes, dask arrays or xarray
        DataArrays; all of one kind, shape and integer or floating dtype) and
        optionally its parameters as real numbers, e.g.
        ``spectral_index("savi", nir=b8, red=b4, L=0.25)``.

    Returns
    -------
    numpy.ndarray, dask.array.Array or xarray.DataArray
        float32 of the bands' kind and shape; NaN where a band is NaN or nodata
        or the denominator is 0. Dask results are lazy and chunked like the
        first band (the other bands are rechunked to match when they differ).
        DataArray results keep the first band's dims, coordinates and
        attributes (less fill/scale attributes), are named after the index and
        have their nodata written as NaN.

    Raises
    ------
    ValueError
        Unknown index name (the message lists the available ones); bands of
        different shapes or dtypes (naming both); an `out` of the wrong dtype or
        shape; a non-finite parameter.
    TypeError
        A missing band (naming it and the required ones); an unexpected keyword
        (naming it and the valid ones); an unsupported dtype or array kind; an
        `out` with dask input.

    Examples
    --------
    >>> import numpy as np
    >>> nir, red, blue = (np.array([v], np.float32) for v in (0.5, 0.1, 0.05))
    >>> spectral_index("EVI", nir=nir, red=red, blue=blue)
    array([0.5797101], dtype=float32)
    >>> spectral_index("ndwi", green=np.array([2, 0]), nir=np.array([6, 0]))
    array([-0.5,  nan], dtype=float32)
    """
    index = _lookup(name)
    bands, coefficients = _bind(index, bands_and_params)
    nodata = _check_nodata(nodata, "nodata")
    kind = raster.collection_kind(bands)
    compute = functools.partial(_compute, index.name, coefficients)
    if kind == "xarray":
        if out is not None and not all(isinstance(b.data, np.ndarray) for b in bands.values()):
            raise TypeError(_OUT_KIND_MESSAGE.format(kind="dask-backed xarray.DataArray"))
        return raster.apply_to_dataarrays(compute, bands, nodata=nodata, out=out, name=index.name)
    return compute(bands, (nodata,) * len(bands), out)


# --------------------------------------------------------------------------------------
# Argument handling
# --------------------------------------------------------------------------------------
def _available() -> str:
    return ", ".join(INDICES)


def _lookup(name: Any) -> SpectralIndex:
    if not isinstance(name, str):
        raise TypeError(
            f"index name must be a str, got {type(name).__name__} {name!r}; "
            f"available indices: {_available()}"
        )
    index = INDICES.get(name.upper())
    if index is None:
        raise ValueError(f"unknown spectral index {name!r}; available indices: {_available()}")
    return index


def _bind(index: SpectralIndex, kwargs: dict[str, Any]) -> tuple[dict[str, Any], tuple]:
    valid = (*index.bands, *index.params)
    unexpected = [k for k in kwargs if k not in valid]
    if unexpected:
        listed = ", ".join(repr(k) for k in unexpected)
        params = f"; parameters: {', '.join(index.params)}" if index.params else ""
        raise TypeError(
            f"{index.name} got unexpected keyword argument(s) {listed}; "
            f"bands: {', '.join(index.bands)}{params} (and nodata=, out=)"
        )
    missing = [b for b in index.bands if b not in kwargs]
    if missing:
        raise TypeError(
            f"{index.name} is missing band(s) {', '.join(repr(b) for b in missing)}; "
            f"required bands: {', '.join(index.bands)}"
        )
    params = dict(index.params)
    for key in index.params:
        if key in kwargs:
            value = kwargs[key]
            if not _is_real(value):
                raise TypeError(
                    f"{index.name} parameter {key} must be a real number, "
                    f"got {type(value).__name__} {value!r}"
                )
            if not math.isfinite(float(value)):
                raise ValueError(f"{index.name} parameter {key} must be finite, got {value!r}")
            params[key] = float(value)
    bands = {b: kwargs[b] for b in index.bands}
    return bands, tuple(float(c) for c in index._coefficients(params))


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_nodata(nodata: Any, what: str) -> Any:
    if nodata is None:
        return None
    if not _is_real(nodata):
        raise TypeError(
            f"{what} must be an int, a float or None, got {type(nodata).__name__} {nodata!r}"
        )
    try:
        float(nodata)
    except OverflowError:
        raise ValueError(f"{what} {nodata!r} is out of the float64 range") from None
    return nodata


_OUT_KIND_MESSAGE = (
    "out= is only supported for numpy inputs (and numpy-backed DataArrays), not {kind}; "
    "compute the result and copy it, or pass out=None"
)


def _as_band(name: str, value: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """numpy data (native byte order) and mask (for masked arrays) of one band."""
    mask = None
    if isinstance(value, np.ma.MaskedArray):
        mask = np.ma.getmask(value)
        value = value.data
        if mask is np.ma.nomask:
            mask = None
    array = np.asarray(value)
    raster.check_band_dtype(name, array.dtype)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array, mask


def _compute(index_name: str, coefficients: tuple, bands: dict[str, Any], nodatas, out) -> Any:
    """numpy or dask evaluation of one index (bands already bound and checked by name)."""
    nodatas = tuple(
        _check_nodata(n, f"nodata of band {b!r}") for n, b in zip(nodatas, bands, strict=True)
    )
    if raster.collection_kind(bands) == "dask":
        if out is not None:
            raise TypeError(_OUT_KIND_MESSAGE.format(kind="dask.array.Array"))
        for b, v in bands.items():
            raster.check_band_dtype(b, v.dtype)
        raster.check_same_layout(
            {b: v.shape for b, v in bands.items()},
            {b: v.dtype.newbyteorder("=") for b, v in bands.items()},
        )
        block = functools.partial(_block, index_name, coefficients, tuple(bands), nodatas)
        return raster.map_dask_blocks(block, list(bands.values()), token=index_name.lower())
    return _evaluate(index_name, coefficients, bands, nodatas, out)


def _block(index_name, coefficients, names, nodatas, *blocks) -> np.ndarray:
    """One dask block (module level: picklable for distributed workers).

    The kernel runs serially: Dask's scheduler already runs the blocks in parallel.
    """
    with serial_kernels():
        return _evaluate(
            index_name, coefficients, dict(zip(names, blocks, strict=True)), nodatas, None
        )


# --------------------------------------------------------------------------------------
# numpy evaluation
# --------------------------------------------------------------------------------------
def _evaluate(index_name: str, coefficients: tuple, bands: dict[str, Any], nodatas, out) -> Any:
    names = list(bands)
    arrays, masks = [], []
    for b in names:
        array, mask = _as_band(b, bands[b])
        arrays.append(array)
        masks.append(mask)
    raster.check_same_layout(
        {b: a.shape for b, a in zip(names, arrays, strict=True)},
        {b: a.dtype for b, a in zip(names, arrays, strict=True)},
    )
    shape = arrays[0].shape
    if out is not None:
        out = _check_out(out, shape)
    dtype = arrays[0].dtype
    typed = [raster.typed_nodata(n, dtype) for n in nodatas]
    if dtype == np.float16:  # numba has no float16 arithmetic; float16 -> float32 is exact
        arrays = [a.astype(np.float32) for a in arrays]
        typed = [(np.float32(v), use) for v, use in typed]
        dtype = np.dtype(np.float32)
    if out is None and arrays[0].size == 0:
        return np.empty(shape, dtype=np.float32)

    flat_in, flat_out, target = _flatten(arrays, out)
    if flat_out.size:
        _launch(INDICES[index_name]._family, dtype, coefficients, flat_in, typed, flat_out)

    result = target
    if out is not None and target is not out:
        np.copyto(out, target)
        result = out
    present = [m for m in masks if m is not None]
    if present:
        np.copyto(result, np.float32(np.nan), where=functools.reduce(np.logical_or, present))
    return result
