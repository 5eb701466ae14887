"""What every benchmark needs: the machine it ran on, and a best-of-N timer."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable


def describe(versions: str) -> str:
    """CPU model, cores, memory and Python version, followed by ``versions``.

    Parameters
    ----------
    versions : str
        The library versions that matter to the benchmark.

    Returns
    -------
    str
        One line, e.g. ``"Intel Xeon ..., 2 cores, 24 GiB RAM; Python 3.11.7, numpy ..."``.
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        mem = f", {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}; Python {platform.python_version()}, {versions}"


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls of ``fn`` after one warm-up call.

    Parameters
    ----------
    fn : callable
        Zero-argument function to time.
    repeat : int
        Timed calls; the warm-up call (compilation, caches) is not counted.

    Returns
    -------
    float
        The fastest call, in seconds.
    """
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
