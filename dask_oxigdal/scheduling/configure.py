"""The extension's settings: its options over ``oxigdal.*``, checked once at start.

:func:`resolve` turns the options of
:class:`~dask_oxigdal.scheduling.extension.OxigdalScheduling` (``None``
meaning "read the config") into a :class:`Resolved` record, and
:func:`make_policy` builds one policy from its ``{class: dotted.path,
**kwargs}`` entry, naming an unknown option and the valid ones.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling.policy import SchedulingPolicy
from dask_oxigdal.scheduling.settings import setting
from dask_oxigdal.scheduling.tenants import (
    TenantSettings,
    merge_tenants,
    parse_tenants,
    recorded_tenants,
)
from dask_oxigdal.settings import duration

__all__ = ["Resolved", "import_class", "make_policy", "resolve"]


@dataclass
class Resolved:
    """The extension's checked settings (see ``OxigdalScheduling``'s parameters)."""

    tenants: dict[str, TenantSettings]
    default_tenant: str
    strict: bool
    queues: list[str]
    default_queue: str
    interval: float
    usage_half_life: float
    policies: list[SchedulingPolicy]


def resolve(options: Mapping[str, Any], coordinator: Any = None) -> Resolved:
    """Check the extension's options over ``oxigdal.*`` and build its policies.

    Parameters
    ----------
    options : mapping
        ``OxigdalScheduling.options``.
    coordinator : Coordinator, optional
        Its recorded tenant settings are the lowest layer.

    Returns
    -------
    Resolved

    Raises
    ------
    ConfigError
        A bad value, naming it and the valid choices.
    """
    o = options
    tenants = parse_tenants(
        merge_tenants(recorded_tenants(coordinator), setting("tenants"), o["tenants"])
    )
    default_tenant = str(o["default_tenant"] or setting("scheduling.default-tenant"))
    strict = o["strict"]
    strict = bool(setting("scheduling.strict") if strict is None else strict)
    queues = o["queues"] if o["queues"] is not None else setting("scheduling.queues")
    if not queues or not all(isinstance(q, str) and q for q in queues):
        raise ConfigError(
            f"oxigdal.scheduling.queues={queues!r}: give a non-empty list of queue names"
        )
    if len(set(queues)) != len(queues):
        raise ConfigError(f"oxigdal.scheduling.queues={queues!r} has duplicates")
    default_queue = o["default_queue"] or setting("scheduling.default-queue")
    if default_queue not in queues:
        raise ConfigError(
            f"oxigdal.scheduling.default-queue={default_queue!r} is not one of "
            f"the queues {list(queues)}"
        )
    interval = duration("scheduling.interval", o["interval"] or setting("scheduling.interval"))
    half_life = duration(
        "scheduling.usage-half-life",
        o["usage_half_life"] or setting("scheduling.usage-half-life"),
    )
    specs = o["policies"] if o["policies"] is not None else setting("scheduling.policies")
    return Resolved(
        tenants=tenants,
        default_tenant=default_tenant,
        strict=strict,
        queues=list(queues),
        default_queue=default_queue,
        interval=interval,
        usage_half_life=half_life,
        policies=[make_policy(spec) for spec in specs or ()],
    )


def import_class(path: str) -> type:
    """The object at ``"package.module.Name"``.

    Parameters
    ----------
    path : str

    Returns
    -------
    type

    Raises
    ------
    ConfigError
        Not a dotted path, or it cannot be imported.
    """
    module, _, attr = path.rpartition(".")
    if not module:
        raise ConfigError(
            f"oxigdal.scheduling.policies: class {path!r} is not a dotted path "
            "(e.g. dask_oxigdal.scheduling.fairshare.FairShare)"
        )
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"oxigdal.scheduling.policies: cannot import {path!r}: {e}") from e


def make_policy(spec: Any) -> SchedulingPolicy:
    """A policy from its ``{class: dotted.path, **kwargs}`` entry (or the policy itself).

    Parameters
    ----------
    spec : mapping or SchedulingPolicy

    Returns
    -------
    SchedulingPolicy

    Raises
    ------
    ConfigError
        Not a mapping with ``class``, not a policy class, or an unknown option
        (the message lists the valid ones).
    """
    if isinstance(spec, SchedulingPolicy):
        return spec
    if not isinstance(spec, Mapping) or "class" not in spec:
        raise ConfigError(
            f"oxigdal.scheduling.policies: entry {spec!r} is not a mapping with a 'class' key"
        )
    kwargs = {str(k).replace("-", "_"): v for k, v in spec.items() if k != "class"}
    cls = import_class(spec["class"])
    if not (isinstance(cls, type) and issubclass(cls, SchedulingPolicy)):
        raise ConfigError(
            f"oxigdal.scheduling.policies: {spec['class']!r} is not a SchedulingPolicy"
        )
    try:
        accepted = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: let the call decide
        accepted = None
    if accepted is not None and not any(p.kind is p.VAR_KEYWORD for p in accepted):
        valid = sorted(
            p.name.replace("_", "-")
            for p in accepted
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )
        unknown = sorted(k for k in kwargs if k.replace("_", "-") not in valid)
        if unknown:
            raise ConfigError(
                f"oxigdal.scheduling.policies: {spec['class']!r} has no option "
                f"{', '.join(repr(k.replace('_', '-')) for k in unknown)}; "
                f"valid options: {', '.join(valid) or '(none)'}"
            )
    return cls(**kwargs)
