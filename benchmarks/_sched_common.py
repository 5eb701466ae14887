"""Workloads and fairness measures shared by ``bench_scheduling.py`` and the scheduling tests.

Every task returns ``[(tenant, start, stop, kind)]`` measured on the worker,
so shares come from worker-side timestamps, never from the client's clock.
"""

from __future__ import annotations

import time

import dask

__all__ = [
    "ENTITLED",
    "TASK",
    "WEIGHTS",
    "combine",
    "contended_shares",
    "jain",
    "noop",
    "noop_tree",
    "tree",
    "work",
]

TASK = 0.02  # seconds of worker time per task
WEIGHTS = {"a": 2, "b": 1, "c": 1}
ENTITLED = {"a": 0.5, "b": 0.25, "c": 0.25}


def work(i, tenant, delay=TASK):
    """A map task: sleep ``delay`` seconds; return its (tenant, start, stop, "map") record."""
    start = time.time()
    time.sleep(delay)
    return [(tenant, start, time.time(), "map")]


def combine(parts, tenant, delay=TASK):
    """A reduce task: sleep ``delay`` seconds; return its inputs' records and its own."""
    start = time.time()
    time.sleep(delay)
    out = [rec for part in parts for rec in part]
    out.append((tenant, start, time.time(), "reduce"))
    return out


def tree(tenant, n, fan_in=4):
    """``map(n) -> tree reduce`` of ``tenant`` as one Delayed (every tenant: same prefixes)."""
    layer = [dask.delayed(work)(i, tenant) for i in range(n)]
    while len(layer) > 1:
        layer = [
            dask.delayed(combine)(layer[i : i + fan_in], tenant)
            for i in range(0, len(layer), fan_in)
        ]
    return layer[0]


def noop(*args):
    """A task that does nothing (scheduler-overhead benchmark)."""
    return None


def noop_tree(n, fan_in=8, name="noop"):
    """A raw task graph: ``n`` no-op leaves tree-reduced by no-ops.

    Returns
    -------
    dsk : dict
    root : key
    ntasks : int
    """
    dsk = {(f"{name}-leaf", i): (noop, i) for i in range(n)}
    layer = [(f"{name}-leaf", i) for i in range(n)]
    level = 0
    while len(layer) > 1:
        nxt = []
        for j in range(0, len(layer), fan_in):
            key = (f"{name}-reduce-{level}", j // fan_in)
            dsk[key] = (noop, *layer[j : j + fan_in])
            nxt.append(key)
        layer = nxt
        level += 1
    return dsk, layer[0], len(dsk)


def contended_shares(records, until=None):
    """Each tenant's share of worker-time while every tenant has work.

    The contended interval runs from the moment the last tenant's first task
    starts until the first tenant's last task stops (or ``until``).

    Returns
    -------
    shares : dict
    interval : float
        Length of the contended interval (seconds).
    """
    by_tenant: dict[str, list[tuple[float, float]]] = {}
    for tenant, start, stop, *_ in records:
        by_tenant.setdefault(tenant, []).append((start, stop))
    t0 = max(min(start for start, _ in spans) for spans in by_tenant.values())
    t1 = until or min(max(stop for _, stop in spans) for spans in by_tenant.values())
    used = {
        tenant: sum(max(0.0, min(stop, t1) - max(start, t0)) for start, stop in spans)
        for tenant, spans in by_tenant.items()
    }
    total = sum(used.values())
    if total <= 0:  # no overlap at all (tiny smoke-test runs): shares of the whole run
        used = {t: sum(stop - start for start, stop in spans) for t, spans in by_tenant.items()}
        total = sum(used.values())
    return {t: u / total for t, u in used.items()}, max(0.0, t1 - t0)


def tree_until(records):
    """End of the contended interval of map -> tree runs: the first tenant's last map start.

    A tree's tail has too few runnable tasks to use a tenant's share; work
    conservation rightly hands the rest to the others.
    """
    last_map: dict[str, float] = {}
    for tenant, start, _, kind in records:
        if kind == "map":
            last_map[tenant] = max(last_map.get(tenant, 0.0), start)
    return min(last_map.values())


def jain(shares, entitled):
    """Jain's fairness index of share / entitlement (1.0: every tenant gets its entitlement)."""
    x = [shares.get(t, 0.0) / e for t, e in entitled.items()]
    return sum(x) ** 2 / (len(x) * sum(v * v for v in x))
