"""Autoscaling: Dask's Adaptive vs a replay of the dask-kubernetes operator vs ours.

One seeded trace is replayed three times on a ``SpecCluster`` whose new
workers take a simulated start latency (``--latency``, 5 s in ``--quick``
runs, 30 s in the full run). Tasks sleep, so worker-seconds are the cost and
the 2 cores are not the limit. Three tenants: ``daily`` (a daily cycle
compressed into the trace), ``bursty`` (random bursts) and ``batch`` (a gang
of 4 and deadline jobs).

- ``adaptive``: Dask's default ``Adaptive`` (interval 1 s, wait-count 3,
  target-duration 5 s) on Dask's ``adaptive_target``;
- ``operator``: the dask-kubernetes operator's policy replayed: poll Dask's
  target every 5 s, scale up at once, down by at most 25 % per step with a
  15 s cooldown;
- ``ours``: the same ``Adaptive`` with the ``Autoscaling`` policy.

Every run has the extension with FairShare, Quota, Gang (which waits 120 s
for a gang larger than the cluster) and Deadline, so deadline misses are
counted the same way. Reported: worker-seconds (billed from the moment a worker is
requested, as a cloud bills a starting VM or pod; the seconds of connected
workers in brackets), deadline jobs missed, tasks
computed more than once, the reaction of our target to a new deadline job,
and the scheduler overhead of the policy on 10k no-op tasks. A PNG of
workers over time against demand and deadlines is written (``--png``).

Usage::

    python benchmarks/bench_autoscaling.py --quick
    python benchmarks/bench_autoscaling.py            # 30 s start latency, longer trace
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import itertools

import _machine
import dask
from distributed import Client, Scheduler, SpecCluster, Worker, wait
from distributed.diagnostics.plugin import SchedulerPlugin

import dask_oxigdal
from dask_oxigdal.annotations import annotate

POLICIES = [
    {"class": "dask_oxigdal.scheduling.fairshare.FairShare"},
    {"class": "dask_oxigdal.scheduling.quota.Quota"},
    {"class": "dask_oxigdal.scheduling.gang.Gang", "timeout": "120s"},
    {"class": "dask_oxigdal.scheduling.deadline.Deadline"},
]
AUTOSCALING = {"class": "dask_oxigdal.scheduling.autoscaling.Autoscaling"}
VARIANTS = ("adaptive", "operator", "ours")


class SlowStartWorker(Worker):
    """A worker that takes ``start_latency`` seconds to start (a pod or a batch job)."""

    def __init__(self, *args, start_latency: float = 0.0, **kwargs):
        self._start_latency = start_latency
        super().__init__(*args, **kwargs)

    async def start_unsafe(self):
        await asyncio.sleep(self._start_latency)
        return await super().start_unsafe()


class ComputeCounter(SchedulerPlugin):
    """Keys computed more than once (``processing -> memory`` twice)."""

    name = "bench-compute-counter"

    def __init__(self):
        self.computed: dict = {}

    def transition(self, key, start, finish, *args, **kwargs):
        if start == "processing" and finish == "memory":
            self.computed[key] = self.computed.get(key, 0) + 1

    def recomputed(self) -> int:
        return sum(n - 1 for n in self.computed.values() if n > 1)


def sleep_task(seconds, *deps):
    time.sleep(seconds)
    return seconds


def make_trace(seed: int, length: float, period: float) -> list[tuple]:
    """``[(at, tenant, kind, n, seconds, extra)]`` sorted by ``at``."""
    rng = random.Random(seed)
    events = []
    t = 0.0
    while t < length:  # daily: arrival rate follows a compressed day
        rate = 1.0 + 3.0 * max(0.0, math.sin(2 * math.pi * t / period))
        events.append((t, "daily", "map", max(1, round(rate)), 1.0, None))
        t += 1.0
    for _ in range(max(2, int(length / 40))):  # bursts
        events.append((rng.uniform(0.1, 0.8) * length, "bursty", "map", 24, 1.0, None))
    events.append((0.35 * length, "batch", "gang", 4, 2.0, None))
    for frac in (0.2, 0.55, 0.8):  # deadline jobs: 16 x 1 s due in 25 s
        events.append((frac * length, "batch", "deadline", 16, 1.0, 25.0))
    return sorted(events, key=lambda e: e[0])


async def operator_loop(cluster, stop: asyncio.Event) -> None:
    """The dask-kubernetes operator's autoscaler, replayed (Dask's target)."""
    s = cluster.scheduler
    last_down = 0.0
    while not stop.is_set():
        n = len(cluster.worker_spec)
        target = min(max(s.adaptive_target(), 1), cluster._bench_max)
        now = time.monotonic()
        if target > n:
            cluster.scale(target)
        elif target < n and now - last_down >= 15.0:
            new = max(target, n - max(1, math.floor(0.25 * n)))
            names = s.workers_to_close(target=new, attribute="name")
            if names:
                await s.retire_workers(names=names, remove=True, close_workers=True)
                await cluster.scale_down(names)
                last_down = now
        try:
            await asyncio.wait_for(stop.wait(), 5.0)
        except TimeoutError:
            pass


async def run_variant(variant: str, trace, args) -> dict:
    worker = {
        "cls": SlowStartWorker,
        "options": {"nthreads": 1, "start_latency": args.latency, "dashboard_address": None},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    config = {
        "oxigdal.autoscaling.start-latency": f"{args.latency}s",
        "oxigdal.autoscaling.cooldown": f"{args.cooldown}s",
        "oxigdal.autoscaling.forecast.interval": f"{args.forecast_interval}s",
        "oxigdal.autoscaling.forecast.season": max(1, round(args.period / args.forecast_interval)),
        "distributed.scheduler.unknown-task-duration": "1s",
    }
    with dask.config.set(config):
        cluster = await SpecCluster(
            workers={"w0": worker},
            worker=worker,
            scheduler=scheduler,
            asynchronous=True,
            silence_logs=logging.CRITICAL,
        )
        cluster._bench_max = args.maximum
        s = cluster.scheduler
        counter = ComputeCounter()
        s.add_plugin(counter)
        client = await Client(cluster, asynchronous=True)
        policies = POLICIES + ([AUTOSCALING] if variant == "ours" else [])
        await dask_oxigdal.register(client, policies=policies)
        stop = asyncio.Event()
        op = None
        if variant == "operator":
            op = asyncio.ensure_future(operator_loop(cluster, stop))
        else:
            cluster.adapt(minimum=1, maximum=args.maximum, interval="1s")
        samples = []  # (t, workers, demand tasks)
        deadlines = []
        reactions = []
        futures = []
        t0 = time.monotonic()

        async def sampler():
            while not stop.is_set():
                now = time.monotonic() - t0
                pending = sum(u.pending for u in s.plugins["oxigdal"].usage.values())
                samples.append((now, len(s.workers), pending, len(cluster.worker_spec)))
                await asyncio.sleep(0.25)

        samp = asyncio.ensure_future(sampler())
        policy = s.plugins["oxigdal"].get_policy("Autoscaling") if variant == "ours" else None
        seq = 0
        for at, tenant, kind, n, seconds, extra in trace:
            delay = at - (time.monotonic() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            seq += 1
            keys = [f"{tenant}-{kind}-{seq}-{i}" for i in range(n)]
            if kind == "gang":
                with annotate(tenant=tenant, gang=f"g{seq}"):
                    futures += client.map(sleep_task, [seconds] * n, key=keys)
            elif kind == "deadline":
                before = policy.decisions if policy else 0
                with annotate(tenant=tenant, deadline=f"{extra}s"):
                    futures += client.map(sleep_task, [seconds] * n, key=keys)
                deadlines.append(time.monotonic() - t0 + extra)
                if policy is not None:
                    t_sub = time.monotonic()
                    while policy.decision["rules"].get("deadline", 0) <= 0:
                        if time.monotonic() - t_sub > 10:
                            break
                        await asyncio.sleep(0.02)
                    reactions.append(time.monotonic() - t_sub)
                    del before
            else:
                with annotate(tenant=tenant):
                    futures += client.map(sleep_task, [seconds] * n, key=keys)
        await wait(futures)
        done_at = time.monotonic() - t0
        # let the cluster scale down (counted: idle workers cost until they go)
        end = done_at + args.tail
        while time.monotonic() - t0 < end:
            await asyncio.sleep(0.25)
        stop.set()
        await samp
        if op is not None:
            await op
        snap = await dask_oxigdal.status(client)
        missed = sum(
            sum(q.values()) for q in snap["policies"]["Deadline"].get("missed", {}).values()
        )
        ws = billed = 0.0
        for (ta, na, _, ra), (tb, *_) in itertools.pairwise(samples):
            ws += na * (tb - ta)
            billed += ra * (tb - ta)
        await client.close()
        await cluster.close()
    return {
        "variant": variant,
        "worker_seconds": billed,
        "connected_worker_seconds": ws,
        "missed": missed,
        "deadline_jobs": len(deadlines),
        "recomputed": counter.recomputed(),
        "finished_at": done_at,
        "peak_workers": max(x[1] for x in samples),
        "reaction_max": max(reactions) if reactions else None,
        "samples": samples,
        "deadlines": deadlines,
    }


def overhead(n: int, rounds: int) -> dict:
    """10k no-op tasks: default policies vs default + Autoscaling (process workers)."""
    from distributed import LocalCluster

    def noop(x):
        return None

    times: dict[str, list[float]] = {"default": [], "autoscaling": []}
    default = list(dask.config.get("oxigdal.scheduling.policies"))
    for r in range(rounds):
        order = ("default", "autoscaling") if r % 2 == 0 else ("autoscaling", "default")
        for variant in order:
            with (
                LocalCluster(
                    n_workers=2,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.CRITICAL,
                ) as cluster,
                Client(cluster) as client,
            ):
                pols = default + ([AUTOSCALING] if variant == "autoscaling" else [])
                dask_oxigdal.register(client, policies=pols)
                client.gather(client.map(noop, range(50), key=[f"warm-{i}" for i in range(50)]))
                t = time.perf_counter()
                wait(client.map(noop, range(n), key=[f"noop-{i}" for i in range(n)]))
                times[variant].append((time.perf_counter() - t) / n)
                snap = dask_oxigdal.status(client)
                assert not snap["disabled"], snap["disabled"]
            print(f"  overhead round {r + 1} {variant}: {times[variant][-1] * 1e3:.3f} ms/task")
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "default_ms": med["default"] * 1e3,
        "autoscaling_ms": med["autoscaling"] * 1e3,
        "ratio": med["autoscaling"] / med["default"],
    }


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(9, 2.6 * len(results)), sharex=True)
    for ax, res in zip(axes, results, strict=True):
        t = [x[0] for x in res["samples"]]
        ax.step(t, [x[3] for x in res["samples"]], where="post", label="requested", color="C2")
        ax.step(t, [x[1] for x in res["samples"]], where="post", label="workers", color="C0")
        ax2 = ax.twinx()
        ax2.plot(t, [x[2] for x in res["samples"]], color="C1", alpha=0.6, label="pending tasks")
        ax2.set_ylabel("pending tasks")
        for d in res["deadlines"]:
            ax.axvline(d, color="C3", linestyle="--", linewidth=0.8)
        ax.set_ylabel("workers")
        ax.set_title(
            f"{res['variant']}: {res['worker_seconds']:.0f} worker-s, "
            f"{res['missed']}/{res['deadline_jobs']} deadlines missed"
        )
    axes[-1].set_xlabel("seconds (dashed: deadlines)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI-sized: 5 s start latency, 90 s trace")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--latency", type=float, default=None)
    p.add_argument("--length", type=float, default=None, help="trace length (s)")
    p.add_argument("--maximum", type=int, default=12)
    p.add_argument("--cooldown", type=float, default=None)
    p.add_argument("--tail", type=float, default=None, help="seconds observed after the work")
    p.add_argument("--overhead-tasks", type=int, default=10_000)
    p.add_argument("--overhead-rounds", type=int, default=None)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--png", default=os.path.join(HERE, "autoscaling.png"))
    args = p.parse_args(argv)
    q = args.quick
    args.latency = args.latency if args.latency is not None else (5.0 if q else 30.0)
    args.length = args.length or (90.0 if q else 360.0)
    args.cooldown = args.cooldown if args.cooldown is not None else (10.0 if q else 30.0)
    args.tail = args.tail if args.tail is not None else (20.0 if q else 60.0)
    args.period = args.length / 1.5
    args.forecast_interval = 5.0 if q else 15.0
    rounds = args.overhead_rounds or (3 if q else 5)
    print(f"machine: {_machine.describe(f'dask {dask.__version__}')}")
    print(f"load average: {os.getloadavg()}")
    trace = make_trace(args.seed, args.length, args.period)
    ntasks = sum(e[3] for e in trace)
    print(
        f"trace: seed {args.seed}, {args.length:.0f} s, {ntasks} tasks, start latency "
        f"{args.latency:g} s, maximum {args.maximum} workers"
    )
    results = []
    for variant in args.variants.split(","):
        res = asyncio.run(run_variant(variant, trace, args))
        results.append(res)
        print(
            f"  {variant:9s} worker-s {res['worker_seconds']:8.1f} (connected "
            f"{res['connected_worker_seconds']:.1f})  missed "
            f"{res['missed']}/{res['deadline_jobs']}  recomputed {res['recomputed']}  "
            f"peak {res['peak_workers']}  work done at {res['finished_at']:.1f} s"
            + (
                f"  deadline reaction <= {res['reaction_max']:.2f} s"
                if res["reaction_max"] is not None
                else ""
            ),
            flush=True,
        )
    by = {r["variant"]: r for r in results}
    if "adaptive" in by and "ours" in by:
        a, o = by["adaptive"], by["ours"]
        saving = 1 - o["worker_seconds"] / a["worker_seconds"]
        fewer = (a["missed"] - o["missed"]) / a["missed"] if a["missed"] else 0.0
        print(
            f"ours vs adaptive: {saving:+.0%} worker-seconds saved, deadline misses "
            f"{o['missed']} vs {a['missed']} ({fewer:.0%} fewer)"
        )
        ok = (saving >= 0.30 and o["missed"] <= a["missed"]) or (
            fewer >= 0.80 and o["worker_seconds"] <= a["worker_seconds"]
        )
        print(f"target (>=30% fewer worker-s, no more misses; or >=80% fewer misses): {ok}")
    if args.png and results:
        plot(results, args.png)
        print(f"plot: {args.png}")
    if rounds > 0 and args.overhead_tasks > 0:
        ov = overhead(args.overhead_tasks, rounds)
        print(
            f"overhead ({args.overhead_tasks} no-op tasks, median of {rounds}): default "
            f"{ov['default_ms']:.3f} ms/task, +Autoscaling {ov['autoscaling_ms']:.3f} ms/task, "
            f"ratio {ov['ratio']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
