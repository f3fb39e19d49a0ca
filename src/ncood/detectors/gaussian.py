"""Class-conditional Gaussian detector with a shared covariance (Mahalanobis)."""

from __future__ import annotations

import logging

import numpy as np
from scipy.linalg import eigh

from ncood.detectors.base import Detector, eigen_cutoff, register_detector

log = logging.getLogger(__name__)


def whitening_factor(cov: np.ndarray) -> np.ndarray:
    """``L (D, r)`` with ``L L^T = pinvh(cov)``, from one symmetric eigendecomposition.

    Eigenvalues at or below ``D * eps * max(eigenvalue)`` (:func:`eigen_cutoff`) are
    treated as zero and their directions dropped -- the cutoff ``scipy.linalg.pinvh``
    uses by default, so ``L L^T`` equals ``pinvh(cov)`` (up to rounding) also for
    rank-deficient ``cov``.
    """
    evals, evecs = eigh(cov)  # ascending
    keep = evals > eigen_cutoff(evals[-1], cov.shape[0])
    return evecs[:, keep] / np.sqrt(evals[keep])  # (D, r)


@register_detector("mahalanobis")
class Mahalanobis(Detector):
    """Minimum Mahalanobis distance to the class means, with a shared covariance.

    ``score(z) = -min_c (z - mu_c)^T P (z - mu_c)``, ``mu_c`` the train class means and
    ``P`` the pseudo-inverse (``pinvh``) of the pooled within-class covariance (divided
    by N), all from streaming class statistics (DESIGN.md sections 4-5).

    Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
    Adversarial Attacks", NeurIPS 2018 (arXiv 1807.03888); the feature-only variant
    (last layer, no input perturbation, no ensemble).

    Scoring whitens once, ``a = (z - m) L`` with ``P = L L^T``, and gets all squared
    distances to the whitened means ``w_c`` in one matmul,
    ``||a||^2 - 2 a . w_c + ||w_c||^2``; no per-class ``D x D`` loop. Centring on the mean
    of the class means ``m`` first keeps that expansion free of cancellation from the
    large common offset of post-ReLU features.

    Constant train features (zero variance, e.g. ReLU units dead on every train sample;
    :meth:`ClassStats.constant_features`) carry no information: the pseudo-inverse drops
    their directions, and a warning names them (docs/errors.md, row 6).

    Fitted attributes:
        means_: ``(C, D)`` class means.
        whitener_: ``(D, r)`` ``L`` with ``L L^T = P``; ``r`` = rank of the covariance.
        center_: ``(D,)`` mean of the class means (subtracted before whitening).
        white_means_: ``(C, r)`` whitened, centred class means.
        rank_: ``r``.
        n_constant_: number of constant (zero-variance) train features.
    """

    uses_stats = True

    def __init__(self) -> None:
        pass

    def _fit(self, features, labels, head, stats) -> None:
        stats.require_classes(1)
        self.means_ = stats.means  # (C, D)
        self.center_ = self.means_.mean(axis=0)  # (D,)
        self.whitener_ = whitening_factor(stats.within_cov())  # (D, r)
        self.white_means_ = (self.means_ - self.center_) @ self.whitener_  # (C, r)
        self._sq_means = np.einsum("cr,cr->c", self.white_means_, self.white_means_)  # (C,)
        self.rank_ = int(self.whitener_.shape[1])
        constant = np.flatnonzero(stats.constant_features())
        self.n_constant_ = int(constant.size)
        if constant.size:
            log.warning(
                "mahalanobis: %d train feature(s) are constant (e.g. dead ReLU units; columns "
                "%s%s); they carry no information and the pseudo-inverse drops their "
                "directions",
                constant.size,
                constant[:10].tolist(),
                "..." if constant.size > 10 else "",
            )

    @property
    def precision_(self) -> np.ndarray:
        """``P (D, D)`` = pinvh of the within-class covariance (built on demand)."""
        return self.whitener_ @ self.whitener_.T

    def _score(self, z, f):
        a = (z - self.center_) @ self.whitener_  # (b, r)
        d2 = (
            np.einsum("br,br->b", a, a)[:, None]
            - 2.0 * (a @ self.white_means_.T)
            + self._sq_means[None, :]
        )  # (b, C)
        return -np.maximum(d2.min(axis=1), 0.0)  # rounding can make a tiny distance negative
