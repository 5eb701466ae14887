"""Every script in examples/ runs to completion and prints what its docstring promises."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def _run(name: str, *args: str, cwd: str | None = None) -> str:
    out = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *args],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=cwd,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_every_example_script_is_covered_here():
    scripts = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py"))
    with open(__file__) as f:
        tested = set(re.findall(r'_run\("([\w.]+\.py)"', f.read()))
    assert scripts == sorted(tested)


def test_alerts_example_receives_both_alerts():
    out = _run("alerts.py")
    received = re.search(r"(\d+) alert\(s\) received: (\[.*\])", out)
    assert received, out
    names = ast.literal_eval(received.group(2))
    assert {"backlog", "task-duration-anomaly"} <= set(names)
    assert re.search(r"ALERT \[warning\] backlog: tenant-queued of team-a is \d+ \(> 20\)", out)


def test_fair_share_example_gives_the_weighted_shares():
    out = _run("fair_share.py", "--tasks", "200")
    m = re.search(r"share of worker-time (\{.*?\})", out)
    assert m, out
    share = ast.literal_eval(m.group(1))
    assert set(share) == {"a", "b", "c"}
    # weights 2:1:1 -> 0.5 / 0.25 / 0.25; plain Dask gives about a third each
    assert share["a"] > 0.4 and share["a"] > share["b"] + 0.1 and share["a"] > share["c"] + 0.1


def test_gangs_and_deadlines_example():
    out = _run("gangs_and_deadlines.py")
    assert "['A-0 ok', 'A-1 ok', 'A-2 ok', 'B-0 ok', 'B-1 ok', 'B-2 ok']" in out
    assert "refused: gang 'huge' needs 5 worker slots" in out
    events = ast.literal_eval(re.search(r"events: (\[.*\])", out).group(1))
    assert events.count("gang-started") == 2 and "gang-refused" in events
    assert "deadline-missed" in events
    gang = ast.literal_eval(re.search(r"Gang: (\{.*\})", out).group(1))
    assert gang["started"] == 2 and gang["refused"] == 1


def test_geo_workflow_example_matches_the_single_machine_answers():
    out = _run("geo_workflow.py")
    sizes = ast.literal_eval(re.search(r"in 8 Hilbert partitions of sizes (\[.*\])", out).group(1))
    assert sum(sizes) == 177 and max(sizes) - min(sizes) <= 1
    assert "equal to geopandas.sjoin: True" in out
    assert "kNN: equal to cKDTree: True" in out
    passes = re.findall(r"NDVI pass (\d): .*?(\d+)/16 tiles from the worker cache", out)
    assert [p for p, _ in passes] == ["1", "2", "3"]
    # passes 2 and 3 run where pass 1 cached the tiles (the Locality policy)
    assert int(passes[1][1]) >= 12 and int(passes[2][1]) >= 12, passes


def test_imagery_classification_example_writes_the_classes_png(tmp_path):
    png = tmp_path / "classes.png"
    out = _run("imagery_classification.py", "--size", "128", "--out", str(png))
    assert "labels: dims ('y', 'x'), coords kept: True" in out
    shares = [float(s) for s in re.findall(r"class \d: +([\d.]+)% of the pixels", out)]
    assert len(shares) == 5 and abs(sum(shares) - 100) < 0.5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_geofencing_example_matches_sjoin_and_reports_events():
    out = _run("geofencing.py", "--vehicles", "50", "--steps", "20")
    assert "matches equal to geopandas.sjoin(within): True" in out
    m = re.search(r"events: (\d+) enter, (\d+) exit over 20 batches", out)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, out


def test_durable_workflow_example_runs_and_a_second_run_returns_the_record(tmp_path):
    """The example's checkpoint store is relative (.oxigdal/checkpoints): run it in tmp_path."""
    first = _run("durable_workflow.py", cwd=str(tmp_path))
    result = re.search(r"(\{'scene': \d+, 'threshold': [\d.e-]+\}) (\{.*\})", first)
    assert result, first
    steps = ast.literal_eval(result.group(2))
    assert steps["done"] == steps["submitted"] > 0 and steps["failed"] == 0
    # the second run finds the finished workflow and returns its recorded result
    second = _run("durable_workflow.py", cwd=str(tmp_path))
    assert result.group(1) in second, second
    assert (tmp_path / ".oxigdal" / "checkpoints").is_dir()
