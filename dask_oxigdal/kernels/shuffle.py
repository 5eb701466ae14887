"""Numba kernels of the table shuffle: range partition ids and a stable counting sort (private).

The public wrappers live in :mod:`dask_oxigdal.tables`; hash partition ids are
in :mod:`dask_oxigdal.kernels.hashing`.

Counting sort
-------------
Rows are cut into *blocks* ``bstart[b] <= row < bstart[b + 1]``. The wrapper
makes every Arrow chunk boundary a block boundary, so each column chunk covers
whole blocks. :func:`histogram` counts rows per (block, part); from it the
wrapper derives ``block_off[b, p]``, the output row where block ``b`` writes its
first row of part ``p`` (all of part 0, then part 1, ...; inside a part, block
order). Blocks are independent: the ``*_parallel`` variants give one block per
``prange`` iteration, and each block walks its rows in input order, so the sort
is stable.

:func:`dest_rows` turns that into ``dest[i]``, the output row of input row
``i``; fixed-width columns are then scattered with ``out[dest[i]] = vals[i]``
(as unsigned integers of their width, or rows of a 2-D uint8 array for other
widths; validity and boolean bitmaps are unpacked to one byte per row first).
String columns are scattered per block instead: :func:`string_block_bytes`
counts bytes per (block, part), which places each block's bytes of each part
in a region of its own; :func:`scatter_strings` reads a column chunk whose
first row is global row ``r0`` and handles blocks ``b0 <= b < b1``.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

__all__ = [
    "dest_rows",
    "dest_rows_parallel",
    "gather_pids",
    "gather_pids_parallel",
    "histogram",
    "histogram_parallel",
    "invert",
    "invert_parallel",
    "offsets_from_counts",
    "range_pids",
    "range_pids_parallel",
    "range_string_pids",
    "range_string_pids_parallel",
    "scatter",
    "scatter_parallel",
    "scatter_rows2d",
    "scatter_rows2d_parallel",
    "scatter_strings",
    "scatter_strings_parallel",
    "string_block_bytes",
    "string_block_bytes_parallel",
    "unpack_bits",
    "unpack_bits_parallel",
]

_JIT = {"cache": True, "nogil": True}

# Rows per prange task of the elementwise kernels.
SEGMENT = 8192


# --------------------------------------------------------------------------------------
# Unaligned 8-byte load / store in uint8 arrays (no bounds check: callers check).
# --------------------------------------------------------------------------------------
@intrinsic
def _load_u64(typingctx, arr, idx):
    sig = types.uint64(arr, types.intp)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(a.data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)

    return sig, codegen


@intrinsic
def _store_u64(typingctx, arr, idx, val):
    sig = types.void(arr, types.intp, types.uint64)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(a.data, [args[1]]), ir.IntType(64).as_pointer())
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()

    return sig, codegen


# --------------------------------------------------------------------------------------
# Range partition ids: part = number of boundaries <= value (searchsorted, side="right").
# --------------------------------------------------------------------------------------
# Rows per tile of the linear range count; boundaries above which a search is used.
_TILE = 512
_LINEAR_MAX = 128


@numba.njit(**_JIT)
def range_pids(vals, bounds, null_pid, out):
    """``out[i]`` = count of ``bounds`` that are ``<= vals[i]``; NaN -> ``null_pid``; serial.

    ``bounds`` is sorted and has the comparison dtype (int64, uint64 or float64). Up
    to ``_LINEAR_MAX`` boundaries are counted linearly, one boundary at a time over
    a tile of rows (vectorised); more are searched with a branch-free binary search.
    """
    n = vals.shape[0]
    nb = bounds.shape[0]
    if nb <= _LINEAR_MAX:
        cnt = np.empty(_TILE, np.int64)
        for t0 in range(0, n, _TILE):
            t1 = min(n, t0 + _TILE)
            m = t1 - t0
            v = vals[t0:t1]
            cnt[:m] = 0
            for k in range(nb):
                b = bounds[k]
                for i in range(m):
                    cnt[i] += np.int64(v[i] >= b)
            for i in range(m):
                x = v[i]
                out[t0 + i] = null_pid if x != x else cnt[i]
    else:
        one = np.uint64(1)
        for i in range(n):
            x = vals[i]
            base = np.uint64(0)
            size = np.uint64(nb)
            while size > one:
                half = size >> one
                base += half * np.uint64(bounds[base + half - one] <= x)
                size -= half
            c = np.int64(base) + np.int64(bounds[base] <= x)
            out[i] = null_pid if x != x else c


@numba.njit(parallel=True, **_JIT)
def range_pids_parallel(vals, bounds, null_pid, out):
    """``prange`` variant of :func:`range_pids`."""
    n = vals.shape[0]
    for s in prange((n + SEGMENT - 1) // SEGMENT):
        lo = s * SEGMENT
        hi = min(n, lo + SEGMENT)
        range_pids(vals[lo:hi], bounds, null_pid, out[lo:hi])


@numba.njit(inline="always", **_JIT)
def _bytes_le(a, a0, a1, b, b0, b1):
    """Whether bytes ``b[b0:b1]`` <= bytes ``a[a0:a1]`` (lexicographic, unsigned)."""
    la = a1 - a0
    lb = b1 - b0
    n = min(la, lb)
    for k in range(n):
        x = a[a0 + k]
        y = b[b0 + k]
        if y != x:
            return y < x
    return lb <= la


@numba.njit(**_JIT)
def range_string_pids(offsets, data, boffsets, bdata, out):
    """Range ids of strings (Arrow offsets + data) against sorted UTF-8 boundaries; serial."""
    nb = boffsets.shape[0] - 1
    for i in range(offsets.shape[0] - 1):
        s = offsets[i]
        e = offsets[i + 1]
        lo = 0
        hi = nb
        while lo < hi:
            mid = (lo + hi) >> 1
            if _bytes_le(data, s, e, bdata, boffsets[mid], boffsets[mid + 1]):
                lo = mid + 1
            else:
                hi = mid
        out[i] = lo


@numba.njit(parallel=True, **_JIT)
def range_string_pids_parallel(offsets, data, boffsets, bdata, out):
    """``prange`` variant of :func:`range_string_pids`."""
    n = offsets.shape[0] - 1
    for s in prange((n + SEGMENT - 1) // SEGMENT):
        lo = s * SEGMENT
        hi = min(n, lo + SEGMENT)
        range_string_pids(offsets[lo : hi + 1], data, boffsets, bdata, out[lo:hi])


@numba.njit(**_JIT)
def gather_pids(indices, table, out):
    """``out[i] = table[indices[i]]`` (dictionary keys); out-of-range indices give 0.

    Slots under nulls may hold any index: the caller overwrites them afterwards.
    """
    m = table.shape[0]
    for i in range(indices.shape[0]):
        k = np.int64(indices[i])
        out[i] = table[k] if 0 <= k < m else 0


@numba.njit(parallel=True, **_JIT)
def gather_pids_parallel(indices, table, out):
    """``prange`` variant of :func:`gather_pids`."""
    n = indices.shape[0]
    for s in prange((n + SEGMENT - 1) // SEGMENT):
        lo = s * SEGMENT
        hi = min(n, lo + SEGMENT)
        gather_pids(indices[lo:hi], table, out[lo:hi])


# --------------------------------------------------------------------------------------
# Counting sort: histogram per block, then stable scatter per block.
# --------------------------------------------------------------------------------------
@numba.njit(**_JIT)
def _count(pids, row):
    for i in range(pids.shape[0]):
        row[pids[i]] += 1


@numba.njit(**_JIT)
def histogram(pids, bstart, nparts):
    """Rows per (block, part): int64 array of shape ``(len(bstart) - 1, nparts)``; serial."""
    nblocks = bstart.shape[0] - 1
    hist = np.zeros((nblocks, nparts), np.int64)
    for b in range(nblocks):
        _count(pids[bstart[b] : bstart[b + 1]], hist[b])
    return hist


@numba.njit(parallel=True, **_JIT)
def histogram_parallel(pids, bstart, nparts):
    """``prange`` variant of :func:`histogram`."""
    nblocks = bstart.shape[0] - 1
    hist = np.zeros((nblocks, nparts), np.int64)
    for b in prange(nblocks):
        _count(pids[bstart[b] : bstart[b + 1]], hist[b])
    return hist


@numba.njit(**_JIT)
def offsets_from_counts(hist):
    """Exclusive prefix sums of counts per (block, part), parts major.

    Returns ``totals[p]``, ``starts[p]`` (length ``nparts + 1``; part ``p`` spans
    ``starts[p]:starts[p + 1]``), and ``off[b, p]`` / ``end[b, p]``: the output
    range of block ``b``'s items of part ``p``.
    """
    nb, nparts = hist.shape
    totals = np.zeros(nparts, np.int64)
    for b in range(nb):
        for p in range(nparts):
            totals[p] += hist[b, p]
    starts = np.empty(nparts + 1, np.int64)
    starts[0] = 0
    for p in range(nparts):
        starts[p + 1] = starts[p] + totals[p]
    off = np.empty((nb, nparts), np.int64)
    end = np.empty((nb, nparts), np.int64)
    acc = starts[:-1].copy()
    for b in range(nb):
        for p in range(nparts):
            off[b, p] = acc[p]
            acc[p] += hist[b, p]
            end[b, p] = acc[p]
    return totals, starts, off, end


@numba.njit(**_JIT)
def _dest_block(pids, pos, dest):
    for i in range(pids.shape[0]):
        p = pids[i]
        j = pos[p]
        dest[i] = j
        pos[p] = j + 1


@numba.njit(**_JIT)
def dest_rows(pids, bstart, block_off, dest):
    """``dest[i]`` = output row of input row ``i`` (stable counting sort); serial."""
    for b in range(bstart.shape[0] - 1):
        lo = bstart[b]
        hi = bstart[b + 1]
        _dest_block(pids[lo:hi], block_off[b].copy(), dest[lo:hi])


@numba.njit(parallel=True, **_JIT)
def dest_rows_parallel(pids, bstart, block_off, dest):
    """``prange`` variant of :func:`dest_rows`."""
    for b in prange(bstart.shape[0] - 1):
        lo = bstart[b]
        hi = bstart[b + 1]
        _dest_block(pids[lo:hi], block_off[b].copy(), dest[lo:hi])


@numba.njit(**_JIT)
def scatter(vals, dest, out):
    """``out[dest[i]] = vals[i]`` for a 1-D chunk (``dest`` sliced to match); serial."""
    for i in range(vals.shape[0]):
        out[np.uint64(dest[i])] = vals[i]


@numba.njit(parallel=True, **_JIT)
def scatter_parallel(vals, dest, out):
    """``prange`` variant of :func:`scatter`."""
    n = vals.shape[0]
    for s in prange((n + SEGMENT - 1) // SEGMENT):
        lo = s * SEGMENT
        hi = min(n, lo + SEGMENT)
        scatter(vals[lo:hi], dest[lo:hi], out)


@numba.njit(**_JIT)
def scatter_rows2d(vals, dest, out):
    """``out[dest[i], :] = vals[i, :]`` (fixed-width values of any byte width); serial."""
    w = vals.shape[1]
    for i in range(vals.shape[0]):
        j = np.uint64(dest[i])
        for k in range(w):
            out[j, k] = vals[i, k]


@numba.njit(parallel=True, **_JIT)
def scatter_rows2d_parallel(vals, dest, out):
    """``prange`` variant of :func:`scatter_rows2d`."""
    n = vals.shape[0]
    for s in prange((n + SEGMENT - 1) // SEGMENT):
        lo = s * SEGMENT
        hi = min(n, lo + SEGMENT)
        scatter_rows2d(vals[lo:hi], dest[lo:hi], out)


@numba.njit(**_JIT)
def invert(dest, perm):
    """``perm[dest[i]] = i``: the input row of every output row; serial."""
    for i in range(dest.shape[0]):
        perm[np.uint64(dest[i])] = i


@numba.njit(parallel=True, **_JIT)
def invert_parallel(dest, perm):
    """``prange`` variant of :func:`invert`."""
    n = dest.shape[0]
    for s in prange((n + SEGMENT - 1) // SEGMENT):
        lo = s * SEGMENT
        hi = min(n, lo + SEGMENT)
        for i in range(lo, hi):
            perm[np.uint64(dest[i])] = i


# --------------------------------------------------------------------------------------
# Variable-width (string / binary) columns: Arrow offsets + data.
# --------------------------------------------------------------------------------------
@numba.njit(**_JIT)
def _bytes_block(offsets, pids, row):
    for i in range(pids.shape[0]):
        row[pids[i]] += offsets[i + 1] - offsets[i]


@numba.njit(**_JIT)
def string_block_bytes(offsets, r0, pids, bstart, b0, b1, bsum):
    """``bsum[b, p]`` = bytes of the strings of part ``p`` in block ``b``; serial."""
    for b in range(b0, b1):
        lo = bstart[b]
        hi = bstart[b + 1]
        _bytes_block(offsets[lo - r0 : hi - r0 + 1], pids[lo:hi], bsum[b])


@numba.njit(parallel=True, **_JIT)
def string_block_bytes_parallel(offsets, r0, pids, bstart, b0, b1, bsum):
    """``prange`` variant of :func:`string_block_bytes`."""
    for k in prange(b1 - b0):
        b = b0 + k
        lo = bstart[b]
        hi = bstart[b + 1]
        _bytes_block(offsets[lo - r0 : hi - r0 + 1], pids[lo:hi], bsum[b])


@numba.njit(**_JIT)
def _scatter_strings_block(offsets, data, pids, dest, bpos, bend, out_offsets, out_data):
    nd = data.shape[0]
    for i in range(pids.shape[0]):
        p = pids[i]
        s = np.int64(offsets[i])
        length = np.int64(offsets[i + 1]) - s
        q = bpos[p]
        out_offsets[np.uint64(dest[i])] = q
        bpos[p] = q + length
        # Whole 8-byte words, at least two: may write past this string (the next string
        # of this (block, part) region overwrites it), never past the region's end.
        span = max(16, (length + 7) & -8)
        if q + span <= bend[p] and s + span <= nd:
            _store_u64(out_data, q, _load_u64(data, s))
            _store_u64(out_data, q + 8, _load_u64(data, s + 8))
            for k in range(16, span, 8):
                _store_u64(out_data, q + k, _load_u64(data, s + k))
        else:
            for k in range(length):
                out_data[np.uint64(q + k)] = data[np.uint64(s + k)]


@numba.njit(**_JIT)
def scatter_strings(
    offsets, data, r0, pids, dest, bstart, byte_off, byte_end, b0, b1, out_offsets, out_data
):
    """Stable scatter of strings (offsets + data) of blocks ``b0 <= b < b1``; serial.

    ``dest`` is :func:`dest_rows`' output; ``byte_off[b, p]`` / ``byte_end[b, p]``: the
    output byte range of block ``b``'s strings of part ``p``. Writes
    ``out_offsets[dest[i]]`` (start of each output row); the caller sets the final
    offset.
    """
    for b in range(b0, b1):
        lo = bstart[b]
        hi = bstart[b + 1]
        _scatter_strings_block(
            offsets[lo - r0 : hi - r0 + 1],
            data,
            pids[lo:hi],
            dest[lo:hi],
            byte_off[b].copy(),
            byte_end[b],
            out_offsets,
            out_data,
        )


@numba.njit(parallel=True, **_JIT)
def scatter_strings_parallel(
    offsets, data, r0, pids, dest, bstart, byte_off, byte_end, b0, b1, out_offsets, out_data
):
    """``prange`` variant of :func:`scatter_strings`."""
    for k in prange(b1 - b0):
        b = b0 + k
        lo = bstart[b]
        hi = bstart[b + 1]
        _scatter_strings_block(
            offsets[lo - r0 : hi - r0 + 1],
            data,
            pids[lo:hi],
            dest[lo:hi],
            byte_off[b].copy(),
            byte_end[b],
            out_offsets,
            out_data,
        )


# --------------------------------------------------------------------------------------
# Bitmaps (validity, booleans): one byte per row.
# --------------------------------------------------------------------------------------
@numba.njit(**_JIT)
def unpack_bits(bitmap, bit_offset, out):
    """``out[i]`` = bit ``bit_offset + i`` of an LSB-first bitmap (0 or 1); serial."""
    for i in range(out.shape[0]):
        j = bit_offset + i
        out[i] = (bitmap[j >> 3] >> (j & 7)) & 1


@numba.njit(parallel=True, **_JIT)
def unpack_bits_parallel(bitmap, bit_offset, out):
    """``prange`` variant of :func:`unpack_bits`."""
    n = out.shape[0]
    for s in prange((n + SEGMENT - 1) // SEGMENT):
        lo = s * SEGMENT
        hi = min(n, lo + SEGMENT)
        unpack_bits(bitmap, bit_offset + lo, out[lo:hi])
