"""Run the demo's day on plain Dask and with dask-oxigdal, on identical clusters.

:func:`run_demo` starts a ``LocalCluster`` (process workers under nannies,
the scheduler in this process), runs the day of
:mod:`dask_oxigdal.demo.workloads` on it without the extension, closes it,
then does the same with the extension registered; ``--quick`` (or
``--scheduler``, an existing cluster) runs only the second half. The same
killer thread SIGKILLs the busiest worker at the same moment of both days.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from typing import Any, TextIO

import dask.config
from distributed.diagnostics.plugin import WorkerPlugin

from dask_oxigdal import config
from dask_oxigdal.demo import workloads as w
from dask_oxigdal.demo.sampler import Killer, attempts_from_trace, measure
from dask_oxigdal.demo.workloads import Day

#: Seconds into the day at which a worker is killed.
KILL_AT = 7.0

_POLICY_COUNTERS: tuple[tuple[str, str, str], ...] = (
    # (summary name, policy, snapshot key): read defensively, None when absent
    ("gangs_started", "Gang", "started"),
    ("gang_restarts", "Gang", "restarts"),
    ("deadlines_met", "Deadline", "met"),
    ("deadlines_missed", "Deadline", "missed"),
    ("deadlines_failed", "Deadline", "failed"),
    ("retries", "Retries", "retried"),
    ("quarantined_workers", "Quarantine", "quarantined"),
    ("straggler_backups", "Stragglers", "backups"),
)


def parse_demo_deadline(value: str | float) -> float:
    """Seconds of a demo deadline such as ``"4s"``, ``"10min"``, ``"2h"`` or ``120``.

    Parameters
    ----------
    value : str or float
        A duration Dask's ``parse_timedelta`` reads, or a number of seconds.

    Returns
    -------
    float
        The deadline in seconds, ``> 0``.

    Raises
    ------
    ValueError
        ``value`` is not a duration, or is not positive; the message names it.
    """
    from dask.utils import parse_timedelta

    try:
        seconds = float(parse_timedelta(value))
    except (TypeError, ValueError, KeyError):
        raise ValueError(
            f"deadline {value!r} is not a duration: use a number of seconds or "
            "a number with a unit such as 90s, 10min, 2h"
        ) from None
    if not seconds > 0:
        raise ValueError(f"deadline {value!r} must be longer than 0 seconds")
    return seconds


def policy_counters(status: dict[str, Any]) -> dict[str, Any]:
    """The policy counters of the summary, ``None`` where a policy is not installed.

    Nested ``{tenant: {queue: n}}`` counters are summed; lists are counted.

    Parameters
    ----------
    status : dict
        ``dox.status(client)``.

    Returns
    -------
    dict
    """
    policies = status.get("policies") or {}
    out: dict[str, Any] = {}
    for name, policy, key in _POLICY_COUNTERS:
        value = (policies.get(policy) or {}).get(key)
        out[name] = None if value is None else _count(value)
    return out


def _count(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_count(v) for v in value.values())
    if isinstance(value, (list, tuple, set)):
        return len(value)
    return int(value)


def demo_policies() -> list[dict[str, Any]]:
    """The configured policy list, with ``Stragglers`` rescheduling instead of only detecting.

    Returns
    -------
    list of dict
    """
    out = []
    for spec in dask.config.get("oxigdal.scheduling.policies"):
        spec = dict(spec)
        if spec.get("class", "").endswith(".Stragglers"):
            spec["action"] = "reschedule"
        out.append(spec)
    return out


def ensure_extension(
    client: Any, tenants: dict[str, float], policies: list[dict[str, Any]] | None = None
) -> str:
    """Install the scheduler extension with the demo tenants, if needed.

    Parameters
    ----------
    client : distributed.Client
    tenants : dict
        ``{tenant: weight}``.
    policies : list of dict, optional
        Policy list of a new installation (default: the configured one).

    Returns
    -------
    str
        What was done: ``"installed"``, ``"already installed"`` or
        ``"replaced"`` (an installed extension lacked the demo tenants: it is
        replaced by one that has the tenants it had, with their weights, plus
        the demo's).
    """
    from dask_oxigdal.scheduling import register, status

    options: dict[str, Any] = {} if policies is None else {"policies": policies}
    st = status(client)
    if not st.get("installed"):
        register(client, tenants=tenants, **options)
        return "installed"
    known = st.get("tenants") or {}
    if all(known.get(t, {}).get("weight") == wt for t, wt in tenants.items()):
        return "already installed"
    merged = {t: v["weight"] for t, v in known.items() if v.get("weight") is not None}
    merged.update(tenants)
    register(client, replace=True, tenants=merged)
    return "replaced"


def urls(dashboard: str) -> dict[str, str]:
    """The dashboard's, the ``/oxigdal/`` page's and the metrics' addresses.

    Parameters
    ----------
    dashboard : str
        ``client.dashboard_link``.

    Returns
    -------
    dict
        ``{"dashboard", "oxigdal", "state", "metrics"}``.
    """
    base = dashboard.rsplit("/status", 1)[0].rstrip("/")
    return {
        "dashboard": dashboard,
        "oxigdal": f"{base}/oxigdal/",
        "state": f"{base}/oxigdal/state.json",
        "metrics": f"{base}/metrics",
    }


def run_half(
    mode: str,
    *,
    workers: int,
    threads_per_worker: int,
    size: int,
    tiles: int,
    seed: int,
    deadline_s: float,
    kill_worker: bool,
    scheduler_address: str | None,
    stream: TextIO,
    keep_alive: bool = False,
    secure: bool = False,
) -> dict[str, Any]:
    """Run the day once: ``mode`` is ``"plain"`` (no extension) or ``"ours"``.

    Parameters
    ----------
    mode : {"plain", "ours"}
    workers, threads_per_worker, size, tiles, seed, deadline_s, kill_worker
        See :func:`run_demo`.
    scheduler_address : str or None
        An existing scheduler instead of an embedded ``LocalCluster``.
    stream : file-like
        Where progress lines go.
    keep_alive : bool
        Keep the embedded cluster up until interrupted once the day is over.
    secure : bool
        Mutual TLS, ``oxigdal.auth`` on (for ``"ours"``) and one principal
        per tenant (:class:`~dask_oxigdal.demo.secure.SecureCluster`); the
        result gets ``secure`` (who ran what, the audit's verdict).

    Returns
    -------
    dict
        The figures of :func:`~dask_oxigdal.demo.sampler.measure`, plus
        ``mode``, ``cluster``, ``urls``, ``wall_seconds``, ``ndvi``,
        ``vector``, and for ``"ours"`` ``extension``, ``policies`` and
        ``coordinator``.
    """
    from distributed import Client, LocalCluster

    from dask_oxigdal.demo.scene import summarise

    if mode not in ("plain", "ours"):
        raise ValueError(f"mode={mode!r}; valid modes: plain, ours")
    with contextlib.ExitStack() as stack:
        settings: dict[str, Any] = {}
        sc = None
        if scheduler_address:
            client = stack.enter_context(Client(scheduler_address))
            where = f"scheduler {scheduler_address}"
        else:
            if mode == "ours" and not dask.config.get("oxigdal.coordinator.enabled", False):
                # the embedded single-node coordinator journals the policy state
                data_dir = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="oxigdal-demo-coordinator-")
                )
                settings = {
                    "oxigdal.coordinator.enabled": True,
                    "oxigdal.coordinator.data-dir": data_dir,
                }
            shape = dict(n_workers=workers, threads_per_worker=threads_per_worker)
            local = dict(processes=True, dashboard_address="127.0.0.1:0", host="127.0.0.1")
            where = f"LocalCluster({workers} workers x {threads_per_worker} threads)"
            if secure:
                from dask_oxigdal.demo.secure import SecureCluster

                sc = SecureCluster(
                    stack, ours=mode == "ours", settings=settings, policies=demo_policies(),
                    **shape, **local,
                )  # fmt: skip
                client = sc.client
                where += ", mutual TLS" + (", oxigdal.auth" if mode == "ours" else "")
            else:
                cluster = stack.enter_context(LocalCluster(**shape, **local))
                client = stack.enter_context(Client(cluster))
        extension = None
        if mode == "ours":
            with dask.config.set(settings):
                extension = ensure_extension(client, w.DEMO_TENANTS, demo_policies())
        links = urls(client.dashboard_link)
        label = "plain Dask" if mode == "plain" else "dask-oxigdal"
        print(f"{label}: {where}; dashboard {links['dashboard']}", file=stream, flush=True)
        if mode == "ours":
            print(f"  live oxigdal page: {links['oxigdal']}", file=stream, flush=True)
        n_workers = len(client.scheduler_info()["workers"])
        # every worker, and the one that replaces the killed one, imports and
        # compiles the kernels before it takes tasks: neither day's figures pay it
        client.register_plugin(_WarmUp(), name="oxigdal-demo-warm-up")
        threads = sum(v["nthreads"] for v in client.scheduler_info()["workers"].values())
        day = Day(
            client, seed=seed, size=size, tiles=tiles, deadline_s=deadline_s, threads=threads,
            clients=sc.clients() if sc is not None else None,
        )  # fmt: skip
        killer = Killer(client, KILL_AT if kill_worker else None)
        t0 = time.time()
        killer.start(t0)
        try:
            day.run_until_done(t0, stream, mode)
        finally:
            killer.stop()
        end = time.time()
        events = [msg for _, msg in client.get_events(w.TRACE_TOPIC)]
        events = [e for e in events if isinstance(e, dict) and day.run in e.get("key", "")]
        out = measure(
            tenants=w.DEMO_TENANTS,
            submitted=day.submitted,
            attempts=attempts_from_trace(events, killer.info, end),
            jobs=day.jobs,
            gangs={
                g: [day.results[k] for k in keys if k in day.results]
                for g, keys in day.gangs.items()
            },
            kill=killer.info,
            late_tenant=w.LATE_TENANT,
            t0=t0,
        )
        for key, error in sorted(day.errors.items()):
            print(f"  [{mode}] task {key} failed: {error}", file=stream, flush=True)
        tile_keys = [f"imagery-tile-{p['tile']}-{day.run}" for p in day.plan]
        tile_results = [day.results[k] for k in tile_keys if k in day.results]
        out.update(
            mode=mode,
            cluster=where,
            urls=links,
            wall_seconds=end - t0,
            errors=day.errors,
            ndvi=summarise(tile_results, end - t0, size),
            vector=_vector_summary(day, tiles),
        )
        if killer.info.get("done"):
            out["kill"]["workers_after"] = len(client.scheduler_info()["workers"])
            out["kill"]["workers_before"] = n_workers
        if mode == "ours":
            from dask_oxigdal.scheduling import status

            final = status(client)
            out["extension"] = extension
            out["policies"] = policy_counters(final)
            out["coordinator"] = dict(final.get("coordinator") or {"role": "disabled"})
            policies = final.get("policies") or {}
            quarantine = (policies.get("Quarantine") or {}).get("workers") or {}
            out["quarantine"] = {
                a: b.get("reason") for a, b in quarantine.items() if b.get("state") != "closed"
            }
            stragglers = policies.get("Stragglers") or {}
            out["stragglers"] = {
                k: stragglers.get(k) for k in ("detected", "backups", "no_free_slot")
            }
        if sc is not None:
            out["secure"] = sc.summary(day.submitted)
        if keep_alive and not scheduler_address:
            from dask_oxigdal.demo.report import format_summary

            print(format_summary({mode: out}), file=stream)
            print("cluster kept alive: press Ctrl-C to stop", file=stream, flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
    return out


class _WarmUp(WorkerPlugin):
    """Worker plugin: import geopandas and compile the spectral kernels on a tiny tile.

    The work runs in a thread, so that the worker's event loop (its
    heartbeats) is never blocked while it compiles.
    """

    idempotent = True

    async def setup(self, worker: Any) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, _warm_up)


def _warm_up() -> None:
    from dask_oxigdal.demo.scene import process_tile

    process_tile(0, (0, 8, 0, 8), (0.0, 0.0, 1.0, 1.0), 0, 64)
    w.partition_countries(w.read_countries().head(8), 2)


def _vector_summary(day: Day, tiles: int) -> dict[str, Any]:
    nparts = w.vector_partitions(tiles)
    rows = [
        day.results[k]
        for k in day.submitted
        if k.startswith("vector-measure-") and k in day.results
    ]
    first = [r for r in rows if r["buffer_km"] == float(w.BUFFER_KM[0])]
    out: dict[str, Any] = {"partitions": nparts, "path": w.countries_path()}
    for scheme in ("hash", "hilbert"):
        parts = sorted((r for r in first if r["scheme"] == scheme), key=lambda r: r["partition"])
        out[scheme] = {
            "countries_per_partition": [r["countries"] for r in parts],
            "countries": sum(r["countries"] for r in parts),
            "population": sum(r["population"] for r in parts),
            "iso_a3": sorted(iso for r in parts for iso in r["iso_a3"]),
        }
    return out


def run_demo(
    *,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    size: int | None = None,
    tiles: int | None = None,
    seed: int | None = None,
    deadline: str | float | None = None,
    kill_worker: bool | None = None,
    scheduler_address: str | None = None,
    quick: bool = False,
    report_dir: str | None = None,
    progress_stream: TextIO | None = None,
    keep_alive: bool = False,
    secure: bool = False,
) -> dict[str, Any]:
    """Run the day on plain Dask and with dask-oxigdal; write the report.

    Parameters
    ----------
    workers, threads_per_worker : int, optional
        Shape of each embedded ``LocalCluster``; default from ``oxigdal.demo.*``.
    size, tiles, seed : int, optional
        Scene size in pixels, tiles per side, seed; default from ``oxigdal.demo.*``.
        The research and vector work grows with the number of tiles.
    deadline : str or float, optional
        Deadline of each quick-look job (``oxigdal.demo.deadline``).
    kill_worker : bool, optional
        Kill one worker process :data:`KILL_AT` seconds into each day
        (``oxigdal.demo.kill-worker``); with ``scheduler_address`` only an
        explicit ``True`` kills a worker.
    scheduler_address : str, optional
        Run only our half, on an existing scheduler (the extension is
        installed there if it is not, or replaced keeping its tenants).
    quick : bool
        Run only our half.
    report_dir : str, optional
        Where ``demo.png`` and ``demo.html`` go (default ``oxigdal-demo``
        in the current directory); ``""`` writes no report.
    progress_stream : file-like, optional
        Where progress lines go (default ``sys.stdout``).
    keep_alive : bool
        Keep our embedded cluster up until interrupted once the day is over.
    secure : bool
        Embedded clusters with mutual TLS, our half with ``oxigdal.auth``
        and one principal per tenant (``dask oxigdal demo --secure``).

    Returns
    -------
    dict
        ``{"ours": {...}, "plain": {...} or None, "report": {"png", "html"}, ...}``.
    """
    workers = config.get("demo.workers", workers)
    threads_per_worker = config.get("demo.threads-per-worker", threads_per_worker)
    size = config.get("demo.scene-size", size)
    tiles = config.get("demo.tiles", tiles)
    seed = config.get("demo.seed", seed)
    deadline_s = parse_demo_deadline(config.get("demo.deadline", deadline))
    if tiles > size:
        raise ValueError(
            f"tiles={tiles} tiles per side do not fit a {size}x{size} scene; "
            f"valid: 1 <= tiles <= size={size}"
        )
    if secure and scheduler_address:
        raise ValueError(
            "secure=True starts its own TLS clusters; it cannot run against "
            f"scheduler_address={scheduler_address!r}"
        )
    if scheduler_address and kill_worker is None:
        kill_worker = False  # never kill a worker of someone's cluster unless asked to
    kill_worker = bool(config.get("demo.kill-worker", kill_worker))
    stream = progress_stream or sys.stdout
    common = dict(
        workers=workers,
        threads_per_worker=threads_per_worker,
        size=size,
        tiles=tiles,
        seed=seed,
        deadline_s=deadline_s,
        kill_worker=kill_worker,
        scheduler_address=scheduler_address,
        stream=stream,
        secure=secure,
    )
    start = time.perf_counter()
    plain = None if (quick or scheduler_address) else run_half("plain", **common)
    ours = run_half("ours", keep_alive=keep_alive, **common)
    summary: dict[str, Any] = {
        "ours": ours,
        "plain": plain,
        "seed": seed,
        "deadline_s": deadline_s,
        "size": size,
        "tiles": tiles,
        "duration_s": time.perf_counter() - start,
    }
    report = {"png": None, "html": None}
    if report_dir != "":
        from dask_oxigdal.demo.report import write_report

        report = write_report(summary, report_dir or "oxigdal-demo")
        print(f"report: {report['html']} (picture: {report['png']})", file=stream, flush=True)
    summary["report"] = report
    return summary
