"""The ``dask oxigdal demo`` scenario.

A synthetic six-band scene (blue, green, red, nir, swir1, swir2; uint16
reflectance with ``0`` as nodata along a swath edge) is cut into tiles with
:class:`~dask_oxigdal.partitioning.TilePartitioner`. Each tile is one task:
it "reads" its window of the scene (a deterministic function of the global
pixel coordinates, so no data travels from the client), computes NDVI, NDWI
and NBR with the numba kernels and returns per-tile statistics.
The scenario (:func:`run_demo`) is a multi-tenant day on one cluster:

- three tenants with different fair-share weights (:data:`DEMO_TENANTS`);
- ``imagery``: the NDVI tile job above, annotated with a deadline;
- ``vector``: the Natural Earth low-res countries that ship with pyogrio's
  test fixtures, read on a worker, hash-partitioned by ISO code and
  Hilbert-partitioned by position, then measured per partition in an
  equal-area projection;
- ``research``: a gang whose members rendezvous through ``distributed.Event``
  (each member secedes from its worker thread while it waits, so the
  rendezvous completes even without the Gang policy), plus a batch of
  simulation tasks that keeps the cluster contended;
- one worker process is killed (``SIGKILL``) mid-run; its nanny starts a new
  one and Dask recomputes the lost tasks.

Live per-tenant progress comes from :func:`dask_oxigdal.monitoring.progress`.
The summary compares each tenant's share of worker-time with its weight,
reports the deadline, the gang rendezvous, the kill and recovery, the
policies' counters (``n/a`` for policies that are not installed) and the
throughput.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
from typing import Any, TextIO

import dask.config
import numpy as np

from dask_oxigdal import config

BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
NODATA = 0
#: Geographic extent of the synthetic scene (lon/lat, EPSG:4326).
SCENE_BOUNDS = (10.0, 45.0, 12.0, 47.0)
#: NDVI above this is counted as vegetation, NDWI above WATER_NDWI as water.
VEGETATION_NDVI = 0.4
WATER_NDWI = 0.2


def synthetic_window(
    seed: int, size: int, row0: int, row1: int, col0: int, col1: int
) -> dict[str, np.ndarray]:
    """The bands of one window of the synthetic scene.

    The scene is a deterministic function of ``seed`` and the global pixel
    coordinates: smooth land-cover fields (water, vegetation, bare soil) plus
    per-window noise, and a nodata triangle (all bands ``0``) in the top-left
    corner, as along the edge of a satellite swath.

    Parameters
    ----------
    seed : int
        Scene seed.
    size : int
        Width and height of the whole scene in pixels.
    row0, row1, col0, col1 : int
        Half-open pixel window ``[row0, row1) x [col0, col1)``.

    Returns
    -------
    dict of str to numpy.ndarray
        One ``uint16`` array of shape ``(row1 - row0, col1 - col0)`` per band name.
    """
    if not (0 <= row0 <= row1 <= size and 0 <= col0 <= col1 <= size):
        raise ValueError(
            f"window rows [{row0}, {row1}) x cols [{col0}, {col1}) is outside the "
            f"{size}x{size} scene"
        )
    phases = np.random.default_rng(seed).uniform(0, 2 * math.pi, size=6)
    rows = (np.arange(row0, row1, dtype=np.float64) / size)[:, None]
    cols = (np.arange(col0, col1, dtype=np.float64) / size)[None, :]
    # Smooth fields in [-1, 1]: their sign pattern decides the land cover.
    water = np.sin(5.0 * rows + phases[0]) * np.cos(4.0 * cols + phases[1])
    green = np.sin(9.0 * cols + phases[2]) * np.sin(7.0 * rows + phases[3])
    noise_rng = np.random.default_rng([seed, row0, col0])
    noise = noise_rng.normal(0.0, 120.0, size=(6, row1 - row0, col1 - col0))

    is_water = water > 0.55
    vigour = np.clip(green, 0.0, 1.0)
    base = {
        "blue": 900 + 300 * (1 - vigour),
        "green": 1100 + 400 * vigour,
        "red": 1800 - 1200 * vigour,
        "nir": 2600 + 2600 * vigour,
        "swir1": 2400 - 900 * vigour,
        "swir2": 1900 - 800 * vigour,
    }
    water_values = {
        "blue": 1200.0,
        "green": 1400.0,
        "red": 800.0,
        "nir": 400.0,
        "swir1": 200.0,
        "swir2": 150.0,
    }
    nodata = (rows * size + cols * size) < size / 8.0
    out: dict[str, np.ndarray] = {}
    for i, band in enumerate(BANDS):
        values = np.where(is_water, water_values[band], base[band]) + noise[i]
        values = np.clip(values, 1, 10000)
        values = np.where(nodata, NODATA, values)
        out[band] = values.astype(np.uint16)
    return out


def process_tile(
    tile_id: int,
    window: tuple[int, int, int, int],
    bounds: tuple[float, float, float, float],
    seed: int,
    size: int,
) -> dict[str, Any]:
    """Compute the spectral indices of one tile and summarise them (one Dask task).

    Parameters
    ----------
    tile_id : int
        Tile id from the tile partitioner.
    window : tuple of int
        Pixel window ``(row0, row1, col0, col1)``.
    bounds : tuple of float
        Geographic bounds of the tile ``(minx, miny, maxx, maxy)``.
    seed, size : int
        Scene seed and size, see :func:`synthetic_window`.

    Returns
    -------
    dict
        Pixel counts (total, valid, nodata), NDVI mean/min/max over valid
        pixels (``None`` when the tile is all nodata), land-cover pixel counts
        and the worker that ran the task.
    """
    from distributed import get_worker

    from dask_oxigdal.spectral import ndvi, spectral_index

    row0, row1, col0, col1 = window
    bands = synthetic_window(seed, size, row0, row1, col0, col1)
    v = ndvi(bands["nir"], bands["red"], nodata=NODATA)
    ndwi = spectral_index("ndwi", green=bands["green"], nir=bands["nir"], nodata=NODATA)
    nbr = spectral_index("nbr", nir=bands["nir"], swir2=bands["swir2"], nodata=NODATA)
    valid = ~np.isnan(v)
    n_valid = int(valid.sum())
    water = valid & (ndwi > WATER_NDWI)
    vegetation = valid & ~water & (v > VEGETATION_NDVI)
    try:
        worker = get_worker().address
    except ValueError:
        worker = "local"
    return {
        "tile": int(tile_id),
        "bounds": [float(b) for b in bounds],
        "window": [int(w) for w in window],
        "pixels": int(v.size),
        "valid": n_valid,
        "nodata": int(v.size - n_valid),
        "ndvi_mean": float(v[valid].mean()) if n_valid else None,
        "ndvi_min": float(v[valid].min()) if n_valid else None,
        "ndvi_max": float(v[valid].max()) if n_valid else None,
        "nbr_mean": float(nbr[valid].mean()) if n_valid else None,
        "water": int(water.sum()),
        "vegetation": int(vegetation.sum()),
        "bare": int(n_valid - water.sum() - vegetation.sum()),
        "worker": worker,
    }


def parse_demo_deadline(value: str | float) -> float:
    """Seconds of a demo deadline such as ``"90s"``, ``"10min"``, ``"2h"`` or ``120``.

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


def plan_tiles(size: int, tiles: int) -> list[dict[str, Any]]:
    """Cut the scene into ``tiles x tiles`` tiles: geographic bounds and pixel windows.

    Geographic bounds come from :class:`~dask_oxigdal.partitioning.TilePartitioner`;
    pixel windows from :class:`~dask_oxigdal.partitioning.LoadBalancedPartitioner`,
    so tile sizes differ by at most one pixel when ``size`` is not a multiple
    of ``tiles``.

    Parameters
    ----------
    size : int
        Scene width and height in pixels.
    tiles : int
        Tiles per side; at most ``size``.

    Returns
    -------
    list of dict
        One ``{"tile", "bounds", "window"}`` per tile, in tile-id order.
    """
    from dask_oxigdal.partitioning import (
        LoadBalancedPartitioner,
        SpatialExtent,
        TilePartitioner,
    )

    if tiles > size:
        raise ValueError(f"tiles={tiles} per side is more than the scene's size={size} pixels")
    grid = TilePartitioner(SpatialExtent(*SCENE_BOUNDS), tiles, tiles).partition()
    ranges = LoadBalancedPartitioner(size, tiles).partition().ranges()
    plan = []
    for tile_id, bounds in zip(grid.ids, grid.bounds, strict=True):
        # Tile ids are row-major from the south-west corner (minx, miny);
        # pixel rows run north to south.
        ty, tx = divmod(int(tile_id), tiles)
        col0, col1 = ranges[tx]
        row0, row1 = ranges[tiles - 1 - ty]
        plan.append(
            {
                "tile": int(tile_id),
                "bounds": tuple(float(b) for b in bounds),
                "window": (int(row0), int(row1), int(col0), int(col1)),
            }
        )
    return plan


def summarise(results: list[dict[str, Any]], wall: float, size: int) -> dict[str, Any]:
    """Combine the per-tile results into the demo's summary.

    Parameters
    ----------
    results : list of dict
        The outputs of :func:`process_tile`.
    wall : float
        Wall-clock seconds of the computation.
    size : int
        Scene size in pixels.

    Returns
    -------
    dict
        JSON-serialisable summary.
    """
    pixels = sum(r["pixels"] for r in results)
    valid = sum(r["valid"] for r in results)
    weighted = [r["ndvi_mean"] * r["valid"] for r in results if r["valid"]]
    per_worker: dict[str, int] = {}
    for r in results:
        per_worker[r["worker"]] = per_worker.get(r["worker"], 0) + 1
    return {
        "scene": {"size": size, "bands": list(BANDS), "bounds": list(SCENE_BOUNDS)},
        "tiles": len(results),
        "pixels": pixels,
        "valid_pixels": valid,
        "nodata_pixels": pixels - valid,
        "ndvi_mean": (sum(weighted) / valid) if valid else None,
        "land_cover": {
            "water": sum(r["water"] for r in results) / max(valid, 1),
            "vegetation": sum(r["vegetation"] for r in results) / max(valid, 1),
            "bare": sum(r["bare"] for r in results) / max(valid, 1),
        },
        "wall_seconds": wall,
        "megapixels_per_second": pixels / wall / 1e6 if wall > 0 else None,
        "tasks_per_worker": per_worker,
        "per_tile": sorted(results, key=lambda r: r["tile"]),
    }


#: Tenants of the demo and their fair-share weights.
DEMO_TENANTS: dict[str, float] = {"imagery": 3.0, "vector": 2.0, "research": 1.0}
#: Members of the research gang.
GANG_SIZE = 2
#: Seconds a gang member waits for the others before it reports failure.
GANG_TIMEOUT = 30.0
#: Buffer distances (km, at 512x512-pixel tiles) of the vector job's measurements.
BUFFER_KM = (25, 50, 100)
#: Equal-area projection used to measure country areas.
EQUAL_AREA_CRS = "EPSG:6933"


def countries_path() -> str:
    """Path of the Natural Earth low-res countries shipped with pyogrio's test fixtures.

    Returns
    -------
    str

    Raises
    ------
    FileNotFoundError
        If the installed pyogrio has no such fixture.
    """
    import os

    import pyogrio

    path = os.path.join(
        os.path.dirname(pyogrio.__file__),
        "tests",
        "fixtures",
        "naturalearth_lowres",
        "naturalearth_lowres.shp",
    )
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: the installed pyogrio {pyogrio.__version__} does not ship "
            "the naturalearth_lowres test fixture"
        )
    return path


def read_countries() -> Any:
    """Read the countries (one Dask task of the vector job).

    Returns
    -------
    geopandas.GeoDataFrame
    """
    import geopandas

    return geopandas.read_file(countries_path())


def partition_countries(countries: Any, npartitions: int) -> dict[str, Any]:
    """Hash partition ids (by ISO code) and Hilbert partition ids (by position) per row.

    Parameters
    ----------
    countries : geopandas.GeoDataFrame
    npartitions : int

    Returns
    -------
    dict
        ``{"hash": ndarray, "hilbert": ndarray}`` of partition ids.
    """
    from dask_oxigdal.partitioning import HashPartitioner, HilbertPartitioner

    hashed = HashPartitioner(npartitions).partitions_for_keys(countries["iso_a3"].to_numpy())
    hilbert = HilbertPartitioner.from_data(countries, npartitions).partition(countries).ids
    return {"hash": np.asarray(hashed, dtype=np.int64), "hilbert": np.asarray(hilbert)}


def measure_partition(
    countries: Any, ids: dict[str, Any], scheme: str, part: int, buffer_km: float
) -> dict[str, Any]:
    """Statistics of one partition of the countries (one Dask task).

    The countries of the partition are projected to an equal-area CRS; the
    task reports their number, land area, population, bounding box and the
    area of a ``buffer_km`` coastal/border buffer (the CPU-heavy part).

    Parameters
    ----------
    countries : geopandas.GeoDataFrame
    ids : dict
        From :func:`partition_countries`.
    scheme : {"hash", "hilbert"}
    part : int
        Partition id.
    buffer_km : float

    Returns
    -------
    dict
    """
    if scheme not in ids:
        raise ValueError(f"scheme={scheme!r}; valid schemes: {', '.join(sorted(ids))}")
    rows = countries[ids[scheme] == part]
    projected = rows.to_crs(EQUAL_AREA_CRS)
    area_km2 = float(projected.geometry.area.sum() / 1e6)
    buffered = projected.geometry.buffer(buffer_km * 1000.0, quad_segs=8)
    minx, miny, maxx, maxy = (float(v) for v in rows.total_bounds) if len(rows) else (0,) * 4
    return {
        "scheme": scheme,
        "partition": int(part),
        "countries": len(rows),
        "iso_a3": sorted(str(v) for v in rows["iso_a3"]),
        "area_km2": area_km2,
        "buffered_area_km2": float(buffered.area.sum() / 1e6),
        "population": float(rows["pop_est"].sum()),
        "bounds": [minx, miny, maxx, maxy],
    }


def simulate(seed: int, n: int, rounds: int) -> float:
    """A CPU-bound research task: ``rounds`` passes of a smoothing model over ``n`` values.

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


def gang_member(gang: str, index: int, size: int, timeout: float) -> dict[str, Any]:
    """One member of the research gang: announce itself, then wait for the others.

    The member sets ``distributed.Event("<gang>-<index>")`` and waits up to
    ``timeout`` seconds for every other member's event. It secedes from the
    worker's thread pool while it waits, so members on a one-thread worker
    cannot deadlock each other.

    Parameters
    ----------
    gang : str
        Gang name (also the prefix of the events).
    index, size : int
        This member's index and the gang size.
    timeout : float
        Seconds to wait.

    Returns
    -------
    dict
        ``{"member", "met", "waited_s", "worker"}``; ``met`` is whether
        every other member showed up in time.
    """
    from distributed import Event, get_worker, rejoin, secede

    start = time.perf_counter()
    Event(f"{gang}-{index}").set()
    secede()
    try:
        deadline = start + timeout
        met = True
        for other in range(size):
            if other == index:
                continue
            left = max(deadline - time.perf_counter(), 0.001)
            if not Event(f"{gang}-{other}").wait(timeout=left):
                met = False
                break
    finally:
        rejoin()
    return {
        "member": index,
        "met": met,
        "waited_s": time.perf_counter() - start,
        "worker": get_worker().address,
    }


# ----------------------------------------------------------------- the run
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


class _Sampler:
    """Polls ``dox.status`` from a thread: share timeline, and the mid-run kill."""

    def __init__(self, client: Any, tenants: list[str], kill_after: int | None) -> None:
        import threading

        self.client = client
        self.tenants = tenants
        self.kill_after = kill_after
        self.samples: list[tuple[float, dict[str, float], dict[str, int]]] = []
        self.kill: dict[str, Any] = {"requested": kill_after is not None, "done": False}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oxigdal-demo-sampler", daemon=True)
        self.t0 = time.perf_counter()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=90)  # a kill in progress waits up to 60 s for the worker
        self.sample()

    def sample(self) -> dict[str, Any] | None:
        from dask_oxigdal.scheduling import status

        try:
            st = status(self.client)
        except Exception as e:  # the scheduler is busy with the kill: try again
            self.errors.append(f"{type(e).__name__}: {e}")
            return None
        tenants = st.get("tenants") or {}
        ws = {t: float(tenants.get(t, {}).get("worker_seconds", 0.0)) for t in self.tenants}
        pending = {t: int(tenants.get(t, {}).get("pending", 0)) for t in self.tenants}
        self.samples.append((time.perf_counter() - self.t0, ws, pending))
        return st

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            st = self.sample()
            if (
                st is not None
                and self.kill_after is not None
                and not self.kill["done"]
                and (st.get("tenants") or {}).get("imagery", {}).get("completed", 0)
                >= self.kill_after
            ):
                self._kill()

    def _kill(self) -> None:
        import os

        self.kill["done"] = True
        try:
            processing = self.client.processing()
            workers = sorted(processing, key=lambda w: (-len(processing[w]), w))
            nanny = self.client.scheduler_info()["workers"]
            victim = next((w for w in workers if nanny[w].get("nanny")), None)
            if victim is None:
                self.kill.update(done=False, skipped="no worker runs under a nanny")
                return
            pid = self.client.run(os.getpid, workers=[victim])[victim]
            self.kill.update(
                worker=victim,
                pid=int(pid),
                tasks_running=len(processing[victim]),
                at_s=time.perf_counter() - self.t0,
                workers_before=len(nanny),
            )
            # SIGKILL from inside the worker process: works for local and remote
            # clusters alike, and the nanny starts a replacement.
            self.client.run(_sigkill_self, workers=[victim], wait=False)
            end = time.monotonic() + 60
            while time.monotonic() < end and victim in self.client.scheduler_info()["workers"]:
                time.sleep(0.1)
            self.kill["died"] = victim not in self.client.scheduler_info()["workers"]
        except Exception as e:
            self.kill["error"] = f"{type(e).__name__}: {e}"

    def shares(self) -> tuple[dict[str, float], float]:
        """Share of worker-seconds while every tenant had work pending, and how long that was."""
        delta = dict.fromkeys(self.tenants, 0.0)
        seconds = 0.0
        for (t0, ws0, p0), (t1, ws1, _) in zip(self.samples, self.samples[1:], strict=False):
            if all(p0[t] > 0 for t in self.tenants):
                seconds += t1 - t0
                for t in self.tenants:
                    delta[t] += ws1[t] - ws0[t]
        total = sum(delta.values())
        return ({t: (d / total if total > 0 else 0.0) for t, d in delta.items()}, seconds)


async def _sigkill_self() -> None:
    """Kill this process with SIGKILL (run on the victim worker: no reply comes back)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def ensure_extension(client: Any, tenants: dict[str, float]) -> str:
    """Install the scheduler extension with the demo tenants, if needed.

    Parameters
    ----------
    client : distributed.Client
    tenants : dict
        ``{tenant: weight}``.

    Returns
    -------
    str
        What was done: ``"installed"``, ``"already installed"`` or
        ``"replaced"`` (an installed extension lacked the demo tenants: it is
        replaced by one that has the tenants it had, with their weights, plus
        the demo's).
    """
    from dask_oxigdal.scheduling import register, status

    st = status(client)
    if not st.get("installed"):
        register(client, tenants=tenants)
        return "installed"
    known = st.get("tenants") or {}
    if all(known.get(t, {}).get("weight") == w for t, w in tenants.items()):
        return "already installed"
    merged = {t: v["weight"] for t, v in known.items() if v.get("weight") is not None}
    merged.update(tenants)
    register(client, replace=True, tenants=merged)
    return "replaced"


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
    progress_stream: TextIO | None = None,
    keep_alive: bool = False,
) -> dict[str, Any]:
    """Run the multi-tenant demo scenario and return its summary.

    Parameters
    ----------
    workers, threads_per_worker : int, optional
        Shape of the embedded ``LocalCluster`` (process workers, each under a
        nanny); default from ``oxigdal.demo.*``. Ignored with ``scheduler_address``.
    size, tiles, seed : int, optional
        Scene size in pixels, tiles per side and seed; default from ``oxigdal.demo.*``.
        The research and vector jobs scale with the tile size.
    deadline : str or float, optional
        Deadline of the NDVI job, relative to its submission
        (``oxigdal.demo.deadline``).
    kill_worker : bool, optional
        Kill one worker process mid-run (``oxigdal.demo.kill-worker``). With
        ``scheduler_address`` the default is ``False``: only an explicit
        ``True`` kills a worker of an existing cluster.
    scheduler_address : str, optional
        Run against an existing scheduler instead; the extension is installed
        there if it is not (or replaced, keeping its tenants and adding the
        demo's, if it lacks the demo tenants).
    progress_stream : file-like, optional
        Where progress and status lines go (default ``sys.stdout``).
    keep_alive : bool
        Keep the embedded cluster up until interrupted once the summary is ready.

    Returns
    -------
    dict
        JSON-serialisable summary: the NDVI figures of :func:`summarise`
        plus ``tenants``, ``deadline``, ``gang``, ``vector``, ``kill``,
        ``policies``, ``urls``.
    """
    from distributed import Client, LocalCluster, wait

    from dask_oxigdal.annotations import annotate
    from dask_oxigdal.monitoring.progress import progress
    from dask_oxigdal.scheduling import status

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
    if scheduler_address and kill_worker is None:
        kill_worker = False  # never kill a worker of someone's cluster unless asked to
    kill_worker = bool(config.get("demo.kill-worker", kill_worker))
    stream = progress_stream or sys.stdout
    plan = plan_tiles(size, tiles)
    tile_pixels = (size // tiles) ** 2
    run_id = f"{time.time_ns():x}"[-8:]

    with contextlib.ExitStack() as stack:
        coordinator_settings: dict[str, Any] = {}
        if scheduler_address:
            client = stack.enter_context(Client(scheduler_address))
            where = f"scheduler {scheduler_address}"
        else:
            if not dask.config.get("oxigdal.coordinator.enabled", False):
                # the embedded single-node coordinator keeps the policy state
                # (usage ledgers, quotas, quarantine, checkpoint manifest) in a
                # journal for the length of the run
                data_dir = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="oxigdal-demo-coordinator-")
                )
                coordinator_settings = {
                    "oxigdal.coordinator.enabled": True,
                    "oxigdal.coordinator.data-dir": data_dir,
                }
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=threads_per_worker,
                    processes=True,
                    dashboard_address="127.0.0.1:0",
                    host="127.0.0.1",
                )
            )
            client = stack.enter_context(Client(cluster))
            where = f"LocalCluster({workers} workers x {threads_per_worker} threads)"
        with dask.config.set(coordinator_settings):
            extension = ensure_extension(client, DEMO_TENANTS)
        n_workers = len(client.scheduler_info()["workers"])
        urls = _urls(client.dashboard_link)
        print(
            f"dask-oxigdal demo on {where} (extension {extension}): tenants "
            + ", ".join(f"{t} (weight {w:g})" for t, w in DEMO_TENANTS.items()),
            file=stream,
        )
        print(f"dashboard: {urls['dashboard']}  oxigdal page: {urls['oxigdal']}", file=stream)
        sampler = _Sampler(
            client, list(DEMO_TENANTS), max(1, len(plan) // 3) if kill_worker else None
        )
        start = time.perf_counter()
        sampler.t0 = start
        submitted_at: dict[str, float] = {}

        # vector: read, partition (hash + Hilbert), measure each partition
        nparts = 8
        submitted_at["vector"] = time.perf_counter()
        with annotate(tenant="vector"):
            countries = client.submit(read_countries, key=f"vector-read-{run_id}")
            ids = client.submit(
                partition_countries, countries, nparts, key=f"vector-partition-{run_id}"
            )
            # the buffer distances scale the vector work with the tile size
            scale = max(tile_pixels / (512 * 512), 0.05)
            vector_futures = [
                client.submit(
                    measure_partition,
                    countries,
                    ids,
                    scheme,
                    part,
                    km * scale,
                    key=f"vector-measure-{scheme}-{part}-{km}-{run_id}",
                )
                for km in BUFFER_KM
                for scheme in ("hash", "hilbert")
                for part in range(nparts)
            ]
        # imagery: the NDVI tiles, with a deadline
        submitted_at["imagery"] = time.perf_counter()
        with annotate(tenant="imagery", deadline=deadline_s):
            tile_futures = [
                client.submit(
                    process_tile,
                    p["tile"],
                    p["window"],
                    p["bounds"],
                    seed,
                    size,
                    key=f"ndvi-tile-{p['tile']}-{run_id}",
                )
                for p in plan
            ]
        # research: the gang, then a batch of simulations
        submitted_at["research"] = time.perf_counter()
        gang = f"research-gang-{run_id}"
        with annotate(tenant="research", gang=gang):
            # one submission: a gang is the tasks of one submission with the name
            gang_futures = client.map(
                gang_member,
                [gang] * GANG_SIZE,
                range(GANG_SIZE),
                size=GANG_SIZE,
                timeout=GANG_TIMEOUT,
                key=[f"gang-member-{i}-{run_id}" for i in range(GANG_SIZE)],
            )
        with annotate(tenant="research"):
            sim_futures = [
                client.submit(simulate, seed + i, tile_pixels, 12, key=f"simulate-{i}-{run_id}")
                for i in range(len(plan))
            ]
        groups = {
            "imagery": tile_futures,
            "vector": [countries, ids, *vector_futures],
            "research": gang_futures + sim_futures,
        }
        done_at: dict[str, float] = {}

        def _finished(tenant: str, futs: list) -> None:
            remaining = [len(futs)]

            def cb(_fut: Any) -> None:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done_at[tenant] = time.perf_counter()

            for f in futs:
                f.add_done_callback(cb)

        for tenant, futs in groups.items():
            _finished(tenant, futs)
        sampler.start()
        every = [f for futs in groups.values() for f in futs]
        with contextlib.redirect_stdout(stream):
            progress(every, group_by="tenant", notebook=False, client=client)
        wait(every, timeout=600)
        results = client.gather(tile_futures)
        vector_results = client.gather(vector_futures)
        gang_results = client.gather(gang_futures)
        client.gather(sim_futures)
        wall = time.perf_counter() - start
        sampler.stop()
        recovered_workers = _wait_for_workers(client, n_workers) if sampler.kill["done"] else None
        final = status(client)
        print(f"{len(results)}/{len(plan)} tiles done in {wall:.2f} s", file=stream)

        summary = summarise(results, wall, size)
        summary["cluster"] = where
        summary["extension"] = extension
        summary["dashboard"] = urls["dashboard"]
        summary["urls"] = urls
        summary["tenants"] = _tenant_summary(
            final, sampler, groups, submitted_at, done_at, tile_pixels
        )
        summary["contention_seconds"] = sampler.shares()[1]
        finished_s = done_at.get("imagery", time.perf_counter()) - submitted_at["imagery"]
        summary["deadline"] = {
            "tenant": "imagery",
            "deadline_s": deadline_s,
            "finished_s": finished_s,
            "met": finished_s <= deadline_s,
        }
        summary["gang"] = {
            "name": gang,
            "members": GANG_SIZE,
            "rendezvous": all(r["met"] for r in gang_results),
            "waited_s": max(r["waited_s"] for r in gang_results),
            "workers": sorted({r["worker"] for r in gang_results}),
        }
        summary["vector"] = _vector_summary(vector_results, nparts)
        kill = dict(sampler.kill)
        kill["workers_after"] = recovered_workers
        kill["recovered"] = bool(
            kill.get("died") and recovered_workers is not None and recovered_workers >= n_workers
        )
        summary["kill"] = kill
        summary["policies"] = policy_counters(final)
        summary["policies_installed"] = sorted((final.get("policies") or {}).keys())
        summary["coordinator"] = dict(final.get("coordinator") or {"role": "disabled"})
        monitor = (final.get("policies") or {}).get("Monitor") or {}
        summary["alerts"] = dict(monitor.get("alerts_by_rule") or {})
        client.cancel(every)
        if keep_alive and not scheduler_address:
            print(format_summary(summary), file=stream)
            print("cluster kept alive: press Ctrl-C to stop", file=stream)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
    return summary


def _urls(dashboard: str) -> dict[str, str]:
    base = dashboard.rsplit("/status", 1)[0].rstrip("/")
    return {
        "dashboard": dashboard,
        "oxigdal": f"{base}/oxigdal/",
        "state": f"{base}/oxigdal/state.json",
        "metrics": f"{base}/metrics",
    }


def _wait_for_workers(client: Any, n: int, timeout: float = 60.0) -> int:
    end = time.monotonic() + timeout
    count = len(client.scheduler_info()["workers"])
    while count < n and time.monotonic() < end:
        time.sleep(0.2)
        count = len(client.scheduler_info()["workers"])
    return count


def _tenant_summary(
    final: dict[str, Any],
    sampler: _Sampler,
    groups: dict[str, list],
    submitted_at: dict[str, float],
    done_at: dict[str, float],
    tile_pixels: int,
) -> dict[str, dict[str, Any]]:
    tenants = final.get("tenants") or {}
    ws = {t: float(tenants.get(t, {}).get("worker_seconds", 0.0)) for t in DEMO_TENANTS}
    total_ws = sum(ws.values())
    total_weight = sum(DEMO_TENANTS.values())
    contended, _ = sampler.shares()
    policies = final.get("policies") or {}
    deadline = policies.get("Deadline") or {}
    gangs = (policies.get("Gang") or {}).get("started_by_tenant")
    out: dict[str, dict[str, Any]] = {}
    for tenant, weight in DEMO_TENANTS.items():
        span = done_at.get(tenant, time.perf_counter()) - submitted_at[tenant]
        n = len(groups[tenant])
        out[tenant] = {
            "weight": weight,
            "entitled_share": weight / total_weight,
            "share": ws[tenant] / total_ws if total_ws > 0 else 0.0,
            "contended_share": contended[tenant],
            "worker_seconds": ws[tenant],
            "tasks": n,
            "completed": int(tenants.get(tenant, {}).get("completed", 0)),
            "seconds": span,
            "tasks_per_second": n / span if span > 0 else None,
            # per-tenant policy counters (None: the policy is not installed)
            "deadlines_met": _per_tenant(deadline, "met", tenant),
            "deadlines_missed": _per_tenant(deadline, "missed", tenant),
            "deadlines_failed": _per_tenant(deadline, "failed", tenant),
            "gangs_started": None if gangs is None else int(gangs.get(tenant, 0)),
        }
    return out


def _per_tenant(snapshot: dict[str, Any], key: str, tenant: str) -> int | None:
    """``snapshot[key][tenant]`` (``{queue: n}``) summed; None when the key is absent."""
    table = snapshot.get(key)
    if table is None:
        return None
    return _count(table.get(tenant) or {})


def _vector_summary(results: list[dict[str, Any]], nparts: int) -> dict[str, Any]:
    out: dict[str, Any] = {"partitions": nparts, "path": countries_path()}
    # every buffer distance measures the same partitions: report the first one
    first = results[: 2 * nparts]
    for scheme in ("hash", "hilbert"):
        parts = sorted((r for r in first if r["scheme"] == scheme), key=lambda r: r["partition"])
        out[scheme] = {
            "countries_per_partition": [r["countries"] for r in parts],
            "countries": sum(r["countries"] for r in parts),
            "area_km2": sum(r["area_km2"] for r in parts),
            "population": sum(r["population"] for r in parts),
            "iso_a3": sorted(iso for r in parts for iso in r["iso_a3"]),
            "bounds": [r["bounds"] for r in parts],
        }
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """Render the demo summary as a text table.

    Parameters
    ----------
    summary : dict
        As returned by :func:`run_demo`.

    Returns
    -------
    str
        Human-readable summary.
    """
    cover = summary["land_cover"]
    lines = [
        "",
        "== dask-oxigdal demo: summary ==",
        f"cluster            {summary.get('cluster', '?')}",
        f"tiles              {summary['tiles']}",
        f"pixels             {summary['pixels']:,} "
        f"({summary['valid_pixels']:,} valid, {summary['nodata_pixels']:,} nodata -> NaN)",
        f"mean NDVI          {_fmt(summary['ndvi_mean'])}",
        f"land cover         water {cover['water']:.1%}, vegetation {cover['vegetation']:.1%}, "
        f"bare {cover['bare']:.1%}",
        f"wall time          {summary['wall_seconds']:.2f} s "
        f"({_fmt(summary['megapixels_per_second'])} Mpx/s, 3 indices per pixel)",
        "tasks per worker   "
        + ", ".join(f"{w}: {n}" for w, n in sorted(summary["tasks_per_worker"].items())),
    ]
    tenants = summary.get("tenants")
    if tenants:
        lines += [
            "",
            f"{'tenant':<10} {'weight':>6} {'entitled':>9} {'share':>7} {'contended':>10} "
            f"{'worker-s':>9} {'tasks':>6} {'tasks/s':>8} {'deadlines met/missed':>21} "
            f"{'gangs':>5}",
        ]
        for name, t in tenants.items():
            met, missed = t.get("deadlines_met"), t.get("deadlines_missed")
            dl = "n/a" if met is None else f"{met}/{missed}"
            if t.get("deadlines_failed"):
                dl += f" ({t['deadlines_failed']} failed)"
            gangs_started = t.get("gangs_started")
            lines.append(
                f"{name:<10} {t['weight']:>6g} {t['entitled_share']:>9.1%} {t['share']:>7.1%} "
                f"{t['contended_share']:>10.1%} {t['worker_seconds']:>9.2f} {t['tasks']:>6} "
                f"{_fmt(t['tasks_per_second'], '.1f'):>8} {dl:>21} "
                f"{'n/a' if gangs_started is None else gangs_started:>5}"
            )
        lines.append(
            f"(contended share: worker-time while all tenants had work pending, "
            f"{summary.get('contention_seconds', 0.0):.1f} s)"
        )
    d = summary.get("deadline")
    if d:
        lines += [
            "",
            f"deadline           {d['tenant']}: {'met' if d['met'] else 'MISSED'} "
            f"(finished in {d['finished_s']:.1f} s, deadline {d['deadline_s']:.0f} s)",
        ]
    g = summary.get("gang")
    if g:
        lines.append(
            f"gang               {g['members']} members: rendezvous "
            f"{'succeeded' if g['rendezvous'] else 'FAILED'} (waited {g['waited_s']:.2f} s)"
        )
    v = summary.get("vector")
    if v:
        lines.append(
            f"vector             {v['hash']['countries']} countries; hash partitions "
            f"{v['hash']['countries_per_partition']}, Hilbert partitions "
            f"{v['hilbert']['countries_per_partition']}"
        )
    k = summary.get("kill")
    if k:
        if k.get("done"):
            lines.append(
                f"worker killed      {k.get('worker')} (pid {k.get('pid')}) at "
                f"{k.get('at_s', 0):.1f} s with {k.get('tasks_running')} tasks; "
                f"{'recovered' if k['recovered'] else 'NOT recovered'}: "
                f"{k.get('workers_after')} workers, every task finished"
            )
        elif k.get("requested"):
            lines.append(
                f"worker killed      no ({k.get('skipped') or k.get('error', 'not reached')})"
            )
    p = summary.get("policies")
    if p is not None:
        lines.append(
            "policies           "
            + ", ".join(f"{name.replace('_', ' ')} {_na(value)}" for name, value in p.items())
        )
    coordinator = summary.get("coordinator")
    if coordinator:
        if coordinator.get("role") == "disabled":
            lines.append("coordinator        disabled")
        else:
            lines.append(
                f"coordinator        {coordinator.get('role')}, commit index "
                f"{coordinator.get('commit_index')}, queued writes "
                f"{coordinator.get('queued_writes')}"
            )
    alerts = summary.get("alerts")
    if alerts is not None:
        lines.append(
            "alerts             "
            + (", ".join(f"{rule}: {n}" for rule, n in sorted(alerts.items())) or "none")
        )
    lines.append(f"dashboard          {summary.get('dashboard', '-')}")
    urls = summary.get("urls") or {}
    if urls:
        lines.append(f"oxigdal page       {urls['oxigdal']}  (metrics: {urls['metrics']})")
    return "\n".join(lines)


def _na(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)
