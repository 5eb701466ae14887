"""``hedge``: a true hedged copy of a leaf task on a real cluster (sync and async clients)."""

from __future__ import annotations

import dask_oxigdal  # noqa: F401

# isort: split
import asyncio
import os
import time

import pytest
from distributed import Client, LocalCluster
from distributed.utils_test import gen_cluster

from dask_oxigdal.fault import hedge


def first_call_hangs(value, markers, hang):
    """The first call (per marker directory) hangs for ``hang`` seconds; later ones return."""
    n = len(os.listdir(markers))
    with open(os.path.join(markers, f"{n}-{time.time_ns()}"), "w"):
        pass
    if n == 0:
        time.sleep(hang)
        return ("slow", value)
    return ("fast", value)


def always_fails(x):
    raise KeyError(f"missing {x}")


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)], timeout=120)
async def test_copy_wins_when_the_primary_hangs(c, s, a, b, tmp_path):
    result = await hedge(c, first_call_hangs, 7, str(tmp_path), 3.0, delay=0.2)
    assert result == ("fast", 7)
    assert len(os.listdir(tmp_path)) == 2  # exactly one extra copy

    # the loser (the primary) was cancelled: its key is gone from the scheduler
    def primaries():
        return [k for k in s.tasks if str(k).startswith("hedge-") and str(k).endswith("-0")]

    deadline = time.monotonic() + 60
    while primaries():
        assert time.monotonic() < deadline, primaries()
        await asyncio.sleep(0.02)
    assert [str(k)[-2:] for k in s.tasks if str(k).startswith("hedge-")] in ([], ["-1"])


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1), ("127.0.0.1", 1)], timeout=120)
async def test_fast_primary_runs_once_and_errors_propagate(c, s, a, b, tmp_path):
    (tmp_path / "warm").mkdir()
    open(tmp_path / "warm" / "x", "w").close()  # not the first call: returns at once
    assert await hedge(c, first_call_hangs, 1, str(tmp_path / "warm"), 3.0, delay=30) == (
        "fast",
        1,
    )
    assert len(os.listdir(tmp_path / "warm")) == 2  # one run, no copy
    with pytest.raises(KeyError, match="missing 3"):
        await hedge(c, always_fails, 3, delay=0)
    with pytest.raises(ValueError, match="delay"):
        await hedge(c, always_fails, 3, delay=-1)


def test_sync_client(tmp_path):
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as c,
    ):
        assert hedge(c, first_call_hangs, 5, str(tmp_path), 2.0, delay=0.1) == ("fast", 5)
