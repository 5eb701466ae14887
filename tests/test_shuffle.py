"""hash_partition / range_partition / broadcast against plain pandas/numpy references and Dask."""

from __future__ import annotations

import datetime
import importlib
import itertools
import re

import dask
import dask.config
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dask.dataframe.shuffle import partitioning_index
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dask_oxigdal.kernels import hashing as hk
from dask_oxigdal.kernels import shuffle as sk
from dask_oxigdal.tables import broadcast, hash_partition, range_partition

HYPO = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(params=["serial", "parallel"])
def threading_mode(request):
    """Run a test with serial kernels and with parallel (prange) kernels."""
    minimum = 1 if request.param == "parallel" else 1 << 40
    with dask.config.set({"oxigdal.kernels.parallel-min-elements": minimum}):
        yield request.param


# ======================================================================================
# References
# ======================================================================================
def _is_numeric_cast(dtype) -> bool:
    """Dask's rule (dask_expr._shuffle._is_numeric_cast_type): these keys become float64."""
    return pd.api.types.is_numeric_dtype(dtype) or (
        isinstance(dtype, pd.CategoricalDtype) and pd.api.types.is_numeric_dtype(dtype.categories)
    )


def dask_pids(key: pd.Series, npartitions: int) -> np.ndarray:
    """The partition Dask's shuffle assigns to each row, computed the way Dask does."""
    frame = key.reset_index(drop=True).to_frame(name="k")
    if _is_numeric_cast(frame.dtypes["k"]):
        frame = frame.astype({"k": np.float64}, errors="ignore")
    return np.asarray(partitioning_index(frame, npartitions)).astype(np.int64)


def arrow_key_to_pandas(table, on) -> pd.Series:
    return table.column(on).to_pandas()


def range_pids(values: np.ndarray, null: np.ndarray, boundaries) -> np.ndarray:
    pids = np.searchsorted(np.asarray(boundaries), values, side="right").astype(np.int64)
    pids[null] = len(boundaries)
    return pids


def ro(a: np.ndarray) -> np.ndarray:
    """Read-only view: the wrappers pass read-only inputs, so tests reuse those compilations."""
    a = a.view()
    a.flags.writeable = False
    return a


def _string_buffers(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    arr = pa.array(strings, pa.string())
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[: len(strings) + 1]
    data = arr.buffers()[2]
    data = (
        np.frombuffer(data, np.uint8) if data is not None and data.size else np.zeros(1, np.uint8)
    )
    return ro(offsets), ro(data)


def check_split(table, parts: dict, pids: np.ndarray) -> None:
    """parts == {p: rows of table whose pid is p, in input order}, same type and schema."""
    pids = np.asarray(pids)
    expected = sorted(int(p) for p in np.unique(pids))
    assert sorted(parts) == expected
    assert sum(_nrows(part) for part in parts.values()) == _nrows(table)
    for p, part in parts.items():
        assert type(part) is type(table)
        rows = np.flatnonzero(pids == p)
        if isinstance(table, (pa.Table, pa.RecordBatch)):
            assert part.schema.equals(table.schema, check_metadata=True)
            exp = _nan_safe(table).take(pa.array(rows))
            assert _nan_safe(part).equals(exp), f"part {p} differs"
            part.validate(full=True)
        else:
            exp = table.iloc[rows]
            pd.testing.assert_frame_equal(part, exp, check_exact=True)
            if hasattr(table, "crs"):
                assert part.crs == table.crs
                assert part.geometry.name == table.geometry.name


def _nan_safe(table):
    """Comparable copy: NaN -> a sentinel (NaN != NaN in ``equals``), views -> large types."""
    cols = []
    for col in table.columns:
        if pa.types.is_string_view(col.type):
            col = col.cast(pa.large_string())
        elif pa.types.is_binary_view(col.type):
            col = col.cast(pa.large_binary())
        elif pa.types.is_floating(col.type):
            col = col.cast(pa.float64())
            col = pc.if_else(pc.is_nan(col), pa.scalar(-1.2345e300), col)
        cols.append(col)
    return pa.table(cols, names=table.schema.names)


def _nrows(table) -> int:
    return table.num_rows if isinstance(table, (pa.Table, pa.RecordBatch)) else len(table)


def with_rid(table: pa.Table) -> pa.Table:
    return table.append_column("rid", pa.array(np.arange(table.num_rows)))


# ======================================================================================
# Hashing kernels against pandas
# ======================================================================================
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.sampled_from([0.0, -0.0, float("nan"), -float("nan"), 2.0**63, -(2.0**63)]),
        ),
        max_size=60,
    ),
    st.integers(1, 300),
)
@HYPO
def test_float_hash_matches_pandas(values, npartitions):
    vals = ro(np.array(values, np.float64))
    out = np.empty(len(vals), np.int32)
    hk.hash_float_pids(vals, *hk.divisor_params(npartitions), out)
    ref = pd.util.hash_pandas_object(pd.DataFrame({"k": vals}), index=False).to_numpy()
    assert (out == ref % np.uint64(npartitions)).all()


@given(st.lists(st.text(max_size=40), max_size=40), st.integers(1, 50))
@HYPO
def test_string_hash_matches_pandas(values, npartitions):
    offsets, data = _string_buffers(values)
    out = np.empty(len(values), np.int32)
    hk.hash_string_pids(offsets, data, *hk.divisor_params(npartitions), out)
    ref = pd.util.hash_pandas_object(
        pd.DataFrame({"k": pd.Series(values, dtype=object)}), index=False
    ).to_numpy()
    assert (out == ref % np.uint64(npartitions)).all()


def _pandas_hash_u64(x: np.ndarray) -> np.ndarray:
    """pandas' one-column hash of raw uint64 patterns (as for datetime64 keys)."""
    return pd.util.hash_pandas_object(
        pd.DataFrame({"k": x.view(np.int64).view("M8[ns]")}), index=False
    ).to_numpy()


@pytest.mark.parametrize("d", [1, 2, 3, 7, 16, 1000, 65537, 2**31 - 1])
def test_modulo_by_reciprocal_is_exact(d):
    rng = np.random.default_rng(d % 1000)
    x = np.concatenate(
        [
            rng.integers(0, 2**64, 5000, dtype=np.uint64),
            np.array([0, 1, d - 1, d, d + 1, 2**63, 2**64 - 1], np.uint64),
        ]
    )
    out = np.empty(len(x), np.int32)
    hk.hash_bits_pids(ro(x.view(np.int64)), *hk.divisor_params(d), out)
    assert (out == _pandas_hash_u64(x) % np.uint64(d)).all()


@pytest.mark.parametrize("d", [3, 10**9 + 7, 2**40 + 3, 2**63 - 1])
def test_divisor_params_reciprocal(d):
    """The multiply-high reciprocal gives x // d for any uint64 x (checked in Python ints)."""
    dd_, m, sh1, sh2 = (int(v) for v in hk.divisor_params(d))
    rng = np.random.default_rng(0)
    for x in [0, 1, d - 1, d, 2**64 - 1, 2**63, *rng.integers(0, 2**64, 2000, np.uint64).tolist()]:
        t = (m * x) >> 64
        assert (t + ((x - t) >> sh1)) >> sh2 == x // dd_


# ======================================================================================
# Counting-sort and range kernels against numpy
# ======================================================================================
def _blocks(n: int, cuts: list[int]) -> np.ndarray:
    return ro(np.array([*sorted({0, *[c for c in cuts if 0 < c < n]}), n], np.int64))


@given(
    st.lists(st.integers(0, 9), max_size=200),
    st.lists(st.integers(0, 200), max_size=6),
    st.booleans(),
)
@HYPO
def test_counting_sort_kernels_are_a_stable_sort(pids, cuts, parallel):
    pids = ro(np.array(pids, np.int32))
    n = len(pids)
    bstart = _blocks(n, cuts)
    suffix = "_parallel" if parallel else ""
    hist = getattr(sk, "histogram" + suffix)(pids, bstart, 10)
    counts, starts, off, end = sk.offsets_from_counts(hist)
    assert (counts == np.bincount(pids, minlength=10)).all()
    assert (starts == np.concatenate([[0], np.cumsum(counts)])).all()
    assert (end - off == hist).all()
    dest = np.empty(n, np.int32)
    getattr(sk, "dest_rows" + suffix)(pids, bstart, ro(off), dest)
    perm = np.empty(n, np.int64)
    getattr(sk, "invert" + suffix)(ro(dest), perm)
    assert (perm == np.argsort(pids, kind="stable")).all()
    vals = np.arange(n, dtype=np.uint64) * np.uint64(3)
    out = np.empty(n, np.uint64)
    getattr(sk, "scatter" + suffix)(ro(vals), ro(dest), out)
    assert (out == vals[perm]).all()


@given(
    st.lists(st.text(max_size=30), max_size=120),
    st.lists(st.integers(0, 120), max_size=4),
    st.integers(1, 5),
    st.booleans(),
)
@HYPO
def test_string_scatter_kernel(strings, cuts, nparts, parallel):
    n = len(strings)
    pids = ro((np.arange(n) * 7 % nparts).astype(np.int32))
    offsets, data = _string_buffers(strings)
    bstart = _blocks(n, cuts)
    nblocks = len(bstart) - 1
    suffix = "_parallel" if parallel else ""
    _, _, off, _ = sk.offsets_from_counts(sk.histogram(pids, bstart, nparts))
    dest = np.empty(n, np.int32)
    sk.dest_rows(pids, bstart, ro(off), dest)
    bsum = np.zeros((nblocks, nparts), np.int64)
    getattr(sk, "string_block_bytes" + suffix)(offsets, 0, pids, bstart, 0, nblocks, bsum)
    _, byte_start, byte_off, byte_end = sk.offsets_from_counts(bsum)
    out_offsets = np.empty(n + 1, np.int32)
    out_data = np.full(max(int(byte_start[-1]), 1), 255, np.uint8)
    scatter = getattr(sk, "scatter_strings" + suffix)
    scatter(
        offsets, data, 0, pids, ro(dest), bstart, ro(byte_off), ro(byte_end), 0, nblocks,
        out_offsets, out_data,
    )  # fmt: skip
    out_offsets[n] = byte_start[-1]
    got = pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(out_offsets), pa.py_buffer(out_data)]
    )
    order = np.argsort(pids, kind="stable")
    assert got.to_pylist() == [strings[i] for i in order]


@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=False, width=32), max_size=100),
    st.lists(st.floats(-1e6, 1e6, width=32), max_size=300).map(sorted),
)
@HYPO
def test_range_pids_kernel_matches_searchsorted(values, bounds):
    vals = ro(np.array(values, np.float64))
    b = ro(np.array(bounds, np.float64))
    out = np.empty(len(vals), np.int32)
    sk.range_pids(vals, b, len(b), out)
    ref = np.searchsorted(b, vals, side="right")
    ref[np.isnan(vals)] = len(b)
    assert (out == ref).all()


@pytest.mark.parametrize("nb", [0, 1, 2, 128, 129, 1000])
@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.float64])
def test_range_pids_kernel_linear_and_search(nb, dtype):
    rng = np.random.default_rng(nb)
    bounds = ro(np.sort(rng.integers(0, 500, nb)).astype(dtype))
    vals = rng.integers(0, 510, 3000).astype(dtype)
    if dtype is np.float64:
        vals[::13] = np.nan
    out = np.empty(len(vals), np.int32)
    sk.range_pids(ro(vals), bounds, nb, out)
    ref = np.searchsorted(bounds, vals, side="right")
    ref[np.isnan(vals.astype(np.float64))] = nb
    assert (out == ref).all()


# ======================================================================================
# Dask compatibility: a real Dask shuffle puts every row where we do
# ======================================================================================
def _dask_shuffle_rids(df: pd.DataFrame, npartitions: int) -> list[set]:
    ddf = dd.from_pandas(df, npartitions=3)
    out = ddf.shuffle(on="k", npartitions=npartitions)
    parts = dask.compute(*out.to_delayed(), scheduler="sync")
    return [set(p["rid"].tolist()) for p in parts]


def _dask_keys():
    rng = np.random.default_rng(42)
    n = 400
    ints = rng.integers(-(2**62), 2**62, n)
    ints[:20] = [0, -1, 1, -5, 2**53, 2**53 + 1, -(2**63), 2**63 - 1, 7, 7, *range(10)]
    floats = rng.normal(size=n) * 1e3
    floats[:8] = [np.nan, -np.nan, 0.0, -0.0, np.inf, -np.inf, 1e-300, -1.5]
    floats[::17] = np.nan
    strings = pd.Series(
        [None if i % 9 == 0 else f"key-{i % 37}-é" * (i % 4) for i in range(n)], dtype="str"
    )
    times = pd.Series(pd.to_datetime(rng.integers(0, 2**40, n), unit="ms", utc=True))
    times[::13] = pd.NaT
    return {
        "int64": pd.Series(ints),
        "negative-int32": pd.Series(rng.integers(-1000, 1000, n).astype(np.int32)),
        "uint64": pd.Series(rng.integers(0, 2**64 - 1, n, dtype=np.uint64)),
        "float64-nan-negzero": pd.Series(floats),
        "float32": pd.Series(floats.astype(np.float32)),
        "Int64-masked-NA": pd.Series(pd.array(np.where(ints % 5 == 0, None, ints % 100), "Int64")),
        "bool": pd.Series(ints % 3 == 0),
        "str-with-nulls": strings,
        "object-str": strings.astype(object),
        "category-str": strings.astype("category"),
        "category-int": pd.Series(ints % 7).astype("category"),
        "datetime-utc-nat": times,
        "datetime-naive-us": pd.Series(times.dt.tz_localize(None).astype("datetime64[us]")),
    }


@pytest.mark.parametrize("name", list(_dask_keys()))
@pytest.mark.parametrize("npartitions", [1, 4, 7])
def test_pandas_rows_land_where_dask_shuffle_puts_them(name, npartitions):
    key = _dask_keys()[name]
    df = pd.DataFrame({"k": key, "rid": np.arange(len(key))})
    theirs = _dask_shuffle_rids(df, npartitions)
    ours = hash_partition(df, "k", npartitions)
    for i, rids in enumerate(theirs):
        got = set(ours[i]["rid"].tolist()) if i in ours else set()
        assert got == rids, f"partition {i}"


@pytest.mark.parametrize("name", ["int64", "float64-nan-negzero", "str-with-nulls"])
def test_arrow_rows_land_where_dask_shuffle_puts_them(name):
    key = _dask_keys()[name]
    table = pa.table({"k": pa.array(key, from_pandas=True), "rid": np.arange(len(key))})
    theirs = _dask_shuffle_rids(table.to_pandas(), 5)
    ours = hash_partition(table, "k", 5)
    for i, rids in enumerate(theirs):
        got = set(ours[i]["rid"].to_pylist()) if i in ours else set()
        assert got == rids, f"partition {i}"


# ======================================================================================
# Every key type, Arrow
# ======================================================================================
def _key_arrays(n: int, rng) -> dict[str, pa.Array]:
    ints = rng.integers(-50, 50, n)
    null = rng.random(n) < 0.15
    words = np.array(["", "a", "b", "ab", "héllo", "z" * 20, "0123456789abcdef", "ß"], object)
    strs = words[rng.integers(0, len(words), n)]
    times = rng.integers(-(10**12), 10**12, n)
    return {
        "int8": pa.array(ints.astype(np.int8), mask=null),
        "int16": pa.array(ints.astype(np.int16)),
        "int32": pa.array(ints.astype(np.int32), mask=null),
        "int64": pa.array(ints * 10**12, mask=null),
        "uint8": pa.array((ints + 50).astype(np.uint8)),
        "uint16": pa.array((ints + 50).astype(np.uint16), mask=null),
        "uint32": pa.array((ints + 50).astype(np.uint32)),
        "uint64": pa.array((ints + 50).astype(np.uint64) * np.uint64(2**57), mask=null),
        "float16": pa.array((ints / 4).astype(np.float16), mask=null),
        "float32": pa.array((ints / 3).astype(np.float32), mask=null),
        "float64": pa.array(np.where(ints % 11 == 0, np.nan, ints / 7), mask=null),
        "bool": pa.array(ints % 2 == 0),
        "string": pa.array(strs, pa.string(), mask=null),
        "large_string": pa.array(strs, pa.large_string(), mask=null),
        "string_view": pa.array(strs, pa.string_view(), mask=null),
        "binary": pa.array([s.encode() for s in strs], pa.binary(), mask=null),
        "large_binary": pa.array([s.encode() for s in strs], pa.large_binary()),
        "dict_string": pa.array(strs, pa.string(), mask=null).dictionary_encode(),
        "dict_int": pa.array(ints % 9, mask=null).dictionary_encode(),
        "timestamp_s": pa.array(times // 10**6, pa.timestamp("s"), mask=null),
        "timestamp_ms_utc": pa.array(times, pa.timestamp("ms", tz="UTC"), mask=null),
        "timestamp_ns_paris": pa.array(times * 10**6, pa.timestamp("ns", tz="Europe/Paris")),
        "timestamp_us": pa.array(times, pa.timestamp("us"), mask=null),
        "duration_ms": pa.array(times, pa.duration("ms"), mask=null),
        "null": pa.nulls(n),
    }


_NO_DASK_REFERENCE = {"bool", "string_view"}  # pandas conversions Dask never sees alike


_KEY_NAMES = list(_key_arrays(4, np.random.default_rng(0)))
# One key type per pid kernel, for the prange variants (each compiles on first use).
_PARALLEL_KEYS = ["int64", "float32", "bool", "large_string", "dict_string", "timestamp_us"]


def _check_hash_key(name: str, n: int) -> None:
    rng = np.random.default_rng(1)
    keys = _key_arrays(n, rng)
    table = pa.table({"k": keys[name], "v": rng.normal(size=n), "s": keys["string"]})
    parts = hash_partition(table, "k", 6)
    if name == "string_view":
        ref = dask_pids(table.column("k").cast(pa.string()).to_pandas(), 6)
    elif name == "bool":
        ref = dask_pids(pd.Series(keys[name].to_numpy(zero_copy_only=False)), 6)
    else:
        ref = dask_pids(arrow_key_to_pandas(table, "k"), 6)
    check_split(table, parts, ref)


def _check_range_key(name: str, n: int) -> None:
    rng = np.random.default_rng(2)
    keys = _key_arrays(n, rng)
    key = keys[name]
    table = pa.table({"k": key, "v": rng.normal(size=n)})
    typ = key.type.value_type if pa.types.is_dictionary(key.type) else key.type
    if pa.types.is_timestamp(typ):
        tz = "UTC" if typ.tz else None
        boundaries = [pd.Timestamp("1990-01-01", tz=tz), pd.Timestamp("2001-02-03 04:05", tz=tz)]
    elif pa.types.is_duration(typ):
        boundaries = [pd.Timedelta(days=-3), datetime.timedelta(0), pd.Timedelta("2D")]
    elif pa.types.is_string(typ) or "string" in str(typ):
        boundaries = ["a", "ab", "b", "zz"]
    elif "binary" in str(typ):
        boundaries = [b"a", b"ab", b"b"] if name == "binary" else ["a", "ab", "b"]
    elif pa.types.is_boolean(typ):
        boundaries = [0.5]
    elif pa.types.is_unsigned_integer(typ):
        boundaries = [10, 10.5, 60, 2**58]
    else:
        boundaries = [-10, -2.5, 0, 3, 3, 20]
    parts = range_partition(table, "k", boundaries)
    # reference: compare as Python values
    values = key.cast(typ) if pa.types.is_dictionary(key.type) else key
    pylist = values.to_pylist()
    bounds = _reference_bounds(boundaries, typ)
    null = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in pylist], bool)
    pids = np.array(
        [
            len(bounds) if null[i] else sum(b <= _comparable(pylist[i], typ) for b in bounds)
            for i in range(n)
        ]
    )
    check_split(table, parts, pids)


@pytest.mark.parametrize("name", _KEY_NAMES)
def test_hash_every_key_type(name):
    _check_hash_key(name, 3000)


@pytest.mark.parametrize("name", _KEY_NAMES)
def test_range_every_key_type(name):
    _check_range_key(name, 3000)


@pytest.mark.parametrize("name", _PARALLEL_KEYS)
def test_parallel_kernels_by_key_type(name):
    with dask.config.set({"oxigdal.kernels.parallel-min-elements": 1}):
        _check_hash_key(name, 20_000)
        _check_range_key(name, 20_000)


def _comparable(v, typ):
    if isinstance(v, bytes):
        return v
    if isinstance(v, datetime.datetime):
        return pd.Timestamp(v)
    if isinstance(v, datetime.timedelta):
        return pd.Timedelta(v)
    return v


def _reference_bounds(boundaries, typ):
    if "binary" in str(typ):
        return [b.encode() if isinstance(b, str) else b for b in boundaries]
    if pa.types.is_timestamp(typ):
        return [pd.Timestamp(b) for b in boundaries]
    if pa.types.is_duration(typ):
        return [pd.Timedelta(b) for b in boundaries]
    return boundaries


# ======================================================================================
# Random tables: chunking, slicing, nulls in every column
# ======================================================================================
def _random_table(rng, n: int) -> pa.Table:
    null = lambda p: rng.random(n) < p  # noqa: E731
    words = [f"w{i}" * (i % 5) for i in range(30)] + ["", "long-" * 10, "ünï"]
    return pa.table(
        {
            "key": pa.array(rng.integers(-20, 20, n), mask=null(0.1)),
            "f64": pa.array(rng.normal(size=n), mask=null(0.3)),
            "i32": pa.array(rng.integers(-5, 5, n).astype(np.int32)),
            "u8": pa.array(rng.integers(0, 255, n).astype(np.uint8), mask=null(0.5)),
            "flag": pa.array(rng.random(n) < 0.5, mask=null(0.2)),
            "flag_nonull": pa.array(rng.random(n) < 0.5),
            "name": pa.array(
                [words[i] for i in rng.integers(0, len(words), n)], pa.string(), mask=null(0.2)
            ),
            "big": pa.array(
                [words[i].encode() for i in rng.integers(0, len(words), n)], pa.large_binary()
            ),
            "cat": pa.array([words[i] for i in rng.integers(0, 5, n)]).dictionary_encode(),
            "ts": pa.array(
                rng.integers(0, 10**15, n), pa.timestamp("us", tz="UTC"), mask=null(0.1)
            ),
            "date": pa.array(rng.integers(0, 20000, n).astype(np.int32), pa.date32()),
            "dec": pa.array([None if i % 7 == 0 else i for i in range(n)], pa.decimal128(12, 2)),
            "fsb": pa.array([bytes([i % 256] * 3) for i in range(n)], pa.binary(3)),
            "lst": pa.array([[i, None] if i % 3 else None for i in range(n)], pa.list_(pa.int64())),
            "st": pa.array([{"a": i, "b": str(i)} for i in range(n)]),
            "nul": pa.nulls(n),
        }
    )


def _rechunk(table: pa.Table, rng) -> pa.Table:
    """Every column chunked differently (with empty chunks)."""
    cols = []
    for col in table.columns:
        arr = col.combine_chunks()
        cuts = np.sort(rng.integers(0, len(arr) + 1, rng.integers(0, 5)))
        edges = [0, *cuts.tolist(), len(arr)]
        cols.append(
            pa.chunked_array(
                [arr.slice(a, b - a) for a, b in itertools.pairwise(edges)], type=arr.type
            )
        )
    return pa.Table.from_arrays(cols, schema=table.schema)


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    npartitions=st.integers(1, 20),
    offset=st.integers(0, 30),
    chunked=st.booleans(),
    batch=st.booleans(),
)
@HYPO
def test_random_tables_hash(seed, n, npartitions, offset, chunked, batch):
    rng = np.random.default_rng(seed)
    table = _random_table(rng, n + offset).slice(offset)  # nonzero array offsets
    if chunked:
        table = _rechunk(table, rng)
    if batch:  # one RecordBatch whose arrays keep their nonzero offsets
        table = pa.RecordBatch.from_arrays(
            [c.combine_chunks() if c.num_chunks != 1 else c.chunk(0) for c in table.columns],
            schema=table.schema,
        )
    parts = hash_partition(table, "key", npartitions)
    check_split(table, parts, dask_pids(arrow_key_to_pandas(table, "key"), npartitions))


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    boundaries=st.lists(st.integers(-25, 25), max_size=8).map(sorted),
    offset=st.integers(0, 30),
)
@HYPO
def test_random_tables_range(seed, n, boundaries, offset):
    rng = np.random.default_rng(seed)
    table = _rechunk(_random_table(rng, n + offset).slice(offset), rng)
    parts = range_partition(table, "key", boundaries)
    key = table.column("key")
    values = key.fill_null(0).to_numpy()
    check_split(table, parts, range_pids(values, key.is_null().to_numpy(), boundaries))


def test_big_random_table_both_threading_modes(threading_mode):
    rng = np.random.default_rng(7)
    table = _rechunk(_random_table(rng, 150_000).slice(11), rng)
    for npartitions in (3, 16):
        parts = hash_partition(table, "key", npartitions)
        check_split(table, parts, dask_pids(arrow_key_to_pandas(table, "key"), npartitions))
    parts = range_partition(table, "name", ["w1", "w2w2", "w5"])
    key = table.column("name")
    pylist = key.to_pylist()
    pids = [3 if v is None else sum(b <= v for b in ["w1", "w2w2", "w5"]) for v in pylist]
    check_split(table, parts, pids)


# ======================================================================================
# Edge cases
# ======================================================================================
def test_empty_table_gives_no_parts():
    table = pa.table({"k": pa.array([], pa.int64()), "s": pa.array([], pa.string())})
    assert hash_partition(table, "k", 4) == {}
    assert range_partition(table, "k", [1, 2]) == {}
    assert broadcast(table, 3) == {}
    assert hash_partition(table.to_pandas(), "k", 4) == {}
    assert hash_partition(pa.RecordBatch.from_pylist([], schema=table.schema), "k", 2) == {}


def test_one_row():
    table = pa.table({"k": [5], "s": ["x"]})
    (p,) = dask_pids(pd.Series([5]), 8)
    assert hash_partition(table, "k", 8) == {int(p): table}
    assert range_partition(table, "k", [5]) == {1: table}
    assert range_partition(table, "k", [6]) == {0: table}


def test_all_null_key_goes_to_one_part():
    table = pa.table({"k": pa.nulls(50, pa.float64()), "v": np.arange(50)})
    parts = hash_partition(table, "k", 7)
    nan_part = int(dask_pids(pd.Series([np.nan]), 7)[0])
    assert list(parts) == [nan_part] and parts[nan_part].equals(table)
    assert list(range_partition(table, "k", [0.0, 1.0])) == [2]
    strings = pa.table({"k": pa.nulls(10, pa.string())})
    (p,) = dask_pids(pd.Series([None], dtype="str"), 7)
    assert list(hash_partition(strings, "k", 7)) == [int(p)]


def test_all_rows_to_one_part_and_npartitions_1():
    table = pa.table({"k": [3, 3, 3], "s": ["a", "b", None]})
    assert next(iter(hash_partition(table, "k", 5).values())) is table
    assert hash_partition(table, "k", 1) == {0: table}
    assert range_partition(table, "k", []) == {0: table}
    df = table.to_pandas()
    out = hash_partition(df, "k", 1)
    assert list(out) == [0] and out[0] is not df
    pd.testing.assert_frame_equal(out[0], df)


def test_record_batch_in_record_batch_out():
    batch = pa.record_batch(
        {"k": pa.array([1, 2, 3, None, 5, 6]), "s": ["a", None, "ccc", "", "e", "f"]},
        metadata={b"origin": b"test"},
    ).slice(1)
    parts = hash_partition(batch, "k", 3)
    assert all(isinstance(p, pa.RecordBatch) for p in parts.values())
    check_split(batch, parts, dask_pids(batch.column("k").to_pandas(), 3))
    assert all(p.schema.metadata == {b"origin": b"test"} for p in parts.values())


def test_sliced_arrays_keep_validity_and_booleans():
    n = 1000
    rng = np.random.default_rng(3)
    base = _random_table(rng, n)
    for off in (1, 3, 7, 8, 9, 63):
        table = base.slice(off, n - 2 * off)
        assert table.column("flag").chunk(0).offset == off
        parts = hash_partition(table, "i32", 4)
        check_split(table, parts, dask_pids(arrow_key_to_pandas(table, "i32"), 4))


def test_sparse_and_huge_npartitions():
    table = pa.table({"k": np.arange(100), "s": [str(i) for i in range(100)]})
    parts = hash_partition(table, "k", 10**9)
    check_split(table, parts, dask_pids(pd.Series(np.arange(100)), 10**9))


def test_many_small_chunks_with_many_parts():
    chunks = [pa.array([i], pa.int64()) for i in range(1500)]
    table = pa.table({"k": pa.chunked_array(chunks), "s": pa.chunked_array([["x"] * 1500])})
    parts = hash_partition(table, "k", 65536)
    check_split(table, parts, dask_pids(pd.Series(np.arange(1500)), 65536))


def test_string_column_beyond_32bit_offsets_gets_a_chunk_per_part(monkeypatch):
    """More bytes than 32-bit offsets address: the column is rebuilt part by part.

    A real case needs > 2 GiB of chunked strings; lowering the module's limit runs the
    same code on a small table.
    """
    reorder_module = importlib.import_module("dask_oxigdal.tables._reorder")

    monkeypatch.setattr(reorder_module, "_INT32_OFFSETS_MAX", 100)
    words = [f"word-{i}" * (i % 3) for i in range(200)]
    table = pa.table(
        {
            "k": np.arange(200) % 7,
            "s": pa.chunked_array([words[:120], words[120:]], pa.string()),
            "b": pa.chunked_array([[w.encode() for w in words]], pa.binary()),
        }
    )
    parts = hash_partition(table, "k", 3)
    check_split(table, parts, dask_pids(pd.Series(np.arange(200) % 7), 3))


def test_extension_type_column():
    typ = pa.uuid()
    storage = pa.array([bytes([i] * 16) for i in range(40)], pa.binary(16))
    table = pa.table({"k": np.arange(40) % 5, "u": pa.ExtensionArray.from_storage(typ, storage)})
    parts = hash_partition(table, "k", 3)
    check_split(table, parts, dask_pids(pd.Series(np.arange(40) % 5), 3))


def test_strings_of_every_length_and_unicode(threading_mode):
    rng = np.random.default_rng(5)
    n = 80_000
    lengths = rng.integers(0, 70, n)
    alphabet = np.array(list("abcdeé漢字🙂"), object)
    strings = ["".join(alphabet[rng.integers(0, len(alphabet), k)]) for k in lengths[:2000]]
    strings = (strings * (n // 2000 + 1))[:n]
    table = pa.table({"k": rng.integers(0, 1000, n), "s": pa.array(strings, pa.large_string())})
    parts = hash_partition(table, "s", 9)
    check_split(table, parts, dask_pids(pd.Series(strings, dtype="str"), 9))


# ======================================================================================
# pandas and geopandas
# ======================================================================================
def _pandas_frame(n: int, rng) -> pd.DataFrame:
    idx = pd.Index([f"row{i}" for i in rng.permutation(n)], name="label")
    return pd.DataFrame(
        {
            "k": rng.integers(-10, 10, n),
            "f": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
            "f32": rng.normal(size=n).astype(np.float32),
            "b": rng.random(n) < 0.5,
            "masked": pd.array(np.where(rng.random(n) < 0.3, None, rng.integers(0, 9, n)), "Int64"),
            "s": pd.Series([None if i % 7 == 0 else f"s{i % 13}" for i in range(n)], dtype="str"),
            "obj": pd.Series([{"x": i} if i % 2 else None for i in range(n)], dtype=object),
            "cat": pd.Categorical([["a", "b", "c"][i % 3] for i in range(n)]),
            "ts": pd.date_range("2020-01-01", periods=n, freq="h", tz="Europe/Paris"),
            "naive": pd.date_range("2020-01-01", periods=n, freq="min").astype("datetime64[ms]"),
            "td": pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
            "c128": rng.normal(size=n) + 1j,
        },
        index=idx,
    )


@pytest.mark.parametrize("on", ["k", "f", "s", "masked", "cat", "ts", "b", "label"])
def test_pandas_frames(on, threading_mode):
    rng = np.random.default_rng(11)
    df = _pandas_frame(2000, rng)
    df.attrs["source"] = "test"
    parts = hash_partition(df, on, 5)
    key = df.index.to_series() if on == "label" else df[on]
    check_split(df, parts, dask_pids(key, 5))
    assert all(p.attrs == {"source": "test"} for p in parts.values())


def test_pandas_range_and_duplicate_labels():
    rng = np.random.default_rng(12)
    df = _pandas_frame(500, rng)
    df.index = pd.MultiIndex.from_arrays([np.arange(500) % 3, np.arange(500)])
    df.columns = [*df.columns[:-1], "b"]  # a duplicate label
    with pytest.raises(ValueError, match="ambiguous"):
        hash_partition(df, "b", 2)
    parts = range_partition(df, "f", [-1.0, 0.0, 0.5])
    f = df["f"].to_numpy()
    check_split(df, parts, range_pids(np.nan_to_num(f), np.isnan(f), [-1.0, 0.0, 0.5]))
    parts = range_partition(df, "ts", [pd.Timestamp("2020-01-05", tz="UTC")])
    ts = df["ts"]
    check_split(df, parts, (ts >= pd.Timestamp("2020-01-05", tz="UTC")).astype(int).to_numpy())


def test_geodataframe_keeps_geometry_and_crs():
    import geopandas as gpd
    import shapely

    rng = np.random.default_rng(13)
    n = 300
    gdf = gpd.GeoDataFrame(
        {
            "k": rng.integers(0, 20, n),
            "v": rng.normal(size=n),
            "where": shapely.points(rng.random(n), rng.random(n)),
        },
        geometry="where",
        crs="EPSG:3857",
        index=np.arange(n)[::-1] * 10,
    )
    parts = hash_partition(gdf, "k", 4)
    check_split(gdf, parts, dask_pids(gdf["k"], 4))
    for part in parts.values():
        assert isinstance(part, gpd.GeoDataFrame)
        assert part.geometry.name == "where" and part.crs == gdf.crs
    parts = range_partition(gdf, "v", [0.0])
    check_split(gdf, parts, (gdf["v"] >= 0).astype(int).to_numpy())
    out = broadcast(gdf, 2)
    assert all(isinstance(p, gpd.GeoDataFrame) and p.crs == gdf.crs for p in out.values())


# ======================================================================================
# Range exactness and boundaries
# ======================================================================================
def test_range_integer_keys_are_compared_exactly():
    keys = np.array([-(2**63), -3, 2, 3, 4, 2**53 + 1, 2**63 - 1], np.int64)
    table = pa.table({"k": keys})
    bounds = [-1e30, 2.5, 3, 2**53 + 1, 2**64]
    parts = range_partition(table, "k", bounds)
    pids = [sum(b <= int(k) for b in bounds) for k in keys.tolist()]
    check_split(table, parts, pids)
    u = pa.table({"k": pa.array([0, 5, 2**64 - 1], pa.uint64())})
    check_split(u, range_partition(u, "k", [-3, 5, 2**64 - 1]), [1, 2, 3])


def test_range_timestamps_across_units_and_zones():
    ts = pd.to_datetime(
        ["2020-01-01 00:00:00.000001", "2020-01-01 00:00:00", None, "2019-12-31 23:00:00"],
        format="ISO8601",
    )
    table = pa.table({"k": pa.array(ts, pa.timestamp("us", tz="UTC"))})
    b = [pd.Timestamp("2020-01-01 01:00:00.0000005", tz="Europe/Paris")]  # 00:00:00.0000005 UTC
    check_split(table, range_partition(table, "k", b), [1, 0, 1, 0])
    naive = pa.table({"k": pa.array(ts.floor("s"), pa.timestamp("s"))})
    check_split(
        naive, range_partition(naive, "k", [np.datetime64("2020-01-01T00:00:00.5")]), [0, 0, 1, 0]
    )


# ======================================================================================
# broadcast
# ======================================================================================
def test_broadcast_gives_every_part_every_row():
    table = pa.table({"k": [1, 2, 3]})
    out = broadcast(table, 4)
    assert list(out) == [0, 1, 2, 3] and all(p is table for p in out.values())
    df = table.to_pandas()
    out = broadcast(df, 2)
    assert all(p is not df for p in out.values())
    for p in out.values():
        pd.testing.assert_frame_equal(p, df)
    batch = table.to_batches()[0]
    assert broadcast(batch, 1) == {0: batch}


# ======================================================================================
# Errors
# ======================================================================================
def test_missing_column_names_the_available_ones():
    table = pa.table({"a": [1], "b": [2]})
    with pytest.raises(KeyError, match=r"'zz'.*\['a', 'b'\]"):
        hash_partition(table, "zz", 2)
    with pytest.raises(KeyError, match=r"'zz'.*\['a', 'b'\]"):
        range_partition(table.to_pandas(), "zz", [1])


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True, None, 2**31])
def test_bad_npartitions(bad):
    table = pa.table({"a": [1]})
    with pytest.raises(ValueError, match="npartitions"):
        hash_partition(table, "a", bad)
    with pytest.raises(ValueError, match="npartitions"):
        broadcast(table, bad)


@pytest.mark.parametrize(
    ("boundaries", "match"),
    [
        ([3, 1], "sorted.*3.*1"),
        ([1, float("nan")], "finite.*nan"),
        ([float("inf")], "finite.*inf"),
        ([None], "finite.*None"),
        ([pd.NaT], "finite.*NaT"),
        (np.array([2.0, 1.0]), "sorted"),
    ],
)
def test_bad_boundaries(boundaries, match):
    with pytest.raises(ValueError, match=match):
        range_partition(pa.table({"a": [1.0]}), "a", boundaries)


def test_boundaries_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"'x'.*int64"):
        range_partition(pa.table({"a": [1]}), "a", ["x"])
    with pytest.raises(TypeError, match="comparable"):
        range_partition(pa.table({"a": [1]}), "a", [1, "x"])
    with pytest.raises(TypeError, match="str"):
        range_partition(pa.table({"a": ["x"]}), "a", [1])
    ts = pa.table({"a": pa.array([0], pa.timestamp("s", tz="UTC"))})
    with pytest.raises(TypeError, match="tz-naive"):
        range_partition(ts, "a", [pd.Timestamp("2020-01-01")])
    with pytest.raises(TypeError, match="timestamp"):
        range_partition(ts, "a", [5])


@pytest.mark.parametrize(
    "column",
    [
        pa.array([[1], [2]]),
        pa.array([{"a": 1}, {"a": 2}]),
        pa.array([1, 2], pa.date32()),
        pa.array([1, 2], pa.decimal128(5, 1)),
    ],
)
def test_unsupported_key_types(column):
    table = pa.table({"k": column})
    with pytest.raises(TypeError, match=re.escape(str(column.type)) + ".*supported key types"):
        hash_partition(table, "k", 2)
    with pytest.raises(TypeError, match="supported key types"):
        range_partition(table, "k", [1])
    with pytest.raises(TypeError, match="supported key types"):  # even without rows
        hash_partition(table.slice(0, 0), "k", 2)


def test_unsupported_pandas_key_and_table():
    df = pd.DataFrame({"k": [1, "a", 2.5]}, dtype=object)
    with pytest.raises(TypeError, match="supported key types"):
        hash_partition(df, "k", 2)
    with pytest.raises(TypeError, match=r"pyarrow\.Table.*list"):
        hash_partition([1, 2], "k", 2)
