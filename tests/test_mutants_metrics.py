"""Tests that kill the surviving mutants of ``ncood.metrics`` (``make mutation``).

Each test checks one documented behaviour against an independent reference (a written-out
definition, a plain loop over the documented draws, ``scipy.stats.spearmanr``,
``statistics``); docs/testing.md lists which mutants each group kills and the survivors
that are equivalent.
"""

from __future__ import annotations

import math
import statistics
import warnings

import numpy as np
import pytest
from scipy.stats import spearmanr

from ncood.errors import ConfigError, ShapeError
from ncood.metrics import (
    METRIC_NAMES,
    Interval,
    bootstrap_generators,
    bootstrap_ood_metrics,
    bootstrap_replicates,
    fpr_at_tpr,
    fpr_at_tpr_oodpos,
    mean_std,
    ood_metrics,
    paired_auroc_difference,
    paired_verdict,
    spearman_ci,
)


def _scores(seed=0, n_id=60, n_ood=40):
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(0.8, 1, n_id), 1), np.round(rng.normal(0, 1, n_ood), 1)


# --------------------------------------------------------------------------- input types
def test_float32_and_integer_scores_give_the_float64_metrics():
    id_s, ood_s = _scores()
    want = ood_metrics(id_s, ood_s)
    assert ood_metrics(id_s.astype(np.float32), ood_s.astype(np.float32)) == ood_metrics(
        id_s.astype(np.float32).astype(np.float64), ood_s.astype(np.float32).astype(np.float64)
    )
    # integer scores in the same order (one-decimal scores times 10) rank the same
    assert (
        ood_metrics(np.rint(10 * id_s).astype(np.int64), np.rint(10 * ood_s).astype(np.int64))
        == want
    )


def test_non_numeric_scores_raise_a_shape_error():
    with pytest.raises(ShapeError, match="^id_scores must be numeric"):
        ood_metrics(np.array(["a", "b"]), [0.0])
    with pytest.raises(ShapeError, match="^x must be numeric"):
        spearman_ci(np.array(["a", "b", "c"]), [1.0, 2.0, 3.0])


def test_spearman_and_mean_std_accept_integers_and_float32():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, 30)
    y = x + rng.integers(0, 4, 30)
    want = spearmanr(x, y).statistic
    assert spearman_ci(x, y, n_boot=20).value == pytest.approx(want, abs=1e-12)
    xf, yf = x.astype(np.float32) / 3, y.astype(np.float32) / 7
    assert spearman_ci(xf, yf, n_boot=20).value == pytest.approx(want, abs=1e-12)
    assert mean_std(np.array([1, 2, 4])) == pytest.approx((7 / 3, statistics.stdev([1, 2, 4])))
    v32 = np.array([0.5, 0.25, 1.0], dtype=np.float32)  # exact in float32
    assert mean_std(v32) == pytest.approx(
        (statistics.mean([0.5, 0.25, 1.0]), statistics.stdev([0.5, 0.25, 1.0]))
    )


# --------------------------------------------------------------------------- messages
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ood_metrics([1.0, np.nan], [0.0]), "^id_scores contains 1 NaN"),
        (lambda: ood_metrics([1.0], [0.0, np.inf]), "^ood_scores contains 1 NaN"),
        (lambda: spearman_ci([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]), "^x contains 1 NaN"),
        (lambda: spearman_ci([1.0, 2.0, 3.0], [1.0, np.nan, 3.0]), "^y contains 1 NaN"),
        (lambda: mean_std([0.9, np.nan]), "^values contains 1 NaN"),
        (lambda: mean_std([]), "^values is empty"),
    ],
)
def test_errors_name_the_argument_at_fault(call, match):
    with pytest.raises(ShapeError, match=match):
        call()


@pytest.mark.parametrize("kwargs, name", [({"n_boot": 0}, "n_boot"), ({"level": 1.0}, "level")])
def test_bootstrap_parameter_errors_say_whose_parameter(kwargs, name):
    # the scikit-learn form of docs/errors.md: "The 'n_boot' parameter of the bootstrap ..."
    with pytest.raises(ConfigError, match=f"^The '{name}' parameter of the bootstrap must be"):
        bootstrap_ood_metrics([1.0, 2.0], [0.0], **kwargs)


# --------------------------------------------------------------------------- definitions
def test_fpr95_of_a_single_id_sample_is_zero():
    # k = floor(0.95 * 1) = 0: no ID sample need be kept, so no OOD sample passes
    # (fpr_at_tpr's docstring); the OOD scores above the one ID score do not count.
    id_s, ood_s = [0.0], [1.0, 2.0, -1.0]
    assert fpr_at_tpr(id_s, ood_s) == 0.0
    assert ood_metrics(id_s, ood_s)["fpr95"] == 0.0


def test_a_single_replicate_is_allowed():
    # n_boot >= 1 (docstring); one replicate equals the metric of the documented draw
    id_s, ood_s = _scores(1)
    reps = bootstrap_replicates(id_s, ood_s, n_boot=1, seed=3)
    g_id, g_ood = bootstrap_generators(3)
    i, o = g_id.integers(0, id_s.size, id_s.size), g_ood.integers(0, ood_s.size, ood_s.size)
    want = ood_metrics(id_s[i], ood_s[o])
    for k in METRIC_NAMES:
        assert reps[k].shape == (1,) and reps[k][0] == pytest.approx(want[k], abs=1e-12)


def test_each_metric_alone_gives_the_replicates_of_all_together():
    id_s, ood_s = _scores(2)
    together = bootstrap_replicates(id_s, ood_s, n_boot=40, seed=5)
    for k in METRIC_NAMES:
        alone = bootstrap_replicates(id_s, ood_s, n_boot=40, seed=5, metrics=k)
        assert list(alone) == [k]
        np.testing.assert_array_equal(alone[k], together[k], err_msg=k)


def test_oodpos_replicates_when_the_ood_set_ties_at_the_lowest_score():
    # every OOD sample at the lowest pooled value: catching 95% of OOD needs t = 0, where
    # no ID sample (1, 2 or 3) is rejected -- in every replicate, as the plain function says
    id_s, ood_s = np.array([1.0, 2.0, 3.0]), np.zeros(20)
    reps = bootstrap_replicates(id_s, ood_s, n_boot=50, seed=0)
    g_id, g_ood = bootstrap_generators(0)
    for r in range(50):
        i, o = g_id.integers(0, 3, 3), g_ood.integers(0, 20, 20)
        assert reps["fpr95_oodpos"][r] == fpr_at_tpr_oodpos(id_s[i], ood_s[o]) == 0.0
    # and with one ID sample tied into that group: it is rejected with the OOD samples
    id_t = np.array([0.0, 2.0, 3.0])
    reps = bootstrap_replicates(id_t, ood_s, n_boot=50, seed=1)
    g_id, g_ood = bootstrap_generators(1)
    for r in range(50):
        i, o = g_id.integers(0, 3, 3), g_ood.integers(0, 20, 20)
        assert reps["fpr95_oodpos"][r] == np.mean(id_t[i] <= 0.0)


def test_distinct_seeds_give_distinct_resamples():
    # 300 seeds, 300 different streams (a seed space of a few hundred values would collide)
    first = {tuple(bootstrap_generators(s)[0].integers(0, 2**32, 4)) for s in range(300)}
    assert len(first) == 300


def test_documented_defaults():
    # CONVENTIONS["intervals"]: B = 1000 by default; seed=0 by default, so a call without
    # them reproduces the intervals a report printed with n_boot=1000, seed=0.
    id_s, ood_s = _scores(4, 80, 70)
    assert bootstrap_ood_metrics(id_s, ood_s) == bootstrap_ood_metrics(
        id_s, ood_s, n_boot=1000, seed=0, level=0.95
    )
    reps = bootstrap_replicates(id_s, ood_s, metrics="auroc")["auroc"]
    assert reps.shape == (1000,)
    np.testing.assert_array_equal(
        reps, bootstrap_replicates(id_s, ood_s, n_boot=1000, seed=0, metrics="auroc")["auroc"]
    )
    rng = np.random.default_rng(5)  # continuous scores: distinct quantiles for 1000 vs 1001
    c_id, c_ood = rng.normal(1, 1, 80), rng.normal(0, 1, 70)
    b_id, b_ood = c_id + rng.normal(0, 1, 80), c_ood + rng.normal(0, 1, 70)
    assert paired_auroc_difference(c_id, c_ood, b_id, b_ood) == paired_auroc_difference(
        c_id, c_ood, b_id, b_ood, n_boot=1000, seed=0, level=0.95
    )
    x = np.arange(40.0)
    y = np.round(np.sin(x) + x / 20, 1)
    assert spearman_ci(x, y) == spearman_ci(x, y, n_boot=1000, seed=0, level=0.95)
    a, b = bootstrap_generators(), bootstrap_generators(0)
    assert a[0].integers(0, 2**32) == b[0].integers(0, 2**32)


# --------------------------------------------------------------------------- spearman
def test_spearman_with_constant_resamples_warns_nothing_and_counts_them():
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 2.0, 3.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/0 of a constant resample is handled, not warned
        got = spearman_ci(x, y, n_boot=200, seed=0)
    assert "replicates left out" in got.note


def test_spearman_note_is_empty_when_no_replicate_is_left_out():
    x = np.arange(30.0)
    got = spearman_ci(x, x**2 - 3 * x, n_boot=100, seed=1)
    assert got.note == "" and "note" not in repr(got)


def test_spearman_when_every_replicate_is_left_out():
    # n_boot = 1: replicate 0 draws rng.integers(0, n, size=n) from default_rng(seed)
    # (docstring); when that draw is constant in x there is no replicate rho at all.
    x, y = np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])
    rho = spearmanr(x, y).statistic
    seen = {True: 0, False: 0}
    for seed in range(30):
        i = np.random.default_rng(seed).integers(0, 3, size=3)
        constant = np.ptp(x[i]) == 0 or np.ptp(y[i]) == 0
        got = spearman_ci(x, y, n_boot=1, seed=seed)
        assert isinstance(got, Interval) and got.value == pytest.approx(rho, abs=1e-12)
        if constant:
            assert math.isnan(got.lo) and math.isnan(got.hi)
            assert got.note == "1 of 1 replicates left out (resample constant in x or y)"
        else:
            assert got.lo == got.hi == pytest.approx(spearmanr(x[i], y[i]).statistic)
            assert got.note == ""
        seen[bool(constant)] += 1
    assert seen[True] and seen[False]


# --------------------------------------------------------------------------- mean_std
def test_mean_std_of_two_and_of_one_value():
    assert mean_std([0.9, 0.95]) == pytest.approx((0.925, statistics.stdev([0.9, 0.95])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one seed: std is NaN by definition, not a warning
        m, s = mean_std([0.9])
    assert m == 0.9 and math.isnan(s)


# --------------------------------------------------------------------------- Interval
def test_interval_contains_its_bounds_and_repr_round_trips():
    iv = Interval(0.5, 0.25, 0.75)
    assert iv.contains(0.25) and iv.contains(0.75) and not iv.contains(0.7500001)
    assert repr(iv) == "Interval(value=0.5, lo=0.25, hi=0.75)"
    noted = Interval(0.5, 0.25, 0.75, "why")
    back = eval(repr(noted), {"Interval": Interval})  # our own repr, no user input
    assert back == noted and back.note == "why"


@pytest.mark.parametrize("interval", [(0.0, math.nan, 0.1), (0.0, -0.1, math.nan)])
def test_paired_verdict_needs_both_bounds_finite(interval):
    with pytest.raises(ConfigError, match="'interval'"):
        paired_verdict(interval)
