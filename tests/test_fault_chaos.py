"""Chaos: worker processes are SIGKILLed during a 60-task tree reduction; the result
equals the fault-free one. The fault-tolerance policies run with their defaults."""

from __future__ import annotations

import dask_oxigdal  # noqa: F401

# isort: split
import os
import signal
import threading
import time

import dask
from dask import delayed
from distributed import Client, LocalCluster

from dask_oxigdal.scheduling.extension import register, status


def leaf(i):
    time.sleep(0.1)
    return i * i


def combine(x, y):
    time.sleep(0.03)
    return x + y


def tree(n=60):
    level = [delayed(leaf, pure=True)(i) for i in range(n)]
    while len(level) > 1:
        nxt = [
            delayed(combine, pure=True)(a, b) for a, b in zip(level[::2], level[1::2], strict=False)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def test_tree_reduction_survives_repeated_sigkill():
    expected = dask.compute(tree(), scheduler="sync")[0]
    assert expected == sum(i * i for i in range(60))
    with dask.config.set({"distributed.scheduler.allowed-failures": 50}):
        with (
            LocalCluster(
                n_workers=3,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=":0",
                worker_dashboard_address=":0",
            ) as cluster,
            Client(cluster) as c,
        ):
            register(c)
            killed: list[int] = []
            done = threading.Event()

            def chaos():
                # kill one worker process at a time, KillWorker-style; the nannies restart them
                for _ in range(3):
                    if done.wait(0.3):
                        return
                    try:
                        pids = sorted(c.run(os.getpid, on_error="ignore").values())
                    except Exception:  # a worker went away while we asked
                        continue
                    pids = [p for p in pids if isinstance(p, int) and p not in killed]
                    if pids:
                        pid = pids[len(killed) % len(pids)]
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)

            t = threading.Thread(target=chaos, daemon=True)
            fut = c.compute(tree())
            t.start()
            try:
                result = fut.result(timeout=240)
            finally:
                done.set()
                t.join(60)
            assert result == expected
            assert len(killed) >= 2, killed
            snap = status(c)
            # the default fault policies ran through the chaos without being disabled
            assert snap["disabled"] == {}
            assert snap["policies"]["Quarantine"]["enabled"]
            assert snap["policies"]["Stragglers"]["enabled"]
            assert snap["policies"]["Stragglers"]["action"] == "detect"
