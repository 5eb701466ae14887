"""Coordinator settings, pysyncobj configuration, security checks and the node runner.

``python -m dask_oxigdal.coordination --self HOST:PORT --partner HOST:PORT
... --data-dir DIR`` runs one voting node in the foreground until SIGTERM or
SIGINT (``dask oxigdal coordinator`` is the same command). The tests spawn it
with ``subprocess`` and stop it by pid.

Its parts: :mod:`~dask_oxigdal.coordination.settings` (the settings and the
group secret), :mod:`~dask_oxigdal.coordination.addresses` (bind addresses and
the embedded group's recorded address); this module builds the pysyncobj
configuration, starts and stops a node and runs the command line. Their names
are importable from here too.

Security (docs/security.md): a node binds to its own configured address only
(the embedded single-node group to 127.0.0.1), and a group secret is always
required: pysyncobj unpickles what reaches its port unless the traffic is
authenticated with a password. The secret comes from a file of mode 0600
(``oxigdal.coordinator.password-file`` or ``--password-file``, whose *path*
is configuration), from ``$OXIGDAL_COORDINATOR_PASSWORD`` in the node's or the
scheduler's environment, or, for the embedded single-node group, from a random
secret generated once per data directory (:data:`SECRET_FILE`). Never from the
dask config: nannies copy it to every worker, where any task can read it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from dask_oxigdal.coordination import journal as _journal
from dask_oxigdal.coordination._pysyncobj import SyncObjConf

# ADDRESS_FILE, LEGACY_PASSWORD_ENV, MODES, free_port, is_loopback, port_is_free:
# defined here before the split: re-exported from settings and addresses
from dask_oxigdal.coordination.addresses import (  # noqa: F401
    ADDRESS_FILE,
    _record_address,
    embedded_address,
    free_port,
    is_loopback,
    port_is_free,
    recorded_addresses,
)
from dask_oxigdal.coordination.settings import (  # noqa: F401
    LEGACY_PASSWORD_ENV,
    MODES,
    PASSWORD_ENV,
    SECRET_FILE,
    CoordinatorSettings,
    _address,
    _environment_secret,
    embedded_secret,
    read_password_file,
)
from dask_oxigdal.exceptions import ConfigError

__all__ = [
    "PASSWORD_ENV",
    "SECRET_FILE",
    "CoordinatorSettings",
    "embedded_address",
    "embedded_secret",
    "is_loopback",
    "make_conf",
    "node_files",
    "port_is_free",
    "read_password_file",
    "recorded_addresses",
    "run_node",
    "start_state",
    "stop_state",
]


def node_files(data_dir: str, name: str) -> tuple[str, str]:
    """The journal and dump paths of node ``name`` under ``data_dir`` (created, mode 0700)."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    safe = name.replace(":", "_").replace("/", "_")
    return os.path.join(data_dir, f"{safe}.journal"), os.path.join(data_dir, f"{safe}.dump")


def make_conf(
    settings: CoordinatorSettings,
    *,
    journal: str | None,
    dump: str | None,
    on_state_changed: Any = None,
    self_address: str | None = None,
) -> SyncObjConf:
    """The pysyncobj configuration for ``settings`` (secret, bind address, HMAC'd journal, timeouts).

    A voting node binds to its own configured address (``self``; pysyncobj's
    default would be every interface). An observer binds nothing.

    Parameters
    ----------
    settings : CoordinatorSettings
        With its ``password`` resolved (see :func:`start_state`).
    journal, dump : str or None
        Files (``None``: in memory, for observers).
    on_state_changed : callable, optional
        ``f(old, new)`` on Raft role changes (pysyncobj's thread).
    self_address : str, optional
        This voting node's ``HOST:PORT`` (default ``settings.self_address``): the
        address it binds to.

    Returns
    -------
    pysyncobj.SyncObjConf

    Raises
    ------
    ConfigError
        No secret.
    """
    if not settings.password:
        raise ConfigError(
            "the coordinator needs a secret: set oxigdal.coordinator.password-file or "
            f"${PASSWORD_ENV} (pysyncobj without a password unpickles whatever reaches its port)"
        )
    key = _journal.derive_key(settings.password)
    conf = SyncObjConf(
        password=settings.password,
        # pysyncobj binds 0.0.0.0 unless told otherwise
        bindAddress=self_address or settings.self_address,
        appendEntriesPeriod=settings.heartbeat,
        raftMinTimeout=settings.election_timeout_min,
        raftMaxTimeout=settings.election_timeout_max,
        connectionTimeout=max(3.5, settings.election_timeout_max),
        connectionRetryTime=max(0.5, settings.election_timeout_min),
        # a leader that lost the majority steps down after this long
        leaderFallbackTimeout=max(2 * settings.election_timeout_max, 1.0),
        appendEntriesUseBatch=False,
        # a command sent while there is no leader fails at once (MISSING_LEADER) instead
        # of waiting in pysyncobj's queue: the callers resend it themselves (same request
        # ids, applied once by the state machine), and two retry mechanisms would pile up
        # copies of every batch in that queue during an outage
        commandsWaitLeader=False,
        journalFile=(
            _journal.checksummed_path(journal, key=key, fsync=settings.fsync) if journal else None
        ),
        fullDumpFile=dump,
        dynamicMembershipChange=settings.dynamic_membership,
        logCompactionMinEntries=settings.log_compaction_entries,
        onStateChanged=on_state_changed,
        bindRetryTime=0.2,
        maxBindRetries=50,
        # the dump is written by our serializer, in the tick thread (no fork)
        useFork=False,
    )
    conf.validate()
    return conf


def start_state(settings: CoordinatorSettings, self_address: str | None, **conf_kwargs: Any) -> Any:
    """Verify the node's files and start an :class:`~.state.OxigdalState` (blocks briefly).

    A node without partners (the embedded single-node group) records its
    address in ``data_dir`` (:data:`ADDRESS_FILE`); when it restarts on another
    address, the addresses it had before are rewritten to the new one in the
    member list loaded from its dump, so it elects itself again.

    Parameters
    ----------
    settings : CoordinatorSettings
    self_address : str or None
        ``HOST:PORT`` of this voting node, or ``None`` for an observer.
    **conf_kwargs
        Passed to :func:`make_conf` (``on_state_changed``).

    Returns
    -------
    dask_oxigdal.coordination.state.OxigdalState
        The started node (pysyncobj runs it on its own thread).

    Raises
    ------
    dask_oxigdal.coordination.journal.CorruptJournalError
        The journal, its metadata or the dump is corrupt, truncated, rewritten (HMAC)
        or in the earlier pickle format.
    ConfigError
        No secret for a group member or an observer; a secret file others can read.
    """
    import dataclasses

    from dask_oxigdal.coordination.state import OxigdalState

    journal = dump = None
    aliases: list[str] = []
    if settings.password is None:
        if self_address is None or settings.partners:
            raise ConfigError(
                "the coordinator group needs its secret: set oxigdal.coordinator.password-file "
                f"or ${PASSWORD_ENV}"
            )
        # the embedded single-node group: a secret generated once for its data dir
        settings = dataclasses.replace(settings, password=embedded_secret(settings.data_dir))
    key = _journal.derive_key(settings.password)
    if self_address is not None:
        name = self_address if settings.partners else "embedded"
        journal, dump = node_files(settings.data_dir, name)
        _journal.verify_data_dir(journal, dump, key=key)
        if not settings.partners:
            # a single-node group: the addresses this node had before are itself
            history = recorded_addresses(settings.data_dir)
            aliases = [a for a in history if a != self_address]
            _record_address(settings.data_dir, self_address, history)
    else:
        # an observer keeps no journal, but a snapshot sent by the leader arrives in
        # our checksummed dump format: give it a private scratch file to land in
        import tempfile

        dump = os.path.join(tempfile.mkdtemp(prefix="oxigdal-observer-"), "observer.dump")
    conf = make_conf(settings, journal=journal, dump=dump, self_address=self_address, **conf_kwargs)
    node = OxigdalState(
        self_address,
        [p for p in settings.partners if p != self_address],
        conf,
        dedupe_window=settings.dedupe_window,
        audit_max=settings.audit_max,
        self_aliases=aliases,
    )
    node.scratch_dir = os.path.dirname(dump) if self_address is None else None
    return node


def stop_state(node: Any) -> None:
    """Stop a node started by :func:`start_state` (waits for its thread; removes scratch files)."""
    import shutil

    node.destroy_synchronous()
    if getattr(node, "scratch_dir", None):
        shutil.rmtree(node.scratch_dir, ignore_errors=True)


def run_node(
    settings: CoordinatorSettings, *, ready_file: str | None = None, state_file: str | None = None
) -> int:
    """Run one voting node until SIGTERM/SIGINT.

    Parameters
    ----------
    settings : CoordinatorSettings
        ``self_address`` is required.
    ready_file : str, optional
        Written (``"ok"``) once the node is bound, for scripts and tests.
    state_file : str, optional
        On SIGUSR1 the node writes its replica and Raft position there (JSON).

    Returns
    -------
    int
        Exit status.
    """
    if settings.self_address is None:
        raise ConfigError("a coordinator node needs --self HOST:PORT")
    node = start_state(settings, settings.self_address)
    stop = threading.Event()
    dump_requested = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    def _dump(signum: int, frame: Any) -> None:
        dump_requested.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if state_file:
        signal.signal(signal.SIGUSR1, _dump)
    if ready_file:
        with open(ready_file, "w") as f:
            f.write("ok")
    try:
        while not stop.wait(0.05):
            if dump_requested.is_set():
                dump_requested.clear()
                _write_state(node, state_file)
    finally:
        # synchronous: the journal's metadata is written before the process exits
        stop_state(node)
    return 0


def _write_state(node: Any, path: str) -> None:
    """Write the node's replica and Raft position as JSON (on SIGUSR1, for checks)."""
    import json

    view = node.view()
    out = {
        "applied": node.raftLastApplied,
        "commit_index": node.raftCommitIndex,
        "term": node.raftCurrentTerm,
        "leader": str(node._getLeader()) if node._getLeader() is not None else None,
        "is_leader": node._isLeader(),
        "state": view,
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, sort_keys=True)
    os.replace(tmp, path)


def _read_password(argument: str | None, path: str | None) -> str | None:
    """The group secret: ``--password-file`` (a 0600 file, or ``-`` for stdin), else the environment.

    ``--password`` still works but is visible in ``ps``: a warning says so.
    ``None`` when none is given (a single-node group then generates its own).
    """
    if argument:
        print(
            f"warning: --password is visible to every user in ps; use ${PASSWORD_ENV} "
            "or --password-file",
            file=sys.stderr,
        )
        return argument
    if path:
        if path == "-":
            line = sys.stdin.readline().rstrip("\r\n")
            if not line:
                raise ConfigError(
                    "--password-file=-: the first line of stdin (the secret) is empty"
                )
            return line
        return read_password_file(path, name="--password-file")
    return _environment_secret()


_INSECURE_REMOVED = (
    "--insecure is no longer supported: a coordinator group always needs a secret (without "
    "one pysyncobj unpickles whatever reaches its port: remote code execution)"
)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m dask_oxigdal.coordination``).

    The group secret comes from ``--password-file`` (a file of mode 0600, or ``-``
    for stdin) or ``$OXIGDAL_COORDINATOR_PASSWORD``, so it never shows in ``ps``;
    a node without partners generates one in its data directory.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0, or 2 on a configuration error or a corrupt journal.
    """
    p = argparse.ArgumentParser(prog="python -m dask_oxigdal.coordination")
    p.add_argument("--self", dest="self_address", required=True)
    p.add_argument("--partner", dest="partners", action="append", default=[])
    p.add_argument("--data-dir", required=True)
    p.add_argument(
        "--password",
        default=None,
        help=f"group password; visible to every user in ps: prefer ${PASSWORD_ENV} "
        "or --password-file",
    )
    p.add_argument(
        "--password-file",
        default=None,
        help="read the group secret from this file, mode 0600 ('-': the first line of stdin)",
    )
    p.add_argument("--insecure", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ready-file", default=None)
    p.add_argument("--state-file", default=None)
    p.add_argument("--election-timeout-min", default=None)
    p.add_argument("--election-timeout-max", default=None)
    p.add_argument("--heartbeat", default=None)
    p.add_argument("--log-compaction-entries", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        if args.insecure:
            raise ConfigError(_INSECURE_REMOVED)
        password = _read_password(args.password, args.password_file)
        settings = CoordinatorSettings.from_config(
            self=args.self_address,
            partners=args.partners,
            data_dir=args.data_dir,
            password=password,
            election_timeout_min=args.election_timeout_min,
            election_timeout_max=args.election_timeout_max,
            heartbeat=args.heartbeat,
        )
        if args.log_compaction_entries:
            settings.log_compaction_entries = args.log_compaction_entries
        return run_node(settings, ready_file=args.ready_file, state_file=args.state_file)
    except (ConfigError, _journal.CorruptJournalError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
