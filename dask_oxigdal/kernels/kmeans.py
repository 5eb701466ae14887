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


@numba.njit(cache=True, nogil=True, inline="always")
def _nearest(X, i, centers):
    k = centers.shape[0]
    d = X.shape[1]
    best = np.inf
    arg = -1
    for c in range(k):
        s = 0.0
        for j in range(d):
            t = np.float64(X[i, j]) - np.float64(centers[c, j])
            s += t * t
        if s < best:
            best = s
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
    inertia = 0.0
    for i in range(X.shape[0]):
        if _is_nodata(X, i):
            continue
        c, best = _nearest(X, i, centers)
        inertia += best
        counts[c] += 1
        for j in range(X.shape[1]):
            sums[c, j] += X[i, j]
    return inertia


@numba.njit(cache=True, nogil=True)
def assign_labels(X, centers, labels, dist):
    """Nearest center (``labels``, -1 for nodata) and squared distance (``dist``, 0 for nodata)."""
    inertia = 0.0
    for i in range(X.shape[0]):
        if _is_nodata(X, i):
            labels[i] = -1
            dist[i] = 0.0
            continue
        c, best = _nearest(X, i, centers)
        labels[i] = c
        dist[i] = best
        inertia += best
    return inertia


@numba.njit(cache=True, nogil=True)
def all_distances(X, centers, out):
    """Euclidean (not squared) distance of every row to every center; NaN rows get NaN."""
    for i in range(X.shape[0]):
        nodata = _is_nodata(X, i)
        for c in range(centers.shape[0]):
            if nodata:
                out[i, c] = np.nan
                continue
            s = 0.0
            for j in range(X.shape[1]):
                t = np.float64(X[i, j]) - np.float64(centers[c, j])
                s += t * t
            out[i, c] = np.sqrt(s)


@numba.njit(cache=True, nogil=True)
def update_min_dist(X, new_centers, d2):
    """``d2[i] = min(d2[i], min_c |X[i] - new_centers[c]|^2)``; nodata rows stay 0. Returns sum(d2)."""
    total = 0.0
    for i in range(X.shape[0]):
        if _is_nodata(X, i):
            d2[i] = 0.0
            continue
        m = d2[i]
        for c in range(new_centers.shape[0]):
            s = 0.0
            for j in range(X.shape[1]):
                t = np.float64(X[i, j]) - np.float64(new_centers[c, j])
                s += t * t
            if s < m:
                m = s
        d2[i] = m
        total += m
    return total


@numba.njit(cache=True, nogil=True)
def nearest_counts(X, centers, counts):
    """Add to ``counts[c]`` the number of valid rows whose nearest center is ``c``."""
    for i in range(X.shape[0]):
        if _is_nodata(X, i):
            continue
        c, _ = _nearest(X, i, centers)
        counts[c] += 1
