"""Autoscaling: Dask's Adaptive vs a replay of the dask-kubernetes operator vs ours.

One seeded trace is replayed three times on a ``SpecCluster`` whose new
workers take a simulated start latency (``--latency``: 5 s in ``--quick``
runs, 30 s in the full run). Tasks sleep, so worker-seconds are the cost and
the 2 cores are not the limit. Three tenants:

- ``daily``: a daily cycle compressed into the trace (1 or 2 two-second
  tasks every 2 s);
- ``bursty``: random bursts of 6 two-second tasks;
- ``batch``: a gang of 4, *loose* deadline jobs (12 two-second tasks due
  ``latency + 35 s`` after submission) and *tight* ones (``4 x latency``
  seconds of half-second tasks due ``latency + 2.5 s`` (quick) or ``+ 3 s``
  after submission: sooner than Dask's rule gets there, which aims to finish
  in ``target-duration`` = 5 s once the new workers have started).

Variants:

- ``adaptive``: Dask's default ``Adaptive`` (interval 1 s, wait-count 3,
  target-duration 5 s) on Dask's ``adaptive_target``;
- ``operator``: the dask-kubernetes operator's policy replayed: poll Dask's
  target every 5 s, scale up at once, down by at most 25 % per step with a
  15 s cooldown;
- ``ours``: ``Adaptive`` (interval 1 s, target-duration 5 s) with the
  ``Autoscaling`` policy, whose cooldown is the start latency (an idle worker
  is kept as long as a new one would take to start) and whose ``maximum`` is
  Adaptive's. The policy does the waiting before a scale-down, so Adaptive's
  ``wait-count`` is 1 (with 3, each of our steps down would wait 3 more
  polls).

Every run has the extension with FairShare, Quota, Gang (a gang larger than
the cluster waits 120 s) and Deadline (``infeasible: warn``: every job runs),
so deadline misses are counted the same way. In ``--quick`` mode the three
variants run at once, in three processes (sleeping tasks leave the cores
free), and the overhead runs in a fourth; ``--serial`` runs one after the
other, each in a fresh process. The full run does that too (about 25
minutes on 2 cores, more under load: 3 x 6.5 min of trace, then 3 overhead
rounds of 4 runs of 20,000 no-op tasks); ``--parallel`` runs it at once like ``--quick`` (about 10 minutes: the
variants took 7.3 min at load 15; the whole run 581 s at load 2).

Reported, with ours as a ratio of ``adaptive``: worker-seconds (billed from
the moment a worker is requested, as a cloud bills a starting VM or pod; the
seconds of connected workers in brackets), deadline jobs missed, tasks
computed more than once, the reaction of our target to a new deadline job,
and the scheduler overhead of the policy when no scaling is needed: no-op
tasks on 2 process workers with ``adapt(minimum=2, maximum=2)`` polling the
target every second, default policies vs default + ``Autoscaling``
(``--overhead-tasks``, 10,000 in the full run; rounds of A B B A, see
:func:`overhead`): wall time, the CPU time of the scheduler's event-loop
thread (less sensitive to a loaded machine), and the CPU time spent in the
policy's own hooks (``thread_time`` around each; an upper
bound, it includes the timer) per task. A PNG of workers over time
against demand and deadlines is written (``--png``).

Usage::

    python benchmarks/bench_autoscaling.py --quick     # < 2 min
    python benchmarks/bench_autoscaling.py             # 30 s start latency, longer trace
    python benchmarks/bench_autoscaling.py --parallel  # the same, all at once: ~10 min

Each run prints the worker-seconds billed per phase of the trace (between
the arrivals of bursts, the gang and deadline jobs, then after the trace)
for every variant, the split busy / idle / starting, and each deadline job's
submission, deadline and finish. ``BENCH_AUTOSCALING_DEBUG=PATH`` writes the
``autoscale`` events, worker arrivals and departures and the task transitions
of each variant to ``PATH.<variant>``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import math
import multiprocessing
import os
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _machine
import _sched_common as common
import dask
from distributed import Client, Scheduler, SpecCluster, Worker, wait
from distributed.deploy.spec import ProcessInterface
from distributed.diagnostics.plugin import SchedulerPlugin

import dask_oxigdal
from dask_oxigdal.annotations import annotate

POLICIES = [
    {"class": "dask_oxigdal.scheduling.fairshare.FairShare"},
    {"class": "dask_oxigdal.scheduling.quota.Quota"},
    {"class": "dask_oxigdal.scheduling.gang.Gang", "timeout": "120s"},
    {"class": "dask_oxigdal.scheduling.deadline.Deadline", "infeasible": "warn"},
]
AUTOSCALING = {"class": "dask_oxigdal.scheduling.autoscaling.Autoscaling"}
VARIANTS = ("adaptive", "operator", "ours")
_WATCHERS: set = set()  # the tasks that note when each deadline job finished
SUMMARY = ""  # the ratios against Adaptive, printed again at the end


#: Seconds before its join time that a starting worker is built and starts to listen.
BOOT_LEAD = 3.0


class JoinAtWorker(Worker):
    """A ``Worker`` that registers with the scheduler at ``join_at`` (``time.monotonic()``).

    Building and starting a ``Worker`` takes tens of milliseconds of this one
    process's CPU; a burst of 40 workers joining at once would otherwise join
    1 to 2 s late, the later the larger the burst, where real pods start in
    parallel. So each starting worker does that work ``BOOT_LEAD`` seconds
    early and waits for its join time only to register.
    """

    def __init__(self, *args, join_at: float, **kwargs):
        self._join_at = join_at
        super().__init__(*args, **kwargs)

    async def _register_with_scheduler(self) -> None:
        await asyncio.sleep(max(0.0, self._join_at - time.monotonic()))
        await super()._register_with_scheduler()


class SlowStartWorker(ProcessInterface):
    """A worker that joins ``start_latency`` seconds after it is asked for (a pod or a job).

    Its start returns at once, as a pod's creation does, so workers asked for
    one after the other start in parallel, each ``start_latency`` after its own
    request. (A ``Worker`` that slept in its own start would hold
    ``SpecCluster``'s lock for the whole latency, and a worker asked for while
    another batch was starting would wait for that batch first: up to twice
    the latency. ``--serial-starts`` keeps that behaviour, for comparison.)
    Closing it before it has joined cancels the start.
    """

    def __init__(self, scheduler=None, name=None, start_latency=0.0, serial=False, **kwargs):
        super().__init__(scheduler=scheduler, name=name)
        self.name = name
        self.latency = start_latency
        self.serial = serial
        self.kwargs = dict(kwargs, scheduler_ip=scheduler, name=name)
        self.worker: Worker | None = None
        self._boot: asyncio.Task | None = None

    async def _start_worker(self) -> None:
        if self.serial:
            await asyncio.sleep(self.latency)
            self.worker = Worker(**self.kwargs)
        else:
            join_at = time.monotonic() + self.latency
            await asyncio.sleep(max(0.0, self.latency - BOOT_LEAD))
            self.worker = JoinAtWorker(join_at=join_at, **self.kwargs)
        await self.worker

    async def start(self):
        if self.serial:
            await self._start_worker()
        else:
            self._boot = asyncio.ensure_future(self._start_worker())
        await super().start()

    async def close(self):
        boot = self._boot
        if boot is not None and not boot.done():
            boot.cancel()  # still "starting": it has not joined
        if boot is not None:
            await asyncio.gather(boot, return_exceptions=True)
        if self.worker is not None:
            await self.worker.close()
        await super().close()


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


def make_trace(seed: int, length: float, latency: float, slack: float) -> list[tuple]:
    """``[(at, tenant, kind, n, seconds, due)]`` sorted by ``at``; ``due`` for deadline jobs."""
    rng = random.Random(seed)
    period = length / 1.5
    events = []
    t = 0.0
    while t < length:  # daily: arrival rate follows a compressed day
        rate = 1.0 + max(0.0, math.sin(2 * math.pi * t / period))
        events.append((t, "daily", "map", max(1, round(rate)), 2.0, None))
        t += 2.0
    for _ in range(max(3, int(length / 20))):  # bursts
        events.append((rng.uniform(0.05, 0.85) * length, "bursty", "map", 6, 2.0, None))
    events.append((0.35 * length, "batch", "gang", 4, 2.0, None))
    for frac in (0.1, 0.55):  # loose deadlines: plenty of time
        events.append((frac * length, "batch", "loose", 12, 2.0, latency + 35.0))
    tight = round(4 * latency / 0.5)
    for frac in (0.3, 0.75):  # tight deadlines: due soon after a new worker starts
        events.append((frac * length, "batch", "tight", tight, 0.5, latency + slack))
    return sorted(events, key=lambda e: e[0])


async def operator_loop(cluster, stop: asyncio.Event, maximum: int) -> None:
    """The dask-kubernetes operator's autoscaler, replayed (Dask's target)."""
    s = cluster.scheduler
    last_down = 0.0
    while not stop.is_set():
        n = len(cluster.worker_spec)
        target = min(max(s.adaptive_target(), 1), maximum)
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


async def _submit(client, policy, event, seq, t0, deadlines, reactions):
    _, tenant, kind, n, seconds, due = event
    keys = [f"{tenant}-{kind}-{seq}-{i}" for i in range(n)]
    if kind == "gang":
        with annotate(tenant=tenant, gang=f"g{seq}"):
            return client.map(sleep_task, [seconds] * n, key=keys)
    if due is None:
        with annotate(tenant=tenant):
            return client.map(sleep_task, [seconds] * n, key=keys)
    with annotate(tenant=tenant, deadline=f"{due}s"):
        futures = client.map(sleep_task, [seconds] * n, key=keys)
    submitted = time.monotonic() - t0
    job = {"kind": kind, "submitted": submitted, "due": submitted + due, "finished": None}
    deadlines.append(job)

    async def finished(job=job, futures=futures):
        await wait(futures)
        job["finished"] = time.monotonic() - t0

    watcher = asyncio.ensure_future(finished())
    _WATCHERS.add(watcher)
    watcher.add_done_callback(_WATCHERS.discard)
    if policy is not None:
        # from the job's acceptance by the Deadline policy to the next decision
        accepted = policy._bench_accepted
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if accepted and policy.decision.get("at", 0) >= accepted[-1]:
                reactions.append(policy.decision["at"] - accepted.pop())
                break
            await asyncio.sleep(0.005)
    return futures


async def run_variant(variant: str, trace, args: dict) -> dict:
    latency = args["latency"]
    worker = {
        "cls": SlowStartWorker,
        "options": {
            "nthreads": 1,
            "start_latency": latency,
            "serial": args["serial_starts"],
            "dashboard_address": None,
        },
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    config = {
        "oxigdal.autoscaling.start-latency": f"{latency}s",
        "oxigdal.autoscaling.cooldown": f"{args['cooldown']}s",
        "oxigdal.autoscaling.forecast.interval": f"{args['forecast_interval']}s",
        "oxigdal.autoscaling.forecast.season": max(
            1, round(args["length"] / 1.5 / args["forecast_interval"])
        ),
        "oxigdal.autoscaling.maximum": args["maximum"],
        "oxigdal.autoscaling.max-down-fraction": args["down_fraction"],
        "distributed.scheduler.unknown-task-duration": "1s",
        # the trace's tenants, known to the extension (an unknown one is "default")
        "oxigdal.tenants": {"daily": 1, "bursty": 1, "batch": 1},
    }
    with dask.config.set(config):
        cluster = await SpecCluster(
            workers={"w0": worker},
            worker=worker,
            scheduler=scheduler,
            asynchronous=True,
            silence_logs=logging.CRITICAL,
        )
        s = cluster.scheduler
        counter = ComputeCounter()
        s.add_plugin(counter)
        client = await Client(cluster, asynchronous=True)
        policies = POLICIES + ([AUTOSCALING] if variant == "ours" else [])
        await dask_oxigdal.register(client, policies=policies)
        await cluster
        await client.wait_for_workers(1)  # w0 has joined
        stop = asyncio.Event()
        op = None
        if variant == "operator":
            op = asyncio.ensure_future(operator_loop(cluster, stop, args["maximum"]))
        else:
            cluster.adapt(
                minimum=1,
                maximum=args["maximum"],
                interval="1s",
                wait_count=1 if variant == "ours" else 3,
            )
        ext = s.plugins["oxigdal"]
        policy = ext.get_policy("Autoscaling") if variant == "ours" else None
        if policy is not None:
            policy._bench_accepted = []
            dl = ext.get_policy("Deadline")
            accept = dl._accept

            def timed_accept(job, members, accept=accept):
                accept(job, members)
                policy._bench_accepted.append(time.time())

            dl._accept = timed_accept  # instrumentation: when each job was accepted
        # (t, connected workers, pending tasks, requested workers, rule, busy workers)
        samples = []
        deadlines: list = []
        reactions: list = []
        futures = []
        t0 = time.monotonic()

        async def sampler():
            while not stop.is_set():
                pending = sum(u.pending for u in ext.usage.values())
                rule = policy.decision.get("rule") if policy is not None else None
                busy = sum(1 for ws in s.workers.values() if ws.processing)
                samples.append(
                    (
                        time.monotonic() - t0,
                        len(s.workers),
                        pending,
                        len(cluster.worker_spec),
                        rule,
                        busy,
                    )
                )
                await asyncio.sleep(0.25)

        samp = asyncio.ensure_future(sampler())
        for seq, event in enumerate(trace):
            delay = event[0] - (time.monotonic() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            futures += await _submit(client, policy, event, seq, t0, deadlines, reactions)
        await wait(futures)
        done_at = time.monotonic() - t0
        # let the cluster scale down (counted: idle workers cost until they go)
        while time.monotonic() - t0 < done_at + args["tail"]:
            await asyncio.sleep(0.25)
        stop.set()
        await samp
        if op is not None:
            await op
        snap = await dask_oxigdal.status(client)
        missed = sum(
            sum(q.values()) for q in snap["policies"]["Deadline"].get("missed", {}).values()
        )
        latency_measured = snap["policies"].get("Autoscaling", {}).get("start_latency")
        latency_samples = list(policy.latency.samples) if policy is not None else []
        latency_cautious = policy.latency.cautious if policy is not None else None
        latency_ambiguous = policy.latency.ambiguous if policy is not None else 0
        ramp = snap["policies"].get("Autoscaling", {}).get("ramp")
        policy_interval = ext.interval
        if os.environ.get("BENCH_AUTOSCALING_DEBUG"):
            t0w = time.time() - (time.monotonic() - t0)
            with open(os.environ["BENCH_AUTOSCALING_DEBUG"] + f".{variant}", "w") as f:
                for topic in ("oxigdal", "all"):
                    for at, e in s.get_events(topic):
                        if isinstance(e, dict) and e.get("kind", e.get("action")) in (
                            "autoscale",
                            "add-worker",
                            "remove-worker",
                        ):
                            f.write(f"{at - t0w:7.2f} {topic} {e}\n")
                for key, start, finish, *_, at in s.transition_log:
                    if finish in ("processing", "memory") or start == "processing":
                        f.write(f"{at - t0w:7.2f} task {key} {start}->{finish}\n")
        await client.close()
        await cluster.close()
    connected = billed = 0.0
    rules: dict = {}
    busy_s = 0.0
    for (ta, na, _, ra, rule, busy), (tb, *_) in itertools.pairwise(samples):
        connected += na * (tb - ta)
        billed += ra * (tb - ta)
        busy_s += busy * (tb - ta)
        if rule is not None:
            rules[rule] = rules.get(rule, 0.0) + tb - ta
    return {
        "variant": variant,
        "worker_seconds": billed,
        "connected_worker_seconds": connected,
        "busy_worker_seconds": busy_s,
        "missed": missed,
        "deadline_jobs": len(deadlines),
        "recomputed": counter.recomputed(),
        "finished_at": done_at,
        "peak_workers": max(x[3] for x in samples),
        "reaction_max": max(reactions) if reactions else None,
        "policy_interval": policy_interval,
        "latency_measured": latency_measured,
        "latency_samples": latency_samples,
        "latency_cautious": latency_cautious,
        "latency_ambiguous": latency_ambiguous,
        "ramp": ramp,
        "rules": rules,
        "samples": samples,
        "deadlines": deadlines,
    }


def _variant_process(variant: str, trace, args: dict) -> dict:
    return asyncio.run(run_variant(variant, trace, args))


def _fresh_process(variant: str, trace, args: dict) -> dict:
    """Run one variant in a new (spawned) process and return its result."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_variant_process, variant, trace, args).result()


def _time_hooks(ext, spent: list) -> None:
    """Add the scheduler-thread CPU time of the Autoscaling policy's hooks to ``spent[0]``."""
    policy = ext.get_policy("Autoscaling")
    for name in ("transition", "update_graph", "compute", "periodic", "add_worker"):
        method = getattr(policy, name)

        def timed(*a, _method=method, **k):
            t = time.thread_time()
            try:
                return _method(*a, **k)
            finally:
                spent[0] += time.thread_time() - t

        setattr(policy, name, timed)


def _loop_cpu(dask_scheduler=None) -> float:
    """CPU time of the thread that runs the scheduler's event loop (``run_on_scheduler``)."""
    return time.thread_time()


def overhead(n: int, rounds: int) -> dict:
    """No-op tasks when no scaling is needed: default policies vs default + Autoscaling.

    One ``LocalCluster`` (2 process workers x 1 thread) with ``adapt(minimum=2,
    maximum=2)``, so ``Adaptive`` asks for the target every second and never
    scales. The extension is registered again (``replace=True``) with either
    policy list before each run. A map of ``n`` tasks and a tree reduction of
    ``n`` leaves.

    Each round runs the variants in the order A B B A (the next round B A A
    B), and its ratio is the policy's summed time over the default's: a drift
    that is linear over the round cancels. The per-task cost does drift: the
    scheduler keeps the last 100,000 tasks' task-stream records (vanilla Dask
    does too), so its garbage collections grow over the first ten runs. The
    reported ratio is the median of the rounds' ratios. Measured: wall time,
    the CPU time of the scheduler's event-loop thread, and the CPU time in
    the policy's own hooks.
    """
    from distributed import LocalCluster

    # (workload, variant) -> [(wall s, loop-thread CPU s, tasks, round)]
    runs: dict[tuple, list[tuple]] = {}
    hooks: dict[str, list[float]] = {}  # CPU time in the Autoscaling policy's hooks, per task
    default = list(dask.config.get("oxigdal.scheduling.policies"))
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        cluster.adapt(minimum=2, maximum=2, interval="1s")
        client.gather(client.map(common.noop, range(50), key=[f"warm-{i}" for i in range(50)]))
        for r in range(rounds):
            a, b = ("default", "autoscaling") if r % 2 == 0 else ("autoscaling", "default")
            for j, variant in enumerate((a, b, b, a)):
                pols = default + ([AUTOSCALING] if variant == "autoscaling" else [])
                dask_oxigdal.register(client, replace=True, policies=pols)
                spent = [0.0]
                if variant == "autoscaling":
                    _time_hooks(cluster.scheduler.plugins["oxigdal"], spent)
                for workload in ("map", "tree"):
                    name = f"noop-{r}-{j}-{variant}"
                    loop = client.run_on_scheduler(_loop_cpu)
                    t = time.perf_counter()
                    if workload == "map":
                        futures = client.map(
                            common.noop, range(n), key=[f"{name}-{i}" for i in range(n)]
                        )
                        wait(futures)
                        ntasks = n
                        del futures
                    else:
                        dsk, root, ntasks = common.noop_tree(n, name=name)
                        client.get(dsk, root)
                    wall = time.perf_counter() - t
                    cpu = client.run_on_scheduler(_loop_cpu) - loop
                    runs.setdefault((workload, variant), []).append((wall, cpu, ntasks, r))
                    if variant == "autoscaling":
                        hooks.setdefault(workload, []).append(spent[0] / ntasks)
                        spent[0] = 0.0
                snap = dask_oxigdal.status(client)
                assert not snap["disabled"], snap["disabled"]
                assert ("Autoscaling" in snap["policies"]) == (variant == "autoscaling")
            line = ", ".join(f"{w} {_round_ratio(runs, w, r, 0):.3f}" for w in ("map", "tree"))
            print(f"  overhead round {r + 1}, +Autoscaling / default (wall): {line}", flush=True)
    out = {}
    for workload in ("map", "tree"):
        per_task = {
            v: [x[0] / x[2] for x in runs[(workload, v)]] for v in ("default", "autoscaling")
        }
        cpu_default = statistics.median(x[1] / x[2] for x in runs[(workload, "default")])
        ratios = [_round_ratio(runs, workload, r, 0) for r in range(rounds)]
        cpu_ratios = [_round_ratio(runs, workload, r, 1) for r in range(rounds)]
        out[workload] = {
            "default_ms": statistics.median(per_task["default"]) * 1e3,
            "autoscaling_ms": statistics.median(per_task["autoscaling"]) * 1e3,
            "ratio": statistics.median(ratios),
            "round_ratios": ratios,
            "cpu_ratio": statistics.median(cpu_ratios),
            "hooks_us": statistics.median(hooks[workload]) * 1e6,
            "hooks_share": statistics.median(hooks[workload]) / cpu_default,
        }
    return out


def _round_ratio(runs: dict, workload: str, r: int, field: int) -> float:
    """Round ``r``'s summed ``field`` (0 wall, 1 CPU) per task, +Autoscaling over default."""

    def total(variant: str) -> float:
        return sum(x[field] / x[2] for x in runs[(workload, variant)] if x[3] == r)

    return total("autoscaling") / total("default")


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(9, 2.6 * len(results)), sharex=True)
    axes = list(axes) if len(results) > 1 else [axes]
    for ax, res in zip(axes, results, strict=True):
        t = [x[0] for x in res["samples"]]
        ax.step(t, [x[3] for x in res["samples"]], where="post", label="requested", color="C2")
        ax.step(t, [x[1] for x in res["samples"]], where="post", label="connected", color="C0")
        ax2 = ax.twinx()
        ax2.plot(t, [x[2] for x in res["samples"]], color="C1", alpha=0.6, label="pending tasks")
        ax2.set_ylabel("pending tasks")
        for job in res["deadlines"]:
            style = "--" if job["kind"] == "tight" else ":"
            ax.axvline(job["due"], color="C3", linestyle=style, linewidth=0.8)
        ax.set_ylabel("workers")
        ax.legend(loc="upper left", fontsize="small")
        ax.set_title(
            f"{res['variant']}: {res['worker_seconds']:.0f} worker-s, "
            f"{res['missed']}/{res['deadline_jobs']} deadlines missed"
        )
    axes[-1].set_xlabel("seconds (red: deadlines; dashed: tight, dotted: loose)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _phases(trace, length: float) -> list[tuple[float, float, str]]:
    """``[(start, end, label)]``: the trace cut where its jobs arrive (for the breakdown)."""
    cuts = {0.0}
    labels: dict[float, list[str]] = {}
    for at, tenant, kind, n, seconds, due in trace:
        if tenant == "daily":
            continue
        cuts.add(at)
        what = f"{kind} {n}x{seconds:g}s" + (f" due +{due:g}s" if due is not None else "")
        labels.setdefault(at, []).append(what)
    edges = sorted(cuts)
    out = []
    for a, b in itertools.pairwise([*edges, length]):
        out.append((a, b, "daily + " + ", ".join(labels[a]) if a in labels else "daily"))
    return out


def breakdown(results: list[dict], trace, length: float) -> None:
    """Print billed worker-seconds per phase of the trace (and after it), per variant.

    A phase runs from one non-daily arrival (burst, gang, deadline job) to the
    next; ``after`` is from the end of the trace to the end of the run (the
    work left, then the scale-down).
    """
    phases = _phases(trace, length)
    end = max(r["samples"][-1][0] for r in results)
    phases.append((length, end, "after the trace: work left, then scale-down"))
    names = [r["variant"] for r in results]
    print("worker-seconds billed per phase of the trace (" + " / ".join(names) + "):")
    for a, b, label in phases:
        cells = []
        for r in results:
            total = 0.0
            for (ta, _, _, ra, *_), (tb, *_) in itertools.pairwise(r["samples"]):
                lo, hi = max(ta, a), min(tb, b)
                if hi > lo:
                    total += ra * (hi - lo)
            cells.append(f"{total:6.1f}")
        print(f"  {a:6.1f}-{b:6.1f} s  {' / '.join(cells)}   {label}")
    print("  split of each variant's worker-seconds: busy (running a task) / idle / starting")
    for r in results:
        idle = r["connected_worker_seconds"] - r["busy_worker_seconds"]
        starting = r["worker_seconds"] - r["connected_worker_seconds"]
        print(
            f"    {r['variant']:9s} {r['busy_worker_seconds']:6.1f} / {idle:6.1f} / {starting:6.1f}"
        )
    print("deadline jobs (s from the start: submitted, due, finished):")
    for r in results:
        cells = []
        for job in r["deadlines"]:
            fin = job["finished"]
            late = "" if fin is None or fin <= job["due"] else f" LATE {fin - job['due']:.1f}s"
            fin_s = "?" if fin is None else f"{fin:.1f}"
            cells.append(f"{job['kind']} {job['submitted']:.1f}/{job['due']:.1f}/{fin_s}{late}")
        print(f"  {r['variant']:9s} " + "; ".join(cells))


def report(results: list[dict]) -> bool:
    """Print the table and ours / adaptive; return whether a target is met."""
    for res in results:
        rules = ", ".join(
            f"{k} {v / sum(res['rules'].values()):.0%}"
            for k, v in sorted(res["rules"].items(), key=lambda kv: -kv[1])
        )
        print(
            f"  {res['variant']:9s} worker-s {res['worker_seconds']:7.1f} (connected "
            f"{res['connected_worker_seconds']:.1f})  missed "
            f"{res['missed']}/{res['deadline_jobs']}  recomputed {res['recomputed']}  "
            f"peak {res['peak_workers']}  work done at {res['finished_at']:.1f} s"
            + (f"\n            target decided by: {rules}" if rules else "")
            + (
                f"\n            deadline reaction <= {res['reaction_max']:.3f} s (policy interval "
                f"{res['policy_interval']:g} s), measured "
                f"start latency {res['latency_measured']:.1f} s (last samples: "
                + ", ".join(f"{x:.1f}" for x in res["latency_samples"])
                + f"; upper quartile {res['latency_cautious']:.1f} s, for deadlines; "
                f"{res['latency_ambiguous']} arrivals matched to the nearest of several requests)"
                + (
                    f"\n            joining workers (ramp, {res['ramp']['samples']} timed): first "
                    f"task {res['ramp']['first_task_delay']:.3f} s after the join (upper "
                    f"quartile; {res['ramp'].get('first_task_delay_per_burst_worker', 0):.4f} s "
                    "per worker of its burst), "
                    f"{res['ramp']['task_gap']:.3f} s between tasks (median)"
                    if res.get("ramp")
                    else ""
                )
                if res["reaction_max"] is not None
                else ""
            ),
            flush=True,
        )
    by = {r["variant"]: r for r in results}
    if "adaptive" not in by or "ours" not in by:
        return False
    a, o = by["adaptive"], by["ours"]
    ws_ratio = o["worker_seconds"] / a["worker_seconds"]
    miss_ratio = (
        o["missed"] / a["missed"] if a["missed"] else (0.0 if not o["missed"] else math.inf)
    )
    first = ws_ratio <= 0.70 and o["missed"] <= a["missed"]
    second = a["missed"] > 0 and miss_ratio <= 0.20 and ws_ratio <= 1.0
    global SUMMARY
    SUMMARY = (
        f"ours / adaptive: worker-seconds {ws_ratio:.2f} ({o['worker_seconds']:.0f} vs "
        f"{a['worker_seconds']:.0f}); deadline misses {o['missed']}/{o['deadline_jobs']} vs "
        f"{a['missed']}/{a['deadline_jobs']}\n"
        f"  target (a) worker-seconds <= 0.70 with no more misses: "
        f"{'MET' if first else 'not met'}\n"
        f"  target (b) misses <= 0.20 of Adaptive's ({miss_ratio:.2f}) at worker-seconds "
        f"<= 1.00: {'MET' if second else 'not met'}\n"
        f"  recomputed after scale-down: ours {o['recomputed']}, adaptive {a['recomputed']}"
    )
    print(SUMMARY, flush=True)
    return first or second


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI-sized: 5 s start latency, < 2 min")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--latency", type=float, default=None)
    p.add_argument("--length", type=float, default=None, help="trace length (s)")
    p.add_argument("--maximum", type=int, default=None)
    p.add_argument("--cooldown", type=float, default=None, help="ours (default: the latency)")
    p.add_argument("--down-fraction", type=float, default=0.25, help="ours: max-down-fraction")
    p.add_argument("--tail", type=float, default=None, help="seconds observed after the work")
    p.add_argument("--overhead-tasks", type=int, default=None)
    p.add_argument(
        "--overhead-rounds", type=int, default=None, help="rounds of A B B A (2 quick, 3 full)"
    )
    p.add_argument("--only-overhead", action="store_true", help="the overhead runs alone")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument(
        "--serial", action="store_true", help="one variant after the other (a process each)"
    )
    p.add_argument(
        "--parallel",
        action="store_true",
        help="full run: the three variants at once, in three processes, and the overhead "
        "runs beside them, as --quick does (the same trace, latencies and measures; about "
        "10 min instead of about 25)",
    )
    p.add_argument(
        "--serial-starts",
        action="store_true",
        help="a worker asked for while others start waits for them (SpecCluster's lock held "
        "for the whole start latency: the benchmark's behaviour before 2026-12-07)",
    )
    p.add_argument(
        "--png",
        default=os.path.join(os.path.dirname(HERE), "docs", "autoscaling.png"),
        help="the plot (default: docs/autoscaling.png, shown in docs/autoscaling.md)",
    )
    args = p.parse_args(argv)
    q = args.quick
    latency = args.latency if args.latency is not None else (5.0 if q else 30.0)
    opts = {
        "latency": latency,
        "length": args.length or (50.0 if q else 300.0),
        "maximum": args.maximum or (12 if q else 64),
        "cooldown": args.cooldown if args.cooldown is not None else latency,
        "down_fraction": args.down_fraction,
        "tail": args.tail if args.tail is not None else (15.0 if q else 60.0),
        "forecast_interval": 5.0 if q else 15.0,
        "serial_starts": args.serial_starts,
    }
    slack = 2.5 if q else 3.0
    rounds = args.overhead_rounds if args.overhead_rounds is not None else (2 if q else 3)
    ntasks_overhead = args.overhead_tasks or (1_000 if q else 10_000)
    print(f"machine: {_machine.describe(f'dask {dask.__version__}')}")
    print(f"load average at start: {os.getloadavg()}")
    trace = make_trace(args.seed, opts["length"], latency, slack)
    ntasks = sum(e[3] for e in trace)
    work = sum(e[3] * e[4] for e in trace)
    print(
        f"trace: seed {args.seed}, {opts['length']:.0f} s, {ntasks} tasks ({work:.0f} task-s), "
        f"start latency {latency:g} s, maximum {opts['maximum']} workers, our cooldown "
        f"{opts['cooldown']:g} s and max-down-fraction {opts['down_fraction']:g}, tight deadlines {latency + slack:g} s after submission",
        flush=True,
    )
    variants = [] if args.only_overhead else args.variants.split(",")
    ov = None
    with_overhead = rounds > 0 and ntasks_overhead > 0
    t_start = time.monotonic()
    if args.serial or not (q or args.parallel):
        # one after the other, each in a fresh process: the variants' workers share
        # their process's event loop with the scheduler, and a variant run after
        # others in the same process would inherit their heap
        results = [_fresh_process(v, trace, opts) for v in variants]
    else:
        # at once: the variants (sleeping tasks) and the overhead runs (alternating)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(variants) + 1, mp_context=ctx) as pool:
            jobs = [pool.submit(_variant_process, v, trace, opts) for v in variants]
            if with_overhead:
                ov = pool.submit(overhead, ntasks_overhead, rounds)
            results = [j.result() for j in jobs]
            ov = ov.result() if ov is not None else None
    if results:
        breakdown(results, trace, opts["length"])
        report(results)
    if args.png and results:
        plot(results, args.png)
        print(f"plot: {args.png}")
    if with_overhead:
        if ov is None:
            print(f"load average before the overhead runs: {os.getloadavg()}", flush=True)
            ov = overhead(ntasks_overhead, rounds)
        else:
            print("overhead runs: while the variants ran (--serial: after them)")
        for workload, row in ov.items():
            rounds_text = " / ".join(f"{x:.3f}" for x in row["round_ratios"])
            print(
                f"overhead, no scaling needed ({workload}, {ntasks_overhead} no-op tasks, "
                f"{rounds} rounds of A B B A): median per run default {row['default_ms']:.3f} "
                f"ms/task, +Autoscaling {row['autoscaling_ms']:.3f} ms/task; ratio (median of the "
                f"rounds' ratios {rounds_text}) {row['ratio']:.3f} (target <= 1.05); the "
                f"scheduler's event-loop CPU time ratio {row['cpu_ratio']:.3f}; the policy's hooks "
                f"{row['hooks_us']:.1f} us CPU per task = {row['hooks_share']:.1%} of the "
                "event loop's CPU per task"
            )
    print(f"load average at the end: {os.getloadavg()}")
    print(f"wall time: {time.monotonic() - t_start:.0f} s")
    if SUMMARY:
        print(SUMMARY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
