"""Shuffle benchmarks: hash and range partitioning of one table, ours beside its peers.

Table: an int64 key, three float64 columns and one string column (8-12 ASCII
characters). Every implementation computes the partition ids itself (that time
counts) and returns one table per part:

* ``dask-oxigdal``: :func:`dask_oxigdal.tables.hash_partition` /
  :func:`~dask_oxigdal.tables.range_partition` on the ``pyarrow.Table``;
* ``pandas``: Dask's ``partitioning_index`` (``hash_pandas_object`` of the key
  cast to float64) or ``np.searchsorted``, then one stable ``argsort``, one
  ``DataFrame.take`` and ``iloc`` slices;
* ``pyarrow``: the same numpy ids, ``Table.take`` on the stable order, slices;
* ``polars``: ids computed by polars (``hash() % n``) or ``np.searchsorted``,
  then ``partition_by(maintain_order=True, as_dict=True)``;
* ``dask p2p split_by_partition``: the function Dask's P2P shuffle runs on each
  received Arrow table (``distributed.shuffle._shuffle.split_by_partition``),
  given a table with Dask's ids in a ``_partitions`` column (id time counts).

Hash ids of the pandas, pyarrow and P2P peers are Dask's, the same as ours; the
polars ids differ (its own hash), which does not change the work.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from _machine import best_of

OURS = "dask-oxigdal"

TARGETS = [
    {
        "name": "hash 100K rows -> 16 parts <= 1.5 ms",
        "group": "hash 100K rows -> 16 parts",
        "kind": "max_seconds",
        "value": 1.5e-3,
    },
    {
        "name": "hash 10M rows -> 64 parts >= 1.5x the fastest peer",
        "group": "hash 10M rows -> 64 parts",
        "kind": "min_speedup",
        "value": 1.5,
    },
    {
        "name": "range 100K rows -> 16 parts <= 2 ms",
        "group": "range 100K rows -> 16 parts",
        "kind": "max_seconds",
        "value": 2e-3,
    },
]


def make_table(nrows: int, seed: int = 0) -> pa.Table:
    """int64 key, three float64 columns and a string column of 8-12 ASCII characters."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 13, nrows)
    offsets = np.zeros(nrows + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = rng.integers(ord("a"), ord("z") + 1, int(offsets[-1]), dtype=np.uint8)
    strings = pa.Array.from_buffers(
        pa.string(), nrows, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    return pa.table(
        {
            "key": rng.integers(0, 1_000_000_000, nrows),
            "x": rng.normal(size=nrows),
            "y": rng.normal(size=nrows),
            "z": rng.normal(size=nrows),
            "name": strings,
        }
    )


def _dask_hash_ids(keys: np.ndarray, nparts: int) -> np.ndarray:
    from dask.dataframe.shuffle import partitioning_index

    frame = pd.DataFrame({"key": keys.astype(np.float64)})
    return np.asarray(partitioning_index(frame, nparts))


def _sorted_slices(nparts_ids: np.ndarray):
    order = np.argsort(nparts_ids, kind="stable")
    counts = np.bincount(nparts_ids)
    starts = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    return order, counts, starts


def _peer_inputs(table: pa.Table) -> dict:
    """The table as each peer takes it (converted once, outside the timings)."""
    import polars as pl

    return {"keys": table["key"].to_numpy(), "df": table.to_pandas(), "pl": pl.from_arrow(table)}


def _peers(table: pa.Table, inputs: dict, kind: str, nparts: int, bounds: np.ndarray):
    """name -> zero-argument callable returning {part: table}."""
    import polars as pl
    from distributed.shuffle._shuffle import split_by_partition

    keys, df, pl_df = inputs["keys"], inputs["df"], inputs["pl"]

    def ids() -> np.ndarray:
        if kind == "hash":
            return _dask_hash_ids(keys, nparts)
        return np.searchsorted(bounds, keys, side="right")

    def run_pandas():
        order, counts, starts = _sorted_slices(ids())
        out = df.take(order)
        return {p: out.iloc[starts[p] : starts[p + 1]] for p in np.flatnonzero(counts)}

    def run_pyarrow():
        order, counts, starts = _sorted_slices(ids())
        out = table.take(order)
        return {p: out.slice(starts[p], counts[p]) for p in np.flatnonzero(counts)}

    def run_polars():
        if kind == "hash":
            with_ids = pl_df.with_columns((pl.col("key").hash() % nparts).alias("_pid"))
        else:
            with_ids = pl_df.with_columns(pl.Series("_pid", ids()))
        return with_ids.partition_by("_pid", maintain_order=True, as_dict=True)

    def run_p2p():
        t = table.append_column("_partitions", pa.array(ids()))
        return split_by_partition(t, "_partitions", True)

    return {
        "pandas": run_pandas,
        "pyarrow take": run_pyarrow,
        "polars partition_by": run_polars,
        "dask p2p split_by_partition": run_p2p,
    }


def _fmt_rows(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}K"


def run(quick: bool) -> list[dict]:
    """Measure every case; rows ``{"group", "impl", "seconds", "gbps", "note"}``."""
    from dask_oxigdal.kernels._parallel import parallel_threads
    from dask_oxigdal.tables import _parallel_work, hash_partition, range_partition

    sizes = [100_000, 1_000_000] if quick else [100_000, 10_000_000]
    rows: list[dict] = []
    for nrows in sizes:
        table = make_table(nrows)
        inputs = _peer_inputs(table)
        repeat = 25 if nrows <= 100_000 else 7 if nrows <= 1_000_000 else 3
        for kind in ("hash", "range"):
            for nparts in (16, 64):
                group = f"{kind} {_fmt_rows(nrows)} rows -> {nparts} parts"
                bounds = np.linspace(0, 1_000_000_000, nparts + 1)[1:-1].astype(np.int64)
                if kind == "hash":

                    def ours(table=table, nparts=nparts):
                        return hash_partition(table, "key", nparts)
                else:

                    def ours(table=table, bounds=bounds):
                        return range_partition(table, "key", bounds)

                threads = parallel_threads(_parallel_work(nrows))
                rows.append(
                    {
                        "group": group,
                        "impl": OURS,
                        "seconds": best_of(ours, repeat),
                        "gbps": None,
                        "note": f"{threads} thread{'s' if threads > 1 else ''}",
                    }
                )
                for name, fn in _peers(table, inputs, kind, nparts, bounds).items():
                    note = "own hash ids" if name.startswith("polars") and kind == "hash" else ""
                    rows.append(
                        {
                            "group": group,
                            "impl": name,
                            "seconds": best_of(fn, repeat),
                            "gbps": None,
                            "note": note,
                        }
                    )
    return rows


if __name__ == "__main__":  # pragma: no cover - manual run
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(f"{row['group']:<32} {row['impl']:<30} {row['seconds'] * 1e3:10.2f} ms")
