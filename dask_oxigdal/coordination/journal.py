"""Checksummed journal and dump for pysyncobj.

pysyncobj's own ``FileJournal`` is an mmap'd file with no checksums and no
fsync, and its full dump is loaded inside a bare ``except`` that only logs a
failure. A flipped byte or a truncated file is therefore either loaded
silently or dropped silently. This module replaces both:

- :class:`ChecksummedJournal` implements pysyncobj's ``Journal`` interface
  over an append-only file of records ``[length u32][crc32 u32][index u64]
  [term u64][command]``; each record is written with one ``os.write`` (and
  ``fsync`` when asked), files are created with mode ``0600``;
- the Raft metadata (current term, vote, commit index) lives in a small
  JSON file with its own CRC, replaced atomically;
- :func:`write_dump` / :func:`read_dump` write and read the full dump with a
  SHA-256 over the payload;
- :func:`verify_data_dir` checks all three before a node starts and raises
  :class:`CorruptJournalError` naming the file, the record and the offset.

pysyncobj creates its journal with ``pysyncobj.syncobj.createJournal(path)``;
:func:`install` wraps that function so that a path made by
:func:`checksummed_path` gets a :class:`ChecksummedJournal` and every other
path keeps pysyncobj's behaviour.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import threading
import zlib
from typing import Any

from pysyncobj.journal import Journal

__all__ = [
    "ChecksummedJournal",
    "CorruptJournalError",
    "checksummed_path",
    "install",
    "read_dump",
    "verify_data_dir",
    "write_dump",
]

MAGIC = b"OXJRNL01"
DUMP_MAGIC = b"OXDUMP01"
_REC = struct.Struct("<IIQQ")
FILE_MODE = 0o600


class CorruptJournalError(RuntimeError):
    """A journal, metadata or dump file failed its checksum or is truncated."""


class _ChecksummedPath(str):
    """A journal path that asks for :class:`ChecksummedJournal` (see :func:`install`)."""

    fsync: bool = False


def checksummed_path(path: str, *, fsync: bool = False) -> str:
    """Mark ``path`` so that pysyncobj opens it as a :class:`ChecksummedJournal`.

    Parameters
    ----------
    path : str
        Journal file.
    fsync : bool
        ``fsync`` after each record and each metadata update.

    Returns
    -------
    str
        ``path`` (a ``str`` subclass) for ``SyncObjConf(journalFile=...)``.
    """
    p = _ChecksummedPath(path)
    p.fsync = bool(fsync)
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
                return ChecksummedJournal(str(journalFile), fsync=journalFile.fsync)
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


def _record(command: bytes, idx: int, term: int) -> bytes:
    body = struct.pack("<QQ", idx, term) + command
    return _REC.pack(len(command), zlib.crc32(body), idx, term) + command


def _parse_journal(path: str) -> tuple[list[tuple[bytes, int, int]], list[int], int]:
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        return [], [], 0
    if data[: len(MAGIC)] != MAGIC:
        raise CorruptJournalError(
            f"{path}: not a dask-oxigdal journal (bad header {data[:8]!r}; expected {MAGIC!r})"
        )
    entries: list[tuple[bytes, int, int]] = []
    offsets: list[int] = []
    pos = len(MAGIC)
    while pos < len(data):
        if pos + _REC.size > len(data):
            raise CorruptJournalError(
                f"{path}: truncated record header at offset {pos} (record {len(entries)}; "
                f"file is {len(data)} bytes)"
            )
        length, crc, idx, term = _REC.unpack_from(data, pos)
        end = pos + _REC.size + length
        if end > len(data):
            raise CorruptJournalError(
                f"{path}: truncated record {len(entries)} at offset {pos} (index {idx}: needs "
                f"{end - pos} bytes, {len(data) - pos} left)"
            )
        command = data[pos + _REC.size : end]
        if zlib.crc32(struct.pack("<QQ", idx, term) + command) != crc:
            raise CorruptJournalError(
                f"{path}: checksum mismatch in record {len(entries)} at offset {pos} (index {idx})"
            )
        if entries and idx != entries[-1][1] + 1:
            raise CorruptJournalError(
                f"{path}: record {len(entries)} at offset {pos} has index {idx}, expected "
                f"{entries[-1][1] + 1}"
            )
        entries.append((command, idx, term))
        offsets.append(pos)
        pos = end
    return entries, offsets, pos


def _read_meta(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        raw = f.read()
    crc, _, body = raw.partition(b" ")
    try:
        ok = int(crc, 16) == zlib.crc32(body)
    except ValueError:
        ok = False
    if not ok:
        raise CorruptJournalError(f"{path}: Raft metadata checksum mismatch")
    return json.loads(body)


class ChecksummedJournal(Journal):
    """pysyncobj ``Journal`` with a CRC32 per record, mode-0600 files and optional fsync.

    Parameters
    ----------
    path : str
        Journal file (created if missing). Its metadata goes to ``path + ".meta"``.
    fsync : bool
        ``fsync`` after each record.

    Raises
    ------
    CorruptJournalError
        The file fails its checks (see :func:`verify_data_dir`).
    """

    def __init__(self, path: str, *, fsync: bool = False) -> None:
        self.path = path
        self.meta_path = path + ".meta"
        self.fsync = fsync
        self._entries, self._offsets, end = (
            _parse_journal(path) if os.path.exists(path) else ([], [], 0)
        )
        self._meta = _read_meta(self.meta_path)
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
        rec = _record(command, idx, term)
        os.pwrite(self._fd, rec, self._end)
        if self.fsync:
            os.fsync(self._fd)
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._end += len(rec)

    def clear(self) -> None:
        self._entries = []
        self._offsets = []
        self._end = len(MAGIC)
        os.ftruncate(self._fd, self._end)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom >= len(self._entries):
            return
        self._end = self._offsets[entryFrom]
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        os.ftruncate(self._fd, self._end)

    def deleteEntriesTo(self, entryTo: int) -> None:
        keep = self._entries[entryTo:]
        data = bytearray(MAGIC)
        offsets = []
        for command, idx, term in keep:
            offsets.append(len(data))
            data += _record(command, idx, term)
        _write_atomic(self.path, bytes(data), self.fsync)
        os.close(self._fd)
        self._fd = _open_private(self.path, os.O_RDWR)
        self._entries = list(keep)
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
        body = json.dumps(self._meta, sort_keys=True).encode()
        _write_atomic(self.meta_path, b"%08x " % zlib.crc32(body) + body, self.fsync)
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


def write_dump(path: str, payload: Any, *, fsync: bool = False) -> None:
    """Write ``payload`` (pickled) to ``path`` with a SHA-256, atomically, mode 0600.

    Parameters
    ----------
    path : str
        Dump file.
    payload : object
        Picklable state.
    fsync : bool
        ``fsync`` before the atomic rename.
    """
    body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    _write_atomic(path, DUMP_MAGIC + hashlib.sha256(body).digest() + body, fsync)


def read_dump(path: str) -> Any:
    """Read a dump written by :func:`write_dump`, verifying its SHA-256.

    Parameters
    ----------
    path : str
        Dump file.

    Returns
    -------
    object
        The payload.

    Raises
    ------
    CorruptJournalError
        Bad header, truncated file or checksum mismatch.
    """
    with open(path, "rb") as f:
        raw = f.read()
    head = len(DUMP_MAGIC) + 32
    if raw[: len(DUMP_MAGIC)] != DUMP_MAGIC or len(raw) < head:
        raise CorruptJournalError(
            f"{path}: not a dask-oxigdal dump, or truncated ({len(raw)} bytes)"
        )
    body = raw[head:]
    if hashlib.sha256(body).digest() != raw[len(DUMP_MAGIC) : head]:
        raise CorruptJournalError(f"{path}: dump checksum mismatch (corrupt or truncated)")
    return pickle.loads(body)


def verify_data_dir(journal: str, dump: str) -> dict[str, Any]:
    """Check a node's journal, metadata and dump before it starts.

    Parameters
    ----------
    journal, dump : str
        The node's journal and dump files (missing files are fine: a new node).

    Returns
    -------
    dict
        ``{"entries": n, "last_index": i, "commit_index": c, "dump_index": d}``.

    Raises
    ------
    CorruptJournalError
        A record fails its CRC, a file is truncated, the metadata is corrupt,
        or the journal ends before the recorded commit index.
    """
    entries: list[tuple[bytes, int, int]] = []
    if os.path.exists(journal):
        entries, _, _ = _parse_journal(journal)
    meta = _read_meta(journal + ".meta")
    dump_index = 0
    if os.path.exists(dump):
        raft = read_dump(dump)["raft"]
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
