"""NDVI: dask-oxigdal against numpy, numexpr, xarray-spatial and a STREAM triad.

Called by ``bench_kernels.py`` (``run(quick)`` returns the rows). Every
implementation is timed round-robin in the same run (one call of each per
round, best of N rounds after a warm-up call), so machine noise hits all of them
alike. Effective bandwidth counts the bytes an ideal kernel moves: NDVI reads two
input bands and writes float32, ``(2 * itemsize + 4) * pixels``; the triad
``a = b + s * c`` over float64 counts ``3 * 8 * n`` bytes, as STREAM does.

Run it alone: ``python benchmarks/cases_spectral.py [--quick]``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import numba
import numpy as np
from numba import prange

from dask_oxigdal.spectral import ndvi

OURS_OUT = "dask-oxigdal (out=)"
OURS_OUT_NODATA = "dask-oxigdal (out=, nodata=0)"
OURS_ALLOC = "dask-oxigdal (allocating)"
NUMPY = "numpy"
NUMEXPR = "numexpr"
XRSPATIAL = "xarray-spatial ndvi"
TRIAD = "STREAM triad (numba prange, float64)"

FULL_SIDE = 8192


def _group(side: int, dtype: str) -> str:
    return f"NDVI {side}x{side} {dtype}"


def _triad_group(side: int, dtype: str) -> str:
    return f"STREAM triad {side}x{side} float64 (in the NDVI {dtype} rounds)"


# Declared for bench_kernels.py, which checks them on full-size runs.
TARGETS = [
    *(
        {
            "name": f"NDVI {dtype} into out= >= 80% of triad bandwidth",
            "group": _group(FULL_SIDE, dtype),
            "impl": OURS_OUT,
            "kind": "min_fraction_of",
            "value": 0.8,
            "ref": TRIAD,
            "ref_group": _triad_group(FULL_SIDE, dtype),
        }
        for dtype in ("float32", "uint16")
    ),
    *(
        {
            "name": f"allocating NDVI {dtype} >= 5x plain numpy",
            "group": _group(FULL_SIDE, dtype),
            "impl": OURS_ALLOC,
            "kind": "min_speedup",
            "value": 5.0,
            "peers": [NUMPY],
        }
        for dtype in ("float32", "uint16")
    ),
]


@numba.njit(cache=True, nogil=True, parallel=True)
def _triad(a, b, c, s):
    for i in prange(a.size):
        a[i] = b[i] + s * c[i]


def _bands(side: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    nir = rng.integers(0, 10000, (side, side), dtype=np.uint16)
    red = rng.integers(0, 10000, (side, side), dtype=np.uint16)
    if dtype == "float32":
        return (nir / np.float32(10000)).astype(np.float32), (red / np.float32(10000)).astype(
            np.float32
        )
    return nir, red


def _numpy_ndvi(nir: np.ndarray, red: np.ndarray) -> np.ndarray:
    if nir.dtype != np.float32:
        nir = nir.astype(np.float32)
        red = red.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (nir - red) / (nir + red)


def _implementations(nir: np.ndarray, red: np.ndarray) -> dict[str, tuple[Callable, str]]:
    out = np.empty(nir.shape, np.float32)
    impls: dict[str, tuple[Callable, str]] = {
        OURS_OUT: (lambda: ndvi(nir, red, out=out), ""),
        OURS_ALLOC: (lambda: ndvi(nir, red), ""),
        OURS_OUT_NODATA: (lambda: ndvi(nir, red, nodata=0, out=out), ""),
        NUMPY: (
            lambda: _numpy_ndvi(nir, red),
            "" if nir.dtype == np.float32 else "casts to float32 first",
        ),
    }
    try:
        import numexpr

        numexpr.set_num_threads(os.cpu_count() or 1)
        expr = "(a - b) / (a + b)"
        if nir.dtype == np.float32:
            impls[NUMEXPR] = (
                lambda: numexpr.evaluate(expr, local_dict={"a": nir, "b": red}),
                f"{numexpr.get_num_threads()} threads",
            )
        else:
            # numexpr has no uint16: it widens to int32 and divides in float64; write
            # float32 like the others.
            out_ne = np.empty(nir.shape, np.float32)
            impls[NUMEXPR] = (
                lambda: numexpr.evaluate(
                    expr, local_dict={"a": nir, "b": red}, out=out_ne, casting="unsafe"
                ),
                f"{numexpr.get_num_threads()} threads, float64 math into float32 out",
            )
    except ImportError:  # pragma: no cover - numexpr is in the bench extras
        pass
    try:
        import xarray as xr
        from xrspatial.multispectral import ndvi as xrs_ndvi

        xnir = xr.DataArray(nir, dims=("y", "x"))
        xred = xr.DataArray(red, dims=("y", "x"))
        impls[XRSPATIAL] = (lambda: xrs_ndvi(xnir, xred), "numpy backend")
    except ImportError:  # pragma: no cover - xarray-spatial is in the bench extras
        pass
    return impls


def _best_of(impls: dict[str, Callable], repeat: int) -> dict[str, float]:
    for fn in impls.values():  # warm-up: compilation, page faults
        fn()
    best = dict.fromkeys(impls, float("inf"))
    for _ in range(repeat):
        for name, fn in impls.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def run(quick: bool) -> list[dict]:
    """Measure NDVI (float32 and uint16) and the STREAM triad; return the rows.

    Parameters
    ----------
    quick : bool
        Smoke-test sizes (1024 x 1024, 2 rounds) instead of 8192 x 8192, 7 rounds.

    Returns
    -------
    list of dict
        Rows ``{"group", "impl", "seconds", "gbps", "note"}``: one group per
        input dtype, the triad measured in that dtype's rounds, and one group
        summarising our bandwidth as a fraction of the triad's.
    """
    side = 1024 if quick else FULL_SIDE
    repeat = 2 if quick else 7
    n = side * side

    a = np.empty(n)
    b = np.full(n, 1.0)
    c = np.full(n, 2.0)
    triad_fn = lambda: _triad(a, b, c, 3.0)  # noqa: E731
    triad_bytes = 3 * 8 * n

    rows: list[dict] = []
    summary: list[dict] = []
    for dtype in ("float32", "uint16"):
        nir, red = _bands(side, dtype)
        impls = _implementations(nir, red)
        # The triad runs in the same rounds as the NDVI implementations, so that the
        # bandwidth fractions compare measurements taken under the same conditions.
        timed = _best_of({**{k: v[0] for k, v in impls.items()}, TRIAD: triad_fn}, repeat)
        triad_seconds = timed.pop(TRIAD)
        triad_gbps = triad_bytes / triad_seconds / 1e9
        nbytes = (2 * nir.itemsize + 4) * n
        for impl, seconds in timed.items():
            gbps = nbytes / seconds / 1e9
            frac = f"{gbps / triad_gbps:.0%} of triad"
            note = impls[impl][1]
            rows.append(
                {
                    "group": _group(side, dtype),
                    "impl": impl,
                    "seconds": seconds,
                    "gbps": gbps,
                    "note": f"{note}; {frac}" if note else frac,
                }
            )
            if impl in (OURS_OUT, OURS_ALLOC, OURS_OUT_NODATA):
                summary.append(
                    {
                        "group": f"NDVI bandwidth / triad bandwidth ({side}x{side})",
                        "impl": f"{impl} {dtype}",
                        "seconds": seconds,
                        "gbps": gbps,
                        "note": f"{gbps / triad_gbps:.2f} of triad "
                        f"({gbps:.1f} / {triad_gbps:.1f} GB/s)",
                    }
                )
        rows.append(
            {
                "group": _triad_group(side, dtype),
                "impl": TRIAD,
                "seconds": triad_seconds,
                "gbps": triad_gbps,
                "note": f"{numba.get_num_threads()} threads; 3 x 8 bytes x n counted",
            }
        )
        del nir, red, impls
    rows.extend(summary)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_kernels import check_targets, render_text

    result = run(quick="--quick" in sys.argv)
    print(render_text(result))
    if "--quick" not in sys.argv:
        print("\n".join(check_targets(result, TARGETS)))
