"""Key-based partitioners: :class:`HashPartitioner` and :class:`RangePartitioner`."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from dask_oxigdal.kernels import keyhash as _kh
from dask_oxigdal.kernels import tiles as _kt
from dask_oxigdal.kernels._parallel import parallel_launch
from dask_oxigdal.partitioning._inputs import as_count

__all__ = ["HashPartitioner", "RangePartitioner"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_VALID_KEYS = "bytes (or bytearray / memoryview), str, int"


# ====================================================================== hashing


def _key_bytes(key: Any) -> bytes:
    """The byte encoding of one key (see :class:`HashPartitioner`)."""
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    if isinstance(key, str):
        try:
            return key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"str key {key!r} cannot be encoded as UTF-8: {exc}") from None
    if isinstance(key, numbers.Integral):
        v = int(key)
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise ValueError(f"int key {v} is outside the int64 range [{_INT64_MIN}, {_INT64_MAX}]")
        return v.to_bytes(8, "little", signed=True)
    raise TypeError(
        f"key of type {type(key).__name__} cannot be hashed; valid types: {_VALID_KEYS}"
    )


def _int64_keys(values: Any) -> np.ndarray:
    """Integer keys as contiguous int64, rejecting values outside the int64 range."""
    arr = np.asarray(values)
    if arr.dtype.kind == "b":
        return np.ascontiguousarray(arr, dtype=np.int64)
    if arr.dtype == np.uint64 and arr.size and arr.max() > _INT64_MAX:
        raise ValueError(
            f"int key {int(arr.max())} is outside the int64 range [{_INT64_MIN}, {_INT64_MAX}]"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def _object_keys(arr: np.ndarray) -> tuple[str, Any]:
    """Classify an object array of keys: ("int", int64 array) or ("varlen", arrow array)."""
    import pyarrow as pa

    first = next((v for v in arr.flat if v is not None), None)
    if isinstance(first, numbers.Integral | np.bool_):
        missing = sum(v is None for v in arr.flat)
        if missing:
            raise ValueError(f"keys contain {missing} missing values (None); cannot hash them")
        bad = next((v for v in arr.flat if not isinstance(v, numbers.Integral | np.bool_)), None)
        if bad is not None:
            raise TypeError(
                "keys mix ints with values of type "
                f"{type(bad).__name__}; all keys of one call must be of one kind: {_VALID_KEYS}"
            )
        try:
            return "int", np.array([int(v) for v in arr.flat], dtype=np.int64)
        except OverflowError:
            big = max((int(v) for v in arr.flat), key=abs)
            raise ValueError(
                f"int key {big} is outside the int64 range [{_INT64_MIN}, {_INT64_MAX}]"
            ) from None
    if isinstance(first, str):
        typ = pa.large_string()
    elif isinstance(first, bytes | bytearray | memoryview):
        typ = pa.large_binary()
        arr = np.array(
            [bytes(v) if isinstance(v, bytearray | memoryview) else v for v in arr.flat],
            dtype=object,
        )
    elif first is None:
        raise ValueError("keys are all missing (None); missing keys cannot be hashed")
    else:
        raise TypeError(
            f"key of type {type(first).__name__} cannot be hashed; valid types: {_VALID_KEYS}"
        )
    try:
        return "varlen", pa.array(arr.ravel(), type=typ, from_pandas=False)
    except (pa.ArrowTypeError, pa.ArrowInvalid, TypeError) as exc:
        raise TypeError(
            f"keys must all be of one kind ({_VALID_KEYS}); the first is "
            f"{type(first).__name__}: {exc}"
        ) from None


def _classify_keys(keys: Any) -> tuple[str, Any]:
    """("int", int64 ndarray) or ("varlen", pyarrow large_string/large_binary array)."""
    import pyarrow as pa

    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if isinstance(keys, pa.Array):
        t = keys.type
        if pa.types.is_integer(t) or pa.types.is_boolean(t):
            if keys.null_count:
                raise ValueError(f"keys contain {keys.null_count} missing values; cannot hash them")
            return "int", _int64_keys(keys.to_numpy(zero_copy_only=False))
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return "varlen", keys.cast(pa.large_string())
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
            return "varlen", keys.cast(pa.large_binary())
        if pa.types.is_fixed_size_binary(t):
            return "varlen", keys.cast(pa.large_binary())
        raise TypeError(f"keys of Arrow type {t} cannot be hashed; valid types: {_VALID_KEYS}")
    if isinstance(keys, list | tuple):
        arr = np.empty(len(keys), dtype=object)
        arr[:] = keys
    elif hasattr(keys, "dtype") and not isinstance(keys, np.ndarray):  # pandas Series / Index
        import pandas as pd

        dtype = keys.dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "iub":
            return "int", _int64_keys(np.asarray(keys))
        if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            series = pd.Series(keys)
            if series.isna().any():
                raise ValueError(
                    f"keys contain {int(series.isna().sum())} missing values; cannot hash them"
                )
            return "int", _int64_keys(series.to_numpy())
        if pd.api.types.is_string_dtype(dtype) and not (
            isinstance(dtype, np.dtype) and dtype.kind == "O"
        ):
            return "varlen", pa.array(keys, type=pa.large_string(), from_pandas=True)
        arr = np.asarray(keys, dtype=object)
    else:
        arr = np.asarray(keys)
    kind = arr.dtype.kind
    if kind in "iub":
        return "int", _int64_keys(arr)
    if kind == "U":
        return "varlen", pa.array(arr.ravel(), type=pa.large_string())
    if kind == "S":
        return "varlen", pa.array(arr.ravel(), type=pa.large_binary())
    if kind == "O":
        if arr.size == 0:
            return "int", np.empty(0, dtype=np.int64)
        return _object_keys(arr)
    raise TypeError(f"keys of dtype {arr.dtype} cannot be hashed; valid types: {_VALID_KEYS}")


def _varlen_buffers(arr: Any) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8, offsets int64 of length n + 1) of a large_string / large_binary array."""
    if arr.null_count:
        first = int(np.flatnonzero(np.asarray(arr.is_null()))[0])
        raise ValueError(
            f"keys contain {arr.null_count} missing values (first at position {first}); "
            "missing keys cannot be hashed"
        )
    n = len(arr)
    _, offsets_buf, data_buf = arr.buffers()
    if n == 0 or offsets_buf is None:
        return np.empty(0, dtype=np.uint8), np.zeros(n + 1, dtype=np.int64)
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8)
        if data_buf is not None
        else np.empty(0, dtype=np.uint8)
    )
    return data, offsets


class HashPartitioner:
    """Assign keys to ``n`` partitions by a stable 64-bit hash.

    ``h = xxh64(encode(key), seed=0)`` and ``partition = ((h >> 32) * n) >> 32``.
    Unlike Python's ``hash`` (salted per process for str and bytes), the
    result is the same in every process, on every machine and in every
    release of this package.

    Parameters
    ----------
    n : int
        Number of partitions, between 1 and ``2**32``.

    Notes
    -----
    Key encodings (the bytes that are hashed):

    * ``bytes`` / ``bytearray`` / ``memoryview``: the bytes themselves;
    * ``str``: UTF-8;
    * ``int`` (including numpy integers and ``bool``, as 0 / 1): 8 bytes,
      little-endian two's complement of the value, which must lie in the int64
      range (``ValueError`` otherwise). So ``1`` and ``b"\\x01" + 7 * b"\\x00"``
      land in the same partition, and ``1`` and ``"1"`` do not.

    Floats, None and other types raise ``TypeError``; missing values in arrays
    raise ``ValueError``. The hash is XXH64 (seed 0) as specified at
    https://github.com/Cyan4973/xxHash; :meth:`hash_key` exposes it.

    The hash is mapped onto the partitions by multiply-shift range reduction of
    its high 32 bits rather than ``h % n``: it is as uniform, and a 64-bit
    modulo per key would cost more than the hash itself. Partition ``p`` holds
    the keys whose ``h >> 32`` lies in ``[ceil(p * 2**32 / n), ceil((p + 1) * 2**32 / n))``;
    for ``n`` a power of two that is the top ``log2(n)`` bits of the hash.

    Examples
    --------
    >>> hp = HashPartitioner(8)
    >>> hp.hash_key(b"")  # the XXH64 test vector
    17241709254077376921
    >>> hp.partitions_for_keys(["a", "b", "a"]).tolist() == [hp.partition_for_key(k) for k in "aba"]
    True
    """

    def __init__(self, n: int) -> None:
        self.n = as_count("n", n, maximum=2**32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n})"

    @property
    def npartitions(self) -> int:
        """Number of partitions."""
        return self.n

    @staticmethod
    def hash_key(key: Any) -> int:
        """The 64-bit hash of one key.

        Parameters
        ----------
        key : bytes, str or int

        Returns
        -------
        int
            ``0 <= h < 2**64``.
        """
        return _hash_one(key, 0)

    def partition_for_key(self, key: Any) -> int:
        """The partition of one key.

        Parameters
        ----------
        key : bytes, str or int

        Returns
        -------
        int
            ``0 <= partition < n``.

        Raises
        ------
        TypeError
            If the key is not bytes, str or int.
        ValueError
            If an int key is outside the int64 range, or a str is not valid UTF-8.
        """
        return _hash_one(key, self.n)

    @staticmethod
    def hash_keys(keys: Any) -> np.ndarray:
        """The 64-bit hashes of many keys of one kind.

        Parameters
        ----------
        keys : array_like
            A numpy array (integer, bool, ``U``, ``S`` or object dtype), a list,
            a pandas Series / Index, or a pyarrow (Chunked)Array of integers,
            strings or binary.

        Returns
        -------
        numpy.ndarray of uint64
        """
        return _hash_many(keys, 0)

    def partitions_for_keys(self, keys: Any) -> np.ndarray:
        """The partition of many keys of one kind (vectorised :meth:`partition_for_key`).

        Parameters
        ----------
        keys : array_like
            As in :meth:`hash_keys`.

        Returns
        -------
        numpy.ndarray of int64
            One partition per key, ``0 <= p < n``.

        Raises
        ------
        TypeError
            For unsupported key types or a mix of kinds (ints with strings).
        ValueError
            For missing values or ints outside the int64 range.
        """
        return _hash_many(keys, self.n).view(np.int64)


def _hash_one(key: Any, n: int) -> int:
    b = _key_bytes(key)
    out = np.empty(1, dtype=np.uint64)
    _kh.xxh64_varlen(np.frombuffer(b, dtype=np.uint8), np.array([0, len(b)]), n, out)
    return int(out[0])


def _hash_many(keys: Any, n: int) -> np.ndarray:
    """uint64 hashes (``n == 0``) or partitions of ``keys``."""
    kind, values = _classify_keys(keys)
    if kind == "int":
        out = np.empty(values.shape[0], dtype=np.uint64)
        with parallel_launch(values.shape[0]) as threads:
            kernel = _kh.xxh64_int64 if threads == 1 else _kh.xxh64_int64_parallel
            kernel(values, n, out)
        return out
    data, offsets = _varlen_buffers(values)
    out = np.empty(offsets.shape[0] - 1, dtype=np.uint64)
    with parallel_launch(out.shape[0]) as threads:
        kernel = _kh.xxh64_varlen if threads == 1 else _kh.xxh64_varlen_parallel
        kernel(data, offsets, n, out)
    return out


# ====================================================================== ranges


def _numeric_array(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iufmM":
        raise TypeError(
            f"{what} must be numbers (int or float), datetime64 or timedelta64; "
            f"got dtype {arr.dtype}"
        )
    return arr


class RangePartitioner:
    """Assign values to the ranges between sorted boundaries.

    With ``b = boundaries`` there are ``len(b) + 1`` partitions: partition ``i``
    holds ``b[i - 1] <= v < b[i]``; partition 0 holds ``v < b[0]`` and partition
    ``len(b)`` holds ``v >= b[-1]``. This is ``numpy.searchsorted(b, v,
    side="right")`` and the rule of :func:`dask_oxigdal.tables.range_partition`.

    Parameters
    ----------
    boundaries : array_like
        Non-decreasing, finite numbers (or datetime64 / timedelta64 without
        NaT). Repeated boundaries are allowed; the partition between two equal
        boundaries is always empty. An empty sequence gives one partition.

    Raises
    ------
    TypeError
        If the boundaries are not numeric / datetime / timedelta.
    ValueError
        If they are not 1-D, contain NaN, infinity or NaT, or are not sorted.

    Notes
    -----
    NaN values (and NaT) go to the last partition, ``len(boundaries)``, as in
    ``numpy.searchsorted`` (NaN sorts last). Values and boundaries are compared
    in their common numpy type (``numpy.result_type``), so int64 boundaries
    above 2**53 compared with float values are rounded like in numpy.

    Examples
    --------
    >>> rp = RangePartitioner([10, 20])
    >>> rp.partitions_for_values([5, 10, 19.5, 20, float("nan")]).tolist()
    [0, 1, 1, 2, 2]
    """

    def __init__(self, boundaries: Any) -> None:
        b = _numeric_array(boundaries, "boundaries")
        if b.ndim != 1:
            raise ValueError(f"boundaries must be 1-D; got shape {b.shape}")
        if b.dtype.kind in "mM":
            bad = np.isnat(b)
        elif b.dtype.kind == "f":
            bad = ~np.isfinite(b)
        else:
            bad = np.zeros(b.shape, dtype=bool)
        if bad.any():
            raise ValueError(
                f"boundaries must be finite; got {b[bad][:5].tolist()} "
                f"at positions {np.flatnonzero(bad)[:5].tolist()}"
            )
        if b.shape[0] > 1:
            down = np.flatnonzero(b[1:] < b[:-1])
            if down.size:
                i = int(down[0])
                raise ValueError(
                    "boundaries must be sorted in non-decreasing order; "
                    f"got boundaries[{i}] = {b[i]} > boundaries[{i + 1}] = {b[i + 1]}"
                )
        b = b.copy()
        b.flags.writeable = False
        self.boundaries = b
        self._tables: dict[np.dtype, tuple] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(boundaries={self.boundaries.tolist()!r})"

    @property
    def npartitions(self) -> int:
        """Number of partitions, ``len(boundaries) + 1``."""
        return int(self.boundaries.shape[0]) + 1

    def _table_for(self, dtype: np.dtype) -> tuple[np.ndarray, tuple]:
        """Boundaries in ``dtype`` (int64 ticks for dates) and their bucket table, cached."""
        cached = self._tables.get(dtype)
        if cached is None:
            bc = np.ascontiguousarray(self.boundaries, dtype=dtype)
            if dtype.kind in "mM":
                bc = bc.view(np.int64)
            cached = (bc, _kt.bin_table(bc, _kt.BUCKETS))
            self._tables[dtype] = cached
        return cached

    def partition_for_value(self, value: Any) -> int:
        """The partition of one value.

        Parameters
        ----------
        value : int, float, numpy scalar, datetime64 or timedelta64

        Returns
        -------
        int
            ``0 <= p <= len(boundaries)``; NaN gives ``len(boundaries)``.
        """
        if isinstance(value, str | bytes) or value is None:
            raise TypeError(
                f"value of type {type(value).__name__} cannot be range-partitioned; "
                "valid types: int, float, datetime64, timedelta64"
            )
        return int(self.partitions_for_values(np.asarray([value]))[0])

    def partitions_for_values(self, values: Any) -> np.ndarray:
        """The partition of many values (vectorised :meth:`partition_for_value`).

        Parameters
        ----------
        values : array_like
            Numbers, datetime64 or timedelta64 (of any shape; flattened).

        Returns
        -------
        numpy.ndarray of int64
            ``numpy.searchsorted(boundaries, values, side="right")``.
        """
        v = _numeric_array(values, "values").ravel()
        b = self.boundaries
        datelike = b.dtype.kind in "mM" or v.dtype.kind in "mM"
        if datelike and b.dtype.kind != v.dtype.kind:
            raise TypeError(
                f"values of dtype {v.dtype} cannot be compared with boundaries of dtype {b.dtype}"
            )
        common = np.result_type(b.dtype, v.dtype)
        vc = np.ascontiguousarray(v, dtype=common)
        nat = None
        if datelike:  # compare as int64 ticks; NaT sorts last like NaN
            nat = np.isnat(vc)
            vc = vc.view(np.int64)
        bc, table = self._table_for(common)
        out = np.empty(vc.shape[0], dtype=np.int64)
        with parallel_launch(vc.shape[0]) as threads:
            kernel = _kt.search_right if threads == 1 else _kt.search_right_parallel
            kernel(bc, *table, vc, out)
        if nat is not None and nat.any():
            out[nat] = b.shape[0]
        return out
