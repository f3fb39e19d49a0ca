"""Tests of ncood.data: loaders (real Fashion-MNIST and on-disk stand-ins), resolution
order, errors, class subsets, generated sets, transforms and batching.

Every check compares against an independent computation: numpy decoding of the raw
files, the arrays the stand-in writers wrote, torchvision's resize, explicit luma
weights, numpy statistics, closed-form moments. No test touches the network:
torchvision downloads are replaced by a stub.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import ncood.data.sources as sources
from data_standins import (
    write_cifar,
    write_dtd,
    write_fmnist,
    write_idx,
    write_image,
    write_svhn,
)
from ncood.data import (
    ArrayDataset,
    ImageArrays,
    InputSpec,
    input_spec_for,
    iterate_batches,
    list_datasets,
    load_images,
    resolve_root,
    stratified_indices,
    subset_asset_path,
    to_model_input,
)
from ncood.errors import ConfigError, DataError, ShapeError

FMNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No env root, an empty HOME and system root, and a download stub that fails."""
    home = tmp_path / "home"
    system = tmp_path / "system"
    home.mkdir()
    system.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NCOOD_DATA_ROOT", raising=False)
    monkeypatch.delenv("NCOOD_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "DEFAULT_SYSTEM_ROOT", system)
    monkeypatch.setattr(sources, "SYSTEM_ROOTS", {})
    calls = []

    def no_network(dataset, dest, split):
        calls.append((dataset, Path(dest), split))
        raise DataError(f"torchvision download of {dataset} failed: no network in tests")

    monkeypatch.setattr(sources, "torchvision_download", no_network)
    return {"home": home, "cache": home / ".cache" / "ncood", "system": system, "calls": calls}


def _real_fmnist_dir() -> Path | None:
    bases = [p for p in os.environ.get("NCOOD_DATA_ROOT", "").split(os.pathsep) if p]
    bases.append("/work/shared/data")
    for base in bases:
        d = Path(base) / "fashion-mnist"
        if all((d / f"{s}.gz").is_file() or (d / s).is_file() for s in FMNIST_STEMS):
            return d
    return None


REAL_FMNIST = _real_fmnist_dir()
needs_real = pytest.mark.skipif(REAL_FMNIST is None, reason="real Fashion-MNIST not found")


def _decode_idx_numpy(path: Path) -> np.ndarray:
    """Independent idx decoder: gzip + fixed header sizes of (Fashion-)MNIST."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if raw[3] == 3:
        n, h, w = (int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(3))
        return np.frombuffer(raw[16:], np.uint8).reshape(n, h, w)
    return np.frombuffer(raw[8:], np.uint8)


# --------------------------------------------------------------------------- Fashion-MNIST


@needs_real
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist(split, n, monkeypatch):
    monkeypatch.setenv("NCOOD_DATA_ROOT", str(REAL_FMNIST.parent))
    arrays = load_images("fashion_mnist", split)
    assert arrays.images.shape == (n, 1, 28, 28) and arrays.images.dtype == torch.uint8
    assert arrays.images.is_contiguous()
    assert arrays.labels.dtype == torch.int64
    counts = np.bincount(arrays.labels.numpy(), minlength=10)
    np.testing.assert_array_equal(counts, np.full(10, n // 10))
    assert arrays.classes[0] == "T-shirt/top" and len(arrays.classes) == 10
    assert arrays.name == f"fashion_mnist/{split}"
    prefix = "train" if split == "train" else "t10k"
    ref_x = _decode_idx_numpy(REAL_FMNIST / f"{prefix}-images-idx3-ubyte.gz")
    ref_y = _decode_idx_numpy(REAL_FMNIST / f"{prefix}-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(arrays.images[:, 0].numpy(), ref_x)
    np.testing.assert_array_equal(arrays.labels.numpy(), ref_y)
    again = load_images("fashion_mnist", split)  # decoded once, then cached
    assert again.images.data_ptr() == arrays.images.data_ptr()


@needs_real
def test_bundled_subset_matches_real_data(monkeypatch):
    path = subset_asset_path()
    assert path.is_file() and path.stat().st_size < 3_000_000
    with np.load(path) as npz:
        for split, n in (("train", 3000), ("test", 1000)):
            x, y = npz[f"{split}_images"], npz[f"{split}_labels"]
            assert x.shape == (n, 28, 28) and x.dtype == np.uint8
            np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, n // 10))
            prefix = "train" if split == "train" else "t10k"
            full_y = _decode_idx_numpy(REAL_FMNIST / f"{prefix}-labels-idx1-ubyte.gz")
            full_x = _decode_idx_numpy(REAL_FMNIST / f"{prefix}-images-idx3-ubyte.gz")
            idx = stratified_indices(full_y.astype(np.int64), n, 0)  # how it was made
            np.testing.assert_array_equal(x, full_x[idx])
            np.testing.assert_array_equal(y, full_y[idx])


def test_resolution_order(tmp_path, offline, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    data = {
        "explicit": write_fmnist(explicit / "fashion-mnist", n_test=11, seed=1),
        "env": write_fmnist(env / "FashionMNIST" / "raw", n_test=12, seed=2, gz=False),
        "cache": write_fmnist(offline["cache"] / "fashion-mnist", n_test=13, seed=3),
        "system": write_fmnist(offline["system"] / "fashion-mnist", n_test=14, seed=4),
    }
    monkeypatch.setenv("NCOOD_DATA_ROOT", str(env))
    expected_dirs = {
        "explicit": explicit / "fashion-mnist",
        "env": env / "FashionMNIST" / "raw",
        "cache": offline["cache"] / "fashion-mnist",
        "system": offline["system"] / "fashion-mnist",
    }
    order = ["explicit", "env", "cache", "system"]
    assert resolve_root("fashion_mnist", explicit) == [
        explicit,
        env,
        offline["cache"],
        offline["system"],
    ]
    for i, which in enumerate(order):
        root = explicit if i == 0 else None
        if which == "cache":
            monkeypatch.delenv("NCOOD_DATA_ROOT")
        if which == "system":
            os.rename(offline["cache"], tmp_path / "cache_moved")
        arrays = load_images("fashion_mnist", "test", root=root)
        assert arrays.source == str(expected_dirs[which])
        np.testing.assert_array_equal(arrays.images[:, 0].numpy(), data[which]["test_images"])
        np.testing.assert_array_equal(arrays.labels.numpy(), data[which]["test_labels"])
    assert offline["calls"] == []  # found on disk: no download attempted


def test_flat_root_and_logged_source(tmp_path, offline, caplog):
    write_fmnist(tmp_path / "flat", n_train=10, n_test=10)
    with caplog.at_level(logging.INFO, logger="ncood.data"):
        arrays = load_images("fashion_mnist", "train", root=tmp_path / "flat")
    assert len(arrays) == 10
    assert any(str(tmp_path / "flat") in r.getMessage() for r in caplog.records)


def _corrupt(kind: str, d: Path) -> Path:
    write_fmnist(d, n_train=10, n_test=10, gz=kind not in ("truncated_plain", "bad_magic"))
    if kind == "truncated_gz":
        p = d / "t10k-images-idx3-ubyte.gz"
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    elif kind == "truncated_plain":
        p = d / "t10k-images-idx3-ubyte"
        p.write_bytes(p.read_bytes()[:-100])
    elif kind == "bad_magic":
        p = d / "t10k-labels-idx1-ubyte"
        p.write_bytes(b"\x00\x00\x08\x03" + p.read_bytes()[4:])
    elif kind == "count_mismatch":
        p = d / "t10k-labels-idx1-ubyte.gz"
        write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(7, np.uint8))
    return p


@pytest.mark.parametrize("kind", ["truncated_gz", "truncated_plain", "bad_magic", "count_mismatch"])
def test_corrupt_idx_raises_data_error(kind, tmp_path, offline):
    bad = _corrupt(kind, tmp_path / "fashion-mnist")
    with pytest.raises(DataError) as err:
        load_images("fashion_mnist", "test", root=tmp_path)
    assert bad.name in str(err.value)
    assert "fresh copy" in str(err.value) or "different copies" in str(err.value)


def test_missing_everywhere_lists_places(tmp_path, offline, monkeypatch):
    monkeypatch.setenv("NCOOD_DATA_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        load_images("fashion_mnist", "train", root=tmp_path / "explicit")
    msg = str(err.value)
    for place in (
        tmp_path / "explicit" / "fashion-mnist",
        tmp_path / "nowhere" / "FashionMNIST" / "raw",
        offline["cache"] / "fashion-mnist",
        offline["system"] / "fashion-mnist",
    ):
        assert str(place) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "no network in tests" in msg
    assert offline["calls"] == [("fashion_mnist", tmp_path / "explicit", "train")]
    # download=False and NCOOD_OFFLINE skip the download attempt altogether.
    with pytest.raises(DataError, match="download=False"):
        load_images("fashion_mnist", "train", download=False)
    monkeypatch.setenv("NCOOD_OFFLINE", "1")
    with pytest.raises(DataError, match="NCOOD_OFFLINE"):
        load_images("fashion_mnist", "train")
    assert len(offline["calls"]) == 1


def test_bundled_subset_only_when_allowed(offline, caplog):
    with pytest.raises(DataError):
        load_images("fashion_mnist", "test")
    with caplog.at_level(logging.WARNING, logger="ncood.data"):
        arrays = load_images("fashion_mnist", "test", allow_subset=True)
    assert arrays.images.shape == (1000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(arrays.labels.numpy()), np.full(10, 100))
    assert "bundled subset" in arrays.source
    assert any("bundled subset" in r.getMessage() for r in caplog.records)


def test_download_fallback_reads_torchvision_layout(tmp_path, offline, monkeypatch):
    written = {}

    def fake_download(dataset, dest, split):  # what torchvision leaves on disk
        written.update(write_fmnist(Path(dest) / "FashionMNIST" / "raw", n_test=9, seed=5))

    monkeypatch.setattr(sources, "torchvision_download", fake_download)
    arrays = load_images("fashion_mnist", "test")
    assert arrays.source == str(offline["cache"] / "FashionMNIST" / "raw")
    np.testing.assert_array_equal(arrays.images[:, 0].numpy(), written["test_images"])


def test_cache_reloads_replaced_files(tmp_path, offline):
    d = tmp_path / "fashion-mnist"
    write_fmnist(d, n_test=10, seed=0)
    first = load_images("fashion_mnist", "test", root=tmp_path)
    assert load_images("fashion_mnist", "test", root=tmp_path).images is first.images
    new = write_fmnist(d, n_test=16, seed=1)
    second = load_images("fashion_mnist", "test", root=tmp_path)
    np.testing.assert_array_equal(second.images[:, 0].numpy(), new["test_images"])


# --------------------------------------------------------------------------- stand-ins


@pytest.mark.parametrize("variant,protocol", [("cifar10", 2), ("cifar10", 5), ("cifar100", 4)])
def test_cifar_round_trip(variant, protocol, tmp_path, offline):
    ref = write_cifar(tmp_path, variant=variant, protocol=protocol)
    for split in ("train", "test"):
        arrays = load_images(variant, split, root=tmp_path)
        np.testing.assert_array_equal(arrays.images.numpy(), ref[f"{split}_images"])
        np.testing.assert_array_equal(arrays.labels.numpy(), ref[f"{split}_labels"])
        assert arrays.classes == ref["classes"] and arrays.source == str(ref["dir"])
    # pixel (c, h, w) of image i is data[i, c*1024 + h*32 + w] in the pickle
    data = pickle.loads(
        (ref["dir"] / ("test_batch" if variant == "cifar10" else "test")).read_bytes()
    )
    assert arrays.images[3, 2, 5, 7] == data["data"][3, 2 * 1024 + 5 * 32 + 7]


def test_cifar_missing_and_malicious_pickle(tmp_path, offline):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz") as err:
        load_images("cifar10", "test", root=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)
    ref = write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (ref["dir"] / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError, match="not allowed"):
        load_images("cifar10", "test", root=tmp_path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("split", ["train", "test"])
def test_svhn_round_trip(split, tmp_path, offline):
    ref = write_svhn(tmp_path, split)
    arrays = load_images("svhn", split, root=tmp_path)
    x, y = ref["X"], ref["y"][:, 0].astype(np.int64)
    assert arrays.images.shape == (x.shape[3], 3, 32, 32)
    i, c, h, w = 4, 1, 30, 2
    assert arrays.images[i, c, h, w] == x[h, w, c, i]
    np.testing.assert_array_equal(arrays.images.numpy(), np.moveaxis(x, (3, 2), (0, 1)))
    np.testing.assert_array_equal(arrays.labels.numpy(), np.where(y == 10, 0, y))
    assert arrays.labels[:3].tolist() == [0, 1, 9]


@pytest.mark.parametrize("variant", ["cifar10", "cifar100", "svhn"])
def test_readers_give_torchvision_datasets_arrays(variant, tmp_path, offline, monkeypatch):
    """Our CIFAR/SVHN readers equal ``torchvision.datasets(..., download=False)``.

    torchvision refuses any copy whose files' MD5 differ from the originals' (these
    stand-ins, re-packaged copies) with a generic "not found or corrupted", so ncood keeps
    its own readers (which name the bad file and the fix) and checks them against
    torchvision here, with the checksum test switched off in torchvision only.
    """
    import torchvision.datasets as tvd

    for module in (tvd.cifar, tvd.svhn):  # the MD5 test, in torchvision only
        monkeypatch.setattr(module, "check_integrity", lambda *args, **kwargs: True)
    if variant == "svhn":
        write_svhn(tmp_path, "test")
        ref = tvd.SVHN(str(tmp_path / "svhn"), split="test", download=False)
        want_x, want_y, classes = ref.data, ref.labels, [str(i) for i in range(10)]
    else:
        write_cifar(tmp_path, variant=variant)
        cls = tvd.CIFAR10 if variant == "cifar10" else tvd.CIFAR100
        ref = cls(str(tmp_path), train=False, download=False)
        want_x, want_y, classes = ref.data.transpose(0, 3, 1, 2), ref.targets, ref.classes
    arrays = load_images(variant, "test", root=tmp_path)
    np.testing.assert_array_equal(arrays.images.numpy(), want_x)
    np.testing.assert_array_equal(arrays.labels.numpy(), np.asarray(want_y))
    assert arrays.classes == list(classes)


@pytest.mark.parametrize("h,w,size", [(64, 48, 32), (40, 60, 28), (20, 30, 32), (45, 45, 32)])
def test_file_and_batch_resizes_share_geometry_and_agree(h, w, size):
    """The PIL resize of image files and the torch resize of batches (one geometry,
    ``cover_box``) agree up to PIL's rounding to uint8."""
    from PIL import Image

    from ncood.data.formats import _cover_and_crop
    from ncood.data.transforms import cover_box, resize_square

    img = np.random.default_rng(h * w).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    pil = np.asarray(_cover_and_crop(Image.fromarray(img), (size, size))).astype(np.float64)
    batch = torch.from_numpy(img).permute(2, 0, 1)[None].double() / 255
    ours = resize_square(batch.float(), size)[0].permute(1, 2, 0).double().numpy() * 255
    assert pil.shape == ours.shape == (size, size, 3)
    assert np.abs(pil - ours).max() <= 1.0
    nh, nw, top, left = cover_box(h, w, size, size)
    assert min(nh, nw) == size and (top, left) == (round((nh - size) / 2), round((nw - size) / 2))


@pytest.mark.parametrize("with_labels", [True, False])
@pytest.mark.parametrize("name", ["textures", "dtd"])
def test_dtd_round_trip(name, with_labels, tmp_path, offline):
    ref = write_dtd(tmp_path, with_labels=with_labels)
    arrays = load_images(name, "test", root=tmp_path)
    assert arrays.classes == ["banded", "dotted", "zigzagged"]
    items = ref["test"] if with_labels else sorted(ref["train"] + ref["test"])
    assert len(arrays) == len(items)
    for k, (_, label, arr) in enumerate(items):
        np.testing.assert_array_equal(arrays.images[k].numpy(), arr.transpose(2, 0, 1))
        assert arrays.labels[k] == label


def test_dtd_resize_matches_torchvision(tmp_path, offline):
    from PIL import Image
    from torchvision.transforms import functional as TF

    ref = write_dtd(tmp_path, size=(45, 60), per_class=2)
    arrays = load_images("textures", "train", root=tmp_path, shape=(3, 24, 24))
    assert arrays.images.shape == (3, 3, 24, 24)
    for k, (_, _, arr) in enumerate(ref["train"]):
        img = TF.center_crop(TF.resize(Image.fromarray(arr), 24), 24)
        np.testing.assert_array_equal(arrays.images[k].numpy(), np.asarray(img).transpose(2, 0, 1))
    grey = load_images("textures", "train", root=tmp_path, shape=(1, 24, 24))
    assert grey.images.shape == (3, 1, 24, 24)


# --------------------------------------------------------------------------- name syntax


def test_class_subset_syntax(tmp_path, offline):
    ref = write_fmnist(tmp_path / "fashion-mnist", n_test=40)
    x, y = ref["test_images"], ref["test_labels"]
    for spec, picked in (
        ("[0-5]", [0, 1, 2, 3, 4, 5]),
        ("[7,2]", [7, 2]),
        ("[Bag, 0-1]", [8, 0, 1]),
    ):
        arrays = load_images(f"fashion_mnist{spec}", "test", root=tmp_path)
        keep = np.isin(y, picked)
        np.testing.assert_array_equal(arrays.images[:, 0].numpy(), x[keep])
        remap = {c: i for i, c in enumerate(picked)}
        np.testing.assert_array_equal(arrays.labels.numpy(), [remap[v] for v in y[keep]])
        assert arrays.name == f"fashion_mnist{spec}/test"
    full = load_images("fashion_mnist", "test", root=tmp_path, shape=(3, 32, 32))
    assert full.shape == (1, 28, 28)  # stored size kept; shape is for generated sets
    sub = load_images("fashion_mnist[7,2]", "test", root=tmp_path)
    assert sub.classes == [full.classes[7], full.classes[2]]


@pytest.mark.parametrize(
    "name,match",
    [
        ("fashion_mnist[10]", "out of range"),
        ("fashion_mnist[5-2]", "backwards"),
        ("fashion_mnist[1,1]", "twice"),
        ("fashion_mnist[]", "empty"),
        ("fashion_mnist[cat]", "neither an index"),
        ("gaussian_noise[0]", "labelled"),
        ("fashon_mnist", "did you mean 'fashion_mnist'"),
    ],
)
def test_bad_names_raise_config_error(name, match, tmp_path, offline):
    write_fmnist(tmp_path / "fashion-mnist", n_test=10)
    with pytest.raises(ConfigError, match=match):
        load_images(name, "test", root=tmp_path)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "fashion_mnist", "split": "val"}, "split of 'fashion_mnist'"),
        ({"name": "gaussian_noise", "split": "valid"}, "split must be one of"),
        ({"name": "digits", "n": 0}, "'n' parameter"),
        ({"name": "uniform_noise", "shape": (2, 32)}, "shape must be"),
        ({"name": "uniform_noise", "shape": (5, 8, 8)}, "shape must be"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, match, tmp_path, offline):
    write_fmnist(tmp_path / "fashion-mnist", n_test=10)
    kwargs = {"split": "test", **kwargs}
    with pytest.raises(ConfigError, match=match):
        load_images(kwargs.pop("name"), root=tmp_path, **kwargs)


def test_list_datasets():
    names = list_datasets()
    for name in ("fashion_mnist", "cifar10", "cifar100", "svhn", "textures", "dtd", "digits"):
        assert name in names
    assert {"texture_crops", "gaussian_noise", "uniform_noise"} <= set(names)


def test_folder_layouts(tmp_path, offline):
    rng = np.random.default_rng(0)
    labelled = tmp_path / "labelled"
    ref = {}
    for cls in ("b_class", "a_class"):
        for i in range(3):
            arr = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
            write_image(labelled / cls / f"{i}.png", arr)
            ref[(cls, i)] = arr
    arrays = load_images(f"folder:{labelled}", "test")
    assert arrays.classes == ["a_class", "b_class"]
    assert arrays.labels.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(arrays.images[4].numpy(), ref[("b_class", 1)].transpose(2, 0, 1))
    sub = load_images(f"folder:{labelled}[b_class]", "test")
    assert sub.labels.tolist() == [0, 0, 0] and sub.classes == ["b_class"]

    flat = tmp_path / "flat"
    greys = [rng.integers(0, 256, size=(8, 8), dtype=np.uint8) for _ in range(4)]
    for i, g in enumerate(greys):
        write_image(flat / f"img{i}.png", g)
    unl = load_images(f"folder:{flat}", "train")
    assert unl.labels is None and unl.classes == [] and unl.images.shape == (4, 1, 8, 8)
    np.testing.assert_array_equal(unl.images[:, 0].numpy(), np.stack(greys))

    split_root = tmp_path / "splits"
    write_image(split_root / "train" / "x" / "0.png", greys[0])
    write_image(split_root / "test" / "y" / "0.png", greys[1])
    assert load_images(f"folder:{split_root}", "test").classes == ["y"]

    write_image(flat / "big.png", rng.integers(0, 256, size=(16, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="different sizes"):
        load_images(f"folder:{flat}", "test")
    resized = load_images(f"folder:{flat}", "test", shape=(3, 8, 8))
    assert resized.images.shape == (5, 3, 8, 8)
    with pytest.raises(DataError, match="does not exist"):
        load_images(f"folder:{tmp_path / 'nope'}", "test")


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw", "float", "nhwc_small"])
def test_npz_layouts(layout, tmp_path, offline):
    rng = np.random.default_rng(1)
    shape = (6, 3, 4, 4) if layout == "nhwc_small" else (6, 3, 10, 9)
    ref = rng.integers(0, 256, size=shape, dtype=np.uint8)  # (n, C, H, W)
    labels = np.array([0, 2, 1, 2, 0, 1])
    stored = {
        "nhw": ref[:, 0],
        "nhwc": ref.transpose(0, 2, 3, 1),
        "nhwc_small": ref.transpose(0, 2, 3, 1),
        "nchw": ref,
        "float": ref / 255.0,
    }[layout]
    path = tmp_path / "set.npz"
    np.savez(path, images=stored, labels=labels)
    arrays = load_images(f"npz:{path}", "test")
    expected = ref[:, :1] if layout == "nhw" else ref
    np.testing.assert_array_equal(arrays.images.numpy(), expected)
    np.testing.assert_array_equal(arrays.labels.numpy(), labels)
    assert arrays.classes == ["0", "1", "2"]


def test_npz_errors(tmp_path, offline):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2))
    with pytest.raises(DataError, match=r"no 'images' array \(it has: x, y\)"):
        load_images(f"npz:{path}", "test")
    np.savez(path, images=np.full((2, 4, 4), 2.0))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_images(f"npz:{path}", "test")
    np.savez(path, images=np.zeros((2, 4, 4), np.uint8))
    unl = load_images(f"npz:{path}", "test")
    assert unl.labels is None and unl.images.shape == (2, 1, 4, 4)


# --------------------------------------------------------------------------- offline sets


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) half-pixel-centre linear interpolation (align_corners=False)."""
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = min(max((o + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        m[o, i0] += 1 - (src - i0)
        m[o, i1] += src - i0
    return m


def test_digits_upsampled_bilinear():
    from sklearn.datasets import load_digits

    arrays = load_images("digits", "test")
    digits = load_digits()
    assert arrays.images.shape == (1797, 1, 28, 28)
    np.testing.assert_array_equal(arrays.labels.numpy(), digits.target)
    m = _bilinear_matrix(8, 28)
    ref = np.einsum("oh,nhw,pw->nop", m, digits.images * 255.0 / 16.0, m)
    assert np.abs(arrays.images[:, 0].numpy().astype(float) - ref).max() <= 0.5 + 1e-4
    assert arrays.images.max() == 255 and arrays.images.min() == 0
    rgb = load_images("digits", "train", n=100, shape=(3, 32, 32))
    assert rgb.images.shape == (100, 3, 32, 32)
    quota = np.bincount(digits.target) * 100 / 1797
    counts = np.bincount(rgb.labels.numpy(), minlength=10)
    assert np.all(counts >= np.floor(quota)) and np.all(counts <= np.ceil(quota))


def test_texture_crops_are_real_windows():
    import skimage.data
    from numpy.lib.stride_tricks import sliding_window_view

    arrays = load_images("texture_crops", "test", n=30, seed=3)
    assert arrays.images.shape == (30, 1, 32, 32) and arrays.classes == ["brick", "grass", "gravel"]
    np.testing.assert_array_equal(np.bincount(arrays.labels.numpy()), [10, 10, 10])
    for k in range(0, 30, 7):
        tex = getattr(skimage.data, arrays.classes[int(arrays.labels[k])])()
        crop = arrays.images[k, 0].numpy()
        rows = sliding_window_view(tex, 32, axis=1)  # (512, 481, 32)
        ys, xs = np.nonzero((rows == crop[0]).all(-1))
        assert any(
            np.array_equal(tex[y : y + 32, x : x + 32], crop) for y, x in zip(ys, xs, strict=True)
        )
    same = load_images("texture_crops", "train", n=30, seed=3)
    other = load_images("texture_crops", "test", n=30, seed=4)
    assert torch.equal(same.images, arrays.images) and not torch.equal(other.images, arrays.images)
    assert load_images("texture_crops").images.shape == (2000, 1, 32, 32)


def _clipped_normal_moments(mu: float, sigma: float) -> tuple[float, float]:
    """Mean and std of clip(N(mu, sigma^2), 0, 1), by numerical integration."""
    from scipy import integrate, stats

    pdf = stats.norm(mu, sigma).pdf
    p0, p1 = stats.norm(mu, sigma).cdf(0.0), stats.norm(mu, sigma).sf(1.0)
    m1 = integrate.quad(lambda x: x * pdf(x), 0, 1)[0] + p1
    m2 = integrate.quad(lambda x: x * x * pdf(x), 0, 1)[0] + p1
    del p0
    return m1, float(np.sqrt(m2 - m1 * m1))


@pytest.mark.parametrize("name", ["gaussian_noise", "uniform_noise"])
def test_noise_shape_range_and_moments(name):
    arrays = load_images(name, "test")
    assert arrays.images.shape == (2000, 3, 32, 32) and arrays.labels is None
    x = arrays.images.numpy().astype(np.float64) / 255.0
    mean, std = (
        _clipped_normal_moments(0.5, 0.25) if name == "gaussian_noise" else (0.5, np.sqrt(1 / 12))
    )
    # 6.1M samples: sampling error ~1e-4; uint8 rounding adds variance 1/(12*255^2).
    assert abs(x.mean() - mean) < 1e-3
    assert abs(x.std() - np.sqrt(std**2 + 1 / (12 * 255**2))) < 1e-3
    small = load_images(name, "train", n=5, seed=1, shape=(1, 7, 9))
    assert small.images.shape == (5, 1, 7, 9)
    assert torch.equal(small.images, load_images(name, "test", n=5, seed=1, shape=(1, 7, 9)).images)
    assert not torch.equal(small.images, load_images(name, n=5, seed=2, shape=(1, 7, 9)).images)


def test_n_subset_is_stratified_and_deterministic(tmp_path, offline):
    write_fmnist(tmp_path / "fashion-mnist", n_train=200)
    a = load_images("fashion_mnist", "train", root=tmp_path, n=50, seed=7)
    b = load_images("fashion_mnist", "train", root=tmp_path, n=50, seed=7)
    c = load_images("fashion_mnist", "train", root=tmp_path, n=50, seed=8)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    np.testing.assert_array_equal(np.bincount(a.labels.numpy()), np.full(10, 5))
    assert "stratified subset n=50 seed=7" in a.source


def test_stratified_indices_quotas():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    for n, seed in ((10, 0), (33, 1), (99, 2)):
        idx = stratified_indices(labels, n, seed)
        assert len(idx) == n and len(np.unique(idx)) == n and np.all(np.diff(idx) > 0)
        quota = np.array([50, 30, 15, 5]) * n / 100
        counts = np.bincount(labels[idx], minlength=4)
        assert np.all(counts >= np.floor(quota)) and np.all(counts <= np.ceil(quota))


# --------------------------------------------------------------------------- transforms


def _spec(size, channels, mean=None, std=None):
    mean = mean or tuple(np.linspace(0.2, 0.6, channels))
    std = std or tuple(np.linspace(0.3, 0.5, channels))
    return InputSpec(size=size, channels=channels, mean=mean, std=std)


@pytest.mark.parametrize(
    "hw,size", [((64, 64), 32), ((28, 28), 32), ((40, 60), 32), ((50, 30), 20)]
)
def test_to_model_input_resize_matches_torchvision(hw, size):
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(0)
    imgs = torch.from_numpy(rng.integers(0, 256, size=(4, 3, *hw), dtype=np.uint8))
    spec = _spec(size, 3)
    out = to_model_input(imgs, spec)
    ref = TF.center_crop(TF.resize(imgs.float() / 255.0, size, antialias=True), size)
    ref = (ref - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    assert out.shape == (4, 3, size, size) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_to_model_input_channel_conversions():
    rng = np.random.default_rng(1)
    rgb = torch.from_numpy(rng.integers(0, 256, size=(3, 3, 8, 8), dtype=np.uint8))
    x = rgb.numpy().astype(np.float64) / 255.0
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    out = to_model_input(rgb, InputSpec(8, 1, (0.25,), (0.5,)))
    np.testing.assert_allclose(out[:, 0].numpy(), (luma - 0.25) / 0.5, atol=1e-5)

    grey = rgb[:, :1]
    out3 = to_model_input(grey, InputSpec(8, 3, (0.0, 0.1, 0.2), (1.0, 1.0, 2.0)))
    g = grey[:, 0].numpy() / 255.0
    for c, (m, s) in enumerate(((0.0, 1.0), (0.1, 1.0), (0.2, 2.0))):
        np.testing.assert_allclose(out3[:, c].numpy(), (g - m) / s, atol=1e-6)

    rgba = torch.cat([rgb, torch.full_like(rgb[:, :1], 7)], dim=1)
    spec3 = _spec(8, 3)
    torch.testing.assert_close(to_model_input(rgba, spec3), to_model_input(rgb, spec3))
    spec1 = InputSpec(8, 1, (0.25,), (0.5,))
    torch.testing.assert_close(to_model_input(rgba, spec1), out)
    torch.testing.assert_close(
        to_model_input(rgb.float() / 255.0, spec3), to_model_input(rgb, spec3)
    )


@pytest.mark.parametrize(
    "images,match",
    [
        (torch.zeros(2, 2, 8, 8, dtype=torch.uint8), "2 channel.*expects 3"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.int16), "uint8"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "4-D"),
        (np.zeros((2, 3, 8, 8), np.uint8), "torch.Tensor"),
    ],
)
def test_to_model_input_errors(images, match):
    with pytest.raises(ShapeError, match=match):
        to_model_input(images, _spec(8, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_to_model_input_on_gpu():
    imgs = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    spec = _spec(32, 3)
    gpu = to_model_input(imgs.cuda(), spec)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), to_model_input(imgs, spec), atol=1e-5, rtol=0)


def test_input_spec_for_matches_numpy():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(50, 3, 6, 5), dtype=np.uint8)
    x[:, 1] //= 3
    arrays = ImageArrays(torch.from_numpy(x), None, [], "t", "t")
    spec = input_spec_for(arrays)
    f = x.astype(np.float64) / 255.0
    assert spec.size == 5 and spec.channels == 3
    np.testing.assert_allclose(spec.mean, f.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(spec.std, f.std(axis=(0, 2, 3)), rtol=1e-10)
    assert InputSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="missing"):
        InputSpec.from_dict({"size": 5, "channels": 3, "mean": spec.mean})
    with pytest.raises(ConfigError, match="one value per channel"):
        InputSpec(size=5, channels=3, mean=(0.5,), std=(1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="std must be > 0"):
        InputSpec(size=5, channels=1, mean=(0.5,), std=(0.0,))


# --------------------------------------------------------------------------- batching


@pytest.mark.parametrize("labelled", [True, False])
def test_iterate_batches_covers_every_sample_once(labelled):
    rng = np.random.default_rng(3)
    n = 103
    imgs = torch.from_numpy(rng.integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8))
    labels = torch.arange(n) if labelled else None
    arrays = ImageArrays(imgs, labels, [str(i) for i in range(n)] if labelled else [], "t", "t")
    spec = _spec(8, 1)
    batches = list(iterate_batches(arrays, spec, 16, shuffle=True, seed=5))
    assert [len(y) for _, y in batches] == [16] * 6 + [7]
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    full = to_model_input(imgs, spec)
    if labelled:
        assert sorted(ys.tolist()) == list(range(n)) and ys.tolist() != list(range(n))
        torch.testing.assert_close(xs, full[ys])
    else:
        assert (ys == -1).all()
        # every image appears exactly once: match rows of xs to rows of full
        dist = torch.cdist(xs.flatten(1), full.flatten(1))
        assert sorted(dist.argmin(1).tolist()) == list(range(n))
    again = torch.cat([x for x, _ in iterate_batches(arrays, spec, 16, shuffle=True, seed=5)])
    torch.testing.assert_close(again, xs)
    dropped = list(iterate_batches(arrays, spec, 16, drop_last=True))
    assert len(dropped) == 6 and all(len(y) == 16 for _, y in dropped)
    with pytest.raises(ConfigError, match="batch_size"):
        iterate_batches(arrays, spec, 0)


def test_array_dataset_with_dataloader():
    rng = np.random.default_rng(4)
    imgs = torch.from_numpy(rng.integers(0, 256, size=(20, 3, 10, 10), dtype=np.uint8))
    arrays = ImageArrays(imgs, torch.arange(20) % 4, list("abcd"), "t", "t")
    spec = _spec(8, 3)
    ds = ArrayDataset(arrays, spec)
    x0, y0 = ds[0]
    assert x0.shape == (3, 8, 8) and y0.dtype == torch.int64
    loader = torch.utils.data.DataLoader(ds, batch_size=6)
    xs, ys = zip(*loader, strict=True)
    ref = list(iterate_batches(arrays, spec, 6))
    for x, y, (rx, ry) in zip(xs, ys, ref, strict=True):
        torch.testing.assert_close(x, rx)
        assert torch.equal(y, ry)
    torch.testing.assert_close(ds[-1][0], ref[-1][0][-1])


def test_image_arrays_subset_and_validation():
    imgs = torch.arange(5 * 4, dtype=torch.uint8).view(5, 1, 2, 2)
    arrays = ImageArrays(imgs, torch.tensor([0, 1, 0, 1, 1]), ["a", "b"], "t", "s")
    mask = arrays.labels == 1
    for index in (mask, torch.tensor([1, 3, 4]), np.array([1, 3, 4]), [1, 3, 4]):
        sub = arrays.subset(index)
        assert torch.equal(sub.images, imgs[[1, 3, 4]]) and sub.labels.tolist() == [1, 1, 1]
    assert len(arrays.subset([])) == 0
    with pytest.raises(ShapeError, match="uint8"):
        ImageArrays(imgs.float(), None, [], "t", "s")
    with pytest.raises(ShapeError, match=r"0\.\.1"):
        ImageArrays(imgs, torch.tensor([0, 1, 2, 0, 0]), ["a", "b"], "t", "s")
