"""The annotation cache: a task's ``oxigdal_*`` annotations to (parsed, tenant, queue).

The tasks of one submission mostly share their annotations, so each distinct
set is parsed (:func:`~dask_oxigdal.annotations.parse_annotations`) and
resolved (tenant, queue) once. The cache is bounded (cleared past 4096
entries).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dask_oxigdal.annotations import parse_annotations

__all__ = ["AnnotationCache"]

#: Most distinct annotation sets kept before the cache is cleared.
_MAX_ENTRIES = 4096


class AnnotationCache:
    """Parse and resolve annotations, remembering recent results.

    Parameters
    ----------
    resolve_tenant : callable
        ``(tenant annotation or None) -> tenant``; raises ``ValueError`` for an
        unknown tenant under ``strict``.
    queues : list of str
        Valid queues, highest priority first.
    default_queue : str
    """

    def __init__(self, resolve_tenant: Any, queues: list[str], default_queue: str) -> None:
        self._resolve_tenant = resolve_tenant
        self._queues = list(queues)
        self._queue_set = frozenset(queues)
        self._default_queue = default_queue
        self._cache: dict[Any, Any] = {}

    def parse(self, annotations: Mapping[str, Any] | None) -> tuple[Any, str, str]:
        """``(ParsedAnnotations, tenant, queue)`` of a task's annotations.

        Parameters
        ----------
        annotations : mapping or None
            ``TaskState.annotations``.

        Returns
        -------
        tuple

        Raises
        ------
        ValueError
            Malformed annotations, an unknown queue, or (``strict``) tenant.
        """
        if annotations:
            # the type is part of the key: 1 == True == 1.0, but only some are valid
            items = tuple(
                (k, type(v), v)
                for k, v in annotations.items()
                if isinstance(k, str) and k.startswith("oxigdal_")
            )
        else:
            items = ()
        try:
            return self._cache[items]
        except KeyError:
            pass
        except Exception:  # unhashable values (or a hash that raises): parse without the cache
            items = None
        parsed = parse_annotations(
            {k: v for k, _, v in items} if items is not None else annotations
        )
        tenant = self._resolve_tenant(parsed.tenant)
        queue = parsed.queue if parsed.queue is not None else self._default_queue
        if queue not in self._queue_set:
            raise ValueError(
                f"unknown queue {queue!r} (annotation oxigdal_queue); valid queues "
                f"(highest priority first): {', '.join(self._queues)}"
            )
        result = (parsed, tenant, queue)
        if items is not None:
            if len(self._cache) > _MAX_ENTRIES:
                self._cache.clear()
            self._cache[items] = result
        return result

    def clear(self) -> None:
        """Forget every cached result (the tenants or queues changed)."""
        self._cache.clear()
