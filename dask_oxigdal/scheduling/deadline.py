"""``Deadline``: earliest-deadline-first order, admission control and miss alerts.

Ordering
--------
A task with a ``deadline=`` annotation gets the priority
``(p[0], deadline - EDF_BASE, *p[2:])`` where ``p`` is the priority it had
(with ``FairShare``: ``(queue rank, fair-share finish tag, *Dask's
priority)``). ``EDF_BASE`` is 10^10 seconds, so the second element of a
deadline task is negative while every fair-share tag (and Dask's
``generation`` without ``FairShare``) is >= 0. Hence:

1. the queue comes first (a deadline never lifts work into a higher queue);
2. within a queue, tasks with a deadline run before tasks without one,
   earliest deadline first, whatever their tenant;
3. tasks without a deadline keep their fair-share order among themselves;
4. equal deadlines fall back to Dask's own order (user ``priority=``,
   submission, ``dask.order``).

Deadline tasks are still tagged by ``FairShare`` (their finish tags move the
tenant's virtual clock), so a tenant that uses deadlines pays for that work
in the order of its later work without a deadline. ``Deadline`` must come
after ``FairShare`` in ``oxigdal.scheduling.policies``.

Admission control
-----------------
When a submission arrives, its deadline tasks are grouped into *jobs* (same
deadline, tenant and queue). A job's completion is estimated as::

    now + (work on the workers + pending deadline work due no later) / threads
        + max(job work / threads, longest task of the job)

(the deadline tasks on the workers count with their jobs, not as work on the
workers: those of a job due later run after this one)

where a task's work is the cost ``FairShare`` tagged its prefix with (the
measured mean, else Dask's estimate, else the median of the measured
prefixes) or, without ``FairShare``, Dask's per-prefix duration estimate
(``TaskPrefix.duration_average``, else twice ``max_exec_time``, else
``distributed.scheduler.unknown-task-duration``), "work on the workers" is
``Scheduler.total_occupancy`` and threads is ``Scheduler.total_nthreads``.
An estimate later than the deadline is *infeasible*; ``oxigdal.deadline.infeasible``
says what happens: ``reject`` (the job's futures err with
:class:`DeadlineInfeasible`, the message gives the estimate), ``warn``
(accepted, an ``alert`` event is emitted) or ``accept``. With no workers
(``total_nthreads == 0``) the completion cannot be estimated: the job is
treated as infeasible, with a message that says the cluster has no workers
(and ``estimate: None`` in the event); under ``warn``/``accept`` its tasks
wait for a worker as usual.

Dispatch ahead of queued work
-----------------------------
EDF orders ``scheduler.queued``, but a root-ish deadline job (a group larger
than twice the cluster's threads) waits there until a worker has a free slot
(``worker-saturation``), while small groups of other tenants are sent
straight to the workers, saturated or not, and wait in their ready queues:
those run first. So, whenever the front of ``scheduler.queued`` is a
deadline task, ``Deadline`` moves it to a saturated worker (no free slot)
that processes fewer deadline tasks than Dask's queue would send it if it
ran nothing else (``ceil(worker-saturation x threads)``): the task is restricted
loosely to that worker for the move (a restricted task is not root-ish, so
Dask places it there, saturated or not), the restriction is lifted once it
is processing, and the worker's ready heap runs it first, by priority, when
a thread frees. Each worker gets at most that many deadline tasks (about one
wave: the rest stay in Dask's queue and keep its memory benefit), the least
loaded first; workers with a free slot (new workers
included) are left to Dask's queue. Only the front is read
(``HeapSet.peek``) and each move stops at the first task without a
deadline, so ordinary work (and work of a higher queue) is never moved. The
move runs on the event loop after a deadline task is queued or leaves
``processing`` (deferred, merged, bounded by what it moves plus one pass
over the workers), and on the extension's periodic tick; ``dispatched`` in
the snapshot counts the moved tasks.

Misses
------
A timer on the event loop fires at each job's deadline. A job not finished
by then is counted as missed (per tenant and queue) and a
``deadline-missed`` event is published on the ``oxigdal`` topic; with
``oxigdal.deadline.on-miss: cancel`` its unfinished tasks err with
:class:`DeadlineMissed`. A job whose tasks all finish in time counts as
*met* if every one of them reached ``memory``, as *failed* if any erred or
was cancelled (forgotten before it finished). Each accepted job is counted
once: met, failed or missed.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from typing import TYPE_CHECKING, Any

from dask_oxigdal.exceptions import ConfigError, DeadlineInfeasible, DeadlineMissed
from dask_oxigdal.scheduling._dask import prefix_estimate
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo
from dask_oxigdal.scheduling.settings import setting

if TYPE_CHECKING:
    from distributed.scheduler import TaskPrefix, TaskState

    from dask_oxigdal.scheduling.extension import OxigdalScheduling

__all__ = ["EDF_BASE", "INFEASIBLE", "ON_MISS", "Deadline"]

#: Subtracted from a deadline (UNIX seconds) to make the EDF priority element negative.
EDF_BASE = 1e10
#: Valid ``oxigdal.deadline.infeasible`` values.
INFEASIBLE = ("reject", "warn", "accept")
#: Valid ``oxigdal.deadline.on-miss`` values.
ON_MISS = ("continue", "cancel")


class _Job:
    """The deadline tasks of one submission that share a deadline, tenant and queue."""

    __slots__ = (
        "deadline",
        "done",
        "estimate",
        "failed",
        "keys",
        "missed",
        "queue",
        "running",
        "seq",
        "tenant",
        "timer",
        "work",
    )

    def __init__(self, deadline: float, tenant: str, queue: str, seq: int) -> None:
        self.deadline = deadline
        self.tenant = tenant
        self.queue = queue
        self.seq = seq
        self.keys: list = []
        self.done = 0
        self.running = 0  # tasks in processing (counted by the job, not by occupancy)
        self.failed = 0  # tasks that erred or were cancelled (forgotten unfinished)
        self.work = 0.0
        self.estimate = 0.0
        self.missed = False
        self.timer: Any = None

    def remaining(self) -> float:
        n = len(self.keys)
        return self.work * (n - self.done) / n if n else 0.0


class Deadline(SchedulingPolicy):
    """Earliest-deadline-first ordering, admission control and miss alerts.

    Parameters
    ----------
    infeasible : {"reject", "warn", "accept"}, optional
        What to do with a deadline the estimate says cannot be met
        (``oxigdal.deadline.infeasible``).
    on_miss : {"continue", "cancel"}, optional
        What happens to the unfinished tasks of a job whose deadline passed
        (``oxigdal.deadline.on-miss``).
    """

    name = "Deadline"
    #: it edits the priority FairShare writes
    after = ("FairShare",)

    def __init__(self, *, infeasible: str | None = None, on_miss: str | None = None) -> None:
        super().__init__()
        self.infeasible = setting("deadline.infeasible", infeasible)
        if self.infeasible not in INFEASIBLE:
            raise ConfigError(
                f"oxigdal.deadline.infeasible={self.infeasible!r} is not valid; choose one of "
                f"{', '.join(INFEASIBLE)}"
            )
        self.on_miss = setting("deadline.on-miss", on_miss)
        if self.on_miss not in ON_MISS:
            raise ConfigError(
                f"oxigdal.deadline.on-miss={self.on_miss!r} is not valid; choose one of "
                f"{', '.join(ON_MISS)}"
            )
        self.jobs: dict[int, _Job] = {}
        self.job_of: dict[Any, _Job] = {}
        self._seq = itertools.count(1)
        self.met: dict[str, dict[str, int]] = {}
        self.missed: dict[str, dict[str, int]] = {}
        #: jobs finished by their deadline with a task that erred or was cancelled
        self.failed: dict[str, dict[str, int]] = {}
        self.rejected = 0
        self.warned = 0
        self.accepted = 0
        self.cancelled = 0
        #: deadline tasks moved from ``scheduler.queued`` to a saturated worker
        self.dispatched = 0
        self._fairshare: Any = None
        #: key -> worker address of the deadline tasks in ``processing``
        self._on: dict[Any, str] = {}
        #: worker address -> how many deadline tasks it is processing
        self._on_worker: dict[str, int] = {}
        self._dispatch_seq = itertools.count(1)

    def start(self, extension: OxigdalScheduling) -> None:
        """Attach; ``FairShare`` (which rewrites whole priorities) must run first."""
        super().start(extension)
        self._fairshare = extension.policy("FairShare")

    # ------------------------------------------------------------ estimates
    def task_cost(self, prefix: TaskPrefix) -> float:
        """Estimated duration (seconds) of a task of ``prefix``.

        The cost ``FairShare`` tagged the prefix's tasks with when it runs
        (its measured mean, else Dask's estimate, else the median of the
        measured prefixes), else Dask's own estimate: ``duration_average``,
        else twice ``max_exec_time``, else ``unknown-task-duration``.

        Parameters
        ----------
        prefix : distributed.scheduler.TaskPrefix

        Returns
        -------
        float
        """
        if self._fairshare is not None:
            cost = self._fairshare.prefix_cost.get(prefix.name)
            if cost is not None:
                return float(cost)
        cost = prefix_estimate(prefix)
        if cost is not None:
            return cost
        return float(self.extension.scheduler.UNKNOWN_TASK_DURATION)

    def estimate(self, job: _Job, longest: float) -> float:
        """Estimated completion time (UNIX seconds) of ``job`` if accepted now.

        Parameters
        ----------
        job : _Job
        longest : float
            The job's longest task estimate (seconds).

        Returns
        -------
        float
            ``inf`` when the cluster has no worker threads (it cannot be estimated).
        """
        scheduler = self.extension.scheduler
        threads = scheduler.total_nthreads
        if threads <= 0:
            return math.inf
        ahead = scheduler.total_occupancy
        for other in self.jobs.values():
            # its tasks on the workers are in the occupancy: count them only if due no later
            n = len(other.keys)
            if other.running and n:
                ahead -= other.work * other.running / n
            if other.deadline <= job.deadline and other.queue == job.queue:
                ahead += other.remaining()
        ahead = max(ahead, 0.0)
        return time.time() + ahead / threads + max(job.work / threads, longest)

    # ----------------------------------------------------------- submission
    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """EDF priorities, jobs and admission control for the new deadline tasks."""
        jobs: dict[tuple[float, str, str], tuple[_Job, list]] = {}
        for ts, info in new:
            deadline = info.annotations.deadline
            if deadline is None:
                continue
            jk = (deadline, info.tenant, info.queue)
            entry = jobs.get(jk)
            if entry is None:
                entry = jobs[jk] = (_Job(deadline, info.tenant, info.queue, 0), [])
            entry[1].append((ts, info))
        if not jobs:
            return
        ext = self.extension
        for job, members in sorted(jobs.values(), key=lambda e: e[0].deadline):
            longest = 0.0
            for ts, _ in members:
                cost = self.task_cost(ts.prefix)
                job.work += cost
                longest = max(longest, cost)
            job.keys = [ts.key for ts, _ in members]
            job.estimate = self.estimate(job, longest)
            if job.estimate > job.deadline and self.infeasible != "accept":
                known = math.isfinite(job.estimate)
                fields = dict(
                    tenant=job.tenant,
                    queue=job.queue,
                    deadline=job.deadline,
                    estimate=job.estimate if known else None,
                    tasks=len(members),
                    message=self._infeasible_message(job, len(members)),
                )
                message = fields["message"]
                if self.infeasible == "reject":
                    self.rejected += 1
                    exc = DeadlineInfeasible(message)
                    for ts, info in members:
                        ext.reject(ts, info, exc)
                    ext.emit("deadline-rejected", **fields)
                    continue
                self.warned += 1
                ext.emit("alert", alert="deadline-infeasible", severity="warning", **fields)
            # oxigdal.auth: within the tenant's entitlement plus idle capacity (auth/admission.py)
            gate = getattr(ext.auth, "admission", None)
            if gate is not None and not gate.admit(self, job, members):
                continue
            self._accept(job, members)

    def _infeasible_message(self, job: _Job, ntasks: int) -> str:
        scheduler = self.extension.scheduler
        what = f"{ntasks} task(s) of tenant {job.tenant!r} in queue {job.queue!r}"
        if not math.isfinite(job.estimate):
            outcome = (
                "rejected; resubmit once workers have joined"
                if self.infeasible == "reject"
                else "accepted; the tasks wait for a worker"
            )
            return (
                f"deadline {_iso(job.deadline)} cannot be estimated: no workers (the cluster "
                f"has {scheduler.total_nthreads} thread(s)) to run {what}; {outcome}"
            )
        late = job.estimate - job.deadline
        return (
            f"deadline {_iso(job.deadline)} cannot be met: {what} are estimated to finish at "
            f"{_iso(job.estimate)} ({late:.3g}s late; estimate from Dask's per-prefix "
            f"durations and {scheduler.total_occupancy:.3g}s of work on "
            f"{scheduler.total_nthreads} thread(s))"
        )

    def _accept(self, job: _Job, members: list) -> None:
        ext = self.extension
        job.seq = next(self._seq)
        key = job.deadline - EDF_BASE
        for ts, info in members:
            info.edf = job.deadline
            p = ts.priority or (0, 0)
            ts.priority = (p[0], key, *p[2:])
            self.job_of[ts.key] = job
        self.jobs[job.seq] = job
        self.accepted += 1
        loop = ext.scheduler.loop
        delay = max(job.deadline - time.time(), 0.0)
        job.timer = loop.call_later(delay, ext.run_policy, self, "check", job.seq)

    # ----------------------------------------------------------- transitions
    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Count finished tasks of deadline jobs (O(1); nothing for other tasks).

        A task that reaches ``memory`` succeeded; one that errs, or is
        forgotten before it finished (cancelled), failed its job. The deadline
        tasks in ``processing`` are counted per worker, and a deadline task
        that is queued or leaves ``processing`` defers a :meth:`dispatch`.
        """
        if info.edf is None:
            return
        if finish == "processing":
            ts = self.extension.scheduler.tasks.get(key)
            ws = ts.processing_on if ts is not None else None
            if ws is not None:
                self._on[key] = ws.address
                self._on_worker[ws.address] = self._on_worker.get(ws.address, 0) + 1
                job = self.job_of.get(key)
                if job is not None:
                    job.running += 1
        elif start == "processing":
            address = self._on.pop(key, None)
            if address is not None:
                job = self.job_of.get(key)
                if job is not None and job.running > 0:
                    job.running -= 1
                left = self._on_worker.get(address, 0) - 1
                if left > 0:
                    self._on_worker[address] = left
                else:
                    self._on_worker.pop(address, None)
            if self.extension.scheduler.queued:
                self.defer("dispatch")
        if finish == "queued":
            self.defer("dispatch")
        if finish not in ("memory", "erred", "forgotten"):
            return
        job = self.job_of.pop(key, None)
        if job is None:
            return
        job.done += 1
        if finish != "memory":
            job.failed += 1
        if job.done < len(job.keys):
            return
        self.jobs.pop(job.seq, None)
        if job.timer is not None:
            self.extension.scheduler.loop.remove_timeout(job.timer)
            job.timer = None
        if job.missed:
            return
        if time.time() > job.deadline:
            self._miss(job)  # finished between the deadline and the timer's tick
        elif job.failed:
            _bump(self.failed, job.tenant, job.queue)
            self.extension.emit(
                "deadline-failed",
                tenant=job.tenant,
                queue=job.queue,
                deadline=job.deadline,
                tasks=len(job.keys),
                failed=job.failed,
            )
        else:
            _bump(self.met, job.tenant, job.queue)

    # -------------------------------------------------------------- dispatch
    def periodic(self) -> None:
        """Move queued deadline tasks that no event moved (see :meth:`dispatch`)."""
        self.dispatch()

    def dispatch(self) -> int:
        """Move deadline tasks at the front of ``scheduler.queued`` to saturated workers.

        Each running worker without a free slot (``worker-saturation``) gets
        deadline tasks up to the slots Dask's queue would give it if it ran
        nothing else (``ceil(worker-saturation x threads)``, at most its
        threads when the saturation is below 1), counting those it is already
        processing, the worker with the fewest per thread first. A task is
        moved ``queued -> released -> waiting -> processing`` with a loose
        restriction to its worker, lifted once it is processing; its worker's
        ready heap then runs it before the ordinary tasks waiting there. The
        move stops at the first task without a deadline. O(1) when the front
        of the queue has no deadline; else one pass over the workers and
        O(log workers) per moved task.

        Returns
        -------
        int
            How many tasks were moved.
        """
        ext = self.extension
        scheduler = ext.scheduler if ext is not None else None
        if scheduler is None or not self.job_of:
            return 0
        queued = scheduler.queued
        if not queued or not self._movable(queued.peek()):
            return 0
        saturation = scheduler.WORKER_SATURATION
        idle = scheduler.idle_task_count  # workers with a free slot: Dask's queue fills them
        room = []
        for ws in scheduler.running:
            if ws in idle or ws.nthreads <= 0:
                continue
            held = self._on_worker.get(ws.address, 0)
            if held < _wave(ws.nthreads, saturation):
                room.append((held / ws.nthreads, len(ws.processing) / ws.nthreads, ws.address, ws))
        if not room:
            return 0
        heapq.heapify(room)
        stimulus_id = f"oxigdal-deadline-dispatch-{next(self._dispatch_seq)}"
        moved = 0
        while room and queued:
            ts = queued.peek()
            if not self._movable(ts):
                break
            _, _, address, ws = heapq.heappop(room)
            if scheduler.workers.get(address) is not ws or ws not in scheduler.running:
                continue
            ts.worker_restrictions = {address}
            ts.loose_restrictions = True
            ext.transitions({ts.key: "released"}, stimulus_id)
            if ts.worker_restrictions == {address}:  # not held meanwhile: lift it
                ts.worker_restrictions = None
                ts.loose_restrictions = False
                if ts.state == "no-worker":  # not placed (should not happen): back to Dask
                    ext.transitions({ts.key: "waiting"}, stimulus_id)
                    break
            if ts.state == "queued":
                break  # not moved (should not happen): leave the rest to Dask
            moved += 1
            held = self._on_worker.get(address, 0)
            if held < _wave(ws.nthreads, saturation):
                heapq.heappush(
                    room, (held / ws.nthreads, len(ws.processing) / ws.nthreads, address, ws)
                )
        self.dispatched += moved
        return moved

    def _movable(self, ts: TaskState) -> bool:
        """Whether queued ``ts`` is an accepted deadline task without restrictions."""
        return (
            ts.key in self.job_of
            and not ts.worker_restrictions
            and not ts.host_restrictions
            and not ts.resource_restrictions
        )

    def check(self, seq: int) -> None:
        """The deadline of job ``seq`` passed: count and report a miss if it is unfinished.

        Parameters
        ----------
        seq : int
        """
        job = self.jobs.get(seq)
        if job is None or job.missed:
            return
        job.timer = None
        self._miss(job)
        if self.on_miss == "cancel":
            ext = self.extension
            tasks = ext.scheduler.tasks
            exc = DeadlineMissed(
                f"deadline {_iso(job.deadline)} of tenant {job.tenant!r} (queue "
                f"{job.queue!r}) passed; oxigdal.deadline.on-miss=cancel"
            )
            for key in job.keys:
                if self.job_of.get(key) is not job:
                    continue  # finished
                ts = tasks.get(key)
                info = ext.info.get(key)
                if ts is not None and info is not None:
                    ext.reject(ts, info, exc)
                    self.cancelled += 1

    def _miss(self, job: _Job) -> None:
        job.missed = True
        _bump(self.missed, job.tenant, job.queue)
        self.extension.emit(
            "deadline-missed",
            tenant=job.tenant,
            queue=job.queue,
            deadline=job.deadline,
            late=max(time.time() - job.deadline, 0.0),
            tasks=len(job.keys),
            unfinished=len(job.keys) - job.done,
            on_miss=self.on_miss,
        )

    def restart(self) -> None:
        """Every task was forgotten."""
        loop = self.extension.scheduler.loop
        for job in self.jobs.values():
            if job.timer is not None:
                loop.remove_timeout(job.timer)
        self.jobs.clear()
        self.job_of.clear()
        self._on.clear()
        self._on_worker.clear()

    def snapshot(self) -> dict[str, Any]:
        """Met/failed/missed per tenant and queue, rejections, warnings, live jobs."""
        return {
            "infeasible": self.infeasible,
            "on_miss": self.on_miss,
            "met": {t: dict(q) for t, q in self.met.items()},
            "missed": {t: dict(q) for t, q in self.missed.items()},
            "failed": {t: dict(q) for t, q in self.failed.items()},
            "rejected": self.rejected,
            "warned": self.warned,
            "accepted": self.accepted,
            "cancelled": self.cancelled,
            "dispatched": self.dispatched,
            "live_jobs": len(self.jobs),
        }


def _wave(nthreads: int, saturation: float) -> int:
    """Deadline tasks a worker with ``nthreads`` may process: Dask's slots when it runs nothing else."""
    if math.isinf(saturation):
        return nthreads
    return max(math.ceil(saturation * nthreads), 1)


def _bump(table: dict[str, dict[str, int]], tenant: str, queue: str) -> None:
    per_queue = table.setdefault(tenant, {})
    per_queue[queue] = per_queue.get(queue, 0) + 1


def _iso(t: float) -> str:
    """UTC ISO 8601 text of UNIX time ``t``; never raises (``inf``, huge, NaN)."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
    except (OverflowError, ValueError, OSError):
        return f"{t!r} (UNIX time)"
