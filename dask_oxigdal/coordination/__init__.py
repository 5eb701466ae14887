"""Raft-replicated policy state (pysyncobj).

- :mod:`.state`: the state machine (:class:`OxigdalState`), typed and
  validated commands with request ids;
- :mod:`.journal`: checksummed journal and dump, verified at start-up;
- :mod:`.bridge`: :class:`Coordinator`, the scheduler extension's handle
  (batched asynchronous writes, a local read view);
- :mod:`.node`: settings, security checks and the node runner behind
  ``dask oxigdal coordinator``;
- :mod:`.linearizability`: a small checker for register histories.
"""

from dask_oxigdal.coordination.bridge import Coordinator, StateView
from dask_oxigdal.coordination.journal import CorruptJournalError
from dask_oxigdal.coordination.node import CoordinatorSettings
from dask_oxigdal.coordination.state import OxigdalState, make_command

__all__ = [
    "Coordinator",
    "CoordinatorSettings",
    "CorruptJournalError",
    "OxigdalState",
    "StateView",
    "make_command",
]
