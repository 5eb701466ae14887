"""The checkpoint store: one verified file per (tenant, key), on any fsspec URL.

:class:`CheckpointStore` is used by the ``Checkpoint`` policy
(:mod:`dask_oxigdal.fault.checkpoint`) on the scheduler and by the
:func:`save_result` / :func:`load_result` tasks on the workers. Any fsspec URL
(default a local directory ``.oxigdal/checkpoints``). One file per (tenant,
key), named by a SHA-256: of the key's string form for the default tenant,
of the tenant's and the key's names for any other tenant (see
:meth:`CheckpointStore.filename`). A file is a header line ``OXCK1 <sha256
hex> <nbytes>\\n`` followed by the pickled result. Writes are atomic (a
temporary name, then moved into place); reads check the magic, the length
and the SHA-256 before unpickling: a flipped byte or a truncated file raises
:class:`CheckpointCorrupt` and is never returned.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import uuid
from typing import Any

import fsspec
from distributed.metrics import time

from dask_oxigdal.exceptions import ConfigError, OxigdalError
from dask_oxigdal.fault._common import option

__all__ = [
    "MAGIC",
    "CheckpointCorrupt",
    "CheckpointStore",
    "load_result",
    "save_result",
]

SECTION = "checkpoint"
#: First bytes of every checkpoint file.
MAGIC = b"OXCK1"
_SUFFIX = ".ckpt"


class CheckpointCorrupt(OxigdalError):
    """A checkpoint file failed its magic, length or SHA-256 check (or is missing)."""


def _key_name(key: Any) -> str:
    return str(key)


def _hash_input(key: Any, tenant: str | None) -> bytes:
    """What a checkpoint's file name hashes: ``str(key)``, or the tenant and the key.

    The tenant form starts and separates with the byte ``0xff``, which no UTF-8
    string contains, so no key of the default tenant (whose form is the
    UTF-8 of ``str(key)``) can hash to another tenant's file.
    """
    name = _key_name(key).encode()
    if tenant is None:
        return name
    return b"\xff" + str(tenant).encode() + b"\xff" + name


def _bad_url_message(url: str, exc: BaseException) -> str:
    scheme = url.split("://", 1)[0] if "://" in url else None
    valid = ", ".join(["local path", *sorted(fsspec.available_protocols())])
    if scheme is not None and scheme not in fsspec.available_protocols():
        return (
            f"oxigdal.checkpoint.store={url!r} is not valid: unknown scheme {scheme!r}; "
            f"valid schemes: {valid}"
        )
    return (
        f"oxigdal.checkpoint.store={url!r} is not usable: {type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''} (valid schemes: {valid}; "
        "a scheme may need its package, e.g. s3fs for s3://)"
    )


class CheckpointStore:
    """Checkpoint files in an fsspec filesystem.

    Parameters
    ----------
    url : str, optional
        fsspec URL or local path (``oxigdal.checkpoint.store``).
    storage_options : dict, optional
        Passed to ``fsspec.core.url_to_fs``.

    Raises
    ------
    ConfigError
        ``url`` is empty or not a string, its scheme is unknown to fsspec (the
        message lists the valid schemes), or fsspec cannot open it (a missing
        backend package such as ``s3fs``, bad storage options).
    """

    def __init__(self, url: str | None = None, storage_options: dict | None = None) -> None:
        url = option(SECTION, "store", url)
        if not isinstance(url, str) or not url:
            raise ConfigError(
                f"oxigdal.checkpoint.store={url!r} is not valid: give a local path or fsspec URL"
            )
        self.url = url
        self.storage_options = dict(storage_options or {})
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url, **self.storage_options)
        except Exception as e:
            raise ConfigError(_bad_url_message(url, e)) from e
        self.local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        # the directory is created by the first save: a store that is only
        # configured (the policy is on by default) writes nothing
        self._made = False

    def check(self) -> None:
        """Check that a local store's directory exists or can be created (writes nothing).

        Remote stores are not probed (that would block on the network); fsspec
        already rejected unknown schemes when the store was made.

        Raises
        ------
        ConfigError
            The directory (or its nearest existing parent) is not a directory
            or not writable.
        """
        if not self.local:
            return
        root = os.path.abspath(self.root)
        probe = root
        while not os.path.exists(probe):
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        problem = None
        if not os.path.isdir(probe):
            problem = f"{probe!r} is not a directory"
        elif not os.access(probe, os.W_OK | os.X_OK):
            problem = f"{probe!r} is not writable"
        if problem is not None:
            raise ConfigError(
                f"oxigdal.checkpoint.store={self.url!r} is not usable: {problem}; "
                "give a writable local directory or an fsspec URL"
            )

    def __reduce__(self) -> tuple:
        return (CheckpointStore, (self.url, self.storage_options))

    def __repr__(self) -> str:
        return f"CheckpointStore({self.url!r})"

    @staticmethod
    def filename(key: Any, tenant: str | None = None) -> str:
        """File name of ``key``'s checkpoint (of ``tenant``).

        Parameters
        ----------
        key : str, tuple or other Dask key
            The task key; its ``str()`` form is hashed.
        tenant : str, optional
            The tenant whose checkpoint it is; ``None`` for the default tenant
            (the shared namespace of a single-tenant cluster).

        Returns
        -------
        str
            ``<SHA-256 hex of str(key)>.ckpt`` without a tenant;
            ``<SHA-256 hex of 0xff tenant 0xff str(key)>.ckpt`` with one
            (names in UTF-8), so no key of one tenant names another's file.
        """
        return hashlib.sha256(_hash_input(key, tenant)).hexdigest() + _SUFFIX

    def path(self, key: Any, tenant: str | None = None) -> str:
        """Full path of ``key``'s checkpoint (of ``tenant``) in the store.

        Parameters
        ----------
        key : str, tuple or other Dask key
            The task key.
        tenant : str, optional
            See :meth:`filename`.

        Returns
        -------
        str
            ``<store root>/<filename(key, tenant)>`` in the store's filesystem.
        """
        return f"{self.root.rstrip('/')}/{self.filename(key, tenant)}"

    @staticmethod
    def _parts(value: Any) -> tuple[bytes, bytes]:
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        digest = hashlib.sha256(payload).hexdigest()
        return MAGIC + f" {digest} {len(payload)}\n".encode(), payload

    @classmethod
    def encode(cls, value: Any) -> bytes:
        """The bytes of a checkpoint file holding ``value``.

        Parameters
        ----------
        value : object
            Any picklable value.

        Returns
        -------
        bytes
            The header line ``OXCK1 <sha256 hex> <nbytes>\\n`` followed by the
            pickled value.
        """
        header, payload = cls._parts(value)
        return header + payload

    @staticmethod
    def decode(data: bytes | memoryview, where: str = "checkpoint") -> Any:
        """Check and unpickle a checkpoint file's bytes.

        Parameters
        ----------
        data : bytes or memoryview
            The whole content of a checkpoint file.
        where : str, default "checkpoint"
            Names the file in error messages.

        Returns
        -------
        object
            The unpickled value.

        Raises
        ------
        CheckpointCorrupt
            Bad magic, header, length or checksum.
        """
        view = memoryview(data)
        end = bytes(view[:200]).find(b"\n")
        parts = bytes(view[:end]).split(b" ") if end >= 0 else []
        if len(parts) != 3 or parts[0] != MAGIC:
            raise CheckpointCorrupt(f"{where}: bad header (not an oxigdal checkpoint)")
        try:
            digest, nbytes = parts[1].decode("ascii"), int(parts[2])
        except (UnicodeDecodeError, ValueError):
            raise CheckpointCorrupt(f"{where}: bad header {bytes(view[:end])[:80]!r}") from None
        payload = view[end + 1 :]
        if len(payload) != nbytes:
            raise CheckpointCorrupt(
                f"{where}: truncated or padded: {len(payload)} bytes, header says {nbytes}"
            )
        if hashlib.sha256(payload).hexdigest() != digest:
            raise CheckpointCorrupt(f"{where}: SHA-256 mismatch (corrupted content)")
        return pickle.loads(payload)

    def save(
        self, key: Any, value: Any, tenant: str | None = None, *, sync: bool = True
    ) -> dict[str, Any]:
        """Write ``value`` as ``key``'s checkpoint, atomically.

        The file is written under a temporary name, then moved into place
        (``os.replace`` after ``fsync`` for local stores, ``fs.mv`` otherwise);
        the store's directory is created by the first save.

        Parameters
        ----------
        key : str, tuple or other Dask key
            The task key.
        value : object
            A picklable value.
        tenant : str, optional
            See :meth:`filename`.
        sync : bool, default True
            ``fsync`` a local file before it is moved into place (``False``:
            the file survives the death of any process, not an OS crash).

        Returns
        -------
        dict
            The manifest entry: ``path``, ``nbytes`` (file size), ``sha256``
            (of the pickled value) and ``at`` (UNIX time).
        """
        header, payload = self._parts(value)
        path = self.path(key, tenant)
        if not self._made:
            self.fs.makedirs(self.root, exist_ok=True)
            self._made = True
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        if self.local:
            with open(tmp, "wb") as f:
                f.write(header)
                f.write(payload)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            with self.fs.open(tmp, "wb") as f:
                f.write(header)
                f.write(payload)
            self.fs.mv(tmp, path)
        nbytes = len(header) + len(payload)
        return {"path": path, "nbytes": nbytes, "sha256": header[6:70].decode(), "at": time()}

    def load(self, key: Any, tenant: str | None = None) -> Any:
        """Read, check and return ``key``'s value (of ``tenant``).

        Parameters
        ----------
        key : str, tuple or other Dask key
            The task key.
        tenant : str, optional
            See :meth:`filename`.

        Returns
        -------
        object
            The value saved by :meth:`save`.

        Raises
        ------
        CheckpointCorrupt
            Missing, truncated or corrupted file.
        """
        path = self.path(key, tenant)
        try:
            if self.local:
                with open(path, "rb") as f:
                    data = f.read()
            else:
                with self.fs.open(path, "rb") as f:
                    data = f.read()
        except FileNotFoundError:
            raise CheckpointCorrupt(f"checkpoint of {key!r} is missing ({path})") from None
        return self.decode(data, f"checkpoint of {key!r} ({path})")

    def exists(self, key: Any, tenant: str | None = None) -> bool:
        """Whether ``key`` has a checkpoint file (its content is not checked).

        Parameters
        ----------
        key : str, tuple or other Dask key
            The task key.
        tenant : str, optional
            See :meth:`filename`.

        Returns
        -------
        bool
        """
        return self.fs.exists(self.path(key, tenant))

    def names(self) -> set[str]:
        """File names of every checkpoint in the store (one listing of its directory).

        Returns
        -------
        set of str
            ``filename(key)`` of each stored key; empty when the directory does
            not exist yet.
        """
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return set()
        return {e.rsplit("/", 1)[-1] for e in entries if e.endswith(_SUFFIX)}

    def delete(self, key: Any, tenant: str | None = None) -> None:
        """Remove ``key``'s checkpoint; do nothing when there is none.

        Parameters
        ----------
        key : str, tuple or other Dask key
            The task key.
        tenant : str, optional
            See :meth:`filename`.
        """
        try:
            self.fs.rm(self.path(key, tenant))
        except FileNotFoundError:
            pass


def save_result(store: CheckpointStore, key: Any, value: Any, tenant: str | None = None) -> Any:
    """Worker side: write ``value`` as ``key``'s checkpoint and return it (task function)."""
    store.save(key, value, tenant)
    return value


def load_result(store: CheckpointStore, key: Any, tenant: str | None = None) -> Any:
    """Worker side: load ``key``'s checkpoint (task function); raise if corrupt."""
    return store.load(key, tenant)
