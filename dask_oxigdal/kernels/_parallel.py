"""When a numba kernel may run in parallel, and with how many threads.

Every public wrapper that has both a serial and a ``parallel=True`` (``prange``)
variant of a kernel asks :func:`parallel_threads` first.

Rules
-----
* Inputs smaller than ``oxigdal.kernels.parallel-min-elements`` run serially:
  thread start-up costs more than it saves.
* Inside a Dask worker thread whose worker runs more than one thread, kernels
  run serially. Dask already runs one task per thread; a parallel kernel per
  task would oversubscribe the cores.
* Inside a single-threaded Dask worker, a kernel uses at most
  ``oxigdal.kernels.worker-numba-threads`` threads (default 1, as Dask pins
  OpenMP/MKL/OpenBLAS to one thread in workers). This is applied per launch
  with the thread-local ``numba.set_num_threads``, never through the
  ``NUMBA_NUM_THREADS`` environment variable: a nanny copies its
  ``pre-spawn-environ`` into the *parent* process, and numba refuses to compile
  once that variable differs from the running thread pool.
* Inside :func:`serial_kernels` (the dask.array front ends wrap every block
  in it) kernels run serially: Dask's scheduler, threaded or distributed,
  already runs the blocks in parallel.
* The client, or a plain script, may use ``numba.get_num_threads()`` threads.
* GNU OpenMP (numba's ``omp`` layer) spin-waits between parallel regions by
  default; when another process holds a core, a parallel kernel then waits a
  whole scheduler time slice per region and runs 10-30x slower than the
  serial one. At import, ``OMP_WAIT_POLICY`` is set to
  ``oxigdal.kernels.omp-wait-policy`` (default ``passive``) unless the
  environment already sets it (:func:`apply_omp_wait_policy`).
* numba's ``workqueue`` threading layer aborts the process when two threads
  launch parallel kernels at once. When that layer is active a lock admits one
  parallel launch at a time; a caller that finds it taken runs serially instead
  of waiting.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import dask.config

from dask_oxigdal import config as _config  # noqa: F401  (registers the oxigdal defaults)

_launch_lock = threading.Lock()
_local = threading.local()

#: Valid values of ``oxigdal.kernels.omp-wait-policy``.
OMP_WAIT_POLICIES = ("passive", "active", None)


def apply_omp_wait_policy() -> str | None:
    """Set ``OMP_WAIT_POLICY`` from ``oxigdal.kernels.omp-wait-policy`` if unset.

    Runs when :mod:`dask_oxigdal` is imported. GNU OpenMP reads the variable
    when the library is loaded, i.e. at numba's first parallel launch, so this
    has no effect when OpenMP was already loaded. A value already in the
    environment always wins. Child processes (Dask's process workers)
    inherit it.

    Returns
    -------
    str or None
        The value now in the environment, or ``None``.

    Raises
    ------
    ValueError
        If the setting is not one of ``passive``, ``active`` or null.
    """
    policy = dask.config.get("oxigdal.kernels.omp-wait-policy", "passive")
    if policy not in OMP_WAIT_POLICIES:
        raise ValueError(
            f"oxigdal.kernels.omp-wait-policy={policy!r}; valid values: passive, active, "
            "null (leave the environment alone)"
        )
    if policy is not None and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = policy.upper()
    return os.environ.get("OMP_WAIT_POLICY")


apply_omp_wait_policy()


@contextlib.contextmanager
def serial_kernels() -> Iterator[None]:
    """Run every kernel launched by this thread inside the block serially.

    Used around the per-block functions of dask collections: Dask's scheduler
    (the local threaded one included) already runs blocks in parallel, so a
    parallel kernel per block would oversubscribe the cores.

    Yields
    ------
    None
    """
    depth = getattr(_local, "serial_depth", 0)
    _local.serial_depth = depth + 1
    try:
        yield
    finally:
        _local.serial_depth = depth


def _dask_worker_threads() -> int | None:
    """Number of threads of the Dask worker running this thread, or None outside one."""
    try:
        from distributed.worker import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return None


def parallel_threads(n_elements: int) -> int:
    """How many threads a kernel over ``n_elements`` items should use (1 = serial).

    Parameters
    ----------
    n_elements : int
        Size of the work, in elements or rows.

    Returns
    -------
    int
        1 when the serial kernel should run, otherwise the thread count.
    """
    if n_elements < dask.config.get("oxigdal.kernels.parallel-min-elements", 65536):
        return 1
    if getattr(_local, "serial_depth", 0):
        return 1
    import numba  # here, not at the top: `import dask_oxigdal` imports this module

    available = max(1, numba.get_num_threads())
    worker_threads = _dask_worker_threads()
    if worker_threads is None:
        return available
    if worker_threads > 1:
        return 1
    return min(available, int(dask.config.get("oxigdal.kernels.worker-numba-threads", 1)))


@contextlib.contextmanager
def parallel_launch(n_elements: int) -> Iterator[int]:
    """Context that yields the thread count to use and guards unsafe threading layers.

    Parameters
    ----------
    n_elements : int
        Size of the work, in elements or rows.

    Yields
    ------
    int
        1 for the serial kernel, otherwise the number of threads that were set
        with ``numba.set_num_threads`` for this launch (restored on exit).
    """
    threads = parallel_threads(n_elements)
    if threads == 1:
        yield 1
        return
    guarded = _needs_guard()
    if guarded and not _launch_lock.acquire(blocking=False):
        yield 1
        return
    import numba

    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(threads)
        yield threads
    finally:
        numba.set_num_threads(previous)
        if guarded:
            _launch_lock.release()


def _needs_guard() -> bool:
    import numba

    layer = numba.config.THREADING_LAYER
    try:
        active = numba.threading_layer()
    except ValueError:  # no parallel kernel launched yet: the layer is not chosen
        active = None
    return active == "workqueue" or (active is None and layer in ("default", "workqueue"))
