"""dask-oxigdal: multi-tenant geospatial processing on Dask."""

from dask_oxigdal import config as _config  # noqa: F401  (registers the oxigdal config defaults)
from dask_oxigdal._version import __version__
from dask_oxigdal.annotations import annotate
from dask_oxigdal.monitoring import progress
from dask_oxigdal.scheduling import register, status
from dask_oxigdal.spectral import INDICES, ndvi, spectral_index

__all__ = [
    "INDICES",
    "__version__",
    "annotate",
    "ndvi",
    "progress",
    "register",
    "spectral_index",
    "status",
]
