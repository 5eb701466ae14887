"""Helpers shared by the fault-tolerance policies: ``oxigdal.<section>.<name>`` settings.

Thin spellings of :mod:`dask_oxigdal.settings` with the key split in two.
"""

from __future__ import annotations

import math
from typing import Any

from dask_oxigdal import settings as _settings

__all__ = ["duration", "number", "option"]


def option(section: str, name: str, value: Any) -> Any:
    """``value`` if not ``None``, else ``oxigdal.<section>.<name>`` (config or shipped default)."""
    return _settings.setting(f"{section}.{name}", value)


def duration(section: str, name: str, value: Any, *, minimum: float = 0.0) -> float:
    """A duration setting in seconds, validated (``>= minimum``)."""
    return _settings.duration(f"{section}.{name}", value, minimum=minimum)


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
    return _settings.number(
        f"{section}.{name}",
        value,
        minimum=minimum,
        maximum=maximum,
        integer=integer,
        strict_minimum=strict_minimum,
    )
