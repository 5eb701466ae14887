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


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Validate a ``--deadline`` such as ``90s``, ``10min`` or ``2h`` (click callback)."""
    if value is None:
        return None
    from dask_oxigdal.demo import parse_demo_deadline

    try:
        parse_demo_deadline(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    return value


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
    "--deadline",
    default=None,
    metavar="DURATION",
    callback=_duration,
    help="Deadline of each quick-look job, e.g. 4s.",
)
@click.option(
    "--kill-worker/--no-kill-worker",
    default=None,
    help="Kill one worker process mid-run to show recovery (oxigdal.demo.kill-worker; "
    "off by default with --scheduler).",
)
@click.option("--quick", is_flag=True, help="Run only the dask-oxigdal half (no plain Dask run).")
@click.option(
    "--report-dir",
    default=None,
    metavar="DIR",
    help="Where demo.png and demo.html are written (default: ./oxigdal-demo).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option(
    "--keep-alive", is_flag=True, help="Leave the embedded cluster up until Ctrl-C, to explore."
)
@click.option(
    "--secure",
    is_flag=True,
    help="Mutual TLS with throw-away certificates, oxigdal.auth on and one principal per "
    "tenant; the summary shows who ran what (docs/security.md).",
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
    quick: bool,
    report_dir: str | None,
    as_json: bool,
    keep_alive: bool,
    secure: bool,
) -> None:
    """The same multi-tenant day on plain Dask and with dask-oxigdal, side by side.

    Three tenants (NDVI tiles with deadlines, a vector job, research gangs),
    a killed worker and a straggler; prints the comparison and writes a PNG
    and an HTML report.
    """
    from dask_oxigdal import config
    from dask_oxigdal.demo import format_summary, run_demo

    scene = config.get("demo.scene-size", size)
    per_side = config.get("demo.tiles", tiles)
    if per_side > scene:
        raise click.BadParameter(
            f"{per_side} tiles per side do not fit a {scene}x{scene} scene: "
            f"choose --tiles between 1 and {scene}, or a larger --size",
            param_hint="--tiles",
        )
    if secure and scheduler_address:
        raise click.BadParameter(
            "--secure starts its own TLS clusters; leave out --scheduler", param_hint="--secure"
        )
    summary = run_demo(
        workers=workers,
        threads_per_worker=threads_per_worker,
        size=size,
        tiles=tiles,
        seed=seed,
        deadline=deadline,
        kill_worker=kill_worker,
        scheduler_address=scheduler_address,
        quick=quick,
        report_dir=report_dir,
        progress_stream=sys.stderr if as_json else sys.stdout,
        keep_alive=keep_alive,
        secure=secure,
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


def _password_warning(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Warn when the group password was given on the command line (click callback)."""
    from click.core import ParameterSource

    if value is not None and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
        click.echo(
            "warning: --password on the command line is visible to every local user "
            "(ps, /proc); use --password-file or set $OXIGDAL_COORDINATOR_PASSWORD instead",
            err=True,
        )
    return value


@oxigdal.command()
@click.option("--self", "self_address", required=True, metavar="HOST:PORT", help="This node.")
@click.option(
    "--partner",
    "partners",
    multiple=True,
    metavar="HOST:PORT",
    help="Another voting node of the group (repeat for each).",
)
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Journal and dump directory (created with mode 0700).",
)
@click.option(
    "--password",
    default=None,
    envvar="OXIGDAL_COORDINATOR_PASSWORD",
    callback=_password_warning,
    help="Group secret (the same on every node); prefer --password-file or "
    "$OXIGDAL_COORDINATOR_PASSWORD: the command line is visible in ps.",
)
@click.option(
    "--password-file",
    default=None,
    metavar="PATH",
    help="Read the group secret from the first line of this file (mode 0600; '-': stdin). "
    "A node without --partner generates a secret in --data-dir when none is given.",
)
@click.option("--insecure", is_flag=True, default=None, hidden=True)
@click.option("--ready-file", default=None, hidden=True)
@click.option("--state-file", default=None, hidden=True)
def coordinator(
    self_address: str,
    partners: tuple[str, ...],
    data_dir: str,
    password: str | None,
    password_file: str | None,
    insecure: bool | None,
    ready_file: str | None,
    state_file: str | None,
) -> None:
    """Run one voting node of a coordinator group (replicated policy state) until SIGTERM."""
    from dask_oxigdal.coordination.journal import CorruptJournalError
    from dask_oxigdal.coordination.node import (
        _INSECURE_REMOVED,
        CoordinatorSettings,
        _read_password,
        run_node,
    )
    from dask_oxigdal.exceptions import ConfigError

    try:
        if insecure:
            raise ConfigError(_INSECURE_REMOVED)
        if password is None or password_file:
            # --password-file wins over the environment (click already read $OXIGDAL_...)
            password = _read_password(None, password_file)
        settings = CoordinatorSettings.from_config(
            self=self_address,
            partners=list(partners),
            data_dir=data_dir,
            password=password,
        )
        sys.exit(run_node(settings, ready_file=ready_file, state_file=state_file))
    except (ConfigError, CorruptJournalError) as e:
        raise click.ClickException(str(e)) from e


@oxigdal.command()
@click.argument("action", type=click.Choice(["add", "remove", "status"]))
@click.argument("node", required=False, metavar="[HOST:PORT]")
@click.option(
    "--connect",
    required=True,
    metavar="HOST:PORT",
    help="A running node of the group (the leader forwards nothing: any member works).",
)
@click.option(
    "--password",
    default=None,
    envvar="OXIGDAL_COORDINATOR_PASSWORD",
    callback=_password_warning,
    help="Group secret; prefer --password-file or $OXIGDAL_COORDINATOR_PASSWORD.",
)
@click.option(
    "--password-file",
    default=None,
    metavar="PATH",
    help="Read the group secret from the first line of this file (mode 0600; '-': stdin).",
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds.")
def membership(
    action: str,
    node: str | None,
    connect: str,
    password: str | None,
    password_file: str | None,
    timeout: float,
) -> None:
    """Add or remove ONE coordinator node, or print a node's Raft status.

    Add: start the new node first, with every current member as --partner,
    then run ``membership add NEW --connect MEMBER``. Remove: run
    ``membership remove OLD --connect MEMBER``, then stop the old node.
    Change one node at a time and wait for each change to finish.
    """
    from dask_oxigdal.coordination._pysyncobj import TcpUtility, UtilityException

    if action != "status" and not node:
        raise click.UsageError(f"membership {action} needs the node's HOST:PORT")
    for value in (connect, node):
        if value is not None:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise click.BadParameter(f"{value!r}: expected HOST:PORT")
    message = ["status"] if action == "status" else [action, node]
    from dask_oxigdal.coordination.node import _read_password
    from dask_oxigdal.exceptions import ConfigError

    try:
        if password is None or password_file:
            password = _read_password(None, password_file)
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    if not password:
        raise click.UsageError(
            "membership needs the group's secret: --password-file PATH or "
            "$OXIGDAL_COORDINATOR_PASSWORD"
        )
    try:
        result = TcpUtility(password, timeout=timeout).executeCommand(connect, message)
    except UtilityException as e:
        raise click.ClickException(f"membership {action} via {connect}: {e}") from e
    if isinstance(result, dict):
        click.echo(
            json.dumps({str(k): str(v) for k, v in result.items()}, indent=2, sort_keys=True)
        )
    else:
        click.echo(str(result))
        if action != "status" and not str(result).startswith("SUCCESS"):
            raise click.ClickException(f"membership {action} {node}: {result}")


# -- workflow (issue 17): durable workflows ------------------------------------------
# (kept in its own block: other commands are added above by other changes)


@oxigdal.group(name="workflow")
def workflow_group() -> None:
    """Durable workflows: list, status, resume, cancel (see docs/workflows.md)."""


_SCHEDULER = click.option(
    "--scheduler",
    "scheduler_address",
    required=True,
    metavar="ADDRESS",
    help="Scheduler address, e.g. tcp://127.0.0.1:8786.",
)
_STORE = click.option(
    "--store",
    default=None,
    metavar="URL",
    help="Base path or fsspec URL of the records (default: oxigdal.checkpoint.store).",
)


def _workflow_call(scheduler_address: str, fn: object) -> object:
    from distributed import Client

    from dask_oxigdal.workflows import WorkflowError

    try:
        with Client(scheduler_address, timeout="10s") as client:
            return fn(client)
    except (WorkflowError, OSError, TimeoutError) as e:
        raise click.ClickException(str(e)) from e


@workflow_group.command(name="list")
@_SCHEDULER
@_STORE
def workflow_list(scheduler_address: str, store: str | None) -> None:
    """Print every workflow with its state, as JSON lines."""
    from dask_oxigdal.workflows import workflows

    for w in _workflow_call(scheduler_address, lambda c: workflows(c, store=store)):
        click.echo(json.dumps(w, sort_keys=True, default=str))


@workflow_group.command(name="status")
@click.argument("workflow_id")
@_SCHEDULER
@_STORE
def workflow_status(workflow_id: str, scheduler_address: str, store: str | None) -> None:
    """Print one workflow's state as JSON."""
    from dask_oxigdal.workflows import WorkflowError, workflows

    def status(c: object) -> dict:
        for w in workflows(c, store=store):
            if w["id"] == workflow_id:
                return w
        raise WorkflowError(f"no workflow {workflow_id!r}")

    click.echo(json.dumps(_workflow_call(scheduler_address, status), sort_keys=True, default=str))


@workflow_group.command(name="resume")
@click.argument("workflow_id")
@_SCHEDULER
@_STORE
@click.option(
    "--wait/--no-wait",
    default=True,
    help="Wait for the result (default); --no-wait needs an on-cluster workflow.",
)
def workflow_resume(
    workflow_id: str, scheduler_address: str, store: str | None, wait: bool
) -> None:
    """Resume an interrupted workflow; print its result (repr) when it ends."""
    from dask_oxigdal.workflows import resume_workflow

    def resume(c: object) -> str:
        h = resume_workflow(c, workflow_id, store=store, on_cluster=None if wait else True)
        return repr(h.result()) if wait else f"resumed {workflow_id} on the cluster"

    click.echo(_workflow_call(scheduler_address, resume))


@workflow_group.command(name="cancel")
@click.argument("workflow_id")
@_SCHEDULER
@_STORE
def workflow_cancel(workflow_id: str, scheduler_address: str, store: str | None) -> None:
    """Cancel a workflow (its running steps are cancelled)."""
    from dask_oxigdal.workflows import WorkflowError, WorkflowHandle, _base_url, _check_id, _WStore

    def cancel(c: object) -> str:
        ws = _WStore(_base_url(store), None, _check_id(workflow_id))
        if ws.get("meta") is None:
            raise WorkflowError(f"no workflow {workflow_id!r}")
        WorkflowHandle(c, ws).cancel()
        return f"cancel requested for {workflow_id}"

    click.echo(_workflow_call(scheduler_address, cancel))


# -- end workflow ------------------------------------------------------------------------


@oxigdal.group()
def audit() -> None:
    """The tamper-evident audit log (oxigdal.auth.audit-log)."""


def _audit_key(path: str, key_file: str | None) -> bytes:
    import os

    from dask_oxigdal.auth.audit import AUDIT_KEY_ENV
    from dask_oxigdal.auth.identity import read_secret_file
    from dask_oxigdal.exceptions import ConfigError

    try:
        if key_file:
            return read_secret_file(key_file, name="--key-file").strip()
        if os.environ.get(AUDIT_KEY_ENV):
            return os.environ[AUDIT_KEY_ENV].encode()
        return read_secret_file(path + ".key", name="the audit key file").strip()
    except ConfigError as e:
        raise click.ClickException(
            f"{e} (give --key-file, ${AUDIT_KEY_ENV}, or keep PATH.key next to the log)"
        ) from None


@audit.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--key-file", default=None, metavar="PATH", help="The chain's key (0600 file).")
@click.option(
    "--anchor",
    default=None,
    metavar="HEXHEAD",
    help="A head recorded earlier (`dask oxigdal audit head`): detects a cut tail.",
)
@click.option("--anchor-file", default=None, metavar="PATH", help="Read the anchor from a file.")
def verify(path: str, key_file: str | None, anchor: str | None, anchor_file: str | None) -> None:
    """Check the HMAC hash chain of the audit log at PATH; exit 0 when it holds."""
    from dask_oxigdal.auth.audit import verify as _verify

    if anchor_file:
        with open(anchor_file, encoding="utf-8") as f:
            anchor = f.read().strip()
    result = _verify(path, _audit_key(path, key_file), anchor)
    for error in result.errors[:50]:
        click.echo(error, err=True)
    if len(result.errors) > 50:
        click.echo(f"... and {len(result.errors) - 50} more", err=True)
    click.echo(
        f"{path}: {result.entries} entries, head {result.head or '(empty)'}: "
        + ("OK" if result.ok else f"BROKEN ({len(result.errors)} problem(s))")
    )
    sys.exit(0 if result.ok else 1)


@audit.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--key-file", default=None, metavar="PATH", help="The chain's key (0600 file).")
def head(path: str, key_file: str | None) -> None:
    """Print the head of a valid chain (keep it elsewhere as the anchor for `verify`)."""
    from dask_oxigdal.auth.audit import verify as _verify

    result = _verify(path, _audit_key(path, key_file))
    if not result.ok:
        for error in result.errors[:50]:
            click.echo(error, err=True)
        sys.exit(1)
    click.echo(result.head)
