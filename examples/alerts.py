"""Receive dask-oxigdal alerts on the client with ``client.subscribe_topic``.

Run::

    python examples/alerts.py

Alerts (and the other policy events: ``gang-started``, ``deadline-missed``,
``worker-quarantined`` ...) are published by the scheduler extension on the
``oxigdal`` event topic as ``{"kind": ..., ...}`` dicts. This script installs
the extension with one threshold rule (a tenant with more than 20 tasks queued)
and the default task-duration anomaly detector, makes both fire, and prints
every alert as it arrives.
"""

from __future__ import annotations

import time

from distributed import Client, LocalCluster

from dask_oxigdal.annotations import annotate
from dask_oxigdal.scheduling import register

RULES = [{"name": "backlog", "metric": "tenant-queued", "above": 20, "severity": "warning"}]
POLICIES = [
    {"class": "dask_oxigdal.scheduling.fairshare.FairShare"},
    {"class": "dask_oxigdal.monitoring.monitor.Monitor", "rules": RULES},
]


def nap(seconds: float) -> float:
    """A task that sleeps ``seconds``."""
    time.sleep(seconds)
    return seconds


def main() -> None:
    """Start a cluster, subscribe to the ``oxigdal`` topic, trigger two alerts."""
    received: list[dict] = []

    def on_event(event: tuple[float, dict]) -> None:
        _, msg = event
        if msg.get("kind") == "alert":
            received.append(msg)
            print(f"ALERT [{msg['severity']}] {msg['message']}")

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        register(client, tenants={"team-a": 1}, policies=POLICIES, interval="200ms")
        client.subscribe_topic("oxigdal", on_event)
        with annotate(tenant="team-a"):
            # 120 quick tasks on 2 threads: more than 20 stay queued for ~2.5 s, a dozen
            # of the Monitor's 200 ms checks (a backlog shorter than one check can be missed)
            client.gather(client.map(nap, [0.05] * 120, key=[f"nap-{i}" for i in range(120)]))
            # the same prefix, suddenly 20x slower: an anomaly
            client.gather(client.map(nap, [1.0, 1.0], key=["nap-120", "nap-121"]))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and {a["rule"] for a in received} != {
            "backlog",
            "task-duration-anomaly",
        }:
            time.sleep(0.1)
        client.unsubscribe_topic("oxigdal")
    print(f"{len(received)} alert(s) received: {sorted({a['rule'] for a in received})}")


if __name__ == "__main__":
    main()
