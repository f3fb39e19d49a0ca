"""``ncood collapse`` on small synthetic feature directories."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ncood.cli.main import main
from ncood.collapse import collapse_metrics, layer_metrics, nc5, nc5_centred
from ncood.types import FeatureDir, FeatureSet, LinearHead

C, D = 4, 6


def _feature_dir(path, *, seed=0, spread=1.0, epoch=None, with_layers=True):
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((C, D)) * 3.0
    head = LinearHead(mu + 0.1 * rng.standard_normal((C, D)), np.zeros(C))

    def split(n, name):
        y = np.arange(n) % C
        z = (mu[y] + spread * rng.standard_normal((n, D))).astype(np.float32)
        layers = {}
        if with_layers:
            layers = {
                "stage1": (z @ rng.standard_normal((D, 8)) + 2.0 * rng.standard_normal((n, 8))),
                "stage2": z.copy(),  # pooled last stage == penultimate features
            }
        return FeatureSet(
            features=z,
            logits=head.logits(z).astype(np.float32),
            labels=y,
            name=name,
            layers={k: v.astype(np.float32) for k, v in layers.items()},
        )

    def ood(n, name, shift):
        z = (rng.standard_normal((n, D)) + shift).astype(np.float32)
        return FeatureSet(features=z, logits=head.logits(z).astype(np.float32), name=name)

    meta = {} if epoch is None else {"epoch": epoch}
    fd = FeatureDir(
        train=split(80, "train"),
        test=split(40, "test"),
        ood={"noise": ood(30, "noise", 0.5), "far": ood(20, "far", 4.0)},
        head=head,
        meta=meta,
    )
    fd.save(path)
    return fd


def test_features_mode_writes_json_figures_and_table(tmp_path, capsys):
    fd = _feature_dir(tmp_path / "feat")
    rc = main(["collapse", "--features", str(tmp_path / "feat"), "--out", str(tmp_path / "out")])
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "collapse.json").read_text())
    ref = collapse_metrics(fd.train.features, fd.train.labels, fd.head)
    for key in ("nc1", "nc1_trace", "cdnv", "nc3", "nc4", "nc2_equiangular_means"):
        assert doc["penultimate"][key] == pytest.approx(ref[key], rel=1e-12)
    assert set(doc["nc5"]) == {"noise", "far"}
    assert doc["nc5"]["far"]["orthodev"] == pytest.approx(
        nc5(fd.train.features, fd.train.labels, fd.ood["far"].features), rel=1e-12
    )
    assert doc["nc5"]["far"]["orthodev_centred"] == pytest.approx(
        nc5_centred(fd.train.features, fd.train.labels, fd.ood["far"].features), rel=1e-12
    )
    # layers: stage1, then stage2 recognised as the penultimate layer (not repeated)
    assert doc["layers"]["layers"] == ["stage1", "stage2 (penultimate)"]
    stage1 = layer_metrics(fd.train.layers["stage1"], fd.train.labels)
    assert doc["layers"]["metrics"]["stage1"]["nc1"] == pytest.approx(stage1["nc1"], rel=1e-12)
    assert "nc1" in doc["layers"]["decay"]
    for name in doc["figures"]:
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    assert "collapse_depth.png" in doc["figures"] and len(doc["figures"]) == 5
    out = capsys.readouterr().out
    assert "nc1" in out and "nc5[far]" in out and "stage1" in out


def test_features_mode_ood_selection_and_errors(tmp_path, capsys):
    _feature_dir(tmp_path / "feat", with_layers=False)
    rc = main(
        [
            "collapse",
            "--features",
            str(tmp_path / "feat"),
            "--ood",
            "far",
            "--out",
            str(tmp_path / "out"),
            "--no-figures",
        ]
    )
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "collapse.json").read_text())
    assert list(doc["nc5"]) == ["far"] and doc["layers"] is None and doc["figures"] == []
    capsys.readouterr()
    rc = main(
        [
            "collapse",
            "--features",
            str(tmp_path / "feat"),
            "--ood",
            "svhn",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "svhn" in err and "far" in err and len(err.strip().splitlines()) == 1
    rc = main(["collapse", "--features", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert rc == 2 and "extract.json" in capsys.readouterr().err


def test_run_mode_every_snapshot(tmp_path, capsys):
    run = tmp_path / "run"
    # snapshots/ with the epoch in extract.json, features/epoch_k with the epoch in the name
    _feature_dir(run / "snapshots" / "init", seed=1, spread=3.0, epoch=0)
    _feature_dir(run / "features" / "epoch_0005", seed=1, spread=0.3)
    fd2 = _feature_dir(run / "features" / "epoch_0002", seed=1, spread=1.0)
    rc = main(["collapse", "--run", str(run), "--ood", "noise"])
    assert rc == 0
    doc = json.loads((run / "collapse" / "collapse.json").read_text())
    assert doc["epochs"]["epochs"] == [0, 2, 5]
    row = doc["epochs"]["table"][1]
    ref = collapse_metrics(fd2.train.features, fd2.train.labels, fd2.head)
    assert row["nc1"] == pytest.approx(ref["nc1"], rel=1e-12)
    err = np.mean(fd2.train.logits.argmax(1) != fd2.train.labels)
    assert row["train_error"] == pytest.approx(err)
    assert list(doc["epochs"]["metrics"][0]["nc5"]) == ["noise"]
    assert set(doc["layers_per_epoch"]) == {"0", "2", "5"}
    assert "collapse_epochs.png" in doc["figures"]
    assert (run / "collapse" / "collapse_epochs.png").is_file()
    assert "epoch" in capsys.readouterr().out


def test_run_mode_without_snapshots_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "run" / "snapshots").mkdir(parents=True)
    assert main(["collapse", "--run", str(tmp_path / "run")]) == 2
    assert "ncood extract" in capsys.readouterr().err


@pytest.mark.slow
def test_help_in_subprocess():
    out = subprocess.run(
        [sys.executable, "-m", "ncood.cli.main", "collapse", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--features" in out and "--run" in out and "snapshots" in out


@pytest.mark.slow
def test_run_mode_extracts_snapshot_checkpoints(fmnist_run, tmp_path, capsys):
    """`--run` on a real training run: the .pt snapshots are extracted, then analysed."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fmnist_run.run_dir, run, ignore=shutil.ignore_patterns("cache"))
    assert main(["collapse", "--run", str(run), "--ood", "digits", "--no-figures"]) == 0
    doc = json.loads((run / "collapse" / "collapse.json").read_text())
    assert sorted(p.name for p in (run / "features").iterdir()) == ["epoch_0000", "epoch_0003"]
    assert doc["epochs"]["epochs"] == [0, 3]
    # the epoch-0 NC1 equals collapse_metrics on the initialisation features
    want = collapse_metrics(
        fmnist_run.init_train.features, fmnist_run.init_train.labels, fmnist_run.init_head
    )["nc1"]
    got = [row["nc1"] for row in doc["epochs"]["table"] if row["epoch"] == 0][0]
    assert got == pytest.approx(want, rel=1e-9)
