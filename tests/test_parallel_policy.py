"""The kernel threading policy, checked inside real Dask workers."""

from __future__ import annotations

import dask.config
import numba
from distributed.utils_test import gen_cluster

from dask_oxigdal.kernels._parallel import parallel_launch, parallel_threads

BIG = 1 << 20


def _decision(n: int) -> tuple[int, int]:
    with parallel_launch(n) as threads:
        inside = numba.get_num_threads()
    return parallel_threads(n), threads if threads > 1 else inside


def test_small_inputs_run_serially():
    assert parallel_threads(10) == 1
    with dask.config.set({"oxigdal.kernels.parallel-min-elements": 5}):
        assert parallel_threads(10) == numba.get_num_threads()


def test_outside_a_worker_uses_numba_threads_and_restores_them():
    before = numba.get_num_threads()
    with parallel_launch(BIG) as threads:
        assert threads == before
    assert numba.get_num_threads() == before


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)])
async def test_multi_threaded_worker_runs_kernels_serially(c, s, a):
    threads, _ = await c.submit(_decision, BIG, pure=False)
    assert threads == 1


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_single_threaded_worker_may_use_numba_threads(c, s, a):
    threads, inside = await c.submit(_decision, BIG, pure=False)
    assert threads == numba.get_num_threads()
    assert inside == threads
