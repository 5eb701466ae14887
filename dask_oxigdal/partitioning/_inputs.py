"""Normalising the point / geometry inputs that the spatial partitioners accept."""

from __future__ import annotations

import numbers
import operator
from typing import Any

import numpy as np

from dask_oxigdal.partitioning.extent import SpatialExtent, _as_geometry_array


def as_extent(extent: Any) -> SpatialExtent:
    """A :class:`SpatialExtent` from an extent or a ``(minx, miny, maxx, maxy)`` sequence."""
    if isinstance(extent, SpatialExtent):
        return extent
    try:
        return SpatialExtent.from_bounds(extent)
    except TypeError:
        raise TypeError(
            "extent must be a SpatialExtent or a (minx, miny, maxx, maxy) sequence; "
            f"got {type(extent).__name__}"
        ) from None


def as_count(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Validate a count argument (a real int, not a bool or float)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {value!r} of type {type(value).__name__}")
    v = operator.index(value)
    if v < minimum or (maximum is not None and v > maximum):
        valid = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name} must be {valid}; got {v}")
    return v


def as_xy(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two contiguous 1-D float64 arrays of equal length."""
    xa = np.ascontiguousarray(np.asarray(x, dtype=np.float64).ravel())
    ya = np.ascontiguousarray(np.asarray(y, dtype=np.float64).ravel())
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length; got {xa.size} and {ya.size}")
    return xa, ya


def points_or_bounds(data: Any, y: Any = None) -> tuple[str, np.ndarray, np.ndarray | None]:
    """Classify the partitioners' point input.

    Returns ``("xy", x, y)`` for coordinates, or ``("bounds", bounds, None)`` with
    the ``(n, 4)`` float64 bounds of geometries (NaN rows for empty / missing ones).

    Accepted: ``(x, y)`` arrays; an ``(n, 2)`` float array; a GeoSeries,
    GeoDataFrame, GeometryArray, object array or list of shapely geometries.
    """
    if y is not None:
        x, yy = as_xy(data, y)
        return "xy", x, yy
    if isinstance(data, np.ndarray) and data.dtype != object:
        if data.ndim == 2 and data.shape[1] == 2 and data.dtype.kind in "iuf":
            x, yy = as_xy(data[:, 0], data[:, 1])
            return "xy", x, yy
        raise TypeError(
            "expected x and y arrays, an (n, 2) coordinate array or geometries; "
            f"got a {data.dtype} array of shape {data.shape} and no y"
        )
    import shapely

    geoms = _as_geometry_array(data)
    bounds = np.ascontiguousarray(shapely.bounds(geoms), dtype=np.float64).reshape(-1, 4)
    return "bounds", bounds, None
