"""Renamed modules: the old paths keep working, and public functions keep their names.

Four modules used to carry the name of a public function of their package
(``dask_oxigdal.shuffle`` next to ``dox.shuffle``, ``dask_oxigdal.knn``,
``dask_oxigdal.monitoring.progress``, ``dask_oxigdal.fault.hedge``). Importing
such a module rebinds the package attribute to the module, and
``import package.name as m`` binds ``getattr(package, "name")`` (Python 3.7+),
so one of the two always came out wrong. The modules were renamed
(:mod:`dask_oxigdal.tables`, :mod:`dask_oxigdal.neighbors`,
:mod:`dask_oxigdal.monitoring.progressbar`, :mod:`dask_oxigdal.fault.hedging`);
the old paths are thin deprecated aliases built by :func:`alias_module`:

- ``sys.modules[old]`` *is* the new module, so ``from old import name``, pickles
  that name ``old.name`` and ``monkeypatch.setattr(old_module, ...)`` reach the
  same objects as the new path;
- the package attribute of the same name stays the public function
  (:class:`FunctionsFirst`), and that function also carries the new module's
  ``__all__`` names, so ``import dask_oxigdal.shuffle as m; m.hash_partition``
  works too.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings


class FunctionsFirst(types.ModuleType):
    """Module type of a package whose ``__all__`` names win over same-named submodules.

    The import system sets ``package.<child>`` to every submodule it imports;
    for a name the package exports (``__all__``) that binding is skipped, so the
    attribute stays the exported object (resolved by the package's PEP 562
    ``__getattr__``). The submodule itself stays in :data:`sys.modules`.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("__all__", ()):
            return
        super().__setattr__(name, value)


def alias_module(old: str, new: str) -> None:
    """Make the module being imported as ``old`` an alias of ``new``, with a DeprecationWarning.

    Call it from the body of the old module, and nothing else there.

    Parameters
    ----------
    old : str
        Dotted path of the old module (its ``__name__``).
    new : str
        Dotted path of the module that replaces it.
    """
    warnings.warn(
        f"{old} is deprecated and will be removed: import {new} instead",
        DeprecationWarning,
        stacklevel=3,  # the import statement: warnings skips importlib's own frames
    )
    module = importlib.import_module(new)
    sys.modules[old] = module  # the import system returns (and binds) this module
    share_public_names(old, module)


def share_public_names(path: str, module: types.ModuleType) -> None:
    """Give the public function named like ``path`` the public names of ``module``.

    ``import package.child as m`` binds ``getattr(package, "child")``: the
    function when ``child`` is also a public function of the package. With
    ``module``'s ``__all__`` names on that function, ``m.<name>`` works either way.
    Used by :func:`alias_module`, and by a package that keeps the name of a
    public function (``dask_oxigdal.workflows`` next to ``dox.workflows``).

    Parameters
    ----------
    path : str
        Dotted path ``package.child``.
    module : module
        The module whose ``__all__`` names the function gets.
    """
    package, _, child = path.rpartition(".")
    function = getattr(importlib.import_module(package), child, None)
    if callable(function) and not isinstance(function, types.ModuleType):
        for name in getattr(module, "__all__", ()):
            if not hasattr(function, name):
                setattr(function, name, getattr(module, name))
