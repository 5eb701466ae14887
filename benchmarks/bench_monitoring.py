"""Cost of observability: the Monitor policy per task, and a /metrics scrape.

Run::

    python benchmarks/bench_monitoring.py [--quick] [--n 20000] [--rounds 3]

Side by side in one run, on the same LocalCluster shape (2 process workers x 1
thread, the scheduler in this process):

- per-task cost of ``n`` no-op ``client.map`` tasks with vanilla Dask, with the
  extension without the Monitor policy (FairShare + Quota), and with it (the
  default policies); ratios against vanilla and Monitor on/off;
- CPU time per task inside each policy hook (thread CPU time, robust to other
  jobs on the machine);
- wall time of one ``GET /metrics`` (distributed's own metrics, then with the
  dask_oxigdal collector registered, for ``--tenants`` tenants with work), best
  of ``--scrapes``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import urllib.request

import _machine
import dask
from _sched_common import noop
from distributed import Client, LocalCluster, wait

import dask_oxigdal
from dask_oxigdal.annotations import annotate

NO_MONITOR = [
    {"class": "dask_oxigdal.scheduling.fairshare.FairShare"},
    {"class": "dask_oxigdal.scheduling.quota.Quota"},
]


def machine() -> str:
    """This machine and the library versions."""
    from importlib.metadata import version

    import distributed

    return _machine.describe(
        f"dask {dask.__version__}, distributed {distributed.__version__}, "
        f"prometheus_client {version('prometheus_client')}"
    )


def _cluster() -> tuple[LocalCluster, Client]:
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.CRITICAL,
    )
    return cluster, Client(cluster)


def _map_run(variant: str, n: int) -> float:
    cluster, client = _cluster()
    try:
        if variant == "no-monitor":
            dask_oxigdal.register(client, policies=NO_MONITOR)
        elif variant == "monitor":
            dask_oxigdal.register(client)
        client.gather(client.map(noop, range(50), key=[f"warm-{i}" for i in range(50)]))
        t0 = time.perf_counter()
        futures = client.map(noop, range(n), key=[f"noop-{i}" for i in range(n)])
        wait(futures)
        elapsed = time.perf_counter() - t0
        if variant != "vanilla":
            st = dask_oxigdal.status(client)
            assert st["installed"] and not st["disabled"], st["disabled"]
            assert ("Monitor" in st["policies"]) == (variant == "monitor")
        return elapsed / n
    finally:
        client.close()
        cluster.close()


def bench_overhead(n: int, rounds: int) -> dict[str, list[float]]:
    """Per-task seconds of each variant, rounds interleaved, the order rotated every round."""
    out: dict[str, list[float]] = {"vanilla": [], "no-monitor": [], "monitor": []}
    variants = list(out)
    for r in range(rounds):
        for variant in variants[r % 3 :] + variants[: r % 3]:
            out[variant].append(_map_run(variant, n))
    return out


def bench_hooks(n: int) -> dict[str, float]:
    """CPU seconds per task spent in each policy hook (thread CPU time, so other jobs
    on the machine do not inflate it), for ``n`` no-op tasks with the default policies.

    The scheduler runs in this process (LocalCluster), so the hooks of the live
    extension are wrapped with ``time.thread_time`` counters.
    """
    cluster, client = _cluster()
    try:
        dask_oxigdal.register(client)
        ext = cluster.scheduler.plugins["oxigdal"]
        spent: dict[str, float] = {}

        def wrap(obj, method: str, label: str) -> None:
            fn = getattr(obj, method)

            def timed(*args, **kwargs):
                t0 = time.thread_time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    spent[label] = spent.get(label, 0.0) + time.thread_time() - t0

            setattr(obj, method, timed)

        for policy in ext.policies:
            for method in ("update_graph", "transition", "periodic"):
                wrap(policy, method, f"{type(policy).__name__}.{method}")
        wrap(ext, "transition", "extension.transition (all policies)")
        client.gather(client.map(noop, range(50), key=[f"warm-{i}" for i in range(50)]))
        spent.clear()
        t0 = time.perf_counter()
        wait(client.map(noop, range(n), key=[f"noop-{i}" for i in range(n)]))
        spent["wall (not CPU)"] = time.perf_counter() - t0
        return {k: v / n for k, v in spent.items()}
    finally:
        client.close()
        cluster.close()


def bench_scrape(tenants: int, scrapes: int) -> dict[str, float]:
    """Best ``GET /metrics`` wall time without and with the extension."""
    cluster, client = _cluster()
    try:
        url = client.dashboard_link.rsplit("/status", 1)[0] + "/metrics"

        def scrape() -> None:
            urllib.request.urlopen(url, timeout=60).read()

        out = {"distributed only": _machine.best_of(scrape, scrapes)}
        names = {f"tenant-{i}": 1 + i % 3 for i in range(tenants)}
        dask_oxigdal.register(client, tenants=names)
        futures = []
        for name in names:
            with annotate(tenant=name):
                futures += client.map(noop, range(5), key=[f"{name}-{i}" for i in range(5)])
        wait(futures)
        body = urllib.request.urlopen(url, timeout=60).read().decode()
        assert "dask_oxigdal_tenant_running" in body
        out[f"with dask_oxigdal ({tenants} tenants)"] = _machine.best_of(scrape, scrapes)
        return out
    finally:
        client.close()
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    """Run both parts and print the figures and ratios."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 1 round")
    p.add_argument("--n", type=int, default=None, help="no-op tasks per run (default 20000)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--tenants", type=int, default=50)
    p.add_argument("--scrapes", type=int, default=20)
    args = p.parse_args(argv)
    n = args.n or (2000 if args.quick else 20000)
    rounds = args.rounds or (1 if args.quick else 3)
    print(machine())
    print(f"\n== per-task cost, {n} no-op client.map tasks, {rounds} round(s), median ==")
    res = bench_overhead(n, rounds)
    med = {k: statistics.median(v) for k, v in res.items()}
    for variant, value in med.items():
        print(
            f"{variant:<12} {value * 1e3:8.3f} ms/task   x{value / med['vanilla']:.3f} vs vanilla"
        )
    print(f"Monitor on / off: x{med['monitor'] / med['no-monitor']:.3f}")
    print(f"\n== CPU time per task in the hooks, {n} no-op tasks, default policies ==")
    for name, value in sorted(bench_hooks(n).items(), key=lambda kv: -kv[1]):
        print(f"{name:<40} {value * 1e6:9.2f} us/task")
    print(f"\n== GET /metrics, best of {args.scrapes} ==")
    scrape = bench_scrape(args.tenants, args.scrapes)
    base = next(iter(scrape.values()))
    for name, value in scrape.items():
        print(f"{name:<32} {value * 1e3:8.2f} ms   x{value / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
