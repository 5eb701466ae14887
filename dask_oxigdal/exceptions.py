"""Exceptions raised by dask-oxigdal."""

from __future__ import annotations


class OxigdalError(Exception):
    """Base class of every dask-oxigdal error."""


class ConfigError(OxigdalError, ValueError):
    """A configuration value is invalid; the message names the key, value and valid choices."""
