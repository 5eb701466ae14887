"""Axis-aligned spatial extents."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SpatialExtent"]


def _coerce_coordinate(name: str, value: Any) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"SpatialExtent {name} must be a real number (int or float); "
            f"got {value!r} of type {type(value).__name__}"
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class SpatialExtent:
    """An axis-aligned rectangle ``[minx, maxx] x [miny, maxy]``.

    Immutable and hashable. Coordinates are stored as Python floats.

    Parameters
    ----------
    minx, miny, maxx, maxy : float
        Finite bounds with ``minx < maxx`` and ``miny < maxy``.

    Raises
    ------
    TypeError
        If a bound is not a real number.
    ValueError
        If a bound is NaN or infinite, or the extent has zero or negative
        width or height. The message names the four values.

    Examples
    --------
    >>> e = SpatialExtent(0, 0, 10, 5)
    >>> e.width, e.height, e.area
    (10.0, 5.0, 50.0)
    >>> e.contains_xy(10, 5)
    True
    """

    minx: float
    miny: float
    maxx: float
    maxy: float

    def __post_init__(self) -> None:
        values = {}
        for name in ("minx", "miny", "maxx", "maxy"):
            v = _coerce_coordinate(name, getattr(self, name))
            object.__setattr__(self, name, v)
            values[name] = v
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        if not all(math.isfinite(v) for v in values.values()):
            raise ValueError(f"SpatialExtent bounds must be finite numbers; got {shown}")
        if not (values["minx"] < values["maxx"] and values["miny"] < values["maxy"]):
            raise ValueError(
                f"SpatialExtent needs minx < maxx and miny < maxy (non-empty area); got {shown}"
            )
        if not (math.isfinite(self.width) and math.isfinite(self.height)):
            raise ValueError(
                f"SpatialExtent width and height must be finite (overflowed); got {shown}"
            )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_bounds(cls, bounds: Iterable[float]) -> SpatialExtent:
        """Build an extent from a ``(minx, miny, maxx, maxy)`` sequence or array.

        Parameters
        ----------
        bounds : sequence of 4 numbers
            ``(minx, miny, maxx, maxy)``; a :class:`SpatialExtent` is returned as is.

        Returns
        -------
        SpatialExtent
        """
        if isinstance(bounds, SpatialExtent):
            return bounds
        values = list(np.asarray(bounds, dtype=object).ravel()) if _is_array(bounds) else None
        if values is None:
            try:
                values = list(bounds)
            except TypeError:
                raise TypeError(
                    "bounds must be a sequence (minx, miny, maxx, maxy) or a SpatialExtent; "
                    f"got {type(bounds).__name__}"
                ) from None
        if len(values) != 4:
            raise ValueError(
                f"bounds must have 4 values (minx, miny, maxx, maxy); got {len(values)}: {values!r}"
            )
        return cls(*(v.item() if isinstance(v, np.generic) else v for v in values))

    @classmethod
    def from_geometries(cls, geometries: Any) -> SpatialExtent:
        """Total bounds of geometries.

        Parameters
        ----------
        geometries : GeoSeries, GeoDataFrame, GeometryArray, array or list of shapely geometries
            Missing (``None``) and empty geometries are ignored, as in
            ``shapely.total_bounds``.

        Returns
        -------
        SpatialExtent
            The total bounds (the default ``total_bounds`` that
            ``dask_geopandas`` uses for Hilbert distances).

        Raises
        ------
        ValueError
            If there is no non-empty geometry, or the total bounds have zero
            width or height (e.g. a single point).
        """
        import shapely

        geoms = _as_geometry_array(geometries)
        if geoms.size == 0:
            raise ValueError("cannot compute the extent of zero geometries")
        bounds = shapely.total_bounds(geoms)
        if np.isnan(bounds).any():
            raise ValueError(
                f"cannot compute the extent of {geoms.size} geometries: all are empty or missing"
            )
        return cls(*(float(v) for v in bounds))

    @classmethod
    def from_xy(cls, x: Any, y: Any) -> SpatialExtent:
        """Bounding box of point coordinates.

        Parameters
        ----------
        x, y : array_like of float
            Coordinates; NaN is rejected.

        Returns
        -------
        SpatialExtent

        Raises
        ------
        ValueError
            If the arrays are empty, hold NaN, differ in shape, or the points
            span zero width or height.
        """
        xa = np.asarray(x, dtype=np.float64).ravel()
        ya = np.asarray(y, dtype=np.float64).ravel()
        if xa.shape != ya.shape:
            raise ValueError(f"x and y must have the same length; got {xa.size} and {ya.size}")
        if xa.size == 0:
            raise ValueError("cannot compute the extent of zero points")
        if np.isnan(xa).any() or np.isnan(ya).any():
            raise ValueError("cannot compute the extent of points with NaN coordinates")
        return cls(float(xa.min()), float(ya.min()), float(xa.max()), float(ya.max()))

    # ------------------------------------------------------------------ properties
    @property
    def width(self) -> float:
        """``maxx - minx``."""
        return self.maxx - self.minx

    @property
    def height(self) -> float:
        """``maxy - miny``."""
        return self.maxy - self.miny

    @property
    def area(self) -> float:
        """``width * height``."""
        return self.width * self.height

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)``."""
        return (self.minx, self.miny, self.maxx, self.maxy)

    @property
    def center(self) -> tuple[float, float]:
        """``((minx + maxx) / 2, (miny + maxy) / 2)``."""
        return ((self.minx + self.maxx) / 2.0, (self.miny + self.maxy) / 2.0)

    # ------------------------------------------------------------------ predicates
    def contains(self, other: SpatialExtent | Iterable[float]) -> bool:
        """Whether ``other`` lies entirely inside this extent (boundaries included).

        Parameters
        ----------
        other : SpatialExtent or sequence of 4 numbers

        Returns
        -------
        bool
        """
        o = SpatialExtent.from_bounds(other)
        return (
            self.minx <= o.minx
            and o.maxx <= self.maxx
            and self.miny <= o.miny
            and o.maxy <= self.maxy
        )

    def contains_xy(self, x: Any, y: Any) -> bool | np.ndarray:
        """Whether points lie inside the closed extent.

        Parameters
        ----------
        x, y : float or array_like
            Point coordinates. NaN is never contained.

        Returns
        -------
        bool or numpy.ndarray of bool
            A bool for scalar input, otherwise a boolean array.
        """
        xa = np.asarray(x, dtype=np.float64)
        ya = np.asarray(y, dtype=np.float64)
        inside = (xa >= self.minx) & (xa <= self.maxx) & (ya >= self.miny) & (ya <= self.maxy)
        return bool(inside) if inside.ndim == 0 else inside

    def intersects(self, other: SpatialExtent | Iterable[float]) -> bool:
        """Whether the two closed extents share at least one point (touching counts).

        Parameters
        ----------
        other : SpatialExtent or sequence of 4 numbers

        Returns
        -------
        bool
        """
        o = SpatialExtent.from_bounds(other)
        return (
            self.minx <= o.maxx
            and o.minx <= self.maxx
            and self.miny <= o.maxy
            and o.miny <= self.maxy
        )

    def intersection(self, other: SpatialExtent | Iterable[float]) -> SpatialExtent | None:
        """The overlap of two extents, or None when it has no area.

        Parameters
        ----------
        other : SpatialExtent or sequence of 4 numbers

        Returns
        -------
        SpatialExtent or None
        """
        o = SpatialExtent.from_bounds(other)
        minx, miny = max(self.minx, o.minx), max(self.miny, o.miny)
        maxx, maxy = min(self.maxx, o.maxx), min(self.maxy, o.maxy)
        if minx < maxx and miny < maxy:
            return SpatialExtent(minx, miny, maxx, maxy)
        return None

    def union(self, other: SpatialExtent | Iterable[float]) -> SpatialExtent:
        """The smallest extent holding both.

        Parameters
        ----------
        other : SpatialExtent or sequence of 4 numbers

        Returns
        -------
        SpatialExtent
        """
        o = SpatialExtent.from_bounds(other)
        return SpatialExtent(
            min(self.minx, o.minx),
            min(self.miny, o.miny),
            max(self.maxx, o.maxx),
            max(self.maxy, o.maxy),
        )

    def to_box(self) -> Any:
        """The extent as a ``shapely`` Polygon.

        Returns
        -------
        shapely.Polygon
        """
        import shapely

        return shapely.box(self.minx, self.miny, self.maxx, self.maxy)


def _is_array(obj: Any) -> bool:
    if isinstance(obj, list | tuple):
        return False
    return isinstance(obj, np.ndarray) or hasattr(obj, "__array__")


def _as_geometry_array(obj: Any) -> np.ndarray:
    """An object ndarray of shapely geometries (or None) from the supported containers."""
    import dask

    if dask.is_dask_collection(obj):
        raise TypeError(
            f"expected in-memory geometries; got the Dask collection {type(obj).__name__} "
            "(apply the partitioner per partition with map_partitions, or compute it first)"
        )
    geometry = getattr(obj, "geometry", None)  # GeoDataFrame / GeoSeries
    if geometry is not None and hasattr(geometry, "values") and not _is_shapely(obj):
        obj = geometry.values
    if isinstance(obj, list | tuple):
        arr = np.empty(len(obj), dtype=object)
        arr[:] = obj
        return arr
    arr = np.asarray(obj)
    if arr.dtype != object:
        raise TypeError(
            "expected geometries (GeoSeries, GeoDataFrame, GeometryArray or an object array "
            f"of shapely geometries); got {type(obj).__name__} with dtype {arr.dtype}"
        )
    return arr.ravel()


def _is_shapely(obj: Any) -> bool:
    import shapely

    return isinstance(obj, shapely.Geometry)
