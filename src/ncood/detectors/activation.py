"""Activation-shaping detectors: SCALE, ASH-S / ASH-P / ASH-B, and DICE (weight sparsity).

Each recomputes the logits from reshaped penultimate features (or a sparsified head) and
scores their energy, ``logsumexp(W z' + b)``. They act on the penultimate features as
given (``(n, D)``); ASH on pre-pool feature maps would need the maps, which extraction
does not keep.

Pruning convention (the authors' code, kept by OpenOOD v1.5): with percentile ``p`` and
width ``D``, each sample keeps its ``k = D - round(D * p / 100)`` largest entries (ties
broken arbitrarily; equal values make the result the same except for ASH-P/ASH-S with
ties at the cut) and zeroes the rest; ``k >= 1`` is required.

The methods assume non-negative (post-ReLU) features. ``s1`` is the sum of all entries
and ``s2`` the sum of the kept ones; where ``s2 <= 0`` (an all-zero sample, or negative
features) the scaling factor ``exp(s1 / s2)`` is undefined and the sample is left
unscaled (factor 1).
"""

from __future__ import annotations

import numbers
from typing import ClassVar

import numpy as np

from ncood.detectors.base import (
    Detector,
    iter_chunks,
    logsumexp_rows,
    pass_rows,
    read_chunk,
    register_detector,
)
from ncood.detectors.classwise import feature_mean
from ncood.errors import ConfigError
from ncood.validation import check_number

# OpenOOD v1.5's sweep for SCALE and ASH.
PERCENTILE_GRID = [65, 70, 75, 80, 85, 90, 95]


def kept_count(d: int, percentile: float) -> int:
    """Entries kept per sample: ``D - round(D * p / 100)`` (as the authors' code)."""
    return d - int(np.round(d * percentile / 100.0))


def sharpen_factor(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """``exp(s1 / s2)`` where ``s2 > 0``, else 1 (see the module docstring)."""
    ratio = np.divide(s1, s2, out=np.zeros_like(s1), where=s2 > 0)
    return np.exp(ratio)


def energy(logits: np.ndarray) -> np.ndarray:
    """``logsumexp`` over the rows of ``logits (b, C)`` (finite input;
    :func:`~ncood.detectors.base.logsumexp_rows`)."""
    return logsumexp_rows(logits)


class _Shaping(Detector):
    """Shared fit/score of the percentile-pruning detectors (head + kept count).

    Each chunk is partitioned once per row (``np.partition``, values only): the ``k``
    largest entries then sit in the last ``k`` columns, their sum is ``s2`` and the
    smallest of them is the cut. Subclasses implement ``_logits(z, part)``; the head is
    applied once per chunk and the per-sample factors are applied to the logits
    (``W (a z) = a (W z)``). The kept entries are those ``>= cut``, which is the set
    ``np.argpartition`` keeps except in rows where the cut value is tied: such rows are
    pruned by ``argpartition`` as before (:meth:`_mask`), so every score is the one of
    the index-based implementation.
    """

    uses_features = True
    uses_logits = False
    grid: ClassVar[dict[str, list]] = {"percentile": PERCENTILE_GRID}
    _label = "ASH"

    def __init__(self, *, percentile: float = 90.0) -> None:
        self.percentile = check_number(
            percentile, "percentile", self._label, low=0, high=100, high_open=True
        )

    def _fit(self, features, labels, head, stats) -> None:
        k = kept_count(head.dim, self.percentile)
        if k < 1:
            raise ConfigError(
                f"The 'percentile' parameter of {self._label} keeps no entry of D={head.dim} "
                f"features: got percentile={self.percentile}; choose a percentile below "
                f"{100 * (head.dim - 0.5) / head.dim:.4g}"
            )
        if features is not None:  # not used, but validated as every fit does (NaN/inf)
            n, d = features.shape
            for start, stop in iter_chunks(n, pass_rows(d)):
                if not np.isfinite(np.asarray(features[start:stop])).all():
                    read_chunk(features, start, stop, "train features")  # raises, with where
        self.k_ = k
        self.weight_ = head.weight
        self.bias_ = head.bias

    def _mask(self, z, part, *, zero_ties_ok: bool):
        """``(b, D)`` bool of the kept entries (``>= cut``), with tied rows re-pruned.

        A row whose cut is tied keeps more than ``k`` entries with ``>= cut``; those rows
        get exactly the ``k`` entries ``np.argpartition`` keeps. ``zero_ties_ok``: extra
        kept entries equal to 0 change nothing (ASH-P, ASH-S), so ties at a cut of 0 need
        no re-pruning there.
        """
        d, k = z.shape[1], self.k_
        cut = part[:, d - k]  # (b,) the k-th largest entry
        mask = z >= cut[:, None]  # (b, D)
        tied = np.count_nonzero(mask, axis=1) > k
        if zero_ties_ok:
            tied &= cut != 0
        if tied.any():
            rows = np.flatnonzero(tied)
            idx = np.argpartition(z[rows], d - k, axis=1)[:, d - k :]  # (t, k)
            exact = np.zeros((rows.size, d), dtype=bool)
            np.put_along_axis(exact, idx, True, axis=1)
            mask[rows] = exact
        return mask

    def _logits(self, z, part) -> np.ndarray:
        raise NotImplementedError

    def _score(self, z, f):
        part = np.partition(z, z.shape[1] - self.k_, axis=1)  # (b, D): top k last
        return energy(self._logits(z, part))

    def _kept_sum(self, part) -> np.ndarray:
        """``s2 (b,)``: the sum of the ``k`` largest entries of each row."""
        return part[:, part.shape[1] - self.k_ :].sum(axis=1)


@register_detector("scale")
class SCALE(_Shaping):
    """SCALE: energy of ``W (z * exp(s1 / s2)) + b``; nothing is pruned.

    ``s1 = sum(z)``, ``s2`` = the sum of the ``k`` largest entries of ``z`` (those above
    the per-sample ``percentile``-th percentile; see the module docstring).

    Xu, Chen, Franchi & Yao, "Scaling for Training Time and Post-hoc Out-of-distribution
    Detection Enhancement", ICLR 2024 (arXiv 2310.00227). Default ``percentile = 85``:
    OpenOOD v1.5's config (its sweep: 65, 70, ..., 95).

    Args:
        percentile: in ``[0, 100)``, at least one entry must be kept.

    Fitted attributes:
        k_: kept entries per sample. weight_, bias_: the head.
    """

    _label = "SCALE"

    def __init__(self, *, percentile: float = 85.0) -> None:
        super().__init__(percentile=percentile)

    def _logits(self, z, part):
        factor = sharpen_factor(z.sum(axis=1), self._kept_sum(part))  # (b,)
        return (z @ self.weight_.T) * factor[:, None] + self.bias_


@register_detector("ash_s")
class ASHS(_Shaping):
    """ASH-S: prune to the ``k`` largest entries, then scale by ``exp(s1 / s2)``.

    ``s1`` = sum of ``z`` before pruning, ``s2`` = after; score = energy of the head on
    the result. Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for
    Out-of-Distribution Detection", ICLR 2023 (arXiv 2209.09858). Default
    ``percentile = 90``: OpenOOD v1.5's config (and the paper's ASH-S@90 for CIFAR).

    Args:
        percentile: in ``[0, 100)``, at least one entry must be kept.
    """

    _label = "ASH-S"

    def _logits(self, z, part):
        factor = sharpen_factor(z.sum(axis=1), self._kept_sum(part))  # (b,)
        pruned = np.where(self._mask(z, part, zero_ties_ok=True), z, 0.0)  # (b, D)
        return (pruned @ self.weight_.T) * factor[:, None] + self.bias_


@register_detector("ash_p")
class ASHP(_Shaping):
    """ASH-P: keep the ``k`` largest entries as they are, zero the rest; energy.

    Djurisic et al., ICLR 2023 (arXiv 2209.09858); default ``percentile = 90`` (OpenOOD
    v1.5's config).

    Args:
        percentile: in ``[0, 100)``, at least one entry must be kept.
    """

    _label = "ASH-P"

    def _logits(self, z, part):
        pruned = np.where(self._mask(z, part, zero_ties_ok=True), z, 0.0)  # (b, D)
        return pruned @ self.weight_.T + self.bias_


@register_detector("ash_b")
class ASHB(_Shaping):
    """ASH-B: set the ``k`` largest entries to ``s1 / k`` (``s1 = sum(z)``), zero the rest.

    Djurisic et al., ICLR 2023 (arXiv 2209.09858); default ``percentile = 90`` (OpenOOD
    v1.5's config; the paper uses 65 for ASH-B on ImageNet).

    Args:
        percentile: in ``[0, 100)``, at least one entry must be kept.
    """

    _label = "ASH-B"

    def _logits(self, z, part):
        fill = z.sum(axis=1) / self.k_  # (b,)
        kept = self._mask(z, part, zero_ties_ok=False).astype(np.float64)  # (b, D) 0/1
        return (kept @ self.weight_.T) * fill[:, None] + self.bias_


@register_detector("dice")
class DICE(Detector):
    """DICE: energy of a sparsified head, keeping the largest weight contributions.

    Contributions ``V = W * m`` (elementwise, ``m`` the train mean, ``(C, D)``); the head
    keeps the weights whose contribution is above the ``p``-th percentile of all ``C * D``
    contributions (linear interpolation, strictly above) and zeroes the rest; score =
    ``logsumexp(W' z + b)``.

    Sun & Li, "DICE: Leveraging Sparsification for Out-of-Distribution Detection",
    ECCV 2022 (arXiv 2111.09805). Default ``p = 90`` (sparsity 0.9): the paper's CIFAR
    setting and OpenOOD v1.5's config. Without ReAct (the paper reports both).

    Args:
        p: sparsity percentile in ``[0, 100)``.

    Fitted attributes:
        center_: ``(D,)`` train mean. threshold_: the contribution cutoff.
        weight_: ``(C, D)`` sparsified weights. bias_: ``(C,)``.
    """

    uses_features = True
    uses_logits = False
    needs_train_features = True  # the train mean (one pass; stats.mean when also given)
    grid: ClassVar[dict[str, list]] = {"p": [10, 30, 50, 70, 90]}

    def __init__(self, *, p: float = 90.0) -> None:
        self.p = check_number(p, "p", "DICE", kind=numbers.Real, low=0, high=100, high_open=True)

    def _fit(self, features, labels, head, stats) -> None:
        self.center_ = feature_mean(features, stats, "DICE")
        contrib = head.weight * self.center_  # (C, D)
        self.threshold_ = float(np.percentile(contrib, self.p))
        self.weight_ = np.where(contrib > self.threshold_, head.weight, 0.0)
        self.bias_ = head.bias

    def _score(self, z, f):
        return energy(z @ self.weight_.T + self.bias_)
