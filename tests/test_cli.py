"""`dask oxigdal ...`: the CLI entry point and the demo, run for real."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster

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


@pytest.mark.parametrize("value", ["abc", "-5s", "0"])
def test_bad_deadline_is_a_usage_error_naming_the_value(value):
    result = CliRunner().invoke(oxigdal, ["demo", "--deadline", value])
    assert result.exit_code == 2, result.output  # click's usage error, no traceback
    assert "--deadline" in result.output and repr(value) in result.output
    assert isinstance(result.exception, SystemExit)  # not a ValueError traceback


def test_more_tiles_than_pixels_is_a_usage_error():
    result = CliRunner().invoke(oxigdal, ["demo", "--size", "32", "--tiles", "64"])
    assert result.exit_code == 2, result.output
    assert "--tiles" in result.output and "64" in result.output and "32" in result.output


def test_run_demo_rejects_bad_arguments_before_starting_a_cluster():
    from dask_oxigdal.demo import run_demo

    with pytest.raises(ValueError, match=r"'soon'.*90s"):
        run_demo(deadline="soon")
    with pytest.raises(ValueError, match=r"tiles=40.*size=32"):
        run_demo(size=32, tiles=40)


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


def test_demo_text_summary_against_an_existing_scheduler(tmp_path):
    size, tiles = 128, 2
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        # the user's own extension, with a tenant of theirs
        dask_oxigdal.register(client, tenants={"team-x": 5})
        workers_before = set(client.scheduler_info()["workers"])
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
                "--report-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=True,
        )
        # no worker of an existing cluster is killed unless --kill-worker asks
        assert set(client.scheduler_info()["workers"]) == workers_before
        # the replaced extension kept the user's tenant next to the demo's
        tenants = dask_oxigdal.status(client)["tenants"]
        assert tenants["team-x"]["weight"] == 5
        assert {"imagery", "vector", "research"} <= set(tenants)
    assert "== dask-oxigdal demo: summary ==" in out.stdout
    assert f"tiles              {tiles * tiles}" in out.stdout
    assert cluster.scheduler_address in out.stdout
    assert "worker killed" not in out.stdout


def test_password_on_the_command_line_warns_and_the_environment_does_not():
    args = ["membership", "status", "--connect", "127.0.0.1:1", "--timeout", "0.2"]
    loud = CliRunner().invoke(oxigdal, [*args, "--password", "s3cret"])
    assert "visible to every local user" in loud.stderr
    quiet = CliRunner().invoke(oxigdal, args, env={"OXIGDAL_COORDINATOR_PASSWORD": "s3cret"})
    assert "visible to every local user" not in quiet.stderr
    # nothing listens on port 1: both fail cleanly, naming the node
    for result in (loud, quiet):
        assert result.exit_code == 1 and "127.0.0.1:1" in result.output, result.output
