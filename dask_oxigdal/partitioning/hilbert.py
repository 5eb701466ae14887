"""Hilbert-curve partitioning compatible with geopandas / dask-geopandas distances."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_oxigdal.kernels import hilbert as _k
from dask_oxigdal.kernels import tiles as _kt
from dask_oxigdal.kernels._parallel import parallel_launch
from dask_oxigdal.partitioning._inputs import as_count, as_extent, points_or_bounds
from dask_oxigdal.partitioning.extent import SpatialExtent

__all__ = ["HilbertPartition", "HilbertPartitioner"]

MAX_LEVEL = _k.MAX_LEVEL


@dataclass(frozen=True, eq=False, slots=True)
class HilbertPartition:
    """Result of :meth:`HilbertPartitioner.partition`.

    Attributes
    ----------
    ids : numpy.ndarray of int64, shape (n,)
        Partition of each input row, ``0 .. npartitions - 1``.
    distances : numpy.ndarray of uint32, shape (n,)
        Hilbert distance of each input row.
    cuts : numpy.ndarray of uint32, shape (npartitions - 1,)
        Partition ``i`` holds the distances ``cuts[i - 1] <= d < cuts[i]``
        (partition 0: ``d < cuts[0]``; the last: ``d >= cuts[-1]``).
    counts : numpy.ndarray of int64, shape (npartitions,)
        Rows per partition.
    """

    ids: np.ndarray
    distances: np.ndarray
    cuts: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class HilbertPartitioner:
    """Partition points or geometries into contiguous ranges of a Hilbert curve.

    Distances are bit-identical to ``geopandas.GeoSeries.hilbert_distance`` and
    ``dask_geopandas``' ``hilbert_distance`` given the same ``total_bounds``
    (this partitioner's :attr:`extent`) and ``level``.

    Parameters
    ----------
    extent : SpatialExtent or sequence of 4 numbers
        The total bounds the curve is laid over (geopandas' ``total_bounds``).
    npartitions : int
        Number of partitions, at least 1.
    level : int, default 16
        Curve precision, 1 to 16: the extent is divided into
        ``2**level x 2**level`` cells and distances lie in ``[0, 4**level)``.
    cuts : array_like of int, optional
        Previously fitted cut points (``npartitions - 1`` non-decreasing
        distances), e.g. :attr:`cuts` of a fitted partitioner. Without them,
        call :meth:`fit` or :meth:`partition` before :meth:`assign`.

    Notes
    -----
    **Which point is encoded.** Like geopandas and dask-geopandas, a geometry
    is encoded by the *midpoint of its bounding box*,
    ``((minx + maxx) / 2, (miny + maxy) / 2)``, not by its centroid or a
    representative point (for a point the two agree). x/y input encodes the
    points themselves.

    **Which extent.** Distances depend on the extent. With no ``total_bounds``,
    ``dask_geopandas`` uses the total bounds of the geometries (what
    :meth:`from_data` and :meth:`SpatialExtent.from_geometries` compute), while
    ``geopandas.GeoSeries.hilbert_distance`` uses the bounds of the midpoints;
    pass the same extent to compare with either.

    **Discretisation.** ``i = trunc(clip((x - minx) * ((2**level - 1) / (maxx - minx)),
    0, 2**level - 1))`` and the same for y, in that floating-point order, as
    geopandas does. Points on the maximum edge map to the last cell; points
    outside the extent are clipped onto its border (they share the distance
    of the nearest border cell), exactly like geopandas / dask-geopandas.

    **Invalid input.** NaN coordinates and empty or missing geometries raise
    ``ValueError`` (geopandas raises too; it has no distance for them).
    Infinite coordinates are clipped like any other outside point.

    **Partitions.** :meth:`fit` sorts the distances and takes the cut points
    at ranks ``i * n // npartitions``: where distances are distinct, partition
    sizes differ by at most one. Rows with equal distances always land in the
    same partition (a tie that straddles a cut goes wholly to the later
    partition), so heavy ties can make partitions uneven or empty. Fitting on
    zero rows spreads the cuts evenly over ``[0, 4**level)``.

    Examples
    --------
    >>> hp = HilbertPartitioner((0, 0, 1, 1), npartitions=4)
    >>> hp.distances([0.0, 1.0], [0.0, 0.0]).tolist()
    [0, 4294967295]
    >>> x = np.linspace(0, 1, 10)
    >>> part = hp.partition(x, x**2)
    >>> part.counts.tolist()
    [2, 3, 2, 3]
    >>> part.ids.tolist()  # contiguous along the curve, not along x
    [0, 0, 1, 1, 1, 3, 3, 3, 2, 2]
    """

    def __init__(self, extent: Any, npartitions: int, level: int = 16, cuts: Any = None) -> None:
        self.extent: SpatialExtent = as_extent(extent)
        self.npartitions = as_count("npartitions", npartitions)
        self.level = as_count("level", level, minimum=1, maximum=MAX_LEVEL)
        side = float((1 << self.level) - 1)
        e = self.extent
        if not (np.isfinite(side / e.width) and np.isfinite(side / e.height)):
            raise ValueError(
                f"extent {e.bounds} is too small for Hilbert level {self.level}: "
                "the cell scale overflows float64"
            )
        self._cuts: np.ndarray | None = None
        self._table: tuple | None = None
        if cuts is not None:
            self._set_cuts(cuts)

    @classmethod
    def from_data(
        cls, data: Any, npartitions: int, level: int = 16, *, y: Any = None
    ) -> HilbertPartitioner:
        """A partitioner over the total bounds of ``data``, fitted to it.

        The total bounds of the geometries (not of their midpoints) are the
        default ``total_bounds`` of ``dask_geopandas``' ``hilbert_distance``.
        For x/y input the extent is the points' bounding box.

        Parameters
        ----------
        data, y
            As in :meth:`distances`.
        npartitions, level
            As in the constructor.

        Returns
        -------
        HilbertPartitioner
            Fitted on ``data``.
        """
        kind, a, b = points_or_bounds(data, y)
        if kind == "xy":
            extent = SpatialExtent.from_xy(a, b)
        else:
            if a.shape[0] == 0 or np.isnan(a).any():
                raise ValueError(
                    "from_data needs at least one geometry and no empty or missing ones"
                )
            extent = SpatialExtent(a[:, 0].min(), a[:, 1].min(), a[:, 2].max(), a[:, 3].max())
        self = cls(extent, npartitions, level)
        self._fit_distances(self._distances(kind, a, b))
        return self

    def __repr__(self) -> str:
        fitted = "fitted" if self._cuts is not None else "not fitted"
        return (
            f"{type(self).__name__}(extent={self.extent!r}, npartitions={self.npartitions}, "
            f"level={self.level}) [{fitted}]"
        )

    # ------------------------------------------------------------------ distances
    def distances(self, data: Any, y: Any = None) -> np.ndarray:
        """Hilbert distances.

        Parameters
        ----------
        data : array_like, GeoSeries, GeoDataFrame or array of shapely geometries
            x coordinates (with ``y``), an ``(n, 2)`` float array of
            coordinates, or geometries (encoded by the midpoints of their
            bounds).
        y : array_like, optional
            y coordinates when ``data`` holds x coordinates.

        Returns
        -------
        numpy.ndarray of uint32
            One distance per row, in ``[0, 4**level)``; the same values as
            ``GeoSeries.hilbert_distance(total_bounds=extent.bounds, level=level)``.

        Raises
        ------
        ValueError
            For NaN coordinates or empty / missing geometries (naming the first
            offending row), or x and y of different lengths.
        """
        kind, a, b = points_or_bounds(data, y)
        return self._distances(kind, a, b)

    def _distances(self, kind: str, a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        n = a.shape[0]
        out = np.empty(n, dtype=np.uint32)
        e = self.extent
        args = (e.minx, e.miny, e.maxx, e.maxy, self.level, out)
        with parallel_launch(n) as threads:
            if kind == "xy":
                kernel = _k.hilbert_xy if threads == 1 else _k.hilbert_xy_parallel
                bad = kernel(a, b, *args)
            else:
                kernel = _k.hilbert_bounds if threads == 1 else _k.hilbert_bounds_parallel
                bad = kernel(a, *args)
        if bad:
            if kind == "xy":
                row = int(np.flatnonzero(np.isnan(a) | np.isnan(b))[0])
                raise ValueError(
                    f"Hilbert distance is undefined for NaN coordinates: {bad} of {n} points "
                    f"have a NaN coordinate (first at row {row}: "
                    f"x={a[row]!r}, y={b[row]!r})"
                )
            row = int(np.flatnonzero(np.isnan(a).any(axis=1))[0])
            raise ValueError(
                f"Hilbert distance cannot be computed for empty or missing geometries: {bad} "
                f"of {n} geometries are empty or missing (first at row {row})"
            )
        return out

    # ------------------------------------------------------------------ fitting
    @property
    def cuts(self) -> np.ndarray | None:
        """Fitted cut points (uint32, ``npartitions - 1`` values), or None before a fit."""
        return self._cuts

    def fit(self, data: Any, y: Any = None) -> HilbertPartitioner:
        """Choose cut points that split ``data`` into near-equal Hilbert ranges.

        Parameters
        ----------
        data, y
            As in :meth:`distances`.

        Returns
        -------
        HilbertPartitioner
            ``self``, with :attr:`cuts` set.
        """
        self._fit_distances(self.distances(data, y))
        return self

    def fit_distances(self, distances: Any) -> HilbertPartitioner:
        """:meth:`fit` from precomputed distances (e.g. a sample, or dask-geopandas').

        Parameters
        ----------
        distances : array_like of int
            Hilbert distances in ``[0, 4**level)``.

        Returns
        -------
        HilbertPartitioner
            ``self``, with :attr:`cuts` set.
        """
        self._fit_distances(self._check_distances(distances))
        return self

    def _fit_distances(self, d: np.ndarray) -> None:
        p = self.npartitions
        n = d.shape[0]
        if n == 0:
            cuts = (np.arange(1, p, dtype=np.int64) * (1 << (2 * self.level))) // p
        else:
            ranks = (np.arange(1, p, dtype=np.int64) * n) // p
            cuts = np.sort(d)[ranks] if p > 1 else np.empty(0, dtype=np.uint32)
        self._set_cuts(cuts)

    def _set_cuts(self, cuts: Any) -> None:
        c = np.asarray(cuts)
        if c.ndim != 1 or c.shape[0] != self.npartitions - 1:
            raise ValueError(
                f"cuts must be a 1-D array of npartitions - 1 = {self.npartitions - 1} "
                f"distances; got shape {c.shape}"
            )
        c = self._check_distances(c, what="cuts")
        if c.shape[0] > 1 and not (c[1:] >= c[:-1]).all():
            raise ValueError(f"cuts must be sorted in non-decreasing order; got {c.tolist()}")
        c.flags.writeable = False
        self._cuts = c
        self._table = _kt.bin_table(c, _kt.BUCKETS)

    def _check_distances(self, values: Any, what: str = "distances") -> np.ndarray:
        v = np.asarray(values)
        if v.dtype.kind not in "iu" and not (v.size == 0 and v.dtype.kind == "f"):
            raise TypeError(f"{what} must be integers; got dtype {v.dtype}")
        v = v.ravel()
        top = 1 << (2 * self.level)
        if v.size and (v.min() < 0 or v.max() >= top):
            raise ValueError(
                f"{what} must lie in [0, 4**level) = [0, {top}) for level {self.level}; "
                f"got values from {v.min()} to {v.max()}"
            )
        return np.ascontiguousarray(v, dtype=np.uint32)

    # ------------------------------------------------------------------ assignment
    def assign(self, data: Any, y: Any = None) -> np.ndarray:
        """Partition id of each row under the fitted cuts.

        Parameters
        ----------
        data, y
            As in :meth:`distances`.

        Returns
        -------
        numpy.ndarray of int64
            ``searchsorted(cuts, distance, side="right")`` per row.

        Raises
        ------
        RuntimeError
            If the partitioner has not been fitted.
        """
        return self.assign_distances(self.distances(data, y))

    def assign_distances(self, distances: Any) -> np.ndarray:
        """Partition id of precomputed Hilbert distances (see :meth:`assign`).

        Parameters
        ----------
        distances : array_like of int
            Distances in ``[0, 4**level)``.

        Returns
        -------
        numpy.ndarray of int64
        """
        if self._cuts is None:
            raise RuntimeError(
                "HilbertPartitioner has no cut points: call fit() or partition() first, "
                "or pass cuts= to the constructor"
            )
        d = distances
        if not (isinstance(d, np.ndarray) and d.dtype == np.uint32 and d.flags.c_contiguous):
            d = self._check_distances(d)
        n = d.shape[0]
        out = np.empty(n, dtype=np.int64)
        assert self._table is not None
        with parallel_launch(n) as threads:
            kernel = _kt.search_right if threads == 1 else _kt.search_right_parallel
            kernel(self._cuts, *self._table, d, out)
        return out

    def partition(self, data: Any, y: Any = None) -> HilbertPartition:
        """Fit the cuts to ``data`` and assign its rows, computing distances once.

        Parameters
        ----------
        data, y
            As in :meth:`distances`.

        Returns
        -------
        HilbertPartition
            Per-row ids and distances, the cuts, and the partition sizes.
        """
        d = self.distances(data, y)
        self._fit_distances(d)
        ids = self.assign_distances(d)
        counts = np.bincount(ids, minlength=self.npartitions).astype(np.int64, copy=False)
        assert self._cuts is not None
        return HilbertPartition(ids, d, self._cuts, counts)
