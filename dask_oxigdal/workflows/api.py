"""Start, resume, list and control workflows: :class:`WorkflowHandle` and friends."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import dask

from dask_oxigdal.workflows._run import (
    _ACTIVE,
    CONTROL_TOPIC,
    _drive,
    _emit,
    _live_clients,
    _on_cluster_entry,
)
from dask_oxigdal.workflows._store import _base_url, _check_id, _workflow_ids, _WStore
from dask_oxigdal.workflows.errors import _TERMINAL, WorkflowCancelled, WorkflowError

__all__ = ["WorkflowHandle", "resume_workflow", "start_workflow", "workflows"]


class WorkflowHandle:
    """A started or resumed workflow: :meth:`result`, :meth:`status`, :meth:`cancel`.

    Attributes
    ----------
    id : str
        The workflow id.
    """

    def __init__(self, client: Any, ws: _WStore, thread=None, future=None) -> None:
        self.client, self._ws, self.id = client, ws, ws.id
        self._thread, self._future = thread, future

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id!r}>"

    def status(self) -> dict:
        """The workflow's state and step counts.

        Returns
        -------
        dict
            ``id``, ``state`` (one of :data:`STATES`), ``steps`` (``replayed``,
            ``submitted``, ``done``, ``failed`` of the latest run; live when
            it runs in this process), ``updated`` (UNIX time) and ``error``
            when it failed.
        """
        state = _describe(self._ws, None)
        run = _ACTIVE.get(self.id)
        if run is not None and state.get("state") == "running":
            state["steps"] = dict(run.counts)
        elif state.get("state") == "running" and self._gone(state):
            state["state"] = "interrupted"
        elif state.get("state") == "running":
            live = self._progress()
            if live is not None:
                state["steps"] = live["steps"]
        return state

    def _progress(self) -> dict | None:
        from dask_oxigdal.workflows.progress import PROGRESS_TOPIC, latest

        try:
            return latest(self.client.get_events(PROGRESS_TOPIC)).get(self.id)
        except Exception:
            return None

    def _gone(self, state: dict) -> bool:
        if self._thread is not None:
            return not self._thread.is_alive()
        try:
            return state.get("owner") not in self.client.run_on_scheduler(_live_clients)
        except Exception:
            return False

    def _wait(self, timeout: float | None) -> None:
        end = None if timeout is None else time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"workflow {self.id!r} still running after {timeout}s")
            return
        if self._future is not None:
            from distributed import wait

            wait(self._future, timeout=timeout)
            self._future.result()  # an error here is the orchestrator's own
            return
        delay = 0.05
        while (self._ws.state() or {}).get("state") not in _TERMINAL:
            if self.status()["state"] == "interrupted":
                raise WorkflowError(f"workflow {self.id!r} was interrupted; resume it")
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"workflow {self.id!r} still running after {timeout}s")
            time.sleep(delay)
            delay = min(1.0, delay * 1.5)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the workflow and return its result (or raise its exception).

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait (default: no limit).

        Raises
        ------
        WorkflowCancelled
            It was cancelled.
        WorkflowError
            It was interrupted (its process or the scheduler died): resume it.
        TimeoutError
            Still running after ``timeout``.
        """
        self._wait(timeout)
        state = self._ws.state() or {}
        if state.get("state") == "interrupted":
            raise WorkflowError(
                f"workflow {self.id!r} was interrupted ({state.get('error')}); resume it"
            )
        rec = self._ws.get("result")
        if rec is None:
            raise WorkflowError(f"workflow {self.id!r} has no result (state {state.get('state')})")
        if not rec["ok"]:
            raise rec["error"]
        return rec["value"]

    def cancel(self) -> None:
        """Stop the workflow and cancel its running steps.

        The workflow function sees :class:`WorkflowCancelled` at its next step
        call or wait; its state becomes ``cancelled``. A workflow that is not
        running (interrupted) is marked cancelled at once.
        """
        run = _ACTIVE.get(self.id)
        if run is not None:
            run.cancel()
            return
        state = self.status()
        if state.get("state") in _TERMINAL:
            return
        if state.get("state") == "interrupted":
            self._ws.put("result", {"ok": False, "error": WorkflowCancelled(self.id)})
            self._ws.set_state("cancelled")
            _emit(self.client, "workflow-cancelled", workflow=self.id)
            return
        self.client.log_event(CONTROL_TOPIC, {"action": "cancel", "workflow": self.id})


def _describe(ws: _WStore, live: list[str] | None) -> dict:
    state = ws.state() or {"id": ws.id, "state": "interrupted"}
    out = {k: state.get(k) for k in ("id", "state", "steps", "updated", "where", "error")}
    out["owner"] = state.get("owner")
    owner = out["owner"]
    if live is not None and out["state"] == "running" and owner is not None and owner not in live:
        out["state"] = "interrupted"
    return out


def _launch(client: Any, ws: _WStore, meta: dict) -> WorkflowHandle:
    if meta.get("on_cluster"):
        from distributed import fire_and_forget

        with dask.annotate(**(meta.get("annotations") or {})):
            fut = client.submit(
                _on_cluster_entry,
                ws.base,
                ws.options,
                ws.id,
                key=f"oxwf_run-{uuid.uuid4().hex[:8]}-{ws.id}",  # task prefix "oxwf_run"
                pure=False,
            )
        fire_and_forget(fut)
        return WorkflowHandle(client, ws, future=fut)
    thread = threading.Thread(
        target=_drive, args=(client, ws, meta, "client"), name=f"oxigdal-workflow-{ws.id}"
    )
    thread.daemon = True
    thread.start()
    return WorkflowHandle(client, ws, thread=thread)


def start_workflow(
    client: Any,
    fn: Callable,
    *args: Any,
    workflow_id: str | None = None,
    on_cluster: bool = False,
    store: str | None = None,
    storage_options: dict | None = None,
    fsync: bool = True,
    **kwargs: Any,
) -> WorkflowHandle:
    """Start a durable workflow.

    Parameters
    ----------
    client : distributed.Client
    fn : callable
        A :func:`workflow` function; called as ``fn(*args, **kwargs)``.
    workflow_id : str, optional
        Unique id (1-128 of ``A-Z a-z 0-9 . _ -``); default a random one.
    on_cluster : bool, default False
        Run the orchestrating function on a worker as a long-running task
        that secedes from its thread (survives this client's death); default:
        in a thread of this process.
    store : str, optional
        Base fsspec URL or path of the records (default
        ``oxigdal.checkpoint.store``); records go to ``<store>/workflows/<id>/``.
    storage_options : dict, optional
        fsspec options of the store.
    fsync : bool, default True
        A local store's step records are fsync'd before the step returns
        (they survive an OS crash or power loss). ``False``: written and
        renamed into place but not fsync'd: they survive the death of any
        process (client, worker, scheduler) but not of the machine, and a
        step costs one fsync less (docs/workflows.md).

    Returns
    -------
    WorkflowHandle

    Raises
    ------
    WorkflowError
        A bad id, or a workflow with this id exists (resume it instead).
    """
    import cloudpickle

    if not callable(fn):
        raise WorkflowError(f"fn={fn!r} is not callable")
    wid = _check_id(workflow_id if workflow_id is not None else uuid.uuid4().hex[:16])
    ws = _WStore(_base_url(store), storage_options, wid)
    if ws.store.exists("meta"):
        raise WorkflowError(
            f"workflow {wid!r} already exists in {ws.base!r}: use dox.resume_workflow"
        )
    meta = {
        "id": wid,
        "name": getattr(fn, "__qualname__", repr(fn)),
        "call": cloudpickle.dumps((fn, args, kwargs)),
        "annotations": dict(dask.get_annotations()),
        "on_cluster": bool(on_cluster),
        "fsync": bool(fsync),
        "created": time.time(),
    }
    ws.put("meta", meta)
    ws.set_state("running", owner=None, steps={})
    return _launch(client, ws, meta)


def resume_workflow(
    client: Any,
    workflow_id: str,
    *,
    on_cluster: bool | None = None,
    store: str | None = None,
    storage_options: dict | None = None,
) -> WorkflowHandle:
    """Resume an interrupted workflow from its records (or attach to a finished one).

    The workflow function runs again from the top: recorded steps return
    their recorded results (or raise their recorded exceptions) without
    running. A ``done`` or ``cancelled`` workflow is not run again: the
    handle gives its outcome. A ``failed`` one runs again (after a fix of
    the workflow's code, say), replaying its recorded steps.

    Parameters
    ----------
    client : distributed.Client
    workflow_id : str
    on_cluster : bool, optional
        Where the orchestrator runs (default: as when it was started).
    store, storage_options : optional
        As in :func:`start_workflow`.

    Returns
    -------
    WorkflowHandle

    Raises
    ------
    WorkflowError
        No such workflow (the message lists the known ids), or it is still
        running (its orchestrating client is connected).
    """
    wid = _check_id(workflow_id)
    base = _base_url(store)
    ws = _WStore(base, storage_options, wid)
    meta = ws.get("meta")
    if meta is None:
        known = _workflow_ids(base, storage_options)
        raise WorkflowError(
            f"no workflow {wid!r} in {base!r}; known: {', '.join(known[:20]) or 'none'}"
        )
    handle = WorkflowHandle(client, ws)
    if _ACTIVE.get(wid) is not None:
        return handle
    state = _describe(ws, client.run_on_scheduler(_live_clients))
    if state["state"] in ("done", "cancelled"):
        return handle
    if state["state"] == "running":
        raise WorkflowError(
            f"workflow {wid!r} is running (its client {state['owner']} is connected); "
            "cancel it first or wait"
        )
    if on_cluster is not None:
        meta = {**meta, "on_cluster": bool(on_cluster)}
    return _launch(client, ws, meta)


def workflows(
    client: Any, *, store: str | None = None, storage_options: dict | None = None
) -> list[dict]:
    """All workflows in the store with their states.

    Parameters
    ----------
    client : distributed.Client
        Used to tell ``running`` (its orchestrator is connected) from
        ``interrupted``.
    store, storage_options : optional
        As in :func:`start_workflow`.

    Returns
    -------
    list of dict
        One per workflow, sorted by id: ``id``, ``state``, ``steps``,
        ``updated``, ``where``, ``owner``, ``error``.
    """
    base = _base_url(store)
    live = client.run_on_scheduler(_live_clients) if client is not None else None
    return [
        _describe(_WStore(base, storage_options, wid), live)
        for wid in _workflow_ids(base, storage_options)
    ]
