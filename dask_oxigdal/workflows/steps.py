"""``@step``, ``@workflow``, :class:`StepFuture`, :func:`gather` and the durable :func:`sleep`."""

from __future__ import annotations

import contextvars
import functools
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from dask_oxigdal.workflows._store import _open_store
from dask_oxigdal.workflows.errors import _STEP_OPTIONS, WorkflowError

if TYPE_CHECKING:
    from dask_oxigdal.workflows._run import _Run

__all__ = ["Step", "StepFuture", "gather", "sleep", "step", "workflow"]

_current: contextvars.ContextVar[_Run | None] = contextvars.ContextVar(
    "oxigdal_workflow", default=None
)


def _execute(url, options, rec: str, head: dict, fn: Callable, args, kwargs, sync: bool = True):
    """Worker side: run a step and record its result before returning it."""
    value = fn(*args, **kwargs)
    _open_store(url, options).save(rec, {**head, "ok": True, "value": value}, sync=sync)
    return value


def _resolve(obj: Any) -> Any:
    if isinstance(obj, StepFuture):
        return obj._value_or_future()
    if type(obj) in (list, tuple):
        return type(obj)(_resolve(o) for o in obj)
    if type(obj) is dict:
        return {k: _resolve(v) for k, v in obj.items()}
    return obj


class StepFuture:
    """The pending (or recorded) result of one step call in a workflow.

    Use :meth:`result` or :func:`gather`; pass it to another step to chain
    them without waiting.
    """

    __slots__ = ("_future", "_record", "_run", "deadline", "digest", "key", "name", "seq")

    def __init__(self, run, name, seq, key, digest, future=None, record=None, deadline=None):
        self._run, self.name, self.seq, self.key, self.digest = run, name, seq, key, digest
        self._future, self._record, self.deadline = future, record, deadline

    def __dask_tokenize__(self) -> tuple:
        return ("oxigdal-workflow-step", self._run.id, self.seq, self.name)

    def __repr__(self) -> str:
        state = "recorded" if self._record is not None else "running"
        return f"<StepFuture {self.name}#{self.seq} {state}>"

    def done(self) -> bool:
        """Whether the result is known (recorded or finished)."""
        return self._record is not None or self._future.done()

    def _value_or_future(self) -> Any:
        rec = self._record
        if rec is not None:
            if not rec["ok"]:
                raise rec["error"]
            return rec["value"]
        return self._future

    def result(self) -> Any:
        """Wait for the step and return its result (or raise its exception).

        Raises
        ------
        StepTimeout
            The step's ``timeout`` passed (the step is cancelled).
        WorkflowCancelled
            The workflow was cancelled meanwhile.
        """
        if self._record is None:
            self._record = self._run.wait(self)
        return self._value_or_future()


class Step:
    """A function run as a durable workflow step (made by :func:`step`).

    Called outside a workflow it is the plain function.
    """

    def __init__(self, fn: Callable, name: str | None = None, **options: Any) -> None:
        from dask_oxigdal.annotations import _retries, _seconds, to_annotations

        unknown = set(options) - set(_STEP_OPTIONS)
        if unknown:
            raise TypeError(
                f"step option(s) {sorted(unknown)} not valid; valid: {', '.join(_STEP_OPTIONS)}"
            )
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "step")
        if not re.match(r"^[A-Za-z0-9_.]{1,64}$", self.name):
            raise WorkflowError(
                f"step name={self.name!r} is not valid: use 1-64 of A-Z a-z 0-9 _ ."
            )
        self.options = {k: v for k, v in options.items() if v is not None}
        timeout = self.options.pop("timeout", None)
        self.timeout = None if timeout is None else _seconds("timeout", timeout)
        self.retries = _retries(self.options.get("retries", 0))
        # validated now (bad values fail at decoration); a relative deadline is
        # turned into an absolute one at each submission
        self.annotations = to_annotations(**self.options)
        self._relative_deadline = "deadline" in self.options and not hasattr(
            self.options["deadline"], "timestamp"
        )
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<dask_oxigdal step {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _current.get() is None:
            return self.fn(*args, **kwargs)
        return self.submit(*args, **kwargs).result()

    def submit(self, *args: Any, **kwargs: Any) -> StepFuture:
        """Submit one call of this step in the running workflow; return its future.

        Raises
        ------
        WorkflowError
            Called outside a running workflow.
        StepArgumentsChanged
            On resume: this call was recorded with other arguments.
        """
        run = _current.get()
        if run is None:
            raise WorkflowError(
                f"{self.name}.submit() runs only inside a workflow started with "
                "dox.start_workflow (call the step directly to run it here)"
            )
        return run.submit(self, args, kwargs)

    def map(self, *iterables: Iterable) -> list[StepFuture]:
        """Submit one call per element (several iterables are zipped), like ``map``.

        The calls go to the scheduler together (one graph update), which is
        cheaper for the orchestrator and for the scheduler's memory than one
        :meth:`submit` per element.

        Raises
        ------
        WorkflowError
            Called outside a running workflow.
        """
        run = _current.get()
        if run is None:
            raise WorkflowError(
                f"{self.name}.map() runs only inside a workflow started with "
                "dox.start_workflow (call the step directly to run it here)"
            )
        return run.submit_many(self, [(a, {}) for a in zip(*iterables, strict=False)])


def step(fn: Callable | None = None, *, name: str | None = None, **options: Any) -> Any:
    """Mark a function as a durable workflow step.

    Parameters
    ----------
    fn : callable
        The work (runs on a Dask worker).
    name : str, optional
        Step name in records and task keys (default ``fn.__name__``).
    retries : int, optional
        Attempts after the first (Dask's ``retries`` plus the ``Retries``
        policy's backoff when the extension is installed).
    backoff : str or float, optional
        First retry delay (``oxigdal_backoff``).
    timeout : str or float, optional
        The step fails with :class:`StepTimeout` (and is cancelled) when it
        has not finished this long after its submission.
    tenant, queue, deadline, locality : optional
        As in :func:`dask_oxigdal.annotate`; a relative deadline counts from
        each submission.

    Returns
    -------
    Step
        Also usable as ``@step(retries=2)``.
    """
    if fn is None:
        return lambda f: Step(f, name=name, **options)
    return Step(fn, name=name, **options)


def workflow(fn: Callable) -> Callable:
    """Mark the orchestrating function of a durable workflow.

    The function is ordinary Python; start it with :func:`start_workflow`.
    Its arguments and result must be picklable.
    """
    fn.__oxigdal_workflow__ = True
    return fn


def gather(futures: Iterable[Any]) -> list[Any]:
    """Results of ``futures`` (StepFutures; other values pass through), in order.

    The first failed step's exception is raised. Inside a workflow, the
    running steps among them are collected with one ``Client.gather``.
    """
    futures = list(futures)
    run = _current.get()
    if run is not None:
        run.wait_all([f for f in futures if isinstance(f, StepFuture)])
    return [f.result() if isinstance(f, StepFuture) else f for f in futures]


def sleep(duration: str | float) -> None:
    """Durable timer: sleep ``duration`` ("1h", 90, timedelta) inside a workflow.

    The wake-up time is recorded when the timer starts; a resumed workflow
    sleeps only what is left of it. Outside a workflow: ``time.sleep``.

    Raises
    ------
    WorkflowCancelled
        The workflow was cancelled while sleeping.
    """
    from dask_oxigdal.annotations import _seconds

    seconds = _seconds("sleep", duration)
    if seconds < 0:
        raise ValueError(f"sleep({duration!r}): the duration must be >= 0")
    run = _current.get()
    if run is None:
        time.sleep(seconds)
        return
    run.sleep(seconds)
