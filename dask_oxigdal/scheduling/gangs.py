"""The ``Gang`` policy's records: one :class:`_Gang` per live gang, and placement helpers."""

from __future__ import annotations

import time
from typing import Any

from dask_oxigdal.scheduling.policy import TaskInfo

__all__ = ["PLACEMENTS", "RESERVE", "place"]

#: Valid ``oxigdal.gang.placement`` values.
PLACEMENTS = ("spread", "pack")

_LEFT = ("released", "waiting", "no-worker", "queued")

#: Hold reason of the ordinary tasks held while a gang reserves slots.
RESERVE = "Gang-reserve"


class _Gang:
    """One gang: its members and where it stands."""

    __slots__ = (
        "blocked_since",
        "done",
        "expires",
        "k",
        "keys",
        "name",
        "previous",
        "queue",
        "rank",
        "restarts",
        "seq",
        "started_at",
        "state",
        "submitted",
        "tenant",
        "workers",
    )

    def __init__(self, name: str, keys: list, info: TaskInfo, seq: int) -> None:
        self.name = name
        self.keys = keys
        self.k = len(keys)
        self.tenant = info.tenant
        self.queue = info.queue
        self.rank = info.rank
        self.seq = seq
        # waiting -> running -> done; running -> restarting -> waiting; or failed
        self.state = "waiting"
        self.submitted = time.time()
        self.blocked_since: float | None = None
        self.expires: float | None = None
        self.restarts = 0
        self.done: set = set()
        self.started_at = 0.0
        self.workers: list[str] = []
        # member -> worker it was released from by the last restart (still running there)
        self.previous: dict = {}

    @property
    def ident(self) -> tuple[str, str]:
        """``(tenant, name)``: gang names are per tenant."""
        return (self.tenant, self.name)


def _away_from_previous(members: list, workers: list, previous: dict) -> list:
    """Reassign ``workers`` so no member goes back to the worker it was released from.

    Python cannot stop the released member's thread: a worker that receives the
    same key while that run is still going resumes the old run instead of
    starting a new one (``cancelled`` -> ``executing`` in Dask's worker state
    machine), so the member would not restart with its gang. Swaps slots among
    the members (the set of slots does not change); a member keeps its old
    worker only when no swap avoids it.
    """
    workers = list(workers)
    keys = [ts.key for ts in members]

    def back(i: int, ws: Any) -> bool:
        return previous.get(keys[i]) == ws.address

    for i in range(len(workers)):
        if not back(i, workers[i]):
            continue
        for j in range(len(workers)):
            if not back(i, workers[j]) and not back(j, workers[i]):
                workers[i], workers[j] = workers[j], workers[i]
                break
    return workers


def place(free: dict[Any, int], k: int, placement: str) -> list[Any] | None:
    """Choose ``k`` slots among ``free`` (``spread`` or ``pack``); ``None`` if too few.

    Parameters
    ----------
    free : dict
        ``{worker: idle threads}``; updated in place when the placement succeeds.
    k : int
        Members to place.
    placement : str
        ``"spread"`` (one member per worker in turn) or ``"pack"`` (fill the worker
        with the most idle threads first).

    Returns
    -------
    list or None
        One worker per member.
    """
    if sum(free.values()) < k:
        return None
    order = sorted(free, key=lambda ws: (-free[ws], ws.address))
    chosen: list[Any] = []
    left = dict(free)
    if placement == "pack":
        for ws in order:
            take = min(left[ws], k - len(chosen))
            chosen.extend([ws] * take)
            left[ws] -= take
            if len(chosen) == k:
                break
    else:
        while len(chosen) < k:
            for ws in order:
                if left[ws] > 0 and len(chosen) < k:
                    chosen.append(ws)
                    left[ws] -= 1
    free.update(left)
    return chosen
