"""ncood.models.adapters: any nn.Module as an ncood model, on real Fashion-MNIST images.

Independent references: each model's own forward pass (``model(x)``), its own pooled
features captured by a hook on ``avgpool`` (torchvision) or computed by its own code
(timm's ``forward_head(..., pre_logits=True)``, MobileNet's classifier up to the last
layer), and the model families' own eval transforms (torchvision's weights preset,
timm's ``create_transform``) applied to the same PIL images.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from ncood.data import load_images
from ncood.data.streams import EvalTransform
from ncood.errors import CheckpointError, ConfigError, DataError, NcoodError
from ncood.models.adapters import (
    ModelAdapter,
    eval_transform,
    load_model,
    pool_features,
    wrap_model,
)

SIZE = 64  # Fashion-MNIST 28x28 grey -> 3-channel 64x64, as the issue asks


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """16 real Fashion-MNIST test images as ImageNet-normalised 3 x 64 x 64 input."""
    arrays = load_images("fashion_mnist", "test", n=16, seed=0)
    tf = EvalTransform(size=SIZE, resize=SIZE, channels=3)
    x = tf(arrays.images)
    assert x.shape == (16, 3, SIZE, SIZE)
    return x


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    """A random-init torchvision resnet18(num_classes=10), weights as a plain state_dict."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return model, path


def avgpool_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own avgpool output (flattened) and logits, by a hook."""
    got = {}
    handle = model.avgpool.register_forward_hook(lambda m, i, o: got.setdefault("z", o))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return got["z"].flatten(1), logits


def test_torchvision_resnet18_features_are_avgpool_and_logits_are_model(images, resnet_weights):
    reference, path = resnet_weights
    model = load_model("torchvision:resnet18", num_classes=10, weights=path, input_size=SIZE)
    assert model.head_name == "fc"
    assert model.stage_names() == ["layer1", "layer2", "layer3", "layer4"]
    z_ref, f_ref = avgpool_features(reference, images)
    with torch.no_grad():
        z = model.forward_features(images)
        f = model.forward_head(z)
    assert z.shape == (16, 512) and f.shape == (16, 10)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
    torch.testing.assert_close(f, f_ref, rtol=1e-6, atol=1e-6)
    head = model.get_head()
    np.testing.assert_array_equal(head.weight, reference.fc.weight.detach().double().numpy())
    np.testing.assert_array_equal(head.bias, reference.fc.bias.detach().double().numpy())
    # the head reproduces the logits from the features in float64
    np.testing.assert_allclose(head.logits(z.numpy()), f_ref.numpy(), rtol=1e-4, atol=1e-4)
    assert model.source["weights_sha256"] and model.source["num_classes"] == 10


def test_num_classes_is_read_from_the_weights(resnet_weights):
    _, path = resnet_weights
    model = load_model("torchvision:resnet18", weights=path, input_size=SIZE)
    assert model.num_classes == 10


def test_weights_in_a_dict_or_with_wrapper_prefixes(images, resnet_weights, tmp_path):
    reference, path = resnet_weights
    sd = torch.load(path, weights_only=True)
    _, f_ref = avgpool_features(reference, images)
    variants = {
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd, "optimizer": {}},
        "ddp": {f"module.{k}": v for k, v in sd.items()},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / f"{name}.pt")
    files = [tmp_path / f"{name}.pt" for name in variants]
    try:  # installed with timm
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
        files.append(tmp_path / "w.safetensors")
    except ImportError:
        pass
    for path in files:
        model = load_model("torchvision:resnet18", num_classes=10, weights=path, input_size=64)
        with torch.no_grad():
            torch.testing.assert_close(model(images), f_ref, rtol=1e-6, atol=1e-6)


def test_ncood_checkpoint_loads_into_torchvision_resnet18(images, tmp_path):
    from ncood.models import create_model
    from ncood.train.checkpoint import save_checkpoint

    torch.manual_seed(1)
    ours = create_model("resnet18", num_classes=10).eval()
    spec = {"size": SIZE, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    ckpt = save_checkpoint(
        tmp_path / "ckpt.pt",
        model=ours,
        model_name="resnet18",
        model_kwargs={"num_classes": 10},
        input_spec=spec,
        dataset={"name": "fashion_mnist", "classes": []},
        regime="standard",
        config={},
        epoch=0,
        history=[],
    )
    model = load_model("torchvision:resnet18", weights=ckpt)
    assert model.transform == EvalTransform(SIZE, SIZE, 3, (0.5,) * 3, (0.25,) * 3)
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(images), ours.forward_features(images), rtol=0, atol=1e-6
        )


def test_timm_model_features_and_logits(images):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = load_model("timm:resnet18", num_classes=10, input_size=SIZE)
    net = model.model.eval()
    assert model.head_name == "fc"
    assert model.stage_names() == ["act1", "layer1", "layer2", "layer3", "layer4"]
    with torch.no_grad():
        z_ref = net.forward_head(net.forward_features(images), pre_logits=True)
        f_ref = net(images)
        z = model.forward_features(images)
        f = model.forward_head(z)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
    torch.testing.assert_close(f, f_ref, rtol=1e-6, atol=1e-6)
    # timm's 4-D forward_features, pooled as its pre-logits do, is the same feature
    with torch.no_grad():
        torch.testing.assert_close(pool_features(net.forward_features(images)), z_ref)
    assert timm.__version__


def test_head_not_called_fc_mobilenet(images):
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    model = ModelAdapter(net, input_size=SIZE)
    assert model.head_name == "classifier.3"
    assert model.stage_names()[0] == "features.0" and len(model.stage_names()) == 13
    with torch.no_grad():
        pooled = torch.flatten(net.avgpool(net.features(images)), 1)
        z_ref = net.classifier[:3](pooled)  # Linear, Hardswish, Dropout (eval: identity)
        z = model.forward_features(images)
        torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
        torch.testing.assert_close(model.forward_head(z), net(images), rtol=1e-6, atol=1e-6)


def test_custom_sequential_and_explicit_features(images):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
    model = wrap_model(net)  # no input size: the head is found on the first batch
    with pytest.raises(ConfigError, match="input_size"):
        model.get_head()
    with torch.no_grad():
        z = model.forward_features(images)
        torch.testing.assert_close(z, net[:6](images), rtol=0, atol=0)
        torch.testing.assert_close(model.forward_head(z), net(images))
    assert model.head_name == "6" and model.stage_names() == ["0", "2"]
    # features= names the conv output instead: pooled, it is the same feature
    named = ModelAdapter(net, features="3", input_size=SIZE)
    with torch.no_grad():
        torch.testing.assert_close(named.forward_features(images), z, rtol=1e-6, atol=1e-6)
    # a module that is not the head's input is refused
    with pytest.raises(ConfigError, match="not the input of head"):
        ModelAdapter(net, features="2", input_size=SIZE)
    with pytest.raises(ConfigError, match="gives 8 features"):
        ModelAdapter(net, features="0", input_size=SIZE)


class Scaled(nn.Module):
    """Returns fc(x) / 2: no Linear produces the model output."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4, 5)

    def forward(self, x):
        return self.classifier(self.body(x)) / 2


def test_post_processed_output_needs_explicit_head(images, caplog):
    net = Scaled().eval()
    with pytest.raises(ConfigError, match=r"head='classifier'") as err:
        ModelAdapter(net, input_size=SIZE)
    assert "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING):
        model = ModelAdapter(net, head="classifier", input_size=SIZE)
    assert "post-processing" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(model(images), 2 * net(images))
    # features= is checked against the head's own output, not the post-processed one
    named = ModelAdapter(net, head="classifier", features="body", input_size=SIZE)
    with torch.no_grad():
        torch.testing.assert_close(named.forward_features(images), net.body(images))


def test_model_without_linear_head_names_the_argument():
    net = torchvision.models.squeezenet1_0(num_classes=10)  # classifier is a 1x1 conv
    with pytest.raises(ConfigError, match="no nn.Linear layer.*head='NAME'") as err:
        ModelAdapter(net, input_size=SIZE)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="must name an nn.Linear"):
        ModelAdapter(net, head="classifier.1", input_size=SIZE)
    with pytest.raises(ConfigError, match="did you mean 'classifier'"):
        ModelAdapter(net, head="clasifier")


def test_weights_of_another_architecture_name_missing_and_unexpected_keys(tmp_path):
    torch.save(
        torchvision.models.mobilenet_v3_small(num_classes=10).state_dict(), tmp_path / "m.pt"
    )
    with pytest.raises(CheckpointError) as err:
        load_model("torchvision:resnet18", num_classes=10, weights=tmp_path / "m.pt", input_size=64)
    msg = str(err.value)
    assert "missing keys: conv1.weight" in msg and "unexpected keys: features.0.0.weight" in msg
    assert "\n" not in msg


def test_num_classes_mismatch_says_both_numbers(resnet_weights):
    _, path = resnet_weights
    with pytest.raises(CheckpointError, match=r"num_classes is 100.*for 10 classes.*"):
        load_model("torchvision:resnet18", num_classes=100, weights=path, input_size=SIZE)


def test_unreadable_or_wrong_weight_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_model("torchvision:resnet18", weights=tmp_path / "junk.pt", input_size=SIZE)
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nostate.pt")
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        load_model("torchvision:resnet18", weights=tmp_path / "nostate.pt", input_size=SIZE)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("torchvision:resnet18", weights=tmp_path / "none.pt", input_size=SIZE)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("resnet18", "'torchvision:NAME' or 'timm:NAME'"),
        ("keras:resnet18", "family must be one of"),
        ("torchvision:resnet81", "did you mean 'resnet18'"),
    ],
)
def test_bad_model_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        load_model(spec)


def test_missing_timm_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ConfigError, match=r"ncood\[timm\]"):
        load_model("timm:resnet18")


def test_ncood_models_are_used_as_they_are():
    from ncood.models import create_model

    ours = create_model("resnet_narrow", num_classes=10)
    assert wrap_model(ours) is ours


def test_layers_by_name_through_the_extract_hooks(images, resnet_weights):
    from ncood.extract import capture

    reference, path = resnet_weights
    model = load_model("torchvision:resnet18", weights=path, input_size=SIZE)
    with torch.no_grad(), capture(model, model.stage_names()) as got:
        model.forward_features(images)
        ref = reference.layer3(
            reference.layer2(
                reference.layer1(
                    reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
                )
            )
        )
    torch.testing.assert_close(got["layer3"], ref.mean(dim=(2, 3)), rtol=0, atol=0)
    assert got["layer4"].shape == (16, 512)


# ----------------------------------------------------------------- eval transforms


def _pil_images(n: int = 6):
    """Real Fashion-MNIST images as non-square RGB PIL images (40 x 60)."""
    from PIL import Image

    arrays = load_images("fashion_mnist", "test", n=n, seed=1)
    out = []
    for img in arrays.images[:, 0].numpy():
        pil = Image.fromarray(img).convert("RGB").resize((60, 40), Image.BILINEAR)
        out.append(pil)
    return out


def test_torchvision_family_transform_matches_its_weights_preset():
    tf = eval_transform("torchvision:resnet18")
    assert (tf.size, tf.resize, tf.interpolation) == (224, 256, "bilinear")
    assert tf.mean == (0.485, 0.456, 0.406) and tf.std == (0.229, 0.224, 0.225)
    assert eval_transform("torchvision:efficientnet_b3").resize == 320
    preset = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    for pil in _pil_images():
        ref = preset(pil)  # (3, 224, 224)
        ours = tf.normalize(torch.from_numpy(tf.resize_crop_pil(pil))[None])[0]
        # PIL resizes uint8 images, torchvision resizes the uint8 tensor: <= 2/255 apart
        assert ours.shape == ref.shape
        assert float((ours - ref).abs().max()) < 2.5 / 255 / min(tf.std)
        tensor = torch.from_numpy(np.asarray(pil).transpose(2, 0, 1).copy())[None]
        batched = tf(tensor)[0]
        assert float((batched - ref).abs().max()) < 2.5 / 255 / min(tf.std)


def test_timm_family_transform_matches_create_transform():
    pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    model = load_model("timm:resnet18", num_classes=10)
    tf = eval_transform(model)
    cfg = resolve_data_config({}, model=model.model)
    ref_tf = create_transform(**cfg, is_training=False)
    assert tf.size == 224 and tf.resize == int(224 / cfg["crop_pct"])
    for pil in _pil_images():
        ref = ref_tf(pil)
        ours = tf.normalize(torch.from_numpy(tf.resize_crop_pil(pil))[None])[0]
        assert ours.shape == ref.shape
        assert float((ours - ref).abs().max()) < 2.5 / 255 / min(tf.std)


def test_explicit_transform_values_win():
    tf = eval_transform("torchvision:resnet18", input_size=64, mean=[0.5] * 3, std=[0.2] * 3)
    assert tf == EvalTransform(64, 64, 3, (0.5,) * 3, (0.2,) * 3, "bilinear")
    grey = eval_transform(nn.Linear(2, 2), input_size=(1, 28, 28))
    assert grey.channels == 1 and len(grey.mean) == 1


# ----------------------------------------------------------------- ncood.evaluate


def _msp_auroc(id_logits: np.ndarray, ood_logits: np.ndarray) -> float:
    from scipy.special import softmax
    from sklearn.metrics import roc_auc_score

    s_id = softmax(id_logits.astype(np.float64), axis=1).max(1)
    s_ood = softmax(ood_logits.astype(np.float64), axis=1).max(1)
    y = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
    return float(roc_auc_score(y, np.r_[s_id, s_ood]))


def test_evaluate_torchvision_resnet18_end_to_end(tmp_path, resnet_weights):
    import ncood
    from ncood.types import load_feature_dir

    reference, path = resnet_weights
    out = tmp_path / "out"
    res = ncood.evaluate(
        "torchvision:resnet18",
        weights=path,
        train="fashion_mnist",
        test="fashion_mnist",
        ood=["digits", "crops=texture_crops"],
        detectors=["msp", "energy"],
        layers=["layer3"],
        input_size=SIZE,
        max_train_samples=120,
        max_test_samples=40,
        max_ood_samples=40,
        out=out,
        num_workers=0,
    )
    fd = load_feature_dir(out / "features")  # a plain features directory
    assert sorted(fd.ood) == ["crops", "digits"] and (out / "results.csv").is_file()
    arrays = load_images("fashion_mnist", "test", n=40, seed=0)
    x = EvalTransform(SIZE, SIZE, 3)(arrays.images)
    z_ref, f_ref = avgpool_features(reference, x)
    np.testing.assert_allclose(fd.test.features, z_ref.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(fd.test.logits, f_ref.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fd.test.labels, arrays.labels.numpy())
    assert fd.train.layers["layer3"].shape == (120, 256)
    got = res.value(metric="auroc", detector="msp", ood="digits", layer="penultimate")
    assert got == pytest.approx(_msp_auroc(fd.test.logits, fd.ood["digits"].logits), abs=1e-12)
    assert res.meta["model"]["weights_sha256"]
    # `ncood score` reads the features directory as it is and gets the same number
    from ncood.cli.main import main
    from ncood.results import Results

    assert (
        main(
            [
                "score",
                "--features",
                str(out / "features"),
                "--detectors",
                "msp",
                "--out",
                str(tmp_path / "scored"),
                "-q",
            ]
        )
        == 0
    )
    again = Results.load(tmp_path / "scored")
    assert again.value(metric="auroc", detector="msp", ood="digits") == pytest.approx(got)


class DictLoader(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "label": 0}


def _bad_folder(tmp_path):
    from PIL import Image

    d = tmp_path / "faces"
    d.mkdir()
    for i in range(6):
        Image.fromarray(np.full((20, 20), 40 * i, np.uint8)).save(d / f"{i}.png")
    (d / "3.png").write_bytes(b"not a png")
    return d


BAD_INPUTS = {
    "other architecture": (
        "weights_other",
        CheckpointError,
        "missing keys: conv1.weight.*unexpected keys: features.0.0.weight",
    ),
    "num_classes mismatch": ("classes", CheckpointError, "num_classes is 100.*for 10 classes"),
    "no linear head": ("squeeze", ConfigError, "no nn.Linear layer.*head='NAME'"),
    "unreadable image": ("folder", DataError, "cannot read image .*3.png"),
    "dataloader of dicts": ("dicts", DataError, r"must yield \(images, labels\).*a dict with keys"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_evaluate_bad_inputs_one_line_and_nothing_written(case, tmp_path, resnet_weights):
    import ncood

    kind, exc, match = BAD_INPUTS[case]
    _, path = resnet_weights
    kwargs = dict(
        train="fashion_mnist",
        test="fashion_mnist",
        ood=["digits"],
        detectors=["msp"],
        layers=[],
        input_size=SIZE,
        max_train_samples=40,
        max_test_samples=20,
        max_ood_samples=20,
        num_workers=0,
    )
    model: object = "torchvision:resnet18"
    if kind == "weights_other":
        other = torchvision.models.mobilenet_v3_small(num_classes=10)
        torch.save(other.state_dict(), tmp_path / "other.pt")
        kwargs["weights"] = tmp_path / "other.pt"
    elif kind == "classes":
        kwargs.update(weights=path, num_classes=100)
    elif kind == "squeeze":
        model = torchvision.models.squeezenet1_0(num_classes=10)
    elif kind == "folder":
        kwargs.update(weights=path, ood=[f"faces=folder:{_bad_folder(tmp_path)}"])
    elif kind == "dicts":
        kwargs.update(weights=path, ood={"d": torch.utils.data.DataLoader(DictLoader())})
    out = tmp_path / "out"
    with pytest.raises(NcoodError, match=match) as err:
        ncood.evaluate(model, out=out, **kwargs)
    assert isinstance(err.value, exc)
    assert "\n" not in str(err.value)
    assert not out.exists()  # nothing written


def test_timm_transformer_layouts_pool_per_stage():
    """Swin stages are channels-last, ViT blocks are token sequences: both pool to
    (n, channels), equal to timm's own NCHW intermediates averaged over positions."""
    pytest.importorskip("timm")
    from ncood.extract import capture

    torch.manual_seed(0)
    x = torch.rand(2, 3, 224, 224)
    swin = load_model("timm:swin_tiny_patch4_window7_224", num_classes=10)
    with torch.no_grad(), capture(swin, swin.stage_names()) as got:
        swin.forward_features(x)
        ref = swin.model.forward_intermediates(x, intermediates_only=True, output_fmt="NCHW")
    assert swin.stage_names() == ["layers.0", "layers.1", "layers.2", "layers.3"]
    for name, t in zip(swin.stage_names(), ref, strict=True):
        torch.testing.assert_close(got[name], t.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    vit = load_model("timm:vit_tiny_patch16_224", num_classes=10)
    with torch.no_grad(), capture(vit, ["blocks.11"]) as got:
        z = vit.forward_features(x)
        tokens = vit.model.blocks(vit.model._pos_embed(vit.model.patch_embed(x)))
        z_ref = vit.model.forward_head(vit.model.forward_features(x), pre_logits=True)
    assert vit.head_name == "head"
    torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
    torch.testing.assert_close(got["blocks.11"], tokens.mean(dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_readme_bring_your_own_model_runs_as_written(tmp_path, monkeypatch):
    """The README's "Bring your own model" block, executed unchanged, in a directory
    holding the weights it loads and a `faces` folder of real images."""
    import re
    from pathlib import Path

    from PIL import Image

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Bring your own model", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), "resnet18_fmnist.pt")
    Path("faces").mkdir()
    for i, img in enumerate(load_images("digits", "test", n=40, seed=2).images[:, 0]):
        Image.fromarray(img.numpy()).save(f"faces/{i}.png")  # stand-in "faces": real digits
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    table = namespace["res"].pivot("detector", "ood", metric="auroc", layer="penultimate")
    assert table.shape == (3, 2) and table.notna().all().all()


def test_evaluate_unknown_option_or_detector_fails_before_any_work(tmp_path):
    import ncood

    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(ConfigError, match="did you mean 'max_train_samples'"):
        ncood.evaluate(net, train="digits", test="digits", max_trian_samples=5, out=tmp_path / "o")
    with pytest.raises(ConfigError, match="unknown detector 'enrgy'"):
        ncood.evaluate(net, train="digits", test="digits", detectors=["enrgy"], out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def _own_penultimate(spec: str, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each family's own penultimate features, computed without ncood."""
    with torch.no_grad():
        if spec.startswith("timm:"):
            return net.forward_head(net.forward_features(x), pre_logits=True)
        if "mobilenet" in spec:
            return net.classifier[:3](torch.flatten(net.avgpool(net.features(x)), 1))
        return avgpool_features(net, x)[0]


@pytest.mark.parametrize(
    "spec", ["timm:resnet18", "torchvision:mobilenet_v3_small", "torchvision:resnet18"]
)
def test_evaluate_families_give_their_own_features(spec, tmp_path):
    """Through ncood.evaluate, a timm model and a model whose head is not `fc` give
    the features and logits their own code computes on the same images."""
    if spec.startswith("timm:"):
        pytest.importorskip("timm")
    import ncood
    from ncood.types import load_feature_dir

    torch.manual_seed(0)
    model = load_model(spec, num_classes=10, input_size=32)
    res = ncood.evaluate(
        model,
        train="fashion_mnist",
        test="fashion_mnist",
        ood=["digits"],
        detectors=["msp"],
        layers=[],
        max_train_samples=60,
        max_test_samples=20,
        max_ood_samples=20,
        out=tmp_path / "out",
        num_workers=0,
    )
    assert 0.0 <= res.value(metric="auroc", detector="msp", ood="digits") <= 1.0
    fd = load_feature_dir(tmp_path / "out" / "features")
    x = model.transform(load_images("fashion_mnist", "test", n=20, seed=0).images)
    net = model.model.eval()
    np.testing.assert_allclose(fd.test.features, _own_penultimate(spec, net, x), atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(fd.test.logits, net(x), rtol=1e-5, atol=1e-5)


TORCHVISION_ZOO = {
    # name: (input side, head, first and last proposed stage)
    "densenet121": (64, "classifier", "features.denseblock1", "features.denseblock4"),
    "efficientnet_b0": (64, "classifier.1", "features.0", "features.8"),
    "shufflenet_v2_x0_5": (64, "fc", "conv1", "conv5"),
    "vgg11": (64, "classifier.6", "features.0", "features.18"),
    "vit_b_16": (
        224,
        "heads.head",
        "encoder.layers.encoder_layer_0",
        "encoder.layers.encoder_layer_11",
    ),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_ZOO))
def test_torchvision_zoo_heads_and_stages(name):
    """Every architecture gets the same checks: the head is found, forward_head of the
    features is the model's own output, and the proposed stages run and pool."""
    from ncood.extract import capture

    size, head, first, last = TORCHVISION_ZOO[name]
    torch.manual_seed(0)
    model = load_model(f"torchvision:{name}", num_classes=7, input_size=size)
    assert model.head_name == head
    stages = model.stage_names()
    assert stages[0] == first and stages[-1] == last
    x = torch.rand(2, 3, size, size)
    with torch.no_grad(), capture(model, stages) as got:
        z = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(z), model.model(x), rtol=1e-5, atol=1e-5)
    assert all(v.ndim == 2 and v.shape[0] == 2 for v in got.values())


def test_evaluate_with_users_own_loaders_and_arrays(tmp_path):
    """pytorch-ood style: DataLoaders that apply the user's own transforms (float batches
    reach the model as they are), an OOD set as a numpy array."""
    import ncood
    from ncood.types import load_feature_dir

    train = load_images("fashion_mnist", "train", n=200, seed=0)
    test = load_images("fashion_mnist", "test", n=50, seed=0)

    def loader(arrays):  # the user's transform: [0, 1], centred, 1 channel, 28 x 28
        x = arrays.images.float() / 255.0 - 0.5
        ds = torch.utils.data.TensorDataset(x, arrays.labels)
        return torch.utils.data.DataLoader(ds, batch_size=32)

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    ).eval()
    digits = load_images("digits", "test", n=60, seed=0).images.numpy()  # (60, 1, 28, 28)
    res = ncood.evaluate(
        net,
        train=loader(train),
        test=loader(test),
        ood={"digits": digits},
        detectors=["energy"],
        input_size=(1, 28, 28),
        mean=[0.5],
        std=[1.0],
        out=tmp_path / "out",
        num_workers=0,
    )
    fd = load_feature_dir(tmp_path / "out" / "features")
    with torch.no_grad():
        x = test.images.float() / 255.0 - 0.5
        np.testing.assert_allclose(fd.test.features, net[:6](x), rtol=1e-6, atol=1e-6)
        # the OOD array got the model's transform: (x / 255 - 0.5) / 1.0, the same values
        d = torch.from_numpy(digits).float() / 255.0 - 0.5
        np.testing.assert_allclose(fd.ood["digits"].logits, net(d), rtol=1e-5, atol=1e-5)
    assert fd.train.labels.tolist() == train.labels.tolist()
    assert res.value(metric="auroc", detector="energy", ood="digits") >= 0.0
    assert fd.meta["layers"] == ["0"]
