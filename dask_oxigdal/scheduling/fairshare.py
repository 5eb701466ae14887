"""``FairShare``: weighted fair queuing between tenants, strict priority between queues.

How it works
------------
Start-time fair queuing over estimated task cost, enacted through Dask's own
task priorities. A task's priority becomes::

    (queue rank, finish tag, *Dask's priority)

Tuples compare element by element: the queue wins, then the tag, then Dask's
own order (user ``priority=``, ``fifo_timeout`` generation, ``dask.order``).

**Between tenants** the tags decide. In ``update_graph`` (before Dask
transitions the new tasks) each new task gets a virtual *start tag*
``max(tenant's last finish tag, virtual time)`` and a *finish tag*
``start + cost / weight``; ``cost`` is the per-prefix cost estimate
(:meth:`FairShare.estimate`). The virtual time of a queue is the smallest
start tag among its *runnable* tasks (``queued`` on the scheduler or
``processing`` on a worker), kept in a heap with lazy deletion (O(log n) per
transition) and never decreasing. When nothing is runnable it moves up to the
largest finish tag served, so a tenant whose work was all served keeps no
stale lead. A tenant that arrives late gets tags that start at the virtual
time: its tasks go to the front within about one task duration.

**Inside one tenant** Dask's order is kept exactly. Each (queue, tenant) keeps
its live tasks (tagged, not yet finished) in a sorted list by Dask's priority,
and every tag is *clamped* so that tags never decrease along that order:

- a new task whose Dask priority is worse than all of the tenant's live work
  (the common case: a later submission) gets its natural tags;
- a task that Dask ranks ahead of some of the tenant's live work (a later
  ``priority=`` submission, a sub-task from ``worker_client``/``get_client``,
  a persist that interleaves with an earlier one of the same generation) gets
  a finish tag no later than the next task in Dask's order; a task whose Dask
  priority equals one already live gets that task's tag, so Dask's ties (and
  the worker's tie-break between them) are untouched while the tenant is
  alone. Once another tenant competes, ties get consecutive tags in
  submission order instead (and a lone tenant's shared tags are spread that
  way when the second tenant arrives): otherwise a ``client.submit`` loop
  inside one ``fifo_timeout`` generation would count as a single task against
  the other tenants. The scheduler's queue breaks such ties in submission
  order anyway; a worker breaks them in arrival order, which differs only
  when a tied task that was submitted earlier reaches the worker later.

Hence, for two tasks of one tenant, ``(tag, dask priority)`` orders them as
Dask's priority alone does, on the scheduler's queue and in every worker's
ready heap, with ``worker-saturation`` finite or ``inf``. With a single
tenant, or no annotations at all, the order is vanilla Dask's.

Urgent work inserted this way runs ahead of the tenant's own backlog at once;
its cost is still charged to the tenant (its last finish tag moves on). When
another tenant competes, the tenant's backlog that is still on the scheduler
(``waiting``/``queued``/``no-worker``) is re-tagged right after the insertion
(on the next event-loop tick) behind the urgent work, so the other tenants get
the borrowed time back at once. Tasks already sent to a worker keep their
priority (Dask cannot change it there) and bound the re-tag from above, so
the tenant's own order still holds. Sub-tasks get Dask's sub-task generation
(the parent's Dask priority minus 0.01), read from the ``submitting_task`` of
the ``update-graph`` message (see :mod:`dask_oxigdal.scheduling._submitting`).

**Cost.** ``update_graph``: O(log n) per new task (a bisection in the
tenant's sorted list). Transitions: O(log n) when a task becomes runnable,
finishes or is forgotten. A re-tag (a tenant inserted work ahead of its
backlog while another tenant competes, or a prefix's cost estimate moved) is
O(that tenant's live tasks), at most once per event-loop tick and tenant.
(When a re-tag changes the units after a cost estimate moved, a task already
on a worker keeps its tag in the old units; see :meth:`FairShare.retag`.)

Dask then does the rest: root-ish tasks wait in ``scheduler.queued`` (a heap
ordered by priority) when ``worker-saturation`` is finite, and workers run
their ready tasks in priority order. Ordering by tags is work-conserving (a
tenant without work has no tags in the heap). With ``worker-saturation: inf``
Dask sends every ready task to a worker at once; each worker still runs its
own ready tasks by tag, so the share holds per worker, but a late tenant's
tasks land behind the tasks the worker already runs and work stealing may
move tasks without regard to tenants.
"""

from __future__ import annotations

import heapq
import itertools
from time import monotonic
from typing import TYPE_CHECKING, Any

from sortedcontainers import SortedList

from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling import _submitting
from dask_oxigdal.scheduling.bounded import evict_idle, prefix_is_live
from dask_oxigdal.scheduling.bounded import max_prefixes as _max_prefixes
from dask_oxigdal.scheduling.costs import MEAN_WINDOW, PRIOR_WEIGHT, PrefixCosts  # noqa: F401
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo
from dask_oxigdal.scheduling.retag import Retagging
from dask_oxigdal.scheduling.settings import setting
from dask_oxigdal.settings import duration

if TYPE_CHECKING:
    from distributed.scheduler import TaskState

    from dask_oxigdal.scheduling.extension import OxigdalScheduling

__all__ = ["FairShare"]

# states of tasks that are ready to run: waiting in scheduler.queued, or sent to a worker
_RUNNABLE = ("queued", "processing")
# states after which a task's order no longer matters
_DONE = ("memory", "erred", "forgotten")


class FairShare(PrefixCosts, Retagging, SchedulingPolicy):
    """Weighted fair share of worker-time between tenants, within strict-priority queues.

    Parameters
    ----------
    default_task_cost : str or float, optional
        Cost (seconds) of a task whose prefix Dask has no duration estimate
        for (``oxigdal.scheduling.default-task-cost``).
    retag_factor : float, optional
        ``oxigdal.scheduling.retag-factor``.
    max_prefixes : int, optional
        Per-prefix cost entries kept; past it the oldest idle prefixes are
        forgotten (``oxigdal.scheduling.max-prefixes``, see
        :mod:`dask_oxigdal.scheduling.bounded`).
    """

    name = "FairShare"

    def __init__(
        self,
        *,
        default_task_cost: str | float | None = None,
        retag_factor: float | None = None,
        max_prefixes: int | None = None,
    ) -> None:
        super().__init__()
        #: per-prefix entries kept at most (idle prefixes are evicted past it)
        self.max_prefixes = _max_prefixes(max_prefixes)
        self.evicted_prefixes = 0
        self._evicted_at = 0.0
        cost = duration("scheduling.default-task-cost", default_task_cost)
        if not cost > 0:
            raise ConfigError(
                f"oxigdal.scheduling.default-task-cost={default_task_cost!r} must be > 0"
            )
        self.default_task_cost = float(cost)
        factor = setting("scheduling.retag-factor", retag_factor)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
            raise ConfigError(f"oxigdal.scheduling.retag-factor={factor!r} must be a number > 1")
        self.retag_factor = float(factor)
        # the cost every pending task of a prefix is tagged with: one unit per prefix
        self.prefix_cost: dict[str, float] = {}
        self.guessed: set[str] = set()  # prefixes tagged with a guess, not a measurement
        self.guess = self.default_task_cost
        # per prefix: [finished tasks seen, mean compute seconds]; samples behind its cost
        self.stats: dict[str, list] = {}
        self.cost_samples: dict[str, int] = {}
        # median of the measured prefixes' means: the prior a young mean is shrunk to
        self.prior: float | None = None
        # per (queue, tenant): its live tasks, sorted by Dask's own priority, as
        # (dask priority, seq, key, info); tags never decrease along this order
        self.order: dict[tuple[str, str], SortedList] = {}
        self._oseq = itertools.count(1)
        # (queue, tenant)s that inserted work ahead of their backlog while another
        # tenant competed: their backlog is re-tagged on the next tick
        self.reorder: set[tuple[str, str]] = set()
        self.inserted_ahead = 0
        # (queue, tenant)s whose Dask ties share a tag (tagged while alone): spread
        # over consecutive tags when another tenant competes, or a separate
        # client.submit loop would count as one task against the other tenants
        self.shared_ties: set[tuple[str, str]] = set()
        self.subtasks = 0
        self.retags = 0
        self.retagged_tasks = 0
        # prefixes whose cost moved while a single tenant had pending work: the
        # re-tag waits until a second tenant submits (see ``periodic``)
        self.deferred: set[str] = set()
        self.deferred_retags = 0
        # per queue: virtual time; per (queue, tenant): last finish tag
        self.virtual_time: dict[str, float] = {}
        self.last_tag: dict[tuple[str, str], float] = {}
        # per queue: heap of (start tag, seq, info) of the runnable tasks
        self.runnable: dict[str, list[tuple[float, int, TaskInfo]]] = {}
        # per queue: largest finish tag of the tasks that became runnable (served)
        self.max_served: dict[str, float] = {}
        self._seq = itertools.count(1)
        self.tagged = 0

    def start(self, extension: OxigdalScheduling) -> None:
        """Attach to the extension; learn the submitting task of each graph."""
        super().start(extension)
        if extension.scheduler is not None:
            _submitting.install(extension.scheduler)

    def close(self) -> None:
        """Give the scheduler its own ``update-graph`` handler back."""
        ext = self.extension
        if ext is not None and ext.scheduler is not None:
            _submitting.uninstall(ext.scheduler)

    def _subtask_generation(self) -> float | None:
        """Dask's generation for sub-tasks of the graph being added, or ``None``.

        Dask gives a sub-task ``parent.priority[0] - 0.01``; the parent's first
        element is our queue rank, so use the parent's own Dask priority instead.
        """
        parent = _submitting.submitting_task()
        if parent is None:
            return None
        ext = self.extension
        assert ext is not None and ext.scheduler is not None
        pinfo = ext.info.get(parent)
        if pinfo is not None and pinfo.dprio:
            return pinfo.dprio[0] - 0.01
        return None

    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """Tag the new tasks and rewrite their priorities (before Dask transitions them)."""
        ext = self.extension
        assert ext is not None
        weights = ext.weights
        competing = self._competing() >= 2
        if competing and (self.deferred or self.shared_ties):
            # a second tenant arrived: bring the backlog into the new units, and
            # spread a lone tenant's Dask ties over consecutive tags, first (the
            # new tasks are not tagged yet, so retag skips them)
            changed, self.deferred = self.deferred, set()
            tied, self.shared_ties = self.shared_ties, set()
            self.retag(changed, tenants=tied)
        for queue in self.runnable:
            self._advance(queue)
        vt = self.virtual_time
        last = self.last_tag
        prefix_cost = self.prefix_cost
        order = self.order
        oseq = self._oseq
        generation = self._subtask_generation()
        if generation is not None:
            self.subtasks += len(new)
        ahead: set[tuple[str, str]] = set()
        for ts, info in new:
            queue = info.queue
            tq = (queue, info.tenant)
            start = max(last.get(tq, 0.0), vt.get(queue, 0.0))
            prefix = ts.prefix
            info.prefix = name = prefix.name
            cost = prefix_cost.get(name)
            if cost is None:
                cost = prefix_cost[name] = self.estimate(prefix)
                self.cost_samples[name] = self.stats.get(name, (0,))[0]
            finish = start + cost / weights.get(info.tenant, 1.0)
            last[tq] = finish
            dprio = tuple(ts.priority or (0,))
            if generation is not None and len(dprio) >= 2:
                dprio = (dprio[0], generation, *dprio[2:])
            seq = next(oseq)
            live = order.get(tq)
            if live is None:
                live = order[tq] = SortedList()
            elif live:
                # keep tags non-decreasing along Dask's order of the tenant's tasks
                i = live.bisect_left((dprio, seq))
                if i > 0:
                    before = live[i - 1]
                    if before[0] == dprio and not competing:
                        # a lone tenant's Dask tie shares the tag, so that the
                        # heaps break it as on vanilla Dask (insertion order)
                        finish = before[3].finish_tag
                        self.shared_ties.add(tq)
                    elif before[3].finish_tag > finish:
                        finish = before[3].finish_tag  # never before an earlier task
                if i < len(live):
                    after = live[i][3].finish_tag
                    if after < finish:
                        finish = after
                        ahead.add(tq)
            info.dprio = dprio
            info.oseq = seq
            live.add((dprio, seq, ts.key, info))
            info.start_tag = min(start, finish)
            info.finish_tag = finish
            ts.priority = (info.rank, finish, *dprio)
        self.tagged += len(new)
        if ahead:
            self.inserted_ahead += 1
            if competing:
                self.reorder |= ahead
                self._schedule_reorder()

    def _schedule_reorder(self) -> None:
        """Re-tag the tenants in ``reorder`` on the next event-loop tick."""
        self.defer("_reorder")

    def _reorder(self) -> None:
        tenants, self.reorder = self.reorder, set()
        if tenants:
            self.retag(tenants=tenants)

    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Track the runnable tasks' start tags and the live tasks' order, O(log n)."""
        if finish in _RUNNABLE:
            if not info.pseq:
                seq = next(self._seq)
                info.pseq = seq
                heap = self.runnable.get(info.queue)
                if heap is None:
                    heap = self.runnable[info.queue] = []
                heapq.heappush(heap, (info.start_tag, seq, info))
                if info.finish_tag > self.max_served.get(info.queue, 0.0):
                    self.max_served[info.queue] = info.finish_tag
        elif start in _RUNNABLE:
            info.pseq = 0
            heap = self.runnable.get(info.queue)
            # pop finished entries off the top (amortised: each entry is popped once)
            while heap and heap[0][2].pseq != heap[0][1]:
                heapq.heappop(heap)
            if finish == "memory" and start == "processing":
                self._observe(info.prefix, kwargs)
        if finish in _DONE and info.oseq:
            live = self.order.get((info.queue, info.tenant))
            if live is not None:
                live.discard((info.dprio, info.oseq, key, info))
            info.oseq = 0

    def _advance(self, queue: str) -> float:
        """Virtual time of ``queue``: smallest start tag of its runnable tasks, never decreasing."""
        heap = self.runnable.get(queue)
        while heap and heap[0][2].pseq != heap[0][1]:
            heapq.heappop(heap)
        vt = self.virtual_time.get(queue, 0.0)
        if heap:
            if heap[0][0] > vt:
                vt = self.virtual_time[queue] = heap[0][0]
        else:
            # nothing runnable (the queue drained): as in start-time fair queuing,
            # the virtual time jumps to the largest finish tag served, so a tenant
            # whose work was all served keeps no stale lead over the others
            served = self.max_served.get(queue, 0.0)
            if served > vt:
                vt = self.virtual_time[queue] = served
        return vt

    def periodic(self) -> None:
        """Re-tag pending tasks of prefixes whose cost estimate moved.

        Tags assume one cost per prefix, so that every tenant is measured in
        the same units. A prefix's cost is updated, and the pending tasks of
        the tenants using it re-tagged, when its estimate moves by more than
        ``retag_factor`` (a guess replaced by the first measurement), or by
        more than 10% once it rests on 4x as many finished tasks as when it was
        last set (so at most a logarithmic number of re-tags per prefix). Also
        runs right after the first task of a guessed prefix finishes.
        While a single tenant has pending work, re-tagging would keep its own
        order and cost O(pending tasks), so it is deferred to the next
        submission that brings a second tenant (``deferred`` in the snapshot).
        O(#prefixes) when nothing changed, O(live tasks) when a re-tag runs.
        """
        ext = self.extension
        assert ext is not None and ext.scheduler is not None
        prefixes = ext.scheduler.task_prefixes
        changed: set[str] = set()
        factor = self.retag_factor

        def check(name: str) -> None:
            prefix = prefixes.get(name)
            if prefix is None:
                return
            used = self.prefix_cost[name]
            now = self.estimate(prefix)
            samples = self.stats.get(name, (0,))[0]
            drift = max(now / used, used / now)
            refined = samples >= 4 * max(self.cost_samples.get(name, 0), 1) and drift > 1.1
            if drift > factor or refined:
                self.prefix_cost[name] = now
                self.cost_samples[name] = samples
                changed.add(name)

        # measured prefixes first, then the guess, then the prefixes still guessed
        def has_measurement(name: str) -> bool:
            prefix = prefixes.get(name)
            return name in self.stats or (
                prefix is not None and self.dask_estimate(prefix) is not None
            )

        names = list(self.prefix_cost)
        measured = [n for n in names if has_measurement(n)]
        means = sorted(stats[1] for stats in self.stats.values())
        self.prior = means[len(means) // 2] if means else None
        for name in measured:
            check(name)
        self._update_guess()
        for name in set(names).difference(measured):
            check(name)
        if changed:
            if self._competing() >= 2:
                self.retag(changed | self.deferred)
                self.deferred.clear()
            else:
                # One tenant alone: re-tagging keeps its own order and costs
                # O(pending tasks), so it waits for a competitor (update_graph).
                self.deferred |= changed
                self.deferred_retags += 1
        self._evict()

    def _evict(self) -> None:
        """Forget the oldest idle prefixes past ``max_prefixes`` (bounded state, a counter)."""
        ext = self.extension
        assert ext is not None and ext.scheduler is not None
        limit = self.max_prefixes
        if len(self.prefix_cost) <= limit and len(self.stats) <= limit:
            return
        # periodic() also runs after each first measurement of a prefix: scan the
        # tables (O(prefixes)) at most once per extension interval
        now = monotonic()
        if now - self._evicted_at < ext.interval:
            return
        self._evicted_at = now
        scheduler = ext.scheduler

        def live(name: str) -> bool:
            return prefix_is_live(scheduler, name)

        gone = evict_idle(
            self.prefix_cost,
            limit,
            live,
            self.cost_samples,
            self.guessed,
            self.deferred,
            self.stats,
        )
        gone += evict_idle(self.stats, limit, live, self.cost_samples)
        if gone:
            self.evicted_prefixes += len(gone)
            self._update_guess()

    def _competing(self) -> int:
        """Number of tenants with pending work (at most 2 are counted)."""
        ext = self.extension
        assert ext is not None
        n = 0
        for usage in ext.usage.values():
            if usage.pending > 0:
                n += 1
                if n >= 2:
                    break
        return n

    def restart(self) -> None:
        """Every task was forgotten: reset the virtual clocks."""
        self.virtual_time.clear()
        self.last_tag.clear()
        self.runnable.clear()
        self.max_served.clear()
        self.prefix_cost.clear()
        self.cost_samples.clear()
        self.order.clear()
        self.reorder.clear()
        self.shared_ties.clear()
        self.guessed.clear()
        self.deferred.clear()
        self.guess = self.default_task_cost

    def snapshot(self) -> dict[str, Any]:
        """Virtual time per queue and each tenant's lag behind it (in cost-seconds / weight)."""
        for queue in self.runnable:
            self._advance(queue)
        vt = self.virtual_time
        backlog: dict[str, dict[str, float]] = {}
        for (queue, tenant), tag in self.last_tag.items():
            ahead = tag - vt.get(queue, 0.0)
            if ahead > 0:
                backlog.setdefault(queue, {})[tenant] = ahead
        return {
            "virtual_time": dict(vt),
            "backlog": backlog,
            "tasks_tagged": self.tagged,
            "runnable_heap": {q: len(h) for q, h in self.runnable.items()},
            "default_task_cost": self.default_task_cost,
            "prefix_cost": dict(self.prefix_cost),
            "prefixes": len(self.prefix_cost),
            "max_prefixes": self.max_prefixes,
            "evicted_prefixes": self.evicted_prefixes,
            "guessed_prefixes": sorted(self.guessed),
            "guess": self.guess,
            "retags": self.retags,
            "retagged_tasks": self.retagged_tasks,
            "deferred_retag_prefixes": sorted(self.deferred),
            "deferred_retags": self.deferred_retags,
            "inserted_ahead": self.inserted_ahead,
            "subtasks": self.subtasks,
        }
