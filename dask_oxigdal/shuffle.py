"""Hash, range and broadcast partitioning of Arrow and pandas tables.

>>> from dask_oxigdal.shuffle import hash_partition, range_partition, broadcast
>>> parts = hash_partition(table, "key", 16)        # {part: table}, empty parts omitted

Every function takes a :class:`pyarrow.Table`, :class:`pyarrow.RecordBatch`,
:class:`pandas.DataFrame` or :class:`geopandas.GeoDataFrame` and returns
``{part number: piece}``, where each piece has the input's type and schema
(pandas: the same columns, dtypes and index labels; a GeoDataFrame keeps its
geometry column and CRS). Inside a piece, rows keep their input order; every
input row lands in exactly one piece; empty pieces are left out (so an empty
table gives ``{}``).

How it works
------------
Partition ids are computed by numba kernels (:mod:`dask_oxigdal.kernels`), then
a stable counting sort writes every column straight into partition order:
Arrow fixed-width values, string/binary offsets and data, validity and boolean
bitmaps, dictionary indices (the dictionary is kept), and numpy-backed pandas
columns. The pieces are zero-copy slices of those reordered columns, so the
pieces of one call share one buffer per column (allocated from Arrow's memory
pool, which recycles the pages of earlier calls). Arrow IPC, which Dask uses to
send Arrow tables, writes only a piece's own rows, but ``pickle`` writes a sliced
table's whole buffers (apache/arrow GH-26685): send pieces through IPC, or copy
them (``pa.concat_tables([piece]).combine_chunks()`` is not enough, ``take`` is)
before pickling them one by one. Arrow string/binary views are
reordered as their large counterparts and cast back; nested Arrow types (list,
struct, map, union, ...) and pandas extension or object columns (geometry, ``str``,
nullable integers, categoricals, ...) are reordered with ``take`` on the
permutation. Kernels run in parallel only where
:func:`dask_oxigdal.kernels._parallel.parallel_launch` allows (never inside a
multi-threaded Dask worker), counting one unit of work per row: by default a
shuffle goes parallel from 65536 rows.

Keys
----
Signed and unsigned integers, floats, booleans, strings and binary (Arrow
``string``/``large_string``/``binary``/``large_binary``/views, pandas ``str``,
``string`` and object columns of ``str``), dictionary / categorical columns of
those, timestamps (with or without a time zone) and durations. For pandas
frames ``on`` may also name the index.

Missing keys
------------
:func:`hash_partition` puts them where Dask's shuffle does: null or NaN numbers
where NaN hashes, null timestamps/durations where NaT hashes, null strings and
null categories of non-numeric values (and keys of Arrow type ``null``) where
pandas' missing-string hash ``2**64 - 1`` goes. :func:`range_partition` puts
null, NaN and NaT keys in the last part, ``len(boundaries)``.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dask_oxigdal._memory import pool_empty as _empty
from dask_oxigdal.kernels import hashing as _hk
from dask_oxigdal.kernels import shuffle as _sk
from dask_oxigdal.kernels._parallel import parallel_launch

__all__ = ["broadcast", "hash_partition", "range_partition"]

SUPPORTED_KEY_TYPES = (
    "signed/unsigned integers, floats, booleans, strings and binary (string, large_string, "
    "binary, large_binary, string_view, pandas str/string/object of str), dictionary or "
    "categorical of those, timestamps (tz-aware too) and durations"
)

_MASK64 = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1
_MAX_PARTITIONS = 2**31 - 1
# Most bytes a string/binary array with 32-bit offsets can hold; beyond it (chunked
# input columns can be larger in total) the output column gets one chunk per part.
_INT32_OFFSETS_MAX = 2**31 - 1
# Histogram cells (blocks x parts) beyond which multi-chunk columns are concatenated.
_MAX_CELLS = 1 << 24
# Uniform block size bounds (rows) and the target number of uniform blocks.
_MIN_BLOCK = 4096
_TARGET_BLOCKS = 64
_UNITS = ("s", "ms", "us", "ns")
# A shuffle makes about ten passes over its rows, each a parallel region of its own
# (one per kernel launch). A region only pays when it holds enough work. Measured on
# the 2-core development machine (int64 key, 3 float64, 1 string column; best of 200)
# with the other core free: 100K rows -> 16 parts, hash 1.17 ms parallel vs 1.71 ms
# serial, range 1.42 vs 1.91 ms; 1M rows 20 vs 53 ms. With the other core busy the
# parallel run is ~15% slower than the serial one (OpenMP waits passively, see
# kernels/_parallel.py; with GNU OpenMP's default spin-wait it was 15x slower). So
# every row counts as one unit of work: with the default
# ``oxigdal.kernels.parallel-min-elements`` (65536), shuffles of 65536 rows and more
# run in parallel.
_ROWS_PER_WORK_UNIT = 1


def _parallel_work(nrows: int) -> int:
    return nrows // _ROWS_PER_WORK_UNIT


# ======================================================================================
# Public API
# ======================================================================================
def hash_partition(table: Any, on: Hashable, npartitions: int) -> dict[int, Any]:
    """Split a table by the hash of a key column, the way Dask's shuffle does.

    Row ``r`` goes to part ``hash(r[on]) % npartitions``. For numeric keys
    (integers, floats, booleans, and dictionaries/categoricals of numbers) and
    timestamp/duration keys this is exactly the partition that
    ``dask.dataframe.DataFrame.shuffle(on=on, npartitions=npartitions)`` gives
    the row: numbers are cast to float64 first (so large int64 values that share
    a float64 collapse together, as in Dask), then hashed like
    ``pandas.util.hash_pandas_object(frame[[on]], index=False)``. String and
    binary keys use pandas' SipHash-2-4 of the UTF-8 bytes, so they match Dask
    too.

    Parameters
    ----------
    table : pyarrow.Table, pyarrow.RecordBatch, pandas.DataFrame or geopandas.GeoDataFrame
        The rows to split. Arrow tables may have several chunks and sliced
        arrays. For pandas input, ``on`` may name a column or the index.
    on : hashable
        Name of the key column (a one-element list is accepted too).
    npartitions : int
        Number of parts, at least 1.

    Returns
    -------
    dict of int to table
        Part number to the rows of that part, in input order, with the input's
        type and schema. Empty parts are omitted.

    Raises
    ------
    KeyError
        If ``on`` is not a column; the message lists the available columns.
    ValueError
        If ``npartitions`` is not an integer of at least 1, or ``on`` names
        more than one column.
    TypeError
        If the table or the key column has an unsupported type.

    Notes
    -----
    Missing keys go where Dask puts them: a null or NaN number goes where NaN
    does (every NaN hashes alike and -0.0 like 0.0), a null timestamp or
    duration where NaT does, and a null string, a null category of
    non-numeric values, or a key of Arrow type ``null`` where pandas' missing
    string hash (``2**64 - 1``) does. Booleans hash as 0.0 and 1.0; an Arrow
    boolean key with nulls becomes an object column in pandas, which Dask
    hashes differently, so only null-free boolean keys are guaranteed to match.
    """
    nparts = _check_npartitions(npartitions)
    frame = _Frame.wrap(table)
    key = frame.key(on)
    _key_kind(key.type, key.name)
    if frame.nrows == 0:
        return {}
    with parallel_launch(_parallel_work(frame.nrows)) as threads:
        pids = _KeyPids(key, frame.nrows, threads).hash(nparts)
        return frame.split(pids, nparts, threads)


def range_partition(table: Any, on: Hashable, boundaries: Sequence[Any]) -> dict[int, Any]:
    """Split a table by ranges of a key column.

    Part ``i`` holds the rows with ``boundaries[i - 1] <= key < boundaries[i]``;
    part 0 holds ``key < boundaries[0]`` and part ``len(boundaries)`` holds
    ``key >= boundaries[-1]``.

    Parameters
    ----------
    table : pyarrow.Table, pyarrow.RecordBatch, pandas.DataFrame or geopandas.GeoDataFrame
        The rows to split. For pandas input, ``on`` may name a column or the index.
    on : hashable
        Name of the key column (a one-element list is accepted too).
    boundaries : sequence
        Sorted (non-decreasing), finite boundaries comparable with the key:
        real numbers for numeric keys, :class:`str` for string keys (compared
        by UTF-8 bytes, i.e. by code point), :class:`bytes` or :class:`str`
        for binary keys, anything :class:`pandas.Timestamp` accepts for
        timestamp keys (tz-aware exactly when the key is) and anything
        :class:`pandas.Timedelta` accepts for duration keys. An empty sequence
        puts every row in part 0.

    Returns
    -------
    dict of int to table
        Part number to the rows of that part, in input order, with the input's
        type and schema. Empty parts are omitted.

    Raises
    ------
    KeyError
        If ``on`` is not a column; the message lists the available columns.
    ValueError
        If a boundary is missing or not finite (NaN, infinity, NaT, None), the
        boundaries are not sorted, or ``on`` names more than one column.
    TypeError
        If the table or the key has an unsupported type, or a boundary cannot
        be compared with the key.

    Notes
    -----
    Rows whose key is null, NaN or NaT go to the last part,
    ``len(boundaries)``. Comparisons are exact: integer keys are compared
    with fractional boundaries as numbers (``3 < 3.5``), and timestamps in the
    key's own unit.
    """
    bounds = _check_boundaries(boundaries)
    frame = _Frame.wrap(table)
    key = frame.key(on)
    plan = _RangeBounds(bounds, key.type, key.name)
    if frame.nrows == 0:
        return {}
    with parallel_launch(_parallel_work(frame.nrows)) as threads:
        pids = _KeyPids(key, frame.nrows, threads).range(plan)
        return frame.split(pids, len(bounds) + 1, threads)


def broadcast(table: Any, npartitions: int) -> dict[int, Any]:
    """Give every part every row.

    Parameters
    ----------
    table : pyarrow.Table, pyarrow.RecordBatch, pandas.DataFrame or geopandas.GeoDataFrame
        The rows to copy to every part.
    npartitions : int
        Number of parts, at least 1.

    Returns
    -------
    dict of int to table
        ``{0: table, 1: table, ..., npartitions - 1: table}``. Arrow inputs are
        returned as they are (they are immutable); pandas inputs as shallow
        copies, which share data under copy-on-write. An empty table gives
        ``{}``, like the other functions, since empty parts are omitted.

    Raises
    ------
    ValueError
        If ``npartitions`` is not an integer of at least 1.
    TypeError
        If the table has an unsupported type.
    """
    nparts = _check_npartitions(npartitions)
    frame = _Frame.wrap(table)
    if frame.nrows == 0:
        return {}
    return {p: frame.whole() for p in range(nparts)}


# ======================================================================================
# Validation
# ======================================================================================
def _check_npartitions(npartitions: Any) -> int:
    if isinstance(npartitions, bool) or not isinstance(npartitions, numbers.Integral):
        raise ValueError(f"npartitions must be an integer >= 1, got {npartitions!r}")
    n = int(npartitions)
    if n < 1 or n > _MAX_PARTITIONS:
        raise ValueError(f"npartitions must be an integer in [1, {_MAX_PARTITIONS}], got {n}")
    return n


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        missing = pd.isna(value)
    except (TypeError, ValueError):
        return False
    return bool(missing) if isinstance(missing, (bool, np.bool_)) else False


def _check_boundaries(boundaries: Any) -> list[Any]:
    if isinstance(boundaries, (str, bytes)) or not hasattr(boundaries, "__iter__"):
        raise TypeError(
            f"boundaries must be a sequence of values, got {type(boundaries).__name__}: "
            f"{boundaries!r}"
        )
    if isinstance(boundaries, (pa.Array, pa.ChunkedArray)):
        bounds = boundaries.to_pylist()
    elif isinstance(boundaries, np.ndarray) and boundaries.dtype.kind in "mM":
        bounds = list(boundaries)  # keep numpy datetime scalars (tolist() gives ints)
    elif isinstance(boundaries, np.ndarray):
        if boundaries.ndim != 1:
            raise ValueError(f"boundaries must be one-dimensional, got shape {boundaries.shape}")
        bounds = boundaries.tolist()
    else:
        bounds = list(boundaries)
    for i, b in enumerate(bounds):
        if _is_missing(b):
            raise ValueError(f"boundaries must be finite, got {b!r} at position {i}")
        if isinstance(b, numbers.Real) and not math.isfinite(b):
            raise ValueError(f"boundaries must be finite, got {b!r} at position {i}")
    for i in range(len(bounds) - 1):
        a, b = bounds[i], bounds[i + 1]
        try:
            ordered = bool(a <= b)
        except TypeError as err:
            raise TypeError(
                f"boundaries must be mutually comparable; {a!r} and {b!r} (positions "
                f"{i}, {i + 1}) are not: {err}"
            ) from None
        if not ordered:
            raise ValueError(
                f"boundaries must be sorted (non-decreasing); {a!r} at position {i} > "
                f"{b!r} at position {i + 1}"
            )
    return bounds


# ======================================================================================
# Input tables
# ======================================================================================
def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view, so kernels see one array type whatever the source."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _owned_readonly(a: np.ndarray) -> np.ndarray:
    """Mark an array this module created (and no longer writes) read-only, in place."""
    a.flags.writeable = False
    return a


_EMPTY_U8 = _readonly(np.zeros(1, np.uint8))


def _values(arr: pa.Array, dtype: Any) -> np.ndarray:
    """Numpy view of the values of a fixed-width Arrow array (offset applied)."""
    buf = arr.buffers()[1]
    n = arr.offset + len(arr)
    if buf is None or n == 0:
        return _readonly(np.zeros(len(arr), dtype))
    return _readonly(np.frombuffer(buf, dtype=dtype, count=n)[arr.offset :])


def _bitmap(buf: pa.Buffer | None) -> np.ndarray:
    return _EMPTY_U8 if buf is None or buf.size == 0 else _readonly(np.frombuffer(buf, np.uint8))


def _string_views(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data) of a string/binary array; offsets are absolute into data."""
    bufs = arr.buffers()
    odt = (
        np.int64
        if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
        else np.int32
    )
    n = len(arr)
    if bufs[1] is None:
        offsets = _readonly(np.zeros(n + 1, odt))
    else:
        offsets = np.frombuffer(bufs[1], dtype=odt, count=arr.offset + n + 1)[arr.offset :]
    return _readonly(offsets), _bitmap(bufs[2])


def _unwrap_extension(typ: pa.DataType) -> pa.DataType:
    while isinstance(typ, pa.BaseExtensionType):
        typ = typ.storage_type
    return typ


def _storage(arr: pa.Array) -> pa.Array:
    while isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    return arr


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


# ======================================================================================
# Partition ids
# ======================================================================================
_KERNELS: dict[tuple[str, bool], Any] = {}


def _k(name: str, threads: int):
    """The serial kernel ``name`` or its ``prange`` variant."""
    key = (name, threads > 1)
    kernel = _KERNELS.get(key)
    if kernel is None:
        mod = _sk if hasattr(_sk, name) else _hk
        kernel = _KERNELS[key] = getattr(mod, f"{name}_parallel" if key[1] else name)
    return kernel


def _key_kind(typ: pa.DataType, on: Hashable) -> str:
    typ = _unwrap_extension(typ)
    if pa.types.is_dictionary(typ):
        return "dict"
    if pa.types.is_null(typ):
        return "null"
    if pa.types.is_boolean(typ):
        return "bool"
    if pa.types.is_signed_integer(typ):
        return "int"
    if pa.types.is_unsigned_integer(typ):
        return "uint"
    if pa.types.is_floating(typ):
        return "float"
    if pa.types.is_timestamp(typ) or pa.types.is_duration(typ):
        return "time"
    if (
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_string_view(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
        or pa.types.is_binary_view(typ)
    ):
        return "string"
    raise TypeError(
        f"key column {on!r} has unsupported type {typ}; supported key types: {SUPPORTED_KEY_TYPES}"
    )


def _py_pid(u: int, nparts: int, mix: bool) -> int:
    """Python version of the kernels' hash for one pre-mix value ``u``."""
    if mix:
        u ^= u >> 30
        u = (u * 0xBF58476D1CE4E5B9) & _MASK64
        u ^= u >> 27
        u = (u * 0x94D049BB133111EB) & _MASK64
        u ^= u >> 31
    h = (((0x345678 ^ u) * 1000003) + 97531) & _MASK64
    return h % nparts


_NAN_BITS = 0x7FF8000000000000
_NAT_BITS = 0x8000000000000000


def _hash_null_pid(kind: str, value_kind: str | None, nparts: int) -> int:
    if kind in ("int", "uint", "float", "bool"):
        return _py_pid(_NAN_BITS, nparts, True)
    if kind == "time":
        return _py_pid(_NAT_BITS, nparts, True)
    if kind == "dict" and value_kind in ("int", "uint", "float", "bool"):
        return _py_pid(_NAN_BITS, nparts, True)
    return _py_pid(_hk.NULL_STRING_HASH, nparts, False)


class _RangeBounds:
    """Boundaries converted to the key's comparison domain."""

    def __init__(self, bounds: list[Any], typ: pa.DataType, on: Hashable):
        self.n = len(bounds)
        self.null_pid = len(bounds)
        typ = _unwrap_extension(typ)
        kind = _key_kind(typ, on)
        if kind == "dict":
            typ = _unwrap_extension(typ.value_type)
            kind = _key_kind(typ, on)
        self.kind = kind
        self.type = typ
        if kind == "null":
            return
        if kind == "float":
            self.values = _readonly(np.array([_as_real(b, typ) for b in bounds], np.float64))
        elif kind in ("int", "uint", "bool"):
            lo, hi = (_INT64_MIN, _INT64_MAX) if kind == "int" else (0, _UINT64_MAX)
            ints = [_int_ceil(b, typ) for b in bounds]
            ints = [max(lo, v) for v in ints if v <= hi]
            self.values = _readonly(np.array(ints, np.int64 if kind == "int" else np.uint64))
        elif kind == "time":
            ints = [_time_ceil(b, typ) for b in bounds]
            ints = [max(_INT64_MIN, v) for v in ints if v <= _INT64_MAX]
            self.values = _readonly(np.array(ints, np.int64))
        else:
            binary = "binary" in str(typ)
            encoded = [_as_bytes(b, typ, binary) for b in bounds]
            offs = np.zeros(len(encoded) + 1, np.int64)
            offs[1:] = np.cumsum([len(e) for e in encoded])
            self.offsets = _readonly(offs)
            data = np.frombuffer(b"".join(encoded) or b"\0", np.uint8)
            self.data = _readonly(data)


def _bad_boundary(b: Any, typ: pa.DataType, what: str) -> TypeError:
    return TypeError(
        f"boundary {b!r} ({type(b).__name__}) cannot be compared with {typ} keys; expected {what}"
    )


def _as_real(b: Any, typ: pa.DataType) -> float:
    if not isinstance(b, numbers.Real):
        raise _bad_boundary(b, typ, "a real number")
    return float(b)


def _int_ceil(b: Any, typ: pa.DataType) -> int:
    if isinstance(b, numbers.Integral):
        return int(b)
    if not isinstance(b, numbers.Real):
        raise _bad_boundary(b, typ, "a real number")
    return math.ceil(b)


def _time_ceil(b: Any, typ: pa.DataType) -> int:
    if pa.types.is_timestamp(typ):
        if isinstance(b, numbers.Real):
            raise _bad_boundary(b, typ, "a timestamp (pandas.Timestamp, datetime, str, ...)")
        try:
            ts = pd.Timestamp(b)
        except (TypeError, ValueError) as err:
            raise _bad_boundary(b, typ, f"a timestamp ({err})") from None
        if (ts.tz is None) != (typ.tz is None):
            raise TypeError(
                f"boundary {b!r} is tz-{'naive' if ts.tz is None else 'aware'} but the key "
                f"type {typ} is tz-{'aware' if typ.tz is not None else 'naive'}"
            )
    else:
        if isinstance(b, numbers.Real):
            raise _bad_boundary(b, typ, "a duration (pandas.Timedelta, timedelta, str, ...)")
        try:
            ts = pd.Timedelta(b)
        except (TypeError, ValueError) as err:
            raise _bad_boundary(b, typ, f"a duration ({err})") from None
    value = int(ts.asm8.view(np.int64))
    shift = _UNITS.index(typ.unit) - _UNITS.index(ts.unit)
    if shift >= 0:
        return value * 10 ** (3 * shift)
    return -((-value) // 10 ** (-3 * shift))


def _as_bytes(b: Any, typ: pa.DataType, binary: bool) -> bytes:
    if isinstance(b, str):
        return b.encode("utf-8")
    if binary and isinstance(b, (bytes, bytearray, memoryview)):
        return bytes(b)
    raise _bad_boundary(b, typ, "bytes or str" if binary else "a str")


class _KeyPids:
    """Partition ids (int32, one per row) of a key column."""

    def __init__(self, key: _Key, nrows: int, threads: int):
        self.key = key
        self.nrows = nrows
        self.threads = threads

    def hash(self, nparts: int) -> np.ndarray:
        params = _hk.divisor_params(nparts)
        out = _empty(self.nrows, np.int32)
        for chunk, r0 in zip(self.key.chunks, self.key.starts, strict=True):
            self._hash_chunk(chunk, out[r0 : r0 + len(chunk)], nparts, params)
        return out

    def range(self, bounds: _RangeBounds) -> np.ndarray:
        out = _empty(self.nrows, np.int32)
        for chunk, r0 in zip(self.key.chunks, self.key.starts, strict=True):
            self._range_chunk(chunk, out[r0 : r0 + len(chunk)], bounds)
        return out

    # -- hash ------------------------------------------------------------------------
    def _hash_chunk(self, arr: pa.Array, out: np.ndarray, nparts: int, params) -> None:
        arr = _storage(arr)
        typ = arr.type
        kind = _key_kind(typ, self.key.name)
        th = self.threads if len(arr) >= _hk.SEGMENT else 1
        if kind == "null":
            out[:] = _hash_null_pid("null", None, nparts)
            return
        if kind == "dict":
            values = _storage(arr.dictionary)
            table = np.empty(len(values), np.int32)
            if len(values):
                self._hash_chunk(values, table, nparts, params)
            value_kind = _key_kind(values.type, self.key.name)
            indices = _values(arr, arr.type.index_type.to_pandas_dtype())
            _k("gather_pids", th)(indices, _readonly(table), out)
            null_pid = _hash_null_pid("dict", value_kind, nparts)
        elif kind == "string":
            arr = _plain_strings(arr)
            offsets, data = _string_views(arr)
            _k("hash_string_pids", th)(offsets, data, *params, out)
            null_pid = _hash_null_pid(kind, None, nparts)
        elif kind == "time":
            _k("hash_bits_pids", th)(_values(arr, np.int64), *params, out)
            null_pid = _hash_null_pid(kind, None, nparts)
        else:
            _k("hash_float_pids", th)(_numeric_values(arr, th), *params, out)
            null_pid = _hash_null_pid(kind, None, nparts)
        _fill_nulls(arr, null_pid, out)

    # -- range -----------------------------------------------------------------------
    def _range_chunk(self, arr: pa.Array, out: np.ndarray, bounds: _RangeBounds) -> None:
        arr = _storage(arr)
        kind = _key_kind(arr.type, self.key.name)
        th = self.threads if len(arr) >= _hk.SEGMENT else 1
        if kind == "null" or bounds.kind == "null":
            out[:] = bounds.null_pid
            return
        if kind == "dict":
            values = _storage(arr.dictionary)
            table = np.empty(len(values), np.int32)
            if len(values):
                self._range_chunk(values, table, bounds)
            indices = _values(arr, arr.type.index_type.to_pandas_dtype())
            _k("gather_pids", th)(indices, _readonly(table), out)
        elif kind == "string":
            offsets, data = _string_views(_plain_strings(arr))
            _k("range_string_pids", th)(offsets, data, bounds.offsets, bounds.data, out)
        elif kind == "time":
            _k("range_pids", th)(_values(arr, np.int64), bounds.values, bounds.null_pid, out)
        else:
            vals = _numeric_values(arr, th)
            if kind == "float" and vals.dtype != np.float64:
                vals = _readonly(vals.astype(np.float64))
            elif kind == "int" and vals.dtype != np.int64:
                vals = _readonly(vals.astype(np.int64))
            elif kind in ("uint", "bool") and vals.dtype != np.uint64:
                vals = _readonly(vals.astype(np.uint64))
            _k("range_pids", th)(vals, bounds.values, bounds.null_pid, out)
        _fill_nulls(arr, bounds.null_pid, out)


def _fill_nulls(arr: pa.Array, null_pid: int, out: np.ndarray) -> None:
    """Send the null rows of a key chunk to ``null_pid``."""
    if not arr.null_count:
        return
    validity = arr.buffers()[0]
    if validity is None:  # only a null count: every row is null
        out[:] = null_pid
    else:
        _hk.fill_null_pids(_bitmap(validity), arr.offset, len(arr), null_pid, out)


def _plain_strings(arr: pa.Array) -> pa.Array:
    if pa.types.is_string_view(arr.type):
        return pc.cast(arr, pa.large_string())
    if pa.types.is_binary_view(arr.type):
        return pc.cast(arr, pa.large_binary())
    return arr


def _numeric_values(arr: pa.Array, threads: int) -> np.ndarray:
    typ = arr.type
    if pa.types.is_boolean(typ):
        out = _empty(len(arr), np.uint8)
        if len(arr):
            _k("unpack_bits", threads)(_bitmap(arr.buffers()[1]), arr.offset, out)
        return _readonly(out)
    if pa.types.is_float16(typ):
        return _values(pc.cast(arr, pa.float32()), np.float32)
    return _values(arr, typ.to_pandas_dtype())


# ======================================================================================
# Counting sort plan and column reordering
# ======================================================================================
class _Plan:
    """Where every row goes: blocks, histogram and write offsets."""

    def __init__(self, pids: np.ndarray, nparts: int, boundaries: list[int], threads: int):
        n = pids.shape[0]
        self.n = n
        self.threads = threads
        self.labels: list[int] | None = None
        if nparts > max(65536, 4 * n):
            # Sparse: renumber the parts that occur (ascending) to 0..k-1.
            labels, inverse = np.unique(pids, return_inverse=True)
            pids = _owned_readonly(inverse.astype(np.int32).reshape(-1))
            self.labels = labels.tolist()
            nparts = len(labels)
        self.pids = _readonly(pids)
        self.nparts = nparts
        max_uniform = max(1, min(_TARGET_BLOCKS, _MAX_CELLS // nparts))
        block = max(_MIN_BLOCK, -(-n // max_uniform))
        nuniform = -(-n // block)
        # Too many chunk boundaries for the histogram: the caller concatenates chunks.
        self.ignored_chunks = (nuniform + len(boundaries)) * nparts > 4 * _MAX_CELLS
        if boundaries and not self.ignored_chunks:
            starts = set(range(0, n, block))
            starts.update(boundaries)
            bstart = np.array([*sorted(starts), n], np.int64)
        else:
            bstart = np.minimum(np.arange(nuniform + 1, dtype=np.int64) * block, n)
        self.bstart = _owned_readonly(bstart)
        self.nblocks = len(bstart) - 1
        hist = _k("histogram", threads)(self.pids, self.bstart, nparts)
        counts, part_start, block_off, _ = _sk.offsets_from_counts(hist)
        self.block_off = _owned_readonly(block_off)
        self.counts = counts.tolist()
        self.part_start = part_start.tolist()
        self.nonempty = np.flatnonzero(counts).tolist()
        self._perm = None
        self._dest = None

    def label(self, p: int) -> int:
        return p if self.labels is None else self.labels[p]

    def blocks_of(self, r0: int, length: int) -> tuple[int, int]:
        if r0 == 0 and length == self.n:
            return 0, self.nblocks
        b0 = int(np.searchsorted(self.bstart, r0))
        b1 = int(np.searchsorted(self.bstart, r0 + length))
        return b0, b1

    def kernel(self, name: str):
        return _k(name, self.threads)

    def dest(self) -> np.ndarray:
        """Output row of every input row (int32, or int64 beyond 2**31 rows)."""
        if self._dest is None:
            out = _empty(self.n, np.int32 if self.n < 2**31 else np.int64)
            self.kernel("dest_rows")(self.pids, self.bstart, self.block_off, out)
            self._dest = _owned_readonly(out)
        return self._dest

    def perm(self) -> np.ndarray:
        """Input row of every output row (int64)."""
        if self._perm is None:
            out = _empty(self.n, np.int64)
            self.kernel("invert")(self.dest(), out)
            self._perm = out
        return self._perm

    def scatter_chunks(self, views: list[np.ndarray], starts: list[int], out: np.ndarray):
        """Scatter 1-D (or 2-D row) chunk views, chunk ``k`` starting at row ``starts[k]``."""
        kernel = self.kernel("scatter_rows2d" if out.ndim == 2 else "scatter")
        dest = self.dest()
        for vals, r0 in zip(views, starts, strict=True):
            kernel(vals, dest[r0 : r0 + vals.shape[0]], out)


_UINT_BY_WIDTH = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _scatter_numpy(vals: np.ndarray, plan: _Plan) -> np.ndarray:
    """Reorder a contiguous 1-D numpy array (any fixed-width dtype)."""
    out = _empty(vals.shape, vals.dtype)
    width = vals.dtype.itemsize
    if width in _UINT_BY_WIDTH:
        u = _UINT_BY_WIDTH[width]
        plan.scatter_chunks([_readonly(vals.view(u))], [0], out.view(u))
    else:
        src = _readonly(vals.view(np.uint8).reshape(-1, width))
        plan.scatter_chunks([src], [0], out.view(np.uint8).reshape(-1, width))
    return out


def _validity(chunks: list[pa.Array], starts: list[int], plan: _Plan):
    """Reordered validity bitmap (or None) and the null count."""
    nulls = sum(c.null_count for c in chunks)
    if nulls == 0:
        return None, 0
    valid = _empty(plan.n, np.uint8)
    unpack = plan.kernel("unpack_bits")
    for c, r0 in zip(chunks, starts, strict=True):
        seg = valid[r0 : r0 + len(c)]
        validity = c.buffers()[0]
        if c.null_count == 0:
            seg[:] = 1
        elif validity is None:
            seg[:] = 0
        else:
            unpack(_bitmap(validity), c.offset, seg)
    out = _empty(plan.n, np.uint8)
    plan.scatter_chunks([_owned_readonly(valid)], [0], out)
    return pa.py_buffer(np.packbits(out, bitorder="little")), nulls


_LAYOUTS: dict[pa.DataType, tuple[str, int]] = {}


def _layout(typ: pa.DataType) -> tuple[str, int]:
    """How a column type is reordered: (kind, byte width), cached per type."""
    layout = _LAYOUTS.get(typ)
    if layout is None:
        layout = _LAYOUTS[typ] = _classify(typ)
    return layout


def _classify(typ: pa.DataType) -> tuple[str, int]:
    if isinstance(typ, pa.BaseExtensionType):
        return "extension", 0
    if pa.types.is_null(typ):
        return "null", 0
    if pa.types.is_dictionary(typ):
        return "dictionary", 0
    if pa.types.is_boolean(typ):
        return "boolean", 0
    if (
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
    ):
        return "strings", 0
    if pa.types.is_string_view(typ) or pa.types.is_binary_view(typ):
        return "view", 0
    if not (pa.types.is_nested(typ) or pa.types.is_union(typ)):
        try:
            bits = typ.bit_width
        except ValueError:
            bits = 0
        if bits > 0 and bits % 8 == 0:
            return "fixed", bits // 8
    return "take", 0


def _reorder_arrow(typ: pa.DataType, chunks: list[pa.Array], starts: list[int], plan: _Plan):
    """One column in partition order: a pa.Array, or a ChunkedArray of one chunk per part."""
    kind, width = _layout(typ)
    n = plan.n
    if kind == "fixed":
        validity, nulls = _validity(chunks, starts, plan)
        u = _UINT_BY_WIDTH.get(width)
        if u is not None:
            out = _empty(n, u)
            plan.scatter_chunks([_values(c, u) for c in chunks], starts, out)
        else:
            out = _empty((n, width), np.uint8)
            plan.scatter_chunks([_fixed_rows(c, width) for c in chunks], starts, out)
        return pa.Array.from_buffers(typ, n, [validity, pa.py_buffer(out)], null_count=nulls)
    if kind == "strings":
        return _reorder_strings(typ, chunks, starts, plan)
    if kind == "dictionary":
        return _reorder_dictionary(typ, chunks, starts, plan)
    if kind == "boolean":
        validity, nulls = _validity(chunks, starts, plan)
        bits = _empty(n, np.uint8)
        unpack = plan.kernel("unpack_bits")
        for c, r0 in zip(chunks, starts, strict=True):
            data = c.buffers()[1]
            if data is None:
                bits[r0 : r0 + len(c)] = 0
            else:
                unpack(_bitmap(data), c.offset, bits[r0 : r0 + len(c)])
        out = _empty(n, np.uint8)
        plan.scatter_chunks([_owned_readonly(bits)], [0], out)
        data = pa.py_buffer(np.packbits(out, bitorder="little"))
        return pa.Array.from_buffers(typ, n, [validity, data], null_count=nulls)
    if kind == "extension":
        storage = _reorder_arrow(typ.storage_type, [c.storage for c in chunks], starts, plan)
        if isinstance(storage, pa.ChunkedArray):
            return pa.chunked_array(
                [pa.ExtensionArray.from_storage(typ, c) for c in storage.chunks], type=typ
            )
        return pa.ExtensionArray.from_storage(typ, storage)
    if kind == "null":
        return pa.nulls(n, typ)
    if kind == "view":
        plain = pa.large_string() if pa.types.is_string_view(typ) else pa.large_binary()
        out = _reorder_strings(plain, [pc.cast(c, plain) for c in chunks], starts, plan)
        return pc.cast(out, typ)
    # Nested and other layouts: Arrow's take on the permutation.
    perm = pa.array(plan.perm())
    try:
        return pa.chunked_array(chunks, type=typ).take(perm)
    except pa.ArrowNotImplementedError as err:
        raise TypeError(f"cannot reorder a column of type {typ}: {err}") from None


def _fixed_rows(arr: pa.Array, width: int) -> np.ndarray:
    buf = arr.buffers()[1]
    n = len(arr)
    if buf is None or n == 0:
        return _readonly(np.zeros((n, width), np.uint8))
    raw = np.frombuffer(buf, np.uint8, count=(arr.offset + n) * width)
    return _readonly(raw[arr.offset * width :].reshape(n, width))


def _reorder_dictionary(typ, chunks, starts, plan):
    dictionary = chunks[0].dictionary
    if any(not c.dictionary.equals(dictionary) for c in chunks[1:]):
        chunks = pa.chunked_array(chunks, type=typ).unify_dictionaries().chunks
        dictionary = chunks[0].dictionary
    validity, nulls = _validity(chunks, starts, plan)
    u = _UINT_BY_WIDTH[typ.index_type.bit_width // 8]
    out = _empty(plan.n, u)
    plan.scatter_chunks([_values(c, u) for c in chunks], starts, out)
    return pa.DictionaryArray.from_buffers(
        typ, plan.n, [validity, pa.py_buffer(out)], dictionary, null_count=nulls
    )


def _reorder_strings(typ, chunks, starts, plan):
    n = plan.n
    large = pa.types.is_large_string(typ) or pa.types.is_large_binary(typ)
    views = [_string_views(c) for c in chunks]
    bsum = np.zeros((plan.nblocks, plan.nparts), np.int64)
    count = plan.kernel("string_block_bytes")
    for (offsets, _), c, r0 in zip(views, chunks, starts, strict=True):
        b0, b1 = plan.blocks_of(r0, len(c))
        count(offsets, r0, plan.pids, plan.bstart, b0, b1, bsum)
    _, byte_start, byte_off, byte_end = _sk.offsets_from_counts(bsum)
    total = int(byte_start[-1])
    byte_off = _owned_readonly(byte_off)
    byte_end = _owned_readonly(byte_end)
    fits = large or total <= _INT32_OFFSETS_MAX
    out_offsets = _empty(n + 1, np.int64 if not fits or large else np.int32)
    out_data = _empty(max(total, 1), np.uint8)
    scatter = plan.kernel("scatter_strings")
    for (offsets, data), c, r0 in zip(views, chunks, starts, strict=True):
        b0, b1 = plan.blocks_of(r0, len(c))
        scatter(
            offsets,
            data,
            r0,
            plan.pids,
            plan.dest(),
            plan.bstart,
            byte_off,
            byte_end,
            b0,
            b1,
            out_offsets,
            out_data,
        )
    out_offsets[n] = total
    validity, nulls = _validity(chunks, starts, plan)
    if fits:
        return pa.Array.from_buffers(
            typ,
            n,
            [validity, pa.py_buffer(out_offsets), pa.py_buffer(out_data)],
            null_count=nulls,
        )
    # More than 2 GiB of 32-bit-offset strings: one chunk per part.
    whole = pa.Array.from_buffers(
        pa.large_binary(), n, [validity, pa.py_buffer(out_offsets), pa.py_buffer(out_data)]
    )
    pieces = []
    for p in range(plan.nparts):
        piece = whole.slice(plan.part_start[p], plan.counts[p])
        pieces.append(pc.cast(piece, pa.binary()).view(typ))
    return pa.chunked_array(pieces, type=typ)
