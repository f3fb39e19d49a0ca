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

from ncood.collapse.stats import ClassStats
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

# Bytes of float64 working memory per chunk of rows (a chunk is converted to float64 and
# shifted, i.e. two copies); bounds memory for wide layers where chunk_size rows of D
# float64 values would not fit.
_CHUNK_BYTES = 128 * 2**20


def _etf_note(c: int, d: int) -> str:
    return (
        f"no simplex ETF of C={c} classes exists in D={d} dimensions (needs D >= C-1 = "
        f"{c - 1}); the NC2 targets (equal norms, cosines -1/(C-1)) cannot be reached, so "
        "the nc2_* values do not measure distance to an ETF"
    )


# ---------------------------------------------------------------------- helpers
def _rows_per_chunk(dim: int, chunk_size: int | None) -> int:
    budget = max(256, _CHUNK_BYTES // (16 * max(dim, 1)))
    return int(budget if chunk_size is None else max(1, min(chunk_size, budget)))


def iter_chunks(features, labels, chunk_size: int | None = None) -> Iterator[tuple[Any, Any]]:
    """Yield ``(features[i:j], labels[i:j])`` row chunks (memory-mapped input stays lazy)."""
    rows = _rows_per_chunk(features.shape[1], chunk_size)
    for start in range(0, features.shape[0], rows):
        yield features[start : start + rows], labels[start : start + rows]


def _check_features(features, name: str = "features"):
    feats = features if isinstance(features, np.ndarray) else np.asarray(features)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ShapeError(
            f"{name} must be a non-empty 2-D array (n_samples, n_features); got shape {feats.shape}"
        )
    return feats


def _build_stats(features, labels, num_classes: int | None, *, chunk_size, second_moment):
    feats = _check_features(features)
    y = as_labels(labels, feats.shape[0], num_classes=num_classes)
    c = int(y.max()) + 1 if num_classes is None else int(num_classes)
    stats = ClassStats(c, feats.shape[1], second_moment=second_moment)
    for zb, yb in iter_chunks(feats, y, chunk_size):
        stats.update(zb, yb)
    return feats, y, stats


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
    """Equinorm, equiangularity and max-angle deviation of ``rows (C, D)``."""
    c = rows.shape[0]
    norms, cos = _offdiag_cosines(rows)
    mean_norm = norms.mean()
    equinorm = float(norms.std() / mean_norm) if mean_norm > 0 else float("nan")
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
    """Mean over pairs ``i < j`` of ``(Var_i + Var_j) / (2 ||mu_i - mu_j||^2)``."""
    iu = np.triu_indices(d2.shape[0], k=1)
    num = variances[iu[0]] + variances[iu[1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = num / (2.0 * d2[iu])  # coincident means give inf: no separation at all
    return float(ratio.mean())


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
    tol = (max(c, d) * np.finfo(np.float64).eps if rtol is None else rtol) * (
        lam[0] if lam.size else 0.0
    )
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
) -> tuple[float, float]:
    """One chunked pass: ``(nc4, ncc_acc)``; ``nc4`` is nan without a head.

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
    nc4 = disagree / n if head is not None else float("nan")
    return float(nc4), float(correct / n)


def decision_metrics(
    batches: Iterable[tuple[Any, Any]], stats: ClassStats, head: LinearHead | None = None
) -> dict[str, float]:
    """``nc4`` (if ``head``) and ``ncc_acc`` from an iterable of ``(features, labels)`` chunks.

    The chunks must be the samples ``stats`` was built from (for example a generator that
    re-reads a memory-mapped file); use this for data that do not fit in memory.
    """
    nc4, acc = _nearest_mean_pass(batches, stats, head)
    out = {"ncc_acc": acc}
    if head is not None:
        out["nc4"] = nc4
    return out


# ---------------------------------------------------------------------- metrics
def metrics_from_stats(stats: ClassStats, head: LinearHead | None = None) -> dict[str, Any]:
    """Every statistic-only metric (all but ``nc4`` / ``ncc_acc``) from ``stats``.

    With ``head``: the head-based metrics too (``nc2_*_weights``, ``nc3``). Without the
    second moment (``stats.has_second_moment`` False): only the inversion-free
    ``nc1_trace`` and ``cdnv``, plus the per-class arrays that need no covariance.
    """
    c, d = stats.num_classes, stats.dim
    if c < 2:
        raise ShapeError(f"collapse metrics need at least 2 classes; got C={c}")
    _check_stats(stats, head.dim if head is not None else None, head.num_classes if head else None)
    m = stats.centred_means()  # (C, D)
    var = stats.class_variances()  # (C,)
    trace_w = float(var @ stats.counts / stats.n)  # Tr(S_W)
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
        "nc1_trace": trace_w / trace_b if trace_b > 0 else float("inf"),
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
        equinorm, equiangular, maxangle, wnorms, wcos = _nc2(w)
        w_f, m_f = np.linalg.norm(w), np.linalg.norm(m)
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
            a class has fewer than 2 samples, there is a single class, or the
            features hold NaN/inf.
    """
    if not isinstance(head, LinearHead):
        raise ShapeError(
            f"head must be a ncood LinearHead(weight (C, D), bias (C,)); got "
            f"{type(head).__name__}; use layer_metrics() for a layer without a head"
        )
    feats = _check_features(features)
    if feats.shape[1] != head.dim:
        raise ShapeError(
            f"features have {feats.shape[1]} features, but the head is expecting {head.dim} "
            "features as input; pass the penultimate features of the same network"
        )
    c = head.num_classes
    if stats is None:
        feats, y, stats = _build_stats(feats, labels, c, chunk_size=chunk_size, second_moment=True)
    else:
        y = as_labels(labels, feats.shape[0], num_classes=c)
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
    feats = _check_features(features)
    if stats is None:
        feats, y, stats = _build_stats(
            feats, labels, num_classes, chunk_size=chunk_size, second_moment=full
        )
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
def _mean_rows(features, name: str, chunk_size: int | None = None) -> np.ndarray:
    feats = _check_features(features, name)
    total = np.zeros(feats.shape[1], dtype=np.float64)
    rows = _rows_per_chunk(feats.shape[1], chunk_size)
    for start in range(0, feats.shape[0], rows):
        chunk = np.asarray(feats[start : start + rows], dtype=np.float64)
        check_finite(chunk, name)
        total += chunk.sum(axis=0)
    return total / feats.shape[0]


def _orthodev(means: np.ndarray, ood_mean: np.ndarray) -> float:
    mn = np.linalg.norm(means, axis=1)
    on = np.linalg.norm(ood_mean)
    if on == 0 or np.any(mn == 0):
        raise ShapeError(
            "NC5 is undefined: the OOD mean or a class mean is the zero vector (cosine of a "
            "zero vector); check the features"
        )
    return float(np.mean(np.abs(means @ ood_mean) / (mn * on)))


def _nc5_inputs(features, labels, ood_features, stats, chunk_size):
    if stats is None:
        feats = _check_features(features)
        _, _, stats = _build_stats(feats, labels, None, chunk_size=chunk_size, second_moment=False)
    stats.require_classes(1)
    ood_mean = _mean_rows(ood_features, "ood_features", chunk_size)
    if ood_mean.shape[0] != stats.dim:
        raise ShapeError(
            f"ood_features have {ood_mean.shape[0]} features, but the ID features have "
            f"{stats.dim}; extract both from the same layer"
        )
    return stats, ood_mean


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
    """
    stats, ood_mean = _nc5_inputs(features, labels, ood_features, stats, chunk_size)
    return _orthodev(stats.means, ood_mean)


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
    """
    stats, ood_mean = _nc5_inputs(features, labels, ood_features, stats, chunk_size)
    mu_g = stats.global_mean
    return _orthodev(stats.means - mu_g, ood_mean - mu_g)


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
