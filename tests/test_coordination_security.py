"""The coordinator closed to the network: bind address, secrets, authenticated plain-data files.

Traffic goes to 127.0.0.1 only; bind addresses are checked on the listening
sockets themselves (psutil), never by connecting elsewhere.
"""

from __future__ import annotations

import dask_oxigdal  # noqa: F401  (registers the oxigdal.* defaults before utils_test)

# isort: split
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import zlib

import dask
import psutil
import pytest
from _coord_procs import PYTHON, Proc, free_port, wait_for
from distributed.utils_test import gen_cluster

from dask_oxigdal.coordination import journal
from dask_oxigdal.coordination.node import (
    LEGACY_PASSWORD_ENV,
    PASSWORD_ENV,
    SECRET_FILE,
    CoordinatorSettings,
    embedded_secret,
)
from dask_oxigdal.exceptions import ConfigError


class _Marker:
    """Unpickling this creates ``path`` (``open(path, "w")``): the shape of an RCE payload."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _journal_bodies(raw: bytes) -> list[dict]:
    """Each record of a journal file, walked by its length prefix and decoded as JSON.

    The length prefix and the HMAC are binary and may hold any byte (0x80 0x04
    included), so pickle opcodes are looked for in the record bodies only.
    """
    assert raw.startswith(journal.MAGIC)
    bodies, pos, head = [], len(journal.MAGIC), 4 + 32
    while pos < len(raw):
        (length,) = struct.unpack_from("<I", raw, pos)
        body = raw[pos + head : pos + head + length]
        assert len(body) == length, f"truncated record at offset {pos}"
        assert body.isascii() and b"\x80" not in body, body[:80]
        bodies.append(json.loads(body))
        pos += head + length
    return bodies


def _listening(pid: int, port: int) -> list[str]:
    """Local IPs of the TCP sockets of process ``pid`` listening on ``port``."""
    return [
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]


def _no_secret_env(monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(LEGACY_PASSWORD_ENV, raising=False)


# ------------------------------------------------------------------ pysyncobj's socket patch
def test_importing_the_coordinator_keeps_socket_inet_ntop():
    script = (
        "import socket, psutil\n"
        "import dask_oxigdal.coordination, dask_oxigdal.coordination.bridge\n"
        "import pysyncobj\n"
        "print(socket.inet_ntop(socket.AF_INET6, bytes(15) + b'\\x01'))\n"
        "psutil.net_connections()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "::1"
    # and in this process, whatever imported pysyncobj first
    import dask_oxigdal.coordination.bridge  # noqa: F401

    assert socket.inet_ntop(socket.AF_INET6, bytes(15) + b"\x01") == "::1"


# ------------------------------------------------------------------ secrets
def test_secret_never_comes_from_the_dask_config(tmp_path, monkeypatch):
    _no_secret_env(monkeypatch)
    with dask.config.set({"oxigdal.coordinator.password": "s3cret"}):
        with pytest.raises(ConfigError, match="password-file"):
            CoordinatorSettings.from_config()
    with dask.config.set({"oxigdal.coordinator.insecure": True}):
        with pytest.raises(ConfigError, match="insecure is no longer supported"):
            CoordinatorSettings.from_config()
    # a group member or an observer without a secret is refused
    with pytest.raises(ConfigError, match="needs its secret"):
        CoordinatorSettings.from_config(mode="observer", partners=["127.0.0.1:1"])
    # the earlier DASK_* variable is refused: dask loads it into its config
    monkeypatch.setenv(LEGACY_PASSWORD_ENV, "s3cret")
    with pytest.raises(ConfigError, match=f"\\${PASSWORD_ENV}"):
        CoordinatorSettings.from_config(mode="observer", partners=["127.0.0.1:1"])
    monkeypatch.delenv(LEGACY_PASSWORD_ENV)
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    s = CoordinatorSettings.from_config(mode="observer", partners=["127.0.0.1:1"])
    assert (s.password, s.password_source) == ("from-env", "environment")
    assert "from-env" not in repr(s)
    # a password file: its path is configuration, the secret is not
    path = tmp_path / "group.secret"
    path.write_text("from-file\n")
    path.chmod(0o644)
    with dask.config.set({"oxigdal.coordinator.password-file": str(path)}):
        with pytest.raises(ConfigError, match="mode 0644"):
            CoordinatorSettings.from_config()
        path.chmod(0o600)
        s = CoordinatorSettings.from_config()
        assert (s.password, s.password_source) == ("from-file", "file")


def test_embedded_secret_is_generated_once_per_data_dir_and_private(tmp_path):
    first = embedded_secret(str(tmp_path / "d"))
    assert len(first) >= 40 and embedded_secret(str(tmp_path / "d")) == first
    assert embedded_secret(str(tmp_path / "other")) != first
    assert os.stat(tmp_path / "d" / SECRET_FILE).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "d").st_mode & 0o077 == 0
    (tmp_path / "d" / SECRET_FILE).chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        embedded_secret(str(tmp_path / "d"))


# ------------------------------------------------------------------ the embedded coordinator
@gen_cluster(
    client=True, nthreads=[("127.0.0.1", 1)], scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}
)
async def test_embedded_coordinator_binds_loopback_and_runs_no_unauthenticated_pickle(c, s, a):
    import asyncio
    import tempfile

    from tornado.httpclient import AsyncHTTPClient

    from dask_oxigdal.scheduling.extension import register

    root = tempfile.mkdtemp(prefix="oxigdal-sec-")
    data_dir = os.path.join(root, "coord")
    with dask.config.set(
        {"oxigdal.coordinator.enabled": True, "oxigdal.coordinator.data-dir": data_dir}
    ):
        await register(c)
    ext = s.plugins["oxigdal"]
    coord = ext.coordinator
    assert coord is not None and coord.ready
    assert coord.settings.password_source == "generated"
    host, _, port = coord.address.rpartition(":")
    port = int(port)
    # bound to loopback only (pysyncobj's default would be 0.0.0.0)
    assert host == "127.0.0.1"
    assert _listening(os.getpid(), port) == ["127.0.0.1"]

    # the public snapshot and state.json name no coordinator address or port
    snap = coord.snapshot()
    assert "address" not in snap and "partners" not in snap
    assert snap["leader"] == "self" and snap["members"] == 1
    body = (
        await AsyncHTTPClient().fetch(f"http://127.0.0.1:{s.http_server.port}/oxigdal/state.json")
    ).body.decode()
    state = json.loads(body)
    assert state["snapshot"]["coordinator"]["role"] == "leader"
    assert coord.address not in body and str(port) not in body

    # an unauthenticated pickle sent to the node's port is never unpickled
    marker = os.path.join(root, "pwned")
    frame = zlib.compress(pickle.dumps(_Marker(marker)), 3)
    control = os.path.join(root, "control")
    pickle.loads(zlib.decompress(zlib.compress(pickle.dumps(_Marker(control)), 3)))
    assert os.path.exists(control)  # the payload works where it is unpickled

    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(struct.pack("i", len(frame)) + frame)
            try:
                return sock.recv(1024)  # the node drops the connection (b"")
            except (ConnectionResetError, TimeoutError):
                return b""

    assert await asyncio.to_thread(send) == b""
    # the node is still fine: a write commits
    coord.usage_add("t", 1.0)
    deadline = asyncio.get_running_loop().time() + 60
    while coord.queued_writes and asyncio.get_running_loop().time() < deadline:
        coord.flush()
        await asyncio.sleep(0.02)
    assert coord.queued_writes == 0
    assert not os.path.exists(marker)
    # the journal on disk is plain JSON with an HMAC per record: no pickle in it
    with open(os.path.join(data_dir, "embedded.journal"), "rb") as f:
        raw = f.read()
    assert any('"usage_add"' in json.dumps(rec["c"]) for rec in _journal_bodies(raw))


def test_a_group_node_binds_its_own_address_only(tmp_path, monkeypatch):
    _no_secret_env(monkeypatch)
    port = free_port()
    # 127.0.0.2 is loopback too (127.0.0.0/8): a node told so must not listen on 127.0.0.1
    args = [PYTHON, "-m", "dask_oxigdal.coordination", "--self", f"127.0.0.2:{port}"]
    args += ["--data-dir", str(tmp_path / "d"), "--ready-file", str(tmp_path / "ready")]
    proc = Proc(args, log=str(tmp_path / "node.log"))
    try:
        wait_for(lambda: _listening(proc.pid, port) or not proc.alive(), 60, "the node's socket")
        assert _listening(proc.pid, port) == ["127.0.0.2"], proc.output()
        # no secret given: a node without partners generated one in its data dir
        assert os.stat(tmp_path / "d" / SECRET_FILE).st_mode & 0o777 == 0o600
    finally:
        proc.terminate()


def test_the_secret_never_reaches_a_nanny_workers_config_or_environment(tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    from dask_oxigdal.scheduling.extension import register

    _no_secret_env(monkeypatch)
    data_dir = str(tmp_path / "coord")
    config = {"oxigdal.coordinator.enabled": True, "oxigdal.coordinator.data-dir": data_dir}

    def worker_view():
        import os as _os

        import dask as _dask

        return json.dumps(_dask.config.config, default=str), dict(_os.environ)

    with dask.config.set(config):
        with (
            LocalCluster(
                n_workers=1,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
            ) as cluster,
            Client(cluster) as client,
        ):
            register(client)
            role = client.run_on_scheduler(
                lambda dask_scheduler: dask_scheduler.plugins["oxigdal"].coordinator.role
            )
            assert role == "leader"
            config_json, environ = client.submit(worker_view, pure=False).result(timeout=120)
    secret = embedded_secret(data_dir)
    assert data_dir in config_json  # the worker got the scheduler's dask config ...
    assert secret not in config_json  # ... but not the secret
    assert all(secret not in v for v in environ.values())
    assert PASSWORD_ENV not in environ and LEGACY_PASSWORD_ENV not in environ


# ------------------------------------------------------------------ the journal and the dump
def _command(op="usage_add", **args) -> bytes:
    from pysyncobj.pickle import dumps

    return b"\x00" + dumps((0, ([("rid-1", op, args)],)))


def test_journal_records_are_plain_data_with_an_hmac(tmp_path):
    key = journal.derive_key("s3cret")
    path = str(tmp_path / "n.journal")
    j = journal.ChecksummedJournal(path, key=key)
    j.add(b"\x01", 1, 1)  # pysyncobj's no-op
    j.add(_command(tenant="t", worker_seconds=1.5), 2, 1)
    j.setCurrentTerm(1, None)
    j._destroy()
    again = journal.ChecksummedJournal(path, key=key)
    assert [e[1:] for e in again] == [(1, 1), (2, 1)]
    assert pickle.loads(again[1][0][1:]) == (
        0,
        ([("rid-1", "usage_add", {"tenant": "t", "worker_seconds": 1.5})],),
    )
    again._destroy()
    with open(path, "rb") as f:
        raw = f.read()
    assert [(rec["i"], rec["t"]) for rec in _journal_bodies(raw)] == [(1, 1), (2, 1)]
    # a record rewritten in place (same length) fails its HMAC, naming the record
    with open(path, "wb") as f:
        f.write(raw.replace(b"1.5", b"9.5"))
    with pytest.raises(journal.CorruptJournalError, match="HMAC mismatch in record 1"):
        journal.ChecksummedJournal(path, key=key)
    # another group's secret does not verify either
    with open(path, "wb") as f:
        f.write(raw)
    with pytest.raises(journal.CorruptJournalError, match="HMAC mismatch in record 0"):
        journal.ChecksummedJournal(path, key=journal.derive_key("other"))
    # the metadata has its own HMAC
    with open(path + ".meta", "rb") as f:
        meta = f.read()
    with open(path + ".meta", "wb") as f:
        f.write(meta.replace(b'"term":1', b'"term":7'))
    with pytest.raises(journal.CorruptJournalError, match="metadata HMAC mismatch"):
        journal.verify_data_dir(path, str(tmp_path / "none.dump"), key=key)


def test_a_command_that_is_not_plain_data_is_never_unpickled(tmp_path):
    marker = str(tmp_path / "pwned")
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        journal.encode_command(b"\x00" + pickle.dumps(_Marker(marker)))
    assert not os.path.exists(marker)


def test_old_pickle_journal_and_dump_are_refused_not_unpickled(tmp_path):
    key = journal.derive_key("s3cret")
    marker = str(tmp_path / "pwned")
    payload = pickle.dumps(_Marker(marker))
    old = tmp_path / "old.journal"
    old.write_bytes(journal.OLD_MAGIC + struct.pack("<IIQQ", len(payload), 0, 1, 1) + payload)
    with pytest.raises(journal.CorruptJournalError, match="earlier dask-oxigdal format"):
        journal.verify_data_dir(str(old), str(tmp_path / "none.dump"), key=key)
    dump = tmp_path / "old.dump"
    dump.write_bytes(journal.OLD_DUMP_MAGIC + bytes(32) + payload)
    with pytest.raises(journal.CorruptJournalError, match="earlier dask-oxigdal format"):
        journal.read_dump(str(dump), key=key)
    assert not os.path.exists(marker)


def test_dump_is_plain_data_with_an_hmac(tmp_path):
    from pysyncobj.node import TCPNode

    key = journal.derive_key("s3cret")
    path = str(tmp_path / "n.dump")
    state = {"data": {"usage": {"t": {"worker_seconds": 1.5}}}, "dedupe": [("r", ("error", "x"))]}
    raft = ((_command(tenant="t"), 7, 2), (b"\x01", 6, 2), {TCPNode("127.0.0.1:5")})
    journal.write_dump(path, {"state": state, "raft": raft}, key=key)
    with open(path, "rb") as f:
        raw = f.read()
    json.loads(raw[len(journal.DUMP_MAGIC) + 32 :])  # plain JSON
    back = journal.read_dump(path, key=key)
    assert back["state"] == state  # tuples survive
    assert back["raft"][:2] == raft[:2]
    assert {n.address for n in back["raft"][2]} == {"127.0.0.1:5"}
    with open(path, "wb") as f:
        f.write(raw.replace(b"1.5", b"2.5"))
    with pytest.raises(journal.CorruptJournalError, match="dump HMAC mismatch"):
        journal.read_dump(path, key=key)


def test_dask_cli_node_reads_its_secret_from_stdin(tmp_path, monkeypatch):
    import time

    from dask_oxigdal.coordination.client import GroupClient

    _no_secret_env(monkeypatch)
    secret = "stdin-" + os.urandom(8).hex()
    address = f"127.0.0.1:{free_port()}"
    args = [PYTHON, "-m", "dask", "oxigdal", "coordinator", "--self", address]
    args += ["--data-dir", str(tmp_path / "d"), "--password-file", "-"]
    args += ["--ready-file", str(tmp_path / "ready")]
    log = tmp_path / "node.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=out, stderr=out)
    try:
        popen.stdin.write(secret.encode() + b"\n")
        popen.stdin.close()
        wait_for(lambda: (tmp_path / "ready").exists() or popen.poll() is not None, 120, "the node")
        assert popen.poll() is None, log.read_text()[-2000:]
        # the stdin secret is the group's (no secret was generated in the data dir)
        assert not (tmp_path / "d" / SECRET_FILE).exists()
        with GroupClient([address], password=secret) as c:
            assert c.call("reg_write", key="k", value=1, deadline=time.monotonic() + 60).value
    finally:
        if popen.poll() is None:
            popen.terminate()
        popen.wait(timeout=30)
