"""The ``/oxigdal/`` page in a real headless Chromium (Debian's ``chromium`` + ``chromedriver``).

``make test`` installs the packages when they are missing (``make browser``).
The page is loaded from a running cluster; the test asserts on the DOM that
live numbers change as work runs, and saves a screenshot into ``tmp_path``.
"""

from __future__ import annotations

import shutil
import time

import dask
import pytest
from distributed import Client, Event, LocalCluster, wait
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from dask_oxigdal.annotations import annotate
from dask_oxigdal.scheduling.extension import register

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def block(x, ev):
    ev.wait()
    return x


def slow(x):
    time.sleep(0.05)
    return x


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1200,1100",
    ):
        options.add_argument(flag)
    # an explicit chromedriver: selenium never looks for (or downloads) a driver
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(predicate, timeout=90.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_oxigdal_page_shows_live_numbers(browser, tmp_path):
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
        # the default alert rules plus one that fires while work is queued
        rules = [
            *dask.config.get("oxigdal.monitoring.rules"),
            {"name": "backlog", "metric": "tenant-queued", "above": 1},
        ]
        with dask.config.set({"oxigdal.monitoring.rules": rules}):
            register(client, tenants={"team-a": 3, "team-b": 1}, interval="200ms")
        base = client.dashboard_link.rsplit("/status", 1)[0]
        browser.get(f"{base}/oxigdal/?interval=200")

        def text(id_):
            # read through JavaScript: the page replaces its rows on every update,
            # so element handles go stale between two reads
            return browser.execute_script(
                "const e = document.getElementById(arguments[0]);"
                "return e === null ? null : e.innerText.trim();",
                id_,
            )

        wait_until(lambda: text("status") == "live", what="the page to go live")
        assert text("total-completed") == "0"

        ev = Event(client=client)
        with annotate(tenant="team-a"):
            blocked = client.map(block, range(6), ev=ev, key=[f"blocked-a-{i}" for i in range(6)])
        with annotate(tenant="team-b"):
            blocked += client.map(block, range(4), ev=ev, key=[f"blocked-b-{i}" for i in range(4)])
        # the page shows the tenants, their queued work and their entitled shares
        wait_until(lambda: text("total-pending") == "10", what="10 pending tasks")
        wait_until(lambda: text("tenant-team-b"), what="the team-b row")
        row = text("tenant-team-a").split()
        assert row[0] == "team-a" and row[2] == "75.0%", row  # entitled 3 / (3 + 1)
        assert text("queue-batch").split()[0] == "batch"
        # the alert reaches the page's recent-alerts list and its counter
        alerts = wait_until(
            lambda: a if "backlog" in (a := text("alerts") or "") else None,
            what="the backlog alert on the page",
        )
        assert "tenant-queued of team-" in alerts, alerts
        assert int(text("alert-count")) >= 1
        ticks_before = text("updated")

        ev.set()
        wait(blocked)
        with annotate(tenant="team-b"):
            more = client.map(slow, range(20), key=[f"slow-b-{i}" for i in range(20)])
        wait(more)
        # the live numbers changed without reloading the page
        wait_until(lambda: text("total-completed") == "30", what="30 completed tasks")
        assert text("total-pending") == "0"
        assert float(text("total-worker-seconds")) > 0
        assert text("updated") != ticks_before
        # the share plot has one received and one entitled line per tenant
        lines = wait_until(
            lambda: (
                browser.execute_script(
                    "return [...document.querySelectorAll('#share-plot polyline')]"
                    ".map(e => e.getAttribute('data-tenant'))"
                )
                if browser.execute_script(
                    "return document.querySelectorAll('#share-plot polyline').length"
                )
                >= 4
                else None
            ),
            what="the share plot",
        )
        tenants = set(lines)
        assert {"team-a", "team-b"} <= tenants
        # the default Gang, Deadline and Quarantine policies report numbers (this
        # workload has no gangs, deadlines or quarantined workers); nothing is
        # loaded from outside
        assert text("gangs-waiting") == "0" and text("gangs-started") == "0"
        assert text("deadlines-met") == "0" and text("deadlines-missed") == "0"
        assert text("quarantined") == "none"
        external = browser.execute_script(
            "return [...document.querySelectorAll('script[src], link[href]')].length"
        )
        assert external == 0
        shot = tmp_path / "oxigdal-page.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
