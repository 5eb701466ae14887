"""Durable workflows (issue 17): per-step overhead vs plain client.submit and Prefect 3,
crash/resume exactly-once, scheduler memory across runs.

The flow: a 200-step tile workflow. fetch, cloud cover (branch: this scene or the
previous one), mask; then a loop of iterations until a tolerance is met, each a
fan-out of 64 tiles and one update step (3 iterations); publish.
4 + 3 * 65 + 1 = 200 step calls.

    python benchmarks/bench_workflows.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine

import dask_oxigdal as dox

TILES = 64
MARKS = os.environ.get("OXWF_BENCH_MARKS")  # side-effect dir of the crash run


def _mark(name: str) -> None:
    if MARKS:
        with open(os.path.join(MARKS, f"{name}.{os.getpid()}.{random.random()}"), "w"):
            pass


def fetch(seed):
    _mark(f"fetch_{seed}")
    return seed


def cloud_cover(scene):
    _mark(f"cloud_{scene}")
    return (scene * 37 % 100) / 100.0


def mask(scene):
    _mark(f"mask_{scene}")
    return scene


def tile(scene, it, j):
    _mark(f"tile_{it}_{j}")
    return 1.0 / (2 ** (it + 1)) * ((scene + j) % 7 + 1) / 7.0


def update(values):
    _mark(f"update_{len(values)}_{sum(values):.6f}")
    return max(values)


def publish(scene, err):
    _mark("publish")
    return {"scene": scene, "err": round(err, 9)}


S = {f.__name__: dox.step(f) for f in (fetch, cloud_cover, mask, tile, update, publish)}


def flow_logic(call, submit, gather, seed):
    """The control flow, written once for the three engines."""
    scene = call("fetch", seed)
    if call("cloud_cover", scene) < 0.2:  # branch on the scene's cloud cover
        scene = call("mask", scene)
    else:
        scene = call("mask", scene - 1)  # fall back to the previous scene
    it, err = 0, 1.0
    while err > 0.1:  # until tolerance
        futs = [submit("tile", scene, it, j) for j in range(TILES)]
        err = call("update", gather(futs))
        it += 1
    return call("publish", scene, err)


@dox.workflow
def durable_flow(seed):
    return flow_logic(lambda n, *a: S[n](*a), lambda n, *a: S[n].submit(*a), dox.gather, seed)


def plain_flow(client, seed):
    fns = {f.__name__: f for f in (fetch, cloud_cover, mask, tile, update, publish)}
    return flow_logic(
        lambda n, *a: client.submit(fns[n], *a, pure=False).result(),
        lambda n, *a: client.submit(fns[n], *a, pure=False),
        client.gather,
        seed,
    )


def _cluster():
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address=":0"
    )


def overhead(client, store, repeat):
    plain, durable = [], []
    for r in range(repeat):
        t = time.perf_counter()
        expected = plain_flow(client, 3)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        h = dox.start_workflow(client, durable_flow, 3, workflow_id=f"ov{r}", store=store)
        assert h.result() == expected, (h.result(), expected)
        durable.append(time.perf_counter() - t)
    per_step = sorted((d - p) / 200 * 1e3 for d, p in zip(durable, plain, strict=True))
    return {
        "plain flow s (p50)": statistics.median(plain),
        "durable flow s (p50)": statistics.median(durable),
        "durable per-step overhead ms (p50)": statistics.median(per_step),
    }, statistics.median(plain)


PREFECT_CHILD = """
import sys, time, statistics
sys.path.insert(0, {here!r})
import bench_workflows as b
from prefect import flow, task
from prefect_dask import DaskTaskRunner
T = {{f.__name__: task(f) for f in (b.fetch, b.cloud_cover, b.mask, b.tile, b.update, b.publish)}}
@flow(task_runner=DaskTaskRunner(address={addr!r}), log_prints=False)
def pf(seed):
    return b.flow_logic(lambda n, *a: T[n].submit(*a).result(), lambda n, *a: T[n].submit(*a),
                        lambda fs: [f.result() for f in fs], seed)
times = []
for r in range({repeat}):
    t = time.perf_counter(); out = pf(3); times.append(time.perf_counter() - t)
print("PREFECT", statistics.median(times), out)
"""


def prefect(address, repeat, plain_s):
    try:
        import prefect  # noqa: F401
        import prefect_dask  # noqa: F401
    except ImportError as e:
        return {"prefect": f"not installed ({e})"}
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="ERROR")
    try:
        out = subprocess.run(
            [sys.executable, "-c", PREFECT_CHILD.format(here=here, addr=address, repeat=repeat)],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"prefect": "timed out after 900 s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PREFECT")]
    if not lines:
        return {"prefect": f"failed: {out.stderr.strip().splitlines()[-1:]}"}
    t = float(lines[0].split()[1])
    return {"prefect flow s (p50)": t, "prefect per-step overhead ms": (t - plain_s) / 200 * 1e3}


def _child(address, store, wid):
    from distributed import Client

    with Client(address) as c:
        try:
            h = dox.start_workflow(c, durable_flow, 3, workflow_id=wid, store=store)
        except Exception:
            h = dox.resume_workflow(c, wid, store=store)
        h.result()


def crashes(client, store, kills, expected):
    marks = tempfile.mkdtemp()
    env = dict(os.environ, OXWF_BENCH_MARKS=marks)
    here = os.path.abspath(__file__)
    rng = random.Random(0)
    from dask_oxigdal.workflows import _WStore

    ws = _WStore(os.path.abspath(store), None, "crash")
    rerun = 0
    for _ in range(kills):
        recorded = {n for n in ws.store.names() if n}
        before = {m.split(".")[0] for m in os.listdir(marks)}
        p = subprocess.Popen(
            [sys.executable, here, "--child", client.scheduler.address, store],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(2.0, 6.0))  # start-up is ~2 s on the loaded machine
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        del recorded, before
        while (dox.workflows(client, store=store) or [{}])[0].get("state") == "running":
            time.sleep(0.1)
    os.environ["OXWF_BENCH_MARKS"] = marks
    try:
        h = dox.resume_workflow(client, "crash", store=store)
        out = h.result()
    finally:
        del os.environ["OXWF_BENCH_MARKS"]
    counts = {}
    for m in os.listdir(marks):
        k = m.split(".")[0]
        counts[k] = counts.get(k, 0) + 1
    rerun = sum(v - 1 for v in counts.values() if v > 1)
    shutil.rmtree(marks)
    return {"kills": kills, "same result": out == expected, "step executions beyond one": rerun}


def memory(client, store, runs):
    import psutil

    def rss(dask_scheduler=None):
        import gc

        gc.collect()
        return psutil.Process().memory_info().rss

    for r in range(5):  # warm-up
        dox.start_workflow(client, durable_flow, 3, workflow_id=f"warm{r}", store=store).result()
    start = client.run_on_scheduler(rss)
    for r in range(runs):
        dox.start_workflow(client, durable_flow, 3, workflow_id=f"m{r}", store=store).result()
    return {"runs": runs, "scheduler RSS growth MB": (client.run_on_scheduler(rss) - start) / 2**20}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        return _child(*args.child, "crash")
    import dask
    import distributed
    from distributed import Client

    print(_machine.describe(f"dask {dask.__version__}, distributed {distributed.__version__}"))
    print(f"load average {os.getloadavg()}")
    repeat, kills, runs = (3, 3, 20) if args.quick else (7, 20, 100)
    tmp = tempfile.mkdtemp()
    try:
        with _cluster() as cluster, Client(cluster) as client:
            res, plain_s = overhead(client, os.path.join(tmp, "ov"), repeat)
            print(res)
            pf = prefect(cluster.scheduler_address, repeat, plain_s)
            print(pf)
            if "prefect per-step overhead ms" in pf:
                ratio = pf["prefect per-step overhead ms"] / max(
                    res["durable per-step overhead ms (p50)"], 1e-3
                )
                print({"prefect / durable per-step overhead": ratio})
            expected = plain_flow(client, 3)
            print(crashes(client, os.path.join(tmp, "crash"), kills, expected))
            print(memory(client, os.path.join(tmp, "mem"), runs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
