"""Streaming geofencing: which polygons each point of a stream of batches lies in.

:func:`geofence` reads point batches from an iterator, an async iterator or a
``streamz.Stream``, matches each batch against a fixed set of polygons with
the numba kernels of :mod:`dask_oxigdal.kernels.pip_index` (a classified
grid over the polygons, y-bands of their segments, exact ray-crossing
tests; built by :class:`PolygonIndex`), and yields one
:class:`GeofenceBatch` per input batch, in input order, with its matches and
the enter/exit events of the tracked ids.

Boundary rule: a point is matched to a polygon only when it lies in the
polygon's **interior**, exactly as ``shapely.contains(polygon, point)`` (and
``geopandas.sjoin(points, polygons, predicate="within")``): points on an
exterior or hole boundary, or at a vertex, are not matched; points in a hole
are not matched.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dask_oxigdal.analytics._geofence_events import _Tracker
from dask_oxigdal.analytics._geofence_sources import END_OF_STREAM, _batch_columns, _iterate
from dask_oxigdal.analytics._polygon_index import PolygonIndex, _query_part

__all__ = ["END_OF_STREAM", "GeofenceBatch", "PolygonIndex", "geofence"]

_EVENT_COLUMNS = ["point_id", "polygon_id", "kind"]


@dataclass
class GeofenceBatch:
    """The result of one input batch.

    Attributes
    ----------
    seq : int
        Position of the batch in the stream (0-based).
    matches : pandas.DataFrame
        ``point_id`` (the batch's ``id`` column, else the row position) and
        ``polygon_id`` (the polygons' index label), one row per (point,
        polygon) with the point in the polygon's interior; ordered by row,
        then polygon position.
    events : pandas.DataFrame
        ``point_id`` (the tracked id, ``by=``), ``polygon_id`` and ``kind``
        (``"enter"`` / ``"exit"``), in row order (exits before enters).
    n_points : int
        Rows in the batch.
    latency : float
        Seconds from reading the batch off the source to this result.
    cpu : float
        CPU seconds the point-in-polygon query of this batch took (the
        kernel's thread time, summed over the pieces on a cluster); the
        wall-clock ``latency`` also counts waiting for a thread or a worker.
    """

    seq: int
    matches: pd.DataFrame
    events: pd.DataFrame
    n_points: int
    latency: float
    cpu: float = 0.0


def geofence(
    source: Any,
    polygons: Any,
    *,
    by: str | None = None,
    client: Any = None,
    npartitions: int | None = None,
    max_in_flight: int | None = None,
    retries: int = 3,
    x: str = "x",
    y: str = "y",
    id: str = "id",
) -> Iterator[GeofenceBatch]:
    """Match a stream of point batches against polygons; yield matches and enter/exit events.

    Parameters
    ----------
    source : iterable, async iterable or streamz.Stream
        Point batches: pandas DataFrames (``x``/``y`` columns or a Point
        geometry column) or pyarrow RecordBatches/Tables (``x``/``y``). A
        ``streamz.Stream`` is read through a sink; emit
        :data:`END_OF_STREAM` into it to end the iteration (emit from
        another thread or an event loop: a synchronous ``emit`` waits while
        the pipeline is full).
    polygons : geopandas.GeoSeries or GeoDataFrame
        Polygons and multipolygons (holes allowed). Their index labels are
        the ``polygon_id`` of the results.
    by : str, optional
        The column of the id to track for enter/exit events (default: the
        ``id`` column when the batches have one; without it no events).
    client : distributed.Client, optional
        Match on this cluster: the polygons are split into ``npartitions``
        Hilbert ranges (:class:`~dask_oxigdal.partitioning.HilbertPartitioner`),
        each indexed and scattered to every worker once (``broadcast=True``);
        a batch is split by the parts' bounding boxes and each piece runs
        where its part is preferred (part ``i`` on worker ``i mod n``,
        others allowed). Without a client everything runs in this process
        (on a thread pool of ``min(max_in_flight, cpu count)`` threads).
    npartitions : int, optional
        Polygon parts with a client (default: number of workers).
    max_in_flight : int, optional
        Batches read from the source and not yet yielded, at most. The
        source is read only when there is room: a slow consumer slows the
        source down; nothing is dropped. Default: the CPU count (at least
        2) without a client, so that no batch waits for a thread (more only
        adds latency); 4 with a client.
    retries : int, default 3
        With a client: how many times a piece whose task failed (e.g. its
        worker died more often than ``allowed-failures``) is resubmitted.
    x, y, id : str
        Column names of the coordinates and of the point ids.

    Yields
    ------
    GeofenceBatch
        One per input batch, in input order.

    Notes
    -----
    Boundary rule: interior only, as ``shapely.contains`` and
    ``geopandas.sjoin(predicate="within")``: points on an edge, at a vertex
    or in a hole are not matched. NaN or infinite coordinates match nothing.
    Events: per tracked id, in row order across batches, ``"enter"`` when
    the id's point is inside a polygon its previous point was not in, and
    ``"exit"`` for the reverse; the state of every id ever seen persists for
    the life of the iterator.

    Examples
    --------
    >>> import geopandas as gpd, pandas as pd
    >>> from shapely.geometry import box
    >>> zones = gpd.GeoSeries([box(0, 0, 10, 10)], index=["depot"])
    >>> feed = [pd.DataFrame({"id": [7], "x": [5.0], "y": [5.0]}),
    ...         pd.DataFrame({"id": [7], "x": [15.0], "y": [5.0]})]
    >>> [b.events.kind.tolist() for b in geofence(feed, zones)]
    [['enter'], ['exit']]
    """
    if max_in_flight is None:
        max_in_flight = 4 if client is not None else max(os.cpu_count() or 1, 2)
    if not isinstance(max_in_flight, int) or isinstance(max_in_flight, bool) or max_in_flight < 1:
        raise ValueError(f"max_in_flight must be an integer >= 1, got {max_in_flight!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    geoms = getattr(polygons, "geometry", None)
    if geoms is None or not hasattr(polygons, "index"):
        raise TypeError(
            f"polygons must be a geopandas GeoSeries or GeoDataFrame, got {type(polygons).__name__}"
        )
    labels = polygons.index
    it = _iterate(source)
    return _Pipeline(it, geoms, labels, by, client, npartitions, max_in_flight, retries, x, y, id)


class _Pipeline:
    """The bounded pipeline behind :func:`geofence` (an iterator)."""

    def __init__(
        self, it, geoms, labels, by, client, npartitions, max_in_flight, retries, x, y, id
    ):
        self._source = it
        self._labels = labels
        self._by = by
        self._names = (x, y, id)
        self._max = max_in_flight
        self._retries = retries
        self._client = client
        self._tracker = _Tracker(len(labels))
        self._pending: deque = deque()
        self._seq = itertools.count()
        self._done = False
        #: Most batches read and not yet yielded at any time (for tests and benchmarks).
        self.max_pending = 0
        if client is None:
            self._index = PolygonIndex.from_geometries(geoms)
            self._pool = ThreadPoolExecutor(min(max_in_flight, os.cpu_count() or 1))
        else:
            self._pool = None
            self._setup_cluster(geoms, npartitions)

    def _setup_cluster(self, geoms, npartitions):
        import shapely

        from dask_oxigdal.partitioning import HilbertPartitioner

        client = self._client
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        if not workers:
            raise ValueError("the client's cluster has no workers")
        n = len(geoms)
        nparts = npartitions or len(workers)
        if not isinstance(nparts, int) or nparts < 1:
            raise ValueError(f"npartitions must be an integer >= 1, got {npartitions!r}")
        values = np.asarray(geoms.values, dtype=object)
        nonempty = ~(shapely.is_missing(values) | shapely.is_empty(values))
        ids = np.zeros(n, np.int64)
        if nonempty.any() and nparts > 1:
            hp = HilbertPartitioner.from_data(geoms[nonempty], min(nparts, int(nonempty.sum())))
            ids[nonempty] = hp.partition(geoms[nonempty]).ids
        parts = []
        for p in np.unique(ids):
            pos = np.flatnonzero(ids == p)
            parts.append(PolygonIndex.from_geometries(values[pos], pos))
        self._parts = parts
        self._extents = np.array([pt.extent for pt in parts], dtype=np.float64)
        self._part_futures = client.scatter(parts, broadcast=True, hash=False)
        self._workers = workers

    # -------------------------------------------------------------- iterator
    def __iter__(self):
        return self

    def __next__(self) -> GeofenceBatch:
        while not self._done and len(self._pending) < self._max:
            try:
                batch = next(self._source)
            except StopIteration:
                self._done = True
                break
            self._pending.append(self._submit(batch))
            self.max_pending = max(self.max_pending, len(self._pending))
        if not self._pending:
            self.close()
            raise StopIteration
        return self._finish(self._pending.popleft())

    def close(self) -> None:
        """Stop: release the thread pool and the scattered polygons."""
        self._done = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        futs = getattr(self, "_part_futures", None)
        if futs:
            self._part_futures = None
            for f in futs:
                f.release()

    def _submit(self, batch):
        t0 = time.perf_counter()
        x, y, ids, tracked, n = _batch_columns(batch, *self._names, self._by_for(batch))
        x = np.ascontiguousarray(x, dtype=np.float64)
        y = np.ascontiguousarray(y, dtype=np.float64)
        if self._client is None:
            work = self._pool.submit(_query_part, self._index, x, y, None)
            return (t0, n, ids, tracked, "local", work, None)
        pieces = []
        for p, (x0, y0, x1, y1) in enumerate(self._extents):
            if np.isnan(x0):
                continue
            rows = np.flatnonzero((x > x0) & (x < x1) & (y > y0) & (y < y1))
            if rows.size:
                pieces.append((p, x[rows], y[rows], rows))
        futs = [self._submit_piece(piece) for piece in pieces]
        return (t0, n, ids, tracked, "cluster", futs, pieces)

    def _submit_piece(self, piece, rescatter=False):
        p, xs, ys, _ = piece
        if rescatter and self._part_futures[p].status != "finished":
            # the scheduler may drop broadcast replicas (the active memory manager), so
            # the death of the last worker holding a part loses it: send it again
            self._part_futures[p] = self._client.scatter(self._parts[p], broadcast=True, hash=False)
        return self._client.submit(
            _query_part,
            self._part_futures[p],
            xs,
            ys,
            None,  # the piece's rows stay here: the worker answers positions in the piece
            pure=False,
            retries=self._retries,
            workers=[self._workers[p % len(self._workers)]],
            allow_other_workers=True,
        )

    def _by_for(self, batch) -> str | None:
        if self._by is not None:
            return self._by
        cols = getattr(batch, "columns", None)
        if cols is None and hasattr(batch, "schema"):
            cols = batch.schema.names
        return self._names[2] if cols is not None and self._names[2] in list(cols) else None

    def _finish(self, item) -> GeofenceBatch:
        t0, n, ids, tracked, kind, work, pieces = item
        if kind == "local":
            rows, g, cpu = work.result()
        else:
            results = []
            for i, fut in enumerate(work):
                attempt = 0
                while True:
                    try:
                        r, gg, c = fut.result()
                        break
                    except Exception:
                        if attempt >= self._retries:
                            raise
                        attempt += 1
                        fut = self._submit_piece(pieces[i], rescatter=True)
                results.append((pieces[i][3][r], gg, c))
            cpu = float(sum(c for _, _, c in results))
            if len(results) == 1:  # one piece: already by row, then polygon
                rows, g = results[0][0], results[0][1]
            elif results:
                rows = np.concatenate([r for r, _, _ in results])
                g = np.concatenate([gg for _, gg, _ in results])
                o = np.lexsort((g, rows))
                rows, g = rows[o], g[o]
            else:
                rows = g = np.zeros(0, np.int64)
        point_ids = ids[rows] if ids is not None else rows
        matches = pd.DataFrame(
            {"point_id": point_ids, "polygon_id": self._labels.take(g)}, copy=False
        )
        if tracked is not None:
            er, eg, ein = self._tracker.events(np.asarray(tracked), rows, g)
            events = pd.DataFrame(
                {
                    "point_id": np.asarray(tracked)[er],
                    "polygon_id": self._labels.take(eg),
                    "kind": np.where(ein, "enter", "exit"),
                }
            )
        else:
            events = pd.DataFrame({c: [] for c in _EVENT_COLUMNS})
        return GeofenceBatch(
            seq=next(self._seq),
            matches=matches,
            events=events,
            n_points=int(n),
            latency=time.perf_counter() - t0,
            cpu=cpu,
        )
