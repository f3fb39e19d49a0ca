"""``ncood.analysis``: every row checked against the science functions called directly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ncood.analysis import (
    analyse,
    feature_space,
    history_rows,
    layer_keys,
    relation_rows,
    snapshot_checkpoints,
    snapshot_dirs,
    train_error,
)
from ncood.collapse import collapse_metrics, layer_metrics, nc5, nc5_centred
from ncood.collapse.depth import fit_log_linear
from ncood.detectors import create_detector, detector_class
from ncood.errors import ConfigError, NcoodError, ShapeError
from ncood.metrics import (
    METRIC_NAMES,
    bootstrap_ood_metrics,
    ood_metrics,
    paired_auroc_difference,
)
from ncood.probe import fit_linear_head
from ncood.results import KEYS, PENULTIMATE, Results, row
from ncood.types import FeatureDir, FeatureSet, LinearHead

C, D = 4, 10


def _fd(seed=0, *, flat_stage=False, epoch=3) -> FeatureDir:
    """Penultimate features (D), a pooled 'stage1' (8-d), and 'stage2' == the penultimate."""
    rng = np.random.default_rng(seed)
    mu = 3.0 * rng.standard_normal((C, D))
    head = LinearHead(mu + 0.2 * rng.standard_normal((C, D)), 0.1 * rng.standard_normal(C))
    proj = rng.standard_normal((D, 8))
    if flat_stage:
        proj[:, 2:] = 0.0  # stage1 features live in 2 of 8 dimensions: ViM has no residual

    def split(n, name, shift=0.0, labelled=True):
        y = np.arange(n) % C
        z = (mu[y] + rng.standard_normal((n, D)) + shift).astype(np.float32)
        s1 = (z @ proj).astype(np.float32)
        if not flat_stage:
            s1 = s1 + rng.standard_normal(s1.shape).astype(np.float32)
        return FeatureSet(
            z,
            head.logits(z).astype(np.float32),
            y if labelled else None,
            name,
            layers={"stage1": s1, "stage2": z.copy()},
        )

    return FeatureDir(
        train=split(200, "train"),
        test=split(80, "test"),
        ood={"far": split(60, "far", 4.0, False), "near": split(50, "near", 1.0, False)},
        head=head,
        meta={"epoch": epoch},
    )


DETS = {"msp": {}, "energy": {"T": 2.0}, "mahalanobis": {}, "vim": {"dim": 5}, "neco": {}}


@pytest.fixture(scope="module")
def fd():
    return _fd()


@pytest.fixture(scope="module")
def res(fd):
    return analyse(fd, detectors=DETS, regime="r", seed=7)


def test_rows_are_unique_and_identified(res):
    df = res.to_frame()
    assert not df.duplicated(list(KEYS)).any()
    assert set(df["regime"]) == {"r"} and set(df["seed"]) == {7}
    assert set(df["epoch"].dropna()) == {3}  # from fd.meta["epoch"]
    # layers: stage2 is the penultimate layer, listed once
    assert set(df["layer"].dropna()) == {"stage1", PENULTIMATE}


def test_head_ood_rows_equal_detectors_fitted_directly(fd, res):
    for name, params in DETS.items():
        det = create_detector(name, **params).fit(fd.train.features, fd.train.labels, fd.head)
        id_s = det.score(fd.test.features, fd.test.logits)
        for ood, fs in fd.ood.items():
            want = ood_metrics(id_s, det.score(fs.features, fs.logits))
            for metric in METRIC_NAMES:
                sel = dict(metric=metric, detector=name, ood=ood, layer=PENULTIMATE)
                assert res.value(**sel) == pytest.approx(want[metric], abs=1e-12)
            df = res.select(metric="auroc", detector=name, ood=ood, layer=PENULTIMATE)
            assert (df["n_id"].iloc[0], df["n_ood"].iloc[0]) == (len(fd.test), len(fs))
            assert np.isnan(df["ci_low"].iloc[0])  # no bootstrap asked
    assert res.meta["detectors"]["energy"] == {"T": 2.0}
    assert res.select(metric="auroc", detector="vim", layer=PENULTIMATE)["params"].iloc[0] == (
        '{"dim": 5}'
    )


def test_collapse_rows_equal_collapse_metrics(fd, res):
    m = collapse_metrics(fd.train.features, fd.train.labels, fd.head)
    pen = {"layer": PENULTIMATE, "detector": None, "ood": None}
    for key in ("nc1", "nc1_trace", "cdnv", "nc2_equiangular_weights", "nc3", "nc4", "ncc_acc"):
        assert res.value(metric=key, i=None, **pen) == pytest.approx(m[key], rel=1e-12)
    assert res.value(metric="dim", **pen) == D and res.value(metric="num_classes", **pen) == C
    for i in range(C):
        assert res.value(metric="within_class_variance", i=i, **pen) == pytest.approx(
            m["within_class_variance"][i], rel=1e-12
        )
        assert res.value(metric="count", i=i, **pen) == 50
    iu, ju = np.triu_indices(C, k=1)
    for k, (i, j) in enumerate(zip(iu, ju, strict=True)):
        got = res.value(metric="mean_cosine", i=int(i), j=int(j), **pen)
        assert got == pytest.approx(m["mean_cosines"][k], rel=1e-12)
        got = res.value(metric="mean_distance", i=int(i), j=int(j), **pen)
        assert got == pytest.approx(m["mean_distances"][i, j], rel=1e-12)
    assert len(res.select(metric="weight_cosine")) == C * (C - 1) // 2
    for ood, fs in fd.ood.items():
        z, y = fd.train.features, fd.train.labels
        assert res.value(metric="nc5", ood=ood) == pytest.approx(nc5(z, y, fs.features), rel=1e-12)
        assert res.value(metric="nc5_centred", ood=ood) == pytest.approx(
            nc5_centred(z, y, fs.features), rel=1e-12
        )
    direct = np.mean(fd.head.logits(fd.train.features).argmax(1) != fd.train.labels)
    assert res.value(metric="train_error") == pytest.approx(direct)


def test_layer_rows_equal_layer_metrics_decay_and_probe_detectors(fd, res):
    y = fd.train.labels
    s1 = layer_metrics(fd.train.layers["stage1"], y, num_classes=C)
    for key in ("nc1", "nc1_trace", "cdnv", "ncc_acc", "nc2_equiangular_means"):
        assert res.value(metric=key, layer="stage1") == pytest.approx(s1[key], rel=1e-12)
    assert res.value(metric="dim", layer="stage1") == 8
    pen = collapse_metrics(fd.train.features, y, fd.head)
    fit = fit_log_linear([s1["nc1"], pen["nc1"]])
    assert res.value(metric="nc1.decay_rate") == pytest.approx(fit["rate"], rel=1e-12)
    # feature-space detectors on stage1 with a linear probe as its classifier
    probe = fit_linear_head(fd.train.layers["stage1"], y, num_classes=C)
    vim = create_detector("vim", dim=5).fit(fd.train.layers["stage1"], y, probe)

    def score(fs):
        z = fs.layers["stage1"]
        return vim.score(z, probe.logits(z))

    want = ood_metrics(score(fd.test), score(fd.ood["near"]))
    for metric in METRIC_NAMES:
        got = res.value(metric=metric, layer="stage1", detector="vim", ood="near")
        assert got == pytest.approx(want[metric], abs=1e-12)
    # logit-only detectors are scored at the head only
    assert set(res.values("detector", layer="stage1")) == {"mahalanobis", "vim", "neco"}
    assert feature_space(DETS) == ["mahalanobis", "vim", "neco"]


def test_width_adaptation_is_the_detectors_own():
    assert detector_class("vim").params_for_width({"dim": 12}, 8) == {"dim": 4}
    assert detector_class("vim").params_for_width({"dim": 5}, 8) == {"dim": 5}
    assert detector_class("neco").params_for_width({"dim": 9, "x": 1}, 4) == {"dim": 2, "x": 1}
    assert detector_class("msp").params_for_width({"T": 2.0}, 1) == {"T": 2.0}
    res = analyse(_fd(1), detectors={"vim": {"dim": 9}}, layers=True, collapse=False)
    assert res.select(metric="auroc", layer="stage1")["params"].iloc[0] == '{"dim": 4}'
    assert res.select(metric="auroc", layer=PENULTIMATE)["params"].iloc[0] == '{"dim": 9}'


def test_a_detector_failing_on_a_layer_is_a_note_and_at_the_head_an_error(caplog):
    fd = _fd(2, flat_stage=True)
    res = analyse(fd, detectors={"vim": {"dim": 4}, "mahalanobis": {}})
    notes = res.meta["notes"]
    assert [(n["layer"], n["detector"]) for n in notes] == [("stage1", "vim")]
    assert "ViM" in notes[0]["note"] and notes[0]["epoch"] == 3
    assert "layer stage1 vim: not fitted" in caplog.text
    assert res.values("detector", layer="stage1") == ["mahalanobis"]
    flat = FeatureSet(fd.train.layers["stage1"], fd.train.logits, fd.train.labels, "t")
    head = LinearHead(np.ones((C, 8)), np.zeros(C))
    bad = FeatureDir(flat, flat, {"o": flat}, head)
    with pytest.raises(NcoodError, match="ViM"):
        analyse(bad, detectors={"vim": {"dim": 4}}, collapse=False)


def test_bootstrap_fills_intervals_and_scores_out(fd):
    scores = {}
    res = analyse(
        fd,
        detectors={"maxlogit": {}, "mahalanobis": {}},
        collapse=False,
        layers=False,
        bootstrap={"n_boot": 200, "seed": 3},
        scores_out=scores,
    )
    assert set(scores) == {
        f"{d}/{s}" for d in ("maxlogit", "mahalanobis") for s in ("id", "far", "near")
    }
    want = bootstrap_ood_metrics(scores["maxlogit/id"], scores["maxlogit/near"], n_boot=200, seed=3)
    for metric in METRIC_NAMES:
        df = res.select(metric=metric, detector="maxlogit", ood="near")
        assert (df["value"].iloc[0], df["ci_low"].iloc[0], df["ci_high"].iloc[0]) == tuple(
            want[metric]
        )
    assert res.select(metric="nc1").empty
    # paired differences: per OOD set, the better detector against the next, same samples
    for ood in ("far", "near"):
        (diff,) = res.select(metric="auroc_diff", ood=ood).itertuples()
        a, b = diff.detector, json.loads(diff.params)["vs"]
        assert res.value(metric="auroc", detector=a, ood=ood) >= res.value(
            metric="auroc", detector=b, ood=ood
        )
        want = paired_auroc_difference(
            scores[f"{a}/id"], scores[f"{a}/{ood}"], scores[f"{b}/id"], scores[f"{b}/{ood}"],
            n_boot=200, seed=3,
        )  # fmt: skip
        assert (diff.value, diff.ci_low, diff.ci_high) == tuple(want)


def test_selection_and_errors(fd):
    res = analyse(fd, ood=["near"], layers=False)
    assert res.values("ood") == ["near"] and res.select(detector=["msp"]).empty
    with pytest.raises(ConfigError, match="'svhn'.*far, near"):
        analyse(fd, ood=["svhn"])
    with pytest.raises(ConfigError, match="layer_detectors"):
        analyse(fd, detectors=["msp"], layer_detectors=["vim"])
    with pytest.raises(ConfigError, match="unknown detector"):
        analyse(fd, detectors=["vimm"])
    nolab = FeatureDir(
        FeatureSet(fd.train.features, fd.train.logits), fd.test, dict(fd.ood), fd.head
    )
    with pytest.raises(ShapeError, match="no labels"):
        analyse(nolab)
    bare_test = FeatureSet(fd.test.features, fd.test.logits, fd.test.labels, "test")
    partial = FeatureDir(fd.train, bare_test, dict(fd.ood), fd.head)
    with pytest.raises(ShapeError, match=r"'stage1' was extracted for the train split.*'test'"):
        analyse(partial, detectors=["mahalanobis"])
    assert len(analyse(partial, detectors=["mahalanobis"], layer_detectors=[]))


def test_layer_keys_and_train_error():
    fd = _fd(3)
    assert layer_keys(fd.train) == {"stage1": "stage1", PENULTIMATE: None}
    only = FeatureSet(fd.train.features, fd.train.logits, fd.train.labels, layers={})
    assert layer_keys(only) == {PENULTIMATE: None}
    assert train_error(fd.train, 0.25) == 0.25


def test_history_rows_and_snapshot_discovery(tmp_path):
    hist = [{"epoch": 1, "train_acc": 0.5, "lr": 0.1, "other": 3}, {"epoch": 2, "train_acc": 0.7}]
    res = Results(history_rows(hist, regime="s", seed=1))
    assert len(res) == 3 and res.value(metric="train_acc", epoch=2) == 0.7
    assert res.select(metric="other").empty
    (tmp_path / "snapshots").mkdir()
    for e in (4, 0, 12):
        (tmp_path / "snapshots" / f"epoch_{e:04d}.pt").write_bytes(b"")
    (tmp_path / "snapshots" / "epoch_x.pt").write_bytes(b"")
    assert [e for e, _ in snapshot_checkpoints(tmp_path)] == [0, 4, 12]
    _fd(4).save(tmp_path / "features" / "epoch_0007")
    fd = _fd(4, epoch=None)
    fd.meta = {}
    fd.save(tmp_path / "features" / "epoch_0002")
    assert [e for e, _ in snapshot_dirs(tmp_path)] == [2, 3]  # extract.json's epoch first


def test_snapshots_as_rows_track_collapse_and_the_zero_error_epoch():
    """Across training: one analyse() per snapshot, the epochs and their metrics as rows."""
    c, d = 5, 12
    rng = np.random.default_rng(24)
    mu = 3.0 * np.linalg.qr(rng.standard_normal((d, c)))[0].T  # orthogonal class means
    y = np.repeat(np.arange(c), 20)
    noise = rng.standard_normal((len(y), d))
    head = LinearHead(mu, np.zeros(c))
    ood = rng.standard_normal((30, d)) + 0.3
    parts = []
    for epoch, s, err in [(4, 0.1, 0.0), (0, 2.0, 0.4), (2, 0.5, 0.05), (6, 0.05, 0.0)]:
        z = mu[y] + s * noise
        fd = FeatureDir(
            FeatureSet(z, head.logits(z), y, "train"),
            FeatureSet(z, head.logits(z), y, "test"),
            {"noise": FeatureSet(ood, head.logits(ood))},
            head,
            meta={"epoch": epoch, "train_error": err},
        )
        parts.append(analyse(fd, regime="r"))
    res = Results.concat(parts)
    nc1 = res.to_frame().query("metric == 'nc1'").sort_values("epoch")
    assert nc1["epoch"].tolist() == [0, 2, 4, 6] and np.all(np.diff(nc1["value"]) < 0)
    z2 = mu[y] + 0.5 * noise
    assert res.value(metric="nc1", epoch=2) == pytest.approx(
        collapse_metrics(z2, y, head)["nc1"], rel=1e-12
    )
    assert res.value(metric="nc5", epoch=2) == pytest.approx(nc5(z2, y, ood), rel=1e-12)
    # the terminal phase starts at the first epoch with zero training error (a query)
    err = res.select(metric="train_error").sort_values("epoch")
    assert int(err[err["value"] == 0]["epoch"].iloc[0]) == 4


def _relation_results(rng: np.random.Generator) -> tuple[Results, dict]:
    """AUROC and NC rows over 2 regimes x 4 epochs x 2 layers; expected (x, y) per NC metric."""
    rows, pts = [], {}
    for regime in ("standard", "memorize"):
        for epoch in range(1, 5):
            for layer in ("layer3", PENULTIMATE):
                k = dict(regime=regime, seed=0, epoch=epoch, layer=layer)
                nc = {m: float(rng.lognormal()) for m in ("nc1", "nc1_trace", "cdnv")}
                nc5v = float(rng.uniform())
                au = float(0.9 - 0.05 * np.log(nc["nc1"]) + 0.02 * rng.normal())
                rows += [row(m, v, **k) for m, v in nc.items()]
                rows.append(row("nc5", nc5v, ood="mnist", **k))
                rows.append(row("auroc", au, detector="neco", ood="mnist", params={"a": 1}, **k))
                for m, v in {**nc, "nc5": nc5v}.items():
                    pts.setdefault(m, ([], []))
                    pts[m][0].append(au)
                    pts[m][1].append(v)
    # a detector with only 2 points: no row; an NC metric of another OOD set is ignored
    rows += [
        row(
            "auroc",
            0.5 + e / 10,
            detector="msp",
            ood="mnist",
            regime="standard",
            seed=0,
            epoch=e,
            layer=PENULTIMATE,
        )
        for e in (1, 2)
    ]
    rows.append(row("nc5", 0.3, ood="other", regime="standard", seed=0, epoch=1, layer="layer3"))
    return Results(rows), pts


def test_relation_rows_match_scipy_spearman():
    from scipy.stats import spearmanr

    res, pts = _relation_results(np.random.default_rng(3))
    rel = relation_rows(res, n_boot=300, seed=1)
    assert set(rel.metrics()) == {"spearman"}
    assert rel.values("detector") == ["neco"]
    for name, (x, y) in pts.items():
        got = rel.select(params={"ood_metric": "auroc", "nc_metric": name})
        assert len(got) == 1, name
        r = got.iloc[0]
        assert r["ood"] == "mnist" and int(r["n_id"]) == len(x) == 16
        assert r["value"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    # deterministic for a seed
    again = relation_rows(res, n_boot=300, seed=1).to_frame()
    assert again.equals(rel.to_frame())
    assert len(relation_rows(Results())) == 0
