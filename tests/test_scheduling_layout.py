"""The scheduling core's layout: shared Dask readers, settings helpers, policy contract.

- ``scheduling/_dask.py``: one formula each for compute seconds, a prefix's
  duration estimate and a worker's idle threads, checked on a real cluster
  (and a guard that the attributes they read still exist);
- ``dask_oxigdal/settings.py``: every helper raises ``ConfigError``;
- ``SchedulingPolicy``: ``after`` ordering, ``defer`` merging, ``close``,
  ``extension.policy(name)``;
- import direction: ``scheduling/`` and ``fault/`` never import ``monitoring/``.
"""

from __future__ import annotations

import ast
import asyncio
import datetime
import pathlib

import pytest
from distributed import Event
from distributed.scheduler import TaskPrefix, WorkerState
from distributed.utils_test import gen_cluster, inc

import dask_oxigdal
from dask_oxigdal import settings
from dask_oxigdal.exceptions import ConfigError
from dask_oxigdal.scheduling._dask import compute_seconds, idle_threads, prefix_estimate
from dask_oxigdal.scheduling.extension import NAME, OxigdalScheduling, register
from dask_oxigdal.scheduling.policy import SchedulingPolicy
from dask_oxigdal.scheduling.tenants import TenantSettings, merge_tenants, parse_tenants

PACKAGE = pathlib.Path(dask_oxigdal.__file__).parent


# ------------------------------------------------------------------ _dask.py
def test_compute_seconds_sums_the_compute_spans():
    spans = [
        {"action": "transfer", "start": 0.0, "stop": 5.0},
        {"action": "compute", "start": 1.0, "stop": 1.5},
        {"action": "compute", "start": 2.0, "stop": 2.25},
    ]
    assert compute_seconds(spans) == pytest.approx(0.75)
    assert compute_seconds(None) == 0.0
    assert compute_seconds([]) == 0.0


def test_guard_dask_helpers_attributes():
    """The private attributes ``_dask.py`` reads (docs/architecture.md lists them)."""
    for attr in ("duration_average", "max_exec_time"):
        assert attr in TaskPrefix.__slots__, attr
    for attr in ("nthreads", "processing", "long_running"):
        assert attr in WorkerState.__slots__, attr


@gen_cluster(client=True, nthreads=[("127.0.0.1", 2)])
async def test_dask_helpers_on_a_cluster(c, s, a):
    (ws,) = s.workers.values()
    assert idle_threads(ws) == 2
    started, release = Event(), Event()

    def block(i, started, release):
        started.set()
        release.wait()
        return i

    fut = c.submit(block, 1, started, release, key="block-1")
    await started.wait()
    while not ws.processing:
        await asyncio.sleep(0.01)
    assert idle_threads(ws) == 1  # one thread busy
    await release.set()
    await fut
    await c.submit(inc, 1, key="inc-1")
    estimate = prefix_estimate(s.tasks["inc-1"].prefix)
    assert estimate is not None and estimate >= 1e-6
    # a prefix never run has no estimate
    prefix = s.tasks["inc-1"].prefix
    prefix.duration_average = -1
    prefix.max_exec_time = 0
    assert prefix_estimate(prefix) is None


# --------------------------------------------------------------- settings.py
def test_settings_helpers_raise_config_error():
    assert settings.duration("scheduling.interval", "250ms") == pytest.approx(0.25)
    assert settings.duration("x.y", datetime.timedelta(minutes=2)) == 120.0
    assert settings.duration("scheduling.interval") > 0  # the shipped default
    for bad in ("soon", -1, float("nan"), True):
        with pytest.raises(ConfigError, match=r"oxigdal\.gang\.timeout="):
            settings.duration("gang.timeout", bad)
    assert settings.number("a.b", 3, minimum=1, integer=True) == 3
    with pytest.raises(ConfigError, match=r"oxigdal\.a\.b=0 is not valid: must be >= 1"):
        settings.number("a.b", 0, minimum=1)
    with pytest.raises(ConfigError, match="expected an integer"):
        settings.number("a.b", 1.5, minimum=1, integer=True)


def test_tenant_settings_are_parsed_once():
    tenants = parse_tenants({"a": 2, "b": {"weight": 1, "max-tasks": 3, "guaranteed_slots": 1}})
    assert tenants["a"] == TenantSettings(2.0)
    assert tenants["b"].options() == {"weight": 1.0, "max-tasks": 3, "guaranteed-slots": 1}
    assert tenants["b"].record() == {"weight": 1.0, "max_tasks": 3, "guaranteed_slots": 1}
    with pytest.raises(ConfigError, match=r"oxigdal\.tenants\.c: unknown setting\(s\) 'colour'"):
        parse_tenants({"c": {"colour": 1}})
    with pytest.raises(ConfigError, match=r"weight 0 must be > 0"):
        parse_tenants({"c": 0})
    # a configured weight replaces only the weight of a recorded mapping
    merged = merge_tenants({"a": {"weight": 1, "max-tasks": 4}}, {"a": 3}, {"b": 1})
    assert merged == {"a": {"weight": 3, "max-tasks": 4}, "b": 1}


# ----------------------------------------------------------- policy contract
class _Counting(SchedulingPolicy):
    """Counts deferred calls: ``defer`` merges the requests of one tick."""

    name = "Counting"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.closed = 0

    def transition(self, key, start, finish, info, kwargs):
        if finish == "memory":
            self.defer("tick")

    def tick(self) -> None:
        self.calls += 1

    def close(self) -> None:
        self.closed += 1


class _After(SchedulingPolicy):
    name = "After"
    after = ("Counting",)


@gen_cluster(client=True, nthreads=[])
async def test_policy_contract(c, s):
    await register(c, policies=[_Counting(), _After()])
    ext = s.plugins[NAME]
    counting = ext.policy("Counting")  # the scheduler's copy
    assert isinstance(counting, _Counting)
    assert ext.policy("Nope") is None
    # defer: many requests before the next tick make one call
    for _ in range(5):
        counting.defer("tick")
    await asyncio.sleep(0.05)
    assert counting.calls == 1
    counting.defer("tick")
    await asyncio.sleep(0.05)
    assert counting.calls == 2
    # a disabled policy is no longer found, and is closed
    ext._disable(counting, "test", RuntimeError("boom"))
    assert ext.policy("Counting") is None
    await asyncio.sleep(0.05)
    assert counting.closed == 1


@gen_cluster(client=True, nthreads=[])
async def test_policy_order_is_checked(c, s):
    with pytest.raises(ConfigError, match="list After after Counting"):
        await register(c, policies=[_After(), _Counting()])


def test_extension_class_path_is_stable():
    assert OxigdalScheduling.__module__ == "dask_oxigdal.scheduling.extension"
    from dask_oxigdal import client

    assert register is client.register


# ---------------------------------------------------------- import direction
def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("package", ["scheduling", "fault"])
def test_scheduling_and_fault_never_import_monitoring(package):
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            m for m in _imports(path) if m.startswith("dask_oxigdal.monitoring")
        )
        for path in sorted((PACKAGE / package).glob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_module_in_the_layout_imports():
    """docs/architecture.md names one line per module of scheduling/, fault/, monitoring/."""
    import importlib
    import re

    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("```")[1]
    modules, package = [], None
    for line in block.splitlines():
        head = re.match(r"^  (\w+)/", line)
        if head:
            package = head.group(1)
            continue
        if re.match(r"^  \S", line):
            package = None
        entry = re.match(r"^    (\w+)\.py\s", line)
        if package in ("scheduling", "fault", "monitoring") and entry:
            modules.append(f"dask_oxigdal.{package}.{entry.group(1)}")
    assert len(modules) > 30, modules
    for name in modules:
        importlib.import_module(name)
    for package in ("scheduling", "fault"):
        documented = {m.rsplit(".", 1)[1] for m in modules if f".{package}." in m}
        on_disk = {p.stem for p in (PACKAGE / package).glob("*.py") if p.stem != "__init__"}
        assert on_disk - documented == set(), package  # every module has its line
