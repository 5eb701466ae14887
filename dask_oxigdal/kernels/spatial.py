"""Morton (Z-order) distance and per-part bounds kernels (private; see :mod:`dask_oxigdal.vector`).

The continuous-to-discrete step is the one of :mod:`dask_oxigdal.kernels.hilbert`
(geopandas' floating-point order), and the distance interleaves the bits of the
discrete cell as ``dask_geopandas.morton_distance`` does:
``part1by1(x) | (part1by1(y) << 1)``, so the distances are bit-identical to
dask-geopandas' for the same total bounds and level.
"""

from __future__ import annotations

import numba
import numpy as np

from dask_oxigdal.kernels.hilbert import _discrete, _interleave


@numba.njit(cache=True, nogil=True)
def morton_bounds(bounds, xmin, ymin, xmax, ymax, level, out):
    """Morton distances of the midpoints of ``bounds`` rows into ``out`` (uint32).

    Returns the number of rows with a NaN bound (empty or missing geometries).
    """
    side = np.float64((1 << level) - 1)
    sx = side / (xmax - xmin)
    sy = side / (ymax - ymin)
    bad = 0
    for i in range(bounds.shape[0]):
        mx = (bounds[i, 0] + bounds[i, 2]) / 2.0
        my = (bounds[i, 1] + bounds[i, 3]) / 2.0
        bad += np.isnan(mx) | np.isnan(my)
        xi = _discrete(mx, xmin, sx, side) & 0xFFFF
        yi = _discrete(my, ymin, sy, side) & 0xFFFF
        out[i] = _interleave(xi) | (_interleave(yi) << 1)
    return bad


@numba.njit(cache=True, nogil=True)
def group_bounds(pids, bounds, nparts, out):
    """Union of the ``bounds`` rows of each part into ``out`` (``nparts x 4``, pre-filled NaN)."""
    for i in range(pids.shape[0]):
        p = pids[i]
        b0 = bounds[i, 0]
        b1 = bounds[i, 1]
        b2 = bounds[i, 2]
        b3 = bounds[i, 3]
        if np.isnan(out[p, 0]) or b0 < out[p, 0]:
            out[p, 0] = b0
        if np.isnan(out[p, 1]) or b1 < out[p, 1]:
            out[p, 1] = b1
        if np.isnan(out[p, 2]) or b2 > out[p, 2]:
            out[p, 2] = b2
        if np.isnan(out[p, 3]) or b3 > out[p, 3]:
            out[p, 3] = b3
