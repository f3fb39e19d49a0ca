"""Bad input gets one clear line, a non-zero exit, and loses nothing on disk.

Each test is one row of the table in docs/errors.md. Library-level checks assert the
exception type and that the message names the problem and the fix; command-line checks
assert exit status 2, a single-line message without a traceback, and that files written
before are untouched.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from ncood.cli.main import main
from ncood.collapse import collapse_metrics
from ncood.config import RunConfig, from_dict, load_config
from ncood.detectors import create_detector
from ncood.errors import CheckpointError, ConfigError, DataError, NcoodError, ShapeError
from ncood.metrics import fpr_at_tpr, ood_metrics
from ncood.pipeline import RunLock
from ncood.types import FeatureDir, FeatureSet, LinearHead


def _blobs(n=300, d=8, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    means = rng.normal(size=(c, d)) * 4
    z = means[y] + rng.normal(size=(n, d))
    head = LinearHead(means, np.zeros(c))
    return z, y, head


def _feature_dir(tmp_path: Path, *, ood_features=None) -> Path:
    z, y, head = _blobs()
    rng = np.random.default_rng(1)
    ood = rng.normal(size=(100, 8)) * 4 if ood_features is None else ood_features
    fd = FeatureDir(
        train=FeatureSet(z, head.logits(z), y, name="train"),
        test=FeatureSet(z[:90], head.logits(z[:90]), y[:90], name="test"),
        ood={"noise": FeatureSet(ood, head.logits(ood), None, name="noise")},
        head=head,
        meta={},
    )
    return fd.save(tmp_path / "features")


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _cli_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, f"exit {rc}, stderr {err}"
    lines = [line for line in err if line.startswith("ncood ")]
    assert len(lines) == 1, err
    assert not any("Traceback" in line for line in err)
    return lines[0]


# 1 -------------------------------------------------------------------------- NaN / inf
def test_nan_features_are_refused_by_detectors_and_collapse():
    z, y, head = _blobs()
    z[5, 3] = np.nan
    for name in ("mahalanobis", "vim", "neco"):
        with pytest.raises(ShapeError, match="NaN"):
            create_detector(name).fit(z, y, head)
    with pytest.raises(ShapeError, match="NaN"):
        collapse_metrics(z, y, head)


def test_nan_in_ood_features_cli_keeps_earlier_results(tmp_path, capsys):
    ood = np.random.default_rng(2).normal(size=(50, 8))
    ood[3, 0] = np.inf
    feats = _feature_dir(tmp_path, ood_features=ood)
    out = tmp_path / "scores"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": true}\n')
    before = _digest(out)
    msg = _cli_error(capsys, ["score", "--features", str(feats), "--out", str(out)])
    assert "NaN" in msg or "inf" in msg
    assert _digest(out) == before


# 2 -------------------------------------------------------------------------- widths
def test_width_mismatch_names_both_widths():
    z, y, head = _blobs()
    det = create_detector("mahalanobis").fit(z, y, head)
    with pytest.raises(ShapeError, match=r"5 features.*expecting 8"):
        det.score(z[:, :5], head.logits(z)[:, :3])
    with pytest.raises(ShapeError):
        collapse_metrics(z, y, LinearHead(np.ones((3, 5)), np.zeros(3)))


# 3, 4 ----------------------------------------------------------------------- labels
def test_labels_out_of_range_and_tiny_or_single_class():
    z, y, head = _blobs()
    bad = y.copy()
    bad[0] = 7
    with pytest.raises(ShapeError, match="0..2"):
        collapse_metrics(z, bad, head)
    one = y.copy()
    one[one == 2] = 0
    one[np.flatnonzero(y == 2)[0]] = 2  # class 2 keeps a single sample
    with pytest.raises(ShapeError, match="fewer than 2"):
        collapse_metrics(z, one, head)
    single = np.zeros_like(y)
    with pytest.raises(ShapeError, match="class"):
        collapse_metrics(z, single, LinearHead(np.ones((1, 8)), np.zeros(1)))


# 5 -------------------------------------------------------------------------- empty sets
def test_empty_id_or_ood_set():
    with pytest.raises(NcoodError, match="empty"):
        ood_metrics(np.array([]), np.array([0.1, 0.2]))
    with pytest.raises(NcoodError, match="empty"):
        ood_metrics(np.array([0.1, 0.2]), np.array([]))


# 6, 7 ---------------------------------------------------------------------- degenerate
def test_constant_features_and_more_dims_than_samples():
    z, y, head = _blobs()
    const = z.copy()
    const[:, 2] = 3.0
    for name in ("neco", "mahalanobis"):
        try:
            det = create_detector(name).fit(const, y, head)
        except ShapeError as exc:  # refusing is allowed if the message names the column
            assert "constant" in str(exc) or "variance" in str(exc)
        else:
            s = det.score(const, head.logits(const))
            assert np.isfinite(s).all()
    rng = np.random.default_rng(0)
    wide = rng.normal(size=(30, 64))
    yw = np.arange(30) % 3
    hw = LinearHead(rng.normal(size=(3, 64)), np.zeros(3))
    det = create_detector("mahalanobis").fit(wide, yw, hw)
    assert np.isfinite(det.score(wide, hw.logits(wide))).all()


# 8 -------------------------------------------------------------------------- checkpoints
def test_not_a_checkpoint_and_truncated_checkpoint(tmp_path, capsys):
    from ncood.train.checkpoint import load_checkpoint

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)
    msg = _cli_error(capsys, ["extract", "--checkpoint", str(junk), "--out", str(tmp_path / "f")])
    assert "junk.pt" in msg
    assert not (tmp_path / "f").exists()
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "missing.pt")


# 9 -------------------------------------------------------------------------- feature cache
def test_truncated_or_edited_feature_set_is_detected(tmp_path):
    z, y, head = _blobs()
    d = FeatureSet(z, head.logits(z), y, name="x").save(tmp_path / "fs")
    raw = (d / "features.npy").read_bytes()
    (d / "features.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="re-run"):
        FeatureSet.load(d)
    (d / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        FeatureSet.load(d)


# 11, 12, 13 ----------------------------------------------------------------- names, config
def test_unknown_names_suggest_the_closest():
    from ncood.data import load_images
    from ncood.models import create_model

    with pytest.raises(ConfigError, match="did you mean 'mahalanobis'"):
        create_detector("mahalanobs")
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        create_model("resnet81")
    with pytest.raises(ConfigError, match="did you mean 'fashion_mnist'"):
        load_images("fashion_mnst")


def test_config_unknown_key_and_wrong_type(tmp_path, capsys):
    with pytest.raises(ConfigError, match="did you mean 'detectors'"):
        from_dict(RunConfig, {"detector": {}})
    with pytest.raises(ConfigError, match="seed must be of type int"):
        from_dict(RunConfig, {"seed": "zero"})
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data:\n  oods: [digits]\n")
    msg = _cli_error(capsys, ["run", str(cfg)])
    assert "did you mean 'ood'" in msg


def test_invalid_hyperparameters():
    with pytest.raises(ConfigError, match="'T' parameter"):
        create_detector("msp", T=-1.0)
    z, y, head = _blobs()
    with pytest.raises(ConfigError, match="dim"):
        create_detector("vim", dim=64).fit(z, y, head)
    for tpr in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="tpr"):
            fpr_at_tpr(np.array([1.0, 2.0]), np.array([0.0, 0.5]), tpr=tpr)


# 14, 15 --------------------------------------------------------------------- output dirs
def test_unwritable_output_is_one_line(tmp_path, capsys):
    feats = _feature_dir(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    msg = _cli_error(capsys, ["score", "--features", str(feats), "--out", str(blocker / "sub")])
    assert "a_file" in msg


def test_two_runs_on_one_output_directory(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(NcoodError, match="another ncood run"):
            with RunLock(tmp_path):
                pass
    # a lock left by a dead process is taken over
    (tmp_path / ".lock").write_text("999999999\n")
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


# 16, 17 --------------------------------------------------------------------- images
def test_images_of_other_size_or_channels():
    import torch

    from ncood.data import InputSpec, to_model_input

    spec = InputSpec(size=28, channels=1, mean=(0.5,), std=(0.25,))
    rgb32 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert to_model_input(rgb32, spec).shape == (2, 1, 28, 28)
    two = torch.randint(0, 256, (2, 2, 28, 28), dtype=torch.uint8)
    with pytest.raises(ShapeError, match="channel"):
        to_model_input(two, spec)


def test_npz_without_images_array(tmp_path):
    from ncood.data import load_images

    path = tmp_path / "x.npz"
    np.savez(path, pictures=np.zeros((3, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="images"):
        load_images(f"npz:{path}")


# embedded default is valid --------------------------------------------------------------
def test_embedded_default_config_loads():
    cfg = load_config()
    assert cfg.model == "resnet_narrow" and set(cfg.regimes) == {"standard", "memorize"}
