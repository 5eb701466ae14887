"""Names of ``dox.cached`` entries across the cluster: private, per-tenant and shared keys.

A worker cache holds three kinds of keys:

- a plain key: an entry of the default tenant (every entry of a cluster
  without tenants);
- ``TenantKey(tenant, key)``: an entry of another tenant, which no other
  tenant reads (:mod:`dask_oxigdal.isolation`);
- ``SharedKey(key)``: an entry stored with ``dox.cached(..., shared=True)``,
  which every tenant reads, and which is charged to the tenants that use it
  in equal parts.

On the wire (cache reports, the directory, peer fetches) a ``str`` key is
written as itself, ``[tenant, key]`` or ``["", key]`` (no tenant is named
``""``: tenant names are non-empty).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from dask_oxigdal.isolation import TenantKey

__all__ = ["SHARED", "SharedKey", "from_reported", "reported", "tenant_of"]

#: The tenant field of a shared entry on the wire.
SHARED = ""


class SharedKey:
    """A ``dox.cached`` key every tenant shares (``shared=True``).

    Equal only to another ``SharedKey`` of the same key: never to a plain key,
    a tuple or a ``TenantKey``.

    Parameters
    ----------
    key : hashable
        The key the tasks chose.
    """

    __slots__ = ("_hash", "key")

    def __init__(self, key: Any) -> None:
        self.key = key
        self._hash = hash((SharedKey, key))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return type(other) is SharedKey and other.key == self.key  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"SharedKey({self.key!r})"

    def __reduce__(self) -> tuple:
        return (SharedKey, (self.key,))


def reported(key: Hashable) -> Any:
    """The wire form of a cache key: ``str``, ``[tenant, str]``, ``["", str]``, or ``None``.

    Parameters
    ----------
    key : hashable
        A worker cache key.

    Returns
    -------
    str, list or None
        ``None`` for keys that are not strings (they are never reported).
    """
    if isinstance(key, str):
        return key
    if type(key) is TenantKey and isinstance(key.key, str):
        return [key.tenant, key.key]
    if type(key) is SharedKey and isinstance(key.key, str):
        return [SHARED, key.key]
    return None


def from_reported(wire: Any) -> Hashable | None:
    """The cache key of a wire form (the inverse of :func:`reported`); ``None`` if malformed."""
    if isinstance(wire, str):
        return wire
    if (
        isinstance(wire, (list, tuple))
        and len(wire) == 2
        and isinstance(wire[0], str)
        and isinstance(wire[1], str)
    ):
        return SharedKey(wire[1]) if wire[0] == SHARED else TenantKey(wire[0], wire[1])
    return None


def tenant_of(key: Hashable, default: str) -> str | None:
    """The tenant that owns ``key`` (``default`` for a plain key, ``None`` when shared)."""
    if type(key) is TenantKey:
        return key.tenant
    if type(key) is SharedKey:
        return None
    return default
