"""The replicated state machine: ``OxigdalState``, a pysyncobj ``SyncObj``.

Every change is a *command* ``(request_id, op, args)``; commands travel in
batches through one ``@replicated`` method, :meth:`OxigdalState.execute`, so
a batch of a thousand usage updates is one Raft log entry. Each command is
validated twice: when it is built (:func:`make_command`, which raises a
``ValueError`` naming the bad value and the valid choices, so bad input never
reaches the log) and again when it is applied (a command that fails there
gets an ``("error", message)`` result and changes nothing).

Exactly-once: the state keeps the results of the last ``dedupe_window``
request ids; a command whose id was already applied is not applied again and
returns the first result. A client that times out or sees
``LEADER_CHANGED``/``NOT_LEADER`` resends the same command with the same id.

Reads: :meth:`OxigdalState.view` is a copy of the local replica, which may be
stale on a follower or an observer. A read that must be current goes through
the log: the ``read`` command (or ``reg_read``) is ordered with the writes.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from dask_oxigdal.coordination import journal as _journal
from dask_oxigdal.coordination._pysyncobj import SyncObj, SyncObjConf, replicated

__all__ = [
    "OPS",
    "SECTIONS",
    "OxigdalState",
    "make_command",
    "new_request_id",
]

logger = logging.getLogger(__name__)

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


def _audit_group(entry: dict) -> str:
    """Eviction group of an audit entry: its tenant, else its principal, else ``"-"``."""
    return str(entry.get("tenant") or entry.get("principal") or "-")


def evict_fairly(audit: list[dict], target: int) -> list[dict]:
    """The newest entries of ``audit``, at most ``target``, shared fairly between groups.

    Groups (:func:`_audit_group`) smaller than their fair share keep every
    entry; the larger ones keep their newest entries up to a common cap.

    Parameters
    ----------
    audit : list of dict
        Oldest first.
    target : int
        Entries to keep (at most).

    Returns
    -------
    list of dict
        Oldest first.
    """
    if len(audit) <= target:
        return list(audit)
    counts = Counter(map(_audit_group, audit))
    sizes = sorted(counts.values())
    remaining, cap = max(0, target), 0
    for i, size in enumerate(sizes):
        share = remaining // (len(sizes) - i)
        if size > share:
            cap = share
            break
        remaining -= size
    kept: list[dict] = []
    seen: Counter = Counter()
    for entry in reversed(audit):
        group = _audit_group(entry)
        if counts[group] <= cap or seen[group] < cap:
            seen[group] += 1
            kept.append(entry)
    kept.reverse()
    return kept


def empty_state() -> dict[str, Any]:
    """A new, empty state: one dict per section (``audit`` is a list)."""
    return {s: ([] if s == "audit" else {}) for s in SECTIONS}


class OxigdalState(SyncObj):
    """Replicated dask-oxigdal policy state (a pysyncobj ``SyncObj``).

    Parameters
    ----------
    self_address : str or None
        ``HOST:PORT`` of this node; ``None`` for an observer (a non-voting
        node that forwards commands to the leader and keeps a replica).
    partners : list of str
        The other voting nodes.
    conf : pysyncobj.SyncObjConf
        See :func:`dask_oxigdal.coordination.node.make_conf`.
    dedupe_window : int
        Request ids remembered for exactly-once application.
    audit_max : int
        Audit entries kept; beyond it the log is cut to 90%, evicting the oldest
        entries of the largest tenants first (``audit_dropped`` counts them).
    self_aliases : list of str, optional
        Addresses this node had before (a single-node group restarted on another
        port): they are dropped from the member list loaded from a dump, which
        would otherwise wait for a vote from the node's own former address.
    """

    def __init__(
        self,
        self_address: str | None,
        partners: list[str],
        conf: SyncObjConf,
        *,
        dedupe_window: int = 100_000,
        audit_max: int = 10_000,
        self_aliases: list[str] | None = None,
    ) -> None:
        self._self_address = self_address
        self._self_aliases = frozenset(self_aliases or ()) - {self_address}
        self._lock = threading.RLock()
        self._data = empty_state()
        self._dedupe: OrderedDict[str, Any] = OrderedDict()
        self._dedupe_window = int(dedupe_window)
        self._audit_max = int(audit_max)
        self._meta = {
            "applied": 0,
            "duplicates": 0,
            "rejected": 0,
            "audit_dropped": 0,
            "audit_seq": 0,
        }
        self._listeners: list[Callable[[], None]] = []
        if not conf.password:
            # without a password pysyncobj unpickles whatever reaches its port
            raise ValueError(
                "a coordinator node needs the group's secret (SyncObjConf(password=...)); "
                "see dask_oxigdal.coordination.node.make_conf"
            )
        self._key = _journal.derive_key(conf.password)
        if conf.fullDumpFile is not None:
            conf.serializer = self._serialize_dump
            conf.deserializer = self._deserialize_dump
        _journal.install()
        self._fsync = bool(getattr(conf.journalFile, "fsync", False))
        super().__init__(self_address, partners, conf)

    # ---------------------------------------------------------- the command
    @replicated
    def execute(self, batch: list) -> list:
        """Apply a batch of ``(request_id, op, args)`` commands; the results, in order.

        Called through pysyncobj: ``execute(batch, callback=cb)`` (asynchronous)
        or ``execute(batch, sync=True, timeout=s)``.
        """
        results = []
        with self._lock:
            for command in batch:
                results.append(self._apply_one(command))
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener must never break replication
                pass
        return results

    def _apply_one(self, command: Any) -> Any:
        try:
            rid, op, args = command
            rid = str(rid)
        except (TypeError, ValueError):
            self._meta["rejected"] += 1
            return ("error", f"malformed command {command!r}")
        dedupe = self._dedupe
        if rid in dedupe:
            self._meta["duplicates"] += 1
            return dedupe[rid]
        try:
            args = OPS[op](dict(args))
            result = getattr(self, "_op_" + op)(**args)
        except (KeyError, ValueError, TypeError) as e:
            self._meta["rejected"] += 1
            result = ("error", f"{op}: {e}")
        else:
            self._meta["applied"] += 1
        dedupe[rid] = result
        if len(dedupe) > self._dedupe_window:
            dedupe.popitem(last=False)
        return result

    # ---------------------------------------------------------- operations
    def _op_tenant_set(self, tenant: str, **settings: Any) -> dict:
        entry = self._data["tenants"].setdefault(tenant, {})
        entry.update(settings)
        return dict(entry)

    def _op_tenant_delete(self, tenant: str) -> bool:
        return self._data["tenants"].pop(tenant, None) is not None

    def _op_usage_add(self, tenant: str, **fields: Any) -> dict:
        entry = self._data["usage"].setdefault(tenant, {f: 0 for f in USAGE_FIELDS})
        for f in USAGE_FIELDS:
            entry[f] = entry.get(f, 0) + fields.get(f, 0)
        if "recent" in fields:
            entry["recent"] = fields["recent"]
            entry["recent_at"] = fields["recent_at"]
        return dict(entry)

    def _op_quarantine_set(self, worker: str, state: str, reason: str, at: float) -> dict:
        entry = {"state": state, "reason": reason, "at": at}
        self._data["quarantine"][worker] = entry
        return entry

    def _op_quarantine_clear(self, worker: str) -> bool:
        return self._data["quarantine"].pop(worker, None) is not None

    def _op_manifest_put(self, key: str, entry: dict) -> bool:
        self._data["manifest"][key] = entry
        return True

    def _op_manifest_delete(self, key: str) -> bool:
        return self._data["manifest"].pop(key, None) is not None

    def _op_lease_occupy(self, worker: str, holder: str) -> Any:
        """Occupy ``worker`` for ``holder``: True, or the current holder if taken."""
        leases = self._data["leases"]
        current = leases.get(worker)
        if current is None or current == holder:
            leases[worker] = holder
            return True
        return current

    def _op_lease_vacate(self, worker: str, holder: str) -> bool:
        leases = self._data["leases"]
        if leases.get(worker) == holder:
            del leases[worker]
            return True
        return False

    def _op_audit(self, event: dict) -> int:
        self._meta["audit_seq"] += 1
        seq = self._meta["audit_seq"]
        audit = self._data["audit"]
        audit.append({"seq": seq, **event})
        if len(audit) > self._audit_max:
            # evict down to 90% of the cap, from the largest tenants first: one
            # tenant's entries never push another's out (a pure function of the
            # log, so every replica evicts the same entries)
            kept = evict_fairly(audit, self._audit_max - max(1, self._audit_max // 10))
            self._meta["audit_dropped"] += len(audit) - len(kept)
            audit[:] = kept
        return seq

    def _op_reg_write(self, key: str, value: Any) -> bool:
        self._data["registers"][key] = value
        return True

    def _op_reg_cas(self, key: str, expected: Any, new: Any) -> bool:
        regs = self._data["registers"]
        if regs.get(key) == expected:
            regs[key] = new
            return True
        return False

    def _op_reg_read(self, key: str) -> Any:
        return copy.deepcopy(self._data["registers"].get(key))

    def _op_reg_append(self, key: str, value: Any) -> int:
        seq = self._data["registers"].setdefault(key, [])
        if not isinstance(seq, list):
            raise ValueError(f"register {key!r} holds {type(seq).__name__}, not a list")
        seq.append(value)
        return len(seq)

    def _op_read(self, section: str, key: str | None) -> Any:
        data = self._data[section]
        if key is None:
            return copy.deepcopy(data)
        if isinstance(data, list):
            raise ValueError(f"section {section!r} is a list: read it without a key")
        return copy.deepcopy(data.get(key))

    # ---------------------------------------------------------- local reads
    def view(self) -> dict[str, Any]:
        """A deep copy of the local replica (possibly stale), plus ``meta`` counters."""
        with self._lock:
            out = copy.deepcopy(self._data)
            out["meta"] = dict(self._meta)
        return out

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (on pysyncobj's thread) after each applied batch."""
        self._listeners.append(fn)

    # ---------------------------------------------------------- dump
    def _serialize_dump(self, filename: str, raft: Any) -> None:
        with self._lock:
            state = {
                "data": copy.deepcopy(self._data),
                "dedupe": list(self._dedupe.items()),
                "meta": dict(self._meta),
            }
        _journal.write_dump(
            filename, {"state": state, "raft": raft}, key=self._key, fsync=self._fsync
        )

    def _deserialize_dump(self, filename: str) -> Any:
        # a snapshot received from the leader was written by pysyncobj with the umask's mode
        os.chmod(filename, _journal.FILE_MODE)
        payload = _journal.read_dump(filename, key=self._key)
        state = payload["state"]
        with self._lock:
            self._data = state["data"]
            self._dedupe = OrderedDict(state["dedupe"])
            self._meta = state["meta"]
        return self._rewrite_members(payload["raft"])

    def _rewrite_members(self, raft: Any) -> Any:
        """Drop this node's former addresses from the dump's member list (``raft[2]``)."""
        if not self._self_aliases or len(raft) < 3:
            return raft
        members = raft[2]
        kept = {n for n in members if str(getattr(n, "address", n)) not in self._self_aliases}
        if len(kept) == len(members):
            return raft
        logger.warning(
            "dask-oxigdal coordinator: the dump names this node's former address(es) %s; "
            "rewritten to %s",
            sorted(str(getattr(n, "address", n)) for n in set(members) - kept),
            self._self_address,
        )
        return (*raft[:2], kept, *raft[3:])
