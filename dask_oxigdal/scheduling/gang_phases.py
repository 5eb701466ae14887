"""The ``Gang`` policy's two slower phases: slot reservation and whole-gang restarts.

Base class of :class:`~dask_oxigdal.scheduling.gang.Gang`:

- **reservation**: while the head gang cannot start, the ordinary tasks
  queued behind it are held for ``reserve-wait`` (alternating with as long
  not reserving), so freed slots go to the gang;
- **restart**: a member that lost its worker sends the whole gang back to
  waiting, its running members released, up to ``max-restarts``.
"""

from __future__ import annotations

from dask_oxigdal.exceptions import GangError
from dask_oxigdal.scheduling.gangs import RESERVE, _Gang

__all__ = ["GangPhases"]


class GangPhases:
    """Reservation and restart of gangs (a base class of ``Gang``)."""

    def _in_reserve_phase(self, gang: _Gang, now: float) -> bool:
        """Reservation cycles: ``reserve_wait`` reserving, then as long not reserving."""
        wait = self.reserve_wait
        if not wait:
            return False
        return (now - gang.blocked_since) % (2 * wait) < wait

    def _reserve(self, gang: _Gang) -> None:
        """Hold the ordinary tasks waiting in ``scheduler.queued`` while ``gang`` is head.

        Only tasks whose queue rank is not higher than the gang's are held
        (``info.rank >= gang.rank``; rank 0 is the highest-priority queue):
        a higher-priority queue keeps the freed threads. A deadline job's
        tasks (``info.edf``) are never held: EDF outranks the reservation, as
        a deadline cannot wait for ``reserve_wait``. Freed threads then
        stay idle until the head gang fits, unless such tasks take them.
        O(queued tasks) when the reservation starts (or the head gang
        changes), O(new arrivals) afterwards.
        """
        ext = self.extension
        scheduler = ext.scheduler
        info_map = ext.info
        if self.reserving is not gang:
            self.reservations += 1
            ext.emit("gang-reserving", gang=gang.name, k=gang.k, tenant=gang.tenant)
            if self.reserving is not None and self.reserved:
                # a new head gang of a lower-priority queue: give back the tasks
                # of the queues above it held for the previous head
                self._unreserve_keys(
                    [
                        k
                        for k in self.reserved
                        if (i := info_map.get(k)) is None or i.rank < gang.rank
                    ]
                )
            candidates = list(scheduler.queued)
        else:
            tasks = scheduler.tasks
            candidates = [tasks[k] for k in self._arrivals if k in tasks]
        self._arrivals.clear()
        self.reserving = gang
        recs = {}
        rank = gang.rank
        for ts in candidates:
            if ts.state != "queued":
                continue
            info = info_map.get(ts.key)
            if info is None or info.gang is not None or info.rank < rank or info.edf is not None:
                continue
            ext.hold(ts, info, RESERVE)
            self.reserved.add(ts.key)
            recs[ts.key] = "released"
        if recs:
            # queued -> released -> waiting -> no-worker (held)
            ext.transitions(recs, f"oxigdal-gang-reserve-{next(self._seq)}")

    def _unreserve(self) -> None:
        """End the reservation: send the held ordinary tasks back to Dask."""
        self.reserving = None
        self._arrivals.clear()
        self._unreserve_keys(list(self.reserved))

    def _unreserve_keys(self, keys: list) -> None:
        """Drop the reservation hold of ``keys`` and send the free ones back to Dask."""
        ext = self.extension
        scheduler = ext.scheduler
        recs = {}
        for key in keys:
            self.reserved.discard(key)
            ts = scheduler.tasks.get(key)
            info = ext.info.get(key)
            if ts is None or info is None:
                continue
            if ext.unhold(ts, info, RESERVE) and ts.state == "no-worker":
                recs[key] = "waiting"
        if recs:
            ext.transitions(recs, f"oxigdal-gang-unreserve-{next(self._seq)}")

    def restart_gang(self, gang: _Gang, reason: str = "member-lost") -> None:
        """Hold every unfinished member again and release it from its worker.

        Parameters
        ----------
        gang : _Gang
        reason : str
        """
        ext = self.extension
        scheduler = ext.scheduler
        if gang.state != "restarting":
            return
        gang.restarts += 1
        self.restarts += 1
        self._leases(gang, occupy=False)  # it starts again, maybe elsewhere
        if gang.restarts > self.max_restarts:
            self.failed += 1
            self._refuse(
                gang,
                GangError(
                    f"gang {gang.name!r} lost a member {gang.restarts} times; "
                    f"oxigdal.gang.max-restarts={self.max_restarts} exhausted"
                ),
            )
            return
        recs = {}
        gang.previous = {}
        for key in gang.keys:
            if key in gang.done:
                continue
            ts = scheduler.tasks.get(key)
            info = ext.info.get(key)
            if ts is None or info is None:
                continue
            ext.hold(ts, info, self.name)
            if ts.state in ("processing", "queued"):
                if ts.processing_on is not None:
                    gang.previous[key] = ts.processing_on.address
                recs[key] = "released"
        gang.state = "waiting"
        gang.blocked_since = None
        self.waiting[gang.seq] = gang
        if recs:
            # processing -> released -> waiting -> no-worker (held again)
            ext.transitions(recs, f"oxigdal-gang-restart-{next(self._seq)}")
        ext.emit(
            "gang-restarted",
            gang=gang.name,
            k=gang.k,
            restarts=gang.restarts,
            reason=reason,
            workers=gang.workers,
        )
        self._schedule()

    # -------------------------------------------------------------- periodic
