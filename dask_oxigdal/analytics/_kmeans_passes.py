"""The passes of :class:`dask_oxigdal.analytics.kmeans.KMeans` over the data (private).

Block functions (each takes ``(block, block_index, *args)``, a block being
``(..., bands)``) and their combiners for the tree reduction; ``_Data``, which
runs one pass as one graph (dask input) or on a local thread pool (numpy
input); and the small in-memory helpers of the initialisation (greedy
weighted k-means++ and weighted Lloyd on the candidates).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

#: Rows per block when the input is an in-memory numpy array.
BLOCK_ROWS = 1 << 18
_FANIN = 8

# ---------------------------------------------------------------- block functions
# Each takes (block, block_index, *args); a block is ``(..., bands)``.


def _rows(block: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block.reshape(-1, block.shape[-1]))


def _valid(X: np.ndarray) -> np.ndarray:
    return ~np.isnan(X).any(axis=1)


def _top(keys: np.ndarray, rows: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` rows with the largest keys, in decreasing key order (ties: lower row first)."""
    if keys.shape[0] > m:
        idx = np.argpartition(-keys, m - 1)[:m]
        keys, rows = keys[idx], rows[idx]
    order = np.lexsort((np.arange(keys.shape[0]), -keys))
    return keys[order], rows[order]


def _stats_sample(block, index, seed, m):
    """Valid-row count, per-band sums and squares, and a uniform sample (top ``m`` random keys)."""
    X = _rows(block)
    ok = _valid(X)
    V = X[ok]
    rng = np.random.default_rng([seed, 0, index])
    keys = rng.random(X.shape[0])[ok]
    V64 = V.astype(np.float64)
    keys, rows = _top(keys, V, m)
    return {
        "n": int(V.shape[0]),
        "s": V64.sum(axis=0),
        "ss": (V64 * V64).sum(axis=0),
        "keys": keys,
        "rows": rows,
        "m": m,
    }


def _combine_stats(parts):
    keys = np.concatenate([p["keys"] for p in parts])
    rows = np.concatenate([p["rows"] for p in parts])
    keys, rows = _top(keys, rows, parts[0]["m"])
    return {
        "n": sum(p["n"] for p in parts),
        "s": sum(p["s"] for p in parts),
        "ss": sum(p["ss"] for p in parts),
        "keys": keys,
        "rows": rows,
        "m": parts[0]["m"],
    }


def _oversample(block, index, seed, rnd, centers, ell, m):
    """Cost against ``centers`` and the ``m`` rows with the largest ``ell * d2 / u``.

    Row ``x`` is drawn by k-means|| with probability ``ell * d2(x) / phi`` i.e.
    when ``u < ell * d2 / phi``, i.e. when ``ell * d2 / u > phi``; ``phi`` is
    only known after the reduction, so each block keeps its largest keys.
    """
    from dask_oxigdal.kernels import kmeans as _k

    X = _rows(block)
    d2 = np.full(X.shape[0], np.inf)
    cost = _k.update_min_dist(X, centers, d2)
    rng = np.random.default_rng([seed, rnd, index])
    u = 1.0 - rng.random(X.shape[0])  # (0, 1]
    keys = ell * d2 / u
    keys, rows = _top(keys, X, m)
    return {"cost": cost, "keys": keys, "rows": rows, "m": m}


def _combine_oversample(parts):
    keys = np.concatenate([p["keys"] for p in parts])
    rows = np.concatenate([p["rows"] for p in parts])
    keys, rows = _top(keys, rows, parts[0]["m"])
    return {"cost": sum(p["cost"] for p in parts), "keys": keys, "rows": rows, "m": parts[0]["m"]}


def _counts(block, index, centers):
    from dask_oxigdal.kernels import kmeans as _k

    counts = np.zeros(centers.shape[0], dtype=np.int64)
    _k.nearest_counts(_rows(block), centers, counts)
    return counts


def _sum(parts):
    return sum(parts[1:], parts[0])


def _lloyd(block, index, centers):
    from dask_oxigdal.kernels import kmeans as _k

    X = _rows(block)
    sums = np.zeros(centers.shape, dtype=np.float64)
    counts = np.zeros(centers.shape[0], dtype=np.int64)
    inertia = _k.lloyd_partial(X, centers, sums, counts)
    return sums, counts, inertia


def _combine_lloyd(parts):
    return (
        sum(p[0] for p in parts[1:]) + parts[0][0],
        sum(p[1] for p in parts[1:]) + parts[0][1],
        sum(p[2] for p in parts),
    )


def _farthest(block, index, centers, m):
    from dask_oxigdal.kernels import kmeans as _k

    X = _rows(block)
    labels = np.empty(X.shape[0], dtype=np.int64)
    dist = np.empty(X.shape[0], dtype=np.float64)
    _k.assign_labels(X, centers, labels, dist)
    ok = labels >= 0
    keys, rows = _top(dist[ok], X[ok], m)
    return {"keys": keys, "rows": rows, "m": m}


def _combine_farthest(parts):
    keys = np.concatenate([p["keys"] for p in parts])
    rows = np.concatenate([p["rows"] for p in parts])
    keys, rows = _top(keys, rows, parts[0]["m"])
    return {"keys": keys, "rows": rows, "m": parts[0]["m"]}


def _labels_block(block, centers):
    from dask_oxigdal.kernels import kmeans as _k

    X = _rows(block)
    labels = np.empty(X.shape[0], dtype=np.int64)
    dist = np.empty(X.shape[0], dtype=np.float64)
    _k.assign_labels(X, centers, labels, dist)
    return labels.reshape(block.shape[:-1])


def _transform_block(block, centers):
    from dask_oxigdal.kernels import kmeans as _k

    X = _rows(block)
    out = np.empty((X.shape[0], centers.shape[0]), dtype=block.dtype)
    _k.all_distances(X, centers, out)
    return out.reshape((*block.shape[:-1], centers.shape[0]))


# ---------------------------------------------------------------- data access


class _Data:
    """An input as blocks of rows: an in-memory array or a dask array (last axis: bands)."""

    def __init__(self, arr: Any) -> None:
        self.arr = arr
        self.is_dask = _is_dask(arr)
        self.n_features = int(arr.shape[-1])
        self.dtype = arr.dtype

    def map_reduce(self, fn, combine, *args):
        if self.is_dask:
            import dask

            blocks = self.arr.to_delayed().ravel().tolist()
            parts = [dask.delayed(fn, pure=True)(b, i, *args) for i, b in enumerate(blocks)]
            while len(parts) > 1:
                parts = [
                    dask.delayed(combine, pure=True)(parts[i : i + _FANIN])
                    for i in range(0, len(parts), _FANIN)
                ]
            (out,) = dask.compute(parts[0])
            return out
        from dask_oxigdal.kernels._parallel import parallel_threads

        X = self.arr
        n = X.shape[0]
        starts = range(0, max(n, 1), BLOCK_ROWS)
        jobs = [(X[s : s + BLOCK_ROWS], i) for i, s in enumerate(starts)]
        threads = min(parallel_threads(n * self.n_features), len(jobs))
        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                parts = list(pool.map(lambda j: fn(j[0], j[1], *args), jobs))
        else:
            parts = [fn(b, i, *args) for b, i in jobs]
        return combine(parts)

    def labels(self, centers):
        if self.is_dask:
            return self.arr.map_blocks(
                _labels_block, centers, drop_axis=self.arr.ndim - 1, dtype=np.int64
            )
        return _labels_block(self.arr, centers)

    def transform(self, centers):
        if self.is_dask:
            k = centers.shape[0]
            return self.arr.map_blocks(
                _transform_block, centers, chunks=(*self.arr.chunks[:-1], (k,)), dtype=self.dtype
            )
        return _transform_block(self.arr, centers)


def _is_dask(arr: Any) -> bool:
    return type(arr).__module__.startswith("dask.array")


def _is_xarray(obj: Any) -> bool:
    return type(obj).__module__.startswith("xarray.") and hasattr(obj, "dims")


# ---------------------------------------------------------------- init helpers


def _kmeanspp(C, w, k, rng, n_trials=None):
    """Greedy weighted k-means++ over the rows ``C`` with weights ``w``."""
    n = C.shape[0]
    n_trials = n_trials or 2 + int(math.log(k))
    C64 = C.astype(np.float64)
    p = w / w.sum()
    first = rng.choice(n, p=p)
    centers = [first]
    d2 = ((C64 - C64[first]) ** 2).sum(axis=1)
    for _ in range(1, k):
        pot = (w * d2).sum()
        if pot <= 0:
            rest = [i for i in range(n) if i not in centers]
            centers.append(rest[0] if rest else centers[-1])
            continue
        cand = np.searchsorted(np.cumsum(w * d2), rng.random(n_trials) * pot)
        cand = np.minimum(cand, n - 1)
        dc = ((C64[None, :, :] - C64[cand][:, None, :]) ** 2).sum(axis=2)
        dc = np.minimum(d2[None, :], dc)
        best = int(np.argmin((w[None, :] * dc).sum(axis=1)))
        centers.append(int(cand[best]))
        d2 = dc[best]
    return C[np.asarray(centers)]


def _weighted_lloyd(C, w, centers, iters=30):
    C64 = C.astype(np.float64)
    cen = centers.astype(np.float64)
    for _ in range(iters):
        lab = ((C64[:, None, :] - cen[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
        new = cen.copy()
        for c in range(cen.shape[0]):
            m = lab == c
            if w[m].sum() > 0:
                new[c] = (C64[m] * w[m, None]).sum(axis=0) / w[m].sum()
        if np.array_equal(new, cen):
            break
        cen = new
    return cen.astype(centers.dtype)
