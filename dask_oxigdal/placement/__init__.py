"""Where data lives and how it moves (issue 18; docs/data-placement.md).

- :mod:`~dask_oxigdal.placement.replicas`, :mod:`~dask_oxigdal.placement.replicas_amm`:
  ``replicas=N`` kept by Dask's Active Memory Manager (MinReplicas, ReduceReplicas);
- :mod:`~dask_oxigdal.placement.cache_directory`, :mod:`~dask_oxigdal.placement.cache_keys`:
  the shared cache's directory (where a cached key lives) and its keys;
- :mod:`~dask_oxigdal.placement.topology`: worker topology labels (``rack``,
  ``zone``, ``host``) and :func:`~dask_oxigdal.placement.topology.worker_labels`;
- :mod:`~dask_oxigdal.placement.topology_cost`: the transfer-cost model
  ``alpha + bytes / bandwidth(pair)`` and its predicted-versus-observed error;
- :mod:`~dask_oxigdal.placement.admission`: shuffles admitted as coflows
  (smallest bottleneck first, within each tenant's share, with aging);
- :mod:`~dask_oxigdal.placement.comm`: the ``throttled://`` test network.

Submodules are imported on use: importing this package imports nothing else.
"""
