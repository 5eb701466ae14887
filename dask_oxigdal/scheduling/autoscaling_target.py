"""The ``Autoscaling`` target: the rules, their tenants, and the slow step down.

:func:`evaluate` computes every rule in threads from the policy's counters
(no scan of the scheduler's tasks: per tenant and task prefix, per deadline
job, per waiting gang, per worker). :func:`smooth` turns the raw target into
the one the policy answers with: up at once, down only after a cooldown and a
step at a time. docs/autoscaling.md explains each rule.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from dask_oxigdal.scheduling.autoscaling_close import protected
from dask_oxigdal.scheduling.autoscaling_rules import RULES, burst_delay, water_fill, whole_tasks

if TYPE_CHECKING:
    from dask_oxigdal.scheduling.autoscaling import Autoscaling

__all__ = ["evaluate", "quota_limits", "smooth"]

#: Deadline jobs (earliest first) whose sizing is kept for the event and the status.
_NOTES = 8
#: Seconds (or a tenth of the start latency, if more) around its expected arrival
#: in which a worker on its way is not given up.
_ARRIVING = 3.0


def quota_limits(policy: Autoscaling) -> dict[str, int]:
    """``{tenant: max-tasks}``: the ``Quota`` policy's limits, else the tenants' options.

    Returns
    -------
    dict
    """
    quota = policy._policy("Quota")
    if quota is not None and getattr(quota, "limits", None):
        return dict(quota.limits)
    out = {}
    for tenant, options in policy.extension.tenant_options.items():
        value = options.get("max-tasks", options.get("max_tasks"))
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            out[tenant] = value
    return out


def _thread_waits(policy: Autoscaling, now: float) -> list[tuple[float, int]]:
    """``[(wait, threads)]`` per running worker: when its threads could start deadline work.

    EDF puts a deadline job's tasks ahead of every task waiting on a worker,
    so a thread is free for them once the task it is running ends. From the
    last heartbeat, Dask knows which tasks each worker is executing and for
    how long (``WorkerState.executing``): each has ``cost - elapsed`` left. A
    thread busy with a task that started after that heartbeat counts a whole
    task of the worker's mean (its occupancy over its tasks). The wait is the
    mean over the worker's threads. (Before, it was the whole occupancy per
    thread, as if the tasks assigned but not started ran first; a tight job
    then looked as if the running threads could do nothing for it.) One entry
    per worker, each O(threads): O(workers) per job, not O(tasks).
    """
    out = []
    for ws in policy.extension.scheduler.workers.values():
        if ws.nthreads <= 0 or ws.status.name != "running":
            continue
        assigned = len(ws.processing)
        if not assigned:
            out.append((0.0, ws.nthreads))
            continue
        mean = ws.occupancy / assigned
        since = max(now - ws.last_seen, 0.0)
        left = 0.0
        known = 0
        for ts, elapsed in ws.executing.items():
            if ts.prefix is None:
                continue
            known += 1
            left += max(policy.task_cost(ts.prefix) - elapsed - since, 0.0)
        unknown = max(min(assigned, ws.nthreads) - known, 0)
        left += unknown * mean
        out.append((min(left / ws.nthreads, ws.occupancy / ws.nthreads), ws.nthreads))
    return out


def _threads_for(work: float, existing: float, useful: int, pending: list, new: tuple):
    """Threads that do ``work`` seconds: running ones, then those on their way, then new.

    ``pending``: ``[(seconds of the work it can do, threads)]`` per worker on its
    way, earliest arrival first; ``new``: ``(seconds a new thread can do, tasks
    that fit)``. Returns ``(threads, new threads)``, or None when running and
    arriving threads cannot do it and no task fits for a new one.
    """
    if work <= 0:
        return 0, 0
    if work <= existing:
        return math.ceil(work / (existing / useful) - 1e-9), 0
    threads, done = useful, existing
    for seconds, count in pending:
        if done >= work:
            return threads, 0
        threads += count
        done += seconds
    if done >= work:
        return threads, 0
    slack, fit = new
    if fit < 1:
        return (threads, 0) if threads > useful else None
    extra = math.ceil((work - done) / slack - 1e-9)
    return threads + extra, extra


def _deadline_rule(policy: Autoscaling, now: float, latency: float, per_worker: float) -> tuple:
    """Threads the live deadline jobs need, earliest deadline first.

    For each job in deadline order, the work of it and of every job due no
    later (``C``) must be done by the deadline ``D``; every thread must start
    its last task one task duration ``p`` before it. The threads already
    running are free for it once their assigned tasks are done (EDF runs the
    job's tasks before any queued task): together they can do ``E`` = the sum
    of ``D - now - wait - p`` over them. If ``C <= E``, the job needs only
    the existing threads that do it (``ceil(C / (E / threads))``, no new
    worker). Otherwise the workers already asked for and on their way count
    next, earliest first, each for the whole tasks it can finish between its
    expected arrival (its request + ``latency``) and ``D``; then new threads,
    ``(C - E - arriving) / (k * p)`` of them, where ``k = floor((D - now -
    latency) / p)`` is the number of whole tasks a new thread can finish
    between its arrival and the deadline. A thread that joins starts its
    first task ``delay`` after it registers and each next one ``gap`` after
    the last ended (both measured on the workers that joined while work
    waited, :class:`~dask_oxigdal.scheduling.autoscaling_rules.Ramp`), so
    ``k`` is the largest with ``delay + k * p + (k - 1) * gap`` within the
    window; the new workers join in one burst, and ``delay`` is that of a
    burst of their number (``Ramp.delay_for``, with the ramp's figures read
    once per evaluation). Without the arriving ones, the rule
    asked for more workers every second as ``k`` shrank, then gave them all
    up once ``k`` was 0, while they were on their way and still useful. A job
    that neither running nor arriving threads can finish, and for which no
    task fits a new thread (``k = 0``), asks for no new thread: it is left to
    the demand rule, as ordinary work of its tenant. Each value is at most the
    unfinished tasks (plus the arriving threads kept for them).

    Returns
    -------
    tuple
        ``(threads, (tenant, deadline) or None, {tenant: threads of its own jobs},
        {tenant: [work seconds, unfinished tasks] of its late jobs}, notes)``;
        ``notes``: per job (the first ``_NOTES``), its window, tasks that fit,
        arriving and new threads and the reason.
    """
    dl = policy._policy("Deadline")
    if dl is None or not dl.jobs:
        return 0.0, None, {}, {}, [], (0, 0.0)
    waits = _thread_waits(policy, now)
    ramp = policy.ramp
    delay, gap, per_burst = ramp.delay, ramp.gap, ramp.per_worker  # once, not per job
    asked = policy.next_read(now)  # when new workers asked for now are asked for
    # workers asked for and on their way: expected arrival, the latest possible request
    arrivals = sorted(t + latency for t in policy.latency.latest())
    tasks_of = policy.extension.scheduler.tasks
    need = 0.0
    why = None
    cumulative = 0.0
    tasks = 0
    own: dict[str, float] = {}
    late: dict[str, list] = {}
    notes: list[dict] = []
    claimed = 0  # threads on their way that some job counts on
    on_time = 0.0  # work of the jobs that running or arriving threads can meet
    for job in sorted(dl.jobs.values(), key=lambda j: j.deadline):
        # the Deadline policy sized the job when it accepted it, with FairShare's
        # cost (job.work); size it with ours instead (Dask's measured mean, else
        # its unknown-task-duration), by the prefix of the job's first task
        scale = 1.0
        first = tasks_of.get(job.keys[0]) if job.keys else None
        if first is not None and job.work > 0:
            scale = policy.task_cost(first.prefix) / (job.work / len(job.keys))
        remaining = job.remaining() * scale
        unfinished = len(job.keys) - job.done
        cumulative += remaining
        tasks += unfinished
        # the job's last task must start one task duration before the deadline
        per_task = scale * job.work / len(job.keys) if job.keys else 0.0
        left = job.deadline - now - per_task
        existing = 0.0  # seconds of work the running threads can do in time
        useful = 0  # running threads that can do some
        for wait, threads in waits:
            if left - wait > 0:
                existing += threads * (left - wait)
                useful += threads
        # a new thread arrives after the start latency; it is of use only for the
        # whole tasks it can finish between then and the deadline
        window = job.deadline - asked - latency
        if per_task > 0:
            # a joining worker starts its first task, and each next one, a little
            # late (measured: policy.ramp); whole tasks only
            fit = whole_tasks(window, per_task, delay, gap)
            slack = fit * per_task
            pending = []
            for at in arrivals:
                whole = whole_tasks(job.deadline - at, per_task, delay, gap)
                if whole < 1:
                    break
                pending.append((per_worker * whole * per_task, per_worker))
        else:
            fit, slack = (unfinished, window) if window > 0 else (0, 0.0)
            pending = []
        note = {
            "tenant": job.tenant,
            "deadline": job.deadline,
            "window": round(window, 3),
            "tasks_fit": fit,
            "arriving_threads": 0,
            "new_threads": 0,
        }
        if len(notes) < _NOTES:
            notes.append(note)
        found = _threads_for(cumulative, existing, useful, pending, (slack, fit))
        # the new workers join in one burst, and a larger burst starts later: size the
        # delay by the burst this request makes (at most twice: the delay only grows).
        # The burst is at most the maximum; and a job that a new thread could help keeps
        # at least one task a thread (the deadline rule still asks for it)
        for _ in range(2):
            if found is None or not found[1] or per_task <= 0 or per_worker <= 0:
                break
            workers = math.ceil(found[1] / per_worker - 1e-9)
            if policy.maximum is not None:
                workers = min(workers, policy.maximum)
            burst = burst_delay(workers, delay, per_burst)
            fewer = max(whole_tasks(window, per_task, burst, gap), 1)
            if fewer >= fit:
                break
            fit, slack = fewer, fewer * per_task
            found = _threads_for(cumulative, existing, useful, pending, (slack, fit))
        note["tasks_fit"] = fit
        if found is None:
            note["reason"] = "no task fits between a new worker's arrival and the deadline"
            entry = late.setdefault(job.tenant, [0.0, 0])
            entry[0] += remaining
            entry[1] += unfinished
            continue
        value, extra = found
        arriving = max(value - extra - useful, 0)
        claimed = max(claimed, int(arriving))
        on_time += remaining
        note["arriving_threads"] = int(arriving)
        if cumulative <= existing:
            note["reason"] = "running threads suffice"
        elif not extra:
            note["reason"] = "running threads and workers on their way suffice"
        else:
            note["new_threads"] = int(min(value, tasks + arriving)) - useful - int(arriving)
            note["reason"] = f"{fit} task(s) per new thread fit before the deadline"
        value = float(min(value, tasks + arriving))
        if value > need:
            need, why = value, (job.tenant, job.deadline)
        mine = _threads_for(remaining, existing, useful, pending, (slack, fit))
        if mine is not None:
            own[job.tenant] = max(own.get(job.tenant, 0.0), float(min(mine[0], unfinished)))
    return need, why, own, late, notes, (claimed, on_time)


def spare_seconds(
    now: float,
    horizon: float,
    nthreads: float,
    per_worker: float,
    arrivals: list[float],
    claimed: int,
    deadline_work: float,
) -> float:
    """Seconds of ordinary work the cluster does before a worker asked for now starts.

    Within ``horizon`` (the start latency) the running threads work the whole
    time, and the ``claimed`` threads on their way that deadline jobs count on
    (earliest ``arrivals`` first) from their arrival; the deadlines' work comes
    first (EDF), and what is left is ordinary work's. A deadline's workers
    asked for earlier are free for the ordinary work once the job is done, so
    ordinary work queued behind the job asks for no worker of its own that
    would arrive after them. Workers on their way that no deadline counts on do
    not count: they were asked for for this same ordinary work.

    Parameters
    ----------
    now, horizon : float
        Seconds (``horizon``: from now).
    nthreads, per_worker : float
        Running threads; threads per worker.
    arrivals : list of float
        Expected arrival times of the workers on their way, earliest first.
    claimed : int
        Threads on their way that deadline jobs count on.
    deadline_work : float
        Seconds of work of the deadline jobs that can be met.

    Returns
    -------
    float
        At least 0.
    """
    end = now + horizon
    seconds = nthreads * horizon
    workers = math.ceil(claimed / per_worker - 1e-9) if per_worker > 0 else 0
    for at in arrivals[:workers]:
        seconds += per_worker * max(end - max(at, now), 0.0)
    return max(seconds - deadline_work, 0.0)


def _demand_rule(
    policy: Autoscaling, duration: float, free: float, spare: float, late: dict
) -> tuple:
    """Threads for the tenants' ordinary work to finish within ``duration``.

    Ordinary work: the tasks without a deadline, and the deadline jobs that
    new workers could not help meet (``late``). Workers asked for now arrive
    after the start latency: beyond the ``free`` running threads, ask only for
    the work that will not have been done by then (``spare`` seconds of it will:
    :func:`spare_seconds`).

    Returns
    -------
    tuple
        ``(threads, {tenant: threads}, {tenant: work seconds})``.
    """
    limits = quota_limits(policy)
    demand: dict[str, float] = {}
    works: dict[str, float] = {}
    for tenant in set(policy.live) | set(late):
        per = policy.live.get(tenant) or {}
        work, ready = late.get(tenant, (0.0, 0))
        if not per and not work:
            continue
        for count, prefix in per.values():
            work += count * policy.task_cost(prefix)
        ready += max(policy.ready.get(tenant, 0), 0)
        need = min(math.ceil(work / duration - 1e-9), ready)
        limit = limits.get(tenant)
        if limit is not None:
            need = min(need, limit)
        demand[tenant] = float(need)
        works[tenant] = work
    total = sum(demand.values())
    if total > free:
        # workers asked for now arrive after the start latency: ask only for the
        # work that will not have been done by then
        work = sum(min(works[t], demand[t] * duration) for t in demand)
        useful = math.ceil(max(work - spare, 0.0) / duration - 1e-9)
        total = min(total, max(free, float(useful)))
    return total, demand, works


def evaluate(policy: Autoscaling, duration: float, now: float) -> dict[str, Any]:
    """Every rule's value (threads), the raw target (workers) and why.

    Parameters
    ----------
    policy : Autoscaling
    duration : float
        ``target_duration`` in seconds.
    now : float

    Returns
    -------
    dict
        ``raw`` (workers, clamped), ``rule`` (the rule or the bound that
        decided it), ``detail`` (its tenant, gang or deadline), ``rules``,
        ``per_tenant`` and ``demand`` (total threads of demand).
    """
    ext = policy.extension
    scheduler = ext.scheduler
    workers = scheduler.workers
    n = len(workers)
    nthreads = scheduler.total_nthreads
    per_worker = nthreads / n if n else 1.0
    latency = policy.start_latency
    rules: dict[str, float] = {}
    why: dict[str, Any] = {}

    # a deadline counts on new workers only with the slow end of their measured start
    rules["deadline"], why["deadline"], own_deadline, late, notes, (claimed, dl_work) = (
        _deadline_rule(policy, now, policy.latency.cautious, per_worker)
    )
    free = max(nthreads - rules["deadline"], 0.0)
    arrivals = sorted(t + latency for t in policy.latency.latest()) if claimed else []
    spare = spare_seconds(now, latency, nthreads, per_worker, arrivals, claimed, dl_work)
    rules["demand"], demand, works = _demand_rule(policy, duration, free, spare, late)
    why["demand"] = max(demand, key=demand.get) if demand else None

    guaranteed = 0.0
    why["guaranteed"] = None
    for tenant, options in ext.tenant_options.items():
        g = options.get("guaranteed-slots", options.get("guaranteed_slots"))
        usage = ext.usage.get(tenant)
        if g and usage is not None and usage.pending > 0:
            guaranteed += g
            if why["guaranteed"] is None or g > guaranteed - g:
                why["guaranteed"] = tenant
    rules["guaranteed"] = guaranteed

    rules["gang"], why["gang"] = 0.0, None
    gang = policy._policy("Gang")
    if gang is not None:
        for g in gang.waiting.values():
            if g.k > rules["gang"]:
                rules["gang"], why["gang"] = float(g.k), (g.tenant, g.name)

    # the interval in which a worker asked for now would start working
    horizon = 1 + math.ceil(latency / policy.forecast_interval)
    limits = quota_limits(policy)
    forecast: dict[str, float] = {}
    forecast_seconds: dict[str, float] = {}
    # each interval until a worker asked for now would start: the forecast rule
    # uses the last (when that worker starts); forecast-idle the peak over all
    # of them (the workers that demand coming back could need)
    peak = 0.0
    for h in range(1, horizon + 1):
        total = 0.0
        for tenant, model in policy.models.items():
            ahead = model.predict(h)
            need = ahead / policy.forecast_interval
            limit = limits.get(tenant)
            need = need if limit is None else min(need, limit)
            total += need
            if h == horizon:
                forecast_seconds[tenant] = ahead
                forecast[tenant] = need
        peak = max(peak, total)
    rules["forecast"] = float(math.ceil(sum(forecast.values()) - 1e-9))
    why["forecast"] = max(forecast, key=forecast.get) if forecast else None
    peak_workers: int | None = math.ceil(peak / per_worker - 1e-9) if peak > 1e-9 else 0
    if policy.model == "none" or not any(m.n for m in policy.models.values()):
        peak_workers = None  # no forecast yet: it cannot say that no demand returns

    limit_bytes = sum(ws.memory_limit for ws in workers.values())
    used = sum(ws.nbytes for ws in workers.values())
    big = limit_bytes > 0 and used > 0.6 * limit_bytes
    rules["memory"] = 2 * n * per_worker if big else 0.0
    why["memory"] = None

    # demand and deadline count different tasks (a deadline job's tasks are only
    # in the deadline rule), so they add up; the target is the largest of that
    # sum and the other rules
    candidates = dict(rules)
    work_rule = "deadline" if rules["deadline"] >= rules["demand"] else "demand"
    candidates[work_rule] = rules["demand"] + rules["deadline"]
    if rules["gang"]:
        # a waiting gang needs its k threads idle at once, beside the threads busy
        # now (its members are held, not processing): Gang's reservation holds back
        # only the tasks Dask queues, so with a steady flow of other work on exactly
        # k threads a gang of k never starts (the full benchmark run held a gang of
        # 4 on 4 busy workers for 195 s). O(workers), only while a gang waits.
        busy = sum(min(len(ws.processing), ws.nthreads) for ws in workers.values())
        candidates["gang"] = rules["gang"] + busy
    rule = max(RULES, key=lambda r: (candidates[r], -RULES.index(r)))
    threads = candidates[rule]
    raw = math.ceil(threads / per_worker - 1e-9) if threads > 0 else 0
    if raw == 0 and (scheduler.queued or scheduler.unrunnable):
        raw = 1
    reason = rule
    if raw < policy.minimum:
        raw, reason = policy.minimum, "minimum"
    if policy.maximum is not None and raw > policy.maximum:
        raw, reason = policy.maximum, "maximum"

    # per tenant: its own need, cut back to its fair share when the target is capped
    needs: dict[str, float] = {}
    for tenant in set(demand) | set(forecast) | set(own_deadline):
        needs[tenant] = max(
            demand.get(tenant, 0.0) + own_deadline.get(tenant, 0.0), forecast.get(tenant, 0.0)
        )
    if why["gang"] is not None:
        needs[why["gang"][0]] = max(needs.get(why["gang"][0], 0.0), rules["gang"])
    capacity = raw * per_worker
    alloc = water_fill(needs, ext.weights, capacity) if sum(needs.values()) > capacity else needs
    per_tenant: dict[str, dict[str, float]] = {}
    for tenant in sorted(set(needs) | set(forecast_seconds)):
        per_tenant[tenant] = {
            "demand_threads": demand.get(tenant, 0.0),
            "deadline_threads": own_deadline.get(tenant, 0.0),
            "demand_work": works.get(tenant, 0.0),
            "forecast_task_seconds": forecast_seconds.get(tenant, 0.0),
            "desired_workers": math.ceil(alloc.get(tenant, 0.0) / per_worker - 1e-9),
        }
    return {
        "raw": raw,
        "rule": reason,
        "detail": why.get(rule),
        "rules": rules,
        "per_tenant": per_tenant,
        "demand": rules["demand"] + rules["deadline"],
        "deadline_jobs": notes,
        "forecast_peak": peak_workers,
    }


def smooth(policy: Autoscaling, raw: int, n: int, now: float) -> int:
    """Up at once; down only after ``cooldown``, a step at a time.

    The raw target counts as lower when it is below ``target * (1 -
    hysteresis)`` and at least one worker lower. Once it has been lower for
    ``cooldown`` (and ``cooldown`` has passed since the target last rose), the
    target steps down by at most ``max_down_fraction`` of itself (at least one
    worker), one step per ``max(1 s, cooldown * max_down_fraction)``, and never
    below the workers that ``workers_to_close`` would keep.

    The slow step-down is for running workers only: once the raw target is
    lower, the held part of the target never exceeds the ``n`` workers that
    have arrived (``max(raw, min(held, n + soon))``), so workers asked for but
    not yet arrived that no rule needs any more are given up, not held through
    the cooldown. They hold no data; ``policy.cancelled`` counts them for this call.
    The exceptions, each for 3 s (or a tenth of the start latency, if more):
    nothing is given up until the raw target has been lower that long, since it
    wobbles from one evaluation to the next and a worker given up and asked for
    again pays a whole start again (the full benchmark run gave up 6 workers 24 s
    into their 30 s start, and asked for 6 more a second later); and the workers
    expected within that time of now (``soon``) are kept: Dask's ``Adaptive``
    closes a worker it gave up three polls after the decision, and one that
    joined in between is killed with the tasks it had started (seen in the
    benchmark: 7 workers, 14 tasks).

    Returns
    -------
    int
        The target (workers).
    """
    policy.cancelled = 0
    current = max(policy.target, 0)
    if raw >= current:
        policy.below_since = None
        if raw > current:
            policy.last_up = now
        return raw
    band = max(1.0, policy.hysteresis * current)
    if raw > current - band:
        policy.below_since = None
        return current
    held = _step_down(policy, raw, n, now, current)
    latency = policy.latency
    window = max(_ARRIVING, 0.1 * latency.value)
    if held > n and now - policy.below_since < window:
        # a dip shorter than this gives up no worker on its way: the raw target
        # wobbles from one evaluation to the next, and a worker given up and asked
        # for again a second later pays a whole start latency again
        return held
    # workers not yet arrived hold no data: keep only those a rule still needs, and
    # those due within seconds (a deployment that gives up a worker as it joins
    # kills it with the tasks it has started)
    soon = latency.arriving(now, window) if held > n else 0
    target = max(raw, min(held, n + soon))
    policy.cancelled = held - target
    return target


def _step_down(policy: Autoscaling, raw: int, n: int, now: float, current: int) -> int:
    """The held target: ``current`` until the cooldown, then a step at a time."""
    if policy.below_since is None:
        policy.below_since = now
    if now - max(policy.below_since, policy.last_up) < policy.cooldown:
        return current
    gap = max(1.0, policy.cooldown * policy.max_down_fraction)
    if now - policy.last_step < gap:
        return current
    step = max(1, math.floor(current * policy.max_down_fraction))
    target = max(raw, current - step)
    if target < n and policy.extension is not None:
        # never below the workers that workers_to_close would keep
        guarded = protected(policy)
        keep = sum(
            1
            for address, ws in policy.extension.scheduler.workers.items()
            if ws.processing or ws.long_running or address in guarded
        )
        target = max(target, keep, policy.minimum)
    if target < current:
        policy.last_step = now
    return min(target, current)
