"""Authenticated, plain-data journal and dump for pysyncobj.

pysyncobj's own ``FileJournal`` is an mmap'd file of pickles with no
checksums and no fsync, and its full dump is a gzipped pickle loaded inside a
bare ``except`` that only logs a failure. A flipped byte or a truncated file
is therefore either loaded silently or dropped silently, and anyone who can
write the file can run code in the node by rewriting a pickle. This module
replaces both:

- every record is plain data (JSON, with tags for tuples, bytes, sets and
  pysyncobj nodes, see :func:`to_plain`), never a pickle;
- every record carries an HMAC-SHA256 keyed with the group's secret
  (:func:`derive_key`): a rewritten record fails verification;
- :class:`ChecksummedJournal` implements pysyncobj's ``Journal`` interface
  over an append-only file of records ``[length u32][hmac 32 bytes][JSON
  {"i": index, "t": term, "c": command}]``; each record is written with one
  ``os.write`` (and ``fsync`` when asked), files are created with mode
  ``0600``;
- the Raft metadata (current term, vote, commit index) lives in a small
  JSON file with its own HMAC, replaced atomically;
- :func:`write_dump` / :func:`read_dump` write and read the full dump (JSON
  with an HMAC);
- :func:`verify_data_dir` checks all three before a node starts and raises
  :class:`CorruptJournalError` naming the file, the record and the offset.
  Files of the earlier format (pickled commands, unkeyed CRC/SHA-256) are
  refused with a clear error, never unpickled.

pysyncobj hands the journal each command as bytes: a type byte and, for
regular, membership and version commands, a pickle it made itself (or
received from an authenticated peer). :func:`encode_command` turns it into
plain data with a restricted unpickler (plain containers and pysyncobj's
``TCPNode`` only); :func:`decode_command` rebuilds the bytes from the
verified plain data when a journal or dump is loaded.

pysyncobj creates its journal with ``pysyncobj.syncobj.createJournal(path)``;
:func:`install` wraps that function so that a path made by
:func:`checksummed_path` gets a :class:`ChecksummedJournal` and every other
path keeps pysyncobj's behaviour.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import pickle
import struct
import threading
from typing import Any

from dask_oxigdal.coordination._pysyncobj import Journal, TCPNode

__all__ = [
    "ChecksummedJournal",
    "CorruptJournalError",
    "checksummed_path",
    "decode_command",
    "derive_key",
    "encode_command",
    "from_plain",
    "install",
    "read_dump",
    "to_plain",
    "verify_data_dir",
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
_TAG = "__oxt__"


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


# ---------------------------------------------------------------- plain data
def to_plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON data; tuples, bytes, sets, non-str-keyed dicts and nodes are tagged.

    Parameters
    ----------
    value : object
        None, bool, int, float, str, list, tuple, dict, set, frozenset, bytes or
        a pysyncobj ``TCPNode``, nested.

    Returns
    -------
    object
        JSON-serialisable data; :func:`from_plain` reverses it.

    Raises
    ------
    TypeError
        Any other type.
    """
    if depth > 100:
        raise TypeError("value nested too deeply for the coordinator's journal")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    d = depth + 1
    if isinstance(value, list):
        return [to_plain(v, d) for v in value]
    if isinstance(value, tuple):
        return {_TAG: "tuple", "v": [to_plain(v, d) for v in value]}
    if isinstance(value, dict):
        if _TAG not in value and all(isinstance(k, str) for k in value):
            return {k: to_plain(v, d) for k, v in value.items()}
        return {_TAG: "dict", "v": [[to_plain(k, d), to_plain(v, d)] for k, v in value.items()]}
    if isinstance(value, (set, frozenset)):
        kind = "set" if isinstance(value, set) else "frozenset"
        return {_TAG: kind, "v": [to_plain(v, d) for v in value]}
    if isinstance(value, (bytes, bytearray)):
        return {_TAG: "bytes", "v": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, TCPNode):
        return {_TAG: "node", "v": value.address}
    raise TypeError(
        f"{type(value).__name__} is not plain data for the coordinator's journal "
        "(None, bool, int, float, str, list, tuple, dict, set, bytes, TCPNode)"
    )


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def from_plain(value: Any) -> Any:
    """Reverse :func:`to_plain`.

    Parameters
    ----------
    value : object
        Data read from JSON.

    Returns
    -------
    object

    Raises
    ------
    ValueError
        An unknown tag.
    """
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: from_plain(v) for k, v in value.items()}
    items = value.get("v")
    if tag == "tuple":
        return tuple(from_plain(v) for v in items)
    if tag == "dict":
        return {_hashable(from_plain(k)): from_plain(v) for k, v in items}
    if tag in ("set", "frozenset"):
        out = {_hashable(from_plain(v)) for v in items}
        return out if tag == "set" else frozenset(out)
    if tag == "bytes":
        return base64.b64decode(items)
    if tag == "node":
        return TCPNode(str(items))
    raise ValueError(f"unknown tag {tag!r} in a coordinator journal record")


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles containers and pysyncobj nodes only: never imports or calls anything else."""

    _ALLOWED = {("pysyncobj.node", "TCPNode"), ("builtins", "set"), ("builtins", "frozenset")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"{module}.{name} is not allowed in a coordinator command (plain data only)"
        )


_NO_PAYLOAD = (1,)  # pysyncobj's NO_OP command: the type byte alone


def encode_command(command: bytes) -> Any:
    """A pysyncobj log command (type byte + pickle) as plain data.

    Parameters
    ----------
    command : bytes
        As pysyncobj passes it to ``Journal.add``.

    Returns
    -------
    list
        ``[type]`` or ``[type, plain_payload]``.

    Raises
    ------
    pickle.UnpicklingError
        The payload holds something other than plain data and pysyncobj nodes.
    """
    command = bytes(command)
    kind = command[0]
    if len(command) == 1:
        return [kind]
    payload = _PlainUnpickler(io.BytesIO(command[1:])).load()
    return [kind, to_plain(payload)]


def decode_command(plain: Any) -> bytes:
    """Rebuild pysyncobj's command bytes from :func:`encode_command`'s plain data.

    Parameters
    ----------
    plain : list

    Returns
    -------
    bytes
    """
    from pysyncobj.pickle import dumps

    if not isinstance(plain, list) or not plain or not isinstance(plain[0], int):
        raise ValueError(f"malformed command {plain!r}")
    head = struct.pack("B", plain[0])
    if len(plain) == 1:
        return head
    return head + dumps(from_plain(plain[1]))


# ---------------------------------------------------------------- files
class _ChecksummedPath(str):
    """A journal path that asks for :class:`ChecksummedJournal` (see :func:`install`)."""

    fsync: bool = False
    key: bytes = b""


def checksummed_path(path: str, *, key: bytes, fsync: bool = False) -> str:
    """Mark ``path`` so that pysyncobj opens it as a :class:`ChecksummedJournal`.

    Parameters
    ----------
    path : str
        Journal file.
    key : bytes
        HMAC key (:func:`derive_key`).
    fsync : bool
        ``fsync`` after each record and each metadata update.

    Returns
    -------
    str
        ``path`` (a ``str`` subclass) for ``SyncObjConf(journalFile=...)``.
    """
    p = _ChecksummedPath(path)
    p.fsync = bool(fsync)
    p.key = bytes(key)
    return p


_install_lock = threading.Lock()


def install() -> None:
    """Route pysyncobj's journal creation through :func:`checksummed_path` markers (idempotent)."""
    import pysyncobj.syncobj as so

    with _install_lock:
        original = so.createJournal
        if getattr(original, "_oxigdal", False):
            return

        def createJournal(journalFile: Any = None) -> Any:
            if isinstance(journalFile, _ChecksummedPath):
                return ChecksummedJournal(
                    str(journalFile), key=journalFile.key, fsync=journalFile.fsync
                )
            return original(journalFile)

        createJournal._oxigdal = True  # type: ignore[attr-defined]
        so.createJournal = createJournal


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


def _parse_journal(path: str, key: bytes) -> tuple[list[tuple[bytes, int, int]], list, list, int]:
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        return [], [], [], 0
    if data[: len(OLD_MAGIC)] == OLD_MAGIC:
        raise _old_format(path, "journal")
    if data[: len(MAGIC)] != MAGIC:
        raise CorruptJournalError(
            f"{path}: not a dask-oxigdal journal (bad header {data[:8]!r}; expected {MAGIC!r})"
        )
    entries: list[tuple[bytes, int, int]] = []
    plains: list = []
    offsets: list[int] = []
    pos = len(MAGIC)
    head = _LEN.size + _MAC_SIZE
    while pos < len(data):
        if pos + head > len(data):
            raise CorruptJournalError(
                f"{path}: truncated record header at offset {pos} (record {len(entries)}; "
                f"file is {len(data)} bytes)"
            )
        (length,) = _LEN.unpack_from(data, pos)
        end = pos + head + length
        if end > len(data):
            raise CorruptJournalError(
                f"{path}: truncated record {len(entries)} at offset {pos} (needs "
                f"{end - pos} bytes, {len(data) - pos} left)"
            )
        mac = data[pos + _LEN.size : pos + head]
        body = data[pos + head : end]
        if not hmac.compare_digest(mac, _mac(key, b"journal", body)):
            raise CorruptJournalError(
                f"{path}: HMAC mismatch in record {len(entries)} at offset {pos}: the record "
                "was rewritten or corrupted, or the journal belongs to a group with another "
                "secret"
            )
        try:
            rec = json.loads(body)
            idx, term, plain = int(rec["i"]), int(rec["t"]), rec["c"]
            command = decode_command(plain)
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptJournalError(
                f"{path}: malformed record {len(entries)} at offset {pos}: {e}"
            ) from e
        if entries and idx != entries[-1][1] + 1:
            raise CorruptJournalError(
                f"{path}: record {len(entries)} at offset {pos} has index {idx}, expected "
                f"{entries[-1][1] + 1}"
            )
        entries.append((command, idx, term))
        plains.append(plain)
        offsets.append(pos)
        pos = end
    return entries, plains, offsets, pos


def _read_meta(path: str, key: bytes) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        raw = f.read()
    mac, _, body = raw.partition(b" ")
    try:
        ok = hmac.compare_digest(bytes.fromhex(mac.decode("ascii")), _mac(key, b"meta", body))
    except ValueError:
        ok = False
    if not ok:
        raise CorruptJournalError(
            f"{path}: Raft metadata HMAC mismatch (rewritten or corrupted, written with another "
            "secret, or in the earlier unkeyed format)"
        )
    return json.loads(body)


class ChecksummedJournal(Journal):
    """pysyncobj ``Journal`` of plain-data records with an HMAC each, mode-0600 files, optional fsync.

    Parameters
    ----------
    path : str
        Journal file (created if missing). Its metadata goes to ``path + ".meta"``.
    key : bytes
        HMAC key (:func:`derive_key`).
    fsync : bool
        ``fsync`` after each record.

    Raises
    ------
    CorruptJournalError
        The file fails its checks (see :func:`verify_data_dir`).
    """

    def __init__(self, path: str, *, key: bytes, fsync: bool = False) -> None:
        self.path = path
        self.meta_path = path + ".meta"
        self.fsync = fsync
        self._key = key
        self._entries, self._plains, self._offsets, end = (
            _parse_journal(path, key) if os.path.exists(path) else ([], [], [], 0)
        )
        self._meta = _read_meta(self.meta_path, key)
        self._meta_dirty = False
        self._fd = _open_private(path, os.O_RDWR | os.O_CREAT)
        if end == 0:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, MAGIC, 0)
            end = len(MAGIC)
        self._end = end

    # -- records
    def add(self, command: Any, idx: int, term: int) -> None:
        command = bytes(command)
        plain = encode_command(command)
        rec = _record(self._key, plain, idx, term)
        os.pwrite(self._fd, rec, self._end)
        if self.fsync:
            os.fsync(self._fd)
        # pysyncobj applies the bytes it handed us; a reload rebuilds them from ``plain``
        self._entries.append((command, idx, term))
        self._plains.append(plain)
        self._offsets.append(self._end)
        self._end += len(rec)

    def clear(self) -> None:
        self._entries = []
        self._plains = []
        self._offsets = []
        self._end = len(MAGIC)
        os.ftruncate(self._fd, self._end)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom >= len(self._entries):
            return
        self._end = self._offsets[entryFrom]
        del self._entries[entryFrom:]
        del self._plains[entryFrom:]
        del self._offsets[entryFrom:]
        os.ftruncate(self._fd, self._end)

    def deleteEntriesTo(self, entryTo: int) -> None:
        keep = self._entries[entryTo:]
        plains = self._plains[entryTo:]
        data = bytearray(MAGIC)
        offsets = []
        for (_, idx, term), plain in zip(keep, plains, strict=True):
            offsets.append(len(data))
            data += _record(self._key, plain, idx, term)
        _write_atomic(self.path, bytes(data), self.fsync)
        os.close(self._fd)
        self._fd = _open_private(self.path, os.O_RDWR)
        self._entries = list(keep)
        self._plains = list(plains)
        self._offsets = offsets
        self._end = len(data)

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self.onOneSecondTimer()
        try:
            os.close(self._fd)
        except OSError:
            pass

    def flush(self) -> None:
        os.fsync(self._fd)

    # -- Raft metadata
    def _store_meta(self) -> None:
        body = _dumps(self._meta)
        mac = _mac(self._key, b"meta", body).hex().encode()
        _write_atomic(self.meta_path, mac + b" " + body, self.fsync)
        self._meta_dirty = False

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        self._meta["commit_index"] = raftCommitIndex
        self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:
        return self._meta.get("commit_index", 1)

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        # Raft: term and vote must be durable before a vote is sent
        self._meta["term"] = term
        self._meta["voted_for"] = votedForNodeId
        self._store_meta()

    def getCurrentTerm(self) -> int:
        return self._meta.get("term", 0)

    def getVotedForNodeId(self) -> Any:
        return self._meta.get("voted_for")

    def onOneSecondTimer(self) -> None:
        if self._meta_dirty:
            self._store_meta()


def _entry_to_plain(entry: Any) -> list:
    command, idx, term = entry
    return [encode_command(command), int(idx), int(term)]


def _entry_from_plain(plain: Any) -> tuple[bytes, int, int]:
    command, idx, term = plain
    return (decode_command(command), int(idx), int(term))


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


def verify_data_dir(journal: str, dump: str, *, key: bytes) -> dict[str, Any]:
    """Check a node's journal, metadata and dump before it starts.

    Parameters
    ----------
    journal, dump : str
        The node's journal and dump files (missing files are fine: a new node).
    key : bytes
        HMAC key (:func:`derive_key`).

    Returns
    -------
    dict
        ``{"entries": n, "last_index": i, "commit_index": c, "dump_index": d}``.

    Raises
    ------
    CorruptJournalError
        A record fails its HMAC, a file is truncated or in the earlier format, the
        metadata is corrupt, or the journal ends before the recorded commit index.
    """
    entries: list[tuple[bytes, int, int]] = []
    if os.path.exists(journal):
        entries = _parse_journal(journal, key)[0]
    meta = _read_meta(journal + ".meta", key)
    dump_index = 0
    if os.path.exists(dump):
        raft = read_dump(dump, key=key)["raft"]
        dump_index = raft[0][1]
    last = entries[-1][1] if entries else 0
    commit = meta.get("commit_index", 0)
    if commit > max(last, dump_index):
        raise CorruptJournalError(
            f"{journal}: truncated: the commit index is {commit} but the journal ends at "
            f"index {last} (dump at {dump_index})"
        )
    return {
        "entries": len(entries),
        "last_index": last,
        "commit_index": commit,
        "dump_index": dump_index,
    }
