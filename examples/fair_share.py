"""Fair share between three tenants on one Dask cluster.

Run::

    python examples/fair_share.py [--tasks 300] [--vanilla]

Three tenants with weights 2:1:1 submit the same kind of work at the same
moment. With the dask-oxigdal scheduler extension, tenant a gets half of the
workers' time and b and c a quarter each while all three have work; with
``--vanilla`` (plain Dask) they split it evenly. Each task records, on the
worker, when it started and stopped; the script prints each tenant's share of
worker-time over the contended interval and ``status()``'s accounting.
"""

from __future__ import annotations

import argparse
import json
import time

from distributed import Client, LocalCluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.scheduling import register, status

WEIGHTS = {"a": 2, "b": 1, "c": 1}


def tile_job(i: int, tenant: str, seconds: float = 0.02) -> tuple[str, float, float]:
    """Stand-in for processing one raster tile: ~20 ms of worker time."""
    start = time.time()
    time.sleep(seconds)
    return tenant, start, time.time()


def shares(records: list[tuple[str, float, float]]) -> dict[str, float]:
    """Share of worker-time per tenant while every tenant has work."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for tenant, start, stop in records:
        spans.setdefault(tenant, []).append((start, stop))
    t0 = max(min(a for a, _ in s) for s in spans.values())
    t1 = min(max(b for _, b in s) for s in spans.values())
    used = {t: sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in s) for t, s in spans.items()}
    total = sum(used.values()) or 1.0
    return {t: round(u / total, 3) for t, u in sorted(used.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300, help="tasks per tenant")
    parser.add_argument("--vanilla", action="store_true", help="plain Dask, no extension")
    args = parser.parse_args()

    with (
        LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        if not args.vanilla:
            register(client, tenants=WEIGHTS)  # idempotent
        futures = []
        for tenant in WEIGHTS:
            with annotate(tenant=tenant):  # compute-time form: submit/map/compute/persist
                futures += client.map(tile_job, range(args.tasks), tenant=tenant)
        records = client.gather(futures)
        label = "vanilla Dask" if args.vanilla else "dask-oxigdal FairShare"
        entitled = {t: w / sum(WEIGHTS.values()) for t, w in WEIGHTS.items()}
        print(f"{label}: share of worker-time {shares(records)} (entitled {entitled})")
        snapshot = status(client)
        if snapshot.get("installed"):
            tenants = {
                t: {k: v[k] for k in ("weight", "completed", "worker_seconds", "lifetime_share")}
                for t, v in snapshot["tenants"].items()
            }
            print(json.dumps(tenants, indent=2))


if __name__ == "__main__":
    main()
