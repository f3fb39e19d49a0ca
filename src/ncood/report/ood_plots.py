"""Figures of training and OOD detection: training curves, score distributions, ROC curves,
regime comparison and detector AUROC per layer.

Every function returns a :class:`matplotlib.figure.Figure` (Agg backend, never shown and
not registered with pyplot, so nothing leaks between calls). Each detector has one colour
in every figure (:func:`detector_color`), taken from the Okabe-Ito palette (Okabe & Ito
2008), which stays distinguishable under common colour-vision deficiencies. Scores follow
the toolkit's sign: higher = more in-distribution; ID is the positive class.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

DPI = 110  # figures are read on screen; 110 dpi keeps the embedded PNGs small and sharp

#: Okabe-Ito colour per detector (same in every figure of a report).
DETECTOR_COLORS: dict[str, str] = {
    "msp": "#E69F00",  # orange
    "maxlogit": "#56B4E9",  # sky blue
    "energy": "#009E73",  # bluish green
    "mahalanobis": "#0072B2",  # blue
    "vim": "#D55E00",  # vermillion
    "neco": "#CC79A7",  # reddish purple
}
_EXTRA_COLORS = ("#000000", "#999999", "#882255", "#117733", "#332288", "#AA4499")
_MARKERS = {"msp": "o", "maxlogit": "s", "energy": "^", "mahalanobis": "D", "vim": "v", "neco": "P"}
OOD_COLOR = "#3A3A3A"  # OOD histograms: dark grey outline, whatever the detector
TRAIN_COLOR, TEST_COLOR = "#0072B2", "#D55E00"
REGIME_HATCHES = ("", "///", "...", "xx", "\\\\")


def detector_color(name: str) -> str:
    """The colour of detector ``name`` (stable across figures and runs)."""
    if name in DETECTOR_COLORS:
        return DETECTOR_COLORS[name]
    return _EXTRA_COLORS[sum(map(ord, name)) % len(_EXTRA_COLORS)]


def detector_marker(name: str) -> str:
    """The line marker of detector ``name``."""
    return _MARKERS.get(name, "X")


def figure_png(fig: Figure, *, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _finite(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _fpr95_point(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[float, float]:
    """``(FPR, TPR)`` at the FPR@95 threshold: the k-th largest ID score, k = floor(0.95 n)."""
    k = max(1, math.floor(0.95 * id_scores.size))
    threshold = np.partition(id_scores, id_scores.size - k)[id_scores.size - k]
    return float(np.mean(ood_scores >= threshold)), float(np.mean(id_scores >= threshold))


# ---------------------------------------------------------------------------------------


def plot_training_curves(results: Mapping[str, Any]) -> Figure:
    """Loss (top) and accuracy (bottom) per epoch, train vs test, one column per regime.

    Rows share their y axis so the regimes can be compared at a glance.

    Args:
        results: a results dict (docs/results_schema.md); uses ``regimes.*.history``.
    """
    regimes = list(results.get("regimes", {}))
    n = max(1, len(regimes))
    fig = Figure(figsize=(4.2 * n + 0.6, 6.0), layout="constrained")
    axes = np.atleast_2d(fig.subplots(2, n, sharey="row", squeeze=False))
    for j, reg in enumerate(regimes):
        hist = results["regimes"][reg].get("history") or []
        ax_loss, ax_acc = axes[0, j], axes[1, j]
        ax_loss.set_title(reg)
        if not hist:
            _empty(ax_loss, "no training history")
            _empty(ax_acc, "no training history")
            continue
        ep = [h.get("epoch") for h in hist]
        for key, color, ls, label in (
            ("train", TRAIN_COLOR, "-", "train"),
            ("test", TEST_COLOR, "--", "test"),
        ):
            loss = [h.get(f"{key}_loss", np.nan) for h in hist]
            acc = [
                100.0 * h[f"{key}_acc"] if h.get(f"{key}_acc") is not None else np.nan for h in hist
            ]
            ax_loss.plot(ep, loss, ls=ls, marker="o", ms=3, color=color, label=label)
            ax_acc.plot(ep, acc, ls=ls, marker="o", ms=3, color=color, label=label)
        for ax in (ax_loss, ax_acc):
            ax.grid(True, alpha=0.3)
            ax.set_xlabel("epoch")
        ax_loss.legend(frameon=False, fontsize=8)
    axes[0, 0].set_ylabel("cross-entropy loss")
    axes[1, 0].set_ylabel("accuracy (%)")
    fig.suptitle("Training curves (train vs test)")
    return fig


def plot_score_distributions(
    scores: Mapping[str, np.ndarray],
    regime: str,
    detectors: Sequence[str],
    ood_sets: Sequence[str],
    *,
    aurocs: Mapping[str, Mapping[str, float]] | None = None,
    bins: int = 40,
) -> Figure:
    """Score histograms (densities), ID test vs each OOD set, for every detector.

    Rows are detectors, columns OOD sets. The ID histogram is filled in the detector's
    colour, the OOD one is a dark outline. Bins span the 0.5-99.5 percentiles of the
    pooled scores so that a few extreme scores do not flatten the plot.

    Args:
        scores: ``"<regime>/<detector>/<split>" -> (n,)`` scores (split ``id`` or an OOD set).
        regime: the regime to draw.
        detectors: rows, in order.
        ood_sets: columns, in order.
        aurocs: ``detector -> ood_set -> AUROC`` to annotate (computed from the scores
            where missing).
    """
    nr, nc = max(1, len(detectors)), max(1, len(ood_sets))
    fig = Figure(figsize=(3.3 * nc + 0.4, 1.75 * nr + 0.8), layout="constrained")
    axes = fig.subplots(nr, nc, squeeze=False)
    for i, det in enumerate(detectors):
        id_key = f"{regime}/{det}/id"
        for j, ood in enumerate(ood_sets):
            ax = axes[i, j]
            ood_key = f"{regime}/{det}/{ood}"
            if id_key not in scores or ood_key not in scores:
                _empty(ax, "scores not saved")
            else:
                s_id, s_ood = _finite(scores[id_key]), _finite(scores[ood_key])
                pooled = np.r_[s_id, s_ood]
                lo, hi = np.percentile(pooled, [0.5, 99.5]) if pooled.size else (0.0, 1.0)
                if not hi > lo:
                    lo, hi = lo - 0.5, hi + 0.5
                edges = np.linspace(lo, hi, bins + 1)
                color = detector_color(det)
                # one stairs artist per histogram (ax.hist draws a patch per bin: slow)
                h_id, _ = np.histogram(np.clip(s_id, lo, hi), bins=edges, density=True)
                h_ood, _ = np.histogram(np.clip(s_ood, lo, hi), bins=edges, density=True)
                ax.stairs(h_id, edges, fill=True, color=color, alpha=0.55, label="ID test")
                ax.stairs(h_ood, edges, color=OOD_COLOR, lw=1.3, label=ood)
                auc = (aurocs or {}).get(det, {}).get(ood)
                if auc is None and s_id.size and s_ood.size:
                    y = np.r_[np.ones(s_id.size), np.zeros(s_ood.size)]
                    auc = roc_auc_score(y, pooled)
                if auc is not None:
                    ax.text(
                        0.02,
                        0.95,
                        f"AUROC {100 * auc:.1f}%",
                        transform=ax.transAxes,
                        ha="left",
                        va="top",
                        fontsize=8,
                        bbox={
                            "boxstyle": "round,pad=0.2",
                            "fc": "white",
                            "ec": "0.8",
                            "alpha": 0.85,
                        },
                    )
                ax.tick_params(labelsize=7)
                ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # fewer labels: faster, legible
                ax.set_yticks([])
                if j == 0 or i == 0:
                    ax.legend(frameon=False, fontsize=7, loc="upper right")
            if i == 0:
                ax.set_title(f"ID vs {ood}", fontsize=10)
            if j == 0:
                ax.set_ylabel(f"{det}\ndensity", fontsize=9)
            if i == nr - 1:
                ax.set_xlabel("score (higher = ID)", fontsize=8)
    fig.suptitle(f"Score distributions, {regime}")
    return fig


def plot_roc_curves(
    scores: Mapping[str, np.ndarray],
    regime: str,
    detectors: Sequence[str],
    ood_sets: Sequence[str],
    *,
    aurocs: Mapping[str, Mapping[str, float]] | None = None,
) -> Figure:
    """ROC curves (ID positive), one panel per OOD set, one line per detector.

    The legend gives each detector's AUROC; a dot marks its FPR@95 operating point (the
    threshold that keeps 95% of ID samples, ``k = floor(0.95 n_id)``-th largest ID score).
    """
    nc = max(1, len(ood_sets))
    fig = Figure(figsize=(3.9 * nc + 0.4, 4.3), layout="constrained")
    axes = fig.subplots(1, nc, squeeze=False)[0]
    for j, ood in enumerate(ood_sets):
        ax = axes[j]
        drawn = 0
        for det in detectors:
            id_key, ood_key = f"{regime}/{det}/id", f"{regime}/{det}/{ood}"
            if id_key not in scores or ood_key not in scores:
                continue
            s_id, s_ood = _finite(scores[id_key]), _finite(scores[ood_key])
            if not (s_id.size and s_ood.size):
                continue
            y = np.r_[np.ones(s_id.size), np.zeros(s_ood.size)]
            s = np.r_[s_id, s_ood]
            fpr, tpr, _ = roc_curve(y, s)
            auc = (aurocs or {}).get(det, {}).get(ood)
            if auc is None:
                auc = roc_auc_score(y, s)
            color = detector_color(det)
            ax.plot(fpr, tpr, color=color, lw=1.6, label=f"{det} ({100 * auc:.1f}%)")
            f95, t95 = _fpr95_point(s_id, s_ood)
            ax.plot([f95], [t95], "o", color=color, ms=6.5, mec="black", mew=0.8, zorder=5)
            drawn += 1
        if not drawn:
            _empty(ax, "scores not saved")
        else:
            ax.plot([0, 1], [0, 1], ls=":", color="0.6", lw=1)
            ax.axhline(0.95, ls="--", color="0.75", lw=0.8)
            ax.text(0.01, 0.965, "TPR 95%", ha="left", va="bottom", fontsize=7, color="0.45")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.01)
            ax.set_aspect("equal")
            ax.legend(
                frameon=False,
                fontsize=7.5,
                loc="lower right",
                title="detector (AUROC)",
                title_fontsize=7.5,
            )
            ax.grid(True, alpha=0.25)
        ax.set_title(f"ID vs {ood}", fontsize=10)
        ax.set_xlabel("false positive rate (OOD accepted as ID)", fontsize=8)
        if j == 0:
            ax.set_ylabel("true positive rate (ID accepted)", fontsize=8)
    fig.suptitle(f"ROC curves, {regime} (dots: FPR@95 operating points)")
    return fig


def plot_regime_comparison(
    results: Mapping[str, Any],
    detectors: Sequence[str],
    ood_sets: Sequence[str],
    *,
    metric: str = "auroc",
) -> Figure:
    """Grouped bars of a metric (AUROC by default) per detector, one bar per regime.

    One panel per OOD set; bars keep their detector's colour, regimes differ by hatch.
    A dotted line marks chance (50%) for AUROC.
    """
    regimes = list(results.get("regimes", {}))
    nc = max(1, len(ood_sets))
    fig = Figure(
        figsize=(max(3.6, 0.3 * len(detectors) * len(regimes) + 0.8) * nc + 0.5, 4.2),
        layout="constrained",
    )
    axes = fig.subplots(1, nc, sharey=True, squeeze=False)[0]
    width = 0.8 / max(1, len(regimes))
    x = np.arange(len(detectors))
    for j, ood in enumerate(ood_sets):
        ax = axes[j]
        for k, reg in enumerate(regimes):
            per_det = results["regimes"][reg].get("ood", {})
            vals = [per_det.get(d, {}).get(ood, {}).get(metric) for d in detectors]
            heights = [100.0 * v if v is not None else 0.0 for v in vals]
            hatch = REGIME_HATCHES[k % len(REGIME_HATCHES)]
            for i, det in enumerate(detectors):
                color = detector_color(det)
                ax.bar(
                    x[i] + (k - (len(regimes) - 1) / 2) * width,
                    heights[i],
                    width * 0.95,
                    color=color if k == 0 else "white",
                    edgecolor=color,
                    hatch=hatch,
                    lw=1.0,
                )
        if metric == "auroc":
            ax.axhline(50, ls=":", color="0.4", lw=1)
        ax.set_xticks(x)
        ax.set_xticklabels(detectors, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_title(f"ID vs {ood}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel(f"{metric.upper().replace('_', '-')} (%)")
    handles = [
        Patch(
            facecolor="0.45" if k == 0 else "white",
            edgecolor="0.3",
            hatch=REGIME_HATCHES[k % len(REGIME_HATCHES)],
            label=reg,
        )
        for k, reg in enumerate(regimes)
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncols=len(regimes), frameon=False, fontsize=9
    )
    fig.suptitle(f"Regimes compared: {metric.upper().replace('_', '-')} per detector and OOD set")
    return fig


def plot_depth_auroc(results: Mapping[str, Any], regime: str) -> Figure | None:
    """AUROC of the per-layer detectors vs depth, one panel per OOD set (None if absent).

    Args:
        results: a results dict; uses ``regimes.<regime>.depth.ood_auroc``
            (``layer -> detector -> ood_set -> AUROC``).
        regime: the regime to draw.
    """
    depth = results["regimes"][regime].get("depth") or {}
    per_layer = depth.get("ood_auroc") or {}
    layers = [lay for lay in depth.get("layers", []) if lay in per_layer]
    layers += [lay for lay in per_layer if lay not in layers]
    if not layers:
        return None
    dets = list(dict.fromkeys(d for lay in layers for d in per_layer[lay]))
    oods = list(
        dict.fromkeys(o for lay in layers for d in per_layer[lay] for o in per_layer[lay][d])
    )
    fig = Figure(figsize=(3.8 * len(oods) + 0.4, 3.8), layout="constrained")
    axes = fig.subplots(1, len(oods), sharey=True, squeeze=False)[0]
    x = np.arange(len(layers))
    for j, ood in enumerate(oods):
        ax = axes[j]
        for det in dets:
            y = [per_layer[lay].get(det, {}).get(ood) for lay in layers]
            y = [100.0 * v if v is not None else np.nan for v in y]
            ax.plot(x, y, marker=detector_marker(det), color=detector_color(det), label=det)
        ax.axhline(50, ls=":", color="0.4", lw=1)
        ax.set_xticks(x)
        ax.set_xticklabels(layers, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"ID vs {ood}", fontsize=10)
        ax.set_xlabel("layer (shallow to deep)", fontsize=8)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("AUROC (%)")
    axes[0].legend(frameon=False, fontsize=8, loc="best")
    fig.suptitle(f"Detector AUROC vs depth, {regime}")
    return fig
