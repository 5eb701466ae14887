"""Distributed k-means over imagery: numpy, dask.array or xarray (pixels x bands).

:class:`KMeans` is a scikit-learn estimator. Every pass over the data (one per
Lloyd iteration, one per k-means|| round) is one graph of per-block numba
kernel calls joined by a tree reduction; only ``k x bands`` floats leave a
block in a Lloyd pass. The graph is computed by the current
``distributed.Client`` if there is one, else by Dask's local scheduler
(in-memory numpy input runs the same blocks on a local thread pool).
Nothing is persisted between passes: data generated or read lazily is
regenerated per pass, so the input never has to fit in (or spill out of)
the workers' memory.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from dask_oxigdal.analytics._kmeans_passes import (
    _combine_farthest,
    _combine_lloyd,
    _combine_oversample,
    _combine_stats,
    _counts,
    _Data,
    _farthest,
    _is_dask,
    _is_xarray,
    _kmeanspp,
    _lloyd,
    _oversample,
    _stats_sample,
    _sum,
    _weighted_lloyd,
)

__all__ = ["KMeans"]

INITS = ("k-means||", "k-means++")
_INT_SEED = 2**31 - 1


# ---------------------------------------------------------------- the estimator


class KMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """k-means clustering of pixels (rows) by their bands (columns), in or out of core.

    Parameters
    ----------
    n_clusters : int, default 8
        Number of clusters ``k``.
    init : {"k-means||", "k-means++"} or array_like of shape (n_clusters, n_features)
        ``"k-means||"`` (Bahmani et al., VLDB 2012): a first center drawn
        uniformly, then ``init_max_iter`` rounds each drawing about
        ``oversampling_factor * n_clusters`` rows with probability
        proportional to their squared distance to the candidates so far,
        then the candidates, weighted by how many rows are nearest to each,
        are reduced to ``k`` by weighted greedy k-means++ and a weighted
        Lloyd refinement. ``"k-means++"``: greedy k-means++ on a uniform
        sample of ``init_sample_size`` valid rows. An array: these centers.
    n_init : int or "auto", default "auto"
        Runs with different seeds; the lowest inertia wins. ``"auto"`` is 1.
    max_iter : int, default 300
        Lloyd iterations per run.
    tol : float, default 1e-4
        Stop when the squared shift of the centers is at most ``tol`` times
        the mean per-band variance (scikit-learn's rule).
    random_state : int, RandomState or None
        Seed of the init draws (per block, so results do not depend on the
        order in which blocks are computed).
    oversampling_factor : float, default 2.0
        k-means|| ``l / k``.
    init_max_iter : int, default 5
        k-means|| rounds.
    init_sample_size : int, default 100_000
        Rows sampled for ``"k-means++"`` (and for padding when k-means||
        finds fewer than ``k`` candidates).

    Attributes
    ----------
    cluster_centers_ : numpy.ndarray, shape (n_clusters, n_features)
        In the input's float dtype (float32 stays float32).
    labels_ : numpy.ndarray, dask.array.Array or xarray.DataArray
        Cluster of each training row, ``-1`` for nodata (any NaN band); lazy
        for dask input; a DataArray with the spatial coords for xarray input.
    inertia_ : float
        Sum of squared distances of the valid rows to their centers.
    n_iter_ : int
        Lloyd iterations of the best run.
    n_features_in_ : int

    Notes
    -----
    Input: a 2-D numpy array (rows x bands), a dask array whose last axis is
    the bands (any leading axes; the band axis is rechunked to one chunk),
    or an ``xarray.DataArray`` with ``dim=`` naming its band dimension.
    Rows with a NaN band are skipped and labelled ``-1``; infinite values
    are rejected. An empty cluster takes the valid row farthest from its
    center, as in scikit-learn.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((50, 2)), np.ones((50, 2)) * 10]
    >>> km = KMeans(n_clusters=2, random_state=0).fit(X)
    >>> sorted(np.bincount(km.labels_).tolist())
    [50, 50]
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: Any = "k-means||",
        n_init: Any = "auto",
        max_iter: int = 300,
        tol: float = 1e-4,
        random_state: Any = None,
        oversampling_factor: float = 2.0,
        init_max_iter: int = 5,
        init_sample_size: int = 100_000,
    ) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.oversampling_factor = oversampling_factor
        self.init_max_iter = init_max_iter
        self.init_sample_size = init_sample_size

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ------------------------------------------------------------ validation
    def _check_params(self, n_features: int) -> None:
        def _int(name, value, minimum):
            if (
                not isinstance(value, numbers.Integral)
                or isinstance(value, bool)
                or value < minimum
            ):
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

        _int("n_clusters", self.n_clusters, 1)
        _int("max_iter", self.max_iter, 1)
        _int("init_max_iter", self.init_max_iter, 0)
        _int("init_sample_size", self.init_sample_size, 1)
        if self.n_init != "auto":
            _int("n_init", self.n_init, 1)
        if not isinstance(self.tol, numbers.Real) or not self.tol >= 0:
            raise ValueError(f"tol must be a number >= 0, got {self.tol!r}")
        if not isinstance(self.oversampling_factor, numbers.Real) or not (
            self.oversampling_factor > 0
        ):
            raise ValueError(
                f"oversampling_factor must be a number > 0, got {self.oversampling_factor!r}"
            )
        if isinstance(self.init, str):
            if self.init not in INITS:
                raise ValueError(f"init={self.init!r} is not one of {INITS} or an array of centers")
        else:
            init = np.asarray(self.init)
            if init.shape != (self.n_clusters, n_features):
                raise ValueError(
                    f"init array has shape {init.shape}, expected "
                    f"(n_clusters, n_features) = ({self.n_clusters}, {n_features})"
                )

    def _as_data(self, X: Any, dim: Any, *, reset: bool):
        """(``_Data``, xarray template or None) for any supported input."""
        template = None
        if _is_xarray(X):
            if dim is None or dim not in X.dims:
                raise ValueError(
                    f"dim={dim!r} must name the band dimension of the DataArray, one of {X.dims}"
                )
            template = X
            X = X.transpose(*[d for d in X.dims if d != dim], dim).data
        elif dim is not None:
            raise ValueError(f"dim={dim!r} is only valid with an xarray.DataArray input")
        if _is_dask(X):
            if X.ndim < 2:
                raise ValueError(
                    f"a dask array input needs at least 2 axes (rows x bands), got {X.ndim}"
                )
            if X.dtype not in (np.float32, np.float64):
                X = X.astype(np.float64)
            if len(X.chunks[-1]) > 1:
                X = X.rechunk({X.ndim - 1: -1})
            self._check_features(X.shape[-1], reset)
        elif template is not None:
            X = np.asarray(X)
            if X.dtype not in (np.float32, np.float64):
                X = X.astype(np.float64)
            if np.isinf(X).any():
                raise ValueError("Input contains infinity (NaN is nodata and allowed)")
            self._check_features(X.shape[-1], reset)
            X = X.reshape(-1, X.shape[-1])
        else:
            X = validate_data(
                self,
                X,
                reset=reset,
                dtype=[np.float64, np.float32],
                ensure_all_finite="allow-nan",
                order="C",
            )
        return _Data(X), template

    def _check_features(self, n: int, reset: bool) -> None:
        if reset:
            self.n_features_in_ = int(n)
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif n != self.n_features_in_:
            raise ValueError(
                f"X has {n} features, but KMeans is expecting {self.n_features_in_} "
                "features as input"
            )

    # ------------------------------------------------------------ fitting
    def fit(self, X: Any, y: Any = None, *, dim: Any = None) -> KMeans:
        """Compute the clusters.

        Parameters
        ----------
        X : numpy.ndarray, dask.array.Array or xarray.DataArray
            Rows x bands (dask: any leading axes, bands last; xarray: see ``dim``).
        y : ignored
        dim : str, optional
            The band dimension of an ``xarray.DataArray`` input.

        Returns
        -------
        KMeans
            ``self``, fitted.
        """
        data, template = self._as_data(X, dim, reset=True)
        self._check_params(data.n_features)
        rs = check_random_state(self.random_state)
        n_init = 1 if self.n_init == "auto" or not isinstance(self.init, str) else self.n_init
        seeds = rs.randint(_INT_SEED, size=n_init)
        dtype = data.dtype

        # k-means|| needs one uniform row (its first center) plus a few for padding
        m = self.n_clusters + 16
        if isinstance(self.init, str) and self.init == "k-means++":
            m = max(self.init_sample_size, self.n_clusters)
        stats = data.map_reduce(_stats_sample, _combine_stats, int(seeds[0]), m)
        n = stats["n"]
        if n < self.n_clusters:
            raise ValueError(
                f"n_samples={n} (rows without NaN) should be >= n_clusters={self.n_clusters}"
            )
        mean = stats["s"] / n
        var = np.maximum(stats["ss"] / n - mean * mean, 0.0)
        tol = float(np.mean(var) * self.tol)

        best = None
        for run, seed in enumerate(seeds):
            if run > 0:
                stats = data.map_reduce(_stats_sample, _combine_stats, int(seed), m)
            centers = self._init_centers(data, stats, int(seed), dtype)
            centers, inertia, n_iter = self._lloyd(data, centers, tol)
            if best is None or inertia < best[1]:
                best = (centers, inertia, n_iter)
        centers, inertia, n_iter = best
        self.cluster_centers_ = centers
        self.inertia_ = float(inertia)
        self.n_iter_ = int(n_iter)
        self.labels_ = self._wrap(data.labels(centers), template, dim)
        return self

    def _init_centers(self, data: _Data, stats: dict, seed: int, dtype) -> np.ndarray:
        k = self.n_clusters
        if not isinstance(self.init, str):
            return np.array(self.init, dtype=dtype, order="C")
        rng = np.random.default_rng([seed, 1])
        sample = stats["rows"].astype(dtype)
        if self.init == "k-means++":
            w = np.ones(sample.shape[0])
            return np.ascontiguousarray(_kmeanspp(sample, w, k, rng))
        ell = self.oversampling_factor * k
        m = math.ceil(4 * ell) + 32
        C = sample[:1]
        for rnd in range(1, self.init_max_iter + 1):
            res = data.map_reduce(_oversample, _combine_oversample, seed, rnd + 1, C, ell, m)
            phi = res["cost"]
            if phi <= 0:
                break
            picked = res["rows"][res["keys"] > phi]
            C = np.concatenate([C, picked.astype(dtype)])
        if C.shape[0] < k:
            extra = [r for r in sample if not (C == r).all(axis=1).any()]
            C = np.concatenate(
                [C, np.asarray(extra[: k - C.shape[0]], dtype=dtype).reshape(-1, C.shape[1])]
            )
        C = np.ascontiguousarray(C)
        w = data.map_reduce(_counts, _sum, C).astype(np.float64)
        if C.shape[0] <= k:
            centers = C
            if C.shape[0] < k:  # fewer distinct rows than clusters: repeat
                centers = np.concatenate([C, np.repeat(C[:1], k - C.shape[0], axis=0)])
            return np.ascontiguousarray(centers)
        w = np.maximum(w, 1e-12)
        centers = _kmeanspp(C, w, k, rng)
        return np.ascontiguousarray(_weighted_lloyd(C, w, centers))

    def _lloyd(self, data: _Data, centers: np.ndarray, tol: float):
        dtype = centers.dtype
        n_iter = 0
        while n_iter < self.max_iter:
            n_iter += 1
            sums, counts, _ = data.map_reduce(_lloyd, _combine_lloyd, centers)
            empty = np.flatnonzero(counts == 0)
            if empty.size:
                far = data.map_reduce(_farthest, _combine_farthest, centers, int(empty.size))
                for c, row in zip(empty, far["rows"], strict=False):
                    sums[c] = row
                    counts[c] = 1
            new = (sums / np.maximum(counts, 1)[:, None]).astype(dtype)
            shift = float(((new.astype(np.float64) - centers) ** 2).sum())
            centers = np.ascontiguousarray(new)
            if shift <= tol:
                break
        _, _, inertia = data.map_reduce(_lloyd, _combine_lloyd, centers)
        return centers, inertia, n_iter

    # ------------------------------------------------------------ inference
    def _wrap(self, out: Any, template: Any, dim: Any, extra_dim: str | None = None) -> Any:
        if template is None:
            return out
        import xarray as xr

        dims = [d for d in template.dims if d != dim]
        shape = tuple(template.sizes[d] for d in dims)
        coords = {n: c for n, c in template.coords.items() if all(d in dims for d in c.dims)}
        if extra_dim is None:
            return xr.DataArray(out.reshape(shape), dims=dims, coords=coords, name="cluster")
        return xr.DataArray(
            out.reshape((*shape, self.n_clusters)),
            dims=[*dims, extra_dim],
            coords={**coords, extra_dim: np.arange(self.n_clusters)},
            name="distance",
        )

    def predict(self, X: Any, *, dim: Any = None) -> Any:
        """Nearest cluster of each row (``-1`` for nodata), of the input's kind.

        Parameters
        ----------
        X : numpy.ndarray, dask.array.Array or xarray.DataArray
        dim : str, optional
            Band dimension of a DataArray.

        Returns
        -------
        numpy.ndarray, dask.array.Array or xarray.DataArray of int64
        """
        check_is_fitted(self)
        data, template = self._as_data(X, dim, reset=False)
        return self._wrap(data.labels(self.cluster_centers_.astype(data.dtype)), template, dim)

    def fit_predict(self, X: Any, y: Any = None, *, dim: Any = None) -> Any:
        """Fit, then return :attr:`labels_` (see :meth:`fit`)."""
        return self.fit(X, dim=dim).labels_

    def transform(self, X: Any, *, dim: Any = None) -> Any:
        """Distance of each row to every center (NaN for nodata rows).

        Parameters
        ----------
        X : numpy.ndarray, dask.array.Array or xarray.DataArray
        dim : str, optional
            Band dimension of a DataArray; the output replaces it by ``cluster``.

        Returns
        -------
        array of shape (..., n_clusters), in the input's float dtype
        """
        check_is_fitted(self)
        data, template = self._as_data(X, dim, reset=False)
        out = data.transform(self.cluster_centers_.astype(data.dtype))
        return self._wrap(out, template, dim, extra_dim="cluster")

    def fit_transform(self, X: Any, y: Any = None, *, dim: Any = None) -> Any:
        """Fit, then :meth:`transform` the same data."""
        return self.fit(X, dim=dim).transform(X, dim=dim)

    def score(self, X: Any, y: Any = None, *, dim: Any = None) -> float:
        """Opposite of the inertia of ``X`` against the fitted centers.

        Parameters
        ----------
        X : numpy.ndarray, dask.array.Array or xarray.DataArray
        y : ignored
        dim : str, optional

        Returns
        -------
        float
        """
        check_is_fitted(self)
        data, _ = self._as_data(X, dim, reset=False)
        _, _, inertia = data.map_reduce(
            _lloyd, _combine_lloyd, self.cluster_centers_.astype(data.dtype)
        )
        return -float(inertia)
