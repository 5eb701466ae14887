"""``Locality``: run tasks annotated ``locality=KEY`` where KEY is cached (delay scheduling).

The scheduler learns where data is from the worker caches themselves
(:func:`dask_oxigdal.cached` reports every new and evicted key to the
``oxigdal_cache_report`` handler that this policy installs): a worker whose
cache holds KEY is a *home* of KEY.

How it works
------------
- ``update_graph``: a new task annotated ``locality=KEY`` is held (restricted
  to an address no worker has, like ``Quota``); Dask parks it in
  ``no-worker`` once its dependencies are in memory.
- Placement (from a later event-loop tick, never inside a transition; run
  whenever a held task becomes ready, a tracked task leaves a worker, a wait
  expires, and on the periodic tick): held ready tasks are taken in Dask
  priority order (so fair-share tags and queues decide who goes first). A
  task goes to a home of KEY with room (a free thread, or up to
  ``oxigdal.locality.prefetch`` tasks queued beyond its threads) (a *hit*).
  When every home is full, the task *waits* (delay scheduling, Zaharia et al. 2010) and lets the
  next task take the free thread. After ``oxigdal.locality.wait`` it runs on
  any worker with a free thread (a *miss*); that worker then caches KEY and
  becomes a second home, so a hot key is replicated. A key with no home yet
  goes to the worker with the most room (then the fewest keys). Among
  free workers, the ones holding more bytes of the task's dependencies come
  first (Dask's own criterion), for new keys and for moves.
- A placed task is pinned to its worker with a *loose* restriction and sent to
  ``waiting``: Dask dispatches it at once, and may still run it elsewhere if
  the worker leaves.

Tenants
-------
Keys are per tenant: a task of a tenant other than the default one goes to
the homes of ``(tenant, KEY)``, which its worker cache reports for entries
that tenant's tasks stored (see :mod:`dask_oxigdal.isolation`); another
tenant's entry of the same KEY is not a home for it. What one worker's
reports can make the scheduler keep is bounded: at most
``oxigdal.locality.max-keys`` keys per (worker, tenant) (further keys are
dropped and counted in ``report_keys_dropped``) and only the known numeric
cache counters of ``stats``.

Composition
-----------
- *Dependencies*: only tasks with a ``locality`` annotation are affected;
  others are placed by Dask as usual (dependency locality, occupancy). A
  locality task goes to a home of its key even when its dependencies are
  elsewhere (the cached data is assumed to be the larger input); without a
  home, or when it moves, the dependencies decide.
- *Fair share / queues*: a waiting task never holds a thread: the free thread
  goes to the next task in priority order (of any tenant), so waiting costs
  the waiting tenant at most ``wait`` of latency and never takes a share
  from anyone.
- *Deadlines*: a task with a ``deadline`` annotation waits at most a quarter
  of its remaining time (and never once the deadline has passed).
- *Quota*: a task that another policy has already held (e.g. ``Quota`` with
  limits or guarantees, listed before ``Locality``) is left to that policy:
  tenant limits and guarantees win over locality.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling._dask import idle_threads
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo
from dask_oxigdal.scheduling.settings import setting
from dask_oxigdal.settings import duration

if TYPE_CHECKING:
    from distributed.scheduler import TaskState

__all__ = ["Locality"]

REPORT_HANDLER = "oxigdal_cache_report"
_DONE = ("memory", "erred", "forgotten")
#: The cache counters a report's ``stats`` may carry (anything else is dropped).
STATS_FIELDS = (
    "hits",
    "misses",
    "evictions",
    "compressions",
    "too_large",
    "entries",
    "bytes",
    "limit",
)


class Locality(SchedulingPolicy):
    """Prefer the worker whose cache holds a task's ``locality`` key; wait a bounded time.

    Parameters
    ----------
    wait : str or float, optional
        Delay-scheduling bound (``oxigdal.locality.wait``).
    prefetch : int, optional
        Tasks a home worker may hold beyond its threads (``oxigdal.locality.prefetch``),
        so that it starts the next cached task without a scheduler round trip.
    max_keys : int, optional
        Cached keys the scheduler records per (worker, tenant) from the
        workers' cache reports (``oxigdal.locality.max-keys``).
    """

    name = "Locality"
    #: Locality leaves the tasks that Quota holds to Quota; in the other order
    #: Quota would not see them
    after = ("Quota",)

    def __init__(
        self,
        *,
        wait: str | float | None = None,
        prefetch: int | None = None,
        max_keys: int | None = None,
    ) -> None:
        super().__init__()
        try:
            self.wait = duration("locality.wait", wait)
        except ConfigError:
            raw = setting("locality.wait", wait)
            raise ConfigError(
                f"oxigdal.locality.wait={raw!r} is not a duration >= 0 (e.g. '3s', '500ms', 2.5)"
            ) from None
        self.prefetch = setting("locality.prefetch", prefetch)
        if isinstance(self.prefetch, bool) or not isinstance(self.prefetch, int):
            raise ConfigError(
                f"oxigdal.locality.prefetch={self.prefetch!r} must be an integer >= 0"
            )
        if self.prefetch < 0:
            raise ConfigError(f"oxigdal.locality.prefetch={self.prefetch!r} must be >= 0")
        self.max_keys = setting("locality.max-keys", max_keys)
        if (
            isinstance(self.max_keys, bool)
            or not isinstance(self.max_keys, int)
            or self.max_keys < 1
        ):
            raise ConfigError(
                f"oxigdal.locality.max-keys={self.max_keys!r} must be an integer >= 1"
            )
        # keys recorded per (worker, tenant); the default tenant's keys are under None
        self.key_counts: dict[tuple[str, Any], int] = {}
        self.report_keys_dropped = 0
        self.homes: dict[Any, set[str]] = {}
        self.worker_keys: dict[str, set[Any]] = {}
        self.cache_stats: dict[str, dict[str, Any]] = {}
        self.held: dict[Any, Any] = {}  # task key -> locality key
        self.ready: dict[Any, float] = {}  # held task in no-worker -> since
        self.waited: set[Any] = set()
        # where a key with no reported home was last sent (until its cache reports)
        self.placed: dict[Any, str] = {}
        self.hits = 0
        self.misses = 0
        self.waits = 0
        self.moves = 0
        self.reports = 0
        self._timer = False
        self._seq = 0

    def start(self, extension: Any) -> None:
        """Install the ``oxigdal_cache_report`` handler."""
        super().start(extension)
        extension.scheduler.handlers[REPORT_HANDLER] = self.cache_report
        # no transition hook (no per-task cost) until the first locality task arrives
        self.wants_transitions = False

    # ------------------------------------------------------------ cache reports
    def cache_report(
        self,
        worker: str,
        added: list | tuple = (),
        removed: list | tuple = (),
        stats: dict | None = None,
    ) -> str:
        """Scheduler handler: a worker's cache gained / lost keys (see dask_oxigdal.cache).

        A key is a ``str`` (default tenant) or ``[tenant, str]``; anything
        else is ignored. At most ``max_keys`` keys are kept per (worker,
        tenant): further ones are dropped (``report_keys_dropped``). Only the
        numeric :data:`STATS_FIELDS` of ``stats`` are kept.

        Returns ``"ok"`` (an unknown handler would answer ``None``).
        """
        scheduler = self.extension.scheduler
        if worker not in scheduler.workers:
            return "ok"
        keys = self.worker_keys.setdefault(worker, set())
        counts = self.key_counts
        for key in removed if isinstance(removed, (list, tuple)) else ():
            key = _cache_key(key)
            if key is None or key not in keys:
                continue
            keys.discard(key)
            slot = (worker, key[0] if isinstance(key, tuple) else None)
            counts[slot] -= 1
            if not counts[slot]:
                del counts[slot]
            homes = self.homes.get(key)
            if homes is not None:
                homes.discard(worker)
                if not homes:
                    del self.homes[key]
        for key in added if isinstance(added, (list, tuple)) else ():
            key = _cache_key(key)
            if key is None or key in keys:
                continue
            slot = (worker, key[0] if isinstance(key, tuple) else None)
            if counts.get(slot, 0) >= self.max_keys:
                self.report_keys_dropped += 1
                continue
            counts[slot] = counts.get(slot, 0) + 1
            self.placed.pop(key, None)
            keys.add(key)
            self.homes.setdefault(key, set()).add(worker)
        if isinstance(stats, dict):
            self.cache_stats[worker] = {
                k: stats[k]
                for k in STATS_FIELDS
                if isinstance(stats.get(k), (int, float)) and not isinstance(stats[k], bool)
            }
        self.reports += 1
        return "ok"

    # ------------------------------------------------------------------ hooks
    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """Hold the new tasks that carry a ``locality`` annotation."""
        ext = self.extension
        for ts, info in new:
            lkey = info.annotations.locality
            if lkey is None:
                continue
            if info.tenant != ext.default_tenant:
                lkey = (info.tenant, lkey)  # the tenant's own cache entries
            if ts.worker_restrictions or ts.host_restrictions or ts.resource_restrictions:
                continue  # held or constrained by someone else: they decide
            ext.hold(ts, info, self.name)
            self.held[ts.key] = lkey
            if not self.wants_transitions:
                self.wants_transitions = True
                self.extension._refresh_transition_policies()

    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Track held tasks that became ready; a thread frees when a task leaves a worker."""
        if finish == "no-worker":
            if key in self.held:
                self.ready[key] = time.monotonic()
                self._schedule()
        elif finish in _DONE:
            if self.held:
                self.held.pop(key, None)
                self.ready.pop(key, None)
                self.waited.discard(key)
        if start == "processing" and self.ready:
            self._schedule()

    def _schedule(self) -> None:
        self.defer("place")

    def _wake(self) -> None:
        self._timer = False
        self.place()

    def place(self) -> int:
        """Place held ready tasks on free threads (hits first); returns how many were placed."""
        scheduler = self.extension.scheduler
        if not self.ready:
            return 0
        tasks = scheduler.tasks
        info_map = self.extension.info
        free: dict[str, int] = {}  # idle threads
        room: dict[str, int] = {}  # idle threads + prefetch (for tasks going home)
        for ws in scheduler.running:
            n = idle_threads(ws)
            if n > 0:
                free[ws.address] = n
            if n + self.prefetch > 0:
                room[ws.address] = n + self.prefetch
        now = time.monotonic()
        wall = time.time()
        recs: dict[Any, str] = {}
        order = []
        for key in self.ready:
            ts = tasks.get(key)
            if ts is None or ts.state != "no-worker":
                continue
            order.append((ts.priority or (), key))
        order.sort(key=lambda pair: pair[0])
        next_expiry = None
        for _, key in order:
            if not room:
                break
            lkey = self.held[key]
            homes = self.homes.get(lkey)
            if not homes and lkey in self.placed:
                homes = (self.placed[lkey],)
            target = None
            if homes:
                for addr in homes:
                    if room.get(addr, 0) > 0 and (target is None or room[addr] > room[target]):
                        target = addr
                if target is not None:
                    self.hits += 1
                else:
                    wait = self.wait
                    info = info_map.get(key)
                    deadline = info.annotations.deadline if info is not None else None
                    if deadline is not None:
                        wait = min(wait, max(0.0, (deadline - wall) / 4.0))
                    waited = now - self.ready[key]
                    if waited < wait:
                        if key not in self.waited:
                            self.waited.add(key)
                            self.waits += 1
                        expiry = wait - waited
                        next_expiry = expiry if next_expiry is None else min(next_expiry, expiry)
                        continue
                    if not free:
                        continue  # expired, but no idle thread anywhere yet
                    deps = _dependency_bytes(tasks[key])
                    cost = _transfer_cost(scheduler, tasks[key], free)
                    target = max(free, key=lambda a: (-cost.get(a, 0), deps.get(a, 0), free[a]))
                    self.misses += 1
                    self.moves += 1
            else:
                # a new key: any worker with room (prefetch too, as Dask's queue does)
                deps = _dependency_bytes(tasks[key])
                cost = _transfer_cost(scheduler, tasks[key], room)
                target = min(
                    room,
                    key=lambda a: (
                        cost.get(a, 0),
                        -deps.get(a, 0),
                        -room[a],
                        len(self.worker_keys.get(a, ())),
                        a,
                    ),
                )
                self.misses += 1
            room[target] -= 1
            if room[target] <= 0:
                del room[target]
            if target in free:
                free[target] -= 1
                if free[target] <= 0:
                    del free[target]
            ts = tasks[key]
            info = self.extension.info.get(key)
            if info is not None:
                self.extension.unhold(ts, info, self.name)
            ts.worker_restrictions = {target}
            ts.loose_restrictions = True
            recs[key] = "waiting"
            del self.ready[key]
            self.held.pop(key, None)
            self.waited.discard(key)
            # a placed key's worker is its provisional home until its cache reports
            if lkey not in self.homes:
                if len(self.placed) > 100_000:
                    self.placed.clear()
                self.placed[lkey] = target
        if next_expiry is not None and not self._timer:
            self._timer = True
            ext = self.extension
            scheduler.loop.call_later(next_expiry + 0.01, ext.run_policy, self, "_wake")
        if recs:
            self._seq += 1
            # transitions() pops recommendations last-in first-out: best priority last
            ordered = dict(reversed(list(recs.items())))
            self.extension.transitions(ordered, f"oxigdal-locality-{self._seq}")
        return len(recs)

    def periodic(self) -> None:
        """Place waiting tasks whose wait expired, or that a new worker can take."""
        if self.ready:
            self._schedule()

    def add_worker(self, address: str) -> None:
        """A new worker has free threads."""
        if self.ready:
            self._schedule()

    def remove_worker(self, address: str, stimulus_id: str) -> None:
        """Forget what the worker's cache held."""
        for slot in [s for s in self.key_counts if s[0] == address]:
            del self.key_counts[slot]
        for key in self.worker_keys.pop(address, ()):
            homes = self.homes.get(key)
            if homes is not None:
                homes.discard(address)
                if not homes:
                    del self.homes[key]
        self.cache_stats.pop(address, None)
        for key in [k for k, a in self.placed.items() if a == address]:
            del self.placed[key]

    def restart(self) -> None:
        """Every task was forgotten (worker caches survive in the worker processes)."""
        self.held.clear()
        self.ready.clear()
        self.waited.clear()
        self.placed.clear()

    def snapshot(self) -> dict[str, Any]:
        """``hits``, ``misses``, ``waits``, ``moves``, ``held``, ``keys`` and per-worker ``cache``."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "waits": self.waits,
            "moves": self.moves,
            "held": len(self.held),
            "ready": len(self.ready),
            "keys": len(self.homes),
            "max_keys": self.max_keys,
            "report_keys_dropped": self.report_keys_dropped,
            "wait": self.wait,
            "prefetch": self.prefetch,
            "cache": {w: dict(s) for w, s in sorted(self.cache_stats.items())},
        }


def _dependency_bytes(ts: Any) -> dict[str, int]:
    """Bytes of ``ts``'s dependencies held by each worker (Dask's own placement criterion)."""
    out: dict[str, int] = {}
    for dts in ts.dependencies:
        for ws in dts.who_has or ():
            out[ws.address] = out.get(ws.address, 0) + dts.nbytes
    return out


def _transfer_cost(scheduler: Any, ts: Any, addresses: Any) -> dict[str, float]:
    """Predicted seconds to fetch ``ts``'s dependencies per address ({} without topology)."""
    from dask_oxigdal.placement.topology_cost import dependency_costs

    return dependency_costs(scheduler, ts, addresses) or {}


def _cache_key(key: Any) -> Any:
    """A reported key as the scheduler keeps it: ``str``, ``(tenant, str)``, or ``None``.

    msgpack turns tuples into lists; a ``[tenant, key]`` pair becomes a tuple.
    """
    if isinstance(key, str):
        return key
    if (
        isinstance(key, (list, tuple))
        and len(key) == 2
        and isinstance(key[0], str)
        and isinstance(key[1], str)
    ):
        return (key[0], key[1])
    return None
