"""Bootstrap intervals, paired comparisons and the Spearman relation (DESIGN.md section 8).

Every vectorised result is checked against a plain Python loop over replicates that draws
the same indices from the same generators and calls the single-pair metric functions (or
``scipy.stats.spearmanr``); closed forms and a coverage simulation check the rest.
"""

from __future__ import annotations

import math
import pickle
import statistics

import numpy as np
import pytest
from scipy.stats import norm, spearmanr

import ncood.metrics as metrics_mod
from ncood.errors import ConfigError, ShapeError
from ncood.metrics import (
    METRIC_NAMES,
    Interval,
    aupr_in,
    aupr_out,
    auroc,
    bootstrap_generators,
    bootstrap_ood_metrics,
    bootstrap_replicates,
    fpr_at_tpr,
    fpr_at_tpr_oodpos,
    fpr_at_tpr_point,
    mean_std,
    ood_metrics,
    paired_auroc_difference,
    paired_verdict,
    spearman_ci,
)

SINGLE = {
    "auroc": auroc,
    "aupr_in": aupr_in,
    "aupr_out": aupr_out,
    "fpr95": fpr_at_tpr,
    "fpr95_oodpos": fpr_at_tpr_oodpos,
}


def _loop_indices(n_id, n_ood, n_boot, seed):
    """The documented draws, one replicate at a time (no blocks)."""
    g_id, g_ood = bootstrap_generators(seed)
    for _ in range(n_boot):
        yield g_id.integers(0, n_id, size=n_id), g_ood.integers(0, n_ood, size=n_ood)


def _loop_replicates(id_s, ood_s, n_boot, seed):
    out = {k: [] for k in SINGLE}
    for i, o in _loop_indices(id_s.size, ood_s.size, n_boot, seed):
        for k, f in SINGLE.items():
            out[k].append(f(id_s[i], ood_s[o]))
    return {k: np.array(v) for k, v in out.items()}


def _scores(seed, n_id, n_ood, decimals):
    rng = np.random.default_rng(seed)
    id_s = rng.normal(0.8, 1.0, n_id)
    ood_s = rng.normal(0.0, 1.0, n_ood)
    if decimals is not None:  # rounding makes ties within and across the two sets
        id_s, ood_s = np.round(id_s, decimals), np.round(ood_s, decimals)
    return id_s, ood_s


# --------------------------------------------------------------------------- bootstrap
@pytest.mark.parametrize(
    "n_id, n_ood, decimals",
    [(2, 3, 1), (7, 5, 0), (19, 20, 1), (20, 23, 1), (101, 57, 1), (333, 250, 2), (400, 300, None)],
)
def test_replicates_equal_plain_loop(n_id, n_ood, decimals):
    id_s, ood_s = _scores(n_id * 1000 + n_ood, n_id, n_ood, decimals)
    if decimals == 1 and n_id == 2:
        id_s, ood_s = np.array([0.3, 1.2]), np.array([0.1, 0.5, 0.9])  # never constant
    reps = bootstrap_replicates(id_s, ood_s, n_boot=60, seed=11)
    loop = _loop_replicates(id_s, ood_s, 60, 11)
    assert set(reps) == set(METRIC_NAMES)
    for k in METRIC_NAMES:
        assert reps[k].shape == (60,) and reps[k].dtype == np.float64
        np.testing.assert_allclose(reps[k], loop[k], rtol=0, atol=1e-12, err_msg=k)
    # the resamples really vary (the test would pass trivially on a constant)
    assert np.ptp(reps["auroc"]) > 0


def test_replicates_single_id_sample_and_integer_lists():
    # n_id = 1: k = floor(0.95) = 0, fpr95 is 0 by definition; integer lists are accepted
    id_s, ood_s = [7], [1, 9, 3, 7, 5, 2]
    reps = bootstrap_replicates(id_s, ood_s, n_boot=30, seed=2)
    loop = _loop_replicates(np.array(id_s, float), np.array(ood_s, float), 30, 2)
    assert not reps["fpr95"].any()
    for k in METRIC_NAMES:
        np.testing.assert_allclose(reps[k], loop[k], rtol=0, atol=1e-12, err_msg=k)


def test_replicates_equal_loop_at_scale_without_ties():
    id_s, ood_s = _scores(5, 10_000, 10_000, None)
    reps = bootstrap_replicates(id_s, ood_s, n_boot=12, seed=3)
    loop = _loop_replicates(id_s, ood_s, 12, 3)
    for k in METRIC_NAMES:
        np.testing.assert_allclose(reps[k], loop[k], rtol=0, atol=1e-12, err_msg=k)


def test_blocks_do_not_change_the_replicates(monkeypatch):
    id_s, ood_s = _scores(1, 150, 90, 1)
    whole = bootstrap_replicates(id_s, ood_s, n_boot=37, seed=4)
    monkeypatch.setattr(metrics_mod, "_BLOCK_ELEMENTS", 3 * 240 + 1)  # blocks of 3 + a tail
    blocked = bootstrap_replicates(id_s, ood_s, n_boot=37, seed=4)
    for k in METRIC_NAMES:
        np.testing.assert_array_equal(whole[k], blocked[k])


def test_interval_is_the_percentile_of_the_loop_replicates():
    id_s, ood_s = _scores(2, 300, 200, 1)
    got = bootstrap_ood_metrics(id_s, ood_s, n_boot=200, seed=9, level=0.9)
    loop = _loop_replicates(id_s, ood_s, 200, 9)
    point = ood_metrics(id_s, ood_s)
    for k in METRIC_NAMES:
        value, lo, hi = got[k]
        assert value == point[k]
        assert lo == pytest.approx(np.quantile(loop[k], 0.05), abs=1e-12)
        assert hi == pytest.approx(np.quantile(loop[k], 0.95), abs=1e-12)
        assert lo <= value <= hi


def test_seed_reproducible_generator_accepted_and_metric_subset():
    id_s, ood_s = _scores(3, 200, 200, None)
    a = bootstrap_ood_metrics(id_s, ood_s, n_boot=50, seed=1)
    assert a == bootstrap_ood_metrics(id_s, ood_s, n_boot=50, seed=1)
    assert a != bootstrap_ood_metrics(id_s, ood_s, n_boot=50, seed=2)
    g1 = bootstrap_ood_metrics(id_s, ood_s, n_boot=50, seed=np.random.default_rng(7))
    assert g1 == bootstrap_ood_metrics(id_s, ood_s, n_boot=50, seed=np.random.default_rng(7))
    sub = bootstrap_ood_metrics(id_s, ood_s, n_boot=50, seed=1, metrics=("fpr95", "auroc"))
    assert list(sub) == ["fpr95", "auroc"] and sub["auroc"] == a["auroc"]
    assert bootstrap_ood_metrics(id_s, ood_s, n_boot=50, seed=1, metrics="auroc") == {
        "auroc": a["auroc"]
    }


def test_constant_resample_gets_the_tie_values():
    # ID {0, 1}, OOD {1}: a replicate drawing ID {1, 1} is all ties -> AUROC 0.5 exactly,
    # where ood_metrics would refuse the constant scores.
    reps = bootstrap_replicates([0.0, 1.0], [1.0], n_boot=40, seed=0)
    for (i, _), a in zip(_loop_indices(2, 1, 40, 0), reps["auroc"], strict=True):
        expected = {0: 0.0, 1: 0.25, 2: 0.5}[int(i.sum())]  # number of ID draws at 1.0
        assert a == expected


def test_coverage_of_the_auroc_interval():
    # Gaussian shift d: the true AUROC is Phi(d / sqrt 2). 200 independent data sets;
    # a 95% percentile interval should cover it about 95% of the time.
    d, n, hits = 1.0, 150, 0
    truth = norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(2024)
    for rep in range(200):
        ci = bootstrap_ood_metrics(
            rng.normal(d, 1, n), rng.normal(0, 1, n), n_boot=300, seed=rep, metrics="auroc"
        )["auroc"]
        hits += ci.lo <= truth <= ci.hi
    assert 0.88 <= hits / 200 <= 0.99


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_boot": 0}, "'n_boot'"),
        ({"n_boot": 2.5}, "'n_boot'"),
        ({"level": 1.0}, "'level'"),
        ({"level": 0}, "'level'"),
        ({"metrics": ("auroc", "auc")}, "unknown: \\['auc'\\]"),
        ({"metrics": ()}, "empty"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        bootstrap_ood_metrics([1.0, 2.0], [0.0], **kwargs)


def test_degenerate_scores_raise_like_ood_metrics():
    with pytest.raises(ShapeError, match="constant"):
        bootstrap_ood_metrics([1.0, 1.0], [1.0])
    with pytest.raises(ShapeError, match="NaN"):
        bootstrap_ood_metrics([1.0, np.nan], [0.0])


def test_interval_tuple_behaviour():
    iv = Interval(0.5, 0.4, 0.6)
    value, lo, hi = iv
    assert (value, lo, hi) == (0.5, 0.4, 0.6) and iv == (0.5, 0.4, 0.6)
    assert iv.note == "" and iv.contains(0.45) and not iv.contains(0.7)
    noted = Interval(math.nan, math.nan, math.nan, "why")
    assert noted.note == "why" and "why" in repr(noted) and not noted.contains(0.0)
    assert pickle.loads(pickle.dumps(noted)).note == "why"


# --------------------------------------------------------------------------- paired
def _paired_loop(a, b, n_boot, seed):
    (ia, oa), (ib, ob) = a, b
    return np.array(
        [
            auroc(ia[i], oa[o]) - auroc(ib[i], ob[o])
            for i, o in _loop_indices(ia.size, oa.size, n_boot, seed)
        ]
    )


def test_paired_difference_equals_plain_loop():
    rng = np.random.default_rng(0)
    ia, oa = np.round(rng.normal(1, 1, 300), 1), np.round(rng.normal(0, 1, 200), 1)
    ib = np.round(ia + rng.normal(0, 0.7, 300), 1)  # B: a noisier version of A
    ob = np.round(oa + rng.normal(0, 0.7, 200), 1)
    diff, lo, hi = paired_auroc_difference(ia, oa, ib, ob, n_boot=150, seed=5)
    loop = _paired_loop((ia, oa), (ib, ob), 150, 5)
    assert diff == pytest.approx(auroc(ia, oa) - auroc(ib, ob), abs=1e-15)
    assert lo == pytest.approx(np.quantile(loop, 0.025), abs=1e-12)
    assert hi == pytest.approx(np.quantile(loop, 0.975), abs=1e-12)


def test_paired_interval_is_narrower_than_unpaired():
    # Same samples, correlated scores: pairing removes the shared sampling noise.
    rng = np.random.default_rng(1)
    ia, oa = rng.normal(1, 1, 400), rng.normal(0, 1, 400)
    ib, ob = ia + rng.normal(0, 0.2, 400), oa + rng.normal(0, 0.2, 400)
    _, lo, hi = paired_auroc_difference(ia, oa, ib, ob, n_boot=300, seed=0)
    ra = bootstrap_replicates(ia, oa, n_boot=300, seed=1, metrics="auroc")["auroc"]
    rb = bootstrap_replicates(ib, ob, n_boot=300, seed=2, metrics="auroc")["auroc"]
    unpaired = np.quantile(ra - rb, [0.025, 0.975])
    assert hi - lo < 0.5 * (unpaired[1] - unpaired[0])


def test_paired_verdicts():
    rng = np.random.default_rng(2)
    ia, oa = rng.normal(1.5, 1, 500), rng.normal(0, 1, 500)
    weak_i, weak_o = ia + rng.normal(0, 2, 500), oa + rng.normal(0, 2, 500)
    assert paired_verdict(paired_auroc_difference(ia, oa, weak_i, weak_o)) == "a_better"
    assert paired_verdict(paired_auroc_difference(weak_i, weak_o, ia, oa)) == "b_better"
    # a strictly increasing transform keeps every ranking: difference 0 in every replicate
    same = paired_auroc_difference(ia, oa, np.exp(ia / 3), np.exp(oa / 3), n_boot=100)
    assert same == (0.0, 0.0, 0.0) and paired_verdict(same) == "about_equal"
    assert paired_verdict((0.01, -0.002, 0.02)) == "about_equal"
    assert paired_verdict((0.01, 0.0, 0.02)) == "about_equal"  # contains 0
    with pytest.raises(ConfigError, match="'interval'"):
        paired_verdict((math.nan, math.nan, math.nan))


def test_paired_needs_the_same_samples():
    with pytest.raises(ShapeError, match="same ID samples"):
        paired_auroc_difference([1.0, 2.0], [0.0], [1.0, 2.0, 3.0], [0.0])
    with pytest.raises(ShapeError, match="same OOD samples"):
        paired_auroc_difference([1.0, 2.0], [0.0], [1.0, 2.0], [0.0, 1.0])


# --------------------------------------------------------------------------- relation
@pytest.mark.parametrize("n, decimals", [(3, None), (4, 0), (12, 1), (40, 0), (200, 1)])
def test_spearman_rho_matches_scipy_with_ties(n, decimals):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = x + rng.normal(size=n)
    if decimals is not None:
        x, y = np.round(x, decimals), np.round(y, decimals)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        pytest.skip("constant draw")
    rho, lo, hi = spearman_ci(x, y, n_boot=50)
    assert rho == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert -1.0 <= lo <= hi <= 1.0


def test_spearman_interval_equals_plain_loop():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=25), 1)
    y = np.round(-x + rng.normal(size=25), 0)
    got = spearman_ci(x, y, n_boot=300, seed=8, level=0.9)
    gen = np.random.default_rng(8)
    loop = []
    for _ in range(300):
        i = gen.integers(0, 25, size=25)
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            loop.append(spearmanr(x[i], y[i]).statistic)
    assert got.lo == pytest.approx(np.quantile(loop, 0.05), abs=1e-12)
    assert got.hi == pytest.approx(np.quantile(loop, 0.95), abs=1e-12)
    assert got.value < 0 and got.hi < 0  # a clear negative relation


def test_spearman_small_sample_left_out_replicates_are_counted():
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 2.0, 3.0]
    got = spearman_ci(x, y, n_boot=200, seed=0)
    gen = np.random.default_rng(0)
    n_const = sum(
        np.ptp(np.asarray(x)[i]) == 0 or np.ptp(np.asarray(y)[i]) == 0
        for i in (gen.integers(0, 4, size=4) for _ in range(200))
    )
    assert n_const > 0 and got.note.startswith(f"{n_const} of 200 replicates left out")


def test_spearman_perfect_monotone_relation():
    x = np.arange(10.0)
    rho, lo, hi = spearman_ci(x, x**3, n_boot=100)
    assert (rho, lo, hi) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "x, y, reason",
    [
        ([1.0, 2.0], [3.0, 1.0], "2 point(s)"),
        ([], [], "0 point(s)"),
        ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], "x is constant"),
        ([1.0, 2.0, 3.0], [5.0, 5.0, 5.0], "y is constant"),
    ],
)
def test_spearman_undefined_is_nan_with_a_reason(x, y, reason):
    got = spearman_ci(x, y)
    assert all(math.isnan(v) for v in got)
    assert reason in got.note


def test_spearman_bad_input_raises():
    with pytest.raises(ShapeError, match="same points"):
        spearman_ci([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ShapeError, match="NaN"):
        spearman_ci([1.0, np.nan, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ShapeError, match="1-D"):
        spearman_ci([[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]])
    with pytest.raises(ConfigError, match="'n_boot'"):
        spearman_ci([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], n_boot=0)


# --------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("n_id", [1, 2, 19, 20, 21, 100, 237])
def test_fpr_operating_point_matches_definition(n_id):
    rng = np.random.default_rng(n_id)
    id_s = np.round(rng.normal(1, 1, n_id), 1)
    ood_s = np.round(rng.normal(0, 1, 150), 1)
    if n_id == 1:
        id_s = np.array([0.5])
    t, fpr, tpr = fpr_at_tpr_point(id_s, ood_s)
    assert fpr == fpr_at_tpr(id_s, ood_s)
    k = (95 * n_id) // 100  # floor(0.95 n_id) in exact integer arithmetic
    if k == 0:
        assert (t, fpr, tpr) == (math.inf, 0.0, 0.0)
        return
    assert t == sorted(id_s, reverse=True)[k - 1]
    assert fpr == np.mean(ood_s >= t) and tpr == np.mean(id_s >= t) and tpr >= k / n_id


def test_mean_std_over_seeds():
    v = [0.91, 0.93, 0.96]
    assert mean_std(v) == pytest.approx((statistics.mean(v), statistics.stdev(v)), abs=1e-15)
    m, s = mean_std([0.9])
    assert m == 0.9 and math.isnan(s)
    with pytest.raises(ShapeError, match="empty"):
        mean_std([])
