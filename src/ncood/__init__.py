"""ncood: out-of-distribution detection and neural collapse in image classifiers."""

# The one place the version is written: pyproject.toml reads it (dynamic version, setuptools
# `attr`), checkpoints, feature caches and results record it.
__version__ = "0.1.0"

from ncood.errors import NcoodError  # noqa: E402

__all__ = ["NcoodError", "__version__"]
