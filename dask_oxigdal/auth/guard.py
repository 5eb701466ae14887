"""The scheduler side of ``oxigdal.auth``: who may call which handler, and stream hygiene.

:class:`AuthGuard` is created by the extension when ``oxigdal.auth.enabled``
is on. It touches these parts of ``distributed`` (listed in
docs/architecture.md, guarded by ``tests/test_auth.py::test_guard_*``):

- ``Scheduler.handlers`` is replaced by a ``dict`` subclass that wraps every
  handler, present and added later with ``handlers[op] = ...``: the wrapper
  finds the principal of the comm (peer certificate CN or handshake token)
  and refuses unknown ones and operations their roles do not allow, with a
  ``PermissionError`` that ``Server.handle_comm`` sends back to the caller,
  where the rpc raises it again. The wrapper's ``__signature__`` is the
  handler's with a leading ``comm``, so ``handle_comm`` still passes
  ``serializers`` where the handler takes them.
- ``"register-client"`` (``Scheduler.add_client``) gets the comm wrapped in
  a filter whose ``read()`` drops, and audits, messages of the client's
  batched stream that name another client id (``Server.handle_stream``
  merges the message over ``{"client": <bound id>}``, so a message's own
  ``client`` field wins) or that are worker-stream operations.

The tables of operations, :class:`Identity`, the handler dict and the
stream filter live in :mod:`dask_oxigdal.auth.handlers`; the page's login in
:mod:`dask_oxigdal.auth.web`; deadline admission in
:mod:`dask_oxigdal.auth.admission`.
"""

from __future__ import annotations

import inspect
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

from dask_oxigdal.auth.admission import DeadlineAdmission
from dask_oxigdal.auth.audit import AuditLog, audit_key
from dask_oxigdal.auth.handlers import (
    _CURRENT,
    _PROTECTED_TOPICS,
    _QUIET,
    _SAFE_BROADCASTS,
    _WRAPPED,
    ADMIN_OPS,
    WORKER_OPS,
    WORKER_STREAM_OPS,
    Identity,
    _expects_comm,
    _Handlers,
    _StreamFilter,
    current_identity,
)
from dask_oxigdal.auth.identity import HANDSHAKE_KEY, cert_identity, load_token_secrets
from dask_oxigdal.auth.identity import verify_token as _verify_token
from dask_oxigdal.auth.rbac import Principal, parse_principals
from dask_oxigdal.auth.web import WebSessions
from dask_oxigdal.scheduling.settings import setting

if TYPE_CHECKING:
    from dask_oxigdal.scheduling.extension import OxigdalScheduling

__all__ = [
    "ADMIN_OPS",
    "WORKER_OPS",
    "WORKER_STREAM_OPS",
    "AuthGuard",
    "Identity",
    "current_identity",
]

logger = logging.getLogger(__name__)


class AuthGuard:
    """Identity, RBAC and audit for one scheduler (``oxigdal.auth``).

    Parameters
    ----------
    extension : OxigdalScheduling
        The started extension (its queues are known).
    """

    def __init__(self, extension: OxigdalScheduling) -> None:
        self.extension = extension
        self.scheduler = extension.scheduler
        self.principals: dict[str, Principal] = parse_principals(
            setting("auth.principals"), extension.queues
        )
        self.secrets = load_token_secrets(setting("auth.token-file"))
        path = setting("auth.audit-log")
        coord = extension.coordinator
        self.audit = AuditLog(
            audit_key(setting("auth.audit-key-file"), path),
            path,
            per_tenant=setting("auth.audit-max-per-tenant"),
            replicate=(lambda e: coord.audit({"kind": "auth", **e})) if coord else None,
        )
        #: client id -> identity bound at register-client
        self.clients: dict[str, Identity] = {}
        self._comms: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.counters = {"denied": 0, "stream_dropped": 0, "refused_connections": 0}
        #: (principal, tenant annotation, queue annotation) -> admitted (tenant, queue)
        self._admitted: dict[tuple, tuple[str, str]] = {}
        #: the page's logins and session cookies
        self.web = WebSessions(self)
        #: deadline jobs within the tenant's entitlement plus idle capacity (Deadline policy)
        self.admission = DeadlineAdmission(
            extension, setting("auth.deadline-admission"), audit=self.audit.append
        )

    # ----------------------------------------------------------- install
    def install(self) -> None:
        """Guard the scheduler's handlers; account the principals' tenants."""
        scheduler = self.scheduler
        ext = self.extension
        for p in self.principals.values():
            for t in p.tenants:
                ext.weights.setdefault(t, 1.0)
        if not isinstance(scheduler.handlers, _Handlers):
            scheduler.handlers = _Handlers(self, list(scheduler.handlers.items()))
        self.audit.append(
            "auth-enabled", "ok", principals=sorted(self.principals), policies=ext.policy_names()
        )

    def uninstall(self) -> None:
        """Put plain handlers back; close the audit file."""
        scheduler = self.scheduler
        handlers = scheduler.handlers
        if isinstance(handlers, _Handlers) and handlers.guard is self:
            scheduler.handlers = {k: getattr(v, _WRAPPED, v) for k, v in handlers.items()}
        self.audit.close()

    def wrap(self, op: str, handler: Any) -> Any:
        """The guarded form of ``handler`` (idempotent)."""
        if getattr(handler, _WRAPPED, None) is not None or not callable(handler):
            return handler
        expects = _expects_comm(handler)
        guard = self
        if op == "register-client":

            async def guarded(comm: Any, **kwargs: Any) -> Any:
                return await guard._register_client(comm, handler, kwargs)

        else:

            async def guarded(comm: Any, **kwargs: Any) -> Any:
                try:
                    ident = guard.authorize(comm, op, kwargs)
                except PermissionError as e:
                    if op != "register-worker":
                        raise
                    # the worker sends reply=False and waits for this answer
                    return await guard._refuse(
                        comm, {"status": "error", "message": str(e), "time": time.time()}
                    )
                token = _CURRENT.set(ident)
                try:
                    result = handler(comm, **kwargs) if expects else handler(**kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                    return result
                finally:
                    _CURRENT.reset(token)

        try:
            sig = inspect.signature(handler)
            params = list(sig.parameters.values())[1 if expects else 0 :]
            comm_param = inspect.Parameter("comm", inspect.Parameter.POSITIONAL_OR_KEYWORD)
            guarded.__signature__ = sig.replace(parameters=[comm_param, *params])  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            pass
        guarded.__name__ = getattr(handler, "__name__", op)
        setattr(guarded, _WRAPPED, handler)
        return guarded

    # ------------------------------------------------------------ identity
    def identify(self, comm: Any) -> Identity:
        """The identity of ``comm``'s peer (cached per comm).

        Raises
        ------
        PermissionError
            No certificate CN or valid token of a principal in the table.
        """
        try:
            found = self._comms.get(comm)
        except TypeError:
            found = None
        if isinstance(found, Identity):
            return found
        if found is not None:
            raise PermissionError(found)
        cn, credential = cert_identity(comm)
        name = cn
        peer = getattr(comm, "peer_address", None)
        if name is None:
            remote = getattr(comm, "remote_info", None) or {}
            token = remote.get(HANDSHAKE_KEY)
            name = _verify_token(token, self.secrets)
            credential = f"token:{name}" if name else None
            claimed = token.partition(":")[0][:64] if isinstance(token, str) else None
        else:
            claimed = cn
        principal = self.principals.get(name) if name is not None else None
        if principal is None:
            reason = (
                f"certificate CN {cn!r} is not a principal in oxigdal.auth.principals"
                if cn is not None
                else "no valid oxigdal token in the handshake and no client certificate"
            )
            message = f"dask-oxigdal: connection from {peer} refused: {reason}"
            self.counters["refused_connections"] += 1
            self.audit.append(
                "connect", "denied", principal=claimed, credential=credential, peer=peer,
                reason=reason,
            )  # fmt: skip
            try:
                self._comms[comm] = message
            except TypeError:
                pass
            raise PermissionError(message)
        ident = Identity(principal, credential, peer)
        try:
            self._comms[comm] = ident
        except TypeError:
            pass
        return ident

    def authorize(self, comm: Any, op: str, kwargs: dict) -> Identity:
        """Identify ``comm`` and check that its principal may call ``op``.

        Returns
        -------
        Identity

        Raises
        ------
        PermissionError
            Unknown principal, or a role that does not allow ``op``.
        """
        ident = self.identify(comm)
        p = ident.principal
        need = None
        if op in ADMIN_OPS:
            need = "admin"
        elif op in WORKER_OPS:
            need = "worker"
        elif op == "register_scheduler_plugin":
            if not (kwargs.get("idempotent") and kwargs.get("name") in self.scheduler.plugins):
                need = "admin"
        elif op == "broadcast":
            msg = kwargs.get("msg")
            if not (isinstance(msg, dict) and msg.get("op") in _SAFE_BROADCASTS):
                need = "admin"
        elif op == "log_event":
            topic = kwargs.get("topic")
            topics = {topic} if isinstance(topic, str) else set(topic or ())
            if topics & _PROTECTED_TOPICS:
                need = "admin"
        if need is None:
            return ident
        ok = p.is_admin or (need == "worker" and p.is_worker)
        if not ok:
            self.counters["denied"] += 1
            self.audit.append(
                op, "denied", principal=p.name, credential=ident.credential, peer=ident.peer,
                roles=sorted(p.roles), needs=need,
            )  # fmt: skip
            raise PermissionError(
                f"dask-oxigdal: principal {p.name!r} (roles: {', '.join(sorted(p.roles))}) may "
                f"not call {op!r}: it needs the {need} role"
            )
        if op not in _QUIET:
            self.audit.append(
                op, "allowed", principal=p.name, credential=ident.credential, peer=ident.peer,
                name=kwargs.get("name") if isinstance(kwargs.get("name"), str) else None,
            )  # fmt: skip
        return ident

    async def _register_client(self, comm: Any, handler: Any, kwargs: dict) -> Any:
        from distributed.core import Status

        client = kwargs.get("client")
        try:
            ident = self.identify(comm)
        except PermissionError as e:
            return await self._refuse_client(comm, client, str(e), Status)
        if (
            client in self.scheduler.clients
            or client in self.clients
            or not isinstance(client, str)
        ):
            self.audit.append(
                "register-client", "denied", principal=ident.name, credential=ident.credential,
                client=str(client), peer=ident.peer, reason="client id already taken",
            )  # fmt: skip
            return await self._refuse_client(
                comm, client, f"dask-oxigdal: client id {client!r} is already taken", Status
            )
        self.clients[client] = ident
        self.audit.append(
            "register-client", "allowed", principal=ident.name, credential=ident.credential,
            client=client, peer=ident.peer,
        )  # fmt: skip
        token = _CURRENT.set(ident)
        try:
            return await handler(_StreamFilter(comm, self, client, ident), **kwargs)
        finally:
            _CURRENT.reset(token)
            if self.clients.get(client) is ident:
                del self.clients[client]

    async def _refuse_client(self, comm: Any, client: Any, message: str, status: Any) -> Any:
        return await self._refuse(comm, [{"op": "stream-start", "error": message}])

    async def _refuse(self, comm: Any, answer: Any) -> Any:
        """Answer a refused ``reply=False`` registration, then close the comm."""
        from distributed.core import Status

        self.counters["refused_connections"] += 1
        try:
            await comm.write(answer)
            await comm.close()
        except Exception:
            pass
        return Status.dont_reply

    def stream_dropped(
        self, ident: Identity, client: str, op: Any, claimed: Any, msg: dict
    ) -> None:
        """Audit one dropped stream message."""
        self.counters["stream_dropped"] += 1
        self.audit.append(
            "stream-message", "dropped", principal=ident.name, credential=ident.credential,
            client=client, peer=ident.peer, op=str(op)[:64], claimed_client=str(claimed)[:128],
        )  # fmt: skip
        logger.warning(
            "dask-oxigdal: dropped %r from client %s (principal %s) naming client %r",
            op, client, ident.name, claimed,
        )  # fmt: skip

    # ---------------------------------------------------------- for the extension
    def principal_of_client(self, client: str) -> Principal | None:
        """The principal bound to ``client`` at ``register-client``, or ``None``."""
        ident = self.clients.get(client)
        return ident.principal if ident is not None else None

    def admit(self, client: str, parsed: Any, queue_annotation: Any) -> tuple[str, str]:
        """Tenant and queue of one task of ``client`` (see :meth:`Principal.admit`).

        Raises
        ------
        PermissionError
            The client is not bound to a principal, or claims what it may not.
        """
        ext = self.extension
        ident = self.clients.get(client)
        if ident is None:
            raise PermissionError(f"dask-oxigdal: client {client!r} has no authenticated principal")
        principal = ident.principal
        # without a deadline the answer depends only on these three (the table is fixed)
        key = (principal.name, parsed.tenant, queue_annotation) if parsed.deadline is None else None
        if key is not None:
            hit = self._admitted.get(key)
            if hit is not None:
                return hit
        tenant, queue = principal.admit(
            parsed.tenant,
            queue_annotation,
            parsed.deadline,
            default_queue=ext.default_queue,
            now=time.time(),
        )
        if tenant is None:
            tenant = ext.default_tenant
        elif tenant not in ext.weights:
            tenant = ext.resolve_tenant(tenant)
        if key is not None:
            if len(self._admitted) >= 4096:
                self._admitted.clear()
            self._admitted[key] = (tenant, queue)
        return tenant, queue

    def denied_tasks(self, client: str, count: int, error: str) -> None:
        """Audit one submission's rejected tasks."""
        ident = self.clients.get(client)
        self.counters["denied"] += 1
        self.audit.append(
            "submit", "denied", principal=ident.name if ident else None,
            credential=ident.credential if ident else None, client=client,
            peer=ident.peer if ident else None, tasks=count, error=error[:300],
        )  # fmt: skip

    def user_view(self, snap: dict, ident: Identity | None) -> dict | None:
        """``snap`` as ``ident`` may see it; ``None`` when it may see all of it."""
        if ident is not None and ident.principal.is_admin:
            return None
        own = set(ident.principal.tenants) if ident is not None else set()
        return {
            "installed": snap.get("installed", True),
            "name": snap.get("name"),
            "principal": ident.name if ident is not None else None,
            "view": "tenant",
            "policies": {
                n: {"enabled": bool(v.get("enabled"))} for n, v in snap.get("policies", {}).items()
            },
            "tenants": {t: v for t, v in snap.get("tenants", {}).items() if t in own},
            "queues": list(snap.get("queues", ())),
            "default_queue": snap.get("default_queue"),
            "default_tenant": ident.principal.default_tenant if ident is not None else None,
        }

    def http_identity(
        self, authorization: str | None, cookie: str | None = None
    ) -> tuple[int, Identity | None]:
        """HTTP status for a bearer token or the page's session cookie: 200 or 401.

        Parameters
        ----------
        authorization : str or None
            The ``Authorization`` header (``Bearer <token>``).
        cookie : str or None
            The page's session cookie (:mod:`dask_oxigdal.auth.web`).

        Returns
        -------
        (int, Identity or None)
        """
        ident = self.web.identify(authorization, cookie)
        return (200, ident) if ident is not None else (401, None)

    def snapshot(self) -> dict[str, Any]:
        """Counters for ``dox.status`` (admins)."""
        return {
            "enabled": True,
            "principals": len(self.principals),
            "clients": len(self.clients),
            "audit_seq": self.audit.seq,
            "audit_head": self.audit.head,
            **self.counters,
            "page_logins": self.web.logins,
            "page_logins_refused": self.web.refused,
            "deadline_admission": self.admission.snapshot(),
        }
