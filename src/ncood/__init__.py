"""ncood: out-of-distribution detection and neural collapse in image classifiers."""

__version__ = "0.1.0"

from ncood.errors import NcoodError  # noqa: E402

__all__ = ["NcoodError", "__version__"]
