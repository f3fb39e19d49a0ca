"""The :class:`Detector` contract and the detector registry.

Contract (DESIGN.md section 3), scikit-learn style:

- The constructor takes keyword-only hyperparameters, validates them, and only stores
  them (``get_params()`` returns them; ``create_detector(name, **det.get_params())``
  rebuilds the same detector).
- ``fit(features, labels, head, *, stats=None) -> self`` learns everything into
  attributes ending in ``_``. Detectors built on class statistics (``uses_stats``) accept
  a precomputed :class:`~ncood.collapse.ClassStats` (e.g. all-reduced over processes);
  with ``stats`` given they read the train features only if they need an extra pass
  (``needs_train_features``; ViM's alpha, KNN's index).
- ``score(features, logits) -> (n,)`` float64, **higher = more in-distribution**.
  ``score`` before ``fit`` raises :class:`~ncood.errors.NotFittedError` (except for
  detectors with ``needs_fit = False``); a width mismatch names both widths; NaN/inf
  raise :class:`~ncood.errors.ShapeError`.

Features may be large memory-mapped float32 arrays: every pass reads a chunk of rows at
a time (only ``.shape`` and row slicing are used), converts that chunk to float64, and
never holds more. The chunking policy (:func:`chunk_rows`, the memory bound) and the
class-statistics builder are the ones of :mod:`ncood.collapse.stats` (re-exported here
for the detector modules); the detectors' own passes use :func:`pass_rows`, the same
policy capped to cache-sized chunks.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np

from ncood.collapse.stats import (
    ClassStats,
    check_2d,
    chunk_rows,
    class_sums,
    iter_chunks,
    read_chunk,
)
from ncood.errors import ConfigError, NotFittedError, ShapeError
from ncood.registry import Registry, closest
from ncood.types import LinearHead
from ncood.validation import check_width

__all__ = [
    "DETECTORS",
    "SCORE_CHUNK_VALUES",
    "Detector",
    "check_2d",
    "chunk_rows",
    "class_sums",
    "eigen_cutoff",
    "create_detector",
    "detector_class",
    "iter_chunks",
    "list_detectors",
    "logsumexp_rows",
    "max_softmax",
    "pass_rows",
    "read_chunk",
    "register_detector",
    "row_norms",
]

DETECTORS: Registry[type[Detector]] = Registry("detector")

# Values per chunk of the detectors' own passes, scoring and fitting (2^18 float64 = 2 MiB,
# 512 rows of 512 features): a chunk and its temporaries stay in cache and below glibc's
# mmap threshold. Chunks of the full budget (32 MiB) were mapped and page-faulted afresh
# at every allocation: 20-30% of scoring and of the fit passes at CIFAR-100 scale
# (benchmarks/detectors.py).
SCORE_CHUNK_VALUES = 1 << 18
# Fewest rows of a cache-sized chunk (see pass_rows); the memory budget still caps it.
PASS_MIN_ROWS = 64


def pass_rows(width: int) -> int:
    """Rows per chunk of a detector's pass over ``(n, width)`` rows: the toolkit's budget
    (:func:`chunk_rows`, so a patched policy applies), capped at
    ``SCORE_CHUNK_VALUES // width`` but not below 64 rows (for wide features, where a
    cache-sized chunk would be a few rows and the per-chunk overhead would dominate)."""
    cached = max(PASS_MIN_ROWS, SCORE_CHUNK_VALUES // max(1, int(width)))
    return min(chunk_rows(width), cached)


def register_detector(name: str):
    """Class decorator: register a :class:`Detector` subclass as ``name``.

    Sets the class attribute ``name``; a duplicate name raises ConfigError.
    """

    def decorator(cls: type[Detector]) -> type[Detector]:
        cls.name = name
        return DETECTORS.register(name)(cls)

    return decorator


def list_detectors() -> list[str]:
    """Names of every registered detector, sorted."""
    return DETECTORS.names()


def detector_class(name: str) -> type[Detector]:
    """The class registered as ``name`` (unknown names list the valid ones)."""
    return DETECTORS.get(name)


def create_detector(name: str, /, **params: Any) -> Detector:
    """Build the detector registered as ``name`` with keyword hyperparameters.

    Raises:
        ConfigError: unknown name (with the closest match), unknown hyperparameter
            (with the valid ones), or an invalid value.
    """
    cls = DETECTORS.get(name)
    valid = cls.param_names()
    for key in params:
        if key not in valid:
            raise ConfigError(
                f"detector {name!r} has no parameter {key!r}{closest(key, valid)}; "
                f"valid parameters: {', '.join(valid) if valid else '(none)'}"
            )
    return cls(**params)


def eigen_cutoff(max_eigenvalue: float, dim: int) -> float:
    """Eigenvalues of a ``(dim, dim)`` float64 covariance at or below this are zero.

    ``dim * eps * max_eigenvalue``: the default cut-off of ``scipy.linalg.pinvh`` and
    ``numpy.linalg.matrix_rank``, the size of the rounding error of forming and
    decomposing the matrix. Used for the pseudo-inverse of Mahalanobis and for the
    numerical rank that bounds ViM's ``dim``.
    """
    return dim * np.finfo(np.float64).eps * max(float(max_eigenvalue), 0.0)


def logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """``logsumexp`` over the rows of finite ``a (b, C)`` -> ``(b,)`` float64.

    Computed as ``scipy.special.logsumexp`` does (the max entry taken out of the sum,
    ``max + log1p(sum of the others' exp(a - max))``, so a confident row keeps its
    relative precision), without scipy's handling of infinities, weights and complex
    input: about 3x faster on ``(b, 100)`` logits. Input is finite (``read_chunk``).
    """
    a_max, rest = _max_and_log1p_rest(a)
    return a_max + rest


def _max_and_log1p_rest(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``a (b, C)``: the max and ``log1p`` of the sum of ``exp(a_j - max)`` over
    every entry but (one) max, so that ``logsumexp = max + rest``, both ``(b,)``."""
    rows = np.arange(a.shape[0])
    top = a.argmax(axis=1)  # (b,)
    a_max = a[rows, top]
    e = np.exp(a - a_max[:, None])  # (b, C), 1 at the max
    e[rows, top] = 0.0
    return a_max, np.log1p(e.sum(axis=1))


def max_softmax(a: np.ndarray) -> np.ndarray:
    """``max_i softmax(a)_i`` per row of finite ``a (b, C)``: ``exp(-log1p(r))``, ``r`` the
    sum of the other entries' ``exp(a_j - max)`` (no ``max - logsumexp`` cancellation)."""
    return np.exp(-_max_and_log1p_rest(a)[1])


def row_norms(a: np.ndarray) -> np.ndarray:
    """Euclidean norms of the rows of ``a (b, D)`` -> ``(b,)``: ``sqrt`` of a row-wise dot
    product (no ``(b, D)`` temporary of squares, as ``np.linalg.norm(axis=1)`` makes)."""
    return np.sqrt(np.einsum("ij,ij->i", a, a))


# --------------------------------------------------------------------------- base class
class Detector:
    """Base class of every OOD detector. Subclasses implement ``_fit`` and ``_score``.

    Class attributes describing a detector:
        name: registry name (set by :func:`register_detector`).
        needs_fit: ``False`` for detectors that score logits as they are.
        uses_stats: fitted from :class:`ClassStats` (Mahalanobis, ViM, NECO).
        needs_train_features: ``fit`` reads the train features even when ``stats`` is given.
        uses_features / uses_logits: which inputs ``score`` reads.

    Fitted attributes (set by :meth:`fit`): ``n_features_in_`` (D) and ``n_classes_`` (C),
    plus the detector's own, all ending in ``_``.
    """

    name: ClassVar[str] = "detector"
    needs_fit: ClassVar[bool] = True
    uses_stats: ClassVar[bool] = False
    needs_train_features: ClassVar[bool] = False
    uses_features: ClassVar[bool] = True
    uses_logits: ClassVar[bool] = False

    # ------------------------------------------------------------------ parameters
    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the keyword-only hyperparameters of the constructor."""
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as passed (or defaulted) to the constructor."""
        return {k: getattr(self, k) for k in self.param_names()}

    @classmethod
    def params_for_width(cls, params: dict[str, Any], width: int) -> dict[str, Any]:
        """Hyperparameters for features of width ``width`` (e.g. an earlier layer's).

        ``params`` were chosen for the penultimate features; a detector whose
        hyperparameters are bounded by the width (a subspace dimension) overrides this to
        bring them into range. Default: unchanged.
        """
        return dict(params)

    def fitted_info(self) -> dict[str, Any]:
        """Scalar fitted attributes (e.g. ``dim_``, ``alpha_``) as plain Python values."""
        out = {}
        for key, value in vars(self).items():
            if key.endswith("_") and not key.startswith("_"):
                if isinstance(value, (bool, int, float, np.integer, np.floating)):
                    out[key] = value.item() if isinstance(value, np.generic) else value
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ fit
    def fit(self, features, labels, head: LinearHead | None, *, stats: ClassStats | None = None):
        """Fit on the ID train set; returns ``self``.

        Args:
            features: train features ``(n_train, D)`` (array or memmap; read in chunks).
                May be ``None`` when ``stats`` is given and the detector has no
                ``needs_train_features``.
            labels: train labels ``(n_train,)`` in ``[0, C)``; may be ``None`` when
                ``stats`` is given or the detector does not use them.
            head: the classifier's :class:`LinearHead` (``W (C, D)``, ``b (C,)``). May be
                ``None`` only for detectors with ``needs_fit = False``.
            stats: optional precomputed :class:`ClassStats` of the same train set (for
                ``uses_stats`` detectors; e.g. all-reduced over processes). When given,
                the class statistics are not recomputed from ``features``.
        """
        if head is None:
            if self.needs_fit:
                raise ShapeError(
                    f"{self.name} needs the classifier head to fit; pass "
                    "head=LinearHead(weight (C, D), bias (C,))"
                )
        elif not isinstance(head, LinearHead):
            raise ShapeError(
                f"head must be a LinearHead(weight (C, D), bias (C,)); got {type(head).__name__}"
            )
        if features is not None:
            features = check_2d(features, "features")
            if head is not None:
                check_width(features.shape[1], head.dim, "features", f"the head of {self.name}")
        if stats is not None:
            if not isinstance(stats, ClassStats):
                raise ShapeError(f"stats must be a ClassStats; got {type(stats).__name__}")
            if head is not None and (stats.dim, stats.num_classes) != (head.dim, head.num_classes):
                raise ShapeError(
                    f"stats describe D={stats.dim}, C={stats.num_classes}, but the head has "
                    f"D={head.dim}, C={head.num_classes}; compute the statistics of the same "
                    "features and classes"
                )
        if self.uses_stats and stats is None:
            if features is None or labels is None:
                raise ShapeError(
                    f"{self.name} needs the train features and labels (or precomputed "
                    "stats=ClassStats) to fit"
                )
            stats = ClassStats.from_features(
                features, labels, head.num_classes, name="train features"
            )
        if self.needs_train_features and features is None:
            raise ShapeError(
                f"{self.name} needs the train features to fit (one chunked pass over them), "
                "even when stats are given; pass features"
            )
        self._fit(features, labels, head, stats)
        if head is not None:
            self.n_features_in_ = head.dim
            self.n_classes_ = head.num_classes
        return self

    def _fit(self, features, labels, head: LinearHead | None, stats: ClassStats | None) -> None:
        """Learn the fitted state; ``features``/``labels`` may be None (see ``fit``)."""

    # ------------------------------------------------------------------ score
    def is_fitted(self) -> bool:
        return hasattr(self, "n_features_in_")

    def score(self, features, logits) -> np.ndarray:
        """Score samples: ``(n,)`` float64, higher = more in-distribution.

        Args:
            features: ``(n, D)`` penultimate features (may be ``None`` if the detector
                does not read them, i.e. ``uses_features`` is False).
            logits: ``(n, C)`` logits (may be ``None`` if ``uses_logits`` is False).

        Raises:
            NotFittedError: ``score`` before ``fit`` (for ``needs_fit`` detectors).
            ShapeError: a width mismatch, inconsistent row counts, NaN/inf.
        """
        fitted = self.is_fitted()
        if self.needs_fit and not fitted:
            raise NotFittedError(
                f"This {type(self).__name__} ({self.name!r}) instance is not fitted yet; call "
                "fit(features, labels, head) before score"
            )
        n = None
        if self.uses_features:
            features = check_2d(features, "features")
            if fitted:
                check_width(features.shape[1], self.n_features_in_, "features", self.name)
            n = features.shape[0]
        if self.uses_logits:
            logits = check_2d(logits, "logits")
            if fitted and logits.shape[1] != self.n_classes_:
                raise ShapeError(
                    f"logits have {logits.shape[1]} columns, but {self.name} was fitted with "
                    f"a head of {self.n_classes_} classes; use logits of the same model"
                )
            if n is not None and logits.shape[0] != n:
                raise ShapeError(
                    f"features have {n} rows but logits have {logits.shape[0]}; pass the "
                    "features and logits of the same samples"
                )
            n = logits.shape[0]
        width = max(
            features.shape[1] if self.uses_features else 1,
            logits.shape[1] if self.uses_logits else 1,
        )
        out = np.empty(n, dtype=np.float64)
        for start, stop in iter_chunks(n, self._score_chunk_rows(width)):
            z = read_chunk(features, start, stop, "features") if self.uses_features else None
            f = read_chunk(logits, start, stop, "logits") if self.uses_logits else None
            out[start:stop] = self._score(z, f)
        return out

    def _score_chunk_rows(self, width: int) -> int:
        return pass_rows(width)

    def _score(self, z: np.ndarray | None, f: np.ndarray | None) -> np.ndarray:
        """Score one float64 chunk: ``z (b, D)``, ``f (b, C)`` -> ``(b,)``."""
        raise NotImplementedError
