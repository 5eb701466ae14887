"""The ``/oxigdal/`` page and ``/oxigdal/state.json`` on the scheduler's HTTP server.

Two ways in:

- :func:`add_routes` (called by the extension when it starts) adds the routes
  to the running scheduler's tornado application at runtime, at the root of
  the server;
- or list this module in ``distributed.scheduler.http.routes`` before the
  scheduler starts (``dask scheduler`` reads it once, at start-up); that is
  the way to go with ``--dashboard-prefix``, which the runtime path cannot
  see.

The page is one HTML file with inline JavaScript and SVG (no external CDN):
it polls ``state.json`` and redraws. With ``oxigdal.auth`` on, ``state.json``
answers 401 until the page has logged in: the page then shows a token field
that posts to ``login``, which sets a session cookie
(:mod:`dask_oxigdal.auth.web`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Any

from distributed.http.utils import RequestHandler

if TYPE_CHECKING:
    from distributed import Scheduler

__all__ = [
    "OxigdalLogin",
    "OxigdalLogout",
    "OxigdalPage",
    "OxigdalState",
    "add_routes",
    "routes",
    "state",
]

logger = logging.getLogger(__name__)

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")
#: The page's session cookie (dask_oxigdal.auth.web.COOKIE; not imported: auth loads lazily).
COOKIE = "oxigdal_session"
#: History samples sent to the page.
HISTORY_POINTS = 300


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists, unknown objects -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def state(scheduler: Scheduler, identity: Any = None) -> dict[str, Any]:
    """What ``/oxigdal/state.json`` returns.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    identity : dask_oxigdal.auth.guard.Identity, optional
        With ``oxigdal.auth`` on: the caller; a principal without the
        ``admin`` role sees only its own tenants, no history and no alerts.

    Returns
    -------
    dict
        ``installed``, ``time``, ``workers``, ``totals``, ``snapshot`` (the
        extension's status), ``history`` (share samples), ``alerts``,
        ``workflows`` (per-workflow progress, dask_oxigdal.workflows.progress).
    """
    from dask_oxigdal.scheduling.extension import NAME
    from dask_oxigdal.workflows.progress import scheduler_progress

    ext = scheduler.plugins.get(NAME)
    now = time.time()
    if ext is None or getattr(ext, "scheduler", None) is None:
        return {"installed": False, "time": now, "workers": len(scheduler.workers)}
    snap = ext.snapshot()
    auth = getattr(ext, "auth", None)
    view = auth.user_view(snap, identity) if auth is not None else None
    if view is not None:
        return _clean({"installed": True, "time": now, "snapshot": view})
    tenants = snap.get("tenants") or {}
    totals = {
        k: sum(t.get(k, 0) for t in tenants.values())
        for k in ("submitted", "completed", "erred", "running", "pending", "worker_seconds")
    }
    history: list = []
    alerts: list = []
    try:
        monitor = ext.get_policy("Monitor")
    except KeyError:
        monitor = None
    if monitor is not None and monitor.name not in ext.disabled:
        history = monitor.history_points(HISTORY_POINTS)
        alerts = list(monitor.alerts)[-20:]
    return _clean(
        {
            "installed": True,
            "time": now,
            "workers": len(scheduler.workers),
            "totals": totals,
            "snapshot": snap,
            "history": history,
            "alerts": alerts,
            "workflows": scheduler_progress(scheduler),
        }
    )


class OxigdalState(RequestHandler):
    """``GET /oxigdal/state.json``: :func:`state` as JSON."""

    def get(self) -> None:
        """Serve the state (with ``oxigdal.auth``: 401 without a valid bearer token)."""
        from dask_oxigdal.scheduling.extension import NAME

        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        auth = getattr(self.server.plugins.get(NAME), "auth", None)
        identity = None
        if auth is not None:
            code, identity = auth.http_identity(
                self.request.headers.get("Authorization"), self.get_cookie(COOKIE)
            )
            if code != 200:
                self.set_status(code)
                self.set_header("WWW-Authenticate", 'Bearer realm="dask-oxigdal"')
                self.write(
                    json.dumps({"error": "a valid oxigdal token is required", "login": True})
                )
                return
        self.write(json.dumps(state(self.server, identity)))


class OxigdalLogin(RequestHandler):
    """``POST /oxigdal/login`` (form field ``token``): the page's session cookie.

    With ``oxigdal.auth`` on, a valid token of a principal gets the
    ``oxigdal_session`` cookie (``HttpOnly``, ``SameSite=Strict``, scoped to
    the page's path; it holds a signed principal name, never the token) and
    ``{"principal": name}``; anything else gets 401. Without auth: 404.
    The token is read from the request body only, never from the URL.
    """

    def post(self) -> None:
        """Check the posted token; set or refuse the cookie."""
        from dask_oxigdal.scheduling.extension import NAME

        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        auth = getattr(self.server.plugins.get(NAME), "auth", None)
        if auth is None:
            self.set_status(404)
            self.write(json.dumps({"error": "oxigdal.auth is not enabled"}))
            return
        token = self.get_body_argument("token", None)
        cookie, identity = auth.web.login(token, peer=self.request.remote_ip)
        if cookie is None:
            self.set_status(401)
            self.write(json.dumps({"error": "invalid oxigdal token"}))
            return
        self.set_cookie(
            COOKIE,
            cookie,
            path=_page_path(self.request.path),
            httponly=True,
            samesite="Strict",
            secure=self.request.protocol == "https",
            expires_days=auth.web.seconds / 86400,
        )
        self.write(json.dumps({"principal": identity.name}))


class OxigdalLogout(RequestHandler):
    """``POST /oxigdal/logout``: clear the page's session cookie."""

    def post(self) -> None:
        """Clear the cookie."""
        self.clear_cookie(COOKIE, path=_page_path(self.request.path))
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"ok": True}))


def _page_path(request_path: str) -> str:
    """``/prefix/oxigdal/`` from ``/prefix/oxigdal/login`` (the cookie's path)."""
    return request_path.rsplit("/", 1)[0] + "/"


class OxigdalPage(RequestHandler):
    """``GET /oxigdal/``: the live page (HTML with inline JavaScript and SVG)."""

    def get(self) -> None:
        """Serve the page."""
        with open(os.path.join(TEMPLATES, "page.html"), encoding="utf-8") as f:
            html = f.read()
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(html)


class _Redirect(RequestHandler):
    def get(self) -> None:
        self.redirect(self.request.path + "/")


#: Routes in the format of ``distributed.scheduler.http.routes`` modules.
routes: list[tuple[str, type, dict]] = [
    (r"/oxigdal/", OxigdalPage, {}),
    (r"/oxigdal/state.json", OxigdalState, {}),
    (r"/oxigdal/login", OxigdalLogin, {}),
    (r"/oxigdal/logout", OxigdalLogout, {}),
    (r"/oxigdal", _Redirect, {}),
]


def add_routes(scheduler: Scheduler) -> bool:
    """Add the routes to a running scheduler's HTTP server (once per scheduler).

    Parameters
    ----------
    scheduler : distributed.Scheduler

    Returns
    -------
    bool
        Whether routes were added (``False``: no HTTP server, or already there
        through ``distributed.scheduler.http.routes``).
    """
    import dask.config
    from distributed.http.utils import get_handlers

    app = getattr(scheduler, "http_application", None)
    if app is None:
        return False
    if __name__ in (dask.config.get("distributed.scheduler.http.routes", None) or ()):
        return False
    if any(h is OxigdalPage for h in getattr(app, "_oxigdal_handlers", ())):
        return False
    handlers = get_handlers(server=scheduler, modules=[__name__], prefix="/")
    app.add_handlers(r".*", handlers)
    app._oxigdal_handlers = [cls for _, cls, _ in handlers]
    return True
