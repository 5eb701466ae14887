"""FairShare's cost model: what one task of a prefix costs, in seconds.

Base class of :class:`~dask_oxigdal.scheduling.fairshare.FairShare`: the
measured mean of the prefix's tasks (shrunk toward the median of the measured
prefixes while it rests on few tasks), else Dask's estimate
(:func:`~dask_oxigdal.scheduling._dask.prefix_estimate`), else a guess.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dask_oxigdal.scheduling._dask import compute_seconds, prefix_estimate

if TYPE_CHECKING:
    from distributed.scheduler import TaskPrefix

__all__ = ["MEAN_WINDOW", "PRIOR_WEIGHT", "PrefixCosts"]

#: Finished tasks over which a prefix's mean cost is a plain running mean; after
#: that an exponential average with weight 1/MEAN_WINDOW on the latest task.
MEAN_WINDOW = 100
#: Weight, in tasks, of the prior (the median of the measured prefixes) in the
#: cost of a prefix measured on few tasks.
PRIOR_WEIGHT = 4


class PrefixCosts:
    """Per-prefix cost estimates (a base class of ``FairShare``)."""

    def dask_estimate(self, prefix: TaskPrefix) -> float | None:
        """Dask's duration estimate (seconds) of a task prefix, ``None`` if it has none.

        ``TaskPrefix.duration_average`` when set, else twice the longest
        execution time seen in a worker heartbeat (as Dask's own occupancy
        estimate does), else ``None``.

        Parameters
        ----------
        prefix : distributed.scheduler.TaskPrefix

        Returns
        -------
        float or None
        """
        return prefix_estimate(prefix)

    def estimate(self, prefix: TaskPrefix) -> float:
        """Fair-share cost (seconds) of a task of ``prefix``.

        In order of preference:

        1. the mean compute time of the prefix's tasks this policy has seen
           finish (from the workers' ``startstops``; a running mean over the
           first ``MEAN_WINDOW`` tasks, then an exponential average with the
           same weight), shrunk toward the median of the measured prefixes
           while it rests on few tasks (``PRIOR_WEIGHT`` pseudo-tasks). Dask's
           own ``duration_average`` is the same data with a weight of 1/2 on
           the latest task, too noisy to compare tenants;
        2. Dask's estimate (:meth:`dask_estimate`), e.g. from tasks that
           finished before the extension was installed;
        3. a guess: the median cost of the prefixes measured so far (a
           newcomer is assumed to be like the work already running, so a late
           tenant with a new function neither jumps ahead nor waits for the
           queue), or ``default-task-cost`` when nothing is measured yet. A
           guess is replaced by the measurement as soon as the prefix's first
           task finishes.

        Parameters
        ----------
        prefix : distributed.scheduler.TaskPrefix

        Returns
        -------
        float
        """
        name = prefix.name
        stats = self.stats.get(name)
        if stats is not None:
            self.guessed.discard(name)
            n, mean = stats
            prior = self.prior
            if prior is not None and n < MEAN_WINDOW:
                # shrink a mean of few tasks toward the median of the measured
                # prefixes: one noisy first task must not bias a whole tenant
                mean = (n * mean + PRIOR_WEIGHT * prior) / (n + PRIOR_WEIGHT)
            return max(mean, 1e-6)
        cost = self.dask_estimate(prefix)
        if cost is None:
            self.guessed.add(name)
            return self.guess
        self.guessed.discard(name)
        return cost

    def _observe(self, name: str, kwargs: dict[str, Any]) -> None:
        seconds = compute_seconds(kwargs.get("startstops"))
        if seconds <= 0:
            return
        stats = self.stats.get(name)
        if stats is None:
            self.stats[name] = [1, seconds]
            if name in self.guessed:
                # first measurement of a guessed prefix: re-tag soon, outside the
                # state machine (never re-enter it from a transition hook)
                self.defer("periodic")
            return
        count = min(stats[0] + 1, MEAN_WINDOW)
        stats[0] += 1
        stats[1] += (seconds - stats[1]) / count

    def _update_guess(self) -> None:
        costs = sorted(cost for name, cost in self.prefix_cost.items() if name not in self.guessed)
        self.guess = costs[len(costs) // 2] if costs else self.default_task_cost
