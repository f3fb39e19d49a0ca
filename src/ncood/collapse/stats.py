"""Streaming, mergeable class statistics in float64 (DESIGN.md section 5).

Every Gaussian/subspace detector (Mahalanobis, ViM, NECO) and every neural-collapse
metric (NC1-NC3, CDNV) is a function of these sums, so a fit never needs all features
in memory, and statistics from several processes combine with one all-reduce.

Accumulation is done about a fixed ``shift`` vector (by default the mean of the first
batch seen). Shifting removes the large common offset of post-ReLU features before the
second moment is formed, so ``sum z z^T - n mu mu^T`` does not cancel catastrophically.
Two statistics with different shifts are re-based exactly when merged.

``second_moment=False`` gives a light variant (counts, class sums and squared norms
only: ``O(C D)`` memory) for wide flattened feature maps, where a ``D x D`` matrix would
not fit; it supports everything except the covariance methods.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ncood.errors import ShapeError
from ncood.validation import as_labels, check_finite

# The one chunking policy of the toolkit (statistics, detectors, collapse metrics): a chunk
# of rows holds about 2^22 float64 values (32 MiB), so a pass over a memory-mapped
# (n, D) array never converts more than that to float64 at a time.
CHUNK_VALUES = 1 << 22


def chunk_rows(dim: int, chunk_size: int | None = None) -> int:
    """Rows per chunk for features of width ``dim``.

    Args:
        dim: feature width D.
        chunk_size: rows asked for by the caller; ``None`` for the default. Either way
            the result is capped at the memory budget (``CHUNK_VALUES // dim`` rows) and
            is at least 1.
    """
    budget = max(1, CHUNK_VALUES // max(1, int(dim)))
    return budget if chunk_size is None else max(1, min(int(chunk_size), budget))


def iter_chunks(n: int, rows: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive row blocks covering ``range(n)``."""
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


# Above this many classes, class sums are one bincount instead of a one-hot product.
BINCOUNT_CLASSES = 128


def class_sums(z: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class sums ``(C, D)`` float64 of the rows of ``z (b, D)``, ``labels (b,)`` in
    ``[0, C)``.

    Up to :data:`BINCOUNT_CLASSES` classes the one-hot product ``(C, b) @ (b, D)`` (2C
    flops per value, in BLAS); above, one ``np.bincount`` over the flat index ``label * D
    + column`` (each value added once, in row order), whose cost does not grow with C:
    they break even near C = 100 (measured at D = 512), bincount is ~6x faster at C =
    1000 and ~5x slower at C = 10. ``np.add.at`` is slower than both.
    """
    b, d = z.shape
    y = np.asarray(labels, dtype=np.int64)
    z = np.asarray(z, dtype=np.float64)
    if num_classes <= BINCOUNT_CLASSES:
        onehot = np.zeros((num_classes, b), dtype=np.float64)
        onehot[y, np.arange(b)] = 1.0
        return onehot @ z
    flat = (y * d)[:, None] + np.arange(d)  # (b, D)
    sums = np.bincount(flat.ravel(), weights=z.ravel(), minlength=num_classes * d)
    return sums.reshape(num_classes, d)


def check_2d(arr, name: str) -> Any:
    """Check that ``arr`` is a non-empty 2-D array-like without copying it (memmap-safe)."""
    if arr is None:
        raise ShapeError(f"{name} is required; pass an array (n_samples, n_columns)")
    if not hasattr(arr, "shape") or not hasattr(arr, "__getitem__"):
        arr = np.asarray(arr)
    if len(arr.shape) != 2:
        raise ShapeError(
            f"{name} must be a 2-D array (n_samples, n_columns); got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ShapeError(f"{name} is empty (0 samples); pass at least one sample")
    return arr


def read_chunk(arr, start: int, stop: int, name: str) -> np.ndarray:
    """Rows ``start:stop`` of ``arr`` as finite float64; NaN/inf name the global index.

    Finiteness is checked on the rows in their own dtype, before the conversion (for
    float32 features half the memory traffic of checking the float64 copy).
    """
    block = np.asarray(arr[start:stop])
    if block.dtype.kind not in "fiu":  # e.g. object or complex: convert as before
        block = np.asarray(block, dtype=np.float64)
    if not np.isfinite(block).all():
        bad = np.argwhere(~np.isfinite(block))
        raise ShapeError(
            f"{name} contains {len(bad)} NaN/inf value(s) in rows {start}..{stop - 1} (first "
            f"at index {[int(bad[0][0]) + start, *map(int, bad[0][1:])]}); check the model "
            "output or drop those samples"
        )
    return block.astype(np.float64, copy=False)


class ClassStats:
    """Sufficient statistics of labelled features ``z`` (rows) with labels ``y``.

    Attributes (all about ``shift``, float64):
        counts: ``(C,)`` samples per class.
        sums: ``(C, D)`` per-class ``sum (z - shift)``.
        sq_norms: ``(C,)`` per-class ``sum ||z - shift||^2``.
        second: ``(D, D)`` ``sum (z - shift)(z - shift)^T`` over all samples, or ``None``
            when built with ``second_moment=False``.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        shift: np.ndarray | None = None,
        *,
        second_moment: bool = True,
    ) -> None:
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.shift = None if shift is None else np.asarray(shift, dtype=np.float64).copy()
        self.counts = np.zeros(self.num_classes, dtype=np.int64)
        self.sums = np.zeros((self.num_classes, self.dim), dtype=np.float64)
        self.sq_norms = np.zeros(self.num_classes, dtype=np.float64)
        self.second = np.zeros((self.dim, self.dim), dtype=np.float64) if second_moment else None

    @property
    def has_second_moment(self) -> bool:
        """Whether the ``(D, D)`` second moment is accumulated (covariances available)."""
        return self.second is not None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_features(
        cls,
        features,
        labels,
        num_classes: int | None = None,
        *,
        chunk_size: int | None = None,
        second_moment: bool = True,
        name: str = "features",
    ) -> ClassStats:
        """Accumulate statistics over ``features (n, D)`` / ``labels (n,)`` in chunks.

        The one builder of class statistics from an array: detectors, collapse metrics,
        the pipeline and the distributed helpers all call it. ``features`` may be a
        memory-mapped array (or any object with ``.shape`` and row slicing); only one
        chunk (:func:`chunk_rows`) is held in float64 at a time.

        Args:
            features: ``(n, D)`` array-like.
            labels: ``(n,)`` ints in ``[0, num_classes)``.
            num_classes: C; default ``max(labels) + 1``.
            chunk_size: rows per chunk (default: the :func:`chunk_rows` budget).
            second_moment: accumulate the ``(D, D)`` matrix (``False``: ``O(C D)`` memory).
            name: what to call the features in error messages.

        Raises:
            ShapeError: not a non-empty 2-D array, labels of another length or out of
                range, NaN/inf (naming the first bad index).
        """
        feats = check_2d(features, name)
        n, d = feats.shape
        y = as_labels(labels, n, num_classes=num_classes)
        c = int(y.max()) + 1 if num_classes is None else int(num_classes)
        stats = cls(c, d, second_moment=second_moment)
        for start, stop in iter_chunks(n, chunk_rows(d, chunk_size)):
            # read_chunk checked finiteness and as_labels the labels: no second check; a
            # converted (fresh) chunk is shifted in place, one that views the input is not
            block = read_chunk(feats, start, stop, name)
            fresh = isinstance(feats, np.ndarray) and not np.may_share_memory(block, feats)
            stats._accumulate(block, y[start:stop], in_place=fresh)
        return stats

    @classmethod
    def from_batches(
        cls,
        batches: Iterable[tuple[np.ndarray, np.ndarray]],
        num_classes: int,
        dim: int,
        *,
        second_moment: bool = True,
    ) -> ClassStats:
        """Accumulate from an iterable of ``(features, labels)`` batches.

        For data that arrive as a stream (a DataLoader, shards read one by one) rather
        than as one array; arrays go through :meth:`from_features`.
        """
        stats = cls(num_classes, dim, second_moment=second_moment)
        for feats, labels in batches:
            stats.update(feats, labels)
        return stats

    def update(self, features, labels) -> ClassStats:
        """Add one batch ``features (b, D)``, ``labels (b,)``; returns ``self``."""
        z = np.asarray(features, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ShapeError(
                f"batch has shape {z.shape}, but these statistics expect (n, {self.dim})"
            )
        if z.shape[0] == 0:
            return self
        check_finite(z, "features")
        y = as_labels(labels, z.shape[0], num_classes=self.num_classes)
        return self._accumulate(z, y)

    def _accumulate(self, z: np.ndarray, y: np.ndarray, *, in_place: bool = False) -> ClassStats:
        """Add a checked batch: finite float64 ``z (b, D)``, labels ``y (b,)`` in range.

        ``in_place``: ``z`` is a scratch copy that may be overwritten (shifted in place).
        """
        if self.shift is None:
            self.shift = z.mean(axis=0)
        if in_place:
            z -= self.shift
        else:
            z = z - self.shift
        self.counts += np.bincount(y, minlength=self.num_classes)
        np.add.at(self.sums, y, z) if z.shape[0] < 64 else self._add_sums(z, y)
        self.sq_norms += np.bincount(
            y, weights=np.einsum("ij,ij->i", z, z), minlength=self.num_classes
        )
        if self.second is not None:
            self.second += z.T @ z
        return self

    def _add_sums(self, z: np.ndarray, y: np.ndarray) -> None:
        # class_sums (a one-hot product or a bincount) is much faster than np.add.at here
        self.sums += class_sums(z, y, self.num_classes)

    # ------------------------------------------------------------------ merging
    def rebased(self, shift: np.ndarray) -> ClassStats:
        """The same statistics expressed about another ``shift`` (exact)."""
        shift = np.array(shift, dtype=np.float64)  # a float64 copy
        out = self.copy()
        out.shift = shift
        if self.shift is None:  # no sample yet: all sums are zero about any shift
            return out
        a = self.shift - shift  # z - new = (z - old) + a
        total = self.sums.sum(axis=0)
        n = float(self.counts.sum())
        out.sums = self.sums + self.counts[:, None] * a
        out.sq_norms = self.sq_norms + 2.0 * (self.sums @ a) + self.counts * (a @ a)
        if self.second is not None:
            out.second = self.second + np.outer(total, a) + np.outer(a, total) + n * np.outer(a, a)
        return out

    def merge(self, other: ClassStats) -> ClassStats:
        """Return the statistics of the union of both samples."""
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ShapeError(
                f"cannot merge statistics of shape (C={other.num_classes}, D={other.dim}) "
                f"into (C={self.num_classes}, D={self.dim})"
            )
        if self.has_second_moment != other.has_second_moment:
            raise ShapeError(
                "cannot merge statistics with and without the second moment; build both "
                "with the same second_moment= setting"
            )
        if self.shift is None:  # self saw no sample yet
            return other.copy()
        b = other.rebased(self.shift)  # exact; a no-op copy when other saw no sample
        out = self.copy()
        out.counts += b.counts
        out.sums += b.sums
        out.sq_norms += b.sq_norms
        if out.second is not None:
            out.second += b.second
        return out

    __add__ = merge

    def copy(self) -> ClassStats:
        """An independent copy (arrays included)."""
        return copy.deepcopy(self)

    def to_vector(self) -> np.ndarray:
        """Flatten the additive parts (for an all-reduce sum; the shift must be shared)."""
        parts = [self.counts.astype(np.float64), self.sums.ravel(), self.sq_norms]
        if self.second is not None:
            parts.append(self.second.ravel())
        return np.concatenate(parts)

    def load_vector(self, vec: np.ndarray) -> ClassStats:
        """Inverse of :meth:`to_vector` (in place); returns ``self``."""
        c, d = self.num_classes, self.dim
        vec = np.asarray(vec, dtype=np.float64)
        size = c + c * d + c + (d * d if self.second is not None else 0)
        if vec.shape != (size,):
            raise ShapeError(f"statistics vector has shape {vec.shape}; expected C={c}, D={d}")
        i = 0
        self.counts = np.rint(vec[i : i + c]).astype(np.int64)
        i += c
        self.sums = vec[i : i + c * d].reshape(c, d).copy()
        i += c * d
        self.sq_norms = vec[i : i + c].copy()
        i += c
        if self.second is not None:
            self.second = vec[i:].reshape(d, d).copy()
        return self

    # ------------------------------------------------------------------ derived
    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def _shift(self) -> np.ndarray:
        return np.zeros(self.dim) if self.shift is None else self.shift

    def require_classes(self, min_count: int = 1) -> None:
        """Raise if some class has fewer than ``min_count`` samples."""
        low = np.flatnonzero(self.counts < min_count)
        if low.size:
            raise ShapeError(
                f"class(es) {low.tolist()[:10]} have fewer than {min_count} training "
                f"sample(s) (counts {self.counts[low].tolist()[:10]}); every class 0.."
                f"{self.num_classes - 1} needs samples: check the labels or num_classes"
            )

    @property
    def means(self) -> np.ndarray:
        """Class means ``(C, D)`` (absolute)."""
        self.require_classes(1)
        return self.sums / self.counts[:, None] + self._shift()

    @property
    def mean(self) -> np.ndarray:
        """Sample mean of all features ``(D,)``."""
        return self.sums.sum(axis=0) / self.n + self._shift()

    @property
    def global_mean(self) -> np.ndarray:
        """``mu_G``: the mean of the class means ``(D,)`` (unweighted)."""
        return self.means.mean(axis=0)

    def require_second_moment(self, what: str) -> None:
        """Raise if the ``(D, D)`` second moment was not accumulated."""
        if self.second is None:
            raise ShapeError(
                f"{what} needs the (D, D) second moment, but these statistics were built "
                f"with second_moment=False (D={self.dim}); rebuild them with "
                "second_moment=True or use only the inversion-free metrics"
            )

    def centred_means(self) -> np.ndarray:
        """``M``: class means minus ``mu_G`` ``(C, D)``, formed without the shift offset."""
        self.require_classes(1)
        m = self.sums / self.counts[:, None]  # shifted class means: the offset cancels in M
        return m - m.mean(axis=0)

    def within_trace(self) -> float:
        """``Tr(S_W)``: mean squared distance of a sample to its class mean (no ``D x D``)."""
        return float(self.class_variances() @ self.counts / self.n)

    def within_scatter(self) -> np.ndarray:
        """Pooled within-class scatter ``sum_i (z_i - mu_{y_i})(z_i - mu_{y_i})^T`` ``(D, D)``."""
        self.require_second_moment("within_scatter")
        self.require_classes(1)
        m = self.sums / self.counts[:, None]  # shifted class means
        s = self.second - (m * self.counts[:, None]).T @ m
        return (s + s.T) / 2.0

    def within_cov(self) -> np.ndarray:
        """``S_W``: pooled within-class covariance, divided by N ``(D, D)``."""
        return self.within_scatter() / self.n

    def class_variances(self) -> np.ndarray:
        """Per-class ``mean ||z - mu_c||^2`` (trace of the class covariance) ``(C,)``."""
        self.require_classes(1)
        m = self.sums / self.counts[:, None]
        ss = self.sq_norms - self.counts * np.einsum("ij,ij->i", m, m)
        return np.maximum(ss, 0.0) / self.counts

    def scatter_about(self, center: np.ndarray) -> np.ndarray:
        """``sum_i (z_i - u)(z_i - u)^T`` about any ``center`` u ``(D,)``."""
        self.require_second_moment("scatter_about")
        a = self._shift() - np.asarray(center, dtype=np.float64)
        total = self.sums.sum(axis=0)
        s = self.second + np.outer(total, a) + np.outer(a, total) + self.n * np.outer(a, a)
        return (s + s.T) / 2.0

    def total_cov(self) -> np.ndarray:
        """Covariance of all features about their sample mean, divided by N ``(D, D)``."""
        return self.scatter_about(self.mean) / self.n

    def constant_features(self) -> np.ndarray:
        """``(D,)`` bool: features whose variance is zero to working precision.

        scikit-learn's ``StandardScaler`` rule: a variance within the rounding error of its
        own computation, ``var <= n eps var + (n eps mean)^2``, counts as zero (e.g. a ReLU
        unit dead on every train sample).
        """
        self.require_second_moment("constant_features")
        eps = np.finfo(np.float64).eps
        n = self.n
        var = np.diag(self.total_cov())
        return var <= n * eps * var + (n * eps * self.mean) ** 2
