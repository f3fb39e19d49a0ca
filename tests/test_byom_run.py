"""`ncood run` with a model brought by the user as a regime, and the per-regime features
directory (issue 12 items 2 and the `run` part of 2).

Independent references: the torchvision model's own ``avgpool`` output (forward hook)
and ``model(x)`` on the same Fashion-MNIST images; ``ncood score --features`` on the
directory the run wrote, whose AUROC rows must equal the run's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml

from ncood.config import RunConfig, check_run_config, from_dict
from ncood.data import load_images
from ncood.data.streams import EvalTransform
from ncood.errors import ConfigError
from ncood.results import Results
from ncood.types import load_feature_dir

MEAN, STD = [0.3, 0.3, 0.3], [0.35, 0.35, 0.35]
DETECTORS = {"msp": {}, "energy": {}, "mahalanobis": {}, "vim": {"dim": 64}, "neco": {"dim": 8}}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A random-init torchvision resnet18(num_classes=10), saved as a plain state_dict."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    return path


def _net(weights: Path) -> torch.nn.Module:
    net = torchvision.models.resnet18(num_classes=10)
    net.load_state_dict(torch.load(weights, weights_only=True))
    return net.eval()


def _regime(weights: Path, **extra) -> dict:
    return {
        "checkpoint": str(weights),
        "model": "torchvision:resnet18",
        "num_classes": 10,
        "input_size": 64,
        "mean": MEAN,
        "std": STD,
        **extra,
    }


def _config(weights: Path, **changes) -> dict:
    return {
        "name": "byom",
        "seed": 0,
        "data": {
            "id": "fashion_mnist",
            "ood": ["digits", "noise=gaussian_noise"],
            "train_samples": 200,
            "test_samples": 60,
            "ood_samples": 40,
        },
        "regimes": {"mine": _regime(weights)},
        "detectors": DETECTORS,
        "collapse": {"layers": ["layer3", "layer4"]},
        "bootstrap": {"n_boot": 0},
        "explain": False,
        **changes,
    }


@pytest.fixture()
def no_report(monkeypatch):
    """The report is replaced by a stub (it has its own tests)."""
    import ncood.report

    def write_report(results, directory, scores=None):
        (Path(directory) / "report.html").write_text("<html></html>")
        return {}

    monkeypatch.setattr(ncood.report, "write_report", write_report)
    monkeypatch.setattr(ncood.report, "findings", lambda results: [])


def _auroc(df):
    df = df[(df["metric"] == "auroc") & (df["layer"] == "penultimate")]
    return df.set_index(["detector", "ood"])["value"].sort_index()


@pytest.mark.slow
def test_run_a_brought_model_features_equal_its_avgpool(tmp_path, weights, no_report, caplog):
    from ncood.cli.main import main
    from ncood.pipeline import run

    cfg = from_dict(RunConfig, _config(weights))
    out = tmp_path / "run"
    res = run(cfg, output=out)

    # the plain features directory of the regime, read by `ncood score`
    feats = out / "regimes" / "mine" / "features"
    fd = load_feature_dir(feats)
    assert list(fd.ood) == ["digits", "noise"] and fd.meta["epoch"] is None
    assert (len(fd.train), len(fd.test), len(fd.ood["digits"])) == (200, 60, 40)
    # features = the model's own avgpool output, logits = model(x), on the same images
    net = _net(weights)
    grab = {}
    net.avgpool.register_forward_hook(lambda m, i, o: grab.__setitem__("z", o.flatten(1)))
    for fs, split, n in ((fd.test, "test", 60), (fd.train, "train", 200)):
        images = load_images("fashion_mnist", split, n=n, seed=0, shape=(3, 64, 64)).images
        x = EvalTransform(64, 64, 3, mean=tuple(MEAN), std=tuple(STD))(images)
        with torch.no_grad():
            logits = net(x)
        np.testing.assert_allclose(fs.features, grab["z"].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fs.logits, logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fd.head.weight, net.fc.weight.detach().double().numpy())
    # hard links into the cache, not copies
    (entry,) = (out / "cache").glob("model-*")
    assert os.path.samefile(feats / "train" / "features.npy", entry / "train" / "features.npy")

    # what the run measured: detectors at the head, NC, the two layers; no history, no epoch
    df = res.to_frame()
    assert res.values("regime") == ["mine"] and df["epoch"].isna().all()
    assert set(_auroc(df).index) == {(d, o) for d in DETECTORS for o in ("digits", "noise")}
    assert {"nc1", "nc5", "train_error"} <= set(df["metric"])
    # layer4 pooled is the penultimate feature of a ResNet: measured once, as penultimate
    np.testing.assert_array_equal(fd.train.layers["layer4"], fd.train.features)
    assert {"layer3", "penultimate"} <= set(df["layer"].dropna())
    assert "train_loss" not in set(df["metric"])
    assert res.meta["networks"][0]["checkpoint"] == str(weights)
    assert res.meta["data"]["id"]["source"]

    # `ncood score` on the written directory reproduces the run's final AUROC rows
    argv = ["score", "--features", str(feats), "--detectors", ",".join(DETECTORS)]
    argv += ["--param", "vim.dim=64", "--param", "neco.dim=8", "--out", str(tmp_path / "s")]
    assert main([*argv, "-q"]) == 0
    scored = _auroc(Results.load(tmp_path / "s").to_frame())
    assert scored.equals(_auroc(df)), (scored, _auroc(df))

    # a re-run reads the extracted features back instead of extracting again
    mtime = (entry / "extract.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="ncood.pipeline"):
        again = run(cfg, output=out)
    assert "cache hit" in caplog.text
    assert (entry / "extract.json").stat().st_mtime_ns == mtime
    assert _auroc(again.to_frame()).equals(_auroc(df))
    assert load_feature_dir(feats).train.features.shape == (200, 512)


@pytest.mark.slow
def test_trained_and_brought_regimes_each_write_features_and_explain(tmp_path, weights, no_report):
    """A trained regime and a brought one in one run (two seeds): every network gets its
    features directory, and the explanation runs on the brought model (adapter)."""
    from ncood.pipeline import run

    raw = _config(weights)
    raw["data"] = {**raw["data"], "train_samples": 100, "test_samples": 40, "ood_samples": 20}
    raw.update(
        seeds=[0, 1],
        model="resnet_narrow",
        training={"precision": "fp32", "max_test_samples": 40, "snapshots": []},
        regimes={"standard": {"epochs": 1}, "mine": _regime(weights, input_size=32)},
        detectors={"energy": {}, "neco": {"dim": 8}},
        collapse={"layers": ["layer3"], "across_training": True},
        explain=True,
    )
    res = run(from_dict(RunConfig, raw), output=tmp_path)
    from ncood.analysis import analyse

    df = res.to_frame()
    for regime in ("standard", "mine"):
        for seed in (0, 1):
            fd = load_feature_dir(tmp_path / "regimes" / regime / f"seed_{seed}" / "features")
            assert len(fd.test) == 40 and list(fd.ood) == ["digits", "noise"]
            # the directory holds the final network: its detectors give the run's rows
            got = analyse(fd, detectors=raw["detectors"], collapse=False, layers=False)
            got = _auroc(got.to_frame())
            rows = df[(df["regime"] == regime) & (df["seed"] == seed)]
            if regime == "standard":
                rows = rows[rows["epoch"] == rows["epoch"].max()]
            assert got.equals(_auroc(rows)), (regime, seed)
    mine = df[df["regime"] == "mine"]
    assert mine["epoch"].isna().all() and set(mine["seed"]) == {0, 1}
    # explanation of the brought model (first seed): feature analyses and attributions
    assert {"ig_score_gap", "example_score"} <= set(mine["metric"])
    with np.load(tmp_path / "explain.npz") as npz:
        assert any(k.startswith("mine/") for k in npz.files)
        assert any(k.startswith("standard/") for k in npz.files)


# ----------------------------------------------------------------- checked before any work
def _fails(raw: dict, match: str, tmp_path) -> str:
    cfg = from_dict(RunConfig, raw)
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=match) as info:
        check_run_config(cfg, output=out)
    assert "\n" not in str(info.value) and not out.exists()
    return str(info.value)


def test_check_accepts_a_brought_model(tmp_path, weights):
    check_run_config(from_dict(RunConfig, _config(weights)), output=tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_check_accepts_model_alone(tmp_path, weights):
    # every option is optional but model (family transform: resize 256, crop 224)
    raw = _config(
        weights, regimes={"mine": {"checkpoint": str(weights), "model": "torchvision:resnet18"}}
    )
    check_run_config(from_dict(RunConfig, raw), output=tmp_path / "o")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"epochs": 3},
            r"^config\.regimes\.mine: with 'checkpoint' the regime is not trained; 'epochs'",
        ),
        ({"num_clases": 10}, r"did you mean 'num_classes'"),
        (
            {"model": "resnet18"},
            r"needs model: 'torchvision:NAME' or 'timm:NAME'; got model: 'resnet18'",
        ),
        ({"model": "torchvision:resnet181"}, r"^config\.regimes\.mine: .*resnet181"),
        ({"num_classes": 100}, r"num_classes is 100, but the weights .* are for 10 classes"),
        ({"input_size": 0}, r"input_size must be an int >= 1; got 0"),
        ({"mean": "0.5"}, r"mean must be a list of per-channel numbers"),
        ({"head": "classifier"}, r"'classifier' is not one"),
        ({"checkpoint": "/nonexistent/w.pt"}, r"^config\.regimes\.mine\.checkpoint: no file"),
    ],
)
def test_check_refuses_a_bad_brought_model(tmp_path, weights, change, match):
    raw = _config(weights)
    raw["regimes"]["mine"].update(change)
    _fails(raw, match, tmp_path)


def test_check_refuses_options_without_model_and_foreign_weights(tmp_path, weights):
    raw = _config(weights, regimes={"mine": {"checkpoint": str(weights), "num_classes": 10}})
    _fails(raw, r"needs model: 'torchvision:NAME' or 'timm:NAME'; got no model", tmp_path)
    other = tmp_path / "other.pt"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=10).state_dict(), other)
    raw = _config(weights)
    raw["regimes"]["mine"]["checkpoint"] = str(other)
    msg = _fails(raw, r"do not fit torchvision:resnet18: missing keys: conv1\.weight", tmp_path)
    assert "unexpected keys: features.0.0.weight" in msg


def test_check_refuses_class_count_and_layers(tmp_path):
    five = tmp_path / "five.pt"
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), five)
    raw = _config(five)
    raw["regimes"]["mine"]["num_classes"] = 5
    _fails(raw, r"the model has 5 outputs but 'fashion_mnist' has 10 classes", tmp_path)
    raw = _config(five, collapse={"layers": ["layer9"]})
    raw["regimes"]["mine"]["num_classes"] = 5
    _fails(raw, r"^config\.collapse\.layers\[0\]: 'layer9' is not a submodule of ResNet", tmp_path)


def test_cli_run_refuses_in_one_line(tmp_path, weights, capsys):
    from ncood.cli.main import main

    raw = _config(weights, output=str(tmp_path / "out"))
    raw["regimes"]["mine"]["num_classes"] = 100
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_classes is 100" in err[0]
    assert not (tmp_path / "out").exists()
