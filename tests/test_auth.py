"""Identity, RBAC and the audit chain (oxigdal.auth), on real TLS clusters on 127.0.0.1.

Certificates come from ``trustme``: one CA, client certificates for alice
(user, team-a), bob (user, team-b), ops (admin), a worker certificate, a
certificate of a second CA, and one of the right CA whose CN is not a principal.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import ssl
import urllib.error
import urllib.request

import dask
import pytest
from click.testing import CliRunner
from distributed import Client, Scheduler, Security, Worker
from distributed.comm import connect
from distributed.utils_test import gen_test

import dask_oxigdal as dox
from dask_oxigdal.auth import AuditLog, TokenSecurity, make_token, parse_principals, verify
from dask_oxigdal.auth.guard import ADMIN_OPS, WORKER_OPS, WORKER_STREAM_OPS
from dask_oxigdal.cli import oxigdal as cli
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling.extension import NAME, OxigdalScheduling

trustme = pytest.importorskip("trustme")

PRINCIPALS = {
    "alice": {"tenants": ["team-a"], "queues": ["batch", "background"], "roles": ["user"]},
    "bob": {"tenants": ["team-b"], "roles": ["user"]},
    "ops": {"roles": ["admin"]},
    "worker": {"roles": ["worker"]},
}
#: a configured tenant no principal in these tests may see
TENANTS = {"team-a": 1, "team-b": 1, "team-secret": 5}
POLICIES = [
    {"class": "dask_oxigdal.scheduling.fairshare.FairShare"},
    {"class": "dask_oxigdal.scheduling.quota.Quota"},
]
SECRETS = {"alice": "s3cret-alice", "bob": "s3cret-bob", "ops": "s3cret-ops", "worker": "s3cret-w"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca_path = str(d / "ca.pem")
    ca.cert_pem.write_to_path(ca_path)
    out = {"ca": ca_path}
    for name in ("alice", "bob", "ops", "worker", "scheduler", "mallory"):
        cert = ca.issue_cert("127.0.0.1", "localhost", common_name=name)
        path = str(d / f"{name}.pem")
        cert.private_key_and_cert_chain_pem.write_to_path(path)
        out[name] = path
    other = trustme.CA()
    cert = other.issue_cert("127.0.0.1", common_name="alice")
    out["forged-alice"] = str(d / "forged-alice.pem")
    cert.private_key_and_cert_chain_pem.write_to_path(out["forged-alice"])
    return out


def _security(certs, name, ca=None):
    path = certs[name]
    return Security(
        tls_ca_file=ca or certs["ca"],
        tls_client_cert=path,
        tls_scheduler_cert=path,
        tls_worker_cert=path,
        require_encryption=True,
    )


@contextlib.asynccontextmanager
async def _cluster(tmp_path, certs=None, *, tokens=False, dashboard=False, workers=1, extra=None):
    audit = str(tmp_path / "audit.jsonl")
    env = ",".join(f"{k}={v}" for k, v in SECRETS.items())
    old = os.environ.get("OXIGDAL_AUTH_TOKENS")
    os.environ["OXIGDAL_AUTH_TOKENS"] = env
    cfg = {
        "oxigdal.auth.enabled": True,
        "oxigdal.auth.principals": PRINCIPALS,
        "oxigdal.auth.audit-log": audit,
        "oxigdal.tenants": TENANTS,
        "oxigdal.scheduling.policies": POLICIES,
        **(extra or {}),
    }
    try:
        with dask.config.set(cfg):
            kw = {"security": _security(certs, "scheduler")} if not tokens else {}
            wsec = _security(certs, "worker") if not tokens else TokenSecurity(_tok("worker"))
            async with Scheduler(
                host="127.0.0.1",
                protocol="tcp" if tokens else "tls",
                dashboard_address="127.0.0.1:0" if dashboard else None,
                dashboard=dashboard,
                preload=["dask_oxigdal.preload"],
                **kw,
            ) as s:
                ws = []
                for _ in range(workers):
                    ws.append(await Worker(s.address, nthreads=1, security=wsec))
                try:
                    yield s, audit
                finally:
                    for w in ws:
                        await w.close()
    finally:
        if old is None:
            os.environ.pop("OXIGDAL_AUTH_TOKENS", None)
        else:
            os.environ["OXIGDAL_AUTH_TOKENS"] = old


def _tok(name, secret=None):
    return make_token(name, secret or SECRETS[name])


async def _client(s, certs, name, **kw):
    return await Client(s.address, asynchronous=True, security=_security(certs, name), **kw)


def _audit_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


async def _wait(predicate, timeout=10.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


# ----------------------------------------------------------------- identity
@gen_test(timeout=60)
async def test_connections_without_valid_credentials_are_refused(tmp_path, certs):
    async with _cluster(tmp_path, certs) as (s, audit):
        ext = s.plugins[NAME]
        assert ext.auth is not None
        refused = 0
        # no client certificate: Dask's TLS listener refuses the handshake
        ctx = ssl.create_default_context(cafile=certs["ca"])
        ctx.check_hostname = False
        with pytest.raises((OSError, asyncio.TimeoutError)):
            comm = await connect(s.address, timeout="2s", ssl_context=ctx)
            await comm.write({"op": "identity"})
            await comm.read()
        refused += 1
        attempts = [
            # a certificate of another CA claiming to be alice
            _security(certs, "forged-alice"),
            # a CA-signed certificate whose CN is not a principal
            _security(certs, "mallory"),
        ]
        for sec in attempts:
            with pytest.raises((OSError, ImportError, asyncio.TimeoutError)):
                await Client(s.address, asynchronous=True, security=sec, timeout="2s")
            refused += 1
        assert refused == len(attempts) + 1
        assert not s.clients.keys() - {"fire-and-forget"}
        # a user certificate cannot register a worker
        with pytest.raises(RuntimeError) as err:
            await Worker(s.address, nthreads=1, security=_security(certs, "alice"))
        assert "needs the worker role" in str(err.value.__cause__) and len(s.workers) == 1
        # alice connects; her principal is bound to her client id
        async with await _client(s, certs, "alice") as c:
            assert ext.auth.principal_of_client(c.id).name == "alice"
            assert await c.submit(sum, [1, 2]) == 3
        lines = _audit_lines(audit)
        denied = [e for e in lines if e["outcome"] == "denied"]
        assert any(e["principal"] == "mallory" for e in denied)
        assert any(e["action"] == "register-worker" and e["principal"] == "alice" for e in denied)
        assert any(e["action"] == "register-client" and e["principal"] == "alice" for e in lines)
        assert all(
            e["credential"].startswith("sha256:") for e in lines if e["principal"] == "alice"
        )


@gen_test(timeout=60)
async def test_tokens_identify_clients_without_tls(tmp_path):
    async with _cluster(tmp_path, tokens=True) as (s, audit):
        bad = [
            None,  # no token
            "alice:" + "0" * 64,  # wrong MAC
            make_token("mallory", "whatever"),  # unknown id
            make_token("alice", "not-alice-secret"),
        ]
        for token in bad:
            sec = TokenSecurity(token) if token else Security()
            with pytest.raises((PermissionError, ImportError), match="refused"):
                await Client(s.address, asynchronous=True, security=sec, timeout="5s")
        async with await Client(
            s.address, asynchronous=True, security=TokenSecurity(_tok("bob"))
        ) as c:
            assert await c.submit(sum, [1, 2]) == 3
            assert s.plugins[NAME].auth.principal_of_client(c.id).name == "bob"
            # a second client with bob's id is refused
            c2 = Client(s.address, asynchronous=True, security=TokenSecurity(_tok("alice")))
            c2.id = c.id
            with pytest.raises(Exception, match="already taken"):
                await c2
            await c2.close()
        assert any(e["credential"] == "token:bob" for e in _audit_lines(audit))


# ---------------------------------------------------------------------- RBAC
@gen_test(timeout=60)
async def test_tenants_and_queues_outside_the_allowed_set_fail(tmp_path, certs):
    async with _cluster(tmp_path, certs) as (s, audit):
        async with await _client(s, certs, "alice") as c:
            claims = [
                {"tenant": "team-b"},
                {"tenant": "team-secret"},
                {"tenant": "nobody"},
                {"queue": "interactive"},
                {"tenant": "team-a", "queue": "interactive"},
            ]
            for i, claim in enumerate(claims):
                with dox.annotate(**claim):
                    futs = c.map(lambda x: x, range(3), key=[f"claim-{i}-{j}" for j in range(3)])
                for f in futs:
                    with pytest.raises(PermissionError) as err:
                        await f
                    msg = str(err.value)
                    assert "'alice'" in msg and "tenants: team-a" in msg
                    assert "queues: batch, background" in msg
                    assert "team-secret" not in msg or claim.get("tenant") == "team-secret"
                    assert "team-b" not in msg or claim.get("tenant") == "team-b"
            # unannotated tasks go to alice's first tenant, never to `default`
            assert await c.gather(c.map(lambda x: x + 1, range(20))) == list(range(1, 21))
            with dox.annotate(tenant="team-a", queue="background"):
                assert await c.submit(lambda: 5, key="ok-bg") == 5
            snap = await dox.status(c)
            assert snap["tenants"]["team-a"]["completed"] == 21
        tenants = s.plugins[NAME].tenant_snapshot()
        assert tenants["default"]["submitted"] == 0
        denials = [e for e in _audit_lines(audit) if e["action"] == "submit"]
        assert len(denials) == len(claims) and all(e["principal"] == "alice" for e in denials)


@gen_test(timeout=90)
async def test_admin_only_operations_fail_for_a_user(tmp_path, certs):
    async with _cluster(tmp_path, certs) as (s, audit):
        ext = s.plugins[NAME]
        before = ext.policy_names()

        def noop(dask_scheduler=None):
            return 1

        async with await _client(s, certs, "alice") as c:
            ops = {
                "register(replace=True)": lambda: dox.register(c, replace=True, policies=[]),
                "unregister_scheduler_plugin": lambda: c.unregister_scheduler_plugin(NAME),
                "run_on_scheduler": lambda: c.run_on_scheduler(noop),
                "run": lambda: c.run(noop),
                "restart": lambda: c.restart(),
                "retire_workers": lambda: c.retire_workers(list(s.workers)),
                "log_event oxigdal": lambda: c.log_event("oxigdal", {"kind": "forged"}),
                "log_event all": lambda: c.log_event(["all"], {"action": "forged"}),
                "register_worker_plugin": lambda: c.scheduler.register_worker_plugin(
                    plugin=b"", name="x", idempotent=False
                ),
                "tenant weights": lambda: dox.register(c, replace=True, tenants={"team-a": 100}),
            }
            for name, op in ops.items():
                with pytest.raises(PermissionError, match="alice"):
                    await op()
                assert s.plugins.get(NAME) is ext, name
                assert ext.policy_names() == before, name
            # a plain register is a no-op and allowed; other topics are allowed
            await dox.register(c)
            await c.log_event("my-topic", {"x": 1})
            assert s.plugins[NAME] is ext and ext.weights["team-a"] == 1
        denied = [e for e in _audit_lines(audit) if e["outcome"] == "denied"]
        assert len(denied) >= len(ops) and all(e["principal"] == "alice" for e in denied)
        assert {"run_function", "restart", "retire_workers", "log_event", "broadcast"} <= {
            e["action"] for e in denied
        }
        async with await _client(s, certs, "ops") as admin:
            assert await admin.run_on_scheduler(noop) == 1
        assert any(
            e["action"] == "run_function" and e["principal"] == "ops" and e["outcome"] == "allowed"
            for e in _audit_lines(audit)
        )


@gen_test(timeout=60)
async def test_user_status_and_state_json_show_no_other_tenant(tmp_path, certs):
    async with _cluster(tmp_path, certs, dashboard=True) as (s, _):
        async with (
            await _client(s, certs, "alice") as alice,
            await _client(s, certs, "bob") as bob,
            await _client(s, certs, "ops") as ops,
        ):
            await bob.gather(
                bob.map(lambda x: x, range(5), key=[f"bobs-key-{i}" for i in range(5)])
            )
            await alice.gather(alice.map(lambda x: x, range(3)))
            mine = json.dumps(await dox.status(alice))
            for secret in ("team-b", "team-secret", "bobs-key", "bob"):
                assert secret not in mine
            assert "team-a" in mine
            everything = json.dumps(await dox.status(ops))
            assert "team-b" in everything and "team-secret" in everything
        port = s.http_server.port
        url = f"http://127.0.0.1:{port}/oxigdal/state.json"

        def get(token=None):
            req = urllib.request.Request(url)
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        loop = asyncio.get_running_loop()
        for token in (None, "alice:" + "0" * 64, make_token("mallory", "x")):
            code, body = await loop.run_in_executor(None, get, token)
            assert code in (401, 403) and "team" not in body
        code, body = await loop.run_in_executor(None, get, _tok("alice"))
        assert code == 200 and "team-a" in body and "team-b" not in body
        code, body = await loop.run_in_executor(None, get, _tok("ops"))
        assert code == 200 and "team-b" in body


@gen_test(timeout=60)
async def test_forged_stream_messages_are_dropped_and_audited(tmp_path, certs):
    async with _cluster(tmp_path, certs) as (s, audit):
        guard = s.plugins[NAME].auth
        async with (
            await _client(s, certs, "alice") as alice,
            await _client(s, certs, "bob") as bob,
        ):
            ev = await alice.submit(asyncio.Event) if False else None  # noqa: F841
            futs = alice.map(lambda x: __import__("time").sleep(0.05) or x, range(20))
            keys = [f.key for f in futs]
            forged = [
                {"op": "client-releases-keys", "keys": keys, "client": alice.id},
                {"op": "cancel-keys", "keys": keys, "client": alice.id, "force": True},
                {"op": "client-desires-keys", "keys": keys, "client": alice.id},
                {"op": "close-client", "client": alice.id},
                {"op": "task-erred", "key": keys[0], "worker": next(iter(s.workers))},
            ]
            for msg in forged:
                bob._send_to_scheduler(msg)
            await _wait(lambda: guard.counters["stream_dropped"] >= len(forged))
            assert await alice.gather(futs) == list(range(20))
            assert alice.id in s.clients
        dropped = [e for e in _audit_lines(audit) if e["action"] == "stream-message"]
        assert len(dropped) == len(forged)
        assert all(e["principal"] == "bob" and e["outcome"] == "dropped" for e in dropped)


# --------------------------------------------------------------------- audit
def _write_chain(path, key, n=12):
    log = AuditLog(key, str(path))
    for i in range(n):
        log.append("op", "allowed", principal=f"p{i % 3}", tenant=f"t{i % 2}", i=i)
    log.close()
    return log.head


@pytest.mark.parametrize("index", [0, 1, 5, 10, 11])
@pytest.mark.parametrize("change", ["edit-outcome", "edit-principal", "edit-time", "delete"])
def test_audit_verify_detects_single_entry_edits_and_deletions(tmp_path, index, change):
    key = b"k" * 32
    path = tmp_path / "a.jsonl"
    _write_chain(path, key)
    assert verify(str(path), key).ok
    lines = path.read_text().splitlines()
    if change == "delete":
        del lines[index]
    else:
        rec = json.loads(lines[index])
        field, value = {
            "edit-outcome": ("outcome", "denied"),
            "edit-principal": ("principal", "ops"),
            "edit-time": ("time", rec["time"] + 1),
        }[change]
        rec[field] = value
        lines[index] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    anchor = None if (change != "delete" or index != 11) else "x"
    result = verify(str(path), key, anchor)
    assert not result.ok, (change, index)


def test_audit_verify_detects_truncation_given_the_anchor(tmp_path):
    key = b"k" * 32
    path = tmp_path / "a.jsonl"
    head = _write_chain(path, key)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3]) + "\n")
    assert verify(str(path), key).ok  # a cut tail is invisible without an anchor ...
    assert not verify(str(path), key, anchor=head).ok  # ... and found with it
    # the CLI: exit 0 when the chain holds, 1 otherwise
    keyfile = tmp_path / "key"
    keyfile.write_bytes(key)
    keyfile.chmod(0o600)
    runner = CliRunner()
    ok = runner.invoke(cli, ["audit", "verify", str(path), "--key-file", str(keyfile)])
    assert ok.exit_code == 0, ok.output
    cut = runner.invoke(
        cli, ["audit", "verify", str(path), "--key-file", str(keyfile), "--anchor", head]
    )
    assert cut.exit_code == 1 and "anchor" in cut.output
    # a wrong key fails every entry
    assert not verify(str(path), b"other").ok


def test_audit_chain_continues_and_evicts_per_tenant(tmp_path):
    key = b"k" * 32
    path = tmp_path / "a.jsonl"
    log = AuditLog(key, str(path), per_tenant=5)
    log.append("op", "allowed", tenant="quiet")
    for i in range(100):
        log.append("op", "denied", tenant="noisy", i=i)
    assert [e["tenant"] for e in log.entries("quiet")] == ["quiet"]
    assert len(log.entries("noisy")) == 5 and log.evicted == {"noisy": 95}
    log.close()
    again = AuditLog(key, str(path))
    again.append("op", "allowed")
    again.close()
    result = verify(str(path), key)
    assert result.ok and result.entries == 102


@gen_test(timeout=60)
async def test_cluster_audit_log_verifies_with_the_cli(tmp_path, certs):
    async with _cluster(tmp_path, certs) as (s, audit):
        async with await _client(s, certs, "alice") as c:
            with pytest.raises(PermissionError):
                await c.run_on_scheduler(len, [])
        head = s.plugins[NAME].auth.audit.head
    result = CliRunner().invoke(cli, ["audit", "verify", audit, "--anchor", head])
    assert result.exit_code == 0, result.output
    assert os.stat(audit + ".key").st_mode & 0o077 == 0


# ------------------------------------------------------------ config and guards
def test_principal_table_errors_name_the_value_and_the_choices():
    with pytest.raises(ConfigError, match="valid: user, tenant-admin, admin, worker"):
        parse_principals({"a": {"roles": ["root"]}})
    with pytest.raises(ConfigError, match="valid settings: tenants, queues"):
        parse_principals({"a": {"tenant": ["x"]}})
    with pytest.raises(ConfigError, match="unknown queue 'fast'"):
        parse_principals({"a": {"queues": ["fast"]}}, ["batch"])
    with pytest.raises(ConfigError, match="min-deadline"):
        parse_principals({"a": {"min-deadline": "soon"}})
    p = parse_principals({"a": {"tenants": ["x", "y"], "min-deadline": "10m"}})["a"]
    assert p.default_tenant == "x" and p.min_deadline == 600
    with pytest.raises(PermissionError, match="closer than 600s"):
        p.admit(None, None, 1000.0 + 60, default_queue="batch", now=1000.0)


@gen_test()
async def test_auth_disabled_changes_nothing():
    async with Scheduler(host="127.0.0.1", dashboard_address=":0", dashboard=False) as s:
        handlers = s.handlers
        await s.register_scheduler_plugin(
            OxigdalScheduling(policies=[]), name=NAME, idempotent=False
        )
        assert s.plugins[NAME].auth is None
        assert s.handlers is handlers and type(s.handlers) is dict


def test_guard_auth_private_attributes():
    """The distributed internals oxigdal.auth relies on (docs/architecture.md)."""
    from distributed import core
    from distributed.comm import core as comm_core
    from distributed.comm import tcp

    # Server._handle_comm looks handlers up with self.handlers[op] at each call and
    # passes the comm when the handler's first parameter is named comm
    src = inspect.getsource(core.Server._handle_comm)
    assert "self.handlers[op]" in src and "_expects_comm(handler)" in src
    assert 'has_keyword(handler, "serializers")' in src
    # handle_stream merges the message over the stream's extra: a message's own
    # client field wins (the forgery the stream filter stops)
    src = inspect.getsource(core.Server.handle_stream)
    assert "merge(extra, msg)" in src and "await comm.read()" in src
    # register-client is add_client(comm, client, versions), which serves the stream
    src = inspect.getsource(Scheduler.add_client)
    assert "self.handle_stream(comm=comm" in src and "bcomm.start(comm)" in src
    assert list(inspect.signature(Scheduler.add_client).parameters)[:3] == [
        "self",
        "comm",
        "client",
    ]
    # the client handshake carries connection_args' handshake_overrides
    assert "handshake_overrides" in inspect.signature(comm_core.connect).parameters
    # the peer certificate and the TLS socket of a TLS comm
    src = inspect.getsource(tcp.TLS._read_extra)
    assert "peercert=sock.getpeercert()" in src
    assert "sock = self.stream.socket" in src


@gen_test()
async def test_guard_handler_names():
    async with Scheduler(host="127.0.0.1", dashboard_address=":0", dashboard=False) as s:
        # our own handlers are installed by the policies that serve them
        ours = {"oxigdal_cache_report", "oxigdal_cache_where", "oxigdal_cache_replicate"}
        ours |= {"oxigdal_topology"}
        known = set(s.handlers) | ours
        assert ADMIN_OPS <= known and WORKER_OPS <= known
        assert {"register-client", "register_scheduler_plugin", "broadcast", "log_event"} <= known
        assert WORKER_STREAM_OPS - {"oxigdal_transfers"} <= set(s.stream_handlers)
    # the handlers issue 18's policies install are worker-only under auth
    from dask_oxigdal.placement import cache_directory

    assert {cache_directory.WHERE_HANDLER, cache_directory.REPLICATE_HANDLER} <= WORKER_OPS


@gen_test(timeout=60)
async def test_testing_credentials_give_a_working_tls_cluster(tmp_path):
    """dask_oxigdal.auth.testing (cryptography) certificates: the demo's set-up."""
    from dask_oxigdal.auth import testing

    creds = testing.make_credentials(str(tmp_path / "c"))
    assert os.stat(creds["alice"]).st_mode & 0o077 == 0
    with dask.config.set(testing.auth_config(audit_log=str(tmp_path / "a.jsonl"))):
        sec = testing.security(creds, "ops", scheduler="scheduler", worker="worker")
        async with Scheduler(
            host="127.0.0.1",
            protocol="tls",
            security=sec,
            dashboard=False,
            dashboard_address=None,
            preload=["dask_oxigdal.preload"],
        ) as s:
            async with await Worker(s.address, nthreads=1, security=sec):
                async with await Client(
                    s.address, asynchronous=True, security=testing.security(creds, "bob")
                ) as c:
                    assert await c.submit(sum, [2, 3]) == 5
                    assert list((await dox.status(c))["tenants"]) == ["team-b"]


def test_coordinator_audit_eviction_is_per_tenant():
    from dask_oxigdal.coordination.state import evict_fairly

    audit = [{"seq": 1, "tenant": "quiet"}, {"seq": 2, "principal": "ops"}]
    audit += [{"seq": 3 + i, "tenant": "noisy"} for i in range(1000)]
    kept = evict_fairly(audit, 100)
    assert len(kept) == 100
    assert kept[0] == {"seq": 1, "tenant": "quiet"} and kept[1]["principal"] == "ops"
    assert [e["seq"] for e in kept[2:]] == list(range(905, 1003))  # the newest noisy ones
    # two noisy tenants share the room equally
    two = [{"seq": i, "tenant": "ab"[i % 2]} for i in range(400)]
    kept = evict_fairly(two, 100)
    assert sum(e["tenant"] == "a" for e in kept) == 50 and kept[-1]["seq"] == 399


@gen_test(timeout=90)
async def test_audit_entries_are_replicated_through_the_coordinator(tmp_path):
    extra = {
        "oxigdal.coordinator.enabled": True,
        "oxigdal.coordinator.data-dir": str(tmp_path / "coord"),
    }
    async with _cluster(tmp_path, tokens=True, extra=extra) as (s, _):
        ext = s.plugins[NAME]
        async with await Client(
            s.address, asynchronous=True, security=TokenSecurity(_tok("alice"))
        ) as c:
            with pytest.raises(PermissionError):
                await c.run_on_scheduler(len, [])

        def replicated():
            return [
                e
                for e in ext.coordinator.state.audit
                if e.get("kind") == "auth" and e.get("action") == "run_function"
            ]

        await _wait(lambda: replicated(), timeout=30)
        (entry,) = replicated()
        assert entry["principal"] == "alice" and entry["outcome"] == "denied"
        assert entry["mac"] == next(
            e["mac"] for e in ext.auth.audit.entries() if e["action"] == "run_function"
        )


# ----------------------------------------------------- deadline admission (auth/admission.py)
NOWHERE = "tcp://127.0.0.1:9"  # no worker has this address: restricted tasks wait, unrun
DEADLINE_CFG = {
    "oxigdal.scheduling.policies": [
        *POLICIES,
        {"class": "dask_oxigdal.scheduling.deadline.Deadline"},
    ],
    "oxigdal.deadline.infeasible": "warn",
}


def _over_entitlement(s):
    return [m for _, m in s.get_events("oxigdal") if m.get("kind") == "deadline-over-entitlement"]


def _edf(s, keys):
    """Whether each task carries the Deadline policy's EDF priority (negative 2nd element)."""
    return [s.tasks[k].priority[1] < 0 for k in keys]


@gen_test(timeout=60)
async def test_deadline_jobs_are_admitted_within_entitlement_plus_idle_capacity(tmp_path, certs):
    async with _cluster(tmp_path, certs, extra=DEADLINE_CFG) as (s, audit):
        ext = s.plugins[NAME]
        deadline = ext.get_policy("Deadline")
        async with (
            await _client(s, certs, "alice") as alice,
            await _client(s, certs, "bob") as bob,
        ):
            # team-b has pending work (held on no worker): team-a's share is 1/2 of 1 thread
            held_b = bob.map(inc, range(4), key=[f"b-{i}" for i in range(4)], workers=[NOWHERE])
            await _wait(lambda: ext.usage.get("team-b") and ext.usage["team-b"].pending == 4)

            def job(name, n):
                with dox.annotate(deadline="60s"):
                    keys = [f"{name}-{i}" for i in range(n)]
                    return alice.map(inc, range(n), key=keys, workers=[NOWHERE]), keys

            # 40 tasks of unknown duration (0.5 s each): 20 task-s <= 1/2 x 1 thread x
            # ~60 s = ~30 task-s: urgent (EDF)
            f1, k1 = job("first", 40)
            await _wait(lambda: all(k in ext.info for k in k1))
            assert _edf(s, k1) == [True] * 40
            assert not _over_entitlement(s)
            (w1,) = [j.work for j in deadline.jobs.values()]
            assert w1 == pytest.approx(20.0)
            # 20 more due no earlier: 40 > ~30, so this job is demoted to fair-share order
            f2, k2 = job("second", 40)
            await _wait(lambda: _over_entitlement(s))
            assert _edf(s, k2) == [False] * 40
            (event,) = _over_entitlement(s)
            assert event["tenant"] == "team-a" and event["outcome"] == "demoted"
            assert event["demand"] == pytest.approx(40.0)
            assert 25.0 < event["budget"] <= 30.0 and event["share"] == pytest.approx(0.5)
            for part in ("'team-a'", "40 task-seconds", "entitlement plus idle capacity"):
                assert part in event["message"], event["message"]
            assert "team-b" not in event["message"]  # never names the other tenants
            assert len(deadline.jobs) == 1  # the demoted job is not tracked as a deadline job
            # team-b's work goes away: its share is idle capacity team-a may use (1 x ~60 s)
            await bob.cancel(held_b)
            await _wait(lambda: ext.usage["team-b"].pending == 0)
            f3, k3 = job("third", 40)  # 20 (first) + 20 = 40 <= ~60
            await _wait(lambda: all(k in ext.info for k in k3))
            assert _edf(s, k3) == [True] * 40
            assert len(_over_entitlement(s)) == 1
            snap = ext.auth.snapshot()["deadline_admission"]
            assert snap == {"action": "demote", "admitted": 2, "demoted": 1, "rejected": 0}
            del f1, f2, f3
    demoted = [e for e in _audit_lines(audit) if e["action"] == "deadline-admission"]
    assert [(e["tenant"], e["outcome"]) for e in demoted] == [("team-a", "demoted")]


@gen_test(timeout=60)
async def test_deadline_jobs_over_entitlement_can_be_rejected(tmp_path, certs):
    from dask_oxigdal.auth.admission import DeadlineOverEntitlement

    extra = {**DEADLINE_CFG, "oxigdal.auth.deadline-admission": "reject"}
    async with _cluster(tmp_path, certs, extra=extra) as (s, _):
        async with (
            await _client(s, certs, "alice") as alice,
            await _client(s, certs, "bob") as bob,
        ):
            held = bob.map(inc, range(2), key=["b-0", "b-1"], workers=[NOWHERE])
            ext = s.plugins[NAME]
            await _wait(lambda: ext.usage.get("team-b") and ext.usage["team-b"].pending == 2)
            with dox.annotate(deadline="60s"):  # 100 x 0.5 s > 1/2 x 1 thread x 60 s
                big = alice.map(inc, range(100), key=[f"big-{i}" for i in range(100)])
            with pytest.raises(DeadlineOverEntitlement, match="over its entitlement"):
                await big[0]
            # the rest of team-a's work is unaffected
            assert await alice.submit(inc, 1, key="plain") == 2
            del held


def test_deadline_admission_setting_is_validated():
    from dask_oxigdal.auth.admission import DeadlineAdmission

    with pytest.raises(ConfigError, match=r"'later'.*demote, reject, off"):
        DeadlineAdmission(None, "later")
    assert DeadlineAdmission(None, False).action == "off"  # YAML 1.1: unquoted off


def inc(x):
    return x + 1


# ------------------------------------------------------ the page's login (auth/web.py)
@gen_test(timeout=60)
async def test_page_login_sets_a_session_cookie_that_state_json_accepts(tmp_path, certs):
    from dask_oxigdal.auth.web import COOKIE
    from dask_oxigdal.monitoring import http

    assert http.COOKIE == COOKIE
    async with _cluster(tmp_path, certs, dashboard=True) as (s, audit):
        async with await _client(s, certs, "bob") as bob:
            await bob.gather(bob.map(inc, range(3), key=[f"bobs-{i}" for i in range(3)]))
        base = f"http://127.0.0.1:{s.http_server.port}/oxigdal/"
        loop = asyncio.get_running_loop()

        def call(path, data=None, cookie=None):
            url = base.split("/oxigdal/")[0] + path if path.startswith("/") else base + path
            req = urllib.request.Request(url, data=data)
            if cookie:
                req.add_header("Cookie", f"{COOKIE}={cookie}")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, r.read().decode(), r.headers.get_all("Set-Cookie") or []
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode(), e.headers.get_all("Set-Cookie") or []

        async def do(*args, **kw):
            return await loop.run_in_executor(None, lambda: call(*args, **kw))

        code, page, _ = await do("")
        assert code == 200 and 'id="login"' in page and 'fetch("login"' in page
        # /metrics (distributed's, unauthenticated) carries no per-tenant series with auth on
        code, metrics, _ = await do("/metrics")
        assert code == 200 and "oxigdal_" in metrics
        assert "team-" not in metrics and 'tenant="' not in metrics
        assert (await do("state.json"))[0] == 401
        # wrong, malformed and missing tokens: 401, no cookie
        for body in (b"token=alice:" + b"0" * 64, b"token=garbage", b""):
            code, _, cookies = await do("login", data=body)
            assert code == 401 and not cookies
        token = _tok("alice")
        code, body, cookies = await do("login", data=f"token={token}".encode())
        assert code == 200 and json.loads(body) == {"principal": "alice"}
        (set_cookie,) = cookies
        value = set_cookie.split(";")[0].split("=", 1)[1].strip('"')
        attrs = set_cookie.lower()
        assert "httponly" in attrs and "samesite=strict" in attrs and "path=/oxigdal/" in attrs
        assert token.partition(":")[2] not in set_cookie  # the token itself is never stored
        # the cookie is what the page's same-origin fetch("state.json") sends
        code, body, _ = await do("state.json", cookie=value)
        assert code == 200 and "team-a" in body and "team-b" not in body
        # a forged principal name or MAC in the cookie is refused
        expiry, mac, _ = value.split(":", 2)
        for forged in (f"{expiry}:{mac}:ops", f"{expiry}:{'0' * 64}:alice", "x", f"1:{mac}:alice"):
            assert (await do("state.json", cookie=forged))[0] == 401
        code, _, cookies = await do("logout", data=b"")
        assert code == 200 and any(COOKIE in c for c in cookies)
        assert s.plugins[NAME].auth.snapshot()["page_logins"] == 1
    lines = open(audit).read()
    assert token.partition(":")[2] not in lines  # no token in the audit log
    logins = [e for e in _audit_lines(audit) if e["action"] == "http-login"]
    assert [e["outcome"] for e in logins] == ["denied"] * 3 + ["allowed"]
