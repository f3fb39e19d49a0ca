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


@pytest.mark.parametrize("T", [0.5, 2.0, 3.0])
def test_msp_and_energy_at_a_temperature(T):
    f = np.random.default_rng(4).normal(scale=3.0, size=(20, 6))
    np.testing.assert_allclose(
        create_detector("msp", T=T).score(None, f), softmax(f / T, axis=1).max(axis=1), rtol=1e-12
    )
    np.testing.assert_allclose(
        create_detector("energy", T=T).score(None, f), T * logsumexp(f / T, axis=1), rtol=1e-12
    )


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


@pytest.mark.parametrize("T", [2.0, 2.5])
def test_react_temperature_scales_the_energy(T):
    z, y, head, x = _problem(1)
    det = create_detector("react", percentile=80.0, T=T).fit(z, y, head)
    c = np.percentile(z, 80.0)
    logits = np.minimum(x, c) @ head.weight.T + head.bias
    np.testing.assert_allclose(
        det.score(x, head.logits(x)), T * logsumexp(logits / T, axis=1), rtol=1e-12
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


# --------------------------------------------------------------------------- percentile
def _percentile_cases():
    rng = np.random.default_rng(7)
    for n in range(1, 41):
        for kind in ("ties", "normal"):
            x = rng.integers(0, 5, n).astype(float) if kind == "ties" else rng.normal(size=n)
            cut = int(rng.integers(0, n + 1))
            yield x, [b for b in (x[:cut], x[cut:]) if b.size]


def test_blocks_percentile_equals_numpy_on_every_small_case():
    # every size up to 40, every 2.5th percentile, one or two blocks: where the bracket
    # is unbounded on one or both sides, or reaches the end of the sample
    for x, blocks in _percentile_cases():
        for q in np.arange(0.0, 100.01, 2.5):
            got = logit_mod.blocks_percentile(blocks, float(q))
            assert got == pytest.approx(np.percentile(x, q), rel=1e-14, abs=1e-14), (x, q)


def _strided(n, bracket_sample):
    """Positions of blocks_percentile's strided sample of one block of n entries."""
    return np.arange(0, n, max(1, n // bracket_sample) | 1)


def test_blocks_percentile_when_the_sample_sees_one_value(monkeypatch):
    # Three blocks whose strided sample (every 3rd entry of each block) is all 5.0: the
    # bracket is that single value. The other entries (20% of all below 5, the rest
    # above) decide where the percentile really is: below 5 (q = 10), at 5 (q = 50),
    # above 5 (q = 75). The counts must show which, over all blocks.
    monkeypatch.setattr(logit_mod, "BRACKET_SAMPLE", 10_000)
    rng = np.random.default_rng(8)
    blocks = []
    for _ in range(3):
        b = np.empty(10_000)
        sampled = np.zeros(b.size, dtype=bool)
        sampled[_strided(30_000, 10_000)[_strided(30_000, 10_000) < b.size]] = True
        b[sampled] = 5.0
        rest = np.flatnonzero(~sampled)
        low = rng.permutation(rest)[:2_000]
        b[rest] = rng.uniform(6.0, 10.0, rest.size)
        b[low] = rng.uniform(0.0, 4.0, low.size)
        blocks.append(b)
    x = np.concatenate(blocks)
    assert np.mean(x < 5) == pytest.approx(0.2) and np.mean(x == 5) > 1 / 3
    for q in (10.0, 50.0, 75.0):
        assert logit_mod.blocks_percentile(blocks, q) == pytest.approx(
            np.percentile(x, q), rel=1e-15
        ), q
    assert logit_mod.blocks_percentile(blocks, 50.0) == 5.0


@pytest.mark.parametrize("q", [50.0, 90.0])
def test_blocks_percentile_when_the_bracket_misses_by_one_rank_at_the_top(monkeypatch, q):
    # The strided sample holds the small values 0, 1, 2, ...; the bracket the docstring
    # describes (sample ranks f (m - 1) -+ (5 binomial sd + 2)) then ends at the sample
    # value i_high. Other entries are placed so that exactly hi entries are <= it: one
    # short of the order statistic at rank hi. The counts must show the miss and the
    # widened pass give numpy's value.
    monkeypatch.setattr(logit_mod, "BRACKET_SAMPLE", 1_000)
    n = 20_001
    pos = _strided(n, 1_000)
    m = pos.size
    f = q / 100.0
    margin = 5.0 * np.sqrt(m * f * (1.0 - f)) + 2.0
    i_high = int(np.ceil(f * (m - 1) + margin))
    hi = int(np.ceil(f * (n - 1)))
    x = 1e6 + np.arange(n, dtype=float)  # far above the sample
    x[pos] = np.arange(m, dtype=float)
    others = np.setdiff1d(np.arange(n), pos)
    x[others[: hi - (i_high + 1)]] = i_high - 0.5  # inside the bracket
    assert np.count_nonzero(x <= i_high) == hi
    assert logit_mod.blocks_percentile([x], q) == pytest.approx(np.percentile(x, q), rel=1e-15)


@pytest.mark.parametrize("n", [3_000, 200_000])  # the whole sample, and a 1-in-3 stride
def test_blocks_percentile_brackets_representative_data_in_one_pass(n, caplog):
    # The docstring: a miss is a fluke of the strided sample, and is logged when the
    # bracket widens. On i.i.d. values and on post-ReLU values (60% tied zeros, so the
    # bracket is a single value at low q) the one counting pass must suffice.
    rng = np.random.default_rng(11)
    normal = rng.normal(size=n)
    relu = np.maximum(rng.normal(loc=-0.25, size=n), 0.0)
    for x in (normal, relu):
        blocks = [x[: n // 3], x[n // 3 :]]
        for q in (0.0, 1.0, 10.0, 30.0, 50.0, 90.0, 99.0, 100.0):
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="ncood.detectors.logit"):
                got = logit_mod.blocks_percentile(blocks, q)
            assert got == pytest.approx(np.percentile(x, q), rel=1e-14, abs=1e-300), q
            assert "missed" not in caplog.text, q


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


# --------------------------------------------------------------------------- activation
def test_ash_p_keeps_exactly_the_top_10_percent_of_a_wide_feature():
    # D = 200, percentile 90: k = 200 - round(180) = 20 entries kept (an exact 10%)
    rng = np.random.default_rng(5)
    d, c = 200, 3
    z = np.abs(rng.normal(size=(50, d)))
    x = np.abs(rng.normal(size=(8, d)))
    head = LinearHead(rng.normal(size=(c, d)), rng.normal(size=c))
    det = create_detector("ash_p", percentile=90.0).fit(z, None, head)
    assert det.k_ == 20
    ref = []
    for row in x:
        kept = np.where(row >= np.sort(row)[-20], row, 0.0)  # continuous: no ties
        ref.append(logsumexp(head.weight @ kept + head.bias))
    np.testing.assert_allclose(det.score(x, head.logits(x)), ref, rtol=1e-12)


def test_sharpen_factor_is_one_where_the_kept_sum_is_not_positive():
    # the module docstring: where s2 <= 0 the sample is left unscaled (factor exactly 1),
    # whatever memory the result is written into
    from ncood.detectors.activation import sharpen_factor

    for _ in range(5):
        junk = np.full(4096, 123.0)  # a freed buffer of non-zero values to be reused
        del junk
        s1 = np.linspace(-3.0, 3.0, 4096)
        s2 = np.where(np.arange(4096) % 2 == 0, 0.0, -1.0)  # never positive
        np.testing.assert_array_equal(sharpen_factor(s1, s2), np.ones(4096))


def test_dice_sparsity_range_and_strictly_above_the_threshold():
    # p in [0, 100); the kept weights are those whose contribution is STRICTLY above the
    # p-th percentile (class docstring), which matters when contributions tie at it
    for bad in (-1.0, 100.0):
        with pytest.raises(ConfigError, match="'p' parameter of DICE"):
            create_detector("dice", p=bad)
    z = np.ones((10, 4))  # train mean m = 1: contributions = the weights
    w = np.array([[1.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 2.0]])  # 8 values, five 1.0s
    head = LinearHead(w, np.zeros(2))
    for p in (0.0, 50.0):
        det = create_detector("dice", p=p).fit(z, None, head)
        thr = np.percentile(w, p)  # 1.0 at both: the tied value
        assert det.threshold_ == thr == 1.0
        np.testing.assert_array_equal(det.weight_, np.where(w > thr, w, 0.0))


@pytest.mark.parametrize("name", ["ash_p", "scale", "fdbd", "nci", "she", "nnguide"])
def test_nan_train_features_are_named_by_every_reader(name):
    z, y, head, _ = _problem()
    z = z.copy()
    z[7, 2] = np.inf
    params = {"bank_fraction": 1.0, "k": 5} if name == "nnguide" else {}
    with pytest.raises(ShapeError, match="^train features contains 1 NaN/inf"):
        create_detector(name, **params).fit(z, y, head)


# --------------------------------------------------------------------------- classwise
def test_fdbd_with_two_classes():
    # one decision boundary: |f_0 - f_1| / ||w_0 - w_1||, divided by ||z - m||
    z, y, head, x = _problem(c=2)
    f = head.logits(x)
    m = z.mean(axis=0)
    ref = np.abs(f[:, 0] - f[:, 1]) / np.linalg.norm(head.weight[0] - head.weight[1])
    ref /= np.linalg.norm(x - m, axis=1)
    det = create_detector("fdbd").fit(z, y, head)
    np.testing.assert_allclose(det.score(x, f), ref, rtol=1e-12)


def test_nci_zero_weight_class_raises_and_unit_rows_are_fine():
    z, y, head, x = _problem()
    w = head.weight / np.linalg.norm(head.weight, axis=1, keepdims=True)  # unit rows
    det = create_detector("nci", alpha=0.0).fit(z, y, LinearHead(w, head.bias))
    d = x - z.mean(axis=0)
    f = x @ w.T + head.bias
    cos = np.einsum("ij,ij->i", d, w[f.argmax(axis=1)]) / np.linalg.norm(d, axis=1)
    np.testing.assert_allclose(det.score(x, f), cos, rtol=1e-12)
    w[2] = 0.0
    with pytest.raises(ConfigError, match="class 2 has an all-zero weight"):
        create_detector("nci").fit(z, y, LinearHead(w, head.bias))


def _rmds_ref(z, y, x, c):
    means = np.array([z[y == k].mean(axis=0) for k in range(c)])
    p = np.linalg.pinv((z - means[y]).T @ (z - means[y]) / len(z), hermitian=True)
    m = z.mean(axis=0)
    p0 = np.linalg.pinv((z - m).T @ (z - m) / len(z), hermitian=True)
    out = []
    for q in x:
        md = [(q - mu) @ p @ (q - mu) for mu in means]
        out.append((q - m) @ p0 @ (q - m) - min(md))
    return np.array(out), means


def test_rmds_class_with_one_sample_and_a_query_at_a_class_mean():
    z, y, head, x = _problem(3, n=300, d=6, c=4)
    y = y.copy()
    y[y == 3] = 0
    y[0] = 3  # class 3 has a single train sample
    x = np.vstack([x, z[y == 1].mean(axis=0), z[0]])  # two queries at class means
    ref, _ = _rmds_ref(z, y, x, 4)
    det = create_detector("rmds").fit(z, y, head)
    got = det.score(x, head.logits(x))
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-8)


def _she_problem():
    z, y, head, x = _problem(4, n=200, d=6, c=4)
    pred = head.logits(z).argmax(axis=1)
    return z, y, head, x, pred


def test_she_counts_and_label_checks():
    z, y, head, x, pred = _she_problem()
    det = create_detector("she").fit(z, y, head)
    correct = pred == y
    np.testing.assert_array_equal(det.n_correct_, [np.sum(correct & (y == k)) for k in range(4)])
    bad = y.copy()
    bad[5] = 4  # a label outside [0, C)
    with pytest.raises(ShapeError, match="labels"):
        create_detector("she").fit(z, bad, head)
    missing = np.where(y == 3, 0, y)  # no train sample of the last class
    with pytest.raises(ShapeError, match=r"classes \[3\] have none"):
        create_detector("she").fit(z, missing, head)


def test_she_class_with_a_single_correct_sample():
    z, y, head, x, pred = _she_problem()
    y = pred.copy()  # every sample correct ...
    i = int(np.flatnonzero(pred == 2)[0])
    y[(y == 2) & (np.arange(len(y)) != i)] = (pred[(y == 2) & (np.arange(len(y)) != i)] + 1) % 4
    assert np.sum(y == 2) == 1  # ... and class 2 holds one (correct) sample
    det = create_detector("she").fit(z, y, head)
    np.testing.assert_allclose(det.patterns_[2], z[i], rtol=1e-12)


# --------------------------------------------------------------------------- neighbors
def _knn_brute(train, queries, k):
    u = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = np.sqrt(((q[:, None, :] - u[None, :, :]) ** 2).sum(axis=2))
    return -np.sort(d, axis=1)[:, k - 1]


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_knn_small_k_matches_brute_force(k):
    z, y, head, x = _problem(6, n=300)
    det = create_detector("knn", k=k, index_dtype="float64").fit(z, y, head)
    np.testing.assert_allclose(det.score(x, head.logits(x)), _knn_brute(z, x, k), rtol=1e-10)


def test_knn_labels_outside_the_head_raise():
    z, y, head, _ = _problem()
    bad = y.copy()
    bad[3] = head.num_classes
    with pytest.raises(ShapeError, match="labels"):
        create_detector("knn").fit(z, bad, head)


@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("row", [0, 5000])
def test_knn_nan_train_features_are_named(labelled, row):
    rng = np.random.default_rng(7)
    z = rng.normal(size=(5100, 3))
    z[row, 1] = np.nan
    y = rng.integers(0, 2, 5100) if labelled else None
    head = LinearHead(rng.normal(size=(2, 3)), np.zeros(2))
    with pytest.raises(ShapeError, match="^train features contains 1 NaN/inf"):
        create_detector("knn", k=5).fit(z, y, head)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_knn_stores_in_the_index_dtype_and_reports_its_backend(dtype):
    z, y, head, _ = _problem()
    det = create_detector("knn", k=5, index_dtype=dtype, backend="auto").fit(z, y, head)
    assert det.train_.dtype == np.dtype(dtype) and det.train_sq_.dtype == np.dtype(dtype)
    assert det.n_anchors_ > 1 and det.backend_ == "numpy"  # several anchors: grouped numpy


def test_knn_faiss_with_small_class_groups_matches_brute_force():
    pytest.importorskip("faiss")
    z, y, head, x = _problem(8, n=60, c=4)  # ~15 rows per class < the shortlist of 26
    det = create_detector("knn", k=5, backend="faiss").fit(z, y, head)
    assert det.backend_ == "faiss" and det.n_anchors_ == 4
    np.testing.assert_allclose(det.score(x, head.logits(x)), _knn_brute(z, x, 5), rtol=1e-5)


def test_nnguide_parameters_and_defaults():
    # OpenOOD v1.5's config (class docstring): k = 100, bank_fraction = 0.01
    assert create_detector("nnguide").get_params() == {"k": 100, "bank_fraction": 0.01}
    for params in ({"k": 0}, {"k": 2.5}, {"k": -1}):
        with pytest.raises(ConfigError, match="^The 'k' parameter of NNGuide must be an int"):
            create_detector("nnguide", **params)
    with pytest.raises(ConfigError, match="'bank_fraction' parameter of NNGuide"):
        create_detector("nnguide", bank_fraction=1.5)
    create_detector("nnguide", k=1, bank_fraction=1.0)  # both ends allowed
    with pytest.raises(ConfigError, match="'k' parameter of KNN"):
        create_detector("knn", k=2.5)


def _nnguide_ref(z, head, x, k, fraction):
    n = len(z)
    n_bank = min(n, max(k, int(np.ceil(fraction * n))))
    rows = np.unique(np.round(np.linspace(0, n - 1, n_bank)).astype(int))
    u = z[rows] / np.linalg.norm(z[rows], axis=1, keepdims=True)
    bank = u * logsumexp(head.logits(z[rows]), axis=1)[:, None]
    q = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = np.sort(q @ bank.T, axis=1)[:, ::-1][:, :k]
    return logsumexp(head.logits(x), axis=1) * sims.mean(axis=1)


def test_nnguide_k_equal_to_n_and_sparse_banks_read_in_small_chunks(monkeypatch):
    import ncood.detectors.neighbors as nb

    z, y, head, x = _problem(9, n=120)
    det = create_detector("nnguide", k=120, bank_fraction=1.0).fit(z, y, head)
    np.testing.assert_allclose(
        det.score(x, head.logits(x)), _nnguide_ref(z, head, x, 120, 1.0), rtol=1e-9
    )
    # chunks of 3 rows, a bank row every ~12: most chunks hold no bank row
    monkeypatch.setattr(nb, "pass_rows", lambda width: 3)
    det = create_detector("nnguide", k=3, bank_fraction=0.08).fit(z, y, head)
    np.testing.assert_allclose(
        det.score(x, head.logits(x)), _nnguide_ref(z, head, x, 3, 0.08), rtol=1e-9
    )


def test_knn_auto_backend_without_faiss_is_numpy(monkeypatch):
    # one anchor (no labels), float32: faiss would be chosen; without it, numpy
    import ncood.detectors.neighbors as nb

    z, _, head, x = _problem(10)
    monkeypatch.setattr(nb, "_faiss", lambda: None)
    det = create_detector("knn", k=5, backend="auto").fit(z, None, head)
    assert det.n_anchors_ == 1 and det.backend_ == "numpy"
    np.testing.assert_allclose(det.score(x, head.logits(x)), _knn_brute(z, x, 5), rtol=1e-6)
