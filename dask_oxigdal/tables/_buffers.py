"""Numpy views of Arrow buffers and the kernel look-up shared by the table shuffle modules.

Private to :mod:`dask_oxigdal.tables`: every array handed to a kernel is read-only
(:func:`_readonly`), so numba compiles one signature per dtype whatever the source.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dask_oxigdal.kernels import hashing as _hk
from dask_oxigdal.kernels import shuffle as _sk

SUPPORTED_KEY_TYPES = (
    "signed/unsigned integers, floats, booleans, strings and binary (string, large_string, "
    "binary, large_binary, string_view, pandas str/string/object of str), dictionary or "
    "categorical of those, timestamps (tz-aware too) and durations"
)


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


_KERNELS: dict[tuple[str, bool], Any] = {}


def _k(name: str, threads: int):
    """The serial kernel ``name`` or its ``prange`` variant."""
    key = (name, threads > 1)
    kernel = _KERNELS.get(key)
    if kernel is None:
        mod = _sk if hasattr(_sk, name) else _hk
        kernel = _KERNELS[key] = getattr(mod, f"{name}_parallel" if key[1] else name)
    return kernel


def _plain_strings(arr: pa.Array) -> pa.Array:
    if pa.types.is_string_view(arr.type):
        return pc.cast(arr, pa.large_string())
    if pa.types.is_binary_view(arr.type):
        return pc.cast(arr, pa.large_binary())
    return arr
