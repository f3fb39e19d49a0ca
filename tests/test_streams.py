"""ncood.data.streams and the safe names of ncood.io, on real Fashion-MNIST images.

Independent references: the decoded arrays of :func:`ncood.data.load_images`, the PNG
files' own pixels read back with PIL, torchvision's ``Resize`` + ``CenterCrop`` on the
same PIL images, and the plain filesystem (nothing may appear outside the output
directory).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from ncood.data import load_images
from ncood.data.streams import (
    EvalTransform,
    default_name,
    open_stream,
    parse_named,
    parse_named_sets,
)
from ncood.errors import ConfigError, DataError
from ncood.io import inside, safe_name, safe_path
from ncood.types import FeatureDir, FeatureSet, LinearHead, load_feature_dir


@pytest.fixture(scope="module")
def fmnist():
    """60 real Fashion-MNIST test images (uint8 (60, 1, 28, 28)) with labels."""
    return load_images("fashion_mnist", "test", n=60, seed=0)


def collect(stream):
    xs, ys = zip(*list(stream), strict=True)
    return torch.cat(xs), torch.cat(ys)


# --------------------------------------------------------------------------- safe names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("faces", "faces"),
        ("cifar10[0-4]", "cifar10[0-4]"),
        ("folder:../../../../faces", "folder_faces"),
        ("/abs/path", "abs_path"),
        ("a/b:c", "a_b_c"),
        ("..", "unnamed"),
        (".hidden", "hidden"),
        ("-rf", "rf"),
        ("C:\\x\\y", "C_x_y"),
        ("my faces é", "my_faces"),
        ("", "unnamed"),
    ],
)
def test_safe_name(text, expected):
    assert safe_name(text) == expected


def test_safe_name_is_short_and_distinct_when_long():
    a, b = safe_name("x" * 300 + "a"), safe_name("x" * 300 + "b")
    assert len(a) == len(b) == 100 and a != b


def test_inside_and_safe_path(tmp_path):
    out = tmp_path / "out"
    assert inside(out, "ood/faces") and inside(out, out / "a") and inside(out, ".")
    assert not inside(out, "../x") and not inside(out, "/etc") and not inside(out, "a/../../x")
    for name in ("../../x", "/etc/passwd", "a/b:c", ".."):
        assert inside(out, safe_path(out, "ood", name))
    (out).mkdir()
    os.symlink(tmp_path, out / "link")  # a symlink inside that leads out is refused
    with pytest.raises(ConfigError, match="outside the output directory"):
        safe_path(out, "link", "x")


def _fs(n: int, seed: int) -> FeatureSet:
    rng = np.random.default_rng(seed)
    return FeatureSet(
        features=rng.normal(size=(n, 4)).astype(np.float32),
        logits=rng.normal(size=(n, 3)).astype(np.float32),
        labels=None,
        name=f"set{seed}",
    )


def test_ood_names_never_leave_the_output_directory(tmp_path):
    """`--ood folder:../../../../faces --out <4 levels down>/out1` used to write into the
    user's image folder itself; an absolute name wrote to that absolute path."""
    victim = tmp_path / "faces"
    victim.mkdir()
    (victim / "img.png").write_bytes(b"user data")
    out = tmp_path / "a" / "b" / "c" / "out1"
    names = ["folder:../../../../faces", f"/{tmp_path}/faces/abs", "a/b:c", "..", "digits"]
    fd = FeatureDir(
        train=_fs(5, 0),
        test=_fs(5, 1),
        ood={n: _fs(3, i + 2) for i, n in enumerate(names)},
        head=LinearHead(np.zeros((3, 4)), np.zeros(3)),
    )
    fd.save(out)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    outside = [p for p in written if out not in p.parents and p != victim / "img.png"]
    assert outside == []
    assert sorted(os.listdir(victim)) == ["img.png"]
    assert sorted(os.listdir(out / "ood")) == sorted(safe_name(n) for n in names)
    back = load_feature_dir(out)
    assert list(back.ood) == names  # the names themselves survive, in order
    for i, n in enumerate(names):
        np.testing.assert_array_equal(back.ood[n].features, fd.ood[n].features)
        assert back.ood[n].name == f"set{i + 2}"


def test_two_names_with_one_file_name_are_refused(tmp_path):
    fd = FeatureDir(
        train=_fs(5, 0),
        test=_fs(5, 1),
        ood={"a/b": _fs(3, 2), "a:b": _fs(3, 3)},
        head=LinearHead(np.zeros((3, 4)), np.zeros(3)),
    )
    with pytest.raises(ConfigError, match="'a/b' and 'a:b' both become the file name 'a_b'"):
        fd.save(tmp_path / "out")


def test_named_specs():
    assert parse_named("faces=folder:/data/faces") == ("faces", "folder:/data/faces")
    assert parse_named("folder:/data/faces") == ("faces", "folder:/data/faces")
    assert parse_named("folder:/data/a=b") == ("a_b", "folder:/data/a=b")  # no split
    assert parse_named("npz:/x/near_ood.npz") == ("near_ood", "npz:/x/near_ood.npz")
    assert parse_named("cifar10[0-4]") == ("cifar10[0-4]", "cifar10[0-4]")
    assert default_name("folder:../../../../faces") == "faces"
    assert default_name("folder:/data/faces/..") == "data"
    sets = parse_named_sets(["digits", "f=folder:/a/faces", "folder:/b/faces"])
    assert sets == {"digits": "digits", "f": "folder:/a/faces", "faces": "folder:/b/faces"}
    with pytest.raises(ConfigError, match="two data sets are named 'faces'"):
        parse_named_sets(["folder:/a/faces", "folder:/b/faces"])
    with pytest.raises(ConfigError, match="both become the file name"):
        parse_named_sets({"a/b": "digits", "a:b": "digits"})


# --------------------------------------------------------------------------- transform


def test_resize_crop_matches_torchvision_on_tensors(fmnist):
    from torchvision.transforms import v2

    x = fmnist.images[:8]
    tf = EvalTransform(size=56, resize=64, channels=1, mean=(0.5,), std=(0.25,))
    ref = v2.CenterCrop(56)(v2.Resize(64, antialias=True)(x))  # uint8 in, uint8 out
    got = tf.resize_crop(x)
    assert got.dtype == torch.uint8 and got.shape == (8, 1, 56, 56)
    assert int((got.int() - ref.int()).abs().max()) <= 1
    same = EvalTransform(size=28, resize=28, channels=1, mean=(0.5,), std=(0.25,))
    assert same.resize_crop(x) is x
    with pytest.raises(ConfigError, match=r"resize \(20\) must be >= size"):
        EvalTransform(size=28, resize=20)


# --------------------------------------------------------------------------- sources


def test_registry_name_equals_load_images(fmnist):
    stream = open_stream("fashion_mnist", split="test", n=60, seed=0, batch_size=16)
    x, y = collect(stream)
    assert stream.n == 60 and len(stream) == 60 and stream.classes == fmnist.classes
    assert torch.equal(x, fmnist.images) and torch.equal(y, fmnist.labels)
    tf = EvalTransform(size=64, resize=64, channels=3)
    xm, _ = next(open_stream("fashion_mnist", n=60, transform=tf).model_batches())
    torch.testing.assert_close(xm, tf(fmnist.images))


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw", "float", "tensor"])
def test_arrays(layout, fmnist):
    imgs = fmnist.images.numpy()  # (60, 1, 28, 28)
    data = {
        "nhw": imgs[:, 0],
        "nhwc": np.ascontiguousarray(imgs.transpose(0, 2, 3, 1).repeat(3, axis=3)),
        "nchw": imgs,
        "float": imgs.astype(np.float32) / 255.0,
        "tensor": fmnist.images,
    }[layout]
    x, y = collect(open_stream((data, fmnist.labels.numpy()), batch_size=25))
    expected = fmnist.images.repeat(1, 3, 1, 1) if layout == "nhwc" else fmnist.images
    assert torch.equal(x, expected) and torch.equal(y, fmnist.labels)
    x, y = collect(open_stream(data, batch_size=25))
    assert torch.equal(y, torch.full((60,), -1))
    sub_x, sub_y = collect(open_stream((data, fmnist.labels.numpy()), n=20, seed=3))
    assert len(sub_y) == 20 and len(np.unique(sub_y)) == 10  # stratified: 2 per class


def test_npz_stored_is_memory_mapped_and_compressed_is_streamed(tmp_path, fmnist):
    imgs, labels = fmnist.images.numpy()[:, 0], fmnist.labels.numpy()
    np.savez(tmp_path / "stored.npz", images=imgs, labels=labels)
    np.savez_compressed(tmp_path / "packed.npz", images=imgs, labels=labels)
    from ncood.data.streams import _npz_member

    assert isinstance(_npz_member(tmp_path / "stored.npz", "images.npy", ""), np.memmap)
    for name in ("stored", "packed"):
        x, y = collect(open_stream(f"npz:{tmp_path / name}.npz", batch_size=7))
        assert torch.equal(x, fmnist.images) and torch.equal(y, fmnist.labels)
        sx, sy = collect(open_stream(f"npz:{tmp_path / name}.npz", batch_size=7, n=30, seed=1))
        idx = np.flatnonzero(np.isin(np.arange(60), _subset(labels, 30, 1)))
        assert torch.equal(sx, fmnist.images[idx]) and torch.equal(sy, fmnist.labels[idx])
    with pytest.raises(DataError, match="has no 'images' array"):
        np.savez(tmp_path / "bad.npz", x=imgs)
        open_stream(f"npz:{tmp_path / 'bad.npz'}")


def _subset(labels, n, seed):
    from ncood.data.datasets import stratified_indices

    return stratified_indices(labels, n, seed)


def _write_folder(root, fmnist, sizes=((28, 28),)):
    """PNG files in class folders; image i gets size sizes[i % len(sizes)] (W, H)."""
    files = []
    for i, (img, lab) in enumerate(
        zip(fmnist.images[:, 0].numpy(), fmnist.labels.numpy(), strict=True)
    ):
        d = root / fmnist.classes[lab].replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray(img).resize(sizes[i % len(sizes)], Image.BILINEAR)
        path = d / f"{i:03d}.png"
        pil.convert("RGB").save(path)
        files.append(path)
    return files


@pytest.mark.parametrize("workers", [0, 2])
def test_folder_of_mixed_sizes_matches_torchvision(tmp_path, fmnist, workers):
    from torchvision import transforms as T

    _write_folder(tmp_path / "imgs", fmnist, sizes=((28, 28), (40, 30), (30, 50)))
    tf = EvalTransform(size=32, resize=36, channels=3)
    stream = open_stream(
        f"folder:{tmp_path / 'imgs'}", transform=tf, batch_size=16, num_workers=workers
    )
    x, y = collect(stream)
    assert x.shape == (60, 3, 32, 32) and x.dtype == torch.uint8 and stream.n == 60
    # reference: torchvision's Resize + CenterCrop on each file, in the stream's order
    class_dirs = sorted(p for p in (tmp_path / "imgs").iterdir())
    files = [f for d in class_dirs for f in sorted(d.iterdir())]
    ref_tf = T.Compose([T.Resize(36), T.CenterCrop(32), T.PILToTensor()])
    ref = torch.stack([ref_tf(Image.open(f).convert("RGB")) for f in files])
    assert torch.equal(x, ref)
    assert stream.classes == [d.name for d in class_dirs]
    assert y.tolist() == [i for i, d in enumerate(class_dirs) for _ in sorted(d.iterdir())]


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_names_the_file(tmp_path, fmnist, workers):
    files = _write_folder(tmp_path / "imgs", fmnist)
    files[17].write_bytes(b"\x89PNG truncated")
    stream = open_stream(
        f"folder:{tmp_path / 'imgs'}",
        transform=EvalTransform(28, 28, 3),
        batch_size=8,
        num_workers=workers,
    )
    with pytest.raises(DataError) as err:
        collect(stream)
    msg = str(err.value)
    assert str(files[17]) in msg and "remove or replace it" in msg and "\n" not in msg


def test_folder_without_transform_needs_one_size(tmp_path, fmnist):
    _write_folder(tmp_path / "imgs", fmnist, sizes=((28, 28), (30, 40)))
    with pytest.raises(DataError, match="different sizes.*pass a transform"):
        collect(open_stream(f"folder:{tmp_path / 'imgs'}", num_workers=0))
    with pytest.raises(DataError, match="does not exist"):
        open_stream(f"folder:{tmp_path / 'nothing'}")


class PilDataset(torch.utils.data.Dataset):
    """(PIL image, int) items, like torchvision's ImageFolder without a transform."""

    def __init__(self, arrays, kind="pil"):
        self.arrays, self.kind = arrays, kind

    def __len__(self):
        return len(self.arrays)

    def __getitem__(self, i):
        img = self.arrays.images[i, 0].numpy()
        label = int(self.arrays.labels[i])
        if self.kind == "pil":
            return Image.fromarray(img), label
        if self.kind == "float":
            return torch.from_numpy(img).float()[None] / 255.0 - 0.5, torch.tensor(label)
        if self.kind == "dict":
            return {"image": img, "label": label}
        return img, str(label)  # "str" labels


def test_torch_dataset_items(fmnist):
    tf = EvalTransform(size=28, resize=28, channels=1, mean=(0.5,), std=(0.25,))
    x, y = collect(open_stream(PilDataset(fmnist), transform=tf, batch_size=16, num_workers=0))
    assert torch.equal(x, fmnist.images) and torch.equal(y, fmnist.labels)
    # float items come from the user's own transform: model input as they are
    stream = open_stream(PilDataset(fmnist, "float"), transform=tf, num_workers=0)
    xm, ym = next(stream.model_batches())
    torch.testing.assert_close(xm, fmnist.images.float() / 255.0 - 0.5)
    with pytest.raises(DataError, match=r"must be a pair \(image, label\); got a dict"):
        collect(open_stream(PilDataset(fmnist, "dict"), num_workers=2))
    with pytest.raises(DataError, match=r"label of an item must be an int .*; got a str"):
        collect(open_stream(PilDataset(fmnist, "str"), num_workers=0))


def test_dataloader_batches_are_checked(fmnist):
    ds = torch.utils.data.TensorDataset(fmnist.images, fmnist.labels)
    good = torch.utils.data.DataLoader(ds, batch_size=16)
    x, y = collect(open_stream(good))
    assert torch.equal(x, fmnist.images) and torch.equal(y, fmnist.labels)

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": fmnist.images[i], "target": int(fmnist.labels[i])}

    cases = {
        "a dict with keys": torch.utils.data.DataLoader(Dicts(), batch_size=2),
        "images of batch 0 are a torch.uint8 tensor of shape": torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(fmnist.images[:, 0], fmnist.labels), batch_size=4
        ),
        "labels of batch 0 are a torch.float32": torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(fmnist.images, fmnist.labels.float()), batch_size=4
        ),
        "batch 0 is a list of 1": torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(fmnist.images), batch_size=4
        ),
    }
    for match, loader in cases.items():
        with pytest.raises(DataError, match="must yield \\(images, labels\\)") as err:
            collect(open_stream(loader))
        assert match in str(err.value) and "\n" not in str(err.value)


def test_unsupported_data_is_one_clear_error():
    with pytest.raises(ConfigError, match="data must be a DataLoader, a Dataset"):
        open_stream({"images": 1})
    with pytest.raises(ConfigError, match="unknown dataset 'fashon_mnist'"):
        open_stream("fashon_mnist")


# --------------------------------------------------------------------------- extraction


@pytest.fixture(scope="module")
def narrow():
    from ncood.data import InputSpec
    from ncood.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet_narrow", num_classes=10, in_channels=1).eval()
    return model, InputSpec(size=28, channels=1, mean=(0.3,), std=(0.35,))


def test_extract_stream_equals_in_memory_extract(tmp_path, fmnist, narrow):
    from ncood.extract import extract, extract_stream

    model, spec = narrow
    layers = ["layer1", "layer3"]
    ref = extract(model, fmnist, spec, layers=layers, batch_size=16, progress=False)
    stream = open_stream("fashion_mnist", n=60, seed=0, transform=spec, batch_size=16)
    on_disk = extract_stream(model, stream, layers=layers, out=tmp_path / "fs", progress=False)
    in_memory = extract_stream(model, stream, layers=layers, progress=False)
    for fs in (on_disk, in_memory):
        np.testing.assert_array_equal(fs.features, ref.features)
        np.testing.assert_array_equal(fs.logits, ref.logits)
        np.testing.assert_array_equal(fs.labels, ref.labels)
        for k in layers:
            np.testing.assert_array_equal(fs.layers[k], ref.layers[k])
    assert sorted(os.listdir(tmp_path / "fs")) == [
        "features.npy",
        "labels.npy",
        "layer.layer1.npy",
        "layer.layer3.npy",
        "logits.npy",
        "meta.json",
    ]
    loaded = FeatureSet.load(tmp_path / "fs")
    assert isinstance(np.load(tmp_path / "fs" / "features.npy", mmap_mode="r"), np.memmap)
    np.testing.assert_array_equal(loaded.features, ref.features)


def test_extract_stream_of_unknown_length_and_unlabelled(tmp_path, fmnist, narrow):
    from ncood.extract import extract, extract_stream

    model, spec = narrow
    ref = extract(model, fmnist, spec, batch_size=16, progress=False)

    class Items(torch.utils.data.IterableDataset):
        def __iter__(self):
            for img in fmnist.images:
                yield img, -1

    loader = torch.utils.data.DataLoader(Items(), batch_size=16)
    stream = open_stream(loader, transform=spec)
    assert stream.n is None
    fs = extract_stream(model, stream, out=tmp_path / "fs", progress=False)
    np.testing.assert_array_equal(fs.features, ref.features)
    assert fs.labels is None and not (tmp_path / "fs" / "labels.npy").exists()


def test_failed_extraction_leaves_nothing_that_loads(tmp_path, fmnist, narrow):
    from ncood.errors import CheckpointError
    from ncood.extract import extract_stream

    model, spec = narrow
    files = _write_folder(tmp_path / "imgs", fmnist)
    files[-1].write_bytes(b"broken")  # the last batch fails
    stream = open_stream(f"folder:{tmp_path / 'imgs'}", transform=spec, num_workers=0)
    with pytest.raises(DataError, match="cannot read image"):
        extract_stream(model, stream, layers=["layer1"], out=tmp_path / "fs", progress=False)
    assert os.listdir(tmp_path / "fs") == []
    with pytest.raises(CheckpointError, match="no meta.json"):
        FeatureSet.load(tmp_path / "fs")


def test_extract_checkpoint_named_ood_sets_stay_inside_out(tmp_path, monkeypatch, fmnist, narrow):
    """The issue's report: `ncood extract ... --ood folder:../../../../faces --out
    /data/out1`, run four levels below /data, wrote into /data/faces itself."""
    from ncood.extract import extract_checkpoint
    from ncood.train.checkpoint import save_checkpoint

    model, spec = narrow
    data = tmp_path / "data"
    faces = data / "faces"
    faces.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(fmnist.images[i, 0].numpy()).save(faces / f"{i}.png")
    before = sorted(os.listdir(faces))
    ckpt = save_checkpoint(
        tmp_path / "ckpt.pt",
        model=model,
        model_name="resnet_narrow",
        model_kwargs={"num_classes": 10, "in_channels": 1},
        input_spec=spec.to_dict(),
        dataset={"name": "fashion_mnist", "classes": fmnist.classes},
        regime="standard",
        config={},
        epoch=0,
        history=[],
    )
    deep = data / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    np.savez(tmp_path / "near.npz", images=fmnist.images[:8, 0].numpy())
    fd = extract_checkpoint(
        ckpt,
        ood=["folder:../../../../faces", "d=digits", f"npz:{tmp_path / 'near.npz'}"],
        out=data / "out1",
        max_train_samples=50,
        max_test_samples=20,
        max_ood_samples=20,
        layers=[],
        progress=False,
    )
    assert list(fd.ood) == ["faces", "d", "near"]
    assert sorted(os.listdir(faces)) == before  # the user's folder is untouched
    assert sorted(os.listdir(data / "out1" / "ood")) == ["d", "faces", "near"]
    assert len(fd.ood["faces"]) == 6 and len(fd.ood["near"]) == 8


def test_regime_names_stay_inside_the_run_directory(tmp_path):
    from ncood.pipeline import train_dir

    for name in ("../../escaped", "/abs/x", "a/b:c", "standard"):
        for several in (False, True):
            d = train_dir(tmp_path / "run", name, 1, several_seeds=several)
            assert inside(tmp_path / "run" / "regimes", d), d
    assert train_dir(tmp_path, "standard", 0, several_seeds=False) == (
        tmp_path / "regimes" / "standard" / "train"
    )
