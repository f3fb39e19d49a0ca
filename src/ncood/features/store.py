"""The on-disk layout that ``ncood extract`` writes and later stages read.

```
DIR/
  extract.json        what produced it: checkpoint hash, ID dataset, OOD names, layers
  head.npz            LinearHead (weight (C, D), bias (C,))
  train/  test/       FeatureSets of the ID train and test splits
  ood/<name>/         one FeatureSet per OOD set
```
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ncood.errors import CheckpointError
from ncood.features.types import FeatureSet, LinearHead
from ncood.io import write_json


@dataclass
class FeatureDir:
    """All features of one network: ID train/test, each OOD set, the head."""

    train: FeatureSet
    test: FeatureSet
    ood: dict[str, FeatureSet]
    head: LinearHead
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike) -> Path:
        d = Path(directory)
        self.train.save(d / "train")
        self.test.save(d / "test")
        for name, fs in self.ood.items():
            fs.save(d / "ood" / name)
        self.head.save(d / "head.npz")
        write_json(d / "extract.json", {**self.meta, "ood": list(self.ood)})
        return d


def load_feature_dir(directory: str | os.PathLike, *, mmap: bool = True) -> FeatureDir:
    """Load what ``ncood extract`` wrote; a missing or damaged part raises one clear error."""
    d = Path(directory)
    meta_path = d / "extract.json"
    if not meta_path.is_file():
        raise CheckpointError(
            f"{str(d)!r} is not a feature directory (no extract.json); "
            "create one with `ncood extract --checkpoint CKPT --out DIR`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise CheckpointError(
            f"{str(meta_path)!r} is corrupt ({exc}); re-run `ncood extract`"
        ) from exc
    ood = {name: FeatureSet.load(d / "ood" / name, mmap=mmap) for name in meta.get("ood", [])}
    return FeatureDir(
        train=FeatureSet.load(d / "train", mmap=mmap),
        test=FeatureSet.load(d / "test", mmap=mmap),
        ood=ood,
        head=LinearHead.load(d / "head.npz"),
        meta=meta,
    )
