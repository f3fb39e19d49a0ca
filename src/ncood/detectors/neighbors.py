"""Nearest-neighbour detector on L2-normalised features (deep KNN)."""

from __future__ import annotations

import numbers

import numpy as np

from ncood.detectors.base import (
    Detector,
    chunk_rows,
    iter_chunks,
    read_chunk,
    register_detector,
)
from ncood.errors import ConfigError
from ncood.validation import check_number

# Added to the norm before normalising, as in the authors' code: keeps an all-zero
# feature vector (possible after ReLU) finite; far below any real feature norm.
NORM_EPS = 1e-10

# Query rows per chunk are chosen so the (rows, n_train) similarity block holds about
# 2^23 float32 values (32 MiB); never a full (n_query, n_train) matrix.
SIM_VALUES = 1 << 23


def _normalise(z: np.ndarray) -> np.ndarray:
    return z / (np.linalg.norm(z, axis=1, keepdims=True) + NORM_EPS)


@register_detector("knn")
class KNN(Detector):
    """Negative distance to the k-th nearest train feature, on the unit sphere.

    ``score(z) = -|| z/||z|| - t_(k) ||`` where ``t_(k)`` is the k-th nearest of the
    L2-normalised train features.

    Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors",
    ICML 2022 (arXiv 2204.06507). The paper uses k = 50 on CIFAR-10 (full train set).

    Unlike the other feature-space detectors this needs every train feature: they are
    stored normalised in float32 (as the paper's faiss index does; 200 MB for 50,000 x
    1,024), and queries are scored in chunks by matrix products, with
    ``||a - b||^2 = 2 - 2 a.b`` for unit vectors and a partial sort per row.

    Args:
        k: which neighbour, ``1 <= k <= n_train``.

    Fitted attributes:
        train_: ``(n_train, D)`` float32 normalised train features.
    """

    needs_train_features = True

    def __init__(self, *, k: int = 50) -> None:
        self.k = check_number(k, "k", "KNN", kind=numbers.Integral, low=1)

    def _fit(self, features, labels, head, stats) -> None:
        n, d = features.shape
        if self.k > n:
            raise ConfigError(
                f"The 'k' parameter of KNN must be at most the number of train samples: got "
                f"k={self.k} for n_train={n}; choose a smaller k"
            )
        train = np.empty((n, d), dtype=np.float32)
        for start, stop in iter_chunks(n, chunk_rows(d)):
            train[start:stop] = _normalise(read_chunk(features, start, stop, "train features"))
        self.train_ = train

    def _score_chunk_rows(self, width: int) -> int:
        return max(1, min(SIM_VALUES // self.train_.shape[0], chunk_rows(width)))

    def _score(self, z, f):
        q = _normalise(z).astype(np.float32)  # (b, D)
        n = self.train_.shape[0]
        sims = q @ self.train_.T  # (b, n_train) float32
        # k-th largest cosine similarity = k-th nearest neighbour
        kth = np.partition(sims, n - self.k, axis=1)[:, n - self.k].astype(np.float64)
        return -np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))
