"""numpy evaluation of the spectral indices: output checks, flat views, the kernel launch.

Private to :mod:`dask_oxigdal.spectral`: :func:`_flatten` gives the bands and the
output flat views in one element order, :func:`_launch` runs the serial or the
``prange`` numba kernel of an index family on them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dask_oxigdal._memory import pool_empty
from dask_oxigdal.kernels import spectral as _k
from dask_oxigdal.kernels._parallel import parallel_launch

_KERNELS = {
    "normalized_difference": (_k.normalized_difference, _k.normalized_difference_parallel),
    "linear2": (_k.linear2, _k.linear2_parallel),
    "evi": (_k.evi, _k.evi_parallel),
}


def _check_out(out: Any, shape: tuple) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(
            f"out must be a numpy.ndarray of float32 with shape {shape}, got {type(out).__name__}"
        )
    if out.dtype != np.float32 or out.shape != shape:
        raise ValueError(
            f"out must be float32 with the bands' shape {shape}, "
            f"got dtype {out.dtype} and shape {out.shape}"
        )
    if not out.flags.writeable:
        raise ValueError("out is read-only; pass a writeable float32 array")
    return out


def _flatten(arrays: list[np.ndarray], out: np.ndarray | None):
    """Flat views in one consistent element order, and the output to write into.

    Returns ``(flat_inputs, flat_out, target)``: the kernel writes ``flat_out``,
    which is a view of ``target``. When ``out`` was given but has another layout
    (or overlaps an input without being it), ``target`` is a temporary that the
    caller copies into ``out``.
    """
    if all(a.flags.c_contiguous for a in arrays):
        order = "C"
    elif all(a.flags.f_contiguous for a in arrays):
        order = "F"
    else:
        arrays = [np.ascontiguousarray(a) for a in arrays]
        order = "C"

    def flat(a: np.ndarray) -> np.ndarray:
        return a.reshape(-1) if order == "C" else a.T.reshape(-1)

    target = out
    if out is not None:
        layout_ok = out.flags.c_contiguous if order == "C" else out.flags.f_contiguous
        if not layout_ok or any(_overlaps_differently(out, a) for a in arrays):
            target = None
    if target is None:
        target = pool_empty(arrays[0].shape, np.float32, order=order)
    return [flat(a) for a in arrays], flat(target), target


def _overlaps_differently(out: np.ndarray, a: np.ndarray) -> bool:
    if not np.may_share_memory(out, a):
        return False
    same = (
        out.__array_interface__["data"][0] == a.__array_interface__["data"][0]
        and out.strides == a.strides
        and out.dtype == a.dtype
    )
    return not same


def _launch(family: str, dtype: np.dtype, coefficients: tuple, flat_in, typed, flat_out) -> None:
    serial, parallel = _KERNELS[family]
    nd_args = [x for pair in typed for x in pair]
    with parallel_launch(flat_out.size) as threads:
        kernel = serial if threads == 1 else parallel
        if family == "normalized_difference":
            ftype = np.float32 if dtype.itemsize <= 2 or dtype == np.float32 else np.float64
            kernel(*flat_in, *nd_args, ftype(0.5), flat_out)
        else:
            kernel(*flat_in, *nd_args, *coefficients, flat_out)
