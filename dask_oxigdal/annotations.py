"""``annotate(...)``: dask-oxigdal's task annotations.

Every keyword maps to one flat dask annotation named ``oxigdal_<keyword>``
(Dask merges annotation dicts shallowly, so flat keys compose with nested
``dask.annotate`` blocks). Values are validated on the client by
:func:`annotate` and validated again on the scheduler by
:func:`parse_annotations`, because annotations can also be written by hand or
come from a client that does not have this package installed.

Two forms work:

- compute time: ``with annotate(tenant="a"): client.compute(x)`` (also
  ``submit``, ``map``, ``persist``). This is the form to use with
  dask.dataframe and dask-geopandas, which drop annotations set while the
  graph is built;
- graph construction: ``with annotate(tenant="a"): x = da.ones(...) + 1``
  (delayed, dask.array), then compute ``x`` anywhere.
"""

from __future__ import annotations

import datetime
import math
import numbers
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask
from dask.utils import parse_timedelta

__all__ = [
    "ANNOTATION_KEYS",
    "MAX_BACKOFF",
    "MAX_DEADLINE",
    "MAX_NAME",
    "MAX_REPLICAS",
    "MAX_RETRIES",
    "PREFIX",
    "VALID_KEYWORDS",
    "TaskAnnotations",
    "annotate",
    "parse_annotations",
    "to_annotations",
]

#: Prefix of every dask annotation this package reads.
PREFIX = "oxigdal_"

#: The keywords :func:`annotate` accepts, in documentation order.
VALID_KEYWORDS = (
    "tenant",
    "queue",
    "gang",
    "deadline",
    "locality",
    "checkpoint",
    "retries",
    "backoff",
    "replicas",
)

#: The dask annotation keys, ``oxigdal_<keyword>``.
ANNOTATION_KEYS = tuple(PREFIX + k for k in VALID_KEYWORDS)

#: Longest ``tenant`` / ``queue`` / ``gang`` / ``locality`` name (characters).
MAX_NAME = 256
#: Most ``retries`` one task may ask for.
MAX_RETRIES = 1000
#: Most in-memory copies one key may ask for (``replicas``, from 1).
MAX_REPLICAS = 32
#: Longest ``backoff`` (seconds): one week.
MAX_BACKOFF = 7 * 24 * 3600.0
#: Latest ``deadline`` (UNIX seconds): 9999-12-31T23:59:59Z, the last second
#: ``datetime`` can represent.
MAX_DEADLINE = 253402300799.0


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters; never raises.

    Error messages name the bad value, but a 1 MB string or a 10,000-digit int
    must not become a 1 MB message (nor raise: ``repr`` of a huge int does).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<int of {value.bit_length()} bits>"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"...(<str of {len(value)} characters>)"
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} (no repr)>"
    if len(text) > limit:
        text = text[:limit] + f"...(<{type(value).__name__}>)"
    return text


_UNIT_ALIASES = {
    "min": "m",
    "mins": "m",
    "sec": "s",
    "secs": "s",
    "hr": "h",
    "hrs": "h",
    "msec": "ms",
    "msecs": "ms",
}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def _name(keyword: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"{keyword}={_short(value)} is not valid: expected a non-empty string, "
            f"got {type(value).__name__}"
        )
    if len(value) > MAX_NAME:
        raise ValueError(
            f"{keyword}={value[:40]!r}... is not valid: at most {MAX_NAME} characters "
            f"(got {len(value)})"
        )
    if not value.strip():
        raise ValueError(f"{keyword}={value!r} is not valid: expected a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # a lone surrogate: cannot go into events, logs or msgpack messages
        raise ValueError(
            f"{keyword}={_short(value)} is not valid: not encodable as UTF-8 "
            "(it holds a lone surrogate code point)"
        ) from None
    return value


def _seconds(keyword: str, value: Any) -> float:
    """A duration in seconds from a number, a ``timedelta`` or a string like ``"10min"``."""
    if isinstance(value, bool):
        raise ValueError(f"{keyword}={value!r} is not a duration")
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, numbers.Real):
        try:
            seconds = float(value)
        except (OverflowError, ValueError, TypeError):
            raise ValueError(f"{keyword}={_short(value)} is not a finite duration") from None
    elif isinstance(value, str):
        match = _DURATION.match(value) if len(value) <= 64 else None
        if not match:
            raise ValueError(
                f"{keyword}={_short(value)} is not a duration: use a number of seconds, a "
                "datetime.timedelta, or a string such as '90s', '10min', '2h'"
            )
        number, unit = match.groups()
        unit = _UNIT_ALIASES.get(unit, unit) or "s"
        try:
            seconds = float(parse_timedelta(f"{number}{unit}"))
        except OverflowError:
            raise ValueError(f"{keyword}={value!r} is not a finite duration") from None
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(
                f"{keyword}={value!r} is not a duration: unknown unit {unit!r} "
                "(valid: ms, s, m/min, h, d, w and their long names)"
            ) from e
    else:
        raise ValueError(
            f"{keyword}={_short(value)} is not a duration: expected a number of seconds, a "
            f"timedelta or a string, got {type(value).__name__}"
        )
    if not math.isfinite(seconds):
        raise ValueError(f"{keyword}={_short(value)} is not a finite duration")
    return seconds


def _deadline(value: Any, now: float | None = None) -> float:
    """Absolute UNIX timestamp of a deadline given as relative or absolute time."""
    now = time.time() if now is None else now
    if isinstance(value, datetime.datetime):
        # naive datetimes are local time, as datetime.timestamp() reads them
        try:
            ts = value.timestamp()
        except (OverflowError, ValueError, OSError) as e:
            raise ValueError(f"deadline={value!r} is not a valid time: {e}") from None
        if ts <= now:
            raise ValueError(f"deadline={value!r} is in the past (now is {now:.3f})")
    else:
        seconds = _seconds("deadline", value)
        if seconds <= 0:
            raise ValueError(
                f"deadline={_short(value)} is not valid: a relative deadline must be > 0"
            )
        ts = now + seconds
    if ts > MAX_DEADLINE:
        raise ValueError(
            f"deadline={_short(value)} is not valid: it lies after 9999-12-31 "
            f"(at most {MAX_DEADLINE - now:.0f}s from now)"
        )
    return ts


def _retries(value: Any, keyword: str = "retries") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{keyword}={_short(value)} is not valid: expected an int from 0 to "
            f"{MAX_RETRIES}, got {type(value).__name__}"
        )
    if not 0 <= value <= MAX_RETRIES:
        raise ValueError(
            f"{keyword}={_short(value)} is not valid: expected an int from 0 to {MAX_RETRIES}"
        )
    return int(value)


def _backoff(value: Any) -> float:
    seconds = _seconds("backoff", value)
    if not 0 <= seconds <= MAX_BACKOFF:
        raise ValueError(
            f"backoff={_short(value)} is not valid: must be >= 0 and at most "
            f"{MAX_BACKOFF:g}s (one week)"
        )
    return seconds


def _replicas(value: Any, keyword: str = "replicas") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{keyword}={_short(value)} is not valid: expected an int from 1 to "
            f"{MAX_REPLICAS} (copies on distinct workers), got {type(value).__name__}"
        )
    if not 1 <= value <= MAX_REPLICAS:
        raise ValueError(
            f"{keyword}={_short(value)} is not valid: expected an int from 1 to "
            f"{MAX_REPLICAS} (copies on distinct workers)"
        )
    return int(value)


def _checkpoint(value: Any, keyword: str = "checkpoint") -> bool:
    if not isinstance(value, bool):
        raise ValueError(
            f"{keyword}={_short(value)} is not valid: expected True or False, "
            f"got {type(value).__name__}"
        )
    return value


def to_annotations(**kwargs: Any) -> dict[str, Any]:
    """Validate keywords and return the flat ``oxigdal_*`` annotation dict.

    Parameters
    ----------
    **kwargs
        Any of ``tenant``, ``queue``, ``gang``, ``deadline``, ``locality``,
        ``checkpoint``, ``retries``, ``backoff``, ``replicas`` (see :func:`annotate`).
        ``None`` values are skipped.

    Returns
    -------
    dict
        ``{"oxigdal_tenant": ..., ...}``; a deadline is an absolute UNIX
        timestamp (float), a backoff a number of seconds (float).

    Raises
    ------
    TypeError
        An unknown keyword; the message lists the valid ones.
    ValueError
        A bad value; the message names it.
    """
    unknown = sorted(set(kwargs) - set(VALID_KEYWORDS))
    if unknown:
        raise TypeError(
            f"annotate() got unknown keyword(s) {', '.join(map(repr, unknown))}; "
            f"valid keywords are: {', '.join(VALID_KEYWORDS)}"
        )
    out: dict[str, Any] = {}
    for keyword in VALID_KEYWORDS:
        value = kwargs.get(keyword)
        if value is None:
            continue
        if keyword in ("tenant", "queue", "gang", "locality"):
            value = _name(keyword, value)
        elif keyword == "deadline":
            value = _deadline(value)
        elif keyword == "checkpoint":
            value = _checkpoint(value)
        elif keyword == "retries":
            value = _retries(value)
        elif keyword == "backoff":
            value = _backoff(value)
        elif keyword == "replicas":
            value = _replicas(value)
        out[PREFIX + keyword] = value
    return out


def annotate(
    *,
    tenant: str | None = None,
    queue: str | None = None,
    gang: str | None = None,
    deadline: str | float | datetime.timedelta | datetime.datetime | None = None,
    locality: str | None = None,
    checkpoint: bool | None = None,
    retries: int | None = None,
    backoff: str | float | datetime.timedelta | None = None,
    replicas: int | None = None,
    **unknown: Any,
):
    """Context manager that annotates the tasks submitted or built inside it.

    Values are validated immediately (before the ``with`` block runs), then
    set as flat ``oxigdal_<keyword>`` dask annotations with
    :func:`dask.annotate`.

    Parameters
    ----------
    tenant : str, optional
        Fair-share identity. Tasks without one belong to ``"default"``.
    queue : str, optional
        Priority queue name (see ``oxigdal.scheduling.queues``).
    gang : str, optional
        All tasks submitted with this gang name start together (the ``Gang``
        policy, docs/gangs-and-deadlines.md).
    deadline : str, float, datetime.timedelta or datetime.datetime, optional
        Relative (``"10min"``, seconds, ``timedelta``), resolved against the
        client's clock now, or an absolute ``datetime`` (naive = local time).
        Stored as an absolute UNIX timestamp.
    locality : str, optional
        Data-locality hint such as ``"tile/3/4"`` (the ``Locality`` policy,
        docs/geo.md).
    checkpoint : bool, optional
        Checkpoint the results of these tasks (the ``Checkpoint`` policy,
        docs/fault-tolerance.md).
    retries : int, optional
        Retries with backoff (the ``Retries`` policy,
        docs/fault-tolerance.md); from 0 to :data:`MAX_RETRIES` (1000).
    backoff : str, float or datetime.timedelta, optional
        Delay before a retry; from 0 to :data:`MAX_BACKOFF` (one week).
    replicas : int, optional
        Keep this many in-memory copies of each result on distinct workers
        (distinct racks or zones when workers carry topology labels), so that
        losing a worker does not recompute it; from 1 to
        :data:`MAX_REPLICAS` (the ``Replicas`` policy, docs/data-placement.md).

    Returns
    -------
    contextlib.AbstractContextManager
        The :func:`dask.annotate` context manager.

    Raises
    ------
    TypeError
        An unknown keyword; the message lists the valid ones.
    ValueError
        A bad value (``deadline="soon"``, ``tenant=""``, ``backoff=-1`` ...),
        or one out of range: names longer than :data:`MAX_NAME` characters
        or not encodable as UTF-8, ``retries`` over :data:`MAX_RETRIES`,
        ``replicas`` outside 1 to :data:`MAX_REPLICAS`,
        ``backoff`` over :data:`MAX_BACKOFF`, a ``deadline`` after
        :data:`MAX_DEADLINE` (9999-12-31). The scheduler applies the same
        limits to hand-written ``oxigdal_*`` annotations.

    Examples
    --------
    >>> with annotate(tenant="team-a", queue="batch", deadline="10min"):  # doctest: +SKIP
    ...     futures = client.map(f, xs)
    """
    annotations = to_annotations(
        tenant=tenant,
        queue=queue,
        gang=gang,
        deadline=deadline,
        locality=locality,
        checkpoint=checkpoint,
        retries=retries,
        backoff=backoff,
        replicas=replicas,
        **unknown,
    )
    return dask.annotate(**annotations)


@dataclass(frozen=True, slots=True)
class TaskAnnotations:
    """The validated oxigdal annotations of one task (scheduler side)."""

    tenant: str | None = None
    queue: str | None = None
    gang: str | None = None
    deadline: float | None = None
    locality: str | None = None
    checkpoint: bool | None = None
    retries: int | None = None
    backoff: float | None = None
    replicas: int | None = None


EMPTY = TaskAnnotations()


def _finite_number(keyword: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{PREFIX}{keyword}={_short(value)} is not valid: expected a number, "
            f"got {type(value).__name__}"
        )
    try:
        value = float(value)
    except (OverflowError, ValueError, TypeError):
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(
            f"{PREFIX}{keyword}={_short(value)} is not valid: expected a finite number"
        )
    return value


def parse_annotations(annotations: Mapping[str, Any] | None) -> TaskAnnotations:
    """Validate the ``oxigdal_*`` entries of a task's annotations (scheduler side).

    Other annotations (Dask's ``priority``, ``retries``, ...) are ignored. The
    same ranges as :func:`annotate` apply, so that no policy sees a value it
    cannot compute with: names are non-empty UTF-8 strings of at most
    :data:`MAX_NAME` characters, ``retries`` an int in ``[0, MAX_RETRIES]``,
    ``backoff`` a number of seconds in ``[0, MAX_BACKOFF]``, ``deadline`` a
    UNIX time in ``(0, MAX_DEADLINE]``, ``replicas`` an int in
    ``[1, MAX_REPLICAS]`` (a deadline in the past is accepted:
    the ``Deadline`` policy reports it as infeasible).

    Parameters
    ----------
    annotations : mapping or None
        ``TaskState.annotations``.

    Returns
    -------
    TaskAnnotations
        The parsed values (``None`` where absent).

    Raises
    ------
    ValueError
        An unknown ``oxigdal_*`` key or a value of the wrong type/range; the
        message names the key, the value (cut short when long) and the valid
        choices. Never another exception type.
    """
    if not annotations:
        return EMPTY
    found: dict[str, Any] = {}
    for key, value in annotations.items():
        if not (isinstance(key, str) and key.startswith(PREFIX)):
            continue
        keyword = key[len(PREFIX) :]
        if keyword not in VALID_KEYWORDS:
            raise ValueError(
                f"unknown annotation {_short(key)}={_short(value)}; valid oxigdal annotations "
                f"are: {', '.join(ANNOTATION_KEYS)}"
            )
        if value is None:
            continue
        if keyword in ("tenant", "queue", "gang", "locality"):
            try:
                value = _name(key, value)
            except ValueError as e:
                raise ValueError(f"malformed annotation: {e}") from None
        elif keyword == "deadline":
            value = _finite_number(keyword, value)
            if not 0 < value <= MAX_DEADLINE:
                raise ValueError(
                    f"{key}={value!r} is not valid: expected a UNIX time in seconds, "
                    f"> 0 and at most {MAX_DEADLINE:.0f} (9999-12-31)"
                )
        elif keyword == "backoff":
            value = _finite_number(keyword, value)
            if not 0 <= value <= MAX_BACKOFF:
                raise ValueError(
                    f"{key}={value!r} is not valid: must be >= 0 and at most "
                    f"{MAX_BACKOFF:g}s (one week)"
                )
        elif keyword == "checkpoint":
            value = _checkpoint(value, key)
        elif keyword == "retries":
            value = _retries(value, key)
        elif keyword == "replicas":
            value = _replicas(value, key)
        found[keyword] = value
    if not found:
        return EMPTY
    return TaskAnnotations(**found)
