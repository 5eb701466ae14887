"""Coordinator settings, pysyncobj configuration, security checks and the node runner.

``python -m dask_oxigdal.coordination --self HOST:PORT --partner HOST:PORT
... --data-dir DIR`` runs one voting node in the foreground until SIGTERM or
SIGINT (``dask oxigdal coordinator`` is the same command). The tests spawn it
with ``subprocess`` and stop it by pid.

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
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from dask.utils import parse_timedelta

from dask_oxigdal._secrets import read_secret_file
from dask_oxigdal.coordination import journal as _journal
from dask_oxigdal.coordination._pysyncobj import SyncObjConf
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

logger = logging.getLogger(__name__)

MODES = ("embedded", "observer")

#: environment variable a node or scheduler process reads its group secret from (never
#: argv: the command line of a process is visible to every user in ``ps``). Not
#: ``DASK_*``: dask loads every ``DASK_*`` variable into its config, which nannies copy
#: to the workers.
PASSWORD_ENV = "OXIGDAL_COORDINATOR_PASSWORD"
#: the earlier name, refused (dask.config loads it as ``oxigdal_coordinator_password``)
LEGACY_PASSWORD_ENV = "DASK_OXIGDAL_COORDINATOR_PASSWORD"
#: file in ``data-dir`` holding the embedded single-node group's generated secret (0600)
SECRET_FILE = "coordinator.secret"

#: file in ``data-dir`` recording the embedded single-node group's address
#: (current first, then the addresses it had before)
ADDRESS_FILE = "embedded.address"
_ADDRESS_HISTORY = 32


def _address(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}={value!r}: expected HOST:PORT")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}={value!r}: expected HOST:PORT with a port in 1..65535")
    return value


def is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` names a loopback host (``localhost``, 127.0.0.0/8, ``::1``).

    Parameters
    ----------
    address : str

    Returns
    -------
    bool
    """
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(address: str) -> bool:
    """Whether ``HOST:PORT`` can be bound now (with ``SO_REUSEADDR``, as pysyncobj binds).

    Parameters
    ----------
    address : str

    Returns
    -------
    bool
    """
    host, _, port = address.rpartition(":")
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host.strip("[]"), int(port)))
    except (OSError, ValueError):
        return False
    return True


def recorded_addresses(data_dir: str) -> list[str]:
    """Addresses recorded for the embedded single-node group in ``data_dir`` (latest first).

    Parameters
    ----------
    data_dir : str

    Returns
    -------
    list of str
        Empty when none is recorded (a new data directory) or the file is unreadable.
    """
    path = os.path.join(data_dir, ADDRESS_FILE)
    try:
        with open(path) as f:
            data = json.load(f)
        out = [data["address"], *data.get("previous", [])]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("dask-oxigdal coordinator: ignoring unreadable %s: %s", path, e)
        return []
    return [a for a in out if isinstance(a, str)]


def _record_address(data_dir: str, address: str, history: list[str]) -> None:
    previous = [a for a in history if a != address][:_ADDRESS_HISTORY]
    body = json.dumps({"address": address, "previous": previous}).encode()
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    _journal._write_atomic(os.path.join(data_dir, ADDRESS_FILE), body, fsync=False)


def embedded_address(data_dir: str) -> str:
    """The address of the embedded single-node group: the recorded one if its port is free.

    The address a node had is recorded in its dump (pysyncobj keeps the member
    list there), so a restart reuses it. When that port is taken by another
    process, a new free port on 127.0.0.1 is used and a warning is logged;
    :func:`start_state` then rewrites the dump's member list to the new address.

    Parameters
    ----------
    data_dir : str
        The coordinator's data directory.

    Returns
    -------
    str
        ``127.0.0.1:PORT``.
    """
    history = recorded_addresses(data_dir)
    if history:
        if port_is_free(history[0]):
            return history[0]
        address = f"127.0.0.1:{free_port()}"
        logger.warning(
            "dask-oxigdal coordinator: the recorded address %s of the embedded coordinator is "
            "in use by another process; using %s instead (the recorded state is kept: the "
            "member list of its dump is rewritten to the new address)",
            history[0],
            address,
        )
        return address
    return f"127.0.0.1:{free_port()}"


def read_password_file(path: str, *, name: str = "oxigdal.coordinator.password-file") -> str:
    """The secret in ``path`` (its first line), refusing a file others can read.

    Parameters
    ----------
    path : str
        A regular file of mode 0600 or 0400 (no group or world permission bits).
    name : str
        The setting or option that named it, for error messages.

    Returns
    -------
    str

    Raises
    ------
    ConfigError
        Missing or unreadable file, group/world permissions, or an empty first line.
    """
    data = read_secret_file(
        path,
        name=name,
        why=" (the secret guards the coordinator's port against remote code execution)",
    )
    line = data.decode().splitlines()[0].rstrip("\r\n") if data else ""
    if not line:
        raise ConfigError(f"{name}={path!r}: the first line (the secret) is empty")
    return line


def embedded_secret(data_dir: str) -> str:
    """The embedded single-node group's secret: generated once per data directory.

    A random 256-bit secret is written to ``data_dir/`` :data:`SECRET_FILE`
    (mode 0600, the directory 0700) the first time, and read from there after.

    Parameters
    ----------
    data_dir : str

    Returns
    -------
    str

    Raises
    ------
    ConfigError
        The file exists with group/world permissions, or is empty.
    """
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    path = os.path.join(data_dir, SECRET_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secrets.token_urlsafe(32).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    return read_password_file(path, name=f"the embedded coordinator's secret file {path}")


def _environment_secret() -> str | None:
    if os.environ.get(LEGACY_PASSWORD_ENV):
        raise ConfigError(
            f"${LEGACY_PASSWORD_ENV} is set: dask loads every DASK_* variable into its config "
            "(as oxigdal_coordinator_password), and nannies copy that config to every worker. "
            f"Rename it to ${PASSWORD_ENV}, set only in the coordinator node's or the "
            "scheduler's environment, or use oxigdal.coordinator.password-file"
        )
    return os.environ.get(PASSWORD_ENV) or None


@dataclass
class CoordinatorSettings:
    """Validated ``oxigdal.coordinator.*`` settings.

    Build it with :meth:`from_config`; the fields mirror the config keys.
    """

    mode: str = "embedded"
    self_address: str | None = None
    partners: list[str] = field(default_factory=list)
    data_dir: str = "oxigdal-coordinator"
    #: the group secret (never from the dask config); ``None`` with
    #: ``password_source == "generated"`` until :func:`start_state` reads the data dir
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    #: where the secret comes from: ``argument``, ``file``, ``environment`` or ``generated``
    password_source: str = "generated"
    fsync: bool = True
    heartbeat: float = 0.1
    election_timeout_min: float = 0.4
    election_timeout_max: float = 1.0
    queue_size: int = 10_000
    batch_size: int = 1_000
    commit_timeout: float = 5.0
    start_timeout: float = 30.0
    dedupe_window: int = 100_000
    audit_max: int = 10_000
    dynamic_membership: bool = True
    #: pysyncobj compacts its log into the dump after this many entries (not a config
    #: key: tests lower it to exercise the dump)
    log_compaction_entries: int = 5000

    @classmethod
    def from_config(cls, *, password: str | None = None, **overrides: Any) -> CoordinatorSettings:
        """Read ``oxigdal.coordinator.*`` (``overrides`` win when not ``None``).

        Parameters
        ----------
        password : str, optional
            The group secret, given by the caller (Python API or the node's command
            line reading a file, stdin or its environment). Otherwise it comes from
            ``password-file``, then ``$OXIGDAL_COORDINATOR_PASSWORD``, then (the
            embedded single-node group only) the secret generated in ``data-dir``.
        **overrides
            Settings by name (``self``, ``partners``, ``data_dir``, ``password_file``, ...).

        Raises
        ------
        ConfigError
            A value out of range, naming it and the valid choices; a secret in the
            dask config (``oxigdal.coordinator.password``) or ``insecure`` set; no
            secret for a group member or an observer.
        """
        import dask

        from dask_oxigdal import config as _config

        # the shipped defaults, then dask config (which tests may have reset)
        cfg = dict(_config.load_defaults()["oxigdal"]["coordinator"])
        for k, v in (dask.config.get("oxigdal.coordinator", default={}) or {}).items():
            cfg[str(k).replace("_", "-")] = v
        if cfg.get("password") is not None:
            raise ConfigError(
                "oxigdal.coordinator.password is not accepted: the dask config is copied to "
                "every worker (nannies pass it on), where any task can read it. Put the secret "
                "in a file of mode 0600 and set oxigdal.coordinator.password-file to its path, "
                f"or set ${PASSWORD_ENV} in the scheduler's environment only"
            )
        if cfg.get("insecure"):
            raise ConfigError(
                "oxigdal.coordinator.insecure is no longer supported: a coordinator group "
                "always needs a secret (without one pysyncobj unpickles whatever reaches its "
                "port: remote code execution). Remove the setting; the embedded coordinator "
                "generates its own secret"
            )
        for k, v in overrides.items():
            if v is not None:
                cfg[k.replace("_", "-")] = v

        def get(key: str) -> Any:
            return cfg.get(key)

        mode = get("mode") or "embedded"
        if mode not in MODES:
            raise ConfigError(
                f"oxigdal.coordinator.mode={mode!r} is not valid; valid modes: {', '.join(MODES)}"
            )
        self_address = get("self")
        if self_address is not None:
            self_address = _address("oxigdal.coordinator.self", self_address)
        partners = get("partners") or []
        if isinstance(partners, str):
            partners = [p for p in partners.split(",") if p]
        partners = [_address("oxigdal.coordinator.partners", p) for p in partners]
        if mode == "observer" and not partners:
            raise ConfigError(
                "oxigdal.coordinator.mode='observer' needs oxigdal.coordinator.partners "
                "(the HOST:PORT of the group's nodes)"
            )
        if mode == "embedded" and partners and self_address is None:
            raise ConfigError(
                "oxigdal.coordinator.partners is set: give oxigdal.coordinator.self "
                "(this node's HOST:PORT, as the partners know it)"
            )

        def seconds(key: str) -> float:
            value = parse_timedelta(get(key))
            if value is None or not value > 0:
                raise ConfigError(f"oxigdal.coordinator.{key}={get(key)!r} must be > 0")
            return float(value)

        def count(key: str) -> int:
            value = get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"oxigdal.coordinator.{key}={value!r} must be an integer >= 1")
            return value

        password_file = get("password-file")
        if password_file is not None and (not isinstance(password_file, str) or not password_file):
            raise ConfigError(
                f"oxigdal.coordinator.password-file={password_file!r}: expected the path of a "
                "file of mode 0600 holding the secret, or null"
            )
        source = "generated"
        if password:
            source = "argument"
        elif password_file:
            password, source = read_password_file(os.path.expanduser(password_file)), "file"
        else:
            password = _environment_secret()
            if password:
                source = "environment"
        if password is None and (mode == "observer" or partners):
            raise ConfigError(
                f"the coordinator group of {', '.join(partners)} needs its secret (the same on "
                "every node): set oxigdal.coordinator.password-file to a file of mode 0600 "
                f"holding it, or ${PASSWORD_ENV} in this process's environment"
            )
        s = cls(
            mode=mode,
            self_address=self_address,
            partners=partners,
            data_dir=str(get("data-dir") or "oxigdal-coordinator"),
            password=password,
            password_file=password_file,
            password_source=source,
            fsync=bool(get("fsync")),
            heartbeat=seconds("heartbeat"),
            election_timeout_min=seconds("election-timeout-min"),
            election_timeout_max=seconds("election-timeout-max"),
            queue_size=count("queue-size"),
            batch_size=count("batch-size"),
            commit_timeout=seconds("commit-timeout"),
            start_timeout=seconds("start-timeout"),
            dedupe_window=count("dedupe-window"),
            audit_max=count("audit-max"),
        )
        s.validate()
        return s

    def validate(self) -> None:
        """Check the timeouts' relations (pysyncobj asserts them)."""
        if not self.election_timeout_min > 3 * self.heartbeat:
            raise ConfigError(
                f"oxigdal.coordinator.election-timeout-min={self.election_timeout_min}s must be "
                f"more than 3 x heartbeat ({self.heartbeat}s)"
            )
        if not self.election_timeout_max > self.election_timeout_min:
            raise ConfigError(
                f"oxigdal.coordinator.election-timeout-max={self.election_timeout_max}s must be "
                f"more than election-timeout-min ({self.election_timeout_min}s)"
            )


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
