"""Quarantine's hands on workers: pausing and resuming them through Dask's status handler.

A quarantined worker is paused (``Status.paused``: Dask sends it no new
tasks) through the scheduler's own ``worker-status-change`` handler, and
resumed later from the event loop (never inside a transition). ``close()``
resumes every worker the policy paused and gives Dask its handler back.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from distributed.core import Status
from distributed.metrics import time

if TYPE_CHECKING:
    from distributed.scheduler import WorkerState

__all__ = ["WorkerPausing"]

logger = logging.getLogger("dask_oxigdal.fault.quarantine")

STATUS_OP = "worker-status-change"


class WorkerPausing:
    """The pause/resume half of ``Quarantine`` (a base class of it)."""

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
