"""The orchestrator: one execution of a workflow function, step by step."""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from typing import Any

import dask

from dask_oxigdal.workflows import progress as _progress
from dask_oxigdal.workflows._store import _WStore
from dask_oxigdal.workflows.errors import (
    CONTROL_TOPIC,
    StepArgumentsChanged,
    StepTimeout,
    WorkflowCancelled,
    WorkflowError,
    WorkflowInterrupted,
)
from dask_oxigdal.workflows.steps import Step, StepFuture, _current, _execute, _resolve

_ACTIVE: dict[str, _Run] = {}
_SUBSCRIBED: set[str] = set()
_LOCK = threading.Lock()


def _on_control(event: Any) -> None:
    _, msg = event
    if isinstance(msg, dict) and msg.get("action") == "cancel":
        run = _ACTIVE.get(msg.get("workflow"))
        if run is not None:
            run.cancel()


def _keeper() -> None:
    """The task that keeps a step's task group alive (see :func:`_keeper_for`)."""


#: Keeper tasks held by this process: ``{(client id, step name): Future}``, least
#: recently used first; at most :data:`MAX_KEEPERS`.
_KEEPERS: OrderedDict[tuple[str, str], Any] = OrderedDict()
#: Step names whose task group this process keeps alive between runs.
MAX_KEEPERS = 64
_KEEPER_SEQ = itertools.count()


def _keeper_for(client: Any, name: str) -> Any:
    """Hold one tiny task in step ``name``'s task group for as long as ``client`` lives.

    Dask forgets a task group when its last task is forgotten and makes a new
    one for the next task of that name; each TaskGroup object then stays
    referenced by a Dask span, and spans live as long as the scheduler
    (dask/distributed#7977): sequential steps would leave a task group (and
    often a new default span) per call, and every run a new span. With one
    keeper per step name and client (key ``<name>-oxwf-0-keeper<n>-<client
    id>``: same task group as the steps), the group is made once: later steps
    and runs join it and its span, and the scheduler's span tables stop growing
    with runs. The keepers are released when the client closes; past
    :data:`MAX_KEEPERS` step names the least recently used is released.
    """
    key = (client.id, name)
    with _LOCK:
        fut = _KEEPERS.get(key)
        if fut is not None and fut.status in ("pending", "finished"):
            _KEEPERS.move_to_end(key)
            return fut
        _KEEPERS.pop(key, None)
        for k in [k for k, f in _KEEPERS.items() if f.client.status != "running"]:
            del _KEEPERS[k]  # keepers of closed clients
        try:
            fut = client.submit(
                _keeper, key=f"{name}-oxwf-0-keeper{next(_KEEPER_SEQ)}-{client.id}", pure=False
            )
        except Exception:  # an optimisation only
            return None
        _KEEPERS[key] = fut
        while len(_KEEPERS) > MAX_KEEPERS:
            _, old = _KEEPERS.popitem(last=False)
            old.release()
        return fut


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
        self.keepers: dict[str, Any] = {}
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"replayed": 0, "submitted": 0, "done": 0, "failed": 0}
        self.fsync = bool(meta.get("fsync", True))
        self.tenant = self.annotations.get("oxigdal_tenant")
        self.where = "cluster" if meta.get("on_cluster") else "client"
        self._reported = 0.0

    def _keep(self, name: str) -> None:
        """Make sure step ``name``'s task group outlives this run (see :func:`_keeper_for`)."""
        if name not in self.keepers:
            self.keepers[name] = _keeper_for(self.client, name)

    # progress (workflows/progress.py): rate-limited events on the scheduler's bounded log
    def _count(self, what: str) -> None:
        self.counts[what] += 1
        if time.monotonic() - self._reported >= _progress.INTERVAL:
            self.report("running")

    def report(self, state: str, wait: bool = False) -> None:
        self._reported = time.monotonic()
        msg = _progress.event(self.id, state, self.counts, self.tenant, self.where)
        try:
            log = self.client.scheduler.log_event  # None once the client is closed
            if wait:  # the final state: on the scheduler before the run ends (5 s at most)
                self.client.sync(log, topic=_progress.PROGRESS_TOPIC, msg=msg, callback_timeout=5)
            else:
                # fire and forget on the client's event loop: a step never waits for a
                # progress round trip (Client.log_event would block the orchestrator)
                self.client.loop.add_callback(log, topic=_progress.PROGRESS_TOPIC, msg=msg)
        except Exception:  # progress is best effort
            pass

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
        return self.submit_many(step, [(args, kwargs)])[0]

    def submit_many(self, step: Step, calls: list[tuple[tuple, dict]]) -> list[StepFuture]:
        """Submit calls of ``step`` (one sequence number each, in order).

        The calls not recorded yet go to the scheduler in one ``Client.map``:
        one graph update for the lot. Dask's spans keep a small metadata
        record per graph update for the scheduler's lifetime, so a fan-out
        submitted with ``step.map`` costs the scheduler one record, not one
        per element (docs/workflows.md).
        """
        from dask.base import tokenize

        self.check()
        out: list[StepFuture | None] = []
        todo: list[tuple[int, int, str, str, tuple, dict]] = []
        for args, kwargs in calls:
            seq = self._next()
            try:
                digest = tokenize(step.name, args, kwargs, ensure_deterministic=True)
            except Exception as e:
                raise WorkflowError(
                    f"arguments of step {step.name!r} (call #{seq}) cannot be hashed "
                    f"deterministically: {e}"
                ) from None
            # Dask's task prefix (key_split) of this key is "<step name>-oxwf": one per
            # step function, shared by every workflow, so per-prefix state (Dask's
            # task prefixes, the extension's cost estimates) does not grow per workflow
            key = f"{step.name}-oxwf-{seq}-{self.id}"
            rec = self._recorded(seq, step.name, digest)
            if rec is not None:
                self._count("replayed")
                out.append(StepFuture(self, step.name, seq, key, digest, record=rec))
            else:
                todo.append((len(out), seq, key, digest, args, kwargs))
                out.append(None)
        if not todo:
            return out  # type: ignore[return-value]
        ann = step.annotations
        if step._relative_deadline:
            from dask_oxigdal.annotations import to_annotations

            ann = {**ann, **to_annotations(deadline=step.options["deadline"])}
        n = len(todo)
        with dask.annotate(**ann):
            self._keep(step.name)
            futs = self.client.map(
                _execute,
                [self.ws.url] * n,
                [self.ws.options] * n,
                [f"s{t[1]}" for t in todo],
                [{"name": step.name, "seq": t[1], "digest": t[3]} for t in todo],
                [step.fn] * n,
                [_resolve(t[4]) for t in todo],
                [_resolve(t[5]) for t in todo],
                [self.fsync] * n,
                key=[t[2] for t in todo],
                retries=step.retries or None,
                pure=False,
            )
        deadline = None if step.timeout is None else time.monotonic() + step.timeout
        for (i, seq, key, digest, _, _), fut in zip(todo, futs, strict=True):
            self.live[key] = fut
            self._count("submitted")
            out[i] = StepFuture(self, step.name, seq, key, digest, future=fut, deadline=deadline)
        return out  # type: ignore[return-value]

    def wait_all(self, sfs: list[StepFuture]) -> None:
        """Fan-in: one ``Client.gather`` for many running steps (not one round trip each).

        Finished steps get their results; a failed, cancelled or timed-out one is
        left to :meth:`wait` (called by its ``result()``), which handles each case.
        """
        pending = [sf for sf in sfs if sf._record is None and sf._future is not None]
        if len(pending) < 2 or any(sf.deadline is not None for sf in pending):
            return
        self.check()
        futs = [sf._future for sf in pending]
        try:
            values = iter(self.client.gather(futs, errors="skip"))
        except BaseException:
            return
        for sf, fut in zip(pending, futs, strict=True):
            if fut.status == "finished":
                sf._record = self._finished(sf, next(values))

    def _finished(self, sf: StepFuture, value: Any) -> dict:
        self.live.pop(sf.key, None)
        sf._future.release()
        self._count("done")
        return {"ok": True, "value": value}

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
        return self._finished(sf, value)

    def _failed(self, sf: StepFuture, err: BaseException) -> dict:
        import pickle

        try:
            pickle.dumps(err)
        except Exception:
            err = WorkflowError(f"step {sf.name!r} failed: {type(err).__name__}: {err}")
        rec = {"name": sf.name, "seq": sf.seq, "digest": sf.digest, "ok": False, "error": err}
        self.ws.put(f"s{sf.seq}", rec)
        self._count("failed")
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
            self._count("replayed")
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
    run.where = where
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
    run.report("running")
    token = _current.set(run)
    try:
        fn, args, kwargs = cloudpickle.loads(meta["call"])
        from distributed import span

        # one Dask span per run: its steps' task groups go to it instead of to a
        # new default span each time the cluster was idle between two steps
        with dask.annotate(**run.annotations), span("oxigdal-workflow"):
            value = fn(*args, **kwargs)
    except WorkflowCancelled:
        ws.put("result", {"ok": False, "error": WorkflowCancelled(ws.id)})
        ws.set_state("cancelled", steps=dict(run.counts))
        _emit(client, "workflow-cancelled", workflow=ws.id)
        run.report("cancelled", wait=True)
    except WorkflowInterrupted as e:
        ws.set_state("interrupted", steps=dict(run.counts), error=str(e))
        _emit(client, "workflow-interrupted", workflow=ws.id, error=str(e))
        run.report("interrupted")
    except BaseException as e:
        import pickle

        try:
            pickle.dumps(e)
        except Exception:
            e = WorkflowError(f"workflow {ws.id!r} failed: {type(e).__name__}: {e}")
        ws.put("result", {"ok": False, "error": e})
        ws.set_state("failed", steps=dict(run.counts), error=f"{type(e).__name__}: {e}")
        _emit(client, "workflow-failed", workflow=ws.id, error=f"{type(e).__name__}: {e}")
        run.report("failed", wait=True)
    else:
        ws.put("result", {"ok": True, "value": value})
        ws.set_state("done", steps=dict(run.counts))
        _emit(client, "workflow-done", workflow=ws.id, steps=dict(run.counts))
        run.report("done", wait=True)
    finally:
        _current.reset(token)
        if run.live:
            run._cancel(list(run.live.values()))
        run.keepers.clear()  # the keepers stay (bounded, per client and step name)
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
