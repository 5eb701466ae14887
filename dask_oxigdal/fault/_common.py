"""Helpers shared by the fault-tolerance policies."""

from __future__ import annotations

import math
import numbers
from typing import Any

from dask_oxigdal.annotations import _seconds
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling.settings import setting

__all__ = ["duration", "in_charge", "number", "option", "unwatch", "watch"]


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


def in_charge(policy: Any) -> bool:
    """Whether ``policy`` is enabled and its extension is still the installed one.

    The extension does not tell its policies when it is removed from the
    scheduler (``unregister_scheduler_plugin``), replaced, or when it disables
    one of them: a policy that must give something back (paused workers, held
    tasks) watches this.
    """
    ext = policy.extension
    return (
        ext is not None
        and ext.scheduler is not None
        and ext.scheduler.plugins.get(ext.name) is ext
        and ext._policy_name(policy) not in ext.disabled
    )


def watch(policy: Any, name: str, callback: Any) -> Any:
    """Start ``callback`` every ``oxigdal.scheduling.interval`` as ``periodic_callbacks[name]``.

    A callback of the same name left by a previous extension is stopped first.

    Returns
    -------
    tornado.ioloop.PeriodicCallback
    """
    from tornado.ioloop import PeriodicCallback

    ext = policy.extension
    pcs = ext.scheduler.periodic_callbacks
    old = pcs.pop(name, None)
    if old is not None:
        old.stop()
    pc = pcs[name] = PeriodicCallback(callback, max(ext.interval, 0.05) * 1000.0)
    pc.start()
    return pc


def unwatch(scheduler: Any, name: str, pc: Any) -> None:
    """Stop ``pc``; remove it from ``scheduler.periodic_callbacks`` if it is still ``name``."""
    if pc is None:
        return
    pc.stop()
    if scheduler is not None and scheduler.periodic_callbacks.get(name) is pc:
        del scheduler.periodic_callbacks[name]
