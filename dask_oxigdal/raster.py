"""Raster front ends: numpy, dask.array and xarray / rioxarray band handling.

The band-math functions (:func:`dask_oxigdal.spectral.spectral_index` and
friends) take several *bands* of one raster and return one array of the same
kind:

* numpy (or anything :func:`numpy.asarray` accepts) -> :class:`numpy.ndarray`;
* :class:`dask.array.Array` -> a lazy :class:`dask.array.Array` built with
  ``map_blocks``, chunked like the first band (other bands are rechunked to
  match when their chunks differ);
* :class:`xarray.DataArray` (numpy- or dask-backed) -> a DataArray with the
  dims, coordinates and attributes of the first band. The nodata value of each
  band is read with :func:`nodata_of`, bands with CF packing attributes
  (``scale_factor`` / ``add_offset``) are unpacked first, and the output's
  nodata is NaN.

This module holds the collection-kind logic shared by those functions. It
imports neither xarray nor rioxarray at import time: they are optional extras.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "apply_to_dataarrays",
    "check_band_dtype",
    "check_same_layout",
    "collection_kind",
    "map_dask_blocks",
    "nodata_of",
    "typed_nodata",
]

#: Attributes that describe how the *input* was stored (fill values, packing,
#: valid ranges). They are wrong for a float32 index computed from it, so they
#: are not copied onto the output.
STORAGE_ATTRS = frozenset(
    {
        "_FillValue",
        "missing_value",
        "fill_value",
        "nodata",
        "nodatavals",
        "_Unsigned",
        "scale_factor",
        "add_offset",
        "scales",
        "offsets",
        "valid_range",
        "valid_min",
        "valid_max",
        "dtype",
    }
)


def _is_dataarray(x: Any) -> bool:
    xr = sys.modules.get("xarray")
    return xr is not None and isinstance(x, xr.DataArray)


def _is_dask_array(x: Any) -> bool:
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(x, da.Array)


def _kind_of(x: Any) -> str:
    if _is_dataarray(x):
        return "xarray"
    if _is_dask_array(x):
        return "dask"
    xr = sys.modules.get("xarray")
    if xr is not None and isinstance(x, xr.Dataset):
        raise TypeError("got an xarray.Dataset; pass one xarray.DataArray per band, e.g. ds['B08']")
    return "numpy"


def collection_kind(bands: Mapping[str, Any]) -> str:
    """Which front end handles these bands.

    Parameters
    ----------
    bands : mapping of str to array-like
        Band name -> band data.

    Returns
    -------
    str
        ``"xarray"`` when every band is an :class:`xarray.DataArray`, ``"dask"``
        when every band is a :class:`dask.array.Array`, otherwise ``"numpy"``.

    Raises
    ------
    TypeError
        If the bands mix DataArrays, dask arrays and in-memory arrays; the
        message lists the kind of every band.
    """
    if all(type(value) is np.ndarray for value in bands.values()):
        return "numpy"
    kinds = {name: _kind_of(value) for name, value in bands.items()}
    distinct = set(kinds.values())
    if len(distinct) <= 1:
        return distinct.pop() if distinct else "numpy"
    described = ", ".join(f"{name}: {_describe_type(bands[name])}" for name in kinds)
    raise TypeError(
        "all bands must be of one kind (all numpy arrays, all dask arrays or all "
        f"xarray DataArrays); got {described}"
    )


def _describe_type(x: Any) -> str:
    t = type(x)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def check_band_dtype(name: str, dtype: np.dtype) -> None:
    """Check that a band has an integer or floating dtype.

    Parameters
    ----------
    name : str
        The band's name, for the message.
    dtype : numpy.dtype
        Its dtype.

    Raises
    ------
    TypeError
        For bool, complex, object, string, datetime and other dtypes; the message
        names the band, its dtype and the supported ones.
    """
    if np.dtype(dtype).kind not in "iuf":
        raise TypeError(
            f"band {name!r} has unsupported dtype {dtype}; "
            "supported: integer (int8..int64, uint8..uint64) and floating "
            "(float16, float32, float64) dtypes"
        )


def check_same_layout(shapes: Mapping[str, tuple], dtypes: Mapping[str, np.dtype]) -> None:
    """Check that every band has the shape and the dtype of the first one.

    Parameters
    ----------
    shapes : mapping of str to tuple
        Band name -> shape.
    dtypes : mapping of str to numpy.dtype
        Band name -> dtype.

    Raises
    ------
    ValueError
        If a shape is unknown (dask arrays with NaN chunk sizes) or differs from
        the first band's, or a dtype differs; the message names both bands and
        both shapes or dtypes.
    """
    names = list(shapes)
    for name in names:
        if any(isinstance(n, float) and math.isnan(n) for n in shapes[name]):
            raise ValueError(
                f"band {name!r} has unknown chunk sizes (shape {shapes[name]}); "
                "call .compute_chunk_sizes() on it first"
            )
    first = names[0]
    for name in names[1:]:
        if tuple(shapes[name]) != tuple(shapes[first]):
            raise ValueError(
                f"bands must have the same shape: {first!r} has shape {tuple(shapes[first])}, "
                f"{name!r} has shape {tuple(shapes[name])}"
            )
    for name in names[1:]:
        if dtypes[name] != dtypes[first]:
            raise ValueError(
                f"bands must have the same dtype: {first!r} is {dtypes[first]}, "
                f"{name!r} is {dtypes[name]}; cast one of them first, "
                f"e.g. {name}.astype({str(dtypes[first])!r})"
            )


def map_dask_blocks(
    block_function: Callable[..., np.ndarray], bands: Sequence[Any], *, token: str
) -> Any:
    """Apply an element-wise numpy function to aligned blocks of dask arrays, lazily.

    Parameters
    ----------
    block_function : callable
        ``block_function(*blocks) -> numpy.ndarray`` of float32, the blocks'
        shape. Must be picklable (a module-level function or a
        :func:`functools.partial` of one) to run on distributed workers.
    bands : sequence of dask.array.Array
        Arrays of one shape; bands whose chunks differ from the first band's are
        rechunked to match it.
    token : str
        Prefix of the output's key names.

    Returns
    -------
    dask.array.Array
        float32, the bands' shape and the first band's chunks; nothing is computed.
    """
    import dask.array as da

    first = bands[0]
    # map_blocks does not align blocks by itself (dask 2026.8 calls blockwise with
    # align_arrays=False): bring every band to the first band's chunks.
    aligned = [first] + [
        b if b.chunks == first.chunks else b.rechunk(first.chunks) for b in bands[1:]
    ]
    return da.map_blocks(
        block_function,
        *aligned,
        dtype=np.float32,
        meta=np.empty((0,) * first.ndim, dtype=np.float32),
        token=token,
    )


def _attrs_nodata(band: Any) -> Any:
    attrs = band.attrs
    for key in ("_FillValue", "missing_value", "fill_value", "nodata"):
        if attrs.get(key) is not None:
            return attrs[key]
    fill = band.encoding.get("_FillValue")
    if fill is not None:
        # In the encoding, the fill value was already decoded to NaN (masked=True or
        # mask_and_scale): there is nothing left to mask in float data.
        return None if np.issubdtype(band.dtype, np.floating) else fill
    vals = attrs.get("nodatavals")
    if isinstance(vals, (tuple, list)) and vals:
        return vals[0]
    return None


def nodata_of(band: Any) -> float | int | None:
    """The nodata value of an :class:`xarray.DataArray`, as rioxarray sees it.

    Parameters
    ----------
    band : xarray.DataArray
        A raster band, for example from :func:`rioxarray.open_rasterio`.

    Returns
    -------
    number or None
        ``band.rio.nodata`` when rioxarray is installed (it reads ``_FillValue``,
        ``missing_value``, ``fill_value`` or ``nodata`` from the attributes, and
        gives NaN when the fill value sits in the encoding, i.e. the data were
        already masked); otherwise the same attributes read directly. ``None``
        when the band declares no nodata.

    Notes
    -----
    When rioxarray cannot convert a declared value to the band's dtype (a
    ``_FillValue`` of -9999 on uint16 data, say), the raw attribute is
    returned: the band-math functions then treat it as matching no pixel.
    """
    try:
        import rioxarray  # noqa: F401  (registers the .rio accessor)
    except ImportError:  # pragma: no cover - rioxarray is in the test extras
        value = _attrs_nodata(band)
    else:
        try:
            value = band.rio.nodata
        except (OverflowError, ValueError, TypeError):
            value = _attrs_nodata(band)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    return value


def _check_same_coords(bands: Mapping[str, Any]) -> None:
    names = list(bands)
    first = bands[names[0]]
    for name in names[1:]:
        other = bands[name]
        if other.dims != first.dims:
            raise ValueError(
                f"bands must have the same dims: {names[0]!r} has dims {first.dims}, "
                f"{name!r} has dims {other.dims}"
            )
        for dim, index in first.indexes.items():
            if dim in other.indexes and not index.equals(other.indexes[dim]):
                raise ValueError(
                    f"bands must share their coordinates: coordinate {dim!r} of {names[0]!r} "
                    f"differs from that of {name!r} "
                    f"({_short(index)} vs {_short(other.indexes[dim])}); "
                    "select single bands with .sel(band=...) or align them first"
                )


def _short(index: Any) -> str:
    values = list(index[:3])
    more = ", ..." if len(index) > 3 else ""
    return f"[{', '.join(str(v) for v in values)}{more}] (length {len(index)})"


def apply_to_dataarrays(
    compute: Callable[[dict[str, Any], tuple, Any], Any],
    bands: Mapping[str, Any],
    *,
    nodata: Any,
    out: Any,
    name: str,
) -> Any:
    """Run ``compute`` on the data of DataArrays and wrap the result like the first band.

    Parameters
    ----------
    compute : callable
        ``compute(data, nodatas, out)`` with ``data`` a dict band name -> numpy
        or dask array, ``nodatas`` one nodata value (or None) per band, and
        ``out`` None or a numpy array; returns an array of the bands' shape.
    bands : mapping of str to xarray.DataArray
        Bands with identical dims and index coordinates.
    nodata : number or None
        Explicit nodata for every band; None reads each band's own with
        :func:`nodata_of`.
    out : numpy.ndarray, xarray.DataArray or None
        Preallocated float32 output for numpy-backed bands.
    name : str
        The index name: the output's ``name`` (lower case) and ``long_name``.

    Returns
    -------
    xarray.DataArray
        float32 with the bands' dims and coordinates (non-index coordinates that
        conflict between bands, such as the scalar ``band`` left by
        ``.sel(band=4)``, are dropped), the first band's attributes without the
        storage attributes in :data:`STORAGE_ATTRS`, ``long_name`` set to the
        index name and the nodata written as NaN. Dask-backed bands give a lazy
        result.
    """
    import xarray as xr

    _check_same_coords(bands)
    names = list(bands)
    for n in names:
        check_band_dtype(n, bands[n].dtype)
    check_same_layout(
        {n: bands[n].shape for n in names}, {n: bands[n].dtype.newbyteorder("=") for n in names}
    )
    if nodata is None:
        nodatas = tuple(nodata_of(bands[n]) for n in names)
    else:
        nodatas = (nodata,) * len(names)
    data_arrays = dict(bands)
    packing = {n: _packing(bands[n]) for n in names}
    if any(p != (1.0, 0.0) for p in packing.values()):
        # CF packing (rioxarray's scale_factor / add_offset attributes of data opened
        # without mask_and_scale): the index is defined on the unpacked values.
        for n, nd in zip(names, nodatas, strict=True):
            data_arrays[n] = _unpack(bands[n], nd, *packing[n])
        nodatas = (None,) * len(names)
    if _is_dataarray(out):
        out = out.data

    def _func(*data: Any) -> Any:
        return compute(dict(zip(names, data, strict=True)), nodatas, out)

    result = xr.apply_ufunc(
        _func,
        *(data_arrays[n] for n in names),
        dask="allowed",
        join="exact",
        keep_attrs="override",  # keeps the attributes of coordinates such as spatial_ref
    )
    first = bands[names[0]]
    attrs = {k: v for k, v in first.attrs.items() if k not in STORAGE_ATTRS}
    attrs["long_name"] = name
    result.attrs = attrs
    result.name = name.lower()
    if "grid_mapping" in first.encoding:
        result.encoding["grid_mapping"] = first.encoding["grid_mapping"]
    _write_nan_nodata(result)
    return result


def _packing(band: Any) -> tuple[float, float]:
    """``(scale_factor, add_offset)`` declared in the attributes, (1.0, 0.0) when absent."""
    values = []
    for key, default in (("scale_factor", 1.0), ("add_offset", 0.0)):
        value = band.attrs.get(key, default)
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            raise ValueError(
                f"attribute {key}={value!r} of band {band.name!r} is not a number"
            ) from None
    return values[0], values[1]


def _unpack(band: Any, nodata: Any, scale: float, offset: float) -> Any:
    """float64 ``band * scale + offset`` with nodata pixels (compared raw) set to NaN."""
    value, use = typed_nodata(nodata, band.dtype)
    unpacked = band.astype(np.float64)
    if use:
        unpacked = unpacked.where(band != value)
    return unpacked * scale + offset


def typed_nodata(nodata: Any, dtype: np.dtype) -> tuple[Any, bool]:
    """A nodata value as the kernels compare it: cast to the band dtype, GDAL style.

    Parameters
    ----------
    nodata : int, float or None
        The declared nodata value.
    dtype : numpy.dtype
        The band's integer or floating dtype.

    Returns
    -------
    tuple
        ``(value, use)``: ``value`` is a scalar of `dtype` and ``use`` says
        whether pixels equal to it are nodata. ``use`` is False for None and
        NaN, for non-integral or out-of-range values with integer dtypes, and
        for finite values that overflow a floating dtype.
    """
    dtype = np.dtype(dtype)
    none = dtype.type(0), False
    if nodata is None:
        return none
    value = float(nodata)
    if math.isnan(value):
        return none
    if dtype.kind == "f":
        with np.errstate(over="ignore"):
            typed = dtype.type(value)
        if math.isinf(typed) and not math.isinf(value):
            return none
        return typed, True
    if isinstance(nodata, (int, np.integer)):
        integer = int(nodata)
    elif value.is_integer():
        integer = int(value)
    else:
        return none
    info = np.iinfo(dtype)
    if not info.min <= integer <= info.max:
        return none
    return dtype.type(integer), True


def _write_nan_nodata(result: Any) -> None:
    try:
        import rioxarray  # noqa: F401
    except ImportError:  # pragma: no cover - rioxarray is in the test extras
        result.attrs["_FillValue"] = np.float32(np.nan)
        return
    result.rio.write_nodata(np.nan, encoded=False, inplace=True)
