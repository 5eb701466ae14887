"""Checkpoint / resume of tasks annotated ``checkpoint=True``.

**Store** (:class:`CheckpointStore`): any fsspec URL (default a local
directory ``.oxigdal/checkpoints``). One file per (tenant, key), named by a
SHA-256: of the key's string form for the default tenant (the name a
single-tenant cluster has always used), of the tenant's and the key's names
for any other tenant (see :meth:`CheckpointStore.filename`), so two tenants
that use the same key have two checkpoints: neither reads nor overwrites the
other's. A file is a header line ``OXCK1 <sha256 hex>
<nbytes>\\n`` followed by the pickled result. Writes are atomic: the file is
written under a temporary name, then moved into place (``os.replace`` for
local paths, ``fs.mv`` otherwise). Reads check the magic, the length and the
SHA-256 before unpickling: a flipped byte or a truncated file raises
:class:`CheckpointCorrupt` and is never returned.

**Policy** (:class:`Checkpoint`): in ``update_graph`` (before Dask
transitions the new tasks) each new task annotated ``checkpoint=True`` is
rewritten:

The tenant is the task's resolved tenant (``TaskInfo.tenant``), never a
name the task's code chooses.

- a key the store does not have: its ``run_spec`` becomes
  ``Task(key, save, store_url, key_name, <original task>, tenant)``: the original
  task runs nested inside it on the worker, and its result is written to the
  store before it is returned;
- a key the store has: its ``run_spec`` becomes a loader task with no
  dependencies, and its dependency edges are cut, so Dask never walks to the
  upstream tasks and they are not run. The original run_spec and
  dependencies are kept until the load succeeded (then the upstream tasks
  nobody else needs are forgotten); Dask's ``retries`` of the task get one extra retry:
  when the loader fails (corrupt or missing file), the transition hook
  restores the original run_spec and dependencies before Dask re-queues the
  task, and the task is recomputed from its inputs (and written again). A
  ``checkpoint-corrupt`` event reports it.

Which keys the store has is known from a listing of the store taken when the
policy starts (in a thread, not on the event loop) plus every checkpoint
written since; a file deleted behind the scheduler's back is handled like a
corrupt one.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import uuid
from typing import TYPE_CHECKING, Any

import fsspec
from dask._task_spec import Task
from distributed.metrics import time

from dask_oxigdal.exceptions import ConfigError, OxigdalError
from dask_oxigdal.fault._common import option
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo

if TYPE_CHECKING:
    from distributed.scheduler import TaskState

__all__ = ["MAGIC", "Checkpoint", "CheckpointCorrupt", "CheckpointStore"]

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


class _Loaded:
    __slots__ = ("dependencies", "retries", "run_spec")

    def __init__(self, run_spec: Any, dependencies: set) -> None:
        self.run_spec = run_spec
        self.dependencies = dependencies
        #: ``TaskState.retries`` when the loader was last sent to a worker (None: not yet)
        self.retries: int | None = None


class Checkpoint(SchedulingPolicy):
    """Persist results of ``checkpoint=True`` tasks; load them instead of recomputing.

    Parameters
    ----------
    store : str, optional
        fsspec URL or local path (``oxigdal.checkpoint.store``).
    storage_options : dict, optional
        fsspec options (``oxigdal.checkpoint.storage-options``).
    """

    name = "Checkpoint"

    def __init__(self, *, store: str | None = None, storage_options: dict | None = None) -> None:
        super().__init__()
        self._options = (store, storage_options)
        self.known: set[str] = set()
        self.loading: dict[Any, _Loaded] = {}
        self.saving: set[Any] = set()
        self.saved = 0
        self.loaded = 0
        self.corrupt = 0
        self.listed = False

    def start(self, extension: Any) -> None:
        """Open the store and list it (in a thread)."""
        super().start(extension)
        url, storage_options = self._options
        storage_options = option(SECTION, "storage-options", storage_options)
        # a bad URL or an unusable local directory fails the registration (ConfigError)
        self.store = CheckpointStore(option(SECTION, "store", url), storage_options)
        self.store.check()
        # -- coordinator (issue 6): restore the manifest, when enabled ---------
        # (now when the coordinator is ready, else on its first ready tick)
        coordinator = getattr(extension, "coordinator", None)
        if coordinator is not None:
            coordinator.on_ready(
                lambda: self.known.update(
                    e["path"].rsplit("/", 1)[-1] for e in coordinator.state.manifest.values()
                )
            )
        # -- end coordinator ------------------------------------------------------
        if self.store.local:
            self.known |= self.store.names()  # a local listing is quick
            self.listed = True
        else:
            loop = extension.scheduler.loop.asyncio_loop
            fut = loop.run_in_executor(None, self.store.names)
            fut.add_done_callback(self._listed)

    def _listed(self, fut: Any) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.known |= fut.result()
        self.listed = True

    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """Rewrite checkpointed tasks: to a loader if stored, else to compute-and-save."""
        store = self.store
        for ts, info in new:
            if not info.annotations.checkpoint or not isinstance(ts.run_spec, Task):
                continue
            scope = self.scope(info)
            name = store.filename(ts.key, scope)
            if name in self.known:
                self.loading[ts.key] = _Loaded(ts.run_spec, set(ts.dependencies))
                for dts in ts.dependencies:
                    dts.dependents.discard(ts)
                    if dts.waiters:
                        dts.waiters.discard(ts)
                ts.dependencies = set()
                ts.waiting_on = None
                ts.run_spec = Task(ts.key, load_result, store, _key_name(ts.key), scope)
                ts.retries += 1  # a failed load re-queues; the hook restores the original
            else:
                ts.run_spec = Task(
                    ts.key, save_result, store, _key_name(ts.key), ts.run_spec, scope
                )
                self.saving.add(ts.key)

    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Count saves and loads; restore the original task when a load failed.

        A loader leaves ``processing`` for ``released`` both when it failed
        (Dask decremented ``TaskState.retries`` and re-queues it) and when it
        was only moved: its worker died or left, work stealing, or a policy
        rescheduled it (Stragglers, Quarantine). Only the first is a corrupt
        (or missing) checkpoint; a moved loader stays a loader.
        """
        if finish == "processing":
            loaded = self.loading.get(key)
            if loaded is not None:
                loaded.retries = self.extension.scheduler.tasks[key].retries
            return
        if start != "processing":
            if finish == "forgotten":
                loaded = self.loading.pop(key, None)
                if loaded is not None:
                    self._forget_later(loaded.dependencies)
                self.saving.discard(key)
            return
        if finish == "memory":
            if key in self.saving:
                self.saving.discard(key)
                self.saved += 1
                scope = self.scope(info)
                name = self.store.filename(key, scope)
                self.known.add(name)
                self._coordinate(key, scope, kwargs)
            else:
                loaded = self.loading.pop(key, None)
                if loaded is not None:
                    self.loaded += 1
                    self._forget_later(loaded.dependencies)
        elif finish == "erred" and key in self.loading:
            # out of retries (or KilledWorker): the task errs; nothing to restore
            loaded = self.loading.pop(key)
            self.known.discard(self.store.filename(key, self.scope(info)))
            self._forget_later(loaded.dependencies)
        elif finish == "released" and key in self.loading:
            ts = self.extension.scheduler.tasks[key]
            loaded = self.loading[key]
            if loaded.retries is None or ts.retries >= loaded.retries:
                return  # moved, not failed: it is sent out again as a loader
            del self.loading[key]
            scope = self.scope(info)
            self.known.discard(self.store.filename(key, scope))
            self.corrupt += 1
            self.extension.emit(
                "checkpoint-corrupt", key=str(key), path=self.store.path(key, scope)
            )
            alive = self.extension.scheduler.tasks
            if all(alive.get(d.key) is d for d in loaded.dependencies):
                ts.run_spec = Task(
                    key, save_result, self.store, _key_name(key), loaded.run_spec, scope
                )
                ts.dependencies = set(loaded.dependencies)
                for dts in loaded.dependencies:
                    dts.dependents.add(ts)
                self.saving.add(key)
            # else: an input was forgotten meanwhile; the retry loads again and errs

    def _forget_later(self, dependencies: set) -> None:
        if dependencies:
            ext = self.extension
            ext.scheduler.loop.add_callback(ext.run_policy, self, "forget_unneeded", dependencies)

    def forget_unneeded(self, dependencies: set) -> int:
        """Forget cut-off upstream tasks nobody needs (kept until the load succeeded).

        Parameters
        ----------
        dependencies : set of TaskState
            The original dependencies of a task that was loaded from the store.

        Returns
        -------
        int
            Tasks sent to ``forgotten`` (Dask follows on to their own inputs).
        """
        scheduler = self.extension.scheduler
        recs = {
            dts.key: "forgotten"
            for dts in dependencies
            if scheduler.tasks.get(dts.key) is dts
            and dts.state == "released"
            and not dts.dependents
            and not dts.who_wants
        }
        if recs:
            scheduler.transitions(recs, stimulus_id=f"oxigdal-checkpoint-forget-{time()}")
        return len(recs)

    def scope(self, info: TaskInfo) -> str | None:
        """The checkpoint namespace of a task: ``None`` for the default tenant, else its tenant.

        Parameters
        ----------
        info : TaskInfo
            The task's record; ``info.tenant`` is the tenant the extension
            resolved (never a name the task's code picks).

        Returns
        -------
        str or None
        """
        tenant = info.tenant
        return None if tenant == self.extension.default_tenant else tenant

    def _coordinate(self, key: Any, scope: str | None, kwargs: dict[str, Any]) -> None:
        # -- coordinator (issue 6): record the manifest entry, when enabled -----
        # (entries of the default tenant are keyed by the task key, as before; a
        # tenant's entries by tenant NUL key, so tenants do not share entries)
        coordinator = getattr(self.extension, "coordinator", None)
        if coordinator is not None:
            entry = {"path": self.store.path(key, scope), "nbytes": kwargs.get("nbytes")}
            name = str(key) if scope is None else f"{scope}\x00{key}"
            if scope is not None:
                entry["tenant"] = scope
            coordinator.manifest_put(name, entry)
        # -- end coordinator ------------------------------------------------------

    def restart(self) -> None:
        """Every task was forgotten."""
        self.loading.clear()
        self.saving.clear()

    def snapshot(self) -> dict[str, Any]:
        """``saved``, ``loaded``, ``corrupt``, the store and the known checkpoints."""
        return {
            "saved": self.saved,
            "loaded": self.loaded,
            "corrupt": self.corrupt,
            "store": self.store.url if hasattr(self, "store") else None,
            "known": len(self.known),
            "listed": self.listed,
        }
