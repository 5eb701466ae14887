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

from typing import TYPE_CHECKING, Any

from dask._task_spec import Task
from distributed.metrics import time

from dask_oxigdal.fault._common import option
from dask_oxigdal.fault.store import (  # noqa: F401  (the old import paths)
    _SUFFIX,
    MAGIC,
    SECTION,
    CheckpointCorrupt,
    CheckpointStore,
    _bad_url_message,
    _hash_input,
    _key_name,
    load_result,
    save_result,
)
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo

if TYPE_CHECKING:
    from distributed.scheduler import TaskState

__all__ = ["MAGIC", "Checkpoint", "CheckpointCorrupt", "CheckpointStore"]


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
            self.extension.transitions(recs, f"oxigdal-checkpoint-forget-{time()}")
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
