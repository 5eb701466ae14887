"""A durable NDVI workflow: pick a clear scene, compute NDVI per tile, iterate a
threshold until it converges, publish. Kill this script and run it again: the
finished steps are not recomputed.

    python examples/durable_workflow.py
"""

from __future__ import annotations

import numpy as np
from distributed import Client, LocalCluster

import dask_oxigdal as dox
from dask_oxigdal.workflows import WorkflowError


def _band(scene: int, tile: int, band: int) -> np.ndarray:
    rng = np.random.default_rng(scene * 1000 + tile * 10 + band)
    return rng.uniform(0.0, 0.6, (256, 256)).astype("float32")


@dox.step
def cloud_cover(scene: int) -> float:
    return float((_band(scene, 0, 9) > 0.55).mean())  # a synthetic cloud-mask band


@dox.step(retries=2, tenant="ndvi-team")
def tile_ndvi_mean(scene: int, tile: int) -> float:
    return float(np.nanmean(dox.ndvi(_band(scene, tile, 8), _band(scene, tile, 4))))


@dox.step
def classify(means: list[float], threshold: float) -> float:
    vegetated = [m for m in means if m > threshold]
    return float(np.mean(vegetated)) if vegetated else threshold


@dox.workflow
def ndvi_pipeline(scene: int, tiles: int = 16) -> dict:
    if cloud_cover(scene) > 0.2:  # too cloudy: fall back to the previous scene
        scene -= 1
    means = dox.gather(tile_ndvi_mean.map([scene] * tiles, range(tiles)))
    threshold = 0.0
    for _ in range(20):  # iterate until the threshold converges
        new = classify(means, threshold)
        if abs(new - threshold) < 1e-6:
            break
        threshold = new
    return {"scene": scene, "threshold": threshold}


if __name__ == "__main__":
    with LocalCluster(n_workers=2, host="127.0.0.1", dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            try:
                handle = dox.start_workflow(client, ndvi_pipeline, 42, workflow_id="ndvi-42")
            except WorkflowError:  # it exists: resume it (a finished one returns its result)
                handle = dox.resume_workflow(client, "ndvi-42")
            print(handle.result(), handle.status()["steps"])
