"""Observability: metrics, Prometheus collector, alerts, the ``/oxigdal/`` page, progress.

``progress`` loads :mod:`dask_oxigdal.monitoring.progressbar` on first use (PEP 562);
``dask_oxigdal.monitoring.progress`` is the function, and the module path of that
name a deprecated alias of :mod:`~dask_oxigdal.monitoring.progressbar`.
"""

from __future__ import annotations

import sys

from dask_oxigdal._moved import FunctionsFirst

__all__ = ["progress"]


def __getattr__(name: str):
    if name == "progress":
        from dask_oxigdal.monitoring.progressbar import progress

        globals()["progress"] = progress
        return progress
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = FunctionsFirst
