"""dox.shuffle on a real distributed cluster, against Dask's own p2p shuffle."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
from distributed.utils_test import gen_cluster

import dask_oxigdal as dox


def _frame(n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(11)
    return pd.DataFrame(
        {
            "s": rng.choice(["alpha", "beta", "gamma", "delta", ""], n),
            "i": rng.integers(-50, 50, n),
            "v": rng.random(n),
        },
        index=pd.Index(rng.permutation(n), name="row"),
    )


@gen_cluster(client=True, timeout=120)
async def test_shuffle_runs_our_split_tasks_and_matches_p2p(c, s, a, b):
    ddf = dd.from_pandas(_frame(), npartitions=4)
    ours = dox.shuffle(ddf, "s", 3)
    keys = [str(k) for k in dict(ours.__dask_graph__())]
    split_keys = [k for k in keys if k.startswith("oxigdal-shuffle-split-")]
    assert len(split_keys) == ddf.npartitions  # one split task per input partition
    assert not [k for k in keys if "p2p" in k or "shuffle-transfer" in k]

    got = await c.gather(c.compute(ours.to_delayed()))
    # the split tasks ran on the workers, through the distributed scheduler
    assert "oxigdal-shuffle-split" in s.task_prefixes
    assert {ts.state for ts in s.tasks.values()} <= {"memory", "released", "forgotten"}

    ref_ddf = ddf.shuffle(on="s", npartitions=3, shuffle_method="p2p")
    ref = await c.gather(c.compute(ref_ddf.to_delayed()))
    assert len(got) == len(ref) == 3
    assert sum(map(len, got)) == 4000  # every row, once
    for mine, theirs in zip(got, ref, strict=True):
        pd.testing.assert_frame_equal(mine.sort_index(), theirs.sort_index())
