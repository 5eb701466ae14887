"""annotate(): client-side validation, both forms reaching the scheduler, scheduler-side parsing."""

from __future__ import annotations

# Import dask_oxigdal (which registers the oxigdal.* config defaults) before
# distributed.utils_test: gen_cluster restores the dask config to a snapshot
# taken when utils_test is first imported, which would otherwise lack them.
import dask_oxigdal  # noqa: F401

# isort: split
import datetime
import time

import dask
import pytest
from distributed.utils_test import gen_cluster

from dask_oxigdal.annotations import (
    ANNOTATION_KEYS,
    VALID_KEYWORDS,
    TaskAnnotations,
    annotate,
    parse_annotations,
    to_annotations,
)


def inc(x):
    return x + 1


# ---------------------------------------------------------------- client side
def test_keys_are_flat_and_prefixed():
    assert ANNOTATION_KEYS == tuple(f"oxigdal_{k}" for k in VALID_KEYWORDS)
    ann = to_annotations(
        tenant="team-a",
        queue="batch",
        gang="tiles-7",
        locality="tile/3/4",
        checkpoint=True,
        retries=2,
        backoff="2s",
    )
    assert ann == {
        "oxigdal_tenant": "team-a",
        "oxigdal_queue": "batch",
        "oxigdal_gang": "tiles-7",
        "oxigdal_locality": "tile/3/4",
        "oxigdal_checkpoint": True,
        "oxigdal_retries": 2,
        "oxigdal_backoff": 2.0,
    }


def test_unknown_keyword_lists_the_valid_ones():
    with pytest.raises(TypeError) as info:
        annotate(tenant="a", tennant="b")
    msg = str(info.value)
    assert "'tennant'" in msg
    for keyword in VALID_KEYWORDS:
        assert keyword in msg


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"deadline": "soon"}, "'soon'"),
        ({"deadline": "10 parsecs"}, "'10 parsecs'"),
        ({"deadline": -5}, "-5"),
        ({"deadline": datetime.datetime(2000, 1, 1)}, "in the past"),
        ({"tenant": ""}, "tenant=''"),
        ({"tenant": "   "}, "tenant='   '"),
        ({"tenant": 3}, "tenant=3"),
        ({"queue": ""}, "queue=''"),
        ({"gang": ["x"]}, "gang=['x']"),
        ({"backoff": -1}, "backoff=-1"),
        ({"backoff": "-1s"}, "backoff='-1s'"),
        ({"backoff": float("nan")}, "nan"),
        ({"retries": 1.5}, "retries=1.5"),
        ({"retries": -1}, "retries=-1"),
        ({"retries": True}, "retries=True"),
        ({"retries": "3"}, "retries='3'"),
        ({"checkpoint": "yes"}, "checkpoint='yes'"),
    ],
)
def test_bad_values_raise_value_error_naming_them(kwargs, needle):
    with pytest.raises(ValueError) as info:
        annotate(**kwargs)
    assert needle in str(info.value)


def test_bad_value_raises_before_the_block_runs():
    ran = []
    with pytest.raises(ValueError):
        with annotate(tenant=""):
            ran.append(1)
    assert not ran


@pytest.mark.parametrize(
    "deadline, seconds",
    [
        ("10min", 600),
        ("10 minutes", 600),
        ("90s", 90),
        ("1.5h", 5400),
        (30, 30),
        (datetime.timedelta(minutes=2), 120),
    ],
)
def test_relative_deadline_becomes_an_absolute_timestamp(deadline, seconds):
    before = time.time()
    value = to_annotations(deadline=deadline)["oxigdal_deadline"]
    assert before + seconds <= value <= time.time() + seconds


def test_absolute_deadline():
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    assert to_annotations(deadline=when)["oxigdal_deadline"] == pytest.approx(when.timestamp())
    naive = datetime.datetime.now() + datetime.timedelta(hours=1)
    assert to_annotations(deadline=naive)["oxigdal_deadline"] == pytest.approx(naive.timestamp())


def test_none_values_are_skipped_and_nesting_merges():
    assert to_annotations(tenant=None) == {}
    with annotate(tenant="a", queue="batch"):
        with annotate(queue="interactive"):
            ann = dask.get_annotations()
    assert ann["oxigdal_tenant"] == "a"
    assert ann["oxigdal_queue"] == "interactive"


# ---------------------------------------------------------------- scheduler side
def test_parse_annotations_roundtrip():
    ann = to_annotations(tenant="a", queue="q", deadline="1h", retries=1, backoff=0)
    parsed = parse_annotations({**ann, "priority": 3, "retries": 5})
    assert isinstance(parsed, TaskAnnotations)
    assert (parsed.tenant, parsed.queue, parsed.retries, parsed.backoff) == ("a", "q", 1, 0.0)
    assert parsed.deadline == ann["oxigdal_deadline"]
    assert parse_annotations(None) == TaskAnnotations()
    assert parse_annotations({"priority": 1}) == TaskAnnotations()


@pytest.mark.parametrize(
    "annotations, needle",
    [
        ({"oxigdal_tenant": ""}, "oxigdal_tenant=''"),
        ({"oxigdal_tenant": 7}, "oxigdal_tenant=7"),
        ({"oxigdal_deadline": "soon"}, "oxigdal_deadline='soon'"),
        ({"oxigdal_deadline": float("inf")}, "inf"),
        ({"oxigdal_backoff": -2}, "oxigdal_backoff=-2"),
        ({"oxigdal_retries": 1.5}, "oxigdal_retries=1.5"),
        ({"oxigdal_checkpoint": 1}, "oxigdal_checkpoint=1"),
        ({"oxigdal_tennant": "a"}, "'oxigdal_tennant'"),
    ],
)
def test_parse_annotations_rejects_malformed_values(annotations, needle):
    with pytest.raises(ValueError) as info:
        parse_annotations(annotations)
    assert needle in str(info.value)


# ------------------------------------------------- both forms reach ts.annotations
@gen_cluster(client=True)
async def test_compute_time_form_reaches_the_scheduler(c, s, a, b):
    with annotate(tenant="t-submit", queue="batch", retries=2):
        f1 = c.submit(inc, 1, key="submit-1")
    with annotate(tenant="t-map", checkpoint=True):
        fs = c.map(inc, range(3), key=["map-0", "map-1", "map-2"])
    x = dask.delayed(inc)(1, dask_key_name="delayed-compute")
    with annotate(tenant="t-compute", deadline="1h"):
        f3 = c.compute(x)
    y = dask.delayed(inc)(2, dask_key_name="delayed-persist")
    with annotate(tenant="t-persist"):
        y = c.persist(y)
    await c.gather([f1, *fs, f3])
    await y
    tasks = s.tasks
    assert tasks["submit-1"].annotations["oxigdal_tenant"] == "t-submit"
    assert tasks["submit-1"].annotations["oxigdal_queue"] == "batch"
    assert tasks["submit-1"].annotations["oxigdal_retries"] == 2
    for key in ("map-0", "map-1", "map-2"):
        assert tasks[key].annotations["oxigdal_tenant"] == "t-map"
        assert tasks[key].annotations["oxigdal_checkpoint"] is True
    deadline = tasks["delayed-compute"].annotations["oxigdal_deadline"]
    assert deadline == pytest.approx(time.time() + 3600, abs=60)
    assert tasks["delayed-persist"].annotations["oxigdal_tenant"] == "t-persist"


@gen_cluster(client=True)
async def test_graph_construction_form_reaches_the_scheduler(c, s, a, b):
    import dask.array as da

    with annotate(tenant="t-delayed"):
        x = dask.delayed(inc)(1, dask_key_name="graph-delayed")
    with annotate(tenant="t-array", queue="interactive"):
        arr = da.ones(8, chunks=4) + 1
    # computed outside the block: the annotations travel with the graph.
    # dask.array's blockwise fusion (optimize_graph=True, the default) drops
    # layer annotations in dask 2026.8: use the compute-time form there, or
    # optimize_graph=False as here (see docs/scheduling.md).
    fx = c.compute(x)
    arr = c.persist(arr, optimize_graph=False)
    await fx
    await c.gather(c.compute(arr))
    assert s.tasks["graph-delayed"].annotations["oxigdal_tenant"] == "t-delayed"
    annotated = [
        ts.annotations for ts in s.tasks.values() if "oxigdal_tenant" in (ts.annotations or {})
    ]
    arr_tasks = [ann for ann in annotated if ann["oxigdal_tenant"] == "t-array"]
    assert arr_tasks, annotated
    assert all(ann["oxigdal_queue"] == "interactive" for ann in arr_tasks)
