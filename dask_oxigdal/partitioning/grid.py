"""Regular grid partitioners: :class:`TilePartitioner` and :class:`StripPartitioner`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from dask_oxigdal.kernels import tiles as _k
from dask_oxigdal.kernels._parallel import parallel_launch
from dask_oxigdal.partitioning._inputs import as_count, as_extent, points_or_bounds
from dask_oxigdal.partitioning.extent import SpatialExtent

__all__ = ["GridPartition", "StripPartitioner", "TilePartitioner"]

#: Largest number of divisions along one axis (edges are materialised, 8 bytes each).
MAX_DIVISIONS = 2**24


@dataclass(frozen=True, eq=False, slots=True)
class GridPartition:
    """The tiles of a regular grid, as numpy arrays.

    Attributes
    ----------
    extent : SpatialExtent
        The partitioned extent.
    nx, ny : int
        Number of columns (along x) and rows (along y).
    ids : numpy.ndarray of int64, shape (nx * ny,)
        Tile ids ``0 .. nx * ny - 1`` in row-major order: ``id = iy * nx + ix``,
        where row ``iy = 0`` is the row at ``miny`` and column ``ix = 0`` the
        column at ``minx``.
    bounds : numpy.ndarray of float64, shape (nx * ny, 4)
        ``(minx, miny, maxx, maxy)`` of tile ``ids[k]`` in row ``k``.
    x_edges : numpy.ndarray of float64, shape (nx + 1,)
        Column edges; ``x_edges[0] == extent.minx`` and ``x_edges[-1] == extent.maxx``.
    y_edges : numpy.ndarray of float64, shape (ny + 1,)
        Row edges; ``y_edges[0] == extent.miny`` and ``y_edges[-1] == extent.maxy``.

    Notes
    -----
    Every tile bound is copied from the shared edge arrays, so neighbouring
    tiles share bit-identical edges: the tiles cover the extent with no gap and
    no overlap. All arrays are read-only.
    """

    extent: SpatialExtent
    nx: int
    ny: int
    ids: np.ndarray
    bounds: np.ndarray
    x_edges: np.ndarray
    y_edges: np.ndarray

    def __len__(self) -> int:
        return self.nx * self.ny

    def tile_index(self, tile_id: int) -> tuple[int, int]:
        """``(ix, iy)`` of a tile id.

        Parameters
        ----------
        tile_id : int
            ``0 <= tile_id < nx * ny``.

        Returns
        -------
        tuple of int
            Column and row.
        """
        n = self.nx * self.ny
        if not 0 <= tile_id < n:
            raise ValueError(f"tile id must be between 0 and {n - 1}; got {tile_id}")
        iy, ix = divmod(int(tile_id), self.nx)
        return ix, iy

    def boxes(self) -> np.ndarray:
        """The tiles as an object array of shapely Polygons (in ``ids`` order).

        Returns
        -------
        numpy.ndarray of shapely.Polygon
        """
        import shapely

        b = self.bounds
        return shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class TilePartitioner:
    """Split an extent into ``nx`` x ``ny`` equal tiles.

    Parameters
    ----------
    extent : SpatialExtent or sequence of 4 numbers
        The area to partition, ``(minx, miny, maxx, maxy)``.
    nx, ny : int
        Number of columns (along x) and rows (along y), each between 1 and
        ``2**24`` (16 777 216).

    Raises
    ------
    TypeError
        If ``nx`` or ``ny`` is not an int.
    ValueError
        If ``nx`` or ``ny`` is out of range, or the grid is too fine for
        float64 at the extent's coordinates (two edges would coincide).

    Notes
    -----
    The ``nx + 1`` (``ny + 1``) edges are computed once:
    ``e[i] = minx + (maxx - minx) * i / nx`` for ``i < nx`` and ``e[nx] = maxx``
    exactly; every tile takes its bounds from these shared edges. Tile ids are
    row-major from the south-west corner: ``id = iy * nx + ix`` (see
    :class:`GridPartition`).

    Point assignment (:meth:`assign`) uses half-open tiles
    ``x_edges[ix] <= x < x_edges[ix + 1]``; the maximum edge of the extent
    belongs to the last column / row, so every point of the closed extent is in
    exactly one tile. Points outside the extent and NaN coordinates get ``-1``.

    Examples
    --------
    >>> tiles = TilePartitioner((0, 0, 4, 2), nx=4, ny=2).partition()
    >>> tiles.bounds[5].tolist()
    [1.0, 1.0, 2.0, 2.0]
    >>> TilePartitioner((0, 0, 4, 2), 4, 2).assign([0.5, 4.0, 9.0], [0.5, 2.0, 0.0]).tolist()
    [0, 7, -1]
    """

    #: :meth:`partition` refuses grids with more tiles than this (the bounds
    #: alone would take 32 bytes per tile); :meth:`assign` has no such limit.
    max_tiles: int = 2**26

    def __init__(self, extent: Any, nx: int, ny: int) -> None:
        self.extent = as_extent(extent)
        self.nx = as_count("nx", nx, maximum=MAX_DIVISIONS)
        self.ny = as_count("ny", ny, maximum=MAX_DIVISIONS)
        e = self.extent
        self.x_edges = _readonly(_checked_edges("x", e.minx, e.maxx, self.nx))
        self.y_edges = _readonly(_checked_edges("y", e.miny, e.maxy, self.ny))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(extent={self.extent!r}, nx={self.nx}, ny={self.ny})"

    @property
    def npartitions(self) -> int:
        """Number of tiles, ``nx * ny``."""
        return self.nx * self.ny

    def partition(self) -> GridPartition:
        """Tile ids and bounds.

        Returns
        -------
        GridPartition
            ``ids`` (int64, ``(nx * ny,)``) and ``bounds`` (float64,
            ``(nx * ny, 4)``) in row-major order, plus the edges.

        Raises
        ------
        ValueError
            If the grid has more than :attr:`max_tiles` tiles.
        """
        n = self.nx * self.ny
        if n > self.max_tiles:
            raise ValueError(
                f"{self.nx} x {self.ny} = {n} tiles exceeds max_tiles={self.max_tiles}; "
                "use assign() (which needs no per-tile arrays) or a coarser grid"
            )
        ids, bounds = _k.grid_bounds(self.x_edges, self.y_edges)
        return GridPartition(
            self.extent,
            self.nx,
            self.ny,
            _readonly(ids),
            _readonly(bounds),
            self.x_edges,
            self.y_edges,
        )

    def assign(self, x: Any, y: Any = None) -> np.ndarray:
        """Tile id of each point.

        Parameters
        ----------
        x : array_like or geometries
            x coordinates (with ``y``), an ``(n, 2)`` coordinate array, or
            geometries (GeoSeries, GeoDataFrame, shapely array), which are
            placed by the midpoint of their bounds (the point that
            :class:`HilbertPartitioner` encodes too).
        y : array_like, optional
            y coordinates when ``x`` holds x coordinates.

        Returns
        -------
        numpy.ndarray of int64
            Row-major tile id per point; ``-1`` for points outside the closed
            extent, NaN coordinates, and empty or missing geometries.
        """
        kind, a, b = points_or_bounds(x, y)
        if kind == "bounds":
            a, b = (a[:, 0] + a[:, 2]) / 2.0, (a[:, 1] + a[:, 3]) / 2.0
        out = np.empty(a.shape[0], dtype=np.int64)
        with parallel_launch(a.shape[0]) as threads:
            kernel = _k.assign_points if threads == 1 else _k.assign_points_parallel
            kernel(a, b, self.x_edges, self.y_edges, out)
        return out

    partition_points = assign


class StripPartitioner:
    """Split an extent into ``n`` equal strips along one axis.

    Parameters
    ----------
    extent : SpatialExtent or sequence of 4 numbers
        The area to partition.
    n : int
        Number of strips, between 1 and ``2**24`` (16 777 216).
    axis : {"x", "y"}, default "x"
        The axis that is cut: ``"x"`` gives ``n`` vertical strips, numbered
        from ``minx`` eastwards, each spanning the full y range; ``"y"`` gives
        ``n`` horizontal strips numbered from ``miny`` northwards.

    Raises
    ------
    ValueError
        If ``axis`` is not ``"x"`` or ``"y"``, ``n`` is out of range or the
        strips are too thin for float64.

    Notes
    -----
    A strip partitioner is the tile grid ``(n, 1)`` (axis ``"x"``) or
    ``(1, n)`` (axis ``"y"``), with the same edge and assignment rules as
    :class:`TilePartitioner`; strip ids are ``0 .. n - 1``.
    """

    def __init__(self, extent: Any, n: int, axis: Literal["x", "y"] = "x") -> None:
        if axis not in ("x", "y"):
            raise ValueError(f"axis must be one of 'x', 'y'; got {axis!r}")
        self.n = as_count("n", n, maximum=MAX_DIVISIONS)
        self.axis = axis
        nx, ny = (self.n, 1) if axis == "x" else (1, self.n)
        self._grid = TilePartitioner(extent, nx, ny)
        self.extent = self._grid.extent

    def __repr__(self) -> str:
        return f"{type(self).__name__}(extent={self.extent!r}, n={self.n}, axis={self.axis!r})"

    @property
    def npartitions(self) -> int:
        """Number of strips."""
        return self.n

    @property
    def edges(self) -> np.ndarray:
        """The ``n + 1`` strip edges along :attr:`axis` (read-only float64)."""
        return self._grid.x_edges if self.axis == "x" else self._grid.y_edges

    def partition(self) -> GridPartition:
        """Strip ids and bounds (see :meth:`TilePartitioner.partition`).

        Returns
        -------
        GridPartition
            With ``nx = n, ny = 1`` (axis ``"x"``) or ``nx = 1, ny = n`` (axis ``"y"``).
        """
        return self._grid.partition()

    def assign(self, x: Any, y: Any = None) -> np.ndarray:
        """Strip id of each point; ``-1`` outside the extent or for NaN.

        Parameters
        ----------
        x, y
            As in :meth:`TilePartitioner.assign`. Both coordinates are checked
            against the extent, not only the one along :attr:`axis`.

        Returns
        -------
        numpy.ndarray of int64
        """
        return self._grid.assign(x, y)

    partition_points = assign


def _checked_edges(name: str, lo: float, hi: float, n: int) -> np.ndarray:
    e = _k.edges(lo, hi, n)
    if not _k.strictly_increasing(e):
        raise ValueError(
            f"n{name}={n} divisions of [{lo!r}, {hi!r}] are too fine for float64: "
            "adjacent edges coincide; use fewer divisions"
        )
    return e
