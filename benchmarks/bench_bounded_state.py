"""Size of ``/oxigdal/state.json`` after many distinct task prefixes, capped vs uncapped.

Run::

    python benchmarks/bench_bounded_state.py [--prefixes 5000] [--batch 250]

An in-process cluster (a scheduler and one 2-thread worker on 127.0.0.1) runs
``--prefixes`` no-op tasks, each with its own key prefix, in batches of
``--batch`` (Dask itself slows down with thousands of distinct prefixes live at
once), with every default policy. Then the size of ``json.dumps`` of what
``/oxigdal/state.json`` serves is measured, and the per-prefix table sizes and
``evicted_prefixes`` counters are read. Two runs side by side: the default
``oxigdal.scheduling.max-prefixes`` (1000) and an unreachable cap (10**9),
which is what the package did before the tables were bounded. The wall times
are printed for information only (this is not a throughput benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import dask

sys.path.insert(0, os.path.dirname(__file__))

from _machine import describe


def _one(x):
    return x


async def _run(n: int, batch: int, cap: int) -> dict:
    from distributed import Client, Scheduler, Worker

    from dask_oxigdal.monitoring.http import state
    from dask_oxigdal.scheduling.extension import NAME, register

    with dask.config.set({"oxigdal.scheduling.max-prefixes": cap}):
        async with (
            Scheduler(dashboard_address=":0", host="127.0.0.1") as s,
            Worker(s.address, nthreads=2),
            Client(s.address, asynchronous=True) as c,
        ):
            await register(c, tenants={"team-a": 1})
            t0 = time.perf_counter()
            for start in range(0, n, batch):
                keys = [f"tile{i}x-0" for i in range(start, min(n, start + batch))]
                futs = c.map(_one, range(len(keys)), key=keys)
                await c.gather(futs)
                del futs
            wall = time.perf_counter() - t0
            ext = s.plugins[NAME]
            await asyncio.sleep(2.5 * ext.interval)  # one periodic tick or more
            fs = ext.get_policy("FairShare")
            return {
                "cap": cap,
                "wall_s": wall,
                "state_json_bytes": len(json.dumps(state(s))),
                "fairshare_prefixes": len(fs.prefix_cost),
                "fairshare_evicted": fs.evicted_prefixes,
                "stragglers_prefixes": len(ext.get_policy("Stragglers").prefixes),
                "monitor_baselines": len(ext.get_policy("Monitor").detector.baseline),
            }


def main(argv: list[str] | None = None) -> int:
    """Run both configurations and print a table; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefixes", type=int, default=5000)
    p.add_argument("--batch", type=int, default=250)
    args = p.parse_args(argv)
    import distributed

    print(describe(f"dask {dask.__version__}, distributed {distributed.__version__}"))
    rows = [asyncio.run(_run(args.prefixes, args.batch, cap)) for cap in (1000, 10**9)]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.1f}" if k == "wall_s" else str(r[k]) for k in cols) + " |")
    print(
        f"state.json capped / uncapped: {rows[0]['state_json_bytes'] / rows[1]['state_json_bytes']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
