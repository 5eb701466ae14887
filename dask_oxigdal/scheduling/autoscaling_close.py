"""The ``Autoscaling`` policy's scheduler hooks, and a scale-down that loses nothing.

:func:`install` replaces ``adaptive_target`` and ``workers_to_close`` on the
scheduler instance and in ``Scheduler.handlers`` (the RPC handlers are bound
methods taken at ``__init__``); :func:`uninstall` puts Dask's back.

``workers_to_close`` ranks the candidates: idle before busy, then the fewest
keys, then the fewest bytes. Asked with a ``target`` (``Adaptive``), it
offers idle workers only: retiring a busy one holds ``Adaptive``'s loop, and
any scale-up, until the running task's result is copied off. A worker
running a gang member or a deadline job's task comes only after every other
choice; one whose cache holds a tile that an unfinished task wants is never
chosen. Dask's ``retire_workers`` then
copies the keys of a retiring worker to the others before it closes it.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dask_oxigdal.scheduling.autoscaling import Autoscaling

__all__ = ["closable", "idle_workers", "install", "protected", "uninstall"]

_HOOKS = ("adaptive_target", "workers_to_close")
#: An idle worker holding more keys than this is not released by the idle timer
#: (checking them costs O(keys) per decision; the step-down may still close it).
_IDLE_MAX_KEYS = 1000


def install(policy: Autoscaling, scheduler: Any) -> None:
    """Make the scheduler's ``adaptive_target`` / ``workers_to_close`` the policy's.

    Parameters
    ----------
    policy : Autoscaling
    scheduler : distributed.Scheduler
    """
    inst = vars(scheduler)
    policy._saved = {}
    for name in _HOOKS:
        policy._saved[name] = inst.get(name)
        policy._saved[f"handler_{name}"] = scheduler.handlers.get(name)
    policy._dask_adaptive_target = scheduler.adaptive_target
    policy._dask_workers_to_close = scheduler.workers_to_close
    for name in _HOOKS:
        setattr(scheduler, name, getattr(policy, name))
        scheduler.handlers[name] = getattr(policy, name)


def uninstall(policy: Autoscaling, scheduler: Any) -> None:
    """Give the scheduler back what :func:`install` replaced (where it is still ours).

    Parameters
    ----------
    policy : Autoscaling
    scheduler : distributed.Scheduler
    """
    inst = vars(scheduler)
    for name in _HOOKS:
        if getattr(inst.get(name), "__self__", None) is policy:
            saved = policy._saved.get(name)
            if saved is None:
                del inst[name]
            else:
                inst[name] = saved
        if getattr(scheduler.handlers.get(name), "__self__", None) is policy:
            saved = policy._saved.get(f"handler_{name}")
            if saved is None:
                scheduler.handlers.pop(name, None)
            else:
                scheduler.handlers[name] = saved


def protected(policy: Autoscaling) -> dict[str, str]:
    """Workers that should not be closed, and why.

    A worker running a gang member (``gang``) or a task of a deadline job
    (``deadline``), or one whose cache holds a tile that an unfinished task
    wants (``cached-tile``, only with the ``Locality`` policy).

    Parameters
    ----------
    policy : Autoscaling

    Returns
    -------
    dict
        ``{address: reason}``.
    """
    ext = policy.extension
    info = ext.info
    out: dict[str, str] = {}
    for address, ws in ext.scheduler.workers.items():
        for ts in ws.processing:
            i = info.get(ts.key)
            if i is None:
                continue
            if i.gang is not None:
                out[address] = "gang"
                break
            if i.edf is not None:
                out[address] = "deadline"
                break
    locality = policy._policy("Locality")
    if locality is not None and policy.wanted:
        wanted = policy.wanted
        for address, keys in locality.worker_keys.items():
            if address in out:
                continue
            if any(k in wanted for k in keys):
                out[address] = "cached-tile"
    return out


def idle_workers(policy: Autoscaling, now: float, timeout: float | None = None) -> list[str]:
    """Workers the idle timer may release now; updates ``policy.idle_since``.

    A running worker with nothing processing has been idle since the first
    decision that saw it so. It may be released once idle for
    ``policy.idle_timeout`` seconds if it holds no key that an unfinished task
    still needs (``TaskState.waiters``; at most 1000 keys are looked at) and
    is not :func:`protected` (a wanted cached tile). O(workers) per decision,
    plus the keys of the idle workers.

    Parameters
    ----------
    policy : Autoscaling
    now : float
    timeout : float, optional
        How long a worker must have been idle; default ``policy.idle_timeout``
        (``0``: every idle worker, for the ``forecast-idle`` rule).

    Returns
    -------
    list of str
        Addresses, longest idle first.
    """
    if timeout is None:
        timeout = policy.idle_timeout
    workers = policy.extension.scheduler.workers
    since = policy.idle_since
    for address in [a for a in since if a not in workers]:
        del since[address]
    due = []
    for address, ws in workers.items():
        if ws.processing or ws.long_running or ws.status.name != "running":
            since.pop(address, None)
            continue
        start = since.setdefault(address, now)
        if now - start >= timeout:
            due.append((start, address, ws))
    if not due:
        return []
    guarded = protected(policy)
    out = []
    for _, address, ws in sorted(due, key=lambda d: d[0]):
        if address in guarded or len(ws.has_what) > _IDLE_MAX_KEYS:
            continue
        if any(ts.waiters for ts in ws.has_what):
            continue  # an unfinished task needs one of its keys
        out.append(address)
    return out


def closable(
    policy: Autoscaling,
    memory_ratio: float | None,
    n: int | None,
    key: Any,
    minimum: int | None,
    target: int | None = None,
    attribute: str = "address",
) -> list[str]:
    """``Scheduler.workers_to_close`` with our ranking (same arguments and result).

    Parameters
    ----------
    policy : Autoscaling
    memory_ratio, n, key, minimum, target, attribute
        As ``distributed.Scheduler.workers_to_close``. Without ``n`` only
        idle, unprotected workers are chosen: with ``target`` (what
        ``Adaptive`` asks) down to it, without either while the others keep
        ``memory_ratio`` (default 2) times the stored bytes. With ``n``
        (``retire_workers(n=...)``) busy workers come after the idle ones.

    Returns
    -------
    list
        The chosen workers' ``attribute``.
    """
    scheduler = policy.extension.scheduler
    workers = scheduler.workers
    # Adaptive (and Dask's own target) ask with ``target``: a worker running a
    # task is not closed then. Its retirement would hold Adaptive's loop until
    # the task's result is copied off (measured: up to 2 s, a task and an AMM
    # cycle), and a scale-up asked for meanwhile waits; it is closed once idle.
    # ``n`` (``retire_workers(n=...)``) keeps Dask's meaning: that many if any.
    idle_only = n is None
    if target is not None and n is None:
        n = len(workers) - target
    if n is not None:
        n = max(n, 0)
        target = len(workers) - n
    if n is None and memory_ratio is None:
        memory_ratio = 2
    if key is None:

        def key(ws: Any) -> Any:
            return ws.address

    elif isinstance(key, bytes):
        key = pickle.loads(key)
    valid = [ws for ws in workers.values() if not ws.long_running]
    for plugin in list(scheduler.plugins.values()):
        valid = plugin.valid_workers_downscaling(scheduler, valid)
    guarded = protected(policy)
    groups: dict[Any, list] = {}
    for ws in valid:
        groups.setdefault(key(ws), []).append(ws)
    limit = sum(ws.memory_limit for ws in valid)
    total = sum(ws.nbytes for ws in valid)

    def cost(group: Any) -> tuple:
        members = groups[group]
        reasons = {guarded.get(ws.address) for ws in members}
        return (
            "cached-tile" in reasons,
            bool(reasons - {None, "cached-tile"}),
            any(ws.processing for ws in members),
            sum(len(ws.has_what) for ws in members),
            sum(ws.nbytes for ws in members),
            str(group),
        )

    chosen: list = []
    remain = len(workers)
    for group in sorted(groups, key=cost):
        members = groups[group]
        c = cost(group)
        if c[0]:
            break  # a wanted cached tile: never
        if idle_only and (c[1] or c[2]):
            break  # only idle, unprotected workers without a count or with a target
        if minimum and remain - len(members) < minimum:
            break
        if n is not None:
            if remain - len(members) < (target or 0):
                break
        else:
            group_limit = sum(ws.memory_limit for ws in members)
            if limit - group_limit < memory_ratio * total:
                break
        limit -= sum(ws.memory_limit for ws in members)
        chosen.append(group)
        remain -= len(members)
    return [getattr(ws, attribute) for g in chosen for ws in groups[g]]
