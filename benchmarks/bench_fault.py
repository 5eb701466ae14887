"""Fault-tolerance benchmarks: the dask-oxigdal policies beside vanilla Dask, in one run.

    python benchmarks/bench_fault.py --quick     # smoke test: smaller jobs, 2 s stalls
    python benchmarks/bench_fault.py             # full: the issue's scenarios

**stall**: N tasks of ~50 ms on ``LocalCluster(n_workers=2, threads_per_worker=2,
processes=True)``; the first attempts of 2 of them stall (10 s in the full run;
a per-key marker file makes later attempts run normally). Job completion time
with ``Stragglers(action="reschedule")`` and on vanilla Dask, each on a fresh
cluster. Target: at least 2x faster than vanilla.

**slow worker**: the same job without stalls, one of the two workers 10x slower
(a WorkerPlugin sets a per-worker sleep factor). Dask's queuing already steers
new tasks away from the slow worker, so only the tail can gain.

**checkpoint**: write and read cost per MB of ``CheckpointStore`` (pickle +
SHA-256 + atomic write to a local directory; read + verify + unpickle) beside a
plain ``pickle.dump``/``pickle.load`` to a file (no checksum, not atomic).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _machine
import dask
import distributed
import numpy as np
from distributed import Client, LocalCluster, wait
from distributed.diagnostics.plugin import WorkerPlugin

import dask_oxigdal
from dask_oxigdal.fault.checkpoint import CheckpointStore

STRAGGLERS = {"class": "dask_oxigdal.fault.straggler.Stragglers", "action": "reschedule"}


def task(i, delay, markers, stalled, stall):
    """``delay`` seconds of work (times the worker's slow factor); a first attempt in
    ``stalled`` hangs for ``stall`` seconds."""
    if i in stalled:
        marker = os.path.join(markers, str(i))
        if not os.path.exists(marker):
            with open(marker, "w"):
                pass
            time.sleep(stall)
            return i
    factor = getattr(distributed.get_worker(), "oxigdal_slow", 1)
    time.sleep(delay * factor)
    return i


class SlowWorker(WorkerPlugin):
    """Makes the worker named ``name`` ``factor`` times slower."""

    name = "oxigdal-bench-slow-worker"

    def __init__(self, name, factor):
        self.worker_name, self.factor = name, factor

    def setup(self, worker):
        if str(worker.name) == str(self.worker_name):
            worker.oxigdal_slow = self.factor


def run_job(policy, n, delay, stalled, stall, slow_factor=1):
    markers = tempfile.mkdtemp(prefix="oxigdal-bench-markers-")
    try:
        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=2,
                processes=True,
                host="127.0.0.1",
                dashboard_address=":0",
                worker_dashboard_address=":0",
            ) as cluster,
            Client(cluster) as c,
        ):
            if slow_factor != 1:
                c.register_plugin(SlowWorker(0, slow_factor))
            if policy:
                dask_oxigdal.register(c, policies=[STRAGGLERS])
            c.submit(lambda: None).result()  # workers warm
            t0 = time.perf_counter()
            futs = c.map(task, range(n), delay=delay, markers=markers, stalled=stalled, stall=stall)
            wait(futs)
            elapsed = time.perf_counter() - t0
            assert c.gather(futs) == list(range(n))
            backups = dask_oxigdal.status(c)["policies"]["Stragglers"]["backups"] if policy else 0
        return elapsed, backups
    finally:
        shutil.rmtree(markers, ignore_errors=True)


def bench_checkpoint(mb, repeat):
    d = tempfile.mkdtemp(prefix="oxigdal-bench-ckpt-")
    try:
        store = CheckpointStore(os.path.join(d, "store"))
        value = np.random.default_rng(0).random(mb * 2**20 // 8)
        plain = os.path.join(d, "plain.pkl")

        def plain_write():
            with open(plain, "wb") as f:
                pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)

        def plain_read():
            with open(plain, "rb") as f:
                return pickle.load(f)

        out = {
            "checkpoint write": _machine.best_of(lambda: store.save("k", value), repeat),
            "checkpoint read": _machine.best_of(lambda: store.load("k"), repeat),
            "plain pickle write": _machine.best_of(plain_write, repeat),
            "plain pickle read": _machine.best_of(plain_read, repeat),
        }
        return {k: v / mb * 1e3 for k, v in out.items()}  # ms per MB
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: smaller jobs, 2 s stalls")
    args = p.parse_args(argv)
    # the abandoned first attempts of rescheduled tasks log a CancelledError warning
    logging.getLogger("distributed").setLevel(logging.ERROR)
    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)
    n, stall, mb, repeat = (80, 2.0, 16, 2) if args.quick else (200, 10.0, 64, 3)
    delay = 0.05
    print(_machine.describe(f"dask {dask.__version__}, distributed {distributed.__version__}"))
    print("cluster: LocalCluster(n_workers=2, threads_per_worker=2, processes=True)")
    stalled = {n // 10, n // 2}

    print(f"\n## stall: {n} tasks x {delay * 1e3:.0f} ms, first attempts of 2 stall {stall:g} s")
    van, _ = run_job(False, n, delay, stalled, stall)
    ox, backups = run_job(True, n, delay, stalled, stall)
    print(f"vanilla Dask          {van:7.2f} s")
    print(f"oxigdal Stragglers    {ox:7.2f} s   backups={backups}")
    print(f"speed-up vanilla/oxigdal = {van / ox:.2f}x (target >= 2x)")

    print(f"\n## slow worker: {n} tasks x {delay * 1e3:.0f} ms, worker 0 is 10x slower")
    van, _ = run_job(False, n, delay, set(), 0.0, slow_factor=10)
    ox, backups = run_job(True, n, delay, set(), 0.0, slow_factor=10)
    print(f"vanilla Dask          {van:7.2f} s")
    print(f"oxigdal Stragglers    {ox:7.2f} s   backups={backups}")
    print(f"speed-up vanilla/oxigdal = {van / ox:.2f}x")

    print(f"\n## checkpoint: {mb} MiB float64 array, best of {repeat}, local directory")
    res = bench_checkpoint(mb, repeat)
    for k, v in res.items():
        print(f"{k:20s} {v:7.2f} ms/MB")
    print(
        f"write overhead vs plain pickle = {res['checkpoint write'] / res['plain pickle write']:.2f}x, "
        f"read = {res['checkpoint read'] / res['plain pickle read']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
