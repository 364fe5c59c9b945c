"""Error types. The CLI turns a ``MedidiffError`` into one line and exit code 2."""

from __future__ import annotations


class MedidiffError(Exception):
    """A problem with the user's input, options or files: reported in one line, exit code 2."""


class InputError(MedidiffError):
    """An input file or folder cannot be read as a scan."""


class ConfigError(MedidiffError):
    """A configuration file or ``--set`` override is invalid."""


class ModelError(MedidiffError):
    """A model file or run folder is missing, unsafe or not a medidiff model."""


class OutputExistsError(MedidiffError):
    """An output exists already and ``--force`` was not given."""
