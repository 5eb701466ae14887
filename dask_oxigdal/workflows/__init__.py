"""Durable workflows: plain Python control flow over Dask, resumable after a crash.

``@step`` marks the work, ``@workflow`` the orchestrating function. Inside a
running workflow, calling a step submits it to Dask and waits for its result;
``step.submit`` / ``step.map`` return :class:`StepFuture` objects and
:func:`gather` collects them. ``if``, ``for``, ``while`` and ``try`` are
ordinary Python.

Durability (see docs/workflows.md for the reasoning):

- each step call gets a deterministic id: (workflow id, step name, call
  sequence number within the workflow, argument digest);
- the worker that ran the step writes its result to the project's checkpoint
  store (:class:`~dask_oxigdal.fault.checkpoint.CheckpointStore`: atomic
  write, SHA-256 checked on read) under ``<store>/workflows/<id>/`` before the
  result is returned, so the workflow never moves on past an unrecorded step.
  A step that failed for good is recorded by the orchestrator (the exception
  replays on resume);
- resuming re-runs the workflow function: a recorded step returns its
  recorded result (or raises its recorded exception) without running; a step
  whose argument digest changed raises :class:`StepArgumentsChanged`.

A step that was in flight when the orchestrating process died may run once
more; a step whose result was recorded never runs again.
"""

from __future__ import annotations

import sys

from dask_oxigdal._moved import share_public_names as _share_public_names
from dask_oxigdal.workflows._run import CONTROL_TOPIC, _drive, _on_cluster_entry, _Run
from dask_oxigdal.workflows._store import _base_url, _check_id, _open_store, _workflow_ids, _WStore
from dask_oxigdal.workflows.api import (
    WorkflowHandle,
    resume_workflow,
    start_workflow,
    workflows,
)
from dask_oxigdal.workflows.errors import (
    STATES,
    StepArgumentsChanged,
    StepTimeout,
    WorkflowCancelled,
    WorkflowError,
    WorkflowInterrupted,
)
from dask_oxigdal.workflows.steps import Step, StepFuture, gather, sleep, step, workflow

__all__ = [
    "CONTROL_TOPIC",
    "STATES",
    "Step",
    "StepArgumentsChanged",
    "StepFuture",
    "StepTimeout",
    "WorkflowCancelled",
    "WorkflowError",
    "WorkflowHandle",
    "WorkflowInterrupted",
    "gather",
    "resume_workflow",
    "sleep",
    "start_workflow",
    "step",
    "workflow",
    "workflows",
]
# private names other modules of the project use (cli.py, tests, benchmarks)
_PRIVATE = (
    _WStore,
    _base_url,
    _check_id,
    _open_store,
    _workflow_ids,
    _drive,
    _on_cluster_entry,
    _Run,
)

# ``import dask_oxigdal.workflows as m`` binds the public function ``dox.workflows``
# (the package keeps that function's name): give it this package's public names
_share_public_names(__name__, sys.modules[__name__])
