"""Plain containers that flow between the stages: :class:`LinearHead`, :class:`FeatureSet`,
:class:`FeatureDir`.

This module is the leaf of the package: it imports nothing of ncood but errors,
validation and io.

A FeatureSet is what ``extract`` produces for one split of one dataset. It is saved as
one directory of ``.npy`` files plus ``meta.json``, written atomically (the ``meta.json``
is written last and lists every array with its shape and dtype, so a truncated or edited
directory is detected on load), and loaded memory-mapped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ncood.errors import CheckpointError, ShapeError
from ncood.io import atomic_open, safe_name, safe_names, save_npy, write_json
from ncood.validation import as_labels, check_finite

FORMAT_VERSION = 1


@dataclass(frozen=True)
class LinearHead:
    """The final linear layer ``f = W z + b`` of a classifier.

    Args:
        weight: ``(n_classes, n_features)``.
        bias: ``(n_classes,)``.
    """

    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        w = np.asarray(self.weight, dtype=np.float64)
        b = np.asarray(self.bias, dtype=np.float64)
        if w.ndim != 2:
            raise ShapeError(f"head weight must be 2-D (n_classes, n_features); got {w.shape}")
        if b.shape != (w.shape[0],):
            raise ShapeError(
                f"head bias must have shape ({w.shape[0]},) to match weight {w.shape}; "
                f"got {b.shape}"
            )
        check_finite(w, "head weight")
        check_finite(b, "head bias")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``(n, D) -> (n, C)`` logits in float64."""
        return np.asarray(features, dtype=np.float64) @ self.weight.T + self.bias

    def save(self, path: str | os.PathLike) -> None:
        """Save as ``.npz`` (atomically)."""
        with atomic_open(path, "wb") as fh:
            np.savez(fh, weight=self.weight, bias=self.bias)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LinearHead:
        try:
            with np.load(path, allow_pickle=False) as npz:
                return cls(npz["weight"], npz["bias"])
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"cannot read linear head {str(path)!r} ({exc}); re-run `ncood extract`"
            ) from exc


@dataclass
class FeatureSet:
    """Features of one split of one dataset, as seen by one network.

    Args:
        features: penultimate features ``(n_samples, n_features)``.
        logits: ``(n_samples, n_classes)``.
        labels: ``(n_samples,)`` int64, or ``None`` for unlabelled (OOD) data.
        name: e.g. ``"fashion_mnist/train"``.
        meta: free-form description (checkpoint hash, dataset, split, transform, layers).
        layers: optional per-layer pooled features, ``{layer_name: (n_samples, d_layer)}``.
    """

    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray | None = None
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = np.asarray(self.features)
        lg = np.asarray(self.logits)
        if f.ndim != 2:
            raise ShapeError(f"features of {self.name!r} must be 2-D; got shape {f.shape}")
        if lg.ndim != 2 or lg.shape[0] != f.shape[0]:
            raise ShapeError(
                f"logits of {self.name!r} must have shape ({f.shape[0]}, n_classes); got {lg.shape}"
            )
        self.features, self.logits = f, lg
        if self.labels is not None:
            self.labels = as_labels(self.labels, f.shape[0], f"labels of {self.name!r}")
        for key, arr in list(self.layers.items()):
            arr = np.asarray(arr)
            if arr.ndim != 2 or arr.shape[0] != f.shape[0]:
                raise ShapeError(
                    f"layer {key!r} of {self.name!r} must have shape ({f.shape[0]}, d); "
                    f"got {arr.shape}"
                )
            self.layers[key] = arr

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    def check_finite(self) -> None:
        """Raise a clear error if features or logits hold NaN/inf."""
        check_finite(np.asarray(self.features), f"features of {self.name!r}")
        check_finite(np.asarray(self.logits), f"logits of {self.name!r}")

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"features": self.features, "logits": self.logits}
        if self.labels is not None:
            out["labels"] = self.labels
        for key, arr in self.layers.items():
            out[f"layer.{key}"] = arr
        return out

    def save(self, directory: str | os.PathLike) -> Path:
        """Write every array as ``.npy`` then ``meta.json`` (last, so it marks completeness)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta_path = d / "meta.json"
        if meta_path.exists():
            meta_path.unlink()  # an entry without meta.json is incomplete, never trusted
        listing = {}
        for key, arr in self.arrays().items():
            save_npy(d / f"{key}.npy", arr)
            listing[key] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
        write_json(
            meta_path,
            {"format": FORMAT_VERSION, "name": self.name, "arrays": listing, "meta": self.meta},
        )
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike, *, mmap: bool = True) -> FeatureSet:
        """Load a saved FeatureSet (memory-mapped by default); a damaged entry raises."""
        d = Path(directory)
        meta_path = d / "meta.json"
        try:
            doc = json.loads(meta_path.read_text())
            listing = doc["arrays"]
        except FileNotFoundError:
            raise CheckpointError(
                f"{str(d)!r} is not a complete feature set (no meta.json); "
                "re-run `ncood extract` to recreate it"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{str(meta_path)!r} is corrupt ({exc}); delete {str(d)!r} and re-run "
                "`ncood extract`"
            ) from exc
        arrays = {}
        for key, spec in listing.items():
            path = d / f"{key}.npy"
            try:
                arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise CheckpointError(
                    f"feature array {str(path)!r} is missing or truncated ({exc}); "
                    f"delete {str(d)!r} and re-run `ncood extract`"
                ) from exc
            if list(arr.shape) != list(spec["shape"]) or str(arr.dtype) != spec["dtype"]:
                raise CheckpointError(
                    f"feature array {str(path)!r} has shape {arr.shape} {arr.dtype}, but "
                    f"meta.json says {tuple(spec['shape'])} {spec['dtype']}; "
                    f"delete {str(d)!r} and re-run `ncood extract`"
                )
            arrays[key] = arr
        layers = {k[len("layer.") :]: v for k, v in arrays.items() if k.startswith("layer.")}
        return cls(
            features=arrays["features"],
            logits=arrays["logits"],
            labels=arrays.get("labels"),
            name=doc.get("name", ""),
            meta=doc.get("meta", {}),
            layers=layers,
        )


# --------------------------------------------------------------------------- FeatureDir
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
        files = safe_names(self.ood)  # a name is never a path: no "..", "/" or ":" in it
        for name, fs in self.ood.items():
            fs.save(d / "ood" / files[name])
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
    ood = {n: FeatureSet.load(d / "ood" / safe_name(n), mmap=mmap) for n in meta.get("ood", [])}
    return FeatureDir(
        train=FeatureSet.load(d / "train", mmap=mmap),
        test=FeatureSet.load(d / "test", mmap=mmap),
        ood=ood,
        head=LinearHead.load(d / "head.npz"),
        meta=meta,
    )
