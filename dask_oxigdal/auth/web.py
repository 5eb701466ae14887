"""Who is calling the ``/oxigdal/`` page and ``state.json`` (``oxigdal.auth``).

Two credentials are accepted on HTTP requests:

- ``Authorization: Bearer <token>``: an HMAC token of a principal
  (:func:`dask_oxigdal.auth.identity.make_token`), for scripts;
- the ``oxigdal_session`` cookie, for the browser page: ``POST
  /oxigdal/login`` with the form field ``token`` answers with the cookie
  when the token is valid. The cookie never holds the token: it is
  ``EXPIRY:MAC:PRINCIPAL`` with ``MAC = HMAC-SHA256(key, "EXPIRY:PRINCIPAL")``
  under a random key the scheduler draws at start (so a scheduler restart
  logs everyone out). It is ``HttpOnly`` and ``SameSite=Strict``.

Tokens are only read from a request header or a POST body, never from a
URL, so they reach neither the browser's history nor an access log.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING

from dask_oxigdal.auth.handlers import Identity
from dask_oxigdal.auth.identity import verify_token

if TYPE_CHECKING:
    from dask_oxigdal.auth.guard import AuthGuard

__all__ = ["COOKIE", "SESSION_SECONDS", "WebSessions"]

#: Name of the page's session cookie.
COOKIE = "oxigdal_session"
#: How long a page session lasts (seconds).
SESSION_SECONDS = 8 * 3600


class WebSessions:
    """Bearer tokens and signed session cookies of one scheduler's HTTP routes.

    Parameters
    ----------
    guard : AuthGuard
        Its principals, token secrets and audit log.
    """

    def __init__(self, guard: AuthGuard) -> None:
        self.guard = guard
        self._key = secrets.token_bytes(32)
        self.seconds = SESSION_SECONDS
        self.logins = 0
        self.refused = 0

    def _mac(self, expiry: int, name: str) -> str:
        return hmac.new(self._key, f"{expiry}:{name}".encode(), hashlib.sha256).hexdigest()

    def _identity(self, name: str | None) -> Identity | None:
        principal = self.guard.principals.get(name) if name else None
        return Identity(principal, f"token:{name}", None) if principal is not None else None

    def login(
        self, token: str | None, peer: str | None = None
    ) -> tuple[str | None, Identity | None]:
        """Check a token posted to the login route; audit the outcome.

        Parameters
        ----------
        token : str or None
            The ``token`` form field.
        peer : str, optional
            The remote address (audited).

        Returns
        -------
        (cookie value or None, Identity or None)
            ``(None, None)`` for an invalid token.
        """
        name = verify_token(token, self.guard.secrets) if isinstance(token, str) else None
        ident = self._identity(name)
        audit = self.guard.audit.append
        if ident is None:
            self.refused += 1
            claimed = token.partition(":")[0][:64] if isinstance(token, str) else None
            audit("http-login", "denied", principal=claimed, peer=peer)
            return None, None
        self.logins += 1
        audit("http-login", "allowed", principal=ident.name, credential=ident.credential, peer=peer)
        expiry = int(time.time()) + self.seconds
        return f"{expiry}:{self._mac(expiry, ident.name)}:{ident.name}", ident

    def identify(self, authorization: str | None, cookie: str | None) -> Identity | None:
        """The principal of an HTTP request, or ``None``.

        Parameters
        ----------
        authorization : str or None
            The ``Authorization`` header (``Bearer <token>``).
        cookie : str or None
            The value of the :data:`COOKIE` cookie.

        Returns
        -------
        Identity or None
        """
        if authorization and authorization.startswith("Bearer "):
            token = authorization[len("Bearer ") :].strip()
            return self._identity(verify_token(token, self.guard.secrets))
        if not cookie:
            return None
        expiry_text, _, rest = cookie.partition(":")
        mac, _, name = rest.partition(":")
        try:
            expiry = int(expiry_text)
        except ValueError:
            return None
        if expiry < time.time() or not hmac.compare_digest(mac, self._mac(expiry, name)):
            return None
        return self._identity(name)
