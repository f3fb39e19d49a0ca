"""Round-2 detectors (issue 13) against independent per-sample computations of their
formulas (plain loops, scipy, scikit-learn), each with a case that is easy to get wrong,
plus the registry contract for every registered detector on post-ReLU data."""

from __future__ import annotations

import logging

import mpmath
import numpy as np
import pytest
from scipy.linalg import pinvh
from scipy.spatial.distance import cosine
from scipy.special import logsumexp, softmax
from scipy.stats import entropy
from sklearn.covariance import EmpiricalCovariance

from ncood.collapse import ClassStats
from ncood.detectors import create_detector, detector_class, list_detectors
from ncood.errors import ConfigError, NotFittedError, ShapeError
from ncood.metrics import auroc
from ncood.types import LinearHead

ZOO = (
    "gen",
    "entropy",
    "kl_matching",
    "rmds",
    "fdbd",
    "nci",
    "she",
    "scale",
    "ash_s",
    "ash_p",
    "ash_b",
    "dice",
    "nnguide",
)


# --------------------------------------------------------------------------- data
def _sparse_relu(seed=0, n=500, d=64, c=4, n_query=200):
    """Post-ReLU features: ID = dense positive class prototypes + noise, and a head that
    classifies them; OOD = a few strong units at random positions, small elsewhere."""
    rng = np.random.default_rng(seed)
    proto = 2.0 * np.abs(rng.normal(size=(c, d))) + 1.0  # (C, D)
    centred = proto - proto.mean(axis=0)
    head = LinearHead(centred, -0.5 * (centred**2).sum(axis=1) - centred @ proto.mean(axis=0))
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)

    def draw(m, labels):
        return np.maximum(proto[labels] + 0.5 * rng.normal(size=(m, d)), 0.0)

    z = draw(n, y)
    x = draw(n_query, rng.integers(0, c, n_query))
    o = np.maximum(0.3 * rng.normal(size=(n_query, d)), 0.0)
    np.put_along_axis(o, rng.integers(0, d, (n_query, 6)), 2.0, axis=1)
    return z, y, head, x, o


class Small:
    """Small post-ReLU problem with a random head, a dead unit and ragged classes."""

    def __init__(self, seed=1, n=300, d=12, c=5, n_query=40):
        rng = np.random.default_rng(seed)
        proto = np.maximum(rng.normal(size=(c, d)), 0.0) * 3.0
        self.y = rng.integers(0, c, n)
        self.y[:c] = np.arange(c)
        self.Z = np.maximum(proto[self.y] + rng.normal(size=(n, d)), 0.0)
        self.Z[:, 3] = 0.0  # a dead ReLU unit: rank-deficient covariances
        self.head = LinearHead(rng.normal(size=(c, d)), rng.normal(size=c))
        self.X = np.maximum(
            proto[rng.integers(0, c, n_query)] + 2 * rng.normal(size=(n_query, d)), 0
        )
        self.X[:3, 3] = 1.5  # queries that wake the dead unit
        self.F = self.head.logits(self.X)


@pytest.fixture(scope="module")
def small():
    return Small()


@pytest.fixture(scope="module")
def relu_blobs():
    return _sparse_relu()


# --------------------------------------------------------------------------- logit family
def _gen_ref(f, gamma, m):
    out = []
    for row in f:
        lse = logsumexp(row)
        p = np.exp(row - lse)
        # 1 - p_i from the log-sum-exp of the other logits: never 1 - p_i
        q = np.array([np.exp(logsumexp(np.delete(row, i)) - lse) for i in range(len(row))])
        order = np.argsort(-p)[: min(m, len(row))]
        out.append(-sum(p[i] ** gamma * q[i] ** gamma for i in order))
    return np.array(out)


@pytest.mark.parametrize("gamma, m", [(0.1, 100), (0.5, 2), (2.0, 3)])
def test_gen_matches_per_sample_reference(small, gamma, m):
    det = create_detector("gen", gamma=gamma, M=m)
    np.testing.assert_allclose(det.score(None, small.F), _gen_ref(small.F, gamma, m), rtol=1e-12)


def test_gen_keeps_confident_samples_apart():
    # 1 - p_max is ~1e-21 here: formed as 1 - p it is exactly 0 and the two rows tie
    f = np.array([[50.0, 0.0, 0.0, 0.0], [48.0, 0.0, 0.0, 0.0]])
    s = create_detector("gen").score(None, f)
    np.testing.assert_allclose(s, _gen_ref(f, 0.1, 100), rtol=1e-12)
    assert s[0] > s[1]  # the more confident row is more ID
    naive = -np.sum(softmax(f, axis=1) ** 0.1 * (1 - softmax(f, axis=1)) ** 0.1, axis=1)
    assert abs(naive[0] - s[0]) > 1e-3  # the naive complement really loses this term


def test_gen_defaults_pinned():
    assert create_detector("gen").get_params() == {"gamma": 0.1, "M": 100}


def _entropy_mp(row):
    """Negative entropy of softmax(row) in 50-digit arithmetic."""
    with mpmath.workdps(50):
        e = [mpmath.exp(mpmath.mpf(float(v))) for v in row]
        total = mpmath.fsum(e)
        return float(mpmath.fsum(x / total * mpmath.log(x / total) for x in e if x > 0))


def test_entropy_matches_high_precision_including_underflow(small):
    f = np.vstack([small.F, [[0.0, -1000.0, -1000.0, 3.0, 1.0]]])  # p underflows to 0
    ref = np.array([_entropy_mp(row) for row in f])
    s = create_detector("entropy").score(None, f)
    assert np.isfinite(s).all()
    # relative precision also for the confident rows (entropy ~1e-10 and below), where
    # f - logsumexp(f) keeps only a few digits of log p_max
    np.testing.assert_allclose(s, ref, rtol=1e-12)
    np.testing.assert_allclose(
        [-entropy(softmax(row)) for row in f], ref, rtol=1e-9, atol=1e-14
    )  # scipy agrees to its own precision
    assert s[np.argmax(f.max(axis=1) - np.sort(f, axis=1)[:, -2])] == pytest.approx(s.max())


def test_kl_matching_matches_loop_reference(small):
    head = LinearHead(small.head.weight, small.head.bias + np.array([0, 0, 0, 0, -1e3]))
    det = create_detector("kl_matching").fit(small.Z, small.y, head)
    logits = head.logits(small.Z)
    pred = logits.argmax(axis=1)
    templates = []
    for c in range(5):  # class 4 is never predicted: one-hot template
        rows = [softmax(logits[i]) for i in range(len(pred)) if pred[i] == c]
        templates.append(np.mean(rows, axis=0) if rows else np.eye(5)[c])
    np.testing.assert_allclose(det.templates_, np.array(templates), rtol=1e-12, atol=1e-300)
    f = head.logits(small.X)
    ref = [-min(entropy(softmax(row), t) for t in templates) for row in f]
    np.testing.assert_allclose(det.score(small.X, f), ref, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- class geometry
def test_rmds_matches_sklearn_covariances_and_loops(small):
    z, y = small.Z, small.y
    means = np.array([z[y == c].mean(axis=0) for c in range(5)])
    within = EmpiricalCovariance().fit(z - means[y]).covariance_
    total = EmpiricalCovariance().fit(z).covariance_
    p, p0 = pinvh(within), pinvh(total)  # the dead unit makes both singular
    ref = []
    for x in small.X:
        t0 = x - z.mean(axis=0)
        rel = [(x - mu) @ p @ (x - mu) - t0 @ p0 @ t0 for mu in means]
        ref.append(-min(rel))  # the background is SUBTRACTED inside the min
    det = create_detector("rmds").fit(z, y, small.head)
    np.testing.assert_allclose(det.score(small.X, small.F), ref, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("distance", [True, False])
def test_fdbd_matches_loop_reference(small, distance):
    w, m = small.head.weight, small.Z.mean(axis=0)
    ref = []
    for x, f in zip(small.X, small.F, strict=True):
        k = int(np.argmax(f))
        terms = [abs(f[k] - f[c]) / np.linalg.norm(w[k] - w[c]) for c in range(5) if c != k]
        ref.append(np.mean(terms) / np.linalg.norm(x - m if distance else x))
    det = create_detector("fdbd", distance_as_normalizer=distance).fit(small.Z, small.y, small.head)
    np.testing.assert_allclose(det.score(small.X, small.F), ref, rtol=1e-12)


def test_fdbd_identical_class_weights_raise(small):
    w = small.head.weight.copy()
    w[2] = w[0]
    with pytest.raises(ConfigError, match="classes 0 and 2 have identical weight"):
        create_detector("fdbd").fit(small.Z, small.y, LinearHead(w, small.head.bias))


@pytest.mark.parametrize("alpha", [1e-4, 0.1])
def test_nci_matches_scipy_cosine(small, alpha):
    m = small.Z.mean(axis=0)
    w = small.head.weight
    ref = [
        1.0 - cosine(x - m, w[int(np.argmax(f))]) + alpha * np.sum(np.abs(x))
        for x, f in zip(small.X, small.F, strict=True)
    ]
    det = create_detector("nci", alpha=alpha).fit(small.Z, small.y, small.head)
    np.testing.assert_allclose(det.score(small.X, small.F), ref, rtol=1e-12)
    assert create_detector("nci").alpha == 1e-4


def test_she_patterns_use_correct_predictions_only(small, caplog):
    z, y, head = small.Z, small.y, small.head
    pred = head.logits(z).argmax(axis=1)
    with caplog.at_level(logging.WARNING, logger="ncood.detectors.classwise"):
        det = create_detector("she").fit(z, y, head)
    patterns = []
    for c in range(5):
        rows = [z[i] for i in range(len(z)) if y[i] == c and pred[i] == c]
        if not rows:
            assert "no correctly classified" in caplog.text
            rows = [z[i] for i in range(len(z)) if y[i] == c]
        patterns.append(np.mean(rows, axis=0))
    np.testing.assert_allclose(det.patterns_, patterns, rtol=1e-12)
    ref = [x @ patterns[int(np.argmax(f))] for x, f in zip(small.X, small.F, strict=True)]
    np.testing.assert_allclose(det.score(small.X, small.F), ref, rtol=1e-12)


def test_she_falls_back_when_a_class_is_never_correct(small, caplog):
    head = LinearHead(small.head.weight, small.head.bias + np.array([0, 0, -1e3, 0, 0]))
    with caplog.at_level(logging.WARNING, logger="ncood.detectors.classwise"):
        det = create_detector("she").fit(small.Z, small.y, head)
    assert det.n_correct_[2] == 0 and "(e.g. [2])" in caplog.text
    np.testing.assert_allclose(det.patterns_[2], small.Z[small.y == 2].mean(axis=0))


# --------------------------------------------------------------------------- activation shaping
def _kept(x, percentile):
    """Reference pruning: keep the entries at or above the k-th largest, k from the
    percentile as the authors' code rounds it; everything else zero."""
    d = len(x)
    k = d - round(d * percentile / 100)
    kth_largest = np.sort(x)[::-1][k - 1]
    return np.where(x >= kth_largest, x, 0.0), k


def _energy(head, v):
    return logsumexp(head.weight @ v + head.bias)


def _shaping_ref(name, x, head, percentile):
    kept, k = _kept(x, percentile)
    if name == "scale":
        v = x * np.exp(x.sum() / kept.sum())
    elif name == "ash_s":
        v = kept * np.exp(x.sum() / kept.sum())
    elif name == "ash_p":
        v = kept
    else:  # ash_b
        v = np.where(kept > 0, x.sum() / k, 0.0)
    return _energy(head, v)


@pytest.mark.parametrize("name", ["scale", "ash_s", "ash_p", "ash_b"])
@pytest.mark.parametrize("percentile", [None, 65.0, 95.0])
def test_activation_shaping_matches_reference(small, name, percentile):
    # continuous positive queries: no ties at the cut, every kept entry > 0
    x = np.abs(np.random.default_rng(3).normal(size=(30, 12))) + 0.1
    params = {} if percentile is None else {"percentile": percentile}
    det = create_detector(name, **params).fit(small.Z, small.y, small.head)
    p = det.percentile
    ref = [_shaping_ref(name, row, small.head, p) for row in x]
    np.testing.assert_allclose(det.score(x, small.head.logits(x)), ref, rtol=1e-12)


def test_activation_shaping_defaults_pinned():
    assert create_detector("scale").percentile == 85
    for name in ("ash_s", "ash_p", "ash_b"):
        assert create_detector(name).percentile == 90
    assert create_detector("dice").p == 90


def test_pruning_keeps_the_largest_entries(small):
    # D=12, percentile 75: k = 3 kept; the largest three are the last three entries
    x = np.arange(1.0, 13.0)[None, :]
    det = create_detector("ash_p", percentile=75).fit(small.Z, small.y, small.head)
    assert det.k_ == 3
    kept = np.r_[np.zeros(9), 10.0, 11.0, 12.0]
    np.testing.assert_allclose(det.score(x, None), [_energy(small.head, kept)], rtol=1e-12)


def test_shaping_keeps_nothing_raises(small):
    with pytest.raises(ConfigError, match="keeps no entry of D=12"):
        create_detector("ash_b", percentile=99.99).fit(small.Z, small.y, small.head)
    with pytest.raises(ConfigError, match="'percentile' parameter of SCALE"):
        create_detector("scale", percentile=100)


def test_shaping_leaves_an_all_zero_sample_unscaled(small):
    x = np.zeros((1, 12))
    for name in ("scale", "ash_s", "ash_p", "ash_b"):
        det = create_detector(name).fit(small.Z, small.y, small.head)
        np.testing.assert_allclose(det.score(x, None), [logsumexp(small.head.bias)])


@pytest.mark.parametrize("p", [90.0, 50.0])
def test_dice_matches_loop_reference(small, p):
    m = small.Z.mean(axis=0)
    w, b = small.head.weight, small.head.bias
    values = sorted(float(w[c, j] * m[j]) for c in range(5) for j in range(12))
    pos = p / 100 * (len(values) - 1)
    lo = int(np.floor(pos))
    thresh = values[lo] + (pos - lo) * (values[min(lo + 1, len(values) - 1)] - values[lo])
    ref = []
    for x in small.X:
        logits = [
            sum(w[c, j] * x[j] for j in range(12) if w[c, j] * m[j] > thresh) + b[c]
            for c in range(5)
        ]
        ref.append(logsumexp(logits))
    det = create_detector("dice", p=p).fit(small.Z, small.y, small.head)
    np.testing.assert_allclose(det.threshold_, thresh, rtol=1e-12)
    # the KEPT weights are the largest contributions (about 100 - p percent of them)
    assert np.count_nonzero(det.weight_) == pytest.approx((100 - p) / 100 * 60, abs=1)
    np.testing.assert_allclose(det.score(small.X, small.F), ref, rtol=1e-12)


# --------------------------------------------------------------------------- NNGuide
@pytest.mark.parametrize("k, fraction", [(100, 0.01), (5, 1.0), (7, 0.1), (7, 0.035)])
def test_nnguide_matches_loop_reference(small, k, fraction):
    z, head = small.Z, small.head
    n = len(z)
    n_bank = min(n, max(k, int(np.ceil(fraction * n))))
    rows = [int(round(i * (n - 1) / (n_bank - 1))) for i in range(n_bank)] if n_bank > 1 else [0]
    bank = [z[i] / np.linalg.norm(z[i]) * logsumexp(head.logits(z[i : i + 1])[0]) for i in rows]
    ref = []
    for x, f in zip(small.X, small.F, strict=True):
        u = x / np.linalg.norm(x)
        sims = sorted((float(u @ g) for g in bank), reverse=True)  # LARGEST similarities
        ref.append(logsumexp(f) * np.mean(sims[:k]))
    det = create_detector("nnguide", k=k, bank_fraction=fraction).fit(z, small.y, head)
    assert det.n_bank_ == n_bank
    np.testing.assert_allclose(det.score(small.X, small.F), ref, rtol=1e-9)


def test_nnguide_k_larger_than_train_raises(small):
    with pytest.raises(ConfigError, match="k=301 for n_train=300"):
        create_detector("nnguide", k=301).fit(small.Z, small.y, small.head)


# --------------------------------------------------------------------------- chunking
def test_chunked_fit_and_score_equal_one_block(small, monkeypatch, tmp_path):
    """A float32 memmap read 7 rows at a time gives the fit and scores of one block."""
    import ncood.collapse.stats as stats_mod

    path = tmp_path / "z.npy"
    np.save(path, small.Z.astype(np.float32))
    z32 = np.load(path, mmap_mode="r")
    ref = {n: create_detector(n).fit(np.array(z32, np.float64), small.y, small.head) for n in ZOO}
    rows = {"value": 7 * small.Z.shape[1]}
    name = next(a for a in ("CHUNK_VALUES", "DEFAULT_CHUNK_VALUES") if hasattr(stats_mod, a))
    monkeypatch.setattr(stats_mod, name, rows["value"])
    for n in ZOO:
        det = create_detector(n).fit(z32, small.y, small.head)
        np.testing.assert_allclose(
            det.score(small.X, small.F),
            ref[n].score(small.X, small.F),
            rtol=1e-9,
            atol=1e-12,
            err_msg=n,
        )


def test_precomputed_stats_give_the_same_fit(small):
    stats = ClassStats.from_features(small.Z, small.y, 5)
    for name in ("rmds", "dice", "nci", "fdbd"):
        ref = create_detector(name).fit(small.Z, small.y, small.head)
        features = small.Z if detector_class(name).needs_train_features else None
        det = create_detector(name).fit(features, None, small.head, stats=stats)
        np.testing.assert_allclose(
            det.score(small.X, small.F), ref.score(small.X, small.F), rtol=1e-9, err_msg=name
        )


def test_label_free_detectors_fit_without_labels(small):
    # (knn uses labels only to anchor its index; its scores are checked in test_knn.py)
    for name in ("dice", "nci", "fdbd", "nnguide", "kl_matching", "scale"):
        ref = create_detector(name).fit(small.Z, small.y, small.head)
        det = create_detector(name).fit(small.Z, None, small.head)
        np.testing.assert_array_equal(det.score(small.X, small.F), ref.score(small.X, small.F))


def test_analyse_runs_every_detector_with_shared_statistics(relu_blobs):
    """analyse() computes class statistics once and passes train features only to
    detectors that need them: every registered detector must fit that way."""
    from ncood.analysis import analyse
    from ncood.types import FeatureDir, FeatureSet

    z, y, head, x, o = relu_blobs
    fd = FeatureDir(
        train=FeatureSet(z, head.logits(z), y, "train"),
        test=FeatureSet(x, head.logits(x), None, "test"),
        ood={"spikes": FeatureSet(o, head.logits(o), None, "ood")},
        head=head,
    )
    res = analyse(fd, detectors=list_detectors(), collapse=False, layers=False)
    assert set(res.values("detector")) == set(list_detectors())
    for name in list_detectors():
        assert res.value(metric="auroc", detector=name, ood="spikes") > 0.9, name


# --------------------------------------------------------------------------- registry contract
def test_every_round2_detector_is_registered():
    assert set(ZOO) | {"knn", "react"} <= set(list_detectors())


@pytest.mark.parametrize("name", list_detectors())
def test_contract_fit_returns_self_and_scores_are_float64(name, relu_blobs):
    z, y, head, x, _ = relu_blobs
    det = create_detector(name)
    assert det.fit(z, y, head) is det
    s = det.score(x, head.logits(x))
    assert s.shape == (len(x),) and s.dtype == np.float64 and np.isfinite(s).all()
    # row-wise: a batch split anywhere gives the same scores
    parts = np.concatenate(
        [det.score(x[:77], head.logits(x[:77])), det.score(x[77:], head.logits(x[77:]))]
    )
    np.testing.assert_allclose(parts, s, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list_detectors())
def test_contract_higher_is_more_in_distribution(name, relu_blobs):
    z, y, head, x, o = relu_blobs
    det = create_detector(name).fit(z, y, head)
    assert auroc(det.score(x, head.logits(x)), det.score(o, head.logits(o))) > 0.9


@pytest.mark.parametrize("name", list_detectors())
def test_contract_errors(name, relu_blobs):
    z, y, head, x, _ = relu_blobs
    det = create_detector(name)
    f = head.logits(x)
    if det.needs_fit:
        with pytest.raises(NotFittedError, match=f"not fitted.*{name}|{name}.*not fitted"):
            det.score(x, f)
    det.fit(z, y, head)
    if det.uses_features:
        with pytest.raises(ShapeError, match=r"has 63 features, but .* expecting 64"):
            det.score(x[:, :63], f)
    if det.uses_logits:
        with pytest.raises(ShapeError, match="logits have 3 columns"):
            det.score(x, f[:, :3])
    with pytest.raises(ShapeError, match=r"has 63 features, but .* expecting 64"):
        create_detector(name).fit(z[:, :63], y, head)
    x_bad, f_bad = x.copy(), f.copy()
    x_bad[4, 2] = np.nan
    f_bad[4, 1] = np.nan
    with pytest.raises(ShapeError, match="NaN/inf"):
        det.score(x_bad, f_bad)
    if det.needs_fit:  # the train features are validated too, even where only the head is used
        z_bad = z.copy()
        z_bad[123, 5] = np.inf
        with pytest.raises(ShapeError, match="NaN/inf"):
            create_detector(name).fit(z_bad, y, head)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("gen", {"gamma": 0.0}, r"'gamma' parameter of GEN must be a float in the range \(0"),
        ("gen", {"M": 0}, r"'M' parameter of GEN must be an int"),
        ("nci", {"alpha": -1.0}, "'alpha' parameter of NCI"),
        ("fdbd", {"distance_as_normalizer": 1}, "must be a bool"),
        ("dice", {"p": 100}, "'p' parameter of DICE"),
        ("ash_s", {"percentile": -1}, "'percentile' parameter of ASH-S"),
        ("nnguide", {"bank_fraction": 0.0}, "'bank_fraction' parameter of NNGuide"),
        ("knn", {"index_dtype": "float16"}, "'index_dtype' parameter of KNN"),
    ],
)
def test_invalid_hyperparameters(name, params, match):
    with pytest.raises(ConfigError, match=match):
        create_detector(name, **params)


@pytest.mark.parametrize(
    "name", [n for n in list_detectors() if hasattr(detector_class(n), "grid")]
)
def test_grids_are_valid_hyperparameters(name):
    grid = detector_class(name).grid
    assert grid and set(grid) <= set(detector_class(name).param_names())
    for key, values in grid.items():
        for value in values:
            create_detector(name, **{key: value})


# --------------------------------------------------------------------------- selection
def _selection_problem(seed=0, d=16, c=4):
    """ReAct on post-ReLU features. Validation OOD = weaker activations plus one huge
    spike (strong clipping wins); test OOD = weaker activations without spikes (clipping
    only loses information: weak clipping wins)."""
    rng = np.random.default_rng(seed)
    w = np.abs(rng.normal(size=(c, d)))
    head = LinearHead(w, np.zeros(c))

    def id_(n):
        return np.maximum(rng.normal(2.0, 1.0, (n, d)), 0.0)

    z = id_(2000)
    y = (z @ w.T).argmax(axis=1)
    val_id, test_id = id_(500), id_(500)
    val_ood = np.maximum(rng.normal(1.0, 1.0, (500, d)), 0.0)
    val_ood[np.arange(500), rng.integers(0, d, 500)] = 20.0
    test_ood = np.maximum(rng.normal(1.3, 1.0, (500, d)), 0.0)
    return z, y, head, val_id, val_ood, test_id, test_ood


def test_selection_uses_validation_not_test():
    from ncood.detectors.select import select

    z, y, head, val_id, val_ood, test_id, test_ood = _selection_problem()
    grid = {"percentile": [50.0, 99.0]}
    res = select(
        "react",
        grid,
        z,
        y,
        head,
        val_id=(val_id, head.logits(val_id)),
        val_ood=(val_ood, head.logits(val_ood)),
    )
    # independently: which value wins on each set
    on = {}
    for p in grid["percentile"]:
        det = create_detector("react", percentile=p).fit(z, y, head)
        on[p] = (
            auroc(det.score(val_id, None), det.score(val_ood, None)),
            auroc(det.score(test_id, None), det.score(test_ood, None)),
        )
    assert on[50.0][0] > on[99.0][0]  # validation prefers strong clipping
    assert on[99.0][1] > on[50.0][1]  # the test set would have preferred weak clipping
    assert res.params == {"percentile": 50.0}
    assert [c["params"] for c in res.candidates] == [{"percentile": 50.0}, {"percentile": 99.0}]
    np.testing.assert_allclose([c["auroc"] for c in res.candidates], [on[50.0][0], on[99.0][0]])
    assert res.val_auroc == pytest.approx(on[50.0][0])
    assert res.to_dict()["grid"] == grid and (res.n_val_id, res.n_val_ood) == (500, 500)


def test_selection_default_grids_fixed_params_and_errors(small):
    from ncood.detectors.select import DEFAULT_GRIDS, default_grid, select

    assert default_grid("gen") == detector_class("gen").grid
    assert default_grid("react") == DEFAULT_GRIDS["react"] == {"percentile": [85, 90, 95, 99]}
    assert default_grid("rmds") == {}
    val = (small.X, small.F)
    ood = (small.X[::-1] * 3.0, small.head.logits(small.X[::-1] * 3.0))
    res = select("rmds", None, small.Z, small.y, small.head, val_id=val, val_ood=ood)
    assert res.params == {} and len(res.candidates) == 1
    res = select(
        "gen", {"M": [1, 3]}, None, None, small.head, val_id=val, val_ood=ood, fixed={"gamma": 0.5}
    )
    assert [c["params"] for c in res.candidates] == [{"gamma": 0.5, "M": 1}, {"gamma": 0.5, "M": 3}]
    with pytest.raises(ConfigError, match="no parameter 'alpah'"):
        select("nci", {"alpah": [1.0]}, small.Z, small.y, small.head, val_id=val, val_ood=ood)
    with pytest.raises(ConfigError, match="non-empty list"):
        select("nci", {"alpha": []}, small.Z, small.y, small.head, val_id=val, val_ood=ood)
    with pytest.raises(ConfigError, match="'alpha' parameter of NCI"):
        select("nci", {"alpha": [-1.0]}, small.Z, small.y, small.head, val_id=val, val_ood=ood)
    with pytest.raises(ShapeError, match="val_ood must be a pair"):
        select("nci", None, small.Z, small.y, small.head, val_id=val, val_ood=small.X)


def test_selection_ties_go_to_the_first_candidate(small):
    from ncood.detectors.select import select

    val = (small.X, small.F)
    ood = (small.X * 0.1, small.head.logits(small.X * 0.1))
    # D = 12: percentiles 1 and 0 both keep k = 12 - round(0.12) = 12 entries -> a tie
    res = select(
        "ash_p",
        {"percentile": [1.0, 0.0]},
        small.Z,
        small.y,
        small.head,
        val_id=val,
        val_ood=ood,
    )
    assert res.candidates[0]["auroc"] == res.candidates[1]["auroc"]
    assert res.params == {"percentile": 1.0}
