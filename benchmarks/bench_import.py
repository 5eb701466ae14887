"""Import cost of dask-oxigdal, side by side with ``import distributed`` alone.

Run::

    python benchmarks/bench_import.py [--repeat 9] [--no-scheduler] [--before TREE]

Every measurement is a fresh interpreter (``sys.executable -c ...``); the cases
run in a rotated order each round and the table shows medians:

- ``import distributed``: the reference (the extension needs it anyway);
- ``import dask_oxigdal`` and ``import dask_oxigdal.preload``;
- unless ``--no-scheduler``: a ``distributed.Scheduler`` (no dashboard,
  loopback, port 0) started and closed, plain and with
  ``preload=["dask_oxigdal.preload"]`` (the extension and every default policy).

Columns: the import's own time (``time.perf_counter`` around the statement,
inside the child, interpreter start-up excluded), the child's whole wall time
(measured by the parent) and the child's peak RSS (``VmHWM`` from
``/proc/self/status``, read by the child at the end; elsewhere ``ru_maxrss`` of
that child from ``os.wait4``, which also counts the forked parent before exec). Deltas and ratios are against ``import distributed``
(the scheduler rows: against the plain scheduler). The target (issue 14) is
at most +0.3 s and +20 MB over ``import distributed``. Also printed: whether a
heavy library (numba, pandas, pyarrow, scipy, ...) was loaded, and the load
average before and after (the machine may be shared).

``--before TREE`` adds the same rows for another checkout of the package (e.g.
the commit before a change, exported with ``git archive COMMIT | tar -x -C
TREE``), interleaved in the same rounds, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import _machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HEAVY = [
    "numba",
    "pandas",
    "pyarrow",
    "scipy",
    "geopandas",
    "xarray",
    "shapely",
    "polars",
    "matplotlib",
    "prometheus_client",
]

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
{stmt}
dt = time.perf_counter() - t0
hwm = None
try:
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
print(json.dumps({{"s": dt, "hwm_kib": hwm, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""

_SCHEDULER = """
import asyncio, logging
import distributed
logging.getLogger("distributed").setLevel(logging.WARNING)

async def _main():
    async with distributed.Scheduler(
        host="127.0.0.1", port=0, dashboard=False, preload={preload!r}
    ):
        pass

asyncio.run(_main())
"""

#: (label, statement, reference label); the first case of a group is its reference
CASES = [
    ("import distributed", "import distributed", None),
    ("import dask_oxigdal", "import dask_oxigdal", "import distributed"),
    ("import dask_oxigdal.preload", "import dask_oxigdal.preload", "import distributed"),
]
SCHEDULER_CASES = [
    ("scheduler, plain", _SCHEDULER.format(preload=[]), None),
    (
        "scheduler + preload",
        _SCHEDULER.format(preload=["dask_oxigdal.preload"]),
        "scheduler, plain",
    ),
]


def with_trees(cases: list, tree: str, before: str | None) -> list:
    """``(label, statement, reference, tree)`` cases; ``before`` adds ``before:`` rows."""
    out = [(label, stmt, ref, tree) for label, stmt, ref in cases]
    if before is not None:
        out += [(f"before: {label}", stmt, ref, before) for label, stmt, ref in cases if ref]
    return out


def run_once(stmt: str, pythonpath: str) -> dict:
    """One fresh interpreter: the statement's time, the whole wall time, the peak RSS.

    Parameters
    ----------
    stmt : str
        Python source run (and timed) in the child.
    pythonpath : str
        The checkout whose ``dask_oxigdal`` the child imports.

    Returns
    -------
    dict
        ``{"s": import seconds, "wall": child wall seconds, "rss_mb": peak RSS
        in MiB, "heavy": [heavy modules loaded]}``.
    """
    code = _CHILD.format(stmt=stmt, heavy=HEAVY)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=pythonpath,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {stmt!r}")
    res = json.loads(out.decode().strip().splitlines()[-1])
    res["wall"] = wall
    # VmHWM: the peak RSS of the child's own address space. ru_maxrss (wait4) also
    # counts the forked copy of this parent before exec, so it is only the fallback.
    res["rss_mb"] = (res.pop("hwm_kib") or usage.ru_maxrss) / 1024  # KiB on Linux
    return res


def measure(cases: list, repeat: int) -> dict[str, list[dict]]:
    """Run every case ``repeat`` times, rotating the order each round.

    Parameters
    ----------
    cases : list of (label, statement, reference, tree)
        What to run, and the checkout each case imports.
    repeat : int
        Rounds.

    Returns
    -------
    dict
        ``{label: [run_once result per round]}``.
    """
    runs: dict[str, list[dict]] = {label: [] for label, *_ in cases}
    for r in range(repeat):
        order = cases[r % len(cases) :] + cases[: r % len(cases)]
        for label, stmt, _, tree in order:
            runs[label].append(run_once(stmt, tree))
    return runs


def table(cases: list, runs: dict[str, list[dict]]) -> list[str]:
    """Markdown rows: medians, and deltas / ratios against each case's reference.

    ``delta s`` and ``ratio`` compare the medians; ``paired delta s`` is the
    median over rounds of (this run - the reference's run in the same round),
    less sensitive to a load that changes during the benchmark.
    """
    rows = [
        "| case | import s (median) | delta s | paired delta s | ratio | wall s | peak RSS MiB "
        "| delta MiB | heavy modules loaded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    med = {
        label: {k: statistics.median(r[k] for r in runs[label]) for k in ("s", "wall", "rss_mb")}
        for label in runs
    }
    for label, _, ref, _ in cases:
        m = med[label]
        heavy = sorted({h for r in runs[label] for h in r["heavy"]})
        if ref is None:
            ds, paired, ratio, dm = "", "", "x1.00", ""
        else:
            base = med[ref]
            ds = f"{m['s'] - base['s']:+.3f}"
            pairs = [r["s"] - b["s"] for r, b in zip(runs[label], runs[ref], strict=True)]
            paired = f"{statistics.median(pairs):+.3f}"
            ratio = f"x{m['s'] / base['s']:.2f}"
            dm = f"{m['rss_mb'] - base['rss_mb']:+.1f}"
        rows.append(
            f"| `{label}` | {m['s']:.3f} | {ds} | {paired} | {ratio} | {m['wall']:.3f} | "
            f"{m['rss_mb']:.1f} | {dm} | {', '.join(heavy) or 'none'} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="rounds (default 9)")
    parser.add_argument("--no-scheduler", action="store_true", help="skip the scheduler rows")
    parser.add_argument(
        "--before", default=None, metavar="TREE", help="also measure this older checkout"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat={args.repeat}: give at least 1")
    before = None if args.before is None else os.path.abspath(args.before)
    if before is not None and not os.path.isfile(
        os.path.join(before, "dask_oxigdal", "__init__.py")
    ):
        parser.error(f"--before={args.before!r}: no dask_oxigdal package there")

    from importlib.metadata import version  # this process imports no dask: small forks

    print(
        _machine.describe(f"dask {version('dask')}, distributed {version('distributed')}"),
        flush=True,
    )
    print(f"tree: {ROOT}; before: {before}; {args.repeat} rounds, fresh interpreters", flush=True)
    load0 = os.getloadavg()
    groups = [CASES] if args.no_scheduler else [CASES, SCHEDULER_CASES]
    for group in groups:
        cases = with_trees(group, ROOT, before)
        runs = measure(cases, args.repeat)
        print()
        print("\n".join(table(cases, runs)), flush=True)
    load1 = os.getloadavg()
    print(
        f"\nload average (1, 5, 15 min) before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; "
        f"after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
