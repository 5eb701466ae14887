"""Shared test set-up.

``distributed.utils_test.gen_cluster`` resets dask's config to a snapshot taken
when ``distributed.utils_test`` is first imported. Importing dask_oxigdal here,
before any test module, puts the ``oxigdal.*`` defaults into that snapshot.
"""

import dask_oxigdal  # noqa: F401
