"""ncood.models: every registered network gets the same checks (timm habit).

Independent references: torchvision's resnet18 (parameter count and, with the same
weights, the same outputs), parameter counts written out by hand from the architecture,
and the published counts (ResNet-18 11,689,512; CIFAR ResNet-18 11,173,962; ResNet-20
option A 269,722).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from ncood.errors import ConfigError
from ncood.models import ResNet, create_model, list_models
from ncood.types import LinearHead

EXPECTED_MODELS = {"resnet18", "resnet18_cifar", "resnet_narrow", "resnet20"}
FEATURE_DIM = {"resnet18": 512, "resnet18_cifar": 512, "resnet_narrow": 64, "resnet20": 64}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hand_count(stem_kernel: int, widths, blocks, in_ch: int, classes: int) -> int:
    """Parameters of a basic-block ResNet with 1x1-conv shortcuts, counted by hand."""
    bn = lambda c: 2 * c  # gamma + beta
    total = in_ch * widths[0] * stem_kernel**2 + bn(widths[0])
    c_in = widths[0]
    for i, (w, b) in enumerate(zip(widths, blocks, strict=True)):
        for j in range(b):
            c = c_in if j == 0 else w
            total += c * w * 9 + bn(w) + w * w * 9 + bn(w)
            if j == 0 and (i > 0 or c_in != w):
                total += c * w + bn(w)  # 1x1 projection shortcut
        c_in = w
    return total + c_in * classes + classes


def test_registry_names():
    assert EXPECTED_MODELS <= set(list_models())


def test_unknown_model_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        create_model("resnet81")


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
@pytest.mark.parametrize(("channels", "size", "batch"), [(1, 28, 4), (3, 32, 4), (3, 224, 1)])
def test_shapes_and_forward_equals_head_of_features(name, channels, size, batch):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=channels).eval()
    x = torch.randn(batch, channels, size, size)
    with torch.no_grad():
        z = model.forward_features(x)
        logits = model.forward_head(z)
        # 224 px is only a shape check (one pass keeps it cheap); smaller inputs also
        # check that forward is exactly forward_head(forward_features(x))
        if size < 224:
            torch.testing.assert_close(model(x), logits, rtol=0, atol=0)
    assert z.shape == (batch, FEATURE_DIM[name]) == (batch, model.feature_dim)
    assert logits.shape == (batch, 7)
    # the head is a plain affine map of the features: recompute it in float64 numpy
    head = model.get_head()
    np.testing.assert_allclose(
        head.logits(z.double().numpy()), logits.double().numpy(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_stage_names_resolve_and_shrink(name):
    model = create_model(name, num_classes=3, in_channels=1).eval()
    names = model.stage_names()
    assert names[0] == "stem" and names[1:] == [f"layer{i}" for i in range(1, len(names))]
    outputs = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: outputs.__setitem__(n, out)
        )
        for n in names
    ]
    with torch.no_grad():
        model(torch.zeros(1, 1, 32, 32))
    for h in hooks:
        h.remove()
    assert [outputs[n].shape[1] for n in names[1:]] == list(model.widths)
    sizes = [outputs[n].shape[-1] for n in names]
    assert sizes == sorted(sizes, reverse=True)
    # the last stage, average-pooled, is the penultimate feature
    with torch.no_grad():
        z = model.forward_features(torch.zeros(1, 1, 32, 32))
    torch.testing.assert_close(outputs[names[-1]].mean(dim=(2, 3)), z)


@pytest.mark.parametrize(
    ("name", "classes", "expected"),
    [
        ("resnet18", 1000, 11_689_512),  # torchvision / He et al.
        ("resnet18_cifar", 10, 11_173_962),  # the widely used CIFAR ResNet-18
        ("resnet18_cifar", 100, 11_220_132),
        ("resnet20", 10, 269_722 + 2_752),  # option A count + two 1x1 projections with BN
    ],
)
def test_known_parameter_counts(name, classes, expected):
    assert n_params(create_model(name, num_classes=classes)) == expected


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
@pytest.mark.parametrize(("in_ch", "classes"), [(1, 10), (3, 100)])
def test_parameter_count_by_hand(name, in_ch, classes):
    model = create_model(name, num_classes=classes, in_channels=in_ch)
    kernel = 7 if model.stem_kind == "imagenet" else 3
    assert n_params(model) == hand_count(kernel, model.widths, model.blocks, in_ch, classes)


def test_resnet18_matches_torchvision_count_and_outputs():
    ours = create_model("resnet18", num_classes=1000)
    ref = torchvision.models.resnet18(num_classes=1000)
    assert n_params(ours) == n_params(ref)
    # torchvision's weights load into ours once the stem's names get the "stem." prefix,
    # and the two networks then compute the same logits.
    state = {}
    for key, value in ref.state_dict().items():
        if key.startswith(("conv1.", "bn1.")):
            key = "stem." + key
        state[key] = value
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x), rtol=1e-5, atol=1e-5)


def test_get_head_is_float64_copy():
    model = create_model("resnet_narrow", num_classes=4, in_channels=1)
    head = model.get_head()
    assert isinstance(head, LinearHead)
    assert head.weight.dtype == np.float64 and head.weight.shape == (4, 64)
    np.testing.assert_array_equal(head.bias, model.fc.bias.detach().double().numpy())
    head.weight[0, 0] += 1.0  # a copy: the model is untouched
    assert model.fc.weight[0, 0].item() != head.weight[0, 0]


def test_zero_init_residual_starts_blocks_as_identity():
    plain = create_model("resnet_narrow")
    zeroed = create_model("resnet_narrow", zero_init_residual=True)
    bn2 = [m.bn2.weight for m in zeroed.modules() if hasattr(m, "bn2")]
    assert bn2 and all(torch.count_nonzero(w) == 0 for w in bn2)
    assert all(torch.all(m.bn2.weight == 1) for m in plain.modules() if hasattr(m, "bn2"))


def test_kaiming_init_scale():
    # fan-out Kaiming normal: std = sqrt(2 / (out_channels * k * k))
    torch.manual_seed(0)
    model = create_model("resnet18_cifar")
    w = model.layer4[1].conv2.weight  # (512, 512, 3, 3)
    expected = np.sqrt(2.0 / (512 * 9))
    assert abs(w.std().item() / expected - 1) < 0.01


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stem": "vgg"},
        {"widths": (16, 32), "blocks": (2,)},
        {"widths": (), "blocks": ()},
        {"num_classes": 0},
        {"in_channels": 2.5},
    ],
)
def test_bad_architecture_raises_config_error(kwargs):
    with pytest.raises(ConfigError):
        ResNet(**kwargs)


def test_no_softmax_in_model():
    # logits, not probabilities: rows need not sum to one and may be negative
    torch.manual_seed(0)
    model = create_model("resnet_narrow", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.randn(8, 1, 28, 28))
    assert not torch.allclose(out.sum(1), torch.ones(8))
    assert (out < 0).any()
