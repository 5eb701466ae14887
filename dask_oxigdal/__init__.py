"""dask-oxigdal: multi-tenant geospatial processing on Dask."""

from dask_oxigdal import config as _config  # noqa: F401  (registers the oxigdal config defaults)
from dask_oxigdal._version import __version__
from dask_oxigdal.spectral import INDICES, ndvi, spectral_index

__all__ = ["INDICES", "__version__", "ndvi", "spectral_index"]
