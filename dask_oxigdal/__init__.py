"""dask-oxigdal: multi-tenant geospatial processing on Dask."""

from dask_oxigdal import config as _config  # noqa: F401  (registers the oxigdal config defaults)
from dask_oxigdal._version import __version__

__all__ = ["__version__"]
