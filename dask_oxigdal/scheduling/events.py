"""Events on the ``oxigdal`` topic, and the coordinator's audit log."""

from __future__ import annotations

import logging
import time
from typing import Any

from dask_oxigdal.scheduling.holds import NAME

__all__ = ["emit"]

logger = logging.getLogger(__name__)


def emit(ext: Any, kind: str, **fields: Any) -> None:
    """Publish ``{"kind": kind, **fields}`` on the ``oxigdal`` event topic.

    Clients see it with ``client.get_events("oxigdal")`` and
    ``client.subscribe_topic("oxigdal", handler)``; it is also logged at
    INFO level on the ``dask_oxigdal.scheduling.events`` logger. With a
    coordinator, every event but the coordinator's own is also appended to
    its replicated audit log (best effort: skipped while the write queue is
    half full).

    Parameters
    ----------
    ext : OxigdalScheduling
        The extension (its ``scheduler`` and ``coordinator``).
    kind : str
        Event kind, e.g. ``"deadline-missed"``.
    **fields
        msgpack-serialisable values.
    """
    msg = {"kind": kind, **fields}
    logger.info("oxigdal event %s", msg)
    if ext.scheduler is not None:
        ext.scheduler.log_event(NAME, msg)
    coord = ext.coordinator
    if coord is not None and not kind.startswith("coordinator-"):
        # the coordinator's append-only audit log (best effort, batched)
        alert = fields.get("alert")
        if not (isinstance(alert, str) and alert.startswith("coordinator-")):
            try:
                coord.audit({**msg, "at": time.time()})
            except Exception:
                logger.debug("oxigdal: audit entry %s not recorded", kind, exc_info=True)
