"""``Replicas``: keep N in-memory copies of keys annotated ``replicas=N``, enacted by Dask's AMM.

>>> with dox.annotate(replicas=2):                      # doctest: +SKIP
...     tiles = client.persist(load_tiles())

A worker that dies (even SIGKILLed) then takes one copy with it, not the
data: the tasks that need a tile read the other copy, nothing is recomputed,
and a new copy is made on another worker within two AMM cycles.

How it works
------------
This scheduling policy (in ``oxigdal.scheduling.policies``) records each new
task annotated ``replicas=N`` (``update_graph``; O(1) per task, at most
``oxigdal.replicas.max-keys`` keys, forgotten with the task). Dask's own
Active Memory Manager does the copying and dropping: on the first annotated
task (``oxigdal.replicas.amm: auto``) this policy adds
:class:`~dask_oxigdal.placement.replicas_amm.MinReplicas` to the AMM,
replaces Dask's ``ReduceReplicas`` (which keeps one copy of every key) by
:class:`~dask_oxigdal.placement.replicas_amm.ReduceReplicas` (which keeps N
copies of annotated keys and one of the others), and starts the AMM if it is
stopped. Without any annotated task nothing changes. When a worker leaves,
``MinReplicas`` also runs once at once (a throw-away AMM, as Dask's
``retire_workers`` does), so copies are usually back before the next cycle.

Each AMM cycle scans the annotated keys only. It also counts, per tenant, the
bytes of the extra copies: ``status()["policies"]["Replicas"]["tenants"]``
shows ``replica_bytes`` and ``memory_bytes`` (the tenant's bytes in memory,
copies included).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from dask_oxigdal.placement.replicas_amm import (
    MinReplicas,
    ReduceReplicas,
    spread_candidates,
    worker_labels,
)
from dask_oxigdal.scheduling.policy import SchedulingPolicy, TaskInfo
from dask_oxigdal.scheduling.settings import setting

if TYPE_CHECKING:
    from distributed.active_memory_manager import (
        ActiveMemoryManagerExtension,
        SuggestionGenerator,
    )
    from distributed.scheduler import TaskState

__all__ = ["AMM_MODES", "Replicas", "spread_candidates", "worker_labels"]

logger = logging.getLogger(__name__)

#: Valid values of ``oxigdal.replicas.amm``.
AMM_MODES = ("auto", "manual")
#: AMM intervals a requested copy counts as held before it is asked for again.
IN_FLIGHT = 3


class Replicas(SchedulingPolicy):
    """Record keys annotated ``replicas=N``; have Dask's AMM keep N copies of each.

    Parameters
    ----------
    amm : {"auto", "manual"}, optional
        ``oxigdal.replicas.amm``: ``auto`` installs the AMM policies on the first
        annotated task; ``manual`` leaves the AMM as configured (name
        ``MinReplicas`` / ``ReduceReplicas`` in
        ``distributed.scheduler.active-memory-manager.policies`` yourself).
    max_keys : int, optional
        ``oxigdal.replicas.max-keys``: annotated keys tracked at once; further
        ones keep Dask's single copy and are counted (``keys_dropped``).
    """

    name = "Replicas"

    def __init__(self, *, amm: str | None = None, max_keys: int | None = None) -> None:
        super().__init__()
        self.amm_mode = setting("replicas.amm", amm)
        if self.amm_mode not in AMM_MODES:
            raise ValueError(
                f"oxigdal.replicas.amm={self.amm_mode!r} is not valid; choose one of {AMM_MODES}"
            )
        self.max_keys = setting("replicas.max-keys", max_keys)
        if isinstance(self.max_keys, bool) or not isinstance(self.max_keys, int):
            raise ValueError(f"oxigdal.replicas.max-keys={self.max_keys!r} must be an int >= 1")
        if self.max_keys < 1:
            raise ValueError(f"oxigdal.replicas.max-keys={self.max_keys!r} must be >= 1")
        #: key -> (wanted copies, tenant)
        self.keys: dict[Any, tuple[int, str]] = {}
        self.tenant_keys: dict[str, int] = {}
        #: bytes of the copies beyond the first, per tenant (last cycle)
        self.replica_bytes: dict[str, int] = {}
        self.keys_dropped = 0
        self.cycles = 0
        self.requested = 0
        self.under_replicated = 0
        self.worker_losses = 0
        #: cycles the last worker loss took to restore every copy (None: not yet)
        self.restore_cycles: int | None = None
        self.restore_seconds: float | None = None
        self._loss: tuple[int, float] | None = None
        #: key -> {worker address: monotonic time a copy was requested}, until it arrives
        self.inflight: dict[Any, dict[str, float]] = {}
        self.installed = False
        self.started_amm = False
        self._amm: ActiveMemoryManagerExtension | None = None
        self._replaced: list[Any] = []
        self._added: list[Any] = []
        self._run_scheduled = False

    def start(self, extension: Any) -> None:
        """No transition hook (no per-task cost) until the first annotated task."""
        super().start(extension)
        self.wants_transitions = False

    # ------------------------------------------------------------------ hooks
    def update_graph(self, new: list[tuple[TaskState, TaskInfo]]) -> None:
        """Record the new tasks annotated ``replicas=N`` (N >= 2)."""
        keys = self.keys
        added = False
        for ts, info in new:
            want = info.annotations.replicas
            if want is None or want < 2:
                continue
            if ts.key not in keys:
                if len(keys) >= self.max_keys:
                    self.keys_dropped += 1
                    continue
                self.tenant_keys[info.tenant] = self.tenant_keys.get(info.tenant, 0) + 1
            keys[ts.key] = (want, info.tenant)
            added = True
        if added:
            if not self.wants_transitions:
                self.wants_transitions = True
                self.extension._refresh_transition_policies()
            if not self.installed and self.amm_mode == "auto":
                self.install()

    def transition(
        self, key: Any, start: str, finish: str, info: TaskInfo, kwargs: dict[str, Any]
    ) -> None:
        """Forget a key with its task (O(1))."""
        if finish == "forgotten":
            entry = self.keys.pop(key, None)
            if entry is not None:
                self._uncount(entry[1])
                self.inflight.pop(key, None)

    def _uncount(self, tenant: str) -> None:
        n = self.tenant_keys.get(tenant, 0) - 1
        if n > 0:
            self.tenant_keys[tenant] = n
        else:
            self.tenant_keys.pop(tenant, None)

    def remove_worker(self, address: str, stimulus_id: str) -> None:
        """A worker left: run ``MinReplicas`` once, from a later event-loop tick."""
        if not self.keys:
            return
        self.worker_losses += 1
        self._loss = (self.cycles, time.monotonic())
        self.restore_cycles = self.restore_seconds = None
        if not self._run_scheduled:
            self._run_scheduled = True
            ext = self.extension
            ext.scheduler.loop.add_callback(ext.run_policy, self, "run_now")

    def restart(self) -> None:
        """Every task was forgotten."""
        self.keys.clear()
        self.inflight.clear()
        self.tenant_keys.clear()
        self.replica_bytes.clear()

    # -------------------------------------------------------------- the AMM
    def install(self) -> None:
        """Add ``MinReplicas`` to Dask's AMM, replace its ``ReduceReplicas``, start it."""
        from distributed.active_memory_manager import (
            ActiveMemoryManagerExtension,
        )
        from distributed.active_memory_manager import (
            ReduceReplicas as DaskReduceReplicas,
        )

        scheduler = self.extension.scheduler
        amm = scheduler.extensions.get("amm")
        if amm is None:  # a scheduler built without Dask's AMM: run our own
            amm = ActiveMemoryManagerExtension(scheduler, set(), register=False, start=False)
        self._amm = amm
        if not any(isinstance(p, MinReplicas) for p in amm.policies):
            policy = MinReplicas(self)
            amm.add_policy(policy)
            self._added.append(policy)
        for policy in list(amm.policies):
            if type(policy) is DaskReduceReplicas:
                amm.policies.discard(policy)
                ours = ReduceReplicas(self)
                amm.add_policy(ours)
                self._added.append(ours)
                self._replaced.append(policy)
        if not amm.running:
            amm.start()
            self.started_amm = True
        self.installed = True
        self.extension.emit(
            "replicas-installed",
            amm_interval=amm.interval,
            started_amm=self.started_amm,
            replaced=len(self._replaced),
        )

    def close(self) -> None:
        """Give the AMM back as it was (Dask's ``ReduceReplicas``, stopped if we started it)."""
        amm = self._amm
        if amm is None:
            return
        for policy in self._added:
            amm.policies.discard(policy)
        for policy in self._replaced:
            amm.add_policy(policy)
        if self.started_amm:
            amm.stop()
        self._added.clear()
        self._replaced.clear()
        self._amm = None
        self.installed = self.started_amm = False

    def run_now(self) -> None:
        """Run ``MinReplicas`` once, outside the AMM's cadence (after a worker left)."""
        from distributed.active_memory_manager import ActiveMemoryManagerExtension

        self._run_scheduled = False
        scheduler = self.extension.scheduler
        if not self.keys or not scheduler.running:
            return
        once = ActiveMemoryManagerExtension(
            scheduler, {MinReplicas(self, once=True)}, register=False, start=False
        )
        once.run_once()

    def min_replicas(
        self, manager: ActiveMemoryManagerExtension, counted: bool = True
    ) -> SuggestionGenerator:
        """The body of ``MinReplicas.run``: one pass over the annotated keys.

        Copies requested by an earlier pass that have not arrived yet count as
        held for :data:`IN_FLIGHT` AMM intervals, so a slow transfer is not
        requested twice. ``counted=False`` for the one-off run after a worker
        left: ``restore_cycles`` counts the AMM's own cycles after the loss.
        """
        from distributed.active_memory_manager import Suggestion

        if counted:
            self.cycles += 1
        now = time.monotonic()
        patience = IN_FLIGHT * max(float(getattr(manager, "interval", 2.0) or 2.0), 0.1)
        inflight = self.inflight
        scheduler = manager.scheduler
        tasks = scheduler.tasks
        running = scheduler.running
        pending = manager.pending
        labels: dict[Any, dict[str, str]] = {}
        replica_bytes: dict[str, int] = {}
        under = 0
        nworkers = len(scheduler.workers)
        for key, (want, tenant) in list(self.keys.items()):
            ts = tasks.get(key)
            if ts is None or ts.state != "memory" or not ts.who_has:
                continue
            have = len(ts.who_has)
            if have > 1:
                replica_bytes[tenant] = replica_bytes.get(tenant, 0) + (have - 1) * ts.nbytes
            if have >= min(want, nworkers):
                inflight.pop(key, None)
                continue  # (a key cannot have more copies than there are workers)
            under += 1
            asked = inflight.get(key)
            if asked:
                for addr in [a for a, t in asked.items() if now - t > patience]:
                    del asked[addr]
            coming = {
                scheduler.workers[a]
                for a in asked or ()
                if a in scheduler.workers and scheduler.workers[a] not in ts.who_has
            }
            for _ in range(want - have):
                held = set(ts.who_has) | coming
                if ts in pending:
                    held |= pending[ts][0]
                if len(held) >= want:
                    break
                candidates = spread_candidates(held, running, labels)
                if not candidates:
                    break
                chosen = yield Suggestion("replicate", ts, candidates)
                if chosen is None:
                    break
                inflight.setdefault(key, {})[chosen.address] = now
                self.requested += 1
        self.replica_bytes = replica_bytes
        self.under_replicated = under
        if self._loss is not None and not under:
            cycles_at, since = self._loss
            self.restore_cycles = self.cycles - cycles_at
            self.restore_seconds = time.monotonic() - since
            self._loss = None

    # ----------------------------------------------------------------- status
    def tenant_memory(self) -> dict[str, dict[str, int]]:
        """Per tenant: annotated ``keys``, ``replica_bytes`` and ``memory_bytes``.

        ``memory_bytes`` is the tenant's ``bytes_in_memory`` from the
        extension's accounting (each key once) plus the bytes of its extra
        copies, as of the last AMM cycle.

        Returns
        -------
        dict
            ``{tenant: {"keys": int, "replica_bytes": int, "memory_bytes": int}}``.
        """
        usage = self.extension.usage if self.extension is not None else {}
        out: dict[str, dict[str, int]] = {}
        for tenant in sorted(set(self.tenant_keys) | set(self.replica_bytes)):
            extra = self.replica_bytes.get(tenant, 0)
            u = usage.get(tenant)
            base = u.bytes_in_memory if u is not None else 0
            out[tenant] = {
                "keys": self.tenant_keys.get(tenant, 0),
                "replica_bytes": extra,
                "memory_bytes": base + extra,
            }
        return out

    def snapshot(self) -> dict[str, Any]:
        """Counters, the AMM's state and the per-tenant memory of copies."""
        amm = self._amm
        return {
            "keys": len(self.keys),
            "max_keys": self.max_keys,
            "keys_dropped": self.keys_dropped,
            "amm_mode": self.amm_mode,
            "installed": self.installed,
            "amm_running": bool(amm is not None and amm.running),
            "amm_interval": amm.interval if amm is not None else None,
            "cycles": self.cycles,
            "replicas_requested": self.requested,
            "under_replicated": self.under_replicated,
            "worker_losses": self.worker_losses,
            "restore_cycles": self.restore_cycles,
            "restore_seconds": self.restore_seconds,
            "tenants": self.tenant_memory(),
        }
