"""Exact point-in-polygon predicates (private; see :mod:`dask_oxigdal.analytics.geofencing`).

Polygons are flattened into rings (exterior and holes of every part of every
polygon or multipolygon, closed: the last vertex repeats the first). A point
is located with the ray-crossing rule that GEOS (and so shapely) uses to
locate a point in a ring (:func:`locate`, the reference; the index of
:mod:`dask_oxigdal.kernels.pip_index` runs the same rule over fewer
segments):

* a ray from the point towards +x; for each segment ``p1 -> p2``: a segment
  wholly left of the point is skipped; the point equal to ``p2``, or on a
  horizontal segment, or collinear with a segment that straddles the ray's
  line, is **on the boundary**; an upward segment counts when it includes its
  start and excludes its end (downward: the reverse) and the point is to its
  left;
* the point is interior when no ring has it on its boundary and the total
  number of crossings over all the rings of the polygon is odd (holes and the
  parts of a valid multipolygon combine by parity).

The side of a segment is the sign of the orientation determinant, computed
exactly: a floating-point filter with GEOS' error bound, then an exact sum of
the 16 products of the two-term differences (Shewchuk's two-sum/two-product
expansions) when the filter cannot decide.
"""

from __future__ import annotations

import numba
import numpy as np

_SPLITTER = 134217729.0  # 2**27 + 1
_DP_SAFE_EPSILON = 1e-15


@numba.njit(cache=True, nogil=True, inline="always")
def _two_sum(a, b):
    x = a + b
    bv = x - a
    av = x - bv
    return x, (a - av) + (b - bv)


@numba.njit(cache=True, nogil=True, inline="always")
def _split(a):
    c = _SPLITTER * a
    big = c - a
    hi = c - big
    return hi, a - hi


@numba.njit(cache=True, nogil=True, inline="always")
def _two_prod(a, b):
    x = a * b
    ahi, alo = _split(a)
    bhi, blo = _split(b)
    err = x - ahi * bhi
    err = err - alo * bhi
    err = err - ahi * blo
    return x, alo * blo - err


@numba.njit(cache=True, nogil=True)
def _exact_sign(ax, ay, bx, by, cx, cy):
    """Exact sign of ``(ax - cx) * (by - cy) - (ay - cy) * (bx - cx)``."""
    a1, a0 = _two_sum(ax, -cx)
    b1, b0 = _two_sum(by, -cy)
    c1, c0 = _two_sum(ay, -cy)
    d1, d0 = _two_sum(bx, -cx)
    terms = np.empty(16)
    k = 0
    for u, v, s in (
        (a1, b1, 1.0),
        (a1, b0, 1.0),
        (a0, b1, 1.0),
        (a0, b0, 1.0),
        (c1, d1, -1.0),
        (c1, d0, -1.0),
        (c0, d1, -1.0),
        (c0, d0, -1.0),
    ):
        p, q = _two_prod(u, v)
        terms[k] = s * p
        terms[k + 1] = s * q
        k += 2
    # grow an expansion (increasing magnitude, non-overlapping) term by term
    e = np.zeros(32)
    m = 0
    for t in range(16):
        q = terms[t]
        for i in range(m):
            q, h = _two_sum(q, e[i])
            e[i] = h
        e[m] = q
        m += 1
    for i in range(m - 1, -1, -1):
        if e[i] > 0.0:
            return 1
        if e[i] < 0.0:
            return -1
    return 0


@numba.njit(cache=True, nogil=True)
def orientation(p1x, p1y, p2x, p2y, qx, qy):
    """+1 when ``q`` is left of ``p1 -> p2``, -1 right, 0 collinear (exact)."""
    detleft = (p1x - qx) * (p2y - qy)
    detright = (p1y - qy) * (p2x - qx)
    det = detleft - detright
    if detleft > 0.0:
        if detright <= 0.0:
            return (det > 0.0) - (det < 0.0)
        detsum = detleft + detright
    elif detleft < 0.0:
        if detright >= 0.0:
            return (det > 0.0) - (det < 0.0)
        detsum = -detleft - detright
    else:
        return (det > 0.0) - (det < 0.0)
    errbound = _DP_SAFE_EPSILON * detsum
    if det >= errbound or -det >= errbound:
        return (det > 0.0) - (det < 0.0)
    return _exact_sign(p1x, p1y, p2x, p2y, qx, qy)


@numba.njit(cache=True, nogil=True)
def locate(x, y, poly, poly_ring_start, ring_start, xs, ys):
    """1 interior, 0 boundary, -1 exterior: the location of ``(x, y)`` in polygon ``poly``."""
    crossings = 0
    for r in range(poly_ring_start[poly], poly_ring_start[poly + 1]):
        for s in range(ring_start[r], ring_start[r + 1] - 1):
            p1x = xs[s]
            p1y = ys[s]
            p2x = xs[s + 1]
            p2y = ys[s + 1]
            if p1x < x and p2x < x:
                continue
            if x == p2x and y == p2y:
                return 0
            if p1y == y and p2y == y:
                lo = min(p1x, p2x)
                hi = max(p1x, p2x)
                if lo <= x <= hi:
                    return 0
                continue
            if (p1y > y and p2y <= y) or (p2y > y and p1y <= y):
                o = orientation(p1x, p1y, p2x, p2y, x, y)
                if o == 0:
                    return 0
                if p2y < p1y:
                    o = -o
                if o > 0:
                    crossings += 1
    return 1 if crossings % 2 == 1 else -1
