"""Features: containers, hooks, extraction and the on-disk cache."""

from ncood.features.types import FeatureSet, LinearHead

__all__ = ["FeatureSet", "LinearHead"]
