"""Features: containers, hooks, extraction and the on-disk cache."""

from ncood.features.store import FeatureDir, load_feature_dir
from ncood.features.types import FeatureSet, LinearHead

__all__ = ["FeatureDir", "FeatureSet", "LinearHead", "load_feature_dir"]
