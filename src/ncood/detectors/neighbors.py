"""Nearest-neighbour detectors on L2-normalised features: deep KNN and NNGuide.

KNN at scale (exact, bounded memory, accurate for close neighbours):

1. ``fit`` normalises the train features chunk by chunk and stores them *centred*,
   ``r_i = u_i - c`` with ``u_i = z_i / ||z_i||`` and ``c`` the mean unit vector of the
   first ``CENTER_ROWS`` train rows. Centring removes the large component every
   normalised feature shares (post-ReLU features all point into the positive orthant),
   so the stored residuals keep their relative precision even in float32, and nothing
   is computed as ``2 - 2 cos``.
2. ``score`` takes query rows in chunks and train rows in blocks (at most ``SIM_VALUES``
   products held at once) and keeps, per query, the ``L = min(n, 2k + 16)`` nearest
   candidates by the expansion ``||r_i||^2 - 2 r_q . r_i`` (one matrix product per block;
   ``||r_q||^2`` is the same for every candidate of a row). With faiss installed and a
   float32 index, ``faiss.knn`` (exact brute force, blocked, multi-threaded, on the same
   array: no copy) finds the shortlist instead.
3. The shortlisted candidates' distances are recomputed directly in float64 as
   ``||r_q - r_i||`` (no cancellation) and the k-th smallest is taken.

The k-th smallest of a set of numbers moves by at most ``delta`` when every number moves
by at most ``delta``, so the shortlist only has to contain the true k nearest up to the
(tiny, relative) rounding of step 2, and the margin of ``k + 16`` candidates absorbs it.
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import ClassVar

import numpy as np
from scipy.special import logsumexp

from ncood.detectors.base import (
    Detector,
    chunk_rows,
    iter_chunks,
    read_chunk,
    register_detector,
)
from ncood.errors import ConfigError
from ncood.validation import check_number

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
    return z / (np.linalg.norm(z, axis=1, keepdims=True) + NORM_EPS)


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
    features are stored centred and normalised (``n_train * D`` values of
    ``index_dtype``; the paper's faiss ``IndexFlatL2`` holds the same float32 matrix),
    products are taken block by block, and the shortlisted neighbours' distances are
    recomputed in float64 from the centred residuals. With ``index_dtype="float64"``
    scores equal a float64 brute force to rounding; with ``"float32"`` (default, half
    the memory) to about ``1e-7`` of the residual norms -- in both cases also for
    features with a large common offset, where the plain ``2 - 2 cos`` in float32
    collapses every score to the same value.

    Args:
        k: which neighbour, ``1 <= k <= n_train``.
        index_dtype: ``"float32"`` or ``"float64"``, storage of the train residuals.
        backend: shortlist search: ``"numpy"`` (blocked matrix products), ``"faiss"``
            (``faiss.knn``; needs the optional ``faiss-cpu`` and a float32 index), or
            ``"auto"`` (faiss when installed and the index is float32). The scores are
            the same either way (the shortlist is re-ranked in float64).

    Fitted attributes:
        center_: ``(D,)`` float64 centre ``c`` subtracted from the unit vectors.
        train_: ``(n_train, D)`` centred normalised train features ``u_i - c``.
        train_sq_: ``(n_train,)`` their squared norms (in the index dtype).
        backend_: the shortlist backend used, ``"numpy"`` or ``"faiss"``.
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
        # the centre: mean unit vector of the first CENTER_ROWS rows (independent of the
        # chunk size, so the stored residuals are too)
        center = _normalise(read_chunk(features, 0, min(n, CENTER_ROWS), "train features"))
        center = center.mean(axis=0)  # (D,)
        train = np.empty((n, d), dtype=dtype)
        for start, stop in iter_chunks(n, chunk_rows(d)):
            u = _normalise(read_chunk(features, start, stop, "train features"))  # (b, D)
            train[start:stop] = u - center
        self.center_ = center
        self.train_ = train
        sq = np.empty(n, dtype=dtype)
        for start, stop in iter_chunks(n, chunk_rows(d)):
            block = train[start:stop].astype(np.float64)
            sq[start:stop] = np.einsum("ij,ij->i", block, block)
        self.train_sq_ = sq
        self.backend_ = self._resolve_backend()

    def _resolve_backend(self) -> str:
        if self.backend == "numpy" or self.index_dtype != "float32":
            return "numpy"
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
        block = min(self.train_.shape[0], TRAIN_ROWS)
        return max(1, min(SIM_VALUES // block, chunk_rows(width)))

    def _score(self, z, f):
        return -np.sqrt(self.kth_sq_distance(z))

    def kth_sq_distance(self, z: np.ndarray) -> np.ndarray:
        """Squared distance from each ``z (b, D)`` to its k-th nearest neighbour, ``(b,)``."""
        r = _normalise(z) - self.center_  # (b, D) float64
        train = self.train_
        m = min(train.shape[0], 2 * self.k + SHORTLIST_EXTRA)
        if getattr(self, "backend_", "numpy") == "faiss":
            q = np.ascontiguousarray(r, dtype=np.float32)
            _, best_i = _faiss().knn(q, train, m)  # (b, m) exact float32 search
        else:
            best_i = self._shortlist(r, m)
        # exact re-ranking of the shortlist, direct differences in float64
        out = np.empty(len(r), dtype=np.float64)
        rows = max(1, RERANK_VALUES // (m * r.shape[1]))
        for a, b in iter_chunks(len(r), rows):
            cand = train[best_i[a:b]].astype(np.float64)  # (rows, m, D)
            diff = cand - r[a:b, None, :]
            d2 = np.einsum("bmd,bmd->bm", diff, diff)  # (rows, m)
            out[a:b] = np.partition(d2, self.k - 1, axis=1)[:, self.k - 1]
        return out

    def _shortlist(self, r: np.ndarray, m: int) -> np.ndarray:
        """Indices ``(b, m)`` of the ``m`` nearest train rows to each residual in ``r``."""
        train, sq = self.train_, self.train_sq_
        q = r.astype(train.dtype)
        block = max(1, min(TRAIN_ROWS, SIM_VALUES // max(1, len(r))))
        best_v = np.empty((len(r), 0), dtype=train.dtype)
        best_i = np.empty((len(r), 0), dtype=np.int64)
        for start, stop in iter_chunks(train.shape[0], block):
            # ||r_q - r_i||^2 minus the row constant ||r_q||^2; only used to rank
            approx = sq[start:stop] - 2.0 * (q @ train[start:stop].T)  # (b, block)
            v, i = _smallest(approx, None, m)
            i = i + start if i is not None else np.broadcast_to(np.arange(start, stop), v.shape)
            best_v, best_i = _smallest(
                np.concatenate([best_v, v], axis=1), np.concatenate([best_i, i], axis=1), m
            )
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
        # contiguous chunks only (features may be a memmap or a row reader)
        for start, stop in iter_chunks(n, chunk_rows(d)):
            lo, hi = np.searchsorted(rows, [start, stop])
            if lo == hi:
                continue
            z = read_chunk(features, start, stop, "train features")[rows[lo:hi] - start]
            energy = logsumexp(z @ head.weight.T + head.bias, axis=1)  # (b,)
            bank[lo:hi] = _normalise(z) * energy[:, None]
        self.bank_ = bank
        self.n_bank_ = int(rows.size)

    def _score_chunk_rows(self, width: int) -> int:
        return max(1, min(SIM_VALUES // self.bank_.shape[0], chunk_rows(width)))

    def _score(self, z, f):
        sims = _normalise(z) @ self.bank_.T  # (b, n_bank)
        n_bank = sims.shape[1]
        top = np.partition(sims, n_bank - self.k, axis=1)[:, n_bank - self.k :]  # (b, k)
        return logsumexp(f, axis=1) * top.mean(axis=1)
