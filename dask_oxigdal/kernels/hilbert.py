"""Hilbert-curve distance kernels (private; see :mod:`dask_oxigdal.partitioning.hilbert`).

The encoding is the branch-free prefix-scan algorithm of
http://threadlocalmutex.com/ (public domain, C++ original at
https://github.com/rawrunprotected/hilbert_curves), the same one that
``geopandas.tools.hilbert_curve`` and ``dask_geopandas.hilbert_distance`` use.
The continuous-to-discrete step repeats their floating-point operations in the
same order, so the distances are bit-identical to theirs for the same total
bounds and level:

* ``scale = (2**level - 1) / (xmax - xmin)``
* ``r = (x - xmin) * scale``, clipped to ``[0, 2**level - 1]``, truncated to an
  integer (the geopandas ``np.clip`` + ``astype(uint32)``).

For geometries the encoded point is the midpoint of the bounds,
``((minx + maxx) / 2.0, (miny + maxy) / 2.0)``, exactly as geopandas computes it.

All integer arithmetic runs in int64 (every intermediate value is below 2**32,
so it is exact) and the result is stored as uint32.

Kernels return the number of rows holding a NaN coordinate (the caller
raises when it is not 0); they have no early exit, so that LLVM vectorises them.
"""

from __future__ import annotations

import numba
import numpy as np

MAX_LEVEL = 16


@numba.njit(cache=True, nogil=True, inline="always")
def _interleave(x):
    x = (x | (x << 8)) & 0x00FF00FF
    x = (x | (x << 4)) & 0x0F0F0F0F
    x = (x | (x << 2)) & 0x33333333
    x = (x | (x << 1)) & 0x55555555
    return x


@numba.njit(cache=True, nogil=True, inline="always")
def _encode_one(xi, yi, level):
    """Hilbert distance of the discrete cell ``(xi, yi)``, ``0 <= xi, yi < 2**level``."""
    x = np.int64(xi) << (16 - level)
    y = np.int64(yi) << (16 - level)

    a = x ^ y
    b = 0xFFFF ^ a
    c = 0xFFFF ^ (x | y)
    d = x & (y ^ 0xFFFF)

    aa = a | (b >> 1)
    bb = (a >> 1) ^ a
    cc = ((c >> 1) ^ (b & (d >> 1))) ^ c
    dd = ((a & (c >> 1)) ^ (d >> 1)) ^ d

    a, b, c, d = aa, bb, cc, dd
    aa = (a & (a >> 2)) ^ (b & (b >> 2))
    bb = (a & (b >> 2)) ^ (b & ((a ^ b) >> 2))
    cc = c ^ ((a & (c >> 2)) ^ (b & (d >> 2)))
    dd = d ^ ((b & (c >> 2)) ^ ((a ^ b) & (d >> 2)))

    a, b, c, d = aa, bb, cc, dd
    aa = (a & (a >> 4)) ^ (b & (b >> 4))
    bb = (a & (b >> 4)) ^ (b & ((a ^ b) >> 4))
    cc = c ^ ((a & (c >> 4)) ^ (b & (d >> 4)))
    dd = d ^ ((b & (c >> 4)) ^ ((a ^ b) & (d >> 4)))

    a, b, c, d = aa, bb, cc, dd
    cc = c ^ ((a & (c >> 8)) ^ (b & (d >> 8)))
    dd = d ^ ((b & (c >> 8)) ^ ((a ^ b) & (d >> 8)))

    a = cc ^ (cc >> 1)
    b = dd ^ (dd >> 1)

    i0 = x ^ y
    i1 = b | (0xFFFF ^ (i0 | a))
    return ((_interleave(i1) << 1) | _interleave(i0)) >> (32 - 2 * level)


@numba.njit(cache=True, nogil=True, inline="always")
def _discrete(v, vmin, scale, side):
    """geopandas' ``clip((v - vmin) * scale, 0, side).astype(uint32)`` for one value.

    NaN maps to 0 here (the caller counts NaN rows separately and raises);
    written without early exits so that the loops vectorise.
    """
    r = (v - vmin) * scale
    if not r >= 0.0:
        r = 0.0
    if r > side:
        r = side
    return np.int64(r)


@numba.njit(cache=True, nogil=True)
def hilbert_xy(x, y, xmin, ymin, xmax, ymax, level, out):
    """Hilbert distances of the points ``(x[i], y[i])`` into ``out`` (uint32).

    Returns the number of rows with a NaN coordinate (their ``out`` is meaningless).
    """
    side = np.float64((1 << level) - 1)
    sx = side / (xmax - xmin)
    sy = side / (ymax - ymin)
    bad = 0
    for i in range(x.shape[0]):
        xv = x[i]
        yv = y[i]
        bad += np.isnan(xv) | np.isnan(yv)
        out[i] = _encode_one(_discrete(xv, xmin, sx, side), _discrete(yv, ymin, sy, side), level)
    return bad


@numba.njit(cache=True, nogil=True, parallel=True)
def hilbert_xy_parallel(x, y, xmin, ymin, xmax, ymax, level, out):
    """``prange`` variant of :func:`hilbert_xy` (same result, same return value)."""
    side = np.float64((1 << level) - 1)
    sx = side / (xmax - xmin)
    sy = side / (ymax - ymin)
    bad = 0
    for i in numba.prange(x.shape[0]):
        xv = x[i]
        yv = y[i]
        bad += np.isnan(xv) | np.isnan(yv)
        out[i] = _encode_one(_discrete(xv, xmin, sx, side), _discrete(yv, ymin, sy, side), level)
    return bad


# Rows per block in the bounds kernels: the midpoints of one block are written to
# two small buffers (they stay in L1/L2) and then encoded by the vectorised loop.
_BLOCK = 2048


@numba.njit(cache=True, nogil=True)
def _midpoints(bounds, start, stop, mx, my):
    for i in range(start, stop):
        mx[i - start] = (bounds[i, 0] + bounds[i, 2]) / 2.0
        my[i - start] = (bounds[i, 1] + bounds[i, 3]) / 2.0


@numba.njit(cache=True, nogil=True)
def hilbert_bounds(bounds, xmin, ymin, xmax, ymax, level, out):
    """Hilbert distances of the midpoints of ``bounds`` rows (minx, miny, maxx, maxy).

    The midpoint is ``((minx + maxx) / 2.0, (miny + maxy) / 2.0)``, as in geopandas.
    Returns the number of rows with a NaN bound (empty or missing geometries).
    """
    n = bounds.shape[0]
    mx = np.empty(_BLOCK)
    my = np.empty(_BLOCK)
    bad = 0
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        _midpoints(bounds, start, stop, mx, my)
        bad += hilbert_xy(
            mx[: stop - start], my[: stop - start], xmin, ymin, xmax, ymax, level, out[start:stop]
        )
    return bad


@numba.njit(cache=True, nogil=True, parallel=True)
def hilbert_bounds_parallel(bounds, xmin, ymin, xmax, ymax, level, out):
    """``prange`` variant of :func:`hilbert_bounds` (same result, same return value)."""
    n = bounds.shape[0]
    nblocks = (n + _BLOCK - 1) // _BLOCK
    bad = 0
    for b in numba.prange(nblocks):
        start = b * _BLOCK
        stop = min(n, start + _BLOCK)
        mx = np.empty(_BLOCK)
        my = np.empty(_BLOCK)
        _midpoints(bounds, start, stop, mx, my)
        bad += hilbert_xy(
            mx[: stop - start], my[: stop - start], xmin, ymin, xmax, ymax, level, out[start:stop]
        )
    return bad
