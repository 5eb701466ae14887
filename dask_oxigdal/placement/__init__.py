"""Where data lives and how it moves (issue 18).

- :mod:`~dask_oxigdal.placement.topology`: worker topology labels (``rack``,
  ``zone``, ``host``) and :func:`~dask_oxigdal.placement.topology.worker_labels`;
- :mod:`~dask_oxigdal.placement.topology_cost`: the transfer-cost model
  ``alpha + bytes / bandwidth(pair)`` and its predicted-versus-observed error;
- :mod:`~dask_oxigdal.placement.admission`: shuffles admitted as coflows
  (smallest bottleneck first, within each tenant's share, with aging);
- :mod:`~dask_oxigdal.placement.comm`: the ``throttled://`` test network.

Submodules are imported on use: importing this package imports nothing else.
"""
