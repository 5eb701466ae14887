"""The polygon index of :func:`dask_oxigdal.analytics.geofencing.geofence` (private).

:class:`PolygonIndex` flattens polygons into closed rings and builds the
structures of :mod:`dask_oxigdal.kernels.pip_index` (y-bands of segments per
polygon, a classified uniform grid); :meth:`PolygonIndex.query` runs the
numba kernel over a batch of points.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PolygonIndex"]

_MAX_CELLS = 1 << 22
_CELLS_PER_POLYGON = 64  # grid cells per polygon: most points fall in classified cells
_EDGES_PER_BAND = 4  # segments per y-band of a polygon


@dataclass(eq=False)
class PolygonIndex:
    """Flattened rings of a set of polygons and a grid over their bounding boxes.

    Built with :meth:`from_geometries`; picklable (plain numpy arrays), so it
    travels to workers once.

    Attributes
    ----------
    positions : numpy.ndarray of int64
        Position of each indexed polygon in the full polygon set.
    bounds : numpy.ndarray, shape (n, 4)
        Bounding boxes (NaN for empty geometries, which never match).
    """

    positions: np.ndarray
    bounds: np.ndarray
    poly_ring_start: np.ndarray
    ring_start: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    grid: tuple = field(default=(0.0, 0.0, 1.0, 1, 1))
    starts: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    band_off: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    band_scale: np.ndarray = field(default_factory=lambda: np.zeros(0))
    band_starts: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    seg: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))

    @classmethod
    def from_geometries(cls, geoms: Any, positions: Any = None) -> PolygonIndex:
        """Index shapely polygons / multipolygons (an array or GeoSeries).

        Parameters
        ----------
        geoms : array_like of shapely geometries
            Polygons and multipolygons (holes allowed); empty or missing
            geometries are kept and never match.
        positions : array_like of int, optional
            Their positions in the full set (default ``0 .. n - 1``).

        Returns
        -------
        PolygonIndex
        """
        import shapely

        from dask_oxigdal.kernels import pip_index as _ki

        geoms = np.asarray(getattr(geoms, "values", geoms), dtype=object)
        geoms = np.asarray(geoms, dtype=object)
        n = geoms.shape[0]
        kinds = shapely.get_type_id(geoms)
        ok = np.isin(kinds, (-1, 3, 6))  # missing, Polygon, MultiPolygon
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise ValueError(
                f"polygon {bad} is a {shapely.get_type_id(geoms[bad])!r} "
                f"({geoms[bad].geom_type}); valid choices: Polygon, MultiPolygon"
            )
        geoms = np.where(kinds == -1, shapely.Polygon(), geoms)
        parts, part_of = shapely.get_parts(geoms, return_index=True)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        ring_poly = part_of[ring_part]
        coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
        ring_start = np.zeros(rings.shape[0] + 1, np.int64)
        ring_start[1:] = np.cumsum(np.bincount(coord_ring, minlength=rings.shape[0]))
        poly_ring_start = np.zeros(n + 1, np.int64)
        poly_ring_start[1:] = np.cumsum(np.bincount(ring_poly, minlength=n))
        bounds = shapely.bounds(geoms).astype(np.float64)
        positions = np.arange(n, dtype=np.int64) if positions is None else np.asarray(positions)
        self = cls(
            positions=positions.astype(np.int64),
            bounds=np.ascontiguousarray(bounds),
            poly_ring_start=poly_ring_start,
            ring_start=ring_start,
            xs=np.ascontiguousarray(coords[:, 0]),
            ys=np.ascontiguousarray(coords[:, 1]),
        )
        self.band_off, self.band_scale, self.band_starts, self.seg = _ki.build_bands(
            self.bounds, poly_ring_start, ring_start, self.xs, self.ys, _EDGES_PER_BAND
        )
        valid = ~np.isnan(bounds[:, 0])
        if valid.any():
            x0, y0 = bounds[valid, 0].min(), bounds[valid, 1].min()
            x1, y1 = bounds[valid, 2].max(), bounds[valid, 3].max()
            w, h = max(x1 - x0, 1e-300), max(y1 - y0, 1e-300)
            # about 64 cells per polygon, and at least one per segment (a few large
            # polygons with many vertices): most points then fall in classified cells
            nseg = int(ring_start[-1]) - rings.shape[0]
            target = min(max(_CELLS_PER_POLYGON * int(valid.sum()), nseg, 1), _MAX_CELLS)
            cell = max(np.sqrt(w * h / target), w / 4096, h / 4096)
            nx = int(w / cell) + 2
            ny = int(h / cell) + 2
            eps = 1e-12 * (max(abs(x0), abs(y0), abs(x1), abs(y1)) + cell)
            self.grid = (float(x0), float(y0), float(cell), nx, ny)
            self.starts, self.items = _ki.grid_build(
                self.bounds, x0, y0, cell, nx, ny, eps, poly_ring_start, ring_start, self.xs,
                self.ys, self.band_off, self.band_scale, self.band_starts, self.seg,
            )  # fmt: skip
        return self

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` of the indexed polygons (NaN when none)."""
        b = self.bounds
        if b.shape[0] == 0 or np.isnan(b[:, 0]).all():
            return (np.nan,) * 4
        return (
            np.nanmin(b[:, 0]),
            np.nanmin(b[:, 1]),
            np.nanmax(b[:, 2]),
            np.nanmax(b[:, 3]),
        )

    def query(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Point rows and polygon positions of every (point, polygon) interior match.

        Parameters
        ----------
        x, y : numpy.ndarray of float64

        Returns
        -------
        rows, positions : numpy.ndarray of int64
            Sorted by row, then polygon position; NaN points never match.
        """
        from dask_oxigdal.kernels import pip_index as _ki

        x0, y0, cell, nx, ny = self.grid
        rows, local = _ki.query(
            np.ascontiguousarray(x, dtype=np.float64),
            np.ascontiguousarray(y, dtype=np.float64),
            x0,
            y0,
            cell,
            nx,
            ny,
            self.starts,
            self.items,
            self.bounds,
            self.band_off,
            self.band_scale,
            self.band_starts,
            self.seg,
        )
        return rows, self.positions[local]


def _query_part(index: PolygonIndex, x, y, rows):
    """One piece of a batch on a worker: (rows, polygon positions, CPU seconds of the query)."""
    t0 = time.thread_time()
    r, g = index.query(x, y)
    return (r if rows is None else rows[r]), g, time.thread_time() - t0
