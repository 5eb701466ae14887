"""Dask DataFrame shuffles and dask-geopandas spatial shuffles on our numba kernels.

>>> import dask_oxigdal as dox
>>> out = dox.shuffle(ddf, "key", 64)                    # same partitions as ddf.shuffle
>>> sgdf = dox.spatial_shuffle(gddf, by="hilbert", npartitions=16)

Both build a plain Dask graph: one *split* task per input partition (the numba
partition kernels of :mod:`dask_oxigdal.tables` write every column straight
into partition order), one small ``getitem`` task per (input, output) pair,
and one *concat* task per output partition. The graph runs on any scheduler
(threads, processes, distributed).
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dask_oxigdal._splits import (
    _Assign,
    _build,
    _check_frame,
    _check_nparts,
    _concat,
    _concat_sorted,
    _Curve,
    _CurveHistogram,
    _cuts_from_histogram,
    _grid_shape,
    _HashSplit,
    _part_total_bounds,
    _PartBounds,
    _SpatialSplit,
    _union_bounds,
    _widen_degenerate,
)
from dask_oxigdal.partitioning import HashPartitioner, StripPartitioner, TilePartitioner
from dask_oxigdal.partitioning.extent import SpatialExtent
from dask_oxigdal.partitioning.hilbert import MAX_LEVEL
from dask_oxigdal.tables import hash_partition

__all__ = ["SPATIAL_METHODS", "shuffle", "spatial_shuffle"]

#: Valid ``by`` values of :func:`spatial_shuffle`.
SPATIAL_METHODS = ("hilbert", "morton", "tile", "strip", "hash")


# ======================================================================================
# dox.shuffle
# ======================================================================================
def shuffle(ddf: Any, on: Hashable | Sequence[Hashable], npartitions: int | None = None) -> Any:
    """Hash-shuffle a Dask DataFrame with our numba split kernels.

    Every output partition holds the same rows as the same partition of
    ``ddf.shuffle(on=on, npartitions=npartitions)``: row ``r`` goes to
    partition ``partitioning_index(r[on]) % npartitions`` with Dask's own hash
    (numeric keys cast to float64 first, strings hashed like pandas).

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame or dask_geopandas.GeoDataFrame
        The frame to shuffle (pandas- or geopandas-backed).
    on : hashable or list of one hashable
        The key column (or the index name).
    npartitions : int, optional
        Number of output partitions; defaults to ``ddf.npartitions``.

    Returns
    -------
    dask.dataframe.DataFrame or dask_geopandas.GeoDataFrame
        Same type and columns as ``ddf``, unknown divisions. Inside an output
        partition rows come in input-partition order, then input order (as
        Dask's ``"tasks"`` shuffle does).

    Raises
    ------
    TypeError
        If ``ddf`` is not a Dask DataFrame, or the key type is unsupported.
    KeyError
        If ``on`` is not a column of ``ddf``.
    ValueError
        For a bad ``npartitions`` or more than one key column.

    Notes
    -----
    One split task per input partition runs
    :func:`dask_oxigdal.tables.hash_partition`; each output partition
    concatenates its ``npartitions_in`` pieces. The graph has
    ``npartitions_in * (npartitions_out + 1) + npartitions_out`` tasks.
    """
    _check_frame(ddf, "ddf")
    if isinstance(on, (list, tuple)):
        if len(on) != 1:
            raise ValueError(
                f"dox.shuffle supports one key column, got {list(on)!r}; "
                "use ddf.shuffle for several columns"
            )
        on = on[0]
    meta = ddf._meta
    if on not in meta.columns and on != meta.index.name:
        raise KeyError(
            f"column {on!r} not found; available columns: {list(meta.columns)}"
            + (f" (index: {meta.index.name!r})" if meta.index.name is not None else "")
        )
    nparts = _check_nparts(npartitions, ddf.npartitions)
    hash_partition(meta, on, nparts)  # checks the key type on the empty meta
    return _build(ddf, _HashSplit(on, nparts), nparts, meta, "oxigdal-shuffle", on)


# ======================================================================================
# dox.spatial_shuffle
# ======================================================================================


def spatial_shuffle(
    gddf: Any,
    by: str = "hilbert",
    npartitions: int | None = None,
    *,
    level: int | None = None,
    total_bounds: Sequence[float] | None = None,
    divisions: Sequence[int] | None = None,
    calculate_partitions: bool = True,
) -> Any:
    """Spatially shuffle a dask-geopandas GeoDataFrame with our numba kernels.

    Parameters
    ----------
    gddf : dask_geopandas.GeoDataFrame
        Geometries to shuffle. Empty or missing geometries raise (as in
        dask-geopandas).
    by : {"hilbert", "morton", "tile", "strip", "hash"}
        ``hilbert`` / ``morton``: contiguous ranges of the curve distance of
        each geometry's bounding-box midpoint (the new index, as in
        ``dask_geopandas.GeoDataFrame.spatial_shuffle``; each output partition
        is sorted by it). ``tile``: a regular ``nx x ny`` grid over the total
        bounds with ``nx * ny == npartitions`` (the most square factorisation);
        ``strip``: ``npartitions`` vertical strips; ``hash``: XXH64 of each
        geometry's WKB (no spatial locality; equal geometries meet). The
        grid and hash methods keep the index.
    npartitions : int, optional
        Number of output partitions; defaults to ``gddf.npartitions``.
    level : int, default 16
        Curve precision (1-16) for ``hilbert`` and ``morton``.
    total_bounds : sequence of 4 floats, optional
        Extent of the curve or grid. Defaults to what dask-geopandas uses: the
        total bounds of the spatial partitions if ``gddf`` has them, else of
        all geometries (computed).
    divisions : sequence of int, optional
        Curve distances dividing the output partitions (``hilbert`` /
        ``morton`` only, overrides ``npartitions``): partition ``i`` holds
        ``divisions[i] <= d < divisions[i + 1]`` (rows below
        ``divisions[1]`` go to partition 0, rows at or above
        ``divisions[-2]`` to the last one), exactly as ``set_index`` places
        them. Pass the ``divisions`` of a dask-geopandas result to get the same
        partitions.
    calculate_partitions : bool, default True
        Compute ``spatial_partitions`` (the bounding box of each output
        partition), so that ``dask_geopandas.sjoin`` prunes partition pairs.

    Returns
    -------
    dask_geopandas.GeoDataFrame

    Raises
    ------
    TypeError, ValueError
        For a non-dask-geopandas input, an unknown ``by`` (the message lists
        the valid methods), a bad ``npartitions``, ``level`` or ``divisions``.

    Notes
    -----
    Without ``divisions``, the cuts come from one histogram pass of the curve
    distances (``2**16`` bins): every cut lies on a bin start, so partition
    sizes are near-equal to a bin's count, and equal distances never straddle
    a cut. dask-geopandas instead sorts with ``set_index``, whose divisions are
    approximate quantiles: the two agree on distances, and on membership
    when given the same divisions. The work is a pass for the total bounds
    (unless given), one for the cuts (unless ``divisions``), one for the
    spatial partitions (when ``calculate_partitions``), all without moving
    rows, then the lazy shuffle itself.
    """
    import dask
    import geopandas

    try:
        import dask_geopandas
    except ImportError as err:  # pragma: no cover - in the geo extra
        raise ImportError(
            "dox.spatial_shuffle needs dask-geopandas (pip install 'dask-oxigdal[geo]')"
        ) from err
    if not isinstance(gddf, dask_geopandas.GeoDataFrame):
        raise TypeError(
            "gddf must be a dask_geopandas.GeoDataFrame, got "
            f"{type(gddf).__module__}.{type(gddf).__name__}"
        )
    if by not in SPATIAL_METHODS:
        raise ValueError(f"unknown spatial shuffle method by={by!r}; valid: {SPATIAL_METHODS}")
    if level is None:
        level = 16
    if isinstance(level, bool) or not isinstance(level, numbers.Integral):
        raise ValueError(f"level must be an integer from 1 to {MAX_LEVEL}, got {level!r}")
    if not 1 <= level <= MAX_LEVEL:
        raise ValueError(f"level must be an integer from 1 to {MAX_LEVEL}, got {level!r}")
    if divisions is not None and by not in ("hilbert", "morton"):
        raise ValueError(f"divisions= only applies to by='hilbert' or 'morton', not {by!r}")
    nparts = _check_nparts(npartitions, gddf.npartitions)
    parts = gddf.to_delayed()

    if total_bounds is None:
        if gddf.spatial_partitions is not None:
            total_bounds = tuple(gddf.spatial_partitions.total_bounds)
        else:
            tb = np.array(dask.compute(*[dask.delayed(_part_total_bounds)(p) for p in parts]))
            tb = tb.reshape(-1, 4)
            if np.isnan(tb).all():
                raise ValueError("spatial_shuffle needs at least one non-empty geometry")
            total_bounds = (
                np.nanmin(tb[:, 0]),
                np.nanmin(tb[:, 1]),
                np.nanmax(tb[:, 2]),
                np.nanmax(tb[:, 3]),
            )
    extent = SpatialExtent.from_bounds(_widen_degenerate(total_bounds))
    meta = gddf._meta
    out_divisions = None
    if by in ("hilbert", "morton"):
        curve = _Curve(by, extent.bounds, level)
        top = (1 << (2 * level)) - 1
        if divisions is not None:
            divs = np.asarray(list(divisions), dtype=np.int64)
            if divs.ndim != 1 or divs.size < 2 or (np.diff(divs) < 0).any():
                raise ValueError(
                    f"divisions must be a sorted sequence of at least 2 distances, got "
                    f"{list(divisions)!r}"
                )
            nparts = divs.size - 1
            cuts = divs[1:-1]
            out_divisions = tuple(int(v) for v in divs)
        else:
            hist_fn = _CurveHistogram(curve)
            hists = dask.compute(*[dask.delayed(hist_fn)(p) for p in parts])
            cuts = _cuts_from_histogram(np.sum(hists, axis=0), hist_fn.shift, nparts)
            edges = np.concatenate([[0], cuts, [top]])
            if (np.diff(edges) > 0).all():
                out_divisions = tuple(int(v) for v in edges)
        assign = _Assign(by, nparts, curve=curve, cuts=cuts)
        meta = meta.copy(deep=False)
        meta.index = pd.Index(np.empty(0, np.uint32), name=curve.name)
    elif by == "tile":
        nx, ny = _grid_shape(nparts)
        assign = _Assign(by, nparts, grid=TilePartitioner(extent, nx, ny))
    elif by == "strip":
        assign = _Assign(by, nparts, grid=StripPartitioner(extent, nparts, "x"))
    else:
        assign = _Assign(by, nparts, hasher=HashPartitioner(nparts))
    params = (extent.bounds, level, None if assign.cuts is None else assign.cuts.tolist())
    result = _build(
        gddf,
        _SpatialSplit(assign),
        nparts,
        meta,
        f"oxigdal-spatial-{by}",
        params,
        out_divisions,
        _concat_sorted if assign.curve is not None else _concat,
    )
    if calculate_partitions:
        pb = _PartBounds(assign)
        per_input = dask.compute(*[dask.delayed(pb)(p) for p in parts])
        bounds = per_input[0]
        for b in per_input[1:]:
            bounds = _union_bounds(bounds, b)
        import shapely

        boxes = [shapely.Polygon() if np.isnan(b).any() else shapely.box(*b) for b in bounds]
        result.spatial_partitions = geopandas.GeoSeries(boxes, crs=meta.crs)
    return result
