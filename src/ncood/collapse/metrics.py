"""Neural-collapse metrics NC1-NC5 from streaming class statistics (DESIGN.md section 4).

Definitions follow Papyan, Han & Donoho, "Prevalence of neural collapse during the
terminal phase of deep learning training", PNAS 2020 (arXiv 2008.08186); CDNV follows
Galanti, Gyorgy & Hutter, "On the role of neural collapse in transfer learning", ICLR 2022
(arXiv 2112.15121); NC5 (OrthoDev) follows Ben Ammar et al., "NECO: NEural Collapse Based
Out-of-distribution detection", ICLR 2024 (arXiv 2310.06823).

Notation: ``z`` features ``(D,)``, labels ``y`` in ``0..C-1``, class means ``mu_c``,
``mu_G`` the mean of the class means, ``M`` the ``(C, D)`` matrix of rows ``mu_c - mu_G``,
head ``f = W z + b`` with ``W (C, D)``. Everything is computed in float64 from a
:class:`~ncood.collapse.stats.ClassStats` (one streaming pass), plus a second chunked
pass over the features for the decision-rule metrics (``nc4``, ``ncc_acc``).

Numerics. ``S_B = M^T M / C`` has rank at most ``C - 1`` because the rows of ``M`` sum to
zero. Its pseudo-inverse is formed from the singular value decomposition of ``M``
(``C x D``, no ``D x D`` eigendecomposition), keeping only the top ``min(C - 1, D)``
singular directions, and among those only the ones above a relative tolerance. Code that
centres float32 features with a float32 mean and inverts all ``D`` eigenvalues of
``S_B`` turns rounding noise into eigenvalues of ~1e-10 and inflates NC1 by orders of
magnitude; here ``M`` is formed about the statistics' shift in float64, so the spurious
directions never appear, and they would be dropped if they did.

Interpretation. The mean off-diagonal cosine of the centred class means is ``-1/(C-1)``
by construction whenever their norms are equal (the rows of ``M`` sum to zero), so it is
no evidence of collapse; ``nc2_equiangular_*`` (their spread) and ``nc2_maxangle_*``
(their distance from ``-1/(C-1)``) are. When ``D < C - 1`` no simplex ETF exists and
the output says so in ``notes``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ncood.collapse.stats import ClassStats, check_2d, chunk_rows, read_chunk
from ncood.collapse.stats import iter_chunks as row_blocks
from ncood.errors import ShapeError
from ncood.types import LinearHead
from ncood.validation import as_labels, check_finite

log = logging.getLogger(__name__)

#: Metric names that are Python floats in the output of :func:`collapse_metrics`.
HEAD_SCALARS = (
    "nc1",
    "nc1_trace",
    "cdnv",
    "nc2_equinorm_means",
    "nc2_equinorm_weights",
    "nc2_equiangular_means",
    "nc2_equiangular_weights",
    "nc2_maxangle_means",
    "nc2_maxangle_weights",
    "nc3",
    "nc4",
)
#: Scalars of :func:`layer_metrics` (``full=True``); ``full=False`` keeps the first three.
LAYER_SCALARS = (
    "nc1_trace",
    "cdnv",
    "ncc_acc",
    "nc1",
    "nc2_equinorm_means",
    "nc2_equiangular_means",
    "nc2_maxangle_means",
)

#: Fewest samples per class for NC1-NC4 (NC5 needs one: it uses class means only).
MIN_CLASS_COUNT = 2

#: Relative tolerance for "zero to working precision" of a difference of means: the class
#: means' spread about ``mu_G`` (NC1-NC3, CDNV) and the vectors whose cosines NC5 takes.
#: A vector shorter than ``ZERO_RTOL`` times the RMS norm of the accumulated features is
#: rounding: float64 sums of ``n`` rows carry a relative error of about ``log2(n) * eps``
#: (pairwise summation, ~1e-14 for a million rows), five orders of magnitude below this,
#: and a real separation (even a float32 one, ~1e-7) is far above it.
ZERO_RTOL = 1e-9


def _etf_note(c: int, d: int) -> str:
    return (
        f"no simplex ETF of C={c} classes exists in D={d} dimensions (needs D >= C-1 = "
        f"{c - 1}); the NC2 targets (equal norms, cosines -1/(C-1)) cannot be reached, so "
        "the nc2_* values do not measure distance to an ETF"
    )


# ---------------------------------------------------------------------- helpers
def iter_chunks(features, labels, chunk_size: int | None = None) -> Iterator[tuple[Any, Any]]:
    """Yield ``(features[i:j], labels[i:j])`` row chunks (memory-mapped input stays lazy).

    Rows per chunk follow :func:`ncood.collapse.stats.chunk_rows` (``chunk_size`` capped
    at the memory budget).
    """
    for start, stop in row_blocks(features.shape[0], chunk_rows(features.shape[1], chunk_size)):
        yield features[start:stop], labels[start:stop]


def _check_stats(stats: ClassStats, dim: int | None, num_classes: int | None) -> None:
    if dim is not None and stats.dim != dim:
        raise ShapeError(
            f"stats have D={stats.dim} features, but the features/head have D={dim}; pass "
            "statistics of the same layer"
        )
    if num_classes is not None and stats.num_classes != num_classes:
        raise ShapeError(
            f"stats have C={stats.num_classes} classes, but the head has C={num_classes}; "
            "pass statistics built with num_classes equal to the head's"
        )
    # a within-class spread needs two samples: a singleton class would report a perfectly
    # collapsed class (variance 0) that says nothing about the network
    stats.require_classes(MIN_CLASS_COUNT)


def _offdiag_cosines(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Norms ``(C,)`` and upper-triangle cosines ``(C (C-1) / 2,)`` of the rows of ``rows``."""
    norms = np.linalg.norm(rows, axis=1)
    safe = np.where(norms > 0, norms, 1.0)  # a zero row has cosine 0 with everything
    unit = rows / safe[:, None]
    gram = unit @ unit.T
    iu = np.triu_indices(rows.shape[0], k=1)
    return norms, np.clip(gram[iu], -1.0, 1.0)


def _nc2(rows: np.ndarray) -> tuple[float, float, float, np.ndarray, np.ndarray]:
    """Equinorm, equiangularity and max-angle deviation of ``rows (C, D)``.

    The caller guarantees a nonzero row (coincident class means and all-zero heads raise
    in :func:`metrics_from_stats`), so the mean norm is positive.
    """
    c = rows.shape[0]
    norms, cos = _offdiag_cosines(rows)
    equinorm = float(norms.std() / norms.mean())
    equiangular = float(cos.std())  # population std over the C(C-1)/2 distinct pairs
    maxangle = float(np.abs(cos + 1.0 / (c - 1)).mean())
    return equinorm, equiangular, maxangle, norms, cos


def _pairwise_sq_distances(m: np.ndarray) -> np.ndarray:
    """``||m_i - m_j||^2`` ``(C, C)`` from the Gram matrix of (already centred) rows."""
    sq = np.einsum("ij,ij->i", m, m)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (m @ m.T)
    np.fill_diagonal(d2, 0.0)
    return np.maximum(d2, 0.0)  # rounding can make a tiny distance negative


def _cdnv(variances: np.ndarray, d2: np.ndarray) -> float:
    """Mean over pairs ``i < j`` of ``(Var_i + Var_j) / (2 ||mu_i - mu_j||^2)``.

    A pair of coincident means (``||mu_i - mu_j|| = 0``) has no separation at all: its
    ratio is ``inf``, also when both variances are 0 (instead of ``0 / 0 = nan``).
    """
    iu = np.triu_indices(d2.shape[0], k=1)
    num = variances[iu[0]] + variances[iu[1]]
    den = 2.0 * d2[iu]
    ratio = np.full(den.shape, np.inf)
    np.divide(num, den, out=ratio, where=den > 0)
    return float(ratio.mean())


def _check_separated(stats: ClassStats, m: np.ndarray) -> None:
    """Raise if all class means coincide (``M`` is zero to working precision).

    The spread ``max_c ||mu_c - mu_G||`` is compared with ``ZERO_RTOL`` times the RMS
    norm of the accumulated features (about the statistics' shift): below it, ``S_B`` is
    rounding noise and CDNV, NC1, NC2 (means) and NC3 are undefined.
    """
    spread = float(np.sqrt(np.einsum("ij,ij->i", m, m).max()))
    scale = float(np.sqrt(stats.sq_norms.sum() / stats.n))
    if spread <= ZERO_RTOL * scale:
        raise ShapeError(
            f"all {stats.num_classes} class means coincide (largest distance to their mean "
            f"{spread:.3g}, at most {ZERO_RTOL:g} x the feature scale {scale:.3g}): there is "
            "no between-class spread, so cdnv, nc1, nc2 and nc3 are undefined; check that "
            "the features come from the intended layer and the labels belong to them"
        )


def nc1_from_stats(stats: ClassStats, *, rtol: float | None = None) -> tuple[float, int]:
    """``Tr(S_W S_B^+) / C`` with ``S_B^+`` from the top ``min(C-1, D)`` eigenpairs.

    Args:
        stats: class statistics with the second moment.
        rtol: eigenvalues of ``S_B`` below ``rtol * max eigenvalue`` are dropped as well;
            default ``max(C, D) * eps`` (``numpy.linalg.pinv``'s rule), which only removes
            directions that are zero to working precision.

    Returns:
        ``(nc1, rank)``: the metric and the number of eigenpairs used.
    """
    c, d = stats.num_classes, stats.dim
    m = stats.centred_means()  # (C, D)
    s_w = stats.within_cov()  # (D, D)
    # S_B = M^T M / C = V diag(s^2 / C) V^T from the thin SVD of M: eigenpairs of S_B
    # without a D x D eigendecomposition. Singular values come sorted, largest first.
    _, s, vt = np.linalg.svd(m, full_matrices=False)  # vt (min(C, D), D)
    lam = s**2 / c
    k = min(c - 1, d)
    # relative to the largest eigenvalue (lam is never empty: C >= 2 and D >= 1)
    tol = (max(c, d) * np.finfo(np.float64).eps if rtol is None else rtol) * lam[0]
    keep = np.flatnonzero(lam[:k] > tol)
    if keep.size == 0:
        return float("inf"), 0  # all class means coincide: no between-class spread
    v = vt[keep]  # (k, D)
    # Tr(S_W V diag(1/lam) V^T) = sum_i v_i^T S_W v_i / lam_i
    quad = np.einsum("ij,ij->i", v @ s_w, v)
    return float(np.sum(quad / lam[keep]) / c), int(keep.size)


def _nearest_mean_pass(
    batches: Iterable[tuple[Any, Any]],
    stats: ClassStats,
    head: LinearHead | None,
) -> tuple[int, int, int]:
    """One chunked pass: ``(disagree, correct, n)`` counts.

    ``disagree``: samples whose head prediction differs from the nearest class mean (0
    without a head); ``correct``: samples whose nearest class mean is their label.

    Distances use ``||z - mu||^2 = ||z||^2 - 2 z.mu + ||mu||^2``, dropping the per-row
    ``||z||^2``; both ``z`` and ``mu`` are taken about the statistics' shift so that a
    large common offset does not cancel catastrophically.
    """
    shift = stats._shift()
    m = stats.sums / stats.counts[:, None]  # (C, D) class means about the shift
    msq = np.einsum("ij,ij->i", m, m)  # (C,)
    if head is not None:
        w = head.weight  # (C, D)
        b_shift = head.bias + w @ shift  # W z + b = W (z - shift) + (b + W shift)
    disagree = correct = n = 0
    for zb, yb in batches:
        z = np.asarray(zb, dtype=np.float64) - shift  # (b, D)
        check_finite(z, "features")
        nearest = np.argmin(msq[None, :] - 2.0 * (z @ m.T), axis=1)  # (b,)
        y = np.asarray(yb)
        correct += int(np.count_nonzero(nearest == y))
        if head is not None:
            pred = np.argmax(z @ w.T + b_shift, axis=1)
            disagree += int(np.count_nonzero(pred != nearest))
        n += z.shape[0]
    if n == 0:
        raise ShapeError("the feature pass saw 0 samples; pass the features the stats came from")
    return disagree, correct, n


def decision_metrics(
    batches: Iterable[tuple[Any, Any]], stats: ClassStats, head: LinearHead | None = None
) -> dict[str, float]:
    """``nc4`` (if ``head``) and ``ncc_acc`` from an iterable of ``(features, labels)`` chunks.

    The chunks must be the samples ``stats`` was built from (for example a generator that
    re-reads a memory-mapped file); use this for data that do not fit in memory.
    """
    disagree, correct, n = _nearest_mean_pass(batches, stats, head)
    out = {"ncc_acc": correct / n}
    if head is not None:
        out["nc4"] = disagree / n
    return out


# ---------------------------------------------------------------------- metrics
def metrics_from_stats(stats: ClassStats, head: LinearHead | None = None) -> dict[str, Any]:
    """Every statistic-only metric (all but ``nc4`` / ``ncc_acc``) from ``stats``.

    With ``head``: the head-based metrics too (``nc2_*_weights``, ``nc3``). Without the
    second moment (``stats.has_second_moment`` False): only the inversion-free
    ``nc1_trace`` and ``cdnv``, plus the per-class arrays that need no covariance.

    Raises:
        ShapeError: fewer than 2 classes or 2 samples in a class; all class means coincide
            (spread below ``ZERO_RTOL`` times the feature scale: no between-class spread,
            every ratio to it undefined); a head whose weight is all zeros.
    """
    c, d = stats.num_classes, stats.dim
    if c < 2:
        raise ShapeError(f"collapse metrics need at least 2 classes; got C={c}")
    _check_stats(stats, head.dim if head is not None else None, head.num_classes if head else None)
    m = stats.centred_means()  # (C, D)
    _check_separated(stats, m)
    var = stats.class_variances()  # (C,)
    trace_w = stats.within_trace()  # Tr(S_W)
    trace_b = float(np.einsum("ij,ij->", m, m) / c)  # Tr(S_B)
    d2 = _pairwise_sq_distances(m)
    etf = d >= c - 1
    out: dict[str, Any] = {
        "num_classes": c,
        "dim": d,
        "n": stats.n,
        "etf_exists": bool(etf),
        "etf_cosine": -1.0 / (c - 1),
        "notes": [] if etf else [_etf_note(c, d)],
        "nc1_trace": trace_w / trace_b,  # trace_b > 0: coincident means raised above
        "cdnv": _cdnv(var, d2),
        "within_class_variance_mean": float(var.mean()),
        "counts": stats.counts.copy(),
        "within_class_variance": var,
        "mean_distances": np.sqrt(d2),
    }
    equinorm, equiangular, maxangle, norms, cos = _nc2(m)
    out.update(
        nc2_equinorm_means=equinorm,
        nc2_equiangular_means=equiangular,
        nc2_maxangle_means=maxangle,
        mean_norms=norms,
        mean_cosines=cos,
    )
    if stats.has_second_moment:
        out["nc1"], out["nc1_rank"] = nc1_from_stats(stats)
    if head is not None:
        w = head.weight
        w_f, m_f = np.linalg.norm(w), np.linalg.norm(m)
        if not w_f > 0:
            raise ShapeError(
                "the head's weight is all zeros, so nc2_*_weights and nc3 are undefined; "
                "pass the trained final layer"
            )
        equinorm, equiangular, maxangle, wnorms, wcos = _nc2(w)
        per_class = np.einsum("ij,ij->i", w, m) / np.maximum(wnorms * norms, np.finfo(float).tiny)
        out.update(
            nc2_equinorm_weights=equinorm,
            nc2_equiangular_weights=equiangular,
            nc2_maxangle_weights=maxangle,
            nc3=float(np.sum((w / w_f - m / m_f) ** 2)),
            weight_norms=wnorms,
            weight_cosines=wcos,
            weight_mean_cosine=per_class,
        )
    return out


def collapse_metrics(
    features,
    labels,
    head: LinearHead,
    *,
    stats: ClassStats | None = None,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Every NC metric of the penultimate layer (DESIGN.md section 4).

    Args:
        features: train features ``(n_samples, n_features)``, any float dtype, may be
            memory-mapped (read in chunks, each converted to float64).
        labels: ``(n_samples,)`` ints in ``0..C-1``.
        head: the final linear layer, ``weight (C, D)``, ``bias (C,)``.
        stats: statistics of exactly these features (e.g. merged from several
            processes); built from ``features`` when omitted.
        chunk_size: rows per chunk (default: as many as fit in ~128 MiB of float64).

    Returns:
        dict with the scalar metrics as Python floats — ``nc1``, ``nc1_trace``, ``cdnv``,
        ``nc2_equinorm_{means,weights}``, ``nc2_equiangular_{means,weights}``,
        ``nc2_maxangle_{means,weights}``, ``nc3``, ``nc4``, ``ncc_acc``,
        ``within_class_variance_mean`` — the per-class arrays ``counts (C,)``,
        ``within_class_variance (C,)``, ``mean_norms (C,)``, ``weight_norms (C,)``,
        ``mean_cosines`` and ``weight_cosines`` (off-diagonal pairs, ``(C (C-1) / 2,)``),
        ``weight_mean_cosine (C,)`` (``cos(w_c, mu_c - mu_G)``), ``mean_distances
        (C, C)``, and ``num_classes``, ``dim``, ``n``, ``nc1_rank`` (eigenpairs of
        ``S_B`` used), ``etf_exists`` (``D >= C - 1``), ``etf_cosine`` (``-1/(C-1)``),
        ``notes`` (list of caveats, e.g. no ETF exists). Use :func:`to_jsonable` to save.

    Raises:
        ShapeError: widths or class counts of features, labels, head and stats disagree,
            a class has fewer than 2 samples, there is a single class, the features hold
            NaN/inf, all class means coincide, or the head's weight is all zeros (see
            :func:`metrics_from_stats`).
    """
    if not isinstance(head, LinearHead):
        raise ShapeError(
            f"head must be a ncood LinearHead(weight (C, D), bias (C,)); got "
            f"{type(head).__name__}; use layer_metrics() for a layer without a head"
        )
    feats = check_2d(features, "features")
    if feats.shape[1] != head.dim:
        raise ShapeError(
            f"features have {feats.shape[1]} features, but the head is expecting {head.dim} "
            "features as input; pass the penultimate features of the same network"
        )
    c = head.num_classes
    y = as_labels(labels, feats.shape[0], num_classes=c)
    if stats is None:
        stats = ClassStats.from_features(feats, y, c, chunk_size=chunk_size)
    else:
        stats.require_second_moment("collapse_metrics (nc1)")
    out = metrics_from_stats(stats, head)
    if stats.n != feats.shape[0]:
        raise ShapeError(
            f"stats hold {stats.n} samples but features have {feats.shape[0]}; pass the "
            "statistics of exactly these features"
        )
    out.update(decision_metrics(iter_chunks(feats, y, chunk_size), stats, head))
    return out


def layer_metrics(
    features,
    labels,
    *,
    stats: ClassStats | None = None,
    full: bool = True,
    num_classes: int | None = None,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Collapse metrics of a layer without a linear head (earlier layers, Papyan et al. 2020).

    Args:
        features: ``(n_samples, d_layer)`` (pooled stage outputs or flattened maps).
        labels: ``(n_samples,)``.
        stats: precomputed statistics of these features (optional).
        full: ``True``: every head-free metric (``nc1``, ``nc1_trace``, ``cdnv``,
            ``nc2_*_means``, ``ncc_acc``) — needs a ``(d, d)`` matrix. ``False``: only the
            inversion-free ``nc1_trace``, ``cdnv`` and ``ncc_acc``, from counts, class sums
            and squared norms (``O(C d)`` memory), for wide flattened maps.
        num_classes: ``C`` (default: ``max(labels) + 1``).
        chunk_size: rows per chunk.

    Returns:
        dict as :func:`collapse_metrics` minus the head-based entries, with ``ncc_acc``
        (nearest-class-mean accuracy on these samples) in place of ``nc4``.
    """
    feats = check_2d(features, "features")
    if stats is None:
        stats = ClassStats.from_features(
            feats, labels, num_classes, chunk_size=chunk_size, second_moment=full
        )
        y = as_labels(labels, feats.shape[0], num_classes=stats.num_classes)
    else:
        y = as_labels(labels, feats.shape[0], num_classes=stats.num_classes)
        _check_stats(stats, feats.shape[1], num_classes)
        if full:
            stats.require_second_moment("layer_metrics(full=True)")
    out = metrics_from_stats(stats)
    if not full:
        for key in (
            "nc1",
            "nc1_rank",
            "nc2_equinorm_means",
            "nc2_equiangular_means",
            "nc2_maxangle_means",
            "mean_norms",
            "mean_cosines",
        ):
            out.pop(key, None)
    out["full"] = bool(full)
    out.update(decision_metrics(iter_chunks(feats, y, chunk_size), stats))
    return out


# ---------------------------------------------------------------------- NC5
def _mean_rows(
    features, name: str, center: np.ndarray, chunk_size: int | None = None
) -> tuple[np.ndarray, float]:
    """Mean of ``features - center`` ``(D,)`` and the RMS of ``||z - center||``, in chunks."""
    feats = check_2d(features, name)
    n, d = feats.shape
    if d != center.shape[0]:
        raise ShapeError(
            f"{name} have {d} features, but the ID features have {center.shape[0]}; extract "
            "both from the same layer"
        )
    total = np.zeros(d, dtype=np.float64)
    sq = 0.0
    for start, stop in row_blocks(n, chunk_rows(d, chunk_size)):
        chunk = read_chunk(feats, start, stop, name) - center  # (b, D)
        total += chunk.sum(axis=0)
        sq += float(np.einsum("ij,ij->", chunk, chunk))
    return total / n, float(np.sqrt(sq / n))


def _rms_about(stats: ClassStats, center: np.ndarray) -> float:
    """RMS of ``||z - center||`` over the samples behind ``stats`` (from its sums)."""
    a = stats._shift() - center  # z - center = (z - shift) + a
    total = stats.sq_norms.sum() + 2.0 * float(a @ stats.sums.sum(axis=0)) + stats.n * (a @ a)
    return float(np.sqrt(max(total, 0.0) / stats.n))


def _orthodev(rows: np.ndarray, ood: np.ndarray, scale: float, what: str) -> float:
    """``mean_c |cos(rows_c, ood)|``; raises when a vector is zero to working precision.

    ``scale`` is the RMS norm of the features the vectors were averaged from; a vector
    shorter than ``ZERO_RTOL * scale`` is rounding noise and has no direction.
    """
    rn = np.linalg.norm(rows, axis=1)  # (C,)
    on = float(np.linalg.norm(ood))
    tol = ZERO_RTOL * scale
    if on <= tol:
        raise ShapeError(
            f"{what} is undefined: the OOD mean vector has norm {on:.3g}, zero to working "
            f"precision (at most {ZERO_RTOL:g} x the feature scale {scale:.3g}), so it has "
            "no direction; check the OOD features (an OOD set centred on the ID data has no "
            "NC5)"
        )
    if np.any(rn <= tol):
        bad = np.flatnonzero(rn <= tol)
        raise ShapeError(
            f"{what} is undefined: class mean vector(s) {bad.tolist()[:10]} have norm "
            f"{float(rn[bad[0]]):.3g}, zero to working precision (at most {ZERO_RTOL:g} x "
            f"the feature scale {scale:.3g}); check the ID features"
        )
    return float(np.mean(np.abs(rows @ ood) / (rn * on)))


def _nc5_stats(features, labels, stats: ClassStats | None, chunk_size) -> ClassStats:
    if stats is None:
        stats = ClassStats.from_features(
            features, labels, chunk_size=chunk_size, second_moment=False
        )
    stats.require_classes(1)
    return stats


def nc5(
    features,
    labels,
    ood_features,
    *,
    stats: ClassStats | None = None,
    chunk_size: int | None = None,
) -> float:
    """NC5 OrthoDev (Ben Ammar et al., ICLR 2024, arXiv 2310.06823).

    ``mean_c |cos(mu_c, mu_OOD)|`` with *uncentred* ID class means ``mu_c`` and
    ``mu_OOD`` the sample mean of the OOD features: 0 when OOD features are on average
    orthogonal to every class mean.

    Args:
        features: ID train features ``(n, D)`` (ignored when ``stats`` is given).
        labels: ``(n,)``.
        ood_features: ``(m, D)``.
        stats: class statistics of the ID features (optional).
        chunk_size: rows per chunk.

    Raises:
        ShapeError: the OOD mean or a class mean is zero to working precision (norm at
            most ``ZERO_RTOL`` times the RMS feature norm): its cosine is undefined.
    """
    stats = _nc5_stats(features, labels, stats, chunk_size)
    zero = np.zeros(stats.dim)
    ood_mean, ood_rms = _mean_rows(ood_features, "ood_features", zero, chunk_size)
    scale = max(_rms_about(stats, zero), ood_rms)
    return _orthodev(stats.means, ood_mean, scale, "NC5")


def nc5_centred(
    features,
    labels,
    ood_features,
    *,
    stats: ClassStats | None = None,
    chunk_size: int | None = None,
) -> float:
    """Centred OrthoDev: as :func:`nc5` after subtracting ``mu_G`` from both means.

    Not NECO's definition: it measures the OOD mean's offset from the ID centre against
    the simplex directions ``mu_c - mu_G``, which removes the shared (e.g. post-ReLU
    positive) component that makes uncentred cosines large for any input.

    ``mu_G`` is the mean of the class means (not of the samples), as in NC1-NC3. All
    means are formed about the statistics' shift, so a large common offset cancels.

    Raises:
        ShapeError: the OOD mean lies at the ID centre ``mu_G``, or a class mean does,
            to working precision (distance at most ``ZERO_RTOL`` times the RMS feature
            norm about the shift): the cosine has no defined value there.
    """
    stats = _nc5_stats(features, labels, stats, chunk_size)
    # everything about the statistics' shift, so a large common offset cancels exactly
    shift = stats._shift()
    ood_mean, ood_rms = _mean_rows(ood_features, "ood_features", shift, chunk_size)
    class_means = stats.sums / stats.counts[:, None]  # (C, D) about the shift
    mu_g = class_means.mean(axis=0)  # the mean of the class means, not of the samples
    scale = max(_rms_about(stats, shift), ood_rms)
    return _orthodev(class_means - mu_g, ood_mean - mu_g, scale, "nc5_centred")


# ---------------------------------------------------------------------- output
def to_jsonable(m: Any) -> Any:
    """Arrays to lists, numpy scalars to Python, non-finite floats to ``None`` (JSON-safe)."""
    if isinstance(m, dict):
        return {str(k): to_jsonable(v) for k, v in m.items()}
    if isinstance(m, list | tuple):
        return [to_jsonable(v) for v in m]
    if isinstance(m, np.ndarray):
        return to_jsonable(m.tolist())
    if isinstance(m, np.generic):
        m = m.item()
    if isinstance(m, float) and not np.isfinite(m):
        return None
    return m
