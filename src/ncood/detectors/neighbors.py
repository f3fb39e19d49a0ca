"""Nearest-neighbour detectors on L2-normalised features: deep KNN and NNGuide.

KNN at scale (exact, bounded memory, accurate for close neighbours):

1. ``fit`` normalises the train features chunk by chunk and stores them as residuals
   about *anchors*, ``r_i = u_i - a_{y_i}`` with ``u_i = z_i / ||z_i||`` and ``a_c`` the
   mean unit vector of class ``c`` (without labels: one anchor, the mean unit vector of
   the first ``CENTER_ROWS`` rows). The residuals are as small as the classes are tight,
   so float32 storage keeps ~7 digits of the *within*-class geometry -- also for
   collapsed features and for features with a large common offset -- and nothing is
   computed as ``2 - 2 cos``. Labels only choose the anchors; the score ignores them.
2. ``score`` takes query rows in chunks and, anchor by anchor, the residuals in blocks
   (at most ``SIM_VALUES`` products held at once): with ``q = u - a`` formed in float64,
   ``||q - r_i||^2 = ||q||^2 + ||r_i||^2 - 2 q . r_i`` by one matrix product per block,
   keeping per query the ``L = min(n, 2k + 16)`` nearest candidates. With faiss
   installed, a float32 index and a single anchor, ``faiss.knn`` (exact brute force,
   blocked, multi-threaded, on the same array: no copy) finds the shortlist instead.
3. The shortlisted candidates' distances are recomputed directly in float64 as
   ``||(u - a) - r_i||`` (no cancellation) and the k-th smallest is taken.

The k-th smallest of a set of numbers moves by at most ``delta`` when every number moves
by at most ``delta``, so the shortlist only has to contain the true k nearest up to the
(small, relative) rounding of step 2, and the margin of ``k + 16`` candidates absorbs it.
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import ClassVar

import numpy as np

from ncood.detectors.base import (
    Detector,
    chunk_rows,
    iter_chunks,
    logsumexp_rows,
    pass_rows,
    read_chunk,
    register_detector,
    row_norms,
)
from ncood.errors import ConfigError
from ncood.validation import as_labels, check_number

log = logging.getLogger(__name__)

# Added to the norm before normalising, as in the authors' code: keeps an all-zero
# feature vector (possible after ReLU) finite; far below any real feature norm.
NORM_EPS = 1e-10

# Query rows x train rows of one block of products: about 2^23 values (32 MiB as float32);
# never a full (n_query, n_train) matrix.
SIM_VALUES = 1 << 23
# Train rows per block of products (1M train rows are scanned in 16 blocks per query chunk).
TRAIN_ROWS = 1 << 16
# Values of the (rows, candidates, D) float64 gather of the exact re-ranking (32 MiB).
RERANK_VALUES = 1 << 22
# Shortlisted candidates beyond k (plus another k): see the module docstring.
SHORTLIST_EXTRA = 16

# Train rows whose mean unit vector is the centre subtracted before storage.
CENTER_ROWS = 4096

INDEX_DTYPES = {"float32": np.float32, "float64": np.float64}
BACKENDS = ("auto", "numpy", "faiss")


def _faiss():
    """The ``faiss`` module if installed (``pip install 'ncood[faiss]'``), else None.

    Imported lazily: only a KNN fit asks for it.
    """
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _normalise(z: np.ndarray) -> np.ndarray:
    """Rows of ``z (b, D)`` divided by their L2 norm (+ ``NORM_EPS``), float64."""
    return z / (row_norms(z)[:, None] + NORM_EPS)


def _smallest(values: np.ndarray, idx: np.ndarray | None, m: int):
    """Per row, the ``m`` smallest of ``values (b, n)`` (unordered) and their ``idx (b, n)``;
    with ``idx=None``, their column positions (``None`` when nothing was dropped)."""
    if values.shape[1] <= m:
        return values, idx
    part = np.argpartition(values, m - 1, axis=1)[:, :m]  # (b, m)
    kept = np.take_along_axis(values, part, axis=1)
    return kept, (part if idx is None else np.take_along_axis(idx, part, axis=1))


@register_detector("knn")
class KNN(Detector):
    """Negative distance to the k-th nearest train feature, on the unit sphere.

    ``score(z) = -|| z/||z|| - z_k/||z_k|| ||`` where ``z_k`` is the train feature whose
    normalised vector is the k-th nearest to ``z/||z||``.

    Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors",
    ICML 2022 (arXiv 2204.06507). Default ``k = 50``: the paper's choice for CIFAR-10 with
    the full train set, and OpenOOD v1.5's config (its sweep: 50, 100, 200, 500, 1000).

    The search is exact and works in bounded memory (see the module docstring): train
    features are stored normalised, as residuals about their class's mean unit vector
    (``n_train * D`` values of ``index_dtype``; the paper's faiss ``IndexFlatL2`` holds a
    float32 matrix of the same size), products are taken block by block, and the
    shortlisted neighbours' distances are recomputed in float64. With
    ``index_dtype="float64"`` scores equal a float64 brute force to rounding; with
    ``"float32"`` (default, half the memory) to about ``1e-7`` of the residual norms
    (the within-class spread when labels are given) -- in both cases also for features
    with a large common offset, where the plain ``2 - 2 cos`` in float32 collapses
    every score to the same value.

    Args:
        k: which neighbour, ``1 <= k <= n_train``.
        index_dtype: ``"float32"`` or ``"float64"``, storage of the train residuals.
        backend: shortlist search: ``"numpy"`` (blocked matrix products), ``"faiss"``
            (``faiss.knn``; needs the optional ``faiss-cpu`` and a float32 index), or
            ``"auto"`` (faiss when installed, the index is float32 and there is one
            anchor, i.e. no labels; one faiss call per class is slower than the grouped
            products). The scores are the same either way (re-ranked in float64).

    Fitted attributes:
        anchors_: ``(A, D)`` float64 anchors (class mean unit vectors, or one centre).
        train_: ``(n_train, D)`` residuals ``u_i - a``, grouped by anchor (storage order).
        anchor_starts_: ``(A + 1,)`` row offsets of each anchor's group in ``train_``.
        anchor_ids_: ``(n_train,)`` anchor of each stored row.
        train_sq_: ``(n_train,)`` squared residual norms (in the index dtype).
        n_anchors_: ``A``. backend_: the shortlist backend used, ``"numpy"`` or ``"faiss"``.
    """

    needs_train_features = True
    grid: ClassVar[dict[str, list]] = {"k": [50, 100, 200, 500, 1000]}

    def __init__(self, *, k: int = 50, index_dtype: str = "float32", backend: str = "auto") -> None:
        self.k = check_number(k, "k", "KNN", kind=numbers.Integral, low=1)
        if index_dtype not in INDEX_DTYPES:
            raise ConfigError(
                f"The 'index_dtype' parameter of KNN must be one of {sorted(INDEX_DTYPES)}. "
                f"Got {index_dtype!r} instead."
            )
        if backend not in BACKENDS:
            raise ConfigError(
                f"The 'backend' parameter of KNN must be one of {list(BACKENDS)}. "
                f"Got {backend!r} instead."
            )
        if backend == "faiss" and index_dtype != "float32":
            raise ConfigError(
                "KNN backend='faiss' needs index_dtype='float32' (faiss searches float32); "
                f"got index_dtype={index_dtype!r}; use backend='numpy' or 'auto'"
            )
        self.index_dtype = index_dtype
        self.backend = backend

    def _fit(self, features, labels, head, stats) -> None:
        n, d = features.shape
        if self.k > n:
            raise ConfigError(
                f"The 'k' parameter of KNN must be at most the number of train samples: got "
                f"k={self.k} for n_train={n}; choose a smaller k"
            )
        dtype = INDEX_DTYPES[self.index_dtype]
        anchors, anchor_of = self._anchors(features, labels, head)  # (A, D), (n,)
        order = np.argsort(anchor_of, kind="stable")  # storage order: grouped by anchor
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)
        counts = np.bincount(anchor_of, minlength=len(anchors))
        train = np.empty((n, d), dtype=dtype)
        for start, stop in iter_chunks(n, chunk_rows(d)):
            u = _normalise(read_chunk(features, start, stop, "train features"))  # (b, D)
            train[position[start:stop]] = u - anchors[anchor_of[start:stop]]
        sq = np.empty(n, dtype=dtype)
        for start, stop in iter_chunks(n, chunk_rows(d)):
            block = train[start:stop].astype(np.float64)
            sq[start:stop] = np.einsum("ij,ij->i", block, block)
        self.anchors_ = anchors
        self.anchor_starts_ = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.anchor_ids_ = anchor_of[order].astype(np.int32)
        self.train_ = train
        self.train_sq_ = sq
        self.n_anchors_ = int(len(anchors))
        self.backend_ = self._resolve_backend()

    def _anchors(self, features, labels, head) -> tuple[np.ndarray, np.ndarray]:
        """Anchors ``(A, D)`` float64 and each train row's anchor ``(n,)``.

        With labels: the mean unit vector of each class present (tight classes are then
        stored as small residuals, the case of collapsed features). Without: one anchor,
        the mean unit vector of the first ``CENTER_ROWS`` rows.
        """
        n, d = features.shape
        if labels is None:
            first = _normalise(read_chunk(features, 0, min(n, CENTER_ROWS), "train features"))
            return first.mean(axis=0, keepdims=True), np.zeros(n, dtype=np.int64)
        c = head.num_classes if head is not None else None
        y = as_labels(labels, n, num_classes=c)
        c = int(y.max()) + 1 if c is None else c
        sums = np.zeros((c, d), dtype=np.float64)
        for start, stop in iter_chunks(n, chunk_rows(d)):
            u = _normalise(read_chunk(features, start, stop, "train features"))
            onehot = np.zeros((c, stop - start), dtype=np.float64)
            onehot[y[start:stop], np.arange(stop - start)] = 1.0
            sums += onehot @ u
        counts = np.bincount(y, minlength=c)
        present = np.flatnonzero(counts)
        remap = np.full(c, -1, dtype=np.int64)
        remap[present] = np.arange(present.size)
        return sums[present] / counts[present, None], remap[y]

    def _resolve_backend(self) -> str:
        if self.backend == "numpy" or self.index_dtype != "float32":
            return "numpy"
        if self.backend == "auto" and self.n_anchors_ > 1:
            return "numpy"  # one faiss call per anchor is slower than grouped products
        if _faiss() is None:
            if self.backend == "faiss":
                raise ConfigError(
                    "KNN backend='faiss' but faiss is not installed; pip install "
                    "'ncood[faiss]' (faiss-cpu) or use backend='numpy' or 'auto'"
                )
            return "numpy"
        return "faiss"

    def _score_chunk_rows(self, width: int) -> int:
        if getattr(self, "backend_", "numpy") == "faiss":
            # faiss blocks the search itself (bounded memory) and is slow on small batches
            return chunk_rows(width)
        sizes = np.diff(self.anchor_starts_)
        block = min(int(sizes.max()), TRAIN_ROWS)
        return max(1, min(SIM_VALUES // block, chunk_rows(width)))

    def _score(self, z, f):
        return -np.sqrt(self.kth_sq_distance(z))

    def kth_sq_distance(self, z: np.ndarray) -> np.ndarray:
        """Squared distance from each ``z (b, D)`` to its k-th nearest neighbour, ``(b,)``."""
        u = _normalise(z)  # (b, D) float64
        train, anchors = self.train_, self.anchors_
        m = min(train.shape[0], 2 * self.k + SHORTLIST_EXTRA)
        best_i = self._shortlist(u, m)  # (b, m) storage rows
        # exact re-ranking of the shortlist: (u - anchor) - residual, in float64
        out = np.empty(len(u), dtype=np.float64)
        rows = max(1, RERANK_VALUES // (m * u.shape[1]))
        for a, b in iter_chunks(len(u), rows):
            idx = best_i[a:b]
            diff = u[a:b, None, :] - anchors[self.anchor_ids_[idx]]  # (rows, m, D)
            diff -= train[idx]
            d2 = np.einsum("bmd,bmd->bm", diff, diff)  # (rows, m)
            out[a:b] = np.partition(d2, self.k - 1, axis=1)[:, self.k - 1]
        return out

    def _shortlist(self, u: np.ndarray, m: int) -> np.ndarray:
        """Storage rows ``(b, m)`` of the ``m`` nearest train rows to each unit vector.

        Anchor by anchor: ``q = u - anchor`` (float64, then the index dtype) against that
        anchor's residuals, ``||q||^2 + ||r_i||^2 - 2 q . r_i``; these are full squared
        distances, so the candidates of every anchor are merged by value.
        """
        train, sq = self.train_, self.train_sq_
        starts = self.anchor_starts_
        best_v = np.empty((len(u), 0), dtype=train.dtype)
        best_i = np.empty((len(u), 0), dtype=np.int64)

        def merge(v, i):
            nonlocal best_v, best_i
            best_v, best_i = _smallest(
                np.concatenate([best_v, v], axis=1), np.concatenate([best_i, i], axis=1), m
            )

        def query(a):  # q = u - anchor: float64, then the index dtype; ||q||^2
            qa = u - self.anchors_[a]  # (b, D)
            q_sq = np.einsum("bd,bd->b", qa, qa).astype(train.dtype)[:, None]
            return np.ascontiguousarray(qa, dtype=train.dtype), q_sq

        if getattr(self, "backend_", "numpy") == "faiss":  # exact float32, blocked in faiss
            for a in range(len(self.anchors_)):
                lo, hi = int(starts[a]), int(starts[a + 1])
                v, i = _faiss().knn(query(a)[0], train[lo:hi], min(m, hi - lo))
                merge(v, i + lo)
            return best_i
        # NumPy: pieces of at most `block` rows (an anchor's rows, split if larger), grouped
        # so that one (b, <= block) array of distances is partitioned per group
        block = max(1, min(TRAIN_ROWS, SIM_VALUES // max(1, len(u))))
        pieces = [
            (a, int(starts[a]) + lo, int(starts[a]) + hi)
            for a in range(len(self.anchors_))
            for lo, hi in iter_chunks(int(starts[a + 1] - starts[a]), block)
        ]
        current, cached = [], (None, None, None)
        for n_piece, piece in enumerate(pieces):
            current.append(piece)
            rows = sum(hi - lo for _, lo, hi in current)
            last = n_piece == len(pieces) - 1
            if not last and rows + (pieces[n_piece + 1][2] - pieces[n_piece + 1][1]) <= block:
                continue
            approx = np.empty((len(u), rows), dtype=train.dtype)  # (b, rows)
            col = 0
            for a, lo, hi in current:
                if cached[0] != a:
                    cached = (a, *query(a))
                _, q, q_sq = cached
                # ||q - r_i||^2 = ||q||^2 + ||r_i||^2 - 2 q . r_i
                approx[:, col : col + hi - lo] = q_sq + sq[lo:hi] - 2.0 * (q @ train[lo:hi].T)
                col += hi - lo
            where = np.concatenate([np.arange(lo, hi) for _, lo, hi in current])  # (rows,)
            v, i = _smallest(approx, None, m)
            merge(v, where[i] if i is not None else np.broadcast_to(where, v.shape))
            current = []
        return best_i


@register_detector("nnguide")
class NNGuide(Detector):
    """Nearest-neighbour guidance: energy times the similarity to a confidence-scaled bank.

    Bank (fit): ``g_i = u_i * E_i`` for a subset of the train features, ``u_i`` the
    normalised feature and ``E_i = logsumexp(W z_i + b)`` its energy. Score:
    ``logsumexp(f) * mean over the k largest of u . g_i``, ``u = z / ||z||``.

    Park, Jung & Teoh, "Nearest Neighbor Guidance for Out-of-Distribution Detection",
    ICCV 2023 (arXiv 2309.14888). Defaults follow OpenOOD v1.5's config: ``k = 100``,
    bank = 1% of the train set (``bank_fraction = 0.01``). The bank rows are evenly
    spaced over the train set (deterministic; OpenOOD takes the first batches of its
    shuffled loader), and the bank holds at least ``k`` rows.

    Args:
        k: number of bank neighbours averaged, ``1 <= k <= n_train``.
        bank_fraction: fraction of the train set in the bank, in ``(0, 1]``.

    Fitted attributes:
        bank_: ``(n_bank, D)`` float64 guided bank ``u_i * E_i``.
    """

    uses_logits = True
    needs_train_features = True
    grid: ClassVar[dict[str, list]] = {"k": [10, 50, 100], "bank_fraction": [0.01, 0.1, 1.0]}

    def __init__(self, *, k: int = 100, bank_fraction: float = 0.01) -> None:
        self.k = check_number(k, "k", "NNGuide", kind=numbers.Integral, low=1)
        self.bank_fraction = check_number(
            bank_fraction, "bank_fraction", "NNGuide", low=0, high=1, low_open=True
        )

    def _fit(self, features, labels, head, stats) -> None:
        n, d = features.shape
        if self.k > n:
            raise ConfigError(
                f"The 'k' parameter of NNGuide must be at most the number of train samples: "
                f"got k={self.k} for n_train={n}; choose a smaller k"
            )
        n_bank = min(n, max(self.k, math.ceil(self.bank_fraction * n)))
        rows = np.unique(np.linspace(0, n - 1, n_bank).round().astype(np.int64))
        bank = np.empty((rows.size, d), dtype=np.float64)
        # contiguous chunks only (features may be a memmap or a row reader); a chunk is
        # checked for NaN/inf in its own dtype and only its bank rows become float64
        for start, stop in iter_chunks(n, pass_rows(d)):
            lo, hi = np.searchsorted(rows, [start, stop])
            if lo == hi:
                continue
            block = np.asarray(features[start:stop])
            if not np.isfinite(block).all():
                read_chunk(features, start, stop, "train features")  # raises, naming where
            z = block[rows[lo:hi] - start].astype(np.float64)  # (b, D)
            energy = logsumexp_rows(z @ head.weight.T + head.bias)  # (b,)
            bank[lo:hi] = _normalise(z) * energy[:, None]
        self.bank_ = bank
        self.n_bank_ = int(rows.size)

    def _score_chunk_rows(self, width: int) -> int:
        return max(1, min(SIM_VALUES // self.bank_.shape[0], pass_rows(width)))

    def _score(self, z, f):
        sims = _normalise(z) @ self.bank_.T  # (b, n_bank)
        n_bank = sims.shape[1]
        top = np.partition(sims, n_bank - self.k, axis=1)[:, n_bank - self.k :]  # (b, k)
        return logsumexp_rows(f) * top.mean(axis=1)
