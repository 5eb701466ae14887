"""Identity, RBAC and a tamper-evident audit for the scheduler extension (``oxigdal.auth``).

- :mod:`~dask_oxigdal.auth.identity`: principals from TLS certificates or HMAC
  tokens (:class:`TokenSecurity` on the client side);
- :mod:`~dask_oxigdal.auth.rbac`: the principal table and what each may use;
- :mod:`~dask_oxigdal.auth.guard`: the scheduler handlers and client streams
  (tables, :class:`~dask_oxigdal.auth.handlers.Identity` and the stream
  filter in :mod:`~dask_oxigdal.auth.handlers`);
- :mod:`~dask_oxigdal.auth.admission`: deadline jobs within their tenant's
  entitlement plus idle capacity;
- :mod:`~dask_oxigdal.auth.web`: the ``/oxigdal/`` page's login and session cookie;
- :mod:`~dask_oxigdal.auth.audit`: the HMAC-chained JSON-lines audit log;
- :mod:`~dask_oxigdal.auth.testing`: certificates for demos and tests.

See docs/security.md.
"""

from __future__ import annotations

from dask_oxigdal.auth.audit import AuditLog, verify
from dask_oxigdal.auth.identity import TokenSecurity, make_token
from dask_oxigdal.auth.rbac import ROLES, Principal, parse_principals

__all__ = [
    "ROLES",
    "AuditLog",
    "Principal",
    "TokenSecurity",
    "make_token",
    "parse_principals",
    "verify",
]
