"""One exception family for the whole toolkit.

Messages follow the house rule: name the parameter, what was expected, what was
given, and how to fix it. The command line prints ``str(error)`` as one line and exits
non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class NcoodError(Exception):
    """Base class of every expected user error raised by ncood."""


class ConfigError(NcoodError, ValueError):
    """A parameter, config key or name is invalid."""


class ShapeError(NcoodError, ValueError):
    """Arrays have the wrong shape, width, dtype or contain NaN/inf."""


class NotFittedError(NcoodError, RuntimeError):
    """A fitted object was used before ``fit``."""


class DataError(NcoodError, RuntimeError):
    """A dataset is missing, corrupt or unusable."""


class CheckpointError(NcoodError, RuntimeError):
    """A checkpoint or cache entry is missing, corrupt or incompatible."""
