"""Streaming geofencing: which polygons each point of a stream of batches lies in.

:func:`geofence` reads point batches from an iterator, an async iterator or a
``streamz.Stream``, matches each batch against a fixed set of polygons with
the numba kernels of :mod:`dask_oxigdal.kernels.pip` (a grid index of the
polygons' bounding boxes, then exact ray-crossing tests), and yields one
:class:`GeofenceBatch` per input batch, in input order, with its matches and
the enter/exit events of the tracked ids.

Boundary rule: a point is matched to a polygon only when it lies in the
polygon's **interior**, exactly as ``shapely.contains(polygon, point)`` (and
``geopandas.sjoin(points, polygons, predicate="within")``): points on an
exterior or hole boundary, or at a vertex, are not matched; points in a hole
are not matched.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["END_OF_STREAM", "GeofenceBatch", "PolygonIndex", "geofence"]

#: Emit this into a ``streamz.Stream`` source to end the iteration.
END_OF_STREAM = object()

_MAX_CELLS = 1 << 22
_EVENT_COLUMNS = ["point_id", "polygon_id", "kind"]


# ---------------------------------------------------------------- the polygon index


@dataclass(eq=False)
class PolygonIndex:
    """Flattened rings of a set of polygons and a grid over their bounding boxes.

    Built with :meth:`from_geometries`; picklable (plain numpy arrays), so it
    travels to workers once.

    Attributes
    ----------
    positions : numpy.ndarray of int64
        Position of each indexed polygon in the full polygon set.
    bounds : numpy.ndarray, shape (n, 4)
        Bounding boxes (NaN for empty geometries, which never match).
    """

    positions: np.ndarray
    bounds: np.ndarray
    poly_ring_start: np.ndarray
    ring_start: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    grid: tuple = field(default=(0.0, 0.0, 1.0, 1, 1))
    starts: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def from_geometries(cls, geoms: Any, positions: Any = None) -> PolygonIndex:
        """Index shapely polygons / multipolygons (an array or GeoSeries).

        Parameters
        ----------
        geoms : array_like of shapely geometries
            Polygons and multipolygons (holes allowed); empty or missing
            geometries are kept and never match.
        positions : array_like of int, optional
            Their positions in the full set (default ``0 .. n - 1``).

        Returns
        -------
        PolygonIndex
        """
        import shapely

        from dask_oxigdal.kernels import pip as _k

        geoms = np.asarray(getattr(geoms, "values", geoms), dtype=object)
        geoms = np.asarray(geoms, dtype=object)
        n = geoms.shape[0]
        kinds = shapely.get_type_id(geoms)
        ok = np.isin(kinds, (-1, 3, 6))  # missing, Polygon, MultiPolygon
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise ValueError(
                f"polygon {bad} is a {shapely.get_type_id(geoms[bad])!r} "
                f"({geoms[bad].geom_type}); valid choices: Polygon, MultiPolygon"
            )
        geoms = np.where(kinds == -1, shapely.Polygon(), geoms)
        parts, part_of = shapely.get_parts(geoms, return_index=True)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        ring_poly = part_of[ring_part]
        coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
        ring_start = np.zeros(rings.shape[0] + 1, np.int64)
        ring_start[1:] = np.cumsum(np.bincount(coord_ring, minlength=rings.shape[0]))
        poly_ring_start = np.zeros(n + 1, np.int64)
        poly_ring_start[1:] = np.cumsum(np.bincount(ring_poly, minlength=n))
        bounds = shapely.bounds(geoms).astype(np.float64)
        positions = np.arange(n, dtype=np.int64) if positions is None else np.asarray(positions)
        self = cls(
            positions=positions.astype(np.int64),
            bounds=np.ascontiguousarray(bounds),
            poly_ring_start=poly_ring_start,
            ring_start=ring_start,
            xs=np.ascontiguousarray(coords[:, 0]),
            ys=np.ascontiguousarray(coords[:, 1]),
        )
        valid = ~np.isnan(bounds[:, 0])
        if valid.any():
            x0, y0 = bounds[valid, 0].min(), bounds[valid, 1].min()
            x1, y1 = bounds[valid, 2].max(), bounds[valid, 3].max()
            w, h = max(x1 - x0, 1e-300), max(y1 - y0, 1e-300)
            target = min(max(4 * int(valid.sum()), 1), _MAX_CELLS)
            cell = max(np.sqrt(w * h / target), w / 4096, h / 4096)
            nx = int(w / cell) + 1
            ny = int(h / cell) + 1
            self.grid = (float(x0), float(y0), float(cell), nx, ny)
            self.starts, self.items = _k.grid_build(self.bounds, x0, y0, cell, nx, ny)
        return self

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` of the indexed polygons (NaN when none)."""
        b = self.bounds
        if b.shape[0] == 0 or np.isnan(b[:, 0]).all():
            return (np.nan,) * 4
        return (
            np.nanmin(b[:, 0]),
            np.nanmin(b[:, 1]),
            np.nanmax(b[:, 2]),
            np.nanmax(b[:, 3]),
        )

    def query(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Point rows and polygon positions of every (point, polygon) interior match.

        Parameters
        ----------
        x, y : numpy.ndarray of float64

        Returns
        -------
        rows, positions : numpy.ndarray of int64
            Sorted by row, then polygon position; NaN points never match.
        """
        from dask_oxigdal.kernels import pip as _k

        x0, y0, cell, nx, ny = self.grid
        rows, local = _k.query(
            np.ascontiguousarray(x, dtype=np.float64),
            np.ascontiguousarray(y, dtype=np.float64),
            x0,
            y0,
            cell,
            nx,
            ny,
            self.starts,
            self.items,
            self.bounds,
            self.poly_ring_start,
            self.ring_start,
            self.xs,
            self.ys,
        )
        return rows, self.positions[local]


def _query_part(index: PolygonIndex, x, y, rows):
    r, g = index.query(x, y)
    return rows[r], g


# ---------------------------------------------------------------- batches


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
    """

    seq: int
    matches: pd.DataFrame
    events: pd.DataFrame
    n_points: int
    latency: float


def _batch_columns(batch: Any, x: str, y: str, id_col: str, by: str | None):
    """(x, y, point ids or None, tracked ids or None, n) of one batch."""
    if hasattr(batch, "schema") and hasattr(batch, "column") and hasattr(batch, "num_rows"):
        names = list(batch.schema.names)

        def col(name):
            return batch.column(names.index(name)).to_numpy(zero_copy_only=False)

        if x not in names or y not in names:
            raise ValueError(f"an Arrow point batch needs columns {x!r} and {y!r}; it has {names}")
        xs, ys = col(x), col(y)
        ids = col(id_col) if id_col in names else None
        if by is not None and by not in names:
            raise ValueError(f"by={by!r} is not a column of the batch; it has {names}")
        tracked = col(by) if by is not None else None
        return xs, ys, ids, tracked, batch.num_rows
    if isinstance(batch, pd.DataFrame):
        if x in batch.columns and y in batch.columns:
            xs, ys = batch[x].to_numpy(np.float64), batch[y].to_numpy(np.float64)
        elif hasattr(batch, "geometry"):
            import shapely

            g = np.asarray(batch.geometry.values, dtype=object)
            t = shapely.get_type_id(g)
            if (t != 0).any():
                raise ValueError("a point batch's geometry column must hold only Points")
            xs, ys = shapely.get_x(g), shapely.get_y(g)
        else:
            raise ValueError(
                f"a point batch needs columns {x!r} and {y!r} or a geometry column; "
                f"it has {list(batch.columns)}"
            )
        ids = batch[id_col].to_numpy() if id_col in batch.columns else None
        if by is not None and by not in batch.columns:
            raise ValueError(
                f"by={by!r} is not a column of the batch; it has {list(batch.columns)}"
            )
        tracked = batch[by].to_numpy() if by is not None else None
        return xs, ys, ids, tracked, len(batch)
    raise TypeError(
        f"a point batch must be a pandas DataFrame or a pyarrow RecordBatch/Table, "
        f"got {type(batch).__name__}"
    )


# ---------------------------------------------------------------- sources


def _iterate(source: Any) -> Iterator[Any]:
    """A plain iterator over any supported source (pulled on demand)."""
    if _is_stream(source):
        return _from_stream(source)
    if hasattr(source, "__aiter__"):
        return _from_async(source)
    if hasattr(source, "__iter__") and not isinstance(source, pd.DataFrame):
        return iter(source)
    raise TypeError(
        f"source must be an iterable, an async iterable or a streamz.Stream of point "
        f"batches, got {type(source).__name__}"
    )


def _is_stream(obj: Any) -> bool:
    return type(obj).__module__.startswith("streamz") and hasattr(obj, "emit")


def _from_async(ait: Any) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="geofence-async-source", daemon=True)
    thread.start()
    it = ait.__aiter__()
    try:
        while True:
            try:
                yield asyncio.run_coroutine_threadsafe(it.__anext__(), loop).result()
            except StopAsyncIteration:
                return
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _from_stream(stream: Any) -> Iterator[Any]:
    """Batches emitted into a streamz Stream; an emitter waits while one batch is queued."""
    q: queue.Queue = queue.Queue(maxsize=1)

    def put(item):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            q.put(item)  # a synchronous emit blocks here: back-pressure
            return None
        return loop.run_in_executor(None, q.put, item)  # awaited by an async emit

    sink = stream.sink(put)  # attached now, not at the first next(): nothing emitted is missed

    def items():
        try:
            while True:
                item = q.get()
                if item is END_OF_STREAM:
                    return
                yield item
        finally:
            sink.destroy()

    return items()


# ---------------------------------------------------------------- events


class _Tracker:
    """Which polygons each tracked id is inside, across batches (int codes)."""

    def __init__(self, npolys: int) -> None:
        self.P = max(int(npolys), 1)
        self.known = pd.Index([])
        self.state = np.zeros(0, np.int64)  # sorted keys code * P + polygon position

    def codes(self, ids: np.ndarray) -> np.ndarray:
        idx = self.known.get_indexer(ids)
        new = idx < 0
        if new.any():
            fresh = pd.unique(ids[new])
            self.known = self.known.append(pd.Index(fresh))
            idx = self.known.get_indexer(ids)
        return idx.astype(np.int64)

    def events(self, ids: np.ndarray, rows: np.ndarray, g: np.ndarray):
        """(event rows, polygon positions, is_enter) of one batch; updates the state."""
        P = self.P
        n = ids.shape[0]
        code = self.codes(ids)
        order = np.lexsort((np.arange(n), code))
        sc = code[order]
        same = sc[1:] == sc[:-1]
        prev = np.full(n, -1, np.int64)
        nxt = np.full(n, -1, np.int64)
        prev[order[1:][same]] = order[:-1][same]
        nxt[order[:-1][same]] = order[1:][same]
        mkeys = rows * P + g
        ev_r, ev_g, ev_in = [], [], []
        # within the batch: consecutive rows of one id
        has_prev = prev[rows] >= 0
        pk = prev[rows[has_prev]] * P + g[has_prev]
        ent = ~np.isin(pk, mkeys)
        ev_r.append(rows[has_prev][ent])
        ev_g.append(g[has_prev][ent])
        ev_in.append(np.ones(int(ent.sum()), bool))
        has_next = nxt[rows] >= 0
        nk = nxt[rows[has_next]] * P + g[has_next]
        ext = ~np.isin(nk, mkeys)
        ev_r.append(nxt[rows[has_next]][ext])
        ev_g.append(g[has_next][ext])
        ev_in.append(np.zeros(int(ext.sum()), bool))
        # first row of each id against the state carried over
        first = prev < 0
        first_row_of = np.full(len(self.known), -1, np.int64)
        first_row_of[code[first]] = np.flatnonzero(first)
        fm = first[rows]
        k1 = code[rows[fm]] * P + g[fm]
        in_batch = np.isin(self.state // P, code[first])
        s_sub = self.state[in_batch]
        ent = ~np.isin(k1, s_sub)
        ev_r.append(rows[fm][ent])
        ev_g.append(g[fm][ent])
        ev_in.append(np.ones(int(ent.sum()), bool))
        ext = ~np.isin(s_sub, k1)
        ev_r.append(first_row_of[s_sub[ext] // P])
        ev_g.append(s_sub[ext] % P)
        ev_in.append(np.zeros(int(ext.sum()), bool))
        # new state: what the last row of each id is inside
        last = nxt[rows] < 0
        self.state = np.union1d(self.state[~in_batch], code[rows[last]] * P + g[last])
        r = np.concatenate(ev_r)
        gg = np.concatenate(ev_g)
        e = np.concatenate(ev_in)
        o = np.lexsort((gg, e, r))  # by row, exits first, then polygon
        return r[o], gg[o], e[o]


# ---------------------------------------------------------------- the stream


def geofence(
    source: Any,
    polygons: Any,
    *,
    by: str | None = None,
    client: Any = None,
    npartitions: int | None = None,
    max_in_flight: int = 4,
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
    max_in_flight : int, default 4
        Batches read from the source and not yet yielded, at most. The
        source is read only when there is room: a slow consumer slows the
        source down; nothing is dropped.
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
            work = self._pool.submit(self._index.query, x, y)
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
        p, xs, ys, rows = piece
        if rescatter and self._part_futures[p].status != "finished":
            # the scheduler may drop broadcast replicas (the active memory manager), so
            # the death of the last worker holding a part loses it: send it again
            self._part_futures[p] = self._client.scatter(self._parts[p], broadcast=True, hash=False)
        return self._client.submit(
            _query_part,
            self._part_futures[p],
            xs,
            ys,
            rows,
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
            rows, g = work.result()
        else:
            results = []
            for i, fut in enumerate(work):
                attempt = 0
                while True:
                    try:
                        results.append(fut.result())
                        break
                    except Exception:
                        if attempt >= self._retries:
                            raise
                        attempt += 1
                        fut = self._submit_piece(pieces[i], rescatter=True)
            if results:
                rows = np.concatenate([r for r, _ in results])
                g = np.concatenate([gg for _, gg in results])
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
        )
