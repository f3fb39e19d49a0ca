"""Detectors against second formulations (closed forms, scikit-learn, direct NumPy),
plus the same contract checks for every registered detector."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.linalg import pinvh
from scipy.special import softmax
from sklearn.covariance import EmpiricalCovariance
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

import ncood.collapse.stats as collapse_stats
import ncood.detectors.base as det_base
import ncood.detectors.neighbors as det_neighbors
from ncood.collapse import ClassStats
from ncood.detectors import create_detector, detector_class, list_detectors
from ncood.errors import ConfigError, NotFittedError, ShapeError
from ncood.metrics import auroc
from ncood.types import LinearHead

SIX = ("msp", "maxlogit", "energy", "mahalanobis", "vim", "neco")
# KNN keeps its index and products in float32 (as the paper's faiss index): results
# depend on the batch at float32 rounding level.
TOL = {"knn": {"rtol": 0, "atol": 2e-6}}
DEFAULT_TOL = {"rtol": 1e-10, "atol": 1e-12}


# --------------------------------------------------------------------------- data
class Data:
    """Anisotropic class-conditional data with a common positive offset (like post-ReLU
    features), a random head, ID test and OOD-like queries."""

    def __init__(self, seed=0, n=600, d=24, c=5, n_query=200):
        rng = np.random.default_rng(seed)
        means = 3.0 * rng.normal(size=(c, d)) + 5.0
        # distinct scales 0.3..2.0 along random orthogonal directions: the within-class
        # covariance has condition number (2.0 / 0.3)^2 ~ 44, so float64 results of two
        # formulations agree to ~1e-13 and rtol=1e-9 comparisons are meaningful (a raw
        # Gaussian mixing matrix gave condition numbers ~1e8 and rounding-level misses)
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        mix = q * np.linspace(0.3, 2.0, d)
        self.y = rng.integers(0, c, n)
        self.y[:c] = np.arange(c)  # every class present
        self.Z = means[self.y] + rng.normal(size=(n, d)) @ mix
        self.head = LinearHead(rng.normal(size=(c, d)) / np.sqrt(d), rng.normal(size=c))
        q = means[rng.integers(0, c, n_query)] + 1.5 * rng.normal(size=(n_query, d)) @ mix
        self.X = q
        self.F = self.head.logits(q)


def _blobs(seed=0, c=4, d=32, n_train=800, n_test=300, n_ood=300, radius=10.0):
    """Well-separated spherical classes on orthogonal directions and a linear head that
    classifies them; OOD = a tight cloud at the centre between the classes."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, c)))
    offset = 1.0
    means = radius * q.T + offset  # (C, D)
    centred = means - means.mean(axis=0)
    head = LinearHead(centred, -0.5 * (centred**2).sum(axis=1) - centred @ means.mean(axis=0))
    y = rng.integers(0, c, n_train)
    z = means[y] + rng.normal(size=(n_train, d))
    x = means[rng.integers(0, c, n_test)] + rng.normal(size=(n_test, d))
    o = means.mean(axis=0) + 0.3 * rng.normal(size=(n_ood, d))
    return z, y, head, x, o


@pytest.fixture(scope="module")
def data():
    return Data()


@pytest.fixture(scope="module")
def blobs():
    return _blobs()


# --------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("T", [1.0, 0.5, 3.0])
def test_logit_detectors_closed_forms(data, T):
    f = data.F
    msp = create_detector("msp", T=T).score(data.X, f)
    np.testing.assert_allclose(msp, softmax(f / T, axis=1).max(axis=1), rtol=1e-13)
    energy = create_detector("energy", T=T).score(data.X, f)
    np.testing.assert_allclose(energy, T * np.log(np.exp(f / T).sum(axis=1)), rtol=1e-13)
    np.testing.assert_array_equal(create_detector("maxlogit").score(None, f), f.max(axis=1))


def test_logit_detectors_are_stable_for_huge_logits():
    f = np.array([[1000.0, 0.0], [-1000.0, -1000.0]])
    np.testing.assert_allclose(create_detector("msp").score(None, f), [1.0, 0.5])
    np.testing.assert_allclose(
        create_detector("energy").score(None, f), [1000.0, -1000 + np.log(2)]
    )


def test_react_matches_direct(data):
    det = create_detector("react", percentile=85.0).fit(data.Z, data.y, data.head)
    c = np.percentile(data.Z.ravel(), 85.0)
    assert det.threshold_ == pytest.approx(c, rel=1e-14)
    logits = np.minimum(data.X, c) @ data.head.weight.T + data.head.bias
    expected = np.log(np.exp(logits).sum(axis=1))
    np.testing.assert_allclose(det.score(data.X, data.F), expected, rtol=1e-12)


def test_mahalanobis_matches_sklearn_empirical_covariance(data):
    det = create_detector("mahalanobis").fit(data.Z, data.y, data.head)
    c = data.head.num_classes
    means = np.stack([data.Z[data.y == k].mean(axis=0) for k in range(c)])
    ec = EmpiricalCovariance(assume_centered=True).fit(data.Z - means[data.y])
    dist = np.stack([ec.mahalanobis(data.X - means[k]) for k in range(c)], axis=1)  # (n, C)
    np.testing.assert_allclose(det.score(data.X, data.F), -dist.min(axis=1), rtol=1e-9)
    np.testing.assert_allclose(det.precision_, ec.precision_, rtol=1e-8, atol=1e-12)


def test_mahalanobis_rank_deficient_covariance_uses_pseudo_inverse():
    # D = 40 > n - C = 27: the within-class covariance is singular; P = pinvh(S_W)
    rng = np.random.default_rng(3)
    c, d, n = 3, 40, 30
    y = np.arange(n) % c
    z = rng.normal(size=(c, d))[y] * 4 + rng.normal(size=(n, d))
    head = LinearHead(rng.normal(size=(c, d)), np.zeros(c))
    det = create_detector("mahalanobis").fit(z, y, head)
    means = np.stack([z[y == k].mean(axis=0) for k in range(c)])
    zc = z - means[y]
    p = pinvh(zc.T @ zc / n)
    x = z[:7] + 0.1 * rng.normal(size=(7, d))
    diffs = x[:, None, :] - means[None]  # (n, C, D)
    expected = -np.einsum("ncd,de,nce->nc", diffs, p, diffs).min(axis=1)
    assert det.rank_ == n - c
    np.testing.assert_allclose(det.score(x, head.logits(x)), expected, rtol=1e-7)


def _vim_direct(z_train, w, b, dim, x, f):
    """ViM as in the authors' code: explicit centring, full eigendecomposition."""
    u = -np.linalg.pinv(w) @ b
    zc = z_train - u
    evals, evecs = np.linalg.eigh(zc.T @ zc / len(z_train))
    residual = evecs[:, np.argsort(evals)[::-1][dim:]]  # after the top `dim`
    train_logits = z_train @ w.T + b
    alpha = train_logits.max(axis=1).mean() / np.linalg.norm(zc @ residual, axis=1).mean()
    energy = np.log(np.exp(f).sum(axis=1))
    return energy - alpha * np.linalg.norm((x - u) @ residual, axis=1), alpha


@pytest.mark.parametrize("dim", [1, 3, 12, 20, 23])
def test_vim_matches_direct_numpy(data, dim):
    det = create_detector("vim", dim=dim).fit(data.Z, data.y, data.head)
    expected, alpha = _vim_direct(data.Z, data.head.weight, data.head.bias, dim, data.X, data.F)
    assert det.alpha_ == pytest.approx(alpha, rel=1e-9)
    assert det.residual_.shape == (data.Z.shape[1], data.Z.shape[1] - dim)
    np.testing.assert_allclose(det.score(data.X, data.F), expected, rtol=1e-9)


@pytest.mark.parametrize(
    "width, expected", [(16, 8), (24, 12), (512, 256), (767, 383), (768, 512), (2048, 1000)]
)
def test_vim_default_dim(width, expected):
    from ncood.detectors.subspace import vim_default_dim

    assert vim_default_dim(width) == expected


def test_vim_default_dim_is_used(data):
    det = create_detector("vim").fit(data.Z, data.y, data.head)
    assert det.dim_ == data.Z.shape[1] // 2


def _low_rank(seed=0, n=2000, d=32, rank=10, c=5):
    """Features spanning exactly ``rank`` directions through the origin (dead/redundant
    units), a head with zero bias (so ViM's origin u = 0 lies in their span), ID queries
    in the span and OOD queries off it."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, d))
    y = rng.integers(0, c, n)
    centres = 3.0 * rng.normal(size=(c, rank))
    z = (centres[y] + rng.normal(size=(n, rank))) @ basis  # (n, D), numerical rank 10
    head = LinearHead(rng.normal(size=(c, d)) / np.sqrt(d), np.zeros(c))
    x = (centres[rng.integers(0, c, 300)] + rng.normal(size=(300, rank))) @ basis
    o = x + 2.0 * rng.normal(size=x.shape)  # leaves the span
    return z, y, head, x, o


def test_vim_dim_at_or_above_the_numerical_rank_raises():
    # before: dim=12 on rank-10 features built the residual from rounding noise
    # (alpha ~1e15) without a word
    z, y, head, _, _ = _low_rank()
    for dim in (12, 10):
        with pytest.raises(ConfigError, match=rf"got dim={dim}, but .* only 10 of D=32 .*<= 9"):
            create_detector("vim", dim=dim).fit(z, y, head)
    det = create_detector("vim", dim=9).fit(z, y, head)  # the largest valid dim
    assert det.rank_ == 10 and det.dim_ == 9
    x = z[:50] + 0.1
    expected, alpha = _vim_direct(z, head.weight, head.bias, 9, x, head.logits(x))
    assert det.alpha_ == pytest.approx(alpha, rel=1e-8) and det.alpha_ < 1e3
    np.testing.assert_allclose(det.score(x, head.logits(x)), expected, rtol=1e-8)


def test_vim_default_dim_is_capped_below_the_numerical_rank(caplog):
    z, y, head, x, o = _low_rank()
    with caplog.at_level(logging.WARNING, logger="ncood.detectors.subspace"):
        det = create_detector("vim").fit(z, y, head)  # default dim = 32 // 2 = 16
    assert "default dim=16 (D=32) is at or above the numerical rank 10" in caplog.text
    assert "using dim=9" in caplog.text
    assert (det.dim_, det.rank_) == (9, 10)
    explicit = create_detector("vim", dim=9).fit(z, y, head)
    assert det.alpha_ == explicit.alpha_
    # the capped detector works: queries off the train span score lower
    assert auroc(det.score(x, head.logits(x)), det.score(o, head.logits(o))) > 0.99
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ncood.detectors.subspace"):
        full = create_detector("vim").fit(*_blobs()[:3])  # full rank: no cap, no warning
    assert full.dim_ == 16 and full.rank_ == 32 and "numerical rank" not in caplog.text


def test_vim_rank_below_two_raises():
    rng = np.random.default_rng(4)
    y = np.arange(40) % 2
    z = np.outer(rng.normal(size=40) + 3.0, rng.normal(size=6))  # one direction
    head = LinearHead(rng.normal(size=(2, 6)), np.zeros(2))
    with pytest.raises(ConfigError, match="at least 2 directions .* span 1"):
        create_detector("vim").fit(z, y, head)


def test_vim_rank_two_caps_the_default_to_one():
    z, y, head, x, _ = _low_rank(rank=2, d=8)
    det = create_detector("vim").fit(z, y, head)  # default 4 -> 1
    assert (det.dim_, det.rank_) == (1, 2)
    expected, alpha = _vim_direct(z, head.weight, head.bias, 1, x, head.logits(x))
    assert det.alpha_ == pytest.approx(alpha, rel=1e-8)
    np.testing.assert_allclose(det.score(x, head.logits(x)), expected, rtol=1e-8)
    assert create_detector("vim", dim=1).fit(z, y, head).alpha_ == det.alpha_


def test_mahalanobis_is_scale_invariant_down_to_tiny_features(data):
    ref = create_detector("mahalanobis").fit(data.Z, data.y, data.head).score(data.X, data.F)
    for a in (1e-7, 1e5):
        det = create_detector("mahalanobis").fit(a * data.Z, data.y, data.head)
        assert det.rank_ == data.Z.shape[1]
        np.testing.assert_allclose(det.score(a * data.X, data.F), ref, rtol=1e-9)


def test_mahalanobis_large_offset_matches_sklearn(data):
    # post-ReLU-like features far from the origin: the centring on the mean of the class
    # means keeps the ||a||^2 - 2 a.w + ||w||^2 expansion free of cancellation
    offset = 1e6
    det = create_detector("mahalanobis").fit(data.Z + offset, data.y, data.head)
    c = data.head.num_classes
    means = np.stack([data.Z[data.y == k].mean(axis=0) for k in range(c)])
    ec = EmpiricalCovariance(assume_centered=True).fit(data.Z - means[data.y])
    dist = np.stack([ec.mahalanobis(data.X - means[k]) for k in range(c)], axis=1)
    np.testing.assert_allclose(det.score(data.X + offset, data.F), -dist.min(axis=1), rtol=1e-7)
    # a query at a class mean is at distance 0 (rounding never makes it positive)
    at_means = det.score(det.means_, data.head.logits(det.means_))
    assert np.all(at_means <= 0.0) and np.all(at_means > -1e-6)


def test_neco_edge_cases(data):
    det = create_detector("neco", dim=3).fit(data.Z, data.y, data.head)
    # a sample exactly at the train mean has s = 0: the largest ratio, 1
    assert det.score(det.mean_[None, :], data.F[:1])[0] == 1.0
    assert det.uses_logits is False
    assert create_detector("neco", dim=3, use_maxlogit=True).uses_logits is True
    with pytest.raises(ConfigError, match="'use_maxlogit' parameter of NECO must be a bool"):
        create_detector("neco", use_maxlogit=1)
    assert (
        create_detector("neco").variance == 0.9 and create_detector("neco", dim=2).variance is None
    )
    with pytest.raises(ConfigError, match="every train feature is constant"):
        create_detector("neco").fit(np.ones_like(data.Z), data.y, data.head)
    full = create_detector("neco", variance=1.0).fit(data.Z, data.y, data.head)
    assert full.dim_ == data.Z.shape[1] and full.explained_variance_ == pytest.approx(1.0)
    np.testing.assert_allclose(full.explained_variance_ratio_.sum(), 1.0, rtol=1e-12)
    assert np.all(np.diff(full.explained_variance_ratio_) <= 0)


def test_mahalanobis_constant_features_warn_and_match_reduced_reference(data, caplog):
    z = data.Z.copy()
    z[:, [2, 7]] = [0.0, 3.25]  # dead / constant units
    x = data.X.copy()
    x[:, [2, 7]] = [0.0, 3.25]
    with caplog.at_level(logging.WARNING, logger="ncood.detectors.gaussian"):
        det = create_detector("mahalanobis").fit(z, data.y, data.head)
    assert "mahalanobis: 2 train feature(s) are constant" in caplog.text
    assert "[2, 7]" in caplog.text
    assert det.n_constant_ == 2 and det.rank_ == z.shape[1] - 2
    # reference: sklearn on the 22 informative columns alone
    keep = np.setdiff1d(np.arange(z.shape[1]), [2, 7])
    c = data.head.num_classes
    means = np.stack([z[data.y == k][:, keep].mean(axis=0) for k in range(c)])
    ec = EmpiricalCovariance(assume_centered=True).fit(z[:, keep] - means[data.y])
    dist = np.stack([ec.mahalanobis(x[:, keep] - means[k]) for k in range(c)], axis=1)
    np.testing.assert_allclose(det.score(x, data.F), -dist.min(axis=1), rtol=1e-9)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ncood.detectors.gaussian"):
        plain = create_detector("mahalanobis").fit(data.Z, data.y, data.head)
    assert plain.n_constant_ == 0 and "constant" not in caplog.text


def test_defaults_are_pinned_through_the_registry(data):
    """The papers' defaults, read through the registry, and what they do."""
    assert create_detector("react").percentile == 90.0  # Sun et al. 2021
    assert create_detector("knn").k == 50  # Sun et al. 2022 (CIFAR-10)
    assert create_detector("vim").dim is None
    assert create_detector("msp").T == 1.0 and create_detector("energy").T == 1.0
    react = create_detector("react").fit(data.Z, data.y, data.head)
    assert react.threshold_ == pytest.approx(np.percentile(data.Z, 90.0), rel=1e-14)
    assert react.threshold_ != pytest.approx(np.percentile(data.Z, 95.0), rel=1e-3)
    knn = create_detector("knn").fit(data.Z, data.y, data.head)
    unit = data.Z / np.linalg.norm(data.Z, axis=1, keepdims=True)
    dist, _ = (
        NearestNeighbors(n_neighbors=50)
        .fit(unit)
        .kneighbors(data.X / np.linalg.norm(data.X, axis=1, keepdims=True))
    )
    np.testing.assert_allclose(knn.score(data.X, data.F), -dist[:, 49], atol=2e-5)
    assert np.abs(dist[:, 49] - dist[:, 9]).min() > 1e-3  # k=10 would be told apart


def _neco_sklearn(z_train, x, dim):
    ss = StandardScaler().fit(z_train)
    pca = PCA(svd_solver="full").fit(ss.transform(z_train))
    s = ss.transform(x)
    return np.linalg.norm(pca.transform(s)[:, :dim], axis=1) / np.linalg.norm(s, axis=1)


@pytest.mark.parametrize("dim", [1, 5, 17, 24])
def test_neco_matches_sklearn_standardscaler_pca(data, dim):
    det = create_detector("neco", dim=dim).fit(data.Z, data.y, data.head)
    np.testing.assert_allclose(
        det.score(data.X, data.F), _neco_sklearn(data.Z, data.X, dim), rtol=1e-9
    )
    with_logit = create_detector("neco", dim=dim, use_maxlogit=True).fit(data.Z, data.y, data.head)
    np.testing.assert_allclose(
        with_logit.score(data.X, data.F),
        _neco_sklearn(data.Z, data.X, dim) * data.F.max(axis=1),
        rtol=1e-9,
    )


@pytest.mark.parametrize("variance", [0.5, 0.8, 0.95])
def test_neco_variance_picks_the_same_dim_as_sklearn_pca(data, variance):
    det = create_detector("neco", variance=variance).fit(data.Z, data.y, data.head)
    pca = PCA(n_components=variance, svd_solver="full")
    pca.fit(StandardScaler().fit_transform(data.Z))
    assert det.dim_ == pca.n_components_
    assert det.explained_variance_ == pytest.approx(pca.explained_variance_ratio_.sum(), rel=1e-9)


def test_neco_constant_features_follow_standardscaler(data, caplog):
    z = data.Z.copy()
    z[:, [2, 7]] = [0.0, 3.25]  # dead / constant units
    x = data.X.copy()
    x[:, [2, 7]] = [0.0, 3.25]
    with caplog.at_level(logging.WARNING, logger="ncood.detectors.subspace"):
        det = create_detector("neco", dim=6).fit(z, data.y, data.head)
    assert "2 train feature(s) are constant" in caplog.text and "[2, 7]" in caplog.text
    assert det.n_constant_ == 2
    np.testing.assert_allclose(det.score(x, data.F), _neco_sklearn(z, x, 6), rtol=1e-9)
    # a sample that wakes a dead unit grows ||s|| outside the subspace: lower score, as
    # with StandardScaler's scale 1 for the constant column
    woken = x.copy()
    woken[:, 2] = 5.0
    assert np.all(det.score(woken, data.F) < det.score(x, data.F))
    np.testing.assert_allclose(det.score(woken, data.F), _neco_sklearn(z, woken, 6), rtol=1e-9)
    # a single informative feature is enough
    one = np.zeros_like(z[:, :3])
    one[:, 1] = z[:, 0]
    head3 = LinearHead(data.head.weight[:, :3], data.head.bias)
    single = create_detector("neco", dim=1).fit(one, data.y, head3)
    assert single.n_constant_ == 2 and single.explained_variance_ == pytest.approx(1.0)


def test_knn_matches_sklearn_nearest_neighbors(data):
    k = 7
    det = create_detector("knn", k=k).fit(data.Z, data.y, data.head)
    unit = data.Z / np.linalg.norm(data.Z, axis=1, keepdims=True)
    nn = NearestNeighbors(n_neighbors=k).fit(unit)
    dist, _ = nn.kneighbors(data.X / np.linalg.norm(data.X, axis=1, keepdims=True))
    # float32 storage and products (as the paper's faiss index)
    np.testing.assert_allclose(det.score(data.X, data.F), -dist[:, -1], atol=2e-5)


# --------------------------------------------------------------------------- statistics input
@pytest.mark.parametrize("name", [n for n in list_detectors() if detector_class(n).uses_stats])
def test_precomputed_stats_give_the_same_fit(data, name):
    ref = create_detector(name).fit(data.Z, data.y, data.head)
    c = data.head.num_classes
    # statistics of two shards, merged (as the distributed code all-reduces them)
    half = len(data.Z) // 2
    shards = [
        ClassStats.from_features(data.Z[s], data.y[s], c)
        for s in (slice(None, half), slice(half, None))
    ]
    stats = shards[0].merge(shards[1])
    cls = detector_class(name)
    features = data.Z if cls.needs_train_features else None
    det = create_detector(name).fit(features, None, data.head, stats=stats)
    np.testing.assert_allclose(det.score(data.X, data.F), ref.score(data.X, data.F), rtol=1e-9)


def test_vim_with_stats_still_needs_train_features(data):
    stats = ClassStats.from_features(data.Z, data.y, data.head.num_classes)
    with pytest.raises(ShapeError, match="needs the train features"):
        create_detector("vim").fit(None, None, data.head, stats=stats)


def test_stats_of_another_width_raise(data):
    stats = ClassStats.from_features(data.Z[:, :10], data.y, data.head.num_classes)
    with pytest.raises(ShapeError, match="D=10"):
        create_detector("mahalanobis").fit(None, None, data.head, stats=stats)


def test_chunked_passes_equal_in_memory(data, monkeypatch, tmp_path):
    """Tiny chunks and a float32 memmap give the same fit and scores as one block.

    The reference is fitted AND scored before the chunk size is patched, with every pass
    in a single block, so a chunking bug cannot hide in the reference too.
    """
    path = tmp_path / "z.npy"
    np.save(path, data.Z.astype(np.float32))
    z32 = np.load(path, mmap_mode="r")
    x32 = data.X.astype(np.float32)
    d = data.Z.shape[1]
    assert collapse_stats.chunk_rows(d) >= len(data.Z)  # the reference is one block
    ref = {}
    for name in list_detectors():
        det = create_detector(name).fit(np.asarray(z32, np.float64), data.y, data.head)
        ref[name] = det.score(x32.astype(np.float64), data.F)
    monkeypatch.setattr(collapse_stats, "CHUNK_VALUES", 7 * d)  # 7 rows per chunk
    if hasattr(det_neighbors, "SIM_VALUES"):
        monkeypatch.setattr(det_neighbors, "SIM_VALUES", 5 * len(data.Z))
    assert det_base.chunk_rows(d) == 7  # the detectors see the patched policy
    calls = []
    real_read = collapse_stats.read_chunk

    def counting_read(arr, start, stop, name):
        calls.append(stop - start)
        return real_read(arr, start, stop, name)

    monkeypatch.setattr(collapse_stats, "read_chunk", counting_read)
    monkeypatch.setattr(det_base, "read_chunk", counting_read)
    for name in list_detectors():
        calls.clear()
        det = create_detector(name).fit(z32, data.y, data.head)
        got = det.score(x32, data.F)
        assert len(calls) > 1 and max(calls) < len(data.X), name  # scored in chunks
        np.testing.assert_allclose(got, ref[name], err_msg=name, **TOL.get(name, DEFAULT_TOL))


# --------------------------------------------------------------------------- shared contract
def _fit(name, blobs):
    z, y, head, _, _ = blobs
    return create_detector(name).fit(z, y, head)


@pytest.mark.parametrize("name", list_detectors())
def test_fit_returns_self_and_params_roundtrip(name, blobs):
    z, y, head, _, _ = blobs
    det = create_detector(name)
    assert det.fit(z, y, head) is det
    again = create_detector(name, **det.get_params())
    assert again.get_params() == det.get_params()
    assert det.name == name
    assert all(k.endswith("_") for k in det.fitted_info())


@pytest.mark.parametrize("name", list_detectors())
def test_score_shape_dtype_finite_and_batching(name, blobs):
    z, y, head, x, _ = blobs
    det = _fit(name, blobs)
    s = det.score(x, head.logits(x))
    assert s.shape == (len(x),) and s.dtype == np.float64 and np.isfinite(s).all()
    parts = np.concatenate(
        [det.score(x[:117], head.logits(x[:117])), det.score(x[117:], head.logits(x[117:]))]
    )
    np.testing.assert_allclose(parts, s, **TOL.get(name, DEFAULT_TOL))
    # same inputs, identical outputs (a second fit too)
    np.testing.assert_array_equal(det.score(x, head.logits(x)), s)
    np.testing.assert_array_equal(_fit(name, blobs).score(x, head.logits(x)), s)


# ASH-S and DICE assume sparse post-ReLU activations: on these dense Gaussian blobs the
# flat OOD cloud is what they amplify (AUROC 0.16 / 0.82, by their formulas); they are
# checked on sparse-activation data in tests/test_detectors_zoo.py.
BLOBS_UNSUITED = {"ash_s", "dice"}


@pytest.mark.parametrize("name", [n for n in list_detectors() if n not in BLOBS_UNSUITED])
def test_separable_blobs_score_id_higher(name, blobs):
    z, y, head, x, o = blobs
    det = _fit(name, blobs)
    assert auroc(det.score(x, head.logits(x)), det.score(o, head.logits(o))) > 0.9


@pytest.mark.parametrize("name", list_detectors())
def test_score_before_fit(name, blobs):
    z, y, head, x, _ = blobs
    det = create_detector(name)
    if det.needs_fit:
        with pytest.raises(NotFittedError, match="not fitted"):
            det.score(x, head.logits(x))
    else:  # logit detectors need no fit
        np.testing.assert_array_equal(
            det.score(x, head.logits(x)), _fit(name, blobs).score(x, head.logits(x))
        )


@pytest.mark.parametrize("name", list_detectors())
def test_width_mismatch_names_both_widths(name, blobs):
    z, y, head, x, _ = blobs
    det = _fit(name, blobs)
    if det.uses_features:
        with pytest.raises(ShapeError, match=r"has 31 features, but .* expecting 32"):
            det.score(x[:, :31], head.logits(x))
    else:
        with pytest.raises(ShapeError, match=r"logits have 3 columns.* head of 4 classes"):
            det.score(x, head.logits(x)[:, :3])
    with pytest.raises(ShapeError, match=r"has 31 features, but .* expecting 32"):
        create_detector(name).fit(z[:, :31], y, head)


@pytest.mark.parametrize("name", list_detectors())
def test_nan_inputs_raise(name, blobs):
    z, y, head, x, _ = blobs
    det = _fit(name, blobs)
    x_bad, f_bad = x.copy(), head.logits(x)
    x_bad[5, 3] = np.nan
    f_bad[5, 1] = np.inf
    with pytest.raises(ShapeError, match="NaN/inf"):
        det.score(x_bad, f_bad)
    if det.needs_fit:
        z_bad = z.copy()
        z_bad[10, 0] = np.nan
        with pytest.raises(ShapeError, match="NaN/inf"):
            create_detector(name).fit(z_bad, y, head)


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "name, params, match",
    [
        ("msp", {"T": 0.0}, r"'T' parameter of MSP must be a float in the range \(0"),
        ("energy", {"T": -1.0}, "'T' parameter of Energy"),
        ("vim", {"dim": 0}, r"'dim' parameter of ViM must be an int in the range \[1"),
        ("vim", {"dim": 2.5}, "'dim' parameter of ViM"),
        ("neco", {"dim": 3, "variance": 0.9}, "either 'dim' or 'variance'"),
        ("neco", {"variance": 1.5}, "'variance' parameter of NECO"),
        (
            "neco",
            {"variance": 0.0},
            r"'variance' parameter of NECO must be a float in the range \(0",
        ),
        ("neco", {"variance": -0.5}, "'variance' parameter of NECO"),
        ("neco", {"dim": 0}, r"'dim' parameter of NECO must be an int in the range \[1"),
        ("neco", {"dim": 2.5}, "'dim' parameter of NECO must be an int"),
        ("knn", {"k": 0}, "'k' parameter of KNN"),
        ("react", {"percentile": 0}, "'percentile' parameter of ReAct"),
        ("vim", {"dimm": 3}, "no parameter 'dimm' .*did you mean 'dim'"),
        ("vimm", {}, "unknown detector 'vimm'.*did you mean 'vim'"),
    ],
)
def test_invalid_configuration_raises_config_error(name, params, match):
    with pytest.raises(ConfigError, match=match):
        create_detector(name, **params)


def test_dims_checked_against_the_feature_width(data):
    d = data.Z.shape[1]
    with pytest.raises(ConfigError, match=f"dim={d} for D={d}"):
        create_detector("vim", dim=d).fit(data.Z, data.y, data.head)
    with pytest.raises(ConfigError, match=f"dim={d + 1} for D={d}"):
        create_detector("neco", dim=d + 1).fit(data.Z, data.y, data.head)
    with pytest.raises(ConfigError, match="k=601 for n_train=600"):
        create_detector("knn", k=601).fit(data.Z, data.y, data.head)


def test_fit_and_score_inputs_are_checked(data):
    z, y, head = data.Z, data.y, data.head
    with pytest.raises(ShapeError, match="vim needs the classifier head to fit"):
        create_detector("vim").fit(z, y, None)
    with pytest.raises(ShapeError, match="head must be a LinearHead.*got tuple"):
        create_detector("vim").fit(z, y, (head.weight, head.bias))
    with pytest.raises(ShapeError, match="stats must be a ClassStats; got dict"):
        create_detector("mahalanobis").fit(z, y, head, stats={})
    with pytest.raises(ShapeError, match="mahalanobis needs the train features and labels"):
        create_detector("mahalanobis").fit(z, None, head)
    with pytest.raises(ShapeError, match="mahalanobis needs the train features and labels"):
        create_detector("mahalanobis").fit(None, y, head)
    wrong_c = ClassStats.from_features(z, y, head.num_classes + 1)
    with pytest.raises(ShapeError, match=r"stats describe D=24, C=6, but the head has D=24, C=5"):
        create_detector("mahalanobis").fit(None, None, head, stats=wrong_c)
    # detectors without fit: no head needed, nothing fitted
    msp = create_detector("msp").fit(None, None, None)
    assert not msp.is_fitted() and msp.score(None, data.F).shape == (len(data.F),)
    vim = create_detector("vim").fit(z, y, head)
    assert vim.is_fitted() and (vim.n_features_in_, vim.n_classes_) == (24, 5)
    with pytest.raises(ShapeError, match="features have 200 rows but logits have 199"):
        vim.score(data.X, data.F[:-1])
    with pytest.raises(ShapeError, match="logits have 4 columns, but vim was fitted with a head "):
        vim.score(data.X, data.F[:, :4])
    with pytest.raises(ShapeError, match="features is required"):
        vim.score(None, data.F)
    with pytest.raises(ShapeError, match="features is empty"):
        vim.score(data.X[:0], data.F[:0])
    with pytest.raises(ShapeError, match=r"features must be a 2-D array .*got shape \(24,\)"):
        vim.score(data.X[0], data.F)
    bad = data.X.copy()
    bad[7, 2] = np.inf
    with pytest.raises(
        ShapeError, match=r"^features contains 1 NaN/inf value\(s\) in rows 0\.\.199"
    ):
        vim.score(bad, data.F)
    with pytest.raises(ShapeError, match=r"\(first at index \[7, 2\]\)"):
        vim.score(bad, data.F)
    with pytest.raises(ShapeError, match="^logits contains 200 NaN/inf"):
        vim.score(data.X, np.where(np.arange(5) == 3, np.nan, data.F))
    with pytest.raises(ShapeError, match="^train features contains 1 NaN/inf"):
        z_bad = z.copy()
        z_bad[3, 1] = np.nan
        create_detector("vim").fit(z_bad, y, head)
    with pytest.raises(ShapeError, match="^logits is required"):
        vim.score(data.X, None)
    with pytest.raises(ShapeError, match="^features has 23 features, but vim is expecting 24"):
        vim.score(data.X[:, :23], data.F)
    with pytest.raises(
        ShapeError, match="^features has 23 features, but the head of vim is expecting"
    ):
        create_detector("vim").fit(z[:, :23], y, head)
    with pytest.raises(ShapeError, match="^features must be a 2-D array"):
        create_detector("vim").fit(z[0], y, head)
    stats = ClassStats.from_features(z, y, head.num_classes)
    z_nan = z.copy()
    z_nan[5, 5] = np.nan
    with pytest.raises(ShapeError, match="^train features contains 1 NaN/inf"):
        create_detector("vim").fit(z_nan, None, head, stats=stats)  # the alpha pass
    with pytest.raises(ShapeError, match=r"class\(es\) \[4\] have fewer than 1"):
        create_detector("mahalanobis").fit(z[y != 4], y[y != 4], head)  # highest class
    single = y.copy()
    single[y == 3] = 2
    single[np.flatnonzero(y == 2)[0]] = 3  # class 3 has one sample: enough for a mean
    assert np.isfinite(create_detector("mahalanobis").fit(z, single, head).score(z, None)).all()
    # a detector that reads no logits scores without them
    maha = create_detector("mahalanobis").fit(z, y, head)
    np.testing.assert_array_equal(maha.score(data.X, None), maha.score(data.X, data.F))
    # lists are arrays too
    np.testing.assert_allclose(
        vim.score(data.X.tolist(), data.F.tolist()), vim.score(data.X, data.F)
    )


def test_detector_description(data):
    vim = create_detector("vim", dim=7)
    assert repr(vim) == "ViM(dim=7)" and vim.get_params() == {"dim": 7}
    assert repr(create_detector("mahalanobis")) == "Mahalanobis()"
    assert repr(create_detector("neco", dim=3)) == "NECO(dim=3, variance=None, use_maxlogit=False)"
    info = vim.fit(data.Z, data.y, data.head).fitted_info()
    assert set(info) == {"dim_", "rank_", "alpha_", "n_features_in_", "n_classes_"}
    assert info["dim_"] == 7 and type(info["alpha_"]) is float and type(info["rank_"]) is int
    vim.extra_ = np.float32(2.5)  # numpy scalars become Python numbers
    vim._private_ = 1.0  # private attributes are not fitted state
    info = vim.fitted_info()
    assert type(info["extra_"]) is float and "_private_" not in info
    with pytest.raises(ConfigError, match=r"detector 'mahalanobis' has no parameter 'k'.*\(none\)"):
        create_detector("mahalanobis", k=3)
    with pytest.raises(ConfigError, match="valid parameters: dim$"):
        create_detector("vim", k=3)
    assert list_detectors() == sorted(list_detectors())
    assert detector_class("vim").name == "vim" and detector_class("vim").param_names() == ["dim"]


@pytest.mark.parametrize("name", ["vim", "neco"])
def test_params_for_width_bring_dim_into_range(name):
    cls = detector_class(name)
    assert cls.params_for_width({"dim": 64}, 32) == {"dim": 16}
    assert type(cls.params_for_width({"dim": 64}, 33)["dim"]) is int  # 33 // 2, not 16.5
    assert cls.params_for_width({"dim": 32}, 32) == {"dim": 16}  # at the width: halved too
    assert cls.params_for_width({"dim": 31}, 32) == {"dim": 31}
    assert cls.params_for_width({"dim": 5}, 1) == {"dim": 1}  # never below 1
    params = {"dim": None}
    out = cls.params_for_width(params, 8)
    assert out == {"dim": None} and out is not params
    mahalanobis = detector_class("mahalanobis")
    params = {"x": 3}
    assert mahalanobis.params_for_width(params, 2) == params
    assert mahalanobis.params_for_width(params, 2) is not params


def test_whitening_drops_eigenvalues_below_the_cutoff_of_the_largest():
    from ncood.detectors.gaussian import whitening_factor

    q = np.linalg.qr(np.random.default_rng(8).normal(size=(4, 4)))[0]
    cov = (q * [1e12, 1.0, 1e-5, 1e-5]) @ q.T  # 1e-5 < 4 eps 1e12 but > 4 eps 1
    w = whitening_factor(cov)
    assert w.shape == (4, 2) == (4, np.linalg.matrix_rank(cov))


def test_eigen_cutoff_is_pinvh_s():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(6, 3))
    cov = a @ a.T  # rank 3 of 6
    evals = np.linalg.eigvalsh(cov)
    cut = det_base.eigen_cutoff(evals[-1], 6)
    assert cut == 6 * np.finfo(np.float64).eps * evals[-1]
    assert np.count_nonzero(evals > cut) == np.linalg.matrix_rank(cov) == 3
    assert det_base.eigen_cutoff(-1.0, 6) == 0.0  # a negative maximum counts as 0


def test_registry_holds_the_six_of_the_reference_experiment():
    assert set(SIX) <= set(list_detectors())
    with pytest.raises(ConfigError, match="already registered"):
        det_base.register_detector("vim")(type("Other", (det_base.Detector,), {}))


# --------------------------------------------------------------------------- real features
# What each detector does on the fixture's network (resnet_narrow, 3 epochs on 3,000 real
# Fashion-MNIST images). The network is *more* confident on the texture crops than on ID
# test images, so the confidence scores rank the crops as ID -- the failure mode of Table 1
# of the reference write-up -- while the feature-space detectors are unaffected. Every
# case is asserted (none is an xfail that cannot fail): "id" = AUROC > 0.6, "better" =
# AUROC > 0.5, "fooled" = AUROC < 0.4, "chance" = 0.3 < AUROC < 0.75. Measured AUROCs
# (digits, texture crops), seed 0, CPU with one thread: ash_b .94 .26, ash_p .95 .11,
# ash_s .30 .95, dice .97 .01, energy .97 .02, entropy .90 .44, fdbd .91 .96, gen .96 .17,
# kl_matching .84 .95, knn .93 .96, mahalanobis .87 1.00, maxlogit .95 .04, msp .79 .48,
# nci .91 .89, neco .78 .67, nnguide .97 .02, react .97 .20, rmds .90 .88, scale .70 .49,
# she .98 .21, vim .95 .58. With the default thread count training takes another path
# and two cases move: vim on textures .96, fdbd on digits .56 (fdbd since its label-free
# mean); both are "better". A change of the training recipe moves these; re-measure and
# update the table with the reason.
REAL_EXPECTED = {
    "ash_b": ("id", "fooled"),
    "ash_p": ("id", "fooled"),
    "ash_s": ("fooled", "id"),  # measured below chance on the digits (.30)
    "dice": ("id", "fooled"),
    "energy": ("id", "fooled"),
    "entropy": ("id", "chance"),
    "fdbd": ("not_fooled", "id"),  # digits .56 or .91 by thread count: the widest band
    "gen": ("id", "fooled"),
    "kl_matching": ("id", "id"),
    "knn": ("id", "id"),
    "mahalanobis": ("id", "id"),
    "maxlogit": ("id", "fooled"),
    "msp": ("id", "chance"),
    "nci": ("id", "id"),
    "neco": ("id", "chance"),
    "nnguide": ("id", "fooled"),
    "react": ("id", "fooled"),
    "rmds": ("id", "id"),
    "scale": ("id", "chance"),
    "she": ("id", "fooled"),
    "vim": ("id", "better"),
}
REAL_BANDS = {
    "id": (0.6, 1.0),
    "better": (0.5, 1.0),
    "not_fooled": (0.45, 1.0),
    "fooled": (0.0, 0.4),
    "chance": (0.3, 0.75),
}


@pytest.mark.slow
@pytest.mark.parametrize("ood", ["digits", "texture_crops"])
@pytest.mark.parametrize("name", list_detectors())
def test_detectors_on_real_features(fmnist_run, name, ood):
    if name not in REAL_EXPECTED:
        pytest.fail(f"no expectation for {name!r}: measure its AUROCs and add it to REAL_EXPECTED")
    expected = REAL_EXPECTED[name][0 if ood == "digits" else 1]
    run = fmnist_run
    det = create_detector(name).fit(run.train.features, run.train.labels, run.head)
    id_scores = det.score(run.test.features, run.test.logits)
    fs = run.ood[ood]
    value = auroc(id_scores, det.score(fs.features, fs.logits))
    low, high = REAL_BANDS[expected]
    assert low <= value <= high, f"{name} on {ood}: AUROC {value:.3f}, expected {expected!r}"
