"""k-means kernels (private; see :mod:`dask_oxigdal.analytics.kmeans`).

One pass over a block of ``pixels x bands`` fuses the assignment step of
Lloyd's algorithm with the per-cluster partial sums and counts, so a Dask
block returns only ``k x bands`` floats, ``k`` counts and its inertia.

Distances are squared Euclidean, accumulated in float64 from the block's own
dtype (float32 stays float32 in memory). A pixel with any NaN band is nodata:
it is skipped (label ``-1``, no contribution to sums, counts or inertia).
Ties go to the lowest cluster index, as in scikit-learn.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _transposed(centers):
    """Centers as a contiguous float64 ``bands x k`` array (the inner loops run over k)."""
    k, d = centers.shape
    CT = np.empty((d, k), dtype=np.float64)
    for c in range(k):
        for j in range(d):
            CT[j, c] = centers[c, j]
    return CT


@numba.njit(cache=True, nogil=True, inline="always")
def _distances(X, i, CT, acc):
    """Squared distances of row ``i`` to every center into ``acc`` (vectorised over centers)."""
    acc[:] = 0.0
    for j in range(CT.shape[0]):
        xj = np.float64(X[i, j])
        for c in range(CT.shape[1]):
            t = xj - CT[j, c]
            acc[c] += t * t


@numba.njit(cache=True, nogil=True, inline="always")
def _nearest(X, i, CT, acc):
    _distances(X, i, CT, acc)
    best = np.inf
    arg = -1
    for c in range(acc.shape[0]):
        if acc[c] < best:
            best = acc[c]
            arg = c
    return arg, best


@numba.njit(cache=True, nogil=True, inline="always")
def _is_nodata(X, i):
    for j in range(X.shape[1]):
        if np.isnan(X[i, j]):
            return True
    return False


@numba.njit(cache=True, nogil=True)
def lloyd_partial(X, centers, sums, counts):
    """Assign each row of ``X`` to its nearest center and accumulate.

    ``sums`` (``k x d`` float64) and ``counts`` (``k`` int64) are added to in
    place. Returns the inertia (sum of squared distances) of the valid rows.
    """
    CT = _transposed(centers)
    acc = np.empty(centers.shape[0])
    inertia = 0.0
    for i in range(X.shape[0]):
        if _is_nodata(X, i):
            continue
        c, best = _nearest(X, i, CT, acc)
        inertia += best
        counts[c] += 1
        for j in range(X.shape[1]):
            sums[c, j] += X[i, j]
    return inertia


@numba.njit(cache=True, nogil=True)
def assign_labels(X, centers, labels, dist):
    """Nearest center (``labels``, -1 for nodata) and squared distance (``dist``, 0 for nodata)."""
    CT = _transposed(centers)
    acc = np.empty(centers.shape[0])
    inertia = 0.0
    for i in range(X.shape[0]):
        if _is_nodata(X, i):
            labels[i] = -1
            dist[i] = 0.0
            continue
        c, best = _nearest(X, i, CT, acc)
        labels[i] = c
        dist[i] = best
        inertia += best
    return inertia


@numba.njit(cache=True, nogil=True)
def all_distances(X, centers, out):
    """Euclidean (not squared) distance of every row to every center; NaN rows get NaN."""
    CT = _transposed(centers)
    acc = np.empty(centers.shape[0])
    for i in range(X.shape[0]):
        if _is_nodata(X, i):
            out[i, :] = np.nan
            continue
        _distances(X, i, CT, acc)
        for c in range(acc.shape[0]):
            out[i, c] = np.sqrt(acc[c])


@numba.njit(cache=True, nogil=True)
def update_min_dist(X, new_centers, d2):
    """``d2[i] = min(d2[i], min_c |X[i] - new_centers[c]|^2)``; nodata rows stay 0. Returns sum(d2)."""
    CT = _transposed(new_centers)
    acc = np.empty(new_centers.shape[0])
    total = 0.0
    for i in range(X.shape[0]):
        if _is_nodata(X, i):
            d2[i] = 0.0
            continue
        _distances(X, i, CT, acc)
        m = d2[i]
        for c in range(acc.shape[0]):
            if acc[c] < m:
                m = acc[c]
        d2[i] = m
        total += m
    return total


@numba.njit(cache=True, nogil=True)
def nearest_counts(X, centers, counts):
    """Add to ``counts[c]`` the number of valid rows whose nearest center is ``c``."""
    CT = _transposed(centers)
    acc = np.empty(centers.shape[0])
    for i in range(X.shape[0]):
        if _is_nodata(X, i):
            continue
        c, _ = _nearest(X, i, CT, acc)
        counts[c] += 1
