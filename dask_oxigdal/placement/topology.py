"""Worker topology labels (``rack``, ``zone``, ``host``): where each worker sits.

Sources, lowest precedence first (a later source wins per key):

1. Kubernetes: a downward-API labels file named by ``OXIGDAL_TOPOLOGY_FILE``
   (lines ``key="value"``; ``topology.kubernetes.io/zone`` -> ``zone``,
   ``topology.oxigdal.io/rack`` or ``topology.kubernetes.io/rack`` -> ``rack``,
   ``kubernetes.io/hostname`` -> ``host``) and ``NODE_NAME`` (the pod's
   ``spec.nodeName`` through a ``fieldRef``) -> ``host``. Nothing is asked of
   the Kubernetes API: the labels come from the file and the environment.
2. The environment variable ``OXIGDAL_TOPOLOGY="rack=r1,zone=z1[,host=h1]"``.
3. An explicit value: the worker preload's option
   (``dask worker --preload dask_oxigdal.placement.topology --oxigdal-topology rack=r1,zone=z1``)
   or :class:`TopologyWorkerPlugin`'s ``labels``.

A worker publishes its labels in its registration (``WorkerState.extra``,
through ``Worker.startup_information``) and, when it is already running, with
the scheduler handler ``oxigdal_topology`` that
:func:`dask_oxigdal.placement.topology_cost.install` adds. Read them on the
scheduler with :func:`worker_labels`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import click
from distributed.diagnostics.plugin import WorkerPlugin

__all__ = [
    "ENV",
    "ENV_FILE",
    "EXTRA_KEY",
    "KEYS",
    "TopologyWorkerPlugin",
    "dask_setup",
    "kubernetes_labels",
    "parse_labels",
    "relation",
    "resolve_labels",
    "worker_labels",
]

logger = logging.getLogger(__name__)

#: The label keys, broadest last.
KEYS = ("host", "rack", "zone")
ENV = "OXIGDAL_TOPOLOGY"
ENV_FILE = "OXIGDAL_TOPOLOGY_FILE"
#: Key of the labels in ``WorkerState.extra`` / ``Worker.startup_information``.
EXTRA_KEY = "oxigdal_topology"
#: Kubernetes label -> our key (the first one present wins).
K8S_KEYS = {
    "topology.kubernetes.io/zone": "zone",
    "failure-domain.beta.kubernetes.io/zone": "zone",
    "topology.oxigdal.io/rack": "rack",
    "topology.kubernetes.io/rack": "rack",
    "kubernetes.io/hostname": "host",
}
_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})$")


def _check_value(key: str, value: Any, source: str) -> str:
    if not isinstance(value, str) or not _VALUE.match(value):
        raise ValueError(
            f"{source}: topology label {key}={value!r} is not valid: a value is 1-63 "
            "characters, letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def parse_labels(spec: str | Mapping[str, Any] | None, source: str = "topology") -> dict[str, str]:
    """Parse ``"rack=r1,zone=z1"`` (or a mapping) into ``{"rack": "r1", "zone": "z1"}``.

    Parameters
    ----------
    spec : str, mapping or None
        Comma-separated ``key=value`` pairs with keys from :data:`KEYS`; an
        empty string or ``None`` gives ``{}``.
    source : str
        Where the value came from, for error messages (``"OXIGDAL_TOPOLOGY"``).

    Returns
    -------
    dict
        Label key -> value.

    Raises
    ------
    ValueError
        An item without ``=``, an unknown or repeated key, or a bad value; the
        message names the value and the valid keys.
    """
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        items = list(spec.items())
    elif isinstance(spec, str):
        items = []
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(
                    f"{source}: {item!r} in {spec!r} is not key=value "
                    f"(valid keys: {', '.join(KEYS)}; e.g. 'rack=r1,zone=z1')"
                )
            items.append((key.strip(), value.strip()))
    else:
        raise TypeError(
            f"{source}: topology labels must be a 'key=value,...' string or a mapping, "
            f"got {type(spec).__name__} {spec!r}"
        )
    out: dict[str, str] = {}
    for key, value in items:
        if key not in KEYS:
            raise ValueError(
                f"{source}: unknown topology label {key!r} (valid keys: {', '.join(KEYS)})"
            )
        if key in out:
            raise ValueError(f"{source}: topology label {key!r} given twice in {spec!r}")
        out[key] = _check_value(key, value, source)
    return out


def kubernetes_labels(path: str | os.PathLike | None = None, environ: Mapping | None = None):
    """Topology labels from a downward-API labels file and ``NODE_NAME``.

    Parameters
    ----------
    path : path-like, optional
        The labels file (lines ``key="value"``); default ``$OXIGDAL_TOPOLOGY_FILE``
        (no file when unset).
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    dict
        Label key -> value (only the keys that were found).

    Raises
    ------
    ValueError
        A missing file, a malformed line, or a bad value (naming the file and line).
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    node = env.get("NODE_NAME")
    if node:
        out["host"] = _check_value("host", node, "NODE_NAME")
    path = env.get(ENV_FILE) if path is None else path
    if not path:
        return out
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"{ENV_FILE}={str(path)!r}: cannot read the labels file: {e}") from None
    found: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f'{path}:{n}: {line!r} is not key="value"')
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        ours = K8S_KEYS.get(name.strip())
        if ours is not None and ours not in found:
            found[ours] = _check_value(ours, value, f"{path}:{n} ({name.strip()})")
    out.update(found)
    return out


def resolve_labels(explicit: str | Mapping | None = None, environ: Mapping | None = None):
    """This process's labels: Kubernetes file < ``OXIGDAL_TOPOLOGY`` < ``explicit``.

    Parameters
    ----------
    explicit : str or mapping, optional
        Labels given on the command line or to the plugin.
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    dict
        Label key -> value.
    """
    env = os.environ if environ is None else environ
    out = kubernetes_labels(environ=env)
    out.update(parse_labels(env.get(ENV), ENV))
    out.update(parse_labels(explicit, "labels"))
    return out


def worker_labels(ws: Any) -> dict[str, str]:
    """The topology labels of a scheduler-side ``WorkerState`` (``host`` defaults to its IP).

    Parameters
    ----------
    ws : distributed.scheduler.WorkerState
        The worker.

    Returns
    -------
    dict
        ``{"host": ..., "rack": ..., "zone": ...}`` for the labels it reported;
        ``host`` is always present.
    """
    labels = (getattr(ws, "extra", None) or {}).get(EXTRA_KEY)
    out = dict(labels) if isinstance(labels, dict) else {}
    out.setdefault("host", ws.host)
    return out


def relation(a: Mapping[str, str], b: Mapping[str, str]) -> str:
    """How two label sets relate: ``same-host``, ``same-rack``, ``cross-rack``, ``cross-zone``.

    ``unknown`` when neither a rack nor a zone tells them apart (labels missing).

    Parameters
    ----------
    a, b : mapping
        Labels of two workers.

    Returns
    -------
    str
    """
    if a.get("host") is not None and a.get("host") == b.get("host"):
        return "same-host"
    za, zb = a.get("zone"), b.get("zone")
    if za is not None and zb is not None and za != zb:
        return "cross-zone"
    ra, rb = a.get("rack"), b.get("rack")
    if ra is not None and rb is not None:
        return "same-rack" if ra == rb else "cross-rack"
    return "unknown"


class TopologyWorkerPlugin(WorkerPlugin):
    """Publish the worker's topology labels to the scheduler.

    The labels go into the worker's registration (``WorkerState.extra``); a
    worker that is already running also sends them with the scheduler handler
    ``oxigdal_topology``. When the scheduler has the topology extension
    (:func:`dask_oxigdal.placement.topology_cost.install`), the plugin also
    reports the worker's finished transfers (from ``Worker.transfer_incoming_log``)
    every ``interval`` seconds, for the predicted-versus-observed error.

    Parameters
    ----------
    labels : str or mapping, optional
        Explicit labels (``"rack=r1,zone=z1"``); they win over the environment.
    interval : float
        Seconds between transfer reports.
    """

    name = "oxigdal-topology"
    idempotent = False

    def __init__(self, labels: str | Mapping | None = None, interval: float = 0.5) -> None:
        self.explicit = parse_labels(labels, "TopologyWorkerPlugin(labels=...)") if labels else None
        self.interval = float(interval)
        self.labels: dict[str, str] = {}
        self._worker: Any = None
        self._last_stop = 0.0
        self._confirmed = False
        self._announcing = False
        self._ticks = 0

    async def setup(self, worker: Any) -> None:
        """Resolve the labels, put them in the registration, start announcing and reporting."""
        from tornado.ioloop import PeriodicCallback

        self.labels = resolve_labels(self.explicit)
        labels = dict(self.labels)
        worker.startup_information[EXTRA_KEY] = lambda w: labels
        self._worker = worker
        self._last_stop = 0.0
        self._confirmed = False
        self._ticks = 0
        old = worker.periodic_callbacks.pop("oxigdal-topology", None)
        if old is not None:
            old.stop()
        pc = PeriodicCallback(self._tick, self.interval * 1000)
        worker.periodic_callbacks["oxigdal-topology"] = pc
        pc.start()
        await self._announce()

    async def _announce(self) -> None:
        worker = self._worker
        if worker is None or self._announcing:
            return
        self._announcing = True
        try:
            answer = await worker.scheduler.oxigdal_topology(
                worker=worker.address, labels=dict(self.labels)
            )
        except Exception as e:  # no topology extension on the scheduler (yet)
            logger.debug("oxigdal topology: scheduler has no topology handler (%s)", e)
            answer = None
        finally:
            self._announcing = False
        self._confirmed = answer == "ok"

    def _tick(self) -> None:
        worker = self._worker
        if worker is None:
            return
        self._ticks += 1
        if not self._confirmed:
            # until the scheduler has the topology extension: ask again every ~5 s
            if self._ticks % max(1, int(5 / self.interval)) == 0:
                worker.loop.add_callback(self._announce)
            return
        if worker.batched_stream is None:
            return
        records = []
        last = self._last_stop
        for rec in list(worker.transfer_incoming_log):
            stop = rec.get("stop", 0.0)
            if stop > self._last_stop:
                records.append(
                    [rec["who"], int(rec["total"]), float(rec["duration"]), float(rec["start"])]
                )
                last = max(last, stop)
        self._last_stop = last
        if records:
            worker.batched_send(
                {"op": "oxigdal_transfers", "worker": worker.address, "records": records[-1000:]}
            )

    def teardown(self, worker: Any) -> None:
        """Stop the transfer reports."""
        pc = worker.periodic_callbacks.pop("oxigdal-topology", None)
        if pc is not None:
            pc.stop()
        self._worker = None


@click.command()
@click.option(
    "--oxigdal-topology",
    default=None,
    help="Topology labels of this worker, e.g. 'rack=r1,zone=z1' (keys: host, rack, zone).",
)
def dask_setup(worker: Any, oxigdal_topology: str | None) -> Any:
    """Worker preload: ``dask worker --preload dask_oxigdal.placement.topology --oxigdal-topology rack=r1``.

    Parameters
    ----------
    worker : distributed.Worker
        The worker being started.
    oxigdal_topology : str, optional
        Labels that win over ``OXIGDAL_TOPOLOGY`` and the Kubernetes file.

    Returns
    -------
    awaitable
        Adding :class:`TopologyWorkerPlugin` to the worker.
    """
    try:
        plugin = TopologyWorkerPlugin(oxigdal_topology)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--oxigdal-topology") from None
    # preloads start before the worker registers: the plugin's setup fills its registration
    return worker.plugin_add(plugin=plugin, catch_errors=False)
