"""Every public name and every documented import path resolves.

- every name in ``dask_oxigdal.__all__`` and in each subpackage's ``__all__``;
- every ``dask_oxigdal.x.y`` dotted path and every ``from dask_oxigdal... import a, b``
  line in README.md and docs/*.md (read at collection time, so a doc that names a
  module or function that does not exist fails here);
- the renamed modules: the old paths are deprecated aliases of the new modules,
  and the package attributes of the same name stay the public functions.

In-process and fast: the modules imported here are the ones the docs name.
"""

from __future__ import annotations

import glob
import importlib
import os
import pkgutil
import re
import sys
import types
import warnings

import pytest

import dask_oxigdal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted([os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md"))])

#: old module path -> the module it is a deprecated alias of
MOVED = {
    "dask_oxigdal.shuffle": "dask_oxigdal.tables",
    "dask_oxigdal.knn": "dask_oxigdal.neighbors",
    "dask_oxigdal.monitoring.progress": "dask_oxigdal.monitoring.progressbar",
    "dask_oxigdal.fault.hedge": "dask_oxigdal.fault.hedging",
}

_DOTTED = re.compile(r"\bdask_oxigdal(?:\.[A-Za-z_]\w*)+")
_FROM_IMPORT = re.compile(r"\bfrom\s+(dask_oxigdal(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n`]*)")


def _documented() -> tuple[set[str], set[tuple[str, str]]]:
    """(dotted paths, (module, name) pairs of ``from ... import`` lines) named in the docs."""
    dotted: set[str] = set()
    imports: set[tuple[str, str]] = set()
    for path in DOCS:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        dotted.update(m.group(0) for m in _DOTTED.finditer(text))
        for m in _FROM_IMPORT.finditer(text):
            names = re.sub(r"#[^\n]*", "", m.group(2)).strip("()")
            for item in names.split(","):
                name = item.split(" as ")[0].strip()
                if name.isidentifier():
                    imports.add((m.group(1), name))
    return dotted, imports


DOTTED, FROM_IMPORTS = _documented()


def _import(module: str) -> types.ModuleType:
    """Import ``module``; only the deprecated aliases in MOVED may warn (and must)."""
    if module in MOVED:
        sys.modules.pop(module, None)  # import it afresh, so that it warns again
        with pytest.warns(DeprecationWarning, match=re.escape(MOVED[module])):
            return importlib.import_module(module)
    return importlib.import_module(module)


def _resolve(path: str) -> object:
    """The object a dotted path names: the longest importable module, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj: object = _import(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # the module exists but one of its imports is missing
                raise
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"{path}: no importable module")


def _subpackages() -> list[str]:
    return sorted(
        f"dask_oxigdal.{m.name}"
        for m in pkgutil.iter_modules(dask_oxigdal.__path__)
        if m.ispkg and m.name not in ("demo",)  # demo's __init__ is the CLI entry: tested there
    )


def test_the_docs_name_paths():
    # the regexes still find what they are meant to find
    assert "dask_oxigdal.tables" in DOTTED and "dask_oxigdal.preload" in DOTTED
    assert ("dask_oxigdal.tables", "hash_partition") in FROM_IMPORTS
    assert ("dask_oxigdal.partitioning", "HilbertPartitioner") in FROM_IMPORTS


@pytest.mark.parametrize("name", sorted(dask_oxigdal.__all__))
def test_top_level_public_name(name):
    value = getattr(dask_oxigdal, name)
    assert not isinstance(value, types.ModuleType), f"dox.{name} is a module"
    assert name in dir(dask_oxigdal)


@pytest.mark.parametrize("package", _subpackages())
def test_subpackage_public_names(package):
    module = importlib.import_module(package)
    for name in getattr(module, "__all__", ()):
        value = getattr(module, name)
        assert not isinstance(value, types.ModuleType), f"{package}.{name} is a module"


@pytest.mark.parametrize("path", sorted(DOTTED))
def test_documented_dotted_path(path):
    _resolve(path)


@pytest.mark.parametrize(("module", "name"), sorted(FROM_IMPORTS))
def test_documented_from_import(module, name):
    assert hasattr(_import(module), name), f"from {module} import {name}"


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_old_module_path_is_a_deprecated_alias(old, new):
    new_module = importlib.import_module(new)
    assert _import(old) is new_module  # from old import x: the new module's own objects
    for name in new_module.__all__:
        exec(f"from {old} import {name} as value", ns := {})
        assert ns["value"] is getattr(new_module, name)
    # ``import old as m`` binds the package attribute: the public function, which
    # carries the module's public names too
    package, _, child = old.rpartition(".")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already imported: no second warning
        exec(f"import {old} as m", ns := {})
    assert ns["m"] is getattr(importlib.import_module(package), child)
    assert callable(ns["m"]) and not isinstance(ns["m"], types.ModuleType)
    for name in new_module.__all__:
        assert getattr(ns["m"], name) is getattr(new_module, name)


def test_shuffle_acceptance_check():
    """The issue's check, literally: the old path gives hash_partition, dox.shuffle is the function."""
    import dask.dataframe as dd
    import pandas as pd

    with pytest.warns(DeprecationWarning):
        sys.modules.pop("dask_oxigdal.shuffle", None)
        import dask_oxigdal.shuffle as m
    parts = m.hash_partition(pd.DataFrame({"k": [1, 2, 3, 4]}), "k", 2)
    assert sum(len(p) for p in parts.values()) == 4

    import dask_oxigdal as dox

    assert isinstance(dox.shuffle, types.FunctionType)
    assert dox.shuffle.__module__ == "dask_oxigdal.vector"
    ddf = dd.from_pandas(pd.DataFrame({"k": range(20), "v": range(20)}), npartitions=3)
    out = dox.shuffle(ddf, "k", 4).compute(scheduler="sync")
    assert sorted(out["k"]) == list(range(20))


def test_workflows_package_and_function_share_a_name():
    """``import dask_oxigdal.workflows as m`` binds ``dox.workflows``; it carries the package's names."""
    import dask_oxigdal as dox
    import dask_oxigdal.workflows as m

    assert m is dox.workflows and isinstance(m, types.FunctionType)
    package = sys.modules["dask_oxigdal.workflows"]
    for name in package.__all__:
        if name != "workflows":
            assert getattr(m, name) is getattr(package, name), name
    assert m.step is dox.step and m.start_workflow is dox.start_workflow


def test_fault_hedge_is_the_function():
    from dask_oxigdal.fault import hedge
    from dask_oxigdal.fault.hedging import hedge as hedging_hedge

    assert hedge is hedging_hedge and isinstance(hedge, types.FunctionType)
    import dask_oxigdal.fault

    assert dask_oxigdal.fault.hedge is hedge
    # importing the old module path does not rebind it
    _import("dask_oxigdal.fault.hedge")
    assert dask_oxigdal.fault.hedge is hedge
