"""Numba kernels for spectral indices (private; wrapped by :mod:`dask_oxigdal.spectral`).

Every kernel works on flat, C-contiguous 1-D arrays of one numeric dtype (the
wrapper ravels N-D inputs and copies non-contiguous ones) and writes float32
into a preallocated ``out`` of the same length. Each comes in two variants with
the same body: ``<name>`` (serial) and ``<name>_parallel`` (``prange``). The
wrapper picks one with :func:`dask_oxigdal.kernels._parallel.parallel_launch`.

Semantics shared by all kernels, element by element:

* the result is NaN where any input band equals its nodata value (``use_*``
  flags say which bands have one; the value is already cast to the band dtype),
  where any input is NaN (IEEE propagation), or where the denominator is 0;
* integers are converted to the compute type before any arithmetic, so there is
  no integer overflow or wrap-around;
* no ``fastmath``: NaN and signed-zero semantics stay IEEE.

``normalized_difference`` computes in the type of its ``half`` argument
(``0.5`` as float32 or float64): the wrapper passes float32 for float32 inputs
and integers of at most 16 bits (their sums and differences are exact in
float32, so the result is the correctly rounded quotient) and float64
otherwise. For float inputs whose sum or difference overflows, both are halved
first (exact for numbers that large). The parametric kernels (``linear2``,
``evi``) always compute in float64, since their coefficients are arbitrary
floats.

All kernels use ``error_model="numpy"``: with numba's default ("python") model a
float division checks for zero and raises, which keeps LLVM from vectorising
the loop.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

__all__ = [
    "evi",
    "evi_parallel",
    "linear2",
    "linear2_parallel",
    "normalized_difference",
    "normalized_difference_parallel",
]

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


def _as_compute(x, like):
    """``x`` converted to the type of ``like`` (float32 or float64); see the overload."""
    return type(like)(x)


@overload(_as_compute, jit_options={"cache": True})
def _as_compute_impl(x, like):
    if isinstance(like, types.Float) and like.bitwidth == 32:
        return lambda x, like: np.float32(x)
    return lambda x, like: np.float64(x)


def _is_float(x):
    """Whether ``x`` is a float: a compile-time constant in the kernels."""
    return isinstance(x, float | np.floating)


@overload(_is_float, jit_options={"cache": True})
def _is_float_impl(x):
    if isinstance(x, types.Float):
        return lambda x: True
    return lambda x: False


# --------------------------------------------------------------------------------------
# (a - b) / (a + b): NDVI, NDWI, NDBI, NDMI, NBR, ...
# --------------------------------------------------------------------------------------
@numba.njit(**_JIT)
def normalized_difference(a, b, nd_a, use_a, nd_b, use_b, half, out):
    """``out = (a - b) / (a + b)`` computed in the type of ``half``; serial."""
    nan = _as_compute(np.nan, half)
    inf = _as_compute(np.inf, half)
    one = _as_compute(1.0, half)
    for i in range(a.size):
        x = a[i]
        y = b[i]
        bad = (use_a & (x == nd_a)) | (use_b & (y == nd_b))
        xf = _as_compute(x, half)
        yf = _as_compute(y, half)
        num = xf - yf
        den = xf + yf
        if _is_float(x):
            # Huge floats (|x| + |y| beyond the compute type's range): halve both, which
            # is exact for such numbers, rather than return inf / inf or x / inf.
            s = half if (abs(num) == inf) | (abs(den) == inf) else one
            num = xf * s - yf * s
            den = xf * s + yf * s
        r = num / den if den != 0 else nan
        out[i] = np.float32(nan if bad else r)


@numba.njit(parallel=True, **_JIT)
def normalized_difference_parallel(a, b, nd_a, use_a, nd_b, use_b, half, out):
    """``out = (a - b) / (a + b)`` computed in the type of ``half``; ``prange`` variant."""
    nan = _as_compute(np.nan, half)
    inf = _as_compute(np.inf, half)
    one = _as_compute(1.0, half)
    for i in prange(a.size):
        x = a[i]
        y = b[i]
        bad = (use_a & (x == nd_a)) | (use_b & (y == nd_b))
        xf = _as_compute(x, half)
        yf = _as_compute(y, half)
        num = xf - yf
        den = xf + yf
        if _is_float(x):
            # Huge floats (|x| + |y| beyond the compute type's range): halve both, which
            # is exact for such numbers, rather than return inf / inf or x / inf.
            s = half if (abs(num) == inf) | (abs(den) == inf) else one
            num = xf * s - yf * s
            den = xf * s + yf * s
        r = num / den if den != 0 else nan
        out[i] = np.float32(nan if bad else r)


# --------------------------------------------------------------------------------------
# g * (a - b) / (a + c * b + lc): SAVI (g = 1 + L, c = 1, lc = L), EVI2 (2.5, 2.4, 1)
# --------------------------------------------------------------------------------------
@numba.njit(**_JIT)
def linear2(a, b, nd_a, use_a, nd_b, use_b, g, c, lc, out):
    """``out = g * (a - b) / (a + c * b + lc)`` in float64; serial."""
    nan = np.float64(np.nan)
    for i in range(a.size):
        x = a[i]
        y = b[i]
        bad = (use_a & (x == nd_a)) | (use_b & (y == nd_b))
        xf = np.float64(x)
        yf = np.float64(y)
        den = xf + c * yf + lc
        r = g * (xf - yf) / den if den != 0 else nan
        out[i] = np.float32(nan if bad else r)


@numba.njit(parallel=True, **_JIT)
def linear2_parallel(a, b, nd_a, use_a, nd_b, use_b, g, c, lc, out):
    """``out = g * (a - b) / (a + c * b + lc)`` in float64; ``prange`` variant."""
    nan = np.float64(np.nan)
    for i in prange(a.size):
        x = a[i]
        y = b[i]
        bad = (use_a & (x == nd_a)) | (use_b & (y == nd_b))
        xf = np.float64(x)
        yf = np.float64(y)
        den = xf + c * yf + lc
        r = g * (xf - yf) / den if den != 0 else nan
        out[i] = np.float32(nan if bad else r)


# --------------------------------------------------------------------------------------
# g * (a - b) / (a + c1 * b - c2 * c + lc): EVI (nir, red, blue)
# --------------------------------------------------------------------------------------
@numba.njit(**_JIT)
def evi(a, b, c, nd_a, use_a, nd_b, use_b, nd_c, use_c, g, c1, c2, lc, out):
    """``out = g * (a - b) / (a + c1 * b - c2 * c + lc)`` in float64; serial."""
    nan = np.float64(np.nan)
    for i in range(a.size):
        x = a[i]
        y = b[i]
        z = c[i]
        bad = (use_a & (x == nd_a)) | (use_b & (y == nd_b)) | (use_c & (z == nd_c))
        xf = np.float64(x)
        yf = np.float64(y)
        zf = np.float64(z)
        den = xf + c1 * yf - c2 * zf + lc
        r = g * (xf - yf) / den if den != 0 else nan
        out[i] = np.float32(nan if bad else r)


@numba.njit(parallel=True, **_JIT)
def evi_parallel(a, b, c, nd_a, use_a, nd_b, use_b, nd_c, use_c, g, c1, c2, lc, out):
    """``out = g * (a - b) / (a + c1 * b - c2 * c + lc)`` in float64; ``prange`` variant."""
    nan = np.float64(np.nan)
    for i in prange(a.size):
        x = a[i]
        y = b[i]
        z = c[i]
        bad = (use_a & (x == nd_a)) | (use_b & (y == nd_b)) | (use_c & (z == nd_c))
        xf = np.float64(x)
        yf = np.float64(y)
        zf = np.float64(z)
        den = xf + c1 * yf - c2 * zf + lc
        r = g * (xf - yf) / den if den != 0 else nan
        out[i] = np.float32(nan if bad else r)
