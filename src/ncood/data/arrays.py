"""The two plain containers of the data module: :class:`ImageArrays` and :class:`InputSpec`.

A dataset split is decoded once into one compact ``uint8`` tensor ``(n, C, H, W)`` plus
``int64`` labels (the airbench habit: decode once, transform whole batches on the
device). What a model expects at its input (size, channels, normalisation) is an
:class:`InputSpec`, stored in checkpoints as a plain dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ncood.errors import ConfigError, ShapeError


@dataclass
class ImageArrays:
    """One split of one image dataset, decoded.

    Args:
        images: ``uint8`` tensor ``(n, C, H, W)``, contiguous. Loaders may hand out the
            same tensor to several callers (decoded data is cached), so treat it as
            read-only; :meth:`subset` returns new tensors.
        labels: ``int64`` tensor ``(n,)`` in ``[0, len(classes))``, or ``None`` for an
            unlabelled set (noise, a flat image folder).
        classes: class names, index ``i`` naming label ``i``; ``[]`` when unlabelled.
        name: what was asked for, e.g. ``"fashion_mnist[0-5]/train"``.
        source: where it was read from (a path, ``"scikit-learn load_digits"``,
            ``"generated seed=0 ..."``), plus how it was subsampled.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str] = field(default_factory=list)
    name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ndarray):
            self.images = torch.from_numpy(np.ascontiguousarray(self.images))
        if not isinstance(self.images, torch.Tensor):
            raise ShapeError(
                f"ImageArrays.images must be a uint8 torch.Tensor (n, C, H, W); "
                f"got {type(self.images).__name__}"
            )
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ShapeError(
                "ImageArrays.images must be a uint8 tensor (n, C, H, W); got dtype "
                f"{self.images.dtype} and shape {tuple(self.images.shape)}; convert with "
                "(x * 255).round().to(torch.uint8) and add a channel axis if needed"
            )
        if not self.images.is_contiguous():
            self.images = self.images.contiguous()
        n = self.images.shape[0]
        self.classes = [str(c) for c in self.classes]
        if self.labels is not None:
            if isinstance(self.labels, np.ndarray):
                self.labels = torch.from_numpy(np.ascontiguousarray(self.labels))
            if not isinstance(self.labels, torch.Tensor) or self.labels.shape != (n,):
                got = tuple(self.labels.shape) if hasattr(self.labels, "shape") else None
                raise ShapeError(f"ImageArrays.labels must have shape ({n},); got {got}")
            if self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool:
                raise ShapeError(
                    f"ImageArrays.labels must be integers; got dtype {self.labels.dtype}"
                )
            self.labels = self.labels.to(torch.int64).contiguous()
            if n and self.classes:
                lo, hi = int(self.labels.min()), int(self.labels.max())
                if lo < 0 or hi >= len(self.classes):
                    raise ShapeError(
                        f"ImageArrays.labels must lie in 0..{len(self.classes) - 1} "
                        f"({len(self.classes)} classes); got range {lo}..{hi}"
                    )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: Any) -> ImageArrays:
        """Return the samples selected by ``index`` (integer or boolean tensor/array/list).

        Args:
            index: ``(k,)`` integer indices or ``(n,)`` boolean mask.

        Returns:
            A new :class:`ImageArrays` with copied tensors, the same classes, name and
            source.
        """
        if isinstance(index, slice):
            idx = torch.arange(len(self))[index]
        else:
            idx = torch.as_tensor(np.asarray(index) if not torch.is_tensor(index) else index)
            if idx.dtype == torch.bool:
                if idx.shape != (len(self),):
                    raise ShapeError(
                        f"boolean subset mask must have shape ({len(self)},); "
                        f"got {tuple(idx.shape)}"
                    )
                idx = idx.nonzero().flatten()
            elif idx.dtype.is_floating_point and idx.numel() > 0:
                raise ShapeError(f"subset index must be integers or booleans; got {idx.dtype}")
            idx = idx.to(torch.int64).flatten().cpu()
        return ImageArrays(
            images=self.images[idx].contiguous(),
            labels=None if self.labels is None else self.labels[idx].contiguous(),
            classes=list(self.classes),
            name=self.name,
            source=self.source,
        )

    def __repr__(self) -> str:
        c, h, w = self.shape
        lab = "unlabelled" if self.labels is None else f"{len(self.classes)} classes"
        return (
            f"ImageArrays(name={self.name!r}, n={len(self)}, shape=({c}, {h}, {w}), "
            f"{lab}, source={self.source!r})"
        )


@dataclass(frozen=True)
class InputSpec:
    """What a model expects at its input.

    Args:
        size: side of the square input, in pixels.
        channels: number of input channels (1 or 3 in practice).
        mean: per-channel mean in ``[0, 1]`` units, length ``channels``.
        std: per-channel standard deviation in ``[0, 1]`` units, length ``channels``.
    """

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        for key in ("size", "channels"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(
                    f"The {key!r} parameter of InputSpec must be an int in the range "
                    f"[1, inf). Got {value!r} instead."
                )
            object.__setattr__(self, key, int(value))
        for key in ("mean", "std"):
            try:
                values = tuple(float(v) for v in np.atleast_1d(np.asarray(getattr(self, key))))
            except (TypeError, ValueError):
                raise ConfigError(
                    f"InputSpec.{key} must be a sequence of {self.channels} floats; "
                    f"got {getattr(self, key)!r}"
                ) from None
            if len(values) != self.channels:
                raise ConfigError(
                    f"InputSpec.{key} must have one value per channel ({self.channels}); "
                    f"got {len(values)} values {values}"
                )
            if not all(math.isfinite(v) for v in values):
                raise ConfigError(f"InputSpec.{key} must be finite; got {values}")
            object.__setattr__(self, key, values)
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"InputSpec.std must be > 0 for every channel; got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (stored in checkpoints and feature-cache metadata)."""
        return {
            "size": self.size,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        """Inverse of :meth:`to_dict`; missing or unknown keys raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"InputSpec.from_dict expects a dict; got {type(d).__name__}")
        keys = ("size", "channels", "mean", "std")
        missing = [k for k in keys if k not in d]
        unknown = sorted(set(d) - set(keys))
        if missing or unknown:
            raise ConfigError(
                f"input spec must have exactly the keys {list(keys)}; "
                f"missing {missing}, unknown {unknown}"
            )
        return cls(size=d["size"], channels=d["channels"], mean=d["mean"], std=d["std"])
