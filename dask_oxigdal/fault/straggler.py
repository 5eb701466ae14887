"""``Stragglers``: detect tasks that run far longer than their peers; run them elsewhere.

**Detection** (Spark's speculation rule): once ``quantile`` of the tasks of a
prefix have finished, a running task of that prefix is a straggler when it
has run longer than ``max(min-runtime, multiplier x median duration)`` of the
prefix. The check runs every ``interval`` in its own ``PeriodicCallback``;
it looks only at the tasks that are executing on the workers, so its cost is
bounded by the number of worker threads. A task's run time is a lower bound
(see ``Stragglers._running``): the durations the workers report with each
heartbeat (``WorkerState.executing``), or, on a worker with no more tasks
than threads, the time since the task was dispatched or since the last task
left that worker, whichever is later.

**Action** (``action="reschedule"``): only when another running,
non-quarantined worker has a free thread (fewer tasks in ``processing`` than
threads), the task is released from the slow worker and restricted
(loosely) to the free one. Dask cannot run two copies of one key (one
``processing_on``, one ``run_id``; a result with a stale ``run_id`` is
dropped), so this is *rescheduling*, not a hedged copy: the first attempt's
thread is not interrupted (Python cannot kill a thread); it keeps its slot
on the slow worker until it returns, and its result is discarded. At most
one reschedule per task. Side effects of the abandoned attempt are the
user's responsibility.

``action="detect"`` (the default) only counts and reports stragglers.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import TYPE_CHECKING, Any

from distributed.metrics import time
from tornado.ioloop import PeriodicCallback

from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.fault._common import duration, number, option
from dask_oxigdal.scheduling._dask import compute_seconds, idle_threads
from dask_oxigdal.scheduling.bounded import evict_idle, max_prefixes, prefix_is_live
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo

if TYPE_CHECKING:
    from distributed.scheduler import TaskState

__all__ = ["ACTIONS", "Stragglers"]

SECTION = "stragglers"
CALLBACK = "oxigdal-stragglers"
#: Valid values of ``oxigdal.stragglers.action``.
ACTIONS = ("detect", "reschedule")


class _Prefix:
    __slots__ = ("done", "durations", "median", "total")

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.durations: deque[float] = deque(maxlen=512)
        self.median: float | None = None


class Stragglers(SchedulingPolicy):
    """Straggler detection and rescheduling away from the slow worker.

    Parameters
    ----------
    multiplier : float, optional
        A task is slow beyond ``multiplier`` x the prefix median
        (``oxigdal.stragglers.multiplier``, Spark's 1.5).
    quantile : float, optional
        Fraction of the prefix that must have finished first
        (``oxigdal.stragglers.quantile``, Spark's 0.75).
    interval : str or float, optional
        Period of the check (``oxigdal.stragglers.interval``, 100 ms).
    min_runtime : str or float, optional
        Never flag a task that ran less than this
        (``oxigdal.stragglers.min-runtime``).
    action : {"detect", "reschedule"}, optional
        ``oxigdal.stragglers.action``.
    """

    name = "Stragglers"

    def __init__(
        self,
        *,
        multiplier: float | None = None,
        quantile: float | None = None,
        interval: str | float | None = None,
        min_runtime: str | float | None = None,
        action: str | None = None,
    ) -> None:
        super().__init__()
        self._options = (multiplier, quantile, interval, min_runtime, action)
        self.prefixes: dict[str, _Prefix] = {}
        # bounded: idle prefixes past oxigdal.scheduling.max-prefixes are forgotten
        self.max_prefixes = max_prefixes()
        self.evicted_prefixes = 0
        self.flagged: set[Any] = set()
        self.backups = 0
        self.detected = 0
        self.no_free_slot = 0
        self.history: deque[dict[str, Any]] = deque(maxlen=100)
        self._pc: PeriodicCallback | None = None
        self.sent: dict[Any, tuple[str, float]] = {}  # key -> (worker, dispatch time)
        self.last_finish: dict[str, float] = {}  # worker -> last time a task left it

    def start(self, extension: Any) -> None:
        """Read the settings and start the check's ``PeriodicCallback``."""
        super().start(extension)
        multiplier, quantile, interval, min_runtime, action = self._options
        self.multiplier = number(SECTION, "multiplier", multiplier, minimum=1.0)
        self.quantile = number(SECTION, "quantile", quantile, minimum=0.0, maximum=1.0)
        self.interval = duration(SECTION, "interval", interval, minimum=0.001)
        self.min_runtime = duration(SECTION, "min-runtime", min_runtime)
        self.action = option(SECTION, "action", action)
        if self.action not in ACTIONS:
            raise ConfigError(
                f"oxigdal.stragglers.action={self.action!r} is not valid; valid: {', '.join(ACTIONS)}"
            )
        pcs = extension.scheduler.periodic_callbacks
        old = pcs.pop(CALLBACK, None)
        if old is not None:
            old.stop()
        self._pc = pcs[CALLBACK] = PeriodicCallback(self._tick, self.interval * 1000.0)
        self._pc.start()

    def _tick(self) -> None:
        ext = self.extension
        if ext.scheduler is None or ext.scheduler.plugins.get(ext.name) is not ext:
            # the extension was removed or replaced: stop
            if self._pc is not None:
                self._pc.stop()
            return
        ext.run_policy(self, "check")

    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """Count the tasks of each prefix."""
        prefixes = self.prefixes
        for ts, _ in new:
            p = prefixes.get(ts.prefix.name)
            if p is None:
                p = prefixes[ts.prefix.name] = _Prefix()
            p.total += 1

    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Record dispatch times and the compute time of finished tasks."""
        if finish == "processing":
            ts = self.extension.scheduler.tasks[key]
            if ts.processing_on is not None:
                self.sent[key] = (ts.processing_on.address, time())
            return
        if start == "processing":
            sent = self.sent.pop(key, None)
            if sent is not None:
                self.last_finish[sent[0]] = time()
        if start == "processing" and finish == "memory":
            seconds = compute_seconds(kwargs.get("startstops"))
            ts = self.extension.scheduler.tasks.get(key)
            if ts is None:
                return
            p = self.prefixes.get(ts.prefix.name)
            if p is None:
                return
            p.done += 1
            if seconds > 0:
                p.durations.append(seconds)
                p.median = None
        elif finish == "erred" or (finish == "forgotten" and not info.done):
            # an erred task counts as finished; a cancelled one no longer counts
            ts = self.extension.scheduler.tasks.get(key)
            p = self.prefixes.get(ts.prefix.name) if ts is not None else None
            if p is not None:
                if finish == "erred":
                    p.done += 1
                else:
                    p.total -= 1
        if finish == "forgotten" and self.flagged:
            self.flagged.discard(key)

    def _threshold(self, p: _Prefix) -> float | None:
        if not p.durations or p.done < self.quantile * p.total:
            return None
        if p.median is None:
            p.median = statistics.median(p.durations)
        return max(self.min_runtime, self.multiplier * p.median)

    def check(self) -> int:
        """Find stragglers now; reschedule them where a thread is free.

        Returns
        -------
        int
            Tasks rescheduled by this call.
        """
        scheduler = self.extension.scheduler
        prefixes = self.prefixes
        if not prefixes:
            return 0
        now = time()
        moved: list[tuple[TaskState, Any]] = []
        for ws in scheduler.workers.values():
            for ts, ran in self._running(ws, now):
                if ts.key in self.flagged:
                    continue
                p = prefixes.get(ts.prefix.name)
                if p is None:
                    continue
                limit = self._threshold(p)
                if limit is None or ran <= limit:
                    continue
                if self.action == "reschedule":
                    target = self._free_worker(ws, moved)
                    if target is None:
                        self.no_free_slot += 1  # not flagged: tried again next time
                        continue
                    if ts.worker_restrictions or ts.host_restrictions or ts.resource_restrictions:
                        target = None  # the user's restrictions stand: only detected
                    else:
                        moved.append((ts, target))
                self.flagged.add(ts.key)
                self.detected += 1
                self.history.append(
                    {"key": str(ts.key), "worker": ws.address, "ran": ran, "limit": limit}
                )
                self.extension.emit(
                    "straggler", key=str(ts.key), worker=ws.address, ran=ran, limit=limit
                )
        if not moved:
            return 0
        for ts, target in moved:
            ts.worker_restrictions = {target.address}
            ts.loose_restrictions = True
            self.backups += 1
            self.extension.emit(
                "straggler-backup",
                key=str(ts.key),
                worker=ts.processing_on.address if ts.processing_on else None,
                to=target.address,
            )
        self.extension.transitions(
            {ts.key: "released" for ts, _ in moved}, f"oxigdal-straggler-{now}"
        )
        return len(moved)

    def _running(self, ws: Any, now: float) -> list[tuple[TaskState, float]]:
        """(task, lower bound of its run time) for the tasks executing on ``ws``.

        Two sources, the larger wins: the durations the worker reported at its
        last heartbeat (``WorkerState.executing``) plus the time since; and,
        when the worker has no more tasks than threads (so none waits in its
        queue), the time since ``max(dispatch, last task that left the
        worker)``, which is never earlier than the task's real start.
        """
        out: dict[Any, tuple[TaskState, float]] = {}
        if ws.executing:
            since = now - ws.last_seen
            for ts, ran in ws.executing.items():
                if ts.processing_on is ws and ts.state == "processing":
                    out[ts.key] = (ts, ran + since)
        if ws.processing and len(ws.processing) <= ws.nthreads:
            freed = self.last_finish.get(ws.address, 0.0)
            for ts in ws.processing:
                sent = self.sent.get(ts.key)
                if sent is None or sent[0] != ws.address:
                    continue
                ran = now - max(sent[1], freed)
                prev = out.get(ts.key)
                if prev is None or prev[1] < ran:
                    out[ts.key] = (ts, ran)
        return list(out.values())

    def _free_worker(self, slow: Any, moved: list) -> Any:
        taken: dict[Any, int] = {}
        for _, w in moved:
            taken[w] = taken.get(w, 0) + 1
        best = None
        for ws in self.extension.scheduler.running:
            if ws is slow:
                continue
            free = idle_threads(ws) - taken.get(ws, 0)
            if free > 0 and (best is None or free > best[0]):
                best = (free, ws)
        return None if best is None else best[1]

    def restart(self) -> None:
        """Every task was forgotten."""
        self.flagged.clear()
        self.sent.clear()

    def remove_worker(self, address: str, stimulus_id: str) -> None:
        """Forget a worker that left."""
        self.last_finish.pop(address, None)

    def periodic(self) -> None:
        """Forget the oldest idle prefixes past ``oxigdal.scheduling.max-prefixes``."""
        if len(self.prefixes) > self.max_prefixes:
            scheduler = self.extension.scheduler
            gone = evict_idle(
                self.prefixes, self.max_prefixes, lambda n: prefix_is_live(scheduler, n)
            )
            self.evicted_prefixes += len(gone)

    def snapshot(self) -> dict[str, Any]:
        """``backups`` (tasks rescheduled), ``detected``, settings and recent stragglers."""
        return {
            "prefixes": len(self.prefixes),
            "evicted_prefixes": self.evicted_prefixes,
            "backups": self.backups,
            "detected": self.detected,
            "no_free_slot": self.no_free_slot,
            "action": self.action,
            "multiplier": self.multiplier,
            "quantile": self.quantile,
            "interval": self.interval,
            "min_runtime": self.min_runtime,
            "recent": list(self.history)[-20:],
        }
