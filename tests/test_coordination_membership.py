"""``dask oxigdal coordinator`` and ``dask oxigdal membership``: one node at a time, real processes."""

from __future__ import annotations

import time

import pytest
from _coord_procs import PYTHON, Group, Proc, free_port, wait_for
from click.testing import CliRunner

from dask_oxigdal.cli import oxigdal
from dask_oxigdal.coordination.client import GroupClient


def _membership(password, *args):
    # the group's secret from the environment (never the command line)
    env = {"OXIGDAL_COORDINATOR_PASSWORD": password}
    result = CliRunner().invoke(oxigdal, ["membership", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_add_then_remove_one_node_at_a_time(tmp_path):
    g = Group(tmp_path)
    new = None
    try:
        g.start_all()
        with GroupClient(g.addresses, password=g.password) as c:
            c.call("reg_append", key="log", value=0, deadline=time.monotonic() + 120)
            # a fourth node, started with every member as partner (through the dask CLI)
            port = free_port()
            address = f"127.0.0.1:{port}"
            cmd = [PYTHON, "-m", "dask", "oxigdal", "coordinator"]
            cmd += ["--self", address, "--data-dir", str(tmp_path / "node3")]
            for a in g.addresses:
                cmd += ["--partner", a]
            cmd += ["--state-file", str(tmp_path / "node3.state.json")]
            cmd += ["--ready-file", str(tmp_path / "node3.ready")]
            new = Proc(cmd, env=g.env, log=str(tmp_path / "node3.log"))
            g.addresses.append(address)
            g.procs.append(new)
            wait_for(
                lambda: (tmp_path / "node3.ready").exists() or not new.alive(), 120, "the new node"
            )
            assert new.alive(), new.output()
            assert "SUCCESS" in _membership(g.password, "add", address, "--connect", g.addresses[0])
            c.call("reg_append", key="log", value=1, deadline=time.monotonic() + 120)
            states = g.states()
            assert len(states) == 4
            assert all(s["state"]["registers"]["log"] == [0, 1] for s in states)
            status = _membership(g.password, "status", "--connect", address)
            assert address in status
            # remove a member that is not the new one, then stop it
            gone = next(i for i in range(3) if g.addresses[i] != c.leader())
            assert "SUCCESS" in _membership(
                g.password, "remove", g.addresses[gone], "--connect", address
            )
            g.kill(gone)
            c.call("reg_append", key="log", value=2, deadline=time.monotonic() + 120)
            states = g.states()
            assert len(states) == 3
            assert all(s["state"]["registers"]["log"] == [0, 1, 2] for s in states)
    finally:
        g.stop_all()


def test_membership_and_coordinator_reject_bad_input(tmp_path):
    runner = CliRunner()
    r = runner.invoke(oxigdal, ["membership", "add", "--connect", "127.0.0.1:1"])
    assert r.exit_code != 0 and "needs the node's HOST:PORT" in r.output
    r = runner.invoke(oxigdal, ["membership", "add", "nohost", "--connect", "127.0.0.1:1"])
    assert r.exit_code != 0 and "expected HOST:PORT" in r.output
    # a group member without the group's secret is refused before it binds anything
    no_secret = {"OXIGDAL_COORDINATOR_PASSWORD": None, "DASK_OXIGDAL_COORDINATOR_PASSWORD": None}
    node = ["coordinator", "--self", "10.9.8.7:5000", "--data-dir", str(tmp_path / "d")]
    r = runner.invoke(oxigdal, [*node, "--partner", "10.9.8.6:5000"], env=no_secret)
    assert r.exit_code != 0 and "needs its secret" in r.output, r.output
    r = runner.invoke(oxigdal, [*node, "--insecure"], env=no_secret)
    assert r.exit_code != 0 and "--insecure is no longer supported" in r.output, r.output
    # the earlier DASK_* variable would land in the dask config (copied to the workers)
    env = {**no_secret, "DASK_OXIGDAL_COORDINATOR_PASSWORD": "s3cret"}
    r = runner.invoke(oxigdal, [*node, "--partner", "10.9.8.6:5000"], env=env)
    assert r.exit_code != 0 and "$OXIGDAL_COORDINATOR_PASSWORD" in r.output, r.output
    # a secret file that others can read is refused
    loose = tmp_path / "loose.secret"
    loose.write_text("s3cret\n")
    loose.chmod(0o644)
    r = runner.invoke(oxigdal, [*node, "--password-file", str(loose)], env=no_secret)
    assert r.exit_code != 0 and "chmod 600" in r.output, r.output
    assert not (tmp_path / "d").exists()
