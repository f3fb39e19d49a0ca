"""``ncood score`` and the library functions behind it, on a small synthetic FeatureDir."""

from __future__ import annotations

import numpy as np
import pytest

from ncood.cli.main import main
from ncood.detectors import create_detector
from ncood.metrics import METRIC_NAMES, ood_metrics
from ncood.results import Results
from ncood.types import FeatureDir, FeatureSet, LinearHead, load_feature_dir


def _feature_dir(seed=0, c=3, d=12):
    rng = np.random.default_rng(seed)
    means = 4.0 * rng.normal(size=(c, d)) + 2.0
    head = LinearHead(rng.normal(size=(c, d)), rng.normal(size=c))

    def split(n, name, shift=0.0, labelled=True):
        y = np.arange(n) % c
        z = (means[y] + rng.normal(size=(n, d)) + shift).astype(np.float32)
        return FeatureSet(z, head.logits(z).astype(np.float32), y if labelled else None, name)

    return FeatureDir(
        train=split(300, "toy/train"),
        test=split(120, "toy/test"),
        ood={
            "far": split(90, "far", shift=6.0, labelled=False),
            "near": split(60, "near", shift=1.5, labelled=False),
        },
        head=head,
        meta={"dataset": "toy"},
    )


@pytest.fixture()
def feature_dir(tmp_path):
    return _feature_dir().save(tmp_path / "features")


def test_score_cli_writes_results_and_prints_tables(feature_dir, tmp_path, capsys, monkeypatch):
    import ncood.report

    printed_from = []

    def summary(results):
        printed_from.append(results)
        return "SUMMARY"

    monkeypatch.setattr(ncood.report, "terminal_summary", summary)
    out = tmp_path / "scores"
    rc = main(
        [
            "score",
            "--features",
            str(feature_dir),
            "--detectors",
            "msp,energy,mahalanobis,vim,neco",
            "--param",
            "vim.dim=4",
            "--param",
            "neco.variance=0.8",
            "--param",
            "energy.T=2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    res = Results.load(out)

    # run.json: params, conventions, the feature directory; results.csv: every metric
    assert res.meta["detectors"]["vim"] == {"dim": 4}
    assert res.meta["detectors"]["energy"] == {"T": 2}
    assert res.meta["detectors"]["neco"]["variance"] == 0.8
    assert res.meta["features"]["meta"]["dataset"] == "toy"
    assert "fpr95" in res.meta["conventions"] and res.meta["tool"] == "ncood score"
    assert res.values("detector") == ["msp", "energy", "mahalanobis", "vim", "neco"]
    assert len(res) == 5 * 2 * len(METRIC_NAMES)  # detector x OOD set x metric, nothing else
    df = res.to_frame()
    assert set(df["layer"]) == {"penultimate"}
    assert set(zip(df["ood"], df["n_ood"], df["n_id"], strict=True)) == {
        ("far", 90, 120),
        ("near", 60, 120),
    }
    assert res.select(detector="vim")["params"].iloc[0] == '{"dim": 4}'

    # the numbers are those of the detector fitted and scored directly
    fd = load_feature_dir(feature_dir)
    vim = create_detector("vim", dim=4).fit(fd.train.features, fd.train.labels, fd.head)
    expected = ood_metrics(
        vim.score(fd.test.features, fd.test.logits),
        vim.score(fd.ood["near"].features, fd.ood["near"].logits),
    )
    for key, value in expected.items():
        assert res.value(detector="vim", ood="near", metric=key) == pytest.approx(value, abs=1e-12)

    # what is printed is the report's terminal summary of exactly these results
    assert printed == "SUMMARY\n"
    assert printed_from[0].to_frame().equals(res.to_frame())


def test_score_cli_bootstrap_intervals(feature_dir, tmp_path, monkeypatch):
    import ncood.report

    monkeypatch.setattr(ncood.report, "terminal_summary", lambda results: "")
    out = tmp_path / "b"
    argv = ["score", "--features", str(feature_dir), "--detectors", "maxlogit", "--out", str(out)]
    assert main([*argv, "--bootstrap", "100"]) == 0
    df = Results.load(out).to_frame()
    # percentile intervals on every row (they need not contain a biased estimate such as FPR@95)
    assert df["ci_low"].notna().all() and (df["ci_low"] <= df["ci_high"]).all()
    assert len(df) == 2 * len(METRIC_NAMES)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--detectors", "vimm"], "unknown detector 'vimm'"),
        (["--param", "vim.dim=4"], "not in --detectors"),
        (["--detectors", "vim", "--param", "vim.dim"], "DETECTOR.KEY=VALUE"),
        (["--detectors", "vim", "--param", "vim.dim=999"], "dim=999 for D=12"),
    ],
)
def test_score_cli_user_errors_print_one_line(feature_dir, tmp_path, capsys, argv, match):
    base = ["score", "--features", str(feature_dir), "--out", str(tmp_path / "o")]
    if "--detectors" not in argv:
        argv = ["--detectors", "msp", *argv]
    rc = main(base + argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert match in err and err.startswith("ncood score: error:")
    assert len(err.strip().splitlines()) == 1


def test_score_cli_missing_feature_dir(tmp_path, capsys):
    rc = main(["score", "--features", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "not a feature directory" in capsys.readouterr().err
