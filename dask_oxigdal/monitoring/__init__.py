"""Observability: metrics, Prometheus collector, alerts, the ``/oxigdal/`` page, progress."""

from dask_oxigdal.monitoring.progress import progress

__all__ = ["progress"]
