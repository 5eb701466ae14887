"""Kernel benchmarks: dask-oxigdal side by side with its peers, in one run.

    python benchmarks/bench_kernels.py            # full sizes: the figures in docs/benchmarks.md
    python benchmarks/bench_kernels.py --quick    # small sizes: CI's smoke test
    python benchmarks/bench_kernels.py --only shuffle --markdown out.md

Each case module (``cases_spectral``, ``cases_shuffle``, ``cases_partitioning``)
returns rows ``{"group", "impl", "seconds", "gbps", "note"}``. Rows of one group
were measured in the same run; this script prints each group with every
implementation's time and its ratio to dask-oxigdal (``x faster`` > 1 means
dask-oxigdal is faster), then checks the issue's targets.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _machine

CASES = ("spectral", "shuffle", "partitioning")
OURS = "dask-oxigdal"


def machine() -> str:
    """Describe this machine: CPU model, cores, memory, Python and key versions."""
    import numba
    import numpy

    return _machine.describe(
        f"numpy {numpy.__version__}, numba {numba.__version__} (threads {numba.get_num_threads()})"
    )


def _is_ours(impl: str) -> bool:
    return impl.startswith(OURS)


def _fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds:8.3f} s "


def group_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by group, in first-seen order."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["group"]].append(row)
    return groups


def render_text(rows: list[dict]) -> str:
    """Plain-text tables with the ratio of each implementation to ours."""
    out = []
    for group, members in group_rows(rows).items():
        ours = [r for r in members if _is_ours(r["impl"])]
        best_ours = min((r["seconds"] for r in ours), default=None)
        out.append(f"\n{group}")
        for r in members:
            ratio = ""
            if best_ours and not _is_ours(r["impl"]):
                ratio = f"{r['seconds'] / best_ours:7.2f}x slower than ours"
            gbps = f"{r['gbps']:6.1f} GB/s" if r.get("gbps") else " " * 11
            note = f"  {r['note']}" if r.get("note") else ""
            out.append(f"  {r['impl']:<42} {_fmt_time(r['seconds'])} {gbps} {ratio}{note}")
    return "\n".join(out)


def render_markdown(rows: list[dict]) -> str:
    """Markdown tables (one per group) for docs/benchmarks.md."""
    out = []
    for group, members in group_rows(rows).items():
        best_ours = min((r["seconds"] for r in members if _is_ours(r["impl"])), default=None)
        out.append(f"\n**{group}**\n")
        out.append("| implementation | time | GB/s | peer time / ours | note |")
        out.append("|---|---:|---:|---:|---|")
        for r in members:
            ratio = (
                f"{r['seconds'] / best_ours:.2f}" if best_ours and not _is_ours(r["impl"]) else ""
            )
            gbps = f"{r['gbps']:.1f}" if r.get("gbps") else ""
            out.append(
                f"| {r['impl']} | {_fmt_time(r['seconds']).strip()} | {gbps} | {ratio} "
                f"| {r.get('note', '')} |"
            )
    return "\n".join(out)


def _find(rows: list[dict], group: str, impl: Callable[[str], bool]) -> list[dict]:
    return [r for r in rows if r["group"] == group and impl(r["impl"])]


def check_targets(rows: list[dict], targets: list[dict]) -> list[str]:
    """Evaluate the targets that the case modules declare.

    A target is ``{"name", "group", "kind", "value"}`` where ``kind`` is
    ``"max_seconds"`` (our best time at most ``value``), ``"min_speedup"``
    (the fastest peer's time over ours at least ``value``) or
    ``"min_fraction_of"`` (our GB/s over the GB/s of implementation ``ref`` in
    group ``ref_group`` at least ``value``).
    """
    lines = []
    for t in targets:
        ours = _find(rows, t["group"], _is_ours)
        if t.get("impl"):
            ours = [r for r in ours if r["impl"] == t["impl"]]
        if not ours:
            lines.append(f"  ?     {t['name']}: no measurement of group {t['group']!r}")
            continue
        best = min(ours, key=lambda r: r["seconds"])
        if t["kind"] == "max_seconds":
            ok = best["seconds"] <= t["value"]
            got = (
                f"{_fmt_time(best['seconds']).strip()} (target <= {_fmt_time(t['value']).strip()})"
            )
        elif t["kind"] == "min_speedup":
            peers = [r for r in _find(rows, t["group"], lambda i: not _is_ours(i))]
            if t.get("peers"):
                peers = [r for r in peers if r["impl"] in t["peers"]]
            if not peers:
                lines.append(f"  ?     {t['name']}: no peer measured")
                continue
            fastest = min(peers, key=lambda r: r["seconds"])
            ratio = fastest["seconds"] / best["seconds"]
            ok = ratio >= t["value"]
            got = f"{ratio:.2f}x vs {fastest['impl']} (target >= {t['value']}x)"
        elif t["kind"] == "min_fraction_of":
            refs = _find(rows, t["ref_group"], lambda i, ref=t["ref"]: i == ref)
            if not refs or not best.get("gbps") or not refs[0].get("gbps"):
                lines.append(f"  ?     {t['name']}: reference not measured")
                continue
            frac = best["gbps"] / refs[0]["gbps"]
            ok = frac >= t["value"]
            got = f"{frac:.0%} of {t['ref']} (target >= {t['value']:.0%})"
        else:
            raise ValueError(f"unknown target kind {t['kind']!r}")
        lines.append(f"  {'MET ' if ok else 'MISS'}  {t['name']}: {got}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark cases and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    parser.add_argument("--only", choices=CASES, action="append", help="run only these cases")
    parser.add_argument("--markdown", metavar="PATH", help="also write markdown tables here")
    args = parser.parse_args(argv)

    rows: list[dict] = []
    targets: list[dict] = []
    started = time.perf_counter()
    print(f"machine: {machine()}")
    print(f"mode: {'quick (smoke test sizes)' if args.quick else 'full'}")
    for name in args.only or CASES:
        module = importlib.import_module(f"cases_{name}")
        t0 = time.perf_counter()
        new_rows = module.run(quick=args.quick)
        rows.extend(new_rows)
        targets.extend(getattr(module, "TARGETS", []))
        print(render_text(new_rows))
        print(f"  [{name}: {time.perf_counter() - t0:.1f} s]")
    if not args.quick:
        print("\ntargets:")
        print("\n".join(check_targets(rows, targets)))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(f"Machine: {machine()}\n")
            f.write(render_markdown(rows) + "\n\nTargets:\n\n```\n")
            f.write("\n".join(check_targets(rows, targets)) + "\n```\n")
    bad = [r for r in rows if not (r["seconds"] > 0)]
    if bad:
        print(f"invalid measurements: {bad}", file=sys.stderr)
        return 1
    print(f"\n{len(rows)} measurements in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
