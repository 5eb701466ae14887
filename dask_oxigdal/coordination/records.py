"""HMAC'd files of a coordinator node: the key, the file primitives and the full dump.

Every record carries an HMAC-SHA256 keyed with the group's secret
(:func:`derive_key`), so a rewritten record fails verification; files are
created with mode ``0600`` and replaced atomically. :func:`write_dump` /
:func:`read_dump` write and read the full dump (plain JSON data, see
:mod:`~dask_oxigdal.coordination.plain`, with an HMAC). The journal itself is
:mod:`~dask_oxigdal.coordination.journal`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from typing import Any

from dask_oxigdal.coordination._pysyncobj import TCPNode
from dask_oxigdal.coordination.plain import _entry_from_plain, _entry_to_plain, from_plain, to_plain

__all__ = [
    "DUMP_MAGIC",
    "FILE_MODE",
    "MAGIC",
    "CorruptJournalError",
    "derive_key",
    "read_dump",
    "write_dump",
]

MAGIC = b"OXJRNL02"
DUMP_MAGIC = b"OXDUMP02"
#: headers of the earlier, unkeyed pickle format (refused with a clear error)
OLD_MAGIC = b"OXJRNL01"
OLD_DUMP_MAGIC = b"OXDUMP01"
_LEN = struct.Struct("<I")
_MAC_SIZE = 32
FILE_MODE = 0o600


class CorruptJournalError(RuntimeError):
    """A journal, metadata or dump file failed its HMAC, is truncated or has an unknown format."""


# ---------------------------------------------------------------- keys and MACs
def derive_key(password: str | bytes) -> bytes:
    """The HMAC key of a group's journals and dumps, derived from its secret.

    Parameters
    ----------
    password : str or bytes
        The group's secret (the pysyncobj password).

    Returns
    -------
    bytes
        32 bytes.

    Raises
    ------
    ValueError
        An empty secret.
    """
    if not password:
        raise ValueError("the coordinator's journal needs the group's secret (got an empty one)")
    if isinstance(password, str):
        password = password.encode()
    return hmac.new(password, b"dask-oxigdal coordinator journal v2", hashlib.sha256).digest()


def _mac(key: bytes, kind: bytes, body: bytes) -> bytes:
    return hmac.new(key, kind + b"\0" + body, hashlib.sha256).digest()


def _open_private(path: str, flags: int) -> int:
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def _write_atomic(path: str, data: bytes, fsync: bool) -> None:
    tmp = path + ".tmp"
    fd = _open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _record(key: bytes, plain: Any, idx: int, term: int) -> bytes:
    body = _dumps({"i": idx, "t": term, "c": plain})
    return _LEN.pack(len(body)) + _mac(key, b"journal", body) + body


def _old_format(path: str, what: str) -> CorruptJournalError:
    return CorruptJournalError(
        f"{path}: a {what} in the earlier dask-oxigdal format (pickled records with an unkeyed "
        "checksum): it is not loaded, because a pickle can run code. Move the coordinator's "
        "data directory away to start empty, or restore it with the dask-oxigdal version "
        "that wrote it and export the state first."
    )


def write_dump(path: str, payload: dict[str, Any], *, key: bytes, fsync: bool = False) -> None:
    """Write a full dump (plain data, with an HMAC) to ``path``, atomically, mode 0600.

    Parameters
    ----------
    path : str
        Dump file.
    payload : dict
        ``{"state": plain_state, "raft": (last_entry, previous_entry, members)}`` as
        pysyncobj's serializer hook gets it: log entries ``(command bytes, index,
        term)`` and a set of ``TCPNode``.
    key : bytes
        HMAC key (:func:`derive_key`).
    fsync : bool
        ``fsync`` before the atomic rename.
    """
    last, previous, members = payload["raft"]
    plain = {
        "state": to_plain(payload["state"]),
        "raft": [
            _entry_to_plain(last),
            _entry_to_plain(previous),
            sorted(str(getattr(n, "address", n)) for n in members),
        ],
    }
    body = _dumps(plain)
    _write_atomic(path, DUMP_MAGIC + _mac(key, b"dump", body) + body, fsync)


def read_dump(path: str, *, key: bytes) -> dict[str, Any]:
    """Read a dump written by :func:`write_dump`, verifying its HMAC.

    Parameters
    ----------
    path : str
        Dump file.
    key : bytes
        HMAC key (:func:`derive_key`).

    Returns
    -------
    dict
        ``{"state": ..., "raft": (last_entry, previous_entry, set of TCPNode)}``.

    Raises
    ------
    CorruptJournalError
        Bad header, earlier (pickle) format, truncated file or HMAC mismatch.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[: len(OLD_DUMP_MAGIC)] == OLD_DUMP_MAGIC:
        raise _old_format(path, "dump")
    head = len(DUMP_MAGIC) + _MAC_SIZE
    if raw[: len(DUMP_MAGIC)] != DUMP_MAGIC or len(raw) < head:
        raise CorruptJournalError(
            f"{path}: not a dask-oxigdal dump, or truncated ({len(raw)} bytes)"
        )
    body = raw[head:]
    if not hmac.compare_digest(raw[len(DUMP_MAGIC) : head], _mac(key, b"dump", body)):
        raise CorruptJournalError(
            f"{path}: dump HMAC mismatch (rewritten, corrupted or truncated, or written by a "
            "group with another secret)"
        )
    try:
        plain = json.loads(body)
        last, previous, members = plain["raft"]
        return {
            "state": from_plain(plain["state"]),
            "raft": (
                _entry_from_plain(last),
                _entry_from_plain(previous),
                {TCPNode(str(a)) for a in members},
            ),
        }
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptJournalError(f"{path}: malformed dump: {e}") from e
