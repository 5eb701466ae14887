"""Deprecated module path: use :mod:`dask_oxigdal.fault.hedging`.

The module was renamed so that it no longer shadows the public function of the
same name. Importing this path warns (DeprecationWarning) and puts
:mod:`dask_oxigdal.fault.hedging` itself in its place in ``sys.modules``, so
``from dask_oxigdal.fault.hedge import ...`` keeps working; see :mod:`dask_oxigdal._moved`.
"""

from dask_oxigdal._moved import alias_module

alias_module(__name__, "dask_oxigdal.fault.hedging")
