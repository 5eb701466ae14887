"""``dask oxigdal demo --secure``: the day on a mutual-TLS cluster with ``oxigdal.auth`` on.

Throw-away certificates (:mod:`dask_oxigdal.auth.testing`) for the
scheduler, the workers, an admin (``ops``, who installs nothing by hand:
the extension comes with the scheduler preload, and who runs the demo's
bookkeeping) and one user principal per tenant. Each tenant's work is
submitted by its own client, with its own certificate: the principal, not an
annotation, decides the tenant. After the day, one principal tries to claim
another tenant (refused), and the audit chain is verified. The summary says
who ran what.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

import dask.config

from dask_oxigdal.demo import workloads as w

__all__ = ["PRINCIPALS", "SecureCluster"]

#: The demo's principals: one user per tenant, an admin, the workers.
PRINCIPALS: dict[str, dict[str, Any]] = {
    **{f"{t}-team": {"tenants": [t], "roles": ["user"]} for t in w.DEMO_TENANTS},
    "ops": {"roles": ["admin"]},
    "worker": {"roles": ["worker"]},
}


class SecureCluster:
    """A TLS ``LocalCluster`` with ``oxigdal.auth`` on, and one client per principal.

    Parameters
    ----------
    stack : contextlib.ExitStack
        Closes the clusters, the clients and the certificate directory.
    ours : bool
        With the extension (scheduler preload, auth, ``settings``); else a
        plain Dask cluster with the same TLS certificates and clients.
    settings : dict
        More config for the extension (the embedded coordinator).
    policies : list of dict
        The extension's policies.
    **cluster_kwargs
        ``LocalCluster`` arguments.
    """

    def __init__(
        self,
        stack: contextlib.ExitStack,
        *,
        ours: bool,
        settings: dict[str, Any],
        policies: list[dict[str, Any]],
        **cluster_kwargs: Any,
    ) -> None:
        from distributed import Client, LocalCluster

        from dask_oxigdal.auth import testing

        self.directory = stack.enter_context(
            tempfile.TemporaryDirectory(prefix="oxigdal-demo-certs-")
        )
        self.audit_log = os.path.join(self.directory, "audit.jsonl")
        creds = testing.make_credentials(
            os.path.join(self.directory, "certs"), ("scheduler", *PRINCIPALS)
        )
        cfg: dict[str, Any] = {}
        kwargs = dict(cluster_kwargs)
        if ours:
            cfg = {
                **settings,
                **testing.auth_config(PRINCIPALS, audit_log=self.audit_log),
                "oxigdal.tenants": dict(w.DEMO_TENANTS),
                "oxigdal.scheduling.policies": policies,
            }
            kwargs["scheduler_kwargs"] = {"preload": ["dask_oxigdal.preload"]}
        self.ours = ours
        with dask.config.set(cfg):
            self.cluster = stack.enter_context(
                LocalCluster(
                    protocol="tls",
                    security=testing.security(creds, "ops", scheduler="scheduler", worker="worker"),
                    **kwargs,
                )
            )
        address = self.cluster.scheduler_address
        #: the admin's client: installs the worker plugin, reads the status and events
        self.client = stack.enter_context(Client(address, security=testing.security(creds, "ops")))
        #: tenant -> (principal, client)
        self.tenants: dict[str, tuple[str, Any]] = {}
        for name, entry in PRINCIPALS.items():
            if "user" in entry["roles"]:
                c = stack.enter_context(Client(address, security=testing.security(creds, name)))
                self.tenants[entry["tenants"][0]] = (name, c)

    def clients(self) -> dict[str, Any]:
        """``{tenant: client}`` for :class:`~dask_oxigdal.demo.workloads.Day`."""
        return {t: c for t, (_, c) in self.tenants.items()}

    def summary(self, submitted: dict[str, tuple[str, float]]) -> dict:
        """Who ran what, one refused claim, and the audit chain's verdict.

        Parameters
        ----------
        submitted : dict
            ``Day.submitted`` (key -> (tenant, time)).

        Returns
        -------
        dict
            ``tls``, ``auth``, ``principals`` (name -> tenant and tasks
            submitted), and with auth ``refused_claim`` (the error a
            principal got for another tenant's name), ``audit`` (entries,
            verified, head) and ``guard`` (the guard's counters, read after
            the refused claim).
        """
        tasks: dict[str, int] = {}
        for tenant, _ in submitted.values():
            tasks[tenant] = tasks.get(tenant, 0) + 1
        out: dict[str, Any] = {
            "tls": True,
            "auth": self.ours,
            "principals": {
                name: {"tenant": t, "tasks": tasks.get(t, 0)}
                for t, (name, _) in sorted(self.tenants.items())
            },
        }
        if not self.ours:
            return out
        out["refused_claim"] = self._refused_claim()
        from dask_oxigdal.auth.audit import audit_key, verify
        from dask_oxigdal.scheduling import status

        result = verify(self.audit_log, audit_key(None, self.audit_log))
        out["audit"] = {"entries": result.entries, "verified": result.ok, "head": result.head}
        out["guard"] = {
            k: v
            for k, v in (status(self.client).get("auth") or {}).items()
            if k in ("principals", "denied", "stream_dropped", "refused_connections")
        }
        return out

    def _refused_claim(self) -> str | None:
        """One principal submits a task claiming another tenant: the error it gets."""
        from dask_oxigdal.annotations import annotate

        (_, (name, client)), (other, _) = list(self.tenants.items())[:2]
        with annotate(tenant=other):
            future = client.submit(len, [], key=f"{name}-claims-{other}", pure=False)
        try:
            future.result(timeout=60)
        except PermissionError as e:
            return f"{name} -> tenant {other!r}: {e}"
        return None
