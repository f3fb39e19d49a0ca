"""Any image source as a stream of ``(images, labels)`` batches, and the eval transform.

:func:`open_stream` turns what a user has into one iterable of batches:

- a torch ``DataLoader`` (iterated as it is; its batches must be ``(images, labels)``),
- a torch ``Dataset`` of ``(image, label)`` items (PIL images, ``uint8``/float tensors or
  ``HWC`` arrays; decoded in ``DataLoader`` workers),
- numpy arrays (``images`` or ``(images, labels)``; memory-mapped arrays stay on disk),
- a registered dataset name (``"fashion_mnist"``, ``"digits"``, ``"cifar10[0-4]"``),
- ``"folder:PATH"`` (``PATH/<class>/*.png`` or a flat folder; one file per item, decoded
  and resized in worker processes),
- ``"npz:PATH"`` (the ``images`` array is memory-mapped when stored uncompressed and read
  sequentially when compressed).

Nothing but the current batches is held in memory for folders, npz files, Datasets and
DataLoaders; registered sets are small and decoded once into compact ``uint8`` arrays
(:func:`ncood.data.load_images`).

A batch is ``(x, y)``: ``y`` int64 ``(b,)`` (``-1`` for unlabelled images); ``x`` is
either ``uint8 (b, C, size, size)`` already resized and centre-cropped by the
:class:`EvalTransform` (channels, mean and std are applied on the device by
:meth:`EvalTransform.normalize`), or a float tensor that a user's own Dataset/DataLoader
produced: float batches are taken to be model input already (the user's transforms
rule) and are passed to the model as they are.

Names: an OOD set is given as ``"NAME=SPEC"`` (``"faces=folder:/data/faces"``) or as a
spec alone, whose default name comes from the spec (:func:`default_name`); names become
file names only through :func:`ncood.io.safe_name`.
"""

from __future__ import annotations

import logging
import numbers
import os
import re
import struct
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ncood.data.arrays import InputSpec
from ncood.data.datasets import _split_dir, load_images, stratified_indices
from ncood.data.formats import IMAGE_EXTENSIONS, list_image_files
from ncood.data.transforms import cover_box, to_model_input
from ncood.errors import ConfigError, DataError
from ncood.io import safe_name, safe_names
from ncood.validation import check_number

logger = logging.getLogger(__name__)

# ImageNet statistics (torchvision's and timm's IMAGENET_DEFAULT_MEAN/STD).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


# --------------------------------------------------------------------------- transform


@dataclass(frozen=True)
class EvalTransform:
    """The evaluation transform of a model: resize, centre crop, channels, normalise.

    The shorter image side is resized to ``resize`` (the longer one to
    ``int(resize * long / short)``, torchvision's ``Resize(int)`` rule), the centre
    ``size x size`` is cropped (offset ``round((new - size) / 2)``, torchvision's
    ``center_crop``; the geometry is :func:`ncood.data.transforms.cover_box`), channels
    are converted to ``channels`` (grey repeated, colour to ITU-R 601 luma) and
    ``(x / 255 - mean) / std`` is applied per channel. This is
    torchvision's ``ImageClassification`` eval preset (resize 256, crop 224 for
    ImageNet models) and timm's ``create_transform(..., is_training=False)`` with
    ``crop_mode="center"`` (``resize = floor(size / crop_pct)``).

    Args:
        size: side of the square model input (the crop).
        resize: shorter side before the crop; ``resize == size`` keeps the whole image
            when it is square.
        channels: channels the model expects (1 or 3).
        mean: per-channel mean in ``[0, 1]`` units.
        std: per-channel standard deviation in ``[0, 1]`` units.
        interpolation: ``"bilinear"`` (antialiased), ``"bicubic"`` (antialiased) or
            ``"nearest"``.
    """

    size: int
    resize: int
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        for key in ("size", "resize"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(
                    f"The {key!r} parameter of EvalTransform must be an int in the range "
                    f"[1, inf). Got {value!r} instead."
                )
            object.__setattr__(self, key, int(value))
        if self.resize < self.size:
            raise ConfigError(
                f"EvalTransform.resize ({self.resize}) must be >= size ({self.size}): the "
                "centre crop is taken from the resized image; pass resize=size to skip it"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"EvalTransform.interpolation must be one of {INTERPOLATIONS}; "
                f"got {self.interpolation!r}"
            )
        spec = self.input_spec()  # validates channels, mean and std
        object.__setattr__(self, "channels", spec.channels)
        object.__setattr__(self, "mean", spec.mean)
        object.__setattr__(self, "std", spec.std)

    @classmethod
    def from_input_spec(cls, spec: InputSpec) -> EvalTransform:
        """The transform of an ncood model: resize to ``spec.size``, no extra crop."""
        return cls(spec.size, spec.size, spec.channels, spec.mean, spec.std)

    def input_spec(self) -> InputSpec:
        """The :class:`~ncood.data.InputSpec` of the model input (after the crop)."""
        return InputSpec(size=self.size, channels=self.channels, mean=self.mean, std=self.std)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able description (feature metadata, cache keys)."""
        return {
            "size": self.size,
            "resize": self.resize,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    def resize_crop(self, images: torch.Tensor) -> torch.Tensor:
        """Resize and centre-crop a batch; channels and values are left as they are.

        Args:
            images: ``uint8 (b, C, H, W)`` (or float in ``[0, 1]``), any device.

        Returns:
            ``uint8 (b, C, size, size)`` (float input: float, clipped to ``[0, 1]``);
            ``images`` itself when nothing changes. ``uint8`` results are rounded back to
            ``uint8``, as torchvision's ``Resize`` does on ``uint8`` tensors.
        """
        h, w = int(images.shape[-2]), int(images.shape[-1])
        new_h, new_w, top, left = cover_box(h, w, self.size, self.size, resize=self.resize)
        if (new_h, new_w) == (h, w) and (h, w) == (self.size, self.size):
            return images
        x = images
        if (new_h, new_w) != (h, w):
            x = x.float() / 255.0 if images.dtype == torch.uint8 else x.float()
            antialias = self.interpolation != "nearest"
            x = F.interpolate(
                x,
                size=(new_h, new_w),
                mode=self.interpolation,
                **({"align_corners": False, "antialias": antialias} if antialias else {}),
            ).clamp_(0.0, 1.0)  # bicubic overshoots
        x = x[..., top : top + self.size, left : left + self.size]
        if images.dtype == torch.uint8 and x.dtype != torch.uint8:
            x = x.mul(255.0).round_().to(torch.uint8)
        return x.contiguous()

    def resize_crop_pil(self, image: Any) -> np.ndarray:
        """Resize, centre-crop and convert one PIL image; ``uint8 (channels, size, size)``.

        Resizing uses PIL (antialiased), as torchvision's and timm's eval transforms do
        on PIL images.
        """
        mode = "L" if self.channels == 1 else "RGB"
        w, h = image.size
        new_h, new_w, top, left = cover_box(h, w, self.size, self.size, resize=self.resize)
        if image.format == "JPEG" and (new_h, new_w) != (h, w):
            image.draft(mode, (new_w, new_h))  # libjpeg decodes at 1/2..1/8 scale, never below
            w, h = image.size
            new_h, new_w, top, left = cover_box(h, w, self.size, self.size, resize=self.resize)
        image = image.convert(mode)
        if (new_h, new_w) != (h, w):
            resample = {
                "bilinear": Image.BILINEAR,
                "bicubic": Image.BICUBIC,
                "nearest": Image.NEAREST,
            }[self.interpolation]
            image = image.resize((new_w, new_h), resample)
        image = image.crop((left, top, left + self.size, top + self.size))
        arr = np.array(image, dtype=np.uint8)  # a writable copy
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 (b, C, size, size) -> float32 (b, channels, size, size)`` model input
        (channel conversion and ``(x - mean) / std``, on ``images.device``)."""
        return to_model_input(images, self.input_spec())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Resize, crop and normalise a ``uint8`` batch: the whole transform."""
        return self.normalize(self.resize_crop(images))


def as_transform(transform: EvalTransform | InputSpec | None) -> EvalTransform | None:
    """An :class:`EvalTransform` from a transform, an ``InputSpec`` or None."""
    if transform is None or isinstance(transform, EvalTransform):
        return transform
    if isinstance(transform, InputSpec):
        return EvalTransform.from_input_spec(transform)
    raise ConfigError(
        f"transform must be an EvalTransform or an InputSpec; got {type(transform).__name__}"
    )


# --------------------------------------------------------------------------- names


_NAMED = re.compile(r"^(?P<name>[^=:/\\]+)=(?P<spec>.+)$")


def parse_named(text: str) -> tuple[str, str]:
    """Split ``"NAME=SPEC"`` into ``(NAME, SPEC)``; a spec alone gets :func:`default_name`.

    ``"faces=folder:/data/faces" -> ("faces", "folder:/data/faces")``;
    ``"folder:/data/faces" -> ("faces", "folder:/data/faces")``. A name holds no ``:``,
    ``/`` or ``\\``, so a path containing ``=`` is never split.

    Raises:
        ConfigError: an empty name or spec.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"a data set must be 'NAME=SPEC' or 'SPEC'; got {text!r}")
    text = text.strip()
    m = _NAMED.match(text)
    if m is None:
        return default_name(text), text
    name, spec = m.group("name").strip(), m.group("spec").strip()
    if not name or not spec:
        raise ConfigError(f"a data set must be 'NAME=SPEC' with both parts; got {text!r}")
    return name, spec


def default_name(spec: str) -> str:
    """A short, file-name-safe name for a spec.

    ``folder:PATH`` -> the folder's own name (``..`` resolved), ``npz:PATH`` -> the file
    stem, a registered name -> itself; always passed through :func:`ncood.io.safe_name`.
    """
    for prefix in ("folder:", "npz:"):
        if spec.startswith(prefix):
            path = Path(spec[len(prefix) :]).expanduser()
            if path.name in ("", ".", ".."):
                path = path.resolve()
            base = path.stem if prefix == "npz:" else path.name
            return safe_name(base or prefix.rstrip(":"))
    return safe_name(spec)


def parse_named_sets(items: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``{name: spec}`` from ``["NAME=SPEC" or "SPEC", ...]`` or a mapping.

    Raises:
        ConfigError: two sets with one name, or two names with one file name.
    """
    if isinstance(items, Mapping):
        out = {str(k): v for k, v in items.items()}
    else:
        if isinstance(items, str):
            items = [items]
        out = {}
        for text in items:
            name, spec = parse_named(text)
            if name in out:
                raise ConfigError(
                    f"two data sets are named {name!r} ({out[name]!r} and {spec!r}); "
                    "name them apart with NAME=SPEC, e.g. faces2=" + spec
                )
            out[name] = spec
    safe_names(out, "data set")
    return out


# --------------------------------------------------------------------------- streams


class ImageStream:
    """One split as batches ``(x, y)``; iterate it as often as needed.

    Attributes:
        name: what was asked for (``"folder:/data/faces"``, ``"fashion_mnist/test"``,
            ``"DataLoader"``).
        source: where the images come from.
        classes: class names (``[]`` when unknown or unlabelled).
        n: number of images, or None when the source cannot tell (iterable datasets).
        transform: the :class:`EvalTransform` the batches were resized for (or None).
    """

    def __init__(
        self,
        batches,
        *,
        name: str,
        source: str,
        classes: list[str] | None = None,
        n: int | None = None,
        transform: EvalTransform | None = None,
    ) -> None:
        self._batches = batches  # a callable returning a fresh iterator
        self.name = name
        self.source = source
        self.classes = list(classes or [])
        self.n = n
        self.transform = transform

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._batches())

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError(f"the number of images of {self.name!r} is not known in advance")
        return self.n

    def describe(self) -> dict[str, Any]:
        """JSON-able description for feature metadata."""
        return {
            "name": self.name,
            "source": self.source,
            "n": self.n,
            "classes": list(self.classes),
            "transform": None if self.transform is None else self.transform.to_dict(),
        }

    def model_batches(
        self, device: str | torch.device = "cpu"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches as model input on ``device``: ``uint8`` batches are normalised there,
        float batches (a user's own transforms) are moved as they are."""
        dev = torch.device(device)
        for x, y in self:
            x = x.to(dev, non_blocking=True)
            if x.dtype == torch.uint8:
                if self.transform is None:
                    raise ConfigError(
                        f"{self.name!r} yields uint8 images but no transform was given; "
                        "pass transform=eval_transform(model) (or an InputSpec)"
                    )
                x = self.transform(x)
            yield x, y.to(dev, non_blocking=True)

    def __repr__(self) -> str:
        return f"ImageStream(name={self.name!r}, n={self.n}, source={self.source!r})"


def open_stream(
    data: Any,
    *,
    transform: EvalTransform | InputSpec | None = None,
    split: str = "test",
    batch_size: int = 256,
    num_workers: int | None = None,
    root: str | os.PathLike | None = None,
    n: int | None = None,
    seed: int = 0,
    allow_subset: bool = False,
    name: str | None = None,
) -> ImageStream:
    """Open any image source as an :class:`ImageStream` (see the module docstring).

    Args:
        data: a ``DataLoader``, a ``Dataset``, a numpy array / torch tensor of images, a
            pair ``(images, labels)``, a registered dataset name, ``"folder:PATH"`` or
            ``"npz:PATH"``.
        transform: the model's :class:`EvalTransform` (or an ``InputSpec``): images are
            resized and cropped to it while streaming. Needed for folders of mixed sizes;
            None keeps images as they are.
        split: ``"train"`` / ``"test"`` for registered names (and ``folder:`` paths with
            split subfolders).
        batch_size: images per batch (ignored for a DataLoader, which has its own).
        num_workers: DataLoader worker processes for decoding (folders and Datasets);
            default ``min(8, cpu_count - 1)``; 0 decodes in this process.
        root: where registered datasets are looked for first.
        n: use ``n`` images (registered names, folders, npz, arrays: a subset drawn from
            ``seed``, stratified when labelled; Datasets: a random subset).
        seed: seed of the subset.
        allow_subset: let the bundled Fashion-MNIST subset stand in when no full copy
            is found.
        name: name of the stream (default: derived from ``data``).

    Returns:
        An :class:`ImageStream`.

    Raises:
        ConfigError: an unsupported ``data`` type or a bad parameter.
        DataError: missing or unreadable data (naming the file).
    """
    check_number(batch_size, "batch_size", "open_stream", kind=numbers.Integral, low=1)
    if n is not None:
        check_number(n, "n", "open_stream", kind=numbers.Integral, low=1)
    check_number(seed, "seed", "open_stream", kind=numbers.Integral, low=0)
    if num_workers is None:
        num_workers = max(0, min(8, (os.cpu_count() or 1) - 1))
    check_number(num_workers, "num_workers", "open_stream", kind=numbers.Integral, low=0)
    tf = as_transform(transform)
    opts = dict(transform=tf, batch_size=int(batch_size), n=n, seed=int(seed))

    if isinstance(data, torch.utils.data.DataLoader):
        if n is not None:
            logger.info("n=%d is ignored for a DataLoader: it yields what it yields", n)
        return _loader_stream(data, tf, name or "DataLoader")
    if isinstance(data, torch.utils.data.Dataset):
        return _dataset_stream(data, name=name, num_workers=int(num_workers), **opts)
    if isinstance(data, (np.ndarray, torch.Tensor)):
        return _array_stream(data, None, name=name or "arrays", source="arrays", **opts)
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], str):
        images, labels = data
        if isinstance(images, (np.ndarray, torch.Tensor)):
            return _array_stream(images, labels, name=name or "arrays", source="arrays", **opts)
    if isinstance(data, (str, os.PathLike)):
        spec = os.fspath(data)
        if spec.startswith("folder:"):
            return _folder_stream(spec, split, name=name, num_workers=int(num_workers), **opts)
        if spec.startswith("npz:"):
            return _npz_stream(spec, split, name=name, **opts)
        return _registry_stream(spec, split, root, allow_subset, name=name, **opts)
    raise ConfigError(
        f"data must be a DataLoader, a Dataset, an image array (or a pair (images, labels)), "
        f"a registered dataset name, 'folder:PATH' or 'npz:PATH'; got {type(data).__name__}"
    )


# ---------------------------------------------------------------- arrays and registry sets


def _array_stream(
    images: Any,
    labels: Any,
    *,
    name: str,
    source: str,
    transform: EvalTransform | None,
    batch_size: int,
    n: int | None,
    seed: int,
    classes: list[str] | None = None,
) -> ImageStream:
    """Batches sliced from an in-memory or memory-mapped array ``(n, ...)``."""
    layout = _layout(tuple(images.shape), name)
    total = int(images.shape[0])
    lab = None
    if labels is not None:
        lab = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        lab = lab.reshape(-1) if lab.ndim == 2 and 1 in lab.shape else lab
        if lab.shape != (total,):
            raise DataError(
                f"{name}: labels must have shape ({total},) to match the images; got {lab.shape}"
            )
        if not np.issubdtype(lab.dtype, np.integer):
            raise DataError(f"{name}: labels must be integers; got dtype {lab.dtype}")
        lab = lab.astype(np.int64)
    index = None
    if n is not None and n < total:
        index = _subset_index(lab, total, n, seed)
        total = n

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, total, batch_size):
            rows = (
                slice(start, start + batch_size)
                if index is None
                else index[start : start + batch_size]
            )
            x = _to_nchw_uint8(images[rows], layout, name)
            if transform is not None:
                x = transform.resize_crop(x)
            if lab is None:
                y = torch.full((x.shape[0],), -1, dtype=torch.int64)
            else:
                y = torch.from_numpy(lab[rows].copy())
            yield x, y

    return ImageStream(
        batches, name=name, source=source, classes=classes, n=total, transform=transform
    )


def _registry_stream(
    spec: str,
    split: str,
    root,
    allow_subset: bool,
    *,
    name: str | None,
    transform: EvalTransform | None,
    batch_size: int,
    n: int | None,
    seed: int,
) -> ImageStream:
    shape = None if transform is None else (transform.channels, transform.size, transform.size)
    arrays = load_images(
        spec, split, root=root, n=n, seed=seed, shape=shape, allow_subset=allow_subset
    )
    return _array_stream(
        arrays.images,
        arrays.labels,
        name=name or arrays.name,
        source=arrays.source,
        transform=transform,
        batch_size=batch_size,
        n=None,  # load_images already subsampled
        seed=seed,
        classes=arrays.classes,
    )


def _subset_index(labels: np.ndarray | None, total: int, n: int, seed: int) -> np.ndarray:
    if labels is not None:
        return stratified_indices(labels, n, seed)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=n, replace=False)).astype(np.int64)


def _layout(shape: tuple[int, ...], name: str) -> str:
    """``"nhw"``, ``"nchw"`` or ``"nhwc"`` of an image array (channel axis: size <= 4)."""
    if len(shape) == 3:
        return "nhw"
    if len(shape) == 4:
        first, last = shape[1] <= 4, shape[3] <= 4
        if first and last:  # tiny images: the layout whose spatial dims are square
            first = not (shape[1] == shape[2] and shape[1] != shape[3])
        if first:
            return "nchw"
        if last:
            return "nhwc"
    raise DataError(
        f"{name}: images must be (n, H, W), (n, H, W, C) or (n, C, H, W) with C <= 4; "
        f"got shape {shape}"
    )


def _to_nchw_uint8(batch: Any, layout: str, name: str) -> torch.Tensor:
    if not isinstance(batch, torch.Tensor):
        batch = np.ascontiguousarray(batch)
        if not batch.flags.writeable:  # a read-only memory map: copy this batch only
            batch = batch.copy()
    x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch)
    if layout == "nhw":
        x = x[:, None]
    elif layout == "nhwc":
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        return x.contiguous()
    if x.dtype.is_floating_point:
        if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
            raise DataError(
                f"{name}: float images must lie in [0, 1]; got range "
                f"{float(x.min()):.4g}..{float(x.max()):.4g}; divide by 255 or pass uint8"
            )
        return x.float().mul(255.0).round_().to(torch.uint8).contiguous()
    raise DataError(f"{name}: images must be uint8 or float in [0, 1]; got dtype {x.dtype}")


# --------------------------------------------------------------------------- npz


def _npz_stream(
    spec: str,
    split: str,
    *,
    name: str | None,
    transform: EvalTransform | None,
    batch_size: int,
    n: int | None,
    seed: int,
) -> ImageStream:
    """``npz:PATH``: ``images`` memory-mapped (stored) or read in order (compressed)."""
    path = Path(spec[len("npz:") :]).expanduser()
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist; check the path after 'npz:'")
    fix = "save it with np.savez(path, images=..., labels=...)"
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            img_key = "images" if "images" in keys else f"{split}_images"
            lab_key = "labels" if img_key == "images" else f"{split}_labels"
            if img_key not in keys:
                raise DataError(
                    f"{path} has no 'images' array (it has: {', '.join(keys) or 'nothing'}); {fix}"
                )
            labels = npz[lab_key] if lab_key in keys else None
            classes = [str(c) for c in npz["classes"]] if "classes" in keys else []
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {path} as .npz ({exc}); {fix}") from exc
    images = _npz_member(path, img_key + ".npy", fix)
    if labels is not None and not classes:
        labels = np.asarray(labels)
        if labels.size and np.issubdtype(labels.dtype, np.integer):
            classes = [str(i) for i in range(int(labels.max()) + 1)]
    return _array_stream(
        images,
        labels,
        name=name or spec,
        source=str(path),
        transform=transform,
        batch_size=batch_size,
        n=n,
        seed=seed,
        classes=classes,
    )


def _npz_member(path: Path, member: str, fix: str):
    """A memory map of a stored (uncompressed) ``.npy`` member, else a row reader."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        with zf.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fh)
            header_len = fh.tell()
    if fortran or dtype.hasobject:
        raise DataError(f"{path}: {member} must be a C-ordered numeric array; {fix}")
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        offset = info.header_offset + 30 + name_len + extra_len + header_len
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return _CompressedRows(path, member, shape, dtype, header_len)


class _CompressedRows:
    """Rows of a compressed ``.npy`` member, decompressed on demand.

    Slices in increasing order (how streams read) continue from the last position;
    anything else restarts from the beginning. Only the rows asked for are kept.
    """

    def __init__(self, path: Path, member: str, shape, dtype, header_len: int) -> None:
        self.path, self.member = path, member
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.header_len = header_len
        self._fh = None
        self._zf = None
        self._pos = 0

    def _seek(self, row: int) -> None:
        if self._fh is None or row < self._pos:
            self.close()
            self._zf = zipfile.ZipFile(self.path)
            self._fh = self._zf.open(self.member)
            self._fh.read(self.header_len)
            self._pos = 0
        while self._pos < row:  # skip forward in bounded chunks
            step = min(row - self._pos, max(1, (64 << 20) // max(self.row_bytes, 1)))
            self._fh.read(step * self.row_bytes)
            self._pos += step

    def _read(self, start: int, stop: int) -> np.ndarray:
        self._seek(start)
        raw = self._fh.read((stop - start) * self.row_bytes)
        self._pos = stop
        return np.frombuffer(raw, dtype=self.dtype).reshape((stop - start,) + self.shape[1:])

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.shape[0])
            return self._read(start, stop)
        rows = np.asarray(rows)
        block = self._read(int(rows.min()), int(rows.max()) + 1)
        return block[rows - int(rows.min())]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._zf.close()
        self._fh = self._zf = None


# --------------------------------------------------------------------------- folders


class _Failure:
    """A decoding error carried out of a worker as a value (one clean line, not a
    re-raised worker traceback)."""

    def __init__(self, message: str) -> None:
        self.message = message


class _ImageFiles(torch.utils.data.Dataset):
    """Image files decoded (and resized for ``transform``) one per item, in workers."""

    def __init__(self, files: list[Path], labels: list[int], transform, channels: int) -> None:
        self.files, self.labels = files, labels
        self.transform = transform
        self.channels = channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.files[i]
        try:
            with Image.open(path) as img:
                if self.transform is not None:
                    arr = self.transform.resize_crop_pil(img)
                else:
                    arr = np.asarray(img.convert("L" if self.channels == 1 else "RGB"))
                    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        except Exception as exc:
            return _Failure(f"cannot read image {path} ({exc}); remove or replace it")
        return torch.from_numpy(np.ascontiguousarray(arr)), self.labels[i], str(path)


def _collate_files(items):
    for item in items:
        if isinstance(item, _Failure):
            return item
    shapes = {tuple(x.shape) for x, _, _ in items}
    if len(shapes) > 1:
        first = {}
        for x, _, p in items:
            first.setdefault(tuple(x.shape), p)
        a, b = list(first.items())[:2]
        return _Failure(
            f"images have different sizes: {a[1]} is {a[0][1:]} and {b[1]} is {b[0][1:]} "
            "(H, W); pass a transform (the model's eval transform or an input size) to "
            "resize them"
        )
    x = torch.stack([x for x, _, _ in items])
    y = torch.tensor([lab for _, lab, _ in items], dtype=torch.int64)
    return x, y


def _folder_stream(
    spec: str,
    split: str,
    *,
    name: str | None,
    transform: EvalTransform | None,
    batch_size: int,
    n: int | None,
    seed: int,
    num_workers: int,
) -> ImageStream:
    path = Path(spec[len("folder:") :]).expanduser()
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist; check the path after 'folder:'")
    path = _split_dir(path, split)
    class_dirs = sorted(
        p for p in path.iterdir() if p.is_dir() and p.name[0] != "." and list_image_files(p)
    )
    files: list[Path] = []
    labels: list[int] = []
    if class_dirs:
        classes = [p.name for p in class_dirs]
        for i, d in enumerate(class_dirs):
            found = list_image_files(d)
            files += found
            labels += [i] * len(found)
        stray = list_image_files(path)
        if stray:
            logger.warning("%s: ignoring %d image(s) outside class folders", path, len(stray))
    else:
        classes, files = [], list_image_files(path)
        labels = [-1] * len(files)
    if not files:
        raise DataError(
            f"no images ({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}) in {path} or "
            "its class folders; expected PATH/<class>/*.png or PATH/*.png"
        )
    if n is not None and n < len(files):
        idx = _subset_index(np.asarray(labels) if classes else None, len(files), n, seed)
        files = [files[i] for i in idx]
        labels = [labels[i] for i in idx]
    channels = 3 if transform is None else transform.channels
    dataset = _ImageFiles(files, labels, transform, channels)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_files,
        prefetch_factor=2 if num_workers else None,
        pin_memory=torch.cuda.is_available(),  # page-locked batches copy to the GPU async
    )

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in loader:
            if isinstance(batch, _Failure):
                raise DataError(batch.message)
            yield batch

    return ImageStream(
        batches,
        name=name or spec,
        source=str(path),
        classes=classes,
        n=len(files),
        transform=transform,
    )


# --------------------------------------------------------------------------- user datasets


def _dataset_stream(
    dataset: torch.utils.data.Dataset,
    *,
    name: str | None,
    transform: EvalTransform | None,
    batch_size: int,
    n: int | None,
    seed: int,
    num_workers: int,
) -> ImageStream:
    """A map-style or iterable ``Dataset`` of ``(image, label)`` items."""
    what = name or type(dataset).__name__
    total = None
    try:
        total = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        pass
    if n is not None and total is not None and n < total:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(total, size=n, replace=False)).tolist()
        dataset = torch.utils.data.Subset(dataset, idx)
        total = n
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_ItemCollate(transform, what),
        pin_memory=torch.cuda.is_available(),
    )

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in loader:
            if isinstance(batch, _Failure):
                raise DataError(batch.message)
            yield batch

    classes = [str(c) for c in getattr(dataset, "classes", []) or []]
    return ImageStream(
        batches,
        name=what,
        source=f"{type(dataset).__name__} (torch Dataset)",
        classes=classes,
        n=total,
        transform=transform,
    )


class _ItemCollate:
    """Collate ``(image, label)`` items of any common kind into one batch."""

    def __init__(self, transform: EvalTransform | None, what: str) -> None:
        self.transform = transform
        self.what = what

    def __call__(self, items: list) -> Any:
        try:
            return self._collate(items)
        except _Bad as exc:
            return _Failure(str(exc))

    def _collate(self, items: list):
        images, labels = [], []
        for item in items:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise _Bad(
                    f"{self.what}: a dataset item must be a pair (image, label); got "
                    f"{_describe(item)}; return (image, label) from __getitem__ (label -1 "
                    "when unknown)"
                )
            images.append(self._image(item[0]))
            labels.append(_label(item[1], self.what))
        kinds = {x.dtype == torch.uint8 for x in images}
        shapes = {tuple(x.shape) for x in images}
        if len(kinds) > 1 or len(shapes) > 1:
            raise _Bad(
                f"{self.what}: items of one batch differ in dtype or shape "
                f"({sorted(str(s) for s in shapes)[:2]}); return images of one size, or "
                "PIL/uint8 images with a transform to resize them"
            )
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)

    def _image(self, img: Any) -> torch.Tensor:
        tf = self.transform
        if hasattr(img, "convert") and hasattr(img, "size"):  # a PIL image
            if tf is not None:
                return torch.from_numpy(np.ascontiguousarray(tf.resize_crop_pil(img)))
            arr = np.asarray(img.convert("RGB"))
            return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        if isinstance(img, np.ndarray):
            if img.ndim == 2:
                img = img[None]
            elif img.ndim == 3 and img.shape[-1] <= 4 and img.shape[0] > 4:
                img = img.transpose(2, 0, 1)  # HWC -> CHW
            img = torch.from_numpy(np.ascontiguousarray(img))
        if not isinstance(img, torch.Tensor) or img.ndim not in (2, 3):
            raise _Bad(
                f"{self.what}: the image of an item must be a PIL image, a (C, H, W) tensor "
                f"or an (H, W[, C]) array; got {_describe(img)}"
            )
        if img.ndim == 2:
            img = img[None]
        if img.dtype == torch.uint8:
            return tf.resize_crop(img[None])[0] if tf is not None else img
        if not img.dtype.is_floating_point:
            raise _Bad(f"{self.what}: images must be uint8 or float; got dtype {img.dtype}")
        return img.float()  # a user's transform made it: model input as it is


class _Bad(Exception):
    pass


def _label(value: Any, what: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise _Bad(
        f"{what}: the label of an item must be an int (class index, -1 when unknown); "
        f"got {_describe(value)}"
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a {obj.dtype} tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, np.ndarray):
        return f"a {obj.dtype} array of shape {obj.shape}"
    if isinstance(obj, Mapping):
        return f"a dict with keys {sorted(map(str, obj))[:6]}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} ({', '.join(_kind(o) for o in obj[:4])})"
    return f"a {type(obj).__name__}"


def _kind(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"tensor{tuple(obj.shape)}"
    return type(obj).__name__


# --------------------------------------------------------------------------- user loaders


def _loader_stream(
    loader: torch.utils.data.DataLoader, transform: EvalTransform | None, name: str
) -> ImageStream:
    """A user's DataLoader, iterated as it is; each batch is checked."""
    total = None
    try:
        total = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        pass

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, batch in enumerate(loader):
            x, y = _check_batch(batch, i, name)
            if x.dtype == torch.uint8 and transform is not None:
                x = transform.resize_crop(x)
            yield x, y

    classes = [str(c) for c in getattr(loader.dataset, "classes", []) or []]
    return ImageStream(
        batches,
        name=name,
        source=f"{type(loader.dataset).__name__} (torch DataLoader)",
        classes=classes,
        n=total,
        transform=transform,
    )


def _check_batch(batch: Any, i: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    expect = (
        "must yield (images, labels): images a (b, C, H, W) tensor, labels a (b,) integer "
        "tensor (-1 when unknown)"
    )
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise DataError(f"{name} {expect}; batch {i} is {_describe(batch)}")
    x, y = batch
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise DataError(f"{name} {expect}; the images of batch {i} are {_describe(x)}")
    if isinstance(y, (list, tuple)) and all(isinstance(v, numbers.Integral) for v in y):
        y = torch.tensor(list(y), dtype=torch.int64)
    if (
        not isinstance(y, torch.Tensor)
        or y.shape != (x.shape[0],)
        or y.is_floating_point()
        or y.dtype == torch.bool
    ):
        raise DataError(f"{name} {expect}; the labels of batch {i} are {_describe(y)}")
    if not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise DataError(f"{name} {expect}; the images of batch {i} have dtype {x.dtype}")
    return x, y.to(torch.int64)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalTransform",
    "ImageStream",
    "as_transform",
    "default_name",
    "open_stream",
    "parse_named",
    "parse_named_sets",
]
