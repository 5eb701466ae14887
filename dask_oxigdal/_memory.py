"""Large, short-lived output arrays from Arrow's memory pool.

``np.empty`` of a large array maps fresh pages from the OS on every call, and
the first write to each page faults and zeroes it: for a 256 MB output that
costs about as much as the kernel that fills it. Arrow's default memory pool
(mimalloc or jemalloc) keeps recently freed pages and hands them out again, so
kernels that return large arrays (spectral indices, shuffles) allocate here.
The pool gives memory back to the OS after its allocator's short decay delay;
nothing is held beyond that.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

#: Arrays smaller than this come from ``np.empty``.
POOL_MIN_BYTES = 1 << 16


def pool_empty(shape: int | tuple[int, ...], dtype: Any, order: str = "C") -> np.ndarray:
    """``np.empty`` backed by Arrow's default memory pool for large sizes.

    Parameters
    ----------
    shape : int or tuple of int
        Shape of the array.
    dtype : numpy dtype-like
        Element type.
    order : {"C", "F"}
        Memory layout.

    Returns
    -------
    numpy.ndarray
        A writable, uninitialised array; its ``base`` is a ``pyarrow.Buffer``
        when it is at least ``POOL_MIN_BYTES`` large.
    """
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', got {order!r}")
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
    count = math.prod(shape)
    if count * dtype.itemsize < POOL_MIN_BYTES:
        return np.empty(shape, dtype, order=order)
    flat = np.frombuffer(pa.allocate_buffer(count * dtype.itemsize), dtype, count=count)
    if order == "C":
        return flat.reshape(shape)
    return flat.reshape(shape[::-1]).T
