"""Raft-replicated policy state (pysyncobj).

- :mod:`.state`: the state machine (:class:`OxigdalState`);
- :mod:`.commands`: typed and validated commands with request ids;
- :mod:`.journal`: the HMAC'd journal pysyncobj writes, verified at start-up;
- :mod:`.records`: the journal key, HMAC'd files and the full dump;
- :mod:`.plain`: records as plain JSON data (never a pickle);
- :mod:`.bridge`: :class:`Coordinator`, the scheduler extension's handle
  (batched asynchronous writes, a local read view);
- :mod:`.settings`: :class:`CoordinatorSettings` and where the group secret comes from;
- :mod:`.addresses`: loopback checks, free ports, the embedded group's address;
- :mod:`.node`: the pysyncobj configuration, starting and stopping a node, and
  the node runner behind ``dask oxigdal coordinator``;
- :mod:`.client`: a test/benchmark client of a group of node processes;
- :mod:`.linearizability`: a small checker for register histories.
"""

from dask_oxigdal.coordination.bridge import Coordinator, StateView
from dask_oxigdal.coordination.journal import CorruptJournalError
from dask_oxigdal.coordination.settings import CoordinatorSettings
from dask_oxigdal.coordination.state import OxigdalState, make_command

__all__ = [
    "Coordinator",
    "CoordinatorSettings",
    "CorruptJournalError",
    "OxigdalState",
    "StateView",
    "make_command",
]
