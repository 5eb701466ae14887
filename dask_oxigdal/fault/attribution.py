"""Quarantine's failure attribution: whose fault is a failed task, the worker's or the work's?

Per-worker circuit breakers (:class:`_Breaker`) and the rules the
``Quarantine`` policy (:mod:`dask_oxigdal.fault.quarantine`) applies to one
failure: a failure a prefix also had on other workers is the work's fault and
is forgiven; failures of one tenant only do not quarantine a worker other
tenants use; a worker is never quarantined when it would leave too few
healthy ones.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from distributed.metrics import time

__all__ = ["FailureAttribution"]


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


class FailureAttribution:
    """The failure-attribution half of ``Quarantine`` (a base class of it)."""

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
