"""Transfer-cost model: seconds to move ``n`` bytes from one worker to another.

``cost(n, src, dst) = alpha(pair) + n / bandwidth(pair)``

Each pair of workers falls in a *class*: how their topology labels relate,
``same-host``, ``same-rack``, ``cross-rack``, ``cross-zone`` or ``unknown``
(see :func:`~dask_oxigdal.placement.topology.relation`).

The model learns from the transfers the workers report
(``Worker.transfer_incoming_log``, through
:class:`~dask_oxigdal.placement.topology.TopologyWorkerPlugin`), in two stages
so that the per-transfer overhead is counted once (Dask's own
``bytes / duration`` figure already contains it):

- ``alpha(class)``: the class's latency prior plus the *overhead* (request,
  event loops, serialisation), the median of the last 16 values of
  ``observed - bytes / bandwidth - latency``, pooled over the classes (the
  workers' CPUs are the same whatever the link), also kept apart by how many
  of the two workers were busy when the transfer started; else the prior.
- ``bandwidth(class)``: the median of ``(observed - alpha) / bytes`` over the
  class's last 8 transfers of at least :data:`LARGE` bytes (``observed``);
  else Dask's ``Scheduler.bandwidth_workers`` pooled per class (median over
  the class's pairs, ``measured``); else the class's prior scaled by the
  median ratio of learned to prior bandwidth (``prior``). An outer class is
  never faster than an inner one (same host, rack, cross rack, cross zone),
  so noise cannot invert the topology's order.

Medians rather than means: on a busy host a few transfers stall for a tenth
of a second or more in an event loop, and a mean follows them.

Each reported transfer is first *predicted* with the model as it stood when
the transfer started (only what had been reported by then: never the
transfers that ran beside it and were reported before it), then added to it,
stamped with its report's arrival. The relative error
``|predicted - observed| / observed`` of our model and of Dask's
(``bytes / Scheduler.bandwidth``, what ``Scheduler.get_comm_cost`` uses) are
kept for the last 1000 transfers;
:func:`topology_status` reports their medians, over all transfers and over
those of at least :data:`LARGE` bytes.

:func:`place_released` uses the cost for held tasks that a policy releases.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections import deque
from typing import Any

import dask
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_oxigdal.placement.topology import EXTRA_KEY, parse_labels, relation, worker_labels

__all__ = [
    "CLASSES",
    "PRIORS",
    "TopologyExtension",
    "TransferCostModel",
    "assign_by_cost",
    "dependency_costs",
    "install",
    "place_released",
    "register",
    "topology_status",
]

logger = logging.getLogger(__name__)

NAME = "oxigdal-topology"
CLASSES = ("same-host", "same-rack", "cross-rack", "cross-zone", "unknown")
#: class -> (bandwidth bytes/s, alpha seconds) before anything is measured.
PRIORS: dict[str, tuple[float, float]] = {
    "same-host": (1e9, 0.001),
    "same-rack": (125e6, 0.002),  # 1 Gb/s
    "cross-rack": (12.5e6, 0.004),  # 100 Mb/s
    "cross-zone": (6.25e6, 0.010),
    "unknown": (100e6, 0.002),  # Dask's default distributed.scheduler.bandwidth
}
_MAX_ERRORS = 1000
#: Transfers of at least this many bytes teach the bandwidth (Dask's own threshold).
LARGE = 1_000_000
_OVERHEAD_WINDOW = 16
_RATE_WINDOW = 8
_MIN_RATE = 1e-11  # seconds per byte: 100 GB/s
_BUSY_LOG = 256
_ORDER = ("same-host", "same-rack", "cross-rack", "cross-zone")


class _Window:
    """The last ``size`` samples of a quantity, each stamped with when the model learned it.

    Their median (robust to the stalls of a busy host), over all samples or only
    over those learned by a given time (the model as it stood then: no look-ahead).
    """

    __slots__ = ("items", "n", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        # more than `size`, so that the model as it stood a little earlier is still whole
        # (a transfer that outlived 3 * size newer samples is scored on fewer)
        self.items: deque[tuple[float, float]] = deque(maxlen=4 * size)
        self.n = 0

    def add(self, value: float, when: float) -> None:
        self.items.append((when, value))
        self.n += 1

    def last(self, at: float | None = None) -> list[float]:
        """The last ``size`` values learned by time ``at`` (``None``: by now)."""
        out: list[float] = []
        for when, value in reversed(self.items):
            if at is None or when <= at:
                out.append(value)
                if len(out) == self.size:
                    break
        return out

    def median(self, at: float | None = None) -> float | None:
        values = self.last(at)
        return statistics.median(values) if values else None


class TransferCostModel:
    """``alpha + bytes / bandwidth`` per worker pair, with a predicted-vs-observed tracker.

    Parameters
    ----------
    scheduler : distributed.Scheduler
        Where the workers, their labels and Dask's bandwidth measurements live.
    priors : dict, optional
        ``{class: (bandwidth bytes/s, alpha s)}`` overriding :data:`PRIORS`.
    """

    def __init__(self, scheduler: Any, priors: dict | None = None) -> None:
        self.scheduler = scheduler
        self.priors = dict(PRIORS)
        for cls, value in (priors or {}).items():
            if cls not in CLASSES:
                raise ValueError(f"unknown pair class {cls!r} (valid: {', '.join(CLASSES)})")
            bw, alpha = value
            if not (bw > 0 and alpha >= 0):
                raise ValueError(
                    f"prior for {cls!r} must be (bandwidth > 0, alpha >= 0): {value!r}"
                )
            self.priors[cls] = (float(bw), float(alpha))
        # the per-transfer overhead beyond the class's latency: pooled over the classes
        # (it is the two workers' event loops and CPUs, which every class shares)
        self.overhead = _Window(_OVERHEAD_WINDOW)
        # the same, split by how many of the two workers were running a task when the
        # transfer started (0, 1 or 2): a busy worker's event loop answers late
        self.overhead_busy = {k: _Window(_OVERHEAD_WINDOW) for k in (0, 1, 2)}
        #: worker -> recent (time, tasks processing) changes, from the transition hook
        self.busy_log: dict[str, deque[tuple[float, int]]] = {}
        # seconds per byte of each class, from the transfers over LARGE bytes
        self.rates = {cls: _Window(_RATE_WINDOW) for cls in CLASSES}
        self.transfers = {cls: 0 for cls in CLASSES}
        self._bw: dict[str, tuple[float, str]] = {}
        self._bw_at = -1.0
        self._dask: dict[str, float] = {}
        self._dask_at = -1.0
        self.errors: deque[float] = deque(maxlen=_MAX_ERRORS)
        self.dask_errors: deque[float] = deque(maxlen=_MAX_ERRORS)
        self.large_errors: deque[float] = deque(maxlen=_MAX_ERRORS)
        self.dask_large_errors: deque[float] = deque(maxlen=_MAX_ERRORS)
        #: the last scored transfers: (src, dst, class, bytes, observed, ours, Dask's, start, busy)
        self.recent: deque[tuple] = deque(maxlen=_MAX_ERRORS)
        self.observed = 0
        #: transfers that started before this time are learned from, not scored
        self.score_from = float("-inf")
        self.observed_bytes = {cls: 0 for cls in CLASSES}

    # ------------------------------------------------------------------ model
    def pair_class(self, src: str, dst: str) -> str:
        """The class of the pair (``unknown`` for a worker the scheduler does not know)."""
        workers = self.scheduler.workers
        a, b = workers.get(src), workers.get(dst)
        if a is None or b is None:
            return "unknown"
        return relation(worker_labels(a), worker_labels(b))

    def _dask_measured(self) -> dict[str, float]:
        """Dask's measured pair bandwidths pooled per class (median)."""
        per_class: dict[str, list[float]] = {}
        for (dst, src), value in list(self.scheduler.bandwidth_workers.items()):
            if value and value > 0:
                per_class.setdefault(self.pair_class(src, dst), []).append(float(value))
        return {cls: statistics.median(v) for cls, v in per_class.items()}

    def _bandwidths(self, at: float | None = None) -> dict[str, tuple[float, str]]:
        """``{class: (bytes/s, source)}``, refreshed at most once a second or on a new rate.

        With ``at``, the figures as they stood at that time (from the rates learned
        by then; Dask's measurements as they are now).
        """
        now = time.monotonic()
        if at is None and now - self._bw_at < 1.0:
            return self._bw
        if at is None or now - self._dask_at >= 1.0:
            self._dask, self._dask_at = self._dask_measured(), now
        dask = self._dask
        raw: dict[str, tuple[float, str]] = {}
        for cls in CLASSES:
            rate = self.rates[cls].median(at)
            if rate is not None:
                raw[cls] = (1.0 / max(rate, _MIN_RATE), "observed")
            elif dask.get(cls):
                raw[cls] = (dask[cls], "measured")
        # how much slower (or faster) than its prior the network is: the classes without
        # a measurement keep their prior's place in the order
        ratios = [bw / self.priors[cls][0] for cls, (bw, _) in raw.items()]
        scale = statistics.median(ratios) if ratios else 1.0
        out = {cls: raw.get(cls) or (self.priors[cls][0] * scale, "prior") for cls in CLASSES}
        # one noisy class cannot invert the topology's order: an outer class is never
        # faster than an inner one
        for inner, outer in itertools.pairwise(_ORDER):
            if out[outer][0] > out[inner][0]:
                out[outer] = (out[inner][0], out[outer][1])
        if at is None:
            self._bw, self._bw_at = out, now
        return out

    def bandwidth(
        self, src: str, dst: str, cls: str | None = None, at: float | None = None
    ) -> tuple[float, str]:
        """``(bytes/s, source)`` of a pair: ``observed``, ``measured`` (Dask's) or ``prior``.

        ``at``: as the model stood at that time (``time.time()`` seconds).
        """
        return self._bandwidths(at)[cls or self.pair_class(src, dst)]

    def note_processing(self, worker: str, n: int, when: float | None = None) -> None:
        """Record that ``worker`` now has ``n`` tasks processing (O(1), from transitions)."""
        log = self.busy_log.get(worker)
        if log is None:
            if len(self.busy_log) > 10_000:
                self.busy_log.clear()
            log = self.busy_log[worker] = deque(maxlen=_BUSY_LOG)
        if log and log[-1][1] == n:
            return
        log.append((time.time() if when is None else when, n))

    def busy(self, src: str, dst: str, at: float | None) -> int | None:
        """How many of the two workers were running a task at time ``at`` (``None``: unknown)."""
        if at is None:
            return None
        count = 0
        # the receiver's own task that waits for this transfer does not count
        for addr, idle in ((src, 0), (dst, 1)):
            log = self.busy_log.get(addr)
            if not log:
                continue
            n = 0
            for when, value in reversed(log):
                if when <= at:
                    n = value
                    break
            count += n > idle
        return count

    def alpha(self, cls: str, busy: int | None = None, at: float | None = None) -> float:
        """The per-transfer cost of a class: learned overhead plus the class's latency prior.

        With ``busy`` (how many of the two workers run a task), the overhead
        learned for that state. A state not seen yet takes the pooled overhead,
        except the idle one (``busy=0``): the pooled figure is then the busy
        workers', so an idle pair takes the quickest recent transfer's overhead.
        ``at``: as the model stood at that time.
        """
        values = self.overhead_busy[busy].last(at) if busy is not None else []
        if not values:
            values = self.overhead.last(at)
            if busy == 0 and values:
                values = [min(values)]
        overhead = statistics.median(values) if values else 0.0
        return self.priors[cls][1] + overhead

    def predict(
        self,
        nbytes: float,
        src: str,
        dst: str,
        busy: int | None = None,
        at: float | None = None,
    ) -> float:
        """Seconds to move ``nbytes`` from worker ``src`` to worker ``dst`` (0 when equal).

        ``busy``: how many of the two workers run a task (see :meth:`busy`);
        ``at``: predict with the model as it stood at that time (``time.time()``
        seconds; default: as it is now).
        """
        if src == dst:
            return 0.0
        cls = self.pair_class(src, dst)
        bw, _ = self.bandwidth(src, dst, cls, at)
        return self.alpha(cls, busy, at) + nbytes / bw

    def dependency_cost(self, ts: Any, dst: str) -> float:
        """Seconds to bring the dependencies of task ``ts`` that ``dst`` lacks (cheapest holder)."""
        total = 0.0
        for dts in ts.dependencies:
            holders = dts.who_has or ()
            if not holders or any(ws.address == dst for ws in holders):
                continue
            nbytes = dts.get_nbytes()
            total += min(self.predict(nbytes, ws.address, dst) for ws in holders)
        return total

    # ------------------------------------------------------------ observation
    def observe(
        self,
        dst: str,
        src: str,
        nbytes: int,
        duration: float,
        start: float | None = None,
        now: float | None = None,
    ) -> None:
        """Record one finished transfer: score both models' predictions, then learn from it.

        The prediction scored is the one the model would have made when the
        transfer started (``start``): from what it had learned by then, not from
        the transfers that ran beside this one and were reported before it.
        ``now`` is when the report arrived (default ``time.time()``); what is
        learned from it counts from then.

        Learning is in two stages, so that the overhead is counted once: every
        transfer gives an overhead sample, ``duration - bytes / bandwidth -
        latency``; a transfer over :data:`LARGE` bytes also gives a rate
        sample, ``(duration - alpha) / bytes``.
        """
        if not (nbytes > 0 and duration > 0) or src == dst:
            return
        now = time.time() if now is None else now
        cls = self.pair_class(src, dst)
        busy = self.busy(src, dst, start)
        if start is None or start >= self.score_from:
            predicted = self.predict(nbytes, src, dst, busy, at=start)
            dask_bw = getattr(self.scheduler, "bandwidth", 0) or PRIORS["unknown"][0]
            err = abs(predicted - duration) / duration
            dask_err = abs(nbytes / dask_bw - duration) / duration
            self.errors.append(err)
            self.dask_errors.append(dask_err)
            if nbytes >= LARGE:
                self.large_errors.append(err)
                self.dask_large_errors.append(dask_err)
            self.recent.append(
                (src, dst, cls, nbytes, duration, predicted, nbytes / dask_bw, start, busy)
            )
        bw, _ = self.bandwidth(src, dst, cls)
        overhead = max(0.0, duration - nbytes / bw - self.priors[cls][1])
        self.overhead.add(overhead, now)
        if busy is not None:
            self.overhead_busy[busy].add(overhead, now)
        if nbytes >= LARGE:
            self.rates[cls].add(max(_MIN_RATE, (duration - self.alpha(cls, busy)) / nbytes), now)
            self._bw_at = -1.0
        self.transfers[cls] += 1
        self.observed += 1
        self.observed_bytes[cls] += int(nbytes)

    def reset_errors(self, since: float | None = None) -> None:
        """Forget the scored errors (not what the model learned): e.g. after a warm-up.

        Only the transfers that start at ``since`` or later (``time.time()``
        seconds; default now) are scored from then on. A transfer that started
        before, and is reported after, is still learned from.
        """
        for q in (self.errors, self.dask_errors, self.large_errors, self.dask_large_errors):
            q.clear()
        self.recent.clear()
        self.score_from = time.time() if since is None else float(since)

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state: per-class bandwidth/alpha and the median errors."""
        classes = {}
        bandwidths = self._bandwidths()
        for cls in CLASSES:
            bw, source = bandwidths[cls]
            classes[cls] = {
                "bandwidth": bw,
                "bandwidth_source": source,
                "alpha": self.alpha(cls),
                "alpha_source": "observed" if self.overhead.n else "prior",
                "transfers": self.transfers[cls],
                "bytes": self.observed_bytes[cls],
            }

        def median(values: deque[float]) -> float | None:
            return statistics.median(values) if values else None

        return {
            "transfers_observed": self.observed,
            "median_error": median(self.errors),
            "dask_median_error": median(self.dask_errors),
            "large_transfers": len(self.large_errors),
            "median_error_large": median(self.large_errors),
            "dask_median_error_large": median(self.dask_large_errors),
            "dask_bandwidth": float(getattr(self.scheduler, "bandwidth", 0) or 0),
            "classes": classes,
        }


class TopologyExtension(SchedulerPlugin):
    """Scheduler side of the topology: worker labels and the :class:`TransferCostModel`.

    Installs the handler ``oxigdal_topology(worker, labels)`` (a running worker's
    labels) and the worker-stream handler ``oxigdal_transfers(worker, records)``
    (finished transfers ``[source, bytes, seconds]``).

    Parameters
    ----------
    priors : dict, optional
        ``{class: (bandwidth bytes/s, alpha s)}`` for :class:`TransferCostModel`.
    """

    name = NAME
    idempotent = True

    def __init__(self, priors: dict | None = None) -> None:
        self.priors = priors
        self.scheduler: Any = None
        self.model: TransferCostModel | None = None
        self.pending: dict[str, dict[str, str]] = {}
        self.bad_reports = 0
        self.placed_held = 0  # released held tasks pinned by cost (place_released)

    async def start(self, scheduler: Any) -> None:
        """Install the handlers."""
        if self.scheduler is not scheduler:
            self._setup(scheduler)

    def _setup(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.model = TransferCostModel(scheduler, self.priors)
        scheduler.handlers["oxigdal_topology"] = self.topology_handler
        scheduler.stream_handlers["oxigdal_transfers"] = self.transfers_handler

    def topology_handler(self, worker: str, labels: Any = None) -> str:
        """Record a worker's labels in ``WorkerState.extra``; ``"ok"`` or an error message."""
        try:
            labels = parse_labels(labels, f"worker {worker}")
        except (TypeError, ValueError) as e:
            self.bad_reports += 1
            return f"error: {e}"
        ws = self.scheduler.workers.get(worker)
        if ws is None:
            if len(self.pending) < 10_000:
                self.pending[worker] = labels
        else:
            ws.extra[EXTRA_KEY] = labels
        return "ok"

    def transfers_handler(self, worker: str, records: Any = ()) -> None:
        """Feed a worker's finished incoming transfers to the model."""
        model = self.model
        if model is None or worker not in self.scheduler.workers:
            return
        for rec in records if isinstance(records, (list, tuple)) else ():
            try:
                src, nbytes, duration, *rest = rec
                start = float(rest[0]) if rest else None
                model.observe(worker, str(src), int(nbytes), float(duration), start)
            except (TypeError, ValueError):
                self.bad_reports += 1

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        """Note each worker's processing count when a task enters or leaves it (O(1))."""
        if self.model is None or (start != "processing" and finish != "processing"):
            return
        addr = kwargs.get("worker")
        if finish == "processing":
            ts = self.scheduler.tasks.get(key)
            if ts is not None and ts.processing_on is not None:
                addr = ts.processing_on.address
        ws = self.scheduler.workers.get(addr) if addr else None
        if ws is not None:
            self.model.note_processing(addr, len(ws.processing))

    def add_worker(self, scheduler: Any, worker: str) -> None:
        """Apply labels that arrived before the worker's registration."""
        labels = self.pending.pop(worker, None)
        if labels is not None:
            scheduler.workers[worker].extra[EXTRA_KEY] = labels

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        """Forget pending labels."""
        self.pending.pop(worker, None)

    def snapshot(self) -> dict[str, Any]:
        """Labels per worker, the model's state and the error medians."""
        out = self.model.snapshot() if self.model is not None else {}
        out["workers"] = {
            addr: worker_labels(ws) for addr, ws in sorted(self.scheduler.workers.items())
        }
        out["bad_reports"] = self.bad_reports
        out["placed_held"] = self.placed_held
        return out


def _extension(scheduler: Any) -> TopologyExtension | None:
    ext = scheduler.plugins.get(NAME)
    return ext if isinstance(ext, TopologyExtension) else None


def topology_status(scheduler: Any) -> dict[str, Any] | None:
    """The topology snapshot for ``dox.status`` / ``/metrics``; ``None`` when not installed.

    Parameters
    ----------
    scheduler : distributed.Scheduler

    Returns
    -------
    dict or None
        ``workers`` (labels), ``classes`` (bandwidth, alpha, their sources, transfers,
        bytes), ``transfers_observed``, ``median_error``, ``dask_median_error``,
        ``dask_bandwidth``.
    """
    ext = _extension(scheduler)
    return ext.snapshot() if ext is not None else None


def dependency_costs(scheduler: Any, ts: Any, addresses: Any) -> dict[str, float] | None:
    """Predicted seconds to bring ``ts``'s missing dependencies to each address.

    ``None`` when the topology extension is not installed (callers keep
    Dask's own criterion).

    Parameters
    ----------
    scheduler : distributed.Scheduler
    ts : distributed.scheduler.TaskState
    addresses : iterable of str
        Candidate workers.

    Returns
    -------
    dict or None
    """
    ext = _extension(scheduler)
    if ext is None or ext.model is None:
        return None
    return {a: ext.model.dependency_cost(ts, a) for a in addresses}


#: Most ``dependencies x candidate workers`` one release may rank (beyond it, Dask places).
_PLACE_BUDGET = 200_000


def place_released(scheduler: Any, recs: dict) -> int:
    """Pin held tasks that a policy releases to their cheapest worker, by transfer cost.

    Called by :meth:`dask_oxigdal.scheduling.holds.Holds.transitions` on every
    release (``Quota``, ``Gang``, ...): each task in ``recs`` going from
    ``no-worker`` to ``waiting`` with no restriction of its own and with
    dependencies in memory is pinned, loosely, to the running worker with the
    smallest ``occupancy / threads + predicted seconds to fetch its missing
    dependencies``: Dask's own objective, with this model's cost in place of
    its flat ``bytes / 100 MB/s``. Workers with an idle thread are ranked
    first, as ``Locality`` does. The tasks of one release are placed in
    turn, each taking a thread and adding its expected duration to its worker. Tasks that
    ``Locality`` or ``ShuffleAdmission`` pinned already, root tasks, and
    releases larger than the budget are left to Dask. Does nothing without
    the topology extension.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    recs : dict
        ``{key: finish state}`` about to be passed to ``scheduler.transitions``.

    Returns
    -------
    int
        How many tasks were pinned.
    """
    ext = _extension(scheduler)
    if ext is None or ext.model is None:
        return 0
    tasks = scheduler.tasks
    todo = []
    work = 0
    for key, finish in recs.items():
        if finish != "waiting":
            continue
        ts = tasks.get(key)
        if (
            ts is None
            or ts.state != "no-worker"
            or not ts.dependencies
            or ts.worker_restrictions
            or ts.host_restrictions
            or ts.resource_restrictions
        ):
            continue
        todo.append(ts)
        work += len(ts.dependencies)
    workers = list(scheduler.running)
    if not todo or not workers or work * len(workers) > _PLACE_BUDGET:
        return 0
    from dask.utils import parse_timedelta

    from dask_oxigdal.scheduling._dask import idle_threads, prefix_estimate

    unknown = parse_timedelta(dask.config.get("distributed.scheduler.unknown-task-duration"))
    added: dict[str, float] = {}
    free = {ws.address: idle_threads(ws) for ws in workers}
    model = ext.model
    for ts in todo:
        if any(not dts.who_has for dts in ts.dependencies):
            continue  # an input is not in memory: Dask will wait for it anyway
        # workers with an idle thread first (as Locality does): Dask's occupancy of a
        # long-running task shrinks as it runs, so a busy holder would look free
        candidates = [ws for ws in workers if free[ws.address] > 0] or workers
        target = min(
            candidates,
            key=lambda ws: (
                (ws.occupancy + added.get(ws.address, 0.0)) / max(1, ws.nthreads)
                + model.dependency_cost(ts, ws.address),
                ws.address,
            ),
        )
        duration = prefix_estimate(ts.prefix) if ts.prefix is not None else None
        added[target.address] = added.get(target.address, 0.0) + (duration or unknown)
        free[target.address] -= 1
        ts.worker_restrictions = {target.address}
        ts.loose_restrictions = True
        ext.placed_held += 1
    return sum(1 for ts in todo if ts.worker_restrictions)


def assign_by_cost(scheduler: Any, members: list, workers: list) -> list:
    """Which of a gang's chosen worker slots each member takes, by transfer cost.

    ``Gang`` decides the set of slots (its placement: spread, pack, away from
    a restart); this only decides which member goes to which of them. The
    members with the most dependency bytes choose first, each taking the slot
    with the lowest predicted cost of fetching its missing dependencies.
    Without the topology extension, or beyond the budget, the order is kept.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    members : list of distributed.scheduler.TaskState
    workers : list of distributed.scheduler.WorkerState
        One slot per member (a worker appears once per thread it gives).

    Returns
    -------
    list of distributed.scheduler.WorkerState
        ``workers`` reordered: entry ``i`` is member ``i``'s worker.
    """
    ext = _extension(scheduler)
    work = sum(len(ts.dependencies) for ts in members)
    if (
        ext is None
        or ext.model is None
        or len(members) != len(workers)
        or not work
        or work * len(workers) > _PLACE_BUDGET
    ):
        return list(workers)
    model = ext.model
    order = sorted(
        range(len(members)),
        key=lambda i: (-sum(d.get_nbytes() for d in members[i].dependencies), i),
    )
    free = list(workers)
    out: list = [None] * len(members)
    for i in order:
        costs: dict[str, float] = {}
        for ws in free:
            if ws.address not in costs:
                costs[ws.address] = model.dependency_cost(members[i], ws.address)
        j = min(range(len(free)), key=lambda j: (costs[free[j].address], j))
        out[i] = free.pop(j)
        if members[i].dependencies:
            ext.placed_held += 1
    return out


def install(scheduler: Any, priors: dict | None = None) -> TopologyExtension:
    """Install :class:`TopologyExtension` on a scheduler (scheduler side, idempotent).

    Parameters
    ----------
    scheduler : distributed.Scheduler
    priors : dict, optional

    Returns
    -------
    TopologyExtension
    """
    ext = _extension(scheduler)
    if ext is None:
        ext = TopologyExtension(priors)
        ext._setup(scheduler)
        scheduler.add_plugin(ext)
    return ext


def register(client: Any, labels: Any = None, priors: dict | None = None) -> Any:
    """Install the topology extension on the scheduler, then the worker plugin on every worker.

    Parameters
    ----------
    client : distributed.Client
    labels : str or mapping, optional
        Labels for every worker (usually each worker's environment gives its own).
    priors : dict, optional
        ``{class: (bandwidth bytes/s, alpha s)}``.

    Returns
    -------
    None or awaitable
        An awaitable with an asynchronous client.
    """
    from dask_oxigdal.placement.topology import TopologyWorkerPlugin

    worker_plugin = TopologyWorkerPlugin(labels)

    async def _register() -> None:
        await client.register_plugin(TopologyExtension(priors))
        await client.register_plugin(worker_plugin)

    if client.asynchronous:
        return _register()
    client.sync(_register)
    return None


def metric_families(topology: dict[str, Any]) -> list[Any]:
    """Prometheus metric families of a :func:`topology_status` snapshot (for ``/metrics``).

    Parameters
    ----------
    topology : dict
        ``topology_status(scheduler)``.

    Returns
    -------
    list of dask_oxigdal.monitoring.metrics.MetricFamily
        ``transfer_bandwidth_bytes`` and ``transfer_alpha_seconds`` per pair
        class, ``transfers_observed``, and ``transfer_prediction_median_error``
        per model (``ours``, ``dask``).
    """
    from dask_oxigdal.monitoring.metrics import MetricFamily

    bw = MetricFamily(
        "transfer_bandwidth_bytes",
        "gauge",
        "Bandwidth the transfer-cost model uses per worker-pair class (bytes/s)",
        ("pair_class",),
    )
    alpha = MetricFamily(
        "transfer_alpha_seconds",
        "gauge",
        "Per-transfer latency the transfer-cost model uses per worker-pair class",
        ("pair_class",),
    )
    for cls, c in sorted((topology.get("classes") or {}).items()):
        bw.samples.append(((cls,), float(c["bandwidth"])))
        alpha.samples.append(((cls,), float(c["alpha"])))
    err = MetricFamily(
        "transfer_prediction_median_error",
        "gauge",
        "Median relative error of predicted worker-to-worker transfer times (last 1000)",
        ("model",),
    )
    for model, key in (("ours", "median_error"), ("dask", "dask_median_error")):
        if topology.get(key) is not None:
            err.samples.append(((model,), float(topology[key])))
    observed = MetricFamily(
        "transfers_observed",
        "counter",
        "Worker-to-worker transfers reported to the transfer-cost model",
        (),
        [((), float(topology.get("transfers_observed") or 0))],
    )
    return [bw, alpha, err, observed]
