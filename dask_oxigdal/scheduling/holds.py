"""Holding, releasing and failing tasks: the extension's hands on Dask's state machine.

Policies decide, the extension enacts, and this module is how it enacts:

- :meth:`Holds.hold` / :meth:`Holds.unhold`: a held task is restricted to
  :data:`HOLD_ADDRESS`, an address no worker has, so Dask parks it in
  ``no-worker``; several policies may hold one task, and its own restrictions
  come back with the last release;
- :meth:`Holds.reject`: fail a task with an exception, from a later tick;
- :meth:`Holds.hold_malformed`: tasks whose ``oxigdal_*`` annotations are
  malformed (or refused by ``oxigdal.auth``) are held, then failed;
- :meth:`Holds.transitions`: the one place that calls
  ``scheduler.transitions`` on behalf of the policies (and of this module).

Nothing here re-enters the state machine from a transition hook: failing is
deferred to the next event-loop tick.
"""

from __future__ import annotations

import pickle
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler, TaskState

    from dask_oxigdal.scheduling.policy import TaskInfo

__all__ = ["HOLD_ADDRESS", "NAME", "Holds", "error_text"]

#: Name of the plugin, of its periodic callback, and the event topic.
NAME = "oxigdal"

#: A worker address no worker can have: tasks restricted to it wait in ``no-worker``.
HOLD_ADDRESS = "oxigdal-hold://nowhere:0"

#: Longest error text kept in events, logs and task errors (characters).
_MAX_ERROR = 500


def error_text(exc: BaseException) -> str:
    """``"Type: message"``, cut to 500 characters; never raises.

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    str
    """
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:
        text = f"{type(exc).__name__} (no message)"
    if len(text) > _MAX_ERROR:
        text = text[:_MAX_ERROR] + f"... ({len(text)} characters)"
    return text


class Holds:
    """Held, rejected and malformed tasks of one extension.

    Parameters
    ----------
    owner : object
        The extension: its ``scheduler`` attribute is the scheduler, or
        ``None`` while it is not started.
    """

    def __init__(self, owner: Any) -> None:
        self._owner = owner
        #: key -> message of tasks held because their annotations are malformed
        self.malformed: dict[Any, str] = {}
        self.malformed_tasks = 0
        self._to_fail: set[Any] = set()
        # key -> the exception of a held task that is not a ValueError (PermissionError)
        self._malformed_exc: dict[Any, BaseException] = {}
        self._fail_scheduled = False
        #: key -> exception of tasks a policy rejected, failed once in no-worker
        self.rejected: dict[Any, BaseException] = {}
        self._reject_scheduled = False

    @property
    def scheduler(self) -> Scheduler | None:
        """The scheduler, or ``None`` while the extension is not started."""
        return self._owner.scheduler

    # ------------------------------------------------------------ transitions
    def transitions(self, recs: dict, stimulus_id: str) -> None:
        """Run ``scheduler.transitions(recs, stimulus_id)`` (never from a transition hook).

        Parameters
        ----------
        recs : dict
            ``{key: finish state}``.
        stimulus_id : str
        """
        scheduler = self.scheduler
        if scheduler is not None and recs:
            if "oxigdal-topology" in scheduler.plugins:  # released held tasks: by transfer cost
                from dask_oxigdal.placement.topology_cost import place_released

                place_released(scheduler, recs)
            scheduler.transitions(recs, stimulus_id=stimulus_id)

    def erred(self, key: Any, exc: BaseException, text: str, stimulus_id: str) -> dict:
        """Transition a ``no-worker`` task to ``erred`` with ``exc``; the follow-up recs.

        Parameters
        ----------
        key : object
        exc : BaseException
        text : str
        stimulus_id : str

        Returns
        -------
        dict
        """
        scheduler = self.scheduler
        assert scheduler is not None
        return scheduler.transition(
            key,
            "erred",
            stimulus_id=stimulus_id,
            exception=pickle.dumps(exc),
            exception_text=text,
            cause=key,
        )

    # ------------------------------------------------------------------ holds
    @staticmethod
    def restrict(ts: TaskState) -> None:
        """Restrict ``ts`` to :data:`HOLD_ADDRESS` (no saving: see :meth:`hold`).

        Parameters
        ----------
        ts : distributed.scheduler.TaskState
        """
        ts.worker_restrictions = {HOLD_ADDRESS}
        ts.host_restrictions = None  # a host restriction would add its workers back
        ts.loose_restrictions = False

    @staticmethod
    def pin(ts: TaskState, worker: str) -> None:
        """Restrict ``ts`` to ``worker`` (a released gang or retry goes there).

        Parameters
        ----------
        ts : distributed.scheduler.TaskState
        worker : str
            Worker address.
        """
        ts.worker_restrictions = {worker}
        ts.host_restrictions = None
        ts.loose_restrictions = False

    def hold(self, ts: TaskState, info: TaskInfo, by: str) -> None:
        """Hold a task for policy ``by``: restrict it to :data:`HOLD_ADDRESS`.

        A held task waits in ``no-worker`` (once its dependencies are done).
        Several policies may hold the same task; it is runnable again only when
        every one of them called :meth:`unhold`. The task's own restrictions
        (``workers=``, ``allow_other_workers=``, host names) are saved by the
        first hold and restored by the last :meth:`unhold`; a host restriction
        is cleared meanwhile (Dask adds the workers of a restricted host to the
        valid ones, which would let a held task run). ``resources=`` are left
        as they are: Dask intersects them with the hold address, which no
        worker has.

        Parameters
        ----------
        ts : distributed.scheduler.TaskState
        info : TaskInfo
        by : str
            Name of the holding policy.
        """
        if info.holds is None:
            info.holds = {by}
            if info.restrictions is None and ts.worker_restrictions != {HOLD_ADDRESS}:
                info.restrictions = (
                    ts.worker_restrictions,
                    ts.host_restrictions,
                    ts.loose_restrictions,
                )
        else:
            info.holds.add(by)
        self.restrict(ts)

    def unhold(self, ts: TaskState, info: TaskInfo, by: str) -> bool:
        """Drop the hold of policy ``by``; lift the restriction when no hold remains.

        Parameters
        ----------
        ts : distributed.scheduler.TaskState
        info : TaskInfo
        by : str
            Name of the policy that held it.

        Returns
        -------
        bool
            ``True`` when no policy holds the task any more: the caller may
            then send it on (``waiting``, or pin it to a worker first).
        """
        holds = info.holds
        if holds:
            holds.discard(by)
            if holds:
                return False
        info.holds = None
        saved, info.restrictions = info.restrictions, None
        if ts.worker_restrictions == {HOLD_ADDRESS}:
            if saved is None:
                ts.worker_restrictions = None
            else:
                ts.worker_restrictions, ts.host_restrictions, ts.loose_restrictions = saved
        return True

    # -------------------------------------------------------------- rejecting
    def reject(self, ts: TaskState, info: TaskInfo, exc: BaseException) -> None:
        """Fail a task with ``exc`` (its futures raise it), from a later event-loop tick.

        The task is held; once it is in ``no-worker`` it is transitioned to
        ``erred``. A task in ``processing`` is released first (its worker is
        told to drop it), so it comes back to ``no-worker`` and is failed there.
        Never re-enters the state machine: safe from any policy hook.

        Parameters
        ----------
        ts : distributed.scheduler.TaskState
        info : TaskInfo
        exc : BaseException
            Picklable exception; its message should name the reason.
        """
        self.rejected[ts.key] = exc
        self.hold(ts, info, "reject")
        if ts.state in ("no-worker", "processing", "queued"):
            self._schedule_reject()

    def _schedule_reject(self) -> None:
        scheduler = self.scheduler
        if not self._reject_scheduled and scheduler is not None:
            self._reject_scheduled = True
            scheduler.loop.add_callback(self._fail_rejected)

    def _fail_rejected(self) -> None:
        self._reject_scheduled = False
        scheduler = self.scheduler
        if scheduler is None:
            return
        stimulus_id = f"oxigdal-reject-{time.time()}"
        release: dict = {}
        recs: dict = {}
        for key, exc in list(self.rejected.items()):
            ts = scheduler.tasks.get(key)
            if ts is None:
                del self.rejected[key]
                continue
            if ts.state in ("processing", "queued"):
                release[key] = "released"
                continue
            if ts.state != "no-worker":
                continue
            del self.rejected[key]
            recs.update(self.erred(key, exc, f"{type(exc).__name__}: {exc}", stimulus_id))
        # processing/queued -> released -> waiting -> no-worker (held) -> erred
        self.transitions(release, stimulus_id)
        self.transitions(recs, stimulus_id)

    def rejected_transition(self, key: Any, finish: str) -> None:
        """A known task moved to ``finish``: fail it now if it was rejected (O(1)).

        Parameters
        ----------
        key : object
        finish : str
        """
        if not self.rejected:
            return
        if finish == "no-worker" and key in self.rejected:
            self._schedule_reject()
        elif finish in ("erred", "forgotten", "memory"):
            self.rejected.pop(key, None)

    # -------------------------------------------------------------- malformed
    def hold_malformed(self, ts: TaskState, message: str, exc: BaseException | None = None) -> None:
        """Hold a task whose annotations cannot be used; it errs with ``message`` later.

        Parameters
        ----------
        ts : distributed.scheduler.TaskState
        message : str
            Why (names the value and the valid choices).
        exc : BaseException, optional
            The exception the task errs with (default: a ``ValueError``).
        """
        # Restricting a task to an address no worker has sends it to no-worker;
        # the transition hook then fails it from a later event-loop tick.
        self.malformed[ts.key] = message
        if exc is not None:
            self._malformed_exc[ts.key] = exc
        self.malformed_tasks += 1
        self.restrict(ts)

    def malformed_transition(self, key: Any, finish: str) -> None:
        """A malformed task moved to ``finish`` (O(1)).

        Parameters
        ----------
        key : object
        finish : str
        """
        if finish == "no-worker":
            self._to_fail.add(key)
            scheduler = self.scheduler
            if not self._fail_scheduled and scheduler is not None:
                self._fail_scheduled = True
                # Never re-enter the state machine from inside a transition hook.
                scheduler.loop.add_callback(self._fail_malformed)
        elif finish in ("erred", "forgotten", "memory"):
            self.malformed.pop(key, None)
            self._to_fail.discard(key)
            if self._malformed_exc:
                self._malformed_exc.pop(key, None)

    def _fail_malformed(self) -> None:
        self._fail_scheduled = False
        scheduler = self.scheduler
        if scheduler is None:
            return
        keys, self._to_fail = self._to_fail, set()
        stimulus_id = f"oxigdal-malformed-annotations-{time.time()}"
        recs: dict = {}
        for key in keys:
            ts = scheduler.tasks.get(key)
            message = self.malformed.get(key)
            if ts is None or message is None or ts.state != "no-worker":
                continue
            exc = self._malformed_exc.pop(key, None) or ValueError(
                f"task {key!r} rejected by dask-oxigdal: {message}"
            )
            recs.update(self.erred(key, exc, str(exc), stimulus_id))
            scheduler.log_event(
                NAME, {"action": "malformed-annotations", "key": str(key), "error": message}
            )
        self.transitions(recs, stimulus_id)

    def restart(self) -> None:
        """Forget every task (the scheduler restarted); keep the counters."""
        self.malformed.clear()
        self._malformed_exc.clear()
        self._to_fail.clear()
        self.rejected.clear()
