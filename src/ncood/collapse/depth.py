"""Collapse across depth: NC metrics of every layer and their log-linear decay.

Papyan, Han & Donoho (PNAS 2020, arXiv 2008.08186) measure collapse at the penultimate
layer; He & Su, "A law of data separation in deep learning" (PNAS 2023, arXiv
2210.17020) observe that within-/between-class ratios such as ``nc1`` decay roughly
geometrically with depth. :func:`depth_analysis` measures every layer and fits
``log(metric) = a + r * layer_index`` by least squares: ``r`` is the decay rate per layer
(``exp(r)`` the factor per layer), with the fit's ``R^2``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ncood.collapse.metrics import collapse_metrics, layer_metrics, to_jsonable
from ncood.errors import ShapeError
from ncood.types import LinearHead

log = logging.getLogger(__name__)

#: Layers wider than this get the inversion-free metrics only (a (d, d) float64 matrix
#: of 4096 x 4096 is 128 MiB; beyond that the full set is slow and memory-hungry).
MAX_FULL_DIM = 4096

#: Metrics fitted against depth (those measured in every layer).
DEPTH_METRICS = ("nc1", "nc1_trace", "cdnv")


@dataclass
class DepthResult:
    """Per-layer metrics in depth order and the fitted decay of each metric.

    Attributes:
        layers: layer names, shallow to deep.
        metrics: ``{layer: metrics dict}`` (as :func:`layer_metrics` / :func:`collapse_metrics`).
        decay: ``{metric: {"rate", "factor", "intercept", "r2", "n_layers"}}``.
    """

    layers: list[str]
    metrics: dict[str, dict[str, Any]]
    decay: dict[str, dict[str, float]] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per layer: name, width, whether the full set was computed, scalars."""
        rows = []
        for name in self.layers:
            m = self.metrics[name]
            row: dict[str, Any] = {"layer": name, "dim": m["dim"], "full": m.get("full", True)}
            for key in ("nc1", "nc1_trace", "cdnv", "ncc_acc", "nc4"):
                if key in m:
                    row[key] = m[key]
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-layer scalars and arrays, table, decay fits)."""
        return to_jsonable(
            {
                "layers": self.layers,
                "table": self.table(),
                "decay": self.decay,
                "metrics": self.metrics,
            }
        )


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


def depth_analysis(
    layers: Mapping[str, Any],
    labels,
    *,
    head: LinearHead | None = None,
    max_full_dim: int = MAX_FULL_DIM,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    head_metrics: dict[str, Any] | None = None,
) -> DepthResult:
    """Collapse metrics of every layer, shallow to deep, and their decay rate with depth.

    Args:
        layers: ``{layer_name: features (n_samples, d_layer)}`` in depth order; the last
            entry is the penultimate layer when ``head`` is given.
        labels: ``(n_samples,)``.
        head: the final linear layer; the last layer then gets :func:`collapse_metrics`
            (``nc2`` of weights, ``nc3``, ``nc4``) in addition.
        max_full_dim: layers wider than this get only ``nc1_trace``, ``cdnv``,
            ``ncc_acc`` (no ``(d, d)`` matrix).
        num_classes: ``C`` (default: the head's, else ``max(labels) + 1``).
        chunk_size: rows per chunk.
        head_metrics: an already computed :func:`collapse_metrics` of the last layer
            (reused instead of recomputed).

    Returns:
        :class:`DepthResult`.
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
    decay = {}
    for key in DEPTH_METRICS:
        if all(key in metrics[n] for n in names):
            decay[key] = fit_log_linear([metrics[n][key] for n in names])
    return DepthResult(layers=names, metrics=metrics, decay=decay)


def layer_keys(fs) -> dict[str, str | None]:
    """Layers of a FeatureSet in depth order: ``{display name: layer key}``.

    The key is ``None`` for the penultimate features (``fs.features``). When the deepest
    pooled stage *is* the penultimate layer (ResNets pool the last stage into the head's
    input), it is listed once, as ``"<stage> (penultimate)"``, so a depth fit never counts
    it twice.
    """
    keys: dict[str, str | None] = {k: k for k in fs.layers}
    feats = fs.features
    if keys:
        last = list(keys)[-1]
        arr = fs.layers[last]
        k = min(256, len(feats))
        if arr.shape == feats.shape and np.array_equal(arr[:k], feats[:k]):
            del keys[last]
            keys[f"{last} (penultimate)"] = None
            return keys
    keys["penultimate"] = None
    return keys


def layer_stack(fs) -> dict[str, Any]:
    """``{display name: features}`` in depth order (see :func:`layer_keys`)."""
    return {
        name: fs.features if key is None else fs.layers[key] for name, key in layer_keys(fs).items()
    }
