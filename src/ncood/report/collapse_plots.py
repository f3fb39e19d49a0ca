"""Figures of neural collapse (the reference write-up's Figures 7-14, plus depth and epochs).

Every function takes plain arrays or the dicts/results of :mod:`ncood.collapse` and
returns a :class:`matplotlib.figure.Figure` (Agg backend, nothing is shown). Colours are
the Okabe-Ito palette (Okabe & Ito 2008), distinguishable under common colour-vision
deficiencies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ncood.io import atomic_open  # noqa: E402

#: Okabe-Ito colour-blind-safe palette.
PALETTE = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

METRIC_LABELS = {
    "nc1": r"NC1  Tr($S_W S_B^+$)/C",
    "nc1_trace": r"Tr($S_W$)/Tr($S_B$)",
    "cdnv": "CDNV",
    "nc2_equinorm_means": "NC2 equinorm (means)",
    "nc2_equinorm_weights": "NC2 equinorm (weights)",
    "nc2_equiangular_means": "NC2 equiangular (means)",
    "nc2_equiangular_weights": "NC2 equiangular (weights)",
    "nc2_maxangle_means": "NC2 max-angle (means)",
    "nc2_maxangle_weights": "NC2 max-angle (weights)",
    "nc3": "NC3 self-duality",
    "nc4": "NC4 (classifier != NCC)",
    "ncc_acc": "NCC accuracy",
}


def _new(figsize=(7.0, 4.0), **kwargs) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots(**kwargs)
    return fig, ax


def _class_axis(ax, num: int, class_names: Sequence[str] | None, axis: str = "x") -> None:
    set_ticks = ax.set_xticks if axis == "x" else ax.set_yticks
    set_labels = ax.set_xticklabels if axis == "x" else ax.set_yticklabels
    if class_names is not None and len(class_names) == num and num <= 40:
        set_ticks(np.arange(num))
        set_labels(list(class_names), rotation=90 if axis == "x" else 0, fontsize=7)
    elif num <= 20:
        set_ticks(np.arange(num))


def plot_class_variance(
    variances: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    title: str = "NC1: within-class variance per class",
) -> Figure:
    """Bars of per-class ``mean ||z - mu_c||^2`` ``(C,)`` with their mean as a line."""
    v = np.asarray(variances, dtype=float)
    fig, ax = _new()
    ax.bar(np.arange(v.size), v, color=PALETTE[0], width=0.8)
    ax.axhline(v.mean(), color=PALETTE[3], ls="--", lw=1.2, label=f"mean = {v.mean():.4g}")
    _class_axis(ax, v.size, class_names)
    ax.set_xlabel("class")
    ax.set_ylabel(r"within-class variance  mean $\|z - \mu_c\|^2$")
    ax.set_title(title)
    ax.legend(frameon=False)
    return fig


def plot_cosine_histogram(
    mean_cosines: np.ndarray,
    num_classes: int,
    *,
    weight_cosines: np.ndarray | None = None,
    bins: int = 50,
    title: str | None = None,
) -> Figure:
    """Histogram of off-diagonal cosines with a line at the ETF value ``-1/(C-1)``.

    Args:
        mean_cosines: ``(C (C-1) / 2,)`` cosines of ``mu_i - mu_G``, ``mu_j - mu_G``.
        num_classes: ``C``.
        weight_cosines: optional cosines of classifier rows, overlaid.
    """
    fig, ax = _new()
    edges = np.linspace(-1.0, 1.0, bins + 1)
    mc = np.asarray(mean_cosines, dtype=float)
    ax.hist(
        mc,
        bins=edges,
        color=PALETTE[0],
        alpha=0.75,
        label=f"class means (mean {mc.mean():.4f}, std {mc.std():.4f})",
    )
    if weight_cosines is not None:
        wc = np.asarray(weight_cosines, dtype=float)
        ax.hist(
            wc,
            bins=edges,
            color=PALETTE[1],
            alpha=0.6,
            histtype="stepfilled",
            label=f"classifier rows (mean {wc.mean():.4f}, std {wc.std():.4f})",
        )
    etf = -1.0 / (num_classes - 1)
    ax.axvline(etf, color=PALETTE[7], ls="--", lw=1.5, label=f"simplex ETF  -1/(C-1) = {etf:.4f}")
    if title is None:
        title = "NC2: cosines between centred class means" + (
            " and between classifier rows" if weight_cosines is not None else ""
        )
    ax.set_xlim(-1.0, 1.0)
    ax.set_xlabel("cosine similarity (off-diagonal pairs)")
    ax.set_ylabel("number of class pairs")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return fig


def plot_weight_mean_alignment(
    cosines: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    title: str = r"NC3: alignment cos($w_c$, $\mu_c - \mu_G$)",
) -> Figure:
    """Bars of per-class ``cos(w_c, mu_c - mu_G)`` ``(C,)``; 1 at perfect self-duality."""
    cos = np.asarray(cosines, dtype=float)
    fig, ax = _new()
    colors = np.where(cos >= 0, PALETTE[2], PALETTE[3])
    ax.bar(np.arange(cos.size), cos, color=colors, width=0.8)
    ax.axhline(cos.mean(), color=PALETTE[7], ls="--", lw=1.2, label=f"mean = {cos.mean():.3f}")
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_ylim(min(-1.0, cos.min() * 1.05), 1.0)
    _class_axis(ax, cos.size, class_names)
    ax.set_xlabel("class")
    ax.set_ylabel("cosine similarity")
    ax.set_title(title)
    ax.legend(frameon=False)
    return fig


def plot_mean_distances(
    distances: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    title: str = "L2 distances between class means",
) -> Figure:
    """Heatmap of ``||mu_i - mu_j||`` ``(C, C)`` with a colorbar."""
    d = np.asarray(distances, dtype=float)
    fig, ax = _new(figsize=(6.2, 5.2))
    im = ax.imshow(d, cmap="cividis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=r"$\|\mu_i - \mu_j\|_2$")
    _class_axis(ax, d.shape[0], class_names, "x")
    _class_axis(ax, d.shape[0], class_names, "y")
    ax.set_xlabel("class")
    ax.set_ylabel("class")
    ax.set_title(title)
    return fig


def _log_lines(ax, x, series: Mapping[str, np.ndarray], labels: Mapping[str, str]) -> None:
    for i, (key, y) in enumerate(series.items()):
        y = np.asarray(y, dtype=float)
        y = np.where(y > 0, y, np.nan)  # log axis: zero/negative values are not drawn
        ax.plot(
            x,
            y,
            marker=_MARKERS[i % len(_MARKERS)],
            color=PALETTE[i % len(PALETTE)],
            label=labels.get(key, key),
        )
    ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)


def plot_depth(
    depth,
    *,
    metrics: Sequence[str] = ("nc1", "nc1_trace", "cdnv"),
    title: str = "Collapse vs depth",
) -> Figure:
    """Metrics of each layer (log y), one line per metric, decay rate in the legend.

    Args:
        depth: a :class:`ncood.collapse.depth.DepthResult` (or its ``to_dict()``).
        metrics: which metrics to draw (those missing in some layer are drawn where present).
    """
    d = depth.to_dict() if hasattr(depth, "to_dict") else depth
    layers = list(d["layers"])
    x = np.arange(len(layers))
    series, labels = {}, {}
    for key in metrics:
        vals = [d["metrics"][n].get(key) for n in layers]
        if all(v is None for v in vals):
            continue
        series[key] = np.array([np.nan if v is None else v for v in vals], dtype=float)
        label = METRIC_LABELS.get(key, key)
        fit = d.get("decay", {}).get(key)
        if fit and fit.get("factor") is not None:
            r2 = "" if fit.get("r2") is None else f", $R^2$={fit['r2']:.2f}"
            label += f"  (x{fit['factor']:.3g}/layer{r2})"
        labels[key] = label
    fig, ax = _new(figsize=(7.5, 4.5))
    _log_lines(ax, x, series, labels)
    ax.set_xticks(x)
    ax.set_xticklabels(
        [f"{n}\n(d={d['metrics'][n]['dim']})" for n in layers],
        fontsize=8,
        rotation=30 if len(layers) > 6 else 0,
    )
    ax.set_xlabel("layer (shallow to deep)")
    ax.set_ylabel("metric value (log scale)")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return fig


def plot_epochs(
    result,
    *,
    metrics: Sequence[str] = ("nc1", "nc2_equiangular_means", "nc2_equinorm_means", "nc3", "nc4"),
    title: str = "Collapse during training",
) -> Figure:
    """Metrics vs epoch (log y) above the training error; NC5 per OOD set included.

    A dashed vertical line marks the first epoch with zero training error (the start of
    the terminal phase of training, Papyan et al. 2020), if there is one.

    Args:
        result: a :class:`ncood.collapse.epochs.EpochResult` (or its ``to_dict()``).
        metrics: scalar metrics to draw; ``nc5/<ood>`` lines are added for every OOD set.
    """
    d = result.to_dict() if hasattr(result, "to_dict") else result
    epochs = np.asarray(d["epochs"], dtype=float)
    rows = d["table"]
    series, labels = {}, {}
    for key in list(metrics) + [f"nc5/{n}" for n in d.get("ood", [])]:
        vals = [r.get(key) for r in rows]
        if all(v is None for v in vals):
            continue
        series[key] = np.array([np.nan if v is None else v for v in vals], dtype=float)
        labels[key] = (
            f"NC5 OrthoDev ({key[4:]})" if key.startswith("nc5/") else METRIC_LABELS.get(key, key)
        )
    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    ax, ax_err = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    _log_lines(ax, epochs, series, labels)
    err = np.array([np.nan if r["train_error"] is None else r["train_error"] for r in rows])
    ax_err.plot(epochs, 100.0 * err, color=PALETTE[7], marker="o", ms=3)
    ax_err.set_ylabel("train error (%)")
    ax_err.set_xlabel("epoch")
    ax_err.grid(True, alpha=0.3)
    zero = d.get("zero_error_epoch")
    for a in (ax, ax_err):
        if zero is not None:
            a.axvline(
                zero,
                color="0.35",
                ls="--",
                lw=1.2,
                label=f"zero train error (epoch {zero})" if a is ax else None,
            )
    ax.set_ylabel("metric value (log scale)")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8, ncol=2)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Save ``fig`` as PNG atomically (figures here are not registered with pyplot)."""
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    return path


def save_collapse_figures(
    metrics: Mapping[str, Any],
    out_dir: str | os.PathLike,
    prefix: str = "collapse",
    *,
    class_names: Sequence[str] | None = None,
) -> list[Path]:
    """The per-class figures of one :func:`collapse_metrics` (or :func:`layer_metrics`) result.

    Writes ``{prefix}_class_variance.png``, ``{prefix}_cosines.png``,
    ``{prefix}_alignment.png`` (needs a head) and ``{prefix}_distances.png`` to ``out_dir``.

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    c = int(metrics["num_classes"])
    paths = [
        save_figure(
            plot_class_variance(metrics["within_class_variance"], class_names=class_names),
            out / f"{prefix}_class_variance.png",
        ),
    ]
    if "mean_cosines" in metrics:
        paths.append(
            save_figure(
                plot_cosine_histogram(
                    metrics["mean_cosines"], c, weight_cosines=metrics.get("weight_cosines")
                ),
                out / f"{prefix}_cosines.png",
            )
        )
    if "weight_mean_cosine" in metrics:
        paths.append(
            save_figure(
                plot_weight_mean_alignment(metrics["weight_mean_cosine"], class_names=class_names),
                out / f"{prefix}_alignment.png",
            )
        )
    paths.append(
        save_figure(
            plot_mean_distances(metrics["mean_distances"], class_names=class_names),
            out / f"{prefix}_distances.png",
        )
    )
    return paths
