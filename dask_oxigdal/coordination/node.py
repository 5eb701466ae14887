"""Coordinator settings, pysyncobj configuration, security checks and the node runner.

``python -m dask_oxigdal.coordination --self HOST:PORT --partner HOST:PORT
... --data-dir DIR`` runs one voting node in the foreground until SIGTERM or
SIGINT (``dask oxigdal coordinator`` is the same command). The tests spawn it
with ``subprocess`` and stop it by pid.
"""

from __future__ import annotations

import argparse
import ipaddress
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
    "CoordinatorSettings",
    "check_security",
    "is_loopback",
    "make_conf",
    "node_files",
    "run_node",
    "start_state",
    "stop_state",
]

MODES = ("embedded", "observer")


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
        commandsWaitLeader=True,
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

    Raises
    ------
    dask_oxigdal.coordination.journal.CorruptJournalError
        The journal, its metadata or the dump is corrupt or truncated.
    """
    from dask_oxigdal.coordination.state import OxigdalState

    journal = dump = None
    if self_address is not None:
        name = self_address if settings.partners else "embedded"
        journal, dump = node_files(settings.data_dir, name)
        _journal.verify_data_dir(journal, dump)
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


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m dask_oxigdal.coordination``)."""
    p = argparse.ArgumentParser(prog="python -m dask_oxigdal.coordination")
    p.add_argument("--self", dest="self_address", required=True)
    p.add_argument("--partner", dest="partners", action="append", default=[])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--password", default=None)
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--ready-file", default=None)
    p.add_argument("--state-file", default=None)
    p.add_argument("--election-timeout-min", default=None)
    p.add_argument("--election-timeout-max", default=None)
    p.add_argument("--heartbeat", default=None)
    p.add_argument("--log-compaction-entries", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        settings = CoordinatorSettings.from_config(
            self=args.self_address,
            partners=args.partners,
            data_dir=args.data_dir,
            password=args.password,
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
