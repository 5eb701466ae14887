"""Who is on the other end of a comm: a TLS certificate's CN, or an HMAC token.

Certificates
    With ``distributed.Security`` (mutual TLS), Dask already refuses peers
    without a certificate signed by the CA. The principal is the subject CN of
    the peer certificate (``comm.extra_info["peercert"]``); a CN that is not
    in the principal table is refused.

Tokens (clusters without TLS, or on top of it)
    A token is ``ID:HEX`` where ``HEX = hmac_sha256(secret_of_ID,
    b"oxigdal-token-v1:" + ID)``; the principal is ``ID``. The scheduler holds
    the secrets, one per id, from the 0600 file ``oxigdal.auth.token-file``
    (lines ``ID SECRET``) or from ``$OXIGDAL_AUTH_TOKENS`` (``ID=SECRET,...``)
    in the scheduler's environment, never from the dask config (nannies copy
    that to every worker). Clients send the token in the comm handshake of
    every connection::

        from dask_oxigdal.auth import TokenSecurity
        client = Client(address, security=TokenSecurity("alice:9f2c..."))

    ``TokenSecurity`` is a ``distributed.Security`` (it takes the same TLS
    arguments) that adds the token to ``handshake_overrides`` in its
    connection args; ``distributed.comm.core.connect`` writes those into the
    handshake, where the scheduler reads them as ``comm.remote_info``. A
    token is a bearer credential: without TLS anyone who can read the
    traffic can replay it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from distributed import Security

from dask_oxigdal._secrets import read_secret_file as _read_secret_file
from dask_oxigdal.exceptions import ConfigError

__all__ = [
    "HANDSHAKE_KEY",
    "TOKENS_ENV",
    "TokenSecurity",
    "cert_identity",
    "load_token_secrets",
    "make_token",
    "read_secret_file",
    "verify_token",
]

#: Key of the token in the comm handshake.
HANDSHAKE_KEY = "oxigdal-token"
#: Environment variable with ``ID=SECRET,...`` token secrets (scheduler side).
TOKENS_ENV = "OXIGDAL_AUTH_TOKENS"
_TOKEN_CONTEXT = b"oxigdal-token-v1:"


def make_token(token_id: str, secret: str | bytes) -> str:
    """The token of ``token_id`` under ``secret``: ``ID:HEX``.

    Parameters
    ----------
    token_id : str
        The principal's name (no ``:``).
    secret : str or bytes
        The secret the scheduler holds for this id.

    Returns
    -------
    str
    """
    if not token_id or ":" in token_id:
        raise ValueError(f"token id {token_id!r}: give a non-empty name without ':'")
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, _TOKEN_CONTEXT + token_id.encode(), hashlib.sha256).hexdigest()
    return f"{token_id}:{mac}"


def verify_token(token: Any, secrets: dict[str, bytes]) -> str | None:
    """The token id if ``token`` is valid under ``secrets``, else ``None``.

    Parameters
    ----------
    token : object
        What the peer sent (anything: only a well-formed valid string passes).
    secrets : dict
        ``{token_id: secret}``.

    Returns
    -------
    str or None
    """
    if not isinstance(token, str) or len(token) > 512:
        return None
    token_id, sep, mac = token.partition(":")
    secret = secrets.get(token_id)
    if not sep or secret is None:
        return None
    expected = make_token(token_id, secret).partition(":")[2]
    return token_id if hmac.compare_digest(expected, mac) else None


def read_secret_file(path: str, *, name: str) -> bytes:
    """The whole content of a secret file, refusing one that others can read.

    Parameters
    ----------
    path : str
        A regular file of mode 0600 or 0400.
    name : str
        The setting that named it, for errors.

    Returns
    -------
    bytes

    Raises
    ------
    ConfigError
        Missing file, group/world permission bits, or empty.
    """
    return _read_secret_file(path, name=name)


def load_token_secrets(token_file: str | None) -> dict[str, bytes]:
    """Token secrets from ``token_file`` (lines ``ID SECRET``) and ``$OXIGDAL_AUTH_TOKENS``.

    Parameters
    ----------
    token_file : str or None
        ``oxigdal.auth.token-file``.

    Returns
    -------
    dict
        ``{token_id: secret}`` (the file wins over the environment).

    Raises
    ------
    ConfigError
        An unreadable file or a malformed line/item.
    """
    out: dict[str, bytes] = {}
    env = os.environ.get(TOKENS_ENV, "")
    for item in filter(None, (s.strip() for s in env.split(","))):
        token_id, sep, secret = item.partition("=")
        if not sep or not token_id or not secret or ":" in token_id:
            raise ConfigError(
                f"${TOKENS_ENV}: item {token_id + '=...' if sep else item!r} is not ID=SECRET"
            )
        out[token_id] = secret.encode()
    if token_file:
        data = read_secret_file(token_file, name="oxigdal.auth.token-file")
        for n, line in enumerate(data.decode().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2 or ":" in parts[0]:
                raise ConfigError(
                    f"oxigdal.auth.token-file={token_file!r} line {n}: expected 'ID SECRET'"
                )
            out[parts[0]] = parts[1].encode()
    return out


def cert_identity(comm: Any) -> tuple[str | None, str | None]:
    """``(CN, credential)`` of the peer certificate of ``comm``, or ``(None, None)``.

    ``credential`` is ``"sha256:<hex>"`` of the DER certificate when the
    socket is reachable (``comm.stream.socket``, a private attribute of
    distributed's TCP comm, guarded by a test), else ``"serial:<n>"``.

    Parameters
    ----------
    comm : distributed.comm.Comm

    Returns
    -------
    tuple
    """
    try:
        peercert = comm.extra_info.get("peercert")
    except Exception:
        return None, None
    if not peercert:
        return None, None
    cn = None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
    credential = f"serial:{peercert.get('serialNumber', '?')}"
    try:
        der = comm.stream.socket.getpeercert(binary_form=True)
        if der:
            credential = "sha256:" + hashlib.sha256(der).hexdigest()
    except Exception:
        pass
    return cn, credential


class TokenSecurity(Security):
    """A ``distributed.Security`` that sends an oxigdal token in every handshake.

    Parameters
    ----------
    token : str
        ``ID:HEX`` from :func:`make_token` (given by the cluster's operator).
    **kwargs
        ``distributed.Security`` arguments (TLS files, ``require_encryption``).

    Examples
    --------
    >>> client = Client("tcp://10.0.0.1:8786", security=TokenSecurity(token))  # doctest: +SKIP
    """

    # no __slots__: Security's repr iterates ``self.__slots__`` (its own)

    def __init__(self, token: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.oxigdal_token = token

    def get_connection_args(self, role: str) -> dict[str, Any]:
        """Security's connection args plus the token in ``handshake_overrides``."""
        args = super().get_connection_args(role)
        overrides = dict(args.get("handshake_overrides") or {})
        overrides[HANDSHAKE_KEY] = self.oxigdal_token
        args["handshake_overrides"] = overrides
        return args
