"""ncood.odin: ODIN (Liang, Li & Srikant, ICLR 2018, arXiv 1706.02690) against independent
computations.

References: the closed form of the perturbation for a linear softmax model (for
``f(x) = W x + b``, ``grad_x log S_y(x; T) = W^T (e_y - p) / T``), itself checked by finite
differences in float64; a hand-written per-sample autograd loop through the plain
torchvision forward pass (not ncood's adapter); MSP at temperature ``T`` on the logits
that extraction stores; scikit-learn's AUROC.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from scipy.special import log_softmax, softmax
from sklearn.metrics import roc_auc_score
from torch import nn

from ncood.data import load_images
from ncood.data.streams import EvalTransform, open_stream
from ncood.detectors import create_detector
from ncood.errors import ConfigError, DataError
from ncood.extract import extract_stream
from ncood.models.adapters import wrap_model
from ncood.odin import (
    DEFAULT_EPSILON,
    DEFAULT_GRID,
    DEFAULT_TEMPERATURE,
    odin_rows,
    odin_scores,
    odin_select,
)

SIZE = 64  # Fashion-MNIST 28x28 grey -> 3-channel 64x64, as in tests/test_adapters.py
STD = (0.2, 0.25, 0.5)  # per-channel std of the linear case: the division is visible


# --------------------------------------------------------------------------- linear model
class Floats(torch.utils.data.Dataset):
    """Float model input (a user's own transform made it): streamed as it is."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = torch.from_numpy(x.astype(np.float32))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], -1


@pytest.fixture(scope="module")
def linear():
    """A linear softmax model on 3 x 4 x 4 inputs, its float64 weights and 20 inputs."""
    rng = np.random.default_rng(3)
    c, d = 5, 3 * 4 * 4
    w = 0.2 * rng.normal(size=(c, d))  # moderate logits: 1 - max p well above float32's eps
    b = rng.normal(size=c)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, c))
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(w))
        net[1].bias.copy_(torch.from_numpy(b))
    w = net[1].weight.detach().double().numpy()  # what float32 holds
    b = net[1].bias.detach().double().numpy()
    x = rng.normal(size=(20, 3, 4, 4)).astype(np.float32).astype(np.float64)
    tf = EvalTransform(4, 4, 3, mean=(0.5, 0.5, 0.5), std=STD)
    return net, w, b, x, tf


def closed_form(w, b, x, temperature, epsilon, sign=1.0):
    """ODIN of ``f(x) = W x + b`` in float64: ``(scores, grad of log S_yhat)``."""
    flat = x.reshape(len(x), -1)  # (n, D)
    f = flat @ w.T + b  # (n, C)
    p = softmax(f / temperature, axis=1)
    onehot = np.eye(w.shape[0])[f.argmax(1)]
    grad = (onehot - p) @ w / temperature  # (n, D): grad_x log S_yhat(x; T)
    # the reference's sign of the cross-entropy's gradient (-grad): 2 * (g >= 0) - 1
    s = np.where(-grad >= 0, 1.0, -1.0).reshape(x.shape)
    std = np.asarray(STD).reshape(1, -1, 1, 1)
    x_tilde = x - sign * epsilon * s / std
    g = (x_tilde.reshape(len(x), -1) @ w.T + b) / temperature
    return softmax(g, axis=1).max(1), grad


def test_closed_form_gradient_is_the_finite_difference(linear):
    _, w, b, x, _ = linear
    t, h = 10.0, 1e-6
    _, grad = closed_form(w, b, x, t, 0.0)
    flat = x.reshape(len(x), -1)
    y = (flat @ w.T + b).argmax(1)

    def log_s(z):
        return log_softmax((z @ w.T + b) / t, axis=1)[np.arange(len(z)), y]

    fd = np.empty_like(flat)
    for j in range(flat.shape[1]):
        e = np.zeros(flat.shape[1])
        e[j] = h
        fd[:, j] = (log_s(flat + e) - log_s(flat - e)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 10.0, 1000.0])
@pytest.mark.parametrize("epsilon", [0.0014, 0.05])
def test_linear_model_equals_the_closed_form(linear, temperature, epsilon):
    net, w, b, x, tf = linear
    ref, grad = closed_form(w, b, x, temperature, epsilon)
    # the sign is well defined in float32 for every component (else the case is moot)
    assert (np.abs(grad).min(1) > 1e-5 * np.abs(grad).max(1)).all()
    got = odin_scores(
        net,
        Floats(x),
        temperature=temperature,
        epsilon=epsilon,
        transform=tf,
        batch_size=7,
        device="cpu",
        num_workers=0,
    )
    assert got.dtype == np.float64 and got.shape == (20,)
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=0)


@pytest.mark.parametrize("temperature", [1.0, 1000.0])
def test_the_perturbation_raises_the_max_softmax(linear, temperature):
    """The sign that is easy to get wrong: x - eps * sign(-grad log S) ascends log S_yhat."""
    net, w, b, x, tf = linear
    opts = dict(transform=tf, device="cpu", num_workers=0)
    clean = odin_scores(net, Floats(x), temperature=temperature, epsilon=0.0, **opts)
    moved = odin_scores(net, Floats(x), temperature=temperature, epsilon=1e-3, **opts)
    assert (moved > clean).all()
    wrong, _ = closed_form(w, b, x, temperature, 1e-3, sign=-1.0)  # the flipped sign
    assert (wrong < clean).all()
    # eps = 0 is MSP at temperature T on the model's logits
    logits = x.reshape(len(x), -1) @ w.T + b
    msp = create_detector("msp", T=temperature).score(None, logits)
    np.testing.assert_allclose(clean, msp, rtol=1e-6)


def test_the_models_own_mode_is_restored(linear):
    net, _, _, x, tf = linear
    net.train()
    odin_scores(net, Floats(x), transform=tf, device="cpu", num_workers=0)
    assert all(m.training for m in net.modules())
    net[1].eval()  # mixed modes come back as they were
    odin_scores(net, Floats(x), transform=tf, device="cpu", num_workers=0)
    assert net.training and net[0].training and not net[1].training
    net.eval()


def test_runs_under_a_callers_no_grad(linear):
    net, _, _, x, tf = linear
    opts = dict(temperature=10.0, epsilon=0.01, transform=tf, device="cpu", num_workers=0)
    want = odin_scores(net, Floats(x), **opts)
    with torch.no_grad():
        got = odin_scores(net, Floats(x), **opts)
    np.testing.assert_array_equal(got, want)


def test_input_std_overrides_the_transform(linear):
    net, w, b, x, tf = linear
    opts = dict(temperature=10.0, epsilon=0.01, transform=tf, device="cpu", num_workers=0)
    got = odin_scores(net, Floats(x), input_std=1.0, **opts)
    flat = x.reshape(len(x), -1)
    f = flat @ w.T + b
    p = softmax(f / 10.0, axis=1)
    grad = (np.eye(5)[f.argmax(1)] - p) @ w
    x_tilde = flat + 0.01 * np.where(-grad >= 0, -1.0, 1.0)  # std 1: steps in input units
    ref = softmax((x_tilde @ w.T + b) / 10.0, axis=1).max(1)
    np.testing.assert_allclose(got, ref, rtol=2e-6)


# --------------------------------------------------------------------------- a real network
@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    arrays = load_images("fashion_mnist", "test", n=24, seed=0)
    return net, arrays, EvalTransform(SIZE, SIZE, 3)


def per_sample_odin(net, x, temperature, epsilon, std):
    """ODIN one image at a time through the plain torchvision forward pass."""
    out = []
    scale = torch.tensor(std).view(1, -1, 1, 1)
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        f = net(xi)
        y = int(f.argmax())
        log_s = torch.log_softmax(f / temperature, dim=1)[0, y]
        (g,) = torch.autograd.grad(-log_s, xi)  # the cross-entropy's gradient
        x_tilde = xi.detach() - epsilon * torch.where(g >= 0, 1.0, -1.0) / scale
        with torch.no_grad():
            logits = net(x_tilde).double()
        out.append(torch.softmax(logits / temperature, dim=1).max().item())
    return np.array(out)


@pytest.mark.parametrize(("temperature", "n"), [(1000.0, 24), (10.0, 8)])
def test_resnet18_matches_a_per_sample_autograd_loop(resnet, temperature, n):
    net, arrays, tf = resnet
    arrays = arrays.subset(np.arange(n))
    got = odin_scores(
        net,
        arrays,
        temperature=temperature,
        epsilon=DEFAULT_EPSILON,
        transform=tf,
        batch_size=10,
        device="cpu",
        num_workers=0,
    )
    ref = per_sample_odin(net, tf(arrays.images), temperature, DEFAULT_EPSILON, tf.std)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert all(p.grad is None for p in net.parameters())  # no gradient kept on the model
    assert not any(m.training for m in net.modules())  # the user's model keeps its mode


def test_resnet18_eps0_is_msp_on_the_extracted_logits(resnet):
    net, arrays, tf = resnet
    stream = open_stream(arrays.images.numpy(), transform=tf, batch_size=10)
    # an adapter in eval mode: extract_stream restores the mode of the wrapper it is given
    fs = extract_stream(wrap_model(net).eval(), stream, device="cpu", progress=False)
    msp = create_detector("msp", T=1000.0).score(fs.features, fs.logits)
    got = odin_scores(
        net, arrays.images.numpy(), temperature=1000.0, epsilon=0.0, transform=tf, device="cpu"
    )
    np.testing.assert_allclose(got, msp, rtol=1e-6)


# --------------------------------------------------------------------------- rows, selection
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An ncood resnet_narrow checkpoint (random init) on 1 x 28 x 28 Fashion-MNIST."""
    from ncood.models import create_model
    from ncood.train.checkpoint import save_checkpoint

    torch.manual_seed(2)
    model = create_model("resnet_narrow", num_classes=10, in_channels=1).eval()
    return save_checkpoint(
        tmp_path_factory.mktemp("odin") / "last.pt",
        model=model,
        model_name="resnet_narrow",
        model_kwargs={"num_classes": 10, "in_channels": 1},
        input_spec={"size": 28, "channels": 1, "mean": [0.286], "std": [0.353]},
        dataset={"name": "fashion_mnist", "classes": []},
        regime="standard",
        config={},
        epoch=3,
        history=[],
    )


def test_rows_from_a_checkpoint_equal_sklearn_on_the_scores(checkpoint):
    scores: dict[str, np.ndarray] = {}
    res = odin_rows(
        checkpoint,
        ood=["digits", "crops=texture_crops"],
        max_test_samples=40,
        max_ood_samples=30,
        regime="standard",
        seed=0,
        device="cpu",
        num_workers=0,
        scores_out=scores,
    )
    df = res.to_frame()
    assert set(df["metric"]) == {"auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_oodpos"}
    assert set(df["ood"]) == {"digits", "crops"} and len(df) == 10
    assert (df["detector"] == "odin").all() and (df["layer"] == "penultimate").all()
    assert (df["epoch"] == 3).all() and (df["n_id"] == 40).all() and (df["n_ood"] == 30).all()
    assert json.loads(df["params"].iloc[0]) == {
        "epsilon": DEFAULT_EPSILON,
        "temperature": DEFAULT_TEMPERATURE,
    }
    assert df["params"].iloc[0] == json.dumps(json.loads(df["params"].iloc[0]), sort_keys=True)
    for ood in ("digits", "crops"):
        y = np.r_[np.ones(40), np.zeros(30)]
        want = roc_auc_score(y, np.r_[scores["odin/id"], scores[f"odin/{ood}"]])
        assert res.value(metric="auroc", ood=ood) == pytest.approx(want, abs=1e-12)
    # the same images as a direct call on the checkpoint's test split
    direct = odin_scores(
        checkpoint, "fashion_mnist", n=40, device="cpu", num_workers=0, batch_size=16
    )
    np.testing.assert_allclose(scores["odin/id"], direct, rtol=1e-6)
    assert res.meta["detectors"]["odin"]["temperature"] == DEFAULT_TEMPERATURE
    assert res.meta["odin"]["input_std"] == pytest.approx([0.353])


def test_rows_with_bootstrap_intervals(checkpoint):
    res = odin_rows(
        checkpoint,
        ood=["digits"],
        max_test_samples=30,
        max_ood_samples=30,
        bootstrap={"n_boot": 50, "seed": 0},
        device="cpu",
        num_workers=0,
    )
    df = res.to_frame()
    assert df["ci_low"].notna().all() and (df["ci_low"] <= df["value"] + 1e-12).all()
    assert (df["value"] <= df["ci_high"] + 1e-12).all()


def test_selection_picks_the_best_validation_auroc(checkpoint):
    val_id = load_images("fashion_mnist", "train", n=30, seed=5)
    grid = {"temperature": [1, 1000], "epsilon": [0.0, 0.0028]}
    res = odin_select(
        checkpoint,
        val_id,
        "uniform_noise",
        grid,
        max_ood_samples=25,
        regime="standard",
        seed=0,
        device="cpu",
        num_workers=0,
    )
    # independent: every candidate scored on its own, AUROC by scikit-learn
    from ncood.data import InputSpec
    from ncood.train.checkpoint import load_checkpoint, model_from_checkpoint

    net, ckpt = model_from_checkpoint(load_checkpoint(checkpoint))
    spec = InputSpec.from_dict(ckpt["input_spec"])
    noise = load_images("uniform_noise", "test", n=25, shape=(1, 28, 28))
    aurocs = []
    for t in grid["temperature"]:
        for e in grid["epsilon"]:
            opts = dict(temperature=t, epsilon=e, transform=spec, device="cpu")
            s_id = odin_scores(net, val_id, **opts)
            s_ood = odin_scores(net, noise, **opts)
            aurocs.append(roc_auc_score(np.r_[np.ones(30), np.zeros(25)], np.r_[s_id, s_ood]))
    df = res.to_frame()
    cands = df[df["metric"] == "selection_auroc"]
    np.testing.assert_allclose(cands["value"].to_numpy(), aurocs, atol=1e-12)
    best = int(np.argmax(aurocs))  # ties: the first
    chosen = df[df["metric"] == "selection_chosen"]
    assert len(chosen) == 1 and chosen["value"].iloc[0] == pytest.approx(aurocs[best])
    want = {"epsilon": float([0.0, 0.0028][best % 2]), "temperature": float([1, 1000][best // 2])}
    assert json.loads(chosen["params"].iloc[0]) == want
    assert (df["ood"] == "uniform_noise").all() and (df["detector"] == "odin").all()
    assert (df["n_id"] == 30).all() and (df["n_ood"] == 25).all() and (df["epoch"] == 3).all()
    sel = res.meta["selection"]["odin"]
    assert sel["chosen"] == want and sel["val_ood"] == "uniform_noise"
    assert sel["grid"] == {"temperature": [1.0, 1000.0], "epsilon": [0.0, 0.0028]}
    assert (sel["n_val_id"], sel["n_val_ood"]) == (30, 25)


def test_selection_follows_validation_where_the_test_set_would_choose_otherwise(linear):
    """ID logits have two high classes; the validation OOD set three (T = 1 wins there),
    the test OOD set one (T = 1000 wins there). The choice must be validation's."""
    _, _, _, _, tf = linear
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 5, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.eye(5, 48))  # the logits are the first 5 inputs
    rng = np.random.default_rng(0)

    def inputs(logits):  # (n, 5) logits -> (n, 3, 4, 4) model input
        x = np.zeros((len(logits), 48))
        x[:, :5] = logits + rng.normal(scale=0.1, size=logits.shape)
        return Floats(x.reshape(-1, 3, 4, 4))

    val_id = inputs(np.tile([4.0, 3.9, -10, -10, -10], (30, 1)))
    test_id = inputs(np.tile([4.0, 3.9, -10, -10, -10], (30, 1)))
    val_ood = inputs(np.tile([5.0, 5.0, 5.0, -20, -20], (30, 1)))
    test_ood = inputs(np.tile([4.0, 0, 0, 0, 0], (30, 1)))
    opts = dict(transform=tf, device="cpu", num_workers=0)
    grid = {"temperature": [1, 1000], "epsilon": [0.0]}
    res = odin_select(net, val_id, val_ood, grid, val_ood_name="val", **opts)
    chosen = res.meta["selection"]["odin"]["chosen"]

    def auroc(id_data, ood_data, t):
        s_id = odin_scores(net, id_data, temperature=t, epsilon=0.0, **opts)
        s_ood = odin_scores(net, ood_data, temperature=t, epsilon=0.0, **opts)
        return roc_auc_score(np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood])

    on_val = [auroc(val_id, val_ood, t) for t in (1, 1000)]
    on_test = [auroc(test_id, test_ood, t) for t in (1, 1000)]
    assert np.argmax(on_val) == 0 and np.argmax(on_test) == 1  # the case is what it says
    assert chosen == {"epsilon": 0.0, "temperature": 1.0}


def test_default_grid_is_openood():
    assert DEFAULT_GRID == {"temperature": [1, 10, 100, 1000], "epsilon": [0.0014, 0.0028]}
    assert (DEFAULT_TEMPERATURE, DEFAULT_EPSILON) == (1000, 0.0014)


# --------------------------------------------------------------------------- evaluate
def test_evaluate_runs_odin_on_the_same_images_as_the_detectors(tmp_path):
    import ncood

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    res = ncood.evaluate(
        net,
        train="fashion_mnist",
        test="fashion_mnist",
        ood=["digits"],
        detectors={"msp": {"T": 1000}, "odin": {"temperature": 1000, "epsilon": 0.0}},
        layers=[],
        input_size=16,
        max_train_samples=60,
        max_test_samples=30,
        max_ood_samples=20,
        collapse=False,
        num_workers=0,
        device="cpu",
    )
    msp = res.value(metric="auroc", detector="msp", ood="digits")
    odin = res.select(metric="auroc", detector="odin", ood="digits")
    assert len(odin) == 1 and odin["value"].iloc[0] == pytest.approx(msp, abs=1e-9)
    assert odin["n_id"].iloc[0] == 30 and odin["n_ood"].iloc[0] == 20
    assert res.meta["detectors"]["odin"] == {"epsilon": 0.0, "temperature": 1000.0}


def test_list_detectors_names_odin_apart():
    from ncood.cli.list import entries
    from ncood.detectors import list_detectors

    rows = dict(entries("detectors"))
    assert "odin" in rows and "odin" not in list_detectors()
    assert "runs the network" in rows["odin"]


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": -0.001}, r"'epsilon' parameter of ODIN must be a float in the range \[0"),
        ({"temperature": 0}, r"'temperature' parameter of ODIN must be a float in the range \(0"),
        ({"temperature": float("nan")}, r"'temperature' parameter of ODIN"),
        ({"input_std": [1.0, 2.0]}, r"'input_std' parameter of ODIN must be a positive float"),
        ({"batch_size": 0}, r"'batch_size' parameter of ODIN"),
    ],
)
def test_bad_parameters_are_one_line(linear, kwargs, match):
    net, _, _, x, tf = linear
    with pytest.raises(ConfigError, match=match) as err:
        odin_scores(net, Floats(x), transform=tf, device="cpu", num_workers=0, **kwargs)
    assert "\n" not in str(err.value)


def test_nan_images_are_one_line(linear):
    net, _, _, x, tf = linear
    bad = x.copy()
    bad[3, 1, 2, 2] = np.nan
    with pytest.raises(DataError, match="NaN or inf") as err:
        odin_scores(net, Floats(bad), transform=tf, device="cpu", num_workers=0, batch_size=4)
    assert "\n" not in str(err.value)
    images = np.full((4, 8, 8), np.nan, dtype=np.float32)  # float arrays: the stream says it
    with pytest.raises(DataError, match=r"float images must lie in \[0, 1\]"):
        odin_scores(net, images, transform=tf, device="cpu")


def test_bad_selection_inputs(checkpoint):
    with pytest.raises(ConfigError, match="no parameter 'T'"):
        odin_select(checkpoint, "npz:/nowhere.npz", "uniform_noise", {"T": [1]})
    with pytest.raises(ConfigError, match=r"grid\['epsilon'\] of ODIN must be a non-empty"):
        odin_select(checkpoint, "npz:/nowhere.npz", "uniform_noise", {"epsilon": []})
    with pytest.raises(ConfigError, match="'epsilon' parameter of ODIN"):
        odin_select(checkpoint, "npz:/nowhere.npz", "uniform_noise", {"epsilon": [-1]})
    with pytest.raises(ConfigError, match="pass split= naming images held out"):
        odin_select(checkpoint, "fashion_mnist", "uniform_noise")
    with pytest.raises(ConfigError, match="one validation OOD set; got 2"):
        odin_select(checkpoint, "npz:/nowhere.npz", {"a": "uniform_noise", "b": "digits"})


def test_bad_model_and_evaluate_params(tmp_path):
    import ncood

    with pytest.raises(ConfigError, match="neither an nn.Module nor an ncood checkpoint"):
        odin_scores(str(tmp_path / "missing.pt"), "digits")
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    with pytest.raises(ConfigError, match="ODIN has no hyperparameter 'T'"):
        ncood.evaluate(net, train="digits", test="digits", detectors={"odin": {"T": 2}})
