"""Contiguous, size-balanced index ranges: :class:`LoadBalancedPartitioner`."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from dask_oxigdal.partitioning._inputs import as_count

__all__ = ["BalancedPartition", "LoadBalancedPartitioner"]


@dataclass(frozen=True, eq=False, slots=True)
class BalancedPartition:
    """Result of :meth:`LoadBalancedPartitioner.partition`.

    Attributes
    ----------
    sizes : numpy.ndarray of int64, shape (num_workers,)
        Items per worker; the first ``total_size % num_workers`` workers get one more.
    starts, stops : numpy.ndarray of int64, shape (num_workers,)
        Worker ``w`` owns the half-open range ``[starts[w], stops[w])``; the
        ranges are contiguous and cover ``[0, total_size)`` exactly.
    """

    sizes: np.ndarray
    starts: np.ndarray
    stops: np.ndarray

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    def ranges(self) -> list[tuple[int, int]]:
        """``[(start, stop), ...]`` as Python ints.

        Returns
        -------
        list of tuple of int
        """
        return list(zip(self.starts.tolist(), self.stops.tolist(), strict=True))


class LoadBalancedPartitioner:
    """Split ``total_size`` items into ``num_workers`` contiguous ranges of near-equal size.

    Parameters
    ----------
    total_size : int
        Number of items, ``>= 0``.
    num_workers : int
        Number of ranges, ``>= 1``. More workers than items gives some empty ranges.

    Raises
    ------
    TypeError
        If an argument is not an int (floats and bools are refused).
    ValueError
        If ``total_size < 0`` or ``num_workers < 1``.

    Notes
    -----
    Sizes differ by at most one: with ``q, r = divmod(total_size, num_workers)``
    the first ``r`` workers get ``q + 1`` items and the others ``q``.

    Examples
    --------
    >>> LoadBalancedPartitioner(10, 3).partition().ranges()
    [(0, 4), (4, 7), (7, 10)]
    """

    def __init__(self, total_size: int, num_workers: int) -> None:
        self.total_size = as_count("total_size", total_size, minimum=0)
        self.num_workers = as_count("num_workers", num_workers)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(total_size={self.total_size}, num_workers={self.num_workers})"
        )

    @property
    def npartitions(self) -> int:
        """Number of ranges (``num_workers``)."""
        return self.num_workers

    def partition(self) -> BalancedPartition:
        """The sizes and ``[start, stop)`` ranges.

        Returns
        -------
        BalancedPartition
        """
        q, r = divmod(self.total_size, self.num_workers)
        sizes = np.full(self.num_workers, q, dtype=np.int64)
        sizes[:r] += 1
        stops = np.cumsum(sizes)
        starts = stops - sizes
        for a in (sizes, starts, stops):
            a.flags.writeable = False
        return BalancedPartition(sizes, starts, stops)

    def worker_for_index(self, index: Any) -> Any:
        """The worker whose range holds item ``index``.

        Parameters
        ----------
        index : int or array_like of int
            ``0 <= index < total_size``.

        Returns
        -------
        int or numpy.ndarray of int64
            An int for a scalar, otherwise an array.

        Raises
        ------
        ValueError
            If an index is outside ``[0, total_size)``.
        """
        scalar = isinstance(index, numbers.Integral) and not isinstance(index, bool)
        idx = np.asarray(index)
        if idx.dtype.kind not in "iu" and not (idx.size == 0 and idx.dtype.kind == "f"):
            raise TypeError(f"index must be integers; got dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= self.total_size):
            bad = idx[(idx < 0) | (idx >= self.total_size)].ravel()[0]
            raise ValueError(f"index must be in [0, {self.total_size}); got {int(bad)}")
        q, r = divmod(self.total_size, self.num_workers)
        big = r * (q + 1)  # items held by the first r workers (q + 1 each)
        out = np.where(idx < big, idx // (q + 1), r + (idx - big) // max(q, 1))
        return int(out) if scalar else out.astype(np.int64, copy=False)
