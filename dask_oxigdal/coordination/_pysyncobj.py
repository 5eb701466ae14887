"""The one place dask-oxigdal imports pysyncobj.

pysyncobj 0.3.17 imports its ``win_inet_pton`` module on every platform, and
that module assigns a Windows-only implementation to ``socket.inet_ntop`` for
the whole process: afterwards ``socket.inet_ntop(AF_INET6, ...)`` raises (it
calls ``ctypes.windll``), which breaks ``psutil.net_connections()`` and
anything else in the scheduler that formats an IPv6 address. Importing
pysyncobj through this module puts the C implementations from ``_socket``
back. Every module of the package imports pysyncobj from here.
"""

from __future__ import annotations

import _socket
import socket

# importing pysyncobj imports pysyncobj.win_inet_pton, which patches socket
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.journal import Journal
from pysyncobj.node import TCPNode
from pysyncobj.utility import TcpUtility, UtilityException

__all__ = [
    "FAIL_REASON",
    "Journal",
    "SyncObj",
    "SyncObjConf",
    "TCPNode",
    "TcpUtility",
    "UtilityException",
    "replicated",
    "restore_socket_functions",
]


def restore_socket_functions() -> None:
    """Put the C ``socket.inet_ntop`` / ``socket.inet_pton`` back (idempotent).

    pysyncobj replaces ``socket.inet_ntop`` on every platform when it is
    imported (and ``inet_pton`` on Windows); the originals live in ``_socket``.
    """
    for name in ("inet_ntop", "inet_pton"):
        original = getattr(_socket, name, None)
        if original is not None and getattr(socket, name, None) is not original:
            setattr(socket, name, original)


restore_socket_functions()
