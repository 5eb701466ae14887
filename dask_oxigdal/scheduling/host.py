"""Policy lifecycle and error isolation: the part of the extension that hosts the policies.

:class:`PolicyHost` is a base class of
:class:`~dask_oxigdal.scheduling.extension.OxigdalScheduling`. It finds
policies (:meth:`PolicyHost.policy`, the one way policies look each other
up), checks their declared order (``SchedulingPolicy.after``), runs their
deferred work (:meth:`PolicyHost.run_policy`) and decides what an exception
costs:

- a :data:`~dask_oxigdal.scheduling.policy.TASK_FAULTS` exception raised while
  a policy handled one task's input fails that task (or that submission)
  with :class:`~dask_oxigdal.exceptions.TaskRejected`; the policy stays on;
- any other exception disables the policy (logged, reported with the event
  ``policy-disabled``); its :meth:`~SchedulingPolicy.close` gives back what it
  holds, on a later tick.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dask_oxigdal.exceptions import ConfigError, TaskRejected
from dask_oxigdal.scheduling.holds import NAME, error_text
from dask_oxigdal.scheduling.policy import TASK_FAULTS, SchedulingPolicy, TaskInfo

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler

__all__ = ["PolicyHost", "is_task_fault"]

logger = logging.getLogger("dask_oxigdal.scheduling.extension")


def is_task_fault(exc: BaseException) -> bool:
    """Whether ``exc``, raised while a policy handled one task, is that task's fault.

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    bool
    """
    return isinstance(exc, TASK_FAULTS) and not isinstance(exc, ConfigError)


class PolicyHost:
    """Hosts the policies of an extension (see the module docstring).

    Subclasses set ``scheduler``, ``policies``, ``disabled``, ``info``,
    ``task_faults``, ``_transition_policies`` and provide ``reject``.
    """

    scheduler: Scheduler | None
    policies: list[SchedulingPolicy]
    disabled: dict[str, str]
    info: dict[Any, TaskInfo]
    task_faults: dict[str, int]
    _transition_policies: list[SchedulingPolicy]

    def policy_names(self) -> list[str]:
        """Names of the configured policies, in order."""
        return [self.policy_name(p) for p in self.policies]

    @staticmethod
    def policy_name(policy: SchedulingPolicy) -> str:
        """The name of ``policy`` in the snapshot: its ``name``, else its class name.

        Parameters
        ----------
        policy : SchedulingPolicy

        Returns
        -------
        str
        """
        return policy.name or type(policy).__name__

    _policy_name = policy_name

    def _check_order(self) -> None:
        """Each policy comes after the configured policies its ``after`` names."""
        names = self.policy_names()
        for i, policy in enumerate(self.policies):
            for other in policy.after:
                if other in names[i + 1 :]:
                    name = names[i]
                    raise ConfigError(
                        f"oxigdal.scheduling.policies: list {name} after {other}: {name} "
                        f"must come after {other} ({name}.after = {policy.after!r}); "
                        f"order is {names}"
                    )

    def policy(self, name: str) -> SchedulingPolicy | None:
        """The enabled policy called ``name``, or ``None`` (not configured, or disabled).

        This is how policies find each other.

        Parameters
        ----------
        name : str
            Policy name (its ``name``, else its class name).

        Returns
        -------
        SchedulingPolicy or None
        """
        if name in self.disabled:
            return None
        for policy in self.policies:
            if self.policy_name(policy) == name:
                return policy
        return None

    def get_policy(self, name: str) -> SchedulingPolicy:
        """The policy called ``name`` (its ``name`` or class name).

        Parameters
        ----------
        name : str
            Policy name.

        Returns
        -------
        SchedulingPolicy
        """
        for policy in self.policies:
            if self.policy_name(policy) == name:
                return policy
        raise KeyError(f"no policy {name!r}; policies are {self.policy_names()}")

    # --------------------------------------------------------- policy errors
    def _refresh_transition_policies(self) -> None:
        self._transition_policies = [
            p
            for p in self.policies
            if self.policy_name(p) not in self.disabled
            and type(p).transition is not SchedulingPolicy.transition
            and p.wants_transitions
        ]

    def _active(self) -> Iterable[SchedulingPolicy]:
        return [p for p in self.policies if self.policy_name(p) not in self.disabled]

    def run_policy(self, policy: SchedulingPolicy, method: str, *args: Any) -> Any:
        """Call ``policy.<method>(*args)`` unless the policy is disabled; disable it if it raises.

        Policies use this for deferred work (``scheduler.loop.add_callback``).

        Parameters
        ----------
        policy : SchedulingPolicy
        method : str
        *args
            Passed on.

        Returns
        -------
        object
            What the method returned, or ``None``.
        """
        if self.policy_name(policy) in self.disabled:
            return None
        return self._call(policy, method, *args)

    def _call(self, policy: SchedulingPolicy, method: str, *args: Any) -> Any:
        try:
            return getattr(policy, method)(*args)
        except Exception as e:
            self._disable(policy, method, e)
            return None

    def _disable(self, policy: SchedulingPolicy, method: str, exc: BaseException) -> None:
        name = self.policy_name(policy)
        logger.exception("oxigdal policy %s failed in %s(); disabling it", name, method)
        self.disabled[name] = f"{type(exc).__name__} in {method}(): {exc}"
        self._refresh_transition_policies()
        if self.scheduler is not None and callable(getattr(policy, "close", None)):
            # a policy that holds something (paused workers, held tasks) gives it
            # back; later, on the event loop, since this may run in a transition hook
            self.scheduler.loop.add_callback(self._close_policy, policy)
        if self.scheduler is not None:
            self.scheduler.log_event(
                NAME,
                {
                    "action": "policy-disabled",
                    "policy": name,
                    "method": method,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )

    def _task_fault(
        self,
        policy: SchedulingPolicy,
        method: str,
        tasks: list[tuple[Any, TaskInfo]],
        exc: BaseException,
    ) -> None:
        """``policy`` failed in ``method`` on the input of ``tasks`` (key, info): fail them.

        The policy stays enabled. Tasks already finished or forgotten are only
        counted and reported.
        """
        tasks = [(key, info) for key, info in tasks if key not in self._rejected]
        if not tasks:
            return  # already being failed (the policy raised again on a later transition)
        name = self.policy_name(policy)
        text = error_text(exc)
        self.task_faults[name] = self.task_faults.get(name, 0) + len(tasks)
        first = tasks[0][0]
        what = f"task {first!r}" if len(tasks) == 1 else f"{len(tasks)} tasks of one submission"
        logger.warning(
            "oxigdal policy %s failed in %s() on %s; rejecting it: %s", name, method, what, text
        )
        error = TaskRejected(
            f"{what} rejected by dask-oxigdal: policy {name} could not handle "
            f"{'its' if len(tasks) == 1 else 'their'} annotations/events in {method}(): {text}"
        )
        for key, info in tasks:
            ts = self.scheduler.tasks.get(key) if self.scheduler is not None else None
            if (
                ts is not None
                and not info.done
                and ts.state not in ("forgotten", "memory", "erred")
                and self.info.get(key) is info
            ):
                self.reject(ts, info, error)
        if self.scheduler is not None:
            self.scheduler.log_event(
                NAME,
                {
                    "action": "task-rejected",
                    "policy": name,
                    "method": method,
                    "key": str(first),
                    "tasks": len(tasks),
                    "error": text,
                },
            )

    def _close_policies(self) -> None:
        """Close every policy that has a ``close()`` (this extension is gone)."""
        for policy in self.policies:
            if callable(getattr(policy, "close", None)):
                self._close_policy(policy)

    def _close_policy(self, policy: SchedulingPolicy) -> None:
        try:
            policy.close()  # type: ignore[attr-defined]
        except Exception:
            logger.exception("oxigdal policy %s failed in close()", self.policy_name(policy))
