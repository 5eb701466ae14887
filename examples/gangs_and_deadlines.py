"""Gangs and deadlines on a small LocalCluster.

    python examples/gangs_and_deadlines.py

1. Two gangs of 3 members that rendezvous at a barrier run on 4 worker
   threads while two ordinary tasks hold 2 of them: each gang starts only
   when 3 threads are idle, so both complete.
2. A gang of 5 on 4 threads is refused with ``GangTooLarge``.
3. A job with a 1 s deadline that takes longer publishes a
   ``deadline-missed`` event, received by a subscribed client.
4. ``dox.status(client)`` counts it all.
"""

from __future__ import annotations

import time

from distributed import Client, Event, LocalCluster

import dask_oxigdal as dox
from dask_oxigdal.exceptions import GangTooLarge


def member(i, gang, k):
    """A gang member: wait up to 30 s for the other members, then return."""
    Event(f"{gang}-{i}").set()
    for j in range(k):
        if not Event(f"{gang}-{j}").wait(30):
            raise TimeoutError(f"gang {gang}: member {j} never arrived")
    return f"{gang}-{i} ok"


def hold(ev):
    Event(ev).wait(30)
    return "background done"


def slow(x, seconds):
    time.sleep(seconds)
    return x


def main() -> None:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        dox.register(client)
        events = []
        client.subscribe_topic("oxigdal", lambda event: events.append(event[1]))

        # 1. two gangs of 3 while two ordinary tasks hold 2 of the 4 threads
        background = client.map(hold, ["bg-go"] * 2, key=["bg-0", "bg-1"])
        gangs = []
        for name in ("A", "B"):
            with dox.annotate(gang=name):
                gangs += client.map(member, range(3), gang=name, k=3)
        time.sleep(1)
        print(
            "gangs waiting for 3 idle threads:", dox.status(client)["policies"]["Gang"]["waiting"]
        )
        Event("bg-go", client=client).set()
        print(client.gather(gangs), client.gather(background))

        # 2. a gang larger than the cluster
        with dox.annotate(gang="huge"):
            huge = client.map(member, range(5), gang="huge", k=5)
        try:
            huge[0].result()
        except GangTooLarge as e:
            print("refused:", e)

        # 3. a deadline that is missed
        with dox.annotate(tenant="default", queue="interactive", deadline="1s"):
            late = client.submit(slow, 1, 2.0)
        late.result()
        time.sleep(0.2)
        print("events:", [e["kind"] for e in events])

        # 4. the counters
        snap = dox.status(client)["policies"]
        gang = {k: snap["Gang"][k] for k in ("started", "refused", "restarts", "partial_starts")}
        print("Gang:", gang)
        print("Deadline:", {k: snap["Deadline"][k] for k in ("met", "missed", "rejected")})


if __name__ == "__main__":
    main()
