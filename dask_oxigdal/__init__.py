"""dask-oxigdal: multi-tenant geospatial processing on Dask.

Importing the package is light: it registers the ``oxigdal`` config defaults
and sets ``OMP_WAIT_POLICY``, nothing more. The public names below load their modules on first access
(PEP 562), so numba, pandas, pyarrow, scipy and the geo libraries are only
imported by the processes that use a kernel or a front end (see "Import cost"
in docs/architecture.md).
"""

from __future__ import annotations

import importlib as _importlib
import sys as _sys
from typing import TYPE_CHECKING

# config: registers the oxigdal config defaults; kernels._parallel: sets OMP_WAIT_POLICY
# for this process and its children (it imports no numba)
from dask_oxigdal import config as _config  # noqa: F401
from dask_oxigdal._moved import FunctionsFirst as _FunctionsFirst
from dask_oxigdal._version import __version__
from dask_oxigdal.kernels import _parallel  # noqa: F401

if TYPE_CHECKING:
    from dask_oxigdal.analytics.geofencing import geofence
    from dask_oxigdal.analytics.kmeans import KMeans
    from dask_oxigdal.annotations import annotate
    from dask_oxigdal.cache import cached
    from dask_oxigdal.fault.hedging import hedge
    from dask_oxigdal.monitoring.progressbar import progress
    from dask_oxigdal.neighbors import knn
    from dask_oxigdal.scheduling.extension import register, status
    from dask_oxigdal.spectral import INDICES, ndvi, spectral_index
    from dask_oxigdal.vector import shuffle, spatial_shuffle
    from dask_oxigdal.workflows import (
        gather,
        resume_workflow,
        sleep,
        start_workflow,
        step,
        workflow,
        workflows,
    )

__all__ = [
    "INDICES",
    "KMeans",
    "__version__",
    "annotate",
    "cached",
    "gather",
    "geofence",
    "hedge",
    "knn",
    "ndvi",
    "progress",
    "register",
    "resume_workflow",
    "shuffle",
    "sleep",
    "spatial_shuffle",
    "spectral_index",
    "start_workflow",
    "status",
    "step",
    "workflow",
    "workflows",
]

#: public name -> the module that defines it, imported on first access
_LAZY = {
    "INDICES": "dask_oxigdal.spectral",
    "KMeans": "dask_oxigdal.analytics.kmeans",
    "annotate": "dask_oxigdal.annotations",
    "cached": "dask_oxigdal.cache",
    "geofence": "dask_oxigdal.analytics.geofencing",
    "hedge": "dask_oxigdal.fault.hedging",
    "knn": "dask_oxigdal.neighbors",
    "ndvi": "dask_oxigdal.spectral",
    "progress": "dask_oxigdal.monitoring.progressbar",
    "register": "dask_oxigdal.scheduling.extension",
    "shuffle": "dask_oxigdal.vector",
    "spatial_shuffle": "dask_oxigdal.vector",
    "spectral_index": "dask_oxigdal.spectral",
    "status": "dask_oxigdal.scheduling.extension",
    # durable workflows (docs/workflows.md)
    "gather": "dask_oxigdal.workflows",
    "resume_workflow": "dask_oxigdal.workflows",
    "sleep": "dask_oxigdal.workflows",
    "start_workflow": "dask_oxigdal.workflows",
    "step": "dask_oxigdal.workflows",
    "workflow": "dask_oxigdal.workflows",
    "workflows": "dask_oxigdal.workflows",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(_FunctionsFirst):
    """The package's module type: ``dox.shuffle``, ``dox.knn`` and ``dox.workflows`` stay the functions.

    Importing a submodule binds the package attribute of the same name to it;
    for the public names (``__all__``) that binding is skipped
    (:class:`dask_oxigdal._moved.FunctionsFirst`): the submodules stay in
    ``sys.modules``, where ``from dask_oxigdal.workflows import ...`` finds them.
    ``dask_oxigdal.shuffle`` and ``dask_oxigdal.knn`` are deprecated aliases of
    :mod:`dask_oxigdal.tables` and :mod:`dask_oxigdal.neighbors`.
    """

    def __reduce__(self) -> tuple:
        # by reference, as (cloud)pickle does for a plain module: a task whose
        # function refers to ``dox`` unpickles to the worker's own package
        return _importlib.import_module, (self.__name__,)


_sys.modules[__name__].__class__ = _Package
