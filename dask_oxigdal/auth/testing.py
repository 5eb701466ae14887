"""Throw-away certificates and an ``oxigdal.auth`` config for demos and benchmarks.

Uses ``cryptography`` (already a dependency). Not for production: the CA
key is written next to the certificates and everything lives as long as the
directory does.

Example (a TLS cluster with three principals)::

    creds = make_credentials(tmpdir)                 # ca, scheduler, worker, alice, bob, ops
    with dask.config.set(auth_config()):
        cluster = LocalCluster(security=security(creds, "ops", scheduler="scheduler",
                                                 worker="worker"),
                               scheduler_kwargs={"preload": ["dask_oxigdal.preload"]})
        alice = Client(cluster.scheduler_address, security=security(creds, "alice"))
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from typing import Any

__all__ = ["DEMO_PRINCIPALS", "auth_config", "make_credentials", "security"]

#: Principals of the demo: two users of two tenants, an admin, the workers.
DEMO_PRINCIPALS: dict[str, dict[str, Any]] = {
    "alice": {"tenants": ["team-a"], "roles": ["user"]},
    "bob": {"tenants": ["team-b"], "roles": ["user"]},
    "ops": {"roles": ["admin"]},
    "worker": {"roles": ["worker"]},
}


def _name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_credentials(
    directory: str,
    names: Iterable[str] = ("scheduler", "worker", "alice", "bob", "ops"),
    *,
    days: int = 2,
) -> dict[str, str]:
    """A CA and one key+certificate PEM file per name (CN = name), in ``directory``.

    Parameters
    ----------
    directory : str
        Created if missing; files are written with mode 0600.
    names : iterable of str
        Common names; each certificate is valid for 127.0.0.1 and localhost,
        as client and as server.
    days : int, default 2
        Validity.

    Returns
    -------
    dict
        ``{"ca": ca.pem, name: name.pem, ...}`` (paths).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    os.makedirs(directory, mode=0o700, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("dask-oxigdal throw-away CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def write(path: str, data: bytes) -> str:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    pem = serialization.Encoding.PEM
    out = {"ca": write(os.path.join(directory, "ca.pem"), ca.public_bytes(pem))}
    for cn in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        out[cn] = write(os.path.join(directory, f"{cn}.pem"), key_pem + cert.public_bytes(pem))
    return out


def security(
    creds: dict[str, str],
    client: str,
    *,
    scheduler: str | None = None,
    worker: str | None = None,
) -> Any:
    """A ``distributed.Security`` presenting ``creds[client]`` as the client certificate.

    Parameters
    ----------
    creds : dict
        From :func:`make_credentials`.
    client : str
        The principal of client connections.
    scheduler, worker : str, optional
        Certificates for the scheduler and worker roles (default: ``client``'s).

    Returns
    -------
    distributed.Security
    """
    from distributed import Security

    return Security(
        tls_ca_file=creds["ca"],
        tls_client_cert=creds[client],
        tls_scheduler_cert=creds[scheduler or client],
        tls_worker_cert=creds[worker or client],
        require_encryption=True,
    )


def auth_config(
    principals: dict[str, Any] | None = None, audit_log: str | None = None
) -> dict[str, Any]:
    """``dask.config.set`` mapping that enables ``oxigdal.auth`` with ``principals``.

    Parameters
    ----------
    principals : dict, optional
        Default :data:`DEMO_PRINCIPALS`.
    audit_log : str, optional
        Path of the audit log.

    Returns
    -------
    dict
    """
    return {
        "oxigdal.auth.enabled": True,
        "oxigdal.auth.principals": principals or DEMO_PRINCIPALS,
        "oxigdal.auth.audit-log": audit_log,
    }
