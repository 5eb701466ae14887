"""``throttled://``: TCP with per-pair latency and bandwidth by topology label (a test network).

Register it by importing this module (or through the
``distributed.comm.backends`` entry point), then listen on
``throttled://127.0.0.1:0``: ``dask scheduler --protocol throttled``,
``LocalCluster(protocol="throttled://")``, a ``Nanny(..., protocol="throttled://")``.

Each end of a connection sends its topology labels and a process id in Dask's
comm handshake (:meth:`Comm.handshake_info`). A *link* is one ordered pair of
processes; its class is :func:`~dask_oxigdal.placement.topology.relation` of
the two label sets, and :data:`LINKS` (or ``OXIGDAL_THROTTLE``) gives the
class's bandwidth and latency. Links whose class has no setting (an end
without labels, e.g. the scheduler or a client) are not shaped.

Shaping is done by the sender: every message waits for its link to be free
(a virtual clock: ``free_at += bytes / bandwidth``), plus the latency, then is
written. The message's size is estimated before it is written (Dask frames
are only built by the write) and corrected with the bytes actually written,
so the link's clock carries exactly the bytes sent. Every link keeps its own
accounting (:func:`link_stats`): bytes, messages, and the seconds of
transmission it imposed.

Emulating two racks on one machine: give each worker process
``OXIGDAL_TOPOLOGY="rack=r1,host=w1"`` (a distinct ``host`` per worker,
since all share 127.0.0.1). The defaults are 1 Gb/s within a rack and
100 Mb/s across racks.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from dask.sizeof import sizeof
from dask.utils import parse_timedelta
from distributed.comm import registry
from distributed.comm.tcp import TCP, BaseTCPBackend, TCPConnector, TCPListener
from distributed.protocol.serialize import Pickled, Serialize, Serialized, ToPickle

from dask_oxigdal.placement.topology import parse_labels, relation, resolve_labels

__all__ = [
    "ENV",
    "LINKS",
    "SCHEME",
    "Link",
    "ThrottledBackend",
    "link_stats",
    "parse_links",
    "reset_links",
    "set_links",
]

SCHEME = "throttled"
ENV = "OXIGDAL_THROTTLE"
#: pair class -> (bandwidth in bytes/s, latency in s); classes absent are not shaped.
LINKS: dict[str, tuple[float, float]] = {
    "same-rack": (1e9 / 8, 0.0002),  # 1 Gb/s
    "cross-rack": (100e6 / 8, 0.001),  # 100 Mb/s
    "cross-zone": (50e6 / 8, 0.005),
}
_CLASSES = ("same-host", "same-rack", "cross-rack", "cross-zone", "unknown")
_PROCESS = uuid.uuid4().hex[:12]
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKMG]?)(bit/s|bps|b/s|B/s)\s*$")
_UNITS = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


def parse_links(spec: str) -> dict[str, tuple[float, float]]:
    """Parse ``"same-rack=1Gbps@0.2ms,cross-rack=100Mbps@1ms"`` into :data:`LINKS` form.

    Parameters
    ----------
    spec : str
        Comma-separated ``class=RATE[@LATENCY]``; RATE like ``1Gbps``,
        ``100Mbit/s`` (bits) or ``12.5MB/s`` (bytes); classes ``same-host``,
        ``same-rack``, ``cross-rack``, ``cross-zone``, ``unknown``.

    Returns
    -------
    dict
        Class -> (bytes/s, seconds).

    Raises
    ------
    ValueError
        Naming the bad item and the valid classes.
    """
    out: dict[str, tuple[float, float]] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        cls, sep, rest = item.partition("=")
        cls = cls.strip()
        if not sep or cls not in _CLASSES:
            raise ValueError(
                f"{ENV}: {item!r} is not CLASS=RATE[@LATENCY] with CLASS one of "
                f"{', '.join(_CLASSES)} (e.g. 'cross-rack=100Mbps@1ms')"
            )
        rate, _, latency = rest.partition("@")
        m = _RATE.match(rate)
        if not m:
            raise ValueError(
                f"{ENV}: rate {rate!r} in {item!r} is not like '1Gbps', '100Mbit/s' or '12.5MB/s'"
            )
        value = float(m.group(1)) * _UNITS[m.group(2)]
        if m.group(3) != "B/s":
            value /= 8
        if not value > 0:
            raise ValueError(f"{ENV}: rate in {item!r} must be > 0")
        try:
            lat = parse_timedelta(latency.strip()) if latency.strip() else 0.0
        except (ValueError, KeyError):
            raise ValueError(f"{ENV}: latency {latency!r} in {item!r} is not a duration") from None
        out[cls] = (value, float(lat))
    return out


def _settings() -> dict[str, tuple[float, float]]:
    spec = os.environ.get(ENV)
    return parse_links(spec) if spec else LINKS


class Link:
    """One shaped direction between two processes: a virtual clock and its accounting.

    Parameters
    ----------
    cls : str
        The pair class.
    bandwidth : float
        Bytes per second.
    latency : float
        Seconds added to every message.
    """

    def __init__(self, cls: str, bandwidth: float, latency: float) -> None:
        self.cls = cls
        self.bandwidth = bandwidth
        self.latency = latency
        self.free_at = 0.0
        self.bytes = 0
        self.messages = 0
        self.transmit_seconds = 0.0  # the shaped transmission time imposed on the link
        self.waited_seconds = 0.0  # the sleeps actually requested (queueing + transmission)

    def reserve(self, nbytes: int) -> float:
        """Book ``nbytes`` on the link; returns how long the sender must wait."""
        now = time.monotonic()
        start = max(now, self.free_at)
        self.free_at = start + nbytes / self.bandwidth
        return self.free_at - now + self.latency

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the clock with the bytes actually written."""
        self.free_at += (actual - estimated) / self.bandwidth
        self.bytes += actual
        self.messages += 1
        self.transmit_seconds += actual / self.bandwidth

    def stats(self) -> dict[str, Any]:
        """``class``, ``bandwidth``, ``latency``, ``bytes``, ``messages``, ``transmit_seconds``."""
        return {
            "class": self.cls,
            "bandwidth": self.bandwidth,
            "latency": self.latency,
            "bytes": self.bytes,
            "messages": self.messages,
            "transmit_seconds": self.transmit_seconds,
            "waited_seconds": self.waited_seconds,
        }


_links: dict[tuple[str, str], Link] = {}
_override: dict[str, tuple[float, float]] | None = None


def set_links(links: Mapping[str, tuple[float, float]] | str | None) -> None:
    """Set this process's link settings (``None``: back to ``OXIGDAL_THROTTLE`` / :data:`LINKS`).

    Parameters
    ----------
    links : mapping, str or None
        Class -> (bytes/s, seconds), or a :func:`parse_links` string.
    """
    global _override
    _override = (
        parse_links(links)
        if isinstance(links, str)
        else (dict(links) if links is not None else None)
    )
    _links.clear()


def reset_links() -> None:
    """Zero the accounting of every link (open connections keep their links)."""
    for link in _links.values():
        link.bytes = link.messages = 0
        link.transmit_seconds = link.waited_seconds = 0.0


def link_stats() -> dict[str, dict[str, Any]]:
    """Accounting of every link this process has sent on: ``"local->peer"`` -> :meth:`Link.stats`."""
    return {f"{a}->{b}": link.stats() for (a, b), link in _links.items()}


def _unwrap(obj: Any) -> int:
    """Estimated bytes of a message (before Dask serialises it)."""
    if isinstance(obj, (Serialize, ToPickle)):
        return _unwrap(obj.data)
    if isinstance(obj, (Serialized, Pickled)):
        return sum(memoryview(f).nbytes for f in obj.frames)
    if isinstance(obj, dict):
        return sum(_unwrap(v) for v in obj.values()) + 8 * len(obj)
    if isinstance(obj, (list, tuple)) and len(obj) < 10_000:
        return sum(_unwrap(v) for v in obj) + 8
    try:
        return int(sizeof(obj))
    except Exception:
        return 64


class ThrottledTCP(TCP):
    """A TCP comm that shapes what it writes by the link class of its two ends."""

    def __init__(self, *args: Any, labels: dict[str, str] | None = None, **kwargs: Any) -> None:
        self._labels = dict(labels) if labels is not None else resolve_labels()
        self._node = f"{_PROCESS}:{sorted(self._labels.items())}"
        self._link: Link | bool | None = False  # False: not decided yet
        super().__init__(*args, **kwargs)

    def handshake_info(self) -> dict[str, Any]:
        """Dask's handshake plus this end's labels and process id."""
        info = super().handshake_info()
        info["oxigdal_topology"] = self._labels
        info["oxigdal_node"] = self._node
        return info

    def _get_link(self) -> Link | None:
        if self._link is not False:
            return self._link  # type: ignore[return-value]
        remote = self.remote_info
        if "oxigdal_node" not in remote:
            return None  # still in the handshake
        peer = remote.get("oxigdal_topology") or {}
        link = None
        if self._labels and peer:
            cls = relation(self._labels, peer)
            setting = (_override if _override is not None else _settings()).get(cls)
            if setting is not None:
                key = (self._node, str(remote["oxigdal_node"]))
                link = _links.get(key)
                if link is None:
                    link = _links[key] = Link(cls, *setting)
        self._link = link
        return link

    async def write(self, msg: Any, serializers: Any = None, on_error: str = "message") -> int:
        """Wait for the link (bytes / bandwidth + latency), then write as TCP does."""
        link = self._get_link()
        if link is None:
            return await super().write(msg, serializers=serializers, on_error=on_error)
        estimated = _unwrap(msg)
        delay = link.reserve(estimated)
        link.waited_seconds += delay
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            actual = await super().write(msg, serializers=serializers, on_error=on_error)
        except BaseException:
            link.settle(estimated, 0)
            raise
        link.settle(estimated, actual)
        return actual


def _labels_arg(connection_args: dict) -> dict[str, str] | None:
    labels = connection_args.pop("oxigdal_topology", None)
    return parse_labels(labels, "connection_args['oxigdal_topology']") if labels else None


class ThrottledConnector(TCPConnector):
    """Connector of ``throttled://`` addresses (labels: ``connection_args['oxigdal_topology']``)."""

    prefix = "throttled://"
    comm_class = ThrottledTCP

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any):
        """Connect as TCP does, with a :class:`ThrottledTCP` comm."""
        labels = _labels_arg(connection_args)
        self.comm_class = _comm_class(labels)
        return await super().connect(address, deserialize, **connection_args)


class ThrottledListener(TCPListener):
    """Listener of ``throttled://`` addresses."""

    prefix = "throttled://"
    comm_class = ThrottledTCP

    def __init__(self, address: str, comm_handler: Any, deserialize: bool = True, **kwargs: Any):
        labels = _labels_arg(kwargs)
        self.comm_class = _comm_class(labels)
        super().__init__(address, comm_handler, deserialize, **kwargs)


def _comm_class(labels: dict[str, str] | None) -> Any:
    if labels is None:
        return ThrottledTCP

    class _Labelled(ThrottledTCP):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, labels=labels, **kwargs)

    return _Labelled


class ThrottledBackend(BaseTCPBackend):
    """The ``throttled`` comm backend (TCP addresses, shaped writes)."""

    _connector_class = ThrottledConnector
    _listener_class = ThrottledListener


registry.backends.setdefault(SCHEME, ThrottledBackend())
