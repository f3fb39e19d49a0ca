"""Collapse across depth: NC metrics of every layer and their log-linear decay.

Papyan, Han & Donoho (PNAS 2020, arXiv 2008.08186) measure collapse at the penultimate
layer; He & Su, "A law of data separation in deep learning" (PNAS 2023, arXiv
2210.17020) observe that within-/between-class ratios such as ``nc1`` decay roughly
geometrically with depth. :func:`depth_metrics` measures every layer and
:func:`depth_decay` fits ``log(metric) = a + r * layer_index`` by least squares: ``r`` is
the decay rate per layer (``exp(r)`` the factor per layer), with the fit's ``R^2``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ncood.collapse.metrics import collapse_metrics, layer_metrics
from ncood.errors import ShapeError
from ncood.types import LinearHead

log = logging.getLogger(__name__)

#: Layers wider than this get the inversion-free metrics only (a (d, d) float64 matrix
#: of 4096 x 4096 is 128 MiB; beyond that the full set is slow and memory-hungry).
MAX_FULL_DIM = 4096

#: Metrics fitted against depth (those measured in every layer).
DEPTH_METRICS = ("nc1", "nc1_trace", "cdnv")


def fit_log_linear(values: Sequence[float]) -> dict[str, float]:
    """Least-squares fit of ``log(v_i) = a + r * i`` over layer indices ``i = 0, 1, ...``.

    Args:
        values: positive metric values in depth order (non-positive or non-finite values
            are skipped; at least two are needed).

    Returns:
        ``{"rate": r, "factor": exp(r), "intercept": a, "r2": R^2, "n_layers": k}``;
        ``r2`` is 1 for an exact geometric decay and ``nan`` when all values are equal.
    """
    v = np.asarray(values, dtype=np.float64)
    idx = np.arange(v.size, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0)
    if ok.sum() < 2:
        nan = float("nan")
        return {"rate": nan, "factor": nan, "intercept": nan, "r2": nan, "n_layers": int(ok.sum())}
    x, t = idx[ok], np.log(v[ok])
    design = np.stack([np.ones_like(x), x], axis=1)  # (k, 2)
    (a, r), *_ = np.linalg.lstsq(design, t, rcond=None)
    resid = t - (a + r * x)
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")
    return {
        "rate": float(r),
        "factor": float(np.exp(r)),
        "intercept": float(a),
        "r2": r2,
        "n_layers": int(ok.sum()),
    }


def depth_metrics(
    layers: Mapping[str, Any],
    labels,
    *,
    head: LinearHead | None = None,
    max_full_dim: int = MAX_FULL_DIM,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    head_metrics: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Collapse metrics of every layer, shallow to deep.

    Args:
        layers: ``{layer_name: features (n_samples, d_layer)}`` in depth order; the last
            entry is the penultimate layer when ``head`` is given.
        labels: ``(n_samples,)``.
        head: the final linear layer; the last layer then gets :func:`collapse_metrics`
            (``nc2`` of weights, ``nc3``, ``nc4``) in addition.
        max_full_dim: layers wider than this get only ``nc1_trace``, ``cdnv``,
            ``ncc_acc`` (no ``(d, d)`` matrix); the others every :func:`layer_metrics`.
        num_classes: ``C`` (default: the head's, else ``max(labels) + 1``).
        chunk_size: rows per chunk.
        head_metrics: an already computed :func:`collapse_metrics` of the last layer
            (reused instead of recomputed).

    Returns:
        ``{layer_name: metrics dict}`` in depth order (each with ``full``: whether the
        full set was computed).
    """
    names = list(layers)
    if not names:
        raise ShapeError("layers is empty; pass {layer_name: features} for at least one layer")
    c = num_classes if num_classes is not None else (head.num_classes if head else None)
    labels = np.asarray(labels)
    metrics: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        feats = layers[name]
        if np.ndim(feats) != 2 or feats.shape[0] != labels.shape[0]:
            raise ShapeError(
                f"layer {name!r} must have shape ({labels.shape[0]}, d); got {np.shape(feats)}"
            )
        if head is not None and i == len(names) - 1:
            m = dict(head_metrics or collapse_metrics(feats, labels, head, chunk_size=chunk_size))
            m["full"] = True
        else:
            full = feats.shape[1] <= max_full_dim
            m = layer_metrics(feats, labels, full=full, num_classes=c, chunk_size=chunk_size)
        log.info("layer %s (d=%d): nc1_trace=%.4g", name, feats.shape[1], m["nc1_trace"])
        metrics[name] = m
    return metrics


def depth_decay(
    metrics: Mapping[str, Mapping[str, Any]], keys: Sequence[str] = DEPTH_METRICS
) -> dict[str, dict[str, float]]:
    """:func:`fit_log_linear` of each metric of ``keys`` measured in every layer.

    Args:
        metrics: ``{layer_name: metrics dict}`` in depth order (:func:`depth_metrics`).
        keys: metric names to fit.

    Returns:
        ``{metric: {"rate", "factor", "intercept", "r2", "n_layers"}}``; a metric missing
        from some layer (e.g. ``nc1`` of a wide layer) is left out.
    """
    return {
        key: fit_log_linear([m[key] for m in metrics.values()])
        for key in keys
        if all(key in m for m in metrics.values())
    }
