"""Coordinator benchmark: commit latency, throughput, failover time, scheduler overhead.

Three ``python -m dask_oxigdal.coordination`` node processes on 127.0.0.1
(default election timeouts: heartbeat 100 ms, election 400-1000 ms; fsync
on), a client that is a pysyncobj observer in this process:

- **sync**: one command per call, the next sent when the previous is
  acknowledged: commit latency p50/p99 and throughput;
- **async single**: one command per Raft entry, pipelined (pysyncobj's own
  batching of entries into append messages);
- **batched**: ``--batch`` commands per Raft entry (what the scheduler
  extension sends), pipelined;
- **failover**: SIGKILL the leader ``--kills`` times; time from the kill to the
  first write acknowledged by the new leader (the killed node is restarted
  between kills);
- **scheduler overhead**: no-op ``client.map`` per-task cost on a
  LocalCluster (2 one-thread process workers) for vanilla Dask, the extension,
  and the extension with the embedded coordinator; ratio = variant / vanilla.
  The order of the variants rotates from round to round.

Every group and every coordinator run starts from a fresh temporary data
directory (removed afterwards): no run restores the journal of an earlier one.

Run: ``python benchmarks/bench_coordination.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine
import dask

from dask_oxigdal.coordination.client import GroupClient
from dask_oxigdal.coordination.node import free_port
from dask_oxigdal.coordination.state import make_command

TARGETS = {"failover_p99_s": 3.0, "batched_cmds_per_s": 2000.0, "overhead_ratio": 1.10}


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


class Nodes:
    """Three node processes, stopped by pid, with data in a fresh temporary directory.

    Each group gets its own directory (removed on exit): a run never starts from
    the journal or dump of an earlier one.
    """

    def __init__(self, n: int = 3):
        self.root = tempfile.mkdtemp(prefix="oxigdal-coord-bench-")
        self.addresses = [f"127.0.0.1:{free_port()}" for _ in range(n)]
        self.procs: list[subprocess.Popen | None] = [None] * n
        # a group always has a secret (through the environment, never argv)
        self.password = secrets.token_urlsafe(16)

    def start(self, i: int) -> None:
        args = [sys.executable, "-m", "dask_oxigdal.coordination", "--self", self.addresses[i]]
        for j, a in enumerate(self.addresses):
            if j != i:
                args += ["--partner", a]
        args += ["--data-dir", os.path.join(self.root, f"node{i}")]
        env = {**os.environ, "OXIGDAL_COORDINATOR_PASSWORD": self.password}
        self.procs[i] = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()

    def __enter__(self):
        for i in range(len(self.addresses)):
            self.start(i)
        return self

    def __exit__(self, *exc):
        for i in range(len(self.addresses)):
            self.kill(i)
        shutil.rmtree(self.root, ignore_errors=True)


def bench_sync(client: GroupClient, n: int) -> dict:
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        client.call("reg_write", key="k", value=i)
        lat.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    return {"p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "per_s": n / elapsed}


def bench_pipelined(client: GroupClient, ncommands: int, batch: int, window: int = 64) -> dict:
    """``ncommands`` commands in batches of ``batch``, at most ``window`` batches in flight.

    A batch that fails (no leader, ...) is resent with the same request ids.
    """
    slots = threading.Semaphore(window)
    done = threading.Event()
    lock = threading.Lock()
    lat: list[float] = []
    resend: list = []
    nbatches = ncommands // batch
    state = {"left": nbatches, "errors": 0}

    def submit(cmds):
        sent = time.perf_counter()

        def cb(result, error):
            with lock:
                if error != 0:
                    state["errors"] += 1
                    resend.append(cmds)
                else:
                    lat.append(time.perf_counter() - sent)
                    state["left"] -= 1
                    if state["left"] == 0:
                        done.set()
            slots.release()

        slots.acquire()
        client.submit_batch(cmds, cb)

    t0 = time.perf_counter()
    for _ in range(nbatches):
        submit([make_command("usage_add", tenant="t", worker_seconds=1.0) for _ in range(batch)])
    while not done.wait(0.05):
        with lock:
            retry = list(resend)
            resend.clear()
        for cmds in retry:
            submit(cmds)
    elapsed = time.perf_counter() - t0
    return {
        "per_s": nbatches * batch / elapsed,
        "batch_p50_ms": pct(lat, 50) * 1e3,
        "batch_p99_ms": pct(lat, 99) * 1e3,
        "errors": state["errors"],
    }


def bench_failover(nodes: Nodes, client: GroupClient, kills: int) -> dict:
    """Kill the leader ``kills`` times; seconds from the kill to a write acknowledged by a new one."""
    times = []
    for k in range(kills):
        deadline = time.monotonic() + 60
        while client.leader() not in nodes.addresses:
            if time.monotonic() > deadline:
                raise RuntimeError("no leader")
            time.sleep(0.02)
        client.call("reg_write", key="f", value=-k, deadline=time.monotonic() + 60)
        old = nodes.addresses.index(client.leader())
        t_kill = time.perf_counter()
        nodes.kill(old)
        while True:
            client.call("reg_write", key="f", value=k, deadline=time.monotonic() + 60)
            leader = client.leader()
            if leader is not None and leader != nodes.addresses[old]:
                break
        times.append(time.perf_counter() - t_kill)
        nodes.start(old)
        time.sleep(1.5)  # let the restarted node rejoin before the next kill
    return {"p50_s": pct(times, 50), "p99_s": pct(times, 99), "max_s": max(times), "kills": kills}


def bench_overhead(n: int, rounds: int) -> list[dict]:
    import bench_scheduling as bs
    from _sched_common import noop
    from distributed import wait

    import dask_oxigdal

    results: dict[str, list[float]] = {"vanilla": [], "oxigdal": [], "oxigdal+coordinator": []}
    variants = list(results)
    for r in range(rounds):
        # rotate which variant runs first: no variant always gets the cold (or warm) slot
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for variant in order:
            # a fresh data directory per run: the coordinator never restores an earlier run
            tmp = tempfile.mkdtemp(prefix="oxigdal-bench-")
            cfg = {}
            if variant == "oxigdal+coordinator":
                cfg = {"oxigdal.coordinator.enabled": True, "oxigdal.coordinator.data-dir": tmp}
            with dask.config.set(cfg):
                cluster, client = bs._cluster(2, 1, 1.1)
                try:
                    if variant != "vanilla":
                        dask_oxigdal.register(client)
                    client.gather(client.map(noop, range(50), key=[f"w-{i}" for i in range(50)]))
                    t0 = time.perf_counter()
                    futures = client.map(noop, range(n), key=[f"noop-{i}" for i in range(n)])
                    wait(futures)
                    results[variant].append((time.perf_counter() - t0) / n)
                    del futures
                    if variant == "oxigdal+coordinator":
                        snap = dask_oxigdal.status(client)["coordinator"]
                        assert snap["role"] == "leader", snap
                finally:
                    client.close()
                    cluster.close()
                    shutil.rmtree(tmp, ignore_errors=True)
    vanilla = statistics.median(results["vanilla"])
    return [
        {"variant": v, "ms": statistics.median(t) * 1e3, "ratio": statistics.median(t) / vanilla}
        for v, t in results.items()
    ]


def _bench_group(args, nsync, nsingle, nbatched, kills) -> bool:
    """The 3-node measurements; whether their targets are met."""
    ok = True
    # each group starts from its own fresh data directory (Nodes)
    with (
        Nodes() as nodes,
        GroupClient(nodes.addresses, password=nodes.password, attempt_timeout=2.0) as client,
    ):
        client.call("reg_write", key="warm", value=0, deadline=time.monotonic() + 60)
        sync = bench_sync(client, nsync)
        single = bench_pipelined(client, nsingle, 1)
        batched = bench_pipelined(client, nbatched, args.batch)
    # a short attempt timeout: a write sent to the dead leader is resent quickly
    with (
        Nodes() as nodes,
        GroupClient(nodes.addresses, password=nodes.password, attempt_timeout=0.2) as client,
    ):
        client.call("reg_write", key="warm", value=0, deadline=time.monotonic() + 60)
        fail = bench_failover(nodes, client, kills)
    print("\n## Commits on 3 local nodes (fsync on; client = observer node in this process)")
    print(f"{'mode':24s} {'cmds/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s}")
    print(
        f"{'sync (1 per call)':24s} {sync['per_s']:>10.0f} {sync['p50_ms']:>8.2f} {sync['p99_ms']:>8.2f}"
    )
    print(
        f"{'async, 1 per entry':24s} {single['per_s']:>10.0f} "
        f"{single['batch_p50_ms']:>8.2f} {single['batch_p99_ms']:>8.2f}"
    )
    print(
        f"{f'batched, {args.batch} per entry':24s} {batched['per_s']:>10.0f} "
        f"{batched['batch_p50_ms']:>8.2f} {batched['batch_p99_ms']:>8.2f}   (latency per batch)"
    )
    print(f"ratio batched / sync throughput: {batched['per_s'] / sync['per_s']:.1f}x")
    met = batched["per_s"] >= TARGETS["batched_cmds_per_s"]
    ok &= met
    print(
        f"target: batched >= {TARGETS['batched_cmds_per_s']:.0f} cmds/s -> {'met' if met else 'MISSED'}"
    )
    print(
        f"\n## Failover ({fail['kills']} leader SIGKILLs; kill -> first write acknowledged by the new leader)"
    )
    print(f"p50 {fail['p50_s']:.2f} s, p99 {fail['p99_s']:.2f} s, max {fail['max_s']:.2f} s")
    met = fail["p99_s"] <= TARGETS["failover_p99_s"]
    ok &= met
    print(f"target: p99 <= {TARGETS['failover_p99_s']:.1f} s -> {'met' if met else 'MISSED'}")
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer commands, kills and tasks")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--kills", type=int, default=None)
    p.add_argument("--no-overhead", action="store_true")
    p.add_argument("--only-overhead", action="store_true")
    p.add_argument("--rounds", type=int, default=None, help="overhead rounds (median)")
    p.add_argument("--tasks", type=int, default=None, help="overhead: no-op tasks per run")
    args = p.parse_args(argv)
    nsync = 300 if args.quick else 2000
    nbatched = 20_000 if args.quick else 200_000
    nsingle = 2_000 if args.quick else 20_000
    kills = args.kills or (10 if args.quick else 20)
    from pysyncobj.version import VERSION

    print(_machine.describe(f"dask {dask.__version__}, pysyncobj {VERSION}"))
    ok = True
    if not args.only_overhead:
        ok &= _bench_group(args, nsync, nsingle, nbatched, kills)
    if not args.no_overhead:
        ntasks = args.tasks or (2000 if args.quick else 10_000)
        rows = bench_overhead(ntasks, args.rounds or (1 if args.quick else 3))
        print(
            f"\n## Scheduler overhead ({ntasks} no-op client.map tasks, 2 one-thread process "
            "workers, queuing on; median per task; ratio = variant / vanilla)"
        )
        for r in rows:
            print(f"{r['variant']:22s} {r['ms']:>8.3f} ms  ratio {r['ratio']:.3f}")
        met = rows[-1]["ratio"] <= TARGETS["overhead_ratio"]
        ok &= met
        print(
            f"target: coordinator ratio <= {TARGETS['overhead_ratio']:.2f} -> {'met' if met else 'MISSED'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
