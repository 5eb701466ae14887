"""``Quarantine``: a per-worker circuit breaker.

States of a worker: ``closed`` (healthy), ``open`` (quarantined: no new
tasks) and ``half-open`` (one probe task is let through).

- **Opening on failures**: ``failures`` failed attempts on one worker within
  ``window``, counting only failures of task prefixes that did not also fail
  on another worker within the window (those are bugs in the task, not in
  the worker).
- **Opening on silence**: a worker whose last heartbeat
  (``WorkerState.last_seen``) is older than ``heartbeat-timeout`` (a hung or
  SIGSTOPped process) is quarantined within seconds, long before Dask's
  ``worker-ttl``; the tasks it was processing are rescheduled on other
  workers (a stopped process cannot finish them). Silence is only judged
  when the scheduler's own event loop was responsive since the previous
  check (a stalled scheduler has not read the heartbeats yet).
- **Enacting**: an open worker is set to ``Status.paused`` on the scheduler
  (``Scheduler.handle_worker_status_change``), which is how Dask itself keeps
  a paused worker out of ``running``, ``idle`` and ``saturated``: it gets no
  new tasks; tasks already on it run to completion. A worker can un-pause
  itself (its memory monitor), so the policy intercepts the
  ``worker-status-change`` stream message of a quarantined worker, remembers
  the status the worker reported and keeps it paused.
- **Half-open**: after ``cooldown`` the worker is marked running again; the
  first task Dask sends to it is the probe and the worker is paused again
  right away. The worker is readmitted when the probe succeeds, and
  re-opened (cooldown restarts) when it fails.
- **Safety**: a worker is never quarantined when no other running,
  non-quarantined worker would remain (``refused`` counts those cases).

Every state change is published on the ``oxigdal`` event topic
(``worker-quarantined``, ``worker-probing``, ``worker-readmitted``,
``quarantine-refused``) and shown by ``status()``.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from distributed.core import Status
from distributed.metrics import time

from dask_oxigdal.fault._common import duration, number
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo

if TYPE_CHECKING:
    from distributed.scheduler import WorkerState

__all__ = ["Quarantine"]

SECTION = "quarantine"
STATUS_OP = "worker-status-change"


class _Breaker:
    __slots__ = ("failures", "opened", "probe", "reason", "reported", "since", "state")

    def __init__(self) -> None:
        self.state = "closed"
        self.since = time()
        self.reason = ""
        self.failures: deque[tuple[float, str]] = deque()
        self.probe: Any = None
        self.reported = "running"  # last status the worker itself reported
        self.opened = 0


class Quarantine(SchedulingPolicy):
    """Per-worker circuit breaker: failures or silence open it; a probe closes it.

    Parameters
    ----------
    failures : int, optional
        Failed attempts within ``window`` that open the breaker
        (``oxigdal.quarantine.failures``).
    window : str or float, optional
        Sliding window of the failure count (``oxigdal.quarantine.window``).
    cooldown : str or float, optional
        Time in ``open`` before the half-open probe (``oxigdal.quarantine.cooldown``).
    heartbeat_timeout : str or float, optional
        Silence after which a worker is quarantined as hung; ``0`` disables
        (``oxigdal.quarantine.heartbeat-timeout``).
    """

    name = "Quarantine"

    def __init__(
        self,
        *,
        failures: int | None = None,
        window: str | float | None = None,
        cooldown: str | float | None = None,
        heartbeat_timeout: str | float | None = None,
    ) -> None:
        super().__init__()
        self._options = (failures, window, cooldown, heartbeat_timeout)
        self.breakers: dict[str, _Breaker] = {}
        # quarantine recorded by the coordinator for workers not connected yet
        self.restored: dict[str, str] = {}
        self.running: dict[Any, tuple[str, int]] = {}  # key -> (worker, retries at dispatch)
        self.prefix_failures: dict[str, dict[str, float]] = {}
        self.events = 0
        self.refused = 0
        self.failures_seen = 0
        self.history: deque[dict[str, Any]] = deque(maxlen=100)
        self._original_handler: Any = None
        self._last_tick = time()

    # ----------------------------------------------------------------- setup
    def start(self, extension: Any) -> None:
        """Read the settings; intercept the worker-status-change stream message."""
        super().start(extension)
        failures, window, cooldown, heartbeat_timeout = self._options
        self.failures = number(SECTION, "failures", failures, minimum=1, integer=True)
        self.window = duration(SECTION, "window", window, minimum=0.001)
        self.cooldown = duration(SECTION, "cooldown", cooldown)
        self.heartbeat_timeout = duration(SECTION, "heartbeat-timeout", heartbeat_timeout)
        scheduler = extension.scheduler
        self._last_tick = time()
        original = scheduler.stream_handlers[STATUS_OP]
        # unwrap a handler left by a previous (replaced) extension
        original = getattr(original, "_oxigdal_original", original)
        self._original_handler = original

        def handle_worker_status_change(status: Any, worker: Any, stimulus_id: str) -> None:
            self._status_change(status, worker, stimulus_id)

        handle_worker_status_change._oxigdal_original = original  # type: ignore[attr-defined]
        scheduler.stream_handlers[STATUS_OP] = handle_worker_status_change
        for address in scheduler.workers:
            self.breakers.setdefault(address, _Breaker())
        # -- coordinator (issue 6): restore quarantine state, when enabled -------
        # A quarantined worker that is connected now is opened again; one that
        # reconnects later (same address) is opened when it joins (add_worker).
        coordinator = getattr(extension, "coordinator", None)
        if coordinator is not None:
            for address, entry in dict(coordinator.state.quarantine).items():
                if entry.get("state") in ("open", "half-open"):
                    self.restored[address] = f"restored: {entry.get('reason', '')}"
            for address in list(self.breakers):
                self._reopen_restored(address)
        # -- end coordinator ------------------------------------------------------

    def _status_change(self, status: Any, worker: Any, stimulus_id: str) -> None:
        address = worker if isinstance(worker, str) else getattr(worker, "address", worker)
        b = self.breakers.get(address)
        name = status if isinstance(status, str) else status.name
        if b is not None and b.state != "closed" and self._in_charge():
            b.reported = name
            if name == "running" and b.state == "half-open" and b.probe is None:
                pass  # waiting for its probe: let the worker run again
            elif name == "running":
                # keep it out of `running`: forward as paused
                self._original_handler(Status.paused, address, stimulus_id)
                return
        self._original_handler(status, worker, stimulus_id)

    def _in_charge(self) -> bool:
        """Whether this policy is enabled and its extension is still the installed one."""
        ext = self.extension
        return (
            ext.scheduler is not None
            and ext.scheduler.plugins.get(ext.name) is ext
            and ext._policy_name(self) not in ext.disabled
        )

    # ---------------------------------------------------------- transitions
    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Count failures per worker; watch the probe."""
        if finish == "processing":
            ts = self.extension.scheduler.tasks[key]
            ws = ts.processing_on
            if ws is None:
                return
            self.running[key] = (ws.address, ts.retries)
            b = self.breakers.get(ws.address)
            if b is not None and b.state == "half-open" and b.probe is None:
                b.probe = key
                self._pause(ws.address, "oxigdal-quarantine-probe")
            return
        if start != "processing":
            if finish == "forgotten":
                self.running.pop(key, None)
            return
        worker, retries = self.running.pop(key, (None, 0))
        if worker is None:
            return
        failed = False
        if finish == "erred":
            failed = True
            worker = kwargs.get("worker") or worker
        elif finish == "released":
            ts = self.extension.scheduler.tasks.get(key)
            failed = ts is not None and ts.retries < retries
        b = self.breakers.get(worker)
        if b is None:
            return
        if b.probe == key:
            b.probe = None
            if finish == "memory":
                self._close(worker)
            elif failed:
                self._open(worker, "probe failed", force=True)
            elif b.state == "half-open":
                self._resume(worker, "oxigdal-quarantine-probe-lost")  # let another probe in
        if failed:
            self._failure(worker, key, b)

    def _failure(self, worker: str, key: Any, b: _Breaker) -> None:
        self.failures_seen += 1
        ts = self.extension.scheduler.tasks.get(key)
        prefix = ts.prefix.name if ts is not None else str(key)
        now = time()
        horizon = now - self.window
        seen = self.prefix_failures.setdefault(prefix, {})
        seen[worker] = now
        elsewhere = any(t >= horizon for w, t in seen.items() if w != worker)
        b.failures.append((now, prefix))
        while b.failures and b.failures[0][0] < horizon:
            b.failures.popleft()
        if elsewhere or b.state != "closed":
            return
        count = 0
        for _, p in b.failures:
            others = self.prefix_failures.get(p, {})
            if not any(t >= horizon for w, t in others.items() if w != worker):
                count += 1
        if count >= self.failures:
            self._open(worker, f"{count} failures within {self.window:g}s")

    # -------------------------------------------------------------- enacting
    def _healthy_others(self, worker: str) -> int:
        n = 0
        for ws in self.extension.scheduler.running:
            if ws.address == worker:
                continue
            b = self.breakers.get(ws.address)
            if b is None or b.state == "closed":
                n += 1
        return n

    def _pause(self, worker: str, stimulus: str) -> None:
        ws = self.extension.scheduler.workers.get(worker)
        if ws is not None and ws.status == Status.running:
            self._original_handler(Status.paused, worker, f"{stimulus}-{time()}")

    def _resume(self, worker: str, stimulus: str) -> None:
        b = self.breakers.get(worker)
        ws = self.extension.scheduler.workers.get(worker)
        if ws is None or b is None or b.reported != "running":
            return
        if ws.status != Status.running:
            self._original_handler(Status.running, worker, f"{stimulus}-{time()}")

    def _record(self, kind: str, worker: str, **fields: Any) -> None:
        self.events += 1
        entry = {"kind": kind, "worker": worker, "at": time(), **fields}
        self.history.append(entry)
        self.extension.emit(kind, worker=worker, **fields)

    def _open(self, worker: str, reason: str, *, force: bool = False) -> bool:
        b = self.breakers.get(worker)
        if b is None:
            return False
        if self._healthy_others(worker) < 1:
            if b.state == "closed" or not force:
                self.refused += 1
                self.extension.emit(
                    "quarantine-refused", worker=worker, reason=f"{reason}; last healthy worker"
                )
                return False
            # a failed probe on the only other candidate: readmit rather than lose it
            self._close(worker)
            return False
        b.state = "open"
        b.since = time()
        b.reason = reason
        b.probe = None
        b.opened += 1
        b.failures.clear()
        self._pause(worker, "oxigdal-quarantine")
        self._record("worker-quarantined", worker, reason=reason)
        self._coordinate(worker, "open", reason)
        return True

    def _close(self, worker: str) -> None:
        b = self.breakers.get(worker)
        if b is None:
            return
        b.state = "closed"
        b.since = time()
        b.probe = None
        b.failures.clear()
        self._resume(worker, "oxigdal-quarantine-readmit")
        self._record("worker-readmitted", worker, reason=b.reason)
        self._coordinate(worker, "closed", b.reason)

    def _coordinate(self, worker: str, state: str, reason: str) -> None:
        # -- coordinator (issue 6): replicate quarantine state, when enabled -----
        coordinator = getattr(self.extension, "coordinator", None)
        if coordinator is not None:
            if state == "closed":
                coordinator.quarantine_clear(worker)
            else:
                coordinator.quarantine_set(worker, state, reason)
        # -- end coordinator ------------------------------------------------------

    def quarantine(self, worker: str, reason: str = "manual") -> bool:
        """Quarantine ``worker`` now (unless it is the last healthy one).

        Parameters
        ----------
        worker : str
            Worker address.
        reason : str
            Shown in events and ``status()``.

        Returns
        -------
        bool
            Whether the worker was quarantined.
        """
        if worker not in self.breakers:
            raise KeyError(f"unknown worker {worker!r}; workers: {sorted(self.breakers)}")
        return self._open(worker, reason)

    # -------------------------------------------------------------- periodic
    def periodic(self) -> None:
        """Quarantine silent workers; move open workers to half-open after the cooldown."""
        scheduler = self.extension.scheduler
        now = time()
        # If the scheduler's own event loop was stalled, heartbeats may be waiting
        # unread in its sockets: judge silence only after a responsive tick.
        gap, self._last_tick = now - self._last_tick, now
        responsive = gap < max(self.heartbeat_timeout / 2, 2 * self.extension.interval)
        for address, b in list(self.breakers.items()):
            ws: WorkerState | None = scheduler.workers.get(address)
            if ws is None:
                continue
            silent = (
                responsive
                and self.heartbeat_timeout > 0
                and now - ws.last_seen > self.heartbeat_timeout
            )
            if b.state == "closed":
                if silent and self._open(address, f"no heartbeat for {now - ws.last_seen:.1f}s"):
                    self._reschedule_all(ws)
            elif b.state == "open":
                if ws.status == Status.running:  # something un-paused it
                    self._pause(address, "oxigdal-quarantine-reapply")
                if not silent and now - b.since >= self.cooldown:
                    b.state = "half-open"
                    b.since = now
                    b.probe = None
                    self._record("worker-probing", address, reason=b.reason)
                    self._coordinate(address, "half-open", b.reason)
                    self._resume(address, "oxigdal-quarantine-half-open")
            elif b.state == "half-open" and silent:
                self._open(address, "no heartbeat while half-open", force=True)

    def _reschedule_all(self, ws: WorkerState) -> None:
        keys = [ts.key for ts in ws.processing]
        if keys:
            self.extension.scheduler.transitions(
                {k: "released" for k in keys}, stimulus_id=f"oxigdal-quarantine-hung-{time()}"
            )

    # --------------------------------------------------------------- workers
    def add_worker(self, address: str) -> None:
        """A new worker starts closed, unless the coordinator recorded it quarantined."""
        self.breakers.setdefault(address, _Breaker())
        self._reopen_restored(address)

    def _reopen_restored(self, address: str) -> None:
        reason = self.restored.pop(address, None)
        if reason is not None:
            self._open(address, reason, force=True)

    def remove_worker(self, address: str, stimulus_id: str) -> None:
        """Forget a worker that left."""
        self.breakers.pop(address, None)

    def restart(self) -> None:
        """Every task was forgotten."""
        self.running.clear()

    @property
    def quarantined(self) -> list[str]:
        """Workers in ``open`` or ``half-open`` state."""
        return sorted(a for a, b in self.breakers.items() if b.state != "closed")

    def snapshot(self) -> dict[str, Any]:
        """``quarantined``, ``events``, ``refused``, per-worker states and recent changes."""
        now = time()
        return {
            "quarantined": self.quarantined,
            "events": self.events,
            "refused": self.refused,
            "failures_seen": self.failures_seen,
            "workers": {
                a: {
                    "state": b.state,
                    "since": b.since,
                    "for": now - b.since,
                    "reason": b.reason,
                    "opened": b.opened,
                    "recent_failures": len(b.failures),
                }
                for a, b in self.breakers.items()
            },
            "history": list(self.history)[-20:],
            "settings": {
                "failures": self.failures,
                "window": self.window,
                "cooldown": self.cooldown,
                "heartbeat_timeout": self.heartbeat_timeout,
            },
        }
