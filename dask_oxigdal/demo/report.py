"""The demo's report: a side-by-side text table, a PNG (matplotlib) and an HTML page.

Every figure is read from the summary of :func:`~dask_oxigdal.demo.run.run_demo`,
which holds one run's measurements per side (``"plain"``, ``"ours"``).
"""

from __future__ import annotations

import html
import os
from typing import Any

from dask_oxigdal.demo.workloads import DEMO_TENANTS

SIDES = (("plain", "plain Dask"), ("ours", "dask-oxigdal"))
COLOURS = {"imagery": "#2a9d8f", "vector": "#e9c46a", "research": "#8e7dbe"}


def _fmt(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "-" if value is None else f"{format(value, spec)}{unit}"


def rows(summary: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The comparison table: ``(label, [cell per side])`` for each side present.

    Parameters
    ----------
    summary : dict
        As returned by :func:`~dask_oxigdal.demo.run.run_demo` (or ``{"ours": ...}``).

    Returns
    -------
    list of tuple
    """
    sides = [s for s, _ in SIDES if summary.get(s)]
    out: list[tuple[str, list[str]]] = []

    def add(label: str, cell: Any) -> None:
        out.append((label, [cell(summary[s]) for s in sides]))

    for tenant, weight in DEMO_TENANTS.items():
        add(
            f"{tenant} (weight {weight:g}) contended share / entitled",
            lambda r, t=tenant: (
                f"{r['tenants'][t]['contended_share']:.1%} / {r['tenants'][t]['entitled_share']:.1%}"
            ),
        )
    add("Jain index of shares / entitlement", lambda r: _fmt(r["jain_contended"], ".3f"))
    add("contended time", lambda r: _fmt(r["contention_seconds"], ".1f", " s"))
    add(
        "late tenant's wait for its first task",
        lambda r: f"{r['late_tenant']['tenant']}: {_fmt(r['late_tenant']['wait_s'], '.2f', ' s')}",
    )
    add(
        "deadline hit rate",
        lambda r: (
            f"{_fmt(r['deadline_hit_rate'], '.0%')} "
            f"({sum(j['met'] for j in r['deadline_jobs'])}/{len(r['deadline_jobs'])} jobs)"
        ),
    )
    add("gangs that rendezvoused", lambda r: _gangs(r, "met"))
    add("gang start skew (largest)", lambda r: _gangs(r, "skew"))
    add("gang members timed out", lambda r: _gangs(r, "timed_out"))
    add("thread-seconds waiting at barriers", lambda r: _gangs(r, "wait"))
    add(
        "straggler's result after",
        lambda r: (
            "-"
            if not r.get("straggler")
            else f"{r['straggler']['result_after_s']:.2f} s ({_n(r['straggler']['attempts'], 'attempt')}; "
            f"typical task {_fmt(r['straggler']['typical_s'])} s)"
        ),
    )
    add("a worker SIGKILLed at", lambda r: _kill(r, "at"))
    add("  attempts lost with it", lambda r: _kill(r, "lost"))
    add("  results recomputed", lambda r: _kill(r, "recomputed"))
    add("  replacement joined after", lambda r: _kill(r, "replaced"))
    add("day's makespan", lambda r: _fmt(r["makespan_s"], ".1f", " s"))
    return out


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _gangs(r: dict[str, Any], what: str) -> str:
    gangs = r.get("gangs") or []
    if not gangs:
        return "-"
    if what == "met":
        return f"{sum(g['rendezvous'] for g in gangs)}/{len(gangs)}"
    if what == "skew":
        return _fmt(max((g["start_skew_s"] or 0.0) for g in gangs), ".2f", " s")
    if what == "timed_out":
        n = sum(g["timed_out"] for g in gangs)
        return f"{n} (deadlock cut off by the timeout)" if n else "0"
    return f"{sum(g['barrier_wait_s'] for g in gangs):.1f} s"


def _kill(r: dict[str, Any], what: str) -> str:
    k = r.get("kill") or {}
    if not k.get("done"):
        return (
            ("not killed" + (f" ({k['skipped']})" if k.get("skipped") else ""))
            if what == "at"
            else "-"
        )
    if what == "at":
        return f"{k['at_s']:.1f} s"
    if what == "lost":
        return f"{k['attempts_lost']} ({k['lost_worker_seconds']:.1f} worker-s)"
    if what == "recomputed":
        return f"{k['results_recomputed']} ({k['recompute_worker_seconds']:.1f} worker-s)"
    return _fmt(k.get("replaced_after_s"), ".1f", " s")


def _secure_lines(sec: dict[str, Any] | None) -> list[str]:
    """``--secure``: who ran what, the refused claim, the audit chain's verdict."""
    if not sec:
        return []
    lines = ["security           mutual TLS" + (", oxigdal.auth on" if sec.get("auth") else "")]
    for name, p in (sec.get("principals") or {}).items():
        lines.append(f"  principal {name:14s} ran {p['tasks']} task(s) of tenant {p['tenant']}")
    if sec.get("refused_claim"):
        lines.append(f"  refused: {_short(sec['refused_claim'], 150)}")
    audit = sec.get("audit")
    if audit:
        verdict = "verified" if audit.get("verified") else "BROKEN"
        lines.append(f"audit log          {audit['entries']} entries, HMAC chain {verdict}")
    return lines


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_summary(summary: dict[str, Any]) -> str:
    """Render the summary as a text table, plain Dask and dask-oxigdal side by side.

    Parameters
    ----------
    summary : dict
        As returned by :func:`~dask_oxigdal.demo.run.run_demo`.

    Returns
    -------
    str
    """
    sides = [(s, name) for s, name in SIDES if summary.get(s)]
    table = rows(summary)
    width = max(len(label) for label, _ in table)
    cols = [max(len(name), *(len(c[i]) for _, c in table)) for i, (_, name) in enumerate(sides)]
    ours = summary["ours"]
    lines = ["", "== dask-oxigdal demo: summary =="]
    lines.append(f"cluster            {ours.get('cluster', '?')}")
    ndvi = ours["ndvi"]
    lines.append(f"tiles              {ndvi['tiles']}")
    lines.append(
        f"mosaic             {ndvi['pixels']:,} pixels, mean NDVI {_fmt(ndvi['ndvi_mean'], '.3f')}"
    )
    lines.append("")
    header = (
        " " * width + "  " + "  ".join(n.ljust(c) for (_, n), c in zip(sides, cols, strict=True))
    )
    lines.append(header.rstrip())
    for label, cells in table:
        lines.append(
            (
                label.ljust(width)
                + "  "
                + "  ".join(c.ljust(w) for c, w in zip(cells, cols, strict=True))
            ).rstrip()
        )
    p = ours.get("policies")
    if p is not None:
        lines.append("")
        lines.append(
            "policies           "
            + ", ".join(f"{n.replace('_', ' ')} {'n/a' if v is None else v}" for n, v in p.items())
        )
    coordinator = ours.get("coordinator")
    if coordinator:
        role = coordinator.get("role")
        lines.append(
            "coordinator        disabled"
            if role == "disabled"
            else f"coordinator        {role}, commit index {coordinator.get('commit_index')}"
        )
    lines.extend(_secure_lines(ours.get("secure")))
    links = ours.get("urls") or {}
    if links:
        lines.append(f"dashboard          {links['dashboard']}")
        lines.append(f"oxigdal page       {links['oxigdal']}  (metrics: {links['metrics']})")
    if summary.get("duration_s") is not None:
        lines.append(f"demo duration      {summary['duration_s']:.1f} s")
    report = summary.get("report") or {}
    if report.get("html"):
        lines.append(f"report             {report['html']}  (picture: {report['png']})")
    return "\n".join(lines)


def draw(summary: dict[str, Any], path: str) -> str:
    """Draw the side-by-side picture as a PNG.

    Top row: each side's timeline (one row per worker process, tasks
    coloured by tenant, the contended time shaded, the kill marked). Bottom:
    contended share against entitlement per tenant, and the headline figures.

    Parameters
    ----------
    summary : dict
    path : str
        PNG file to write.

    Returns
    -------
    str
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sides = [(s, name) for s, name in SIDES if summary.get(s)]
    fig = plt.figure(figsize=(13, 7.5), dpi=100)
    grid = fig.add_gridspec(2, max(len(sides), 2), height_ratios=[1.15, 1])
    end = max(summary[s]["makespan_s"] for s, _ in sides) * 1.03
    for i, (side, name) in enumerate(sides):
        ax = fig.add_subplot(grid[0, i])
        _timeline(ax, summary[side], end)
        ax.set_title(f"{name}: who ran when", fontsize=11)
    handles = [matplotlib_patch(c, t) for t, c in COLOURS.items()]
    handles.append(matplotlib_patch(COLOURS["research"], "gang member", hatch="//"))
    handles.append(matplotlib_patch("white", "killed attempt", hatch="xx"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=5, fontsize=8)
    ax = fig.add_subplot(grid[1, 0])
    _shares(ax, summary, sides)
    ax = fig.add_subplot(grid[1, 1])
    ax.axis("off")
    cells = [[label] + [cell(summary[s]) for s, _ in sides] for label, cell in _PICTURE_ROWS]
    table = ax.table(
        cellText=cells,
        colLabels=[""] + [name for _, name in sides],
        colWidths=[0.24] + [0.76 / len(sides)] * len(sides),
        loc="center",
        cellLoc="left",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.9)
    for (row, _col), c in table.get_celld().items():
        c.set_edgecolor("#cccccc")
        if row == 0:
            c.set_text_props(weight="bold")
    fig.suptitle(
        f"The same multi-tenant day on identical clusters (seed {summary.get('seed')})",
        fontsize=13,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path)
    plt.close(fig)
    return path


def _picture_gangs(r: dict[str, Any]) -> str:
    gangs = r.get("gangs") or []
    if not gangs:
        return "-"
    ok = sum(g["rendezvous"] for g in gangs)
    if any(g["timed_out"] for g in gangs):
        return f"{ok}/{len(gangs)} met: deadlock, timed out"
    skew = max((g["start_skew_s"] or 0.0) for g in gangs)
    return f"{ok}/{len(gangs)} met, start skew {skew:.2f} s"


def _picture_kill(r: dict[str, Any]) -> str:
    k = r.get("kill") or {}
    if not k.get("done"):
        return "not killed"
    return (
        f"{k['attempts_lost']} lost ({k['lost_worker_seconds']:.1f} s), "
        f"{k['results_recomputed']} recomputed"
    )


_PICTURE_ROWS: tuple[tuple[str, Any], ...] = (
    ("Jain index (shares)", lambda r: _fmt(r["jain_contended"], ".3f")),
    ("late tenant's wait", lambda r: _fmt(r["late_tenant"]["wait_s"], ".2f", " s")),
    (
        "deadline hit rate",
        lambda r: (
            f"{_fmt(r['deadline_hit_rate'], '.0%')} "
            f"({sum(j['met'] for j in r['deadline_jobs'])}/{len(r['deadline_jobs'])} jobs)"
        ),
    ),
    ("gangs", _picture_gangs),
    (
        "straggler's result",
        lambda r: (
            "-"
            if not r.get("straggler")
            else f"after {r['straggler']['result_after_s']:.2f} s "
            f"({r['straggler']['attempts']} attempt{'s' if r['straggler']['attempts'] > 1 else ''})"
        ),
    ),
    ("killed worker", _picture_kill),
    ("day's makespan", lambda r: _fmt(r["makespan_s"], ".1f", " s")),
)


def _timeline(ax: Any, run: dict[str, Any], end: float) -> None:
    workers: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for a in run["timeline"]:
        workers.setdefault((a["worker"], 0), []).append(a)
    # one lane per concurrently running attempt of each worker
    lanes: list[list[tuple[float, float, str, bool, str]]] = []
    for (_worker, _), attempts in sorted(workers.items()):
        mine: list[list[tuple[float, float, str, bool, str]]] = []
        for a in sorted(attempts, key=lambda a: a["start"]):
            for lane in mine:
                if lane[-1][1] <= a["start"] + 1e-3:
                    lane.append((a["start"], a["stop"], a["tenant"], a["killed"], a["kind"]))
                    break
            else:
                mine.append([(a["start"], a["stop"], a["tenant"], a["killed"], a["kind"])])
        lanes += mine
    for a, b in run.get("contended") or []:
        ax.axvspan(a, b, color="#eeeeee", zorder=0)
    for y, lane in enumerate(lanes):
        for start, stop, tenant, killed, kind in lane:
            ax.broken_barh(
                [(start, max(stop - start, 0.01))],
                (y + 0.1, 0.8),
                facecolors=COLOURS.get(tenant, "grey"),
                edgecolors="black" if (killed or kind == "gang") else "none",
                hatch="xx" if killed else ("//" if kind == "gang" else None),
                linewidth=0.3,
            )
    kill = run.get("kill") or {}
    if kill.get("done"):
        ax.axvline(kill["at_s"], color="red", linewidth=1.2)
        ax.text(kill["at_s"], len(lanes) + 0.1, " worker killed", color="red", fontsize=8)
    for job in run.get("deadline_jobs") or []:
        ax.plot(
            [job["submitted_s"] + job["deadline_s"]],
            [-0.35],
            marker="^",
            color="green" if job["met"] else "red",
            markersize=7,
            clip_on=False,
        )
    ax.set_xlim(0, end)
    ax.set_ylim(-0.6, len(lanes) + 0.8)
    ax.set_yticks([])
    ax.set_ylabel("worker threads")
    ax.set_xlabel("seconds (grey: all three tenants have work; ▲ quick-look deadline met/missed)")


def matplotlib_patch(colour: str, label: str, hatch: str | None = None) -> Any:
    """A legend entry of one colour (and hatch)."""
    from matplotlib.patches import Patch

    return Patch(facecolor=colour, label=label, hatch=hatch, edgecolor="black" if hatch else None)


def _shares(ax: Any, summary: dict[str, Any], sides: list[tuple[str, str]]) -> None:
    tenants = list(DEMO_TENANTS)
    width = 0.8 / (len(sides) + 1)
    for i, tenant in enumerate(tenants):
        entitled = summary["ours"]["tenants"][tenant]["entitled_share"]
        ax.bar(
            i,
            entitled,
            width,
            color="white",
            edgecolor="black",
            hatch="//",
            label="entitled" if i == 0 else None,
        )
        for j, (side, name) in enumerate(sides):
            share = summary[side]["tenants"][tenant]["contended_share"]
            ax.bar(
                i + (j + 1) * width,
                share,
                width,
                color=COLOURS[tenant],
                alpha=0.45 if side == "plain" else 1.0,
                label=name if i == 0 else None,
            )
            ax.text(i + (j + 1) * width, share + 0.01, f"{share:.0%}", ha="center", fontsize=7)
    ax.set_xticks([i + width * len(sides) / 2 for i in range(len(tenants))])
    ax.set_xticklabels([f"{t} (weight {DEMO_TENANTS[t]:g})" for t in tenants])
    ax.set_ylabel("share of worker time while contended")
    ax.set_ylim(0, 1.05)
    labels = ", ".join(
        f"{name}: Jain {_fmt(summary[s]['jain_contended'], '.2f')}" for s, name in sides
    )
    ax.set_title(f"contended share vs entitlement (pale: plain Dask)\n{labels}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")


def write_html(summary: dict[str, Any], path: str, png: str) -> str:
    """Write the HTML report (the table, the picture, each deadline job) to ``path``.

    Parameters
    ----------
    summary : dict
    path : str
    png : str
        The picture, referenced by its file name (it sits next to the page).

    Returns
    -------
    str
        ``path``.
    """
    sides = [(s, name) for s, name in SIDES if summary.get(s)]
    e = html.escape
    head = "".join(f"<th>{e(n)}</th>" for _, n in sides)
    body = "".join(
        f"<tr><td>{e(label)}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>"
        for label, cells in rows(summary)
    )
    jobs = ""
    for side, name in sides:
        for j in summary[side]["deadline_jobs"]:
            jobs += (
                f"<tr><td>{e(name)}</td><td>{e(j['name'])}</td><td>{j['submitted_s']:.1f} s</td>"
                f"<td>{j['deadline_s']:.1f} s</td><td>{_fmt(j['finished_in_s'], '.2f', ' s')}</td>"
                f"<td>{'met' if j['met'] else 'MISSED'}</td></tr>"
            )
    ours = summary["ours"]
    link = (ours.get("urls") or {}).get("oxigdal", "")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dask-oxigdal demo</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style>
</head><body>
<h1>dask-oxigdal demo: the same day on plain Dask and with dask-oxigdal</h1>
<p>Seed {e(str(summary.get("seed")))}; {e(ours.get("cluster", ""))} for each side;
the demo took {_fmt(summary.get("duration_s"), ".1f", " s")}.
Live page of the dask-oxigdal run (while its cluster is up): <a href="{e(link)}">{e(link)}</a></p>
<img src="{e(os.path.basename(png))}" alt="side-by-side picture" style="max-width:100%">
<h2>Side by side</h2>
<table><tr><th></th>{head}</tr>{body}</table>
<h2>Deadline jobs</h2>
<table><tr><th>run</th><th>job</th><th>submitted</th><th>deadline</th><th>finished in</th>
<th></th></tr>{jobs}</table>
</body></html>
"""
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def write_report(summary: dict[str, Any], directory: str) -> dict[str, str]:
    """Write ``demo.png`` and ``demo.html`` into ``directory`` (created if needed).

    Parameters
    ----------
    summary : dict
    directory : str

    Returns
    -------
    dict
        ``{"png": absolute path, "html": absolute path}``.
    """
    os.makedirs(directory, exist_ok=True)
    png = os.path.abspath(os.path.join(directory, "demo.png"))
    page = os.path.abspath(os.path.join(directory, "demo.html"))
    draw(summary, png)
    write_html(summary, page, png)
    return {"png": png, "html": page}
