"""Regular-grid kernels: tile edges, tile bounds, point-to-tile assignment (private).

See :class:`dask_oxigdal.partitioning.TilePartitioner` for the public contract.

Edges
-----
``edges(lo, hi, n)`` returns ``n + 1`` coordinates with ``e[0] == lo``,
``e[n] == hi`` exactly and ``e[i] = lo + (hi - lo) * i / n`` in between. The
expression is monotone in ``i`` under IEEE rounding, so the edges never
decrease; the caller checks that they strictly increase (a grid too fine for
float64 at that coordinate magnitude is rejected).

Tile bounds are read from the shared edge arrays, so neighbouring tiles share
bit-identical edges and the tiles cover the extent with no gap and no overlap.

Assignment
----------
Tiles are half-open, ``e[i] <= v < e[i + 1]``, except the last one, which also
holds ``v == e[n]``. A first guess ``floor((v - lo) * n / (hi - lo))`` is
corrected against the real edges, so assignment agrees exactly with the bounds.
Values outside ``[e[0], e[n]]`` and NaN get -1.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def edges(lo, hi, n):
    """``n + 1`` edges from ``lo`` to ``hi`` (both exact); see the module docstring."""
    out = np.empty(n + 1, dtype=np.float64)
    width = hi - lo
    for i in range(n):
        out[i] = lo + width * i / n
    out[n] = hi
    return out


@numba.njit(cache=True, nogil=True)
def strictly_increasing(e):
    """True when every edge is strictly greater than the previous one."""
    for i in range(e.shape[0] - 1):
        if not e[i] < e[i + 1]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def grid_bounds(xe, ye):
    """Row-major tile ids and bounds of the grid ``xe`` x ``ye``.

    Tile ``id = iy * nx + ix`` spans ``[xe[ix], xe[ix + 1]] x [ye[iy], ye[iy + 1]]``;
    row 0 is the row at the minimum y.
    """
    nx = xe.shape[0] - 1
    ny = ye.shape[0] - 1
    n = nx * ny
    ids = np.empty(n, dtype=np.int64)
    bounds = np.empty((n, 4), dtype=np.float64)
    k = 0
    for iy in range(ny):
        y0 = ye[iy]
        y1 = ye[iy + 1]
        for ix in range(nx):
            ids[k] = k
            bounds[k, 0] = xe[ix]
            bounds[k, 1] = y0
            bounds[k, 2] = xe[ix + 1]
            bounds[k, 3] = y1
            k += 1
    return ids, bounds


# Rows per parallel chunk. The loops live in one ``*_range`` function per kernel,
# called once (serial) or once per chunk (parallel): numba increfs array
# arguments on every call of a helper, so hot loops never call helpers that take
# arrays.
CHUNK = 16384


@numba.njit(cache=True, nogil=True)
def _assign_range(x, y, xe, ye, out, start, stop):
    nx = xe.shape[0] - 1
    ny = ye.shape[0] - 1
    x0, xn = xe[0], xe[nx]
    y0, yn = ye[0], ye[ny]
    sx = nx / (xn - x0)
    sy = ny / (yn - y0)
    for k in range(start, stop):
        xv = x[k]
        yv = y[k]
        if not (xv >= x0 and xv <= xn and yv >= y0 and yv <= yn):  # also NaN
            out[k] = -1
            continue
        g = (xv - x0) * sx  # >= 0, or NaN when the scale is inf and xv == x0
        if not g < nx - 1:
            g = nx - 1
        ix = np.int64(g)
        while xv < xe[ix]:
            ix -= 1
        while ix < nx - 1 and xv >= xe[ix + 1]:
            ix += 1
        g = (yv - y0) * sy
        if not g < ny - 1:
            g = ny - 1
        iy = np.int64(g)
        while yv < ye[iy]:
            iy -= 1
        while iy < ny - 1 and yv >= ye[iy + 1]:
            iy += 1
        out[k] = iy * nx + ix


@numba.njit(cache=True, nogil=True)
def assign_points(x, y, xe, ye, out):
    """Tile id (row-major, ``iy * nx + ix``) of each point into ``out``; -1 outside or NaN."""
    _assign_range(x, y, xe, ye, out, 0, x.shape[0])


@numba.njit(cache=True, nogil=True, parallel=True)
def assign_points_parallel(x, y, xe, ye, out):
    """``prange`` variant of :func:`assign_points`."""
    n = x.shape[0]
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        _assign_range(x, y, xe, ye, out, c * CHUNK, min(n, (c + 1) * CHUNK))


# ---------------------------------------------------------------- sorted-bin search
# ``numpy.searchsorted(b, v, side="right")`` for many values against few sorted
# boundaries. A binary search over random values mispredicts about one branch
# per level (numpy's does too, and LLVM turns a branch-free select back into a
# branch inside the loop), so values are first put into one of ``nb`` equal-width
# buckets over ``[b[0], b[-1]]``; a table holds how many boundaries lie in lower
# buckets, and only boundaries inside the value's own bucket (usually none) are
# compared. The bucket function ``f`` is monotone non-decreasing (each floating
# operation in it is), and the boundaries are bucketed with the same ``f``, so
# ``f(b) < f(v)`` implies ``b < v``: the table never miscounts, whatever the
# rounding. Comparisons inside a bucket use the native dtype (exact for int64).

BUCKETS = 1 << 16


@numba.njit(cache=True, nogil=True, inline="always")
def _bucket(v, base, scale, nb):
    """Bucket of ``v`` in ``0 .. nb + 1``: 0 below ``base``, monotone in ``v``.

    ``scale == 0`` (all boundaries equal, or a span too small to scale) uses
    three buckets: below, equal to and above ``base``.
    """
    fv = np.float64(v)
    if scale == 0.0:
        return np.int64(fv >= base) + np.int64(fv > base)
    h = np.floor((fv - base) * scale) + 1.0
    h = max(h, 0.0)
    h = min(h, nb + 1.0)
    return np.int64(h)


@numba.njit(cache=True, nogil=True)
def bin_table(sorted_values, nbuckets):
    """Bucket table for :func:`search_right` over non-decreasing, finite ``sorted_values``.

    Returns ``(table, base, scale, nb)``; ``table[k]`` is the number of
    boundaries in buckets below ``k`` (``k = 0 .. nb + 2``).
    """
    m = sorted_values.shape[0]
    if m == 0:
        return np.zeros(4, dtype=np.int64), 0.0, 0.0, 1
    base = np.float64(sorted_values[0])
    span = np.float64(sorted_values[m - 1]) - base
    nb = nbuckets
    scale = nb / span if span > 0.0 else 0.0
    if not (scale < np.inf):  # span is subnormal-small: the scale overflows
        scale = 0.0
    if scale == 0.0:
        nb = 1
    table = np.zeros(nb + 3, dtype=np.int64)
    for j in range(m):
        table[_bucket(sorted_values[j], base, scale, nb) + 1] += 1
    for k in range(1, nb + 3):
        table[k] += table[k - 1]
    return table, base, scale, nb


@numba.njit(cache=True, nogil=True)
def _search_range(sorted_values, table, base, scale, nb, values, out, start, stop):
    m = sorted_values.shape[0]
    for i in range(start, stop):
        v = values[i]
        if v != v:  # NaN sorts last, as in numpy
            out[i] = m
            continue
        k = _bucket(v, base, scale, nb)
        lo = table[k]
        hi = table[k + 1]
        while lo < hi:
            mid = (lo + hi) >> 1
            if sorted_values[mid] <= v:
                lo = mid + 1
            else:
                hi = mid
        out[i] = lo


@numba.njit(cache=True, nogil=True)
def search_right(sorted_values, table, base, scale, nb, values, out):
    """``out[i] = numpy.searchsorted(sorted_values, values[i], side="right")``; NaN -> len.

    ``sorted_values`` and ``values`` share one dtype; ``table, base, scale, nb``
    come from :func:`bin_table`. This is the range-partition rule: bin ``i``
    holds ``sorted_values[i - 1] <= v < sorted_values[i]``.
    """
    _search_range(sorted_values, table, base, scale, nb, values, out, 0, values.shape[0])


@numba.njit(cache=True, nogil=True, parallel=True)
def search_right_parallel(sorted_values, table, base, scale, nb, values, out):
    """``prange`` variant of :func:`search_right`."""
    n = values.shape[0]
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        _search_range(
            sorted_values, table, base, scale, nb, values, out, c * CHUNK, min(n, (c + 1) * CHUNK)
        )
