"""A small linearizability checker for register histories (Wing & Gong, with Lowe's cache).

A history is a list of :class:`Op`: ``write(v)``, ``cas(expected, new)`` ->
bool, ``read()`` -> value, each with the time it was invoked and the time its
result came back (``time.monotonic()`` in the recording process). Every op
must have completed (the chaos clients retry with the same request id until
acknowledged). Registers are independent, so the history is split by key and
each part is checked on its own (linearizability is compositional).

The search: repeatedly pick a *minimal* op (one invoked before every pending
op's response), apply it to the model if its recorded result agrees, and
backtrack when stuck; ``(set of linearized ops, register value)`` states
already explored are cached, which keeps typical histories fast.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

__all__ = ["Op", "check_history", "check_register"]


@dataclass(frozen=True)
class Op:
    """One completed operation on register ``key``.

    ``kind`` is ``"write"`` (``arg`` = value), ``"cas"`` (``arg`` =
    ``(expected, new)``, ``result`` = bool) or ``"read"`` (``result`` = value).
    """

    key: str
    kind: str
    arg: Any
    result: Any
    call: float
    ret: float


def _step(value: Any, op: Op) -> tuple[bool, Any]:
    if op.kind == "write":
        return True, op.arg
    if op.kind == "read":
        return op.result == value, value
    if op.kind == "cas":
        expected, new = op.arg
        if op.result:
            return value == expected, new
        return value != expected, value
    raise ValueError(f"unknown op kind {op.kind!r}; valid kinds: write, cas, read")


def check_register(ops: list[Op], initial: Any = None) -> tuple[bool, list[Op]]:
    """Whether the ops on one register are linearizable.

    Parameters
    ----------
    ops : list of Op
        Completed ops of one register.
    initial : object
        The register's value before the history.

    Returns
    -------
    (bool, list of Op)
        ``(True, a linearization)`` or ``(False, the longest linearizable prefix found)``.
    """
    for op in ops:
        if op.ret < op.call:
            raise ValueError(f"{op}: returns before it is invoked")
    n = len(ops)
    order = sorted(range(n), key=lambda i: ops[i].call)
    done = 0  # bitmask of linearized ops
    value = initial
    stack: list[tuple[int, Any]] = []  # (op index, value before it)
    cache: set[tuple[int, Any]] = set()
    best: list[int] = []
    start = 0  # index in `order` to resume the candidate scan from
    full = (1 << n) - 1
    while done != full:
        # the earliest response among pending ops bounds which ops are minimal
        horizon = min(ops[i].ret for i in range(n) if not done >> i & 1)
        chosen = None
        for pos in range(start, n):
            i = order[pos]
            if done >> i & 1:
                continue
            if ops[i].call > horizon:
                break
            ok, new_value = _step(value, ops[i])
            key = (done | 1 << i, _freeze(new_value))
            if ok and key not in cache:
                cache.add(key)
                chosen = (pos, i, new_value)
                break
        if chosen is not None:
            pos, i, new_value = chosen
            stack.append((pos, value))
            done |= 1 << i
            value = new_value
            start = 0
            if len(stack) > len(best):
                best = [order[p] for p, _ in stack]
            continue
        if not stack:
            return False, [ops[i] for i in best]
        pos, value = stack.pop()
        done &= ~(1 << order[pos])
        start = pos + 1
    return True, [ops[order[p]] for p, _ in stack]


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def check_history(ops: list[Op], initial: Any = None) -> dict[str, tuple[bool, list[Op]]]:
    """Check every register of ``ops`` (split by key); ``{key: (ok, linearization)}``."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    return {key: check_register(part, initial) for key, part in by_key.items()}
