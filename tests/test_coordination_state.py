"""The state machine, the checksummed journal and the security rules, on real node processes."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
from _coord_procs import PYTHON, Group, free_port, wait_for

from dask_oxigdal.coordination import journal
from dask_oxigdal.coordination.client import GroupClient, NotAcknowledged
from dask_oxigdal.coordination.node import CoordinatorSettings, check_security
from dask_oxigdal.coordination.state import make_command
from dask_oxigdal.exceptions import ConfigError


def _single(tmp_path, extra=None):
    g = Group(tmp_path, n=1, extra=extra)
    g.start_all()
    return g


def _node_cmd(tmp_path, address, *extra):
    return [PYTHON, "-m", "dask_oxigdal.coordination", "--self", address, *extra]


def _fill(tmp_path, n=40):
    g = _single(tmp_path)
    try:
        with GroupClient(g.addresses) as c:
            for i in range(n):
                c.call("reg_append", key="log", value=i, deadline=time.monotonic() + 60)
            assert c.call("read", section="registers", key="log").value == list(range(n))
    finally:
        g.procs[0].terminate()
    return g


def _restart_fails(g, needle):
    out = subprocess.run(
        [*_node_cmd(g.tmp, g.addresses[0]), "--data-dir", g.data_dir(0)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr, out.stderr
    return out.stderr


def _journal_path(g):
    return os.path.join(g.data_dir(0), "embedded.journal")


def test_flipped_byte_in_the_journal_is_detected_at_start(tmp_path):
    g = _fill(tmp_path)
    path = _journal_path(g)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0x40]))
    err = _restart_fails(g, "embedded.journal")
    assert "checksum mismatch" in err or "truncated" in err or "expected" in err


def test_truncated_journal_is_detected_at_start(tmp_path):
    g = _fill(tmp_path)
    path = _journal_path(g)
    os.truncate(path, os.path.getsize(path) - 5)
    _restart_fails(g, "truncated record")


def test_journal_cut_at_a_record_boundary_is_detected_at_start(tmp_path):
    g = _fill(tmp_path)
    path = _journal_path(g)
    _, offsets, _ = journal._parse_journal(path)
    os.truncate(path, offsets[len(offsets) // 2])
    _restart_fails(g, "the commit index is")


def test_intact_journal_restarts_with_its_state_and_private_files(tmp_path):
    g = _fill(tmp_path, n=10)
    g.start(0)
    try:
        with GroupClient(g.addresses) as c:
            assert c.call("read", section="registers", key="log").value == list(range(10))
    finally:
        g.stop_all()
    assert os.stat(g.data_dir(0)).st_mode & 0o077 == 0
    for name in os.listdir(g.data_dir(0)):
        assert os.stat(os.path.join(g.data_dir(0), name)).st_mode & 0o077 == 0, name


def test_log_compaction_dump_is_checksummed_and_restored(tmp_path):
    g = _single(tmp_path, extra=["--log-compaction-entries", "300"])
    n = 400  # pysyncobj compacts the log after 300 entries here (5000 by default)
    try:
        with GroupClient(g.addresses) as c:
            c.call("reg_write", key="warm", value=0, deadline=time.monotonic() + 60)
            done = threading.Semaphore(0)
            errors = []

            def cb(result, error):
                if error != 0:
                    errors.append(error)
                done.release()

            for _ in range(n):  # one log entry each
                c.submit_batch([make_command("usage_add", tenant="t", worker_seconds=1.0)], cb)
            for _ in range(n):
                assert done.acquire(timeout=120)
            assert not errors
            dump = os.path.join(g.data_dir(0), "embedded.dump")
            wait_for(lambda: os.path.exists(dump), 60, "the log compaction dump")
    finally:
        g.procs[0].terminate()
    assert os.stat(dump).st_mode & 0o077 == 0
    # the journal shrank to the entries after the dump
    assert journal.verify_data_dir(_journal_path(g), dump)["entries"] < n
    g.start(0)
    try:
        with GroupClient(g.addresses) as c:
            usage = c.call("read", section="usage", key="t", deadline=time.monotonic() + 60).value
            assert usage["worker_seconds"] == n
    finally:
        g.stop_all()
    with open(dump, "r+b") as f:
        f.seek(os.path.getsize(dump) - 10)
        f.write(b"\x00\x01\x02")
    _restart_fails(g, "dump checksum mismatch")


def test_retried_request_id_is_applied_once(tmp_path):
    g = _single(tmp_path)
    try:
        with GroupClient(g.addresses) as c:
            first = c.call("usage_add", tenant="t", worker_seconds=2.5, request_id="rid-1")
            again = c.call("usage_add", tenant="t", worker_seconds=2.5, request_id="rid-1")
            assert first.value == again.value
            assert c.call("read", section="usage", key="t").value["worker_seconds"] == 2.5
            # leases: Occupy / Vacate of workers by gangs
            assert c.call("lease_occupy", worker="w1", holder="gang-a").value is True
            assert c.call("lease_occupy", worker="w1", holder="gang-b").value == "gang-a"
            assert c.call("lease_vacate", worker="w1", holder="gang-b").value is False
            assert c.call("lease_vacate", worker="w1", holder="gang-a").value is True
            assert c.call("audit", event={"kind": "test"}).value == 1
            # an invalid command that reaches the log changes nothing
            bad = c.call("quarantine_clear", worker="w")
            assert bad.value is False
            view = c.node.view()
            assert view["audit"] == [{"seq": 1, "kind": "test"}]
            # the retried id, and any attempt the client resent after an unknown outcome
            assert view["meta"]["duplicates"] >= 1
    finally:
        g.stop_all()


@pytest.mark.parametrize(
    "op, args, needle",
    [
        ("nope", {}, "valid commands: tenant_set"),
        (
            "quarantine_set",
            {"worker": "w", "state": "ajar"},
            "valid states: open, half-open, closed",
        ),
        ("tenant_set", {"tenant": "a", "weight": -1}, "weight=-1"),
        ("tenant_set", {"tenant": "a", "max_tasks": 1.5}, "max_tasks=1.5"),
        ("usage_add", {"tenant": "", "worker_seconds": 1}, "tenant=''"),
        ("usage_add", {"tenant": "a", "worker_seconds": float("nan")}, "worker_seconds=nan"),
        ("manifest_put", {"key": "k", "entry": {"f": object()}}, "is not plain data"),
        ("read", {"section": "secrets"}, "valid sections: tenants"),
    ],
)
def test_bad_commands_are_refused_before_the_log(op, args, needle):
    with pytest.raises(ValueError) as info:
        make_command(op, **args)
    assert needle in str(info.value)


def test_password_less_group_on_a_public_address_refuses_to_start(tmp_path):
    with pytest.raises(ConfigError, match="remote code execution"):
        check_security(["10.0.0.5:4321"], None, False)
    check_security(["10.0.0.5:4321"], "secret", False)
    check_security(["10.0.0.5:4321"], None, True)
    check_security(["127.0.0.1:4321", "localhost:1", "[::1]:2"], None, False)
    out = subprocess.run(
        [*_node_cmd(tmp_path, "10.0.0.5:4321"), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "insecure: true" in out.stderr
    with pytest.raises(ConfigError, match="valid modes: embedded, observer"):
        CoordinatorSettings.from_config(mode="cluster")
    with pytest.raises(ConfigError, match="more than 3 x heartbeat"):
        CoordinatorSettings.from_config(heartbeat="200ms", election_timeout_min="300ms")


def test_wrong_password_is_refused(tmp_path):
    g = Group(tmp_path, n=1, extra=["--password", "right"])
    g.start_all()
    try:
        with GroupClient(g.addresses, password="right") as good:
            r = good.call("reg_write", key="k", value=1, deadline=time.monotonic() + 60)
            assert r.value is True
        with GroupClient(g.addresses, password="wrong", attempt_timeout=0.5) as bad:
            with pytest.raises(NotAcknowledged):
                bad.call("reg_write", key="k", value=2, deadline=time.monotonic() + 3)
        with GroupClient(g.addresses, password="right") as good:
            assert good.call("reg_read", key="k", deadline=time.monotonic() + 60).value == 1
    finally:
        g.stop_all()
    assert free_port() > 0
