"""Secret files: the one creation and the one check shared by the coordinator and the auth package."""

from __future__ import annotations

import os
import stat

from dask_oxigdal.exceptions import ConfigError

__all__ = ["create_secret_file", "read_secret_file"]


def read_secret_file(path: str, *, name: str, why: str = "") -> bytes:
    """The whole content of a secret file, refusing one that other users can read.

    Parameters
    ----------
    path : str
        A regular file of mode 0600 or 0400 (no group or world permission bits).
    name : str
        The setting or option that named it, for error messages.
    why : str, optional
        Appended to the permission error, e.g. what the secret guards.

    Returns
    -------
    bytes

    Raises
    ------
    ConfigError
        Missing or unreadable file, not a regular file, group/world permission
        bits, or only whitespace in it.
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{name}={path!r} is not a regular file")
            if st.st_mode & 0o077:
                raise ConfigError(
                    f"{name}={path!r} has mode {stat.S_IMODE(st.st_mode):04o}: group or other "
                    f"users can access it. Run `chmod 600 {path}`{why}"
                )
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{name}={path!r} cannot be read: {e.strerror or e}") from None
    if not data.strip():
        raise ConfigError(f"{name}={path!r} is empty")
    return data


def create_secret_file(path: str, content: bytes) -> bool:
    """Write ``content`` to a new file of mode 0600, unless ``path`` already exists.

    The file is created exclusively (``O_EXCL``), so a secret written once is
    never replaced, and fsync'd before it is closed.

    Parameters
    ----------
    path : str
        Where the secret goes.
    content : bytes
        The secret (with its trailing newline, if any).

    Returns
    -------
    bool
        ``True`` when this call created the file, ``False`` when it existed.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)  # whatever the umask did to the mode
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True
