"""The dask-oxigdal scheduler extension and its policies."""

from dask_oxigdal.scheduling.deadline import Deadline
from dask_oxigdal.scheduling.extension import OxigdalScheduling, register, status
from dask_oxigdal.scheduling.fairshare import FairShare
from dask_oxigdal.scheduling.gang import Gang
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo
from dask_oxigdal.scheduling.quota import Quota

__all__ = [
    "Deadline",
    "FairShare",
    "Gang",
    "OxigdalScheduling",
    "Quota",
    "SchedulingPolicy",
    "TaskInfo",
    "register",
    "status",
]
