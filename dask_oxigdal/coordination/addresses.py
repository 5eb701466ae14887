"""Addresses of coordinator nodes: loopback checks, free ports, the embedded group's address.

The embedded single-node group records its address in its data directory
(:data:`ADDRESS_FILE`, current first, then the ones it had before), so a
restarted scheduler reuses it, or moves to a free port when another process
took it (:func:`embedded_address`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket

from dask_oxigdal.coordination import journal as _journal

__all__ = [
    "ADDRESS_FILE",
    "embedded_address",
    "free_port",
    "is_loopback",
    "port_is_free",
    "recorded_addresses",
]

logger = logging.getLogger(__name__)

#: file in ``data-dir`` recording the embedded single-node group's address
#: (current first, then the addresses it had before)
ADDRESS_FILE = "embedded.address"
_ADDRESS_HISTORY = 32


def is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` names a loopback host (``localhost``, 127.0.0.0/8, ``::1``).

    Parameters
    ----------
    address : str

    Returns
    -------
    bool
    """
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(address: str) -> bool:
    """Whether ``HOST:PORT`` can be bound now (with ``SO_REUSEADDR``, as pysyncobj binds).

    Parameters
    ----------
    address : str

    Returns
    -------
    bool
    """
    host, _, port = address.rpartition(":")
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host.strip("[]"), int(port)))
    except (OSError, ValueError):
        return False
    return True


def recorded_addresses(data_dir: str) -> list[str]:
    """Addresses recorded for the embedded single-node group in ``data_dir`` (latest first).

    Parameters
    ----------
    data_dir : str

    Returns
    -------
    list of str
        Empty when none is recorded (a new data directory) or the file is unreadable.
    """
    path = os.path.join(data_dir, ADDRESS_FILE)
    try:
        with open(path) as f:
            data = json.load(f)
        out = [data["address"], *data.get("previous", [])]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("dask-oxigdal coordinator: ignoring unreadable %s: %s", path, e)
        return []
    return [a for a in out if isinstance(a, str)]


def _record_address(data_dir: str, address: str, history: list[str]) -> None:
    previous = [a for a in history if a != address][:_ADDRESS_HISTORY]
    body = json.dumps({"address": address, "previous": previous}).encode()
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    _journal._write_atomic(os.path.join(data_dir, ADDRESS_FILE), body, fsync=False)


def embedded_address(data_dir: str) -> str:
    """The address of the embedded single-node group: the recorded one if its port is free.

    The address a node had is recorded in its dump (pysyncobj keeps the member
    list there), so a restart reuses it. When that port is taken by another
    process, a new free port on 127.0.0.1 is used and a warning is logged;
    :func:`start_state` then rewrites the dump's member list to the new address.

    Parameters
    ----------
    data_dir : str
        The coordinator's data directory.

    Returns
    -------
    str
        ``127.0.0.1:PORT``.
    """
    history = recorded_addresses(data_dir)
    if history:
        if port_is_free(history[0]):
            return history[0]
        address = f"127.0.0.1:{free_port()}"
        logger.warning(
            "dask-oxigdal coordinator: the recorded address %s of the embedded coordinator is "
            "in use by another process; using %s instead (the recorded state is kept: the "
            "member list of its dump is rewritten to the new address)",
            history[0],
            address,
        )
        return address
    return f"127.0.0.1:{free_port()}"
