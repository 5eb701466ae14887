"""What the extension calls when it starts: the Prometheus collector and the HTTP routes."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dask_oxigdal.scheduling.extension import OxigdalScheduling

__all__ = ["attach"]

logger = logging.getLogger(__name__)


def attach(extension: OxigdalScheduling) -> dict[str, bool]:
    """Register the Prometheus collector and the ``/oxigdal/`` routes for ``extension``.

    Never raises: observability must not stop the scheduler extension from
    starting; failures are logged.

    Parameters
    ----------
    extension : OxigdalScheduling
        A started extension.

    Returns
    -------
    dict
        ``{"prometheus": bool, "http": bool}``: what was set up.
    """
    from dask_oxigdal.monitoring.http import add_routes
    from dask_oxigdal.monitoring.prometheus import register_collector

    done = {"prometheus": False, "http": False}
    try:
        done["prometheus"] = register_collector(extension) is not None
    except Exception:
        logger.exception("dask-oxigdal: could not register the Prometheus collector")
    try:
        assert extension.scheduler is not None
        done["http"] = add_routes(extension.scheduler)
    except Exception:
        logger.exception("dask-oxigdal: could not add the /oxigdal/ routes")
    return done
