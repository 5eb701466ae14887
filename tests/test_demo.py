"""``dask oxigdal demo --json``: the multi-tenant scenario, run for real, figures checked."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys

import geopandas

from dask_oxigdal.demo import DEMO_TENANTS, GANG_SIZE, countries_path, policy_counters

DASK = os.path.join(os.path.dirname(sys.executable), "dask")


def _check_ndvi_summary(summary: dict, size: int, tiles: int) -> None:
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


def test_demo_json_figures_are_consistent():
    size, tiles = 384, 4
    out = subprocess.run(
        [DASK, "oxigdal", "demo", "--json", "--size", str(size), "--tiles", str(tiles)],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    s = json.loads(out.stdout)
    _check_ndvi_summary(s, size, tiles)
    assert "LocalCluster(2 workers" in s["cluster"]
    # the killed worker's results were recomputed: only live workers hold results
    assert 1 <= len(s["tasks_per_worker"]) <= 2

    # NDVI: every tile present, every valid tile's NDVI in [-1, 1]
    per_tile = s["per_tile"]
    assert sorted(t["tile"] for t in per_tile) == list(range(tiles * tiles))
    assert sum(t["pixels"] for t in per_tile) == size * size
    for t in per_tile:
        assert t["valid"] + t["nodata"] == t["pixels"]
        if t["valid"]:
            assert -1.0 <= t["ndvi_min"] <= t["ndvi_mean"] <= t["ndvi_max"] <= 1.0
        else:
            assert t["ndvi_mean"] is None
    assert sum(t["valid"] for t in per_tile) > 0.8 * size * size

    # tenants: shares sum to 1, entitled shares follow the weights
    tenants = s["tenants"]
    assert set(tenants) == set(DEMO_TENANTS)
    assert math.isclose(sum(t["share"] for t in tenants.values()), 1.0)
    assert math.isclose(sum(t["entitled_share"] for t in tenants.values()), 1.0)
    total_weight = sum(DEMO_TENANTS.values())
    for name, t in tenants.items():
        assert t["weight"] == DEMO_TENANTS[name]
        assert math.isclose(t["entitled_share"], DEMO_TENANTS[name] / total_weight)
        assert t["completed"] >= t["tasks"]  # recomputed tasks count again
        assert t["worker_seconds"] > 0
    contended = [t["contended_share"] for t in tenants.values()]
    if s["contention_seconds"] > 0:
        assert math.isclose(sum(contended), 1.0)

    # the deadline verdict agrees with its figures
    d = s["deadline"]
    assert d["met"] == (d["finished_s"] <= d["deadline_s"])

    # the gang rendezvoused (members secede while they wait: no deadlock possible)
    assert s["gang"]["members"] == GANG_SIZE
    assert s["gang"]["rendezvous"] is True

    # vector: both partitionings cover every country exactly once
    countries = geopandas.read_file(countries_path())
    for scheme in ("hash", "hilbert"):
        v = s["vector"][scheme]
        assert v["countries"] == len(countries)
        assert v["iso_a3"] == sorted(countries["iso_a3"])
        assert math.isclose(v["population"], float(countries["pop_est"].sum()))
    hilbert = s["vector"]["hilbert"]["countries_per_partition"]
    assert max(hilbert) - min(hilbert) <= 1  # Hilbert cuts balance the rows

    # a worker was killed mid-run and the run recovered
    k = s["kill"]
    assert k["done"] and k.get("died") and k["recovered"], k
    assert k["workers_after"] >= 2

    # every default policy reports: the gang started through the Gang policy, the
    # NDVI job's deadline was counted (met or missed) by the Deadline policy
    p = s["policies"]
    for name, value in p.items():
        assert value is not None and value >= 0, name
    assert p["gangs_started"] >= 1
    assert p["deadlines_met" if d["met"] else "deadlines_missed"] >= 1
    assert p["deadlines_failed"] == 0  # no deadline task erred

    # per tenant: the gang is research's, the deadline imagery's, and the
    # per-tenant counters add up to the cluster-wide ones
    assert tenants["research"]["gangs_started"] >= 1
    assert tenants["imagery"]["gangs_started"] == tenants["vector"]["gangs_started"] == 0
    assert sum(t["gangs_started"] for t in tenants.values()) == p["gangs_started"]
    imagery = tenants["imagery"]
    assert imagery["deadlines_met" if d["met"] else "deadlines_missed"] >= 1
    for key in ("deadlines_met", "deadlines_missed", "deadlines_failed"):
        assert sum(t[key] for t in tenants.values()) == p[key], key
    assert tenants["vector"]["deadlines_met"] == tenants["vector"]["deadlines_missed"] == 0

    # the embedded coordinator kept the policy state in its journal
    coordinator = s["coordinator"]
    assert coordinator["role"] == "leader" and coordinator["commit_index"] > 0, coordinator
    assert s["urls"]["oxigdal"].endswith("/oxigdal/")
    assert "tiles done" in out.stderr


def test_policy_counters_read_defensively():
    status = {
        "policies": {
            "Deadline": {"met": {"a": {"batch": 2}, "b": {"batch": 1}}, "missed": {}},
            "Quarantine": {"quarantined": ["tcp://w1", "tcp://w2"]},
            "Gang": {"started": 3},
        }
    }
    c = policy_counters(status)
    assert c["deadlines_met"] == 3
    assert c["deadlines_missed"] == 0
    assert c["quarantined_workers"] == 2
    assert c["gangs_started"] == 3
    assert c["retries"] is None and c["straggler_backups"] is None
    assert policy_counters({})["gangs_started"] is None


def _default_sigint():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_keep_alive_leaves_the_cluster_up_until_interrupted(tmp_path):
    import re
    import signal
    import urllib.request

    err = open(tmp_path / "stderr.log", "w+")  # shown when the demo does not stop
    proc = subprocess.Popen(
        [
            DASK,
            "oxigdal",
            "demo",
            "--keep-alive",
            "--no-kill-worker",
            "--size",
            "128",
            "--tiles",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        # SIGABRT makes faulthandler print every thread's stack (see below)
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        # Ctrl-C as in a terminal: a pytest started in the background by a shell
        # without job control ignores SIGINT, and the demo would inherit that
        preexec_fn=_default_sigint,
    )

    def stderr_tail():
        err.flush()
        err.seek(0)
        return err.read()[-12000:]

    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "cluster kept alive" in line:
                break
        out = "".join(lines)
        assert "== dask-oxigdal demo: summary ==" in out
        url = re.search(r"oxigdal page\s+(\S+)", out).group(1)
        # the cluster is still up: the page's state shows the demo's tenants
        state = json.loads(urllib.request.urlopen(url + "state.json", timeout=60).read())
        assert state["installed"] and set(DEMO_TENANTS) <= set(state["snapshot"]["tenants"])
        assert state["totals"]["completed"] >= 4
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # where is it stuck?
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            raise AssertionError(f"the demo did not stop on SIGINT:\n{stderr_tail()}") from None
        assert rc == 0, stderr_tail()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        proc.stdout.close()
        err.close()
