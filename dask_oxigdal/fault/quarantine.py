"""``Quarantine``: a per-worker circuit breaker.

States of a worker: ``closed`` (healthy), ``open`` (quarantined: no new
tasks) and ``half-open`` (one probe task is let through).

- **Opening on failures**: ``failures`` failed attempts on one worker within
  ``window``, counting only failures of task prefixes that did not also fail
  on another worker within the window (those are bugs in the task, not in
  the worker).
- **Evidence from two tenants**: on a worker that other tenants use, the
  counted failures must come from at least two tenants (the tasks' resolved
  tenants). One tenant's failing tasks alone do not pause a worker that
  another tenant's tasks ran on within ``window`` (or are running on now):
  the breaker stays closed, ``one_tenant_refusals`` counts it and a
  ``quarantine-one-tenant`` event says so (at most once per worker and
  window). A worker only one tenant used (every worker of a single-tenant
  cluster) opens on that tenant's failures, as before. The worker's own
  health needs no tenant: silence (below), a failed probe and
  :meth:`Quarantine.quarantine` open it whoever's tasks run there.
- **Opening on silence**: a worker whose last heartbeat
  (``WorkerState.last_seen``) is older than ``heartbeat-timeout`` (a hung or
  SIGSTOPped process) is quarantined within seconds, long before Dask's
  ``worker-ttl``; the tasks it was processing are rescheduled on other
  workers (a stopped process cannot finish them). Silence is only judged
  when the scheduler's own event loop was responsive since the previous
  check (a stalled scheduler has not read the heartbeats yet).
  ``heartbeat-timeout`` must be 0 (off) or at least 3x Dask's worker heartbeat
  interval (:func:`min_heartbeat_timeout`); on a large cluster, where Dask asks
  for slower heartbeats, the timeout in effect grows with it
  (:meth:`Quarantine.effective_heartbeat_timeout`).
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
  re-opened (cooldown restarts) when it fails. Un-pausing a worker makes Dask
  dispatch work to it (``Scheduler.transitions``), so it is never done from
  inside a transition hook: it is deferred with ``loop.add_callback`` and
  skipped if the worker left (or was quarantined again) meanwhile.
- **Closing**: when the policy stops (extension removed or replaced, policy
  disabled, :meth:`Quarantine.close`), every worker it paused is resumed and
  the ``worker-status-change`` handler is restored.
- **Safety**: a worker is never quarantined when no other running,
  non-quarantined worker would remain (``refused`` counts those cases).

Every state change is published on the ``oxigdal`` event topic
(``worker-quarantined``, ``worker-probing``, ``worker-readmitted``,
``quarantine-refused``) and shown by ``status()``.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from distributed.core import Status
from distributed.metrics import time

from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.fault._common import duration, number, option
from dask_oxigdal.fault.attribution import FailureAttribution, _Breaker
from dask_oxigdal.fault.pausing import STATUS_OP, WorkerPausing
from dask_oxigdal.scheduling._dask import dask_heartbeat_interval
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo

if TYPE_CHECKING:
    from distributed.scheduler import WorkerState

__all__ = ["HEARTBEAT_FACTOR", "Quarantine", "dask_heartbeat_interval", "min_heartbeat_timeout"]

logger = logging.getLogger(__name__)

SECTION = "quarantine"
#: ``heartbeat-timeout`` must be at least this many worker heartbeat intervals.
HEARTBEAT_FACTOR = 3.0


def min_heartbeat_timeout(n_workers: int = 1) -> float:
    """Smallest valid non-zero ``heartbeat-timeout``: 3x :func:`dask_heartbeat_interval`.

    Parameters
    ----------
    n_workers : int, default 1
        Workers in the cluster.

    Returns
    -------
    float
        Seconds (3 s for clusters of up to 49 workers).
    """
    return HEARTBEAT_FACTOR * dask_heartbeat_interval(n_workers)


class Quarantine(FailureAttribution, WorkerPausing, SchedulingPolicy):
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
        self.one_tenant_refusals = 0
        self.history: deque[dict[str, Any]] = deque(maxlen=100)
        self._original_handler: Any = None
        self._handler: Any = None  # our wrapper in scheduler.stream_handlers
        self._scheduler: Any = None  # kept: a failed start resets extension.scheduler
        self.closed = False
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
        floor = min_heartbeat_timeout()
        if 0 < self.heartbeat_timeout < floor:
            raw = option(SECTION, "heartbeat-timeout", heartbeat_timeout)
            raise ConfigError(
                f"oxigdal.quarantine.heartbeat-timeout={raw!r} ({self.heartbeat_timeout:g} s) "
                f"is not valid: must be 0 (off) or >= {floor:g} s "
                f"({HEARTBEAT_FACTOR:g}x Dask's worker heartbeat interval of "
                f"{dask_heartbeat_interval(1):g} s)"
            )
        scheduler = self._scheduler = extension.scheduler
        self._last_tick = time()
        current = scheduler.stream_handlers[STATUS_OP]
        previous = getattr(current, "_oxigdal_policy", None)
        if previous is not None and previous is not self:
            # a replaced extension's Quarantine: give its workers back first
            previous.close()
            current = scheduler.stream_handlers[STATUS_OP]
        # unwrap a handler left by a previous (replaced) extension
        original = getattr(current, "_oxigdal_original", current)
        self._original_handler = original

        def handle_worker_status_change(status: Any, worker: Any, stimulus_id: str) -> None:
            self._status_change(status, worker, stimulus_id)

        handle_worker_status_change._oxigdal_original = original  # type: ignore[attr-defined]
        handle_worker_status_change._oxigdal_policy = self  # type: ignore[attr-defined]
        self._handler = handle_worker_status_change
        scheduler.stream_handlers[STATUS_OP] = handle_worker_status_change
        for address in scheduler.workers:
            self.breakers.setdefault(address, _Breaker())
        # -- coordinator (issue 6): restore quarantine state, when enabled -------
        # A quarantined worker that is connected now is opened again; one that
        # reconnects later (same address) is opened when it joins (add_worker).
        # Runs now when the coordinator is ready, else on its first ready tick.
        coordinator = getattr(extension, "coordinator", None)
        if coordinator is not None:
            coordinator.on_ready(self._restore_from_coordinator)
        # -- end coordinator ------------------------------------------------------

    def _restore_from_coordinator(self) -> None:
        coordinator = getattr(self.extension, "coordinator", None)
        if coordinator is None or self.closed:
            return
        for address, entry in dict(coordinator.state.quarantine).items():
            if entry.get("state") in ("open", "half-open"):
                self.restored[address] = f"restored: {entry.get('reason', '')}"
        for address in list(self.breakers):
            self._reopen_restored(address)

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
        """Whether this policy still acts (its extension closes it when removed or disabled)."""
        return not self.closed

    # ---------------------------------------------------------- transitions
    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Count failures per worker; watch the probe."""
        if self.closed:
            return
        if finish == "processing":
            ts = self.extension.scheduler.tasks[key]
            ws = ts.processing_on
            if ws is None:
                return
            self.running[key] = (ws.address, ts.retries)
            b = self.breakers.get(ws.address)
            if b is not None:
                b.tenants[info.tenant] = time()
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
        b.tenants[info.tenant] = time()
        if b.probe == key:
            b.probe = None
            if finish == "memory":
                self._close(worker)
            elif failed:
                self._open(worker, "probe failed", force=True)
            elif b.state == "half-open":
                self._resume(worker, "oxigdal-quarantine-probe-lost")  # let another probe in
        if failed:
            self._failure(worker, key, b, info.tenant)

    def _record(self, kind: str, worker: str, **fields: Any) -> None:
        self.events += 1
        entry = {"kind": kind, "worker": worker, "at": time(), **fields}
        self.history.append(entry)
        self.extension.emit(kind, worker=worker, **fields)

    def _open(self, worker: str, reason: str, *, force: bool = False) -> bool:
        b = self.breakers.get(worker)
        if b is None or self.closed:
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
        if self.closed:
            return
        scheduler = self.extension.scheduler
        now = time()
        timeout = self.effective_heartbeat_timeout()
        # If the scheduler's own event loop was stalled, heartbeats may be waiting
        # unread in its sockets: judge silence only after a responsive tick.
        gap, self._last_tick = now - self._last_tick, now
        responsive = gap < max(timeout / 2, 2 * self.extension.interval)
        self._prune(now - self.window)
        for address, b in list(self.breakers.items()):
            ws: WorkerState | None = scheduler.workers.get(address)
            if ws is None:
                continue
            silent = responsive and timeout > 0 and now - ws.last_seen > timeout
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

    def _prune(self, horizon: float) -> None:
        """Forget failures and tenant uses older than the window (keeps the state bounded)."""
        for prefix in list(self.prefix_failures):
            seen = self.prefix_failures[prefix]
            for w in [w for w, t in seen.items() if t < horizon]:
                del seen[w]
            if not seen:
                del self.prefix_failures[prefix]
        for b in self.breakers.values():
            if b.tenants:
                for t in [t for t, at in b.tenants.items() if at < horizon]:
                    del b.tenants[t]

    def effective_heartbeat_timeout(self) -> float:
        """The silence timeout in effect now, in seconds (0: off).

        The configured ``heartbeat-timeout``, raised to
        :func:`min_heartbeat_timeout` of the current cluster size: Dask asks the
        workers of a large cluster for slower heartbeats (as
        ``Scheduler.check_worker_ttl`` widens ``worker-ttl``).

        Returns
        -------
        float
        """
        if self.heartbeat_timeout <= 0:
            return 0.0
        n = len(self.extension.scheduler.workers) if self.extension.scheduler else 1
        return max(self.heartbeat_timeout, min_heartbeat_timeout(n))

    def _reschedule_all(self, ws: WorkerState) -> None:
        keys = [ts.key for ts in ws.processing]
        if keys:
            self.extension.transitions(
                {k: "released" for k in keys}, f"oxigdal-quarantine-hung-{time()}"
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
            "one_tenant_refusals": self.one_tenant_refusals,
            "failing_prefixes": len(self.prefix_failures),
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
                "effective_heartbeat_timeout": (
                    self.effective_heartbeat_timeout() if self.extension is not None else None
                ),
            },
            "closed": self.closed,
        }
