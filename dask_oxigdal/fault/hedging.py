"""``hedge``: a true hedged copy of one leaf task, decided on the client.

Dask cannot run two copies of one key, so the copy gets its own key: the
primary runs as ``hedge-<name>-<token>-0``; if it has not finished after
``delay``, a copy ``...-1`` is submitted, preferring another worker than the
primary's. The first copy to succeed wins; the other one is cancelled. (A
cancelled task that is already running keeps its thread until it returns:
Python cannot interrupt a thread. Side effects of both copies are the user's
responsibility.) Use it for leaf calls whose latency matters; inside graphs,
use the ``Stragglers`` policy.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from dask.utils import funcname
from distributed import wait

from dask_oxigdal.annotations import _seconds

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["hedge"]

_PLACEMENT_POLL = 0.2  # seconds between looks for the primary's worker


def hedge(client: Client, func: Any, *args: Any, delay: Any = "1s", **kwargs: Any) -> Any:
    """Run ``func(*args, **kwargs)``; start a second copy if the first is slow; first wins.

    Parameters
    ----------
    client : distributed.Client
        A connected client (synchronous or asynchronous).
    func : callable
        The task function.
    *args
        Its positional arguments.
    delay : str, float or datetime.timedelta, default "1s"
        How long the primary may run before the copy is submitted; ``0`` submits
        both at once. A primary still queued on the scheduler after ``delay``
        gets its copy once it is on a worker (the copy prefers another one).
    **kwargs
        Its keyword arguments (``Client.submit`` options such as ``resources``
        are not accepted: they would apply to both copies).

    Returns
    -------
    object or awaitable
        The first successful result (an awaitable with an asynchronous client).

    Raises
    ------
    ValueError
        A bad ``delay``.
    Exception
        The primary's error when both copies fail.
    """
    seconds = _seconds("delay", delay)
    if seconds < 0:
        raise ValueError(f"delay={delay!r} is not valid: must be >= 0")
    base = f"hedge-{funcname(func)}-{uuid.uuid4().hex}"

    async def _run() -> Any:
        primary = client.submit(func, *args, key=f"{base}-0", pure=False, **kwargs)
        try:
            await wait([primary], timeout=seconds)
        except TimeoutError:
            pass
        while True:
            if primary.done():
                return await primary
            processing = await client.processing()  # inside client.sync: awaitable
            on = [w for w, keys in processing.items() if primary.key in keys]
            if on or seconds == 0:
                break
            # the primary is not on a worker yet (still queued on the scheduler): a copy
            # now could land on the very worker that gets it; copy once it is placed
            try:
                await wait([primary], timeout=_PLACEMENT_POLL)
            except TimeoutError:
                pass
        others = [w for w in processing if w not in on]
        copy = client.submit(
            func,
            *args,
            key=f"{base}-1",
            pure=False,
            workers=others or None,
            allow_other_workers=True,
            **kwargs,
        )
        pending = {primary, copy}
        while pending:
            done = await wait(list(pending), return_when="FIRST_COMPLETED")
            for fut in done.done:
                pending.discard(fut)
                if fut.status == "finished":
                    if pending:
                        await client.cancel(list(pending))
                    return await fut
        return await primary  # both failed: the primary's error

    return client.sync(_run)
