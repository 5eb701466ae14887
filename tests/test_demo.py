"""``dask oxigdal demo``: the same day on plain Dask and with dask-oxigdal, run for real.

The side-by-side run is the demo's default (two LocalClusters of 2 process
workers x 2 threads, one after the other, a worker killed in each). Its
figures are checked against each other, against the report it wrote, and
against a ``--quick`` run with another seed. No wall-clock assertions: the
comparisons are between the two halves of one run.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import re
import subprocess
import sys

import pytest

from dask_oxigdal.demo import (
    DEMO_TENANTS,
    countries_path,
    format_summary,
    jain,
    policy_counters,
)
from dask_oxigdal.demo.report import rows
from dask_oxigdal.demo.sampler import attempts_from_trace, measure

DASK = os.path.join(os.path.dirname(sys.executable), "dask")


def _demo(tmp_path, *args, timeout=240):
    out = subprocess.run(
        [DASK, "oxigdal", "demo", "--json", "--report-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-6000:]
    return json.loads(out.stdout), out.stderr


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory):
    """One full demo run (plain Dask, then dask-oxigdal), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("demo")
    return _demo(tmp, timeout=300)


def _check_tenants(run: dict) -> None:
    tenants = run["tenants"]
    assert set(tenants) == set(DEMO_TENANTS)
    total_weight = sum(DEMO_TENANTS.values())
    for name, t in tenants.items():
        assert math.isclose(t["entitled_share"], DEMO_TENANTS[name] / total_weight)
        assert 0.0 <= t["contended_share"] <= 1.0
        assert t["completed"] == t["tasks"] > 0, (name, t)
    assert math.isclose(sum(t["contended_share"] for t in tenants.values()), 1.0)
    ratios = [t["contended_share"] / t["entitled_share"] for t in tenants.values()]
    assert math.isclose(run["jain_contended"], jain(ratios))
    assert run["contention_seconds"] > 0


def test_ours_beats_plain_dask_on_fair_share_and_deadlines(side_by_side):
    s, stderr = side_by_side
    plain, ours = s["plain"], s["ours"]
    for run in (plain, ours):
        _check_tenants(run)
        assert run["errors"] == {}
        jobs = run["deadline_jobs"]
        assert len(jobs) == 3
        assert run["deadline_hit_rate"] == sum(j["met"] for j in jobs) / 3
        for j in jobs:  # the verdict agrees with its figures
            assert j["met"] == (j["finished_in_s"] <= j["deadline_s"])
        # the same day: the same tasks per tenant on both sides
        assert {t: v["tasks"] for t, v in run["tenants"].items()} == {
            t: v["tasks"] for t, v in ours["tenants"].items()
        }
        # the killed worker was replaced, and every task still finished
        k = run["kill"]
        assert k["done"] and k["died"], k
        assert k["workers_after"] >= k["workers_before"] == 2
        # the straggler's first attempt was slow on both sides
        assert run["straggler"]["first_attempt_s"] > run["straggler"]["typical_s"]
    # the point of the demo
    assert ours["jain_contended"] > plain["jain_contended"], (ours, plain)
    assert ours["deadline_hit_rate"] > plain["deadline_hit_rate"]
    # the late tenant starts sooner with fair share than behind plain Dask's FIFO backlog
    assert ours["late_tenant"]["wait_s"] < plain["late_tenant"]["wait_s"]
    # gangs: with the Gang policy every gang rendezvoused; the policy counted them
    assert all(g["rendezvous"] for g in ours["gangs"]), ours["gangs"]
    assert ours["policies"]["gangs_started"] >= len(ours["gangs"])
    assert ours["policies"]["deadlines_met"] >= sum(j["met"] for j in ours["deadline_jobs"])
    assert ours["coordinator"]["role"] == "leader"
    assert "policies" not in plain  # plain Dask has no extension
    assert ours["urls"]["oxigdal"].endswith("/oxigdal/")
    assert "live oxigdal page: " + ours["urls"]["oxigdal"] in stderr


def test_the_report_shows_the_runs_figures(side_by_side):
    s, _ = side_by_side
    png, page = s["report"]["png"], s["report"]["html"]
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 20_000
    with open(page, encoding="utf-8") as f:
        text = html.unescape(f.read())
    assert os.path.basename(png) in text
    # every cell of the side-by-side table is in the page, in the run's order
    for label, cells in rows(s):
        assert label in text
        for cell in cells:
            assert cell in text, (label, cell)
    for side in ("plain", "ours"):
        assert f"{s[side]['jain_contended']:.3f}" in text
    assert s["ours"]["urls"]["oxigdal"] in text


def test_figures_change_with_the_seed(side_by_side, tmp_path):
    s, _ = side_by_side
    # (this quick run is also the --secure run: mutual TLS, oxigdal.auth, one principal per tenant)
    other, _ = _demo(tmp_path, "--quick", "--seed", "7", "--no-kill-worker", "--secure")
    assert other["plain"] is None and other["seed"] == 7 and s["seed"] == 42
    _check_secure(other)
    a, b = s["ours"], other["ours"]
    # the scene, and the straggling report task, come from the seed
    assert a["ndvi"]["ndvi_mean"] != b["ndvi"]["ndvi_mean"]
    assert a["straggler"]["key"].split("-")[2] != b["straggler"]["key"].split("-")[2]
    assert a["straggler"]["key"].split("-")[2] == str(42 % 8)
    # ... and the report shows this run's figures, not the other's
    with open(other["report"]["html"], encoding="utf-8") as f:
        text = html.unescape(f.read())
    assert "Seed 7" in text
    for label, cells in rows(other):
        assert all(cell in text for cell in cells), label
    assert not b["kill"]["done"] and "not killed" in text


def _check_secure(summary):
    """--secure: who ran what, the refused cross-tenant claim, the verified audit chain."""
    ours = summary["ours"]
    sec = ours["secure"]
    assert sec["tls"] and sec["auth"] and "mutual TLS" in ours["cluster"]
    assert ours["errors"] == {}
    submitted = {t: v["tasks"] for t, v in ours["tenants"].items()}
    assert {p["tenant"]: p["tasks"] for p in sec["principals"].values()} == submitted
    assert set(sec["principals"]) == {f"{t}-team" for t in DEMO_TENANTS}
    assert "may not use tenant" in sec["refused_claim"]
    assert sec["audit"]["verified"] and sec["audit"]["entries"] > 0
    assert sec["guard"]["denied"] >= 1  # the refused claim was audited
    text = format_summary(summary)
    assert "principal imagery-team" in text and "HMAC chain verified" in text


def test_vector_and_ndvi_figures(side_by_side):
    import geopandas

    s, _ = side_by_side
    countries = geopandas.read_file(countries_path())
    for side in ("plain", "ours"):
        v = s[side]["vector"]
        for scheme in ("hash", "hilbert"):
            assert v[scheme]["countries"] == len(countries)
            assert v[scheme]["iso_a3"] == sorted(countries["iso_a3"])
        hilbert = v["hilbert"]["countries_per_partition"]
        assert max(hilbert) - min(hilbert) <= 1
        ndvi = s[side]["ndvi"]
        assert ndvi["tiles"] == 64 and ndvi["pixels"] == 2048 * 2048
        for t in ndvi["per_tile"]:
            if t["valid"]:
                assert -1.0 <= t["ndvi_min"] <= t["ndvi_mean"] <= t["ndvi_max"] <= 1.0
    # the same scene on both sides
    assert s["plain"]["ndvi"]["ndvi_mean"] == s["ours"]["ndvi"]["ndvi_mean"]


def test_measure_from_a_trace():
    """The figures of a hand-made trace: contended time, shares, deadlines, a killed attempt."""
    tenants = {"a": 2.0, "b": 1.0}
    t0 = 1000.0

    def ev(event, key, t, pid=1, **kw):
        return {"event": event, "key": key, "t": t0 + t, "pid": pid, "worker": "w", **kw}

    events = [
        ev("start", "a-0", 0.0, tenant="a", kind="x"),
        ev("stop", "a-0", 4.0, tenant="a", kind="x"),
        ev("start", "b-0", 1.0, pid=2, tenant="b", kind="x"),
        ev("stop", "b-0", 3.0, pid=2, tenant="b", kind="x"),
        ev("start", "a-1", 4.0, tenant="a", kind="x"),  # killed at 5 s, run again
        ev("start", "a-1", 5.5, pid=2, tenant="a", kind="x"),
        ev("stop", "a-1", 6.0, pid=2, tenant="a", kind="x"),
    ]
    kill = {"done": True, "pid": 1, "at": t0 + 5.0, "replaced_at": t0 + 6.0}
    attempts = attempts_from_trace(events, kill, end=t0 + 7)
    assert [(a["key"], a["killed"]) for a in attempts] == [
        ("a-0", False),
        ("b-0", False),
        ("a-1", True),
        ("a-1", False),
    ]
    submitted = {"a-0": ("a", t0), "a-1": ("a", t0), "b-0": ("b", t0 + 1.0)}
    jobs = [{"name": "j", "tenant": "a", "keys": ["a-1"], "submitted": t0, "deadline_s": 5.0}]
    m = measure(
        tenants=tenants,
        submitted=submitted,
        attempts=attempts,
        jobs=jobs,
        gangs={},
        kill=kill,
        late_tenant="b",
        t0=t0,
    )
    # both tenants have work from 1 s (b arrives) to 3 s (b done): a and b each run 2 s
    assert m["contended"] == [(1.0, 3.0)]
    assert m["tenants"]["a"]["contended_share"] == m["tenants"]["b"]["contended_share"] == 0.5
    assert math.isclose(m["jain_contended"], jain([0.5 / (2 / 3), 0.5 / (1 / 3)]))
    assert m["late_tenant"]["wait_s"] == 0.0
    assert m["deadline_hit_rate"] == 0.0 and m["deadline_jobs"][0]["finished_in_s"] == 6.0
    assert m["kill"]["attempts_lost"] == 1 and m["kill"]["lost_worker_seconds"] == 1.0
    assert m["kill"]["results_recomputed"] == 0 and m["kill"]["replaced_after_s"] == 1.0
    assert jain([1.0, 1.0, 1.0]) == 1.0 and math.isclose(jain([3.0, 0.0, 0.0]), 1 / 3)
    assert jain([0.0, 0.0]) is None


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
    import signal
    import urllib.request

    err = open(tmp_path / "stderr.log", "w+")  # shown when the demo does not stop
    proc = subprocess.Popen(
        [
            DASK,
            "oxigdal",
            "demo",
            "--keep-alive",
            "--quick",
            "--no-kill-worker",
            "--size",
            "128",
            "--tiles",
            "2",
            "--report-dir",
            str(tmp_path),
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
        assert "== dask-oxigdal demo: summary ==" in out, stderr_tail()
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
        assert rc == 0, f"rc={rc}\n{stderr_tail()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        proc.stdout.close()
        err.close()
