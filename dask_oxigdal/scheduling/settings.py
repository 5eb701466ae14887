"""Read ``oxigdal.*`` settings on the scheduler, falling back to the package defaults.

``dask.config`` can lose the defaults that ``import dask_oxigdal`` merged in
(for example ``distributed.utils_test`` resets the config to a snapshot taken
before our import). The extension then still runs with the shipped defaults.
"""

from __future__ import annotations

import functools
from typing import Any

import dask.config

from dask_oxigdal import config as _config

__all__ = ["setting"]

_MISSING = object()


@functools.cache
def _defaults() -> dict[str, Any]:
    return _config.load_defaults()["oxigdal"]


def setting(key: str, value: Any = None) -> Any:
    """``value`` if not ``None``, else ``oxigdal.<key>`` from dask config or the shipped default.

    Parameters
    ----------
    key : str
        Dotted key below ``oxigdal`` (``"scheduling.queues"``).
    value : object, optional
        An explicit value, returned as is unless ``None``.

    Returns
    -------
    object
    """
    if value is not None:
        return value
    found = dask.config.get(f"oxigdal.{key}", default=_MISSING)
    if found is not _MISSING:
        return found
    node: Any = _defaults()
    for part in key.split("."):
        node = node[part]
    return node
