"""Fault-tolerance policies of the scheduler extension.

- :class:`~dask_oxigdal.fault.retry.Retries`: retries with exponential backoff,
  jitter and a cap, preferring a different worker;
- :class:`~dask_oxigdal.fault.quarantine.Quarantine`: a per-worker circuit
  breaker (failures, hung workers, half-open probe);
- :class:`~dask_oxigdal.fault.straggler.Stragglers`: straggler detection and
  rescheduling away from the slow worker;
- :class:`~dask_oxigdal.fault.checkpoint.Checkpoint`: checkpoint/resume of
  tasks annotated ``checkpoint=True`` in an fsspec store
  (:class:`~dask_oxigdal.fault.checkpoint.CheckpointStore`);
- :func:`~dask_oxigdal.fault.hedging.hedge` (``dox.hedge``): a hedged copy of a
  leaf task, decided on the client.

See docs/fault-tolerance.md.
"""

from __future__ import annotations

import sys

from dask_oxigdal._moved import FunctionsFirst

__all__ = ["Checkpoint", "CheckpointStore", "Quarantine", "Retries", "Stragglers", "hedge"]


def __getattr__(name: str):
    # lazy: the scheduler imports only the policies it is configured with
    if name == "Retries":
        from dask_oxigdal.fault.retry import Retries

        return Retries
    if name == "Quarantine":
        from dask_oxigdal.fault.quarantine import Quarantine

        return Quarantine
    if name == "Stragglers":
        from dask_oxigdal.fault.straggler import Stragglers

        return Stragglers
    if name == "hedge":  # the function; dask_oxigdal.fault.hedge is a deprecated module path
        from dask_oxigdal.fault.hedging import hedge

        return hedge
    if name in ("Checkpoint", "CheckpointStore"):
        from dask_oxigdal.fault import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(name)


# ``dask_oxigdal.fault.hedge`` stays the function when the old module path is imported
sys.modules[__name__].__class__ = FunctionsFirst
