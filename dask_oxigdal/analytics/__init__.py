"""Analytics front ends: distributed k-means (:class:`KMeans`) and streaming geofencing.

The names are resolved lazily so that importing this package does not import
scikit-learn, pandas or numba.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KMeans", "geofence"]


def __getattr__(name: str) -> Any:
    if name == "KMeans":
        from dask_oxigdal.analytics.kmeans import KMeans

        return KMeans
    if name == "geofence":
        from dask_oxigdal.analytics.geofencing import geofence

        return geofence
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
