"""What the demo measures: the killer thread, and the figures of a run from its trace.

Both runs are measured the same way, without the extension: every task
attempt reports its start and stop as a ``distributed`` event
(:func:`~dask_oxigdal.demo.workloads.trace`), and the client records when it
submitted each key. From that:

- **contended share**: each tenant's worker-seconds while *every* tenant had
  work submitted and not finished, over all tenants' worker-seconds then;
- **Jain index** of the contended shares, each divided by its entitlement
  (weight over the sum of weights): 1 when every tenant got exactly its
  entitlement, ``1/n`` when one tenant got everything;
- the late tenant's **wait for its first task**, the **deadline hit rate**
  (jobs finished within their deadline), the gangs' **start skew** and
  barrier time-outs, the **straggler tail**, and what the **killed worker**
  cost (attempts lost, results recomputed, seconds until its replacement).
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any


def jain(values: list[float]) -> float | None:
    """Jain's fairness index ``(sum x)^2 / (n sum x^2)`` of ``values``.

    Parameters
    ----------
    values : list of float

    Returns
    -------
    float or None
        In ``[1/n, 1]``; ``None`` when every value is 0.
    """
    square = sum(v * v for v in values)
    if not values or square == 0:
        return None
    return sum(values) ** 2 / (len(values) * square)


class Killer:
    """A thread that SIGKILLs the busiest worker (under a nanny) ``at`` seconds into the day.

    Parameters
    ----------
    client : distributed.Client
    at : float or None
        Seconds after :meth:`start`; ``None`` kills nothing.
    """

    def __init__(self, client: Any, at: float | None) -> None:
        self.client = client
        self.at = at
        self.info: dict[str, Any] = {"requested": at is not None, "done": False}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oxigdal-demo-killer", daemon=True)
        self.t0 = time.time()

    def start(self, t0: float) -> None:
        """Start counting from ``t0`` (``time.time()``)."""
        self.t0 = t0
        if self.at is not None:
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (a kill in progress finishes first)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=90)

    def _run(self) -> None:
        if self._stop.wait(max(self.t0 + self.at - time.time(), 0.0)):
            self.info["skipped"] = "the day ended before the kill"
            return
        import os

        try:
            processing = self.client.processing()
            workers = self.client.scheduler_info()["workers"]
            candidates = sorted(
                (w for w in processing if workers.get(w, {}).get("nanny")),
                key=lambda w: (-len(processing[w]), w),
            )
            if not candidates:
                self.info["skipped"] = "no worker runs under a nanny"
                return
            victim = candidates[0]
            pid = self.client.run(os.getpid, workers=[victim])[victim]
            self.info.update(
                done=True,
                worker=victim,
                pid=int(pid),
                tasks_running=len(processing[victim]),
                at=time.time(),
                workers_before=len(workers),
            )
            # SIGKILL from inside the worker process; its nanny starts a new one
            self.client.run(_sigkill_self, workers=[victim], wait=False)
            end = time.monotonic() + 60
            while time.monotonic() < end and victim in self.client.scheduler_info()["workers"]:
                time.sleep(0.05)
            self.info["died"] = victim not in self.client.scheduler_info()["workers"]
            while time.monotonic() < end:
                if len(self.client.scheduler_info()["workers"]) >= len(workers):
                    self.info["replaced_at"] = time.time()
                    break
                time.sleep(0.1)
        except Exception as e:  # the demo goes on; the summary says what happened
            self.info["error"] = f"{type(e).__name__}: {e}"


async def _sigkill_self() -> None:
    """Kill this process with SIGKILL (run on the victim worker: no reply comes back)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def attempts_from_trace(
    events: list[dict[str, Any]], kill: dict[str, Any], end: float
) -> list[dict[str, Any]]:
    """Pair the trace's start and stop events into task attempts.

    Parameters
    ----------
    events : list of dict
        The trace events (``event``, ``key``, ``t``, ``pid``, ``tenant``, ``kind``, ...).
    kill : dict
        The :class:`Killer`'s ``info``; an attempt of the killed process with
        no stop ends at the kill.
    end : float
        When the day ended: the end of attempts still running.

    Returns
    -------
    list of dict
        ``{"key", "tenant", "kind", "start", "stop", "pid", "worker", "finished",
        "killed", ...}`` in start order.
    """
    open_: dict[tuple[str, int], dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for ev in sorted(events, key=lambda e: e["t"]):
        ident = (ev["key"], ev["pid"])
        if ev["event"] == "start":
            attempt = {k: v for k, v in ev.items() if k not in ("event", "t")}
            attempt.update(start=ev["t"], stop=None, finished=False, killed=False)
            open_[ident] = attempt
            out.append(attempt)
        elif ev["event"] == "stop" and ident in open_:
            attempt = open_.pop(ident)
            attempt.update(stop=ev["t"], finished=True)
            attempt.update({k: v for k, v in ev.items() if k not in ("event", "t", "key", "pid")})
    for attempt in open_.values():
        if kill.get("done") and attempt["pid"] == kill.get("pid"):
            attempt.update(stop=max(kill["at"], attempt["start"]), killed=True)
        else:  # abandoned (a rescheduled straggler) or still running when the day ended
            attempt["stop"] = max(end, attempt["start"])
    return out


def _contended(
    spans: dict[str, list[tuple[float, float]]],
) -> list[tuple[float, float]]:
    """Intervals where every tenant has at least one span open."""
    points: list[tuple[float, int, str]] = []
    for tenant, tenant_spans in spans.items():
        for a, b in tenant_spans:
            if b > a:
                points += [(a, 1, tenant), (b, -1, tenant)]
    points.sort(key=lambda p: (p[0], p[1]))  # closes before opens at the same instant
    open_count = dict.fromkeys(spans, 0)
    out: list[tuple[float, float]] = []
    since: float | None = None
    for t, delta, tenant in points:
        open_count[tenant] += delta
        everyone = all(n > 0 for n in open_count.values())
        if everyone and since is None:
            since = t
        elif not everyone and since is not None:
            if t > since:
                out.append((since, t))
            since = None
    return out


def _overlap(a: float, b: float, intervals: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, y) - max(a, x)) for x, y in intervals)


def measure(
    *,
    tenants: dict[str, float],
    submitted: dict[str, tuple[str, float]],
    attempts: list[dict[str, Any]],
    jobs: list[dict[str, Any]],
    gangs: dict[str, list[dict[str, Any]]],
    kill: dict[str, Any],
    late_tenant: str,
    t0: float,
) -> dict[str, Any]:
    """The figures of one run.

    Parameters
    ----------
    tenants : dict
        ``{tenant: weight}``.
    submitted : dict
        ``{key: (tenant, time submitted)}`` for every key of the day.
    attempts : list of dict
        From :func:`attempts_from_trace`.
    jobs : list of dict
        Deadline jobs: ``{"name", "keys", "submitted", "deadline_s"}``.
    gangs : dict
        ``{gang: [member result, ...]}`` (see
        :func:`~dask_oxigdal.demo.workloads.gang_member`).
    kill : dict
        The :class:`Killer`'s ``info``.
    late_tenant : str
    t0 : float
        Start of the day (``time.time()``).

    Returns
    -------
    dict
        JSON-serialisable figures: ``tenants``, ``jain_contended``,
        ``contention_seconds``, ``late_tenant``, ``deadline_hit_rate``,
        ``deadline_jobs``, ``gangs``, ``straggler``, ``kill``, ``timeline``.
    """
    done: dict[str, float] = {}
    for a in attempts:
        if a["finished"]:
            done[a["key"]] = min(done.get(a["key"], a["stop"]), a["stop"])
    spans: dict[str, list[tuple[float, float]]] = {t: [] for t in tenants}
    for key, (tenant, at) in submitted.items():
        spans.setdefault(tenant, []).append((at, done.get(key, at)))
    contended = _contended({t: spans[t] for t in tenants})
    used = dict.fromkeys(tenants, 0.0)
    busy = dict.fromkeys(tenants, 0.0)
    for a in attempts:
        if a["tenant"] in used:
            used[a["tenant"]] += _overlap(a["start"], a["stop"], contended)
            busy[a["tenant"]] += a["stop"] - a["start"]
    total_used = sum(used.values())
    total_weight = sum(tenants.values())
    per_tenant: dict[str, dict[str, Any]] = {}
    for tenant, weight in tenants.items():
        keys = [k for k, (t, _) in submitted.items() if t == tenant]
        starts = [a["start"] for a in attempts if a["tenant"] == tenant]
        first_submit = min((submitted[k][1] for k in keys), default=t0)
        per_tenant[tenant] = {
            "weight": weight,
            "entitled_share": weight / total_weight,
            "contended_share": used[tenant] / total_used if total_used > 0 else 0.0,
            "worker_seconds": busy[tenant],
            "tasks": len(keys),
            "completed": sum(k in done for k in keys),
            "arrived_s": first_submit - t0,
            "first_task_wait_s": (min(starts) - first_submit) if starts else None,
            "finished_s": (max((done[k] for k in keys if k in done), default=t0) - t0),
        }
    ratios = [t["contended_share"] / t["entitled_share"] for t in per_tenant.values()]
    job_rows = []
    for job in jobs:
        finished = max((done.get(k, float("inf")) for k in job["keys"]), default=float("inf"))
        took = finished - job["submitted"]
        job_rows.append(
            {
                "name": job["name"],
                "tenant": job["tenant"],
                "tasks": len(job["keys"]),
                "submitted_s": job["submitted"] - t0,
                "deadline_s": job["deadline_s"],
                "finished_in_s": took if took != float("inf") else None,
                "met": took <= job["deadline_s"],
            }
        )
    return {
        "tenants": per_tenant,
        "jain_contended": jain(ratios) if total_used > 0 else None,
        "contention_seconds": sum(b - a for a, b in contended),
        "contended": [(a - t0, b - t0) for a, b in contended],
        "late_tenant": {
            "tenant": late_tenant,
            "wait_s": per_tenant[late_tenant]["first_task_wait_s"],
        },
        "deadline_hit_rate": (
            sum(j["met"] for j in job_rows) / len(job_rows) if job_rows else None
        ),
        "deadline_jobs": job_rows,
        "gangs": _gangs(gangs, attempts),
        "straggler": _straggler(attempts, done),
        "kill": _kill(kill, attempts, t0),
        "makespan_s": max(done.values(), default=t0) - t0,
        "timeline": [
            {
                "tenant": a["tenant"],
                "kind": a["kind"],
                "worker": a["worker"],
                "start": a["start"] - t0,
                "stop": a["stop"] - t0,
                "killed": a["killed"],
            }
            for a in attempts
        ],
    }


def _gangs(gangs: dict[str, list[dict[str, Any]]], attempts: list[dict[str, Any]]) -> list:
    rows = []
    for name, members in gangs.items():
        starts = [a["start"] for a in attempts if a.get("gang") == name]
        first = sorted(starts)[: len(members)] if members else starts
        rows.append(
            {
                "name": name,
                "members": len(members),
                "rendezvous": bool(members) and all(m["met"] for m in members),
                "timed_out": sum(not m["met"] for m in members),
                "start_skew_s": (max(first) - min(first)) if first else None,
                "barrier_wait_s": sum(m["waited_s"] for m in members),
                "attempts": len(starts),
            }
        )
    return rows


def _straggler(attempts: list[dict[str, Any]], done: dict[str, float]) -> dict[str, Any] | None:
    report = [a for a in attempts if a["kind"] == "report"]
    slow = [a for a in report if a.get("straggler")]
    normal = [a["stop"] - a["start"] for a in report if not a.get("straggler") and a["finished"]]
    if not slow:
        return None
    key = slow[0]["key"]
    first = min(a["start"] for a in slow)
    return {
        "key": key,
        "attempts": len(slow),
        "result_after_s": done.get(key, first) - first,
        "first_attempt_s": slow[0]["stop"] - slow[0]["start"],
        "typical_s": statistics.median(normal) if normal else None,
    }


def _kill(kill: dict[str, Any], attempts: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    out = {k: v for k, v in kill.items() if k not in ("at", "replaced_at")}
    if not kill.get("done"):
        return out
    at = kill["at"]
    lost = [a for a in attempts if a["killed"]]
    victim_done = {a["key"] for a in attempts if a["pid"] == kill["pid"] and a["finished"]}
    rerun = [
        a
        for a in attempts
        if a["key"] in victim_done and a["pid"] != kill["pid"] and a["start"] >= at
    ]
    out.update(
        at_s=at - t0,
        attempts_lost=len(lost),
        lost_worker_seconds=sum(a["stop"] - a["start"] for a in lost),
        results_recomputed=len({a["key"] for a in rerun}),
        recompute_worker_seconds=sum(a["stop"] - a["start"] for a in rerun),
        replaced_after_s=(kill["replaced_at"] - at) if kill.get("replaced_at") else None,
    )
    return out
