"""ODIN inside `ncood run`: the network is run again on the very images the features came
from, and with selection on its (temperature, epsilon) is chosen on validation data only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ncood.config import RunConfig, check_run_config, from_dict
from ncood.errors import ConfigError

TINY = {
    "name": "tiny-odin",
    "seed": 0,
    "model": "resnet_narrow",
    "data": {
        "id": "fashion_mnist",
        "ood": ["digits", "gaussian_noise"],
        "train_samples": 300,
        "test_samples": 150,
        "ood_samples": 100,
    },
    "training": {"precision": "fp32", "max_test_samples": 100, "snapshots": [0, 1]},
    "regimes": {"standard": {"epochs": 1}},
    # ODIN with epsilon = 0 is MSP at its temperature: the two must score alike
    "detectors": {"msp": {"T": 10.0}, "energy": {}, "odin": {"temperature": 10.0,
                                                                          "epsilon": 0.0}},
    "collapse": {"layers": [], "across_training": False},
    "bootstrap": {"n_boot": 0},
    "explain": False,
}  # fmt: skip


@pytest.fixture()
def no_report(monkeypatch):
    import ncood.report

    monkeypatch.setattr(ncood.report, "write_report", lambda results, directory, scores=None: {})
    monkeypatch.setattr(ncood.report, "findings", lambda results: [])


def _odin_cfg(**changes):
    return from_dict(RunConfig, {**TINY, **changes})


def test_bad_odin_settings_fail_before_any_work(tmp_path):
    bad = _odin_cfg(detectors={"odin": {"temperature": -1.0}})
    with pytest.raises(ConfigError, match="temperature"):
        check_run_config(bad, output=tmp_path / "out")
    two_val = _odin_cfg(
        selection={"id_val_samples": 100, "ood_val": ["uniform_noise", "texture_crops"]}
    )
    with pytest.raises(ConfigError, match="ODIN selects on one validation OOD set"):
        check_run_config(two_val, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_run_scores_odin_on_the_images_the_features_came_from(tmp_path, no_report):
    from ncood.pipeline import run

    out = tmp_path / "out"
    res = run(_odin_cfg(), output=out)
    scores = np.load(out / "scores.npz")
    # epsilon = 0: ODIN's score is the max softmax at T = 10 of the same images, in the
    # same order, so it equals the MSP detector's score computed from the extracted logits
    for split in ("id", "digits", "gaussian_noise"):
        np.testing.assert_allclose(
            scores[f"standard/odin/{split}"], scores[f"standard/msp/{split}"], atol=2e-6
        )
    df = res.to_frame()
    odin = df[(df.detector == "odin") & (df.metric == "auroc")].set_index("ood")
    msp = df[(df.detector == "msp") & (df.metric == "auroc")].set_index("ood")
    assert sorted(odin.index) == ["digits", "gaussian_noise"]
    for ood in odin.index:
        assert odin.loc[ood, "value"] == pytest.approx(msp.loc[ood, "value"], abs=1e-3)
        assert json.loads(odin.loc[ood, "params"]) == {"epsilon": 0.0, "temperature": 10.0}
        assert odin.loc[ood, "n_id"] == 150 and odin.loc[ood, "n_ood"] == 100
    assert res.meta["detectors"]["odin"] == {"epsilon": 0.0, "temperature": 10.0}


@pytest.mark.slow
def test_run_selects_odin_on_validation_data_and_uses_the_choice(tmp_path, no_report):
    from ncood.pipeline import run

    cfg = _odin_cfg(
        detectors={"energy": {}, "odin": {}},
        selection={"id_val_samples": 100, "ood_val": ["uniform_noise"], "ood_val_samples": 80},
    )
    res = run(cfg, output=tmp_path / "out")
    df = res.to_frame()
    cands = df[(df.metric == "selection_auroc") & (df.detector == "odin")]
    assert len(cands) == 8  # OpenOOD's sweep: 4 temperatures x 2 epsilons
    assert set(cands.ood) == {"uniform_noise"}
    assert set(cands.n_id) == {100} and set(cands.n_ood) == {80}
    chosen = df[(df.metric == "selection_chosen") & (df.detector == "odin")]
    assert len(chosen) == 1
    best = cands.loc[cands.value.idxmax()]  # first maximum in grid order, as select does
    assert chosen.iloc[0].params == best.params
    assert chosen.iloc[0].value == best.value
    test_rows = df[(df.detector == "odin") & (df.metric == "auroc")]
    assert set(test_rows.params) == {best.params}
    assert res.meta["selection"]["odin"]["chosen"] == json.loads(best.params)
