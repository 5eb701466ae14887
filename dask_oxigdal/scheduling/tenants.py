"""Tenant settings: one :class:`TenantSettings` per tenant, parsed once.

A tenant's settings come from ``oxigdal.tenants.<tenant>`` (a bare weight or
a mapping with ``weight``, ``max-tasks``, ``guaranteed-slots``), from the
``tenants=`` option of :func:`~dask_oxigdal.client.register` and from the
scheduler preload's ``--oxigdal-tenant``; the coordinator records them and
gives them back after a restart (:func:`recorded_tenants`). They are merged
(:func:`merge_tenants`) and parsed (:meth:`TenantSettings.parse`) here, and
nowhere else.

The weight is checked here (a positive finite number). ``max-tasks`` and
``guaranteed-slots`` are kept as given: the ``Quota`` policy checks them when
it is configured, so a setting nobody enforces never fails a registration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dask_oxigdal.exceptions import ConfigError

__all__ = [
    "TENANT_KEYS",
    "TenantSettings",
    "merge_tenants",
    "parse_tenants",
    "recorded_tenants",
    "resolve_tenant",
]

#: Keys of a tenant's settings mapping (``oxigdal.tenants.<tenant>``).
TENANT_KEYS = frozenset(
    {"weight", "max-tasks", "max_tasks", "guaranteed-slots", "guaranteed_slots"}
)


@dataclass(frozen=True)
class TenantSettings:
    """One tenant's settings.

    Parameters
    ----------
    weight : float
        Fair-share weight (> 0).
    max_tasks : object, optional
        Most tasks of the tenant in ``processing`` (checked by ``Quota``).
    guaranteed_slots : object, optional
        Slots the tenant always gets when it has work (checked by ``Quota``).
    """

    weight: float = 1.0
    max_tasks: Any = None
    guaranteed_slots: Any = None

    @classmethod
    def parse(cls, name: str, value: Any) -> TenantSettings:
        """Parse ``oxigdal.tenants.<name>``: a weight or a settings mapping.

        Parameters
        ----------
        name : str
            Tenant name (for error messages).
        value : number or mapping
            ``2`` or ``{"weight": 2, "max-tasks": 10, "guaranteed-slots": 1}``.

        Returns
        -------
        TenantSettings

        Raises
        ------
        ConfigError
            An unknown key, or a weight that is not a positive finite number.
        """
        max_tasks = guaranteed = None
        if isinstance(value, Mapping):
            unknown = sorted(str(k) for k in value if str(k) not in TENANT_KEYS)
            if unknown:
                raise ConfigError(
                    f"oxigdal.tenants.{name}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                    "valid settings: weight, max-tasks, guaranteed-slots"
                )
            max_tasks = value.get("max-tasks", value.get("max_tasks"))
            guaranteed = value.get("guaranteed-slots", value.get("guaranteed_slots"))
            value = value.get("weight", 1)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"oxigdal.tenants.{name}: weight {value!r} is not a number "
                "(give a positive number, or a mapping with a 'weight' key)"
            )
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"oxigdal.tenants.{name}: weight {value!r} must be > 0")
        return cls(float(value), max_tasks, guaranteed)

    def options(self) -> dict[str, Any]:
        """The settings as an ``oxigdal.tenants.<tenant>`` mapping (unset keys left out)."""
        out: dict[str, Any] = {"weight": self.weight}
        if self.max_tasks is not None:
            out["max-tasks"] = self.max_tasks
        if self.guaranteed_slots is not None:
            out["guaranteed-slots"] = self.guaranteed_slots
        return out

    def record(self) -> dict[str, Any]:
        """The keyword arguments of ``Coordinator.tenant_set``."""
        return {
            "weight": self.weight,
            "max_tasks": self.max_tasks,
            "guaranteed_slots": self.guaranteed_slots,
        }


def parse_tenants(tenants: Mapping[str, Any] | None) -> dict[str, TenantSettings]:
    """``{tenant: TenantSettings}`` from an ``oxigdal.tenants`` mapping.

    Parameters
    ----------
    tenants : mapping or None
        ``{tenant: weight or settings mapping}``.

    Returns
    -------
    dict

    Raises
    ------
    ConfigError
        See :meth:`TenantSettings.parse`.
    """
    return {str(name): TenantSettings.parse(name, value) for name, value in (tenants or {}).items()}


def recorded_tenants(coordinator: Any) -> dict[str, dict[str, Any]]:
    """Tenant settings recorded by the coordinator, as ``oxigdal.tenants`` mappings.

    Parameters
    ----------
    coordinator : dask_oxigdal.coordination.Coordinator or None

    Returns
    -------
    dict
        Empty without a ready coordinator.
    """
    if coordinator is None or not coordinator.ready:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for tenant, rec in coordinator.state.tenants.items():
        entry = {}
        for key, name in (
            ("weight", "weight"),
            ("max_tasks", "max-tasks"),
            ("guaranteed_slots", "guaranteed-slots"),
        ):
            if rec.get(key) is not None:
                entry[name] = rec[key]
        out[str(tenant)] = entry
    return out


def merge_tenants(recorded: Mapping[str, Any], *layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``oxigdal.tenants`` layers over the recorded settings (later layers win).

    A bare weight replaces only the weight of a recorded mapping.

    Parameters
    ----------
    recorded : mapping
        :func:`recorded_tenants`.
    *layers : mapping or None
        The config's ``oxigdal.tenants``, then the ``tenants=`` option.

    Returns
    -------
    dict
        ``{tenant: weight or mapping}``, ready for :func:`parse_tenants`.
    """
    tenants: dict[str, Any] = {str(k): v for k, v in recorded.items()}
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer or {})
    for name, value in merged.items():
        # configured settings win over the recorded ones they name
        previous = tenants.get(str(name), {})
        tenants[str(name)] = (
            {**previous, **value}
            if isinstance(value, Mapping)
            else ({**previous, "weight": value} if previous else value)
        )
    return tenants


def resolve_tenant(
    tenant: str | None,
    weights: Mapping[str, float],
    default: str,
    strict: bool,
    *,
    list_tenants: bool = True,
) -> str:
    """The accounting tenant of a task's ``tenant`` annotation.

    Parameters
    ----------
    tenant : str or None
        The annotation value.
    weights : mapping
        ``{tenant: weight}`` of the known tenants.
    default : str
        The default tenant.
    strict : bool
        ``oxigdal.scheduling.strict``: an unknown tenant is an error.
    list_tenants : bool, default True
        Name the configured tenants in the error (not with ``oxigdal.auth``:
        a principal never learns the other tenants).

    Returns
    -------
    str
        ``tenant`` if known, else ``default`` (``strict`` rejects it instead).

    Raises
    ------
    ValueError
        Unknown tenant with ``strict``.
    """
    if tenant is None:
        return default
    if tenant in weights:
        return tenant
    if strict:
        if not list_tenants:
            raise ValueError(f"unknown tenant {tenant!r} (oxigdal.scheduling.strict is on)")
        raise ValueError(
            f"unknown tenant {tenant!r} (oxigdal.scheduling.strict is on); "
            f"configured tenants: {', '.join(sorted(weights))}"
        )
    return default
