"""Durable workflows (issue 17): per-step overhead vs plain client.submit and Prefect 3,
crash/resume exactly-once (client and scheduler kills), scheduler memory across runs.

The flow: a 200-step tile workflow. fetch this scene and the previous one, cloud
cover (branch: mask this scene or the previous one); then a loop of iterations until
a tolerance is met, each a fan-out of 64 tiles and one update step (3 iterations);
publish. 4 + 3 * 65 + 1 = 200 step calls. The fan-out is one ``step.map`` (durable),
``Client.map`` (plain) or ``Task.map`` (Prefect).

The cluster is a ``dask scheduler`` process and two ``dask worker`` processes
(2 threads each) on 127.0.0.1, so the scheduler's RSS is its own and the
scheduler can be killed and restarted.

    python benchmarks/bench_workflows.py [--quick]   # full: 7 repeats, 20 client
                                                     # kills, 5 scheduler kills, 100 runs
    python benchmarks/bench_workflows.py [--quick] --memory-only   # the memory phase
    python benchmarks/bench_workflows.py [--quick] --crash-only    # the kills
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
        with open(os.path.join(MARKS, f"{name}@{os.getpid()}@{random.random()}"), "w"):
            pass


def tag(name, args):
    """The side-effect mark of one step call: unique per call of the flow."""
    if name == "tile":
        return f"tile_{args[1]}_{args[2]}"
    if name == "update":
        return f"update_{len(args[0])}_{sum(args[0]):.6f}"
    return f"{name}_{args[0]}" if name != "publish" else "publish"


def fetch(seed):
    _mark(tag("fetch", (seed,)))
    return seed


def cloud_cover(scene):
    _mark(tag("cloud_cover", (scene,)))
    return (scene * 37 % 100) / 100.0


def mask(scene):
    _mark(tag("mask", (scene,)))
    return scene


def tile(scene, it, j):
    _mark(tag("tile", (scene, it, j)))
    return 1.0 / (2 ** (it + 1)) * ((scene + j) % 7 + 1) / 7.0


def update(values):
    _mark(tag("update", (values,)))
    return max(values)


def publish(scene, err):
    _mark(tag("publish", (scene, err)))
    return {"scene": scene, "err": round(err, 9)}


S = {f.__name__: dox.step(f) for f in (fetch, cloud_cover, mask, tile, update, publish)}


def flow_logic(call, fanout, gather, seed):
    """The control flow, written once for the three engines (``fanout(name, *iterables)``
    submits one call per element together: ``step.map``, ``Client.map``, ``Task.map``)."""
    scene = call("fetch", seed)
    previous = call("fetch", seed - 1)  # the fallback scene
    if call("cloud_cover", scene) < 0.2:  # branch on the scene's cloud cover
        scene = call("mask", scene)
    else:
        scene = call("mask", previous)  # fall back to the previous scene
    it, err = 0, 1.0
    while err > 0.13:  # until tolerance (3 iterations from seed 3)
        futs = fanout("tile", [scene] * TILES, [it] * TILES, range(TILES))
        err = call("update", gather(futs))
        it += 1
    return call("publish", scene, err)


@dox.workflow
def durable_flow(seed):
    return flow_logic(lambda n, *a: S[n](*a), lambda n, *a: S[n].map(*a), dox.gather, seed)


def plain_flow(client, seed):
    fns = {f.__name__: f for f in (fetch, cloud_cover, mask, tile, update, publish)}
    return flow_logic(
        lambda n, *a: client.submit(fns[n], *a, pure=False).result(),
        lambda n, *a: client.map(fns[n], *a, pure=False),
        client.gather,
        seed,
    )


def trace(seed):
    """The tags of the flow's step calls in call order (index + 1 = sequence number)."""
    fns = {f.__name__: f for f in (fetch, cloud_cover, mask, tile, update, publish)}
    tags = []

    def call(n, *a):
        tags.append(tag(n, a))
        return fns[n](*a)

    flow_logic(call, lambda n, *its: [call(n, *a) for a in zip(*its, strict=True)], list, seed)
    return tags


STEPS = 200  # len(trace(3)): 4 + 3 * 65 + 1 step calls (checked in main)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A scheduler and two worker processes on 127.0.0.1, started and stopped by pid."""

    def __init__(self, extra_env=None):
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs = []
        here = os.path.dirname(os.path.abspath(__file__))
        self.env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p),
            **(extra_env or {}),
        )

    def start(self):
        from distributed import Client

        run = [sys.executable, "-m"]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": self.env}
        self.scheduler = subprocess.Popen(
            [
                *run,
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-dashboard",
            ],
            **quiet,
        )
        self.procs = [self.scheduler] + [
            subprocess.Popen(
                [
                    *run,
                    "distributed.cli.dask_worker",
                    self.address,
                    "--nthreads",
                    "2",
                    "--no-nanny",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                ],
                **quiet,
            )
            for _ in range(2)
        ]
        client = Client(self.address, timeout=120)
        client.wait_for_workers(2, timeout=120)
        return client

    def kill(self):
        """SIGKILL the scheduler, then its workers (they would wait for it to come back)."""
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait()
        self.procs = []


PREFECT_CHILD = """
import sys, time, statistics
sys.path.insert(0, {here!r})
import bench_workflows as b
from prefect import flow, task
from prefect_dask import DaskTaskRunner
T = {{f.__name__: task(f) for f in (b.fetch, b.cloud_cover, b.mask, b.tile, b.update, b.publish)}}
@flow(task_runner=DaskTaskRunner(address={addr!r}), log_prints=False)
def pf(seed):
    return b.flow_logic(lambda n, *a: T[n].submit(*a).result(), lambda n, *a: T[n].map(*a),
                        lambda fs: [f.result() for f in fs], seed)
@flow
def warm():  # starts the ephemeral API server (about a minute on a loaded machine)
    return 1
warm()
times = []
for r in range({repeat}):
    t = time.perf_counter(); out = pf(3); times.append(time.perf_counter() - t)
    print("PREFECT_RUN", times[-1], flush=True)
print("PREFECT", statistics.median(times), out)
"""


def prefect(address, repeat, plain_s, timeout=900):
    try:
        import prefect  # noqa: F401
        import prefect_dask  # noqa: F401
    except ImportError as e:
        return {"prefect": f"not installed ({e})"}
    here = os.path.dirname(os.path.abspath(__file__))
    # offline: Prefect's ephemeral API server on 127.0.0.1 with a fresh home (its
    # SQLite database); its start-up took ~75 s on the loaded machine, more than the
    # default start-up timeout, which is why it failed before
    home = tempfile.mkdtemp(prefix="prefect-home-")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=home,
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="ERROR",
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", PREFECT_CHILD.format(here=here, addr=address, repeat=repeat)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        runs = [float(ln.split()[1]) for ln in stdout.splitlines() if ln.startswith("PREFECT_RUN")]
        if not runs:
            return {"prefect": f"no flow run finished within {timeout} s"}
        t = statistics.median(runs)
        return {
            "prefect flow s (p50)": t,
            "prefect runs finished before the timeout": len(runs),
            "prefect per-step overhead ms": (t - plain_s) / STEPS * 1e3,
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PREFECT")]
    if not lines:
        return {"prefect": f"failed: {out.stderr.strip().splitlines()[-1:]}"}
    t = float(lines[0].split()[1])
    return {"prefect flow s (p50)": t, "prefect per-step overhead ms": (t - plain_s) / STEPS * 1e3}


def set_marks(path):
    """Side-effect files of the steps go to ``path`` (None: off); read when steps are pickled."""
    global MARKS
    MARKS = path


def _counts(marks):
    out = {}
    for m in os.listdir(marks):
        k = m.split("@")[0]
        out[k] = out.get(k, 0) + 1
    return out


def _recorded_seqs(store, wid, n):
    from dask_oxigdal.workflows import _WStore

    ws = _WStore(os.path.abspath(store), None, wid)
    names = ws.store.names()
    return [seq for seq in range(1, n + 1) if ws.store.filename(f"s{seq}") in names]


def kill_points(rng, kills):
    """``kills`` distinct numbers of recorded steps in 1..STEPS-1, drawn uniformly
    (seeded) and sorted: the kills spread over the whole run."""
    return sorted(rng.sample(range(1, STEPS), kills))


def _until_recorded(store, wid, target, over, timeout=300.0):
    """Wait until ``target`` steps are recorded (the kill point), and at least one
    more than now: a fan-out records its steps in a burst, which can pass several
    drawn points at once; each kill still comes after some progress."""
    target = min(max(target, len(_recorded_seqs(store, wid, STEPS)) + 1), STEPS - 1)
    end = time.monotonic() + timeout
    while time.monotonic() < end and not over():
        if len(_recorded_seqs(store, wid, STEPS)) >= target:
            return
        time.sleep(0.01)


def _reruns(tags, snapshots, final):
    """Executions of steps that were recorded (completed) at a kill, after that kill."""
    seen, rerun = set(), 0
    for recorded, before in snapshots:
        for seq in recorded:
            t = tags[seq - 1]
            if t not in seen:
                seen.add(t)
                rerun += final.get(t, 0) - before.get(t, 0)
    return rerun


def overhead(client, store, repeat):
    """Plain client.submit flow vs the durable flow (fsync on and off), interleaved."""
    times = {"plain": [], "durable (fsync)": [], "durable (no fsync)": []}
    for r in range(repeat):
        t = time.perf_counter()
        expected = plain_flow(client, 3)
        times["plain"].append(time.perf_counter() - t)
        for mode, fs in (("durable (fsync)", True), ("durable (no fsync)", False)):
            t = time.perf_counter()
            wid = f"ov{int(fs)}-{r}"
            h = dox.start_workflow(client, durable_flow, 3, workflow_id=wid, store=store, fsync=fs)
            assert h.result() == expected, (h.result(), expected)
            times[mode].append(time.perf_counter() - t)
    out = {f"{k} flow s (p50)": round(statistics.median(v), 3) for k, v in times.items()}
    for mode in ("durable (fsync)", "durable (no fsync)"):
        per = [(d - p) / STEPS * 1e3 for d, p in zip(times[mode], times["plain"], strict=True)]
        out[f"{mode} per-step overhead ms (p50)"] = round(statistics.median(per), 2)
    return out, statistics.median(times["plain"])


def _save_ms(store, sync, n=50):
    """On a worker: ms per step record written (CheckpointStore.save)."""
    from dask_oxigdal.workflows import _open_store

    st = _open_store(os.path.join(store, f"probe-{os.getpid()}-{int(sync)}"), None)
    rec = {"name": "tile", "seq": 1, "digest": "0" * 32, "ok": True, "value": 0.5}
    t = time.perf_counter()
    for i in range(n):
        st.save(f"s{i}", rec, sync=sync)
    return (time.perf_counter() - t) / n * 1e3


def breakdown(client, store):
    """Where a step's durable overhead goes: the orchestrator's CPU per step call
    (cProfile of one run of the workflow function in this thread) and the worker's
    record write (fsync'd or not)."""
    import cProfile
    import pstats

    import cloudpickle
    from dask.base import tokenize

    from dask_oxigdal.workflows import _drive, _WStore

    ws = _WStore(os.path.abspath(store), None, "profiled")
    meta = {"id": ws.id, "call": cloudpickle.dumps((durable_flow, (3,), {})), "fsync": True}
    ws.put("meta", meta)
    prof = cProfile.Profile()
    prof.enable()
    _drive(client, ws, meta, "client")
    prof.disable()
    st = pstats.Stats(prof).stats

    def cum(fname, func):
        hits = [(v[1], v[3]) for k, v in st.items() if k[0].endswith(fname) and k[2] == func]
        calls = sum(h[0] for h in hits)
        return (sum(h[1] for h in hits) / calls * 1e3) if calls else float("nan")

    def per_step(fname, func):  # ms of cumulative time per step call of the flow
        return (
            sum(v[3] for k, v in st.items() if k[0].endswith(fname) and k[2] == func) / STEPS * 1e3
        )

    t = time.perf_counter()
    for i in range(200):
        tokenize("tile", (3, 1, i), {}, ensure_deterministic=True)
    tok = (time.perf_counter() - t) / STEPS * 1e3
    saves = {
        sync: statistics.median(client.run(_save_ms, os.path.abspath(store), sync).values())
        for sync in (True, False)
    }
    return {
        "orchestrator per step call ms: _Run.submit_many (all)": round(
            per_step("_run.py", "submit_many"), 3
        ),
        "  of which Client.submit + Client.map": round(
            per_step("client.py", "submit") + per_step("client.py", "map"), 3
        ),
        "  of which argument digest (tokenize)": round(tok, 3),
        "orchestrator wait per result ms (_Run.wait)": round(cum("_run.py", "wait"), 3),
        "worker record write ms, fsync": round(saves[True], 3),
        "worker record write ms, no fsync": round(saves[False], 3),
    }


def _child(address, store, wid):
    from distributed import Client

    with Client(address) as c:
        try:
            h = dox.start_workflow(c, durable_flow, 3, workflow_id=wid, store=store)
        except Exception:
            h = dox.resume_workflow(c, wid, store=store)
        h.result()


def client_kills(client, store, kills, expected, rng):
    """SIGKILL a client process that runs (or resumes) the workflow at random points."""
    marks = tempfile.mkdtemp()
    env = dict(os.environ, OXWF_BENCH_MARKS=marks)
    here = os.path.abspath(__file__)
    tags, snapshots = trace(3), []
    points = kill_points(rng, kills)
    for target in points:
        p = subprocess.Popen(
            [sys.executable, here, "--child", client.scheduler.address, store],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _until_recorded(store, "crash", target, p.poll)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        snapshots.append((_recorded_seqs(store, "crash", len(tags)), _counts(marks)))
        while (dox.workflows(client, store=store) or [{}])[0].get("state") == "running":
            time.sleep(0.1)
    set_marks(marks)
    try:
        out = dox.resume_workflow(client, "crash", store=store).result()
    finally:
        set_marks(None)
    final = _counts(marks)
    shutil.rmtree(marks)
    return {
        "client kills": kills,
        "same result": out == expected,
        "completed steps re-run": _reruns(tags, snapshots, final),
        "in-flight steps re-run": sum(final.values()) - len(tags),
        "kill points (recorded steps, drawn)": points,
        "steps recorded at the kills (of 200)": [len(r) for r, _ in snapshots],
    }


def scheduler_kills(store, kills, expected, rng):
    """SIGKILL the scheduler (and its workers) mid-run; start a new cluster; resume."""
    marks = tempfile.mkdtemp()
    tags, snapshots = trace(3), []  # before the marks are on: trace runs the functions here
    set_marks(marks)
    try:
        points = kill_points(rng, kills)
        for k, target in enumerate(points):
            cluster = Cluster()
            client = cluster.start()
            try:
                if k == 0:
                    h = dox.start_workflow(client, durable_flow, 3, workflow_id="sk", store=store)
                else:
                    h = dox.resume_workflow(client, "sk", store=store)
                _until_recorded(store, "sk", target, lambda h=h: not h._thread.is_alive())
            finally:
                cluster.kill()
                snapshots.append((_recorded_seqs(store, "sk", len(tags)), _counts(marks)))
                client.close(timeout=10)
            h._thread.join(60)  # the orchestrator sees its steps lost and stops
        cluster = Cluster()
        client = cluster.start()
        try:
            out = dox.resume_workflow(client, "sk", store=store).result()
        finally:
            client.close()
            cluster.kill()
    finally:
        set_marks(None)
    final = _counts(marks)
    shutil.rmtree(marks)
    return {
        "scheduler kills": kills,
        "same result": out == expected,
        "completed steps re-run": _reruns(tags, snapshots, final),
        "in-flight steps re-run": sum(final.values()) - len(tags),
        "kill points (recorded steps, drawn)": points,
        "steps recorded at the kills (of 200)": [len(r) for r, _ in snapshots],
    }


def _scheduler_state(dask_scheduler=None):
    """On the scheduler: RSS after a GC and ``malloc_trim`` (freed heap handed back to
    the OS, glibc), live pymalloc blocks, and what Dask keeps that runs can multiply."""
    import ctypes
    import gc

    import psutil
    from dask.utils import key_split

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    spans = dask_scheduler.extensions["spans"].spans.values()
    return {
        "rss": psutil.Process().memory_info().rss,
        "blocks": sys.getallocatedblocks(),
        "spans": len(spans),
        "span task groups": sum(len(sp.groups) for sp in spans),
        "span metadata records": sum(
            len((sp._metadata or {}).get("collections", ())) for sp in spans
        ),
        "key_split cache": key_split.cache_info().currsize,
        "task prefixes": len(dask_scheduler.task_prefixes),
    }


def _fill_key_split(dask_scheduler=None):
    """Fill ``dask.utils.key_split``'s LRU cache (100,000 keys, one entry per key
    ever seen) so that later keys replace entries instead of adding them."""
    from dask.utils import key_split

    for i in range(key_split.cache_info().maxsize):
        key_split(f"prefill-{i}-x")
    return key_split.cache_info().currsize


#: Dask's bounded logs set small for the steady-state phase (scheduler process):
#: the transition log, each BatchedSend's recent messages and each event topic
#: (low-level-log-length), Computations and erred tasks.
SMALL_HISTORIES = {
    "DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH": "10",
    "DASK_DISTRIBUTED__DIAGNOSTICS__COMPUTATIONS__MAX_HISTORY": "2",
    "DASK_DISTRIBUTED__DIAGNOSTICS__ERRED_TASKS__MAX_HISTORY": "2",
}


def _memory_one(mod, engine, store, runs, warmup, steady):
    cluster = Cluster(SMALL_HISTORIES if steady else None)
    client = cluster.start()
    try:
        if steady:
            client.run_on_scheduler(_fill_key_split)

        def one(tag):
            if engine == "durable":
                h = dox.start_workflow(client, mod.durable_flow, 3, workflow_id=tag, store=store)
                return h.result()
            return mod.plain_flow(client, 3)

        for r in range(warmup):
            one(f"warm{r}")
        readings = [client.run_on_scheduler(_scheduler_state)]
        for r in range(runs):
            one(f"m{r}")
            if r + 1 in (runs // 2, runs):
                readings.append(client.run_on_scheduler(_scheduler_state))
    finally:
        client.close()
        cluster.kill()
    r0, rh, r1 = readings
    mb = 2**20
    return {
        "RSS growth MB": round((r1["rss"] - r0["rss"]) / mb, 2),
        "1st half / 2nd half MB": (
            round((rh["rss"] - r0["rss"]) / mb, 2),
            round((r1["rss"] - rh["rss"]) / mb, 2),
        ),
        "live pymalloc blocks growth": r1["blocks"] - r0["blocks"],
        **{f"{k} +": r1[k] - r0[k] for k in r0 if k not in ("rss", "blocks")},
    }


def memory(store, runs, warmup=10):
    """Scheduler RSS over ``runs`` consecutive runs of the flow (after ``warmup`` runs),
    durable and plain ``Client.submit``/``Client.map`` (same functions, no workflow
    code), each on its own new cluster: with Dask's defaults, and in the steady state
    (Dask's bounded histories small, ``key_split``'s cache full). The step functions
    are imported from the ``bench_workflows`` module (sent by reference, as steps in a
    package are; functions of ``__main__`` travel by value: docs/benchmarks.md)."""
    import bench_workflows as mod

    out = {}
    for steady in (False, True):
        phase = "steady state" if steady else "Dask defaults"
        res = {
            engine: _memory_one(
                mod, engine, f"{store}-{engine}-{int(steady)}", runs, warmup, steady
            )
            for engine in ("durable", "plain")
        }
        d, p = res["durable"]["RSS growth MB"], res["plain"]["RSS growth MB"]
        out[phase] = {
            "runs": runs,
            **res,
            "durable / plain RSS growth": round(d / p, 2) if p > 0.05 else f"{d} / {p} MB",
        }
        print({f"memory, {phase}": out[phase]}, flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2)
    ap.add_argument("--no-prefect", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only the memory phase")
    ap.add_argument("--crash-only", action="store_true", help="only the client/scheduler kills")
    ap.add_argument("--prefect-timeout", type=float, default=900.0)
    args = ap.parse_args()
    if args.child:
        return _child(*args.child, "crash")
    import dask
    import distributed

    print(_machine.describe(f"dask {dask.__version__}, distributed {distributed.__version__}"))
    print(f"load average before {os.getloadavg()}", flush=True)
    assert len(trace(3)) == STEPS, len(trace(3))
    repeat, ckills, skills, runs = (3, 3, 2, 20) if args.quick else (7, 20, 5, 100)
    rng = random.Random(0)
    tmp = tempfile.mkdtemp()
    if args.crash_only:
        cluster = Cluster()
        try:
            client = cluster.start()
            expected = plain_flow(client, 3)
            print(client_kills(client, os.path.join(tmp, "crash"), ckills, expected, rng))
            client.close()
            cluster.kill()
            print(scheduler_kills(os.path.join(tmp, "sk"), skills, expected, rng), flush=True)
        finally:
            cluster.kill()
            shutil.rmtree(tmp, ignore_errors=True)
        return
    if args.memory_only:
        try:
            memory(os.path.join(tmp, "mem"), runs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"load average after {os.getloadavg()}")
        return
    cluster = Cluster()
    try:
        client = cluster.start()
        res, plain_s = overhead(client, os.path.join(tmp, "ov"), repeat)
        print(res, flush=True)
        print(breakdown(client, os.path.join(tmp, "prof")), flush=True)
        if not args.no_prefect:
            pf = prefect(cluster.address, repeat, plain_s, timeout=args.prefect_timeout)
            print(pf, flush=True)
            if "prefect per-step overhead ms" in pf:
                for mode in ("durable (fsync)", "durable (no fsync)"):
                    ours = res[f"{mode} per-step overhead ms (p50)"]
                    ratio = pf["prefect per-step overhead ms"] / ours if ours > 0.05 else None
                    print(
                        {
                            f"prefect / {mode} per-step overhead": round(ratio, 1)
                            if ratio
                            else "ours below the noise (<= 0.05 ms)"
                        }
                    )
        expected = plain_flow(client, 3)
        print(client_kills(client, os.path.join(tmp, "crash"), ckills, expected, rng), flush=True)
        client.close()
        cluster.kill()
        print(scheduler_kills(os.path.join(tmp, "sk"), skills, expected, rng), flush=True)
        memory(os.path.join(tmp, "mem"), runs)
    finally:
        cluster.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
