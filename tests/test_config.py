"""The oxigdal dask-config namespace: defaults and schema agree, and the defaults are live."""

from __future__ import annotations

import os

import dask.config
import pytest

import dask_oxigdal  # noqa: F401  (registers the defaults)
from dask_oxigdal import config


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            out.update(_leaves(value, path))
        else:
            out[path] = value
    return out


def _schema_leaves(schema: dict, prefix: str = "") -> dict[str, dict]:
    out: dict[str, dict] = {}
    for key, node in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        if node.get("type") == "object" and "properties" in node:
            out.update(_schema_leaves(node, path))
        else:
            out[path] = node
    return out


_TYPES = {"integer": int, "number": (int, float), "string": str, "boolean": bool, "array": list}


def test_every_default_has_a_schema_entry_and_vice_versa():
    defaults = _leaves(config.load_defaults()["oxigdal"], "oxigdal")
    schema = _schema_leaves(config.load_schema())
    assert set(defaults) == set(schema), (
        f"only in oxigdal.yaml: {sorted(set(defaults) - set(schema))}; "
        f"only in the schema: {sorted(set(schema) - set(defaults))}"
    )


def test_defaults_have_the_schema_type_and_bounds():
    defaults = _leaves(config.load_defaults()["oxigdal"], "oxigdal")
    schema = _schema_leaves(config.load_schema())
    for key, value in defaults.items():
        node = schema[key]
        assert "description" in node and node["description"].strip(), key
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        assert any(
            (t == "null" and value is None) or (t in _TYPES and isinstance(value, _TYPES[t]))
            for t in types
        ), f"{key}={value!r} is not of type {types}"
        if "minimum" in node:
            assert value >= node["minimum"], key
        if "enum" in node:
            assert value in node["enum"], key


def test_defaults_are_registered_with_dask():
    for key, value in _leaves(config.load_defaults()["oxigdal"], "oxigdal").items():
        assert dask.config.get(key) == value


def test_no_distributed_settings_are_changed():
    # NUMBA_NUM_THREADS must never go through the nanny's pre-spawn-environ: the
    # nanny copies it into the parent process (see test_parallel_policy).
    import distributed  # noqa: F401  (its config defaults: dask_oxigdal no longer imports it)

    assert set(config.load_defaults()) == {"oxigdal"}
    assert "NUMBA_NUM_THREADS" not in dask.config.get("distributed.nanny.pre-spawn-environ")


def test_get_prefers_the_explicit_value():
    assert config.get("demo.tiles", 3) == 3
    with dask.config.set({"oxigdal.demo.tiles": 5}):
        assert config.get("demo.tiles") == 5
    with pytest.raises(KeyError):
        config.get("no-such-key")


def test_configuration_reference_is_current():
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "configuration.md")
    with open(path, encoding="utf-8") as f:
        assert f.read() == config.render_reference(), (
            "docs/configuration.md is stale: dask oxigdal config-reference > docs/configuration.md"
        )
