"""OOD detection metrics: AUROC, AUPR-In, AUPR-Out, FPR@95%TPR (DESIGN.md section 3).

Conventions (the same everywhere in ncood, and printed in every report footer):

- **Score sign.** Scores are "higher = more in-distribution"; arguments are named
  ``id_scores`` (positives) and ``ood_scores`` (negatives).
- **Ties are grouped, never broken by order.** Every curve has one point per *distinct*
  score value, as scikit-learn's ``roc_curve(drop_intermediate=False)`` and
  ``precision_recall_curve`` build them. Hence AUROC equals the Mann-Whitney statistic
  with ties counted one half.
- **AUROC**: trapezoidal area under the ROC curve of ID (positive) vs OOD, i.e.
  ``sklearn.metrics.roc_auc_score`` / ``auc(*roc_curve(...)[:2])``.
- **AUPR-In**: ID positive, ranked by ``score``; **AUPR-Out**: OOD positive, ranked by
  ``-score``. Both are the trapezoidal area under scikit-learn's
  ``precision_recall_curve`` (which starts at recall 0, precision 1), i.e.
  ``auc(recall, precision)`` -- *not* ``average_precision_score`` (a step-wise sum).
  This is what the NECO and OpenOOD evaluation code compute.
- **fpr95** (ID positive): with ``k = floor(0.95 * n_id)``, the threshold is the k-th
  largest ID score, and ``fpr95`` is the fraction of OOD samples with score ``>=``
  that threshold.
- **fpr95_oodpos** (OpenOOD v1.5, OOD positive): on the ROC curve of OOD (positive,
  ranked by ``-score``) vs ID, the false-positive rate at the first point whose
  true-positive rate is ``>= 0.95``: the fraction of ID samples rejected when 95% of OOD
  samples are caught. Kept under its own name so the numbers can be set beside
  OpenOOD's tables without confusion.

All functions take 1-D arrays, work in float64, sort once (``O(n log n)``), and handle
10^6 scores in a fraction of a second.

Uncertainty and the relation (DESIGN.md section 8):

- :func:`bootstrap_ood_metrics`: percentile bootstrap intervals, ID and OOD resampled
  separately; replicates vectorised (per-replicate counts on the tie groups) and equal
  to the functions above applied to the resampled scores (:func:`bootstrap_replicates`,
  draws documented in :func:`bootstrap_generators`).
- :func:`paired_auroc_difference` + :func:`paired_verdict`: two detectors on the same
  samples, the same resampled indices for both; "about equal" only when the interval of
  the difference contains 0.
- :func:`spearman_ci`: Spearman correlation over points with a bootstrap interval over
  points -- descriptive, since the points are not independent.
- :func:`mean_std`: mean and ``ddof=1`` standard deviation over seeds.
- :func:`fpr_at_tpr_point`: the threshold and both rates behind ``fpr95``, for plots.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ncood.errors import ConfigError, ShapeError
from ncood.validation import check_number

CONVENTIONS = {
    "positive": "ID (in-distribution) is the positive class",
    "score_sign": "every detector score: higher = more in-distribution",
    "ties": "ties are grouped (one curve point per distinct score), never broken by order",
    "auroc": "trapezoidal area under the ROC curve (scikit-learn roc_curve + auc)",
    "aupr": (
        "AUPR-In: ID positive, ranked by score; AUPR-Out: OOD positive, ranked by -score; "
        "trapezoidal area under precision_recall_curve (auc(recall, precision), "
        "not average_precision)"
    ),
    "fpr95": (
        "FPR@95%TPR: with k = floor(0.95 * n_id), the threshold is the k-th largest ID score; "
        "fpr95 = fraction of OOD samples with score >= threshold"
    ),
    "fpr95_oodpos": (
        "OpenOOD v1.5 convention (OOD positive): fraction of ID samples rejected when 95% of "
        "OOD samples are caught"
    ),
    "intervals": (
        "95% percentile bootstrap intervals: ID and OOD scores resampled separately with "
        "replacement, B replicates as configured (default 1000); a paired comparison of two "
        "detectors resamples the same samples for both and calls them about equal only when "
        "the interval of the difference contains 0; over seeds: mean and std (ddof=1)"
    ),
    "relation": (
        "Spearman correlation over the points (snapshot, layer, regime, seed) with a "
        "bootstrap interval over points: descriptive, the points are not independent"
    ),
}

METRIC_NAMES = ("auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_oodpos")


# --------------------------------------------------------------------------- validation
def _as_scores(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ShapeError(
            f"{name} must be a 1-D array of scores (n_samples,); got shape {arr.shape}; "
            "pass one score per sample"
        )
    if arr.size == 0:
        raise ShapeError(f"{name} is empty; pass at least one score")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ShapeError(f"{name} must be numeric; got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ShapeError(
            f"{name} contains {int(bad.sum())} NaN/inf score(s) (first at index "
            f"{int(np.argmax(bad))}); check the detector's input features and logits"
        )
    return arr


def _check_pair(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    s_id = _as_scores(id_scores, "id_scores")
    s_ood = _as_scores(ood_scores, "ood_scores")
    lo = min(s_id.min(), s_ood.min())
    hi = max(s_id.max(), s_ood.max())
    if lo == hi:
        raise ShapeError(
            f"all {s_id.size + s_ood.size} ID and OOD scores are equal ({lo!r}): the scores "
            "are constant, so they carry no ranking (AUROC would be 0.5 trivially); check "
            "the detector and its input"
        )
    return s_id, s_ood


def _check_tpr(tpr) -> float:
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float, np.floating)):
        raise ConfigError(f"The 'tpr' parameter must be a float in the range (0, 1). Got {tpr!r}.")
    if not 0.0 < float(tpr) < 1.0:
        raise ConfigError(
            f"The 'tpr' parameter must be a float in the range (0, 1). Got {tpr!r} instead; "
            "e.g. tpr=0.95"
        )
    return float(tpr)


# --------------------------------------------------------------------------- curve counts
@dataclass(frozen=True)
class _Counts:
    """Cumulative counts at the distinct score values, in descending score order.

    ``n_id_ge[j]`` / ``n_ood_ge[j]``: ID / OOD samples with ``score >= thresholds[j]``.
    """

    thresholds: np.ndarray  # (m,) distinct scores, descending
    n_id_ge: np.ndarray  # (m,) float64
    n_ood_ge: np.ndarray  # (m,) float64
    sorted_id: np.ndarray  # (n_id,) ascending
    sorted_ood: np.ndarray  # (n_ood,) ascending

    @property
    def n_id(self) -> int:
        return self.sorted_id.size

    @property
    def n_ood(self) -> int:
        return self.sorted_ood.size


def _counts(s_id: np.ndarray, s_ood: np.ndarray) -> _Counts:
    # Ties are grouped by construction: one entry per distinct score value, with the
    # number of ID / OOD samples scoring >= it. Plain sorts + binary search are several
    # times faster than an argsort of the concatenation (0.4 s for 2 x 10^6 scores).
    sorted_id, sorted_ood = np.sort(s_id), np.sort(s_ood)
    both = np.sort(np.concatenate([sorted_id, sorted_ood]))
    last = np.empty(both.size, dtype=bool)
    last[:-1] = both[1:] != both[:-1]
    last[-1] = True
    thresholds = both[last][::-1]  # distinct values, descending
    n_id_ge = (sorted_id.size - np.searchsorted(sorted_id, thresholds, "left")).astype(np.float64)
    n_ood_ge = (sorted_ood.size - np.searchsorted(sorted_ood, thresholds, "left")).astype(
        np.float64
    )
    return _Counts(thresholds, n_id_ge, n_ood_ge, sorted_id, sorted_ood)


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def _auroc(c: _Counts) -> float:
    fpr = np.concatenate([[0.0], c.n_ood_ge / c.n_ood])
    tpr = np.concatenate([[0.0], c.n_id_ge / c.n_id])
    return _trapezoid(fpr, tpr)


def _aupr(tp: np.ndarray, fp: np.ndarray, n_pos: int) -> float:
    # scikit-learn's precision_recall_curve: one point per distinct threshold plus the
    # point (recall 0, precision 1); area by the trapezoidal rule (sklearn.metrics.auc).
    precision = np.concatenate([[1.0], tp / (tp + fp)])
    recall = np.concatenate([[0.0], tp / n_pos])
    return _trapezoid(recall, precision)


def _ood_positive(c: _Counts) -> tuple[np.ndarray, np.ndarray]:
    """(OOD, ID) counts with ``score <= t`` for each distinct ``t``, ascending ``t``.

    Ranking by ``-score`` visits the same tie groups in reverse order; the samples at or
    below group ``j`` are all samples minus those strictly above it.
    """
    ood_gt = np.concatenate([[0.0], c.n_ood_ge[:-1]])  # OOD with score > thresholds[j]
    id_gt = np.concatenate([[0.0], c.n_id_ge[:-1]])
    return (c.n_ood - ood_gt)[::-1], (c.n_id - id_gt)[::-1]


def _fpr_oodpos(c: _Counts, tpr: float) -> float:
    tp, fp = _ood_positive(c)
    reached = tp / c.n_ood >= tpr  # as OpenOOD: fpr[np.argmax(tpr >= 0.95)]
    return float(fp[int(np.argmax(reached))] / c.n_id)


# --------------------------------------------------------------------------- public API
def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve, ID positive (== ``sklearn.metrics.roc_auc_score``).

    Args:
        id_scores: ``(n_id,)`` scores of in-distribution samples (higher = more ID).
        ood_scores: ``(n_ood,)`` scores of OOD samples.

    Returns:
        The trapezoidal area under the tie-grouped ROC curve: the probability that a
        random ID sample scores higher than a random OOD sample, ties counting one half.

    Raises:
        ShapeError: an empty or non-1-D input, NaN/inf, or all scores equal.
    """
    return _auroc(_counts(*_check_pair(id_scores, ood_scores)))


def aupr_in(id_scores, ood_scores) -> float:
    """Area under the precision-recall curve with ID positive, ranked by ``score``.

    Matches ``auc(recall, precision)`` of ``sklearn.metrics.precision_recall_curve``
    (trapezoidal, curve starting at recall 0 / precision 1), not
    ``average_precision_score``.
    """
    c = _counts(*_check_pair(id_scores, ood_scores))
    return _aupr(c.n_id_ge, c.n_ood_ge, c.n_id)


def aupr_out(id_scores, ood_scores) -> float:
    """Area under the precision-recall curve with OOD positive, ranked by ``-score``.

    Same construction as :func:`aupr_in` with the roles of ID and OOD swapped.
    """
    c = _counts(*_check_pair(id_scores, ood_scores))
    tp, fp = _ood_positive(c)
    return _aupr(tp, fp, c.n_ood)


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """False-positive rate at a true-positive rate, ID positive (DESIGN.md ``fpr95``).

    With ``k = floor(tpr * n_id)``, the threshold is the k-th largest ID score, so at
    least ``k`` ID samples score ``>=`` it; the result is the fraction of OOD samples with
    score ``>=`` the threshold. If ``k == 0`` (fewer than ``1 / tpr`` ID samples) no ID
    sample need be kept, the threshold lies above every score and the result is 0.

    Args:
        id_scores: ``(n_id,)`` scores, higher = more ID.
        ood_scores: ``(n_ood,)`` scores.
        tpr: target true-positive rate in ``(0, 1)``.

    Returns:
        A fraction in ``[0, 1]`` (lower is better).

    Raises:
        ConfigError: ``tpr`` outside ``(0, 1)``.
        ShapeError: an empty or non-1-D input, NaN/inf, or all scores equal.
    """
    tpr = _check_tpr(tpr)
    return _fpr_at_tpr(_counts(*_check_pair(id_scores, ood_scores)), tpr)


def _fpr_at_tpr(c: _Counts, tpr: float) -> float:
    n_id = c.n_id
    k = _k_of(tpr, n_id)
    if k == 0:
        return 0.0
    threshold = c.sorted_id[n_id - k]  # k-th largest ID score
    n_ge = c.n_ood - np.searchsorted(c.sorted_ood, threshold, "left")  # OOD with score >= it
    return float(n_ge / c.n_ood)


def fpr_at_tpr_oodpos(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """OpenOOD v1.5's FPR@95: OOD positive (ranked by ``-score``), ID negative.

    The false-positive rate (fraction of ID samples with ``score <= t``) at the first
    point of the tie-grouped ROC curve whose true-positive rate (fraction of OOD samples
    with ``score <= t``) is ``>= tpr``; i.e. ``fpr[np.argmax(tpr_curve >= tpr)]`` of
    ``roc_curve(is_ood, -score, drop_intermediate=False)``.
    """
    tpr = _check_tpr(tpr)
    return _fpr_oodpos(_counts(*_check_pair(id_scores, ood_scores)), tpr)


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """Every metric of one (ID, OOD) pair, from a single sort.

    Args:
        id_scores: ``(n_id,)`` scores of ID test samples, higher = more ID.
        ood_scores: ``(n_ood,)`` scores of OOD samples.

    Returns:
        ``{"auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_oodpos"}`` as fractions in
        ``[0, 1]``; see the module docstring for the exact conventions.

    Raises:
        ShapeError: an empty or non-1-D input, NaN/inf, or all scores equal.
    """
    c = _counts(*_check_pair(id_scores, ood_scores))
    tp_out, fp_out = _ood_positive(c)
    return {
        "auroc": _auroc(c),
        "aupr_in": _aupr(c.n_id_ge, c.n_ood_ge, c.n_id),
        "aupr_out": _aupr(tp_out, fp_out, c.n_ood),
        "fpr95": _fpr_at_tpr(c, 0.95),
        "fpr95_oodpos": _fpr_oodpos(c, 0.95),
    }


class OperatingPoint(NamedTuple):
    """A threshold on the score and the rates it gives (ID positive: ``score >= t``)."""

    threshold: float
    fpr: float  # fraction of OOD samples with score >= threshold
    tpr: float  # fraction of ID samples with score >= threshold


def fpr_at_tpr_point(id_scores, ood_scores, tpr: float = 0.95) -> OperatingPoint:
    """The operating point behind :func:`fpr_at_tpr`: threshold, FPR and achieved TPR.

    For plots that mark the FPR@95 point on a ROC curve: the same threshold and rate as
    :func:`fpr_at_tpr` (``k = floor(tpr * n_id)``, threshold = the k-th largest ID
    score), plus the fraction of ID samples kept: ``k / n_id`` (which floors, so it can
    fall just short of ``tpr`` for small ``n_id``), more when ID scores tie at the
    threshold.

    Args:
        id_scores: ``(n_id,)`` scores, higher = more ID.
        ood_scores: ``(n_ood,)`` scores.
        tpr: target true-positive rate in ``(0, 1)``.

    Returns:
        ``OperatingPoint(threshold, fpr, tpr)``; ``fpr == fpr_at_tpr(...)`` exactly. If
        ``k == 0`` the threshold is ``+inf`` and both rates are 0.

    Raises:
        ConfigError: ``tpr`` outside ``(0, 1)``.
        ShapeError: an empty or non-1-D input, NaN/inf, or all scores equal.
    """
    tpr = _check_tpr(tpr)
    c = _counts(*_check_pair(id_scores, ood_scores))
    k = _k_of(tpr, c.n_id)
    if k == 0:
        return OperatingPoint(math.inf, 0.0, 0.0)
    threshold = c.sorted_id[c.n_id - k]
    n_id_ge = c.n_id - np.searchsorted(c.sorted_id, threshold, "left")
    return OperatingPoint(float(threshold), _fpr_at_tpr(c, tpr), float(n_id_ge / c.n_id))


# --------------------------------------------------------------------------- uncertainty
# DESIGN.md section 8. Bootstrap replicates are computed from per-replicate counts on the
# tie groups of the original scores (no Python loop over replicates), and equal -- to
# rounding, tested at 1e-12 -- the metric functions above applied to the resampled scores.

_BLOCK_ELEMENTS = 1 << 16  # resampled values per block of replicates (work arrays stay small)


class _IntervalTuple(NamedTuple):
    value: float
    lo: float
    hi: float


class Interval(_IntervalTuple):
    """An estimate and its bootstrap interval: unpacks as ``value, lo, hi``.

    ``note`` (an attribute, not a tuple field) says why a value is NaN or how many
    replicates were left out; it is ``""`` when there is nothing to say.
    """

    note: str = ""

    def __new__(cls, value: float, lo: float, hi: float, note: str = ""):
        self = super().__new__(cls, float(value), float(lo), float(hi))
        if note:
            self.note = note  # a NamedTuple subclass without __slots__ has a __dict__
        return self

    def __repr__(self) -> str:
        base = f"Interval(value={self.value!r}, lo={self.lo!r}, hi={self.hi!r})"
        return base[:-1] + f", note={self.note!r})" if self.note else base

    def contains(self, x: float) -> bool:
        """Whether ``lo <= x <= hi`` (False when the interval is undefined)."""
        return bool(self.lo <= x <= self.hi)


def bootstrap_generators(seed=0) -> tuple[np.random.Generator, np.random.Generator]:
    """The two random streams of the bootstrap: one for ID indices, one for OOD indices.

    Replicate ``r`` (``r = 0, 1, ...``) resamples ``idx_id = g_id.integers(0, n_id,
    size=n_id)`` and ``idx_ood = g_ood.integers(0, n_ood, size=n_ood)``, drawn in
    replicate order from ``g_id, g_ood = bootstrap_generators(seed)``. Two streams keep
    each replicate's indices independent of how replicates are blocked, so a plain loop
    over replicates reproduces them exactly (tested).

    Args:
        seed: an int, a ``SeedSequence`` or a ``np.random.Generator`` (whose state it
            advances by one draw).

    Returns:
        ``(g_id, g_ood)``, independent generators spawned from one ``SeedSequence``.
    """
    parent = np.random.default_rng(seed)
    entropy = int(parent.integers(0, 2**63))
    ss_id, ss_ood = np.random.SeedSequence(entropy).spawn(2)
    return np.random.default_rng(ss_id), np.random.default_rng(ss_ood)


def _check_boot(n_boot, level) -> tuple[int, float]:
    n_boot = int(check_number(n_boot, "n_boot", "the bootstrap", kind=numbers.Integral, low=1))
    level = float(
        check_number(
            level, "level", "the bootstrap", low=0.0, high=1.0, low_open=True, high_open=True
        )
    )
    return n_boot, level


def _check_metrics(metrics) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown or not metrics:
        raise ConfigError(
            f"The 'metrics' parameter must name metrics among {list(METRIC_NAMES)}; got "
            f"{list(metrics)!r}" + (f" (unknown: {unknown})" if unknown else " (empty)")
        )
    return metrics


def _k_of(tpr: float, n_id: int) -> int:
    # 1e-9 absorbs the binary representation of tpr (e.g. 0.95 * n = 94.99999999999999
    # for some n would floor one too low); it is far below the spacing of k / n_id.
    return math.floor(tpr * n_id + 1e-9)


class _Replicates:
    """Bootstrap replicate metrics of one (ID, OOD) score pair, a block of replicates at a time.

    The scores are reduced once to tie groups (distinct pooled values, group 0 the
    highest): ``gid_id[i]`` / ``gid_ood[j]`` is the group of each sample. A replicate is
    then its count of ID and of OOD samples per group, and every metric a few passes over
    ``(b, m)`` arrays. The same curves as the single-pair functions: a group absent from a
    replicate repeats the previous curve point and adds no area, so summing over all
    groups of the original scores equals summing over the distinct resampled values.

    Work arrays are allocated once and reused by every block: allocating them per block
    cost more than the arithmetic (page faults), 0.9 s vs 0.5 s at 10k + 10k, B = 1000.
    """

    def __init__(self, s_id: np.ndarray, s_ood: np.ndarray, b_max: int):
        inverse = np.unique(np.concatenate([s_id, s_ood]), return_inverse=True)[1].ravel()
        self.m = m = int(inverse.max()) + 1
        desc = (m - 1) - inverse  # (n_id + n_ood,) descending group index
        self.gid_id, self.gid_ood = desc[: s_id.size], desc[s_id.size :]
        self.n_id, self.n_ood = s_id.size, s_ood.size
        self.row_offset = (np.arange(b_max) * m)[:, None]  # (b_max, 1) flat index of a row
        self.take_id = np.empty((b_max, self.n_id), dtype=np.intp)
        self.take_ood = np.empty((b_max, self.n_ood), dtype=np.intp)
        self.cid, self.cood = np.empty((b_max, m)), np.empty((b_max, m))
        self.ige, self.oge, self.tot, self.ratio, self.num = (
            np.empty((b_max, m + 1)) for _ in range(5)
        )
        self.ige[:, 0] = self.oge[:, 0] = 0.0
        # fpr95: k of the k-th largest ID score; fpr95_oodpos: the least OOD count c that
        # passes the very float test of _fpr_oodpos, c / n_ood >= 0.95.
        self.k = _k_of(0.95, self.n_id)
        self.c_min = int(
            np.argmax(np.arange(self.n_ood + 1, dtype=np.float64) / self.n_ood >= 0.95)
        )

    def _counts(self, gid, idx, take, out) -> np.ndarray:
        """``(b, m)`` float64: resampled samples of each replicate in each group."""
        b = idx.shape[0]
        flat = np.take(gid, idx, out=take[:b])  # (b, n) group of every resampled sample
        flat += self.row_offset[:b]  # one flat scatter for the whole block
        counts = out[:b]
        counts.fill(0.0)
        np.add.at(counts.reshape(-1), flat.reshape(-1), 1.0)
        return counts

    def block(self, idx_id, idx_ood, metrics) -> dict[str, np.ndarray]:
        """Metric values of ``b`` replicates: ``(b, n_id)`` and ``(b, n_ood)`` indices."""
        n_id, n_ood = self.n_id, self.n_ood
        b = idx_id.shape[0]
        cid = self._counts(self.gid_id, idx_id, self.take_id, self.cid)  # (b, m)
        cood = self._counts(self.gid_ood, idx_ood, self.take_ood, self.cood)  # (b, m)
        # Cumulative counts with a leading zero column (float64, exact: integers < 2^53):
        # ige[:, j] = ID samples in groups < j (score > value of group j), so ige[:, j + 1]
        # counts score >= it; the same for oge with OOD.
        ige, oge = self.ige[:b], self.oge[:b]
        np.cumsum(cid, axis=1, out=ige[:, 1:])
        np.cumsum(cood, axis=1, out=oge[:, 1:])
        rows = np.arange(b)
        out: dict[str, np.ndarray] = {}
        if "auroc" in metrics:
            # trapezoid over (fpr, tpr) = (oge / n_ood, ige / n_id): the area times
            # 2 n_id n_ood is sum_g cood_g (ige_g + ige_{g+1}) = 2 sum cood ige_g + sum cood
            # cid, a sum of integers (exact in float64), divided once.
            twice = 2.0 * np.einsum("ij,ij->i", cood, ige[:, :-1])
            twice += np.einsum("ij,ij->i", cood, cid)
            out["auroc"] = twice / (2.0 * n_id * n_ood)
        if "aupr_in" in metrics or "aupr_out" in metrics:
            tot = np.add(ige, oge, out=self.tot[:b])  # samples with score > group j's value
        if "aupr_in" in metrics:
            # points (recall, precision) = (ige / n_id, ige / tot) at columns 1..m after the
            # start point (0, 1) at column 0; an empty prefix (tot == 0) repeats the start.
            p = self.ratio[:b]
            p.fill(1.0)
            np.divide(ige, tot, out=p, where=tot > 0)
            area = np.einsum("ij,ij->i", cid, p[:, 1:]) + np.einsum("ij,ij->i", cid, p[:, :-1])
            out["aupr_in"] = area / (2.0 * n_id)
        if "aupr_out" in metrics:
            # OOD positive, ranked by -score: group g comes after the groups below it, and
            # the samples with score <= its value are those not in groups < g: n - tot[:, g]
            # of which n_ood - oge[:, g] are OOD. Column m (nothing yet) is the start point.
            rest = np.subtract(n_id + n_ood, tot, out=tot)
            num = np.subtract(n_ood, oge, out=self.num[:b])
            q = self.ratio[:b]
            q.fill(1.0)
            np.divide(num, rest, out=q, where=rest > 0)
            area = np.einsum("ij,ij->i", cood, q[:, :-1]) + np.einsum("ij,ij->i", cood, q[:, 1:])
            out["aupr_out"] = area / (2.0 * n_ood)
        if "fpr95_oodpos" in metrics:
            # OpenOOD: in -score order, the first group whose OOD rate (n_ood - oge) / n_ood
            # reaches 0.95, i.e. the last in descending order (group 0 always reaches it).
            last = np.count_nonzero(oge[:, :-1] <= n_ood - self.c_min, axis=1) - 1
            out["fpr95_oodpos"] = (n_id - ige[rows, last]) / n_id
        if "fpr95" in metrics:
            if self.k == 0:
                out["fpr95"] = np.zeros(b)
            else:
                first = np.count_nonzero(ige[:, 1:] < self.k, axis=1)  # group of k-th largest
                out["fpr95"] = oge[rows, first + 1] / n_ood
        return out


def _block_sizes(n_boot: int, n_per_replicate: int):
    per = max(1, _BLOCK_ELEMENTS // n_per_replicate)
    for start in range(0, n_boot, per):
        yield min(per, n_boot - start)


def _percentile(reps: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_replicates(
    id_scores, ood_scores, *, n_boot: int = 1000, seed=0, metrics=METRIC_NAMES
) -> dict[str, np.ndarray]:
    """Bootstrap replicate values of OOD metrics, vectorised over replicates.

    ID and OOD scores are resampled separately with replacement (replicate ``r`` draws
    its indices as :func:`bootstrap_generators` documents); each replicate's metrics are
    those of :func:`ood_metrics` on the resampled scores (ties grouped), computed from
    per-group counts for a block of replicates at once. A replicate whose resample is
    constant (possible only for a handful of scores) gets the tie values (AUROC 0.5)
    where :func:`ood_metrics` would refuse it.

    Args:
        id_scores: ``(n_id,)`` scores of ID samples, higher = more ID.
        ood_scores: ``(n_ood,)`` scores of OOD samples.
        n_boot: number of replicates ``B >= 1``.
        seed: int, ``SeedSequence`` or ``np.random.Generator``.
        metrics: names among :data:`METRIC_NAMES`.

    Returns:
        ``{metric: (B,) float64 array}``.

    Raises:
        ConfigError: a bad ``n_boot`` or metric name.
        ShapeError: as :func:`ood_metrics`.
    """
    s_id, s_ood = _check_pair(id_scores, ood_scores)
    metrics = _check_metrics(metrics)
    n_boot, _ = _check_boot(n_boot, 0.95)
    return _paired_replicates([(s_id, s_ood)], n_boot, seed, metrics)[0]


def _paired_replicates(pairs, n_boot: int, seed, metrics) -> list[dict[str, np.ndarray]]:
    """Replicates of each (ID, OOD) pair of ``pairs`` under the SAME resampled indices."""
    n_id, n_ood = pairs[0][0].size, pairs[0][1].size
    sizes = list(_block_sizes(n_boot, n_id + n_ood))
    evaluators = [_Replicates(s_id, s_ood, sizes[0]) for s_id, s_ood in pairs]
    out = [{k: np.empty(n_boot) for k in metrics} for _ in pairs]
    g_id, g_ood = bootstrap_generators(seed)
    start = 0
    for b in sizes:
        idx_id = g_id.integers(0, n_id, size=(b, n_id))  # (b, n_id)
        idx_ood = g_ood.integers(0, n_ood, size=(b, n_ood))  # (b, n_ood)
        for res, ev in zip(out, evaluators, strict=True):
            for k, v in ev.block(idx_id, idx_ood, metrics).items():
                res[k][start : start + b] = v
        start += b
    return out


def bootstrap_ood_metrics(
    id_scores,
    ood_scores,
    *,
    n_boot: int = 1000,
    seed=0,
    level: float = 0.95,
    metrics=METRIC_NAMES,
) -> dict[str, Interval]:
    """OOD metrics with bootstrap percentile intervals (DESIGN.md section 8).

    ID and OOD scores are resampled separately with replacement, ``n_boot`` times (see
    :func:`bootstrap_replicates`); the interval is the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of the replicate values (percentile bootstrap, linear
    interpolation; Efron & Tibshirani 1993, ch. 13). The estimate is the metric on the
    original scores. 10,000 + 10,000 scores with ``B = 1000`` take well under a second
    (``benchmarks/bootstrap.py``).

    Args:
        id_scores: ``(n_id,)`` scores of ID test samples, higher = more ID.
        ood_scores: ``(n_ood,)`` scores of OOD samples.
        n_boot: number of replicates ``B``.
        seed: int, ``SeedSequence`` or ``np.random.Generator``; the same seed gives the
            same intervals.
        level: coverage of the interval, in ``(0, 1)``.
        metrics: names among :data:`METRIC_NAMES`.

    Returns:
        ``{metric: Interval(value, lo, hi)}``, fractions in ``[0, 1]``.

    Raises:
        ConfigError: a bad ``n_boot``, ``level`` or metric name.
        ShapeError: as :func:`ood_metrics`.
    """
    s_id, s_ood = _check_pair(id_scores, ood_scores)
    metrics = _check_metrics(metrics)
    n_boot, level = _check_boot(n_boot, level)
    point = ood_metrics(s_id, s_ood)
    reps = _paired_replicates([(s_id, s_ood)], n_boot, seed, metrics)[0]
    return {k: Interval(point[k], *_percentile(reps[k], level)) for k in metrics}


def paired_auroc_difference(
    id_a, ood_a, id_b, ood_b, *, n_boot: int = 1000, seed=0, level: float = 0.95
) -> Interval:
    """AUROC of detector A minus that of detector B, with a paired bootstrap interval.

    Both detectors scored the same ID and the same OOD samples (row ``i`` of ``id_a`` and
    ``id_b`` is the same image); each replicate resamples the *same* indices for both, so
    the interval reflects the difference on one test set rather than two independent
    draws. Use :func:`paired_verdict` to phrase it: "about equal" only when the interval
    contains 0.

    Args:
        id_a, ood_a: ``(n_id,)`` and ``(n_ood,)`` scores of detector A.
        id_b, ood_b: the same samples scored by detector B.
        n_boot, seed, level: as :func:`bootstrap_ood_metrics`.

    Returns:
        ``Interval(auroc_a - auroc_b, lo, hi)``.

    Raises:
        ShapeError: the two detectors' ID (or OOD) arrays differ in length, or as
            :func:`ood_metrics`.
        ConfigError: a bad ``n_boot`` or ``level``.
    """
    a = _check_pair(id_a, ood_a)
    b = _check_pair(id_b, ood_b)
    for name, x, y in (("ID", a[0], b[0]), ("OOD", a[1], b[1])):
        if x.size != y.size:
            raise ShapeError(
                f"paired comparison needs both detectors scored on the same {name} samples; "
                f"got {x.size} scores for A and {y.size} for B; score the same samples"
            )
    n_boot, level = _check_boot(n_boot, level)
    ra, rb = _paired_replicates([a, b], n_boot, seed, ("auroc",))
    diff = _auroc(_counts(*a)) - _auroc(_counts(*b))
    return Interval(diff, *_percentile(ra["auroc"] - rb["auroc"], level))


def paired_verdict(interval) -> str:
    """Phrase a paired difference ``A - B``: ``"a_better"``, ``"b_better"`` or ``"about_equal"``.

    ``"about_equal"`` only when the interval contains 0 (DESIGN.md section 8); a
    difference whose interval excludes 0 is called for the detector it favours.

    Args:
        interval: ``(value, lo, hi)`` as :func:`paired_auroc_difference` returns.
    """
    _, lo, hi = interval
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(
            f"The 'interval' parameter must have finite bounds; got ({lo!r}, {hi!r}); "
            "compute it with paired_auroc_difference"
        )
    if lo > 0:
        return "a_better"
    if hi < 0:
        return "b_better"
    return "about_equal"


# --------------------------------------------------------------------------- the relation
def _as_points(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ShapeError(f"{name} must be a 1-D array (n_points,); got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ShapeError(f"{name} must be numeric; got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ShapeError(
            f"{name} contains {int(bad.sum())} NaN/inf value(s) (first at index "
            f"{int(np.argmax(bad))}); drop those points before correlating"
        )
    return arr


def _spearman_rows(dx: np.ndarray, dy: np.ndarray, idx: np.ndarray, ux: int, uy: int):
    """Spearman rho of each row of resampled points; NaN where a row is constant.

    ``dx``/``dy``: dense ranks (0..u-1) of the original values; ``idx`` ``(b, n)``. Average
    ranks (ties share the mean of their positions, as ``scipy.stats.rankdata``) come from
    per-row counts of each dense value: rank = #below + (#equal + 1) / 2.
    """
    b, n = idx.shape
    rows = np.arange(b)[:, None]
    centred = []
    for d, u in ((dx, ux), (dy, uy)):
        v = d[idx]  # (b, n) dense value of each resampled point
        cnt = np.bincount((v + rows * u).ravel(), minlength=b * u).reshape(b, u)
        below = np.cumsum(cnt, axis=1) - cnt  # (b, u)
        avg = below + (cnt + 1) / 2.0  # average rank of each value
        centred.append(avg[rows, v] - (n + 1) / 2.0)  # ranks minus their mean
    rx, ry = centred
    sxy = np.einsum("ij,ij->i", rx, ry)
    sxx = np.einsum("ij,ij->i", rx, rx)
    syy = np.einsum("ij,ij->i", ry, ry)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = sxy / np.sqrt(sxx * syy)
    rho[(sxx == 0) | (syy == 0)] = np.nan
    return np.clip(rho, -1.0, 1.0)


def spearman_ci(x, y, *, n_boot: int = 1000, seed=0, level: float = 0.95) -> Interval:
    """Spearman rank correlation of paired points, with a bootstrap interval over points.

    ``rho`` is Pearson's correlation of the average ranks (ties share the mean rank), as
    ``scipy.stats.spearmanr``. The interval resamples the ``n`` points (pairs) with
    replacement ``n_boot`` times (replicate ``r`` draws ``rng.integers(0, n, size=n)`` in
    order from ``rng = np.random.default_rng(seed)``) and takes percentiles of the
    replicate rhos. Replicates whose resample is constant in ``x`` or ``y`` have no rho
    and are left out (counted in ``note``).

    **Descriptive only.** In ncood the points are snapshots x layers x regimes x seeds of
    the same networks: they are not independent, so neither rho's p-value nor this
    interval is a test of a population correlation; the interval shows how much rho
    depends on which points are included.

    Args:
        x: ``(n_points,)`` values, e.g. AUROC per (snapshot, layer, regime, seed).
        y: ``(n_points,)`` values paired with ``x``, e.g. NC1 at the same points.
        n_boot: number of replicates ``B >= 1``.
        seed: int, ``SeedSequence`` or ``np.random.Generator``.
        level: coverage of the interval, in ``(0, 1)``.

    Returns:
        ``Interval(rho, lo, hi)``. With fewer than 3 points, or ``x`` or ``y`` constant,
        rho is undefined: all three are NaN and ``note`` says why (no error, so a
        report can print the reason). ``lo``/``hi`` are NaN when no replicate has a rho.

    Raises:
        ShapeError: ``x`` and ``y`` not 1-D of the same length, or NaN/inf in them.
        ConfigError: a bad ``n_boot`` or ``level``.
    """
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if x.size != y.size:
        raise ShapeError(
            f"x and y must hold the same points; got {x.size} and {y.size} values; pass "
            "one (x, y) pair per point"
        )
    n_boot, level = _check_boot(n_boot, level)
    n = x.size
    nan = math.nan
    if n < 3:
        return Interval(nan, nan, nan, f"undefined: {n} point(s), Spearman needs at least 3")
    _, dx = np.unique(x, return_inverse=True)
    _, dy = np.unique(y, return_inverse=True)
    dx, dy = dx.ravel(), dy.ravel()
    ux, uy = int(dx.max()) + 1, int(dy.max()) + 1
    for name, u, v in (("x", ux, x), ("y", uy, y)):
        if u == 1:
            return Interval(
                nan,
                nan,
                nan,
                f"undefined: {name} is constant ({float(v[0])!r}) over the {n} points",
            )
    rho = float(_spearman_rows(dx, dy, np.arange(n)[None, :], ux, uy)[0])
    rng = np.random.default_rng(seed)
    reps = []
    for b in _block_sizes(n_boot, 2 * n):
        reps.append(_spearman_rows(dx, dy, rng.integers(0, n, size=(b, n)), ux, uy))
    reps = np.concatenate(reps)
    ok = np.isfinite(reps)
    n_left_out = int(n_boot - ok.sum())
    note = (
        f"{n_left_out} of {n_boot} replicates left out (resample constant in x or y)"
        if n_left_out
        else ""
    )
    if not ok.any():
        return Interval(rho, nan, nan, note)
    return Interval(rho, *_percentile(reps[ok], level), note)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) over seeds, as tables show them.

    Args:
        values: ``(n_seeds,)`` one value per seed; NaN values are not allowed.

    Returns:
        ``(mean, std)``; ``std`` is NaN for a single seed (no spread to estimate).

    Raises:
        ShapeError: empty, not 1-D, or NaN/inf values.
    """
    v = _as_points(values, "values")
    if v.size == 0:
        raise ShapeError("values is empty; pass one value per seed")
    std = float(np.std(v, ddof=1)) if v.size > 1 else math.nan
    return float(np.mean(v)), std
