"""Helpers shared by the fault-tolerance policies."""

from __future__ import annotations

import math
import numbers
from typing import Any

from dask_oxigdal.annotations import _seconds
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling.settings import setting

__all__ = ["duration", "number", "option"]


def option(section: str, name: str, value: Any) -> Any:
    """``value`` if not ``None``, else ``oxigdal.<section>.<name>`` (config or shipped default)."""
    return setting(f"{section}.{name}", value)


def duration(section: str, name: str, value: Any, *, minimum: float = 0.0) -> float:
    """A duration setting in seconds, validated (``>= minimum``)."""
    raw = option(section, name, value)
    try:
        seconds = _seconds(f"oxigdal.{section}.{name}", raw)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if seconds < minimum:
        raise ConfigError(f"oxigdal.{section}.{name}={raw!r} must be >= {minimum:g} s")
    return seconds


def number(
    section: str,
    name: str,
    value: Any,
    *,
    minimum: float,
    maximum: float = math.inf,
    integer: bool = False,
    strict_minimum: bool = False,
) -> float:
    """A numeric setting, validated against ``[minimum, maximum]``."""
    raw = option(section, name, value)
    ok_type = isinstance(raw, numbers.Integral if integer else numbers.Real) and not isinstance(
        raw, bool
    )
    if not ok_type or not math.isfinite(float(raw)):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"oxigdal.{section}.{name}={raw!r} is not valid: expected {kind}")
    low_ok = raw > minimum if strict_minimum else raw >= minimum
    if not low_ok or raw > maximum:
        op = ">" if strict_minimum else ">="
        top = "" if maximum == math.inf else f" and <= {maximum:g}"
        raise ConfigError(
            f"oxigdal.{section}.{name}={raw!r} is not valid: must be {op} {minimum:g}{top}"
        )
    return int(raw) if integer else float(raw)
