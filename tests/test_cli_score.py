"""``ncood score`` and the library functions behind it, on a small synthetic FeatureDir."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ncood.cli.main import main
from ncood.detectors import create_detector, evaluate, format_ood_tables
from ncood.metrics import METRIC_NAMES, ood_metrics
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


def test_score_cli_writes_results_and_prints_tables(feature_dir, tmp_path, capsys):
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
    results = json.loads((out / "results.json").read_text())

    # results.json: params, sizes, timings, every metric of every (detector, OOD set)
    dets = results["detectors"]
    assert list(dets) == ["msp", "energy", "mahalanobis", "vim", "neco"]
    assert dets["vim"]["params"] == {"dim": 4} and dets["vim"]["fitted"]["dim_"] == 4
    assert dets["energy"]["params"] == {"T": 2}
    assert dets["neco"]["params"]["variance"] == 0.8
    assert results["n_id"] == 120 and results["n_ood"] == {"far": 90, "near": 60}
    assert results["features"]["meta"]["dataset"] == "toy"
    assert "fpr95" in results["conventions"]
    for entry in dets.values():
        assert entry["fit_s"] >= 0 and entry["score_s"] >= 0
        assert set(entry["ood"]) == {"far", "near"}
        assert all(set(m) == set(METRIC_NAMES) for m in entry["ood"].values())

    # the numbers are those of the detector fitted and scored directly
    fd = load_feature_dir(feature_dir)
    vim = create_detector("vim", dim=4).fit(fd.train.features, fd.train.labels, fd.head)
    expected = ood_metrics(
        vim.score(fd.test.features, fd.test.logits),
        vim.score(fd.ood["near"].features, fd.ood["near"].logits),
    )
    for key, value in expected.items():
        assert dets["vim"]["ood"]["near"][key] == pytest.approx(value, abs=1e-12)

    # metrics.csv: detector x OOD set x metric, same values
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 * 2 * len(METRIC_NAMES)
    assert list(rows[0]) == ["detector", "ood", "metric", "value"]
    for row in rows:
        assert float(row["value"]) == dets[row["detector"]]["ood"][row["ood"]][row["metric"]]

    # printed tables: one per OOD set, rows = detectors, values in %, best marked
    assert printed.count("OOD set:") == 2
    for title in ("AUROC", "FPR@95", "AUPR-In", "AUPR-Out"):
        assert title in printed
    assert f"{100 * dets['vim']['ood']['near']['auroc']:.2f}" in printed
    assert "*" in printed
    assert printed == format_ood_tables(results) + "\n"


def test_format_marks_the_best_per_column():
    def m(a, f):
        return {"auroc": a, "fpr95": f, "aupr_in": a, "aupr_out": a, "fpr95_oodpos": f}

    results = {
        "n_id": 10,
        "n_ood": {"x": 5},
        "detectors": {"good": {"ood": {"x": m(0.9, 0.2)}}, "bad": {"ood": {"x": m(0.6, 0.7)}}},
    }
    lines = format_ood_tables(results).splitlines()
    good = next(line for line in lines if line.startswith("good"))
    bad = next(line for line in lines if line.startswith("bad"))
    assert good.count("*") == 4 and "90.00*" in good and "20.00*" in good
    assert "*" not in bad and "60.00" in bad and "70.00" in bad


def test_evaluate_shares_statistics_and_returns_scores():
    fd = _feature_dir(seed=1)
    scores = {}
    results = evaluate(fd, ["maxlogit", "mahalanobis"], scores_out=scores)
    assert set(scores) == {
        f"{d}/{s}" for d in ("maxlogit", "mahalanobis") for s in ("id", "far", "near")
    }
    np.testing.assert_array_equal(
        scores["maxlogit/id"], fd.test.logits.astype(np.float64).max(axis=1)
    )
    assert results["timings"]["stats_s"] > 0
    assert results["detectors"]["mahalanobis"]["ood"]["far"]["auroc"] > 0.99


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
