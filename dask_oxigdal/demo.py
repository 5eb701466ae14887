"""The ``dask oxigdal demo`` scenario.

A synthetic six-band scene (blue, green, red, nir, swir1, swir2; uint16
reflectance with ``0`` as nodata along a swath edge) is cut into tiles with
:class:`~dask_oxigdal.partitioning.TilePartitioner`. Each tile is one task:
it "reads" its window of the scene (a deterministic function of the global
pixel coordinates, so no data travels from the client), computes NDVI, NDWI
and NBR with the numba kernels and returns per-tile statistics. The client
shows a progress bar and prints a summary.

Later issues grow this into the full multi-tenant demo (tenants, deadlines,
gangs, a worker killed mid-run).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Any, TextIO

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


def run_demo(
    *,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    size: int | None = None,
    tiles: int | None = None,
    seed: int | None = None,
    scheduler_address: str | None = None,
    progress_stream: TextIO | None = None,
    keep_alive: bool = False,
) -> dict[str, Any]:
    """Run the demo scenario and return its summary.

    Parameters
    ----------
    workers, threads_per_worker : int, optional
        Shape of the embedded ``LocalCluster`` (process workers); default from
        ``oxigdal.demo.*``. Ignored with ``scheduler_address``.
    size, tiles, seed : int, optional
        Scene size in pixels, tiles per side and seed; default from ``oxigdal.demo.*``.
    scheduler_address : str, optional
        Address of an existing scheduler to run against instead.
    progress_stream : file-like, optional
        Where the progress bar and status lines go (default ``sys.stdout``).
    keep_alive : bool
        Keep the embedded cluster up until interrupted once the summary is ready.

    Returns
    -------
    dict
        The summary (see :func:`summarise`), plus ``dashboard`` and ``cluster``.
    """
    from distributed import Client, LocalCluster, progress

    workers = config.get("demo.workers", workers)
    threads_per_worker = config.get("demo.threads-per-worker", threads_per_worker)
    size = config.get("demo.scene-size", size)
    tiles = config.get("demo.tiles", tiles)
    seed = config.get("demo.seed", seed)
    stream = progress_stream or sys.stdout
    plan = plan_tiles(size, tiles)

    with contextlib.ExitStack() as stack:
        if scheduler_address:
            client = stack.enter_context(Client(scheduler_address))
            where = f"scheduler {scheduler_address}"
        else:
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
        print(
            f"dask-oxigdal demo: {size}x{size} px, 6 bands, {len(plan)} tiles on {where}",
            file=stream,
        )
        print(f"dashboard: {client.dashboard_link}", file=stream)
        start = time.perf_counter()
        futures = [
            client.submit(
                process_tile,
                p["tile"],
                p["window"],
                p["bounds"],
                seed,
                size,
                key=f"ndvi-tile-{p['tile']}",
                pure=False,
            )
            for p in plan
        ]
        with contextlib.redirect_stdout(stream):
            progress(futures, notebook=False)
        results = client.gather(futures)
        wall = time.perf_counter() - start
        print(f"{len(results)}/{len(plan)} tiles done in {wall:.2f} s", file=stream)
        summary = summarise(results, wall, size)
        summary["dashboard"] = client.dashboard_link
        summary["cluster"] = where
        if keep_alive and not scheduler_address:
            print(format_summary(summary), file=stream)
            print("cluster kept alive: press Ctrl-C to stop", file=stream)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
    return summary


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
        f"dashboard          {summary.get('dashboard', '-')}",
    ]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
