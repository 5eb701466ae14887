"""Unsupervised land-cover classes of a synthetic six-band scene with ``dox.KMeans``.

Run it as a script: ``python examples/imagery_classification.py [--size 384] [--out classes.png]``
(the test suite runs it, tests/test_examples.py). It needs no download.

1. Make the demo's synthetic scene (:func:`dask_oxigdal.demo.synthetic_window`:
   water, vegetation and bare soil fields, uint16 reflectance, ``0`` as nodata
   in a triangle along the swath edge) as an ``xarray.DataArray``
   ``(band, y, x)``, chunked with Dask; nodata pixels become NaN.
2. ``dox.KMeans(n_clusters=5, init="k-means||").fit_predict(scene, dim="band")``:
   labels with the scene's ``y``/``x`` coords, ``-1`` on nodata.
3. Print the share of every class and its mean NDVI, and write a PNG of the
   classes with matplotlib.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import dask
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from dask_oxigdal.analytics import KMeans
from dask_oxigdal.demo import BANDS, NODATA, SCENE_BOUNDS, synthetic_window


def scene(size: int, seed: int = 7) -> xr.DataArray:
    bands = synthetic_window(seed, size, 0, size, 0, size)
    data = np.stack([bands[b] for b in BANDS]).astype(np.float32)
    data[:, (data == NODATA).all(axis=0)] = np.nan
    x0, y0, x1, y1 = SCENE_BOUNDS
    return xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={
            "band": list(BANDS),
            "y": np.linspace(y1, y0, size),
            "x": np.linspace(x0, x1, size),
        },
        name="reflectance",
    ).chunk({"band": -1, "y": size // 4, "x": size // 4})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "oxigdal-classes.png"))
    args = parser.parse_args()

    img = scene(args.size)
    with dask.config.set(scheduler="threads"):
        km = KMeans(n_clusters=5, init="k-means||", random_state=0)
        labels = km.fit_predict(img, dim="band").compute()
    print(f"scene: {dict(img.sizes)}, {int(img.isnull().any('band').sum())} nodata pixels")
    print(f"labels: dims {labels.dims}, coords kept: {set(labels.coords) == {'y', 'x'}}")
    print(f"k-means: {km.n_iter_} iterations, inertia {km.inertia_:.4g}")
    nir = img.sel(band="nir").values
    red = img.sel(band="red").values
    ndvi = (nir - red) / (nir + red)
    valid = labels.values >= 0
    for c in range(km.n_clusters):
        m = labels.values == c
        print(
            f"class {c}: {m.sum() / valid.sum():6.1%} of the pixels, mean NDVI {np.nanmean(ndvi[m]):+.2f}"
        )
    fig, ax = plt.subplots(figsize=(5, 5))
    shown = np.where(valid, labels.values, np.nan)
    ax.imshow(shown, cmap="tab10", vmin=0, vmax=9, extent=(*SCENE_BOUNDS[::2], *SCENE_BOUNDS[1::2]))
    ax.set_title("k-means classes (white: nodata)")
    fig.savefig(args.out, dpi=80)
    print(f"png: {args.out}")


if __name__ == "__main__":
    main()
