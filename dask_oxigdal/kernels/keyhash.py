"""xxHash64 (seed 0) kernels for partitioning keys (private).

The public contract lives in :class:`dask_oxigdal.partitioning.HashPartitioner`.

* :func:`xxh64_varlen` hashes variable-length byte strings given as one data
  buffer plus ``n + 1`` int64 offsets (the Arrow ``large_binary`` layout).
* :func:`xxh64_int64` hashes integers as their 8-byte little-endian two's
  complement encoding; it is the length-8 special case of the same algorithm,
  so ``xxh64_int64(v) == xxh64_varlen(v.to_bytes(8, "little", signed=True))``.

Both take ``n``: 0 stores the 64-bit hashes, ``1 <= n <= 2**32`` stores the
partition ``((h >> 32) * n) >> 32`` instead (see :func:`_reduce`).

The algorithm is XXH64 by Yann Collet (BSD-2-Clause specification,
https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md). All
arithmetic is uint64 with wrap-around; every constant is typed uint64 because
numba would otherwise promote ``uint64 op int64`` to float64.
"""

from __future__ import annotations

import numba
import numpy as np

P1 = np.uint64(0x9E3779B185EBCA87)
P2 = np.uint64(0xC2B2AE3D27D4EB4F)
P3 = np.uint64(0x165667B19E3779F9)
P4 = np.uint64(0x85EBCA77C2B2AE63)
P5 = np.uint64(0x27D4EB2F165667C5)
_LEN8 = np.uint64(8)
_S1 = np.uint64(1)
_S7 = np.uint64(7)
_S11 = np.uint64(11)
_S12 = np.uint64(12)
_S18 = np.uint64(18)
_S23 = np.uint64(23)
_S27 = np.uint64(27)
_S29 = np.uint64(29)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_S33 = np.uint64(33)
_S64 = np.uint64(64)
_ZERO = np.uint64(0)


@numba.njit(cache=True, nogil=True, inline="always")
def _rotl(x, r):
    return (x << r) | (x >> (_S64 - r))


@numba.njit(cache=True, nogil=True, inline="always")
def _round(acc, lane):
    acc = acc + lane * P2
    acc = _rotl(acc, _S31)
    return acc * P1


@numba.njit(cache=True, nogil=True, inline="always")
def _merge_round(acc, val):
    acc = acc ^ _round(_ZERO, val)
    return acc * P1 + P4


@numba.njit(cache=True, nogil=True, inline="always")
def _avalanche(h):
    h = h ^ (h >> _S33)
    h = h * P2
    h = h ^ (h >> _S29)
    h = h * P3
    return h ^ (h >> _S32)


@numba.njit(cache=True, nogil=True, inline="always")
def _reduce(h, n):
    """Map a 64-bit hash onto ``0 .. n - 1`` (``n <= 2**32``): ``((h >> 32) * n) >> 32``.

    Multiply-shift range reduction (Lemire, 2019): as uniform as ``h % n`` and
    without a 64-bit division per key. ``n == 0`` returns the hash itself.
    """
    if n == 0:
        return h
    return ((h >> _S32) * np.uint64(n)) >> _S32


@numba.njit(cache=True, nogil=True, inline="always")
def _xxh64_int(v):
    """XXH64 (seed 0) of the 8-byte little-endian encoding of the int64 ``v``."""
    h = P5 + _LEN8
    h = h ^ _round(_ZERO, np.uint64(v))
    h = _rotl(h, _S27) * P1 + P4
    return _avalanche(h)


# Keys per parallel chunk. The loops live in one ``*_range`` function per kernel,
# called once (serial) or once per chunk (parallel): numba increfs the array
# arguments of every helper call, so the per-key code takes no array arguments
# except in these range functions.
CHUNK = 8192


@numba.njit(cache=True, nogil=True)
def _varlen_range(data, offsets, n, out, start, stop):
    """XXH64 of ``data[offsets[i]:offsets[i + 1]]`` for ``i`` in ``[start, stop)``,
    reduced onto ``0 .. n - 1`` (or the raw hash when ``n == 0``), into ``out`` (uint64)."""
    for i in range(start, stop):
        p = offsets[i]
        end = offsets[i + 1]
        length = end - p
        if length >= 32:
            v1 = P1 + P2
            v2 = P2
            v3 = _ZERO
            v4 = _ZERO - P1
            limit = end - 32
            while p <= limit:
                w1 = _ZERO
                w2 = _ZERO
                w3 = _ZERO
                w4 = _ZERO
                for k in range(8):
                    sh = np.uint64(8 * k)
                    w1 |= np.uint64(data[p + k]) << sh
                    w2 |= np.uint64(data[p + 8 + k]) << sh
                    w3 |= np.uint64(data[p + 16 + k]) << sh
                    w4 |= np.uint64(data[p + 24 + k]) << sh
                v1 = _round(v1, w1)
                v2 = _round(v2, w2)
                v3 = _round(v3, w3)
                v4 = _round(v4, w4)
                p += 32
            h = _rotl(v1, _S1) + _rotl(v2, _S7) + _rotl(v3, _S12) + _rotl(v4, _S18)
            h = _merge_round(h, v1)
            h = _merge_round(h, v2)
            h = _merge_round(h, v3)
            h = _merge_round(h, v4)
        else:
            h = P5
        h = h + np.uint64(length)
        while p + 8 <= end:
            w = _ZERO
            for k in range(8):
                w |= np.uint64(data[p + k]) << np.uint64(8 * k)
            h = h ^ _round(_ZERO, w)
            h = _rotl(h, _S27) * P1 + P4
            p += 8
        if p + 4 <= end:
            w = _ZERO
            for k in range(4):
                w |= np.uint64(data[p + k]) << np.uint64(8 * k)
            h = h ^ (w * P1)
            h = _rotl(h, _S23) * P2 + P3
            p += 4
        while p < end:
            h = h ^ (np.uint64(data[p]) * P5)
            h = _rotl(h, _S11) * P1
            p += 1
        out[i] = _reduce(_avalanche(h), n)


@numba.njit(cache=True, nogil=True)
def _int64_range(values, n, out, start, stop):
    for i in range(start, stop):
        out[i] = _reduce(_xxh64_int(values[i]), n)


@numba.njit(cache=True, nogil=True)
def xxh64_varlen(data, offsets, n, out):
    """``out[i] = reduce(XXH64(data[offsets[i]:offsets[i + 1]]), n)`` (uint64).

    ``n == 0`` stores the hashes themselves; otherwise the partition in ``0 .. n - 1``.
    """
    _varlen_range(data, offsets, n, out, 0, offsets.shape[0] - 1)


@numba.njit(cache=True, nogil=True, parallel=True)
def xxh64_varlen_parallel(data, offsets, n, out):
    """``prange`` variant of :func:`xxh64_varlen`."""
    m = offsets.shape[0] - 1
    for c in numba.prange((m + CHUNK - 1) // CHUNK):
        _varlen_range(data, offsets, n, out, c * CHUNK, min(m, (c + 1) * CHUNK))


@numba.njit(cache=True, nogil=True)
def xxh64_int64(values, n, out):
    """``out[i] = reduce(XXH64(int64 values[i] as 8 bytes little-endian), n)`` (uint64).

    ``n == 0`` stores the hashes themselves; otherwise the partition in ``0 .. n - 1``.
    """
    _int64_range(values, n, out, 0, values.shape[0])


@numba.njit(cache=True, nogil=True, parallel=True)
def xxh64_int64_parallel(values, n, out):
    """``prange`` variant of :func:`xxh64_int64`."""
    m = values.shape[0]
    for c in numba.prange((m + CHUNK - 1) // CHUNK):
        _int64_range(values, n, out, c * CHUNK, min(m, (c + 1) * CHUNK))
