"""Scheduler preload: ``dask scheduler --preload dask_oxigdal.preload``.

Installs :class:`~dask_oxigdal.scheduling.extension.OxigdalScheduling` when
the scheduler starts. Options come from the scheduler's dask config
(``oxigdal.*``) or from the preload's own options, for example::

    dask scheduler --preload dask_oxigdal.preload \\
        --oxigdal-tenant team-a=2 --oxigdal-tenant team-b=1,max-tasks=100,guaranteed-slots=2 \\
        --oxigdal-strict

``--preload-argv`` passes the same options to ``distributed.Scheduler(preload=...)``.
"""

from __future__ import annotations

from typing import Any

import click

from dask_oxigdal.scheduling.extension import NAME, OxigdalScheduling

__all__ = ["dask_setup", "parse_tenant_options"]


#: Quota settings accepted after ``NAME=WEIGHT`` in ``--oxigdal-tenant``.
_TENANT_QUOTAS = ("max-tasks", "guaranteed-slots")


def parse_tenant_options(values: tuple[str, ...]) -> dict[str, Any]:
    """Parse ``NAME=WEIGHT[,max-tasks=N][,guaranteed-slots=G]`` options.

    Parameters
    ----------
    values : tuple of str
        ``("team-a=2", "team-b=1,max-tasks=100,guaranteed-slots=2")``.

    Returns
    -------
    dict
        ``{tenant: weight}`` for a bare weight, ``{tenant: {"weight": w,
        "max-tasks": n, "guaranteed-slots": g}}`` when quotas are given, e.g.
        ``{"team-a": 2.0, "team-b": {"weight": 1.0, "max-tasks": 100,
        "guaranteed-slots": 2}}``.

    Raises
    ------
    click.BadParameter
        A value without ``=``, a weight that is not a positive number, an
        unknown quota name (the message lists the valid ones) or a quota that
        is not a non-negative integer.
    """
    tenants: dict[str, Any] = {}
    for value in values:
        head, *quotas = value.split(",")
        name, sep, weight = head.partition("=")
        try:
            w = float(weight)
        except ValueError:
            w = float("nan")
        if not sep or not name or not w > 0 or w == float("inf"):
            raise click.BadParameter(
                f"{value!r}: expected NAME=WEIGHT[,max-tasks=N][,guaranteed-slots=G] with a "
                "positive weight, e.g. team-a=2 or team-b=1,max-tasks=100",
                param_hint="--oxigdal-tenant",
            )
        if not quotas:
            tenants[name] = w
            continue
        settings: dict[str, Any] = {"weight": w}
        for item in quotas:
            qname, qsep, qvalue = item.partition("=")
            qname = qname.strip().replace("_", "-")
            if qname not in _TENANT_QUOTAS or not qsep:
                raise click.BadParameter(
                    f"{value!r}: unknown tenant setting {item!r}; valid settings after "
                    f"NAME=WEIGHT: {', '.join(q + '=N' for q in _TENANT_QUOTAS)}",
                    param_hint="--oxigdal-tenant",
                )
            try:
                number = int(qvalue)
            except ValueError:
                number = -1
            if number < 0:
                raise click.BadParameter(
                    f"{value!r}: {qname}={qvalue!r} must be a non-negative integer",
                    param_hint="--oxigdal-tenant",
                )
            settings[qname] = number
        tenants[name] = settings
    return tenants


@click.command()
@click.option(
    "--oxigdal-tenant",
    "tenants",
    multiple=True,
    metavar="NAME=WEIGHT[,max-tasks=N][,guaranteed-slots=G]",
    help="Fair-share weight and optional quotas of a tenant (repeatable); adds to oxigdal.tenants.",
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
