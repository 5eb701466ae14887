"""``dox.progress(futures, group_by="tenant")``: progress per tenant (or queue).

Built on distributed's own progress machinery: the scheduler side is
:class:`distributed.diagnostics.progress.MultiProgress`, fed through the
scheduler's ``feed`` stream as distributed's progress bars do; the Jupyter
side is :class:`distributed.diagnostics.progressbar.MultiProgressWidget`.
This module only adds

- the grouping: ``"tenant"`` and ``"queue"`` are resolved once on the
  scheduler, from the extension's per-task records (or the tasks'
  ``oxigdal_*`` annotations), into a key -> group map that MultiProgress
  calls on every transition (a dict lookup);
- a text bar with one counter per group, for terminals and logs (distributed's
  text bar draws a single bar).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Hashable
from contextlib import suppress
from typing import Any, TextIO

from distributed.client import futures_of
from distributed.diagnostics.progressbar import MultiProgressBar, MultiProgressWidget
from distributed.utils import LoopRunner, is_kernel

__all__ = ["GROUPINGS", "KeyGroups", "TextMultiProgressBar", "progress"]

#: Groupings resolved on the scheduler; distributed's own ("prefix", "spans") pass through.
GROUPINGS = ("tenant", "queue")


class KeyGroups:
    """A picklable ``key -> group`` function backed by a dict (unknown keys -> ``default``).

    Parameters
    ----------
    mapping : dict
        ``{key: group}``.
    default : str
        Group of keys not in ``mapping`` (dependencies the grouping did not see).
    """

    def __init__(self, mapping: dict[Hashable, str], default: str = "other") -> None:
        self.mapping = mapping
        self.default = default

    def __call__(self, key: Hashable) -> str:
        """The group of ``key``."""
        return self.mapping.get(key, self.default)


async def _group_map(
    keys: list, by: str, dask_scheduler: Any = None, timeout: float = 30.0
) -> list[tuple[Any, str]]:
    """On the scheduler: the tenant or queue of ``keys`` and of their dependencies."""
    import asyncio

    from dask_oxigdal.annotations import parse_annotations
    from dask_oxigdal.scheduling.extension import NAME

    # the futures' update-graph message may still be on its way
    end = time.monotonic() + timeout
    while time.monotonic() < end and not all(k in dask_scheduler.tasks for k in keys):
        await asyncio.sleep(0.05)

    ext = dask_scheduler.plugins.get(NAME)
    out: list[tuple[Any, str]] = []
    seen: set = set()
    stack = list(keys)
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        ts = dask_scheduler.tasks.get(key)
        if ts is None:
            continue
        info = ext.info.get(key) if ext is not None else None
        if info is not None:
            group = info.tenant if by == "tenant" else info.queue
        else:
            try:
                parsed = parse_annotations(ts.annotations or {})
                value = parsed.tenant if by == "tenant" else parsed.queue
            except ValueError:
                value = None
            if ext is not None:
                default = ext.default_tenant if by == "tenant" else ext.default_queue
            else:
                default = "default" if by == "tenant" else "batch"
            group = value or default
        out.append((key, str(group)))
        stack.extend(dts.key for dts in ts.dependencies)
    return out


class TextMultiProgressBar(MultiProgressBar):
    """One counter and bar per group, written to a text stream.

    On a terminal the line is redrawn in place; on a pipe or file one line is
    written at most every ``log_interval`` seconds and when the work ends, so
    logs stay readable.

    Parameters
    ----------
    keys : list of Future or key
    scheduler : str, optional
        Scheduler address (default: the futures' client's).
    group_by : callable or {"prefix", "spans"}
        Passed to :class:`~distributed.diagnostics.progress.MultiProgress`.
    interval : str
        How often the scheduler sends updates.
    width : int
        Characters of each bar.
    stream : file-like, optional
        Where to write (default ``sys.stdout`` at the time of each write).
    log_interval : float
        Seconds between lines when ``stream`` is not a terminal.
    complete : bool
        Track the keys' dependencies too.
    start : bool
        Block until the work ends (as distributed's ``TextProgressBar``).
    """

    def __init__(
        self,
        keys: Any,
        scheduler: str | None = None,
        *,
        group_by: Any = "prefix",
        interval: str = "250ms",
        width: int = 20,
        stream: TextIO | None = None,
        log_interval: float = 1.0,
        complete: bool = True,
        loop: Any = None,
        start: bool = True,
    ) -> None:
        self._loop_runner = LoopRunner(loop=loop)
        super().__init__(keys, scheduler, group_by=group_by, interval=interval, complete=complete)
        self.width = width
        self.stream = stream
        self.log_interval = log_interval
        self._last_line = 0.0
        self.last: dict[str, Any] = {}
        if start:
            self._loop_runner.run_sync(self.listen)

    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def format(self, all: dict[str, int], remaining: dict[str, int]) -> str:
        """One line: ``group [####    ] done/total`` per group, sorted by name.

        Parameters
        ----------
        all, remaining : dict
            Tasks per group, and those not finished yet.

        Returns
        -------
        str
        """
        parts = []
        for group in sorted(all, key=str):
            total = all[group]
            done = total - remaining.get(group, 0)
            frac = done / total if total else 1.0
            bar = "#" * int(self.width * frac)
            parts.append(f"{group} [{bar:<{self.width}}] {done}/{total}")
        return " | ".join(parts) + f" | {self.elapsed:.1f}s"

    def _draw_bar(self, remaining: dict, all: dict, status: str, **kwargs: Any) -> None:
        self.last = {"all": dict(all), "remaining": dict(remaining), "status": status}
        out = self._out()
        line = self.format(all, remaining)
        tty = bool(getattr(out, "isatty", lambda: False)())
        with suppress(ValueError):
            if tty:
                out.write("\r" + line)
                out.flush()
            else:
                now = time.monotonic()
                if status != "running" or now - self._last_line >= self.log_interval:
                    self._last_line = now
                    out.write(line + "\n")
                    out.flush()

    def _draw_stop(self, remaining: dict, status: str, **kwargs: Any) -> None:
        out = self._out()
        with suppress(ValueError):
            if getattr(out, "isatty", lambda: False)():
                out.write("\n")
            if status == "error":
                out.write(f"progress stopped: a task erred ({kwargs.get('key')!r})\n")
            out.flush()


def progress(
    *futures: Any,
    group_by: str | Callable[[Hashable], Any] = "tenant",
    notebook: bool | None = None,
    complete: bool = True,
    client: Any = None,
    stream: TextIO | None = None,
    interval: str = "250ms",
) -> Any:
    """Track futures with one progress bar per tenant (or queue, prefix, span).

    In a terminal this blocks until the work ends, drawing a text bar with one
    counter per group; in Jupyter it returns distributed's
    ``MultiProgressWidget`` at once (put it last in the cell). A kernel without
    ``ipywidgets`` gets the text bar.

    Parameters
    ----------
    *futures : Future, collection or list of them
        Or :class:`~dask_oxigdal.workflows.WorkflowHandle` objects: one text
        bar of steps per workflow until they end
        (:func:`dask_oxigdal.workflows.progress.show`; its final statuses are
        returned).
    group_by : {"tenant", "queue", "prefix", "spans"} or callable
        ``"tenant"`` and ``"queue"`` come from the dask-oxigdal annotations
        (resolved by the scheduler extension when it is installed); a callable
        maps a key to its group and runs on the scheduler.
    notebook : bool, optional
        Widget or text (default: widget inside a Jupyter kernel).
    complete : bool, default True
        Count the dependencies of the futures too.
    client : distributed.Client, optional
        Default: the futures' client, else the default client.
    stream : file-like, optional
        Text bar output (default ``sys.stdout``).
    interval : str
        Update period.

    Returns
    -------
    MultiProgressWidget, TextMultiProgressBar, or list of dict (workflow handles)
    """
    from dask_oxigdal.workflows.api import WorkflowHandle

    if futures and all(isinstance(f, WorkflowHandle) for f in futures):  # workflows.progress
        from dask_oxigdal.workflows.progress import show

        return show(*futures, stream=stream)
    futs = futures_of(futures)
    if not futs:
        raise ValueError("progress() needs at least one future")
    valid = (*GROUPINGS, "prefix", "spans")
    if not (callable(group_by) or group_by in valid):
        raise ValueError(
            f"group_by={group_by!r}; give a callable or one of {', '.join(map(repr, valid))}"
        )
    if client is None:
        client = getattr(futs[0], "client", None)
        if client is None:
            from distributed import default_client

            client = default_client()
    if group_by in GROUPINGS:
        pairs = client.run_on_scheduler(_group_map, [f.key for f in futs], group_by)
        group_by = KeyGroups({_tuplify(k): g for k, g in pairs})
    if notebook is None:
        notebook = is_kernel()
    if notebook:
        try:
            import ipywidgets  # noqa: F401
        except ImportError:  # a kernel without widgets: the text bar
            notebook = False
    if notebook:
        return MultiProgressWidget(futs, group_by=group_by, complete=complete, interval=interval)
    return TextMultiProgressBar(
        futs,
        group_by=group_by,
        complete=complete,
        stream=stream,
        interval=interval,
        loop=client.loop,
    )


def _tuplify(key: Any) -> Any:
    # msgpack turns tuple keys into lists on the way back
    if isinstance(key, list):
        return tuple(_tuplify(k) for k in key)
    return key
