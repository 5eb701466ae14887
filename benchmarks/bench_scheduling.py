"""Scheduling benchmarks: the dask-oxigdal scheduler extension beside vanilla Dask, in one run.

    python benchmarks/bench_scheduling.py --quick     # smoke test: 2,000 tasks, 1 round
    python benchmarks/bench_scheduling.py             # full: 10,000 and 100,000 tasks
    python benchmarks/bench_scheduling.py --only overhead --sizes 10000 --rounds 3

Two parts:

**overhead**: per-task cost of no-op tasks (``client.map`` and a tree reduce of
no-ops built as a raw graph) on ``LocalCluster(n_workers=2,
threads_per_worker=1, processes=True)``, each run on a fresh cluster, with
and without the extension (``dask_oxigdal.register(client)`` with the default
policies, ``oxigdal.scheduling.policies``), runs alternated (vanilla, oxigdal, vanilla,
...), median of the rounds; with root-task queuing on (Dask's default
``worker-saturation: 1.1``) and off (``inf``). Ratio = oxigdal / vanilla;
target <= 1.10.

**fairness**: three tenants with weights 2:1:1, each 300 x 20 ms tasks
submitted at once on 2 workers x 2 threads (process workers): each tenant's
share of worker-time over the contended interval against its entitlement,
and Jain's index of share / entitlement; the same for per-tenant
map(200) -> tree-reduce graphs; and a late tenant B that submits 2 s after A's
2,000-task backlog (equal weights): the delay between B's submission and its
first task's start, and B's share while it runs. Vanilla Dask beside each.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _machine
import _sched_common as common
import cloudpickle
import dask
from distributed import Client, LocalCluster, wait

import dask_oxigdal
from dask_oxigdal.annotations import annotate

# process workers cannot import this directory: ship the helpers by value
cloudpickle.register_pickle_by_value(common)

VARIANTS = ("vanilla", "oxigdal")
#: optional third overhead variant: every task gated by guaranteed slots (Quota)
SLOTS = "oxigdal+slots"
SATURATIONS = {"queuing on (1.1)": 1.1, "queuing off (inf)": "inf"}
TARGET = 1.10


def machine() -> str:
    """Describe this machine: CPU model, cores, memory, Python and Dask versions."""
    import distributed

    return _machine.describe(f"dask {dask.__version__}, distributed {distributed.__version__}")


def _cluster(nworkers: int, nthreads: int, saturation) -> tuple[LocalCluster, Client]:
    with dask.config.set({"distributed.scheduler.worker-saturation": saturation}):
        cluster = LocalCluster(
            n_workers=nworkers,
            threads_per_worker=nthreads,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        )
        client = Client(cluster)
    return cluster, client


# ----------------------------------------------------------------- overhead
def _overhead_run(variant: str, workload: str, n: int, saturation) -> tuple[float, int]:
    cluster, client = _cluster(2, 1, saturation)
    try:
        if variant == "oxigdal":
            dask_oxigdal.register(client)
        elif variant == SLOTS:
            # one guaranteed slot for the default tenant: Quota admits every task
            dask_oxigdal.register(client, tenants={"default": {"guaranteed-slots": 1}})
        client.gather(client.map(common.noop, range(50), key=[f"warm-{i}" for i in range(50)]))
        if workload == "map":
            t0 = time.perf_counter()
            futures = client.map(common.noop, range(n), key=[f"noop-{i}" for i in range(n)])
            wait(futures)
            elapsed = time.perf_counter() - t0
            ntasks = n
            del futures
        else:
            dsk, root, ntasks = common.noop_tree(n)
            t0 = time.perf_counter()
            client.get(dsk, root)
            elapsed = time.perf_counter() - t0
        if variant != "vanilla":
            snap = dask_oxigdal.status(client)
            assert snap["installed"] and not snap["disabled"], snap["disabled"]
        return elapsed, ntasks
    finally:
        client.close()
        cluster.close()


def bench_overhead(sizes, rounds, saturations, workloads, slots=False) -> list[dict]:
    """Alternate vanilla / oxigdal runs; median and best per-task cost and their ratio."""
    variants = (*VARIANTS, SLOTS) if slots else VARIANTS
    rows = []
    for label, saturation in saturations.items():
        for workload in workloads:
            for n in sizes:
                times: dict[str, list[float]] = {v: [] for v in variants}
                ntasks = n
                for r in range(rounds):
                    order = variants if r % 2 == 0 else variants[::-1]
                    for variant in order:
                        elapsed, ntasks = _overhead_run(variant, workload, n, saturation)
                        times[variant].append(elapsed / ntasks)
                        print(
                            f"  [{label}] {workload:4s} n={n:>7,} {variant:8s} "
                            f"round {r + 1}: {elapsed / ntasks * 1e3:.3f} ms/task",
                            flush=True,
                        )
                med = {v: statistics.median(t) for v, t in times.items()}
                best = {v: min(t) for v, t in times.items()}
                rows.append(
                    {
                        "setting": label,
                        "workload": workload,
                        "tasks": ntasks,
                        "rounds": rounds,
                        "vanilla_ms": med["vanilla"] * 1e3,
                        "oxigdal_ms": med["oxigdal"] * 1e3,
                        "ratio_median": med["oxigdal"] / med["vanilla"],
                        "ratio_best": best["oxigdal"] / best["vanilla"],
                        "slots_ms": med[SLOTS] * 1e3 if slots else None,
                    }
                )
    return rows


def print_overhead(rows) -> bool:
    """Print the overhead table; return whether every median ratio meets the target."""
    print("\n## Scheduler overhead (per no-op task; median of rounds; ratio = oxigdal / vanilla)")
    print(
        f"{'setting':18s} {'workload':8s} {'tasks':>8s} {'rounds':>6s} "
        f"{'vanilla ms':>10s} {'oxigdal ms':>10s} {'ratio med':>9s} {'ratio best':>10s}"
    )
    ok = True
    for r in rows:
        ok = ok and r["ratio_median"] <= TARGET
        print(
            f"{r['setting']:18s} {r['workload']:8s} {r['tasks']:>8,} {r['rounds']:>6d} "
            f"{r['vanilla_ms']:>10.3f} {r['oxigdal_ms']:>10.3f} {r['ratio_median']:>9.3f} "
            f"{r['ratio_best']:>10.3f}"
        )
        if r["slots_ms"] is not None:
            print(
                f"{'':37s} with guaranteed slots (every task gated): {r['slots_ms']:.3f} ms "
                f"(ratio {r['slots_ms'] / r['vanilla_ms']:.3f}, not part of the target)"
            )
    print(f"target: ratio <= {TARGET:.2f} -> {'met' if ok else 'MISSED'}")
    return ok


# ----------------------------------------------------------------- fairness
def _fair_maps(client, n):
    futures = []
    for tenant in common.WEIGHTS:
        with annotate(tenant=tenant):
            futures += client.map(
                common.work,
                range(n),
                tenant=tenant,
                key=[f"{tenant}-{i}" for i in range(n)],
                fifo_timeout="60s",
            )
    records = [rec for recs in client.gather(futures) for rec in recs]
    return common.contended_shares(records)


def _fair_trees(client, n):
    futures = []
    for tenant in common.WEIGHTS:
        graph = common.tree(tenant, n)
        with annotate(tenant=tenant):
            futures.append(client.compute(graph))
    records = [rec for recs in client.gather(futures) for rec in recs]
    return common.contended_shares(records, until=common.tree_until(records))


def _late_tenant(client, backlog, late=2.0, nb=100):
    with annotate(tenant="a"):
        fa = client.map(
            common.work, range(backlog), tenant="a", key=[f"la-{i}" for i in range(backlog)]
        )
    time.sleep(late)
    submitted = time.time()
    with annotate(tenant="b"):
        fb = client.map(common.work, range(nb), tenant="b", key=[f"lb-{i}" for i in range(nb)])
    rb = [rec for recs in client.gather(fb) for rec in recs]
    first_b = min(rec[1] for rec in rb)
    last_b = max(rec[1] for rec in rb)
    wait(fa)
    ra = [rec for recs in client.gather(fa) for rec in recs]
    a_during = sum(1 for rec in ra if first_b <= rec[1] <= last_b)
    return {
        "delay_s": first_b - submitted,
        "b_share": nb / (nb + a_during) if a_during + nb else 0.0,
    }


def bench_fairness(n_maps, n_tree, backlog) -> dict:
    """Shares, Jain's index and late-tenant delay, vanilla Dask and oxigdal, alternated."""
    out: dict = {}
    for variant in VARIANTS:
        cluster, client = _cluster(2, 2, 1.1)
        try:
            if variant == "oxigdal":
                dask_oxigdal.register(client, tenants=common.WEIGHTS)
            # warm the workers (imports, function cache) before measuring
            client.gather(client.map(common.work, range(8), tenant="w", delay=0.001))
            maps = _fair_maps(client, n_maps)
            trees = _fair_trees(client, n_tree)
        finally:
            client.close()
            cluster.close()
        # late tenant: a fresh cluster, equal weights
        cluster, client = _cluster(2, 2, 1.1)
        try:
            if variant == "oxigdal":
                dask_oxigdal.register(client, tenants={"a": 1, "b": 1})
            client.gather(client.map(common.work, range(8), tenant="w", delay=0.001))
            late = _late_tenant(client, backlog)
        finally:
            client.close()
            cluster.close()
        out[variant] = {"maps": maps, "trees": trees, "late": late}
        print(f"  fairness {variant}: done", flush=True)
    return out


def print_fairness(res, n_maps, n_tree, backlog) -> None:
    """Print shares vs entitlement, Jain's index and the late-tenant figures side by side."""
    ent = common.ENTITLED
    print(
        "\n## Fairness: weights a:b:c = 2:1:1, 2 workers x 2 threads (process workers), 20 ms tasks"
    )
    for part, label in (
        ("maps", f"{n_maps} root tasks per tenant"),
        ("trees", f"map({n_tree}) -> tree-reduce (fan-in 4) per tenant"),
    ):
        print(f"\n{label}: share of worker-time over the contended interval")
        print(f"{'tenant':8s} {'entitled':>8s} {'vanilla':>8s} {'oxigdal':>8s} {'ox/ent':>7s}")
        for tenant, e in ent.items():
            v = res["vanilla"][part][0][tenant]
            o = res["oxigdal"][part][0][tenant]
            print(f"{tenant:8s} {e:>8.3f} {v:>8.3f} {o:>8.3f} {o / e:>7.3f}")
        jv = common.jain(res["vanilla"][part][0], ent)
        jo = common.jain(res["oxigdal"][part][0], ent)
        iv = res["vanilla"][part][1]
        io = res["oxigdal"][part][1]
        print(
            f"{'Jain':8s} {'1.000':>8s} {jv:>8.4f} {jo:>8.4f}   "
            f"(contended {iv:.1f} s vanilla, {io:.1f} s oxigdal)"
        )
    print(
        f"\nlate tenant: B (100 tasks) submits 2 s after A's {backlog}-task backlog, equal weights"
    )
    print(f"{'':28s} {'vanilla':>10s} {'oxigdal':>10s}")
    dv, do = res["vanilla"]["late"]["delay_s"], res["oxigdal"]["late"]["delay_s"]
    print(f"{'B submit -> first start (s)':28s} {dv:>10.3f} {do:>10.3f}")
    print(f"{'  in task durations':28s} {dv / common.TASK:>10.1f} {do / common.TASK:>10.1f}")
    sv, so = res["vanilla"]["late"]["b_share"], res["oxigdal"]["late"]["b_share"]
    print(f"{'B share while B runs (0.5)':28s} {sv:>10.3f} {so:>10.3f}")


def main(argv=None) -> int:
    """Run the benchmarks and print the tables.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 (timings are reported, never asserted).
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: small sizes, 1 round")
    p.add_argument("--only", choices=("overhead", "fairness"), help="run one part")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument(
        "--saturation",
        choices=("on", "off", "both"),
        default=None,
        help="root-task queuing: on (1.1), off (inf) or both",
    )
    p.add_argument("--workloads", default="map,tree", help="comma-separated: map,tree")
    p.add_argument(
        "--slots",
        action="store_true",
        help="also time a third variant where guaranteed slots gate every task",
    )
    args = p.parse_args(argv)
    if args.quick:
        sizes, rounds, sat = args.sizes or [2000], args.rounds or 1, args.saturation or "on"
        n_maps, n_tree, backlog = 60, 100, 600
    else:
        sizes, rounds, sat = args.sizes or [10_000, 100_000], args.rounds or 3, args.saturation
        sat = sat or "both"
        n_maps, n_tree, backlog = 300, 200, 2000
    saturations = {
        k: v for k, v in SATURATIONS.items() if sat == "both" or (sat == "on") == (v == 1.1)
    }
    workloads = [w for w in args.workloads.split(",") if w]
    print(f"machine: {machine()}")
    print(f"command: {' '.join([os.path.basename(sys.argv[0]), *sys.argv[1:]])}")
    if args.only in (None, "overhead"):
        rows = bench_overhead(sizes, rounds, saturations, workloads, slots=args.slots)
        print_overhead(rows)
    if args.only in (None, "fairness"):
        res = bench_fairness(n_maps, n_tree, backlog)
        print_fairness(res, n_maps, n_tree, backlog)
    return 0


if __name__ == "__main__":
    sys.exit(main())
