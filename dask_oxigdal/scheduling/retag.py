"""FairShare's re-tagging: new virtual-time tags for some tenants' live tasks, in Dask's order.

Base class of :class:`~dask_oxigdal.scheduling.fairshare.FairShare` (see
:meth:`Retagging.retag`).
"""

from __future__ import annotations

import heapq

__all__ = ["Retagging"]

# states of tasks whose priority can still change what runs first
_PENDING = ("waiting", "queued", "no-worker", "released")


class Retagging:
    """Re-tagging of live tasks (a base class of ``FairShare``)."""

    def retag(
        self,
        changed: set[str] | None = None,
        tenants: set[tuple[str, str]] | None = None,
    ) -> int:
        """Re-tag some tenants' live tasks, in Dask's order, keeping that order.

        Walks each tenant's live tasks in Dask's priority order and gives the
        ones still on the scheduler (``waiting``, ``queued``, ``no-worker``,
        ``released``) consecutive tags from the tenant's earliest start tag
        (or the virtual time, if earlier). Tasks already sent to a worker, and
        deadline tasks (their priority carries their EDF key), keep their tags.
        The new tags never decrease along Dask's order (Dask's ties get
        consecutive tags in submission order, the order in which the
        scheduler's queue breaks them) and stay at or below the tag of every
        later task already on a worker, so the tenant's own order holds wherever its tasks meet. One
        exception: after a cost change, a task already on a worker keeps its
        tag in the old units, which may be larger than the new tags of tasks
        Dask ranks after it; they would overtake it only on that worker's
        ready heap (with a finite ``worker-saturation``, a worker holds few
        tasks that have not started).

        Parameters
        ----------
        changed : set of str, optional
            Prefix names whose cost changed (already updated in ``prefix_cost``):
            re-tag the tenants that have live tasks of these prefixes.
        tenants : set of (queue, tenant), optional
            Re-tag these tenants' live tasks.

        Returns
        -------
        int
            The number of tasks re-tagged.
        """
        ext = self.extension
        assert ext is not None and ext.scheduler is not None
        scheduler = ext.scheduler
        tasks = scheduler.tasks
        count = 0
        queued_changed = False
        queues = set()
        retagged: set[tuple[str, str]] = set()
        inf = float("inf")
        for (queue, tenant), live in self.order.items():
            if not live:
                continue
            if not (
                (tenants is not None and (queue, tenant) in tenants)
                or (changed and any(entry[3].prefix in changed for entry in live))
            ):
                continue
            entries = []
            for dprio, _, key, info in live:
                ts = tasks.get(key)
                movable = (
                    ts is not None
                    and ts.state in _PENDING
                    and info.edf is None
                    and info.finish_tag != 0.0
                    and bool(ts.priority)
                )
                entries.append((dprio, info, ts if movable else None))
            # bound[i]: the smallest tag of a fixed task at or after position i
            bound = [inf] * (len(entries) + 1)
            for i in range(len(entries) - 1, -1, -1):
                _, info, ts = entries[i]
                bound[i] = bound[i + 1] if ts is not None else min(bound[i + 1], info.finish_tag)
            starts = [info.start_tag for _, info, ts in entries if ts is not None]
            if not starts:
                continue
            weight = ext.weights.get(tenant, 1.0)
            # keep a tenant that is behind the virtual time behind it; reset a lead
            start = min(min(starts), self._advance(queue))
            prev_tag = -inf  # the last re-tagged task's tag: tags never decrease
            n = 0
            for i, (_, info, ts) in enumerate(entries):
                if ts is None:
                    continue
                natural = start + self.prefix_cost.get(info.prefix, self.default_task_cost) / weight
                # Dask's ties get consecutive tags too, in submission order (a re-tag
                # runs only while tenants compete): the scheduler's queue breaks them
                # in that order anyway
                tag = max(prev_tag, min(natural, bound[i + 1]))
                info.start_tag, info.finish_tag = min(start, tag), tag
                start = natural
                ts.priority = (info.rank, tag, *ts.priority[2:])
                queued_changed = queued_changed or ts.state == "queued"
                prev_tag = tag
                n += 1
            # the tenant's next submission continues after its re-tagged backlog
            self.last_tag[(queue, tenant)] = max(start, prev_tag, entries[-1][1].finish_tag)
            queues.add(queue)
            retagged.add((queue, tenant))
            count += n
        if queued_changed:
            # scheduler.queued caches priorities at insertion: rebuild it
            queued = list(scheduler.queued)
            scheduler.queued.clear()
            for ts in queued:
                scheduler.queued.add(ts)
        for queue, tenant in list(self.last_tag):
            # tenants with no live task: their last tag is in the old units; one
            # in the future would delay their next submission, so bring it to V
            if (
                queue in queues
                and (queue, tenant) not in retagged
                and not self.order.get((queue, tenant))
            ):
                vt = self.virtual_time.get(queue, 0.0)
                if self.last_tag[(queue, tenant)] > vt:
                    self.last_tag[(queue, tenant)] = vt
        if queues:
            for queue in queues:
                heap = [
                    (info.start_tag, info.pseq, info)
                    for info in ext.info.values()
                    if info.pseq and info.queue == queue
                ]
                heapq.heapify(heap)
                self.runnable[queue] = heap
        self.retags += 1
        self.retagged_tasks += count
        return count
