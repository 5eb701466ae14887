"""Gang and deadline benchmarks: dask-oxigdal beside vanilla Dask, in one run.

    python benchmarks/bench_gang_deadline.py --quick   # smoke test (~1 min)
    python benchmarks/bench_gang_deadline.py           # full: 200 gangs, 40 deadline jobs

Cluster: ``LocalCluster(n_workers=2, threads_per_worker=2, processes=True)``
(4 slots), a fresh one per variant. Every task returns worker-side
timestamps ``(start, stop)`` and its thread (process id, thread id); every
figure comes from those, never from the client's clock.

**Gang admission latency** (busy cluster): 2,000+ background tasks of 10 ms
are queued, then gangs of 3 members (100 ms each) are submitted, one
``client.map`` per gang. For each gang: the moment the last needed slot
freed is the latest ``stop`` of the task that ran just before a member on
that member's thread; the latency is from there to the start of the last
member. Median and p99. Vanilla Dask has no admission, so only its skew is
shown.

**Start skew**: ``max(start) - min(start)`` over a gang's members, on the
busy cluster and on an idle one (gangs submitted one at a time).

**Partial gangs**: a member dispatched to a worker while the other members
of its gang were not (the ``Gang`` policy counts every member that enters
``processing`` outside a whole-gang launch): target 0. Beside it, from the
worker-side records, the gangs whose members did not all run at the same
time (a member started after another had finished): with dask-oxigdal this
happens only when a worker process starts its member more than a member's
duration (100 ms) late, which a loaded machine does.

**Deadline hit rate**: a saturated cluster runs background batch work (root
tasks of 20 ms, queued by Dask) while jobs of 16 x 20 ms tasks arrive every
0.25 s with a deadline 2 s after their submission (feasible: 80 ms of work on
4 threads). A job is a group of more than 2 x threads tasks, so Dask queues it
as root tasks behind the background, in submission order.
A job meets its deadline when its last task stops by then. Vanilla Dask runs
the same workload (the deadline annotation is ignored there).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _machine
import dask
from distributed import Client, LocalCluster, wait

import dask_oxigdal
from dask_oxigdal.annotations import annotate

VARIANTS = ("vanilla", "oxigdal")
#: seconds a gang member runs: long enough that members overlap in time although
#: worker processes on a loaded machine start them a few tens of ms apart
MEMBER = 0.1
#: tasks per deadline job: more than 2 x threads, so Dask queues them as root tasks
JOB = 16


def machine() -> str:
    """Describe this machine: CPU model, cores, memory, Python and Dask versions."""
    import distributed

    return _machine.describe(f"dask {dask.__version__}, distributed {distributed.__version__}")


def timed(tag, i, delay):
    """Sleep ``delay`` s; return ``(tag, i, start, stop, (pid, thread id))`` from the worker."""
    start = time.time()
    time.sleep(delay)
    return tag, i, start, time.time(), (os.getpid(), threading.get_ident())


def _cluster() -> tuple[LocalCluster, Client]:
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
    )
    return cluster, Client(cluster)


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


# -------------------------------------------------------------------- gangs
def _gang_figures(records: list[tuple], k: int) -> dict:
    """Admission latency, skew and partial gangs from worker-side records."""
    by_thread: dict[tuple, list[tuple]] = {}
    for rec in records:
        by_thread.setdefault(rec[4], []).append(rec)
    prev_stop: dict[tuple, float | None] = {}
    for recs in by_thread.values():
        recs.sort(key=lambda r: r[2])
        last = None
        for rec in recs:
            prev_stop[(rec[0], rec[1])] = last
            last = rec[3]
    gangs: dict[str, list[tuple]] = {}
    for rec in records:
        if rec[0].startswith("gang-"):
            gangs.setdefault(rec[0], []).append(rec)
    latencies, skews, partial = [], [], 0
    for name, members in gangs.items():
        assert len(members) == k, (name, len(members))
        starts = [m[2] for m in members]
        skews.append(max(starts) - min(starts))
        if max(starts) > min(m[3] for m in members):
            partial += 1
        freed = [prev_stop[(m[0], m[1])] for m in members]
        freed = [f for f in freed if f is not None]
        if freed:
            latencies.append(max(starts) - max(freed))
    return {
        "gangs": len(gangs),
        "latency_median": statistics.median(latencies) if latencies else float("nan"),
        "latency_p99": _quantile(latencies, 0.99),
        "skew_median": statistics.median(skews),
        "skew_p99": _quantile(skews, 0.99),
        "partial": partial,
    }


def bench_gangs(variant: str, ngangs: int, nbackground: int, k: int = 3) -> dict:
    cluster, client = _cluster()
    try:
        if variant == "oxigdal":
            dask_oxigdal.register(client)
        client.gather(
            client.map(timed, ["warm"] * 8, range(8), [0.0] * 8, key=[f"w-{i}" for i in range(8)])
        )
        # busy: queued background work, then the gangs
        bg = client.map(
            timed,
            ["bg"] * nbackground,
            range(nbackground),
            [0.01] * nbackground,
            key=[f"bg-{i}" for i in range(nbackground)],
        )
        futures = []
        for g in range(ngangs):
            with annotate(gang=f"busy-{g}"):
                futures += client.map(
                    timed,
                    [f"gang-busy-{g}"] * k,
                    range(k),
                    [MEMBER] * k,
                    key=[f"gang-busy-{g}-{i}" for i in range(k)],
                )
        busy = _gang_figures(client.gather(bg + futures), k)
        del bg, futures
        # idle: one gang at a time
        idle_records = []
        for g in range(max(ngangs // 4, 10)):
            with annotate(gang=f"idle-{g}"):
                futs = client.map(
                    timed,
                    [f"gang-idle-{g}"] * 4,
                    range(4),
                    [MEMBER] * 4,
                    key=[f"gang-idle-{g}-{i}" for i in range(4)],
                )
            idle_records += client.gather(futs)
        idle = _gang_figures(idle_records, 4)
        partial_seen = None
        if variant == "oxigdal":
            snap = dask_oxigdal.status(client)
            assert not snap["disabled"], snap["disabled"]
            partial_seen = snap["policies"]["Gang"]["partial_starts"]
        return {"busy": busy, "idle": idle, "partial_starts": partial_seen}
    finally:
        client.close()
        cluster.close()


# ---------------------------------------------------------------- deadlines
def bench_deadlines(variant: str, njobs: int, every: float, slack: float) -> dict:
    cluster, client = _cluster()
    try:
        if variant == "oxigdal":
            dask_oxigdal.register(client)
        client.gather(
            client.map(timed, ["warm"] * 8, range(8), [0.0] * 8, key=[f"w-{i}" for i in range(8)])
        )
        # enough background to keep the 4 threads busy past the last job
        nbg = int((njobs * every + 4 * slack) * 4 / 0.02)
        bg = client.map(
            timed, ["bg"] * nbg, range(nbg), [0.02] * nbg, key=[f"bg-{i}" for i in range(nbg)]
        )
        jobs = []
        t0 = time.time()
        for j in range(njobs):
            time.sleep(max(0.0, t0 + j * every - time.time()))
            # a number is a relative deadline, resolved by annotate() against this clock
            deadline = time.time() + slack
            with annotate(tenant="default", deadline=slack):
                futs = client.map(
                    timed,
                    [f"job-{j}"] * JOB,
                    range(JOB),
                    [0.02] * JOB,
                    key=[f"job-{j}-{i}" for i in range(JOB)],
                )
            jobs.append((deadline, futs))
        hits = 0
        lateness = []
        for deadline, futs in jobs:
            done = max(r[3] for r in client.gather(futs))
            hits += done <= deadline
            lateness.append(done - deadline)
        wait(bg)
        out = {
            "jobs": njobs,
            "hit_rate": hits / njobs,
            "median_finish_vs_deadline": statistics.median(lateness),
        }
        if variant == "oxigdal":
            snap = dask_oxigdal.status(client)["policies"]["Deadline"]
            out["status"] = {k: snap[k] for k in ("met", "missed", "rejected", "warned")}
        return out
    finally:
        client.close()
        cluster.close()


def main(argv=None) -> int:
    """Run the benchmarks and print the tables.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments.

    Returns
    -------
    int
        0 when the targets are met, 1 otherwise.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 50 gangs, 12 jobs")
    p.add_argument("--gangs", type=int, default=None)
    p.add_argument("--jobs", type=int, default=None)
    p.add_argument("--only", choices=("gangs", "deadlines"), help="run one part")
    args = p.parse_args(argv)
    ngangs = args.gangs or (50 if args.quick else 200)
    njobs = args.jobs or (12 if args.quick else 40)
    print(machine(), flush=True)
    ok = True

    if args.only != "deadlines":
        ok &= _report_gangs(ngangs)
    if args.only != "gangs":
        ok &= _report_deadlines(njobs)
    print("\nall targets met" if ok else "\nsome targets missed", flush=True)
    return 0 if ok else 1


def _report_gangs(ngangs: int) -> bool:
    ok = True
    print(f"\n## Gangs: {ngangs} gangs of 3 on a busy cluster, 2 workers x 2 threads", flush=True)
    gang = {v: bench_gangs(v, ngangs, nbackground=10 * ngangs) for v in VARIANTS}
    print("| measurement | dask-oxigdal | vanilla Dask | vanilla / ours | target |")
    print("|---|---:|---:|---:|---|")
    o, v = gang["oxigdal"], gang["vanilla"]
    print(
        f"| admission latency, busy: median | {o['busy']['latency_median'] * 1e3:.1f} ms | "
        "n/a (no admission) | | |"
    )
    print(f"| admission latency, busy: p99 | {o['busy']['latency_p99'] * 1e3:.1f} ms | n/a | | |")
    for where in ("busy", "idle"):
        for stat in ("median", "p99"):
            ours, theirs = o[where][f"skew_{stat}"], v[where][f"skew_{stat}"]
            ratio = theirs / ours if ours > 0 else float("inf")
            target = "<= 100 ms" if (where, stat) == ("idle", "p99") else ""
            print(
                f"| start skew, {where}: {stat} | {ours * 1e3:.1f} ms | {theirs * 1e3:.1f} ms | "
                f"{ratio:.1f} | {target} |"
            )
        print(
            f"| gangs whose members did not all overlap on the workers, {where} | "
            f"{o[where]['partial']} / {o[where]['gangs']} | "
            f"{v[where]['partial']} / {v[where]['gangs']} | | |"
        )
    print(
        f"| partial gangs (a member dispatched without the others; policy counter) | "
        f"{o['partial_starts']} | | | 0 |"
    )
    ok &= o["idle"]["skew_p99"] <= 0.1
    ok &= o["partial_starts"] == 0
    return ok


def _report_deadlines(njobs: int) -> bool:
    ok = True

    print(
        f"\n## Deadlines: {njobs} jobs of {JOB} x 20 ms, one every 0.25 s, deadline 2 s after "
        "submission, on a cluster saturated with 20 ms background tasks",
        flush=True,
    )
    dl = {v: bench_deadlines(v, njobs, every=0.25, slack=2.0) for v in VARIANTS}
    print("| measurement | dask-oxigdal | vanilla Dask | target |")
    print("|---|---:|---:|---|")
    print(
        f"| deadline hit rate | {dl['oxigdal']['hit_rate']:.1%} | {dl['vanilla']['hit_rate']:.1%} "
        "| >= 95% |"
    )
    print(
        f"| median finish - deadline | {dl['oxigdal']['median_finish_vs_deadline']:+.2f} s | "
        f"{dl['vanilla']['median_finish_vs_deadline']:+.2f} s | < 0 |"
    )
    print(f"\nDeadline status: {dl['oxigdal']['status']}")
    ok &= dl["oxigdal"]["hit_rate"] >= 0.95
    return ok


if __name__ == "__main__":
    sys.exit(main())
