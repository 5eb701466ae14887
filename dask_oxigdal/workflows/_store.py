"""Where a workflow's records live: one checkpoint-store directory per workflow."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any

import dask

from dask_oxigdal.workflows.errors import _ID, WorkflowError

#: Stores cached per process (most recently used).
MAX_STORES = 32
_STORES: OrderedDict[tuple, Any] = OrderedDict()
_STORES_LOCK = threading.Lock()


def _base_url(store: str | None) -> str:
    url = store if store is not None else dask.config.get("oxigdal.checkpoint.store")
    if not isinstance(url, str) or not url:
        raise WorkflowError(f"store={url!r} is not valid: give a local path or an fsspec URL")
    if "://" not in url:
        url = os.path.abspath(url)  # workers may run in another directory
    return url.rstrip("/")


def _check_id(workflow_id: Any) -> str:
    if not isinstance(workflow_id, str) or not _ID.match(workflow_id):
        raise WorkflowError(
            f"workflow_id={workflow_id!r} is not valid: 1-128 characters from "
            "A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return workflow_id


def _open_store(url: str, options: dict | None) -> Any:
    """A cached CheckpointStore for ``url`` (per process: workers reuse theirs).

    The cache keeps the :data:`MAX_STORES` most recently used stores: a
    process that runs many workflows does not keep one per workflow.
    """
    key = (url, tuple(sorted((options or {}).items())))
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is not None:
            _STORES.move_to_end(key)
            return store
    from dask_oxigdal.fault.checkpoint import CheckpointStore

    store = CheckpointStore(url, options)
    with _STORES_LOCK:
        _STORES[key] = store
        while len(_STORES) > MAX_STORES:
            _STORES.popitem(last=False)
    return store


class _WStore:
    """One workflow's records: ``meta``, ``state``, ``result`` and ``s<seq>`` per step."""

    def __init__(self, base: str, options: dict | None, wid: str) -> None:
        self.base, self.options, self.id = base, options, wid
        self.url = f"{base}/workflows/{wid}"
        self.store = _open_store(self.url, options)

    def get(self, key: str, default: Any = None) -> Any:
        from dask_oxigdal.fault.checkpoint import CheckpointCorrupt

        try:
            return self.store.load(key)
        except CheckpointCorrupt:
            if self.store.exists(key):
                raise
            return default

    def put(self, key: str, value: Any) -> None:
        self.store.save(key, value)

    def state(self) -> dict | None:
        return self.get("state")

    def set_state(self, state: str, **fields: Any) -> dict:
        old = self.state() or {}
        new = {**old, **fields, "id": self.id, "state": state, "updated": time.time()}
        self.put("state", new)
        return new


def _workflow_ids(base: str, options: dict | None) -> list[str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(f"{base}/workflows", **(options or {}))
    try:
        entries = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)
