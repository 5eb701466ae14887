"""``Retries``: task retries with exponential backoff, jitter and a cap.

Dask's own ``retries`` re-run a failed task at once, often on the same
worker. This policy keeps Dask's counter (``TaskState.retries``, so a task
makes exactly ``retries + 1`` attempts and then errs as usual) and changes
*when* and *where* a retry runs:

- **when**: after a failed attempt ``n`` (1-based) the task waits
  ``min(max_backoff, backoff * multiplier ** (n - 1))``, multiplied by a
  random factor in ``[1 - jitter, 1 + jitter]``;
- **where**: the retry prefers a worker on which the task has not failed yet,
  else any worker but the one of the last failure (a loose worker
  restriction: the failed worker is still used when no other one is
  running).

``retries`` comes from ``dox.annotate(retries=...)`` or Dask's own
``retries=`` (the larger wins); the backoff from ``dox.annotate(backoff=...)`` or
``oxigdal.retries.backoff``.

How a task waits: when Dask re-queues a failed task (``processing ->
released -> waiting``), the transition hook holds it with the extension's
:meth:`~dask_oxigdal.scheduling.extension.OxigdalScheduling.hold`, so Dask
parks it in ``no-worker``; a ``loop.call_later`` callback then drops the hold
(:meth:`~dask_oxigdal.scheduling.extension.OxigdalScheduling.unhold`), gives
the task its preferred workers and sends it to ``processing``. The
restrictions it had before its first attempt are restored on release. A task
another policy holds as well (a rejection) stays held until that one lets go.

A held task is never left behind: the timer releases it even when the policy
was disabled meanwhile, and :meth:`Retries.close` releases every held task at
once (without waiting out the rest of its backoff).
"""

from __future__ import annotations

import logging
import math
import random
from typing import TYPE_CHECKING, Any

from distributed.metrics import time

from dask_oxigdal.fault._common import duration, number, option
from dask_oxigdal.scheduling.holds import Holds
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo

if TYPE_CHECKING:
    from distributed.scheduler import TaskState

__all__ = ["Retries", "backoff_delay"]

logger = logging.getLogger(__name__)

SECTION = "retries"


def backoff_delay(
    attempt: int, backoff: float, multiplier: float, max_backoff: float, jitter: float, rng: Any
) -> float:
    """Delay before the retry that follows failed attempt ``attempt`` (1-based).

    Parameters
    ----------
    attempt : int
        Number of failed attempts so far (>= 1).
    backoff : float
        Base delay in seconds.
    multiplier : float
        Growth factor per failed attempt.
    max_backoff : float
        Cap of the delay before jitter.
    jitter : float
        Relative jitter in ``[0, 1]``.
    rng : random.Random
        Source of the jitter.

    Returns
    -------
    float
        Seconds, ``>= 0``. Never raises for a large ``attempt`` (Dask's own
        ``retries=`` has no upper bound): the growth stops at ``max_backoff``.
    """
    if backoff <= 0.0:
        base = 0.0
    else:
        try:
            grown = backoff * multiplier ** (attempt - 1)
        except OverflowError:  # float ** int past 1.8e308
            grown = math.inf
        base = min(max_backoff, grown)
    return max(0.0, base * (1.0 + rng.uniform(-jitter, jitter)))


class _Retry:
    __slots__ = ("attempts", "backoff", "failed_on", "held", "restrictions", "retries", "worker")

    def __init__(self, retries: int, backoff: float) -> None:
        self.retries = retries  # TaskState.retries when last dispatched
        self.backoff = backoff
        self.attempts = 0  # failed attempts so far
        self.worker: str | None = None  # where the current attempt runs
        self.failed_on: list[str] = []
        self.held = False
        self.restrictions: tuple[Any, Any, bool] = (None, None, False)


class Retries(SchedulingPolicy):
    """Retries with exponential backoff, jitter, a cap, on a different worker.

    Parameters
    ----------
    backoff : str or float, optional
        Base delay (``oxigdal.retries.backoff``); a task's ``backoff``
        annotation wins.
    multiplier : float, optional
        Growth per failed attempt, ``>= 1`` (``oxigdal.retries.multiplier``).
    max_backoff : str or float, optional
        Cap of the delay (``oxigdal.retries.max-backoff``).
    jitter : float, optional
        Relative jitter in ``[0, 1]`` (``oxigdal.retries.jitter``).
    prefer_other_worker : bool, optional
        Send a retry to a worker the task has not failed on
        (``oxigdal.retries.prefer-other-worker``).
    seed : int, optional
        Seed of the jitter (tests).
    """

    name = "Retries"

    def __init__(
        self,
        *,
        backoff: str | float | None = None,
        multiplier: float | None = None,
        max_backoff: str | float | None = None,
        jitter: float | None = None,
        prefer_other_worker: bool | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self._options = (backoff, multiplier, max_backoff, jitter, prefer_other_worker)
        self.rng = random.Random(seed)
        self.tasks: dict[Any, _Retry] = {}
        self.retried = 0
        self.exhausted = 0
        self.held = 0
        self.history: list[dict[str, Any]] = []
        self.closed = False
        self._scheduler: Any = None  # kept: a failed start resets extension.scheduler

    def start(self, extension: Any) -> None:
        """Read and validate the settings."""
        super().start(extension)
        backoff, multiplier, max_backoff, jitter, prefer = self._options
        self.backoff = duration(SECTION, "backoff", backoff)
        self.multiplier = number(SECTION, "multiplier", multiplier, minimum=1.0)
        self.max_backoff = duration(SECTION, "max-backoff", max_backoff)
        self.jitter = number(SECTION, "jitter", jitter, minimum=0.0, maximum=1.0)
        prefer = option(SECTION, "prefer-other-worker", prefer)
        if not isinstance(prefer, bool):
            from dask_oxigdal.exceptions import ConfigError

            raise ConfigError(
                f"oxigdal.retries.prefer-other-worker={prefer!r} is not valid: expected true or false"
            )
        self.prefer_other_worker = prefer
        self._scheduler = extension.scheduler

    def delay(self, attempt: int, backoff: float | None = None) -> float:
        """Backoff before the retry that follows failed attempt ``attempt`` (with jitter).

        Parameters
        ----------
        attempt : int
            Failed attempts so far (>= 1).
        backoff : float, optional
            Base delay; the configured one by default.

        Returns
        -------
        float
        """
        base = self.backoff if backoff is None else backoff
        return backoff_delay(
            attempt, base, self.multiplier, self.max_backoff, self.jitter, self.rng
        )

    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """Set Dask's retry counter from the ``retries`` annotation; track tasks that retry."""
        for ts, info in new:
            ann = info.annotations
            if ann.retries is not None:
                # the larger of Dask's own ``retries=`` and ours (Checkpoint may add one)
                ts.retries = max(ts.retries, ann.retries)
            if ts.retries > 0:
                backoff = ann.backoff if ann.backoff is not None else self.backoff
                self.tasks[ts.key] = _Retry(ts.retries, backoff)

    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Remember where an attempt runs; hold a failed attempt for its backoff."""
        r = self.tasks.get(key)
        if r is None:
            return
        if self.closed:
            if finish == "forgotten":
                self.tasks.pop(key, None)
            return
        if finish == "processing":
            ts = self.extension.scheduler.tasks[key]
            r.worker = ts.processing_on.address if ts.processing_on is not None else None
            r.retries = ts.retries
        elif start == "processing" and finish == "released":
            ts = self.extension.scheduler.tasks[key]
            if ts.retries < r.retries:  # Dask decremented it: the attempt failed
                self._hold(ts, r)
        elif finish == "erred" and start == "processing":
            self.exhausted += 1
        elif finish == "forgotten":
            if self.tasks.pop(key).held:
                self.held -= 1

    def _hold(self, ts: TaskState, r: _Retry) -> None:
        r.attempts += 1
        r.retries = ts.retries
        if r.worker is not None:
            r.failed_on.append(r.worker)
        if r.attempts == 1:  # the task's own restrictions, before any of ours
            r.restrictions = (ts.worker_restrictions, ts.host_restrictions, ts.loose_restrictions)
        r.held = True
        ext = self.extension
        info = ext.info.get(ts.key)
        if info is not None:
            ext.hold(ts, info, self.name)
        else:  # not known to the extension: restrict it all the same
            Holds.restrict(ts)
        self.held += 1
        self.retried += 1
        delay = self.delay(r.attempts, r.backoff)
        now = time()
        self.history.append(
            {
                "key": str(ts.key),
                "attempt": r.attempts,
                "worker": r.worker,
                "at": now,
                "delay": delay,
            }
        )
        del self.history[:-100]
        ext.emit("task-retry", key=str(ts.key), attempt=r.attempts, delay=delay, failed_on=r.worker)
        ext.scheduler.loop.call_later(delay, self._timer, ts.key)

    def _timer(self, key: Any) -> None:
        ext = self.extension
        if not self.closed:
            ext.run_policy(self, "release", key)  # skipped if disabled: close() releases it
            return
        # disabled (or closed) meanwhile: the task must not stay held in no-worker
        try:
            self.release(key)
        except Exception:
            logger.exception("oxigdal retries: could not release held task %r", key)

    def release(self, key: Any) -> None:
        """End the backoff of ``key``: give it its preferred workers and dispatch it.

        Parameters
        ----------
        key : str
            The task key.
        """
        r = self.tasks.get(key)
        scheduler = self._scheduler
        ts = scheduler.tasks.get(key)
        if r is None or ts is None or not r.held:
            return
        r.held = False
        self.held -= 1
        info = self.extension.info.get(key)
        if info is not None and not self.extension.unhold(ts, info, self.name):
            return  # another policy holds it too: it sends the task on
        restrictions, hosts, loose = r.restrictions
        ts.worker_restrictions = restrictions
        ts.host_restrictions = hosts
        ts.loose_restrictions = loose
        if self.prefer_other_worker and not restrictions and not hosts:
            running = {ws.address for ws in scheduler.running}
            # a worker it never failed on; else any but the last one it failed on
            others = (running - set(r.failed_on)) or (running - set(r.failed_on[-1:]))
            if others:
                ts.worker_restrictions = others
                ts.loose_restrictions = True
        if ts.state == "no-worker":
            self.extension.transitions({key: "processing"}, f"oxigdal-retry-{time()}")

    def close(self) -> int:
        """Stop: release every held task now, without waiting out its backoff.

        Call it from the event loop, outside a transition hook. Idempotent; after
        it, failed attempts are re-queued by Dask at once, as without the policy.

        Returns
        -------
        int
            Held tasks released.
        """
        self.closed = True
        if self._scheduler is None:
            return 0
        held = [key for key, r in self.tasks.items() if r.held]
        for key in held:
            try:
                self.release(key)
            except Exception:
                logger.exception("oxigdal retries: could not release held task %r", key)
        return len(held)

    def restart(self) -> None:
        """Every task was forgotten."""
        self.tasks.clear()
        self.held = 0

    def snapshot(self) -> dict[str, Any]:
        """``retried`` (failed attempts re-run), ``exhausted``, ``held`` and settings."""
        return {
            "retried": self.retried,
            "exhausted": self.exhausted,
            "held": self.held,
            "tracked": len(self.tasks),
            "backoff": self.backoff,
            "multiplier": self.multiplier,
            "max_backoff": self.max_backoff,
            "jitter": self.jitter,
            "recent": list(self.history[-20:]),
        }
