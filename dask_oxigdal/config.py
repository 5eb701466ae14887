"""The ``oxigdal`` dask-config namespace.

Importing :mod:`dask_oxigdal` loads ``oxigdal.yaml`` as dask-config defaults, so
``dask.config.get("oxigdal....")`` works everywhere the package is installed:
client, scheduler and workers. Users override settings the usual dask ways.
"""

from __future__ import annotations

import os
from typing import Any

import dask.config
import distributed.config  # noqa: F401  (distributed's defaults first: we extend its nanny env)
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULTS_PATH = os.path.join(HERE, "oxigdal.yaml")
SCHEMA_PATH = os.path.join(HERE, "oxigdal-schema.yaml")


def _load_yaml(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def load_defaults() -> dict[str, Any]:
    """Read ``oxigdal.yaml``.

    Returns
    -------
    dict
        The defaults, with the top-level ``oxigdal`` (and ``distributed``) keys.
    """
    return _load_yaml(DEFAULTS_PATH)


def load_schema() -> dict[str, Any]:
    """Read ``oxigdal-schema.yaml``.

    Returns
    -------
    dict
        The JSON schema of the namespace, written as YAML.
    """
    return _load_yaml(SCHEMA_PATH)


def _apply_worker_numba_threads(defaults: dict[str, Any]) -> None:
    # Keep the nanny's environment in step with oxigdal.kernels.worker-numba-threads
    # when a user overrides only our key.
    threads = dask.config.get("oxigdal.kernels.worker-numba-threads", default=None)
    if threads is not None:
        env = defaults["distributed"]["nanny"]["pre-spawn-environ"]
        env["NUMBA_NUM_THREADS"] = int(threads)


def register_defaults() -> None:
    """Merge the package defaults into dask's config (idempotent).

    User settings keep precedence over these defaults, as with every dask
    extension that ships a yaml file.
    """
    defaults = load_defaults()
    _apply_worker_numba_threads(defaults)
    dask.config.update_defaults(defaults)


def get(key: str, value: Any = None) -> Any:
    """Read ``oxigdal.<key>`` unless ``value`` is given.

    Parameters
    ----------
    key : str
        Key below the ``oxigdal`` namespace, dotted (``"kernels.parallel-min-elements"``).
    value : object, optional
        An explicit value (typically a constructor argument); ``None`` means
        "read the config".

    Returns
    -------
    object
        ``value`` if it is not ``None``, else the configured setting.
    """
    if value is not None:
        return value
    return dask.config.get(f"oxigdal.{key}")


register_defaults()
