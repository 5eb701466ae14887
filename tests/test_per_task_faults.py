"""Per-task faults stay per task: one task's input never switches a policy off.

- a fuzz test sends 10,000 random and extreme annotation sets (huge, negative,
  NaN, inf, wrong types, unicode, 1 MB strings) through every default policy
  on a real cluster: bad tasks err with a message naming the value, good ones
  finish, and every policy is still enabled afterwards;
- a policy that fails on one task's input rejects that task and stays enabled;
  one that fails on its own (any other exception) is still disabled;
- the issue's example: ``retries=1100, backoff=0`` no longer overflows the
  ``Retries`` backoff and switches it off for everyone.
"""

from __future__ import annotations

import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import math
import random
import time

import dask
import pytest
from distributed import Event, wait
from distributed.utils_test import gen_cluster

from dask_oxigdal.annotations import (
    MAX_BACKOFF,
    MAX_DEADLINE,
    MAX_NAME,
    MAX_REPLICAS,
    MAX_RETRIES,
    VALID_KEYWORDS,
    annotate,
    parse_annotations,
)
from dask_oxigdal.exceptions import TaskRejected
from dask_oxigdal.fault.retry import backoff_delay
from dask_oxigdal.scheduling.extension import NAME, register, status
from dask_oxigdal.scheduling.policy import SchedulingPolicy

QUEUES = ("interactive", "batch", "background")
DEFAULT_POLICIES = {
    "FairShare",
    "Quota",
    "Gang",
    "Deadline",
    "Locality",
    "Replicas",
    "SharedCache",
    "Quarantine",
    "Stragglers",
    "Retries",
    "Checkpoint",
    "Monitor",
}


def inc(x):
    return x + 1


def block(ev):
    ev.wait()
    return 1


def fail(x):
    raise RuntimeError(f"attempt failed {x}")


class Unhashable:
    """An annotation value whose hash and repr raise (not TypeError)."""

    def __hash__(self):
        raise RuntimeError("no hash for you")

    def __repr__(self):
        raise RuntimeError("no repr for you")

    def __eq__(self, other):
        return self is other


# ------------------------------------------------------------------ generator
_UNICODE = "äöüßéñ中文字符🙂🚀ΩЖ\u200b\u00a0"
_ALPHABET = _UNICODE + "abcxyz-_/:"


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(_ALPHABET, k=n))


# Bad values for any key; each one is invalid for every oxigdal annotation,
# on the client and on the scheduler. Built once (the 1 MB strings are shared).
_MB = "x" * (1 << 20)
_MB_UNICODE = "🙂" * (1 << 18)  # 1 MiB of UTF-8
_BAD_ANY = [
    float("nan"),
    float("inf"),
    float("-inf"),
    10**400,
    -(10**400),
    [1, 2],
    {"a": 1},
    (1,),
    {1, 2},
    b"bytes",
    complex(1, 2),
    object(),
    "\ud800",
    "",
    "  \t ",
    _MB,
    _MB_UNICODE,
]


def _value(rng: random.Random, keyword: str, i: int, now: float, bad: bool):
    """A (value, good on the scheduler, good on the client) for ``oxigdal_<keyword>``."""
    if bad and rng.random() < 0.4:
        v = rng.choice(_BAD_ANY)
        if (v is _MB or v is _MB_UNICODE) and rng.random() > 0.02:
            v = ""  # keep the 1 MB strings rare (a few dozen): they cost transfer time
        return v, False, False
    if keyword in ("tenant", "locality"):
        if bad:
            return _text(rng, rng.randint(MAX_NAME + 1, 2000)), False, False
        if rng.random() < 0.5:
            return rng.choice(["a", "b", "unknown-tenant"]), True, True
        return "t" + _text(rng, rng.randint(0, MAX_NAME - 1)), True, True  # not blank
    if keyword == "queue":
        if bad:
            v = rng.choice(["urgent", _text(rng, 8), True, 3])
            # an unknown queue name is valid on the client; the scheduler refuses it
            return v, False, isinstance(v, str)
        return rng.choice(QUEUES), True, True
    if keyword == "gang":
        if bad:
            return rng.choice([1, 2.5, True, ["g"]]), False, False
        # unique per set: a gang of one member always fits the cluster
        return f"g{i}-{_text(rng, rng.randint(0, 50))}", True, True
    if keyword == "checkpoint":
        if bad:
            return rng.choice([1, 0, "yes", 1.0]), False, False
        return rng.random() < 0.5, True, True
    if keyword == "retries":
        if bad:
            v = rng.choice([MAX_RETRIES + 1, 1100, 10**9, 2**63, -1, 1.5, True, "3"])
            return v, False, False
        return rng.choice([0, 1, 3, MAX_RETRIES, rng.randint(0, MAX_RETRIES)]), True, True
    if keyword == "replicas":
        if bad:
            v = rng.choice([0, -1, MAX_REPLICAS + 1, 10**9, 1.5, True, "2"])
            return v, False, False
        return rng.choice([1, 1, 2, MAX_REPLICAS]), True, True
    if keyword == "backoff":
        if bad:
            v = rng.choice([-1, -0.001, MAX_BACKOFF * 2, 1e308, True, "5sx", "-1s", "1e400s"])
            return v, False, False
        v = rng.choice([0, 0.0, 0.001, 1, 2.5, MAX_BACKOFF, rng.uniform(0, MAX_BACKOFF)])
        return v, True, True
    if keyword == "deadline":
        if bad:
            v = rng.choice([0, -1.0, -1e308, MAX_DEADLINE * 2, 2**40, 1e308, "10min", True])
            # "10min" is a relative deadline for dox.annotate; the scheduler wants UNIX time
            return v, False, v == "10min"
        # absolute UNIX times; in the past is valid (the Deadline policy warns)
        v = rng.choice([1.0, now - 1000.0, now + 3600.0, now + 1e6, MAX_DEADLINE])
        # dox.annotate reads a number as seconds from now
        return v, True, now + v <= MAX_DEADLINE - 10
    raise AssertionError(keyword)


def _annotation_set(rng: random.Random, i: int, now: float):
    """``({oxigdal_*: value}, good on the scheduler, good on the client)``; half are bad."""
    keywords = rng.sample(VALID_KEYWORDS, rng.randint(1, len(VALID_KEYWORDS)))
    r = rng.random()
    bad = set(rng.sample(keywords, rng.randint(1, min(2, len(keywords))))) if r < 0.45 else set()
    ann: dict = {}
    good = client = True
    for keyword in keywords:
        v, g, cl = _value(rng, keyword, i, now, keyword in bad)
        ann["oxigdal_" + keyword] = v
        good &= g
        client &= cl
    if 0.45 <= r < 0.48:  # an unknown oxigdal key
        ann[rng.choice(["oxigdal_tennant", "oxigdal_", "oxigdal_" + _text(rng, 5)])] = 1
        good = client = False
    elif 0.48 <= r < 0.5:  # a value whose hash and repr raise
        ann["oxigdal_tenant"] = Unhashable()
        good = client = False
    return ann, good, client


# ----------------------------------------------------------------------- fuzz
N_SETS = 10_000
BATCH = 500


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 2), ("127.0.0.1", 2)],
    timeout=300,
    config={"oxigdal.locality.wait": "10ms", "oxigdal.scheduling.interval": "100ms"},
    # gen_cluster's budget of 50,000 transitions is for ordinary tests; this one has 10,000 tasks
    scheduler_kwargs={"transition_counter_max": 1_000_000},
    worker_kwargs={"transition_counter_max": 1_000_000},
)
async def test_fuzzed_annotations_never_disable_a_policy(c, s, a, b, tmp_path):
    policies = [spec["class"] for spec in dask.config.get("oxigdal.scheduling.policies")]
    assert {p.rsplit(".", 1)[1] for p in policies} == DEFAULT_POLICIES  # oxigdal.yaml's list
    with dask.config.set({"oxigdal.checkpoint.store": str(tmp_path / "ckpt")}):
        await register(c, tenants={"a": {"weight": 2, "max-tasks": 3}, "b": 1})
    rng = random.Random(20260814)
    now = time.time()
    sets = [_annotation_set(rng, i, now) for i in range(N_SETS)]
    assert 0.4 < sum(good for _, good, _ in sets) / N_SETS < 0.6  # both kinds, plenty

    # ---- scheduler path: hand-made oxigdal_* annotations, batches of graphs
    futures = []
    for start in range(0, N_SETS, BATCH):
        batch = []
        for i in range(start, min(start + BATCH, N_SETS)):
            with dask.annotate(**sets[i][0]):
                batch.append(dask.delayed(inc, pure=False)(i, dask_key_name=f"fz-{i}"))
        futures.extend(c.compute(batch))
        await wait(futures[-BATCH:])
    bad_messages = 0
    good_futures = []
    for i, fut in enumerate(futures):
        ann, good, _ = sets[i]
        if good:
            assert fut.status == "finished", (i, ann, fut.status)
            good_futures.append(fut)
            continue
        assert fut.status == "error", (i, ann)
        exc = await fut.exception()
        msg = str(exc)
        assert isinstance(exc, ValueError), (i, type(exc), msg)
        assert "rejected by dask-oxigdal" in msg and "oxigdal_" in msg, msg
        assert len(msg) < 2000, (i, len(msg))  # 1 MB values are cut short
        bad_messages += 1
    assert bad_messages == sum(not good for _, good, _ in sets)
    assert await c.gather(good_futures) == [int(f.key[3:]) + 1 for f in good_futures]
    snap = await status(c)
    assert snap["disabled"] == {}, snap["disabled"]
    assert set(snap["policies"]) == DEFAULT_POLICIES
    assert all(p["enabled"] for p in snap["policies"].values())
    assert snap["task_faults"] == {}
    assert s.plugins[NAME].disabled == {}
    assert snap["malformed_tasks"] == bad_messages

    # ---- client path: dox.annotate refuses what the scheduler would refuse
    client_ok = []
    for i in range(0, N_SETS, 10):
        ann, _, client_good = sets[i]
        kwargs = {k.removeprefix("oxigdal_"): v for k, v in ann.items()}
        try:
            with annotate(**kwargs):
                accepted = dask.get_annotations()
        except (ValueError, TypeError) as e:
            assert not client_good, (i, kwargs, e)
            assert len(str(e)) < 2000
            continue
        assert client_good, (i, kwargs)
        parse_annotations(accepted)  # what the client accepts, the scheduler accepts
        if accepted.get("oxigdal_queue", "batch") in QUEUES:
            with dask.annotate(**accepted):
                client_ok.append(c.submit(inc, i, key=f"fz-client-{i}"))
    assert len(client_ok) > 100
    assert await c.gather(client_ok) == [int(f.key.rsplit("-", 1)[1]) + 1 for f in client_ok]
    snap = await status(c)
    assert snap["disabled"] == {} and snap["task_faults"] == {}


# -------------------------------------------------------- the rule, on its own
class FailsOnTask(SchedulingPolicy):
    """Raises a per-task error for tasks whose key starts with ``poison``."""

    name = "fails-on-task"

    def __init__(self, exc_type=OverflowError):
        super().__init__()
        self.exc_type = exc_type
        self.seen = 0

    def transition(self, key, start, finish, info, kwargs):
        self.seen += 1
        # "waiting": the hook runs before Dask can dispatch the task
        if str(key).startswith("poison") and finish == "waiting":
            raise self.exc_type(f"cannot handle {key!r}: 2.0 ** 1024")


class RejectsSubmission(SchedulingPolicy):
    name = "rejects-submission"

    def update_graph(self, new):
        for ts, _ in new:
            if str(ts.key).startswith("poison"):
                raise TaskRejected(f"task {ts.key!r}: value 10**400 is out of range")


class OwnBug(SchedulingPolicy):
    name = "own-bug"

    def transition(self, key, start, finish, info, kwargs):
        if str(key).startswith("bug"):
            raise KeyError("policy bug")


@pytest.mark.parametrize("exc_type", [OverflowError, ValueError, TypeError, TaskRejected])
@gen_cluster(client=True)
async def test_per_task_error_in_transition_rejects_only_that_task(c, s, a, b, exc_type):
    await register(c, policies=[FailsOnTask(exc_type)])
    ext = s.plugins[NAME]
    good = c.map(inc, range(20), key=[f"good-{i}" for i in range(20)])
    poison = c.submit(inc, 1, key="poison-1")
    assert await c.gather(good) == list(range(1, 21))
    with pytest.raises(TaskRejected, match=r"fails-on-task.*transition.*2\.0 \*\* 1024") as info:
        await poison
    assert exc_type.__name__ in str(info.value) and "'poison-1'" in str(info.value)
    assert ext.disabled == {}
    seen = ext.get_policy("fails-on-task").seen
    # the policy keeps working for everyone
    assert await c.submit(inc, 41, key="after") == 42
    assert ext.get_policy("fails-on-task").seen > seen
    snap = await status(c)
    assert snap["task_faults"] == {"fails-on-task": 1}
    assert all(p["enabled"] for p in snap["policies"].values())
    events = [e for _, e in s.get_events(NAME) if e.get("action") == "task-rejected"]
    assert [(e["policy"], e["key"], e["method"]) for e in events] == [
        ("fails-on-task", "poison-1", "transition")
    ]


@gen_cluster(client=True)
async def test_per_task_error_in_update_graph_rejects_that_submission(c, s, a, b):
    await register(c, policies=[RejectsSubmission(), FailsOnTask()])
    ext = s.plugins[NAME]
    other = c.map(inc, range(10), key=[f"other-{i}" for i in range(10)])
    mixed = c.map(inc, range(3), key=["poison-a", "mixed-1", "mixed-2"])
    assert await c.gather(other) == list(range(1, 11))
    for fut in mixed:
        with pytest.raises(TaskRejected, match=r"3 tasks of one submission.*10\*\*400"):
            await fut
    assert ext.disabled == {}
    assert (await status(c))["task_faults"] == {"rejects-submission": 3}
    assert await c.submit(inc, 1, key="later") == 2


@gen_cluster(client=True)
async def test_a_policys_own_fault_still_disables_it(c, s, a, b):
    await register(c, policies=[OwnBug(), FailsOnTask()])
    ext = s.plugins[NAME]
    assert await c.submit(inc, 1, key="bug-x") == 2  # the bug is the policy's: task runs
    assert set(ext.disabled) == {"own-bug"} and "KeyError" in ext.disabled["own-bug"]
    assert (await status(c))["task_faults"] == {}


class FailsOnForget(SchedulingPolicy):
    name = "fails-on-forget"

    def transition(self, key, start, finish, info, kwargs):
        if finish == "forgotten":
            raise ZeroDivisionError(f"bad bookkeeping for {key!r}")


@gen_cluster(client=True)
async def test_per_task_error_on_a_forgotten_task_is_only_counted(c, s, a, b):
    await register(c, policies=[FailsOnForget()])
    ext = s.plugins[NAME]
    ev = Event()
    fut = c.submit(block, ev, key="gone")
    while "gone" not in s.tasks or s.tasks["gone"].state != "processing":
        await asyncio.sleep(0.01)
    await fut.cancel()
    while "gone" in s.tasks:
        await asyncio.sleep(0.01)
    await ev.set()
    assert ext.disabled == {} and ext.task_faults == {"fails-on-forget": 1}
    assert not ext._rejected and not ext.info  # nothing left behind
    assert await c.submit(inc, 1, key="next") == 2


# ------------------------------------------------ the Retries example
def test_backoff_never_overflows():
    rng = random.Random(1)
    assert backoff_delay(1100, 0.0, 2.0, 60.0, 0.25, rng) == 0.0
    for attempt in (1025, 1100, 10**6, 10**12):
        d = backoff_delay(attempt, 1.0, 2.0, 60.0, 0.25, rng)
        assert 45.0 <= d <= 75.0 and math.isfinite(d)
    assert backoff_delay(10, MAX_BACKOFF, 1e300, 60.0, 0.0, rng) == 60.0


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"retries": 1100}, "retries=1100"),
        ({"retries": 10**9}, "retries=1000000000"),
        ({"retries": 10**400}, "<int of"),
        ({"backoff": 1e308}, "backoff=1e+308"),
        ({"backoff": "1e400s"}, "'1e400s' is not a finite duration"),
        ({"backoff": 10**400}, "not a finite duration"),
        ({"deadline": 1e300}, "after 9999-12-31"),
        ({"deadline": 10**400}, "not a finite duration"),
        ({"tenant": "\ud800"}, "not encodable as UTF-8"),
        ({"tenant": "x" * (1 << 20)}, "at most 256 characters"),
    ],
)
def test_client_refuses_values_that_overflow(kwargs, needle):
    with pytest.raises(ValueError) as info:
        annotate(**kwargs)
    assert needle in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize(
    "annotations, needle",
    [
        ({"oxigdal_retries": 10**9}, "oxigdal_retries=1000000000"),
        ({"oxigdal_retries": 1100}, f"from 0 to {MAX_RETRIES}"),
        ({"oxigdal_backoff": 10**400}, "oxigdal_backoff=inf"),
        ({"oxigdal_backoff": MAX_BACKOFF + 1}, "one week"),
        ({"oxigdal_deadline": 1e300}, "oxigdal_deadline=1e+300"),
        ({"oxigdal_deadline": -5.0}, "oxigdal_deadline=-5.0"),
        ({"oxigdal_gang": "x" * (1 << 20)}, "at most 256 characters"),
        ({"oxigdal_locality": "\udfff"}, "oxigdal_locality"),
        ({"oxigdal_nope": "y" * (1 << 20)}, "unknown annotation 'oxigdal_nope'"),
    ],
)
def test_scheduler_refuses_values_that_overflow(annotations, needle):
    with pytest.raises(ValueError) as info:
        parse_annotations(annotations)
    assert needle in str(info.value) and len(str(info.value)) < 500


@gen_cluster(client=True, timeout=120)
async def test_one_tenants_retries_cannot_switch_retries_off(c, s, a, b):
    """The issue's example: retries=1100, backoff=0 overflowed 2.0 ** 1024 and disabled Retries."""
    await register(c, tenants={"mallory": 1, "alice": 1})
    # hand-made, past dox.annotate: refused by the scheduler, named
    with dask.annotate(oxigdal_tenant="mallory", oxigdal_retries=1100, oxigdal_backoff=0):
        bad = c.submit(fail, 0, key="mallory-1")
    with pytest.raises(ValueError, match="oxigdal_retries=1100"):
        await bad
    # Dask's own retries has no bound: 1100 immediate retries run out, nothing overflows
    with annotate(tenant="mallory", backoff=0):
        many = c.submit(fail, 1, key="mallory-2", retries=1100)
    with pytest.raises(RuntimeError, match="attempt failed 1"):
        await many
    ext = s.plugins[NAME]
    assert ext.get_policy("Retries").retried >= 1100
    assert ext.disabled == {} and ext.task_faults == {}
    # another tenant's backoff still applies
    with annotate(tenant="alice", retries=1, backoff="200ms"):
        other = c.submit(fail, 2, key="alice-1")
    with pytest.raises(RuntimeError, match="attempt failed 2"):
        await other
    retry = [h for h in ext.get_policy("Retries").history if h["key"] == "alice-1"]
    assert len(retry) == 1 and retry[0]["delay"] >= 0.15  # 200 ms, jittered by 25% at most
    assert ext.disabled == {}
