"""Coordinator commands: ``(request_id, op, args)``, validated before they reach the log.

:func:`make_command` validates a command when it is built, raising a
``ValueError`` naming the bad value and the valid choices, so bad input never
reaches the Raft log; :class:`~dask_oxigdal.coordination.state.OxigdalState`
validates it again (with the same :data:`OPS`) when it applies it.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "OPS",
    "QUARANTINE_STATES",
    "SECTIONS",
    "USAGE_FIELDS",
    "empty_state",
    "make_command",
    "new_request_id",
]

#: The sections of the state and what they map.
SECTIONS = ("tenants", "usage", "quarantine", "manifest", "leases", "audit", "registers")
QUARANTINE_STATES = ("open", "half-open", "closed")
USAGE_FIELDS = ("worker_seconds", "completed", "erred", "submitted")


def new_request_id() -> str:
    """A fresh request id (a random UUID4 hex string)."""
    return uuid.uuid4().hex


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}={value!r}: expected a non-empty string")
    return value


def _num(name: str, value: Any, *, minimum: float = 0.0, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r}: expected a number")
    if integer and not isinstance(value, int):
        raise ValueError(f"{name}={value!r}: expected an integer")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected a finite number >= {minimum}")
    return value


def _plain(name: str, value: Any, depth: int = 0) -> Any:
    """Check that ``value`` is plain JSON-like data (no objects that unpickle to code)."""
    if depth > 20:
        raise ValueError(f"{name}: nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(name, v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{name}: key {k!r} is not a string")
            out[k] = _plain(name, v, depth + 1)
        return out
    raise ValueError(
        f"{name}: value {value!r} of type {type(value).__name__} is not plain data "
        "(None, bool, int, float, str, list, dict)"
    )


def _v_tenant_set(a: dict) -> dict:
    out = {"tenant": _str("tenant", a.get("tenant"))}
    if a.get("weight") is not None:
        w = _num("weight", a["weight"])
        if not w > 0:
            raise ValueError(f"weight={w!r}: must be > 0")
        out["weight"] = float(w)
    for key in ("max_tasks", "guaranteed_slots"):
        if a.get(key) is not None:
            out[key] = _num(key, a[key], minimum=1, integer=True)
    return out


def _v_usage_add(a: dict) -> dict:
    out: dict[str, Any] = {"tenant": _str("tenant", a.get("tenant"))}
    out["worker_seconds"] = float(_num("worker_seconds", a.get("worker_seconds", 0.0)))
    for key in ("completed", "erred", "submitted"):
        out[key] = _num(key, a.get(key, 0), integer=True)
    if a.get("recent") is not None:
        out["recent"] = float(_num("recent", a["recent"]))
        out["recent_at"] = float(_num("recent_at", a.get("recent_at")))
    return out


def _v_quarantine_set(a: dict) -> dict:
    state = a.get("state")
    if state not in QUARANTINE_STATES:
        raise ValueError(
            f"quarantine state {state!r} is not valid; valid states: {', '.join(QUARANTINE_STATES)}"
        )
    return {
        "worker": _str("worker", a.get("worker")),
        "state": state,
        "reason": str(a.get("reason") or ""),
        "at": float(_num("at", a.get("at", 0.0))),
    }


def _v_manifest_put(a: dict) -> dict:
    entry = a.get("entry")
    if not isinstance(entry, Mapping):
        raise ValueError(
            f"manifest entry {entry!r}: expected a dict such as {{path, sha256, nbytes}}"
        )
    return {"key": _str("key", a.get("key")), "entry": _plain("entry", entry)}


def _v_lease(a: dict) -> dict:
    return {"worker": _str("worker", a.get("worker")), "holder": _str("holder", a.get("holder"))}


def _v_audit(a: dict) -> dict:
    event = a.get("event")
    if not isinstance(event, Mapping):
        raise ValueError(f"audit event {event!r}: expected a dict")
    return {"event": _plain("event", event)}


def _v_key(a: dict) -> dict:
    return {"key": _str("key", a.get("key"))}


def _v_worker(a: dict) -> dict:
    return {"worker": _str("worker", a.get("worker"))}


def _v_reg_write(a: dict) -> dict:
    return {"key": _str("key", a.get("key")), "value": _plain("value", a.get("value"))}


def _v_reg_cas(a: dict) -> dict:
    return {
        "key": _str("key", a.get("key")),
        "expected": _plain("expected", a.get("expected")),
        "new": _plain("new", a.get("new")),
    }


def _v_read(a: dict) -> dict:
    section = a.get("section")
    if section not in SECTIONS:
        raise ValueError(f"section {section!r} is not valid; valid sections: {', '.join(SECTIONS)}")
    key = a.get("key")
    return {"section": section, "key": None if key is None else _str("key", key)}


#: command name -> validator (returns the normalised arguments or raises ValueError)
OPS: dict[str, Callable[[dict], dict]] = {
    "tenant_set": _v_tenant_set,
    "tenant_delete": lambda a: {"tenant": _str("tenant", a.get("tenant"))},
    "usage_add": _v_usage_add,
    "quarantine_set": _v_quarantine_set,
    "quarantine_clear": _v_worker,
    "manifest_put": _v_manifest_put,
    "manifest_delete": _v_key,
    "lease_occupy": _v_lease,
    "lease_vacate": _v_lease,
    "audit": _v_audit,
    "reg_write": _v_reg_write,
    "reg_cas": _v_reg_cas,
    "reg_read": _v_key,
    "reg_append": _v_reg_write,
    "read": _v_read,
}


def make_command(op: str, request_id: str | None = None, **args: Any) -> tuple[str, str, dict]:
    """Build and validate one command.

    Parameters
    ----------
    op : str
        One of :data:`OPS`.
    request_id : str, optional
        Request id (a new one by default). Reuse it to retry the same command.
    **args
        The command's arguments.

    Returns
    -------
    tuple
        ``(request_id, op, normalised_args)``.

    Raises
    ------
    ValueError
        Unknown op or bad argument, naming the value and the valid choices.
    """
    validator = OPS.get(op)
    if validator is None:
        raise ValueError(f"unknown coordinator command {op!r}; valid commands: {', '.join(OPS)}")
    return (request_id or new_request_id(), op, validator(args))


def empty_state() -> dict[str, Any]:
    """A new, empty state: one dict per section (``audit`` is a list)."""
    return {s: ([] if s == "audit" else {}) for s in SECTIONS}
