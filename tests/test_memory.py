"""pool_empty: large outputs from Arrow's memory pool behave like np.empty."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pyarrow as pa
import pytest

from dask_oxigdal._memory import POOL_MIN_BYTES, pool_empty
from dask_oxigdal.spectral import ndvi


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", [(0,), (3,), (700, 300), (40, 50, 60)])
def test_layout_dtype_and_writability(shape, order):
    a = pool_empty(shape, np.float32, order=order)
    assert a.shape == shape and a.dtype == np.float32
    assert a.flags.writeable
    assert a.flags.c_contiguous if order == "C" else a.flags.f_contiguous
    a[...] = 2.5
    assert float(a.sum()) == 2.5 * a.size
    assert np.array_equal(pickle.loads(pickle.dumps(a)), a)


def test_large_arrays_come_from_the_arrow_pool_and_small_ones_do_not():
    # the pool is process-wide: earlier tests' Arrow buffers freed by a garbage
    # collection (or another thread) would move the total, so compare deltas
    gc.collect()
    gc.disable()
    try:
        before = pa.total_allocated_bytes()
        big = pool_empty(POOL_MIN_BYTES // 8, np.float64)
        mid = pa.total_allocated_bytes()
        assert mid - before >= POOL_MIN_BYTES
        small = pool_empty(4, np.float64)
        assert small.base is None
        del big
        assert mid - pa.total_allocated_bytes() >= POOL_MIN_BYTES  # given back at once
    finally:
        gc.enable()


def test_bad_order_names_the_choices():
    with pytest.raises(ValueError, match=r"'C' or 'F'.*'K'"):
        pool_empty(10, np.uint8, order="K")


def test_allocating_ndvi_is_writable_and_keeps_fortran_order():
    nir = np.asfortranarray(np.full((512, 300), 3000, np.uint16))
    red = np.asfortranarray(np.full((512, 300), 1000, np.uint16))
    v = ndvi(nir, red)
    assert v.flags.f_contiguous and v.flags.writeable
    v[0, 0] = -1
    np.testing.assert_allclose(v[1:], 0.5)
