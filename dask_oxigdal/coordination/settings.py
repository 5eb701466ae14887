"""Validated coordinator settings and where the group secret comes from.

Security (docs/security.md): a group secret is always required: pysyncobj
unpickles what reaches its port unless the traffic is authenticated with a
password. The secret comes from a file of mode 0600
(``oxigdal.coordinator.password-file`` or ``--password-file``, whose *path*
is configuration), from ``$OXIGDAL_COORDINATOR_PASSWORD`` in the node's or the
scheduler's environment, or, for the embedded single-node group, from a random
secret generated once per data directory (:data:`SECRET_FILE`). Never from the
dask config: nannies copy it to every worker, where any task can read it.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from dask.utils import parse_timedelta

from dask_oxigdal._secrets import create_secret_file, read_secret_file
from dask_oxigdal.exceptions import ConfigError

__all__ = [
    "LEGACY_PASSWORD_ENV",
    "MODES",
    "PASSWORD_ENV",
    "SECRET_FILE",
    "CoordinatorSettings",
    "embedded_secret",
    "read_password_file",
]

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


def _address(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}={value!r}: expected HOST:PORT")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}={value!r}: expected HOST:PORT with a port in 1..65535")
    return value


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
    create_secret_file(path, secrets.token_urlsafe(32).encode() + b"\n")
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
