"""`dask oxigdal ...`: the CLI entry point and the demo, run for real."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from distributed import LocalCluster

import dask_oxigdal
from dask_oxigdal.cli import oxigdal
from dask_oxigdal.demo import plan_tiles

DASK = os.path.join(os.path.dirname(sys.executable), "dask")


def test_version_through_the_dask_entry_point():
    out = subprocess.run(
        [DASK, "oxigdal", "--version"], capture_output=True, text=True, timeout=120, check=True
    )
    assert dask_oxigdal.__version__ in out.stdout


def test_bad_option_names_the_value():
    result = CliRunner().invoke(oxigdal, ["demo", "--tiles", "0"])
    assert result.exit_code != 0
    assert "0" in result.output and "--tiles" in result.output


def test_plan_tiles_covers_the_scene_exactly():
    size, tiles = 37, 4  # not a multiple: windows differ by at most one pixel
    plan = plan_tiles(size, tiles)
    assert len(plan) == tiles * tiles
    covered = [[0] * size for _ in range(size)]
    for p in plan:
        r0, r1, c0, c1 = p["window"]
        assert r1 - r0 in (size // tiles, size // tiles + 1)
        for r in range(r0, r1):
            for c in range(c0, c1):
                covered[r][c] += 1
    assert all(v == 1 for row in covered for v in row)
    with pytest.raises(ValueError, match="tiles=40"):
        plan_tiles(size, 40)


def _check_summary(summary: dict, size: int, tiles: int) -> None:
    assert summary["tiles"] == tiles * tiles
    assert summary["pixels"] == size * size
    assert summary["valid_pixels"] + summary["nodata_pixels"] == size * size
    assert 0 < summary["nodata_pixels"] < size * size  # the swath-edge triangle
    per_tile = summary["per_tile"]
    assert sorted(t["tile"] for t in per_tile) == list(range(tiles * tiles))
    for t in per_tile:
        if t["valid"]:
            assert -1.0 <= t["ndvi_min"] <= t["ndvi_mean"] <= t["ndvi_max"] <= 1.0
        else:
            assert t["ndvi_mean"] is None
        assert t["water"] + t["vegetation"] + t["bare"] == t["valid"]
    cover = summary["land_cover"]
    assert math.isclose(cover["water"] + cover["vegetation"] + cover["bare"], 1.0)
    # the synthetic scene has all three covers
    assert min(cover.values()) > 0.01
    assert sum(summary["tasks_per_worker"].values()) == tiles * tiles


def test_demo_json_on_an_embedded_cluster():
    size, tiles = 256, 4
    out = subprocess.run(
        [DASK, "oxigdal", "demo", "--json", "--size", str(size), "--tiles", str(tiles)],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    summary = json.loads(out.stdout)
    _check_summary(summary, size, tiles)
    assert "LocalCluster(2 workers" in summary["cluster"]
    # the killed worker's results were recomputed: only live workers hold results
    assert 1 <= len(summary["tasks_per_worker"]) <= 2
    assert "tiles done" in out.stderr  # progress goes to stderr in --json mode


def test_demo_text_summary_against_an_existing_scheduler():
    size, tiles = 128, 2
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0"
    ) as cluster:
        out = subprocess.run(
            [
                DASK,
                "oxigdal",
                "demo",
                "--scheduler",
                cluster.scheduler_address,
                "--size",
                str(size),
                "--tiles",
                str(tiles),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=True,
        )
    assert "== dask-oxigdal demo: summary ==" in out.stdout
    assert f"tiles              {tiles * tiles}" in out.stdout
    assert cluster.scheduler_address in out.stdout
