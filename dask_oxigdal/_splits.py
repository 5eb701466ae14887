"""The split tasks and the task graph behind :func:`dox.shuffle <dask_oxigdal.vector.shuffle>`
and :func:`dox.spatial_shuffle <dask_oxigdal.vector.spatial_shuffle>`.

A *split* task turns one input partition into one piece per output partition
(:class:`_HashSplit` by the key's hash, :class:`_SpatialSplit` by a Hilbert or
Morton curve, a tile or strip grid, or a geometry hash, as :class:`_Assign`
decides); :func:`_build` wires split, ``getitem`` and concat tasks into a
collection. Private to :mod:`dask_oxigdal.vector`; the task objects pickle by
reference to this module.
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dask_oxigdal.kernels import spatial as _ks
from dask_oxigdal.kernels._parallel import parallel_launch
from dask_oxigdal.partitioning.hilbert import HilbertPartitioner
from dask_oxigdal.tables import _Frame, hash_partition

#: Histogram bins (per input partition) used to choose the Hilbert / Morton cuts.
_CUT_BINS_LOG2 = 16


# ======================================================================================
# helpers
# ======================================================================================
def _check_frame(ddf: Any, what: str) -> None:
    import dask.dataframe as dd

    if not isinstance(ddf, dd.DataFrame):
        raise TypeError(
            f"{what} must be a dask DataFrame (pandas- or geopandas-backed), got "
            f"{type(ddf).__module__}.{type(ddf).__name__}"
        )


def _check_nparts(npartitions: Any, default: int) -> int:
    if npartitions is None:
        return default
    if isinstance(npartitions, bool) or not isinstance(npartitions, numbers.Integral):
        raise ValueError(f"npartitions must be an integer >= 1 or None, got {npartitions!r}")
    if npartitions < 1:
        raise ValueError(f"npartitions must be an integer >= 1 or None, got {npartitions!r}")
    return int(npartitions)


def _concat(meta: Any, *pieces: Any) -> Any:
    parts = [p for p in pieces if p is not None and len(p)]
    if not parts:
        return meta.iloc[:0].copy()
    if len(parts) == 1:
        return parts[0].copy()
    return pd.concat(parts)


def _concat_sorted(meta: Any, *pieces: Any) -> Any:
    return _concat(meta, *pieces).sort_index(kind="stable")


def _split_pids(df: Any, pids: np.ndarray, nparts: int) -> tuple:
    """``nparts`` pieces of ``df`` (None where empty), split by our counting-sort kernels."""
    out: list[Any] = [None] * nparts
    if len(df) == 0:
        return tuple(out)
    frame = _Frame.wrap(df)
    with parallel_launch(len(df) // 2) as threads:
        pieces = frame.split(np.ascontiguousarray(pids, dtype=np.int32), nparts, threads)
    for p, piece in pieces.items():
        out[p] = piece
    return tuple(out)


def _build(
    ddf: Any,
    split: Any,
    nout: int,
    meta: Any,
    name: str,
    params: Any,
    divisions: Any = None,
    concat: Any = _concat,
) -> Any:
    """The shuffled collection: split tasks, getitem tasks and concat tasks."""
    import dask
    import dask.dataframe as dd

    parts = ddf.to_delayed()
    token = dask.base.tokenize(ddf, name, nout, params)
    splits = [
        dask.delayed(split, nout=nout, pure=True)(p, dask_key_name=f"{name}-split-{token}-{i}")
        for i, p in enumerate(parts)
    ]
    outs = [
        dask.delayed(concat, pure=True)(
            meta, *[s[j] for s in splits], dask_key_name=f"{name}-concat-{token}-{j}"
        )
        for j in range(nout)
    ]
    return dd.from_delayed(outs, meta=meta, divisions=divisions, verify_meta=False)


# ======================================================================================
# dox.shuffle: split by the key's hash
# ======================================================================================
class _HashSplit:
    def __init__(self, on: Hashable, nparts: int) -> None:
        self.on = on
        self.nparts = nparts

    def __call__(self, df: Any) -> tuple:
        out: list[Any] = [None] * self.nparts
        for p, piece in hash_partition(df, self.on, self.nparts).items():
            out[p] = piece
        return tuple(out)


# ======================================================================================
# dox.spatial_shuffle: split by a curve, a grid or a geometry hash
# ======================================================================================
def _geometry_bounds(df: Any) -> np.ndarray:
    import shapely

    geoms = np.asarray(df.geometry.array)
    return np.ascontiguousarray(shapely.bounds(geoms), dtype=np.float64).reshape(-1, 4)


def _part_total_bounds(df: Any) -> np.ndarray:
    b = _geometry_bounds(df)
    if b.shape[0] == 0 or np.isnan(b).all():
        return np.full(4, np.nan)
    return np.array(
        [np.nanmin(b[:, 0]), np.nanmin(b[:, 1]), np.nanmax(b[:, 2]), np.nanmax(b[:, 3])]
    )


class _Curve:
    """Distances of geometries along a Hilbert or Morton curve over fixed bounds."""

    def __init__(self, by: str, bounds: tuple, level: int) -> None:
        self.by = by
        self.bounds = tuple(float(v) for v in bounds)
        self.level = level
        self.name = f"{by}_distance"
        self._hp = HilbertPartitioner(self.bounds, 1, level) if by == "hilbert" else None

    def distances(self, df: Any) -> np.ndarray:
        if self._hp is not None:
            return self._hp.distances(df.geometry)
        b = _geometry_bounds(df)
        out = np.empty(b.shape[0], np.uint32)
        bad = _ks.morton_bounds(b, *self.bounds, self.level, out)
        if bad:
            raise ValueError(
                f"Morton distance cannot be computed for empty or missing geometries: {bad} "
                f"of {len(out)} geometries are empty or missing"
            )
        return out


class _CurveHistogram:
    def __init__(self, curve: _Curve) -> None:
        self.curve = curve
        self.shift = max(0, 2 * curve.level - _CUT_BINS_LOG2)

    def __call__(self, df: Any) -> np.ndarray:
        nbins = (1 << (2 * self.curve.level)) >> self.shift
        if len(df) == 0:
            return np.zeros(nbins, np.int64)
        d = self.curve.distances(df) >> np.uint32(self.shift)
        return np.bincount(d, minlength=nbins).astype(np.int64)


def _cuts_from_histogram(hist: np.ndarray, shift: int, nparts: int) -> np.ndarray:
    """Cut distances at bin starts so that parts hold near-equal counts."""
    n = int(hist.sum())
    cum = np.cumsum(hist)
    ranks = (np.arange(1, nparts, dtype=np.int64) * n) // nparts
    bins = np.searchsorted(cum, ranks, side="right")
    return (bins.astype(np.uint64) << np.uint64(shift)).astype(np.int64)


class _Assign:
    """Partition ids (and the curve distance, when there is one) of each row."""

    def __init__(self, by: str, nparts: int, *, curve=None, cuts=None, grid=None, hasher=None):
        self.by = by
        self.nparts = nparts
        self.curve = curve
        self.cuts = None if cuts is None else np.asarray(cuts)
        self.grid = grid
        self.hasher = hasher

    def __call__(self, df: Any) -> tuple[np.ndarray, np.ndarray | None]:
        if self.curve is not None:
            d = self.curve.distances(df)
            return np.searchsorted(self.cuts, d, side="right").astype(np.int32), d
        if self.grid is not None:
            b = _geometry_bounds(df)
            if np.isnan(b).any():
                raise ValueError(
                    f"spatial_shuffle(by={self.by!r}) cannot place empty or missing geometries"
                )
            mx = (b[:, 0] + b[:, 2]) / 2.0
            my = (b[:, 1] + b[:, 3]) / 2.0
            return self.grid.assign(mx, my).astype(np.int32), None
        import shapely

        wkb = shapely.to_wkb(np.asarray(df.geometry.array))
        return self.hasher.partitions_for_keys(list(wkb)).astype(np.int32), None


class _SpatialSplit:
    def __init__(self, assign: _Assign) -> None:
        self.assign = assign

    def __call__(self, df: Any) -> tuple:
        if len(df) == 0:
            return (None,) * self.assign.nparts
        pids, d = self.assign(df)
        if d is not None:
            df = df.copy(deep=False)
            df.index = pd.Index(d, name=self.assign.curve.name)
        return _split_pids(df, pids, self.assign.nparts)


class _PartBounds:
    def __init__(self, assign: _Assign) -> None:
        self.assign = assign

    def __call__(self, df: Any) -> np.ndarray:
        out = np.full((self.assign.nparts, 4), np.nan)
        if len(df):
            pids, _ = self.assign(df)
            _ks.group_bounds(pids, _geometry_bounds(df), self.assign.nparts, out)
        return out


def _union_bounds(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = a.copy()
    out[:, :2] = np.fmin(a[:, :2], b[:, :2])
    out[:, 2:] = np.fmax(a[:, 2:], b[:, 2:])
    return out


def _widen_degenerate(bounds: Sequence[float]) -> tuple[float, float, float, float]:
    """Give a zero-width (or zero-height) extent a width of 1 along that axis.

    Every geometry then lies on the axis' minimum, in cell 0, which is where
    dask-geopandas puts them too (its scale is infinite and ``0 * inf`` NaN
    becomes 0).
    """
    try:
        minx, miny, maxx, maxy = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"total_bounds must be 4 numbers (minx, miny, maxx, maxy), got {bounds!r}"
        ) from None
    if maxx == minx:
        maxx = minx + 1.0
    if maxy == miny:
        maxy = miny + 1.0
    return minx, miny, maxx, maxy


def _grid_shape(n: int) -> tuple[int, int]:
    nx = int(np.floor(np.sqrt(n)))
    while n % nx:
        nx -= 1
    return n // nx, nx
