"""Import cost: the package, the preload and a scheduler with the extension stay light.

Each check runs in a fresh interpreter (a subprocess) and reads its
``sys.modules``; no timings are asserted (``benchmarks/bench_import.py``
measures them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import dask_oxigdal

#: never imported until a kernel or a front end is used
HEAVY = [
    "numba",
    "llvmlite",
    "pandas",
    "pyarrow",
    "scipy",
    "geopandas",
    "xarray",
    "shapely",
    "polars",
    "matplotlib",
    "dask.dataframe",
    "dask.array",
]
#: distributed's scheduler imports it itself; the package and the preload must not
PROMETHEUS = "prometheus_client"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(dask_oxigdal.__file__)))


def run_fresh(code: str, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter that imports this tree's dask_oxigdal.

    The code prints one JSON line last; that line is returned, decoded.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def loaded(names: list[str]) -> str:
    """Python source: the JSON list of which of ``names`` are in sys.modules."""
    return f"[m for m in {names!r} if m in sys.modules]"


@pytest.mark.parametrize("module", ["dask_oxigdal", "dask_oxigdal.preload", "dask_oxigdal.cli"])
def test_importing_loads_no_heavy_library(module):
    res = run_fresh(
        f"""
        import json, sys
        import {module}
        import dask_oxigdal, dask
        print(json.dumps({{
            "heavy": {loaded([*HEAVY, PROMETHEUS])},
            "config": dask.config.get("oxigdal.scheduling.default-queue", None),
        }}))
        """
    )
    assert res["heavy"] == []
    assert res["config"] is not None  # the package import still registers the config defaults


def test_scheduler_with_the_preload_and_default_policies_stays_light():
    # A plain scheduler first (what distributed itself imports), then one with the
    # preload and every default policy, a worker, a client: annotate, register,
    # status and dox.cached inside a task all run in this one process.
    res = run_fresh(
        f"""
        import asyncio, json, sys
        import dask, distributed
        from distributed import Client, Scheduler, Worker

        async def main():
            async with Scheduler(host="127.0.0.1", port=0, dashboard=False):
                pass
            plain = set(sys.modules)
            async with Scheduler(
                host="127.0.0.1", port=0, dashboard=False, preload=["dask_oxigdal.preload"]
            ) as s:
                async with Worker(s.address, nthreads=1), Client(s.address, asynchronous=True) as c:
                    import dask_oxigdal as dox

                    await dox.register(c)

                    def task(i):
                        import dask_oxigdal as dox

                        return dox.cached(("import-test", i), lambda: [i] * 1000)[0]

                    with dox.annotate(tenant="team-a", queue="batch"):
                        results = await c.gather(c.map(task, range(4)))
                    status = await dox.status(c)
                ext = s.plugins["oxigdal"]
                policies = [
                    type(p).__module__ + "." + type(p).__name__ for p in ext.policies
                ]
            default = [p["class"] for p in dask.config.get("oxigdal.scheduling.policies")]
            return {{
                "results": results,
                "policies": policies,
                "default": default,
                "status": sorted(status),
                "heavy": {loaded(HEAVY)},
                "ours": [m for m in {[PROMETHEUS]!r} if m in set(sys.modules) - plain],
            }}

        print(json.dumps(asyncio.run(main())))
        """,
        timeout=180,
    )
    assert res["results"] == [0, 1, 2, 3]
    assert res["policies"] == res["default"] and len(res["default"]) >= 10
    assert res["status"]
    assert res["heavy"] == []
    assert res["ours"] == []


def test_dask_oxigdal_version_is_light():
    res = run_fresh(
        f"""
        import atexit, json, sys
        atexit.register(lambda: print(json.dumps({{"heavy": {loaded(HEAVY)}}})))
        sys.argv = ["dask", "oxigdal", "--version"]
        from dask.cli import run_cli
        run_cli()
        """
    )
    assert res["heavy"] == []


def test_lazy_public_names_resolve():
    res = run_fresh(
        """
        import json, sys, types
        import numpy as np
        import dask_oxigdal as dox
        # the submodules named like public functions, imported first, do not shadow them
        from dask_oxigdal.shuffle import hash_partition
        import dask_oxigdal.knn

        from dask_oxigdal import ndvi
        out = ndvi(np.array([[0.5, 0.3]]), np.array([[0.1, 0.3]]))
        names = {
            n: type(getattr(dox, n)).__name__ for n in dox.__all__
        }
        print(json.dumps({
            "all": sorted(dox.__all__),
            "dir": dir(dox),
            "names": names,
            "ndvi": out.tolist(),
            "spectral": dox.spectral_index("NDVI", nir=np.array([1.0]), red=np.array([0.0])).tolist(),
            "indices": sorted(dox.INDICES),
            "ndvi_is_dox_ndvi": ndvi is dox.ndvi,
            "hash_partition": callable(hash_partition),
            "version": dox.__version__,
        }))
        """
    )
    contract = {
        "register", "annotate", "status", "ndvi", "spectral_index", "INDICES", "cached",
        "shuffle", "spatial_shuffle", "knn", "hedge", "progress", "__version__",
    }  # fmt: skip
    assert contract <= set(res["all"])
    assert set(res["all"]) <= set(res["dir"])
    for name, kind in res["names"].items():
        assert kind != "module", name
    assert res["names"]["shuffle"] == "function" and res["names"]["knn"] == "function"
    assert res["ndvi"] == [[pytest.approx(0.4 / 0.6), 0.0]]
    assert res["spectral"] == [1.0]
    assert "NDVI" in res["indices"]
    assert res["ndvi_is_dox_ndvi"] and res["hash_partition"]
    assert res["version"] == dask_oxigdal.__version__


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        dask_oxigdal.no_such_name  # noqa: B018
    assert not hasattr(dask_oxigdal, "no_such_name")


def test_package_pickles_by_reference():
    # a task function that refers to ``dox`` (cloudpickled by value, globals included)
    # must unpickle in a fresh worker process to that process's own package
    import pickle

    import cloudpickle

    assert pickle.loads(pickle.dumps(dask_oxigdal)) is dask_oxigdal
    dox = dask_oxigdal
    payload = cloudpickle.dumps(lambda: (dox.__version__, dox.cached.__module__))
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pickle, sys; print(*pickle.loads(sys.stdin.buffer.read())())",
        ],
        input=payload,
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert out.returncode == 0, out.stderr.decode()[-4000:]
    assert out.stdout.decode().split() == [dask_oxigdal.__version__, "dask_oxigdal.cache"]
