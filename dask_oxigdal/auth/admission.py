"""Deadline admission within a tenant's entitlement plus idle capacity (``oxigdal.auth``).

A ``deadline=`` annotation moves a task ahead of every task without one in
its queue (earliest deadline first, :mod:`dask_oxigdal.scheduling.deadline`).
Left unbounded, a tenant could put all its work ahead of every other
tenant's by giving it a deadline. With ``oxigdal.auth`` on, the ``Deadline``
policy asks :class:`DeadlineAdmission` before it accepts a job (the deadline
tasks of one submission sharing a deadline, tenant and queue)::

    horizon  = deadline - now                                   (seconds)
    share    = weight(tenant) / sum of the weights of the tenants with
               pending work (the tenant's own submission counts)
    budget   = share * total worker threads * horizon           (task-seconds)
    demand   = the job's work + what remains of the tenant's admitted
               deadline jobs due no later than this one

The job is admitted as urgent (earliest-deadline-first) only while
``demand <= budget``. Tenants without pending work leave their share to the
ones with work, so ``share`` is the tenant's entitlement plus the idle
capacity; a tenant alone on the cluster has share 1. Work is estimated with
the ``Deadline`` policy's own per-task costs (:meth:`Deadline.task_cost`).

A job over its budget is, per ``oxigdal.auth.deadline-admission``:

``demote`` (default)
    accepted without deadline priority: its tasks keep their fair-share
    order, and it is not counted as met or missed;
``reject``
    its tasks err with :class:`DeadlineOverEntitlement`;
``off``
    admitted anyway (no check).

Either way a ``deadline-over-entitlement`` event on the ``oxigdal`` topic
(and an audit entry) gives the tenant, the demand, the budget and the share.
The work of other tenants is never named in it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dask_oxigdal.exceptions import ConfigError, DeadlineInfeasible

if TYPE_CHECKING:
    from dask_oxigdal.scheduling.extension import OxigdalScheduling

__all__ = ["ACTIONS", "DeadlineAdmission", "DeadlineOverEntitlement"]

#: Valid ``oxigdal.auth.deadline-admission`` values.
ACTIONS = ("demote", "reject", "off")


class DeadlineOverEntitlement(DeadlineInfeasible):
    """A deadline job asked for more than its tenant's entitlement plus idle capacity."""


class DeadlineAdmission:
    """The entitlement check the ``Deadline`` policy runs before it accepts a job.

    Parameters
    ----------
    extension : OxigdalScheduling
        The started extension (weights, usage, scheduler).
    action : {"demote", "reject", "off"}
        What happens to a job over its budget.
    audit : callable, optional
        ``audit(action, outcome, **fields)`` (the guard's audit log).
    """

    def __init__(self, extension: OxigdalScheduling, action: str, audit: Any = None) -> None:
        if action is False:  # YAML 1.1 reads an unquoted off as false
            action = "off"
        if action not in ACTIONS:
            raise ConfigError(
                f"oxigdal.auth.deadline-admission={action!r} is not valid; choose one of "
                f"{', '.join(ACTIONS)}"
            )
        self.extension = extension
        self.action = action
        self._audit = audit
        self.admitted = 0
        self.demoted = 0
        self.rejected = 0

    def share(self, tenant: str) -> float:
        """``tenant``'s share of the cluster: its weight over the active tenants' weights.

        Parameters
        ----------
        tenant : str

        Returns
        -------
        float
            In (0, 1]; 1 when no other tenant has pending work.
        """
        ext = self.extension
        weights = ext.weights
        own = weights.get(tenant, 1.0)
        total = own
        for t, usage in ext.usage.items():  # O(tenants), once per deadline job
            if t != tenant and usage.pending > 0:
                total += weights.get(t, 1.0)
        return own / total if total > 0 else 1.0

    def admit(self, policy: Any, job: Any, members: list) -> bool:
        """Whether ``job`` may be accepted with deadline priority.

        Parameters
        ----------
        policy : dask_oxigdal.scheduling.deadline.Deadline
            The policy (its live jobs are the tenant's admitted deadline work).
        job : dask_oxigdal.scheduling.deadline._Job
            The job, with ``work``, ``deadline``, ``tenant`` and ``queue`` set.
        members : list of (TaskState, TaskInfo)
            Its tasks.

        Returns
        -------
        bool
            ``True``: accept it as a deadline job. ``False``: it was demoted
            (its tasks run in fair-share order) or rejected (its tasks err);
            the policy must not track it.
        """
        if self.action == "off":
            return True
        ext = self.extension
        now = time.time()
        horizon = max(job.deadline - now, 0.0)
        threads = ext.scheduler.total_nthreads
        share = self.share(job.tenant)
        budget = share * threads * horizon
        demand = job.work
        for other in policy.jobs.values():  # O(live jobs), once per deadline job
            if other.tenant == job.tenant and other.deadline <= job.deadline:
                demand += other.remaining()
        if demand <= budget:
            self.admitted += 1
            return True
        outcome = "demoted" if self.action == "demote" else "rejected"
        then = (
            "its tasks run in fair-share order, without deadline priority"
            if outcome == "demoted"
            else "its tasks are rejected"
        )
        message = (
            f"deadline job of tenant {job.tenant!r} ({len(members)} task(s) in queue "
            f"{job.queue!r}, due in {horizon:.3g}s) {outcome}: the tenant's deadline work "
            f"due by then is {demand:.3g} task-seconds, over its entitlement plus idle "
            f"capacity of {budget:.3g} task-seconds (share {share:.3g} of {threads} "
            f"thread(s) x {horizon:.3g}s); {then} "
            f"(oxigdal.auth.deadline-admission={self.action})"
        )
        fields = dict(
            tenant=job.tenant,
            queue=job.queue,
            deadline=job.deadline,
            tasks=len(members),
            demand=demand,
            budget=budget,
            share=share,
            outcome=outcome,
            message=message,
        )
        if outcome == "demoted":
            self.demoted += 1
        else:
            self.rejected += 1
            exc = DeadlineOverEntitlement(message)
            for ts, info in members:
                ext.reject(ts, info, exc)
        ext.emit("deadline-over-entitlement", **fields)
        if self._audit is not None:
            self._audit(
                "deadline-admission", outcome, tenant=job.tenant, tasks=len(members),
                demand=round(demand, 3), budget=round(budget, 3),
            )  # fmt: skip
        return False

    def snapshot(self) -> dict[str, Any]:
        """Counters: jobs admitted, demoted and rejected by the check."""
        return {
            "action": self.action,
            "admitted": self.admitted,
            "demoted": self.demoted,
            "rejected": self.rejected,
        }
