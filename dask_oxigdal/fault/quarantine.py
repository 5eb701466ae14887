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

import inspect
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from dask.utils import parse_timedelta
from distributed.core import Status
from distributed.metrics import time
from distributed.scheduler import heartbeat_interval
from distributed.worker import Worker

from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.fault._common import duration, number, option
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo

if TYPE_CHECKING:
    from distributed.scheduler import WorkerState

__all__ = ["HEARTBEAT_FACTOR", "Quarantine", "dask_heartbeat_interval", "min_heartbeat_timeout"]

logger = logging.getLogger(__name__)

SECTION = "quarantine"
STATUS_OP = "worker-status-change"
#: ``heartbeat-timeout`` must be at least this many worker heartbeat intervals.
HEARTBEAT_FACTOR = 3.0


def _worker_default_heartbeat() -> float:
    # A worker heartbeats every ``Worker(heartbeat_interval=)`` ("1s") until the
    # scheduler's first heartbeat reply sets ``heartbeat_interval(n)``.
    param = inspect.signature(Worker.__init__).parameters.get("heartbeat_interval")
    default = None if param is None else param.default
    if default is None or default is inspect.Parameter.empty:
        return 1.0
    return float(parse_timedelta(default, default="ms"))


_WORKER_HEARTBEAT = _worker_default_heartbeat()


def dask_heartbeat_interval(n_workers: int) -> float:
    """Longest interval between two heartbeats of a worker, in seconds.

    Parameters
    ----------
    n_workers : int
        Workers in the cluster.

    Returns
    -------
    float
        ``max(Worker's default heartbeat interval (1 s),
        distributed.scheduler.heartbeat_interval(n_workers))``: 1 s up to 49
        workers, 2 s up to 199, then ``n / 200 + 1``.
    """
    return max(_WORKER_HEARTBEAT, float(heartbeat_interval(max(int(n_workers), 1))))


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


class _Breaker:
    __slots__ = (
        "counted",
        "failures",
        "one_tenant_at",
        "opened",
        "probe",
        "reason",
        "reported",
        "since",
        "state",
        "tenants",
    )

    def __init__(self) -> None:
        self.state = "closed"
        self.since = time()
        self.reason = ""
        #: (time, prefix, tenant) of each failed attempt within the window
        self.failures: deque[tuple[float, str, str]] = deque()
        #: tenant -> last time one of its tasks was sent to or left this worker
        self.tenants: dict[str, float] = {}
        #: last ``quarantine-one-tenant`` event (at most one per window)
        self.one_tenant_at = 0.0
        self.probe: Any = None
        self.reported = "running"  # last status the worker itself reported
        self.opened = 0
        #: the failed prefixes that opened it (one entry per counted failure)
        self.counted: list[str] = []


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

    def _failure(self, worker: str, key: Any, b: _Breaker, tenant: str) -> None:
        self.failures_seen += 1
        ts = self.extension.scheduler.tasks.get(key)
        prefix = ts.prefix.name if ts is not None else str(key)
        now = time()
        horizon = now - self.window
        seen = self.prefix_failures.setdefault(prefix, {})
        seen[worker] = now
        elsewhere = any(t >= horizon for w, t in seen.items() if w != worker)
        b.failures.append((now, prefix, tenant))
        while b.failures and b.failures[0][0] < horizon:
            b.failures.popleft()
        if elsewhere:
            self._forgive(prefix, worker, horizon)
        if elsewhere or b.state != "closed":
            return
        counted = [
            (p, t) for _, p, t in b.failures if not self._failed_elsewhere(p, worker, horizon)
        ]
        if len(counted) >= self.failures:
            tenants = {t for _, t in counted}
            if len(tenants) < 2 and self._shared(worker, b, tenants, horizon):
                self._one_tenant(worker, b, tenants, len(counted), now)
                return
            reason = f"{len(counted)} failures within {self.window:g}s"
            if len(tenants) > 1:
                reason += f" from {len(tenants)} tenants"
            if self._open(worker, reason):
                b.counted = [p for p, _ in counted]

    def _shared(self, worker: str, b: _Breaker, tenants: set, horizon: float) -> bool:
        """Whether a tenant not in ``tenants`` used ``worker`` within the window, or does now."""
        if any(t not in tenants and at >= horizon for t, at in b.tenants.items()):
            return True
        ws = self.extension.scheduler.workers.get(worker)
        if ws is None:
            return False
        info = self.extension.info
        for ts in ws.processing:
            i = info.get(ts.key)
            if i is not None and i.tenant not in tenants:
                return True
        return False

    def _one_tenant(self, worker: str, b: _Breaker, tenants: set, n: int, now: float) -> None:
        """Failures from one tenant alone reached the threshold on a shared worker."""
        self.one_tenant_refusals += 1
        if now - b.one_tenant_at >= self.window:
            b.one_tenant_at = now
            self.extension.emit(
                "quarantine-one-tenant",
                worker=worker,
                tenants=sorted(tenants),
                failures=n,
                reason="failures from one tenant on a worker other tenants use",
            )

    def _failed_elsewhere(self, prefix: str, worker: str, horizon: float) -> bool:
        others = self.prefix_failures.get(prefix, {})
        return any(t >= horizon for w, t in others.items() if w != worker)

    def _forgive(self, prefix: str, worker: str, horizon: float) -> None:
        """``prefix`` now failed on ``worker`` too: readmit the workers it quarantined.

        A new buggy prefix can reach ``failures`` on one worker before it fails
        anywhere else; once it fails on a second worker it is a bug in the
        task, and a worker whose breaker it opened is readmitted unless the
        failures of other prefixes alone reach ``failures``.
        """
        for w, ob in list(self.breakers.items()):
            if w == worker or ob.state == "closed" or prefix not in ob.counted:
                continue
            left = [p for p in ob.counted if not self._failed_elsewhere(p, w, horizon)]
            if len(left) < self.failures:
                ob.reason = f"{ob.reason}; prefix {prefix!r} fails on other workers too"
                ob.counted = []
                self._close(w)

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
        """Un-pause ``worker``, later: from the event loop, never inside a transition.

        ``handle_worker_status_change(running)`` makes Dask dispatch work to
        the worker (``Scheduler.transitions``); called from a transition hook
        it would re-enter the transition engine.
        """
        scheduler = self.extension.scheduler
        b = self.breakers.get(worker)
        ws = scheduler.workers.get(worker)
        if ws is None or b is None or b.reported != "running":
            return
        if ws.status == Status.paused:
            scheduler.loop.add_callback(self._resume_now, worker, ws, f"{stimulus}-{time()}")

    def _resume_now(self, worker: str, ws: WorkerState, stimulus_id: str) -> None:
        """The deferred half of :meth:`_resume`: only if nothing changed meanwhile."""
        scheduler = self._scheduler
        if scheduler is None or scheduler.workers.get(worker) is not ws:
            return  # the worker left (or another one took its address)
        if ws.status != Status.paused:
            return  # already running, or closing: not ours to change
        b = self.breakers.get(worker)
        if self.closed:
            if self._successor_holds(worker) or (b is not None and b.reported != "running"):
                return
        elif b is None or b.reported != "running" or b.state == "open":
            return  # quarantined again meanwhile
        elif b.state == "half-open" and b.probe is not None:
            return  # its probe runs: it stays paused until the probe ends
        try:
            self._original_handler(Status.running, worker, stimulus_id)
        except Exception:  # never let a deferred callback take the loop down
            logger.exception("oxigdal quarantine: could not resume worker %s", worker)

    def _successor_holds(self, worker: str) -> bool:
        """Whether the Quarantine of the extension installed now keeps ``worker`` paused."""
        ext, scheduler = self.extension, self._scheduler
        installed = scheduler.plugins.get(ext.name) if scheduler is not None else None
        if installed is None or installed is ext:
            return False
        try:
            other = installed.get_policy(self.name)
        except (AttributeError, KeyError):
            return False
        b = getattr(other, "breakers", {}).get(worker)
        return worker in getattr(other, "restored", {}) or (b is not None and b.state != "closed")

    # ---------------------------------------------------------------- closing
    def close(self) -> None:
        """Stop: resume every worker this policy paused, restore the status handler.

        Called by the extension when it is removed or replaced or disables
        the policy, by the Quarantine of a replacing extension, or directly. Idempotent. The coordinator's record of the
        quarantine is kept (a restarted scheduler restores it).
        """
        if self.closed or self.extension is None:
            self.closed = True
            return
        self.closed = True
        scheduler = self._scheduler
        if scheduler is None:
            return
        if scheduler.stream_handlers.get(STATUS_OP) is self._handler:
            scheduler.stream_handlers[STATUS_OP] = self._original_handler
        for address, b in self.breakers.items():
            if b.state == "closed":
                continue
            b.state = "closed"
            b.since = time()
            b.probe = None
            ws = scheduler.workers.get(address)
            if ws is not None and ws.status == Status.paused:
                scheduler.loop.add_callback(
                    self._resume_now, address, ws, f"oxigdal-quarantine-close-{time()}"
                )
            self._record("worker-readmitted", address, reason="quarantine policy closed")

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
