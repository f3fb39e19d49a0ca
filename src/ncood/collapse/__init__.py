"""Neural collapse: class statistics, NC1-NC5, per-layer and per-epoch analysis."""

from ncood.collapse.stats import ClassStats

__all__ = ["ClassStats"]
