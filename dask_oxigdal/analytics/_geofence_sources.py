"""Point batches and their sources for :func:`dask_oxigdal.analytics.geofencing.geofence` (private).

``_batch_columns`` reads the coordinates and ids of one batch (pandas,
GeoDataFrame or Arrow); ``_iterate`` turns any supported source (an
iterable, an async iterable, a ``streamz.Stream``) into a plain iterator
that is pulled on demand, which is what gives the pipeline its
back-pressure.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

#: Emit this into a ``streamz.Stream`` source to end the iteration.
END_OF_STREAM = object()


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
    """Batches emitted into a streamz Stream; an emitter waits while one batch is queued.

    A synchronous ``emit`` blocks on the full queue. Inside an event loop the
    sink hands the item to one dedicated thread and returns its future (an
    ``emit(..., asynchronous=True)`` awaits it): one thread, so emits that
    overlap (not awaited one by one) still arrive in the order they were made.
    """
    q: queue.Queue = queue.Queue(maxsize=1)
    putter: list[ThreadPoolExecutor] = []
    lock = threading.Lock()

    def put(item):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            q.put(item)  # a synchronous emit blocks here: back-pressure
            return None
        with lock:
            if not putter:
                putter.append(ThreadPoolExecutor(1, thread_name_prefix="geofence-emit"))
        return loop.run_in_executor(putter[0], q.put, item)  # FIFO: one thread

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
            for ex in putter:
                ex.shutdown(wait=False)

    return items()
