"""Scheduler preload: ``dask scheduler --preload dask_oxigdal.preload``.

Installs :class:`~dask_oxigdal.scheduling.extension.OxigdalScheduling` when
the scheduler starts. Options come from the scheduler's dask config
(``oxigdal.*``) or from the preload's own options, for example::

    dask scheduler --preload dask_oxigdal.preload \\
        --oxigdal-tenant team-a=2 --oxigdal-tenant team-b=1 --oxigdal-strict

``--preload-argv`` passes the same options to ``distributed.Scheduler(preload=...)``.
"""

from __future__ import annotations

from typing import Any

import click

from dask_oxigdal.scheduling.extension import NAME, OxigdalScheduling

__all__ = ["dask_setup", "parse_tenant_options"]


def parse_tenant_options(values: tuple[str, ...]) -> dict[str, float]:
    """Parse ``NAME=WEIGHT`` options.

    Parameters
    ----------
    values : tuple of str
        ``("team-a=2", "team-b=1")``.

    Returns
    -------
    dict
        ``{"team-a": 2.0, "team-b": 1.0}``.

    Raises
    ------
    click.BadParameter
        A value without ``=`` or with a weight that is not a positive number.
    """
    tenants: dict[str, float] = {}
    for value in values:
        name, sep, weight = value.partition("=")
        try:
            w = float(weight)
        except ValueError:
            w = float("nan")
        if not sep or not name or not w > 0:
            raise click.BadParameter(
                f"{value!r}: expected NAME=WEIGHT with a positive weight, e.g. team-a=2",
                param_hint="--oxigdal-tenant",
            )
        tenants[name] = w
    return tenants


@click.command()
@click.option(
    "--oxigdal-tenant",
    "tenants",
    multiple=True,
    metavar="NAME=WEIGHT",
    help="Fair-share weight of a tenant (repeatable); adds to oxigdal.tenants.",
)
@click.option(
    "--oxigdal-queues",
    default=None,
    metavar="Q1,Q2,...",
    help="Priority queues, highest first (oxigdal.scheduling.queues).",
)
@click.option("--oxigdal-default-queue", default=None, help="oxigdal.scheduling.default-queue.")
@click.option(
    "--oxigdal-strict/--no-oxigdal-strict",
    default=None,
    help="Reject tenants not configured (oxigdal.scheduling.strict).",
)
async def dask_setup(
    scheduler: Any,
    tenants: tuple[str, ...] = (),
    oxigdal_queues: str | None = None,
    oxigdal_default_queue: str | None = None,
    oxigdal_strict: bool | None = None,
) -> None:
    """Install the extension on ``scheduler`` (idempotent).

    Parameters
    ----------
    scheduler : distributed.Scheduler
        The scheduler being started.
    tenants, oxigdal_queues, oxigdal_default_queue, oxigdal_strict
        The preload's click options; unset ones are read from config.
    """
    plugin = OxigdalScheduling(
        tenants=parse_tenant_options(tenants) or None,
        queues=[q.strip() for q in oxigdal_queues.split(",")] if oxigdal_queues else None,
        default_queue=oxigdal_default_queue,
        strict=oxigdal_strict,
    )
    await scheduler.register_scheduler_plugin(plugin, name=NAME, idempotent=True)
