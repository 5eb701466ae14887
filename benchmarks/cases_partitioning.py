"""Partitioning benchmarks: tiles, Hilbert distances and partitions, hash and range ids.

Every case times the best of N calls after one warm-up call
(``time.perf_counter``); rows of one group come from the same run.

* **tiles NxN**: ``TilePartitioner(extent, N, N).partition()`` (construction
  included: edges, validation, ids and bounds arrays) against

  - ``numpy meshgrid``: the same ids/bounds arrays from ``np.linspace`` edges
    and ``np.meshgrid`` (no exact-edge guarantee beyond linspace's);
  - ``shapely.box over meshgrid``: the meshgrid bounds turned into shapely
    polygons (what a GeoDataFrame of tiles needs);
  - ``pure Python loop``: the "reference system" style, one tuple of bounds
    per tile built in a double loop.

* **Hilbert distance, from a GeoSeries** of points: ours
  (``HilbertPartitioner.distances``: ``shapely.bounds`` + a numba kernel)
  against ``geopandas.GeoSeries.hilbert_distance`` and
  ``dask_geopandas.hilbert_distance._hilbert_distance`` (what
  ``dask_geopandas.GeoDataFrame.hilbert_distance`` maps over partitions), all
  with the same ``total_bounds`` and level 16. Coordinate extraction counts.

* **Hilbert distance, from x/y arrays**: ours against the numpy core of
  geopandas (``_continuous_to_discrete`` + ``_encode``, fed x/y directly).

* **Hilbert partition**: distances + cut points + per-row ids from x/y,
  against plain numpy (the same distances, ``np.sort`` for the cuts,
  ``np.searchsorted`` for the ids).

* **hash ids** (int64 keys and 8-16 character strings): ours (XXH64) against
  ``pandas.util.hash_array(values) % n`` (SipHash, also stable).

* **range ids** (float64 values, 63 boundaries): ours against ``np.searchsorted``.

``dask-oxigdal`` rows use the kernels the wrappers pick here (``prange``
variants outside a multi-threaded Dask worker); ``dask-oxigdal (serial)``
rows force the serial kernels for comparison.
"""

from __future__ import annotations

import dask.config
import numpy as np
from _machine import best_of

OURS = "dask-oxigdal"
SERIAL = "dask-oxigdal (serial)"

TARGETS = [
    {
        "name": "tiles 16x16 <= 0.1 ms",
        "group": "tiles 16x16",
        "kind": "max_seconds",
        "value": 1e-4,
    },
    {
        "name": "Hilbert 1M points from a GeoSeries >= 3x geopandas",
        "group": "Hilbert distance 1M points, from GeoSeries",
        "kind": "min_speedup",
        "value": 3.0,
        "impl": OURS,
        "peers": ["geopandas GeoSeries.hilbert_distance"],
    },
    {
        "name": "Hilbert 1M points from x/y >= 3x geopandas' numpy core",
        "group": "Hilbert distance 1M points, from x/y",
        "kind": "min_speedup",
        "value": 3.0,
        "impl": OURS,
    },
]


def _row(group: str, impl: str, seconds: float, note: str = "") -> dict:
    return {"group": group, "impl": impl, "seconds": seconds, "gbps": None, "note": note}


def _serial():
    return dask.config.set({"oxigdal.kernels.parallel-min-elements": 2**62})


# ---------------------------------------------------------------- tiles


def _tiles_numpy(extent: tuple[float, float, float, float], n: int):
    minx, miny, maxx, maxy = extent
    xe = np.linspace(minx, maxx, n + 1)
    ye = np.linspace(miny, maxy, n + 1)
    x0, y0 = np.meshgrid(xe[:-1], ye[:-1])
    x1, y1 = np.meshgrid(xe[1:], ye[1:])
    bounds = np.stack([x0.ravel(), y0.ravel(), x1.ravel(), y1.ravel()], axis=1)
    return np.arange(n * n), bounds


def _tiles_python(extent: tuple[float, float, float, float], n: int):
    minx, miny, maxx, maxy = extent
    w = (maxx - minx) / n
    h = (maxy - miny) / n
    tiles = []
    for iy in range(n):
        for ix in range(n):
            tiles.append(
                (
                    iy * n + ix,
                    (minx + ix * w, miny + iy * h, minx + (ix + 1) * w, miny + (iy + 1) * h),
                )
            )
    return tiles


def tile_cases(quick: bool) -> list[dict]:
    import shapely

    from dask_oxigdal.partitioning import TilePartitioner

    extent = (-180.0, -90.0, 180.0, 90.0)
    rows = []
    for n, repeat in ((16, 50 if quick else 500), (256, 3 if quick else 20)):
        group = f"tiles {n}x{n}"
        rows.append(
            _row(
                group,
                OURS,
                best_of(lambda n=n: TilePartitioner(extent, n, n).partition(), repeat),
                "construction + ids/bounds arrays",
            )
        )
        rows.append(
            _row(group, "numpy meshgrid", best_of(lambda n=n: _tiles_numpy(extent, n), repeat))
        )

        def boxes(n=n):
            _, b = _tiles_numpy(extent, n)
            return shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])

        rows.append(_row(group, "shapely.box over meshgrid", best_of(boxes, repeat), "polygons"))
        rows.append(
            _row(
                group,
                "pure Python loop",
                best_of(lambda n=n: _tiles_python(extent, n), repeat),
                "list of tuples",
            )
        )
    return rows


# ---------------------------------------------------------------- Hilbert


def hilbert_cases(quick: bool) -> list[dict]:
    import geopandas as gpd
    import shapely
    from geopandas.tools.hilbert_curve import _continuous_to_discrete, _encode

    from dask_oxigdal.partitioning import HilbertPartitioner

    n = 100_000 if quick else 1_000_000
    label = "100K" if quick else "1M"
    repeat = 3 if quick else 7
    rng = np.random.default_rng(42)
    x = rng.uniform(-180, 180, n)
    y = rng.uniform(-90, 90, n)
    gs = gpd.GeoSeries(shapely.points(x, y))
    gdf = gpd.GeoDataFrame(geometry=gs)
    bounds = (-180.0, -90.0, 180.0, 90.0)
    hp = HilbertPartitioner(bounds, 16)
    rows = []

    group = f"Hilbert distance {label} points, from GeoSeries"
    rows.append(
        _row(group, OURS, best_of(lambda: hp.distances(gs), repeat), "shapely.bounds + numba")
    )
    with _serial():
        rows.append(_row(group, SERIAL, best_of(lambda: hp.distances(gs), repeat)))
    rows.append(
        _row(
            group,
            "geopandas GeoSeries.hilbert_distance",
            best_of(lambda: gs.hilbert_distance(total_bounds=bounds), repeat),
        )
    )
    try:
        from dask_geopandas.hilbert_distance import _hilbert_distance

        rows.append(
            _row(
                group,
                "dask_geopandas _hilbert_distance",
                best_of(lambda: _hilbert_distance(gdf, total_bounds=bounds), repeat),
                "per-partition function",
            )
        )
    except ImportError:  # dask-geopandas is optional (extra "geo")
        pass

    group = f"Hilbert distance {label} points, from x/y"
    rows.append(_row(group, OURS, best_of(lambda: hp.distances(x, y), repeat)))
    with _serial():
        rows.append(_row(group, SERIAL, best_of(lambda: hp.distances(x, y), repeat)))
    side = 2**16 - 1

    def geopandas_core():
        xi = _continuous_to_discrete(x, (bounds[0], bounds[2]), side)
        yi = _continuous_to_discrete(y, (bounds[1], bounds[3]), side)
        return _encode(16, xi, yi)

    assert (geopandas_core() == hp.distances(x, y)).all()
    rows.append(
        _row(group, "geopandas numpy core", best_of(geopandas_core, repeat), "no bounds step")
    )

    group = f"Hilbert partition {label} points -> 64 parts, from x/y"
    hp64 = HilbertPartitioner(bounds, 64)
    rows.append(_row(group, OURS, best_of(lambda: hp64.partition(x, y), repeat)))
    with _serial():
        rows.append(_row(group, SERIAL, best_of(lambda: hp64.partition(x, y), repeat)))

    def numpy_partition():
        d = hp64.distances(x, y)
        cuts = np.sort(d)[(np.arange(1, 64) * n) // 64]
        ids = np.searchsorted(cuts, d, side="right")
        return ids, np.bincount(ids, minlength=64)

    rows.append(
        _row(group, "numpy sort + searchsorted", best_of(numpy_partition, repeat), "our distances")
    )
    return rows


# ---------------------------------------------------------------- hash / range


def key_cases(quick: bool) -> list[dict]:
    import pandas as pd

    from dask_oxigdal.partitioning import HashPartitioner, RangePartitioner

    n = 100_000 if quick else 1_000_000
    label = "100K" if quick else "1M"
    repeat = 3 if quick else 7
    rng = np.random.default_rng(7)
    ints = rng.integers(-(2**62), 2**62, n)
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", dtype=np.uint8)
    lengths = rng.integers(8, 17, n)
    strings = np.array(
        [alphabet[rng.integers(0, alphabet.size, k)].tobytes().decode() for k in lengths[:n]],
        dtype=object,
    )
    hp = HashPartitioner(64)
    rows = []

    group = f"hash ids {label} int64 keys -> 64 parts"
    rows.append(_row(group, OURS, best_of(lambda: hp.partitions_for_keys(ints), repeat), "XXH64"))
    rows.append(
        _row(
            group,
            "pandas hash_array % n",
            best_of(lambda: pd.util.hash_array(ints) % 64, repeat),
            "SipHash",
        )
    )

    group = f"hash ids {label} str keys -> 64 parts"
    rows.append(
        _row(
            group, OURS, best_of(lambda: hp.partitions_for_keys(strings), repeat), "object array in"
        )
    )
    rows.append(
        _row(
            group,
            "pandas hash_array % n",
            best_of(lambda: pd.util.hash_array(strings) % 64, repeat),
            "SipHash",
        )
    )

    group = f"range ids {label} float64 values -> 64 parts"
    values = rng.normal(size=n)
    boundaries = np.sort(rng.normal(size=63))
    rp = RangePartitioner(boundaries)
    rows.append(_row(group, OURS, best_of(lambda: rp.partitions_for_values(values), repeat)))
    with _serial():
        rows.append(_row(group, SERIAL, best_of(lambda: rp.partitions_for_values(values), repeat)))
    rows.append(
        _row(
            group,
            "numpy searchsorted",
            best_of(lambda: np.searchsorted(boundaries, values, side="right"), repeat),
        )
    )
    return rows


def run(quick: bool) -> list[dict]:
    """All partitioning cases.

    Parameters
    ----------
    quick : bool
        Small sizes and few repeats (CI smoke test).

    Returns
    -------
    list of dict
        Rows ``{"group", "impl", "seconds", "gbps", "note"}``.
    """
    return tile_cases(quick) + hilbert_cases(quick) + key_cases(quick)


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(f"{r['group']:<50} {r['impl']:<40} {r['seconds'] * 1e3:10.3f} ms  {r['note']}")
