"""ncood: out-of-distribution detection and neural collapse in image classifiers."""

# The one place the version is written: pyproject.toml reads it (dynamic version, setuptools
# `attr`), checkpoints, feature caches and results record it.
__version__ = "0.1.0"

from ncood.errors import NcoodError  # noqa: E402

__all__ = ["NcoodError", "__version__", "evaluate"]


def __getattr__(name: str):
    # ``ncood.evaluate`` is loaded on first use, so ``import ncood`` stays light (no torch).
    if name == "evaluate":
        from ncood.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'ncood' has no attribute {name!r}")
