"""Tests that kill the surviving mutants of the detector zoo (``make mutation``).

Each test checks one documented behaviour against an independent reference (the
method's formula written out with scipy, a plain loop, an invariance of the definition);
docs/testing.md lists which mutants each group kills and the survivors that are
equivalent.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

import ncood.detectors.logit as logit_mod
from ncood.detectors import create_detector
from ncood.errors import ConfigError, ShapeError
from ncood.types import LinearHead


def _problem(seed=0, n=400, d=10, c=4, n_query=30):
    """Post-ReLU train features, a head that mostly classifies them, and queries."""
    rng = np.random.default_rng(seed)
    proto = 3.0 * np.maximum(rng.normal(size=(c, d)), 0.0)
    y = rng.integers(0, c, n)
    z = np.maximum(proto[y] + rng.normal(size=(n, d)), 0.0)
    head = LinearHead(proto - proto.mean(axis=0), rng.normal(size=c))
    x = np.maximum(proto[rng.integers(0, c, n_query)] + 2 * rng.normal(size=(n_query, d)), 0)
    return z, y, head, x


# --------------------------------------------------------------------------- logit family
def _gen_ref(f, gamma, m):
    """GEN from log-space softmax: 1 - p_i as the softmax mass of the other classes."""
    out = []
    for row in f:
        lse = logsumexp(row)
        p = np.exp(row - lse)
        q = np.array([np.exp(logsumexp(np.delete(row, i)) - lse) for i in range(len(row))])
        top = np.argsort(-p)[: min(m, len(row))]
        out.append(-np.sum(p[top] ** gamma * q[top] ** gamma))
    return np.array(out)


def test_gen_is_shift_invariant_per_row_and_rows_are_independent():
    # softmax(f + s) = softmax(f) for any per-row shift s: large logits (a collapsed
    # network's are in the hundreds) and rows of very different scale in one batch
    rng = np.random.default_rng(0)
    f = rng.normal(size=(6, 5))
    shifts = np.array([0.0, 800.0, -800.0, 300.0, 0.0, 1500.0])[:, None]
    det = create_detector("gen", gamma=0.5, M=3)
    want = _gen_ref(f, 0.5, 3)
    got = det.score(None, f + shifts)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    rows = [det.score(None, (f + shifts)[i : i + 1])[0] for i in range(6)]
    np.testing.assert_allclose(rows, want, rtol=1e-12)


@pytest.mark.parametrize("name", ["energy", "react"])
@pytest.mark.parametrize("T", [0.0, -1.0])
def test_temperature_must_be_positive(name, T):
    owner = {"energy": "Energy", "react": "ReAct"}[name]
    with pytest.raises(
        ConfigError, match=rf"^The 'T' parameter of {owner} must be a float in the range \(0, inf"
    ):
        create_detector(name, T=T)


def test_react_percentile_range_is_open_at_0_and_closed_at_100():
    z, y, head, _ = _problem()
    for bad in (0.0, 100.5, 101.0, 150.0):
        with pytest.raises(ConfigError, match="'percentile' parameter of ReAct"):
            create_detector("react", percentile=bad)
    for q in (0.5, 100.0):
        det = create_detector("react", percentile=q).fit(z, y, head)
        assert det.threshold_ == pytest.approx(np.percentile(z, q), rel=1e-14)


def test_react_temperature_scales_the_energy():
    z, y, head, x = _problem(1)
    det = create_detector("react", percentile=80.0, T=2.5).fit(z, y, head)
    c = np.percentile(z, 80.0)
    logits = np.minimum(x, c) @ head.weight.T + head.bias
    np.testing.assert_allclose(
        det.score(x, head.logits(x)), 2.5 * logsumexp(logits / 2.5, axis=1), rtol=1e-12
    )


def test_react_above_the_cap_takes_the_percentile_of_evenly_spaced_rows(monkeypatch, caplog):
    # Above REACT_MAX_VALUES train entries the percentile is that of evenly spaced train
    # rows (first to last, as many as fit under the cap), logged (ReAct's docstring).
    # The cap is lowered so that a small problem crosses it, with > 4096 sampled rows.
    rng = np.random.default_rng(3)
    n, d = 20_001, 2
    z = rng.exponential(size=(n, d))
    head = LinearHead(rng.normal(size=(3, d)), np.zeros(3))
    monkeypatch.setattr(logit_mod, "REACT_MAX_VALUES", 12_000)  # n * d > cap >= n / d
    with caplog.at_level(logging.INFO, logger="ncood.detectors.logit"):
        det = create_detector("react", percentile=90.0).fit(z, None, head)
    rows = np.linspace(0, n - 1, 12_000 // d).astype(np.int64)  # 6,000 evenly spaced rows
    assert rows[0] == 0 and rows[-1] == n - 1 and np.unique(rows).size == 6_000
    assert det.threshold_ == pytest.approx(np.percentile(z[rows], 90.0), rel=1e-14)
    assert det.threshold_ != pytest.approx(np.percentile(z, 90.0), rel=1e-9)
    assert "6000 evenly spaced of 20001 train rows" in caplog.text


@pytest.mark.parametrize("name", ["react", "kl_matching"])
def test_nan_train_features_are_named(name):
    z, y, head, _ = _problem()
    z = z.copy()
    z[7, 2] = np.nan
    with pytest.raises(ShapeError, match="^train features contains 1 NaN/inf"):
        create_detector(name).fit(z, y, head)


def _kl_templates(z, head):
    """Mean softmax of the train samples predicted as each class; one-hot if none."""
    logits = head.logits(z)
    pred = logits.argmax(axis=1)
    c = head.num_classes
    return np.array(
        [
            softmax(logits[pred == k], axis=1).mean(axis=0) if (pred == k).any() else np.eye(c)[k]
            for k in range(c)
        ]
    )


def test_kl_matching_class_predicted_once_and_never(caplog):
    # W = (e1, e2, -(e1 + e2), 0), class 3 with bias -1000: samples near (5, 0) are class
    # 0, near (0, 5) class 1, the single sample at (-5, -5) class 2, class 3 never.
    rng = np.random.default_rng(2)
    z = np.vstack(
        [
            [5.0, 0.0] + rng.normal(size=(30, 2)),
            [0.0, 5.0] + rng.normal(size=(30, 2)),
            [[-5.0, -5.0]],
        ]
    )
    head = LinearHead(
        np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [0.0, 0.0]]), np.array([0.0, 0, 0, -1e3])
    )
    pred = head.logits(z).argmax(axis=1)
    assert (pred == 2).sum() == 1 and not (pred == 3).any()
    with caplog.at_level(logging.INFO, logger="ncood.detectors.logit"):
        det = create_detector("kl_matching").fit(z, None, head)
    templates = _kl_templates(z, head)
    assert templates[2][2] < 1.0  # the single sample's softmax, not a one-hot row
    np.testing.assert_allclose(det.templates_, templates, rtol=1e-12, atol=1e-300)
    assert "1 class(es) never predicted" in caplog.text
    caplog.clear()
    three = LinearHead(head.weight[:3], head.bias[:3])  # every class predicted
    with caplog.at_level(logging.INFO, logger="ncood.detectors.logit"):
        det = create_detector("kl_matching").fit(z, None, three)
    np.testing.assert_allclose(det.templates_, _kl_templates(z, three), rtol=1e-12)
    assert "never predicted" not in caplog.text
