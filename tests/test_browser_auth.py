"""The ``/oxigdal/`` page's login with ``oxigdal.auth`` on, in a real headless Chromium.

The page's own ``fetch("state.json")`` gets 401, the page shows its token
field, the token is posted once to ``login`` and the session cookie it sets
makes the page's next polls succeed (same fixture as tests/test_browser.py).
"""

from __future__ import annotations

import os
import shutil

import dask
import pytest
from distributed import Client, LocalCluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.auth import TokenSecurity, make_token

pytest.importorskip("selenium")
if not (shutil.which("chromium") or os.path.exists("/usr/bin/chromium")):
    pytest.skip("no chromium (make browser)", allow_module_level=True)

import test_browser  # after the skip: it imports selenium

browser = test_browser.browser  # the shared fixture
wait_until = test_browser.wait_until

SECRETS = {"alice": "pw-alice", "bob": "pw-bob", "ops": "pw-ops"}
PRINCIPALS = {
    "alice": {"tenants": ["team-a"], "roles": ["user"]},
    "bob": {"tenants": ["team-b"], "roles": ["user"]},
    "ops": {"roles": ["admin"]},
}


def test_page_logs_in_with_a_token_and_shows_only_its_tenants(browser, tmp_path, monkeypatch):
    monkeypatch.setenv("OXIGDAL_AUTH_TOKENS", ",".join(f"{k}={v}" for k, v in SECRETS.items()))
    cfg = {
        "oxigdal.auth.enabled": True,
        "oxigdal.auth.principals": PRINCIPALS,
        "oxigdal.auth.audit-log": str(tmp_path / "audit.jsonl"),
        "oxigdal.tenants": {"team-a": 1, "team-b": 1},
    }
    token = make_token("alice", SECRETS["alice"])
    with dask.config.set(cfg):
        cluster = LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            protocol="tcp://",
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            security=TokenSecurity(make_token("ops", SECRETS["ops"])),
            scheduler_kwargs={"preload": ["dask_oxigdal.preload"]},
        )
    with (
        cluster,
        Client(cluster.scheduler_address, security=TokenSecurity(token)) as alice,
        Client(
            cluster.scheduler_address,
            security=TokenSecurity(make_token("bob", SECRETS["bob"])),
        ) as bob,
    ):
        assert alice.gather(alice.map(str, range(3), key=[f"a-{i}" for i in range(3)])) == [
            "0",
            "1",
            "2",
        ]
        with annotate(tenant="team-b"):
            bob.gather(bob.map(str, range(2), key=[f"b-{i}" for i in range(2)]))
        base = cluster.dashboard_link.rsplit("/status", 1)[0]
        browser.get(f"{base}/oxigdal/?interval=200")

        def text(id_):
            return browser.execute_script(
                "const e = document.getElementById(arguments[0]);"
                "return e === null ? null : e.innerText.trim();",
                id_,
            )

        def login_visible():
            return browser.execute_script("return !document.getElementById('login').hidden")

        wait_until(lambda: text("status") == "login required", what="the login prompt")
        assert login_visible()
        # a wrong token: refused, no cookie, the prompt stays
        browser.execute_script(
            "document.getElementById('login-token').value = 'alice:' + '0'.repeat(64)"
        )
        browser.execute_script("document.getElementById('login-submit').click()")
        wait_until(lambda: text("login-error") == "invalid token", what="the refusal")
        assert login_visible() and not browser.get_cookies()
        # alice's token: the page goes live as alice and shows team-a only
        browser.execute_script("document.getElementById('login-token').value = arguments[0]", token)
        browser.execute_script("document.getElementById('login-submit').click()")
        wait_until(lambda: text("status") == "live (as alice)", what="the page to go live")
        assert not login_visible()
        wait_until(lambda: text("tenant-team-a"), what="the team-a row")
        assert text("total-completed") == "3"
        assert "team-b" not in browser.page_source
        (cookie,) = browser.get_cookies()
        assert cookie["name"] == "oxigdal_session" and cookie["httpOnly"]
        assert token.partition(":")[2] not in cookie["value"]
        # HttpOnly: the page's scripts cannot read it
        assert "oxigdal_session" not in browser.execute_script("return document.cookie")
        # the field was cleared after the login
        assert browser.execute_script("return document.getElementById('login-token').value") == ""
