"""``GroupClient``: a synchronous client of a coordinator group (tests, benchmarks, tools).

It runs a pysyncobj *observer* (a non-voting node that keeps a replica and
forwards commands to the leader). :meth:`GroupClient.call` retries a command
whose outcome is unknown (a timeout, ``LEADER_CHANGED``, ``NOT_LEADER``,
``DISCARDED``, ``UNKNOWN_OUTCOME``, no leader yet) with the **same request
id** until it is acknowledged, so it is applied once; the attempts are
counted.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dask_oxigdal.coordination._pysyncobj import FAIL_REASON
from dask_oxigdal.coordination.commands import make_command
from dask_oxigdal.coordination.node import start_state, stop_state
from dask_oxigdal.coordination.settings import CoordinatorSettings

__all__ = ["CallResult", "GroupClient", "NotAcknowledged"]


class NotAcknowledged(TimeoutError):
    """A command was not acknowledged before the caller's deadline (its outcome is unknown)."""


class CallResult:
    """Outcome of :meth:`GroupClient.call`: ``value``, ``attempts``, ``errors`` (fail reasons)."""

    __slots__ = ("attempts", "errors", "request_id", "value")

    def __init__(self, request_id: str, value: Any, attempts: int, errors: list[str]) -> None:
        self.request_id = request_id
        self.value = value
        self.attempts = attempts
        self.errors = errors


_NAMES = {v: k for k, v in vars(FAIL_REASON).items() if k.isupper()}


class GroupClient:
    """A client of the group ``partners`` (an observer node in this process).

    Parameters
    ----------
    partners : list of str
        ``HOST:PORT`` of the group's voting nodes.
    password : str, optional
        The group's secret. Default: the file named by
        ``oxigdal.coordinator.password-file``, else ``$OXIGDAL_COORDINATOR_PASSWORD``
        (a :class:`~dask_oxigdal.exceptions.ConfigError` when neither is set).
    attempt_timeout : float
        Seconds to wait for one attempt before resending (same request id).
    **settings
        More :class:`CoordinatorSettings` overrides (timeouts).
    """

    def __init__(
        self,
        partners: list[str],
        *,
        password: str | None = None,
        attempt_timeout: float = 2.0,
        **settings: Any,
    ) -> None:
        self.settings = CoordinatorSettings.from_config(
            mode="observer", partners=list(partners), password=password, **settings
        )
        self.attempt_timeout = attempt_timeout
        self.node = start_state(self.settings, None)

    def close(self) -> None:
        """Stop the observer node."""
        stop_state(self.node)

    def __enter__(self) -> GroupClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def leader(self) -> str | None:
        """The leader this observer knows of (``HOST:PORT``) or ``None``."""
        leader = self.node._getLeader()
        return None if leader is None else str(getattr(leader, "address", leader))

    def submit_batch(self, batch: list, callback: Any) -> None:
        """Send a batch of commands; ``callback(results, error)`` on pysyncobj's thread."""
        self.node.execute(batch, callback=callback)

    def call(
        self, op: str, *, request_id: str | None = None, deadline: float | None = None, **args: Any
    ) -> CallResult:
        """Apply one command, retrying with the same request id until acknowledged.

        Parameters
        ----------
        op : str
            Command name (:data:`dask_oxigdal.coordination.state.OPS`).
        request_id : str, optional
            Reuse an id to retry a command sent earlier.
        deadline : float, optional
            ``time.monotonic()`` after which :class:`NotAcknowledged` is raised.
        **args
            Command arguments.

        Returns
        -------
        CallResult
        """
        command = make_command(op, request_id, **args)
        errors: list[str] = []
        attempts = 0
        while True:
            attempts += 1
            done = threading.Event()
            box: list = []

            def cb(result: Any, error: Any, box: list = box, done: threading.Event = done) -> None:
                box.append((result, error))
                done.set()

            self.node.execute([command], callback=cb)
            if done.wait(self.attempt_timeout):
                result, error = box[0]
                if error == FAIL_REASON.SUCCESS:
                    return CallResult(command[0], result[0], attempts, errors)
                errors.append(_NAMES.get(error, str(error)))
                if error in (FAIL_REASON.QUEUE_FULL, FAIL_REASON.MISSING_LEADER):
                    time.sleep(0.05)
            else:
                errors.append("TIMEOUT")
            if deadline is not None and time.monotonic() > deadline:
                raise NotAcknowledged(
                    f"{op} (request {command[0]}) not acknowledged after {attempts} attempts: "
                    f"{errors[-5:]}"
                )
