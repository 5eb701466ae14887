"""pytest plugin for running Dask's own test modules with the extension preloaded.

``make test`` runs ``../shared/dask-tests`` (unchanged copies of modules of
dask/distributed) with ``DASK_DISTRIBUTED__SCHEDULER__PRELOAD`` naming
``dask_oxigdal.preload`` and ``-p oxigdal_dask_suite``. This plugin makes
that run fail if the extension was never installed (a preload that silently
did not load would otherwise test vanilla Dask), and prints how many
schedulers ran it and whether any policy was disabled.
"""

from __future__ import annotations

import os

import pytest

_installs: list[str] = []
_disabled: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Count every start of the extension in this process."""
    preload = os.environ.get("DASK_DISTRIBUTED__SCHEDULER__PRELOAD", "")
    if "dask_oxigdal.preload" not in preload:
        raise pytest.UsageError(
            "oxigdal_dask_suite: set DASK_DISTRIBUTED__SCHEDULER__PRELOAD to "
            f"'[\"dask_oxigdal.preload\"]' (got {preload!r})"
        )
    from dask_oxigdal.scheduling.extension import OxigdalScheduling

    start = OxigdalScheduling.start
    close = OxigdalScheduling.close

    async def counted_start(self, scheduler):  # type: ignore[no-untyped-def]
        await start(self, scheduler)
        _installs.append(scheduler.address)

    async def checked_close(self):  # type: ignore[no-untyped-def]
        _disabled.extend(f"{name}: {why}" for name, why in self.disabled.items())
        await close(self)

    OxigdalScheduling.start = counted_start  # type: ignore[method-assign]
    OxigdalScheduling.close = checked_close  # type: ignore[method-assign]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when no scheduler ran the extension, or a policy was disabled."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    line = (
        f"oxigdal_dask_suite: the extension ran in {len(_installs)} schedulers; "
        f"policies disabled: {len(_disabled)}"
    )
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(line)
        for entry in _disabled[:20]:
            reporter.write_line(f"  disabled: {entry}")
    if session.testscollected and (not _installs or _disabled):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
