"""Spatial and key partitioners.

* :class:`SpatialExtent` - a validated, immutable bounding box.
* :class:`TilePartitioner`, :class:`StripPartitioner` - regular grids with
  exact, shared edges; vectorised point-to-tile assignment.
* :class:`HilbertPartitioner` - contiguous Hilbert-curve ranges of near-equal
  counts; distances identical to geopandas / dask-geopandas.
* :class:`HashPartitioner` - stable (cross-process) XXH64 partitioning of
  bytes, str and int keys.
* :class:`RangePartitioner` - ``boundaries[i - 1] <= v < boundaries[i]``.
* :class:`LoadBalancedPartitioner` - contiguous index ranges whose sizes
  differ by at most one.

The hot loops are numba kernels in :mod:`dask_oxigdal.kernels` (``tiles``,
``hilbert``, ``keyhash``); parallel variants are chosen through
:func:`dask_oxigdal.kernels._parallel.parallel_launch`, so they never
oversubscribe a multi-threaded Dask worker.
"""

from dask_oxigdal.partitioning.balanced import BalancedPartition, LoadBalancedPartitioner
from dask_oxigdal.partitioning.extent import SpatialExtent
from dask_oxigdal.partitioning.grid import GridPartition, StripPartitioner, TilePartitioner
from dask_oxigdal.partitioning.hilbert import HilbertPartition, HilbertPartitioner
from dask_oxigdal.partitioning.keyed import HashPartitioner, RangePartitioner

__all__ = [
    "BalancedPartition",
    "GridPartition",
    "HashPartitioner",
    "HilbertPartition",
    "HilbertPartitioner",
    "LoadBalancedPartitioner",
    "RangePartitioner",
    "SpatialExtent",
    "StripPartitioner",
    "TilePartitioner",
]
