"""``Status``: the ``dox.status(client)`` snapshot, with an HTML view for Jupyter.

A plain ``dict`` subclass (``json.dumps`` takes it as is) whose
``_repr_html_`` renders a Jinja template, the way distributed's widgets do
(``distributed/widgets/templates``).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from dask_oxigdal.monitoring.metrics import active_coordinator

__all__ = ["Status", "render_status_html"]

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")


@functools.cache
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["pct"] = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"
    env.filters["count"] = _count
    return env


def _count(value: Any) -> Any:
    if value is None:
        return "n/a"
    if isinstance(value, dict):
        return sum(_count(v) for v in value.values() if not isinstance(_count(v), str))
    if isinstance(value, (list, tuple)):
        return len(value)
    return value


def render_status_html(snapshot: dict[str, Any]) -> str:
    """HTML of a status snapshot (the ``status.html.j2`` template).

    Parameters
    ----------
    snapshot : dict
        ``dox.status(client)``.

    Returns
    -------
    str
    """
    policies = snapshot.get("policies") or {}
    monitor = policies.get("Monitor") or {}
    return (
        _environment()
        .get_template("status.html.j2")
        .render(
            s=snapshot,
            installed=bool(snapshot.get("installed")),
            tenants=snapshot.get("tenants") or {},
            policies=policies,
            queues=snapshot.get("queues") or [],
            monitor=monitor,
            gang=policies.get("Gang"),
            deadline=policies.get("Deadline"),
            quarantine=policies.get("Quarantine"),
            coordinator=active_coordinator(snapshot),
            alerts=list(reversed(monitor.get("recent_alerts") or [])),
        )
    )


class Status(dict):
    """The status snapshot: a JSON-serialisable ``dict`` that renders as HTML in Jupyter."""

    def _repr_html_(self) -> str:
        return render_status_html(self)
