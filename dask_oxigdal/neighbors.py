"""Exact distributed k-nearest-neighbour queries: per-partition KD-trees, bbox pruning.

>>> import dask_oxigdal as dox
>>> distances, indices = dox.knn(points, queries, k=10)

How it works
------------
1. One small task per point partition returns its row count and bounding box.
2. On the client, for every query, partitions are sorted by their minimum
   bounding-box distance (``mindist``); walking that order until at least
   ``k`` points are covered gives an upper bound on the k-th neighbour
   distance: the largest maximum bounding-box distance (``maxdist``) among
   the walked partitions. Only partitions with ``mindist <= bound`` can hold
   a neighbour; the others are pruned.
3. One task per remaining partition builds a ``scipy.spatial.cKDTree`` on its
   points and queries it for the queries that reach it.
4. The candidates are merged on the client: the ``k`` smallest distances per
   query, ties broken by the smaller global index.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["knn"]

_TYPE_NAMES = {
    -1: "missing",
    1: "LineString",
    2: "LinearRing",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}


def _xy_of(df: Any, x: str, y: str) -> np.ndarray:
    geopandas = _geopandas()
    if geopandas is not None and isinstance(df, geopandas.GeoDataFrame | geopandas.GeoSeries):
        import shapely

        geoms = np.asarray(df.geometry.array if hasattr(df, "geometry") else df.array)
        kinds = shapely.get_type_id(geoms)
        if len(geoms) and not (kinds == 0).all():
            bad = sorted({_TYPE_NAMES.get(int(k), str(k)) for k in np.unique(kinds) if k != 0})
            raise ValueError(
                f"knn needs Point geometries; got {', '.join(bad)} (use .centroid or "
                ".representative_point() first)"
            )
        return np.column_stack([shapely.get_x(geoms), shapely.get_y(geoms)]).astype(np.float64)
    if isinstance(df, pd.DataFrame):
        missing = [c for c in (x, y) if c not in df.columns]
        if missing:
            raise KeyError(
                f"coordinate column(s) {missing} not found; available columns: "
                f"{list(df.columns)} (pass x= and y=)"
            )
        return np.column_stack([df[x].to_numpy(np.float64), df[y].to_numpy(np.float64)])
    arr = np.asarray(df, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"expected an (n, 2) array of x/y coordinates, got shape {arr.shape}")
    return arr


def _geopandas() -> Any:
    try:
        import geopandas
    except ImportError:  # pragma: no cover - geopandas is a dependency
        return None
    return geopandas


def _stats(df: Any, x: str, y: str) -> tuple[int, np.ndarray]:
    xy = _xy_of(df, x, y)
    if xy.shape[0] == 0:
        return 0, np.full(4, np.nan)
    if not np.isfinite(xy).all():
        raise ValueError(
            "knn points must have finite coordinates; a partition holds "
            f"{int((~np.isfinite(xy)).any(axis=1).sum())} point(s) with NaN or infinite x/y"
        )
    return xy.shape[0], np.concatenate([xy.min(axis=0), xy.max(axis=0)])


def _query_partition(
    df: Any, x: str, y: str, qidx: np.ndarray, queries: np.ndarray, k: int, offset: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from scipy.spatial import cKDTree

    xy = _xy_of(df, x, y)
    kk = min(k, xy.shape[0])
    tree = cKDTree(xy)
    d, i = tree.query(queries, k=kk)
    d = np.asarray(d, dtype=np.float64).reshape(len(queries), kk)
    i = np.asarray(i, dtype=np.int64).reshape(len(queries), kk) + offset
    return np.repeat(qidx, kk), d.ravel(), i.ravel()


def _box_distances(q: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mindist, maxdist) of each query (rows) to each box (columns)."""
    qx = q[:, :1]
    qy = q[:, 1:]
    minx, miny, maxx, maxy = (boxes[:, c][None, :] for c in range(4))
    dx = np.maximum(np.maximum(minx - qx, qx - maxx), 0.0)
    dy = np.maximum(np.maximum(miny - qy, qy - maxy), 0.0)
    fx = np.maximum(np.abs(qx - minx), np.abs(qx - maxx))
    fy = np.maximum(np.abs(qy - miny), np.abs(qy - maxy))
    return np.hypot(dx, dy), np.hypot(fx, fy)


def _run_round(parts, live, offsets, mask, q, k, x, y) -> list:
    import dask

    tasks = []
    for col, p in enumerate(live):
        qidx = np.flatnonzero(mask[:, col])
        if qidx.size:
            tasks.append(
                dask.delayed(_query_partition)(parts[p], x, y, qidx, q[qidx], k, int(offsets[p]))
            )
    return [(r[0], r[1], r[2]) for r in dask.compute(*tasks)]


def _merge(cand, nq, k, dist, idx, extra=()) -> None:
    """Keep the k smallest (distance, index) candidates per query in ``dist`` / ``idx``."""
    rows = []
    for c in [*cand, *extra]:
        if len(c) == 2:  # a previous result (dist, idx) arrays
            d, i = c
            rows.append((np.repeat(np.arange(nq), k), d.ravel(), i.ravel()))
        else:
            rows.append(c)
    qi = np.concatenate([r[0] for r in rows])
    dd_ = np.concatenate([r[1] for r in rows])
    ii = np.concatenate([r[2] for r in rows])
    keep = np.isfinite(dd_)
    qi, dd_, ii = qi[keep], dd_[keep], ii[keep]
    order = np.lexsort((ii, dd_, qi))
    qi, dd_, ii = qi[order], dd_[order], ii[order]
    if qi.size:
        dup = np.zeros(qi.size, dtype=bool)
        dup[1:] = (qi[1:] == qi[:-1]) & (ii[1:] == ii[:-1])
        qi, dd_, ii = qi[~dup], dd_[~dup], ii[~dup]
    starts = np.searchsorted(qi, np.arange(nq), side="left")
    rank = np.arange(qi.size) - starts[qi]
    sel = rank < k
    dist[qi[sel], rank[sel]] = dd_[sel]
    idx[qi[sel], rank[sel]] = ii[sel]


def knn(
    points: Any,
    queries: Any,
    k: int,
    *,
    x: str = "x",
    y: str = "y",
    return_stats: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Exact k nearest neighbours of each query among distributed points.

    Parameters
    ----------
    points : dask_geopandas.GeoDataFrame, dask.dataframe.DataFrame, or in-memory equivalents
        Point geometries, or a frame with ``x`` / ``y`` columns. Coordinates
        must be finite.
    queries : array_like (n, 2), GeoSeries / GeoDataFrame of points, pandas or Dask frame
        Query points. Dask frames are computed (queries must fit in memory).
    k : int
        Number of neighbours, at least 1.
    x, y : str, default "x", "y"
        Coordinate columns of frame inputs without geometry.
    return_stats : bool, default False
        Also return a dict with ``partitions`` (non-empty point partitions),
        ``pairs_total`` (queries x non-empty partitions), ``pairs_searched``
        and ``pruning_ratio`` (``1 - searched / total``).

    Returns
    -------
    distances : numpy.ndarray of float64, shape (n_queries, k)
        Euclidean distances, ascending per row.
    indices : numpy.ndarray of int64, shape (n_queries, k)
        Global position of each neighbour: its row number counting through
        the partitions of ``points`` in order (what ``cKDTree`` on the
        concatenated points returns).
    stats : dict
        Only with ``return_stats=True``: the counters described there.

    Raises
    ------
    ValueError
        For ``k < 1``, non-point geometries or non-finite coordinates.

    Notes
    -----
    **Exactness.** The distances are exactly (bit for bit) those of
    ``scipy.spatial.cKDTree(all_points).query(queries, k)``: each partition's
    tree computes the same Euclidean distance of the same coordinates.
    Indices equal cKDTree's except between points at exactly the same
    distance from a query (ties, e.g. duplicate points): cKDTree's order among
    ties depends on its tree layout; here ties are ordered by global index
    among the candidates, and when more than ``k`` points of one partition
    tie at the k-th distance, which of them are returned follows that
    partition's tree (any choice is a correct k-nearest set).

    **k larger than the number of points.** As with cKDTree, the missing
    neighbours have distance ``inf`` and index ``n`` (the number of points).

    **Empty partitions** are skipped; zero points give all ``inf`` / ``n``.

    Output is always 2-D (also for ``k == 1``, where cKDTree returns 1-D).
    """
    import dask
    import dask.dataframe as dd

    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    k = int(k)
    if isinstance(queries, dd.DataFrame | dd.Series):
        queries = queries.compute()
    q = np.ascontiguousarray(_xy_of(queries, x, y))
    if not np.isfinite(q).all():
        raise ValueError("knn queries must have finite coordinates")
    nq = q.shape[0]
    if isinstance(points, dd.DataFrame):
        parts = points.to_delayed()
    else:
        parts = [dask.delayed(points)]
    stats = dask.compute(*[dask.delayed(_stats)(p, x, y) for p in parts])
    counts = np.array([s[0] for s in stats], dtype=np.int64)
    n = int(counts.sum())
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    live = np.flatnonzero(counts > 0)
    dist = np.full((nq, k), np.inf)
    idx = np.full((nq, k), n, dtype=np.int64)
    info = {"partitions": int(live.size), "pairs_total": int(nq * live.size)}
    if nq == 0 or live.size == 0:
        info.update(pairs_searched=0, pruning_ratio=0.0)
        return (dist, idx, info) if return_stats else (dist, idx)
    boxes = np.array([stats[p][1] for p in live])
    mind, _ = _box_distances(q, boxes)
    # Round 1: per query, the partitions nearest by mindist that cover k points.
    order = np.argsort(mind, axis=1, kind="stable")
    cum = np.cumsum(counts[live][order], axis=1)
    stop = np.where(cum[:, -1] >= k, np.argmax(cum >= k, axis=1), live.size - 1)
    walked = np.zeros_like(mind, dtype=bool)
    np.put_along_axis(walked, order, np.arange(live.size)[None, :] <= stop[:, None], axis=1)
    cand = _run_round(parts, live, offsets, walked, q, k, x, y)
    _merge(cand, nq, k, dist, idx)
    # Round 2: every other partition whose mindist does not exceed the k-th distance found.
    # (a little slack: hypot and cKDTree may round one distance differently)
    bound = dist[:, -1]
    reach = (mind <= bound[:, None] * (1.0 + 1e-9) + 1e-300) & ~walked
    searched = int(walked.sum() + reach.sum())
    if reach.any():
        cand2 = _run_round(parts, live, offsets, reach, q, k, x, y)
        _merge([(dist.copy(), idx.copy())], nq, k, dist, idx, extra=cand2)
    info.update(
        pairs_searched=searched,
        pruning_ratio=1.0 - searched / info["pairs_total"],
    )
    return (dist, idx, info) if return_stats else (dist, idx)
