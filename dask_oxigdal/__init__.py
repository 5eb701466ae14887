"""dask-oxigdal: multi-tenant geospatial processing on Dask."""

from dask_oxigdal import config as _config  # noqa: F401  (registers the oxigdal config defaults)
from dask_oxigdal._version import __version__
from dask_oxigdal.annotations import annotate
from dask_oxigdal.cache import cached
from dask_oxigdal.fault.hedge import hedge
from dask_oxigdal.knn import knn
from dask_oxigdal.monitoring import progress
from dask_oxigdal.scheduling import register, status
from dask_oxigdal.spectral import INDICES, ndvi, spectral_index
from dask_oxigdal.vector import shuffle, spatial_shuffle

__all__ = [
    "INDICES",
    "__version__",
    "annotate",
    "cached",
    "hedge",
    "knn",
    "ndvi",
    "progress",
    "register",
    "shuffle",
    "spatial_shuffle",
    "spectral_index",
    "status",
]
