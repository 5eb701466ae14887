"""Partition ids of a key column: hash ids (Dask's) and range ids.

Private to :mod:`dask_oxigdal.tables`. :func:`_key_kind` classifies a key type,
:class:`_RangeBounds` converts boundaries into the key's comparison domain and
:class:`_KeyPids` runs the numba kernels chunk by chunk, sending null keys where
Dask sends them (hash) or to the last part (range).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dask_oxigdal._memory import pool_empty as _empty
from dask_oxigdal.kernels import hashing as _hk
from dask_oxigdal.tables._buffers import (
    SUPPORTED_KEY_TYPES,
    _bitmap,
    _k,
    _plain_strings,
    _readonly,
    _storage,
    _string_views,
    _unwrap_extension,
    _values,
)

if TYPE_CHECKING:
    from dask_oxigdal.tables._frames import _Key

_MASK64 = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1
_UNITS = ("s", "ms", "us", "ns")


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
