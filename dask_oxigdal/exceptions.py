"""Exceptions raised by dask-oxigdal."""

from __future__ import annotations


class OxigdalError(Exception):
    """Base class of every dask-oxigdal error."""


class ConfigError(OxigdalError, ValueError):
    """A configuration value is invalid; the message names the key, value and valid choices."""


class GangError(OxigdalError):
    """A gang (``gang=`` annotation) cannot run: malformed, or its restart budget is spent."""


class GangTooLarge(GangError):
    """A gang needs more worker slots (threads) than the cluster has."""


class DeadlineInfeasible(OxigdalError):
    """A deadline cannot be met by the estimate made at submission (``infeasible: reject``)."""


class DeadlineMissed(OxigdalError):
    """A task was cancelled because its deadline passed (``on-miss: cancel``)."""


class TaskRejected(OxigdalError, ValueError):
    """A task was refused because of its own input (annotations, events), not a policy bug.

    A policy raises it (or a ``ValueError``, ``TypeError`` or
    ``ArithmeticError``) while it handles one task; the extension then fails
    that task with this error, whose message names the policy and the value,
    and keeps the policy enabled. See
    :class:`~dask_oxigdal.scheduling.policy.SchedulingPolicy`.
    """
