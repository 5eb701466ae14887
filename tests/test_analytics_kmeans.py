"""dox.KMeans: equal to scikit-learn with a fixed init, k-means|| reproducible, NaN, xarray, dask."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import KMeans as SKKMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from dask_oxigdal.analytics import KMeans
from dask_oxigdal.kernels import kmeans as _k


def _blobs(n=600, d=5, k=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-20, 20, (k, d))
    X = np.concatenate([rng.normal(c, 1.5, (n // k, d)) for c in centers])
    return X[rng.permutation(X.shape[0])].astype(dtype)


def _same_partition(a, b):
    """Labels equal up to a permutation of the cluster ids."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_kernel_equals_a_numpy_reference(dtype):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(1000, 6)).astype(dtype)
    X[::13, 3] = np.nan
    C = rng.normal(size=(5, 6)).astype(dtype)
    sums = np.zeros((5, 6))
    counts = np.zeros(5, np.int64)
    inertia = _k.lloyd_partial(X, C, sums, counts)
    d2 = ((X[:, None, :].astype(np.float64) - C[None].astype(np.float64)) ** 2).sum(axis=2)
    ok = ~np.isnan(X).any(axis=1)
    lab = np.where(ok, np.nan_to_num(d2, nan=np.inf).argmin(axis=1), -1)
    np.testing.assert_array_equal(counts, np.bincount(lab[ok], minlength=5))
    for c in range(5):
        np.testing.assert_allclose(sums[c], X[lab == c].astype(np.float64).sum(axis=0))
    assert inertia == pytest.approx(d2[ok].min(axis=1).sum(), rel=1e-12)
    labels = np.empty(1000, np.int64)
    dist = np.empty(1000)
    _k.assign_labels(X, C, labels, dist)
    np.testing.assert_array_equal(labels, lab)
    # an empty block
    assert _k.lloyd_partial(X[:0], C, sums, counts) == 0.0


@parametrize_with_checks([KMeans(n_clusters=3, random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equal_to_sklearn_with_a_fixed_init(dtype):
    X = _blobs(dtype=dtype)
    rng = np.random.default_rng(3)
    init = X[rng.choice(X.shape[0], 4, replace=False)]
    ours = KMeans(4, init=init, max_iter=100, tol=1e-6).fit(X)
    ref = SKKMeans(4, init=init, n_init=1, max_iter=100, tol=1e-6, algorithm="lloyd").fit(X)
    assert _same_partition(ours.labels_, ref.labels_)
    rtol = 1e-5 if dtype == np.float64 else 1e-4
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=rtol)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=rtol, atol=1e-4)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.cluster_centers_.dtype == dtype
    assert ours.transform(X).dtype == dtype
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    assert ours.score(X) == pytest.approx(ref.score(X), rel=rtol)


@pytest.mark.parametrize("init", ["k-means||", "k-means++"])
def test_init_is_reproducible_with_a_seed_and_finds_the_blobs(init):
    X = _blobs(n=2000, k=5, seed=7)
    a = KMeans(5, init=init, random_state=42).fit(X)
    b = KMeans(5, init=init, random_state=42).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    ref = SKKMeans(5, n_init=10, random_state=0).fit(X)
    assert adjusted_rand_score(a.labels_, ref.labels_) == pytest.approx(1.0)
    assert a.inertia_ == pytest.approx(ref.inertia_, rel=1e-5)


def test_kmeans_parallel_same_result_for_numpy_and_dask_with_the_same_blocks(monkeypatch):
    from dask_oxigdal.analytics import _kmeans_passes as mod

    monkeypatch.setattr(mod, "BLOCK_ROWS", 250)
    X = _blobs(n=2000, k=5, seed=1)
    a = KMeans(5, random_state=3).fit(X)
    with dask.config.set(scheduler="threads"):
        b = KMeans(5, random_state=3).fit(da.from_array(X, chunks=(250, 5)))
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_.compute())
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-12)


def test_nan_pixels_are_skipped_and_labelled_minus_one():
    X = _blobs(n=400, k=4, seed=2)
    bad = np.zeros(X.shape[0], bool)
    bad[::7] = True
    Xn = X.copy()
    Xn[bad, np.arange(bad.sum()) % X.shape[1]] = np.nan
    init = X[[1, 2, 3, 4]]
    ours = KMeans(4, init=init, tol=0).fit(Xn)
    ref = SKKMeans(4, init=init, n_init=1, tol=0, algorithm="lloyd").fit(X[~bad])
    assert (ours.labels_[bad] == -1).all()
    assert _same_partition(ours.labels_[~bad], ref.labels_)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-9)
    assert (ours.predict(Xn)[bad] == -1).all()
    assert np.isnan(ours.transform(Xn)[bad]).all()
    with pytest.raises(ValueError, match="n_samples=2"):
        KMeans(3).fit(np.array([[1.0, 2.0], [np.nan, 1.0], [3.0, 4.0], [np.nan, np.nan]]))


def test_bad_parameters_name_the_value_and_the_choices():
    X = _blobs(n=40, k=2)
    with pytest.raises(
        ValueError, match=r"init='kmeans' is not one of \('k-means\|\|', 'k-means\+\+'\)"
    ):
        KMeans(2, init="kmeans").fit(X)
    with pytest.raises(ValueError, match="n_clusters must be an integer >= 1, got 0"):
        KMeans(0).fit(X)
    with pytest.raises(ValueError, match=r"expected \(n_clusters, n_features\) = \(2, 5\)"):
        KMeans(2, init=np.zeros((3, 5))).fit(X)
    with pytest.raises(ValueError, match="infinity"):
        KMeans(2).fit(np.r_[X, [[np.inf] * 5]])


def test_xarray_input_keeps_the_spatial_coords():
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(0)
    cls = (np.arange(20)[:, None] // 10 + 2 * (np.arange(30)[None, :] // 15)).astype(float)
    bands = np.stack([cls * 10 + rng.normal(0, 0.5, cls.shape) for _ in range(3)]).astype(
        np.float32
    )
    bands[:, 0, 0] = np.nan
    arr = xr.DataArray(
        bands,
        dims=("band", "y", "x"),
        coords={"band": ["r", "g", "b"], "y": np.arange(20) * -10.0, "x": np.arange(30) * 10.0},
    )
    km = KMeans(4, random_state=0)
    labels = km.fit_predict(arr, dim="band")
    assert isinstance(labels, xr.DataArray) and labels.dims == ("y", "x")
    np.testing.assert_array_equal(labels["x"], arr["x"])
    np.testing.assert_array_equal(labels["y"], arr["y"])
    assert labels.values[0, 0] == -1
    ok = ~np.isnan(bands[0])
    assert adjusted_rand_score(labels.values[ok], cls[ok]) == pytest.approx(1.0)
    assert km.labels_.equals(labels)
    assert km.cluster_centers_.dtype == np.float32
    dist = km.transform(arr, dim="band")
    assert dist.dims == ("y", "x", "cluster") and dist.sizes["cluster"] == 4
    # dask-backed DataArray, band dimension not first: the same labels, lazily
    lazy = arr.transpose("y", "band", "x").chunk({"y": 7, "x": 11})
    lab2 = km.predict(lazy, dim="band")
    assert isinstance(lab2.data, da.Array)
    np.testing.assert_array_equal(lab2.values, labels.values)
    with pytest.raises(ValueError, match="dim='bands' must name the band dimension"):
        km.fit(arr, dim="bands")


def _spilled(dask_worker):
    metrics = getattr(dask_worker.data, "cumulative_metrics", None)
    assert metrics is not None, "the worker's data is not a SpillBuffer"
    return {f"{label}/{unit}": v for (label, unit), v in metrics.items() if "disk" in label}


def test_dask_input_on_a_local_cluster_and_out_of_core_without_spilling():
    """128 MB generated lazily on 2 workers x 16 MB (spill at 60%): every pass regenerates the blocks."""
    from distributed import Client, LocalCluster, get_task_stream

    rows, bands = 128 * 2**20 // (8 * 6), 6
    with (
        dask.config.set(
            {
                # spill on the managed data only (target 60%): the process memory of a
                # worker alone exceeds such a tiny limit
                "distributed.worker.memory.spill": False,
                "distributed.worker.memory.pause": False,
                "distributed.worker.memory.terminate": False,
            }
        ),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            memory_limit="16MB",
            processes=True,
            dashboard_address=None,
        ) as cl,
        Client(cl) as client,
    ):
        X = da.random.default_rng(11).random((rows, bands), chunks=(16_000, bands))
        assert X.nbytes >= 4 * 2 * 16e6
        km = KMeans(3, init="k-means++", init_sample_size=1000, max_iter=3, random_state=0).fit(X)
        assert km.n_iter_ <= 3
        # uniform data in [0, 1)^6: inertia about n * 6 * (1/12) * (reduction by 3 clusters)
        assert 0 < km.inertia_ < rows * bands / 12
        for info in client.run(_spilled).values():
            assert not any(info.values()), info

        # in-memory dask input on the same cluster: the same answer as numpy
        Xs = _blobs(n=4000, k=6, seed=5)
        ref = KMeans(6, init=Xs[:6], max_iter=50).fit(Xs)
        with get_task_stream(client) as stream:
            km = KMeans(6, init=Xs[:6], max_iter=50).fit(da.from_array(Xs, chunks=(500, 5)))
        # the fit ran on the cluster's workers (task groups are forgotten once done, so
        # the task stream is the record that survives)
        assert {t["worker"] for t in stream.data} & set(client.scheduler_info()["workers"])
        np.testing.assert_array_equal(km.labels_.compute(), ref.labels_)
        np.testing.assert_allclose(km.cluster_centers_, ref.cluster_centers_, rtol=1e-12)
        assert km.n_iter_ == ref.n_iter_


def test_importing_the_analytics_package_imports_neither_sklearn_nor_streamz():
    import subprocess
    import sys

    code = (
        "import sys, dask_oxigdal.analytics as a; "
        "print(sorted(m for m in ('sklearn', 'streamz', 'matplotlib') if m in sys.modules)); "
        "print(a.KMeans.__module__, a.geofence.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == [
        "[]",
        "dask_oxigdal.analytics.kmeans dask_oxigdal.analytics.geofencing",
    ]
