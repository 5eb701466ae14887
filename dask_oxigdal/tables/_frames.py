"""The supported table types behind one interface: key column out, reordered pieces in.

Private to :mod:`dask_oxigdal.tables`. :class:`_Frame.wrap` picks
:class:`_ArrowFrame` (``pyarrow.Table`` / ``RecordBatch``) or :class:`_PandasFrame`
(pandas and geopandas); :meth:`_Frame.split` builds the counting-sort plan
(:mod:`dask_oxigdal.tables._reorder`) and slices the reordered table into pieces.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dask_oxigdal.tables._buffers import SUPPORTED_KEY_TYPES
from dask_oxigdal.tables._reorder import _Plan, _reorder_arrow, _scatter_numpy


class _Key:
    """A key column as Arrow chunks with their first global rows."""

    def __init__(self, name: Hashable, chunks: list[pa.Array], starts: list[int], typ):
        self.name = name
        self.chunks = chunks
        self.starts = starts
        self.type = typ


class _Frame:
    """Uniform access to the supported table types."""

    nrows: int

    @staticmethod
    def wrap(table: Any) -> _Frame:
        if isinstance(table, (pa.Table, pa.RecordBatch)):
            return _ArrowFrame(table)
        if isinstance(table, pd.DataFrame):
            return _PandasFrame(table)
        raise TypeError(
            "table must be a pyarrow.Table, pyarrow.RecordBatch, pandas.DataFrame or "
            f"geopandas.GeoDataFrame, got {type(table).__module__}.{type(table).__name__}"
        )

    def key(self, on: Hashable) -> _Key:  # pragma: no cover - abstract
        raise NotImplementedError

    def whole(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def split(self, pids: np.ndarray, nparts: int, threads: int) -> dict[int, Any]:
        plan = _Plan(pids, nparts, self.chunk_boundaries(), threads)
        if len(plan.nonempty) == 1:
            return {plan.label(plan.nonempty[0]): self.whole()}
        if plan.ignored_chunks:
            self.combine_chunks()
        return self.reorder(plan)

    def chunk_boundaries(self) -> list[int]:
        return []

    def combine_chunks(self) -> None:
        pass

    def reorder(self, plan: _Plan) -> dict[int, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


def _normalize_on(on: Hashable) -> Hashable:
    if isinstance(on, list):
        if len(on) != 1:
            raise ValueError(f"on must name one column, got {on!r}")
        return on[0]
    return on


class _ArrowFrame(_Frame):
    def __init__(self, table: pa.Table | pa.RecordBatch):
        self.table = table
        self.is_batch = isinstance(table, pa.RecordBatch)
        self.nrows = table.num_rows
        self.columns: list[list[pa.Array]] = []
        self.starts: list[list[int]] = []
        for col in table.columns:
            chunks = [col] if self.is_batch else [c for c in col.chunks if len(c)]
            self.columns.append(chunks)
            self.starts.append(_starts(chunks))

    def key(self, on: Hashable) -> _Key:
        on = _normalize_on(on)
        names = self.table.schema.names
        idx = self.table.schema.get_all_field_indices(on) if isinstance(on, str) else []
        if not idx:
            raise KeyError(f"column {on!r} not found; available columns: {names}")
        if len(idx) > 1:
            raise ValueError(f"column name {on!r} is ambiguous: it appears {len(idx)} times")
        i = idx[0]
        return _Key(on, self.columns[i], self.starts[i], self.table.schema.field(i).type)

    def whole(self) -> Any:
        return self.table

    def chunk_boundaries(self) -> list[int]:
        out: set[int] = set()
        for starts in self.starts:
            if len(starts) > 1:
                out.update(starts[1:])
        return sorted(out)

    def combine_chunks(self) -> None:
        for i, chunks in enumerate(self.columns):
            if len(chunks) > 1:
                self.columns[i] = [pa.concat_arrays(chunks)]
                self.starts[i] = [0]

    def reorder(self, plan: _Plan) -> dict[int, Any]:
        schema = self.table.schema
        arrays = []
        for i, chunks in enumerate(self.columns):
            col = _reorder_arrow(schema.field(i).type, chunks, self.starts[i], plan)
            if self.is_batch and isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            arrays.append(col)
        if self.is_batch:
            big = pa.RecordBatch.from_arrays(arrays, schema=schema)
        else:
            big = pa.Table.from_arrays(arrays, schema=schema)
        starts, counts = plan.part_start, plan.counts
        return {plan.label(p): big.slice(starts[p], counts[p]) for p in plan.nonempty}


def _starts(chunks: list[pa.Array]) -> list[int]:
    starts = []
    r = 0
    for c in chunks:
        starts.append(r)
        r += len(c)
    return starts


class _PandasFrame(_Frame):
    def __init__(self, df: pd.DataFrame):
        self.df = df
        self.nrows = len(df)

    def key(self, on: Hashable) -> _Key:
        on = _normalize_on(on)
        df = self.df
        try:
            present = on in df.columns
        except TypeError:  # unhashable label
            present = False
        if present:
            loc = df.columns.get_loc(on)
            if not isinstance(loc, int):
                raise ValueError(f"column name {on!r} is ambiguous: it appears more than once")
            values = df.iloc[:, loc]
        elif on is not None and on == df.index.name and not isinstance(df.index, pd.MultiIndex):
            values = df.index
        else:
            raise KeyError(
                f"column {on!r} not found; available columns: {list(df.columns)}"
                + (f" (index: {df.index.name!r})" if df.index.name is not None else "")
            )
        arr = _pandas_to_arrow(values, on)
        chunks = list(arr.chunks) if isinstance(arr, pa.ChunkedArray) else [arr]
        chunks = [c for c in chunks if len(c)]
        return _Key(on, chunks, _starts(chunks), arr.type)

    def whole(self) -> Any:
        return self.df.copy(deep=False)

    def reorder(self, plan: _Plan) -> dict[int, Any]:
        df = self.df
        perm = plan.perm()
        cols = {}
        for i, (_, ser) in enumerate(df.items()):
            dtype = ser.dtype
            if isinstance(dtype, np.dtype) and dtype.kind in "biufcmM":
                vals = np.ascontiguousarray(ser.to_numpy(copy=False))
                cols[i] = _scatter_numpy(vals, plan)
            else:
                cols[i] = ser.array.take(perm)
        index = df.index.take(perm)
        out = pd.DataFrame(cols, index=index, copy=False)
        out.columns = df.columns
        geopandas = sys.modules.get("geopandas")
        if geopandas is not None and isinstance(df, geopandas.GeoDataFrame):
            out = geopandas.GeoDataFrame(out, geometry=df.active_geometry_name)
        elif type(df) is not pd.DataFrame:
            out = df._constructor(out).__finalize__(df)
        out.attrs = df.attrs
        starts = plan.part_start
        return {plan.label(p): out.iloc[starts[p] : starts[p + 1]] for p in plan.nonempty}


def _pandas_to_arrow(values: Any, on: Hashable) -> pa.Array | pa.ChunkedArray:
    dtype = values.dtype
    try:
        if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
            arr = pa.array(np.asarray(values), from_pandas=dtype.kind == "f")
        else:
            arr = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError) as err:
        raise TypeError(
            f"key column {on!r} of dtype {dtype} is not supported ({err}); supported key "
            f"types: {SUPPORTED_KEY_TYPES}"
        ) from None
    return arr
