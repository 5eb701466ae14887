"""Old home of :func:`dask_oxigdal.settings.setting` (kept for existing imports)."""

from __future__ import annotations

from dask_oxigdal.settings import setting

__all__ = ["setting"]
