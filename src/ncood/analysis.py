"""The one analysis path: the features of one network -> rows of the results table.

```python
from ncood.analysis import analyse
from ncood.types import load_feature_dir
res = analyse(load_feature_dir("runs/x/features"), detectors={"vim": {}, "neco": {}},
              regime="standard", seed=0)
res.pivot("detector", "ood", metric="auroc", layer="penultimate")
```

``ncood run``, ``ncood score`` and ``ncood collapse`` all call :func:`analyse`, once per
network (the final one and, in a run, every training snapshot). One call measures:

* **OOD detection at the head.** Every detector is fitted on the ID train split (class
  statistics are accumulated once and shared) and scores the ID test split and each OOD
  set: ``auroc``, ``aupr_in``, ``aupr_out``, ``fpr95``, ``fpr95_oodpos``
  (:func:`ncood.metrics.ood_metrics`) with ``layer = "penultimate"``, the detector and
  its hyperparameters (``params``); with ``bootstrap`` also their 95% percentile
  intervals (:func:`ncood.metrics.bootstrap_ood_metrics`) and, per OOD set, ``auroc_diff``
  rows of each detector against the next in AUROC order (paired bootstrap,
  :func:`ncood.metrics.paired_auroc_difference`).
* **Neural collapse of the penultimate layer** (Papyan, Han & Donoho 2020, arXiv
  2008.08186): every scalar of :func:`ncood.collapse.collapse_metrics`, the per-class
  arrays (column ``i``), the class-pair values (``i < j``), NC5 and its centred variant
  per OOD set (NECO, Ben Ammar et al. 2024, arXiv 2310.06823), and ``train_error`` of the
  head on the train split.
* **Every pooled layer.** The scalar collapse metrics of each stage
  (:func:`ncood.collapse.layer_metrics`), their log-linear decay over depth
  (:func:`ncood.collapse.depth.fit_log_linear`; He & Su 2023, arXiv 2210.17020), and the
  feature-space detectors on each stage's features, with a linear probe
  (:func:`ncood.probe.fit_linear_head`) as that layer's classifier where logits are
  needed (Harun, Gallardo & Kanan, ICML 2025). A detector's hyperparameters are adapted
  to a layer's width by its own class (:meth:`ncood.detectors.Detector.params_for_width`).

Hyperparameter selection (issue 13, ``ncood run``'s ``selection:``) is a separate call,
:func:`select_hyperparameters`: it reads only the train features, an ID validation split
held out of training and validation OOD sets, and returns the chosen values, which
:func:`analyse` then uses at the head (``head_params``).

A detector that cannot be fitted on an intermediate layer is not skipped silently: the
error is logged and recorded in ``Results.meta["notes"]``; errors at the head surface.
The rows' vocabulary is documented in ``docs/results_schema.md``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ncood.collapse import ClassStats, collapse_metrics, nc5, nc5_centred
from ncood.collapse.depth import MAX_FULL_DIM, depth_decay, depth_metrics
from ncood.detectors import Detector, create_detector, detector_class
from ncood.detectors.select import (
    fixed_params,
    select,
    selectable,
    selection_meta,
    selection_rows,
)
from ncood.errors import CheckpointError, ConfigError, NcoodError, ShapeError
from ncood.metrics import (
    METRIC_NAMES,
    bootstrap_ood_metrics,
    ood_metrics,
    paired_auroc_difference,
    spearman_ci,
)
from ncood.probe import fit_linear_head
from ncood.results import PENULTIMATE, Results, row
from ncood.types import FeatureDir, FeatureSet, LinearHead, load_feature_dir

log = logging.getLogger(__name__)

#: Training-history entries written as rows (one per epoch), in this order.
HISTORY_METRICS = (
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "lr",
    "seconds",
    "images_per_s",
)

#: Per-class arrays of the collapse metrics -> row metric name (column ``i``).
PER_CLASS = {
    "within_class_variance": "within_class_variance",
    "weight_mean_cosine": "weight_mean_cosine",
    "counts": "count",
    "mean_norms": "mean_norm",
    "weight_norms": "weight_norm",
}
#: Class-pair values (upper triangle, row-major ``i < j``) -> row metric name.
PAIRS = {"mean_cosines": "mean_cosine", "weight_cosines": "weight_cosine"}

DetectorSpecs = Mapping[str, Mapping[str, Any] | None] | Sequence[str]


# --------------------------------------------------------------------------- layers
def layer_keys(fs: FeatureSet) -> dict[str, str | None]:
    """Layers of a FeatureSet in depth order: ``{row layer name: key in fs.layers}``.

    The key is ``None`` for the penultimate features (``fs.features``), named
    ``"penultimate"``. When the deepest pooled stage *is* the penultimate layer (ResNets
    pool the last stage into the head's input), it is listed once, as ``"penultimate"``,
    so a depth fit never counts it twice.
    """
    keys: dict[str, str | None] = {k: k for k in fs.layers}
    if keys:
        last = list(keys)[-1]
        arr, feats = fs.layers[last], fs.features
        k = min(256, len(feats))
        if arr.shape == feats.shape and np.array_equal(arr[:k], feats[:k]):
            del keys[last]
    keys.pop(PENULTIMATE, None)
    keys[PENULTIMATE] = None
    return keys


def _pick(fs: FeatureSet, key: str | None) -> np.ndarray:
    return fs.features if key is None else fs.layers[key]


# --------------------------------------------------------------------------- detectors
def _specs(detectors: DetectorSpecs | None) -> dict[str, dict[str, Any]]:
    if detectors is None:
        return {}
    if isinstance(detectors, Mapping):
        return {name: dict(params or {}) for name, params in detectors.items()}
    return {name: {} for name in detectors}


def feature_space(detectors: DetectorSpecs) -> list[str]:
    """The detectors among ``detectors`` that read features (so apply to any layer)."""
    return [n for n in _specs(detectors) if detector_class(n).uses_features]


def _fit_all(
    dets: Mapping[str, Detector], z_train, labels, head: LinearHead
) -> dict[str, Detector | NcoodError]:
    """Fit every detector; class statistics accumulated once for those built on them.

    Returns each fitted detector, or the toolkit error its fit raised.
    """
    stats = None
    if any(d.uses_stats for d in dets.values()):
        if labels is None:
            raise ShapeError("the train split has no labels; statistics-based detectors need them")
        stats = ClassStats.from_features(z_train, labels, head.num_classes)
    out: dict[str, Detector | NcoodError] = {}
    for name, det in dets.items():
        try:
            out[name] = det.fit(
                z_train if (det.needs_train_features or stats is None) else None,
                labels,
                head,
                stats=stats if det.uses_stats else None,
            )
        except NcoodError as exc:
            out[name] = exc
    return out


def _scores(
    det: Detector, test: tuple[Any, Any], oods: Mapping[str, tuple[Any, Any]]
) -> dict[str, np.ndarray]:
    """``{"id": (n_id,), <ood set>: (n_ood,)}`` scores of one fitted detector."""
    out = {"id": det.score(*test)}
    out.update({name: det.score(z, f) for name, (z, f) in oods.items()})
    return out


def _ood_rows(
    scores: Mapping[str, np.ndarray], keys: dict[str, Any], bootstrap: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """OOD-metric rows of one detector's scores (with intervals when ``bootstrap``)."""
    id_scores = scores["id"]
    rows = []
    for ood_name, ood_scores in scores.items():
        if ood_name == "id":
            continue
        sizes = {"n_id": len(id_scores), "n_ood": len(ood_scores)}
        if bootstrap:
            boot = bootstrap_ood_metrics(id_scores, ood_scores, **_boot_args(bootstrap))
            for metric in METRIC_NAMES:
                v = boot[metric]
                rows.append(row(metric, v.value, ood=ood_name, ci=(v.lo, v.hi), **sizes, **keys))
        else:
            for metric, value in ood_metrics(id_scores, ood_scores).items():
                rows.append(row(metric, value, ood=ood_name, **sizes, **keys))
    return rows


def _boot_args(bootstrap: Mapping[str, Any]) -> dict[str, int]:
    return {"n_boot": int(bootstrap.get("n_boot", 1000)), "seed": int(bootstrap.get("seed", 0))}


def _paired_rows(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    rows: list[dict[str, Any]],
    keys: dict[str, Any],
    bootstrap: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """``auroc_diff`` rows: per OOD set, each detector against the next one in AUROC order.

    Row ``detector=A, params={"vs": B}``: AUROC(A) - AUROC(B) >= 0 on the same samples, with
    the paired bootstrap interval (:func:`ncood.metrics.paired_auroc_difference`), so the
    report can say "A beats B" only when the interval excludes 0.
    """
    out = []
    auroc = {(r["detector"], r["ood"]): r["value"] for r in rows if r["metric"] == "auroc"}
    for ood in next(iter(scores.values())):
        if ood == "id":
            continue
        ranked = sorted(scores, key=lambda d: -auroc[(d, ood)])  # stable: ties keep run order
        for a, b in zip(ranked, ranked[1:], strict=False):
            sa, sb = scores[a], scores[b]
            d = paired_auroc_difference(
                sa["id"], sa[ood], sb["id"], sb[ood], **_boot_args(bootstrap)
            )
            sizes = {"n_id": len(sa["id"]), "n_ood": len(sa[ood])}
            out.append(
                row("auroc_diff", d.value, detector=a, ood=ood, params={"vs": b},
                    ci=(d.lo, d.hi), **sizes, **keys)
            )  # fmt: skip
    return out


# --------------------------------------------------------------------------- collapse rows
def _finite(v: Any) -> float | None:
    """``v`` as a float if it is a finite real number (not a bool), else ``None``."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _scalar_rows(m: Mapping[str, Any], keys: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per finite scalar of a collapse-metrics dict (arrays, flags, notes skipped)."""
    out = []
    for k, v in m.items():
        x = _finite(v)
        if x is not None:
            out.append(row(k, x, **keys))
    return out


def _class_rows(m: Mapping[str, Any], keys: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-class (``i``) and class-pair (``i < j``) rows of :func:`collapse_metrics`."""
    out = []
    for key, name in PER_CLASS.items():
        if key in m:
            out += [row(name, v, i=i, **keys) for i, v in enumerate(np.asarray(m[key]).tolist())]
    c = int(m["num_classes"])
    iu, ju = np.triu_indices(c, k=1)
    for key, name in PAIRS.items():
        if key in m:
            vals = np.asarray(m[key]).tolist()
            out += [
                row(name, v, i=int(a), j=int(b), **keys)
                for a, b, v in zip(iu, ju, vals, strict=True)
            ]
    if "mean_distances" in m:
        dist = np.asarray(m["mean_distances"])
        out += [
            row("mean_distance", dist[a, b], i=int(a), j=int(b), **keys)
            for a, b in zip(iu, ju, strict=True)
        ]
    return out


def train_error(fs: FeatureSet, given: float | None = None) -> float:
    """Training error in ``[0, 1]``: ``given`` when known, else the fraction of ``fs`` whose
    ``argmax(logits)`` differs from its label (the head on these samples, eval transforms)."""
    if given is not None:
        return float(given)
    if fs.labels is None:
        raise ShapeError(f"feature set {fs.name!r} has no labels; the train split needs labels")
    return float(np.mean(np.asarray(fs.logits).argmax(axis=1) != fs.labels))


# --------------------------------------------------------------------------- the analysis
def analyse(
    fd: FeatureDir,
    *,
    detectors: DetectorSpecs | None = None,
    layer_detectors: Sequence[str] | None = None,
    regime: str | None = None,
    seed: int | None = None,
    epoch: int | None = None,
    ood: Sequence[str] | None = None,
    collapse: bool = True,
    layers: bool = True,
    max_full_dim: int = MAX_FULL_DIM,
    bootstrap: Mapping[str, Any] | None = None,
    scores_out: dict[str, np.ndarray] | None = None,
    head_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> Results:
    """Measure one network: OOD detection, neural collapse, per layer (see module docstring).

    Args:
        fd: the network's features (train with labels, test, OOD sets, head; pooled
            stages in ``fd.train.layers`` etc. for the per-layer analysis).
        detectors: ``{name: hyperparameters}`` or a list of names scored at the head;
            ``None`` or empty: no OOD detection.
        layer_detectors: detectors (names in ``detectors``) also scored on every pooled
            layer; ``None``: every feature-space detector of ``detectors``
            (:func:`feature_space`); ``[]``: none.
        regime, seed: identify the network in the rows.
        epoch: the network's epoch (default ``fd.meta["epoch"]``).
        ood: OOD sets to use (default: every set in ``fd``); an unknown name raises.
        collapse: measure NC1-NC5 of the penultimate layer and ``train_error``.
        layers: measure every pooled layer (NC metrics, decay over depth, detectors).
        max_full_dim: layers wider than this get only the inversion-free NC metrics.
        bootstrap: ``{"n_boot": B, "seed": s}`` to fill ``ci_low``/``ci_high`` of the head's
            OOD metrics and add the paired ``auroc_diff`` rows; ``None``: no intervals.
        scores_out: receives the head's raw scores, keys ``"<detector>/id"`` and
            ``"<detector>/<ood set>"``, ``(n,)`` float64 each.
        head_params: ``{detector: hyperparameters}`` that replace the configured ones at
            the head only (e.g. chosen by :func:`select_hyperparameters`); detectors on
            the pooled layers keep ``detectors``' values.

    Returns:
        :class:`~ncood.results.Results` with ``meta["detectors"]`` (hyperparameters as
        built, ``{name: params}``) and ``meta["notes"]`` (list of ``{"regime", "seed",
        "epoch", "layer", "detector", "note"}``: what could not be measured, and why).

    Raises:
        ConfigError: an unknown detector, hyperparameter or OOD set name.
        ShapeError: inconsistent features; a detector that cannot be fitted at the head.
    """
    specs = _specs(detectors)
    unknown = [n for n in (head_params or {}) if n not in specs]
    if unknown:
        raise ConfigError(
            f"head_params names {unknown}, which are not among the detectors "
            f"({', '.join(specs) or 'none'}); pass hyperparameters of those detectors only"
        )
    head_specs = {n: dict((head_params or {}).get(n, p)) for n, p in specs.items()}
    dets = {name: create_detector(name, **p) for name, p in head_specs.items()}  # validates
    if layer_detectors is None:
        layer_detectors = feature_space(specs)
    missing = [n for n in layer_detectors if n not in specs]
    if missing:
        raise ConfigError(
            f"layer_detectors {missing} are not among the detectors "
            f"({', '.join(specs) or 'none'}); add them to the detectors or remove them from "
            "layer_detectors"
        )
    oods = _select_ood(fd, ood)
    epoch = fd.meta.get("epoch") if epoch is None else epoch
    base = {"regime": regime, "seed": seed, "epoch": None if epoch is None else int(epoch)}
    y = fd.train.labels
    c = fd.head.num_classes
    n_train = len(fd.train)
    rows: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []

    def note(layer: str, text: str, detector: str | None = None) -> None:
        where = f"regime {regime} seed {seed} epoch {epoch} layer {layer}"
        log.warning("%s%s: %s", where, f" {detector}" if detector else "", text)
        notes.append({**base, "layer": layer, "detector": detector, "note": text})

    # ---- OOD detection at the head
    if dets:
        fitted = _fit_all(dets, fd.train.features, y, fd.head)
        test = (fd.test.features, fd.test.logits)
        ood_inputs = {k: (fs.features, fs.logits) for k, fs in oods.items()}
        head_scores = {}
        for name, det in fitted.items():
            if isinstance(det, NcoodError):
                raise det
            head_scores[name] = sc = _scores(det, test, ood_inputs)
            if scores_out is not None:
                scores_out.update({f"{name}/{split}": v for split, v in sc.items()})
            keys = {**base, "layer": PENULTIMATE, "detector": name, "params": det.get_params()}
            rows += _ood_rows(sc, keys, bootstrap)
        if bootstrap and len(head_scores) > 1 and oods:
            rows += _paired_rows(head_scores, rows, {**base, "layer": PENULTIMATE}, bootstrap)

    # ---- collapse of the penultimate layer
    head_metrics = None
    if collapse:
        if y is None:
            raise ShapeError(
                "the train split has no labels; collapse metrics need labelled train features "
                "(re-run `ncood extract`)"
            )
        keys = {**base, "layer": PENULTIMATE, "n_id": n_train}
        stats = ClassStats.from_features(fd.train.features, y, c)
        head_metrics = collapse_metrics(fd.train.features, y, fd.head, stats=stats)
        rows += _scalar_rows(head_metrics, keys)
        rows += _class_rows(head_metrics, keys)
        for name, fs in oods.items():
            o = {**keys, "ood": name, "n_ood": len(fs)}
            rows.append(row("nc5", nc5(None, None, fs.features, stats=stats), **o))
            rows.append(row("nc5_centred", nc5_centred(None, None, fs.features, stats=stats), **o))
        rows.append(row("train_error", train_error(fd.train, fd.meta.get("train_error")), **keys))
        for text in head_metrics.get("notes", []):
            note(PENULTIMATE, text)

    # ---- every pooled layer
    if layers and fd.train.layers:
        lkeys = layer_keys(fd.train)
        per_layer = depth_metrics(
            {name: _pick(fd.train, key) for name, key in lkeys.items()},
            y,
            head=fd.head if collapse else None,
            head_metrics=head_metrics,
            max_full_dim=max_full_dim,
            num_classes=c,
        )
        for lname, m in per_layer.items():
            if not (collapse and lname == PENULTIMATE):  # its rows are above
                rows += _scalar_rows(m, {**base, "layer": lname, "n_id": n_train})
        for metric, fit in depth_decay(per_layer).items():
            for part in ("rate", "r2"):
                if _finite(fit[part]) is not None:
                    rows.append(row(f"{metric}.decay_{part}", fit[part], **base))
        todo = [n for n in layer_detectors if n in dets]
        if todo:
            for lname, key in lkeys.items():
                if key is None:
                    continue  # the head's rows above
                rows += _layer_detector_rows(fd, oods, lname, key, todo, specs, base, note)

    meta = {
        "detectors": {name: det.get_params() for name, det in dets.items()},
        "notes": notes,
    }
    return Results(rows, meta)


def _layer_detector_rows(
    fd: FeatureDir,
    oods: Mapping[str, FeatureSet],
    lname: str,
    key: str,
    names: Sequence[str],
    specs: Mapping[str, dict[str, Any]],
    base: dict[str, Any],
    note,
) -> list[dict[str, Any]]:
    """Feature-space detectors ``names`` on the pooled layer ``key`` (rows named ``lname``).

    The layer's classifier is a linear probe fitted on its train features
    (:func:`ncood.probe.fit_linear_head`); each detector's hyperparameters come from
    ``specs`` through its class's :meth:`~ncood.detectors.Detector.params_for_width`. A
    detector whose fit raises a toolkit error is reported through ``note`` and skipped.
    """
    z_train = fd.train.layers[key]
    width = z_train.shape[1]
    lacking = [fs.name or split for split, fs in [("test", fd.test), *oods.items()]
               if key not in fs.layers]  # fmt: skip
    if lacking:
        raise ShapeError(
            f"layer {key!r} was extracted for the train split but not for {lacking}; extract "
            "every split with the same layers, or pass layer_detectors=[]"
        )
    head = fit_linear_head(z_train, fd.train.labels, num_classes=fd.head.num_classes)
    dets = {}
    for name in names:
        params = detector_class(name).params_for_width(specs[name], width)
        dets[name] = create_detector(name, **params)
    fitted = _fit_all(dets, z_train, fd.train.labels, head)
    z_test = fd.test.layers[key]
    test = (z_test, head.logits(z_test))
    oz = {}
    for name, fs in oods.items():
        zo = fs.layers[key]
        oz[name] = (zo, head.logits(zo))
    rows = []
    for name, det in fitted.items():
        if isinstance(det, NcoodError):
            note(lname, f"not fitted on this layer (width {width}): {det}", detector=name)
            continue
        keys = {**base, "layer": lname, "detector": name, "params": det.get_params()}
        rows += _ood_rows(_scores(det, test, oz), keys, None)
    return rows


# --------------------------------------------------------------------------- selection
def select_hyperparameters(
    fd: FeatureDir,
    val_id: FeatureSet,
    val_ood: Mapping[str, FeatureSet],
    *,
    detectors: DetectorSpecs,
    selected: Sequence[str] | None = None,
    regime: str | None = None,
    seed: int | None = None,
    epoch: int | None = None,
) -> tuple[Results, dict[str, dict[str, Any]]]:
    """Choose each detector's hyperparameters on validation data (issue 13).

    For every detector of :func:`ncood.detectors.select.selectable` (``selected``, or
    every one of ``detectors`` with a grid) :func:`ncood.detectors.select.select` fits
    each grid candidate on ``fd.train`` (class statistics accumulated once) and scores
    ``val_id`` against the validation OOD sets pooled into one set (their names joined by
    ``+``); the highest validation AUROC wins (ties: the first in grid order). Configured
    hyperparameters the grid does not search stay fixed. Only ``fd.train`` and ``fd.head``
    are read from ``fd``: its test split and OOD sets never enter, so the choice cannot
    depend on them (OpenOOD v1.5's "APS" mode, done on held-out data; Zhang et al. 2023,
    arXiv 2306.09301).

    Args:
        fd: the network's features (train with labels, head).
        val_id: ID validation features ``(n_val, D)`` and logits, held out of the train
            split (never trained on, not in ``fd.train``).
        val_ood: ``{name: FeatureSet}`` validation OOD sets, disjoint from the test sets.
        detectors: the configured ``{name: hyperparameters}`` (or names).
        selected: detector names to tune (``None``: every one with a grid).
        regime, seed, epoch: identify the network in the rows (epoch default
            ``fd.meta["epoch"]``).

    Returns:
        ``(rows, chosen)``: rows ``selection_auroc`` (one per candidate, ``params`` = the
        candidate) and ``selection_chosen`` (one per detector, ``params`` = the winner,
        value = its validation AUROC), ``layer="penultimate"``, ``ood`` = the validation
        set's name, ``n_id``/``n_ood`` = validation sizes; ``rows.meta["selection"] =
        {detector: {"grid", "chosen", "val_auroc", "val_ood", "n_val_id", "n_val_ood"}}``.
        ``chosen`` = ``{detector: hyperparameters}`` for :func:`analyse`'s ``head_params``.

    Raises:
        ConfigError: an unknown or grid-less selected detector, no validation OOD set.
        ShapeError: validation features whose width differs from the train features'.
    """
    specs = _specs(detectors)
    names = selectable(list(specs), selected)
    if not val_ood:
        raise ConfigError("val_ood is empty; pass at least one validation OOD set")
    width = fd.train.features.shape[1]
    for what, fs in [("val_id", val_id), *((f"val_ood[{k!r}]", v) for k, v in val_ood.items())]:
        if fs.features.shape[1] != width:
            raise ShapeError(
                f"{what} has {fs.features.shape[1]} features, but the train features have "
                f"{width}; extract both from the same network and layer"
            )
    ood_name = "+".join(val_ood)
    ood_z = np.concatenate([np.asarray(fs.features) for fs in val_ood.values()])
    ood_f = np.concatenate([np.asarray(fs.logits) for fs in val_ood.values()])
    epoch = fd.meta.get("epoch") if epoch is None else epoch
    keys = {"regime": regime, "seed": seed, "epoch": None if epoch is None else int(epoch)}
    y = fd.train.labels
    stats = None
    if any(detector_class(n).uses_stats for n in names):
        if y is None:
            raise ShapeError("the train split has no labels; statistics-based detectors need them")
        stats = ClassStats.from_features(fd.train.features, y, fd.head.num_classes)
    rows: list[dict[str, Any]] = []
    chosen: dict[str, dict[str, Any]] = {}
    meta: dict[str, Any] = {}
    for name in names:
        res = select(
            name,
            None,
            fd.train.features,
            y,
            fd.head,
            val_id=(val_id.features, val_id.logits),
            val_ood=(ood_z, ood_f),
            fixed=fixed_params(name, specs[name]),
            stats=stats,
        )
        rows += selection_rows(res, val_ood=ood_name, layer=PENULTIMATE, **keys)
        chosen[name] = dict(res.params)
        meta[name] = selection_meta(res, val_ood=ood_name)
        log.info("selection %s: %s (validation AUROC %.4f)", name, res.params, res.val_auroc)
    return Results(rows, {"selection": meta}), chosen


def merge_selection_meta(parts: Sequence[Results]) -> dict[str, Any]:
    """``run.json``'s ``meta["selection"]`` from the networks' selection results, in run order.

    ``{detector: {"grid", "chosen", "val_auroc", "val_ood", "n_val_id", "n_val_ood",
    "networks"}}``: the schema's keys hold the first network's selection (the only one
    in a one-network run); ``networks`` lists every network's ``{"regime", "seed",
    "epoch", "chosen", "val_auroc"}`` (read from its ``selection_chosen`` rows).
    """
    out: dict[str, Any] = {}
    for part in parts:
        for name, entry in (part.meta.get("selection") or {}).items():
            merged = out.setdefault(name, {**entry, "networks": []})
            for r in part.select(metric="selection_chosen", detector=name).to_dict("records"):
                merged["networks"].append(
                    {
                        "regime": r["regime"],
                        "seed": None if pd.isna(r["seed"]) else int(r["seed"]),
                        "epoch": None if pd.isna(r["epoch"]) else int(r["epoch"]),
                        "chosen": json.loads(r["params"] or "{}"),
                        "val_auroc": float(r["value"]),
                    }
                )
    return out


def _select_ood(fd: FeatureDir, wanted: Sequence[str] | None) -> dict[str, FeatureSet]:
    if wanted is None:
        return dict(fd.ood)
    missing = [n for n in wanted if n not in fd.ood]
    if missing:
        raise ConfigError(
            f"OOD set {missing[0]!r} is not in the features (they have: "
            f"{', '.join(fd.ood) or 'none'}); pass one of those names or extract that OOD set first"
        )
    return {n: fd.ood[n] for n in dict.fromkeys(wanted)}


# --------------------------------------------------------------------------- training runs
def history_rows(
    history: Iterable[Mapping[str, Any]], *, regime: str | None = None, seed: int | None = None
) -> list[dict[str, Any]]:
    """Rows of a training history (a checkpoint's ``history``): one per epoch and entry of
    :data:`HISTORY_METRICS` (no layer, detector or OOD set)."""
    rows = []
    for h in history:
        for k in HISTORY_METRICS:
            if h.get(k) is not None:
                rows.append(row(k, h[k], regime=regime, seed=seed, epoch=int(h["epoch"])))
    return rows


def snapshot_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The snapshot checkpoints ``RUN_DIR/snapshots/epoch_<k>.pt`` of a training run,
    as ``(epoch, path)`` sorted by epoch."""
    found = []
    for pt in Path(run_dir).glob("snapshots/epoch_*.pt"):
        m = re.fullmatch(r"epoch_(\d+)", pt.stem)
        if m:
            found.append((int(m.group(1)), pt))
    return sorted(found)


_EPOCH_RE = re.compile(r"(\d+)(?!.*\d)")


def snapshot_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Extracted snapshot feature directories of a run, ``(epoch, dir)`` sorted by epoch.

    Looks at ``RUN_DIR/snapshots/<name>/`` and ``RUN_DIR/features/epoch_<k>/``; the epoch
    is ``extract.json``'s ``"epoch"``, else the last number in the directory name. An
    epoch found twice keeps the first directory (logged).
    """
    run_dir = Path(run_dir)
    found: dict[int, Path] = {}
    candidates = sorted(run_dir.glob("snapshots/*/extract.json")) + sorted(
        run_dir.glob("features/epoch_*/extract.json")
    )
    for meta_path in candidates:
        d = meta_path.parent
        try:
            epoch = json.loads(meta_path.read_text()).get("epoch")
        except (OSError, ValueError):
            epoch = None
        if epoch is None:
            match = _EPOCH_RE.search(d.name)
            if match is None:
                raise CheckpointError(
                    f"cannot tell the epoch of {str(d)!r}: no 'epoch' in extract.json and no "
                    "number in the directory name; rename it epoch_<k>"
                )
            epoch = int(match.group(1))
        if int(epoch) in found:
            log.warning("epoch %s found twice (%s, %s); using the first", epoch, found[epoch], d)
            continue
        found[int(epoch)] = d
    return sorted(found.items())


def extract_snapshots(
    run_dir: str | Path, ood: Sequence[str], *, data_root: str | None = None, progress: bool = False
) -> list[Path]:
    """Extract every ``RUN_DIR/snapshots/epoch_<k>.pt`` that has no feature directory yet.

    Each goes to ``RUN_DIR/features/epoch_<k>/`` on the training samples the run used (its
    ``max_train_samples``, ``seed``, data root), through the cache ``RUN_DIR/cache``; the
    test split is a one-image stub (collapse reads the train split and OOD sets).
    """
    # data loading and the training stack (+0.35 s at import): only snapshot extraction
    from ncood.extract import extract_checkpoint
    from ncood.train import load_checkpoint

    run_dir = Path(run_dir)
    written = []
    for _, pt in snapshot_checkpoints(run_dir):
        out = run_dir / "features" / pt.stem
        if (out / "extract.json").exists():
            continue
        cfg = load_checkpoint(pt).get("config", {})
        extract_checkpoint(
            pt,
            ood=list(ood),
            out=out,
            cache_dir=run_dir / "cache",
            data_root=data_root or cfg.get("data_root"),
            layers=None,
            max_train_samples=cfg.get("max_train_samples"),
            max_test_samples=1,
            allow_subset=bool(cfg.get("allow_subset", False)),
            seed=int(cfg.get("seed", 0)),
            progress=progress,
        )
        written.append(out)
    return written


def analyse_run_snapshots(
    run_dir: str | Path,
    *,
    ood: Sequence[str] | None = None,
    data_root: str | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> Results:
    """:func:`analyse` every snapshot of a training run (``ncood collapse --run``).

    Snapshot checkpoints not yet extracted are extracted first (:func:`extract_snapshots`),
    then every directory :func:`snapshot_dirs` finds is analysed with ``kwargs``.

    Raises:
        ConfigError: ``run_dir`` is not a directory.
        CheckpointError: no extracted snapshot found.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"--run {str(run_dir)!r} is not a directory; pass a training run dir")
    extract_snapshots(run_dir, list(ood or []), data_root=data_root, progress=progress)
    snaps = snapshot_dirs(run_dir)
    if not snaps:
        raise CheckpointError(
            f"no extracted snapshots in {str(run_dir)!r} (looked for snapshots/*/extract.json "
            "and features/epoch_*/extract.json); extract each snapshot with `ncood extract "
            "--checkpoint RUN_DIR/snapshots/epoch_<k>.pt --out RUN_DIR/features/epoch_<k>`"
        )
    parts = [analyse(load_feature_dir(d), epoch=e, ood=ood, **kwargs) for e, d in snaps]
    meta = {
        "snapshots": {str(e): str(d) for e, d in snaps},
        "notes": [n for p in parts for n in p.meta.get("notes", [])],
    }
    return Results.concat(parts, meta=meta)


#: NC metrics correlated with AUROC by :func:`relation_rows` (``nc5`` is matched on ``ood``).
RELATION_NC_METRICS = ("nc1", "nc1_trace", "cdnv", "nc5")

_POINT = ["regime", "seed", "epoch", "layer"]


def _points(df: Any, keys: list[str]) -> Any:
    """Finite rows of ``df`` with one value per ``keys`` (the first when repeated)."""
    df = df[np.isfinite(df["value"].to_numpy(dtype=float, na_value=np.nan))]
    df = df.astype({k: object for k in keys}).fillna({k: "" for k in keys})
    return df.drop_duplicates(subset=keys, keep="first")[[*keys, "value"]]


def relation_rows(results: Results, *, n_boot: int = 1000, seed: Any = 0) -> Results:
    """Spearman correlation of AUROC with neural-collapse metrics, per (detector, OOD set).

    For each (detector, ood) with ``auroc`` rows, and each NC metric in
    :data:`RELATION_NC_METRICS`, the points are the (regime, seed, epoch, layer) where both
    exist (``nc5`` also matched on ``ood``); ``rho`` and its bootstrap interval over points
    come from :func:`ncood.metrics.spearman_ci`. The points (snapshots x layers x regimes x
    seeds of the same networks) are not independent: the numbers are descriptive. This is
    the relation of issue 11 (NECO, Ben Ammar et al. 2024, arXiv 2310.06823, claims OOD
    detection improves as collapse grows; Harun, Gallardo & Kanan, ICML 2025, relate
    per-layer NC1 and OOD detection).

    Args:
        results: a run's table with ``auroc`` rows and NC rows.
        n_boot: bootstrap replicates of the interval (``>= 1``).
        seed: seed of the resampling (int, ``SeedSequence`` or ``Generator``).

    Returns:
        Rows ``metric="spearman"``, ``detector``, ``ood``,
        ``params={"ood_metric": "auroc", "nc_metric": NAME}``, ``value`` = rho (NaN when
        one side is constant), ``ci_low``/``ci_high``, ``n_id`` = number of points. No row
        for a pair with fewer than 3 points.
    """
    out = Results()
    auroc = results.select(metric="auroc")
    if not len(auroc):
        return out
    rows: list[dict[str, Any]] = []
    for (det, ood), grp in auroc.groupby(["detector", "ood"], sort=False, dropna=True):
        a = _points(grp, _POINT)
        for name in RELATION_NC_METRICS:
            keys = [*_POINT, "ood"] if name == "nc5" else _POINT
            filt = {"metric": name, "ood": ood} if name == "nc5" else {"metric": name, "ood": None}
            nc = _points(results.select(**filt), keys)
            both = a.merge(nc, on=_POINT, suffixes=("_ood", "_nc"))
            n = len(both)
            if n < 3:
                log.debug("relation %s/%s vs %s: %d point(s), no row", det, ood, name, n)
                continue
            rho, lo, hi = iv = spearman_ci(
                both["value_ood"].to_numpy(float),
                both["value_nc"].to_numpy(float),
                n_boot=n_boot,
                seed=seed,
            )
            if iv.note:
                log.info("relation %s/%s vs %s: %s", det, ood, name, iv.note)
            rows.append(
                row(
                    "spearman",
                    rho,
                    detector=det,
                    ood=ood,
                    params={"ood_metric": "auroc", "nc_metric": name},
                    ci=(lo, hi),
                    n_id=n,
                )
            )
    out.extend(rows)
    return out
