"""Transfer-cost model: seconds to move ``n`` bytes from one worker to another.

``cost(n, src, dst) = alpha(pair) + n / bandwidth(pair)``

Each pair of workers falls in a *class*: how their topology labels relate,
``same-host``, ``same-rack``, ``cross-rack``, ``cross-zone`` or ``unknown``
(see :func:`~dask_oxigdal.placement.topology.relation`).

- ``bandwidth(pair)``: Dask's own measurements ``Scheduler.bandwidth_workers``
  (Dask measures transfers over 1 MB), pooled per class: the median over the
  class's measured pairs, so that one noisy pair cannot invert the topology's
  order; else the class's prior, scaled by the median ratio of measured
  to prior bandwidth over the measured classes (so that an unmeasured class
  keeps its place in the topology's order next to measured ones).
- ``alpha(class)``: the per-transfer cost (latency, request, serialisation):
  an exponentially weighted mean of ``observed - bytes / bandwidth`` over the
  transfers the workers report (``Worker.transfer_incoming_log``, through
  :class:`~dask_oxigdal.placement.topology.TopologyWorkerPlugin`); else the
  class's prior.

Each reported transfer is first *predicted* with the model as it stood, then
added to it: the relative error ``|predicted - observed| / observed`` of our
model and of Dask's (``bytes / Scheduler.bandwidth``, what
``Scheduler.get_comm_cost`` uses) are kept for the last 1000 transfers;
:func:`topology_status` reports their medians.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from dask_oxigdal.placement.topology import EXTRA_KEY, parse_labels, relation, worker_labels

__all__ = [
    "CLASSES",
    "PRIORS",
    "TopologyExtension",
    "TransferCostModel",
    "dependency_costs",
    "install",
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


class _Residual:
    """Exponentially weighted mean of ``observed - bytes / bandwidth`` (the per-transfer cost)."""

    __slots__ = ("decay", "mean", "n")

    def __init__(self, decay: float = 0.9) -> None:
        self.decay = decay
        self.mean = 0.0
        self.n = 0

    def add(self, residual: float) -> None:
        residual = max(0.0, residual)
        self.mean = (
            residual if self.n == 0 else self.decay * self.mean + (1 - self.decay) * residual
        )
        self.n += 1


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
        self.alphas = {cls: _Residual() for cls in CLASSES}
        self._pooled: dict[str, float] = {}
        self._scale = 1.0
        self._pooled_at = -1.0
        self.errors: deque[float] = deque(maxlen=_MAX_ERRORS)
        self.dask_errors: deque[float] = deque(maxlen=_MAX_ERRORS)
        self.observed = 0
        self.observed_bytes = {cls: 0 for cls in CLASSES}

    # ------------------------------------------------------------------ model
    def pair_class(self, src: str, dst: str) -> str:
        """The class of the pair (``unknown`` for a worker the scheduler does not know)."""
        workers = self.scheduler.workers
        a, b = workers.get(src), workers.get(dst)
        if a is None or b is None:
            return "unknown"
        return relation(worker_labels(a), worker_labels(b))

    def _measured(self) -> dict[str, float]:
        """Dask's measured pair bandwidths pooled per class (median), refreshed each second."""
        now = time.monotonic()
        if now - self._pooled_at >= 1.0:
            per_class: dict[str, list[float]] = {}
            for (dst, src), value in list(self.scheduler.bandwidth_workers.items()):
                if value and value > 0:
                    per_class.setdefault(self.pair_class(src, dst), []).append(float(value))
            self._pooled = {cls: statistics.median(v) for cls, v in per_class.items()}
            # how much slower (or faster) than its prior the measured network is: the
            # classes without a measurement keep their prior's place in the order
            ratios = [bw / self.priors[cls][0] for cls, bw in self._pooled.items()]
            self._scale = statistics.median(ratios) if ratios else 1.0
            self._pooled_at = now
        return self._pooled

    def bandwidth(self, src: str, dst: str, cls: str | None = None) -> tuple[float, str]:
        """``(bytes/s, source)`` of a pair: ``measured`` (Dask's, pooled per class) or ``prior``."""
        cls = cls or self.pair_class(src, dst)
        measured = self._measured().get(cls)
        if measured:
            return measured, "measured"
        return self.priors[cls][0] * self._scale, "prior"

    def alpha(self, cls: str) -> float:
        """The per-transfer cost of a class: learned from observed transfers, else the prior."""
        res = self.alphas[cls]
        return res.mean if res.n else self.priors[cls][1]

    def predict(self, nbytes: float, src: str, dst: str) -> float:
        """Seconds to move ``nbytes`` from worker ``src`` to worker ``dst`` (0 when equal)."""
        if src == dst:
            return 0.0
        cls = self.pair_class(src, dst)
        bw, _ = self.bandwidth(src, dst, cls)
        return self.alpha(cls) + nbytes / bw

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
    def observe(self, dst: str, src: str, nbytes: int, duration: float) -> None:
        """Record one finished transfer: score both models' predictions, then learn from it."""
        if not (nbytes > 0 and duration > 0) or src == dst:
            return
        cls = self.pair_class(src, dst)
        predicted = self.predict(nbytes, src, dst)
        self.errors.append(abs(predicted - duration) / duration)
        dask_bw = getattr(self.scheduler, "bandwidth", 0) or PRIORS["unknown"][0]
        self.dask_errors.append(abs(nbytes / dask_bw - duration) / duration)
        bw, _ = self.bandwidth(src, dst, cls)
        self.alphas[cls].add(duration - nbytes / bw)
        self.observed += 1
        self.observed_bytes[cls] += int(nbytes)

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state: per-class bandwidth/alpha and the median errors."""
        classes = {}
        measured = self._measured()
        for cls in CLASSES:
            res = self.alphas[cls]
            classes[cls] = {
                "bandwidth": measured.get(cls) or self.priors[cls][0] * self._scale,
                "bandwidth_source": "measured" if measured.get(cls) else "prior",
                "alpha": self.alpha(cls),
                "alpha_source": "observed" if res.n else "prior",
                "transfers": res.n,
                "bytes": self.observed_bytes[cls],
            }
        return {
            "transfers_observed": self.observed,
            "median_error": statistics.median(self.errors) if self.errors else None,
            "dask_median_error": (
                statistics.median(self.dask_errors) if self.dask_errors else None
            ),
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
                src, nbytes, duration = rec
                model.observe(worker, str(src), int(nbytes), float(duration))
            except (TypeError, ValueError):
                self.bad_reports += 1

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
