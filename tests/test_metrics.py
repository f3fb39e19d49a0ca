"""ncood.metrics against hand-worked cases, scikit-learn, and the written-out definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

from ncood.errors import ConfigError, ShapeError
from ncood.metrics import (
    METRIC_NAMES,
    aupr_in,
    aupr_out,
    auroc,
    fpr_at_tpr,
    fpr_at_tpr_oodpos,
    ood_metrics,
)


def test_perfect_separation():
    m = ood_metrics([3.0, 4.0, 5.0], [0.0, 1.0])
    assert m == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0, "fpr95_oodpos": 0.0}


def test_reversed():
    m = ood_metrics([0.0, 1.0], [3.0, 4.0, 5.0])
    assert m["auroc"] == 0.0
    assert m["fpr95"] == 1.0
    assert m["fpr95_oodpos"] == 1.0


def test_ties_hand_worked():
    # ID {1, 1, 0}, OOD {1, 0}. Pairs (id, ood): wins 2, ties 3, losses 1 -> (2 + 1.5) / 6.
    id_s, ood_s = [1.0, 1.0, 0.0], [1.0, 0.0]
    m = ood_metrics(id_s, ood_s)
    assert m["auroc"] == pytest.approx(3.5 / 6, abs=1e-15)
    # PR (ID positive): (r, p) = (0, 1), (2/3, 2/3) at t=1, (1, 3/5) at t=0
    assert m["aupr_in"] == pytest.approx(2 / 3 * (1 + 2 / 3) / 2 + 1 / 3 * (2 / 3 + 3 / 5) / 2)
    # PR (OOD positive, by -score): (0, 1), (1/2, 1/2) at t=0, (1, 2/5) at t=1
    assert m["aupr_out"] == pytest.approx(1 / 2 * (1 + 1 / 2) / 2 + 1 / 2 * (1 / 2 + 2 / 5) / 2)
    # k = floor(0.95 * 3) = 2 -> threshold 1 -> one of two OOD scores is >= 1
    assert m["fpr95"] == 0.5
    # catching >= 95% of OOD needs t = 1: every ID sample has score <= 1
    assert m["fpr95_oodpos"] == 1.0
    # the same values on both sides: exactly chance; ID {1, 2, 1} vs OOD {1, 2}: 2.5 / 6
    assert auroc([1.0, 2.0], [2.0, 1.0]) == 0.5
    assert auroc([1.0, 2.0, 1.0], [1.0, 2.0]) == pytest.approx(2.5 / 6, abs=1e-15)


@pytest.mark.parametrize("seed", range(6))
def test_against_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(20, 400, size=2)
    # rounding to one decimal creates many ties, within and across the two sets
    id_s = np.round(rng.normal(0.7, 1.0, n_id), 1)
    ood_s = np.round(rng.normal(0.0, 1.0, n_ood), 1)
    y = np.r_[np.ones(n_id), np.zeros(n_ood)]
    s = np.r_[id_s, ood_s]
    m = ood_metrics(id_s, ood_s)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert m["auroc"] == pytest.approx(auc(fpr, tpr), abs=1e-12)
    p, r, _ = precision_recall_curve(y, s)
    assert m["aupr_in"] == pytest.approx(auc(r, p), abs=1e-12)
    p, r, _ = precision_recall_curve(1 - y, -s)
    assert m["aupr_out"] == pytest.approx(auc(r, p), abs=1e-12)
    # OpenOOD v1.5: OOD positive, roc_curve on -score, fpr at first tpr >= 0.95
    fpr, tpr, _ = roc_curve(1 - y, -s, drop_intermediate=False)
    assert m["fpr95_oodpos"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    # the single-metric functions agree with ood_metrics
    assert auroc(id_s, ood_s) == m["auroc"]
    assert aupr_in(id_s, ood_s) == m["aupr_in"]
    assert aupr_out(id_s, ood_s) == m["aupr_out"]
    assert fpr_at_tpr(id_s, ood_s) == m["fpr95"]
    assert fpr_at_tpr_oodpos(id_s, ood_s) == m["fpr95_oodpos"]
    assert set(m) == set(METRIC_NAMES)


def _fpr95_by_definition(id_s, ood_s, percent=95):
    k = (percent * len(id_s)) // 100  # floor(0.95 n_id), in exact integer arithmetic
    threshold = sorted(id_s, reverse=True)[k - 1]  # the k-th largest ID score
    return sum(1 for s in ood_s if s >= threshold) / len(ood_s)


@pytest.mark.parametrize("n_id", [20, 99, 100, 101, 237, 1000])
def test_fpr95_matches_written_definition(n_id):
    rng = np.random.default_rng(n_id)
    id_s = np.round(rng.normal(1.0, 1.0, n_id), 2)
    ood_s = np.round(rng.normal(0.0, 1.0, 333), 2)
    assert fpr_at_tpr(id_s, ood_s) == _fpr95_by_definition(list(id_s), list(ood_s))
    assert fpr_at_tpr(id_s, ood_s, tpr=0.8) == _fpr95_by_definition(list(id_s), list(ood_s), 80)


def test_fpr95_threshold_at_ties_counts_ood_equal_to_threshold():
    # 20 ID scores: k = 19 -> threshold is the 19th largest = 1.0; OOD at exactly 1.0 counts
    id_s = [2.0] * 18 + [1.0, 0.0]
    assert fpr_at_tpr(id_s, [1.0, 0.5, 0.99, 1.5]) == 0.5


def test_large_inputs_are_fast_enough_to_run():
    rng = np.random.default_rng(0)
    id_s, ood_s = rng.normal(1, 1, 200_000), rng.normal(0, 1, 100_000)
    m = ood_metrics(id_s, ood_s)
    y = np.r_[np.ones(id_s.size), np.zeros(ood_s.size)]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, np.r_[id_s, ood_s]), abs=1e-12)


@pytest.mark.parametrize(
    "id_s, ood_s, match",
    [
        ([], [1.0], "empty"),
        ([1.0], [], "empty"),
        ([1.0, np.nan], [0.0], "NaN"),
        ([1.0], [np.inf], "NaN/inf"),
        ([2.0, 2.0], [2.0], "constant"),
        ([[1.0, 2.0]], [0.0], "1-D"),
    ],
)
def test_degenerate_inputs_raise(id_s, ood_s, match):
    with pytest.raises(ShapeError, match=match):
        ood_metrics(id_s, ood_s)


@pytest.mark.parametrize("tpr", [0.0, 1.0, -0.1, 1.5, "0.9", True])
def test_tpr_outside_unit_interval_raises(tpr):
    with pytest.raises(ConfigError, match="'tpr'"):
        fpr_at_tpr([1.0, 2.0], [0.0], tpr=tpr)
