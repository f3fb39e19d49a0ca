"""`ncood run` end to end on a tiny config: determinism, reuse of finished stages, outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ncood.config import RunConfig, from_dict
from ncood.results import Results

TINY = {
    "name": "tiny",
    "seed": 0,
    "model": "resnet_narrow",
    "data": {
        "id": "fashion_mnist",
        "ood": ["digits", "gaussian_noise"],
        "train_samples": 400,
        "test_samples": 200,
        "ood_samples": 100,
    },
    "training": {"precision": "fp32", "max_test_samples": 200, "snapshots": [0, 1]},
    "regimes": {"standard": {"epochs": 1}, "memorize": {"epochs": 1}},
    "collapse": {"snapshot_test_samples": 100},
    "bootstrap": {"n_boot": 50, "seed": 0},
}

#: Timings: the only values that may differ between two runs of the same config.
VOLATILE_METRICS = ("seconds", "images_per_s")
VOLATILE_META = ("created", "durations", "config")


@pytest.fixture()
def report_calls(monkeypatch):
    """The report's functions replaced by recorders (the report has its own tests)."""
    import ncood.report

    calls = {"write_report": [], "findings": [], "terminal_summary": []}

    def write_report(results, directory, scores=None):
        calls["write_report"].append((results, Path(directory), scores))
        path = Path(directory) / "report.html"
        path.write_text("<html></html>")
        return {"html": path}

    def findings(results):
        calls["findings"].append(results)
        return [f"{len(results)} rows"]

    def terminal_summary(results):
        calls["terminal_summary"].append(results)
        return "OOD detection (summary)"

    monkeypatch.setattr(ncood.report, "write_report", write_report)
    monkeypatch.setattr(ncood.report, "findings", findings)
    monkeypatch.setattr(ncood.report, "terminal_summary", terminal_summary)
    return calls


def _stable(res: Results):
    df = res.to_frame()
    df = df[~df["metric"].isin(VOLATILE_METRICS)].reset_index(drop=True)
    meta = {k: v for k, v in res.meta.items() if k not in VOLATILE_META}
    return df, meta


@pytest.mark.slow
def test_same_config_and_seed_give_identical_results_and_rerun_reuses(
    tmp_path, capsys, report_calls
):
    from ncood.cli.main import main
    from ncood.pipeline import run

    cfg: RunConfig = from_dict(RunConfig, TINY)
    first = run(cfg, output=tmp_path / "a")
    second = run(cfg, output=tmp_path / "b")
    (df1, meta1), (df2, meta2) = _stable(first), _stable(second)
    assert df1.equals(df2) and meta1 == meta2

    # the table and its metadata on disk, the raw scores, the report from the same results
    out = tmp_path / "a"
    for name in ("results.csv", "run.json", "scores.npz", "report.html"):
        assert (out / name).is_file(), name
    on_disk = Results.load(out)
    assert on_disk.to_frame().equals(first.to_frame())
    assert on_disk.meta["findings"] == [f"{len(first)} rows"]
    written, directory, scores = report_calls["write_report"][0]
    assert directory == out and written is first
    with np.load(out / "scores.npz") as npz:
        assert set(npz.files) == set(scores)
        np.testing.assert_array_equal(npz["standard/vim/id"], scores["standard/vim/id"])
    assert "memorize/neco/gaussian_noise" in scores and len(scores["standard/msp/id"]) == 200

    # what the run measured: every regime, detector, snapshot, layer
    res = first
    assert res.values("regime") == ["standard", "memorize"]
    assert res.values("detector", layer="penultimate") == [
        "msp",
        "maxlogit",
        "energy",
        "mahalanobis",
        "vim",
        "neco",
    ]
    assert res.values("epoch", metric="nc1", layer="penultimate", regime="standard") == [1, 0]
    # OOD detection at the snapshot too (issue 11), on the snapshot's test subset
    snap = res.select(metric="auroc", epoch=0, layer="penultimate", regime="memorize")
    assert len(snap) == 6 * 2 and set(snap["n_id"]) == {100}
    assert set(res.values("layer", metric="auroc", epoch=0)) >= {"stem", "layer1", "penultimate"}
    # intervals on the final networks only (bootstrap.every_snapshot is false)
    final = res.select(metric="auroc", epoch=1, layer="penultimate")
    assert final["ci_low"].notna().all() and snap["ci_low"].isna().all()
    assert res.values("epoch", metric="train_acc", regime="standard") == [1]
    assert res.meta["networks"][0]["checkpoint"] == "regimes/standard/train/last.pt"
    assert res.meta["notes"] == [] and "fpr95" in res.meta["conventions"]

    # re-running the same config in the same directory reuses checkpoints and features
    ckpt = out / "regimes" / "standard" / "train" / "last.pt"
    mtime = ckpt.stat().st_mtime_ns
    yaml_path = tmp_path / "tiny.yaml"
    import yaml

    yaml_path.write_text(yaml.safe_dump({**TINY, "output": str(out)}, sort_keys=False))
    assert main(["run", str(yaml_path)]) == 0
    printed = capsys.readouterr().out
    assert "OOD detection" in printed and "report.html" in printed
    assert ckpt.stat().st_mtime_ns == mtime
    third = Results.load(out)
    df3, meta3 = _stable(third)
    assert df3.equals(df1) and meta3 == meta1


@pytest.mark.slow
def test_several_seeds_train_each_regime_once_per_seed(tmp_path, report_calls):
    from ncood.pipeline import run

    cfg = from_dict(
        RunConfig,
        {
            **TINY,
            "seeds": [0, 1],
            "data": {**TINY["data"], "train_samples": 200, "test_samples": 100, "ood_samples": 50},
            "training": {"precision": "fp32", "max_test_samples": 100, "snapshots": []},
            "regimes": {"standard": {"epochs": 1}},
            "detectors": {"maxlogit": {}, "mahalanobis": {}},
            "collapse": {"across_training": False},
            "bootstrap": {"n_boot": 0},
        },
    )
    res = run(cfg, output=tmp_path)
    for seed in (0, 1):
        assert (tmp_path / "regimes" / "standard" / f"seed_{seed}" / "train" / "last.pt").is_file()
    assert res.values("seed") == [0, 1]
    pen = {"metric": "auroc", "detector": "mahalanobis", "ood": "digits", "layer": "penultimate"}
    a = res.value(seed=0, **pen)
    b = res.value(seed=1, **pen)
    assert a != b  # two networks, two subsets
    summary = res.seed_summary(metric="auroc", layer="penultimate")
    assert set(summary["n"]) == {2}
    # every seed's raw scores are kept; each reproduces its own seed's AUROC
    from sklearn.metrics import roc_auc_score

    scores = np.load(tmp_path / "scores.npz")
    for prefix, value in (("", a), ("seed_1/", b)):
        s_id = scores[f"{prefix}standard/mahalanobis/id"]
        s_ood = scores[f"{prefix}standard/mahalanobis/digits"]
        labels = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
        assert roc_auc_score(labels, np.r_[s_id, s_ood]) == pytest.approx(value, abs=1e-12)
    ((_, _, report_scores),) = report_calls["write_report"]
    assert report_scores and not any(k.startswith("seed_") for k in report_scores)


def test_run_seeds():
    from ncood.pipeline import run_seeds, train_dir

    assert run_seeds(from_dict(RunConfig, TINY)) == [0]
    assert run_seeds(from_dict(RunConfig, {**TINY, "seeds": [3, 1]})) == [3, 1]
    assert train_dir(Path("o"), "std", 3, several_seeds=True) == Path("o/regimes/std/seed_3/train")
    assert train_dir(Path("o"), "std", 0, several_seeds=False) == Path("o/regimes/std/train")
