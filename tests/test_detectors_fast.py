"""The fast paths of the detectors (issue 13, Speed) against the plain computations they
replace: each check can fail, and each covers the case the shortcut could get wrong
(ties at the pruning cut, a percentile bracket that misses, a projection ratio near 0,
confident softmax rows, a chunk that views the caller's array)."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

import ncood.collapse.stats as collapse_stats
import ncood.detectors.base as det_base
import ncood.detectors.logit as det_logit
from ncood.collapse import ClassStats
from ncood.collapse.stats import class_sums, read_chunk
from ncood.detectors import create_detector
from ncood.detectors.activation import kept_count
from ncood.detectors.base import logsumexp_rows, max_softmax, pass_rows, row_norms
from ncood.detectors.logit import blocks_percentile
from ncood.errors import ShapeError
from ncood.types import LinearHead


# --------------------------------------------------------------------------- percentile
@pytest.mark.parametrize("seed", range(40))
def test_blocks_percentile_equals_numpy(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(1, 2000)), int(rng.integers(1, 30))
    kind = seed % 4
    x = rng.normal(size=(n, d))
    if kind == 1:
        x = np.maximum(x, 0.0)  # post-ReLU: many tied zeros
    elif kind == 2:
        x = np.round(2 * x)  # heavy ties everywhere
    elif kind == 3:
        x = rng.integers(0, 5, (n, d))
    x = x.astype(np.float32) if seed % 3 == 0 and kind != 3 else x
    cuts = sorted(int(c) for c in rng.integers(0, n + 1, 3))
    blocks = [x[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True) if b > a]
    for q in (0.0, 0.1, 50.0, 90.0, 99.9, 100.0, float(rng.uniform(0, 100))):
        got = blocks_percentile(blocks, q)
        ref = float(np.percentile(np.asarray(x, dtype=np.float64), q))
        assert got == pytest.approx(ref, rel=1e-14, abs=1e-14), (q, got, ref)


def test_blocks_percentile_recovers_when_the_sample_misses(monkeypatch, caplog):
    """A strided sample that sees only the large values: the bracket misses, the counts
    show it (logged), and the widened pass still gives numpy's value."""
    monkeypatch.setattr(det_logit, "BRACKET_SAMPLE", 1000)
    n = 100_000
    stride = max(1, n // 1000) | 1  # the stride blocks_percentile uses
    x = np.arange(n, dtype=np.float64) / n  # small values ...
    x[::stride] = 100.0 + np.arange(x[::stride].size)  # ... except exactly where it samples
    for q in (10.0, 50.0, 90.0):
        caplog.clear()
        with caplog.at_level("DEBUG", logger="ncood.detectors.logit"):
            got = blocks_percentile([x[:40_000], x[40_000:]], q)
        assert got == pytest.approx(np.percentile(x, q), rel=1e-15)
        assert "bracket missed" in caplog.text, q


def test_react_threshold_is_numpys_percentile_of_all_train_entries():
    rng = np.random.default_rng(3)
    z = np.maximum(rng.normal(size=(3000, 40)), 0.0).astype(np.float32)
    head = LinearHead(rng.normal(size=(5, 40)), rng.normal(size=5))
    for p in (10.0, 50.0, 90.0, 99.0):  # 10: inside the tied zeros
        det = create_detector("react", percentile=p).fit(z, None, head)
        assert det.threshold_ == pytest.approx(float(np.percentile(z.astype(np.float64), p)))


# --------------------------------------------------------------------------- activation shaping
def _ash_index_reference(name, x, head, percentile):
    """The index-based implementation the partition replaced: np.argpartition per row
    (its tie choice), put_along_axis, then the energy of the head (float64, plain)."""
    d = x.shape[1]
    k = kept_count(d, percentile)
    idx = np.argpartition(x, d - k, axis=1)[:, d - k :]
    kept = np.take_along_axis(x, idx, axis=1)
    s1, s2 = x.sum(axis=1), kept.sum(axis=1)
    factor = np.exp(np.divide(s1, s2, out=np.zeros_like(s1), where=s2 > 0))
    pruned = np.zeros_like(x)
    if name == "ash_b":
        np.put_along_axis(pruned, idx, 1.0, axis=1)
        pruned *= (s1 / k)[:, None]
    else:
        np.put_along_axis(pruned, idx, kept, axis=1)
    if name == "ash_s":
        pruned *= factor[:, None]
    if name == "scale":
        pruned = x * factor[:, None]
    return logsumexp(pruned @ head.weight.T + head.bias, axis=1)


@pytest.mark.parametrize("name", ["ash_s", "ash_p", "ash_b", "scale"])
@pytest.mark.parametrize("percentile", [50.0, 90.0])
def test_shaping_with_tied_cuts_equals_the_index_based_version(name, percentile):
    rng = np.random.default_rng(7)
    d, c = 40, 6
    head = LinearHead(rng.normal(size=(c, d)), rng.normal(size=c))
    x = np.maximum(rng.normal(size=(300, d)), 0.0)
    k = kept_count(d, percentile)
    x[:40] = np.round(x[:40] * 2) / 2  # ties at positive cuts
    x[40:80, k // 2 :] = 0.0  # fewer than k non-zeros: the cut is a tied 0
    x[80:90] = 0.0  # all-zero rows
    x[90:100] = 1.5  # every entry tied
    part = np.partition(x, d - k, axis=1)
    cut = part[:, d - k]
    tied = np.count_nonzero(x >= cut[:, None], axis=1) > k
    assert tied[:40].sum() > 10 and tied[40:80].all() and (cut[40:80] == 0).all()
    det = create_detector(name, percentile=percentile).fit(None, None, head)
    np.testing.assert_allclose(
        det.score(x, None), _ash_index_reference(name, x, head, percentile), rtol=1e-12
    )


# --------------------------------------------------------------------------- logsumexp
def test_logsumexp_rows_and_max_softmax_match_scipy_and_high_precision():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(200, 30)) * rng.uniform(0.1, 60, size=(200, 1))
    f[:5] = 0.0  # every entry tied with the max
    f[5:10, :3] = f[5:10].max(axis=1, keepdims=True) + 1.0  # three tied maxima
    f[10:15] += 1e4  # a large common offset
    f[15:20] = rng.normal(size=(5, 30))
    f[15:20, 0] = 30.0  # confident rows: the others ~ e^-30
    np.testing.assert_allclose(logsumexp_rows(f), logsumexp(f, axis=1), rtol=1e-15)
    np.testing.assert_allclose(max_softmax(f), softmax(f, axis=1).max(axis=1), rtol=1e-14)
    mpmath.mp.dps = 50
    for row in f[15:20]:  # the log1p form keeps logsumexp - max to full relative precision
        rest = mpmath.log1p(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v)) - 30) for v in row[1:]))
        _, got = det_base._max_and_log1p_rest(row[None, :])
        assert float(got[0]) == pytest.approx(float(rest), rel=1e-14)


def test_row_norms_and_class_sums_match_plain_numpy():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 17)) * 1e3
    np.testing.assert_allclose(row_norms(z), np.linalg.norm(z, axis=1), rtol=1e-14)
    y = rng.integers(0, 6, 500)
    y[y == 4] = 0  # an empty class
    ref = np.zeros((6, 17))
    np.add.at(ref, y, z)
    np.testing.assert_allclose(class_sums(z, y, 6), ref, rtol=1e-12, atol=1e-9)
    assert (class_sums(z, y, 6)[4] == 0).all()
    assert class_sums(z[:0], y[:0], 6).shape == (6, 17)
    many = rng.integers(0, 300, 500)  # above BINCOUNT_CLASSES: the bincount path
    ref = np.zeros((300, 17))
    np.add.at(ref, many, z)
    assert 300 > collapse_stats.BINCOUNT_CLASSES
    np.testing.assert_allclose(class_sums(z, many, 300), ref, rtol=1e-12, atol=1e-9)


# --------------------------------------------------------------------------- NECO
def test_neco_complement_projection_matches_sklearn_also_for_ratios_near_zero():
    """dim > D/2 scores through the D - dim trailing eigenvectors; queries almost
    orthogonal to the principal subspace (ratio << 1/4) are projected directly."""
    rng = np.random.default_rng(2)
    n, d = 600, 20
    mix = rng.normal(size=(d, d)) * np.linspace(3, 0.1, d)
    z = rng.normal(size=(n, d)) @ mix + 5.0
    dim = 16
    det = create_detector("neco", dim=dim).fit(z, rng.integers(0, 3, n), _head(d))
    assert det._rest is not None and det._rest.shape == (d, d - dim)
    ss = StandardScaler().fit(z)
    pca = PCA(svd_solver="full").fit(ss.transform(z))
    trailing = pca.components_[dim:]  # (D - dim, D) in standardised units
    x = ss.inverse_transform(
        np.vstack(
            [
                ss.transform(z[:50]),  # ID-like: ratio near 1
                rng.normal(size=(20, d - dim)) @ trailing * 10,  # ratio ~ 0
                # ratio ~1e-4: the difference ||s||^2 - ||V_rest^T s||^2 would lose ~8 digits
                rng.normal(size=(20, d - dim)) @ trailing * 10 + ss.transform(z[:20]) * 1e-3,
            ]
        )
    )
    s = ss.transform(x)
    ref = np.linalg.norm(pca.transform(s)[:, :dim], axis=1) / np.linalg.norm(s, axis=1)
    assert (ref[50:90] < 0.25).all() and (ref[:50] > 0.25).all() and (ref[70:90] > 1e-6).all()
    np.testing.assert_allclose(det.score(x, None), ref, rtol=1e-11, atol=1e-14)


def _head(d, c=3):
    rng = np.random.default_rng(9)
    return LinearHead(rng.normal(size=(c, d)), rng.normal(size=c))


# --------------------------------------------------------------------------- chunks and stats
def test_read_chunk_checks_the_native_dtype_and_names_the_global_index():
    z = np.ones((30, 4), dtype=np.float32)
    z[17, 2] = np.inf
    with pytest.raises(ShapeError, match=r"1 NaN/inf value\(s\) in rows 10\.\.19 .*\[17, 2\]"):
        read_chunk(z, 10, 20, "features")
    out = read_chunk(np.arange(12).reshape(3, 4), 0, 3, "features")
    assert out.dtype == np.float64 and out[2, 3] == 11.0
    assert read_chunk(z, 0, 10, "features").dtype == np.float64


def test_stats_of_float32_and_float64_agree_and_leave_the_input_untouched():
    rng = np.random.default_rng(4)
    z64 = np.maximum(rng.normal(size=(1000, 9)), 0.0).astype(np.float32).astype(np.float64)
    y = rng.integers(0, 4, 1000)
    before = z64.copy()
    a = ClassStats.from_features(z64, y, 4, chunk_size=97)  # chunks view z64: not in place
    b = ClassStats.from_features(z64.astype(np.float32), y, 4, chunk_size=97)  # fresh chunks
    assert np.array_equal(z64, before)
    for name in ("counts", "sums", "sq_norms", "second"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(a.within_cov(), np.cov(z64 - a.means[y], rowvar=False, bias=True))


def test_pass_rows_caps_chunks_and_follows_the_toolkit_policy(monkeypatch):
    assert pass_rows(512) == det_base.SCORE_CHUNK_VALUES // 512 == 512
    assert pass_rows(1 << 16) == det_base.PASS_MIN_ROWS == 64  # wide: not 4 rows
    assert pass_rows(10**7) == 1  # the memory budget still caps it
    monkeypatch.setattr(collapse_stats, "CHUNK_VALUES", 7 * 512)
    assert pass_rows(512) == 7
    det = create_detector("mahalanobis")
    assert det._score_chunk_rows(512) == 7
