"""``dask oxigdal ...``: a click group registered on dask's ``dask_cli`` entry point."""

from __future__ import annotations

import json
import sys

import click

from dask_oxigdal._version import __version__


@click.group(name="oxigdal", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="dask-oxigdal")
def oxigdal() -> None:
    """Multi-tenant geospatial processing on Dask (dask-oxigdal)."""


@oxigdal.command()
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes.")
@click.option(
    "--threads-per-worker", type=click.IntRange(min=1), default=None, help="Threads per worker."
)
@click.option("--size", type=click.IntRange(min=16), default=None, help="Scene width/height (px).")
@click.option("--tiles", type=click.IntRange(min=1), default=None, help="Tiles per side.")
@click.option("--seed", type=int, default=None, help="Seed of the synthetic scene.")
@click.option(
    "--scheduler",
    "scheduler_address",
    default=None,
    metavar="ADDRESS",
    help="Run against an existing scheduler instead of an embedded LocalCluster.",
)
@click.option(
    "--deadline", default=None, metavar="DURATION", help="Deadline of the NDVI job, e.g. 90s."
)
@click.option(
    "--kill-worker/--no-kill-worker",
    default=None,
    help="Kill one worker process mid-run to show recovery (oxigdal.demo.kill-worker).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option(
    "--keep-alive", is_flag=True, help="Leave the embedded cluster up until Ctrl-C, to explore."
)
def demo(
    workers: int | None,
    threads_per_worker: int | None,
    size: int | None,
    tiles: int | None,
    seed: int | None,
    scheduler_address: str | None,
    deadline: str | None,
    kill_worker: bool | None,
    as_json: bool,
    keep_alive: bool,
) -> None:
    """The multi-tenant demo: NDVI tiles, a vector job, a gang and a killed worker."""
    from dask_oxigdal.demo import format_summary, run_demo

    summary = run_demo(
        workers=workers,
        threads_per_worker=threads_per_worker,
        size=size,
        tiles=tiles,
        seed=seed,
        deadline=deadline,
        kill_worker=kill_worker,
        scheduler_address=scheduler_address,
        progress_stream=sys.stderr if as_json else sys.stdout,
        keep_alive=keep_alive,
    )
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    elif not (keep_alive and not scheduler_address):  # --keep-alive printed it already
        click.echo(format_summary(summary))


@oxigdal.command(name="config-reference")
def config_reference() -> None:
    """Print the markdown reference of every oxigdal.* setting (docs/configuration.md)."""
    from dask_oxigdal.config import render_reference

    click.echo(render_reference(), nl=False)
