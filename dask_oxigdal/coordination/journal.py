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
- the records and the full dump are written by
  :mod:`~dask_oxigdal.coordination.records`, the plain data by
  :mod:`~dask_oxigdal.coordination.plain` (their names are importable from
  here too);
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

import hmac
import json
import os
import threading
from typing import Any

from dask_oxigdal.coordination._pysyncobj import Journal
from dask_oxigdal.coordination.plain import (
    decode_command,
    encode_command,
    from_plain,
    to_plain,
)
from dask_oxigdal.coordination.records import (  # noqa: F401 (MAGIC, OLD_*: re-exported)
    _LEN,
    _MAC_SIZE,
    DUMP_MAGIC,
    FILE_MODE,
    MAGIC,
    OLD_DUMP_MAGIC,
    OLD_MAGIC,
    CorruptJournalError,
    _dumps,
    _mac,
    _old_format,
    _open_private,
    _record,
    _write_atomic,
    derive_key,
    read_dump,
    write_dump,
)

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
