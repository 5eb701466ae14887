"""Coordinator settings, pysyncobj configuration, security checks and the node runner.

``python -m dask_oxigdal.coordination --self HOST:PORT --partner HOST:PORT
... --data-dir DIR`` runs one voting node in the foreground until SIGTERM or
SIGINT (``dask oxigdal coordinator`` is the same command). The tests spawn it
with ``subprocess`` and stop it by pid. The group password is read from
``$DASK_OXIGDAL_COORDINATOR_PASSWORD`` or ``--password-file`` (never put it on
the command line: every user sees it in ``ps``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from dask.utils import parse_timedelta
from pysyncobj import SyncObjConf

from dask_oxigdal.coordination import journal as _journal
from dask_oxigdal.exceptions import ConfigError

__all__ = [
    "PASSWORD_ENV",
    "CoordinatorSettings",
    "check_security",
    "embedded_address",
    "is_loopback",
    "make_conf",
    "node_files",
    "port_is_free",
    "recorded_addresses",
    "run_node",
    "start_state",
    "stop_state",
]

logger = logging.getLogger(__name__)

MODES = ("embedded", "observer")

#: environment variable a node process reads its group password from (never argv:
#: the command line of a process is visible to every user in ``ps``)
PASSWORD_ENV = "DASK_OXIGDAL_COORDINATOR_PASSWORD"

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


@dataclass
class CoordinatorSettings:
    """Validated ``oxigdal.coordinator.*`` settings.

    Build it with :meth:`from_config`; the fields mirror the config keys.
    """

    mode: str = "embedded"
    self_address: str | None = None
    partners: list[str] = field(default_factory=list)
    data_dir: str = "oxigdal-coordinator"
    password: str | None = None
    insecure: bool = False
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
    def from_config(cls, **overrides: Any) -> CoordinatorSettings:
        """Read ``oxigdal.coordinator.*`` (``overrides`` win when not ``None``).

        Raises
        ------
        ConfigError
            A value out of range, naming it and the valid choices.
        """
        import dask

        from dask_oxigdal import config as _config

        # the shipped defaults, then dask config (which tests may have reset)
        cfg = dict(_config.load_defaults()["oxigdal"]["coordinator"])
        for k, v in (dask.config.get("oxigdal.coordinator", default={}) or {}).items():
            cfg[str(k).replace("_", "-")] = v
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

        s = cls(
            mode=mode,
            self_address=self_address,
            partners=partners,
            data_dir=str(get("data-dir") or "oxigdal-coordinator"),
            password=get("password") or None,
            insecure=bool(get("insecure")),
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
        """Check the timeouts' relations (pysyncobj asserts them) and the security rule."""
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
        check_security(
            [a for a in [self.self_address, *self.partners] if a], self.password, self.insecure
        )


def check_security(addresses: list[str], password: str | None, insecure: bool) -> None:
    """Refuse a password-less group that listens beyond loopback.

    Without a password pysyncobj unpickles whatever a peer sends: anyone who
    can reach the port can run code in the node's process.

    Parameters
    ----------
    addresses : list of str
        This node's and its partners' ``HOST:PORT``.
    password : str or None
    insecure : bool
        Explicit opt-out (``oxigdal.coordinator.insecure: true``).

    Raises
    ------
    ConfigError
        Non-loopback addresses without a password and without ``insecure``.
    """
    if password or insecure:
        return
    public = [a for a in addresses if not is_loopback(a)]
    if public:
        raise ConfigError(
            f"coordinator addresses {', '.join(public)} are not loopback and no password is set: "
            "without oxigdal.coordinator.password pysyncobj unpickles whatever a peer sends "
            "(remote code execution). Set a password, or set oxigdal.coordinator.insecure: true "
            "on an isolated network."
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
) -> SyncObjConf:
    """The pysyncobj configuration for ``settings`` (checksummed journal, tuned timeouts).

    Parameters
    ----------
    settings : CoordinatorSettings
    journal, dump : str or None
        Files (``None``: in memory, for observers).
    on_state_changed : callable, optional
        ``f(old, new)`` on Raft role changes (pysyncobj's thread).

    Returns
    -------
    pysyncobj.SyncObjConf
    """
    conf = SyncObjConf(
        password=settings.password,
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
        journalFile=_journal.checksummed_path(journal, fsync=settings.fsync) if journal else None,
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
        The journal, its metadata or the dump is corrupt or truncated.
    """
    from dask_oxigdal.coordination.state import OxigdalState

    journal = dump = None
    aliases: list[str] = []
    if self_address is not None:
        name = self_address if settings.partners else "embedded"
        journal, dump = node_files(settings.data_dir, name)
        _journal.verify_data_dir(journal, dump)
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
    conf = make_conf(settings, journal=journal, dump=dump, **conf_kwargs)
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
    """The group password: ``--password-file``, else ``$DASK_OXIGDAL_COORDINATOR_PASSWORD``.

    ``--password`` still works but is visible in ``ps``: a warning says so.
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
            return sys.stdin.readline().rstrip("\r\n") or None
        try:
            with open(path) as f:
                return f.readline().rstrip("\r\n") or None
        except OSError as e:
            raise ConfigError(f"--password-file={path!r}: {e.strerror}") from e
    return os.environ.get(PASSWORD_ENV) or None


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m dask_oxigdal.coordination``).

    The group password comes from ``$DASK_OXIGDAL_COORDINATOR_PASSWORD`` or
    ``--password-file`` (a file, or ``-`` for stdin), so it never shows in ``ps``.

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
        help="read the group password from this file ('-': the first line of stdin)",
    )
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--ready-file", default=None)
    p.add_argument("--state-file", default=None)
    p.add_argument("--election-timeout-min", default=None)
    p.add_argument("--election-timeout-max", default=None)
    p.add_argument("--heartbeat", default=None)
    p.add_argument("--log-compaction-entries", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        password = _read_password(args.password, args.password_file)
        settings = CoordinatorSettings.from_config(
            self=args.self_address,
            partners=args.partners,
            data_dir=args.data_dir,
            password=password,
            insecure=args.insecure or None,
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
