"""Point-in-polygon index kernels (private; see :mod:`dask_oxigdal.analytics.geofencing`).

Two structures make the exact test of :func:`dask_oxigdal.kernels.pip.locate`
cheap without changing its result:

* **y-bands per polygon.** A polygon's bounding box is cut into horizontal
  bands; each band lists the segments (of every ring) whose closed y-range
  meets it, with their four coordinates stored contiguously. Only a segment
  whose y-range contains the point's ``y`` can touch the point or cross the
  ray towards +x, and the band of ``y`` lists every such segment: the band
  number is a monotone function of ``y``, so ``ylo <= y <= yhi`` implies
  ``band(ylo) <= band(y) <= band(yhi)``. The test runs over one band's
  segments with the same per-segment rule as ``locate``.
* **A classified uniform grid.** Each cell lists the polygons whose bounding
  box meets it, in polygon order, as ``p`` ("test the point") or ``-p - 1``
  ("every point of the cell is interior"), and leaves out polygons the cell
  is wholly outside of. A cell is classified only when no segment's bounding
  box meets the cell widened by ``eps`` (a margin far above the rounding of
  the cell arithmetic): the boundary then misses the whole cell, so every
  point that maps to it lies where the cell's centre does (the parity of the
  crossings only changes across the boundary), and the centre is located
  with the exact test.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from dask_oxigdal.kernels.pip import orientation


@numba.njit(cache=True, nogil=True, inline="always")
def _band(y, y0, scale, nb):
    b = int((y - y0) * scale)
    if b < 0:
        return 0
    if b >= nb:
        return nb - 1
    return b


@numba.njit(cache=True, nogil=True)
def build_bands(bounds, poly_ring_start, ring_start, xs, ys, per_band):
    """y-bands of every polygon: (``band_off``, ``band_scale``, ``band_starts``, ``seg``).

    ``band_off[p] .. band_off[p + 1]`` are polygon ``p``'s bands, band ``k``
    spans ``band_starts[k] .. band_starts[k + 1]`` rows of ``seg``
    (``x1, y1, x2, y2``); about ``per_band`` segments per band, at most 4096
    bands per polygon.
    """
    n = bounds.shape[0]
    band_off = np.zeros(n + 1, dtype=np.int64)
    band_scale = np.zeros(n, dtype=np.float64)
    for p in range(n):
        nseg = 0
        for r in range(poly_ring_start[p], poly_ring_start[p + 1]):
            nseg += max(ring_start[r + 1] - ring_start[r] - 1, 0)
        nb = 1
        h = bounds[p, 3] - bounds[p, 1]
        if nseg > 0 and h > 0.0:
            nb = min(max(nseg // per_band, 1), 4096)
            band_scale[p] = nb / h
        band_off[p + 1] = band_off[p] + nb
    total = band_off[n]
    counts = np.zeros(total + 1, dtype=np.int64)
    for pass_ in range(2):
        if pass_ == 1:
            band_starts = np.zeros(total + 1, dtype=np.int64)
            for k in range(total):
                band_starts[k + 1] = band_starts[k] + counts[k]
            seg = np.empty((band_starts[total], 4), dtype=np.float64)
            fill = band_starts[:-1].copy()
        for p in range(n):
            nb = band_off[p + 1] - band_off[p]
            y0 = bounds[p, 1]
            sc = band_scale[p]
            for r in range(poly_ring_start[p], poly_ring_start[p + 1]):
                for s in range(ring_start[r], ring_start[r + 1] - 1):
                    lo = min(ys[s], ys[s + 1])
                    hi = max(ys[s], ys[s + 1])
                    for b in range(_band(lo, y0, sc, nb), _band(hi, y0, sc, nb) + 1):
                        k = band_off[p] + b
                        if pass_ == 0:
                            counts[k] += 1
                        else:
                            f = fill[k]
                            seg[f, 0] = xs[s]
                            seg[f, 1] = ys[s]
                            seg[f, 2] = xs[s + 1]
                            seg[f, 3] = ys[s + 1]
                            fill[k] = f + 1
    return band_off, band_scale, band_starts, seg


@numba.njit(cache=True, nogil=True)
def locate_banded(x, y, p, bounds, band_off, band_scale, band_starts, seg):
    """1 interior, 0 boundary, -1 exterior (equal to ``pip.locate``), over one band."""
    nb = band_off[p + 1] - band_off[p]
    k = band_off[p] + _band(y, bounds[p, 1], band_scale[p], nb)
    crossings = 0
    for t in range(band_starts[k], band_starts[k + 1]):
        p1x = seg[t, 0]
        p1y = seg[t, 1]
        p2x = seg[t, 2]
        p2y = seg[t, 3]
        if p1x < x and p2x < x:
            continue
        if x == p2x and y == p2y:
            return 0
        if p1y == y and p2y == y:
            if min(p1x, p2x) <= x <= max(p1x, p2x):
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


@numba.njit(cache=True, nogil=True)
def grid_build(
    bounds, x0, y0, cell, nx, ny, eps, poly_ring_start, ring_start, xs, ys, band_off, band_scale,
    band_starts, seg,
):  # fmt: skip
    """CSR (``starts``, ``items``) of the classified grid (row-major cells, see the module doc)."""
    n = bounds.shape[0]
    cap = 1024
    cells = np.empty(cap, dtype=np.int64)
    codes = np.empty(cap, dtype=np.int32)
    m = 0
    for p in range(n):
        if np.isnan(bounds[p, 0]):
            continue
        i0 = max(int((bounds[p, 0] - x0) / cell), 0)
        i1 = min(int((bounds[p, 2] - x0) / cell), nx - 1)
        j0 = max(int((bounds[p, 1] - y0) / cell), 0)
        j1 = min(int((bounds[p, 3] - y0) / cell), ny - 1)
        w = i1 - i0 + 1
        h = j1 - j0 + 1
        mark = np.zeros((h, w), dtype=np.bool_)
        for r in range(poly_ring_start[p], poly_ring_start[p + 1]):
            for s in range(ring_start[r], ring_start[r + 1] - 1):
                a0 = math.floor((min(xs[s], xs[s + 1]) - eps - x0) / cell)
                a1 = math.floor((max(xs[s], xs[s + 1]) + eps - x0) / cell)
                b0 = math.floor((min(ys[s], ys[s + 1]) - eps - y0) / cell)
                b1 = math.floor((max(ys[s], ys[s + 1]) + eps - y0) / cell)
                for j in range(max(b0, j0), min(b1, j1) + 1):
                    for i in range(max(a0, i0), min(a1, i1) + 1):
                        mark[j - j0, i - i0] = True
        if m + w * h > cap:
            cap = max(2 * cap, m + w * h)
            c2 = np.empty(cap, dtype=np.int64)
            c2[:m] = cells[:m]
            cells = c2
            d2 = np.empty(cap, dtype=np.int32)
            d2[:m] = codes[:m]
            codes = d2
        for j in range(j0, j1 + 1):
            for i in range(i0, i1 + 1):
                if mark[j - j0, i - i0]:
                    code = p
                else:
                    cx = x0 + (i + 0.5) * cell
                    cy = y0 + (j + 0.5) * cell
                    if not (bounds[p, 0] < cx < bounds[p, 2] and bounds[p, 1] < cy < bounds[p, 3]):
                        continue  # a boundary-free cell whose centre is outside the box: outside
                    loc = locate_banded(cx, cy, p, bounds, band_off, band_scale, band_starts, seg)
                    if loc == 1:
                        code = -p - 1
                    elif loc == -1:
                        continue
                    else:
                        code = p
                cells[m] = j * nx + i
                codes[m] = code
                m += 1
    # stable counting sort by cell: polygon order is kept inside a cell
    starts = np.zeros(nx * ny + 1, dtype=np.int64)
    for t in range(m):
        starts[cells[t] + 1] += 1
    for c in range(nx * ny):
        starts[c + 1] += starts[c]
    items = np.empty(m, dtype=np.int32)
    fill = starts[:-1].copy()
    for t in range(m):
        c = cells[t]
        items[fill[c]] = codes[t]
        fill[c] += 1
    return starts, items


@numba.njit(cache=True, nogil=True)
def query(
    px, py, x0, y0, cell, nx, ny, starts, items, bounds, band_off, band_scale, band_starts, seg
):
    """(point row, polygon) pairs with the point in the polygon's interior, by row then polygon.

    The points are visited in the order of blocks of 8 x 8 cells (a counting
    sort), so that nearby points share the cache lines of the index, and the
    pairs are put back in row order at the end.
    """
    npt = px.shape[0]
    cellof = np.full(npt, -1, dtype=np.int64)
    bx = (nx + 7) // 8
    nblk = bx * ((ny + 7) // 8)
    bcount = np.zeros(nblk + 1, dtype=np.int64)
    for i in range(npt):
        x = px[i]
        y = py[i]
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        fi = (x - x0) / cell
        fj = (y - y0) / cell
        if fi < 0.0 or fj < 0.0:
            continue
        ci = int(fi)
        cj = int(fj)
        if ci >= nx or cj >= ny:
            continue
        c = cj * nx + ci
        if starts[c] == starts[c + 1]:
            continue
        cellof[i] = c
        bcount[(cj >> 3) * bx + (ci >> 3) + 1] += 1
    for b in range(nblk):
        bcount[b + 1] += bcount[b]
    order = np.empty(bcount[nblk], dtype=np.int64)
    for i in range(npt):
        c = cellof[i]
        if c >= 0:
            b = ((c // nx) >> 3) * bx + ((c % nx) >> 3)
            order[bcount[b]] = i
            bcount[b] += 1
    cap = max(16, npt)
    tmp_p = np.empty(cap, dtype=np.int64)
    tmp_g = np.empty(cap, dtype=np.int64)
    per_row = np.zeros(npt + 1, dtype=np.int64)
    n = 0
    for k in range(order.shape[0]):
        i = order[k]
        x = px[i]
        y = py[i]
        c = cellof[i]
        for t in range(starts[c], starts[c + 1]):
            e = items[t]
            if e < 0:
                p = -e - 1
            else:
                p = e
                if not (bounds[p, 0] < x < bounds[p, 2] and bounds[p, 1] < y < bounds[p, 3]):
                    continue
                if locate_banded(x, y, p, bounds, band_off, band_scale, band_starts, seg) != 1:
                    continue
            if n == cap:
                cap *= 2
                a = np.empty(cap, dtype=np.int64)
                a[:n] = tmp_p[:n]
                tmp_p = a
                b = np.empty(cap, dtype=np.int64)
                b[:n] = tmp_g[:n]
                tmp_g = b
            tmp_p[n] = i
            tmp_g[n] = p
            per_row[i + 1] += 1
            n += 1
    for i in range(npt):
        per_row[i + 1] += per_row[i]
    out_p = np.empty(n, dtype=np.int64)
    out_g = np.empty(n, dtype=np.int64)
    for t in range(n):  # a row's pairs are consecutive and in polygon order in tmp
        i = tmp_p[t]
        f = per_row[i]
        out_p[f] = i
        out_g[f] = tmp_g[t]
        per_row[i] = f + 1
    return out_p, out_g
