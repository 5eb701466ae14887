"""The principal table (``oxigdal.auth.principals``) and what each principal may do.

A principal is the CN of a client's or worker's TLS certificate, or the id
of an HMAC token (:mod:`dask_oxigdal.auth.identity`). Its entry says which
tenants and queues its tasks may claim, which roles it has and how tight a
deadline it may ask for::

    oxigdal:
      auth:
        enabled: true
        principals:
          alice:  {tenants: [team-a], queues: [batch, background], roles: [user]}
          carol:  {tenants: [team-a, team-c], roles: [user], min-deadline: 10m}
          ops:    {roles: [admin]}
          worker: {roles: [worker]}

Roles:

``user``
    Submits tasks for its own tenants (the first one is the default of
    unannotated tasks), sees only its own tenants in ``dox.status``.
``tenant-admin``
    A user whose tasks may use every queue and any deadline within its tenants.
``admin``
    Every operation: any tenant, replacing or removing the extension,
    ``run``/``run_on_scheduler``, restart, retiring workers, events on the
    ``oxigdal``/``all`` topics, the full status.
``worker``
    Registers workers and nannies, reports cache contents. Clients opened
    from inside tasks (``get_client``/``worker_client``) connect with the
    worker's credentials, so a ``worker`` principal may submit for any
    tenant: code that runs on a worker can read the worker's key anyway
    (docs/security.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dask.utils import parse_timedelta

from dask_oxigdal.exceptions import ConfigError

__all__ = ["ROLES", "Principal", "parse_principals"]

#: The roles a principal may have.
ROLES = ("user", "tenant-admin", "admin", "worker")

#: Keys of one principal's entry.
PRINCIPAL_KEYS = ("tenants", "queues", "roles", "min-deadline")


@dataclass(frozen=True)
class Principal:
    """One entry of the principal table.

    Parameters
    ----------
    name : str
        The certificate CN or token id.
    tenants : tuple of str
        Tenants its tasks may claim; the first is the default tenant.
    queues : tuple of str or None
        Queues its tasks may claim (``None``: every queue).
    roles : frozenset of str
        Subset of :data:`ROLES`.
    min_deadline : float or None
        Tightest relative deadline (seconds from submission) its tasks may
        claim; ``None``: any deadline.
    """

    name: str
    tenants: tuple[str, ...] = ()
    queues: tuple[str, ...] | None = None
    roles: frozenset[str] = frozenset({"user"})
    min_deadline: float | None = None

    @property
    def is_admin(self) -> bool:
        """Whether the principal has the ``admin`` role."""
        return "admin" in self.roles

    @property
    def is_worker(self) -> bool:
        """Whether the principal has the ``worker`` role."""
        return "worker" in self.roles

    @property
    def unrestricted(self) -> bool:
        """Whether its tasks may claim any tenant (``admin`` or ``worker``)."""
        return "admin" in self.roles or "worker" in self.roles

    @property
    def default_tenant(self) -> str | None:
        """The tenant of its unannotated tasks: the first allowed tenant."""
        return self.tenants[0] if self.tenants else None

    def allowed(self) -> str:
        """``"tenants: a, b; queues: x"``: what it may use (never other principals' tenants)."""
        tenants = ", ".join(self.tenants) if self.tenants else "(none)"
        queues = ", ".join(self.queues) if self.queues is not None else "(any)"
        return f"tenants: {tenants}; queues: {queues}"

    def admit(
        self,
        tenant: str | None,
        queue: str | None,
        deadline: float | None,
        *,
        default_queue: str,
        now: float,
    ) -> tuple[str | None, str]:
        """The tenant and queue a task of this principal is accounted to.

        Parameters
        ----------
        tenant, queue : str or None
            The task's ``tenant``/``queue`` annotations (``None``: absent).
        deadline : float or None
            The task's absolute deadline (UNIX seconds), if any.
        default_queue : str
            The extension's default queue.
        now : float
            The current time.

        Returns
        -------
        (tenant, queue)
            ``tenant`` is ``None`` only for an unannotated task of an
            unrestricted principal without tenants (the extension's default).

        Raises
        ------
        PermissionError
            A tenant, queue or deadline it may not claim; the message names the
            principal and what it may use.
        """
        if tenant is None:
            tenant = self.default_tenant
            if tenant is None and not self.unrestricted:
                raise PermissionError(
                    f"principal {self.name!r} has no tenant to submit tasks for ({self.allowed()})"
                )
        elif tenant not in self.tenants and not self.unrestricted:
            raise PermissionError(
                f"principal {self.name!r} may not use tenant {tenant!r}; it may use "
                f"{self.allowed()}"
            )
        if self.queues is not None and "tenant-admin" not in self.roles:
            if queue is None:
                queue = default_queue if default_queue in self.queues else self.queues[0]
            elif queue not in self.queues:
                raise PermissionError(
                    f"principal {self.name!r} may not use queue {queue!r}; it may use "
                    f"{self.allowed()}"
                )
        elif queue is None:
            queue = default_queue
        if (
            deadline is not None
            and self.min_deadline is not None
            and not self.unrestricted
            and "tenant-admin" not in self.roles
            and deadline - now < self.min_deadline
        ):
            raise PermissionError(
                f"principal {self.name!r} may not claim a deadline closer than "
                f"{self.min_deadline:g}s (asked for {deadline - now:.3g}s from now)"
            )
        return tenant, queue


def _names(principal: str, key: str, value: Any, valid: tuple[str, ...] | None = None) -> tuple:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(
            f"oxigdal.auth.principals.{principal}.{key}={value!r}: give a list of names"
        )
    out = []
    for v in value:
        if not isinstance(v, str) or not v:
            raise ConfigError(
                f"oxigdal.auth.principals.{principal}.{key}: {v!r} is not a non-empty string"
            )
        if valid is not None and v not in valid:
            raise ConfigError(
                f"oxigdal.auth.principals.{principal}.{key}: unknown {key[:-1]} {v!r}; "
                f"valid: {', '.join(valid)}"
            )
        out.append(v)
    return tuple(out)


def parse_principals(
    table: Mapping[str, Any] | None, queues: list[str] | None = None
) -> dict[str, Principal]:
    """Validate ``oxigdal.auth.principals``.

    Parameters
    ----------
    table : mapping
        ``{name: {tenants: [...], queues: [...], roles: [...], min-deadline: ...}}``.
    queues : list of str, optional
        The extension's queues: a principal's queues must be among them.

    Returns
    -------
    dict
        ``{name: Principal}``.

    Raises
    ------
    ConfigError
        A malformed entry, naming the value and the valid choices.
    """
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ConfigError(
            f"oxigdal.auth.principals={table!r}: give a mapping of principal name -> settings"
        )
    out: dict[str, Principal] = {}
    for name, entry in table.items():
        name = str(name)
        entry = {} if entry is None else entry
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"oxigdal.auth.principals.{name}={entry!r}: give a mapping with keys "
                f"{', '.join(PRINCIPAL_KEYS)}"
            )
        unknown = sorted(str(k) for k in entry if str(k).replace("_", "-") not in PRINCIPAL_KEYS)
        if unknown:
            raise ConfigError(
                f"oxigdal.auth.principals.{name}: unknown setting(s) "
                f"{', '.join(map(repr, unknown))}; valid settings: {', '.join(PRINCIPAL_KEYS)}"
            )
        e = {str(k).replace("_", "-"): v for k, v in entry.items()}
        tenants = _names(name, "tenants", e.get("tenants") or [])
        q = e.get("queues")
        qs = _names(name, "queues", q, tuple(queues) if queues else None) if q is not None else None
        roles = frozenset(_names(name, "roles", e.get("roles") or ["user"], ROLES))
        md = e.get("min-deadline")
        min_deadline = None
        if md is not None:
            try:
                min_deadline = float(parse_timedelta(md))
            except (TypeError, ValueError, KeyError) as err:
                raise ConfigError(
                    f"oxigdal.auth.principals.{name}.min-deadline={md!r} is not a duration "
                    f"(e.g. 10m): {err}"
                ) from None
            if not (min_deadline >= 0 and math.isfinite(min_deadline)):
                raise ConfigError(
                    f"oxigdal.auth.principals.{name}.min-deadline={md!r} must be >= 0"
                )
        out[name] = Principal(name, tenants, qs, roles, min_deadline)
    return out
