"""Readers for the on-disk formats, each returning ``uint8 (n, C, H, W)`` numpy arrays.

- idx (MNIST / Fashion-MNIST), gzip-compressed or plain, read directly so that
  re-compressed copies (Debian's ``dataset-fashion-mnist``) work without a checksum;
- the CIFAR-10/100 python pickles (``cifar-10-batches-py``, ``cifar-100-python``), read
  with an unpickler that only admits numpy arrays;
- SVHN's ``*_32x32.mat`` (MATLAB v5, via scipy);
- image files (PNG/JPEG/...), decoded in threads and resized to one common size;
- ``.npz`` arrays.

Every malformed input raises :class:`~ncood.errors.DataError` naming the file and a fix.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ncood.data.transforms import cover_box
from ncood.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

# --------------------------------------------------------------------------- idx


_IDX_UBYTE = 0x08  # the only idx element type used by (Fashion-)MNIST


def read_idx(path: str | os.PathLike, ndim: int, fix: str) -> np.ndarray:
    """Read an idx file of unsigned bytes (gzip or plain, detected by content).

    Format (LeCun et al.): two zero bytes, type code ``0x08``, number of dimensions,
    then that many big-endian uint32 sizes, then the data.

    Args:
        path: the file.
        ndim: expected number of dimensions (3 for images, 1 for labels).
        fix: how to get a good copy, appended to error messages.

    Returns:
        ``uint8`` array with the header's shape.
    """
    path = Path(path)
    raw = _read_bytes(path, fix)

    def corrupt(why: str) -> DataError:
        return DataError(f"{path} is not a valid idx file: {why}; {fix}")

    if len(raw) < 4:
        raise corrupt(f"only {len(raw)} bytes")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise corrupt(f"bad magic number 0x{raw[:4].hex()} (expected 0x000008{ndim:02x})")
    if raw[3] != ndim:
        raise corrupt(f"{raw[3]} dimensions in the header, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise corrupt("truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise corrupt(
            f"{len(raw)} bytes but the header {tuple(dims)} needs {expected} (truncated or padded)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _read_bytes(path: Path, fix: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
            fh.seek(0)
            if magic == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=fh) as gz:
                    return gz.read()
            return fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path} is a truncated or corrupt gzip file ({exc}); {fix}") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); {fix}") from exc


def read_idx_pair(
    images_path: Path, labels_path: Path, num_classes: int, fix: str
) -> tuple[np.ndarray, np.ndarray]:
    """Read an images/labels idx pair and check they agree.

    Returns:
        images ``uint8 (n, 1, H, W)`` and labels ``int64 (n,)``.
    """
    images = read_idx(images_path, 3, fix)
    labels = read_idx(labels_path, 1, fix).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has "
            f"{labels.shape[0]} labels; the two files come from different copies; {fix}"
        )
    if labels.size and labels.max() >= num_classes:
        raise DataError(
            f"{labels_path} has label {int(labels.max())}, expected 0..{num_classes - 1}; {fix}"
        )
    return images[:, None], labels


# --------------------------------------------------------------------------- CIFAR


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler admitting only what the CIFAR pickles contain (numpy arrays, lists).

    A pickle can run arbitrary code on load; the dataset directories are user-writable,
    so only the few globals numpy arrays need are resolved.
    """

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]  # numpy 2 moved it
        return super().find_class(module, name)


def read_pickle(path: Path, fix: str) -> dict:
    """Load one CIFAR pickle (``encoding='latin1'``, as torchvision) into a dict."""
    try:
        with open(path, "rb") as fh:
            obj = _NumpyOnlyUnpickler(fh, encoding="latin1").load()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); {fix}") from exc
    except Exception as exc:  # any unpickling failure means a corrupt file
        raise DataError(f"{path} is not a valid CIFAR pickle ({exc}); {fix}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict; {fix}")
    return obj


def read_cifar_batches(
    paths: Sequence[Path], label_key: str, num_classes: int, fix: str
) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate CIFAR batch pickles.

    Each holds ``data`` ``uint8 (k, 3072)`` (1024 red, 1024 green, 1024 blue values,
    row-major 32x32) and a list ``label_key`` of ``k`` ints.

    Returns:
        images ``uint8 (n, 3, 32, 32)`` and labels ``int64 (n,)``.
    """
    images, labels = [], []
    for path in paths:
        entry = read_pickle(path, fix)
        if "data" not in entry or label_key not in entry:
            raise DataError(f"{path} lacks 'data' or {label_key!r} (has {sorted(entry)}); {fix}")
        data = np.asarray(entry["data"])
        lab = np.asarray(entry[label_key], dtype=np.int64).reshape(-1)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(
                f"{path}: 'data' must be uint8 (n, 3072); got {data.dtype} {data.shape}; {fix}"
            )
        if lab.shape[0] != data.shape[0]:
            raise DataError(f"{path} has {data.shape[0]} images but {lab.shape[0]} labels; {fix}")
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            raise DataError(
                f"{path} has labels in {int(lab.min())}..{int(lab.max())}, expected "
                f"0..{num_classes - 1}; {fix}"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


# --------------------------------------------------------------------------- SVHN


def read_svhn_mat(path: Path, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN ``*_32x32.mat``: ``X`` ``(32, 32, 3, n)``, ``y`` ``(n, 1)`` with 10 for 0.

    Returns:
        images ``uint8 (n, 3, 32, 32)`` and labels ``int64 (n,)`` in ``0..9``.
    """
    import scipy.io  # only SVHN's .mat files need it (scipy.io: ~0.3 s to import)

    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError on bad files
        raise DataError(f"{path} is not a readable MATLAB file ({exc}); {fix}") from exc
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} lacks the 'X' and 'y' variables of SVHN; {fix}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != y.shape[0]:
        raise DataError(
            f"{path}: expected X of shape (32, 32, 3, n) and y of shape (n, 1); got "
            f"{x.shape} and {mat['y'].shape}; {fix}"
        )
    if x.dtype != np.uint8:
        raise DataError(f"{path}: X must be uint8; got {x.dtype}; {fix}")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 10):
        raise DataError(f"{path}: labels must be in 0..10; got {labels.min()}..{labels.max()}")
    labels[labels == 10] = 0  # SVHN stores digit 0 as label 10
    return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1))), labels


# --------------------------------------------------------------------------- image files


def list_image_files(directory: Path) -> list[Path]:
    """Image files directly inside ``directory``, sorted by name (hidden files skipped)."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def probe_images(paths: Sequence[Path]) -> tuple[set[tuple[int, int]], set[str]]:
    """Sizes ``(H, W)`` and PIL modes of image files, reading only their headers."""
    sizes, modes = set(), set()
    for path in paths:
        try:
            with Image.open(path) as img:
                sizes.add((img.height, img.width))
                modes.add(img.mode)
        except Exception as exc:
            raise DataError(f"cannot read image {path} ({exc}); remove or replace it") from exc
    return sizes, modes


def decode_images(paths: Sequence[Path], channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """Decode image files into one ``uint8 (n, channels, H, W)`` array.

    Args:
        paths: image files.
        channels: 1 (PIL ``"L"``, ITU-R 601 luma), 3 (``"RGB"``, alpha dropped) or 4.
        size: ``(H, W)`` to resize to: scale so the image covers ``H x W`` (bilinear,
            antialiased by PIL when shrinking), then centre-crop; for a square target
            this is torchvision's ``Resize(H)`` + ``CenterCrop(H)``. ``None``: keep the
            size (every image must then have the same size).

    Returns:
        ``uint8 (n, channels, H, W)``.
    """
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]

    def load(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as img:
                if size is not None and img.format == "JPEG":
                    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below the target.
                    img.draft(mode, (size[1], size[0]))
                img = img.convert(mode)
                if size is not None:
                    img = _cover_and_crop(img, size)
                arr = np.asarray(img, dtype=np.uint8)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot decode image {path} ({exc}); remove or replace it") from exc
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL
        arrays = list(pool.map(load, paths))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(
            f"images have different sizes {sorted(shapes)[:3]}...; pass shape=(C, H, W) "
            "to resize them to one size"
        )
    if not arrays:
        return np.zeros((0, channels) + (size or (0, 0)), dtype=np.uint8)
    return np.ascontiguousarray(np.stack(arrays))


def _cover_and_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize a PIL image to cover ``size = (H, W)`` and centre-crop it (geometry:
    :func:`ncood.data.transforms.cover_box`, shared with the batch resize)."""
    th, tw = size
    w, h = img.size
    if (h, w) == (th, tw):
        return img
    nh, nw, top, left = cover_box(h, w, th, tw)
    if (nh, nw) != (h, w):
        img = img.resize((nw, nh), Image.BILINEAR)
    return img.crop((left, top, left + tw, top + th))


# --------------------------------------------------------------------------- npz


def read_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Read images (and optional labels, classes) from an ``.npz`` file.

    Arrays: ``images`` (or ``<split>_images``) shaped ``(n, H, W)``, ``(n, H, W, C)`` or
    ``(n, C, H, W)`` (the channel axis is the one of size <= 4 next to two larger
    ones), ``uint8`` or float in ``[0, 1]``; optional ``labels`` (``<split>_labels``)
    ``(n,)`` integers; optional ``classes`` (strings).

    Returns:
        images ``uint8 (n, C, H, W)``, labels ``int64 (n,)`` or None, class names.
    """
    fix = "save it with np.savez(path, images=..., labels=...)"
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"cannot read {path} as .npz ({exc}); {fix}") from exc
    with npz:
        keys = list(npz.files)
        img_key = "images" if "images" in keys else f"{split}_images"
        if img_key not in keys:
            raise DataError(
                f"{path} has no 'images' array (it has: {', '.join(keys) or 'nothing'}); {fix}"
            )
        lab_key = "labels" if img_key == "images" else f"{split}_labels"
        try:
            images = npz[img_key]
            labels = npz[lab_key] if lab_key in keys else None
            classes = [str(c) for c in npz["classes"]] if "classes" in keys else []
        except ValueError as exc:  # object arrays need pickle
            raise DataError(f"cannot read arrays of {path} ({exc}); {fix}") from exc
    images = _to_nchw_uint8(images, path)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1) if np.ndim(labels) == 2 else np.asarray(labels)
        if labels.shape != (images.shape[0],):
            raise DataError(
                f"{path}: labels must have shape ({images.shape[0]},) to match images; "
                f"got {labels.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            if np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0):
                labels = labels.astype(np.int64)
            else:
                raise DataError(f"{path}: labels must be integers; got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if labels.size and labels.min() < 0:
            raise DataError(f"{path}: labels must be >= 0; got {int(labels.min())}")
        n_cls = int(labels.max()) + 1 if labels.size else 0
        if classes and len(classes) < n_cls:
            raise DataError(
                f"{path}: 'classes' names {len(classes)} classes but labels go up to {n_cls - 1}"
            )
        if not classes:
            classes = [str(i) for i in range(n_cls)]
    else:
        classes = []
    return images, labels, classes


def _to_nchw_uint8(images: np.ndarray, path: Path) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        chan_first = x.shape[1] <= 4
        chan_last = x.shape[3] <= 4
        if chan_first and chan_last:
            chan_first = not (x.shape[1] == x.shape[2] and x.shape[1] != x.shape[3])
            # ambiguous tiny images: prefer the layout whose spatial dims are square
        elif not (chan_first or chan_last):
            raise DataError(
                f"{path}: cannot tell the channel axis of images with shape {x.shape}; "
                "save them as (n, H, W), (n, H, W, C) or (n, C, H, W) with C <= 4"
            )
        if not chan_first:
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(
            f"{path}: images must be (n, H, W), (n, H, W, C) or (n, C, H, W); got {x.shape}"
        )
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating):
        if x.size and (not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0):
            raise DataError(
                f"{path}: float images must lie in [0, 1]; got range "
                f"{np.nanmin(x):.4g}..{np.nanmax(x):.4g}; divide by 255 or save as uint8"
            )
        return np.ascontiguousarray(np.rint(x * 255.0).astype(np.uint8))
    if np.issubdtype(x.dtype, np.integer) and (x.size == 0 or (x.min() >= 0 and x.max() <= 255)):
        return np.ascontiguousarray(x.astype(np.uint8))
    raise DataError(
        f"{path}: images must be uint8 or float in [0, 1]; got dtype {x.dtype}; save them as uint8"
    )
