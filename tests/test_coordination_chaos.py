"""Chaos tests: real coordinator nodes as separate processes on 127.0.0.1.

Every node is a ``python -m dask_oxigdal.coordination`` process with
its own data directory and a free port, killed by pid (``Group.stop_all`` in
``finally``). Clients are pysyncobj observers in this process
(:class:`~dask_oxigdal.coordination.client.GroupClient`) that retry a command
whose outcome is unknown with the same request id.

The issue's full run (10 runs of >= 1,000 acknowledged writes) is
``make chaos``, which sets ``OXIGDAL_CHAOS_RUNS=10`` and
``OXIGDAL_CHAOS_WRITES=1000``; CI runs the shortened default.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from _coord_procs import Group, wait_for

from dask_oxigdal.coordination.client import GroupClient, NotAcknowledged
from dask_oxigdal.coordination.linearizability import Op, check_history, check_register

RUNS = int(os.environ.get("OXIGDAL_CHAOS_RUNS", "2"))
WRITES = int(os.environ.get("OXIGDAL_CHAOS_WRITES", "300"))
CLIENTS = 3


@pytest.fixture
def group(tmp_path):
    g = Group(tmp_path)
    try:
        g.start_all()
        yield g
    finally:
        g.stop_all()


@pytest.fixture
def client(group):
    c = GroupClient(group.addresses, password=group.password, attempt_timeout=1.0)
    try:
        wait_for(c.leader, 120, "a leader")
        c.call("reg_write", key="warm-up", value=1, deadline=time.monotonic() + 120)
        yield c
    finally:
        c.close()


def _read_log(client, key):
    # a read that must be current goes through the log
    return client.call("read", section="registers", key=key, deadline=time.monotonic() + 120).value


class Writers:
    """``CLIENTS`` threads appending unique values to one register list until told to stop."""

    def __init__(self, client, key, target):
        self.client, self.key, self.target = client, key, target
        self.acked: dict[str, str] = {}
        self.ack_leader: list[str | None] = []
        self.retries = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(c,)) for c in range(CLIENTS)]

    def _run(self, cid):
        try:
            i = 0
            while not self.stop.is_set():
                with self.lock:
                    if len(self.acked) >= self.target:
                        return
                value = f"{self.key}/{cid}-{i}"
                i += 1
                r = self.client.call(
                    "reg_append", key=self.key, value=value, deadline=time.monotonic() + 120
                )
                with self.lock:
                    assert value not in self.acked
                    self.acked[value] = r.request_id
                    self.ack_leader.append(self.client.leader())
                    self.retries += r.attempts - 1
        except BaseException as e:
            self.errors.append(e)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=180)

    def count(self):
        with self.lock:
            return len(self.acked)

    def join(self):
        for t in self.threads:
            t.join(timeout=180)
        assert not any(t.is_alive() for t in self.threads)
        if self.errors:
            raise self.errors[0]


def _assert_identical(group):
    states = group.states()
    assert len(states) == len([p for p in group.procs if p and p.alive()])
    first = states[0]["state"]
    for s in states[1:]:
        assert s["state"]["registers"] == first["registers"]
        assert s["state"]["meta"]["applied"] == first["meta"]["applied"]
    return first


@pytest.mark.slow
def test_leader_failover_loses_nothing_and_applies_once(group, client):
    total_retries = 0
    for run in range(RUNS):
        key = f"log-{run}"
        with Writers(client, key, WRITES) as w:
            wait_for(lambda w=w: w.count() >= WRITES // 3, 120, "the first writes")
            old = group.index(client.leader())
            assert old is not None
            acked_before_kill = w.count()
            group.kill(old)
            # a write sent right after the kill goes to the dead leader (the client learns
            # of a new one only after an election timeout): its outcome is unknown, and it
            # is retried with the same request id. (The writers' own in-flight writes may
            # all have been appended by the old leader already, then committed by the new
            # one without a retry.) Under load this thread may be descheduled past the
            # election, so the retries are asserted over all runs, not for each probe.
            probe = client.call(
                "reg_append", key=key, value=f"{key}/probe", deadline=time.monotonic() + 120
            )
            assert set(probe.errors) <= {"TIMEOUT", "LEADER_CHANGED", "NOT_LEADER"}, probe.errors
            # writes resume on a new leader
            wait_for(
                lambda w=w, old=old, before=acked_before_kill: (
                    w.count() > before + 10 and group.index(client.leader()) not in (None, old)
                ),
                120,
                "writes on a new leader",
            )
            group.start(old)
            w.join()
        total_retries += w.retries + probe.attempts - 1
        log = _read_log(client, key)
        assert len(log) == len(set(log)), "a write was applied twice"
        assert log.count(f"{key}/probe") == 1, "the retried write was not applied exactly once"
        assert set(w.acked) <= set(log), f"lost acknowledged writes: {set(w.acked) - set(log)}"
        assert len(w.acked) >= WRITES
        new_leaders = {a for a in w.ack_leader[acked_before_kill + 10 :] if a}
        assert group.addresses[old] not in new_leaders or len(new_leaders) > 1
        state = _assert_identical(group)
        assert state["registers"][key] == log
    # outcome-unknown results were retried (and counted) across the kills
    print(f"retried outcome-unknown writes: {total_retries}")
    assert total_retries >= 1, "the test did not exercise the retries"


@pytest.mark.slow
def test_whole_group_restart_keeps_every_acknowledged_write(group, client):
    with Writers(client, "log", 200) as w:
        w.join()
    group.stop_all()  # SIGKILL all three
    group.start_all()
    log = _read_log(client, "log")
    assert set(w.acked) <= set(log) and len(log) == len(set(log))
    _assert_identical(group)


@pytest.mark.slow
def test_minority_partition_acknowledges_nothing_then_converges(group, client):
    client.call("reg_write", key="p", value="before", deadline=time.monotonic() + 60)
    leader = group.index(client.leader())
    followers = [i for i in range(3) if i != leader]
    for i in followers:
        group.procs[i].stop()  # SIGSTOP: the leader is alone, a minority
    try:
        rid = None
        acked = 0
        for value in ("during-1", "during-2"):
            try:
                r = client.call("reg_write", key="p", value=value, deadline=time.monotonic() + 3.0)
                acked += 1
                rid = r.request_id
            except NotAcknowledged:
                pass
        assert acked == 0, "the minority acknowledged a write"
        # a local (possibly stale) read still sees the old value
        assert client.node.view()["registers"]["p"] == "before"
    finally:
        for i in followers:
            group.procs[i].cont()
    # after healing the group converges and takes writes again
    r = client.call("reg_append", key="after", value=1, deadline=time.monotonic() + 120)
    assert r.value == 1 and rid is None
    state = _assert_identical(group)
    assert state["registers"]["after"] == [1]
    # the unacknowledged writes may or may not have been applied, but at most once each
    assert state["registers"]["p"] in ("before", "during-1", "during-2")


@pytest.mark.slow
def test_linearizable_registers_under_leader_kills(group, client):
    keys = ["x", "y"]
    history: list[Op] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(cid):
        rng = random.Random(cid)
        n = 0
        try:
            while not stop.is_set() and n < 120:
                n += 1
                key = rng.choice(keys)
                kind = rng.choice(["write", "cas", "read", "read"])
                call = time.monotonic()
                if kind == "write":
                    value = f"{cid}-{n}"
                    client.call("reg_write", key=key, value=value, deadline=call + 120)
                    op = Op(key, "write", value, True, call, time.monotonic())
                elif kind == "cas":
                    with lock:
                        seen = [o.arg for o in history if o.key == key and o.kind == "write"]
                    expected = rng.choice(seen) if seen else None
                    new = f"{cid}-{n}"
                    r = client.call(
                        "reg_cas", key=key, expected=expected, new=new, deadline=call + 120
                    )
                    op = Op(key, "cas", (expected, new), r.value, call, time.monotonic())
                else:
                    r = client.call("reg_read", key=key, deadline=call + 120)
                    op = Op(key, "read", None, r.value, call, time.monotonic())
                with lock:
                    history.append(op)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    # failover time is the failover test's and the benchmark's subject; here a
    # kill after which this observer sees no new leader within 60 s (seen once in
    # CI on a loaded 2-core box) is counted, the old node restarted, and the
    # history still checked; both kills slow would be a failover bug
    slow_failovers = []
    try:
        for _ in range(2):
            wait_for(lambda: len(history) >= 60, 120, "some operations")
            old = group.index(wait_for(client.leader, 120, "a leader"))
            group.kill(old)
            try:
                wait_for(
                    lambda old=old: group.index(client.leader()) not in (None, old),
                    60,
                    "a new leader",
                )
            except AssertionError:
                # what the live nodes logged, for whoever finds two of these in a run
                logs = {i: p.output()[-800:] for i, p in enumerate(group.procs) if p and i != old}
                slow_failovers.append((old, client.leader(), logs))
            group.start(old)
    except BaseException:
        stop.set()
        raise
    finally:
        # the clients finish their operations on the healed group
        for t in threads:
            t.join(timeout=180)
    assert not errors, errors
    assert len(slow_failovers) < 2, slow_failovers
    assert len(history) == 120 * CLIENTS
    results = check_history(history)
    for key, (ok, _) in results.items():
        assert ok, f"history of register {key!r} is not linearizable"


def test_checker_rejects_non_linearizable_histories():
    # a read that returns a value overwritten before the read began
    bad = [
        Op("k", "write", 1, True, 0.0, 1.0),
        Op("k", "write", 2, True, 2.0, 3.0),
        Op("k", "read", None, 1, 4.0, 5.0),
    ]
    assert not check_register(bad)[0]
    # concurrent writes: either order is fine
    ok = [
        Op("k", "write", 1, True, 0.0, 3.0),
        Op("k", "write", 2, True, 1.0, 2.0),
        Op("k", "read", None, 1, 4.0, 5.0),
    ]
    assert check_register(ok)[0]
    # two successful CAS from the same expected value cannot both win
    cas = [
        Op("k", "write", "a", True, 0.0, 1.0),
        Op("k", "cas", ("a", "b"), True, 2.0, 4.0),
        Op("k", "cas", ("a", "c"), True, 2.5, 4.5),
    ]
    assert not check_register(cas)[0]
    # a failed CAS must have seen another value
    assert check_register([*cas[:2], Op("k", "cas", ("a", "c"), False, 2.5, 4.5)])[0]
    assert not check_register([Op("k", "cas", (None, "x"), False, 0.0, 1.0)])[0]
