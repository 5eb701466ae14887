"""``PrometheusCollector``: the ``dask_oxigdal_*`` metrics on the scheduler's ``/metrics``.

distributed's ``/metrics`` handler serves ``prometheus_client.REGISTRY`` (the
process-global registry), where it registers its own collectors once per
process. :func:`register_collector` does the same for ours: one collector per
process, pointing at the most recently started extension (as distributed's
collectors point at the most recent scheduler). ``prometheus_client`` stays
optional: without it nothing is registered.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dask.config

from dask_oxigdal.monitoring.metrics import metric_families

if TYPE_CHECKING:
    from dask_oxigdal.scheduling.extension import OxigdalScheduling

__all__ = ["PrometheusCollector", "register_collector"]

logger = logging.getLogger(__name__)

_COLLECTOR: PrometheusCollector | None = None


class PrometheusCollector:
    """A ``prometheus_client`` collector of the extension's metrics.

    Parameters
    ----------
    extension : OxigdalScheduling
        The extension to read (held weakly; :meth:`attach` points the
        collector at another one).
    """

    def __init__(self, extension: OxigdalScheduling) -> None:
        self._ref = weakref.ref(extension)
        namespace = dask.config.get("distributed.dashboard.prometheus.namespace", "dask")
        self.prefix = "_".join(p for p in (namespace, "oxigdal") if p)

    def attach(self, extension: OxigdalScheduling) -> None:
        """Read ``extension`` from now on."""
        self._ref = weakref.ref(extension)

    @property
    def extension(self) -> OxigdalScheduling | None:
        """The extension read, or ``None`` once it is gone."""
        return self._ref()

    def describe(self) -> list:
        """Nothing to describe up front (the metric set depends on the policies)."""
        return []

    def collect(self) -> Iterator[Any]:
        """Yield one metric family per :class:`~dask_oxigdal.monitoring.metrics.MetricFamily`."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ext = self.extension
        if ext is None or ext.scheduler is None:
            return
        # with oxigdal.auth, /metrics (served by distributed, unauthenticated) carries
        # no per-tenant series: those are in the token-protected state.json
        private = getattr(ext, "auth", None) is not None
        for fam in metric_families(ext.snapshot()):
            if private and "tenant" in fam.labels:
                continue
            cls = CounterMetricFamily if fam.kind == "counter" else GaugeMetricFamily
            metric = cls(f"{self.prefix}_{fam.name}", fam.documentation, labels=list(fam.labels))
            for labels, value in fam.samples:
                metric.add_metric(list(labels), value)
            yield metric


def register_collector(extension: OxigdalScheduling) -> PrometheusCollector | None:
    """Register (once per process) or re-point the collector at ``extension``.

    Parameters
    ----------
    extension : OxigdalScheduling

    Returns
    -------
    PrometheusCollector or None
        ``None`` when ``prometheus_client`` is not installed.
    """
    global _COLLECTOR
    try:
        import prometheus_client
    except ImportError:
        return None
    if _COLLECTOR is None:
        _COLLECTOR = PrometheusCollector(extension)
        prometheus_client.REGISTRY.register(_COLLECTOR)
    else:
        _COLLECTOR.attach(extension)
    return _COLLECTOR
