"""The dask-oxigdal scheduler extension and its policies."""

from dask_oxigdal.scheduling.extension import OxigdalScheduling, register, status
from dask_oxigdal.scheduling.fairshare import FairShare
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo
from dask_oxigdal.scheduling.quota import Quota

__all__ = [
    "FairShare",
    "OxigdalScheduling",
    "Quota",
    "SchedulingPolicy",
    "TaskInfo",
    "register",
    "status",
]
