"""Logit-based detectors: MSP, MaxLogit, Energy, and ReAct (energy of clipped features).

MSP, MaxLogit and Energy score the logits as they are and need no fit (``fit`` only
records the head's shape so that ``score`` can check the logit width).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.special import logsumexp

from ncood.detectors.base import Detector, check_2d, chunk_rows, iter_chunks, register_detector
from ncood.validation import check_finite, check_number

log = logging.getLogger(__name__)


class _LogitDetector(Detector):
    needs_fit = False
    uses_features = False
    uses_logits = True

    def _fit(self, features, labels, head, stats) -> None:
        pass


@register_detector("msp")
class MSP(_LogitDetector):
    """Maximum softmax probability: ``max_i softmax(f / T)_i``.

    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
    Examples in Neural Networks", ICLR 2017 (arXiv 1610.02136).

    Args:
        T: softmax temperature, > 0 (1 = the plain softmax).
    """

    def __init__(self, *, T: float = 1.0) -> None:
        self.T = check_number(T, "T", "MSP", low=0, low_open=True)

    def _score(self, z, f):
        g = f / self.T  # (b, C)
        # max softmax = exp(max g - logsumexp g), computed without overflow
        return np.exp(g.max(axis=1) - logsumexp(g, axis=1))


@register_detector("maxlogit")
class MaxLogit(_LogitDetector):
    """Maximum logit: ``max_i f_i``.

    Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings",
    ICML 2022 (arXiv 1911.11132).
    """

    def __init__(self) -> None:
        pass

    def _score(self, z, f):
        return f.max(axis=1)


@register_detector("energy")
class Energy(_LogitDetector):
    """Negative free energy: ``T * logsumexp(f / T)``.

    Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020
    (arXiv 2010.03759).

    Args:
        T: temperature, > 0.
    """

    def __init__(self, *, T: float = 1.0) -> None:
        self.T = check_number(T, "T", "Energy", low=0, low_open=True)

    def _score(self, z, f):
        return self.T * logsumexp(f / self.T, axis=1)


def _percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear method) in float64 for any input dtype."""
    pos = q / 100.0 * (values.size - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    part = np.partition(values, [lo, hi])
    a, b = float(part[lo]), float(part[hi])
    return a + (pos - lo) * (b - a)


# Above this many train activations, the ReAct percentile is taken on evenly spaced rows
# (2^25 values = 128 MiB as float32); the estimate's error is far below the spread of
# the activations.
REACT_MAX_VALUES = 1 << 25


@register_detector("react")
class ReAct(Detector):
    """ReAct: energy of the logits recomputed from clipped features.

    ``c`` = the ``percentile``-th percentile of all train activations (every entry of the
    train feature matrix); score = ``T * logsumexp((W min(z, c) + b) / T)``.

    Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations",
    NeurIPS 2021 (arXiv 2111.12797). The percentile is over all entries of the train
    features, as in the authors' code; above ``2^25`` entries it is estimated on evenly
    spaced train rows (logged).

    Args:
        percentile: in ``(0, 100]``; the paper uses 90.
        T: energy temperature, > 0.

    Fitted attributes:
        threshold_: the clipping value ``c``.
        weight_, bias_: the head, used to recompute the logits.
    """

    uses_features = True
    uses_logits = False
    needs_train_features = True

    def __init__(self, *, percentile: float = 90.0, T: float = 1.0) -> None:
        self.percentile = check_number(
            percentile, "percentile", "ReAct", low=0, high=100, low_open=True
        )
        self.T = check_number(T, "T", "ReAct", low=0, low_open=True)

    def _fit(self, features, labels, head, stats) -> None:
        features = check_2d(features, "features")
        n, d = features.shape
        if n * d <= REACT_MAX_VALUES:
            blocks = [features[a:b] for a, b in iter_chunks(n, chunk_rows(d))]
        else:
            rows = np.linspace(0, n - 1, REACT_MAX_VALUES // d).astype(np.int64)
            log.info(
                "react: percentile estimated on %d evenly spaced of %d train rows", rows.size, n
            )
            blocks = (features[rows[i : i + 4096]] for i in range(0, rows.size, 4096))
        # kept in the features' own dtype (float32 halves the memory of this copy)
        values = np.concatenate([np.asarray(block).ravel() for block in blocks])
        check_finite(values, "train features")
        self.threshold_ = _percentile(values, self.percentile)
        self.weight_ = head.weight
        self.bias_ = head.bias

    def _score(self, z, f):
        logits = np.minimum(z, self.threshold_) @ self.weight_.T + self.bias_  # (b, C)
        return self.T * logsumexp(logits / self.T, axis=1)
