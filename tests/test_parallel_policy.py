"""The kernel threading policy, checked inside real Dask workers."""

from __future__ import annotations

import subprocess
import sys

import dask
import dask.array as da
import dask.config
import numba
import numpy as np
from distributed.utils_test import gen_cluster

import dask_oxigdal.spectral as spectral_module
from dask_oxigdal.kernels._parallel import parallel_launch, parallel_threads, serial_kernels
from dask_oxigdal.spectral import ndvi

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
async def test_single_threaded_worker_runs_serially_by_default(c, s, a):
    threads, _ = await c.submit(_decision, BIG, pure=False)
    assert threads == 1


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    config={"oxigdal.kernels.worker-numba-threads": 2},
)
async def test_single_threaded_worker_uses_the_configured_threads(c, s, a):
    threads, inside = await c.submit(_decision, BIG, pure=False)
    assert threads == min(2, numba.get_num_threads())
    assert inside == threads


LEAK_SCRIPT = """
import os, numpy as np
import dask_oxigdal as dox
from distributed import LocalCluster

if __name__ == "__main__":
    big = np.full(1 << 18, 3, np.uint16)
    dox.ndvi(big, big // 3)  # parallel kernel: numba's thread pool is up
    before = os.environ.get("NUMBA_NUM_THREADS")
    with LocalCluster(n_workers=1, processes=True, dashboard_address=":0"):
        pass
    assert os.environ.get("NUMBA_NUM_THREADS") == before, os.environ.get("NUMBA_NUM_THREADS")
    import numba

    @numba.njit
    def fresh(x):
        return x + 1

    assert fresh(1) == 2  # numba can still compile after the cluster started
    print("ok")
"""


def test_a_process_cluster_does_not_break_numba_in_the_client(tmp_path):
    # A notebook that ran a parallel kernel and then starts LocalCluster(processes=True)
    # must still be able to compile: nannies copy pre-spawn-environ into this process.
    script = tmp_path / "leak.py"
    script.write_text(LEAK_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_serial_kernels_context_nests_and_restores():
    with serial_kernels():
        assert parallel_threads(BIG) == 1
        with serial_kernels():
            assert parallel_threads(BIG) == 1
        assert parallel_threads(BIG) == 1
    assert parallel_threads(BIG) == numba.get_num_threads()


def test_dask_blocks_on_the_threaded_scheduler_run_kernels_serially():
    # a dask.array NDVI on the local threaded scheduler: every block runs the serial kernel
    nir = da.from_array(np.full((64, 64), 3000, np.uint16), chunks=32)
    red = da.from_array(np.full((64, 64), 1000, np.uint16), chunks=32)
    with dask.config.set({"oxigdal.kernels.parallel-min-elements": 1}):
        seen = []
        original = spectral_module._evaluate

        def observe(*args, **kwargs):  # record the real policy's decision, then compute
            seen.append(parallel_threads(BIG))
            return original(*args, **kwargs)

        spectral_module._evaluate = observe
        try:
            result = ndvi(nir, red).compute(scheduler="threads")
        finally:
            spectral_module._evaluate = original
    np.testing.assert_allclose(result, 0.5)
    assert seen == [1, 1, 1, 1]


def _import_and_report(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """Import dask_oxigdal in a fresh interpreter and print OMP_WAIT_POLICY."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_extra)
    code = "import os, dask_oxigdal; print(os.environ.get('OMP_WAIT_POLICY'))"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_import_sets_passive_openmp_waiting_unless_the_environment_chose():
    assert _import_and_report({}).stdout.strip() == "PASSIVE"
    # a value already in the environment wins
    assert _import_and_report({"OMP_WAIT_POLICY": "ACTIVE"}).stdout.strip() == "ACTIVE"
    # the setting can leave the environment alone, or ask for active waiting
    none = _import_and_report({"DASK_OXIGDAL__KERNELS__OMP_WAIT_POLICY": "None"})
    assert none.stdout.strip() == "None", none.stderr
    active = _import_and_report({"DASK_OXIGDAL__KERNELS__OMP_WAIT_POLICY": "active"})
    assert active.stdout.strip() == "ACTIVE", active.stderr
    bad = _import_and_report({"DASK_OXIGDAL__KERNELS__OMP_WAIT_POLICY": "lazy"})
    assert bad.returncode != 0
    assert "omp-wait-policy='lazy'" in bad.stderr and "passive, active" in bad.stderr


def test_parallel_kernels_run_under_the_passive_policy():
    """The policy reaches OpenMP: a parallel shuffle in a fresh process uses 2 threads
    with the variable set, and gives the serial result."""
    code = (
        "import os, numpy as np, pyarrow as pa, numba, dask_oxigdal\n"
        "from dask_oxigdal.tables import hash_partition\n"
        "from dask_oxigdal.kernels._parallel import parallel_threads\n"
        "t = pa.table({'k': np.arange(200_000) % 977, 'v': np.arange(200_000.0)})\n"
        "par = hash_partition(t, 'k', 8)\n"
        "import dask.config\n"
        "with dask.config.set({'oxigdal.kernels.parallel-min-elements': 10**9}):\n"
        "    ser = hash_partition(t, 'k', 8)\n"
        "assert par.keys() == ser.keys() and all(par[p].equals(ser[p]) for p in par)\n"
        "print(os.environ['OMP_WAIT_POLICY'], numba.threading_layer(), parallel_threads(200_000))\n"
    )
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["NUMBA_NUM_THREADS"] = "2"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    policy, layer, threads = out.stdout.split()
    assert policy == "PASSIVE" and threads == "2", out.stdout
    assert layer in ("omp", "tbb", "workqueue")
