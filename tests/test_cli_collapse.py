"""``ncood collapse`` on small synthetic feature directories."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ncood.cli.main import main
from ncood.collapse import collapse_metrics, layer_metrics, nc5, nc5_centred
from ncood.results import Results
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


@pytest.fixture()
def report_calls(monkeypatch):
    """The report's functions replaced by recorders (the report has its own tests)."""
    import ncood.report

    calls = {"write_report": [], "terminal_summary": []}

    def write_report(results, directory, scores=None):
        calls["write_report"].append((results, Path(directory)))
        path = Path(directory) / "report.html"
        path.write_text("<html></html>")
        return {"html": path}

    def terminal_summary(results):
        calls["terminal_summary"].append(results)
        return "SUMMARY"

    monkeypatch.setattr(ncood.report, "write_report", write_report)
    monkeypatch.setattr(ncood.report, "terminal_summary", terminal_summary)
    return calls


def test_features_mode_writes_results_report_and_summary(tmp_path, capsys, report_calls):
    fd = _feature_dir(tmp_path / "feat")
    rc = main(["collapse", "--features", str(tmp_path / "feat"), "--out", str(tmp_path / "out")])
    assert rc == 0
    res = Results.load(tmp_path / "out")
    pen = {"layer": "penultimate", "detector": None, "ood": None, "i": None, "j": None}
    ref = collapse_metrics(fd.train.features, fd.train.labels, fd.head)
    for key in ("nc1", "nc1_trace", "cdnv", "nc3", "nc4", "nc2_equiangular_means"):
        assert res.value(metric=key, **pen) == pytest.approx(ref[key], rel=1e-12)
    assert res.values("ood") == ["noise", "far"]
    z, y = fd.train.features, fd.train.labels
    assert res.value(metric="nc5", ood="far") == pytest.approx(
        nc5(z, y, fd.ood["far"].features), rel=1e-12
    )
    assert res.value(metric="nc5_centred", ood="far") == pytest.approx(
        nc5_centred(z, y, fd.ood["far"].features), rel=1e-12
    )
    # layers: stage1, then stage2 recognised as the penultimate layer (not repeated)
    assert res.values("layer") == ["penultimate", "stage1"]
    stage1 = layer_metrics(fd.train.layers["stage1"], y)
    assert res.value(metric="nc1", layer="stage1") == pytest.approx(stage1["nc1"], rel=1e-12)
    assert not np.isnan(res.value(metric="nc1.decay_rate"))
    assert res.select(detector=["msp", "vim"]).empty  # collapse only
    assert res.meta["tool"] == "ncood collapse" and "features" in res.meta
    # the report is written from these results, and their summary printed
    ((written, directory),) = report_calls["write_report"]
    assert directory == tmp_path / "out" and written.to_frame().equals(res.to_frame())
    assert capsys.readouterr().out == "SUMMARY\n"


def test_features_mode_ood_selection_and_errors(tmp_path, capsys, report_calls):
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
    res = Results.load(tmp_path / "out")
    assert res.values("ood") == ["far"] and res.values("layer") == ["penultimate"]
    assert report_calls["write_report"] == [] and not (tmp_path / "out" / "report.html").exists()
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


def test_run_mode_every_snapshot(tmp_path, capsys, report_calls):
    run = tmp_path / "run"
    # snapshots/ with the epoch in extract.json, features/epoch_k with the epoch in the name
    _feature_dir(run / "snapshots" / "init", seed=1, spread=3.0, epoch=0)
    _feature_dir(run / "features" / "epoch_0005", seed=1, spread=0.3)
    fd2 = _feature_dir(run / "features" / "epoch_0002", seed=1, spread=1.0)
    rc = main(["collapse", "--run", str(run), "--ood", "noise"])
    assert rc == 0
    res = Results.load(run / "collapse")
    assert res.values("epoch") == [0, 2, 5]
    ref = collapse_metrics(fd2.train.features, fd2.train.labels, fd2.head)
    assert res.value(metric="nc1", epoch=2, layer="penultimate") == pytest.approx(
        ref["nc1"], rel=1e-12
    )
    err = np.mean(fd2.train.logits.argmax(1) != fd2.train.labels)
    assert res.value(metric="train_error", epoch=2) == pytest.approx(err)
    assert res.values("ood") == ["noise"]
    # every layer at every epoch
    assert res.values("epoch", metric="nc1", layer="stage1") == [0, 2, 5]
    assert set(res.meta["snapshots"]) == {"0", "2", "5"}
    assert (run / "collapse" / "report.html").is_file()
    assert capsys.readouterr().out == "SUMMARY\n"


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
def test_run_mode_extracts_snapshot_checkpoints(fmnist_run, tmp_path, capsys, report_calls):
    """`--run` on a real training run: the .pt snapshots are extracted, then analysed."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fmnist_run.run_dir, run, ignore=shutil.ignore_patterns("cache"))
    assert main(["collapse", "--run", str(run), "--ood", "digits", "--no-figures"]) == 0
    res = Results.load(run / "collapse")
    assert sorted(p.name for p in (run / "features").iterdir()) == ["epoch_0000", "epoch_0003"]
    assert res.values("epoch") == [0, 3]
    # the epoch-0 NC1 equals collapse_metrics on the initialisation features
    want = collapse_metrics(
        fmnist_run.init_train.features, fmnist_run.init_train.labels, fmnist_run.init_head
    )["nc1"]
    got = res.value(metric="nc1", epoch=0, layer="penultimate")
    assert got == pytest.approx(want, rel=1e-9)
