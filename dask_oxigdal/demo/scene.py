"""The demo's data: a synthetic six-band raster and its tiles; the Natural Earth countries.

A synthetic six-band scene (blue, green, red, nir, swir1, swir2; uint16
reflectance with ``0`` as nodata along a swath edge) is cut into tiles with
:class:`~dask_oxigdal.partitioning.TilePartitioner`. Each tile is one task:
it "reads" its window of the scene (a deterministic function of the seed and
the global pixel coordinates, so no data travels from the client), computes
NDVI, NDWI and NBR with the numba kernels and returns per-tile statistics.

The vector data are the Natural Earth low-res countries that ship with
pyogrio's test fixtures (no download): read, hash- and Hilbert-partitioned,
and measured per partition in an equal-area projection.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

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


def tile_stats(tile: dict[str, Any], seed: int, size: int, step: int = 1) -> dict[str, Any]:
    """NDVI statistics of one tile of the plan, every ``step``-th pixel (a quick look).

    Parameters
    ----------
    tile : dict
        One entry of :func:`~dask_oxigdal.demo.scene.plan_tiles`.
    seed, size : int
        Scene seed and size.
    step : int
        1 for the full tile; a quick look reads a sub-window ``1/step`` as wide.

    Returns
    -------
    dict
        :func:`~dask_oxigdal.demo.scene.process_tile`'s statistics.
    """
    row0, row1, col0, col1 = tile["window"]
    if step > 1:
        row1 = row0 + max(1, (row1 - row0) // step)
        col1 = col0 + max(1, (col1 - col0) // step)
    return process_tile(tile["tile"], (row0, row1, col0, col1), tile["bounds"], seed, size)


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
    area of a ``buffer_km`` border buffer.

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
    buffered = projected.geometry.buffer(buffer_km * 1000.0, quad_segs=4)
    minx, miny, maxx, maxy = (float(v) for v in rows.total_bounds) if len(rows) else (0,) * 4
    return {
        "scheme": scheme,
        "partition": int(part),
        "buffer_km": float(buffer_km),
        "countries": len(rows),
        "iso_a3": sorted(str(v) for v in rows["iso_a3"]),
        "area_km2": float(projected.geometry.area.sum() / 1e6),
        "buffered_area_km2": float(buffered.area.sum() / 1e6),
        "population": float(rows["pop_est"].sum()),
        "bounds": [minx, miny, maxx, maxy],
    }
