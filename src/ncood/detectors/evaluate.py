"""Fit detectors on a feature directory, score ID test and every OOD set, tabulate.

Used by ``ncood score`` and by the pipeline: :func:`evaluate` returns a plain,
JSON-serialisable dict; :func:`format_ood_tables` renders it in the shape of the
reference write-up's tables (one per OOD set, rows = detectors).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ncood import __version__
from ncood.collapse.stats import ClassStats
from ncood.detectors.base import Detector, create_detector
from ncood.errors import ShapeError
from ncood.metrics import CONVENTIONS, ood_metrics
from ncood.types import FeatureDir, load_feature_dir

log = logging.getLogger(__name__)

DEFAULT_DETECTORS = ("msp", "maxlogit", "energy", "mahalanobis", "vim", "neco")

# (results key, column title, higher is better)
TABLE_COLUMNS = (
    ("auroc", "AUROC", True),
    ("fpr95", "FPR@95", False),
    ("aupr_in", "AUPR-In", True),
    ("aupr_out", "AUPR-Out", True),
)


def build_detectors(
    detectors: Mapping[str, Mapping[str, Any]] | Sequence[str] | None,
) -> dict[str, Detector]:
    """Instantiate (and so validate) every detector before any work is done."""
    if detectors is None:
        detectors = DEFAULT_DETECTORS
    if not isinstance(detectors, Mapping):
        detectors = {name: {} for name in detectors}
    return {name: create_detector(name, **dict(params or {})) for name, params in detectors.items()}


def evaluate(
    feature_dir: FeatureDir | str | os.PathLike,
    detectors: Mapping[str, Mapping[str, Any]] | Sequence[str] | None = None,
    *,
    scores_out: dict[str, np.ndarray] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit each detector on the ID train split; score ID test and each OOD set.

    Class statistics are accumulated once (one chunked pass over the train features) and
    shared by every statistics-based detector (Mahalanobis, ViM, NECO).

    Args:
        feature_dir: a :class:`~ncood.types.FeatureDir` or the directory
            ``ncood extract`` wrote.
        detectors: ``{name: hyperparameters}``, or a list of names (default
            hyperparameters); ``None`` = the six of the reference experiment.
        scores_out: if a dict is given, it receives the raw scores, keys
            ``"<detector>/id"`` and ``"<detector>/<ood set>"``, ``(n,)`` float64 each.
        on_step: called with a short description before each step (for progress bars).

    Returns:
        A JSON-serialisable dict::

            {"ncood_version", "conventions", "features": {"path", "meta"},
             "n_train", "n_id", "n_ood": {ood: n},
             "timings": {"stats_s", "total_s"},
             "detectors": {name: {"params", "fitted", "fit_s", "score_s",
                                  "ood": {ood: {"auroc", "aupr_in", "aupr_out",
                                                "fpr95", "fpr95_oodpos"}}}}}

        Metrics are fractions in ``[0, 1]`` (see :mod:`ncood.metrics` for conventions).
    """
    t_start = time.perf_counter()
    dets = build_detectors(detectors)
    path = None
    if not isinstance(feature_dir, FeatureDir):
        path = str(feature_dir)
        feature_dir = load_feature_dir(feature_dir)
    fd = feature_dir
    if not fd.ood:
        raise ShapeError(
            "the feature directory has no OOD sets; extract at least one with "
            "`ncood extract ... --ood NAME`"
        )
    step = on_step or (lambda _msg: None)

    stats, stats_s = None, 0.0
    if any(d.uses_stats for d in dets.values()):
        step("class statistics")
        if fd.train.labels is None:
            raise ShapeError("the train split has no labels; Mahalanobis/ViM/NECO need them")
        t0 = time.perf_counter()
        stats = ClassStats.from_features(
            fd.train.features, fd.train.labels, fd.head.num_classes, name="train features"
        )
        stats_s = time.perf_counter() - t0

    out: dict[str, Any] = {}
    for name, det in dets.items():
        step(f"{name}: fit")
        t0 = time.perf_counter()
        det.fit(
            fd.train.features if (det.needs_train_features or stats is None) else None,
            fd.train.labels,
            fd.head,
            stats=stats if det.uses_stats else None,
        )
        fit_s = time.perf_counter() - t0
        step(f"{name}: score")
        t0 = time.perf_counter()
        id_scores = det.score(fd.test.features, fd.test.logits)
        split_scores = {ood: det.score(fs.features, fs.logits) for ood, fs in fd.ood.items()}
        score_s = time.perf_counter() - t0
        if scores_out is not None:
            scores_out[f"{name}/id"] = id_scores
            scores_out.update({f"{name}/{k}": v for k, v in split_scores.items()})
        out[name] = {
            "params": det.get_params(),
            "fitted": det.fitted_info(),
            "fit_s": fit_s,
            "score_s": score_s,
            "ood": {ood: ood_metrics(id_scores, s) for ood, s in split_scores.items()},
        }
        log.info("%s: fit %.2f s, score %.2f s", name, fit_s, score_s)
    return {
        "ncood_version": __version__,
        "conventions": dict(CONVENTIONS),
        "features": {"path": path, "meta": fd.meta},
        "n_train": len(fd.train),
        "n_id": len(fd.test),
        "n_ood": {ood: len(fs) for ood, fs in fd.ood.items()},
        "timings": {"stats_s": stats_s, "total_s": time.perf_counter() - t_start},
        "detectors": out,
    }


def format_ood_tables(results: Mapping[str, Any]) -> str:
    """Plain-text tables, one per OOD set: rows = detectors, columns AUROC, FPR@95,
    AUPR-In, AUPR-Out in %; ``*`` marks the best value of each column (ties all marked).

    Args:
        results: the dict :func:`evaluate` returns (only ``"detectors"``, ``"n_id"`` and
            ``"n_ood"`` are read).
    """
    dets = results["detectors"]
    names = list(dets)
    oods = list(results.get("n_ood") or next(iter(dets.values()))["ood"])
    width = max(8, *(len(n) for n in names))
    lines: list[str] = []
    for ood in oods:
        n_ood = results.get("n_ood", {}).get(ood, "?")
        lines.append(f"OOD set: {ood}  (ID test n={results.get('n_id', '?')}, OOD n={n_ood})")
        header = f"{'detector':<{width}}" + "".join(
            f"  {title:>9}" for _, title, _ in TABLE_COLUMNS
        )
        lines += [header, "-" * len(header)]
        best = {}
        for key, _, higher in TABLE_COLUMNS:
            vals = [dets[n]["ood"][ood][key] for n in names]
            best[key] = max(vals) if higher else min(vals)
        for n in names:
            m = dets[n]["ood"][ood]
            cells = []
            for key, _, _ in TABLE_COLUMNS:
                mark = "*" if m[key] == best[key] else " "
                cells.append(f"  {100.0 * m[key]:>8.2f}{mark}")
            lines.append(f"{n:<{width}}" + "".join(cells))
        lines.append("")
    lines += [
        "Values in %; * = best per column; ID is the positive class.",
        "FPR@95: fraction of OOD scored >= the k-th largest ID score, k = floor(0.95 n_id) "
        "(lower is better).",
        "AUPR-In / AUPR-Out: trapezoidal area under the precision-recall curve, ID / OOD positive.",
    ]
    return "\n".join(lines)
