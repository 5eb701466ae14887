"""Numba hash kernels that reproduce Dask's hash partitioning (private).

Dask's ``DataFrame.shuffle(on=key, npartitions=n)`` sends a row to partition
``pandas.util.hash_pandas_object(frame_of_key, index=False) % n`` where numeric
keys were first cast to float64. For a one-column frame that hash is::

    u   = 64-bit pattern of the value (see below)
    u  ^= u >> 30; u *= 0xBF58476D1CE4E5B9
    u  ^= u >> 27; u *= 0x94D049BB133111EB
    u  ^= u >> 31                                # pandas' _hash_ndarray
    h   = ((0x345678 ^ u) * 1000003) + 97531     # combine_hash_arrays, one column
    part = h % n                                 # unsigned 64-bit arithmetic

* float64: the IEEE bits, with every NaN replaced by the bits of ``np.nan``
  (0x7FF8000000000000) and -0.0 by +0.0;
* datetime64 / timedelta64 (not cast by Dask): the int64 value as uint64
  (NaT is the int64 minimum);
* strings: SipHash-2-4 of the UTF-8 bytes with the 16-byte key
  ``"0123456789123456"`` (``pandas._libs.hashing.hash_object_array``);
* missing strings and missing categories are not mixed: ``u`` is
  ``0xFFFFFFFFFFFFFFFF`` before the combine step.

Kernels here write int32 partition ids. The modulo by ``n`` uses a precomputed
multiply-high reciprocal (Granlund and Montgomery, "Division by invariant integers
using multiplication", 1994, figure 4.1), which is exact for every uint64
numerator; see :func:`divisor_params` (a power-of-two ``n`` is a plain mask).
Each kernel has a serial form, a plain loop over whole arrays, and a
``*_parallel`` form that runs the serial one on ``prange`` slices of
:data:`SEGMENT` rows. Callers pass read-only inputs (one compiled signature
per dtype) and apply nulls afterwards with :func:`fill_null_pids`.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

__all__ = [
    "NULL_STRING_HASH",
    "combine_one",
    "divisor_params",
    "fill_null_pids",
    "hash_bits_pids",
    "hash_bits_pids_parallel",
    "hash_float_pids",
    "hash_float_pids_parallel",
    "hash_string_pids",
    "hash_string_pids_parallel",
    "mix64",
    "siphash24",
]

_JIT = {"cache": True, "nogil": True}

# Rows per prange task of the elementwise kernels.
SEGMENT = 8192

_NAN_BITS = np.uint64(0x7FF8000000000000)
_NEG_ZERO_BITS = np.uint64(0x8000000000000000)
_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SEED = np.uint64(0x345678)
_MULT = np.uint64(1000003)
_ADD = np.uint64(97531)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)

#: pandas' hash of a missing string or category: ``u`` before the combine step.
NULL_STRING_HASH = 0xFFFFFFFFFFFFFFFF

# SipHash key "0123456789123456", as two little-endian words.
_SIP_K0 = np.uint64(int.from_bytes(b"01234567", "little"))
_SIP_K1 = np.uint64(int.from_bytes(b"89123456", "little"))
_SIP_C0 = np.uint64(0x736F6D6570736575)
_SIP_C1 = np.uint64(0x646F72616E646F6D)
_SIP_C2 = np.uint64(0x6C7967656E657261)
_SIP_C3 = np.uint64(0x7465646279746573)
_FF = np.uint64(0xFF)


# --------------------------------------------------------------------------------------
# Intrinsics: float64 bit pattern and the high word of a 64x64-bit product.
# --------------------------------------------------------------------------------------
@intrinsic
def _f64_bits(typingctx, x):
    sig = types.uint64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def _mulhi(typingctx, a, b):
    sig = types.uint64(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        wide = ir.IntType(128)
        prod = builder.mul(builder.zext(args[0], wide), builder.zext(args[1], wide))
        return builder.trunc(builder.lshr(prod, ir.Constant(wide, 64)), ir.IntType(64))

    return sig, codegen


def divisor_params(d: int) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64]:
    """Reciprocal of ``d`` for :func:`_umod`: ``(d, m, sh1, sh2)`` as uint64.

    ``q = (t + ((x - t) >> sh1)) >> sh2`` with ``t = mulhi(m, x)`` is ``x // d``
    for every ``0 <= x < 2**64`` (Granlund & Montgomery 1994, fig. 4.1).
    """
    if d < 1 or d >= 2**63:
        raise ValueError(f"divisor must be in [1, 2**63), got {d}")
    ell = (d - 1).bit_length()  # ceil(log2(d))
    m = ((1 << 64) * ((1 << ell) - d)) // d + 1
    return np.uint64(d), np.uint64(m), np.uint64(min(ell, 1)), np.uint64(max(ell - 1, 0))


@numba.njit(inline="always", **_JIT)
def _umod(x, d, m, sh1, sh2):
    t = _mulhi(m, x)
    q = (t + ((x - t) >> sh1)) >> sh2
    return x - q * d


@numba.njit(inline="always", **_JIT)
def mix64(u):
    """pandas' ``_hash_ndarray`` bit mixer on one uint64."""
    u ^= u >> _S30
    u *= _M1
    u ^= u >> _S27
    u *= _M2
    u ^= u >> _S31
    return u


@numba.njit(inline="always", **_JIT)
def combine_one(u):
    """pandas' ``combine_hash_arrays`` for a single column."""
    return ((_SEED ^ u) * _MULT) + _ADD


@numba.njit(inline="always", **_JIT)
def _float_key(x):
    """Canonical bits of a float64 as pandas hashes them (one NaN, +0.0 for -0.0)."""
    u = _f64_bits(x)
    u = _NAN_BITS if x != x else u
    return _ZERO if u == _NEG_ZERO_BITS else u


# --------------------------------------------------------------------------------------
# Numeric keys (cast to float64, like Dask) and raw 64-bit keys (datetimes, durations).
# Serial kernels are plain loops over whole arrays (LLVM optimises these best); the
# parallel variants call them on slices of SEGMENT rows.
# --------------------------------------------------------------------------------------
@numba.njit(**_JIT)
def hash_float_pids(vals, d, m, sh1, sh2, out):
    """``out[i]`` = Dask's partition of ``float64(vals[i])``; serial."""
    if d & (d - _ONE) == _ZERO:  # power of two: a mask (vectorises)
        mask = d - _ONE
        for i in range(vals.shape[0]):
            u = mix64(_float_key(np.float64(vals[i])))
            out[i] = np.int32(combine_one(u) & mask)
    else:
        for i in range(vals.shape[0]):
            u = mix64(_float_key(np.float64(vals[i])))
            out[i] = np.int32(_umod(combine_one(u), d, m, sh1, sh2))


@numba.njit(parallel=True, **_JIT)
def hash_float_pids_parallel(vals, d, m, sh1, sh2, out):
    """``out[i]`` = Dask's partition of ``float64(vals[i])``; ``prange`` variant."""
    n = vals.shape[0]
    for s in prange((n + SEGMENT - 1) // SEGMENT):
        lo = s * SEGMENT
        hi = min(n, lo + SEGMENT)
        hash_float_pids(vals[lo:hi], d, m, sh1, sh2, out[lo:hi])


@numba.njit(**_JIT)
def hash_bits_pids(vals, d, m, sh1, sh2, out):
    """``out[i]`` = Dask's partition of the 64-bit pattern of ``vals[i]``; serial."""
    if d & (d - _ONE) == _ZERO:
        mask = d - _ONE
        for i in range(vals.shape[0]):
            out[i] = np.int32(combine_one(mix64(np.uint64(vals[i]))) & mask)
    else:
        for i in range(vals.shape[0]):
            u = mix64(np.uint64(vals[i]))
            out[i] = np.int32(_umod(combine_one(u), d, m, sh1, sh2))


@numba.njit(parallel=True, **_JIT)
def hash_bits_pids_parallel(vals, d, m, sh1, sh2, out):
    """``out[i]`` = Dask's partition of the 64-bit pattern of ``vals[i]``; ``prange``."""
    n = vals.shape[0]
    for s in prange((n + SEGMENT - 1) // SEGMENT):
        lo = s * SEGMENT
        hi = min(n, lo + SEGMENT)
        hash_bits_pids(vals[lo:hi], d, m, sh1, sh2, out[lo:hi])


@numba.njit(**_JIT)
def fill_null_pids(valid, voff, n, null_pid, out):
    """``out[i] = null_pid`` where bit ``voff + i`` of the validity bitmap is 0."""
    i = 0
    while i < n:
        j = voff + i
        if (j & 7) == 0 and i + 8 <= n and valid[j >> 3] == 0xFF:
            i += 8
            continue
        if not (valid[j >> 3] >> (j & 7)) & 1:
            out[i] = null_pid
        i += 1


# --------------------------------------------------------------------------------------
# Strings: SipHash-2-4 over UTF-8 bytes, pandas' key.
# --------------------------------------------------------------------------------------
@numba.njit(inline="always", **_JIT)
def _rotl(x, b):
    return (x << np.uint64(b)) | (x >> np.uint64(64 - b))


@numba.njit(inline="always", **_JIT)
def _sipround(v0, v1, v2, v3):
    v0 += v1
    v1 = _rotl(v1, 13)
    v1 ^= v0
    v0 = _rotl(v0, 32)
    v2 += v3
    v3 = _rotl(v3, 16)
    v3 ^= v2
    v0 += v3
    v3 = _rotl(v3, 21)
    v3 ^= v0
    v2 += v1
    v1 = _rotl(v1, 17)
    v1 ^= v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


@numba.njit(**_JIT)
def siphash24(data, start, length):
    """SipHash-2-4 of ``data[start:start + length]`` with pandas' key."""
    v0 = _SIP_K0 ^ _SIP_C0
    v1 = _SIP_K1 ^ _SIP_C1
    v2 = _SIP_K0 ^ _SIP_C2
    v3 = _SIP_K1 ^ _SIP_C3
    nwords = length >> 3
    p = start
    for _ in range(nwords):
        m = np.uint64(0)
        for k in range(8):
            m |= np.uint64(data[p + k]) << np.uint64(8 * k)
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
        p += 8
    b = np.uint64(length & 0xFF) << np.uint64(56)
    for k in range(length & 7):
        b |= np.uint64(data[p + k]) << np.uint64(8 * k)
    v3 ^= b
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= _FF
    for _ in range(4):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


@numba.njit(**_JIT)
def hash_string_pids(offsets, data, d, m, sh1, sh2, out):
    """``out[i]`` = Dask's partition of string ``i`` (Arrow offsets + data); serial."""
    for i in range(offsets.shape[0] - 1):
        s = offsets[i]
        u = mix64(siphash24(data, s, offsets[i + 1] - s))
        out[i] = np.int32(_umod(combine_one(u), d, m, sh1, sh2))


@numba.njit(parallel=True, **_JIT)
def hash_string_pids_parallel(offsets, data, d, m, sh1, sh2, out):
    """``out[i]`` = Dask's partition of string ``i``; ``prange`` variant."""
    n = offsets.shape[0] - 1
    for s in prange((n + SEGMENT - 1) // SEGMENT):
        lo = s * SEGMENT
        hi = min(n, lo + SEGMENT)
        hash_string_pids(offsets[lo : hi + 1], data, d, m, sh1, sh2, out[lo:hi])
