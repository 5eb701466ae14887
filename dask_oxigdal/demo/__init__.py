"""The ``dask oxigdal demo`` scenario: one multi-tenant day, on plain Dask and with dask-oxigdal.

- :mod:`~dask_oxigdal.demo.scene`: the synthetic six-band scene, its tiles
  and their NDVI statistics;
- :mod:`~dask_oxigdal.demo.workloads`: the three tenants' tasks and when
  they arrive;
- :mod:`~dask_oxigdal.demo.sampler`: the killer thread, and the figures of a
  run computed from its task trace;
- :mod:`~dask_oxigdal.demo.run`: the clusters and :func:`run_demo`;
- :mod:`~dask_oxigdal.demo.secure`: ``--secure``, TLS clusters with
  ``oxigdal.auth`` and one principal per tenant;
- :mod:`~dask_oxigdal.demo.report`: the side-by-side table, PNG and HTML.
"""

from __future__ import annotations

from dask_oxigdal.demo.report import format_summary, write_report
from dask_oxigdal.demo.run import (
    ensure_extension,
    parse_demo_deadline,
    policy_counters,
    run_demo,
)
from dask_oxigdal.demo.sampler import jain
from dask_oxigdal.demo.scene import (
    BANDS,
    NODATA,
    SCENE_BOUNDS,
    countries_path,
    plan_tiles,
    process_tile,
    summarise,
    synthetic_window,
)
from dask_oxigdal.demo.workloads import DEMO_TENANTS, GANG_SIZE, LATE_TENANT

__all__ = [
    "BANDS",
    "DEMO_TENANTS",
    "GANG_SIZE",
    "LATE_TENANT",
    "NODATA",
    "SCENE_BOUNDS",
    "countries_path",
    "ensure_extension",
    "format_summary",
    "jain",
    "parse_demo_deadline",
    "plan_tiles",
    "policy_counters",
    "process_tile",
    "run_demo",
    "summarise",
    "synthetic_window",
    "write_report",
]
