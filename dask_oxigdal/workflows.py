"""Durable workflows: plain Python control flow over Dask, resumable after a crash.

``@step`` marks the work, ``@workflow`` the orchestrating function. Inside a
running workflow, calling a step submits it to Dask and waits for its result;
``step.submit`` / ``step.map`` return :class:`StepFuture` objects and
:func:`gather` collects them. ``if``, ``for``, ``while`` and ``try`` are
ordinary Python.

Durability (see docs/workflows.md for the reasoning):

- each step call gets a deterministic id: (workflow id, step name, call
  sequence number within the workflow, argument digest);
- the worker that ran the step writes its result to the project's checkpoint
  store (:class:`~dask_oxigdal.fault.checkpoint.CheckpointStore`: atomic
  write, SHA-256 checked on read) under ``<store>/workflows/<id>/`` before the
  result is returned, so the workflow never moves on past an unrecorded step.
  A step that failed for good is recorded by the orchestrator (the exception
  replays on resume);
- resuming re-runs the workflow function: a recorded step returns its
  recorded result (or raises its recorded exception) without running; a step
  whose argument digest changed raises :class:`StepArgumentsChanged`.

A step that was in flight when the orchestrating process died may run once
more; a step whose result was recorded never runs again.
"""

from __future__ import annotations

import contextvars
import functools
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import dask

from dask_oxigdal.exceptions import OxigdalError

__all__ = [
    "STATES",
    "Step",
    "StepArgumentsChanged",
    "StepFuture",
    "StepTimeout",
    "WorkflowCancelled",
    "WorkflowError",
    "WorkflowHandle",
    "WorkflowInterrupted",
    "gather",
    "resume_workflow",
    "sleep",
    "start_workflow",
    "step",
    "workflow",
    "workflows",
]

#: Workflow states as listed by :func:`workflows`.
STATES = ("running", "done", "failed", "cancelled", "interrupted")
_TERMINAL = ("done", "failed", "cancelled")
#: Event topic of cancel requests (workflow events go to ``oxigdal``).
CONTROL_TOPIC = "oxigdal-workflow"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STEP_OPTIONS = ("retries", "backoff", "timeout", "tenant", "queue", "deadline", "locality")


class WorkflowError(OxigdalError):
    """A workflow cannot be started, resumed or found, or is not deterministic."""


class StepArgumentsChanged(WorkflowError):
    """A recorded step was called again with different arguments on resume."""


class StepTimeout(WorkflowError, TimeoutError):
    """A step did not finish within its ``timeout``."""


class WorkflowCancelled(BaseException):
    """Raised inside a cancelled workflow (a BaseException: ``except Exception`` does not catch it)."""


class WorkflowInterrupted(BaseException):
    """The workflow lost its steps (scheduler restart): it stops, resumable."""


# -- the store ------------------------------------------------------------------

_STORES: dict[tuple, Any] = {}


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
    """A cached CheckpointStore for ``url`` (per process: workers reuse theirs)."""
    key = (url, tuple(sorted((options or {}).items())))
    store = _STORES.get(key)
    if store is None:
        from dask_oxigdal.fault.checkpoint import CheckpointStore

        store = _STORES[key] = CheckpointStore(url, options)
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


# -- steps ----------------------------------------------------------------------

_current: contextvars.ContextVar[_Run | None] = contextvars.ContextVar(
    "oxigdal_workflow", default=None
)


def _execute(url: str, options: dict | None, rec: str, head: dict, fn: Callable, args, kwargs):
    """Worker side: run a step and record its result before returning it."""
    value = fn(*args, **kwargs)
    _open_store(url, options).save(rec, {**head, "ok": True, "value": value})
    return value


def _resolve(obj: Any) -> Any:
    if isinstance(obj, StepFuture):
        return obj._value_or_future()
    if type(obj) in (list, tuple):
        return type(obj)(_resolve(o) for o in obj)
    if type(obj) is dict:
        return {k: _resolve(v) for k, v in obj.items()}
    return obj


class StepFuture:
    """The pending (or recorded) result of one step call in a workflow.

    Use :meth:`result` or :func:`gather`; pass it to another step to chain
    them without waiting.
    """

    __slots__ = ("_future", "_record", "_run", "deadline", "digest", "key", "name", "seq")

    def __init__(self, run, name, seq, key, digest, future=None, record=None, deadline=None):
        self._run, self.name, self.seq, self.key, self.digest = run, name, seq, key, digest
        self._future, self._record, self.deadline = future, record, deadline

    def __dask_tokenize__(self) -> tuple:
        return ("oxigdal-workflow-step", self._run.id, self.seq, self.name)

    def __repr__(self) -> str:
        state = "recorded" if self._record is not None else "running"
        return f"<StepFuture {self.name}#{self.seq} {state}>"

    def done(self) -> bool:
        """Whether the result is known (recorded or finished)."""
        return self._record is not None or self._future.done()

    def _value_or_future(self) -> Any:
        rec = self._record
        if rec is not None:
            if not rec["ok"]:
                raise rec["error"]
            return rec["value"]
        return self._future

    def result(self) -> Any:
        """Wait for the step and return its result (or raise its exception).

        Raises
        ------
        StepTimeout
            The step's ``timeout`` passed (the step is cancelled).
        WorkflowCancelled
            The workflow was cancelled meanwhile.
        """
        if self._record is None:
            self._record = self._run.wait(self)
        return self._value_or_future()


class Step:
    """A function run as a durable workflow step (made by :func:`step`).

    Called outside a workflow it is the plain function.
    """

    def __init__(self, fn: Callable, name: str | None = None, **options: Any) -> None:
        from dask_oxigdal.annotations import _retries, _seconds, to_annotations

        unknown = set(options) - set(_STEP_OPTIONS)
        if unknown:
            raise TypeError(
                f"step option(s) {sorted(unknown)} not valid; valid: {', '.join(_STEP_OPTIONS)}"
            )
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "step")
        if not re.match(r"^[A-Za-z0-9_.]{1,64}$", self.name):
            raise WorkflowError(
                f"step name={self.name!r} is not valid: use 1-64 of A-Z a-z 0-9 _ ."
            )
        self.options = {k: v for k, v in options.items() if v is not None}
        timeout = self.options.pop("timeout", None)
        self.timeout = None if timeout is None else _seconds("timeout", timeout)
        self.retries = _retries(self.options.get("retries", 0))
        # validated now (bad values fail at decoration); a relative deadline is
        # turned into an absolute one at each submission
        self.annotations = to_annotations(**self.options)
        self._relative_deadline = "deadline" in self.options and not hasattr(
            self.options["deadline"], "timestamp"
        )
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<dask_oxigdal step {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _current.get() is None:
            return self.fn(*args, **kwargs)
        return self.submit(*args, **kwargs).result()

    def submit(self, *args: Any, **kwargs: Any) -> StepFuture:
        """Submit one call of this step in the running workflow; return its future.

        Raises
        ------
        WorkflowError
            Called outside a running workflow.
        StepArgumentsChanged
            On resume: this call was recorded with other arguments.
        """
        run = _current.get()
        if run is None:
            raise WorkflowError(
                f"{self.name}.submit() runs only inside a workflow started with "
                "dox.start_workflow (call the step directly to run it here)"
            )
        return run.submit(self, args, kwargs)

    def map(self, *iterables: Iterable) -> list[StepFuture]:
        """Submit one call per element (several iterables are zipped), like ``map``."""
        return [self.submit(*a) for a in zip(*iterables, strict=False)]


def step(fn: Callable | None = None, *, name: str | None = None, **options: Any) -> Any:
    """Mark a function as a durable workflow step.

    Parameters
    ----------
    fn : callable
        The work (runs on a Dask worker).
    name : str, optional
        Step name in records and task keys (default ``fn.__name__``).
    retries : int, optional
        Attempts after the first (Dask's ``retries`` plus the ``Retries``
        policy's backoff when the extension is installed).
    backoff : str or float, optional
        First retry delay (``oxigdal_backoff``).
    timeout : str or float, optional
        The step fails with :class:`StepTimeout` (and is cancelled) when it
        has not finished this long after its submission.
    tenant, queue, deadline, locality : optional
        As in :func:`dask_oxigdal.annotate`; a relative deadline counts from
        each submission.

    Returns
    -------
    Step
        Also usable as ``@step(retries=2)``.
    """
    if fn is None:
        return lambda f: Step(f, name=name, **options)
    return Step(fn, name=name, **options)


def workflow(fn: Callable) -> Callable:
    """Mark the orchestrating function of a durable workflow.

    The function is ordinary Python; start it with :func:`start_workflow`.
    Its arguments and result must be picklable.
    """
    fn.__oxigdal_workflow__ = True
    return fn


def gather(futures: Iterable[Any]) -> list[Any]:
    """Results of ``futures`` (StepFutures; other values pass through), in order.

    The first failed step's exception is raised.
    """
    return [f.result() if isinstance(f, StepFuture) else f for f in futures]


def sleep(duration: str | float) -> None:
    """Durable timer: sleep ``duration`` ("1h", 90, timedelta) inside a workflow.

    The wake-up time is recorded when the timer starts; a resumed workflow
    sleeps only what is left of it. Outside a workflow: ``time.sleep``.

    Raises
    ------
    WorkflowCancelled
        The workflow was cancelled while sleeping.
    """
    from dask_oxigdal.annotations import _seconds

    seconds = _seconds("sleep", duration)
    if seconds < 0:
        raise ValueError(f"sleep({duration!r}): the duration must be >= 0")
    run = _current.get()
    if run is None:
        time.sleep(seconds)
        return
    run.sleep(seconds)


# -- the orchestrator -------------------------------------------------------------

_ACTIVE: dict[str, _Run] = {}
_SUBSCRIBED: set[str] = set()
_LOCK = threading.Lock()


def _on_control(event: Any) -> None:
    _, msg = event
    if isinstance(msg, dict) and msg.get("action") == "cancel":
        run = _ACTIVE.get(msg.get("workflow"))
        if run is not None:
            run.cancel()


def _emit(client: Any, kind: str, **fields: Any) -> None:
    try:
        client.log_event("oxigdal", {"kind": kind, **fields})
    except Exception:  # events are best effort
        pass


class _Run:
    """One execution of a workflow function in this process."""

    def __init__(self, client: Any, ws: _WStore, meta: dict) -> None:
        self.client, self.ws, self.id = client, ws, ws.id
        self.annotations = meta.get("annotations") or {}
        self.recorded = ws.store.names()
        self.seq = 0
        self.live: dict[str, Any] = {}
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"replayed": 0, "submitted": 0, "done": 0, "failed": 0}

    # sequence numbers and records
    def _next(self) -> int:
        with self.lock:
            self.seq += 1
            return self.seq

    def _recorded(self, seq: int, name: str, digest: str) -> dict | None:
        rec_key = f"s{seq}"
        if self.ws.store.filename(rec_key) not in self.recorded:
            return None
        rec = self.ws.get(rec_key)
        if rec is None:
            return None
        if rec["name"] != name:
            raise WorkflowError(
                f"workflow {self.id!r} is not deterministic: call #{seq} was step "
                f"{rec['name']!r} when recorded, now {name!r}"
            )
        if rec["digest"] != digest:
            raise StepArgumentsChanged(
                f"step {name!r} (call #{seq} of workflow {self.id!r}) was recorded with "
                "other arguments; a resumed workflow must call its recorded steps with the "
                "same arguments (start a new workflow id to recompute)"
            )
        return rec

    def check(self) -> None:
        if self.cancelled.is_set():
            raise WorkflowCancelled(self.id)

    def submit(self, step: Step, args: tuple, kwargs: dict) -> StepFuture:
        from dask.base import tokenize

        self.check()
        seq = self._next()
        try:
            digest = tokenize(step.name, args, kwargs, ensure_deterministic=True)
        except Exception as e:
            raise WorkflowError(
                f"arguments of step {step.name!r} (call #{seq}) cannot be hashed "
                f"deterministically: {e}"
            ) from None
        key = f"oxwf-{self.id}-{seq}-{step.name}"
        rec = self._recorded(seq, step.name, digest)
        if rec is not None:
            self.counts["replayed"] += 1
            return StepFuture(self, step.name, seq, key, digest, record=rec)
        ann = step.annotations
        if step._relative_deadline:
            from dask_oxigdal.annotations import to_annotations

            ann = {**ann, **to_annotations(deadline=step.options["deadline"])}
        head = {"name": step.name, "seq": seq, "digest": digest}
        with dask.annotate(**ann):
            fut = self.client.submit(
                _execute,
                self.ws.url,
                self.ws.options,
                f"s{seq}",
                head,
                step.fn,
                _resolve(args),
                _resolve(kwargs),
                key=key,
                retries=step.retries or None,
                pure=False,
            )
        self.live[key] = fut
        self.counts["submitted"] += 1
        deadline = None if step.timeout is None else time.monotonic() + step.timeout
        return StepFuture(self, step.name, seq, key, digest, future=fut, deadline=deadline)

    def wait(self, sf: StepFuture) -> dict:
        fut = sf._future
        timeout = None if sf.deadline is None else max(0.0, sf.deadline - time.monotonic())
        try:
            value = fut.result(timeout=timeout)
        except TimeoutError:
            if fut.done() and fut.status == "finished":
                value = fut.result()
            else:
                self.client.cancel([fut])
                self.live.pop(sf.key, None)
                err = StepTimeout(f"step {sf.name!r} (call #{sf.seq}) timed out")
                return self._failed(sf, err)
        except BaseException as e:
            self.live.pop(sf.key, None)
            if self.cancelled.is_set():
                raise WorkflowCancelled(self.id) from None
            if fut.status == "cancelled" or "Cancelled" in type(e).__name__:
                raise WorkflowInterrupted(
                    f"step {sf.name!r} of workflow {self.id!r} was lost ({type(e).__name__})"
                ) from None
            fut.release()
            return self._failed(sf, e)
        self.live.pop(sf.key, None)
        fut.release()
        self.counts["done"] += 1
        return {"ok": True, "value": value}

    def _failed(self, sf: StepFuture, err: BaseException) -> dict:
        import pickle

        try:
            pickle.dumps(err)
        except Exception:
            err = WorkflowError(f"step {sf.name!r} failed: {type(err).__name__}: {err}")
        rec = {"name": sf.name, "seq": sf.seq, "digest": sf.digest, "ok": False, "error": err}
        self.ws.put(f"s{sf.seq}", rec)
        self.counts["failed"] += 1
        return rec

    def sleep(self, seconds: float) -> None:
        self.check()
        seq = self._next()
        digest = repr(float(seconds))
        rec = self._recorded(seq, "sleep", digest)
        if rec is None:
            rec = {"name": "sleep", "seq": seq, "digest": digest, "ok": True, "value": None}
            rec["wake"] = time.time() + seconds
            self.ws.put(f"s{seq}", rec)
        else:
            self.counts["replayed"] += 1
        remaining = rec["wake"] - time.time()
        if remaining > 0 and self.cancelled.wait(remaining):
            raise WorkflowCancelled(self.id)
        self.check()

    def cancel(self) -> None:
        self.cancelled.set()
        futs = list(self.live.values())
        if futs:
            # may be called on the client's event loop (topic handler): not sync here
            threading.Thread(target=self._cancel, args=(futs,), daemon=True).start()

    def _cancel(self, futs: list) -> None:
        try:
            self.client.cancel(futs)
        except Exception:
            pass


def _drive(client: Any, ws: _WStore, meta: dict, where: str) -> None:
    """Run (or resume) the workflow function to its end; the outcome goes to the store."""
    import cloudpickle

    run = _Run(client, ws, meta)
    with _LOCK:
        if ws.id in _ACTIVE:
            raise WorkflowError(f"workflow {ws.id!r} is already running in this process")
        _ACTIVE[ws.id] = run
        if client.id not in _SUBSCRIBED:
            client.subscribe_topic(CONTROL_TOPIC, _on_control)
            _SUBSCRIBED.add(client.id)
    resumed = bool(run.recorded - {ws.store.filename(k) for k in ("meta", "state")})
    ws.set_state("running", owner=client.id, where=where, started=time.time())
    _emit(client, "workflow-resumed" if resumed else "workflow-started", workflow=ws.id)
    token = _current.set(run)
    try:
        fn, args, kwargs = cloudpickle.loads(meta["call"])
        with dask.annotate(**run.annotations):
            value = fn(*args, **kwargs)
    except WorkflowCancelled:
        ws.put("result", {"ok": False, "error": WorkflowCancelled(ws.id)})
        ws.set_state("cancelled", steps=dict(run.counts))
        _emit(client, "workflow-cancelled", workflow=ws.id)
    except WorkflowInterrupted as e:
        ws.set_state("interrupted", steps=dict(run.counts), error=str(e))
        _emit(client, "workflow-interrupted", workflow=ws.id, error=str(e))
    except BaseException as e:
        import pickle

        try:
            pickle.dumps(e)
        except Exception:
            e = WorkflowError(f"workflow {ws.id!r} failed: {type(e).__name__}: {e}")
        ws.put("result", {"ok": False, "error": e})
        ws.set_state("failed", steps=dict(run.counts), error=f"{type(e).__name__}: {e}")
        _emit(client, "workflow-failed", workflow=ws.id, error=f"{type(e).__name__}: {e}")
    else:
        ws.put("result", {"ok": True, "value": value})
        ws.set_state("done", steps=dict(run.counts))
        _emit(client, "workflow-done", workflow=ws.id, steps=dict(run.counts))
    finally:
        _current.reset(token)
        if run.live:
            run._cancel(list(run.live.values()))
        with _LOCK:
            _ACTIVE.pop(ws.id, None)


def _on_cluster_entry(base: str, options: dict | None, wid: str) -> None:
    """Worker side: the workflow as a long-running task (it secedes from its thread)."""
    from distributed import get_client, secede

    secede()
    ws = _WStore(base, options, wid)
    _drive(get_client(), ws, ws.get("meta"), "cluster")


def _live_clients(dask_scheduler: Any = None) -> list[str]:
    return list(dask_scheduler.clients)


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
        return state

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
                key=f"oxwf-run-{ws.id}-{uuid.uuid4().hex[:8]}",
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
