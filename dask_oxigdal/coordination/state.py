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

Commands and their validation live in :mod:`~dask_oxigdal.coordination.commands`
(their names are importable from here too).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from dask_oxigdal.coordination import journal as _journal
from dask_oxigdal.coordination._pysyncobj import SyncObj, SyncObjConf, replicated
from dask_oxigdal.coordination.commands import (  # noqa: F401 (re-exported)
    OPS,
    QUARANTINE_STATES,
    SECTIONS,
    USAGE_FIELDS,
    empty_state,
    make_command,
    new_request_id,
)

__all__ = [
    "OPS",
    "SECTIONS",
    "OxigdalState",
    "make_command",
    "new_request_id",
]

logger = logging.getLogger(__name__)


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
