"""Hash, range and broadcast partitioning of Arrow and pandas tables.

>>> from dask_oxigdal.tables import hash_partition, range_partition, broadcast
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
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dask_oxigdal.kernels._parallel import parallel_launch
from dask_oxigdal.tables._buffers import SUPPORTED_KEY_TYPES  # noqa: F401 (re-exported)
from dask_oxigdal.tables._frames import _Frame
from dask_oxigdal.tables._keys import _key_kind, _KeyPids, _RangeBounds

__all__ = ["broadcast", "hash_partition", "range_partition"]

_MAX_PARTITIONS = 2**31 - 1
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
