"""HashPartitioner and RangePartitioner."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dask.config
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_oxigdal.kernels import keyhash
from dask_oxigdal.kernels import tiles as ktiles
from dask_oxigdal.partitioning import HashPartitioner, RangePartitioner

SETTINGS = settings(max_examples=80, deadline=None)

# ---------------------------------------------------------------- XXH64 reference

M64 = (1 << 64) - 1
P1, P2, P3, P4, P5 = (
    0x9E3779B185EBCA87,
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
    0x85EBCA77C2B2AE63,
    0x27D4EB2F165667C5,
)


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & M64


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * P2) & M64, 31) * P1) & M64


def xxh64_ref(data: bytes, seed: int = 0) -> int:
    """Plain-Python XXH64, straight from the specification."""
    n, p = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M64, (seed + P2) & M64, seed, (seed - P1) & M64]
        while p + 32 <= n:
            for j in range(4):
                v[j] = _round(v[j], int.from_bytes(data[p + 8 * j : p + 8 * j + 8], "little"))
            p += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & M64
        for j in range(4):
            h = ((h ^ _round(0, v[j])) * P1 + P4) & M64
    else:
        h = (seed + P5) & M64
    h = (h + n) & M64
    while p + 8 <= n:
        h = (_rotl(h ^ _round(0, int.from_bytes(data[p : p + 8], "little")), 27) * P1 + P4) & M64
        p += 8
    if p + 4 <= n:
        h ^= (int.from_bytes(data[p : p + 4], "little") * P1) & M64
        h = (_rotl(h, 23) * P2 + P3) & M64
        p += 4
    while p < n:
        h = (_rotl(h ^ ((data[p] * P5) & M64), 11) * P1) & M64
        p += 1
    h ^= h >> 33
    h = (h * P2) & M64
    h ^= h >> 29
    h = (h * P3) & M64
    return h ^ (h >> 32)


def test_reference_matches_published_vectors():
    # XXH64 seed 0 test vectors (xxHash sanity checks)
    assert xxh64_ref(b"") == 0xEF46DB3751D8E999
    assert xxh64_ref(b"a") == 0xD24EC4F1A98C6E5B
    assert xxh64_ref(b"abc") == 0x44BC2CF5AD770999


# ---------------------------------------------------------------- hashing


@SETTINGS
@given(st.binary(max_size=200))
def test_hash_bytes_matches_reference(b):
    assert HashPartitioner.hash_key(b) == xxh64_ref(b)
    assert HashPartitioner.hash_key(bytearray(b)) == xxh64_ref(b)
    assert HashPartitioner.hash_key(memoryview(b)) == xxh64_ref(b)


@SETTINGS
@given(st.text(max_size=80))
def test_hash_str_is_utf8(s):
    try:
        encoded = s.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(ValueError, match="UTF-8"):
            HashPartitioner.hash_key(s)
        return
    assert HashPartitioner.hash_key(s) == xxh64_ref(encoded)


@SETTINGS
@given(st.integers(-(2**63), 2**63 - 1))
def test_hash_int_is_8_byte_little_endian_twos_complement(v):
    assert HashPartitioner.hash_key(v) == xxh64_ref(v.to_bytes(8, "little", signed=True))
    assert HashPartitioner.hash_key(np.int64(v)) == HashPartitioner.hash_key(v)


def test_hash_int_details():
    hp = HashPartitioner(16)
    assert hp.hash_key(-1) == xxh64_ref(b"\xff" * 8)
    assert hp.hash_key(1) == hp.hash_key(b"\x01" + b"\x00" * 7)
    assert hp.hash_key(True) == hp.hash_key(1)
    assert hp.hash_key(np.uint8(7)) == hp.hash_key(7)
    assert hp.hash_key(1) != hp.hash_key("1")
    for bad in (2**63, -(2**63) - 1, np.uint64(2**63)):
        with pytest.raises(ValueError, match="outside the int64 range"):
            hp.partition_for_key(bad)


@pytest.mark.parametrize("bad", [1.5, None, ("a",), ["a"], np.float64(2.0), {1}])
def test_bad_key_type(bad):
    with pytest.raises(TypeError, match=rf"{type(bad).__name__}.*valid types: bytes.*str, int"):
        HashPartitioner(4).partition_for_key(bad)


def test_int_kernel_is_the_8_byte_case_of_the_bytes_kernel():
    rng = np.random.default_rng(0)
    v = rng.integers(-(2**63), 2**63 - 1, 50_000, dtype=np.int64, endpoint=True)
    v[:4] = [0, -1, -(2**63), 2**63 - 1]
    data = np.frombuffer(v.astype("<i8").tobytes(), dtype=np.uint8)
    offsets = np.arange(0, 8 * v.shape[0] + 1, 8, dtype=np.int64)
    for n in (0, 1, 7, 2**32):
        results = []
        for kernel, args in (
            (keyhash.xxh64_int64, (v,)),
            (keyhash.xxh64_int64_parallel, (v,)),
            (keyhash.xxh64_varlen, (data, offsets)),
            (keyhash.xxh64_varlen_parallel, (data, offsets)),
        ):
            out = np.empty(v.shape[0], dtype=np.uint64)
            kernel(*args, n, out)
            results.append(out)
        for other in results[1:]:
            np.testing.assert_array_equal(results[0], other)
    expected = [xxh64_ref(int(x).to_bytes(8, "little", signed=True)) for x in v[:300]]
    assert results[0][:300].tolist() == [(h >> 32) * 2**32 >> 32 for h in expected]


@SETTINGS
@given(st.binary(max_size=100), st.integers(1, 2**32))
def test_partition_is_multiply_shift_of_the_high_bits(key, n):
    expected = ((xxh64_ref(key) >> 32) * n) >> 32
    assert HashPartitioner(n).partition_for_key(key) == expected
    assert 0 <= expected < n


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000])
def test_vectorised_matches_scalar_ints(n):
    hp = HashPartitioner(n)
    rng = np.random.default_rng(n)
    v = rng.integers(-(2**63), 2**63 - 1, 2000, dtype=np.int64, endpoint=True)
    expected = np.array([hp.partition_for_key(int(x)) for x in v])
    assert ((expected >= 0) & (expected < n)).all()
    np.testing.assert_array_equal(hp.partitions_for_keys(v), expected)
    np.testing.assert_array_equal(hp.partitions_for_keys(v.tolist()), expected)
    np.testing.assert_array_equal(hp.partitions_for_keys(pd.Series(v)), expected)
    np.testing.assert_array_equal(hp.partitions_for_keys(pa.array(v)), expected)
    np.testing.assert_array_equal(
        hp.hash_keys(v), np.array([hp.hash_key(int(x)) for x in v], dtype=np.uint64)
    )
    small = v.astype(np.int32)
    np.testing.assert_array_equal(
        hp.partitions_for_keys(small), [hp.partition_for_key(int(x)) for x in small]
    )
    unsigned = np.abs(v >> 1).astype(np.uint64)
    np.testing.assert_array_equal(
        hp.partitions_for_keys(unsigned), [hp.partition_for_key(int(x)) for x in unsigned]
    )
    with dask.config.set({"oxigdal.kernels.parallel-min-elements": 1}):
        np.testing.assert_array_equal(hp.partitions_for_keys(v), expected)


def _strings(rng: np.random.Generator, count: int) -> list[str]:
    alphabet = list("abcxyz0129 _-é漢字🙂")
    return ["".join(rng.choice(alphabet, size=rng.integers(0, 60)).tolist()) for _ in range(count)]


@pytest.mark.parametrize("n", [1, 3, 32])
def test_vectorised_matches_scalar_strings(n):
    hp = HashPartitioner(n)
    keys = _strings(np.random.default_rng(n), 1500)
    expected = np.array([hp.partition_for_key(k) for k in keys])
    np.testing.assert_array_equal(hp.partitions_for_keys(keys), expected)
    np.testing.assert_array_equal(hp.partitions_for_keys(np.array(keys)), expected)
    np.testing.assert_array_equal(hp.partitions_for_keys(np.array(keys, dtype=object)), expected)
    np.testing.assert_array_equal(hp.partitions_for_keys(pd.Series(keys)), expected)
    np.testing.assert_array_equal(hp.partitions_for_keys(pd.Index(keys)), expected)
    np.testing.assert_array_equal(hp.partitions_for_keys(pd.Series(keys, dtype=object)), expected)
    np.testing.assert_array_equal(hp.partitions_for_keys(pa.array(keys)), expected)
    np.testing.assert_array_equal(hp.partitions_for_keys(pa.array(keys).slice(7)), expected[7:])
    chunked = pa.chunked_array([keys[:500], keys[500:]], type=pa.string())
    np.testing.assert_array_equal(hp.partitions_for_keys(chunked), expected)
    np.testing.assert_array_equal(
        hp.hash_keys(keys), np.array([xxh64_ref(k.encode()) for k in keys], dtype=np.uint64)
    )
    with dask.config.set({"oxigdal.kernels.parallel-min-elements": 1}):
        np.testing.assert_array_equal(hp.partitions_for_keys(keys), expected)


def test_vectorised_bytes():
    hp = HashPartitioner(5)
    rng = np.random.default_rng(9)
    keys = [bytes(rng.integers(0, 256, rng.integers(0, 70)).astype(np.uint8)) for _ in range(500)]
    expected = [hp.partition_for_key(k) for k in keys]
    np.testing.assert_array_equal(hp.partitions_for_keys(keys), expected)
    np.testing.assert_array_equal(hp.partitions_for_keys(pa.array(keys)), expected)
    np.testing.assert_array_equal(hp.partitions_for_keys([bytearray(k) for k in keys]), expected)
    plain = [b"abc", b"", b"xyz" * 20]  # numpy "S" arrays drop trailing NULs: avoid them
    np.testing.assert_array_equal(
        hp.partitions_for_keys(np.array(plain)), [hp.partition_for_key(k) for k in plain]
    )


def test_vectorised_edge_cases():
    hp = HashPartitioner(4)
    for empty in (
        [],
        np.array([], dtype=np.int64),
        np.array([], dtype=object),
        pa.array([], pa.string()),
    ):
        out = hp.partitions_for_keys(empty)
        assert out.dtype == np.int64 and out.shape == (0,)
    assert hp.partitions_for_keys([""]).tolist() == [hp.partition_for_key("")]
    assert hp.partitions_for_keys([np.bool_(True), 3]).tolist() == [
        hp.partition_for_key(1),
        hp.partition_for_key(3),
    ]
    assert hp.partitions_for_keys(np.array([True, False])).tolist() == [
        hp.partition_for_key(1),
        hp.partition_for_key(0),
    ]
    np.testing.assert_array_equal(HashPartitioner(1).partitions_for_keys(["a", "b"]), [0, 0])


def test_vectorised_errors():
    hp = HashPartitioner(4)
    with pytest.raises(TypeError, match="one kind"):
        hp.partitions_for_keys(["a", 1])
    with pytest.raises(TypeError, match="mix ints with values of type str"):
        hp.partitions_for_keys([1, "a"])
    with pytest.raises(ValueError, match="missing"):
        hp.partitions_for_keys(["a", None])
    with pytest.raises(ValueError, match="1 missing"):
        hp.partitions_for_keys([1, None, 2])
    with pytest.raises(ValueError, match="all missing"):
        hp.partitions_for_keys([None, None])
    with pytest.raises(ValueError, match="missing"):
        hp.partitions_for_keys(pd.Series(["a", None], dtype="string"))
    with pytest.raises(ValueError, match="missing"):
        hp.partitions_for_keys(pd.array([1, None], dtype="Int64"))
    with pytest.raises(TypeError, match="float64"):
        hp.partitions_for_keys(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="float"):
        hp.partitions_for_keys([1.5, 2.5])
    with pytest.raises(ValueError, match="outside the int64 range"):
        hp.partitions_for_keys([2**64])
    with pytest.raises(ValueError, match="outside the int64 range"):
        hp.partitions_for_keys(np.array([2**63], dtype=np.uint64))
    with pytest.raises(TypeError, match="Arrow type double"):
        hp.partitions_for_keys(pa.array([1.5]))


def test_partitions_are_spread():
    hp = HashPartitioner(8)
    counts = np.bincount(hp.partitions_for_keys(np.arange(80_000)), minlength=8)
    assert counts.min() > 9000 and counts.max() < 11000
    counts = np.bincount(hp.partitions_for_keys([f"key-{i}" for i in range(8000)]), minlength=8)
    assert counts.min() > 850 and counts.max() < 1150


def test_n_validated():
    with pytest.raises(ValueError, match="n must be between 1 and 4294967296; got 0"):
        HashPartitioner(0)
    with pytest.raises(ValueError, match="got 4294967297"):
        HashPartitioner(2**32 + 1)
    with pytest.raises(TypeError, match="n must be an int"):
        HashPartitioner(2.0)


_CHILD = """
import json, sys
from dask_oxigdal.partitioning import HashPartitioner
hp = HashPartitioner(97)
keys = json.loads(sys.argv[1])
print(json.dumps({
    "scalar": [hp.partition_for_key(k) for k in keys["str"] + keys["int"]],
    "str": hp.partitions_for_keys(keys["str"]).tolist(),
    "int": hp.partitions_for_keys(keys["int"]).tolist(),
    "hash": [hp.hash_key(k) for k in keys["str"]],
}))
"""


def test_stable_across_processes():
    keys = {"str": ["alpha", "beta", "", "tile/3/4", "é漢"] * 3, "int": [0, 1, -1, 2**62, -(2**63)]}
    hp = HashPartitioner(97)
    expected = {
        "scalar": [hp.partition_for_key(k) for k in keys["str"] + keys["int"]],
        "str": hp.partitions_for_keys(keys["str"]).tolist(),
        "int": hp.partitions_for_keys(keys["int"]).tolist(),
        "hash": [hp.hash_key(k) for k in keys["str"]],
    }
    for seed in ("12345",):  # the parent runs with another (usually random) seed
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(keys)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        assert json.loads(out.stdout) == expected
    # and fixed forever: a change of algorithm would move every key
    assert expected["hash"][0] == xxh64_ref(b"alpha")


# ---------------------------------------------------------------- ranges

finite = st.floats(-1e9, 1e9, allow_nan=False)


@SETTINGS
@given(
    st.lists(finite, max_size=20).map(sorted),
    st.lists(st.one_of(finite, st.just(float("nan")), st.just(float("inf"))), max_size=60),
)
def test_range_matches_numpy(boundaries, values):
    rp = RangePartitioner(boundaries)
    b = np.asarray(boundaries, dtype=np.float64)
    v = np.asarray(values + boundaries, dtype=np.float64)  # values on every boundary too
    ids = rp.partitions_for_values(v)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, np.searchsorted(b, v, side="right"))
    for value, i in zip(v, ids, strict=True):
        if np.isnan(value):
            assert i == len(b)
            continue
        assert i == 0 or b[i - 1] <= value
        assert i == len(b) or value < b[i]
        assert rp.partition_for_value(float(value)) == i


@SETTINGS
@given(
    st.lists(st.integers(-(2**40), 2**40), max_size=15).map(sorted),
    st.lists(st.integers(-(2**40), 2**40), max_size=40),
)
def test_range_integers(boundaries, values):
    rp = RangePartitioner(np.asarray(boundaries, dtype=np.int64))
    v = np.asarray(values + boundaries, dtype=np.int64)
    expected = np.searchsorted(np.asarray(boundaries, dtype=np.int64), v, side="right")
    np.testing.assert_array_equal(rp.partitions_for_values(v), expected)
    np.testing.assert_array_equal(rp.partitions_for_values(v.astype(np.float64)), expected)


def test_range_documented_rule():
    rp = RangePartitioner([10, 20, 20, 30])
    assert rp.npartitions == 5
    got = rp.partitions_for_values([-np.inf, 9.999, 10, 19, 20, 29.5, 30, 1e300, np.inf, np.nan])
    assert got.tolist() == [0, 0, 1, 1, 3, 3, 4, 4, 4, 4]  # partition 2 ([20, 20)) is empty
    assert rp.partition_for_value(np.nan) == 4
    assert rp.partition_for_value(np.int8(10)) == 1


def test_range_empty_and_single():
    assert RangePartitioner([]).npartitions == 1
    np.testing.assert_array_equal(RangePartitioner([]).partitions_for_values([1.0, np.nan]), [0, 0])
    rp = RangePartitioner([0.0])
    assert rp.partitions_for_values([]).shape == (0,)
    np.testing.assert_array_equal(rp.partitions_for_values(np.zeros(5)), 1)


def test_range_datetimes():
    b = np.array(["2024-01-01", "2024-06-01"], dtype="datetime64[D]")
    rp = RangePartitioner(b)
    v = np.array(
        ["2023-12-31T23", "2024-01-01T00", "2024-06-01", "NaT", "2030-01-01"], dtype="datetime64[h]"
    )
    np.testing.assert_array_equal(rp.partitions_for_values(v), [0, 1, 2, 2, 2])
    with pytest.raises(TypeError, match="cannot be compared"):
        rp.partitions_for_values([1.0])


def test_range_parallel_matches_serial():
    rng = np.random.default_rng(4)
    b = np.sort(rng.normal(size=33))
    v = rng.normal(size=200_000)
    v[::97] = np.nan
    expected = np.searchsorted(b, v, side="right")
    table = ktiles.bin_table(b, ktiles.BUCKETS)
    for kernel in (ktiles.search_right, ktiles.search_right_parallel):
        out = np.empty(v.shape[0], dtype=np.int64)
        kernel(b, *table, v, out)
        np.testing.assert_array_equal(out, expected)
    with dask.config.set({"oxigdal.kernels.parallel-min-elements": 1}):
        np.testing.assert_array_equal(RangePartitioner(b).partitions_for_values(v), expected)


def test_range_validation():
    with pytest.raises(ValueError, match=r"boundaries\[1\] = 5.0 > boundaries\[2\] = 3.0"):
        RangePartitioner([1.0, 5.0, 3.0])
    with pytest.raises(ValueError, match=r"finite; got \[nan\] at positions \[1\]"):
        RangePartitioner([1.0, np.nan, 3.0])
    with pytest.raises(ValueError, match="finite; got \\[inf\\]"):
        RangePartitioner([1.0, np.inf])
    with pytest.raises(ValueError, match="finite"):
        RangePartitioner(np.array(["NaT", "2024-01-01"], dtype="datetime64[D]"))
    with pytest.raises(ValueError, match="1-D"):
        RangePartitioner([[1, 2]])
    with pytest.raises(TypeError, match="dtype <U1"):
        RangePartitioner(["a", "b"])
    rp = RangePartitioner([1, 2])
    with pytest.raises(TypeError, match="str"):
        rp.partition_for_value("1")
    with pytest.raises(TypeError, match="NoneType"):
        rp.partition_for_value(None)
    with pytest.raises(TypeError, match="values must be numbers"):
        rp.partitions_for_values(["a"])


@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False),
            st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1e308, -1e308, 1.0]),
        ),
        max_size=12,
    ).map(sorted),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=30),
    st.sampled_from([1, 2, 3, 16, ktiles.BUCKETS]),
)
def test_bucket_search_extreme_floats(boundaries, values, nbuckets):
    """Any finite boundaries (tiny, huge, equal, signed zeros) and any values."""
    b = np.asarray(boundaries, dtype=np.float64)
    v = np.asarray(values + boundaries, dtype=np.float64)
    out = np.empty(v.shape[0], dtype=np.int64)
    ktiles.search_right(b, *ktiles.bin_table(b, nbuckets), v, out)
    np.testing.assert_array_equal(out, np.searchsorted(b, v, side="right"))


@SETTINGS
@given(
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=12).map(sorted),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=30),
)
def test_bucket_search_extreme_int64(boundaries, values):
    """int64 comparisons stay exact although buckets are computed in float64."""
    b = np.asarray(boundaries, dtype=np.int64)
    v = np.asarray(
        values + boundaries + [x + 1 for x in boundaries if x < 2**63 - 1], dtype=np.int64
    )
    out = np.empty(v.shape[0], dtype=np.int64)
    ktiles.search_right(b, *ktiles.bin_table(b, ktiles.BUCKETS), v, out)
    np.testing.assert_array_equal(out, np.searchsorted(b, v, side="right"))
