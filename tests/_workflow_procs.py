"""Steps and workflows of the workflow tests (importable by workers and subprocess clients).

Each step call writes one side-effect file ``<runs>/<tag>-<i>-<random>`` when it starts,
so a test counts executions across processes and restarts.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import dask_oxigdal as dox


def _mark(runs: str, tag: str, i: object) -> None:
    with open(os.path.join(runs, f"{tag}-{i}-{uuid.uuid4().hex}"), "w"):
        pass


def counts(runs: str) -> dict[str, int]:
    """``{"<tag>-<i>": executions}`` from the side-effect files."""
    out: dict[str, int] = {}
    for n in os.listdir(runs):
        tag = n.rsplit("-", 1)[0]
        out[tag] = out.get(tag, 0) + 1
    return out


@dox.step(retries=1)
def work(runs: str, tag: str, i: int, delay: float = 0.0) -> int:
    _mark(runs, tag, i)
    if delay:
        time.sleep(delay)
    return i * 10


@dox.step
def fail(runs: str, i: int) -> None:
    _mark(runs, "fail", i)
    raise ValueError(f"tile {i} has no data")


@dox.step
def annotations_of_my_task() -> dict:
    from distributed import get_worker
    from distributed.worker import thread_state

    ts = get_worker().state.tasks[thread_state.key]
    return {k: v for k, v in (ts.annotations or {}).items() if k.startswith("oxigdal_")}


@dox.step(tenant="override")
def annotations_overridden() -> dict:
    return annotations_of_my_task.fn()


@dox.workflow
def control_flow(runs: str, cloud: float, loops: int) -> dict:
    """A branch, a loop of ``loops`` iterations, fan-out/fan-in and a caught exception."""
    out: dict = {}
    if cloud < 0.2:  # branch
        out["branch"] = work(runs, "clear", 0)
    else:
        out["branch"] = -work(runs, "cloudy", 0)
    total = 0
    for i in range(loops):  # loop of 0, 1, n iterations
        total += work(runs, "loop", i)
    out["loop"] = total
    futs = work.map([runs] * 5, ["fan"] * 5, range(5))  # fan-out
    out["fan"] = sum(dox.gather(futs))  # fan-in
    try:
        fail(runs, 0)
    except ValueError as e:
        out["caught"] = str(e)
    it = 0
    while it < 2:  # while loop
        it += 1
    out["while"] = it
    return out


@dox.workflow
def crashy(runs: str, n: int, nap: float, delay: float) -> int:
    """Fan-out of ``n`` slow tiles, a durable sleep, then a final step."""
    total = sum(dox.gather(work.map([runs] * n, ["tile"] * n, range(n), [delay] * n)))
    dox.sleep(nap)
    return total + work(runs, "after", 0)


@dox.workflow
def reads_param(runs: str, path: str) -> int:
    """Its step's argument comes from a file (a workflow whose code or input changed)."""
    with open(path) as f:
        value = int(f.read())
    out = work(runs, "param", value)
    if os.path.exists(path + ".fail"):
        raise RuntimeError("the workflow failed after its step")
    return out


@dox.workflow
def slow_fanout(runs: str, n: int, delay: float) -> int:
    return sum(dox.gather(work.map([runs] * n, ["slow"] * n, range(n), [delay] * n)))


@dox.workflow
def map_fanout(runs: str, n: int) -> int:
    """One ``step.map`` fan-out of ``n`` calls, then one sequential step."""
    first = work(runs, "first", 0)  # 0
    return first + sum(dox.gather(work.map([runs] * n, ["mapped"] * n, range(n), [0.0] * n)))


@dox.workflow
def tenant_probe() -> list:
    return [annotations_of_my_task(), annotations_overridden()]


@dox.step
def timed(tenant: str, i: int, seconds: float) -> tuple:
    """Sleep ``seconds``; return ``(tenant, start, stop)`` measured on the worker."""
    start = time.time()
    time.sleep(seconds)
    return (tenant, start, time.time())


@dox.workflow
def tenant_fanout(tenant: str, n: int, seconds: float) -> list:
    return dox.gather(timed.map([tenant] * n, range(n), [seconds] * n))


def main() -> None:
    """Subprocess client: ``main SCHEDULER STORE RUNS ID N NAP DELAY`` (argv)."""
    from distributed import Client

    address, store, runs, wid, n, nap, delay = sys.argv[1:8]
    with Client(address) as client:
        h = dox.start_workflow(
            client, crashy, runs, int(n), float(nap), float(delay), workflow_id=wid, store=store
        )
        print("started", flush=True)
        print(h.result(), flush=True)
