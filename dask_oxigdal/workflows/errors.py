"""Workflow states, names and errors."""

from __future__ import annotations

import re

from dask_oxigdal.exceptions import OxigdalError

__all__ = [
    "CONTROL_TOPIC",
    "STATES",
    "StepArgumentsChanged",
    "StepTimeout",
    "WorkflowCancelled",
    "WorkflowError",
    "WorkflowInterrupted",
]

#: Workflow states as listed by :func:`~dask_oxigdal.workflows.workflows`.
STATES = ("running", "done", "failed", "cancelled", "interrupted")
_TERMINAL = ("done", "failed", "cancelled")
#: Event topic of cancel requests (workflow events go to ``oxigdal``).
CONTROL_TOPIC = "oxigdal-workflow"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STEP_OPTIONS = ("retries", "backoff", "timeout", "tenant", "queue", "deadline", "locality")


class WorkflowError(OxigdalError):
    """A workflow cannot be started, resumed or found, or is not deterministic."""


class StepArgumentsChanged(WorkflowError):
    """A recorded step was called again with different arguments on resume."""


class StepTimeout(WorkflowError, TimeoutError):
    """A step did not finish within its ``timeout``."""


class WorkflowCancelled(BaseException):
    """Raised inside a cancelled workflow (a BaseException: ``except Exception`` does not catch it)."""


class WorkflowInterrupted(BaseException):
    """The workflow lost its steps (scheduler restart): it stops, resumable."""
