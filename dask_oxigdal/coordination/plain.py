"""Coordinator records as plain data: JSON with tags, never a pickle.

:func:`to_plain` / :func:`from_plain` turn the replicated state and Raft log
entries into JSON data (tuples, bytes, sets, non-str-keyed dicts and pysyncobj
nodes are tagged). pysyncobj hands the journal each command as bytes: a type
byte and, for regular, membership and version commands, a pickle it made itself
(or received from an authenticated peer). :func:`encode_command` turns it into
plain data with a restricted unpickler (plain containers and pysyncobj's
``TCPNode`` only); :func:`decode_command` rebuilds the bytes from the verified
plain data when a journal or dump is loaded.
"""

from __future__ import annotations

import base64
import io
import pickle
import struct
from typing import Any

from dask_oxigdal.coordination._pysyncobj import TCPNode

__all__ = ["decode_command", "encode_command", "from_plain", "to_plain"]

_TAG = "__oxt__"


def to_plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON data; tuples, bytes, sets, non-str-keyed dicts and nodes are tagged.

    Parameters
    ----------
    value : object
        None, bool, int, float, str, list, tuple, dict, set, frozenset, bytes or
        a pysyncobj ``TCPNode``, nested.

    Returns
    -------
    object
        JSON-serialisable data; :func:`from_plain` reverses it.

    Raises
    ------
    TypeError
        Any other type.
    """
    if depth > 100:
        raise TypeError("value nested too deeply for the coordinator's journal")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    d = depth + 1
    if isinstance(value, list):
        return [to_plain(v, d) for v in value]
    if isinstance(value, tuple):
        return {_TAG: "tuple", "v": [to_plain(v, d) for v in value]}
    if isinstance(value, dict):
        if _TAG not in value and all(isinstance(k, str) for k in value):
            return {k: to_plain(v, d) for k, v in value.items()}
        return {_TAG: "dict", "v": [[to_plain(k, d), to_plain(v, d)] for k, v in value.items()]}
    if isinstance(value, (set, frozenset)):
        kind = "set" if isinstance(value, set) else "frozenset"
        return {_TAG: kind, "v": [to_plain(v, d) for v in value]}
    if isinstance(value, (bytes, bytearray)):
        return {_TAG: "bytes", "v": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, TCPNode):
        return {_TAG: "node", "v": value.address}
    raise TypeError(
        f"{type(value).__name__} is not plain data for the coordinator's journal "
        "(None, bool, int, float, str, list, tuple, dict, set, bytes, TCPNode)"
    )


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def from_plain(value: Any) -> Any:
    """Reverse :func:`to_plain`.

    Parameters
    ----------
    value : object
        Data read from JSON.

    Returns
    -------
    object

    Raises
    ------
    ValueError
        An unknown tag.
    """
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: from_plain(v) for k, v in value.items()}
    items = value.get("v")
    if tag == "tuple":
        return tuple(from_plain(v) for v in items)
    if tag == "dict":
        return {_hashable(from_plain(k)): from_plain(v) for k, v in items}
    if tag in ("set", "frozenset"):
        out = {_hashable(from_plain(v)) for v in items}
        return out if tag == "set" else frozenset(out)
    if tag == "bytes":
        return base64.b64decode(items)
    if tag == "node":
        return TCPNode(str(items))
    raise ValueError(f"unknown tag {tag!r} in a coordinator journal record")


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles containers and pysyncobj nodes only: never imports or calls anything else."""

    _ALLOWED = {("pysyncobj.node", "TCPNode"), ("builtins", "set"), ("builtins", "frozenset")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"{module}.{name} is not allowed in a coordinator command (plain data only)"
        )


_NO_PAYLOAD = (1,)  # pysyncobj's NO_OP command: the type byte alone


def encode_command(command: bytes) -> Any:
    """A pysyncobj log command (type byte + pickle) as plain data.

    Parameters
    ----------
    command : bytes
        As pysyncobj passes it to ``Journal.add``.

    Returns
    -------
    list
        ``[type]`` or ``[type, plain_payload]``.

    Raises
    ------
    pickle.UnpicklingError
        The payload holds something other than plain data and pysyncobj nodes.
    """
    command = bytes(command)
    kind = command[0]
    if len(command) == 1:
        return [kind]
    payload = _PlainUnpickler(io.BytesIO(command[1:])).load()
    return [kind, to_plain(payload)]


def decode_command(plain: Any) -> bytes:
    """Rebuild pysyncobj's command bytes from :func:`encode_command`'s plain data.

    Parameters
    ----------
    plain : list

    Returns
    -------
    bytes
    """
    from pysyncobj.pickle import dumps

    if not isinstance(plain, list) or not plain or not isinstance(plain[0], int):
        raise ValueError(f"malformed command {plain!r}")
    head = struct.pack("B", plain[0])
    if len(plain) == 1:
        return head
    return head + dumps(from_plain(plain[1]))


def _entry_to_plain(entry: Any) -> list:
    command, idx, term = entry
    return [encode_command(command), int(idx), int(term)]


def _entry_from_plain(plain: Any) -> tuple[bytes, int, int]:
    command, idx, term = plain
    return (decode_command(command), int(idx), int(term))
