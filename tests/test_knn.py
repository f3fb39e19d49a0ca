"""KNN at scale: exact top-k in blocks, float64-accurate distances for close neighbours
(issue 13 "KNN at scale", issue 15 "Numerics: KNN")."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

import ncood.detectors.neighbors as nb
from ncood.detectors import create_detector
from ncood.errors import ConfigError
from ncood.metrics import auroc
from ncood.types import LinearHead


def _unit(a):
    a = np.asarray(a, dtype=np.float64)
    return a / (np.linalg.norm(a, axis=1, keepdims=True) + nb.NORM_EPS)


def _brute_force(train, queries, k):
    """-(k-th smallest float64 Euclidean distance between normalised vectors), scipy."""
    d = cdist(_unit(queries), _unit(train))  # (n_query, n_train), float64
    return -np.sort(d, axis=1)[:, k - 1]


def _offset_problem(seed=0, n=2500, d=16, offset=1e4):
    """Features with a huge common offset: all normalised vectors are within ~1e-4 of
    each other, so 2 - 2 cos in float32 is pure rounding."""
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(n, d)) + offset
    test = rng.normal(size=(n, d)) + offset
    ood = 3.0 * rng.normal(size=(n, d)) + offset
    head = LinearHead(rng.normal(size=(3, d)), np.zeros(3))
    return train, rng.integers(0, 3, n), head, test, ood


@pytest.fixture(scope="module")
def offset():
    return _offset_problem()


@pytest.mark.parametrize("index_dtype, rtol", [("float64", 1e-10), ("float32", 1e-6)])
def test_offset_features_match_float64_brute_force(offset, index_dtype, rtol):
    train, y, head, test, ood = offset
    det = create_detector("knn", index_dtype=index_dtype).fit(train, y, head)
    s_id, s_ood = det.score(test, None), det.score(ood, None)
    ref_id, ref_ood = _brute_force(train, test, 50), _brute_force(train, ood, 50)
    np.testing.assert_allclose(s_id, ref_id, rtol=rtol)
    np.testing.assert_allclose(s_ood, ref_ood, rtol=rtol)
    # the float32 `2 - 2 cos` of the old code gave 1 distinct score (-0.0) and AUROC 0.50
    assert len(np.unique(s_id)) == len(test)
    assert (s_id < 0).all()
    assert auroc(s_id, s_ood) == pytest.approx(auroc(ref_id, ref_ood), abs=1e-6)
    assert auroc(s_id, s_ood) > 0.95


def test_offset_features_match_sklearn_nearest_neighbors(offset):
    train, y, head, test, _ = offset
    k = 7
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(_unit(train))
    dist, _ = nn.kneighbors(_unit(test[:300]))
    det = create_detector("knn", k=k, index_dtype="float64").fit(train, y, head)
    # sklearn's brute force expands ||a||^2 + ||b||^2 - 2 a.b in float64: with unit vectors
    # ~1e-4 apart that keeps ~8 digits (cdist, above, subtracts directly and keeps ~15)
    np.testing.assert_allclose(det.score(test[:300], None), -dist[:, -1], rtol=1e-6)


def test_float32_train_features_match_brute_force_on_the_same_values(offset):
    train, y, head, test, _ = offset
    t32 = train.astype(np.float32)  # the data as a float32 cache holds it
    det = create_detector("knn", index_dtype="float64").fit(t32, y, head)
    np.testing.assert_allclose(
        det.score(test[:200], None), _brute_force(t32, test[:200], 50), rtol=1e-10
    )


def test_blocked_search_equals_single_block_reference(monkeypatch):
    """Tiny query chunks, train blocks, shortlist gathers and centre rows: the blocked
    search equals one (n_query x n_train) scipy distance matrix."""
    rng = np.random.default_rng(5)
    train = np.maximum(rng.normal(size=(700, 20)) + 0.5, 0.0)
    train[:5] = 0.0  # all-zero vectors (dead ReLU sample): NORM_EPS keeps them finite
    query = np.maximum(rng.normal(size=(90, 20)) + 0.5, 0.0)
    head = LinearHead(rng.normal(size=(3, 20)), np.zeros(3))
    y = rng.integers(0, 3, 700)
    monkeypatch.setattr(nb, "TRAIN_ROWS", 33)
    monkeypatch.setattr(nb, "SIM_VALUES", 11 * 33)  # 11 query rows per chunk
    monkeypatch.setattr(nb, "RERANK_VALUES", 3 * 20 * 60)
    monkeypatch.setattr(nb, "CENTER_ROWS", 13)
    for k, labels in ((1, y), (5, None), (50, y)):  # 3 class anchors, or 1 anchor
        det = create_detector("knn", k=k, index_dtype="float64").fit(train, labels, head)
        assert det.n_anchors_ == (1 if labels is None else 3)
        assert det._score_chunk_rows(20) == 11
        np.testing.assert_allclose(
            det.score(query, None), _brute_force(train, query, k), rtol=1e-12, atol=1e-15
        )


def test_k_equal_to_n_train_and_k_one():
    rng = np.random.default_rng(2)
    train, query = rng.normal(size=(40, 6)), rng.normal(size=(9, 6))
    head = LinearHead(rng.normal(size=(2, 6)), np.zeros(2))
    for k in (1, 40):
        det = create_detector("knn", k=k).fit(train, np.zeros(40, int), head)
        np.testing.assert_allclose(det.score(query, None), _brute_force(train, query, k), rtol=1e-6)


def test_default_k_is_50():
    assert create_detector("knn").get_params() == {
        "k": 50,
        "index_dtype": "float32",
        "backend": "auto",
    }


@pytest.mark.skipif(nb._faiss() is None, reason="faiss-cpu (optional extra) not installed")
def test_faiss_and_numpy_shortlists_give_the_same_scores(offset):
    train, y, head, test, _ = offset
    fa = create_detector("knn", backend="faiss").fit(train, y, head)
    npy = create_detector("knn", backend="numpy").fit(train, y, head)
    assert (fa.backend_, npy.backend_) == ("faiss", "numpy")
    # auto: faiss for one anchor (no labels); grouped NumPy products for class anchors
    assert create_detector("knn").fit(train, None, head).backend_ == "faiss"
    assert create_detector("knn").fit(train, y, head).backend_ == "numpy"
    np.testing.assert_allclose(fa.score(test, None), npy.score(test, None), rtol=1e-12)
    np.testing.assert_allclose(fa.score(test, None), _brute_force(train, test, 50), rtol=1e-6)


def test_without_faiss_auto_falls_back_to_numpy(offset, monkeypatch):
    train, y, head, test, _ = offset
    monkeypatch.setattr(nb, "_faiss", lambda: None)
    det = create_detector("knn").fit(train, y, head)
    assert det.backend_ == "numpy"
    np.testing.assert_allclose(det.score(test, None), _brute_force(train, test, 50), rtol=1e-6)
    with pytest.raises(ConfigError, match="faiss is not installed.*ncood\\[faiss\\]"):
        create_detector("knn", backend="faiss").fit(train, y, head)
    with pytest.raises(ConfigError, match="needs index_dtype='float32'"):
        create_detector("knn", backend="faiss", index_dtype="float64")


def test_memory_of_a_score_chunk_is_bounded():
    """Query chunk x train block never exceeds SIM_VALUES products, whatever n_train."""
    det = nb.KNN()
    det.anchor_starts_ = np.array([0, 1_000_000])  # one anchor of 1M rows: only sizes read
    rows = det._score_chunk_rows(2048)
    assert rows * min(1_000_000, nb.TRAIN_ROWS) <= nb.SIM_VALUES
    assert rows >= 64  # and BLAS still gets a matrix, not a vector


def test_tight_clusters_far_from_the_centre_are_re_ranked_exactly():
    """Collapsed features: two classes 1e-6 wide on orthogonal directions. The centred
    expansion alone keeps ~4 digits of these distances; the float64 re-ranking of the
    shortlist by direct differences keeps them to rounding."""
    rng = np.random.default_rng(9)
    d = 8
    means = 10.0 * np.eye(d)[:2]
    y = rng.integers(0, 2, 600)
    train = means[y] + 1e-6 * rng.normal(size=(600, d))
    query = means[rng.integers(0, 2, 50)] + 1e-6 * rng.normal(size=(50, d))
    head = LinearHead(rng.normal(size=(2, d)), np.zeros(2))
    det = create_detector("knn", k=10, index_dtype="float64").fit(train, y, head)
    np.testing.assert_allclose(det.score(query, None), _brute_force(train, query, 10), rtol=1e-8)


@pytest.mark.parametrize("spread", [1e-3, 1e-5])
def test_collapsed_classes_are_accurate_with_a_float32_index(spread):
    """With labels, each class is stored as float32 residuals about its own mean unit
    vector: neighbour distances keep ~7 digits however tight the classes are (one global
    centre keeps 7 digits of the *between*-class distance: 1e-2 errors at spread 1e-5)."""
    rng = np.random.default_rng(9)
    d = 8
    means = 10.0 * np.eye(d)[:2]
    y = rng.integers(0, 2, 600)
    train = means[y] + spread * rng.normal(size=(600, d))
    query = means[rng.integers(0, 2, 50)] + spread * rng.normal(size=(50, d))
    head = LinearHead(rng.normal(size=(2, d)), np.zeros(2))
    ref = _brute_force(train, query, 10)
    for backend in ("numpy", "faiss") if nb._faiss() is not None else ("numpy",):
        det = create_detector("knn", k=10, backend=backend).fit(train, y, head)
        np.testing.assert_allclose(det.score(query, None), ref, rtol=1e-5, err_msg=backend)
    # without labels (one anchor) the float32 residuals cannot resolve the tight classes
    one = create_detector("knn", k=10, backend="numpy").fit(train, None, head)
    assert one.n_anchors_ == 1
    if spread < 1e-4:
        assert np.max(np.abs(one.score(query, None) - ref) / np.abs(ref)) > 1e-4
