"""Subspace detectors: ViM (residual of the principal subspace) and NECO (PCA ratio)."""

from __future__ import annotations

import logging
import numbers

import numpy as np
from scipy.linalg import eigh

from ncood.detectors.base import (
    Detector,
    eigen_cutoff,
    iter_chunks,
    logsumexp_rows,
    pass_rows,
    read_chunk,
    register_detector,
    row_norms,
)
from ncood.errors import ConfigError
from ncood.validation import check_number

log = logging.getLogger(__name__)


def vim_default_dim(d: int) -> int:
    """ViM's principal dimension for width ``d``: 1000 if d >= 2048, 512 if d >= 768, else d // 2.

    Wang et al. (2022) use 1000 for 2048-d and 512 for 768-d features; DESIGN.md fixes
    ``d // 2`` below that.
    """
    if d >= 2048:
        return 1000
    if d >= 768:
        return 512
    return d // 2


def _halve_dim(params, width: int) -> dict:
    """``params`` with a ``dim`` of at least ``width`` replaced by ``max(1, width // 2)``."""
    out = dict(params)
    if out.get("dim") is not None and out["dim"] >= width:
        out["dim"] = max(1, width // 2)
    return out


@register_detector("vim")
class ViM(Detector):
    """Virtual-logit matching.

    ``u = -pinv(W) b``; eigendecompose ``(Z - u)^T (Z - u) / N``; the residual basis ``R``
    holds the eigenvectors after the top ``dim``; ``alpha = mean(max train logit) /
    mean(train residual norm)``; ``score = logsumexp(f) - alpha * ||R^T (z - u)||``.

    Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching",
    CVPR 2022 (arXiv 2203.10807).

    The covariance comes from streaming class statistics; alpha needs one more chunked
    pass over the train features (so ``fit`` reads ``features`` even with ``stats``).

    Numerical rank. The residual must hold real variation: beyond the numerical rank of
    ``(Z - u)^T (Z - u) / N`` -- the number of its eigenvalues above ``D * eps *
    max eigenvalue`` (:func:`~ncood.detectors.base.eigen_cutoff`, ``pinvh``'s cut-off) --
    the train residual norms are rounding noise (~1e-7) and alpha explodes (~1e15). This
    happens when many ReLU units are dead, e.g. with the default ``dim = D // 2``. So
    ``dim`` must be below that rank: an explicit ``dim`` at or above it raises
    :class:`~ncood.errors.ConfigError` (naming ``dim``, the rank and the largest valid
    ``dim``); the default ``dim`` (``dim=None``) is capped to ``rank - 1`` with a logged
    warning. A rank below 2 leaves no valid ``dim`` and raises.

    Args:
        dim: dimension of the principal subspace, ``1 <= dim < rank <= D``; ``None``
            picks :func:`vim_default_dim` (1000 if D >= 2048, 512 if D >= 768, else
            D // 2), capped to ``rank - 1``.

    Fitted attributes:
        rank_: numerical rank of ``(Z - u)^T (Z - u) / N``.
        dim_: the principal dimension used.
        origin_: ``u (D,)``.
        residual_: ``R (D, D - dim_)``, eigenvectors of the ``D - dim_`` smallest eigenvalues.
        alpha_: the virtual-logit scale.
    """

    uses_stats = True
    needs_train_features = True
    uses_logits = True

    def __init__(self, *, dim: int | None = None) -> None:
        if dim is not None:
            check_number(dim, "dim", "ViM", kind=numbers.Integral, low=1)
        self.dim = dim

    @classmethod
    def params_for_width(cls, params, width):
        """A ``dim`` of at least ``width`` becomes ``max(1, width // 2)`` (needs dim < D)."""
        return _halve_dim(params, width)

    def _fit(self, features, labels, head, stats) -> None:
        d = head.dim
        dim = vim_default_dim(d) if self.dim is None else int(self.dim)
        if not 1 <= dim < d:
            raise ConfigError(
                f"The 'dim' parameter of ViM must be smaller than the feature width: got "
                f"dim={dim} for D={d} features; choose 1 <= dim < {d} (or dim=None for the "
                "default)"
            )
        self.origin_ = -np.linalg.pinv(head.weight) @ head.bias  # (D,)
        cov = stats.scatter_about(self.origin_) / stats.n  # (D, D)
        evals, evecs = eigh(cov)  # eigenvalues ascending: the top `dim` are the LAST columns
        rank = int(np.count_nonzero(evals > eigen_cutoff(evals[-1], d)))
        self.rank_ = rank
        if dim >= rank:
            if rank < 2:
                raise ConfigError(
                    f"ViM needs train features that vary in at least 2 directions about the "
                    f"origin u; these span {rank} (numerical rank of (Z - u)^T (Z - u) / N, "
                    f"D={d}), so no 'dim' leaves a residual; check the features"
                )
            if self.dim is not None:
                raise ConfigError(
                    f"The 'dim' parameter of ViM must be below the numerical rank of the "
                    f"train features about the origin u: got dim={dim}, but they span only "
                    f"{rank} of D={d} directions (eigenvalues above D * eps * max), so the "
                    f"residual would be rounding noise; choose dim <= {rank - 1}, or dim=None "
                    "to cap the default automatically"
                )
            log.warning(
                "vim: the default dim=%d (D=%d) is at or above the numerical rank %d of the "
                "train features about the origin u (e.g. dead ReLU units); using dim=%d so "
                "that the residual holds real variation",
                dim,
                d,
                rank,
                rank - 1,
            )
            dim = rank - 1
        self.dim_ = dim
        self.residual_ = np.ascontiguousarray(evecs[:, : d - dim])  # (D, D - dim)
        # alpha: one chunked pass over the train features
        max_logit_sum = 0.0
        residual_sum = 0.0
        n = features.shape[0]
        for start, stop in iter_chunks(n, pass_rows(d)):
            z = read_chunk(features, start, stop, "train features")  # (b, D)
            max_logit_sum += float((z @ head.weight.T + head.bias).max(axis=1).sum())
            residual_sum += float(row_norms((z - self.origin_) @ self.residual_).sum())
        # residual_sum > 0: dim < rank, so the residual holds at least one direction with
        # an eigenvalue above the cut-off
        self.alpha_ = max_logit_sum / residual_sum  # ratio of means (the counts cancel)

    def _score(self, z, f):
        residual = row_norms((z - self.origin_) @ self.residual_)  # (b,)
        return logsumexp_rows(f) - self.alpha_ * residual


# Default explained-variance fraction of NECO when neither dim nor variance is given.
NECO_DEFAULT_VARIANCE = 0.9


@register_detector("neco")
class NECO(Detector):
    """Neural-collapse-inspired OOD detection: share of the norm in the principal subspace.

    Standardise with the train mean and (population) standard deviation, ``s = (z - mean)
    / std``; PCA of the standardised train features (eigenvectors of the correlation
    matrix, descending); ``score = ||V_dim^T s|| / ||s||``, times ``max_i f_i`` only when
    ``use_maxlogit=True`` (the paper's choice for ViT-like models; off for ResNets).

    Ben Ammar, Belkhir, Popescu, Manzanera & Franchi, "NECO: NEural Collapse Based
    Out-of-distribution detection", ICLR 2024 (arXiv 2310.06823).

    Equivalent to the authors' ``StandardScaler`` + ``PCA`` code: PCA's centring subtracts
    the mean of the standardised train features, which is zero, so the projection is of
    ``s`` itself. A zero-variance (constant) train feature is handled as
    ``StandardScaler`` does: its scale is set to 1 (a warning names it). It then adds
    nothing to the principal subspace, but a sample that departs from the constant still
    grows ``||s||`` and scores lower -- e.g. an OOD input that wakes a ReLU unit dead on
    all train data.

    Args:
        dim: number of principal components, ``1 <= dim <= D``.
        variance: explained-variance fraction in ``(0, 1]``; ``dim`` = the smallest number
            of components whose cumulative explained variance reaches it (``>=``). Give
            ``dim`` or ``variance``, not both; with neither, ``variance = 0.9`` (the paper
            tunes ``dim`` per model; 90% of the variance is a model-independent default).
        use_maxlogit: multiply by the maximum logit.

    Fitted attributes:
        dim_: number of components used.
        mean_, scale_: ``(D,)`` standardisation.
        components_: ``(D, dim_)`` leading eigenvectors of the correlation matrix.
        explained_variance_ratio_: ``(D,)`` eigenvalues (descending) / their sum.
        n_constant_: number of zero-variance features (scale set to 1).
    """

    uses_stats = True

    def __init__(
        self,
        *,
        dim: int | None = None,
        variance: float | None = None,
        use_maxlogit: bool = False,
    ) -> None:
        if dim is not None and variance is not None:
            raise ConfigError(
                f"NECO takes either 'dim' or 'variance', not both; got dim={dim!r} and "
                f"variance={variance!r}; pass only one"
            )
        if dim is not None:
            check_number(dim, "dim", "NECO", kind=numbers.Integral, low=1)
        elif variance is None:
            variance = NECO_DEFAULT_VARIANCE
        if variance is not None:
            check_number(variance, "variance", "NECO", low=0, high=1, low_open=True)
        if not isinstance(use_maxlogit, (bool, np.bool_)):
            raise ConfigError(
                "The 'use_maxlogit' parameter of NECO must be a bool. "
                f"Got {use_maxlogit!r} instead."
            )
        self.dim = dim
        self.variance = variance
        self.use_maxlogit = bool(use_maxlogit)

    @classmethod
    def params_for_width(cls, params, width):
        """A ``dim`` of at least ``width`` becomes ``max(1, width // 2)``."""
        return _halve_dim(params, width)

    @property
    def uses_logits(self) -> bool:  # type: ignore[override]
        return self.use_maxlogit

    def _fit(self, features, labels, head, stats) -> None:
        d = stats.dim
        cov = stats.total_cov()  # (D, D), population (/N) like StandardScaler
        mean = stats.mean
        var = np.diag(cov).copy()
        # constant features as scikit-learn's StandardScaler detects them (a variance
        # within the rounding error of its own computation)
        constant = stats.constant_features()
        scale = np.sqrt(np.where(constant, 1.0, var))
        if constant.any():
            idx = np.flatnonzero(constant)
            log.warning(
                "neco: %d train feature(s) are constant (e.g. dead ReLU units; columns %s%s); "
                "their scale is set to 1 as in StandardScaler",
                idx.size,
                idx[:10].tolist(),
                "..." if idx.size > 10 else "",
            )
        corr = cov / np.outer(scale, scale)  # covariance of the standardised features
        corr[constant, :] = 0.0  # exactly zero rows/columns for constant features
        corr[:, constant] = 0.0
        evals, evecs = eigh(corr)  # ascending
        evals, evecs = evals[::-1], evecs[:, ::-1]  # descending, as PCA orders components
        evals = np.maximum(evals, 0.0)  # tiny negative eigenvalues are rounding
        total = evals.sum()  # = the number of non-constant features (trace of corr)
        if constant.all():
            raise ConfigError(
                "NECO: every train feature is constant, so there is no principal subspace; "
                "check the features"
            )
        ratio = evals / total
        if self.dim is not None:
            if self.dim > d:
                raise ConfigError(
                    f"The 'dim' parameter of NECO must be at most the feature width: got "
                    f"dim={self.dim} for D={d} features; choose 1 <= dim <= {d}"
                )
            dim = int(self.dim)
        else:
            # 1e-12 absorbs rounding of the cumulative sum (e.g. variance=1.0 must reach D)
            dim = int(np.searchsorted(np.cumsum(ratio), self.variance - 1e-12, side="left")) + 1
            dim = min(dim, d)
        self.dim_ = dim
        self.mean_ = mean
        self.scale_ = scale
        self.components_ = np.ascontiguousarray(evecs[:, :dim])  # (D, dim)
        # the other D - dim eigenvectors: when fewer, ||V^T s||^2 = ||s||^2 - ||V_rest^T s||^2
        # halves the scoring product (see _score)
        self._rest = np.ascontiguousarray(evecs[:, dim:]) if d - dim < dim else None
        self.explained_variance_ratio_ = ratio
        self.explained_variance_ = float(ratio[:dim].sum())
        self.n_constant_ = int(constant.sum())

    def _score(self, z, f):
        s = (z - self.mean_) / self.scale_  # (b, D)
        full_sq = np.einsum("bd,bd->b", s, s)
        rest = getattr(self, "_rest", None)
        if rest is None:
            proj = s @ self.components_  # (b, dim)
            top_sq = np.einsum("bk,bk->b", proj, proj)
        else:
            # [V, V_rest] is an orthonormal basis, so ||V^T s||^2 = ||s||^2 - ||V_rest^T s||^2
            # with the smaller product. The difference has an absolute error of a few ulps
            # of ||s||^2, i.e. a relative error of the ratio top/full of about
            # eps * (full/top)^2: rows with top^2 < full^2 / 16 (error above ~1e-15) are
            # projected on V directly instead.
            proj = s @ rest  # (b, D - dim)
            top_sq = full_sq - np.einsum("bk,bk->b", proj, proj)
            low = top_sq < full_sq / 16.0
            if low.any():
                direct = s[low] @ self.components_
                top_sq[low] = np.einsum("bk,bk->b", direct, direct)
        top = np.sqrt(np.maximum(top_sq, 0.0))  # (b,)
        full = np.sqrt(full_sq)
        # a sample exactly at the train mean (s = 0): 0/0; give it the largest ratio, 1
        out = np.divide(top, full, out=np.ones_like(top), where=full > 0)
        if self.use_maxlogit:
            out = out * f.max(axis=1)
        return out
