"""``Coordinator``: the bridge between the replicated state and the scheduler's event loop.

pysyncobj runs on its own thread. The scheduler extension talks to the
coordinator only from the event loop, and never waits for a commit there:

- writes (:meth:`Coordinator.usage_add`, :meth:`Coordinator.tenant_set`, ...)
  are validated, given a request id and appended to a bounded queue (O(1));
- :meth:`Coordinator.flush` (called from the extension's periodic callback,
  and when a batch fills up) sends the head of the queue as one replicated
  batch, at most one batch in flight, so writes commit in order;
- pysyncobj's callback (its thread) hands the outcome back with
  ``loop.add_callback``. On success the batch leaves the queue; on a failure
  or after ``commit-timeout`` the same batch, with the same request ids, is
  sent again (the state machine applies each id once);
- every applied batch schedules (coalesced) a refresh of the local read view
  :attr:`Coordinator.state` on the event loop;
- while the group has no leader the extension keeps scheduling from its last
  known state, writes queue up to ``queue-size`` (beyond that they are
  dropped and counted) and an ``alert`` event (``coordinator-no-leader``) is
  emitted once per outage. Each alert (``coordinator-not-ready``,
  ``coordinator-no-leader``, ``coordinator-queue-full``) is emitted once per
  occurrence of its condition and re-armed when the condition clears, so a
  second outage alerts again;
- readiness (the replica has caught up with the recorded state) is checked at
  start and again on every tick (:meth:`Coordinator.flush`) until it holds:
  callbacks registered with :meth:`Coordinator.on_ready` then run once, on the
  event loop, and a ``coordinator-ready`` event is emitted when it came late.

The embedded single-node group reuses the address recorded in its data
directory (pysyncobj records the member list in its dump; a node on a new
port would wait forever for its own former address to vote), see
:func:`~dask_oxigdal.coordination.addresses.embedded_address`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from types import MappingProxyType
from typing import Any

from dask_oxigdal.coordination._pysyncobj import FAIL_REASON
from dask_oxigdal.coordination.addresses import embedded_address
from dask_oxigdal.coordination.commands import SECTIONS, empty_state, make_command
from dask_oxigdal.coordination.node import start_state, stop_state
from dask_oxigdal.coordination.settings import CoordinatorSettings

__all__ = ["Coordinator", "StateView"]

logger = logging.getLogger(__name__)
_STOP_TIMEOUT = 30.0  # seconds a close waits for the Raft node's thread to stop

_ROLES = {0: "follower", 1: "candidate", 2: "leader"}
FAIL_NAMES = {v: k.lower() for k, v in vars(FAIL_REASON).items() if k.isupper()}


class StateView:
    """Read-only view of the local replica (possibly stale).

    Attributes ``tenants``, ``usage``, ``quarantine``, ``manifest``,
    ``leases`` (read-only mappings) and ``audit`` (a tuple).
    """

    def __init__(self, data: dict[str, Any]) -> None:
        for section in SECTIONS:
            value = data.get(section, [] if section == "audit" else {})
            setattr(
                self,
                section,
                tuple(value) if isinstance(value, list) else MappingProxyType(dict(value)),
            )
        self.meta = MappingProxyType(dict(data.get("meta", {})))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s))}" for s in SECTIONS)
        return f"<StateView {sizes}>"


class Coordinator:
    """The scheduler extension's handle on the replicated state (``extension.coordinator``).

    Parameters
    ----------
    settings : CoordinatorSettings, optional
        Default: read ``oxigdal.coordinator.*``.
    emit : callable, optional
        ``emit(kind, **fields)`` for alerts (the extension's :meth:`emit`).
    """

    def __init__(self, settings: CoordinatorSettings | None = None, *, emit: Any = None) -> None:
        self.settings = settings or CoordinatorSettings.from_config()
        self._emit = emit
        self.node: Any = None
        self.loop: Any = None
        self.address: str | None = None
        self.role = "stopped"
        self._queue: collections.deque = collections.deque()
        self._in_flight: list | None = None
        self._in_flight_since = 0.0
        self._generation = 0
        self._view = StateView(empty_state())
        self._refresh_scheduled = False
        self._no_leader_since: float | None = None
        #: alerts emitted whose condition has not cleared yet (each is re-armed on recovery)
        self._alerted: set[str] = set()
        self._ready = False
        self._started_at = 0.0
        self._on_ready: list[Any] = []
        self.counters = {
            "committed": 0,
            "batches": 0,
            "retried": 0,
            "dropped": 0,
            "audit_skipped": 0,
            "failures": 0,
            "rejected": 0,
        }
        self.last_error: str | None = None

    # ------------------------------------------------------------ lifecycle
    async def start(self, loop: Any = None) -> bool:
        """Start (or join) the group; wait up to ``start-timeout`` for it to be ready.

        When it is not ready by then, a ``coordinator-not-ready`` alert is
        emitted and readiness is checked again on every tick (:meth:`flush`).

        Parameters
        ----------
        loop : tornado.ioloop.IOLoop, optional
            The scheduler's event loop (default: the current one).

        Returns
        -------
        bool
            Whether the replica is ready (the recorded state is loaded).

        Raises
        ------
        dask_oxigdal.coordination.journal.CorruptJournalError
            The journal or dump is corrupt: never loaded silently.
        """
        from tornado.ioloop import IOLoop

        self.loop = loop or IOLoop.current()
        s = self.settings
        self._started_at = time.monotonic()

        def _start() -> Any:  # file and socket work: off the event loop
            if s.mode == "observer":
                self.address = None
            else:
                # the embedded group reuses its recorded address (see the module docstring)
                self.address = s.self_address or embedded_address(s.data_dir)
            return start_state(s, self.address, on_state_changed=self._on_state_changed)

        self.node = await asyncio.get_running_loop().run_in_executor(None, _start)
        self.role = "observer" if self.address is None else "follower"
        self.node.add_listener(self._on_applied)
        deadline = time.monotonic() + s.start_timeout
        while time.monotonic() < deadline:
            if self.check_ready():
                break
            await asyncio.sleep(0.02)
        self._refresh()
        if not self.check_ready():
            self._alert(
                "coordinator-not-ready",
                f"not ready after {s.start_timeout}s (checked again on every tick)",
            )
        return self._ready

    @property
    def ready(self) -> bool:
        """Whether the replica has loaded the recorded state (re-checked until it holds)."""
        return self.check_ready()

    def check_ready(self) -> bool:
        """Check readiness; the first time it holds, refresh the view and run :meth:`on_ready` callbacks.

        Called at start, on every tick (:meth:`flush`) and by :attr:`ready`.
        Event loop only.

        Returns
        -------
        bool
            Whether the replica is ready.
        """
        if self._ready:
            return True
        node = self.node
        if node is None or not node.isReady():
            return False
        self._ready = True
        self._refresh()
        if "coordinator-not-ready" in self._alerted:
            self._alerted.discard("coordinator-not-ready")
            if self._emit is not None:
                self._emit("coordinator-ready", waited_s=time.monotonic() - self._started_at)
        callbacks, self._on_ready = self._on_ready, []
        for fn in callbacks:
            self._run_callback(fn)
        return True

    def on_ready(self, fn: Any) -> None:
        """Call ``fn()`` once, on the event loop, when the replica is ready.

        Restores of policy state register here: they run at start when the
        group is ready then, or on the first tick after it becomes ready.

        Parameters
        ----------
        fn : callable
            No arguments; exceptions are logged, never raised.
        """
        if self._ready:
            self._run_callback(fn)
        else:
            self._on_ready.append(fn)

    @staticmethod
    def _run_callback(fn: Any) -> None:
        try:
            fn()
        except Exception:
            logger.exception("dask-oxigdal coordinator: on_ready callback %r failed", fn)

    async def close(self, timeout: float = 2.0) -> None:
        """Flush what is queued (waiting up to ``timeout``) and stop the node.

        Parameters
        ----------
        timeout : float
            Seconds to wait for queued writes to commit.
        """
        if self.node is None:
            return
        deadline = time.monotonic() + timeout
        while (self._queue or self._in_flight) and time.monotonic() < deadline:
            self.flush()
            await asyncio.sleep(0.02)
        node, self.node = self.node, None
        self.role = "stopped"
        stopping = asyncio.get_running_loop().run_in_executor(None, stop_state, node)
        try:
            await asyncio.wait_for(stopping, _STOP_TIMEOUT)
        except TimeoutError:
            # never hold up the scheduler's close for ever
            logger.warning(
                "dask-oxigdal coordinator: the Raft node did not stop within %ss", _STOP_TIMEOUT
            )

    # ------------------------------------------------------------ callbacks (pysyncobj thread)
    def _on_state_changed(self, old: int, new: int) -> None:
        self.role = _ROLES.get(new, str(new))

    def _on_applied(self) -> None:
        if not self._refresh_scheduled and self.loop is not None:
            self._refresh_scheduled = True
            self.loop.add_callback(self._refresh)

    # ------------------------------------------------------------ event loop side
    def _refresh(self) -> None:
        self._refresh_scheduled = False
        if self.node is not None:
            self._view = StateView(self.node.view())

    @property
    def state(self) -> StateView:
        """The local read view (possibly stale; refreshed after each applied batch)."""
        return self._view

    def _enqueue(self, op: str, **args: Any) -> str | None:
        command = make_command(op, **args)
        if len(self._queue) >= self.settings.queue_size:
            self.counters["dropped"] += 1
            self._alert("coordinator-queue-full", f"write queue full ({self.settings.queue_size})")
            return None
        self._queue.append(command)
        if len(self._queue) >= self.settings.batch_size and self._in_flight is None:
            self.loop.add_callback(self.flush)
        return command[0]

    def flush(self) -> None:
        """The tick: check readiness, then send the head of the queue as one batch.

        Sending is a no-op while a batch is in flight, until ``commit-timeout``:
        then the same batch (same request ids) is sent again.
        """
        node = self.node
        if node is None:
            return
        if not self._ready:
            self.check_ready()
        now = time.monotonic()
        if self._in_flight is not None:
            if now - self._in_flight_since < self.settings.commit_timeout:
                return
            # outcome unknown: resend the same commands (same request ids)
            self.counters["retried"] += 1
            self._note_failure("timeout")
        if not self._queue:
            self._in_flight = None
            return
        n = min(len(self._queue), self.settings.batch_size)
        batch = [self._queue[i] for i in range(n)]
        self._generation += 1
        gen = self._generation
        self._in_flight = batch
        self._in_flight_since = now
        loop = self.loop

        def done(result: Any, error: Any) -> None:  # pysyncobj's thread
            loop.add_callback(self._on_done, gen, n, result, error)

        try:
            node.execute(batch, callback=done)
        except Exception as e:  # pragma: no cover - pysyncobj refused the call
            self._in_flight = None
            self._note_failure(f"{type(e).__name__}: {e}")

    def _on_done(self, gen: int, n: int, result: Any, error: Any) -> None:
        if gen != self._generation:
            return  # a resent batch superseded this one
        self._in_flight = None
        if error == FAIL_REASON.SUCCESS:
            for _ in range(n):
                self._queue.popleft()
            self.counters["committed"] += n
            self.counters["batches"] += 1
            self.counters["rejected"] += sum(
                1 for r in result if isinstance(r, tuple) and r[:1] == ("error",)
            )
            if len(self._queue) <= self.settings.queue_size // 2:
                self._alerted.discard("coordinator-queue-full")  # re-armed once it drained
            if self._no_leader_since is not None:
                outage = time.monotonic() - self._no_leader_since
                self._no_leader_since = None
                if "coordinator-no-leader" in self._alerted:
                    # the alert is re-armed: a later outage alerts again
                    self._alerted.discard("coordinator-no-leader")
                    if self._emit is not None:
                        self._emit("coordinator-recovered", outage_s=outage)
            if self._queue:
                self.flush()
        else:
            self.counters["retried"] += 1
            self._note_failure(FAIL_NAMES.get(error, str(error)))

    def _note_failure(self, reason: str) -> None:
        self.counters["failures"] += 1
        self.last_error = reason
        now = time.monotonic()
        if self._no_leader_since is None:
            self._no_leader_since = now
        # a short election (writes fail fast with ``missing_leader``) is not an outage yet:
        # alert once no batch has committed for ``commit-timeout``
        if now - self._no_leader_since >= self.settings.commit_timeout or reason == "timeout":
            self._alert("coordinator-no-leader", reason)

    def _alert(self, alert: str, message: str) -> None:
        if alert in self._alerted:
            return  # once per occurrence: re-armed when the condition clears
        logger.warning("dask-oxigdal coordinator: %s: %s", alert, message)
        self._alerted.add(alert)
        if self._emit is None:
            return
        self._emit(
            "alert",
            alert=alert,
            message=message,
            queued_writes=len(self._queue),
            queue_bound=self.settings.queue_size,
        )

    # ------------------------------------------------------------ typed writes
    def usage_add(self, tenant: str, worker_seconds: float, **fields: Any) -> str | None:
        """Add to a tenant's usage ledger (``completed``, ``erred``, ``submitted`` counts too;
        ``recent``/``recent_at`` set the decayed recent usage).

        Every write method returns the command's request id, or ``None`` when the
        bounded queue was full and the write was dropped (counted in ``dropped``).
        """
        return self._enqueue("usage_add", tenant=tenant, worker_seconds=worker_seconds, **fields)

    def tenant_set(
        self,
        tenant: str,
        weight: float | None = None,
        max_tasks: int | None = None,
        guaranteed_slots: int | None = None,
    ) -> str | None:
        """Record a tenant's weight and quotas (``None`` keeps the recorded value)."""
        return self._enqueue(
            "tenant_set",
            tenant=tenant,
            weight=weight,
            max_tasks=max_tasks,
            guaranteed_slots=guaranteed_slots,
        )

    def quarantine_set(self, worker: str, state: str, reason: str = "") -> str | None:
        """Record a worker's quarantine state (``open``, ``half-open`` or ``closed``)."""
        return self._enqueue(
            "quarantine_set", worker=worker, state=state, reason=reason, at=time.time()
        )

    def quarantine_clear(self, worker: str) -> str | None:
        """Remove a worker from the quarantine list."""
        return self._enqueue("quarantine_clear", worker=worker)

    def manifest_put(self, key: str, entry: dict) -> str | None:
        """Record a checkpoint: ``key -> {path, sha256, nbytes, ...}`` (plain data)."""
        return self._enqueue("manifest_put", key=key, entry=entry)

    def manifest_delete(self, key: str) -> str | None:
        """Forget a checkpoint."""
        return self._enqueue("manifest_delete", key=key)

    def lease_occupy(self, worker: str, holder: str) -> str | None:
        """Occupy ``worker`` for ``holder`` (a gang or job) unless another holder has it."""
        return self._enqueue("lease_occupy", worker=worker, holder=holder)

    def lease_vacate(self, worker: str, holder: str) -> str | None:
        """Vacate ``worker`` if ``holder`` holds it."""
        return self._enqueue("lease_vacate", worker=worker, holder=holder)

    def audit(self, event: dict) -> str | None:
        """Append ``event`` (plain data) to the audit log, best effort.

        Audit entries never crowd out state writes: while the write queue is
        half full or more the entry is skipped and counted
        (``counters["audit_skipped"]``), and no alert is raised.

        Parameters
        ----------
        event : dict
            Plain data (``{"kind": ..., ...}``).

        Returns
        -------
        str or None
            The request id, or ``None`` when skipped.
        """
        if len(self._queue) * 2 >= self.settings.queue_size:
            self.counters["audit_skipped"] += 1
            return None
        return self._enqueue("audit", event=event)

    # ------------------------------------------------------------ status
    @property
    def queued_writes(self) -> int:
        """Writes not yet acknowledged (queued or in flight)."""
        return len(self._queue)

    def leader(self) -> str | None:
        """Address of the leader this replica knows of, or ``None`` (not in :meth:`snapshot`)."""
        node = self.node
        if node is None:
            return None
        leader = node._getLeader()
        return None if leader is None else str(getattr(leader, "address", leader))

    def snapshot(self) -> dict[str, Any]:
        """``role``, ``leader``, ``commit_index``, ``queued_writes`` and counters (JSON).

        Public (``dox.status`` and the dashboard's ``/oxigdal/state.json``): it
        names no address or port. ``leader`` is ``"self"`` when this node leads,
        ``"peer"`` when another member does, ``None`` when none is known.
        """
        node = self.node
        leader = None
        if node is not None and node._getLeader() is not None:
            leader = "self" if node._isLeader() else "peer"
        return {
            "role": self.role,
            "leader": leader,
            "commit_index": int(node.raftCommitIndex) if node is not None else 0,
            "term": int(node.raftCurrentTerm) if node is not None else 0,
            "queued_writes": self.queued_writes,
            "queue_bound": self.settings.queue_size,
            "in_flight": len(self._in_flight or ()),
            "mode": self.settings.mode,
            "members": len(self.settings.partners) + (self.address is not None),
            "ready": self._ready,
            "last_error": self.last_error,
            **self.counters,
        }
