"""Hyperparameter selection inside ``ncood run`` (issue 13, item 3): the ``selection:`` block.

The ID validation split is held out of the train split (never trained on, never in the
NC/detector-fit sets), the validation OOD set is disjoint from every test OOD set, and the
test sets are never read while choosing: the chosen values are then the ones the final
network's test rows use.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ncood.config import RunConfig, check_run_config, from_dict, load_config, regime_train_dict
from ncood.data import load_images, stratified_indices
from ncood.data.datasets import Holdout
from ncood.detectors import create_detector, detector_class
from ncood.detectors.select import default_grid
from ncood.errors import ConfigError
from ncood.metrics import auroc
from ncood.results import Results
from ncood.types import FeatureDir, FeatureSet, LinearHead


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("NCOOD_OFFLINE", "1")  # no test may need the network


# --------------------------------------------------------------------------- holdout
def test_holdout_partitions_the_split_into_stratified_validation_and_rest():
    full = load_images("fashion_mnist", "train")
    y = full.labels.numpy()
    held = load_images("fashion_mnist", "train", holdout=Holdout(1000, seed=3, part="holdout"))
    rest = load_images("fashion_mnist", "train", holdout=Holdout(1000, seed=3))
    sub = load_images("fashion_mnist", "train", n=500, seed=3, holdout=Holdout(1000, seed=3))
    # reference: the held-out positions are a stratified draw on the whole split, the
    # rest is its complement, a subset is drawn from the rest
    ref_held = stratified_indices(y, 1000, 3)
    ref_rest = np.setdiff1d(np.arange(len(full)), ref_held)
    ref_sub = ref_rest[stratified_indices(y[ref_rest], 500, 3)]
    assert np.intersect1d(ref_held, ref_rest).size == 0 and len(ref_rest) == len(full) - 1000
    for arrays, idx in ((held, ref_held), (rest, ref_rest), (sub, ref_sub)):
        assert arrays.images.equal(full.images[idx]) and arrays.labels.equal(full.labels[idx])
    counts = np.bincount(held.labels.numpy(), minlength=10)
    np.testing.assert_array_equal(counts, np.bincount(y, minlength=10) * 1000 // len(y))
    assert "without the held-out n=1000 seed=3" in rest.source
    assert "only the held-out n=1000 seed=3" in held.source
    # deterministic; another seed holds out other images
    again = load_images("fashion_mnist", "train", holdout=Holdout(1000, seed=3, part="holdout"))
    other = load_images("fashion_mnist", "train", holdout=Holdout(1000, seed=4, part="holdout"))
    assert again.images.equal(held.images) and not other.images.equal(held.images)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "'n' parameter of Holdout"),
        ({"n": 10, "seed": -1}, "'seed' parameter of Holdout"),
        ({"n": 10, "part": "val"}, "'part' parameter of Holdout must be one of"),
    ],
)
def test_holdout_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Holdout(**kwargs)


def test_holdout_larger_than_the_split_and_on_generated_sets_are_errors():
    with pytest.raises(ConfigError, match=r"leaves nothing to train on: the split has 10000"):
        load_images("fashion_mnist", "test", holdout=Holdout(10000))
    with pytest.raises(ConfigError, match="holdout applies to real datasets"):
        load_images("uniform_noise", "test", n=10, holdout=Holdout(5))


def test_resume_conflicts_count_a_missing_holdout_as_none():
    from ncood.train import TrainConfig
    from ncood.train.config import resume_conflicts, train_holdout

    tc = TrainConfig.from_dict({"epochs": 1, "holdout_samples": 2000, "seed": 5})
    saved = tc.resolved().to_dict()
    assert resume_conflicts(saved, tc) == []
    old = {k: v for k, v in saved.items() if k != "holdout_samples"}  # before the field
    assert resume_conflicts(old, tc) == ["holdout_samples: None -> 2000"]
    plain = TrainConfig.from_dict({"epochs": 1, "seed": 5})
    assert resume_conflicts(old, plain) == []
    assert train_holdout(tc) == Holdout(2000, seed=5) == train_holdout(saved)
    assert train_holdout(plain) is None and train_holdout(old) is None
    with pytest.raises(ConfigError, match="holdout_samples"):
        TrainConfig.from_dict({"holdout_samples": 0})


# --------------------------------------------------------------------------- config
@pytest.fixture
def cfg(tmp_path):
    cfg = load_config()  # the embedded default, selection on
    cfg.output = str(tmp_path / "out")
    return cfg


def test_the_default_selects_on_uniform_noise_and_holds_out_2000(cfg):
    sel = cfg.selection
    assert sel is not None and sel.ood_val == ["uniform_noise"] and sel.id_val_samples == 2000
    assert "uniform_noise" not in cfg.data.ood
    for regime, overrides in cfg.regimes.items():
        assert regime_train_dict(cfg, regime, overrides)["holdout_samples"] == 2000
    check_run_config(cfg)
    off = from_dict(RunConfig, {"selection": None})
    assert off.selection is None
    assert "holdout_samples" not in regime_train_dict(off, "standard", {"epochs": 1})


def _with(cfg, **selection):
    return from_dict(
        RunConfig,
        {**{k: v for k, v in cfg.to_dict().items() if k != "selection"},
         "selection": {**cfg.to_dict()["selection"], "detectors": None, **selection}},
    )  # fmt: skip


@pytest.mark.parametrize(
    "change, match",
    [
        ({"ood_val": ["digits"]}, r"ood_val\[0\]: 'digits' is .* the test OOD set 'digits'"),
        ({"ood_val": ["noise=gaussian_noise"]}, r"shares its dataset with\) the test OOD"),
        ({"ood_val": ["fashion_mnist[0-1]"]}, "is the ID dataset"),
        ({"ood_val": ["uniform_nois"]}, r"ood_val\[0\]: .*uniform_noise"),
        ({"ood_val": []}, "must list at least one validation OOD set"),
        ({"id_val_samples": 0}, r"selection.id_val_samples: .*range \[1, inf\]"),
        ({"ood_val_samples": -1}, r"selection.ood_val_samples"),
        ({"detectors": ["react"]}, "'react' is not among the run's detectors"),
        ({"detectors": ["energy"]}, "'energy' has no hyperparameter grid"),
        ({"id_val_samples": 60000}, r"selection.id_val_samples: .*leaves nothing to train on"),
    ],
)
def test_bad_selection_blocks_fail_before_any_work(cfg, change, match):
    bad = _with(cfg, **change)
    bad.output = cfg.output
    if "detectors" in change:  # the default runs every detector: a smaller run here
        bad.detectors = {"energy": {}, "neco": {}}
    with pytest.raises(ConfigError, match=match) as info:
        check_run_config(bad)
    assert "\n" not in str(info.value) and str(info.value).startswith("config.")
    assert not Path(cfg.output).exists()


def test_selection_config_conflicts(cfg):
    with pytest.raises(ConfigError, match=r"unknown key config.selection.ood_vals"):
        from_dict(RunConfig, {"selection": {"ood_vals": ["uniform_noise"]}})
    none_tunable = _with(cfg)
    none_tunable.detectors = {"msp": {}, "energy": {}}
    with pytest.raises(ConfigError, match="none of the run's detectors .* has a hyperparameter"):
        check_run_config(none_tunable)
    fixed_dim = _with(cfg)
    fixed_dim.detectors = {"neco": {"dim": 8}}  # NECO takes dim or variance, not both
    with pytest.raises(ConfigError, match=r"neco's configured hyperparameters \{'dim': 8\}"):
        check_run_config(fixed_dim)
    own = _with(cfg)
    own.training = {**own.training, "holdout_samples": 10}
    with pytest.raises(ConfigError, match="config.training.holdout_samples"):
        check_run_config(own)


# --------------------------------------------------------------------------- analysis
class _Untouchable:
    """Stands in for a test set: selection must never read it."""

    def __getattr__(self, name):
        raise AssertionError(f"selection read a test set ({name})")

    def __len__(self):
        raise AssertionError("selection read a test set (len)")


def _nci_case():
    """Features where NCI's alpha that wins on validation loses on the test set.

    The validation OOD set has small feature norms (a large alpha, which adds ``||z||_1``,
    separates it), the test OOD set large ones (a large alpha ranks it as ID).
    """
    rng = np.random.default_rng(0)
    c, d = 4, 8
    head = LinearHead(np.hstack([2 * np.eye(c), np.zeros((c, d - c))]), np.zeros(c))

    def id_like(n):
        y = rng.integers(0, c, n)
        z = rng.normal(0, 1, (n, d))
        z[np.arange(n), y] += 3
        return z, y

    def fs(z, y=None, name=""):
        return FeatureSet(z, head.logits(z), y, name=name, layers={"layer1": z[:, :6]})

    train, val_id = fs(*id_like(2000), "train"), fs(*id_like(500), "val")
    test, val_ood = fs(*id_like(500), "test"), fs(0.5 * id_like(500)[0], name="val_ood")
    test_ood = fs(2.0 * id_like(500)[0], name="far")
    fd = FeatureDir(train=train, test=test, ood={"far": test_ood}, head=head, meta={"epoch": 7})
    return fd, val_id, val_ood


def test_selection_reads_validation_only_and_its_choice_is_used_at_the_head():
    from ncood.analysis import analyse, merge_selection_meta, select_hyperparameters

    fd, val_id, val_ood = _nci_case()
    grid = detector_class("nci").grid["alpha"]
    # independent: every candidate's AUROC on validation and on the test set
    val_auc, test_auc = {}, {}
    for a in grid:
        det = create_detector("nci", alpha=a).fit(fd.train.features, fd.train.labels, fd.head)
        val_auc[a] = auroc(det.score(val_id.features, val_id.logits),
                           det.score(val_ood.features, val_ood.logits))  # fmt: skip
        test_auc[a] = auroc(det.score(fd.test.features, fd.test.logits),
                            det.score(fd.ood["far"].features, fd.ood["far"].logits))  # fmt: skip
    best_val, best_test = max(grid, key=val_auc.get), max(grid, key=test_auc.get)
    assert best_val == 0.1 and best_test == 1e-4  # the premise: they disagree

    poisoned = FeatureDir(
        train=fd.train, test=_Untouchable(), ood={"far": _Untouchable()}, head=fd.head,
        meta=fd.meta,
    )  # fmt: skip
    detectors = {"nci": {"alpha": 1e-4}, "energy": {}}
    res, chosen = select_hyperparameters(
        poisoned, val_id, {"val_ood": val_ood}, detectors=detectors, regime="r", seed=1
    )
    assert chosen == {"nci": {"alpha": 0.1}}  # energy has no grid: not selected
    df = res.to_frame()
    cand = df[df.metric == "selection_auroc"]
    assert [json.loads(p) for p in cand["params"]] == [{"alpha": a} for a in grid]
    np.testing.assert_allclose(cand["value"], [val_auc[a] for a in grid], rtol=0, atol=1e-12)
    for _, r in df.iterrows():
        assert (r.regime, r.seed, r.epoch, r.layer, r.detector, r.ood) == (
            "r",
            1,
            7,
            "penultimate",
            "nci",
            "val_ood",
        )
        assert (r.n_id, r.n_ood) == (500, 500)
    (ch,) = df[df.metric == "selection_chosen"].itertuples()
    assert json.loads(ch.params) == {"alpha": 0.1} and ch.value == val_auc[0.1]
    assert res.meta["selection"] == {
        "nci": {
            "grid": {"alpha": grid},
            "chosen": {"alpha": 0.1},
            "val_auroc": val_auc[0.1],
            "val_ood": "val_ood",
            "n_val_id": 500,
            "n_val_ood": 500,
        }
    }
    merged = merge_selection_meta([res, Results(), res])
    assert merged["nci"]["chosen"] == {"alpha": 0.1} and len(merged["nci"]["networks"]) == 2
    assert merged["nci"]["networks"][0] == {
        "regime": "r", "seed": 1, "epoch": 7, "chosen": {"alpha": 0.1}, "val_auroc": val_auc[0.1]
    }  # fmt: skip

    # the chosen value is used at the head (and is worse on this test set, as built);
    # the pooled layer keeps the configured value
    out = analyse(fd, detectors=detectors, head_params=chosen, collapse=False)
    head = out.select(metric="auroc", detector="nci", layer="penultimate")
    assert json.loads(head["params"].iloc[0]) == {"alpha": 0.1}
    assert head["value"].iloc[0] == pytest.approx(test_auc[0.1], abs=1e-12)
    assert out.meta["detectors"]["nci"] == {"alpha": 0.1}
    layer = out.select(metric="auroc", detector="nci", layer="layer1")
    assert json.loads(layer["params"].iloc[0]) == {"alpha": 1e-4}
    with pytest.raises(ConfigError, match="head_params names"):
        analyse(fd, detectors=detectors, head_params={"react": {}}, collapse=False)


def test_selection_input_errors():
    from ncood.analysis import select_hyperparameters

    fd, val_id, val_ood = _nci_case()
    with pytest.raises(ConfigError, match="val_ood is empty"):
        select_hyperparameters(fd, val_id, {}, detectors={"nci": {}})
    narrow = FeatureSet(val_id.features[:, :6], val_id.logits)
    with pytest.raises(Exception, match="val_id has 6 features, but the train features have 8"):
        select_hyperparameters(fd, narrow, {"o": val_ood}, detectors={"nci": {}})
    with pytest.raises(ConfigError, match="has no hyperparameter grid"):
        select_hyperparameters(fd, val_id, {"o": val_ood}, detectors=["msp"], selected=["msp"])


# --------------------------------------------------------------------------- end to end
TINY = {
    "name": "tiny-selection",
    "seed": 0,
    "model": "resnet_narrow",
    "data": {
        "id": "fashion_mnist",
        "ood": ["digits", "texture_crops", "gaussian_noise"],
        "train_samples": 400,
        "test_samples": 300,
        "ood_samples": 300,
    },
    "training": {"precision": "fp32", "max_test_samples": 200, "snapshots": [0, 1]},
    "regimes": {"standard": {"epochs": 1}},
    "detectors": {"energy": {}, "scale": {}, "nci": {}, "neco": {}, "gen": {}, "fdbd": {}},
    "collapse": {"layers": ["layer2"], "layer_detectors": ["nci", "neco"],
                 "snapshot_test_samples": 100},
    "bootstrap": {"n_boot": 0},
    "explain": False,
    "selection": {"id_val_samples": 300, "ood_val": ["uniform_noise"], "ood_val_samples": 300},
}  # fmt: skip
N_VAL, N_TRAIN, SEED = 300, 400, 0


@pytest.fixture()
def no_report(monkeypatch):
    import ncood.report

    monkeypatch.setattr(ncood.report, "write_report", lambda results, directory, scores=None: {})
    monkeypatch.setattr(ncood.report, "findings", lambda results: [])


@pytest.fixture()
def loads(monkeypatch):
    """Every ``load_images`` call of training and extraction: ``(where, args, kw, arrays)``."""
    import ncood.extract
    import ncood.train.setup

    calls = []
    for module in (ncood.train.setup, ncood.extract):
        real = module.load_images

        def spy(*args, _real=real, _where=module.__name__, **kw):
            out = _real(*args, **kw)
            calls.append((_where, args, kw, out))
            return out

        monkeypatch.setattr(module, "load_images", spy)
    return calls


@pytest.mark.slow
def test_run_chooses_on_held_out_validation_data_and_uses_the_choice(
    tmp_path, no_report, loads, monkeypatch
):
    import ncood.analysis
    from ncood.extract import extract_checkpoint
    from ncood.pipeline import run

    seen = []  # what selection was given
    real_select = ncood.analysis.select

    def spy_select(name, grid, train_z, train_y, head, *, val_id, val_ood, **kw):
        seen.append((name, len(train_z), len(val_id[0]), len(val_ood[0])))
        return real_select(name, grid, train_z, train_y, head, val_id=val_id, val_ood=val_ood,
                           **kw)  # fmt: skip

    monkeypatch.setattr(ncood.analysis, "select", spy_select)
    cfg = from_dict(RunConfig, TINY)
    out = tmp_path / "run"
    res = run(cfg, output=out)

    # ---- the three index sets: trained on, validation, test
    full = load_images("fashion_mnist", "train")
    y = full.labels.numpy()
    ref_val = stratified_indices(y, N_VAL, SEED)
    rest = np.setdiff1d(np.arange(len(full)), ref_val)
    ref_trained = rest[stratified_indices(y[rest], N_TRAIN, SEED)]
    assert np.intersect1d(ref_val, ref_trained).size == 0
    trained = [a for w, args, kw, a in loads if w.endswith("setup") and args[1] == "train"]
    assert len(trained) == 1 and trained[0].images.equal(full.images[ref_trained])
    fit_sets = [a for w, args, kw, a in loads
                if w.endswith("extract") and args[1] == "train" and kw.get("holdout") is not None
                and kw["holdout"].part == "rest"]  # fmt: skip
    assert len(fit_sets) == 2  # the final network and the epoch-0 snapshot: NC/fit sets
    for arrays in fit_sets:
        assert arrays.images.equal(full.images[ref_trained])
    val = [a for w, args, kw, a in loads if kw.get("holdout") is not None
           and kw["holdout"].part == "holdout"]  # fmt: skip
    assert len(val) == 1 and val[0].images.equal(full.images[ref_val])
    id_test = [(args, a) for w, args, kw, a in loads if args[0] == "fashion_mnist"
               and args[1] == "test"]  # fmt: skip
    assert id_test and all(kw_a[1].name == "fashion_mnist/test" for kw_a in id_test)
    assert not any(a[0] == "fashion_mnist" and a[1] == "test" and kw.get("holdout")
                   for _, a, kw, _ in loads)  # fmt: skip

    # ---- selection saw the fit set and the validation sets only
    names = ["scale", "nci", "neco", "gen", "fdbd"]  # every run detector with a grid
    assert [s[0] for s in seen] == names
    assert {s[1:] for s in seen} == {(N_TRAIN, N_VAL, 300)}

    # ---- rows of the schema; the choice is the validation argmax
    sel = res.meta["selection"]
    assert list(sel) == names
    fd = extract_checkpoint(
        out / "regimes" / "standard" / "train" / "last.pt", ood=TINY["data"]["ood"],
        cache_dir=out / "cache", max_train_samples=N_TRAIN, max_test_samples=300,
        max_ood_samples=300, allow_subset=True, seed=SEED, layers=["layer2"], progress=False,
    )  # fmt: skip
    assert len(fd.train) == N_TRAIN
    disagree = []
    for name in names:
        cand = res.select(metric="selection_auroc", detector=name)
        assert set(cand["ood"]) == {"uniform_noise"} and set(cand["epoch"]) == {1}
        assert set(cand["n_id"]) == {N_VAL} and set(cand["n_ood"]) == {300}
        params = [json.loads(p) for p in cand["params"]]
        vals = cand["value"].to_numpy()
        best = params[int(np.argmax(vals))]  # first maximum: ties go to grid order
        (chosen,) = [json.loads(p) for p in res.select(metric="selection_chosen",
                                                       detector=name)["params"]]  # fmt: skip
        assert chosen == best == sel[name]["chosen"] and sel[name]["val_ood"] == "uniform_noise"
        assert sel[name]["grid"] == default_grid(name)
        # the test rows of the final network carry and use the chosen values
        configured = create_detector(name, **TINY["detectors"][name]).get_params()
        final = res.select(metric="auroc", detector=name, layer="penultimate", epoch=1)
        for ood, p, v in zip(final["ood"], final["params"], final["value"], strict=True):
            assert json.loads(p) == {**configured, **chosen}
            det = create_detector(name, **chosen).fit(fd.train.features, fd.train.labels, fd.head)
            id_s = det.score(fd.test.features, fd.test.logits)
            assert v == pytest.approx(
                auroc(id_s, det.score(fd.ood[ood].features, fd.ood[ood].logits)), abs=1e-9
            )
            # what the test set would have chosen
            test_auc = []
            for q in params:
                d = create_detector(name, **q).fit(fd.train.features, fd.train.labels, fd.head)
                test_auc.append(
                    auroc(
                        d.score(fd.test.features, fd.test.logits),
                        d.score(fd.ood[ood].features, fd.ood[ood].logits),
                    )
                )
            if params[int(np.argmax(test_auc))] != chosen:
                disagree.append((name, ood))
        # snapshots and the other layer keep the configured values
        for _, r in res.select(detector=name, metric="auroc").iterrows():
            if r.epoch == 0 or r.layer != "penultimate":
                want = detector_class(name).params_for_width(
                    TINY["detectors"][name], 32 if r.layer == "layer2" else 64
                )
                assert json.loads(r.params) == create_detector(name, **want).get_params()
    assert disagree, "no detector's test-set winner differs from validation's"
    assert "standard/selection" in res.meta["durations"]

    # ---- resume: the same config in the same directory reuses the held-out training run
    ckpt = out / "regimes" / "standard" / "train" / "last.pt"
    mtime = ckpt.stat().st_mtime_ns
    again = run(cfg, output=out)
    assert ckpt.stat().st_mtime_ns == mtime
    a, b = (r.select(metric=["selection_auroc", "selection_chosen", "auroc"]) for r in (res, again))
    assert a.reset_index(drop=True).equals(b.reset_index(drop=True))


@pytest.mark.slow
def test_interrupted_training_with_a_holdout_resumes(tmp_path):
    from ncood.train import Callback, TrainConfig, load_checkpoint, train

    cfg = TrainConfig.from_dict(
        {"epochs": 2, "batch_size": 64, "max_train_samples": 256, "max_test_samples": 100,
         "seed": 0, "precision": "fp32", "holdout_samples": 500, "snapshots": "none"}
    )  # fmt: skip

    class Stop(Callback):
        def on_epoch_end(self, state):
            if state.epoch == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", progress=False, callbacks=[Stop()])
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["config"]["holdout_samples"] == 500 and saved["epoch"] == 1
    assert "without the held-out n=500 seed=0" in saved["dataset"]["source"]
    done = train(cfg, tmp_path / "run", resume=True, progress=False)
    assert load_checkpoint(done.checkpoint)["epoch"] == 2
    with pytest.raises(ConfigError, match="holdout_samples: 500 -> 400"):
        train(cfg.replace(holdout_samples=400), tmp_path / "run", resume=True, progress=False)
