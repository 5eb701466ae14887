"""The demo's multi-tenant day: its tenants, their tasks and when they arrive.

The same day runs twice, on plain Dask and with dask-oxigdal
(:mod:`dask_oxigdal.demo.run`); only the extension differs. On plain Dask
the annotations travel with the tasks and are ignored.

===========  ======  =========================================================
tenant       weight  work
===========  ======  =========================================================
research     1       arrives first: a backlog of simulations, and two gangs of
                     3 members that rendezvous at a barrier (each member holds
                     its thread while it waits, as an MPI-style job does)
vector       2       arrives 0.3 s later: the Natural Earth countries read,
                     hash- and Hilbert-partitioned, then every partition
                     measured in an equal-area projection at three buffer
                     distances
imagery      3       arrives last (2 s): the NDVI/NDWI/NBR mosaic of the
                     synthetic scene, and three quick-look jobs (12 tiles
                     each) with a deadline, 1, 4 and 7 s after its arrival
===========  ======  =========================================================

Once all of that is done, research runs its closing report (8 tasks); the
first attempt of one of them reads from a slow replica (20 times slower),
which makes the day's straggler tail.

Every task waits a fixed latency standing in for its read from object
storage, then does its real compute (numba spectral indices, geopandas
buffers, a numpy model). The latency keeps the day's shape the same on a
loaded machine; the compute is what the numbers are about.

Every task attempt reports its start and stop (wall clock, worker side) as a
``distributed`` event (topic :data:`TRACE_TOPIC`, no extension needed), so
the figures of both runs come from the same trace, including the attempts
that a killed worker never finished.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, TextIO

import numpy as np

from dask_oxigdal.demo.scene import (
    countries_path,  # noqa: F401  (the old import path)
    measure_partition,
    partition_countries,
    read_countries,
    tile_stats,
)

#: Tenants of the demo and their fair-share weights.
DEMO_TENANTS: dict[str, float] = {"imagery": 3.0, "vector": 2.0, "research": 1.0}
#: The tenant that arrives last; its wait for its first task is reported.
LATE_TENANT = "imagery"
#: Members of each research gang (a cluster of 2 workers x 2 threads has 4 slots).
GANG_SIZE = 3
#: Research gangs submitted at the start of the day.
GANGS = 2
#: Seconds a gang member waits at the barrier for the others before it gives up.
GANG_TIMEOUT = 4.0
#: Buffer distances (km) of the vector job's measurements.
BUFFER_KM = (25, 50, 100)
#: ``distributed`` event topic of the task trace.
TRACE_TOPIC = "oxigdal-demo-trace"

#: Seconds from the day's start to each arrival.
VECTOR_AT = 0.3
IMAGERY_AT = 2.0
#: Quick-look jobs of the late tenant: offsets from its arrival, tiles per job.
QUICKLOOK_AFTER = (1.0, 4.0, 7.0)
QUICKLOOK_TILES = 12
#: Report tasks at the end of the day, and how much slower the straggler's first attempt is.
REPORT_TASKS = 8
STRAGGLER_SLOWDOWN = 20.0
#: Longest the day may take before the demo gives up waiting.
DAY_TIMEOUT = 300.0

#: Read latency (s) of each kind of task: the stand-in for object storage.
LATENCY = {
    "simulation": 0.2,
    "gang": 0.4,
    "measure": 0.12,
    "tile": 0.2,
    "quicklook": 0.08,
    "report": 0.2,
}


def trace(event: str, **fields: Any) -> None:
    """Report one event of the current task attempt on the trace topic.

    Parameters
    ----------
    event : str
        ``"start"`` or ``"stop"``.
    **fields
        Extra JSON-serialisable fields.
    """
    from distributed import get_worker

    worker = get_worker()
    key = worker.get_current_task()
    worker.log_event(
        TRACE_TOPIC,
        {
            "event": event,
            "key": str(key),
            "t": time.time(),
            "worker": worker.address,
            "pid": os.getpid(),
            **fields,
        },
    )


def traced(func: Any, tenant: str, kind: str, latency: float, *args: Any, **kwargs: Any) -> Any:
    """Run ``func(*args, **kwargs)`` as one traced task of ``tenant``.

    The task reports its start, waits ``latency`` seconds (its read), runs
    ``func`` and reports its stop.

    Parameters
    ----------
    func : callable
    tenant, kind : str
        Recorded with each event.
    latency : float
        Seconds of simulated read latency.
    *args, **kwargs
        Passed to ``func``.

    Returns
    -------
    object
        What ``func`` returned.
    """
    trace("start", tenant=tenant, kind=kind)
    time.sleep(latency)
    out = func(*args, **kwargs)
    trace("stop", tenant=tenant, kind=kind)
    return out


def simulate(seed: int, n: int, rounds: int) -> float:
    """A research task: ``rounds`` passes of a smoothing model over ``n`` values.

    Parameters
    ----------
    seed, n, rounds : int

    Returns
    -------
    float
        Mean of the final field.
    """
    rng = np.random.default_rng(seed)
    field = rng.random(n)
    for _ in range(rounds):
        field = 0.5 * field + 0.25 * (np.roll(field, 1) + np.roll(field, -1))
        field = np.sqrt(field * field + 1e-3)
    return float(field.mean())


def report_part(seed: int, index: int, straggler: int, run_id: str) -> float:
    """One task of research's closing report; task ``straggler`` is slow on its first attempt.

    The first attempt of the straggler reads from a slow replica
    (:data:`STRAGGLER_SLOWDOWN` times the normal latency); a second attempt,
    wherever it runs, is normal. Attempts are told apart by a
    ``distributed.Event`` named after the run and the task.

    Parameters
    ----------
    seed, index, straggler : int
    run_id : str

    Returns
    -------
    float
    """
    from distributed import Event

    latency = LATENCY["report"]
    if index == straggler:
        first = Event(f"oxigdal-demo-{run_id}-straggler-attempted")
        if not first.is_set():
            first.set()
            latency *= STRAGGLER_SLOWDOWN
    trace("start", tenant="research", kind="report", straggler=index == straggler)
    time.sleep(latency)
    out = simulate(seed + index, 4096, 4)
    trace("stop", tenant="research", kind="report", straggler=index == straggler)
    return out


def gang_member(gang: str, index: int, size: int, timeout: float, work: float) -> dict[str, Any]:
    """One member of a research gang: rendezvous with the others, then work.

    The member sets ``distributed.Event("<gang>-<index>")`` and waits (holding
    its worker thread, as an MPI-style job does) up to ``timeout`` seconds for
    every other member's event. A member that gives up clears its own event, so
    that a member starting later cannot rendezvous with it. After the
    rendezvous every member works for ``work`` seconds.

    Parameters
    ----------
    gang : str
        Gang name (also the prefix of the events).
    index, size : int
        This member's index and the gang size.
    timeout, work : float
        Seconds to wait at most, seconds of work after the rendezvous.

    Returns
    -------
    dict
        ``{"gang", "member", "met", "started", "waited_s", "worker"}``; ``met``
        is whether every other member showed up in time.
    """
    from distributed import Event, get_worker

    trace("start", tenant="research", kind="gang", gang=gang)
    start = time.time()
    mine = Event(f"{gang}-{index}")
    mine.set()
    met = True
    for other in range(size):
        left = max(start + timeout - time.time(), 0.001)
        if other != index and not Event(f"{gang}-{other}").wait(timeout=left):
            met = False
            break
    waited = time.time() - start
    if met:
        time.sleep(work)
        simulate(index, 4096, 4)
    else:
        mine.clear()
    trace("stop", tenant="research", kind="gang", gang=gang, met=met)
    return {
        "gang": gang,
        "member": index,
        "met": met,
        "started": start,
        "waited_s": waited,
        "worker": get_worker().address,
    }


def vector_partitions(tiles: int) -> int:
    """Partitions per scheme of the vector job: its work grows with the mosaic's.

    Parameters
    ----------
    tiles : int
        Tiles per side of the mosaic.

    Returns
    -------
    int
    """
    return max(2, math.ceil(tiles * tiles / 6))


class Day:
    """The day on one cluster: submits the work on schedule, collects results as they come.

    Parameters
    ----------
    client : distributed.Client
    seed, size, tiles : int
        Scene seed, size and tiles per side.
    deadline_s : float
        Deadline of each quick-look job.
    threads : int
        Threads of the cluster (a gang has at most ``threads - 1`` members).
    clients : dict, optional
        ``{tenant: client}``: each tenant's work is submitted by its own
        client (``--secure``: its own principal); others use ``client``.
    """

    def __init__(
        self,
        client: Any,
        *,
        seed: int,
        size: int,
        tiles: int,
        deadline_s: float,
        threads: int,
        clients: dict[str, Any] | None = None,
    ):
        from dask_oxigdal.demo.scene import plan_tiles

        self.client = client
        self.clients = dict(clients or {})
        self.seed, self.size, self.tiles, self.deadline_s = seed, size, tiles, deadline_s
        self.plan = plan_tiles(size, tiles)
        self.run = f"{time.time_ns():x}"[-8:]
        self.submitted: dict[str, tuple[str, float]] = {}
        self.pending: dict[str, Any] = {}
        self.results: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.jobs: list[dict[str, Any]] = []
        self.gangs: dict[str, list[str]] = {}
        # a gang of 3 on the demo's 4 threads; smaller on a smaller existing cluster
        self.gang_size = max(1, min(GANG_SIZE, threads - 1))

    def _client(self, tenant: str) -> Any:
        return self.clients.get(tenant, self.client)

    def _add(self, tenant: str, futures: list) -> list[str]:
        now = time.time()
        for f in futures:
            self.submitted[f.key] = (tenant, now)
            self.pending[f.key] = f
        return [f.key for f in futures]

    def _submit(self, tenant: str, kind: str, func: Any, args: list, keys: list, **ann: Any):
        from dask_oxigdal.annotations import annotate

        latency = LATENCY.get(kind, 0.0)
        n = len(keys)
        columns = list(zip(*args, strict=True)) if args and args[0] else []
        # one submission per batch: Dask orders its tasks 0..n-1 (separate
        # submits within one fifo-timeout window would all tie)
        with annotate(tenant=tenant, **ann):
            futures = self._client(tenant).map(
                traced, [func] * n, [tenant] * n, [kind] * n, [latency] * n, *columns, key=keys
            )
        return self._add(tenant, futures)

    # ------------------------------------------------------------ the arrivals
    def research(self) -> None:
        """Submit research's backlog of simulations and its gangs (the day's first arrival)."""
        n = len(self.plan)
        self._submit(
            "research",
            "simulation",
            simulate,
            [(self.seed + i, 8192, 8) for i in range(n)],
            [f"research-simulation-{i}-{self.run}" for i in range(n)],
        )
        from dask_oxigdal.annotations import annotate

        for g in range(GANGS):
            name = f"research-gang-{g}-{self.run}"
            with annotate(tenant="research", gang=name):
                futures = self._client("research").map(
                    gang_member,
                    [name] * self.gang_size,
                    range(self.gang_size),
                    size=self.gang_size,
                    timeout=GANG_TIMEOUT,
                    work=LATENCY["gang"],
                    key=[f"{name}-member-{i}" for i in range(self.gang_size)],
                )
            self.gangs[name] = self._add("research", futures)

    def vector(self) -> None:
        """Submit the vector job: read, partition, then measure every partition."""
        nparts = vector_partitions(self.tiles)
        self.nparts = nparts
        (countries,) = self._submit(
            "vector", "read", read_countries, [()], [f"vector-read-{self.run}"]
        )
        (ids,) = self._submit(
            "vector",
            "partition",
            partition_countries,
            [(self.pending[countries], nparts)],
            [f"vector-partition-{self.run}"],
        )
        cases = [(s, p, km) for km in BUFFER_KM for s in ("hash", "hilbert") for p in range(nparts)]
        self._submit(
            "vector",
            "measure",
            measure_partition,
            [(self.pending[countries], self.pending[ids], s, p, km) for s, p, km in cases],
            [f"vector-measure-{s}-{p}-{km}-{self.run}" for s, p, km in cases],
        )

    def mosaic(self) -> None:
        """Submit the late tenant's mosaic: one task per tile."""
        self._submit(
            "imagery",
            "tile",
            tile_stats,
            [(p, self.seed, self.size) for p in self.plan],
            [f"imagery-tile-{p['tile']}-{self.run}" for p in self.plan],
        )

    def quicklook(self, j: int) -> None:
        """Submit quick-look job ``j``: :data:`QUICKLOOK_TILES` small tiles with a deadline."""
        picks = [
            self.plan[(j * QUICKLOOK_TILES + i) % len(self.plan)] for i in range(QUICKLOOK_TILES)
        ]
        keys = self._submit(
            "imagery",
            "quicklook",
            tile_stats,
            [(p, self.seed, self.size, 4) for p in picks],
            [f"imagery-quicklook-{j}-{i}-{self.run}" for i in range(len(picks))],
            deadline=self.deadline_s,
        )
        self.jobs.append(
            {
                "name": f"quick-look {j + 1}",
                "tenant": "imagery",
                "keys": keys,
                "submitted": self.submitted[keys[0]][1],
                "deadline_s": self.deadline_s,
            }
        )

    def report(self) -> None:
        """Submit research's closing report; one task straggles on its first attempt."""
        from dask_oxigdal.annotations import annotate

        straggler = self.seed % REPORT_TASKS
        with annotate(tenant="research"):
            futures = self._client("research").map(
                report_part,
                [self.seed] * REPORT_TASKS,
                range(REPORT_TASKS),
                straggler=straggler,
                run_id=self.run,
                key=[f"research-report-{i}-{self.run}" for i in range(REPORT_TASKS)],
            )
        self._add("research", futures)

    # ------------------------------------------------------------ the loop
    def collect(self) -> None:
        """Keep the results (and errors) of the finished futures, and let go of those."""
        for key in [k for k, f in self.pending.items() if f.done()]:
            fut = self.pending[key]
            # a result lost with a killed worker ("lost") is being recomputed: wait for it
            if fut.status == "finished":
                self.results[key] = fut.result()
            elif fut.status in ("error", "cancelled"):
                self.errors[key] = f"{fut.status}: {fut.exception()!r}"
            else:
                continue
            del self.pending[key]

    def run_until_done(self, t0: float, stream: TextIO, label: str) -> None:
        """Submit the day on schedule from ``t0``, collect until everything finished.

        Parameters
        ----------
        t0 : float
            Start of the day (``time.time()``).
        stream : file-like
            Where a progress line goes every 2 s.
        label : str
            Prefix of the progress lines.

        Raises
        ------
        TimeoutError
            The day took longer than :data:`DAY_TIMEOUT`.
        """
        schedule: list[tuple[float, Any]] = [
            (0.0, self.research),
            (VECTOR_AT, self.vector),
            (IMAGERY_AT, self.mosaic),
        ]
        schedule += [
            (IMAGERY_AT + after, lambda j=j: self.quicklook(j))
            for j, after in enumerate(QUICKLOOK_AFTER)
        ]
        schedule.sort(key=lambda s: s[0])
        next_line = t0
        reported = False
        while True:
            now = time.time()
            while schedule and now >= t0 + schedule[0][0]:
                schedule.pop(0)[1]()
            self.collect()
            if not schedule and not self.pending:
                if reported:
                    break
                self.report()
                reported = True
                continue
            if now >= next_line:
                print(f"  [{label}] {now - t0:5.1f} s  {self.progress()}", file=stream, flush=True)
                next_line = now + 2.0
            if now - t0 > DAY_TIMEOUT:
                raise TimeoutError(f"the demo's day did not finish in {DAY_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def progress(self) -> str:
        """``"tenant done/submitted, ..."`` for the progress line."""
        parts = []
        for tenant in DEMO_TENANTS:
            keys = [k for k, (t, _) in self.submitted.items() if t == tenant]
            parts.append(f"{tenant} {sum(k in self.results for k in keys)}/{len(keys)}")
        return ", ".join(parts)
