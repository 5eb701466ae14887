"""The state machine, the HMAC'd plain-data journal and the security rules, on real node processes."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
from _coord_procs import PYTHON, Group, free_port, wait_for

from dask_oxigdal.coordination import journal
from dask_oxigdal.coordination.client import GroupClient, NotAcknowledged
from dask_oxigdal.coordination.node import CoordinatorSettings
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
        with GroupClient(g.addresses, password=g.password) as c:
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
        env={**os.environ, **g.env},
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
    assert "HMAC mismatch" in err or "truncated" in err or "expected" in err


def test_truncated_journal_is_detected_at_start(tmp_path):
    g = _fill(tmp_path)
    path = _journal_path(g)
    os.truncate(path, os.path.getsize(path) - 5)
    _restart_fails(g, "truncated record")


def test_journal_cut_at_a_record_boundary_is_detected_at_start(tmp_path):
    g = _fill(tmp_path)
    path = _journal_path(g)
    _, _, offsets, _ = journal._parse_journal(path, journal.derive_key(g.password))
    os.truncate(path, offsets[len(offsets) // 2])
    _restart_fails(g, "the commit index is")


def test_intact_journal_restarts_with_its_state_and_private_files(tmp_path):
    g = _fill(tmp_path, n=10)
    g.start(0)
    try:
        with GroupClient(g.addresses, password=g.password) as c:
            assert c.call("read", section="registers", key="log").value == list(range(10))
    finally:
        g.stop_all()
    assert os.stat(g.data_dir(0)).st_mode & 0o077 == 0
    for name in os.listdir(g.data_dir(0)):
        assert os.stat(os.path.join(g.data_dir(0), name)).st_mode & 0o077 == 0, name


def test_log_compaction_dump_is_authenticated_and_restored(tmp_path):
    g = _single(tmp_path, extra=["--log-compaction-entries", "300"])
    n = 400  # pysyncobj compacts the log after 300 entries here (5000 by default)
    try:
        with GroupClient(g.addresses, password=g.password) as c:
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
    key = journal.derive_key(g.password)
    assert journal.verify_data_dir(_journal_path(g), dump, key=key)["entries"] < n
    g.start(0)
    try:
        with GroupClient(g.addresses, password=g.password) as c:
            usage = c.call("read", section="usage", key="t", deadline=time.monotonic() + 60).value
            assert usage["worker_seconds"] == n
    finally:
        g.stop_all()
    with open(dump, "r+b") as f:
        f.seek(os.path.getsize(dump) - 10)
        f.write(b"\x00\x01\x02")
    _restart_fails(g, "dump HMAC mismatch")


def test_retried_request_id_is_applied_once(tmp_path):
    g = _single(tmp_path)
    try:
        with GroupClient(g.addresses, password=g.password) as c:
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
            view = c.node.view()
            assert view["audit"] == [{"seq": 1, "kind": "test"}]
            # the retried id, and any attempt the client resent after an unknown outcome
            assert view["meta"]["duplicates"] >= 1
    finally:
        g.stop_all()


def _send_raw(client, batch):
    """Send ``batch`` as is (no make_command validation); its results once committed."""
    done = threading.Event()
    box = []

    def cb(result, error):
        box.append((result, error))
        done.set()

    client.submit_batch(batch, cb)
    assert done.wait(60), "the raw batch was not acknowledged"
    result, error = box[0]
    assert error == 0, error
    return result


def test_invalid_commands_that_reach_the_log_are_rejected_and_change_nothing(tmp_path):
    g = _single(tmp_path)
    try:
        with GroupClient(g.addresses, password=g.password) as c:
            c.call("quarantine_set", worker="w", state="open", deadline=time.monotonic() + 60)
            before = c.call("read", section="quarantine", key=None).value
            meta0 = c.node.view()["meta"]
            # commands that bypass make_command (an old or hostile client): each one is
            # validated again when applied and gets an error result
            bad = [
                ("bad-1", "nope", {}),  # unknown op
                ("bad-2", "quarantine_set", {"worker": "w", "state": "ajar"}),  # bad value
                ("bad-3", "usage_add", {"tenant": "t", "worker_seconds": float("nan")}),
                ("bad-4", "tenant_set", {"tenant": "t", "weight": -1}),
                "not a command",  # malformed
            ]
            good = ("good-1", "usage_add", {"tenant": "t", "worker_seconds": 1.0})
            results = _send_raw(c, [*bad, good])
            assert [r[0] for r in results[:-1]] == ["error"] * len(bad), results
            assert "nope" in results[0][1]
            assert "valid states: open, half-open, closed" in results[1][1]
            assert "worker_seconds=nan" in results[2][1]
            assert "weight=-1" in results[3][1]
            assert "malformed command" in results[4][1]
            assert results[-1]["worker_seconds"] == 1.0  # the valid one in the batch applies
            # nothing else changed
            assert c.call("read", section="quarantine", key=None).value == before
            assert c.call("read", section="tenants", key=None).value == {}
            usage = c.call("read", section="usage", key=None).value
            assert usage == {
                "t": {"worker_seconds": 1.0, "completed": 0, "erred": 0, "submitted": 0}
            }
            meta = c.node.view()["meta"]
            assert meta["rejected"] - meta0["rejected"] == len(bad)
            # a rejected request id is remembered too: resending it is not applied again
            assert _send_raw(c, [bad[1]]) == [results[1]]
            assert c.node.view()["meta"]["rejected"] - meta0["rejected"] == len(bad)
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


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="valid modes: embedded, observer"):
        CoordinatorSettings.from_config(mode="cluster")
    with pytest.raises(ConfigError, match="more than 3 x heartbeat"):
        CoordinatorSettings.from_config(heartbeat="200ms", election_timeout_min="300ms")


def test_wrong_password_is_refused_and_never_on_the_command_line(tmp_path):
    secret = "right-" + os.urandom(8).hex()
    g = Group(tmp_path, n=1, password=secret)
    g.start_all()
    try:
        wait_for(lambda: os.path.exists(g.ready_file(0)), 60, "the node")
        # the node got its password from the environment: not in ps output
        assert secret not in g.procs[0].cmdline()
        ps = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(g.procs[0].pid)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ps.returncode == 0 and "dask_oxigdal.coordination" in ps.stdout, ps
        assert secret not in ps.stdout
        assert "--password" not in ps.stdout
        with GroupClient(g.addresses, password=secret) as good:
            r = good.call("reg_write", key="k", value=1, deadline=time.monotonic() + 60)
            assert r.value is True
        with GroupClient(g.addresses, password="wrong", attempt_timeout=0.5) as bad:
            with pytest.raises(NotAcknowledged):
                bad.call("reg_write", key="k", value=2, deadline=time.monotonic() + 3)
        with GroupClient(g.addresses, password=secret) as good:
            assert good.call("reg_read", key="k", deadline=time.monotonic() + 60).value == 1
    finally:
        g.stop_all()
    assert free_port() > 0


def test_node_password_comes_from_the_environment_a_file_or_stdin(tmp_path, monkeypatch, capsys):
    import io

    from dask_oxigdal.coordination import node

    monkeypatch.delenv(node.PASSWORD_ENV, raising=False)
    monkeypatch.delenv(node.LEGACY_PASSWORD_ENV, raising=False)
    assert node._read_password(None, None) is None
    monkeypatch.setenv(node.PASSWORD_ENV, "from-env")
    assert node._read_password(None, None) == "from-env"
    path = tmp_path / "pw"
    path.write_text("from-file\n")
    path.chmod(0o600)
    assert node._read_password(None, str(path)) == "from-file"
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin\nrest"))
    assert node._read_password(None, "-") == "from-stdin"
    with pytest.raises(ConfigError, match="--password-file="):
        node._read_password(None, str(tmp_path / "missing"))
    # still accepted on the command line, with a warning that ps shows it
    assert node._read_password("argv", None) == "argv"
    assert "visible to every user in ps" in capsys.readouterr().err
