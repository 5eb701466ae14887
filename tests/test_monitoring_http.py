"""``/oxigdal/state.json``, the page route, ``status()``'s HTML and ``dox.progress`` on live clusters."""

from __future__ import annotations

import dask_oxigdal  # noqa: F401  (registers the oxigdal config defaults first)

# isort: split
import io
import json

import pytest
from distributed import Client, LocalCluster, wait
from distributed.http.routing import RoutingApplication
from distributed.utils_test import gen_cluster
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

import dask_oxigdal as dox
from dask_oxigdal.annotations import annotate
from dask_oxigdal.monitoring import http as oxhttp
from dask_oxigdal.monitoring.progressbar import KeyGroups, TextMultiProgressBar
from dask_oxigdal.monitoring.status import Status
from dask_oxigdal.scheduling.extension import register, status

SCHED = {"dashboard_address": "127.0.0.1:0"}


def inc(x):
    return x + 1


async def fetch(s, path, **kwargs):
    return await AsyncHTTPClient().fetch(f"http://127.0.0.1:{s.http_server.port}{path}", **kwargs)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], scheduler_kwargs=SCHED, timeout=120)
async def test_state_json_and_page(c, s, a):
    # before the extension: the route is not there yet
    with pytest.raises(HTTPClientError) as e:
        await fetch(s, "/oxigdal/state.json")
    assert e.value.code == 404

    await register(c, tenants={"team-a": 2}, interval="50ms")
    with annotate(tenant="team-a"):
        await wait(c.map(inc, range(5)))
    state = json.loads((await fetch(s, "/oxigdal/state.json")).body)
    assert state["installed"] is True
    assert state["workers"] == 1
    assert state["totals"]["completed"] == 5
    assert state["snapshot"]["tenants"]["team-a"]["completed"] == 5
    assert "Monitor" in state["snapshot"]["policies"]
    page = (await fetch(s, "/oxigdal/")).body.decode()
    assert '<svg id="share-plot"' in page and "state.json" in page
    # no external resources: no script src, no stylesheet link, no absolute fetch
    assert "src=" not in page and "<link" not in page and 'fetch("http' not in page
    # /oxigdal redirects to /oxigdal/
    r = await fetch(s, "/oxigdal", follow_redirects=False, raise_error=False)
    assert r.code in (301, 302) and r.headers["Location"].endswith("/oxigdal/")
    # registering again (replace) does not add the routes twice
    assert oxhttp.add_routes(s) is False


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], scheduler_kwargs=SCHED, timeout=120)
async def test_status_is_json_with_html(c, s, a):
    st = await status(c)
    assert isinstance(st, Status) and st == {"installed": False}
    assert "not installed" in st._repr_html_()
    await register(c, tenants={"team-a": 2, "team-b": 1})
    with annotate(tenant="team-b"):
        await wait(c.map(inc, range(3)))
    st = await status(c)
    assert isinstance(st, dict) and isinstance(st, Status)
    assert json.loads(json.dumps(st)) == dict(st)
    html = st._repr_html_()
    assert "team-a" in html and "team-b" in html
    assert "<table>" in html and "FairShare" in html
    # the default Gang / Deadline / Quarantine policies report; a disabled
    # coordinator is not shown
    assert "quarantined workers: 0" in html and "coordinator" not in html


def test_progress_groups_by_tenant_on_distributeds_machinery():
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            protocol="tcp://",
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        register(client, tenants={"team-a": 1, "team-b": 1})
        with annotate(tenant="team-a"):
            fa = client.map(inc, range(6))
        with annotate(tenant="team-b", queue="interactive"):
            fb = client.map(inc, range(4), key=[f"b-{i}" for i in range(4)])
        out = io.StringIO()
        bar = dox.progress(fa + fb, group_by="tenant", notebook=False, stream=out)
        assert isinstance(bar, TextMultiProgressBar)
        assert bar.last["status"] == "finished"
        assert bar.last["all"] == {"team-a": 6, "team-b": 4}
        assert bar.last["remaining"] == {"team-a": 0, "team-b": 0}
        lines = out.getvalue().splitlines()
        assert lines and "team-a [" in lines[-1] and "6/6" in lines[-1] and "4/4" in lines[-1]

        out = io.StringIO()
        bar = dox.progress(fa, fb, group_by="queue", notebook=False, stream=out)
        assert bar.last["all"] == {"batch": 6, "interactive": 4}

        with pytest.raises(ValueError, match=r"group_by='colour'.*'tenant'"):
            dox.progress(fa, group_by="colour", notebook=False)


def test_key_groups_default():
    g = KeyGroups({"a": "x"})
    assert g("a") == "x" and g("zzz") == "other"


@gen_cluster(client=True, nthreads=[], scheduler_kwargs=SCHED, timeout=60)
async def test_guard_scheduler_http_application_accepts_routes_at_runtime(c, s):
    # add_routes relies on Scheduler.http_application (a tornado Application that
    # distributed builds from distributed.scheduler.http.routes at start-up)
    assert isinstance(s.http_application, RoutingApplication)
    assert callable(s.http_application.add_handlers)
    assert isinstance(s.plugins, dict)
    assert oxhttp.add_routes(s) is True
    assert (await fetch(s, "/oxigdal/state.json")).code == 200


ROUTES = [
    "distributed.http.scheduler.prometheus",
    "distributed.http.health",
    "dask_oxigdal.monitoring.http",
]


@gen_cluster(
    client=True,
    nthreads=[],
    scheduler_kwargs=SCHED,
    config={"distributed.scheduler.http.routes": ROUTES},
    timeout=60,
)
async def test_routes_through_distributeds_http_routes_setting(c, s):
    # listed in distributed.scheduler.http.routes: served from start-up (the way to
    # go with a dashboard prefix), and the extension does not add them a second time
    state = json.loads((await fetch(s, "/oxigdal/state.json")).body)
    assert state["installed"] is False
    await register(c)
    assert s.plugins["oxigdal"].monitoring == {"prometheus": True, "http": False}
    state = json.loads((await fetch(s, "/oxigdal/state.json")).body)
    assert state["installed"] is True
