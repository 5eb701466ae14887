"""Reading and checking ``oxigdal.*`` settings: one helper per kind, each raising ``ConfigError``.

- :func:`setting`: ``oxigdal.<key>`` from dask config, else the shipped
  default (``dask.config`` can lose the defaults ``import dask_oxigdal``
  merged in: ``distributed.utils_test`` resets the config to a snapshot taken
  before our import; the extension then still runs with the shipped ones);
- :func:`duration`: a duration in seconds (a number, a ``timedelta`` or a
  string such as ``"500ms"``, ``"10min"``), finite and ``>= minimum``;
- :func:`number`: a finite number (or integer) in a range.

An explicit value (a constructor argument) wins over the config; ``None``
means "read the config". Every error names the setting, the value and what
is valid.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import dask.config

from dask_oxigdal.exceptions import ConfigError

__all__ = ["duration", "number", "setting"]

_MISSING = object()


@functools.cache
def _defaults() -> dict[str, Any]:
    from dask_oxigdal import config as _config

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


def duration(key: str, value: Any = None, *, minimum: float = 0.0) -> float:
    """The duration setting ``oxigdal.<key>`` (or ``value``) in seconds.

    Parameters
    ----------
    key : str
        Dotted key below ``oxigdal`` (``"scheduling.interval"``), named in errors.
    value : number, str or timedelta, optional
        An explicit value; ``None`` reads the config.
    minimum : float, default 0
        Smallest valid value (seconds).

    Returns
    -------
    float

    Raises
    ------
    ConfigError
        Not a duration, not finite, or below ``minimum``.
    """
    from dask_oxigdal.annotations import _seconds

    raw = setting(key, value)
    try:
        seconds = _seconds(f"oxigdal.{key}", raw)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if seconds < minimum:
        raise ConfigError(f"oxigdal.{key}={raw!r} must be >= {minimum:g} s")
    return seconds


def number(
    key: str,
    value: Any = None,
    *,
    minimum: float,
    maximum: float = math.inf,
    integer: bool = False,
    strict_minimum: bool = False,
) -> float:
    """The numeric setting ``oxigdal.<key>`` (or ``value``), checked against a range.

    Parameters
    ----------
    key : str
        Dotted key below ``oxigdal``, named in errors.
    value : number, optional
        An explicit value; ``None`` reads the config.
    minimum, maximum : float
        The valid range (``maximum`` included).
    integer : bool, default False
        Require an integer (returned as ``int``).
    strict_minimum : bool, default False
        ``minimum`` itself is not valid.

    Returns
    -------
    float or int

    Raises
    ------
    ConfigError
        Not a (finite) number or integer, or out of range.
    """
    raw = setting(key, value)
    ok_type = isinstance(raw, numbers.Integral if integer else numbers.Real) and not isinstance(
        raw, bool
    )
    if not ok_type or not math.isfinite(float(raw)):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"oxigdal.{key}={raw!r} is not valid: expected {kind}")
    low_ok = raw > minimum if strict_minimum else raw >= minimum
    if not low_ok or raw > maximum:
        op = ">" if strict_minimum else ">="
        top = "" if maximum == math.inf else f" and <= {maximum:g}"
        raise ConfigError(f"oxigdal.{key}={raw!r} is not valid: must be {op} {minimum:g}{top}")
    return int(raw) if integer else float(raw)
