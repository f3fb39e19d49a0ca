"""Neural-collapse metrics against closed forms, brute-force loops and second formulations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestCentroid

from ncood.collapse import (
    ClassStats,
    collapse_metrics,
    layer_metrics,
    nc5,
    nc5_centred,
    to_jsonable,
)
from ncood.collapse.depth import depth_decay, depth_metrics, fit_log_linear
from ncood.collapse.metrics import HEAD_SCALARS
from ncood.errors import ShapeError
from ncood.types import LinearHead

SCALARS = HEAD_SCALARS + ("ncc_acc",)


# ---------------------------------------------------------------------- fixtures
def rotation(d: int, seed: int = 0) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))  # (d, d) orthogonal


def simplex_etf(c: int, d: int, seed: int = 0) -> np.ndarray:
    """``(C, D)`` rows of a simplex ETF (unit norms, cosines -1/(C-1)), randomly rotated."""
    e = np.sqrt(c / (c - 1)) * (np.eye(c) - 1.0 / c)  # (C, C), rows sum to 0
    return e @ rotation(d, seed)[:c]  # embed the C-dim frame in D dims, then rotate


def centred_noise(y: np.ndarray, d: int, seed: int) -> np.ndarray:
    """Gaussian noise whose per-class mean is exactly zero (class means stay fixed)."""
    noise = np.random.default_rng(seed).standard_normal((y.size, d))
    for c in np.unique(y):
        noise[y == c] -= noise[y == c].mean(axis=0)
    return noise


def clustered(c=6, d=16, per=40, spread=1.0, offset=0.0, seed=0, sizes=None):
    """Gaussian classes; ``per`` samples each, or ``sizes[k]`` for class k (unequal)."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((c, d)) * 3.0
    y = np.repeat(np.arange(c), per if sizes is None else sizes)
    rng.shuffle(y)
    z = mu[y] + spread * rng.standard_normal((y.size, d)) + offset
    head = LinearHead(rng.standard_normal((c, d)), rng.standard_normal(c))
    return z, y, head


def brute_force(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """Direct loop implementation of the DESIGN.md table (float64, no streaming)."""
    c = int(y.max()) + 1
    mus = np.stack([z[y == k].mean(axis=0) for k in range(c)])
    mg = mus.mean(axis=0)
    m = mus - mg
    var = np.array([np.mean(np.sum((z[y == k] - mus[k]) ** 2, axis=1)) for k in range(c)])
    pairs = [(i, j) for i in range(c) for j in range(i + 1, c)]
    cdnv = np.mean([(var[i] + var[j]) / (2 * np.sum((mus[i] - mus[j]) ** 2)) for i, j in pairs])

    def nc2(rows):
        norms = np.linalg.norm(rows, axis=1)
        cos = np.array([rows[i] @ rows[j] / (norms[i] * norms[j]) for i, j in pairs])
        return norms.std() / norms.mean(), cos.std(), np.mean(np.abs(cos + 1 / (c - 1)))

    en_m, ea_m, ma_m = nc2(m)
    en_w, ea_w, ma_w = nc2(w)
    resid = z - mus[y]
    s_w = resid.T @ resid / len(y)
    s_b = m.T @ m / c

    def cosines(rows):
        return np.array(
            [
                rows[i] @ rows[j] / np.linalg.norm(rows[i]) / np.linalg.norm(rows[j])
                for i, j in pairs
            ]
        )

    counts = np.bincount(y, minlength=c)
    return {
        "n": len(y),
        "counts": counts,
        "nc1": np.trace(s_w @ np.linalg.pinv(s_b)) / c,
        "within_class_variance_mean": var.mean(),
        "mean_norms": np.linalg.norm(m, axis=1),
        "weight_norms": np.linalg.norm(w, axis=1),
        "mean_cosines": cosines(m),
        "weight_cosines": cosines(w),
        "etf_cosine": -1.0 / (c - 1),
        "nc1_trace": np.trace(s_w) / np.trace(s_b),
        "cdnv": cdnv,
        "nc2_equinorm_means": en_m,
        "nc2_equiangular_means": ea_m,
        "nc2_maxangle_means": ma_m,
        "nc2_equinorm_weights": en_w,
        "nc2_equiangular_weights": ea_w,
        "nc2_maxangle_weights": ma_w,
        "nc3": np.sum((w / np.linalg.norm(w) - m / np.linalg.norm(m)) ** 2),
        "weight_mean_cosine": np.array(
            [w[k] @ m[k] / (np.linalg.norm(w[k]) * np.linalg.norm(m[k])) for k in range(c)]
        ),
        "within_class_variance": var,
        "mean_distances": cdist(mus, mus),
        "s_w": s_w,
        "s_b": s_b,
    }


# ---------------------------------------------------------------------- exact ETF
@pytest.mark.parametrize("offset", [0.0, 7.5])
def test_exact_simplex_etf_is_fully_collapsed(offset):
    c, d = 10, 32
    mu = simplex_etf(c, d, seed=1) * 4.0  # centred ETF, norm 4
    y = np.repeat(np.arange(c), 7)
    z = mu[y] + offset  # samples are exactly their class means; mu_G = offset
    shift = np.full(d, offset)
    # NC3 with W = a M; b = -W mu_G makes W z + b = a M (mu_c - mu_G) (NC4 for any offset)
    m = collapse_metrics(z, y, LinearHead(2.5 * mu, -(2.5 * mu) @ shift))
    for key in ("nc1", "nc1_trace", "cdnv", "nc3", "nc4") + tuple(
        f"nc2_{k}_{w}"
        for k in ("equinorm", "equiangular", "maxangle")
        for w in ("means", "weights")
    ):
        assert abs(m[key]) < 1e-10, (key, m[key])
    np.testing.assert_allclose(m["weight_mean_cosine"], 1.0, atol=1e-12)
    np.testing.assert_allclose(m["mean_cosines"], -1 / (c - 1), atol=1e-12)
    assert m["etf_exists"] and m["notes"] == [] and m["nc1_rank"] == c - 1
    # NC4 with W = M and b = 0 on features centred at mu_G = 0
    m0 = collapse_metrics(mu[y], y, LinearHead(mu, np.zeros(c)))
    assert m0["nc4"] == 0.0 and m0["ncc_acc"] == 1.0


def test_nc1_grows_as_noise_squared():
    c, d = 10, 32
    mu = simplex_etf(c, d, seed=2) * 5.0
    y = np.repeat(np.arange(c), 30)
    noise = centred_noise(y, d, seed=3)
    scales = np.logspace(-2, 0.5, 6)
    nc1 = [layer_metrics(mu[y] + s * noise, y)["nc1"] for s in scales]
    slope = np.polyfit(np.log(scales), np.log(nc1), 1)[0]
    assert abs(slope - 2.0) < 0.05
    # closed form: S_B of an ETF of norm r is r^2/(C-1) times the projector on its span
    resid = noise.T @ noise / y.size
    _, _, vt = np.linalg.svd(mu)
    proj = vt[: c - 1].T @ vt[: c - 1]
    expected = scales[0] ** 2 * np.trace(resid @ proj) * (c - 1) / 25.0 / c
    np.testing.assert_allclose(nc1[0], expected, rtol=1e-10)


@pytest.mark.parametrize("transform", ["rotation", "scale", "both", "small"])
def test_metrics_invariant_to_rotation_and_scaling(transform):
    z, y, head = clustered(c=7, d=20, per=30, seed=4)
    ood = np.random.default_rng(5).standard_normal((50, 20)) + 1.0
    q = rotation(20, seed=6) if transform in ("rotation", "both") else np.eye(20)
    a = {"rotation": 1.0, "scale": 3.7, "both": 3.7, "small": 1e-3}[transform]
    # features z -> a z Q, head W -> W Q / a: the logits are unchanged
    head2 = LinearHead(head.weight @ q / a, head.bias)
    m1, m2 = collapse_metrics(z, y, head), collapse_metrics(a * z @ q, y, head2)
    for key in SCALARS:
        np.testing.assert_allclose(m2[key], m1[key], rtol=1e-9, atol=1e-12, err_msg=key)
    np.testing.assert_allclose(nc5(a * z @ q, y, a * ood @ q), nc5(z, y, ood), rtol=1e-10)


# ---------------------------------------------------------------------- brute force
UNEQUAL = [5, 60, 12, 33, 90, 8]  # class sizes: the mean of the class means != sample mean


@pytest.mark.parametrize("offset", [0.0, 50.0])
@pytest.mark.parametrize("sizes", [None, UNEQUAL])
def test_metrics_match_brute_force_loops(offset, sizes):
    z, y, head = clustered(c=6, d=12, per=25, spread=1.5, offset=offset, seed=7, sizes=sizes)
    m = collapse_metrics(z, y, head)
    ref = brute_force(z, y, head.weight)
    assert set(ref) - {"s_w", "s_b"} <= set(m)  # every output the loops compute
    for key, val in ref.items():
        if key in m:
            np.testing.assert_allclose(m[key], val, rtol=1e-9, atol=1e-12, err_msg=key)
    if sizes is not None:  # the check can tell mu_G from the sample mean
        mus = np.stack([z[y == k].mean(axis=0) for k in range(6)])
        assert np.linalg.norm(mus.mean(axis=0) - z.mean(axis=0)) > 0.1
        m_samples = mus - z.mean(axis=0)
        wrong = np.sum(
            (head.weight / np.linalg.norm(head.weight) - m_samples / np.linalg.norm(m_samples)) ** 2
        )
        assert abs(wrong - m["nc3"]) > 1e-3


@pytest.mark.parametrize("full", [True, False])
def test_layer_metrics_match_brute_force_with_unequal_classes(full):
    z, y, head = clustered(c=5, d=9, spread=1.2, offset=10.0, seed=50, sizes=[9, 40, 3, 22, 14])
    m = layer_metrics(z, y, full=full, chunk_size=11)
    ref = brute_force(z, y, head.weight)
    heads = {"nc2_equinorm_weights", "nc2_equiangular_weights", "nc2_maxangle_weights", "nc3"}
    light_only = {"nc1_trace", "cdnv", "within_class_variance", "mean_distances", "counts", "n"}
    checked = [k for k in ref if k in m]
    assert not heads & set(m)
    if not full:  # exactly the inversion-free entries
        assert light_only <= set(checked) and not {"nc1", "nc1_rank", "mean_norms"} & set(m)
        assert not any(k.startswith("nc2_") for k in m) and m["full"] is False
    else:
        assert {"nc1", "nc2_equinorm_means", "mean_cosines"} <= set(checked) and m["full"]
    for key in checked:
        np.testing.assert_allclose(m[key], ref[key], rtol=1e-9, atol=1e-12, err_msg=key)
    mus = np.stack([z[y == k].mean(axis=0) for k in range(5)])
    nearest = cdist(z, mus).argmin(axis=1)
    assert m["ncc_acc"] == np.mean(nearest == y)


def test_two_classes_match_brute_force():
    z, y, head = clustered(c=2, d=5, per=30, spread=2.0, offset=3.0, seed=51)
    m = collapse_metrics(z, y, head)
    ref = brute_force(z, y, head.weight)
    for key, val in ref.items():
        if key in m:
            np.testing.assert_allclose(m[key], val, rtol=1e-9, atol=1e-12, err_msg=key)
    assert m["nc1_rank"] == 1 and m["etf_cosine"] == -1.0 and np.isfinite(m["nc1"])


@pytest.mark.parametrize("d", [3, 4, 2])
def test_etf_exists_exactly_when_d_at_least_c_minus_one(d):
    z, y, head = clustered(c=4, d=d, per=15, seed=52)
    m = collapse_metrics(z, y, head)
    assert m["etf_exists"] is (d >= 3)
    assert m["etf_cosine"] == pytest.approx(-1.0 / 3.0)
    if d >= 3:
        assert m["notes"] == []
    else:
        assert m["notes"] == [
            "no simplex ETF of C=4 classes exists in D=2 dimensions (needs D >= C-1 = 3); the "
            "NC2 targets (equal norms, cosines -1/(C-1)) cannot be reached, so the nc2_* values "
            "do not measure distance to an ETF"
        ]


def _designed_spectrum(sig, d=7, per=12, seed=53):
    """Class means whose centred matrix M has singular values ``sig`` (C = len(sig) + 1)."""
    c = len(sig) + 1
    basis = np.linalg.qr(np.column_stack([np.ones(c), rotation(c, seed)[:, 1:]]))[0][:, 1:]
    m = basis @ np.diag(sig) @ rotation(d, seed + 1)[: len(sig)]  # (C, D), rows sum to 0
    y = np.repeat(np.arange(c), per)
    z = m[y] + 5.0 + 0.3 * centred_noise(y, d, seed + 2)
    return z, y, m


def test_nc1_keeps_only_eigenvalues_above_the_relative_tolerance():
    from ncood.collapse.metrics import nc1_from_stats

    z, y, m = _designed_spectrum([np.sqrt(10.0), 2.0, 1.0])  # S_B eigenvalues 10:4:1
    c = 4
    stats = ClassStats.from_features(z, y, c)
    resid = z - (m + 5.0)[y]
    s_w = resid.T @ resid / len(y)
    _, sv, vt = np.linalg.svd(m)

    def ref(k):
        return sum(vt[i] @ s_w @ vt[i] / (sv[i] ** 2 / c) for i in range(k)) / c

    assert nc1_from_stats(stats) == pytest.approx((ref(3), 3), rel=1e-9)
    assert nc1_from_stats(stats, rtol=0.5) == pytest.approx((ref(1), 1), rel=1e-9)  # 4 < 5
    assert nc1_from_stats(stats, rtol=0.3) == pytest.approx((ref(2), 2), rel=1e-9)  # 4 > 3
    # rtol=0 keeps all C-1 but never the C-th (rounding-level) direction of S_B
    assert nc1_from_stats(stats, rtol=0.0) == pytest.approx((ref(3), 3), rel=1e-9)


def test_nc1_drops_a_spurious_tiny_eigenvalue():
    # the class means span C-2 directions: the (C-1)-th eigenvalue of S_B is rounding
    z, y, m = _designed_spectrum([3.0, 2.0, 0.0])
    got = collapse_metrics(z, y, LinearHead(m, np.zeros(4)))
    ref = brute_force(z, y, m)
    assert got["nc1_rank"] == 2
    np.testing.assert_allclose(got["nc1"], ref["nc1"], rtol=1e-8)  # pinv drops it too
    assert got["nc1"] < 10.0


def test_inputs_that_disagree_with_the_statistics_raise():
    z, y, head = clustered(c=4, d=6, per=20, seed=54)
    with pytest.raises(ShapeError, match="stats have D=5 features"):
        collapse_metrics(z, y, head, stats=ClassStats.from_features(z[:, :5], y, 4))
    with pytest.raises(ShapeError, match="stats have C=5 classes, but the head has C=4"):
        collapse_metrics(z, y, head, stats=ClassStats.from_features(z, y, 5))
    with pytest.raises(ShapeError, match="stats hold 40 samples but features have 80"):
        collapse_metrics(z, y, head, stats=ClassStats.from_features(z[:40], y[:40], 4))
    with pytest.raises(ShapeError, match="second_moment"):
        light = ClassStats.from_features(z, y, 4, second_moment=False)
        collapse_metrics(z, y, head, stats=light)
    with pytest.raises(ShapeError, match="second_moment"):
        layer_metrics(z, y, stats=ClassStats.from_features(z, y, 4, second_moment=False))
    with pytest.raises(ShapeError, match="stats have D=5"):
        layer_metrics(z, y, stats=ClassStats.from_features(z[:, :5], y, 4))
    with pytest.raises(ShapeError, match="stats have C=4 classes, but the head has C=5"):
        layer_metrics(z, y, stats=ClassStats.from_features(z, y, 4), num_classes=5)
    bad = y.copy()
    bad[3] = 4
    stats = ClassStats.from_features(z, y, 4)
    with pytest.raises(ShapeError, match=r"labels must lie in 0..3"):
        collapse_metrics(z, bad, head, stats=stats)
    with pytest.raises(ShapeError, match=r"labels must lie in 0..3"):
        layer_metrics(z, bad, stats=stats)
    with pytest.raises(ShapeError, match=r"labels must have shape \(80,\)"):
        layer_metrics(z, y[:-1], stats=stats)
    with pytest.raises(ShapeError, match="need at least 2 classes|at least 2 classes"):
        layer_metrics(z, np.zeros(80, dtype=int))
    # given statistics are used as they are (not rebuilt from the features)
    m = layer_metrics(z, y, stats=stats, full=False)
    assert m["nc1_trace"] == pytest.approx(layer_metrics(z, y)["nc1_trace"], rel=1e-12)
    # full=False drops the covariance-based entries even when the stats could give them
    assert not {"nc1", "nc1_rank", "mean_norms", "mean_cosines"} & set(m)
    assert not any(k.startswith("nc2_") for k in m)
    assert (m["num_classes"], m["dim"], m["n"]) == (4, 6, 80)
    ood = z[:9] + 1.0
    assert nc5(None, None, ood, stats=stats) == pytest.approx(nc5(z, y, ood), rel=1e-12)


def test_decision_pass_counts_every_chunk():
    from ncood.collapse import decision_metrics

    z, y, head = clustered(c=3, d=4, per=10, seed=55)
    stats = ClassStats.from_features(z, y, 3)
    one = decision_metrics(iter([(z[:1], y[:1])]), stats, head)  # a single sample
    mus = stats.means
    nearest = int(cdist(z[:1], mus).argmin())
    assert one["ncc_acc"] == float(nearest == y[0])
    assert one["nc4"] == float(int(head.logits(z[:1]).argmax()) != nearest)
    assert "nc4" not in decision_metrics(iter([(z, y)]), stats)
    with pytest.raises(ShapeError, match="saw 0 samples"):
        decision_metrics(iter([]), stats, head)


def test_zero_rows_have_cosine_zero():
    z, y, head = clustered(c=4, d=6, per=20, seed=56)
    w = 1e-3 * head.weight  # norms below 1 are normalised too
    w[2] = 0.0  # a zero row has cosine 0 with every other row
    m = collapse_metrics(z, y, LinearHead(w, head.bias))
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    for (i, j), cos in zip(pairs, m["weight_cosines"], strict=True):
        if 2 in (i, j):
            assert cos == 0.0
        else:
            ref = w[i] @ w[j] / (np.linalg.norm(w[i]) * np.linalg.norm(w[j]))
            assert cos == pytest.approx(ref, rel=1e-12)
    assert m["weight_norms"][2] == 0.0 and np.isfinite(m["nc2_equinorm_weights"])


def test_cosines_of_parallel_rows_stay_within_one():
    from ncood.collapse.metrics import _offdiag_cosines, nc1_from_stats

    # parallel rows whose unit-vector Gram entries round beyond +-1 in float64
    for x in np.random.default_rng(72).standard_normal((1000, 7)):
        rows = np.stack([x, 3.0 * x, -2.0 * x])
        unit = rows / np.linalg.norm(rows, axis=1)[:, None]
        gram = (unit @ unit.T)[np.triu_indices(3, k=1)]
        if gram.max() > 1.0 and gram.min() < -1.0:
            break
    else:
        pytest.fail("no row with a Gram entry beyond +-1 found")
    norms, cos = _offdiag_cosines(rows)
    np.testing.assert_allclose(cos, [1.0, -1.0, -1.0], atol=1e-15)
    assert np.all(np.abs(cos) <= 1.0)
    # coincident class means: nc1_from_stats itself reports inf with 0 eigenpairs
    y = np.repeat(np.arange(3), 4)
    assert nc1_from_stats(ClassStats.from_features(np.ones((12, 3)), y, 3)) == (np.inf, 0)


def test_nc5_centred_against_brute_force_with_unequal_classes():
    z, y, _ = clustered(c=6, d=12, spread=1.5, offset=30.0, seed=31, sizes=UNEQUAL)
    ood = np.random.default_rng(32).standard_normal((70, 12)) * 2.0 + 31.0
    mus = np.stack([z[y == k].mean(axis=0) for k in range(6)])
    mg = mus.mean(axis=0)  # mean of the class means
    o = ood.mean(axis=0) - mg

    def orthodev(rows, v):
        return np.mean([abs(r @ v) / (np.linalg.norm(r) * np.linalg.norm(v)) for r in rows])

    got = nc5_centred(z, y, ood)
    np.testing.assert_allclose(got, orthodev(mus - mg, o), rtol=1e-10)
    # the variants a bug could compute are far from it, so the check can fail
    for wrong in (orthodev(mus, o), orthodev(mus - z.mean(0), ood.mean(0) - z.mean(0))):
        assert abs(wrong - got) > 1e-3
    np.testing.assert_allclose(nc5(z, y, ood), orthodev(mus, ood.mean(axis=0)), rtol=1e-10)
    # with precomputed stats of two merged shards, and tiny chunks: the same numbers
    stats = ClassStats.from_features(z[:100], y[:100], 6, second_moment=False).merge(
        ClassStats.from_features(z[100:], y[100:], 6, second_moment=False)
    )
    assert nc5_centred(None, None, ood, stats=stats, chunk_size=7) == pytest.approx(got, rel=1e-12)


def test_cdnv_against_brute_force_loop():
    z, y, _ = clustered(c=5, d=8, per=20, spread=2.0, seed=8)
    total, pairs = 0.0, 0
    for i in range(5):
        for j in range(i + 1, 5):
            zi, zj = z[y == i], z[y == j]
            vi = np.mean([np.sum((r - zi.mean(0)) ** 2) for r in zi])
            vj = np.mean([np.sum((r - zj.mean(0)) ** 2) for r in zj])
            total += (vi + vj) / (2 * np.sum((zi.mean(0) - zj.mean(0)) ** 2))
            pairs += 1
    np.testing.assert_allclose(layer_metrics(z, y)["cdnv"], total / pairs, rtol=1e-10)


def test_nc4_and_ncc_accuracy_against_direct_distances():
    # float32 with a large offset: the ||z||^2 - 2 z.mu + ||mu||^2 trick is taken about a shift
    z, y, head = clustered(c=8, d=24, per=50, spread=3.0, offset=100.0, seed=9)
    z32 = z.astype(np.float32)
    m = collapse_metrics(z32, y, head, chunk_size=37)
    z64 = z32.astype(np.float64)
    mus = np.stack([z64[y == k].mean(0) for k in range(8)])
    nearest = cdist(z64, mus).argmin(axis=1)
    pred = (z64 @ head.weight.T + head.bias).argmax(axis=1)
    assert m["nc4"] == pytest.approx(np.mean(pred != nearest), abs=0)
    sk = NearestCentroid().fit(z64, y).predict(z64)
    assert m["ncc_acc"] == pytest.approx(np.mean(sk == y), abs=0)
    assert 0.0 < m["nc4"] < 1.0  # the check is not vacuous


def test_nc4_is_disagreement_with_the_nearest_mean_not_training_error():
    """NC4 compares the head with the nearest class mean, not with the labels."""
    c, d = 5, 12
    mu = simplex_etf(c, d, seed=40) * 6.0
    y = np.repeat(np.arange(c), 40)
    offset = 4.0 * np.arange(d) / d  # so that the head's bias matters
    z = mu[y] + 0.3 * centred_noise(y, d, seed=41) + offset
    y_noisy = y.copy()
    y_noisy[::10] = (y[::10] + 1) % c  # 10% of the labels point to another class
    # the head is the nearest-class-mean rule of the clean classes: NC4 = 0, while its
    # training error against the noisy labels is 10%
    centres = mu + offset
    head = LinearHead(centres, -0.5 * np.sum(centres**2, axis=1))
    m = collapse_metrics(z, y_noisy, head)
    mus = np.stack([z[y_noisy == k].mean(axis=0) for k in range(c)])
    nearest = cdist(z, mus).argmin(axis=1)
    pred = head.logits(z).argmax(axis=1)
    wrong_sign = (z @ centres.T - head.bias).argmax(axis=1)
    assert np.mean(wrong_sign != nearest) > 0.2  # the bias is not a bystander
    assert np.mean(pred != y_noisy) == pytest.approx(0.1)
    assert m["nc4"] == np.mean(pred != nearest) == 0.0
    assert m["ncc_acc"] == pytest.approx(np.mean(nearest == y_noisy)) == pytest.approx(0.9)
    # a head that predicts the next class: NC4 = 1 (every sample), training error 90%
    shifted = LinearHead(np.roll(head.weight, 1, axis=0), np.roll(head.bias, 1))
    m2 = collapse_metrics(z, y_noisy, shifted)
    assert m2["nc4"] == 1.0
    assert np.mean(shifted.logits(z).argmax(axis=1) != y_noisy) == pytest.approx(0.9)


def test_chunked_passes_equal_one_block(monkeypatch, tmp_path):
    """Tiny chunks over a float32 memmap equal the one-block result computed first."""
    import ncood.collapse.stats as collapse_stats

    z, y, head = clustered(c=5, d=10, per=30, spread=1.0, offset=20.0, seed=42)
    ood = np.random.default_rng(43).standard_normal((50, 10)) + 21.0
    np.save(tmp_path / "z.npy", z.astype(np.float32))
    z32 = np.load(tmp_path / "z.npy", mmap_mode="r")
    z64 = np.asarray(z32, dtype=np.float64)
    assert collapse_stats.chunk_rows(10) >= len(y)  # the reference is one block
    ref = collapse_metrics(z64, y, head)
    ref_layer = layer_metrics(z64, y, full=False)
    ref5 = (nc5(z64, y, ood), nc5_centred(z64, y, ood))
    monkeypatch.setattr(collapse_stats, "CHUNK_VALUES", 30)  # 3 rows per chunk
    assert collapse_stats.chunk_rows(10) == 3 and collapse_stats.chunk_rows(10, 2) == 2
    for got in (collapse_metrics(z32, y, head), collapse_metrics(z32, y, head, chunk_size=2)):
        for key in SCALARS:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-9, err_msg=key)
    light = layer_metrics(z32, y, full=False, chunk_size=4)
    for key in ("nc1_trace", "cdnv", "ncc_acc"):
        np.testing.assert_allclose(light[key], ref_layer[key], rtol=1e-9, err_msg=key)
    np.testing.assert_allclose((nc5(z32, y, ood), nc5_centred(z32, y, ood)), ref5, rtol=1e-9)


# ---------------------------------------------------------------------- degenerate inputs
def test_coincident_class_means_raise_instead_of_nan():
    y = np.repeat(np.arange(4), 10)
    head = LinearHead(np.random.default_rng(44).standard_normal((4, 6)), np.zeros(4))
    # every sample identical (before: cdnv, nc2 equinorm and nc3 were NaN)
    same = np.full((40, 6), 2.5)
    # class means equal, samples spread about them, large offset (before: cdnv ~1e30)
    spread = 50.0 + centred_noise(np.zeros(40, dtype=int), 6, seed=45)
    spread = spread - np.stack([spread[y == k].mean(0) for k in range(4)])[y] + 50.0
    for z in (same, spread):
        with pytest.raises(ShapeError, match="all 4 class means coincide"):
            collapse_metrics(z, y, head)
        with pytest.raises(ShapeError, match="class means coincide"):
            layer_metrics(z, y)
        with pytest.raises(ShapeError, match="class means coincide"):
            layer_metrics(z, y, full=False)
    # barely separated (1e-6 of the scale) is real separation: finite metrics
    sep = spread + 1e-6 * 50.0 * np.eye(6)[y]
    m = collapse_metrics(sep, y, head)
    assert all(np.isfinite(m[k]) for k in HEAD_SCALARS)


def test_two_coincident_classes_give_infinite_cdnv():
    # classes 0 and 1 at the same point with zero spread: (0 + 0) / 0 -> inf, not nan
    mu = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    y = np.repeat(np.arange(4), 3)
    z = mu[y] + np.where(y[:, None] >= 2, 0.1 * centred_noise(y, 2, seed=46), 0.0)
    m = layer_metrics(z, y)
    assert m["cdnv"] == np.inf


def test_zero_head_weight_raises():
    z, y, head = clustered(c=4, d=6, seed=47)
    with pytest.raises(ShapeError, match="weight is all zeros"):
        collapse_metrics(z, y, LinearHead(np.zeros((4, 6)), np.ones(4)))


def test_nc5_ood_mean_at_the_centre_raises():
    z, y, _ = clustered(c=5, d=8, seed=48, offset=40.0, sizes=[7, 20, 11, 30, 9])
    mus = np.stack([z[y == k].mean(axis=0) for k in range(5)])
    mg = mus.mean(axis=0)
    v = np.random.default_rng(49).standard_normal((25, 8))
    at_centre = np.concatenate([mg + v, mg - v])  # OOD mean = mu_G up to rounding
    # before: an exact-zero test let rounding noise (~1e-15) through as a direction
    with pytest.raises(ShapeError, match="nc5_centred is undefined: the OOD mean"):
        nc5_centred(z, y, at_centre)
    with pytest.raises(ShapeError, match="NC5 is undefined: the OOD mean"):
        nc5(z, y, np.concatenate([v, -v]))  # OOD mean = 0 up to rounding
    # a real offset of 1e-6 of the scale is a direction: the brute-force value
    e = np.eye(8)[0] * 1e-6 * 40.0
    near = at_centre + e
    o = near.mean(axis=0) - mg
    expected = np.mean(
        [abs((m - mg) @ o) / (np.linalg.norm(m - mg) * np.linalg.norm(o)) for m in mus]
    )
    np.testing.assert_allclose(nc5_centred(z, y, near), expected, rtol=1e-6)


# ---------------------------------------------------------------------- NC1 numerics
def test_nc1_float32_centring_regression():
    c, d, per = 100, 512, 40
    rng = np.random.default_rng(10)
    mu = rng.standard_normal((c, d))
    y = np.repeat(np.arange(c), per)
    z = (mu[y] + 2.0 * rng.standard_normal((y.size, d)) + 100.0).astype(np.float32)
    got = collapse_metrics(z, y, LinearHead(mu, np.zeros(c)))["nc1"]
    # float64 reference: two-pass means, eigh of S_B, its top C-1 eigenpairs
    z64 = z.astype(np.float64)
    mus = np.stack([z64[y == k].mean(0) for k in range(c)])
    m = mus - mus.mean(0)
    r = z64 - mus[y]
    s_w, s_b = r.T @ r / y.size, m.T @ m / c
    lam, v = np.linalg.eigh(s_b)
    lam, v = lam[-(c - 1) :], v[:, -(c - 1) :]
    ref = np.trace(s_w @ (v / lam) @ v.T) / c
    assert abs(got - ref) / ref < 1e-6
    # the naive float32 version (float32 centring, full pseudo-inverse) is far off,
    # so the comparison above is meaningful
    mus32 = np.stack([z[y == k].mean(0) for k in range(c)])
    m32 = mus32 - mus32.mean(0)
    r32 = z - mus32[y]
    naive = np.trace((r32.T @ r32 / y.size) @ np.linalg.pinv(m32.T @ m32 / c)) / c
    assert abs(naive - ref) / ref > 100.0


@pytest.mark.parametrize(("c", "d"), [(9, 8), (5, 16), (12, 40)])
def test_nc1_agrees_with_full_pseudo_inverse(c, d):
    z, y, head = clustered(c=c, d=d, per=30, spread=1.0, seed=11)
    ref = brute_force(z, y, head.weight)
    full = np.trace(ref["s_w"] @ np.linalg.pinv(ref["s_b"])) / c
    np.testing.assert_allclose(collapse_metrics(z, y, head)["nc1"], full, rtol=1e-8)


def test_no_etf_when_dim_below_classes_minus_one():
    z, y, head = clustered(c=10, d=5, per=20, seed=12)
    m = collapse_metrics(z, y, head)
    assert m["etf_exists"] is False
    assert any("no simplex ETF" in note for note in m["notes"])
    assert m["nc1_rank"] == 5
    ref = brute_force(z, y, head.weight)  # S_B is full rank (D < C-1): pinv == inv
    np.testing.assert_allclose(
        m["nc1"], np.trace(ref["s_w"] @ np.linalg.inv(ref["s_b"])) / 10, rtol=1e-8
    )
    assert layer_metrics(z, y)["notes"] == m["notes"]


# ---------------------------------------------------------------------- NC5
def test_nc5_zero_for_ood_mean_orthogonal_to_class_means():
    c, d = 6, 20
    q = rotation(d, seed=13)
    mu = np.random.default_rng(14).standard_normal((c, c)) @ q[:c]  # span of q[:c]
    y = np.repeat(np.arange(c), 10)
    z = mu[y] + 0.5 * centred_noise(y, d, seed=15)
    ood_dir = 3.0 * q[c] + 2.0 * q[c + 3]  # in the orthogonal complement of the means
    ood = ood_dir + centred_noise(np.zeros(40, dtype=int), d, seed=16)
    assert nc5(z, y, ood) < 1e-12
    # a second, direct formulation on generic data
    ood2 = np.random.default_rng(17).standard_normal((40, d)) + 1.0
    mo = ood2.mean(0)
    direct = np.mean([abs(m @ mo) / (np.linalg.norm(m) * np.linalg.norm(mo)) for m in mu])
    np.testing.assert_allclose(nc5(z, y, ood2), direct, rtol=1e-10)
    # centred variant: 0 when the OOD mean minus mu_G is orthogonal to every mu_c - mu_G
    mg = mu.mean(0)
    assert nc5_centred(z, y, mg + ood_dir + 0 * ood) < 1e-12
    assert nc5(z, y, mg + ood_dir + 0 * ood) > 1e-3  # the uncentred one sees mu_G


# ---------------------------------------------------------------------- streaming
def test_merged_halves_equal_one_pass():
    z, y, head = clustered(c=5, d=10, per=40, spread=1.0, offset=20.0, seed=18)
    half = len(y) // 2
    a = ClassStats.from_features(z[:half], y[:half], 5)
    b = ClassStats.from_features(z[half:] + 0.0, y[half:], 5)  # a different shift
    assert not np.allclose(a.shift, b.shift)
    merged, one = a.merge(b), ClassStats.from_features(z, y, 5)
    np.testing.assert_allclose(merged.within_cov(), one.within_cov(), rtol=1e-10, atol=1e-12)
    m1, m2 = collapse_metrics(z, y, head, stats=merged), collapse_metrics(z, y, head)
    for key in SCALARS:
        np.testing.assert_allclose(m1[key], m2[key], rtol=1e-9, err_msg=key)
    light = ClassStats.from_features(z[:half], y[:half], 5, second_moment=False).merge(
        ClassStats.from_features(z[half:], y[half:], 5, second_moment=False)
    )
    np.testing.assert_allclose(light.class_variances(), one.class_variances(), rtol=1e-10)
    with pytest.raises(ShapeError, match="second_moment"):
        light.within_cov()


def test_rebased_and_merged_statistics_are_exact():
    z, y, _ = clustered(c=3, d=5, per=20, spread=1.0, offset=8.0, seed=60)
    # small chunks: each shift is the mean of a first chunk, not of all rows, so the sums
    # about it do not vanish and the cross terms of the rebasing count
    a = ClassStats.from_features(z[:25], y[:25], 3, chunk_size=4)
    b = ClassStats.from_features(z[25:], y[25:], 3, chunk_size=5)
    assert np.abs(b.sums.sum(axis=0)).max() > 1.0
    merged = a.merge(b)
    shift = a.shift
    zc = z - shift  # direct sums about a's shift
    assert np.array_equal(merged.shift, shift)
    np.testing.assert_allclose(merged.second, zc.T @ zc, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(merged.sums, [zc[y == k].sum(0) for k in range(3)], rtol=1e-12)
    np.testing.assert_allclose(
        merged.sq_norms, [np.sum(zc[y == k] ** 2) for k in range(3)], rtol=1e-12
    )
    target = np.arange(5)  # integers: the shift is stored as float64
    moved = b.rebased(target)
    zt = z[25:] - target
    assert np.array_equal(moved.shift, target) and moved.shift.dtype == np.float64
    assert moved.has_second_moment and np.array_equal(moved.counts, b.counts)
    np.testing.assert_allclose(moved.means, b.means, rtol=1e-14)
    np.testing.assert_allclose(moved.second, zt.T @ zt, rtol=1e-12)
    light = ClassStats.from_features(z, y, 3, second_moment=False)
    assert not light.rebased(target).has_second_moment
    assert not light.merge(ClassStats(3, 5, second_moment=False)).has_second_moment
    # merging into (or with) statistics that saw no sample changes nothing
    for empty_first in (ClassStats(3, 5).merge(a), a.merge(ClassStats(3, 5))):
        np.testing.assert_allclose(empty_first.means, a.means, rtol=1e-14)
        np.testing.assert_allclose(empty_first.within_cov(), a.within_cov(), rtol=1e-12)
        assert empty_first.n == a.n


def test_covariances_against_numpy():
    z, y, _ = clustered(c=3, d=4, per=12, spread=1.5, offset=6.0, seed=70, sizes=[1, 20, 9])
    stats = ClassStats.from_features(z, y, 3)
    u = np.array([1.0, -2.0, 0.5, 3.0])
    np.testing.assert_allclose(stats.scatter_about(u), (z - u).T @ (z - u), rtol=1e-12)
    np.testing.assert_allclose(stats.total_cov(), np.cov(z.T, bias=True), rtol=1e-12)
    mus = np.stack([z[y == k].mean(axis=0) for k in range(3)])
    r = z - mus[y]
    np.testing.assert_allclose(stats.within_scatter(), r.T @ r, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.within_cov(), r.T @ r / len(y), rtol=1e-12, atol=1e-12)
    # a class of one sample has a mean and zero spread
    np.testing.assert_allclose(stats.centred_means(), mus - mus.mean(axis=0), atol=1e-12)
    var = stats.class_variances()
    assert var[0] == pytest.approx(0.0, abs=1e-12) and var[1] > 0
    assert stats.mean == pytest.approx(z.mean(axis=0), rel=1e-12)
    assert stats.global_mean == pytest.approx(mus.mean(axis=0), rel=1e-12)
    copy = stats.copy()
    copy.sums[0, 0] += 1.0
    copy.second[0, 0] += 1.0
    assert stats.sums[0, 0] != copy.sums[0, 0] and stats.second[0, 0] != copy.second[0, 0]


def test_chunk_rows_policy(monkeypatch):
    from ncood.collapse.stats import CHUNK_VALUES, chunk_rows

    assert CHUNK_VALUES == 2**22  # 32 MiB of float64 per chunk
    assert chunk_rows(1) == 2**22 and chunk_rows(512) == 2**13 and chunk_rows(2**23) == 1
    assert chunk_rows(512, 100) == 100 and chunk_rows(512, 10**6) == 2**13  # capped
    assert chunk_rows(10, 1) == 1 and chunk_rows(10, 0) == 1


def test_update_checks_every_batch():
    stats = ClassStats(3, 4)
    stats.update(np.ones((0, 4)), np.zeros(0, dtype=int))  # empty: nothing, no shift
    assert stats.shift is None and stats.n == 0
    np.testing.assert_array_equal(stats.scatter_about(np.zeros(4)), np.zeros((4, 4)))
    stats.update(np.arange(4.0)[None, :], [2])  # a single row counts
    assert stats.counts.tolist() == [0, 0, 1] and stats.counts.dtype == np.int64
    assert stats.shift.tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ShapeError, match=r"batch has shape \(2, 5\), but these statistics"):
        stats.update(np.ones((2, 5)), [0, 1])
    with pytest.raises(ShapeError, match="labels must lie in 0..2"):
        stats.update(np.ones((2, 4)), [0, 3])
    with pytest.raises(ShapeError, match="labels must lie in 0..2"):
        ClassStats.from_features(np.ones((2, 4)), [0, 3], 3)
    with pytest.raises(ShapeError, match="^features contains 1 NaN/inf"):
        stats.update(np.array([[1.0, np.nan, 0.0, 0.0]]), [1])
    assert ClassStats(2, 3, shift=[1, 2, 3]).shift.dtype == np.float64
    # batches of >= 64 rows take the one-hot product path; several of them add up
    z, y, _ = clustered(c=3, d=4, per=50, seed=71)
    big = ClassStats.from_batches([(z[:70], y[:70]), (z[70:], y[70:])], 3, 4)
    small = ClassStats.from_batches([(z[i : i + 5], y[i : i + 5]) for i in range(0, 150, 5)], 3, 4)
    np.testing.assert_allclose(
        big.sums + big.counts[:, None] * (big.shift - small.shift), small.sums, atol=1e-9
    )
    np.testing.assert_allclose(big.means, small.means, rtol=1e-12)
    np.testing.assert_allclose(big.within_cov(), small.within_cov(), rtol=1e-10)


def test_statistics_vector_round_trip_and_batches():
    z, y, _ = clustered(c=3, d=4, per=10, seed=61)
    stats = ClassStats.from_features(z, y, 3)
    back = ClassStats(3, 4, stats.shift).load_vector(stats.to_vector())
    for key in ("counts", "sums", "sq_norms", "second", "shift"):
        assert np.array_equal(getattr(back, key), getattr(stats, key)), key
    np.testing.assert_array_equal(back.means, stats.means)
    assert back.counts.dtype == np.int64
    light = ClassStats.from_features(z, y, 3, second_moment=False)
    assert light.to_vector().shape == (3 + 12 + 3,)
    with pytest.raises(ShapeError, match="statistics vector has shape"):
        ClassStats(3, 4).load_vector(light.to_vector())
    light_back = ClassStats(3, 4, light.shift, second_moment=False).load_vector(light.to_vector())
    np.testing.assert_array_equal(light_back.sq_norms, light.sq_norms)
    batches = ClassStats.from_batches(((z[i : i + 7], y[i : i + 7]) for i in range(0, 30, 7)), 3, 4)
    np.testing.assert_allclose(batches.within_cov(), stats.within_cov(), rtol=1e-12)
    np.testing.assert_allclose(batches.means, stats.means, rtol=1e-14)
    light_b = ClassStats.from_batches([(z, y)], 3, 4, second_moment=False)
    assert not light_b.has_second_moment
    assert stats.within_trace() == pytest.approx(np.trace(stats.within_cov()), rel=1e-12)


def test_constant_features_follow_standardscaler():
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(62)
    n = 100
    cols = [
        np.full(n, 1e3) + rng.integers(-1, 2, n) * np.spacing(1e3),  # constant + 1 ulp
        1e3 + 1e-9 * rng.standard_normal(n),  # tiny but real variance
        1e-6 + 1e-10 * rng.standard_normal(n),  # small mean, small variance
        np.zeros(n),  # dead unit
        rng.standard_normal(n),
    ]
    z = np.column_stack(cols)
    got = ClassStats.from_features(z, np.arange(n) % 2, 2).constant_features()
    ref = StandardScaler().fit(z).scale_ == 1.0
    assert got.tolist() == ref.tolist() == [True, False, False, True, False]


class RecordingArray:
    """A (n, D) array-like that records the rows of every slice read from it (memmap-like)."""

    def __init__(self, arr):
        self.arr, self.shape, self.reads = arr, arr.shape, []

    def __getitem__(self, key):
        out = self.arr[key]
        self.reads.append(out.shape[0])
        return out


def test_chunk_size_bounds_every_pass():
    z, y, head = clustered(c=4, d=6, per=15, seed=63)
    ood = np.random.default_rng(64).standard_normal((23, 6)) + 2.0
    ref = collapse_metrics(z, y, head)
    for run in (
        lambda a, o: collapse_metrics(a, y, head, chunk_size=7),
        lambda a, o: layer_metrics(a, y, chunk_size=7),
        lambda a, o: layer_metrics(a, y, full=False, chunk_size=7),
        lambda a, o: nc5(a, y, o, chunk_size=7),
        lambda a, o: nc5_centred(a, y, o, chunk_size=7),
    ):
        a, o = RecordingArray(z), RecordingArray(ood)
        out = run(a, o)
        assert a.reads and max(a.reads) <= 7 and sum(a.reads) % len(y) == 0
        assert not o.reads or (max(o.reads) <= 7 and sum(o.reads) == len(ood))
        if isinstance(out, dict):
            for key in ("nc1_trace", "cdnv", "ncc_acc"):
                np.testing.assert_allclose(out[key], ref[key], rtol=1e-9, err_msg=key)


def test_light_statistics_never_form_a_d_by_d_matrix():
    import tracemalloc

    rng = np.random.default_rng(65)
    d = 2048  # a (D, D) float64 matrix is 32 MiB
    y = np.repeat(np.arange(3), 10)
    z = rng.standard_normal((3, d))[y] + rng.standard_normal((30, d))
    ood = rng.standard_normal((10, d))
    for run in (
        lambda: layer_metrics(z, y, full=False),
        lambda: nc5(z, y, ood),
        lambda: nc5_centred(z, y, ood),
    ):
        tracemalloc.start()
        run()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 8 * 2**20, peak


def _rms(x, center):
    return np.sqrt(np.mean(np.sum((x - center) ** 2, axis=1)))


@pytest.mark.parametrize("a", [1.0, 1e-3])
@pytest.mark.parametrize("ood_spread", [1.0, 300.0])  # the ID or the OOD features set the scale
def test_nc5_zero_tolerance_is_relative_to_the_feature_scale(a, ood_spread):
    """A mean vector counts as zero at or below 1e-9 x the RMS feature norm (documented)."""
    from ncood.collapse.metrics import ZERO_RTOL

    chunk = 7  # the statistics' shift is the mean of the first chunk of ID rows
    z, y, _ = clustered(c=3, d=6, per=20, offset=30.0, seed=66)
    order = np.argsort(y, kind="stable")  # first chunk = class 0: the shift is far from the
    z, y = a * z[order], y[order]  # sample mean, so every term of the RMS norm counts
    v = a * ood_spread * np.random.default_rng(67).standard_normal((15, 6))
    e = np.eye(6)[1]
    # uncentred: OOD mean = t e; scale = RMS norm of the ID or OOD features (the larger)
    ood0 = np.concatenate([v, -v])
    tol = ZERO_RTOL * max(_rms(z, 0.0), _rms(ood0, 0.0))
    with pytest.raises(ShapeError, match="NC5 is undefined: the OOD mean"):
        nc5(z, y, ood0 + 0.98 * tol * e, chunk_size=chunk)
    assert np.isfinite(nc5(z, y, ood0 + 1.02 * tol * e, chunk_size=chunk))
    # centred: OOD mean = mu_G + t e; scale = RMS norm about the shift
    mus = np.stack([z[y == k].mean(axis=0) for k in range(3)])
    mg = mus.mean(axis=0)
    shift = z[:chunk].mean(axis=0)
    oodc = np.concatenate([mg + v, mg - v])
    tol_c = ZERO_RTOL * max(_rms(z, shift), _rms(oodc, shift))
    with pytest.raises(ShapeError, match="nc5_centred is undefined: the OOD mean"):
        nc5_centred(z, y, oodc + 0.98 * tol_c * e, chunk_size=chunk)
    assert np.isfinite(nc5_centred(z, y, oodc + 1.02 * tol_c * e, chunk_size=chunk))


def test_nc5_zero_vectors_are_named():
    z, y, _ = clustered(c=3, d=6, per=20, offset=30.0, seed=66)
    v = np.random.default_rng(67).standard_normal((15, 6))
    # all-zero features: no scale at all, still an error and not 0/0
    with pytest.raises(ShapeError, match="NC5 is undefined: the OOD mean"):
        nc5(np.zeros((6, 3)), np.arange(6) % 2, np.zeros((4, 3)))
    # a class mean at zero is named
    zz = np.concatenate([v[:5], -v[:5], z[:10]])
    yy = np.array([0] * 10 + [1] * 10)
    with pytest.raises(ShapeError, match=r"class mean vector\(s\) \[0\] have norm"):
        nc5(zz, yy, z)
    # NC5 needs one sample per class, not two
    ood_like = z[4:9] * 0.5 + 1.0
    assert np.isfinite(nc5(z[:4], np.array([0, 1, 2, 2]), ood_like))
    assert np.isfinite(nc5_centred(z[:4], np.array([0, 1, 2, 2]), ood_like))


def test_coincidence_tolerance_is_relative_to_the_feature_scale():
    from ncood.collapse.metrics import ZERO_RTOL

    y = np.repeat(np.arange(2), 20)
    base = 50.0 + centred_noise(y, 4, seed=68)  # both class means exactly 50
    e = np.eye(4)[0]
    scale = np.sqrt(np.mean(np.sum((base - base.mean(axis=0)) ** 2, axis=1)))
    for t, raises in ((0.5, True), (2.0, False)):
        # class means at 50 -+ t tol e: the spread about mu_G is t tol
        z = base + np.where(y[:, None] == 0, -1.0, 1.0) * t * ZERO_RTOL * scale * e
        if raises:
            with pytest.raises(ShapeError, match="class means coincide"):
                layer_metrics(z, y, full=False)
        else:
            assert np.isfinite(layer_metrics(z, y, full=False)["cdnv"])


def test_errors_name_the_input():
    z, y, head = clustered(c=3, d=4, per=10, seed=69)
    ood = np.ones((5, 4))
    ood[2, 1] = np.nan
    with pytest.raises(ShapeError, match="ood_features contains 1 NaN/inf"):
        nc5(z, y, ood)
    with pytest.raises(ShapeError, match="ood_features contains 1 NaN/inf"):
        nc5_centred(z, y, ood)
    with pytest.raises(
        ShapeError, match="ood_features have 3 features, but the ID features have 4"
    ):
        nc5(z, y, np.ones((5, 3)))
    with pytest.raises(ShapeError, match="^features must be a 2-D array"):
        layer_metrics(z[0], y)
    with pytest.raises(ShapeError, match="^features must be a 2-D array"):
        collapse_metrics(z[0], y, head)
    with pytest.raises(ShapeError, match="^features must be a 2-D array"):
        nc5(z[0], y, ood)
    with pytest.raises(ShapeError, match="^ood_features must be a 2-D array"):
        nc5(z, y, ood[0])
    light = ClassStats.from_features(z, y, 3, second_moment=False)
    with pytest.raises(ShapeError, match=r"^layer_metrics\(full=True\) needs the \(D, D\)"):
        layer_metrics(z, y, stats=light)
    with pytest.raises(ShapeError, match=r"^collapse_metrics \(nc1\) needs the \(D, D\)"):
        collapse_metrics(z, y, head, stats=light)
    with pytest.raises(ShapeError, match="^constant_features needs"):
        light.constant_features()
    with pytest.raises(ShapeError, match="^scatter_about needs"):
        light.scatter_about(np.zeros(4))
    with pytest.raises(ShapeError, match="^within_scatter needs"):
        light.within_cov()
    bad = z.copy()
    bad[4, 2] = np.inf
    with pytest.raises(ShapeError, match="^features contains 1 NaN/inf"):
        collapse_metrics(bad, y, head, stats=ClassStats.from_features(z, y, 3))
    with pytest.raises(ShapeError, match="class\\(es\\) \\[2\\] have fewer than 2"):
        collapse_metrics(z[y != 2], y[y != 2], head)  # the highest class is missing
    with pytest.raises(ShapeError, match="class\\(es\\) \\[2\\] have fewer than 2"):
        layer_metrics(z[y != 2], y[y != 2], num_classes=3)


def test_light_layer_metrics_agree_with_full():
    z, y, _ = clustered(c=6, d=30, per=30, spread=2.0, offset=5.0, seed=19)
    full, light = layer_metrics(z, y), layer_metrics(z, y, full=False, chunk_size=50)
    assert "nc1" in full and "nc1" not in light and not light["full"]
    for key in ("nc1_trace", "cdnv", "ncc_acc", "within_class_variance", "mean_distances"):
        np.testing.assert_allclose(light[key], full[key], rtol=1e-10, err_msg=key)


def test_errors_name_the_problem():
    z, y, head = clustered(c=4, d=6, seed=20)
    with pytest.raises(ShapeError, match="6 features, but the head is expecting 7"):
        collapse_metrics(z, y, LinearHead(np.ones((4, 7)), np.zeros(4)))
    with pytest.raises(ShapeError, match="class"):
        collapse_metrics(z[y != 2], y[y != 2], head)
    with pytest.raises(ShapeError, match="NaN"):
        layer_metrics(np.where(np.arange(z.size).reshape(z.shape) == 5, np.nan, z), y)


def test_to_jsonable_round_trips():
    z, y, head = clustered(c=4, d=6, seed=21)
    m = collapse_metrics(z, y, head)
    m["extra"] = float("nan")
    doc = json.loads(json.dumps(to_jsonable(m), allow_nan=False))
    assert to_jsonable(np.float32(2.5)) == 2.5 and type(to_jsonable(np.int64(3))) is int
    assert to_jsonable({1: (np.float64(np.inf), np.arange(2))}) == {"1": [None, [0, 1]]}
    assert doc["extra"] is None and doc["nc1"] == pytest.approx(m["nc1"])
    assert np.asarray(doc["mean_distances"]).shape == (4, 4)


# ---------------------------------------------------------------------- depth and epochs
def test_fit_log_linear_recovers_geometric_decay():
    fit = fit_log_linear(5.0 * 0.3 ** np.arange(5))
    assert fit["factor"] == pytest.approx(0.3) and fit["r2"] == pytest.approx(1.0)
    assert fit["rate"] == pytest.approx(np.log(0.3))


def test_depth_metrics_and_decay_rate():
    c, d = 6, 16
    mu = simplex_etf(c, d, seed=22) * 4.0
    y = np.repeat(np.arange(c), 20)
    noise = centred_noise(y, d, seed=23)
    layers = {f"stage{k}": mu[y] + 2.0 * 0.5**k * noise for k in range(4)}
    wide = np.concatenate([mu[y], 2.0 * noise], axis=1)  # a "wide" layer first
    layers = {"wide": wide, **layers}
    head = LinearHead(mu, np.zeros(c))
    per_layer = depth_metrics(layers, y, head=head, max_full_dim=20)
    assert not per_layer["wide"]["full"] and "nc1" not in per_layer["wide"]
    assert "nc4" in per_layer["stage3"]
    assert "nc1" not in depth_decay(per_layer)  # not measured in every layer
    # on the pooled stages alone, nc1 falls by exactly 0.5^2 per layer
    per_layer = depth_metrics({k: v for k, v in layers.items() if k != "wide"}, y, head=head)
    assert list(per_layer) == ["stage0", "stage1", "stage2", "stage3"]
    decay = depth_decay(per_layer)
    assert decay["nc1"]["factor"] == pytest.approx(0.25, rel=1e-9)
    assert decay["nc1_trace"]["r2"] == pytest.approx(1.0)


# ---------------------------------------------------------------------- real data
@pytest.mark.slow
def test_nc1_decreases_with_training(fmnist_run):
    trained = collapse_metrics(fmnist_run.train.features, fmnist_run.train.labels, fmnist_run.head)
    init = collapse_metrics(
        fmnist_run.init_train.features, fmnist_run.init_train.labels, fmnist_run.init_head
    )
    assert trained["nc1"] < init["nc1"]
