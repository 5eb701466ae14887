"""Cost of the identity and RBAC hooks (``oxigdal.auth``) on the no-op ``client.map`` benchmark.

    python benchmarks/bench_auth.py --tasks 10000 --rounds 3

Both variants run the same TLS cluster (a LocalCluster with 2 one-thread
process workers, certificates from ``dask_oxigdal.auth.testing``), the
extension installed by the scheduler preload, and a client with a user
certificate (alice, tenant team-a); only ``oxigdal.auth.enabled`` differs.
Rounds alternate the order of the variants. Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _machine
import _sched_common as common
import cloudpickle
import dask
from distributed import Client, LocalCluster, wait

import dask_oxigdal
from dask_oxigdal.auth import testing

cloudpickle.register_pickle_by_value(common)

TARGET = 1.05
VARIANTS = ("extension", "extension+auth")


def _run(variant: str, creds: dict, n: int, saturation, audit: str) -> float:
    cfg = {
        "distributed.scheduler.worker-saturation": saturation,
        "oxigdal.tenants": {"team-a": 1, "team-b": 1},
    }
    if variant == "extension+auth":
        cfg.update(testing.auth_config(audit_log=audit))
    with dask.config.set(cfg):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            protocol="tls",
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
            security=testing.security(creds, "ops", scheduler="scheduler", worker="worker"),
            scheduler_kwargs={"preload": ["dask_oxigdal.preload"]},
        )
        client = Client(cluster.scheduler_address, security=testing.security(creds, "alice"))
    try:
        client.gather(client.map(common.noop, range(50), key=[f"warm-{i}" for i in range(50)]))
        t0 = time.perf_counter()
        futures = client.map(common.noop, range(n), key=[f"noop-{i}" for i in range(n)])
        wait(futures)
        elapsed = time.perf_counter() - t0
        snap = dask_oxigdal.status(client)
        assert snap["installed"], snap
        tenant = "team-a" if variant == "extension+auth" else "default"
        assert snap["tenants"][tenant]["completed"] == n + 50, snap["tenants"]
        del futures
        return elapsed / n
    finally:
        client.close()
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; exit 1 when the target is missed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--saturation", default="1.1", help="worker-saturation (1.1 or inf)")
    args = p.parse_args(argv)
    import distributed

    print(_machine.describe(f"dask {dask.__version__}, distributed {distributed.__version__}"))
    print(f"load average before: {os.getloadavg()}")
    saturation = float(args.saturation)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as d:
        creds = testing.make_credentials(os.path.join(d, "certs"))
        for r in range(args.rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            for v in order:
                t = _run(v, creds, args.tasks, saturation, os.path.join(d, f"audit-{r}.jsonl"))
                times[v].append(t)
                print(f"  {v:15s} round {r + 1}: {t * 1e3:.3f} ms/task", flush=True)
    med = {v: statistics.median(t) for v, t in times.items()}
    ratio = med["extension+auth"] / med["extension"]
    best = min(times["extension+auth"]) / min(times["extension"])
    print(f"load average after: {os.getloadavg()}")
    print(
        f"\n| tasks | extension ms/task | extension+auth ms/task | ratio (median) | ratio (best) |"
        f"\n|---|---|---|---|---|\n| {args.tasks:,} | {med['extension'] * 1e3:.3f} | "
        f"{med['extension+auth'] * 1e3:.3f} | {ratio:.3f} | {best:.3f} |"
    )
    print(f"target <= {TARGET}: {'met' if ratio <= TARGET else 'MISSED'}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
