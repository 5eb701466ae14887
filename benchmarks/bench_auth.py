"""Cost of the identity and RBAC hooks (``oxigdal.auth``) on the no-op ``client.map`` benchmark.

    python benchmarks/bench_auth.py --tasks 10000 --rounds 9
    python benchmarks/bench_auth.py --quick          # 2,000 tasks, 3 rounds

Two TLS clusters run side by side for the whole benchmark (LocalClusters
with 2 one-thread process workers each, certificates from
``dask_oxigdal.auth.testing``, the extension installed by the scheduler
preload, a client presenting alice's certificate); they differ only in
``oxigdal.auth.enabled``. Each round submits the same ``client.map`` to
both, in alternating order, and records the ratio auth / no-auth of that
round. The figure is the **median of the per-round ratios**: both halves of
a round see nearly the same machine load, and no cluster start-up is
timed, so a noisy neighbour moves both halves of a round rather than one
variant. Target: median ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import contextlib
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


def _start(variant: str, creds: dict, saturation: float, audit: str, stack) -> tuple:
    cfg = {
        "distributed.scheduler.worker-saturation": saturation,
        "oxigdal.tenants": {"team-a": 1, "team-b": 1},
    }
    if variant == "extension+auth":
        cfg.update(testing.auth_config(audit_log=audit))
    with dask.config.set(cfg):
        cluster = stack.enter_context(
            LocalCluster(
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
        )
        client = stack.enter_context(
            Client(cluster.scheduler_address, security=testing.security(creds, "alice"))
        )
    with dask_oxigdal.annotate(tenant="team-a"):
        warm = client.map(common.noop, range(50), key=[f"warm-{i}" for i in range(50)])
    client.gather(warm)
    del warm
    return cluster, client


def _round(client: Client, n: int, tag: str) -> float:
    t0 = time.perf_counter()
    with dask_oxigdal.annotate(tenant="team-a"):  # the same submission for both variants
        futures = client.map(common.noop, range(n), key=[f"noop-{tag}-{i}" for i in range(n)])
    wait(futures)
    elapsed = time.perf_counter() - t0
    del futures
    return elapsed / n


def _settle(runs: dict[str, tuple], timeout: float = 30.0) -> None:
    """Wait until both (in-process) schedulers forgot the last round's tasks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(cluster.scheduler.tasks) == 0 for cluster, _ in runs.values()):
            return
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; exit 1 when the target is missed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--quick", action="store_true", help="2,000 tasks, 3 rounds (a smoke run)")
    p.add_argument("--saturation", default="1.1", help="worker-saturation (1.1 or inf)")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.rounds = 2_000, 3
    import distributed

    print(_machine.describe(f"dask {dask.__version__}, distributed {distributed.__version__}"))
    print(f"load average before: {os.getloadavg()}")
    saturation = float(args.saturation)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        creds = testing.make_credentials(os.path.join(d, "certs"))
        runs = {
            v: _start(v, creds, saturation, os.path.join(d, "audit.jsonl"), stack) for v in VARIANTS
        }
        for r in range(args.rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            this = {}
            for v in order:
                _settle(runs)
                this[v] = _round(runs[v][1], args.tasks, str(r))
                times[v].append(this[v])
            ratios.append(this["extension+auth"] / this["extension"])
            print(
                f"  round {r + 1}: extension {this['extension'] * 1e3:.3f} ms/task, "
                f"+auth {this['extension+auth'] * 1e3:.3f} ms/task, ratio {ratios[-1]:.3f}",
                flush=True,
            )
        done = args.tasks * args.rounds + 50
        for v, (_, client) in runs.items():
            snap = dask_oxigdal.status(client)
            assert snap["tenants"]["team-a"]["completed"] == done, (v, snap["tenants"])
    med = {v: statistics.median(t) for v, t in times.items()}
    ratio = statistics.median(ratios)
    print(f"load average after: {os.getloadavg()}")
    print(
        "\n| tasks x rounds | extension ms/task (median) | extension+auth ms/task (median) "
        "| ratio (median of per-round ratios) | per-round ratios |\n|---|---|---|---|---|\n"
        f"| {args.tasks:,} x {args.rounds} | {med['extension'] * 1e3:.3f} | "
        f"{med['extension+auth'] * 1e3:.3f} | {ratio:.3f} | "
        f"{', '.join(f'{x:.2f}' for x in ratios)} |"
    )
    print(f"target <= {TARGET}: {'met' if ratio <= TARGET else 'MISSED'}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
