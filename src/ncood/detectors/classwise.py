"""Detectors built on the class geometry of the head and the train means.

RMDS (relative Mahalanobis distance), fDBD (distance to the decision boundaries), NCI
(neural-collapse inspired alignment with the predicted class's weight) and SHE (inner
product with the predicted class's stored pattern). RMDS is a function of the streaming
class statistics; fDBD and NCI need only the train mean (one chunked pass without
labels; ``stats.mean`` when statistics are passed too); SHE needs one pass with labels
and the head.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np

from ncood.detectors.base import (
    SCORE_CHUNK_VALUES,
    Detector,
    class_sums,
    iter_chunks,
    pass_rows,
    read_chunk,
    register_detector,
    row_norms,
)
from ncood.detectors.gaussian import whitening_factor
from ncood.errors import ConfigError, ShapeError
from ncood.validation import as_labels, check_number

log = logging.getLogger(__name__)

# Floor of a distance used as a denominator (fDBD, NCI): a query exactly at the train mean
# would otherwise divide by zero; the smallest normal float64 is far below any real norm.
TINY = np.finfo(np.float64).tiny


def feature_mean(features, stats, owner: str) -> np.ndarray:
    """Sample mean ``(D,)`` float64 of the train features: ``stats.mean`` when statistics
    are given, else one chunked pass over ``features``."""
    if stats is not None:
        return np.asarray(stats.mean, dtype=np.float64)
    if features is None:
        raise ShapeError(
            f"{owner} needs the train features (or stats=ClassStats) to fit; pass features"
        )
    n, d = features.shape
    total = np.zeros(d, dtype=np.float64)
    for start, stop in iter_chunks(n, pass_rows(d)):
        # summed in float64 without a float64 copy of the chunk; any NaN/inf entry makes
        # its column sum non-finite, and read_chunk then raises naming where it is
        block_sum = np.asarray(features[start:stop]).sum(axis=0, dtype=np.float64)
        if not np.isfinite(block_sum).all():
            read_chunk(features, start, stop, "train features")
        total += block_sum
    return total / n


@register_detector("rmds")
class RMDS(Detector):
    """Relative Mahalanobis distance.

    ``score(z) = -min_c [ (z - mu_c)^T P (z - mu_c) - (z - m)^T P_0 (z - m) ]``, with
    ``mu_c`` the train class means, ``P`` the pseudo-inverse of the pooled within-class
    covariance (as Mahalanobis), ``m`` the train mean and ``P_0`` the pseudo-inverse of
    the covariance of all train features about ``m`` (both divided by N). The background
    term does not depend on ``c``, so the score is ``md_0(z) - min_c md_c(z)``.

    Ren, Fort, Liu, Roy, Padhy & Lakshminarayanan, "A Simple Fix to Mahalanobis Distance
    for Improving Near-OOD Detection", ICML 2021 UDL workshop (arXiv 2106.09022). No
    hyperparameters (as in the paper and OpenOOD v1.5).

    Both quadratic forms are evaluated after whitening (``P = L L^T``, ``P_0 = L_0
    L_0^T``, see :func:`~ncood.detectors.gaussian.whitening_factor`) about ``m``: one
    matrix product per chunk, no per-class loop, no ``n x n`` temporary.

    Fitted attributes:
        means_: ``(C, D)`` class means. center_: ``(D,)`` train mean ``m``.
        whitener_: ``(D, r)`` ``L``; background_whitener_: ``(D, r0)`` ``L_0``.
    """

    uses_stats = True

    def __init__(self) -> None:
        pass

    def _fit(self, features, labels, head, stats) -> None:
        stats.require_classes(1)
        self.means_ = stats.means  # (C, D)
        self.center_ = stats.mean  # (D,)
        self.whitener_ = whitening_factor(stats.within_cov())  # (D, r)
        self.background_whitener_ = whitening_factor(stats.total_cov())  # (D, r0)
        self.white_means_ = (self.means_ - self.center_) @ self.whitener_  # (C, r)
        self._sq_means = np.einsum("cr,cr->c", self.white_means_, self.white_means_)
        # both whiteners side by side: one pass of one product per chunk
        self._whiteners = np.ascontiguousarray(
            np.concatenate([self.whitener_, self.background_whitener_], axis=1)
        )  # (D, r + r0)

    def _score(self, z, f):
        d = z - self.center_  # (b, D)
        both = d @ self._whiteners  # (b, r + r0)
        r = self.whitener_.shape[1]
        a, a0 = both[:, :r], both[:, r:]  # (b, r), (b, r0)
        md = (
            np.einsum("br,br->b", a, a)[:, None]
            - 2.0 * (a @ self.white_means_.T)
            + self._sq_means[None, :]
        )  # (b, C) squared class distances
        md_min = np.maximum(md.min(axis=1), 0.0)  # rounding can make a tiny one negative
        return np.einsum("br,br->b", a0, a0) - md_min


@register_detector("fdbd")
class FDBD(Detector):
    """Fast decision-boundary distance.

    ``score(z) = mean_{c != ŷ} |f_ŷ - f_c| / ||w_ŷ - w_c||``, divided by ``||z - m||``
    (``m`` the train mean), ``ŷ = argmax f``: the mean distance from ``z`` to the
    decision boundaries between the predicted class and the others, relative to the
    distance from the train mean.

    Liu & Qin, "Fast Decision Boundary based Out-of-Distribution Detector", ICML 2024
    (arXiv 2312.11536). OpenOOD's code sums over ``c`` instead of averaging (a constant
    factor ``C - 1``: the same ranking).
    OpenOOD v1.5 also offers ``||z||`` as the normaliser (its sweep:
    ``distance_as_normalizer`` True/False); the default (True, the paper's) is DESIGN's.

    Args:
        distance_as_normalizer: divide by ``||z - m||`` (True) or by ``||z||`` (False).

    Fitted attributes:
        center_: ``(D,)`` train mean. inv_boundary_: ``(C, C)`` ``1 / ||w_a - w_b||``
        with a zero diagonal.
    """

    uses_logits = True
    needs_train_features = True  # the train mean (one pass; stats.mean when also given)
    grid: ClassVar[dict[str, list]] = {"distance_as_normalizer": [True, False]}

    def __init__(self, *, distance_as_normalizer: bool = True) -> None:
        if not isinstance(distance_as_normalizer, (bool, np.bool_)):
            raise ConfigError(
                "The 'distance_as_normalizer' parameter of fDBD must be a bool. "
                f"Got {distance_as_normalizer!r} instead."
            )
        self.distance_as_normalizer = bool(distance_as_normalizer)

    def _fit(self, features, labels, head, stats) -> None:
        w = head.weight  # (C, D)
        c, d = w.shape
        if c < 2:
            raise ConfigError(
                f"fDBD needs at least 2 classes (decision boundaries); the head has C={c}"
            )
        dist = np.empty((c, c), dtype=np.float64)
        rows = max(1, SCORE_CHUNK_VALUES // (c * d))  # (rows, C, D) differences at a time
        for a, b in iter_chunks(c, rows):
            diff = w[a:b, None, :] - w[None, :, :]  # (rows, C, D), direct: no cancellation
            dist[a:b] = np.sqrt(np.einsum("rcd,rcd->rc", diff, diff))
        np.fill_diagonal(dist, np.inf)  # 1/inf = 0: the predicted class adds nothing
        if (dist == 0).any():
            i, j = map(int, np.argwhere(dist == 0)[0])
            raise ConfigError(
                f"fDBD: classes {i} and {j} have identical weight vectors, so their decision "
                "boundary is undefined; check the head"
            )
        self.inv_boundary_ = 1.0 / dist
        self.center_ = feature_mean(features, stats, "fDBD")

    def _score(self, z, f):
        pred = f.argmax(axis=1)  # (b,)
        gap = np.abs(f - f[np.arange(len(f)), pred][:, None])  # (b, C)
        mean_dist = np.sum(gap * self.inv_boundary_[pred], axis=1) / (f.shape[1] - 1)
        ref = z - self.center_ if self.distance_as_normalizer else z
        return mean_dist / np.maximum(row_norms(ref), TINY)


@register_detector("nci")
class NCI(Detector):
    """Neural-collapse inspired detector: alignment with the predicted class's weight.

    ``score(z) = cos(z - m, w_ŷ) + alpha * ||z||_1``, ``m`` the train mean, ``ŷ =
    argmax f``. A query exactly at ``m`` gets cosine 0.

    Liu & Qin, "Detecting Out-of-Distribution Through the Lens of Neural Collapse",
    CVPR 2025 (arXiv 2311.01479). Default ``alpha = 1e-4`` from OpenOOD v1.5's config
    (its sweep: 1e-4, 1e-3, 1e-2, 0.1). OpenOOD divides by ``||z - m||`` only (not by
    ``||w_ŷ||``); here it is the cosine, as in DESIGN.md and the paper.

    Args:
        alpha: weight of the L1 norm, >= 0.

    Fitted attributes:
        center_: ``(D,)`` train mean. directions_: ``(C, D)`` unit class weights.
    """

    uses_logits = True
    needs_train_features = True  # the train mean (one pass; stats.mean when also given)
    grid: ClassVar[dict[str, list]] = {"alpha": [1e-4, 1e-3, 1e-2, 1e-1]}

    def __init__(self, *, alpha: float = 1e-4) -> None:
        self.alpha = check_number(alpha, "alpha", "NCI", low=0)

    def _fit(self, features, labels, head, stats) -> None:
        norms = np.linalg.norm(head.weight, axis=1, keepdims=True)  # (C, 1)
        if (norms == 0).any():
            raise ConfigError(
                f"NCI: class {int(np.flatnonzero(norms == 0)[0])} has an all-zero weight "
                "vector, so its direction is undefined; check the head"
            )
        self.directions_ = head.weight / norms
        self.center_ = feature_mean(features, stats, "NCI")

    def _score(self, z, f):
        d = z - self.center_  # (b, D)
        pred = f.argmax(axis=1)
        dot = np.einsum("bd,bd->b", d, self.directions_[pred])
        cos = dot / np.maximum(row_norms(d), TINY)
        return cos + self.alpha * np.abs(z).sum(axis=1)


@register_detector("she")
class SHE(Detector):
    """Simplified Hopfield energy: inner product with the predicted class's pattern.

    ``score(z) = z . s_ŷ``, ``ŷ = argmax f``, where the stored pattern ``s_c`` is the mean
    of the train features of class ``c`` that the classifier predicts correctly (a class
    with no correct prediction falls back to the mean of all its samples, logged).

    Zhang, Fu, Zhang, Luo et al., "Out-of-Distribution Detection based on
    In-Distribution Data Patterns Memorization with Modern Hopfield Energy", ICLR 2023
    (OpenReview; no arXiv version). Inner-product metric as in the paper and OpenOOD
    v1.5's config; no tunable parameter.

    Fitted attributes:
        patterns_: ``(C, D)`` stored patterns. n_correct_: ``(C,)`` samples behind each.
    """

    uses_logits = True
    needs_train_features = True

    def __init__(self) -> None:
        pass

    def _fit(self, features, labels, head, stats) -> None:
        if labels is None:
            raise ShapeError("SHE needs the train labels to fit; pass labels (n_train,)")
        n, d = features.shape
        c = head.num_classes
        y = as_labels(labels, n, num_classes=c)
        sums = np.zeros((c, d), dtype=np.float64)
        counts = np.zeros(c, dtype=np.int64)
        for start, stop in iter_chunks(n, pass_rows(d)):
            z = read_chunk(features, start, stop, "train features")  # (b, D)
            yb = y[start:stop]
            correct = (z @ head.weight.T + head.bias).argmax(axis=1) == yb
            # misclassified rows go to an extra bin (c), dropped: no copy of the others
            sums += class_sums(z, np.where(correct, yb, c), c + 1)[:c]
            counts += np.bincount(yb[correct], minlength=c)
        present = np.bincount(y, minlength=c) > 0
        if not present.all():
            missing = np.flatnonzero(~present)
            raise ShapeError(
                f"SHE needs train samples of every class; classes {missing[:10].tolist()} "
                "have none; pass labels covering all C classes of the head"
            )
        fallback = counts == 0
        if fallback.any():  # rare: a second pass for the classes never predicted correctly
            log.warning(
                "she: %d class(es) have no correctly classified train sample (e.g. %s); "
                "their pattern is the mean of all their samples",
                int(fallback.sum()),
                np.flatnonzero(fallback)[:10].tolist(),
            )
            for start, stop in iter_chunks(n, pass_rows(d)):
                yb = y[start:stop]
                rows = fallback[yb]
                z = read_chunk(features, start, stop, "train features")[rows]
                sums += class_sums(z, yb[rows], c)
                counts += np.bincount(yb[rows], minlength=c)
        self.patterns_ = sums / counts[:, None]
        self.n_correct_ = np.where(fallback, 0, counts)

    def _score(self, z, f):
        pred = f.argmax(axis=1)
        return np.einsum("bd,bd->b", z, self.patterns_[pred])
