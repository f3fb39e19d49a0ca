"""Small stand-ins for real datasets, written in their exact on-disk formats.

Each writer draws random data from a seed, writes it where torchvision would, and
returns the arrays it wrote so a test can check that the loader gives them back.
The writers use only numpy, pickle, gzip, struct, scipy and PIL, never ncood.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    """Write a uint8 idx file (magic 0x0000 08 <ndim>, big-endian uint32 dims, data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_fmnist(
    directory: Path, *, n_train: int = 50, n_test: int = 20, seed: int = 0, gz: bool = True
) -> dict[str, np.ndarray]:
    """Write the four Fashion-MNIST idx files with random 28x28 images into ``directory``."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
        out[f"{split}_images"] = images
        out[f"{split}_labels"] = labels.astype(np.int64)
    return out


def _dump(path: Path, obj: dict, protocol: int) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)


def write_cifar(
    root: Path, *, variant: str = "cifar10", per_file: int = 12, seed: int = 0, protocol: int = 2
) -> dict[str, object]:
    """Write ``cifar-10-batches-py`` or ``cifar-100-python`` with random images.

    Returns:
        dict with ``train_images`` ``(n, 3, 32, 32)``, ``train_labels``, ``test_*`` and
        ``classes``.
    """
    rng = np.random.default_rng(seed)
    if variant == "cifar10":
        d = root / "cifar-10-batches-py"
        k, label_key = 10, "labels"
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        classes = ["airplane", "automobile", "bird", "cat", "deer"]
        classes += ["dog", "frog", "horse", "ship", "truck"]
        meta_name, meta = "batches.meta", {"label_names": classes, "num_vis": 3072}
    else:
        d = root / "cifar-100-python"
        k, label_key = 100, "fine_labels"
        files = {"train": ["train"], "test": ["test"]}
        classes = [f"class_{i:03d}" for i in range(100)]
        meta_name = "meta"
        meta = {"fine_label_names": classes, "coarse_label_names": [f"c{i}" for i in range(20)]}
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, object] = {"classes": classes, "dir": d}
    for split, names in files.items():
        xs, ys = [], []
        for name in names:
            n = per_file if variant == "cifar10" else per_file * 5
            data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, k, size=n)]
            entry = {"batch_label": name, "data": data, label_key: labels}
            if variant == "cifar100":
                entry["coarse_labels"] = [v // 5 for v in labels]
            _dump(d / name, entry, protocol)
            xs.append(data.reshape(n, 3, 32, 32))
            ys.append(np.array(labels, dtype=np.int64))
        out[f"{split}_images"] = np.concatenate(xs)
        out[f"{split}_labels"] = np.concatenate(ys)
    _dump(d / meta_name, meta, protocol)
    return out


def write_svhn(root: Path, split: str = "test", *, n: int = 30, seed: int = 0) -> dict:
    """Write ``root/svhn/<split>_32x32.mat``: X ``(32, 32, 3, n)`` uint8, y ``(n, 1)`` 1..10."""
    import scipy.io

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)  # 10 means digit 0
    y[:3, 0] = [10, 1, 9]
    d = root / "svhn"
    d.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(d / f"{split}_32x32.mat", {"X": x, "y": y})
    return {"X": x, "y": y}


def write_image(path: Path, array: np.ndarray) -> None:
    """Save ``(H, W)`` or ``(H, W, C)`` uint8 as a lossless PNG (whatever the suffix)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def write_dtd(
    root: Path,
    *,
    classes: tuple[str, ...] = ("banded", "dotted", "zigzagged"),
    per_class: int = 4,
    size: tuple[int, int] = (32, 32),
    with_labels: bool = True,
    seed: int = 0,
) -> dict[str, object]:
    """Write torchvision's DTD layout ``root/dtd/dtd/{images,labels}`` with PNG content.

    Half of each class goes to ``train1.txt``, the rest to ``test1.txt``.

    Returns:
        ``{split: [(relative path, label, (H, W, 3) array), ...]}``.
    """
    rng = np.random.default_rng(seed)
    base = root / "dtd" / "dtd"
    splits: dict[str, list] = {"train": [], "test": []}
    for label, cls in enumerate(sorted(classes)):
        for i in range(per_class):
            rel = f"{cls}/{cls}_{i:04d}.jpg"
            arr = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            write_image(base / "images" / rel, arr)
            splits["train" if i < per_class // 2 else "test"].append((rel, label, arr))
    if with_labels:
        (base / "labels").mkdir(parents=True, exist_ok=True)
        for split, items in splits.items():
            text = "".join(f"{rel}\n" for rel, _, _ in items)
            (base / "labels" / f"{split}1.txt").write_text(text)
    return splits
