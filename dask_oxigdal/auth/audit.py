"""A tamper-evident audit log: JSON lines in an HMAC hash chain.

Each line is one JSON object with ``seq`` (1, 2, ...), ``time``,
``principal``, ``credential`` (certificate fingerprint or token id),
``client``, ``peer``, ``action``, ``outcome``, ``tenant``, ``detail``,
``prev`` (the ``mac`` of the line before; ``""`` for the first) and ``mac``
= HMAC-SHA256(key, canonical JSON of the line without ``mac``). The head of
the chain is the last ``mac``.

:func:`verify` recomputes the chain: an edited line fails its ``mac``, a
deleted line breaks ``prev``/``seq`` of the next one, and a cut tail is found
when the caller gives a head it recorded earlier (the *anchor*, from
``dask oxigdal audit head``, the coordinator's replicated copy or any other
place the writer cannot rewrite): that head must still be in the chain.

The key is never in the dask config: ``oxigdal.auth.audit-key-file`` (a 0600
file) or ``$OXIGDAL_AUDIT_KEY`` in the scheduler's environment, else a random
key generated once into ``<audit-log>.key`` (0600).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dask_oxigdal.exceptions import ConfigError

__all__ = ["AUDIT_KEY_ENV", "AuditLog", "VerifyResult", "audit_key", "verify"]

#: Environment variable holding the audit key (scheduler side).
AUDIT_KEY_ENV = "OXIGDAL_AUDIT_KEY"


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def _mac(key: bytes, entry: dict) -> str:
    return hmac.new(key, _canonical(entry), hashlib.sha256).hexdigest()


def audit_key(key_file: str | None, log_path: str | None) -> bytes:
    """The audit chain's key.

    Parameters
    ----------
    key_file : str or None
        ``oxigdal.auth.audit-key-file``.
    log_path : str or None
        ``oxigdal.auth.audit-log``: without a key file or ``$OXIGDAL_AUDIT_KEY``,
        the key is generated once into ``log_path + ".key"`` (0600).

    Returns
    -------
    bytes
        A random per-process key when there is neither a file, nor the
        environment variable, nor a log path.
    """
    from dask_oxigdal._secrets import create_secret_file, read_secret_file

    if key_file:
        return read_secret_file(key_file, name="oxigdal.auth.audit-key-file").strip()
    env = os.environ.get(AUDIT_KEY_ENV)
    if env:
        return env.encode()
    if not log_path:
        return secrets.token_bytes(32)
    path = log_path + ".key"
    create_secret_file(path, secrets.token_hex(32).encode() + b"\n")
    return read_secret_file(path, name=f"the audit key file {path}").strip()


def _last_line(path: str) -> bytes | None:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        block = 65536
        while True:
            start = max(0, size - block)
            f.seek(start)
            data = f.read(size - start)
            lines = data.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or start == 0:
                last = lines[-1].strip()
                return last or None
            block *= 4


class AuditLog:
    """Append-only audit chain, in memory (bounded per tenant) and optionally in a file.

    Parameters
    ----------
    key : bytes
        The HMAC key (:func:`audit_key`).
    path : str, optional
        JSON-lines file; an existing chain is continued.
    per_tenant : int, default 1000
        Entries kept in memory per tenant (or per principal for entries
        without a tenant): one tenant's entries never evict another's. The
        file keeps everything.
    replicate : callable, optional
        Called with each entry (the coordinator's ``audit``), best effort.
    """

    def __init__(
        self,
        key: bytes,
        path: str | None = None,
        *,
        per_tenant: int = 1000,
        replicate: Callable[[dict], Any] | None = None,
    ) -> None:
        self._key = key
        self.path = path
        self.per_tenant = max(1, int(per_tenant))
        self.replicate = replicate
        self.seq = 0
        self.head = ""
        self.groups: dict[str, deque] = {}
        self.evicted: dict[str, int] = {}
        self.write_errors = 0
        self._file = None
        if path:
            if os.path.exists(path) and os.path.getsize(path) > 0:
                last = _last_line(path)
                try:
                    rec = json.loads(last) if last else None
                    self.seq, self.head = int(rec["seq"]), str(rec["mac"])
                except Exception as e:
                    raise ConfigError(
                        f"oxigdal.auth.audit-log={path!r}: its last line is not an audit "
                        f"entry ({e}); run `dask oxigdal audit verify {path}`"
                    ) from None
            self._file = open(path, "a", encoding="utf-8")

    def append(
        self,
        action: str,
        outcome: str,
        *,
        principal: str | None = None,
        credential: str | None = None,
        client: str | None = None,
        peer: str | None = None,
        tenant: str | None = None,
        **detail: Any,
    ) -> dict:
        """Append one entry and return it (with ``seq``, ``prev`` and ``mac``).

        Parameters
        ----------
        action : str
            E.g. ``"register-client"``, ``"run_function"``, ``"stream-forged"``.
        outcome : str
            ``"allowed"``, ``"denied"``, ``"dropped"``, ...
        principal, credential, client, peer, tenant : str, optional
            Who, with what, from where, for which tenant.
        **detail
            Plain data.

        Returns
        -------
        dict
        """
        self.seq += 1
        entry = {
            "seq": self.seq,
            "time": round(time.time(), 6),
            "principal": principal,
            "credential": credential,
            "client": client,
            "peer": peer,
            "action": action,
            "outcome": outcome,
            "tenant": tenant,
            "detail": detail,
            "prev": self.head,
        }
        entry["mac"] = self.head = _mac(self._key, entry)
        group = tenant or principal or "-"
        q = self.groups.get(group)
        if q is None:
            q = self.groups[group] = deque()
        q.append(entry)
        if len(q) > self.per_tenant:
            q.popleft()
            self.evicted[group] = self.evicted.get(group, 0) + 1
        if self._file is not None:
            try:
                self._file.write(_canonical(entry).decode() + "\n")
                self._file.flush()
            except OSError:
                self.write_errors += 1
        if self.replicate is not None:
            try:
                self.replicate(entry)
            except Exception:
                pass
        return entry

    def entries(self, tenant: str | None = None) -> list[dict]:
        """Entries in memory, oldest first (one group, or all).

        Parameters
        ----------
        tenant : str, optional
            A tenant (or principal) group.

        Returns
        -------
        list of dict
        """
        if tenant is not None:
            return list(self.groups.get(tenant, ()))
        return sorted((e for q in self.groups.values() for e in q), key=lambda e: e["seq"])

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class VerifyResult:
    """What :func:`verify` found.

    Attributes
    ----------
    ok : bool
        The chain holds (and contains the anchor, when one was given).
    entries : int
        Lines read.
    head : str
        The last ``mac``.
    errors : list of str
        One message per problem, naming the line.
    """

    ok: bool
    entries: int
    head: str
    errors: list[str] = field(default_factory=list)


def verify(path: str, key: bytes, anchor: str | None = None) -> VerifyResult:
    """Check the hash chain of the audit log at ``path``.

    Parameters
    ----------
    path : str
        The JSON-lines file.
    key : bytes
        The chain's key.
    anchor : str, optional
        A head recorded earlier: it must be the ``mac`` of some line
        (otherwise the log was truncated or rewritten after it).

    Returns
    -------
    VerifyResult
    """
    errors: list[str] = []
    prev = ""
    expected_seq = 1
    n = 0
    anchor_seen = anchor is None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            n += 1
            try:
                rec = json.loads(line)
                mac = rec.pop("mac")
                seq = rec["seq"]
            except Exception as e:
                errors.append(f"line {lineno}: not an audit entry ({type(e).__name__}: {e})")
                prev = ""
                continue
            if not hmac.compare_digest(_mac(key, rec), str(mac)):
                errors.append(f"line {lineno} (seq {seq}): MAC mismatch: the entry was edited")
            if rec.get("prev") != prev:
                errors.append(
                    f"line {lineno} (seq {seq}): does not follow the line before: an entry "
                    "was deleted, inserted or reordered"
                )
            if seq != expected_seq:
                errors.append(f"line {lineno}: seq {seq}, expected {expected_seq}")
            expected_seq = (seq + 1) if isinstance(seq, int) else expected_seq + 1
            prev = str(mac)
            if not anchor_seen and hmac.compare_digest(str(mac), anchor or ""):
                anchor_seen = True
    if not anchor_seen:
        errors.append(
            f"the anchor head {anchor[:16]}... is not in the log: it was truncated or "
            "rewritten after the anchor was recorded"
        )
    return VerifyResult(not errors, n, prev, errors)
