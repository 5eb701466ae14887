"""The stable counting sort that writes every column straight into partition order.

Private to :mod:`dask_oxigdal.tables`. :class:`_Plan` holds where every row goes
(blocks, histogram, write offsets); :func:`_reorder_arrow` rewrites one Arrow
column's buffers in that order, :func:`_scatter_numpy` one numpy column.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dask_oxigdal._memory import pool_empty as _empty
from dask_oxigdal.kernels import shuffle as _sk
from dask_oxigdal.tables._buffers import (
    _bitmap,
    _k,
    _owned_readonly,
    _readonly,
    _string_views,
    _values,
)

# Most bytes a string/binary array with 32-bit offsets can hold; beyond it (chunked
# input columns can be larger in total) the output column gets one chunk per part.
_INT32_OFFSETS_MAX = 2**31 - 1
# Histogram cells (blocks x parts) beyond which multi-chunk columns are concatenated.
_MAX_CELLS = 1 << 24
# Uniform block size bounds (rows) and the target number of uniform blocks.
_MIN_BLOCK = 4096
_TARGET_BLOCKS = 64


class _Plan:
    """Where every row goes: blocks, histogram and write offsets."""

    def __init__(self, pids: np.ndarray, nparts: int, boundaries: list[int], threads: int):
        n = pids.shape[0]
        self.n = n
        self.threads = threads
        self.labels: list[int] | None = None
        if nparts > max(65536, 4 * n):
            # Sparse: renumber the parts that occur (ascending) to 0..k-1.
            labels, inverse = np.unique(pids, return_inverse=True)
            pids = _owned_readonly(inverse.astype(np.int32).reshape(-1))
            self.labels = labels.tolist()
            nparts = len(labels)
        self.pids = _readonly(pids)
        self.nparts = nparts
        max_uniform = max(1, min(_TARGET_BLOCKS, _MAX_CELLS // nparts))
        block = max(_MIN_BLOCK, -(-n // max_uniform))
        nuniform = -(-n // block)
        # Too many chunk boundaries for the histogram: the caller concatenates chunks.
        self.ignored_chunks = (nuniform + len(boundaries)) * nparts > 4 * _MAX_CELLS
        if boundaries and not self.ignored_chunks:
            starts = set(range(0, n, block))
            starts.update(boundaries)
            bstart = np.array([*sorted(starts), n], np.int64)
        else:
            bstart = np.minimum(np.arange(nuniform + 1, dtype=np.int64) * block, n)
        self.bstart = _owned_readonly(bstart)
        self.nblocks = len(bstart) - 1
        hist = _k("histogram", threads)(self.pids, self.bstart, nparts)
        counts, part_start, block_off, _ = _sk.offsets_from_counts(hist)
        self.block_off = _owned_readonly(block_off)
        self.counts = counts.tolist()
        self.part_start = part_start.tolist()
        self.nonempty = np.flatnonzero(counts).tolist()
        self._perm = None
        self._dest = None

    def label(self, p: int) -> int:
        return p if self.labels is None else self.labels[p]

    def blocks_of(self, r0: int, length: int) -> tuple[int, int]:
        if r0 == 0 and length == self.n:
            return 0, self.nblocks
        b0 = int(np.searchsorted(self.bstart, r0))
        b1 = int(np.searchsorted(self.bstart, r0 + length))
        return b0, b1

    def kernel(self, name: str):
        return _k(name, self.threads)

    def dest(self) -> np.ndarray:
        """Output row of every input row (int32, or int64 beyond 2**31 rows)."""
        if self._dest is None:
            out = _empty(self.n, np.int32 if self.n < 2**31 else np.int64)
            self.kernel("dest_rows")(self.pids, self.bstart, self.block_off, out)
            self._dest = _owned_readonly(out)
        return self._dest

    def perm(self) -> np.ndarray:
        """Input row of every output row (int64)."""
        if self._perm is None:
            out = _empty(self.n, np.int64)
            self.kernel("invert")(self.dest(), out)
            self._perm = out
        return self._perm

    def scatter_chunks(self, views: list[np.ndarray], starts: list[int], out: np.ndarray):
        """Scatter 1-D (or 2-D row) chunk views, chunk ``k`` starting at row ``starts[k]``."""
        kernel = self.kernel("scatter_rows2d" if out.ndim == 2 else "scatter")
        dest = self.dest()
        for vals, r0 in zip(views, starts, strict=True):
            kernel(vals, dest[r0 : r0 + vals.shape[0]], out)


_UINT_BY_WIDTH = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _scatter_numpy(vals: np.ndarray, plan: _Plan) -> np.ndarray:
    """Reorder a contiguous 1-D numpy array (any fixed-width dtype)."""
    out = _empty(vals.shape, vals.dtype)
    width = vals.dtype.itemsize
    if width in _UINT_BY_WIDTH:
        u = _UINT_BY_WIDTH[width]
        plan.scatter_chunks([_readonly(vals.view(u))], [0], out.view(u))
    else:
        src = _readonly(vals.view(np.uint8).reshape(-1, width))
        plan.scatter_chunks([src], [0], out.view(np.uint8).reshape(-1, width))
    return out


def _validity(chunks: list[pa.Array], starts: list[int], plan: _Plan):
    """Reordered validity bitmap (or None) and the null count."""
    nulls = sum(c.null_count for c in chunks)
    if nulls == 0:
        return None, 0
    valid = _empty(plan.n, np.uint8)
    unpack = plan.kernel("unpack_bits")
    for c, r0 in zip(chunks, starts, strict=True):
        seg = valid[r0 : r0 + len(c)]
        validity = c.buffers()[0]
        if c.null_count == 0:
            seg[:] = 1
        elif validity is None:
            seg[:] = 0
        else:
            unpack(_bitmap(validity), c.offset, seg)
    out = _empty(plan.n, np.uint8)
    plan.scatter_chunks([_owned_readonly(valid)], [0], out)
    return pa.py_buffer(np.packbits(out, bitorder="little")), nulls


_LAYOUTS: dict[pa.DataType, tuple[str, int]] = {}


def _layout(typ: pa.DataType) -> tuple[str, int]:
    """How a column type is reordered: (kind, byte width), cached per type."""
    layout = _LAYOUTS.get(typ)
    if layout is None:
        layout = _LAYOUTS[typ] = _classify(typ)
    return layout


def _classify(typ: pa.DataType) -> tuple[str, int]:
    if isinstance(typ, pa.BaseExtensionType):
        return "extension", 0
    if pa.types.is_null(typ):
        return "null", 0
    if pa.types.is_dictionary(typ):
        return "dictionary", 0
    if pa.types.is_boolean(typ):
        return "boolean", 0
    if (
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
    ):
        return "strings", 0
    if pa.types.is_string_view(typ) or pa.types.is_binary_view(typ):
        return "view", 0
    if not (pa.types.is_nested(typ) or pa.types.is_union(typ)):
        try:
            bits = typ.bit_width
        except ValueError:
            bits = 0
        if bits > 0 and bits % 8 == 0:
            return "fixed", bits // 8
    return "take", 0


def _reorder_arrow(typ: pa.DataType, chunks: list[pa.Array], starts: list[int], plan: _Plan):
    """One column in partition order: a pa.Array, or a ChunkedArray of one chunk per part."""
    kind, width = _layout(typ)
    n = plan.n
    if kind == "fixed":
        validity, nulls = _validity(chunks, starts, plan)
        u = _UINT_BY_WIDTH.get(width)
        if u is not None:
            out = _empty(n, u)
            plan.scatter_chunks([_values(c, u) for c in chunks], starts, out)
        else:
            out = _empty((n, width), np.uint8)
            plan.scatter_chunks([_fixed_rows(c, width) for c in chunks], starts, out)
        return pa.Array.from_buffers(typ, n, [validity, pa.py_buffer(out)], null_count=nulls)
    if kind == "strings":
        return _reorder_strings(typ, chunks, starts, plan)
    if kind == "dictionary":
        return _reorder_dictionary(typ, chunks, starts, plan)
    if kind == "boolean":
        validity, nulls = _validity(chunks, starts, plan)
        bits = _empty(n, np.uint8)
        unpack = plan.kernel("unpack_bits")
        for c, r0 in zip(chunks, starts, strict=True):
            data = c.buffers()[1]
            if data is None:
                bits[r0 : r0 + len(c)] = 0
            else:
                unpack(_bitmap(data), c.offset, bits[r0 : r0 + len(c)])
        out = _empty(n, np.uint8)
        plan.scatter_chunks([_owned_readonly(bits)], [0], out)
        data = pa.py_buffer(np.packbits(out, bitorder="little"))
        return pa.Array.from_buffers(typ, n, [validity, data], null_count=nulls)
    if kind == "extension":
        storage = _reorder_arrow(typ.storage_type, [c.storage for c in chunks], starts, plan)
        if isinstance(storage, pa.ChunkedArray):
            return pa.chunked_array(
                [pa.ExtensionArray.from_storage(typ, c) for c in storage.chunks], type=typ
            )
        return pa.ExtensionArray.from_storage(typ, storage)
    if kind == "null":
        return pa.nulls(n, typ)
    if kind == "view":
        plain = pa.large_string() if pa.types.is_string_view(typ) else pa.large_binary()
        out = _reorder_strings(plain, [pc.cast(c, plain) for c in chunks], starts, plan)
        return pc.cast(out, typ)
    # Nested and other layouts: Arrow's take on the permutation.
    perm = pa.array(plan.perm())
    try:
        return pa.chunked_array(chunks, type=typ).take(perm)
    except pa.ArrowNotImplementedError as err:
        raise TypeError(f"cannot reorder a column of type {typ}: {err}") from None


def _fixed_rows(arr: pa.Array, width: int) -> np.ndarray:
    buf = arr.buffers()[1]
    n = len(arr)
    if buf is None or n == 0:
        return _readonly(np.zeros((n, width), np.uint8))
    raw = np.frombuffer(buf, np.uint8, count=(arr.offset + n) * width)
    return _readonly(raw[arr.offset * width :].reshape(n, width))


def _reorder_dictionary(typ, chunks, starts, plan):
    dictionary = chunks[0].dictionary
    if any(not c.dictionary.equals(dictionary) for c in chunks[1:]):
        chunks = pa.chunked_array(chunks, type=typ).unify_dictionaries().chunks
        dictionary = chunks[0].dictionary
    validity, nulls = _validity(chunks, starts, plan)
    u = _UINT_BY_WIDTH[typ.index_type.bit_width // 8]
    out = _empty(plan.n, u)
    plan.scatter_chunks([_values(c, u) for c in chunks], starts, out)
    return pa.DictionaryArray.from_buffers(
        typ, plan.n, [validity, pa.py_buffer(out)], dictionary, null_count=nulls
    )


def _reorder_strings(typ, chunks, starts, plan):
    n = plan.n
    large = pa.types.is_large_string(typ) or pa.types.is_large_binary(typ)
    views = [_string_views(c) for c in chunks]
    bsum = np.zeros((plan.nblocks, plan.nparts), np.int64)
    count = plan.kernel("string_block_bytes")
    for (offsets, _), c, r0 in zip(views, chunks, starts, strict=True):
        b0, b1 = plan.blocks_of(r0, len(c))
        count(offsets, r0, plan.pids, plan.bstart, b0, b1, bsum)
    _, byte_start, byte_off, byte_end = _sk.offsets_from_counts(bsum)
    total = int(byte_start[-1])
    byte_off = _owned_readonly(byte_off)
    byte_end = _owned_readonly(byte_end)
    fits = large or total <= _INT32_OFFSETS_MAX
    out_offsets = _empty(n + 1, np.int64 if not fits or large else np.int32)
    out_data = _empty(max(total, 1), np.uint8)
    scatter = plan.kernel("scatter_strings")
    for (offsets, data), c, r0 in zip(views, chunks, starts, strict=True):
        b0, b1 = plan.blocks_of(r0, len(c))
        scatter(
            offsets,
            data,
            r0,
            plan.pids,
            plan.dest(),
            plan.bstart,
            byte_off,
            byte_end,
            b0,
            b1,
            out_offsets,
            out_data,
        )
    out_offsets[n] = total
    validity, nulls = _validity(chunks, starts, plan)
    if fits:
        return pa.Array.from_buffers(
            typ,
            n,
            [validity, pa.py_buffer(out_offsets), pa.py_buffer(out_data)],
            null_count=nulls,
        )
    # More than 2 GiB of 32-bit-offset strings: one chunk per part.
    whole = pa.Array.from_buffers(
        pa.large_binary(), n, [validity, pa.py_buffer(out_offsets), pa.py_buffer(out_data)]
    )
    pieces = []
    for p in range(plan.nparts):
        piece = whole.slice(plan.part_start[p], plan.counts[p])
        pieces.append(pc.cast(piece, pa.binary()).view(typ))
    return pa.chunked_array(pieces, type=typ)
