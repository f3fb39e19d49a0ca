"""Figures of a report: training curves, OOD detection, neural collapse, depth and epochs.

Every function takes columns of a :class:`~ncood.results.Results` (pivoted as
DataFrames, or per-class arrays) or raw scores, and returns a
:class:`matplotlib.figure.Figure` (Agg backend, never shown, not registered with pyplot).
Each detector keeps one colour in every figure, from the Okabe-Ito palette (Okabe & Ito
2008), which stays distinguishable under common colour-vision deficiencies. Scores follow
the toolkit's sign (higher = more in-distribution); ID is the positive class.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from ncood.metrics import fpr_at_tpr_point  # noqa: E402

DPI = 110  # read on screen; 110 dpi keeps the embedded PNGs small and sharp
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#999999")
DETECTOR_COLORS = {
    "msp": "#E69F00",
    "maxlogit": "#56B4E9",
    "energy": "#009E73",
    "mahalanobis": "#0072B2",
    "vim": "#D55E00",
    "neco": "#CC79A7",
}
_EXTRA = ("#000000", "#999999", "#882255", "#117733", "#332288", "#AA4499")
# colours for detectors without a fixed one, when a figure draws several: _EXTRA, then
# Paul Tol's "muted" scheme (distinguishable under colour-vision deficiencies as well)
_MORE = (*_EXTRA, "#44AA99", "#999933", "#CC6677", "#DDCC77", "#88CCEE", "#661100")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
OOD_COLOR = "#3A3A3A"  # OOD histograms: dark outline whatever the detector
HATCHES = ("", "///", "...", "xx", "\\\\")
LABELS = {
    "nc1": r"NC1  Tr($S_W S_B^+$)/C",
    "nc1_trace": r"Tr($S_W$)/Tr($S_B$)",
    "cdnv": "CDNV",
    "nc2_equinorm_means": "NC2 equinorm (means)",
    "nc2_equiangular_means": "NC2 equiangular (means)",
    "nc2_maxangle_means": "NC2 max-angle (means)",
    "nc3": "NC3 self-duality",
    "nc4": "NC4 (classifier != NCC)",
}


def detector_color(name: str) -> str:
    """The colour of detector ``name`` (the same in every figure and run)."""
    return DETECTOR_COLORS.get(name) or _EXTRA[sum(map(ord, name)) % len(_EXTRA)]


def detector_colors(names: Sequence[str]) -> dict[str, str]:
    """A distinct colour for each of ``names`` (up to 18 detectors).

    Detectors with a fixed colour keep it (:func:`detector_color`); the others take their
    usual colour unless a detector before them in ``names`` has it, then the next free one.
    So a figure never draws two detectors in one colour, and figures that draw the same
    detectors draw them alike.
    """
    out = {n: DETECTOR_COLORS[n] for n in names if n in DETECTOR_COLORS}
    taken = set(out.values())
    for n in names:
        if n in out:
            continue
        start = _MORE.index(detector_color(n))
        free = [_MORE[(start + k) % len(_MORE)] for k in range(len(_MORE))]
        out[n] = next((c for c in free if c not in taken), free[0])
        taken.add(out[n])
    return out


def png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _grid(rows: int, cols: int, size: tuple[float, float], **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(size[0] * cols + 0.5, size[1] * rows + 0.8), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, **kw)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def training_curves(history: pd.DataFrame, regimes: Sequence[str]) -> Figure:
    """Loss (top) and accuracy (bottom) per epoch, train vs test, one column per regime.

    Args:
        history: training-history rows (``regime, epoch, metric, value``); several seeds
            are averaged.
    """
    fig, axes = _grid(2, max(1, len(regimes)), (4.2, 2.6), sharey="row")
    for j, reg in enumerate(regimes):
        df = history[history["regime"] == reg]
        curves = df.pivot_table(index="epoch", columns="metric", values="value", aggfunc="mean")
        axes[0, j].set_title(reg)
        for i, kind in enumerate(("loss", "acc")):
            ax = axes[i, j]
            for split, color, ls in (("train", PALETTE[0], "-"), ("test", PALETTE[3], "--")):
                if f"{split}_{kind}" in curves:
                    y = curves[f"{split}_{kind}"] * (100.0 if kind == "acc" else 1.0)
                    ax.plot(curves.index, y, ls=ls, marker="o", ms=3, color=color, label=split)
            if not ax.lines:
                _empty(ax, "no training history")
                continue
            ax.grid(True, alpha=0.3)
            ax.set_xlabel("epoch")
            ax.legend(frameon=False, fontsize=8)
    axes[0, 0].set_ylabel("cross-entropy loss")
    axes[1, 0].set_ylabel("accuracy (%)")
    fig.suptitle("Training curves (train vs test)")
    return fig


def regime_bars(
    auroc: pd.DataFrame, oods: Sequence[str], colors: Mapping[str, str] | None = None
) -> Figure:
    """Grouped AUROC bars per detector, one bar per regime, one panel per OOD set.

    Args:
        auroc: AUROC fractions indexed by detector, columns ``(regime, ood)``.
        colors: detector -> colour (default :func:`detector_colors` of the index).
    """
    regimes = list(dict.fromkeys(auroc.columns.get_level_values(0)))
    dets = list(auroc.index)
    palette = colors or detector_colors(dets)
    fig, axes = _grid(
        1, len(oods), (max(3.6, 0.3 * len(dets) * len(regimes) + 0.8), 3.4), sharey=True
    )
    width = 0.8 / len(regimes)
    x = np.arange(len(dets))
    for ax, ood in zip(axes[0], oods, strict=True):
        for k, reg in enumerate(regimes):
            y = 100.0 * auroc.get((reg, ood), pd.Series(np.nan, index=dets)).to_numpy(float)
            colors = [palette.get(d) or detector_color(d) for d in dets]
            ax.bar(
                x + (k - (len(regimes) - 1) / 2) * width,
                np.nan_to_num(y),
                width * 0.95,
                color=colors if k == 0 else "white",
                edgecolor=colors,
                hatch=HATCHES[k % len(HATCHES)],
            )
        ax.axhline(50, ls=":", color="0.4", lw=1)
        ax.set_xticks(x, dets, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_title(f"ID vs {ood}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("AUROC (%)")
    handles = [
        Patch(
            facecolor="0.45" if k == 0 else "white", edgecolor="0.3", hatch=HATCHES[k % 5], label=r
        )
        for k, r in enumerate(regimes)
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(regimes), frameon=False)
    fig.suptitle("Regimes compared: AUROC per detector and OOD set")
    return fig


def _pair(scores: Mapping[str, np.ndarray], regime: str, det: str, ood: str):
    a, b = scores.get(f"{regime}/{det}/id"), scores.get(f"{regime}/{det}/{ood}")
    if a is None or b is None:
        return None
    return np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)


def score_histograms(
    scores: Mapping[str, np.ndarray],
    regime: str,
    dets: Sequence[str],
    oods: Sequence[str],
    auroc: Mapping[tuple[str, str], float],
    bins: int = 40,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Score densities, ID test (filled) vs each OOD set (outline); rows detectors.

    Bins span the 0.5-99.5 percentiles of the pooled scores, so that a few extreme scores
    do not flatten the plot; ``auroc[(det, ood)]`` is printed in each panel. ``colors``:
    detector -> colour (default :func:`detector_colors` of ``dets``).
    """
    palette = colors or detector_colors(dets)
    fig, axes = _grid(len(dets), len(oods), (3.3, 1.75))
    for (i, det), (j, ood) in ((a, b) for a in enumerate(dets) for b in enumerate(oods)):
        ax, pair = axes[i, j], _pair(scores, regime, det, ood)
        if pair is None:
            _empty(ax, "scores not saved")
        else:
            lo, hi = np.percentile(np.r_[pair], [0.5, 99.5])
            edges = (
                np.linspace(lo, hi, bins + 1)
                if hi > lo
                else np.linspace(lo - 0.5, hi + 0.5, bins + 1)
            )
            for s, fill, color, label in (
                (pair[0], True, palette.get(det) or detector_color(det), "ID test"),
                (pair[1], False, OOD_COLOR, ood),
            ):
                h, _ = np.histogram(np.clip(s, edges[0], edges[-1]), bins=edges, density=True)
                ax.stairs(
                    h, edges, fill=fill, color=color, alpha=0.55 if fill else 1, lw=1.3, label=label
                )
            if (det, ood) in auroc:
                ax.text(
                    0.02,
                    0.95,
                    f"AUROC {100 * auroc[(det, ood)]:.1f}%",
                    transform=ax.transAxes,
                    va="top",
                    fontsize=8,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.8"},
                )
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            ax.set_yticks([])
            if i == 0 or j == 0:
                ax.legend(frameon=False, fontsize=7, loc="upper right")
        if i == 0:
            ax.set_title(f"ID vs {ood}", fontsize=10)
        if j == 0:
            ax.set_ylabel(f"{det}\ndensity", fontsize=9)
        if i == len(dets) - 1:
            ax.set_xlabel("score (higher = ID)", fontsize=8)
    fig.suptitle(f"Score distributions, {regime}")
    return fig


def roc_curves(
    scores: Mapping[str, np.ndarray],
    regime: str,
    dets: Sequence[str],
    oods: Sequence[str],
    auroc: Mapping[tuple[str, str], float],
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """ROC curves (ID positive), one panel per OOD set, one line per detector.

    A dot marks each detector's FPR@95 operating point (:func:`ncood.metrics.fpr_at_tpr_point`).
    ``colors``: detector -> colour (default :func:`detector_colors` of ``dets``).
    """
    palette = colors or detector_colors(dets)
    fig, axes = _grid(1, len(oods), (3.9, 3.5))
    for ax, ood in zip(axes[0], oods, strict=True):
        for det in dets:
            pair = _pair(scores, regime, det, ood)
            if pair is None:
                continue
            y = np.r_[np.ones(pair[0].size), np.zeros(pair[1].size)]
            fpr, tpr, _ = roc_curve(y, np.r_[pair])
            color = palette.get(det) or detector_color(det)
            label = f"{det} ({100 * auroc[(det, ood)]:.1f}%)" if (det, ood) in auroc else det
            ax.plot(fpr, tpr, color=color, lw=1.6, label=label)
            point = fpr_at_tpr_point(*pair)
            ax.plot(
                [point.fpr], [point.tpr], "o", color=color, ms=6.5, mec="black", mew=0.8, zorder=5
            )
        if not ax.lines:
            _empty(ax, "scores not saved")
        else:
            ax.plot([0, 1], [0, 1], ls=":", color="0.6", lw=1)
            ax.axhline(0.95, ls="--", color="0.75", lw=0.8)
            ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
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
    axes[0, 0].set_ylabel("true positive rate (ID accepted)", fontsize=8)
    fig.suptitle(f"ROC curves, {regime} (dots: FPR@95 operating points)")
    return fig


def _class_ticks(ax, n: int, names: Sequence[str] | None, axis: str = "x") -> None:
    if names is not None and len(names) == n and n <= 40:
        getattr(ax, f"set_{axis}ticks")(
            np.arange(n), list(names), rotation=90 if axis == "x" else 0, fontsize=7
        )
    elif n <= 20:
        getattr(ax, f"set_{axis}ticks")(np.arange(n))


def class_bars(
    values: np.ndarray, names: Sequence[str] | None, *, title: str, ylabel: str
) -> Figure:
    """Bars of a per-class value ``(C,)`` with their mean as a dashed line."""
    v = np.asarray(values, dtype=float)
    fig, axes = _grid(1, 1, (6.5, 3.2))
    ax = axes[0, 0]
    ax.bar(np.arange(v.size), v, color=np.where(v >= 0, PALETTE[0], PALETTE[3]), width=0.8)
    ax.axhline(v.mean(), color=PALETTE[6], ls="--", lw=1.2, label=f"mean = {v.mean():.4g}")
    _class_ticks(ax, v.size, names)
    ax.set(xlabel="class", ylabel=ylabel, title=title)
    ax.legend(frameon=False)
    return fig


def cosine_histogram(
    means: np.ndarray, weights: np.ndarray | None, num_classes: int, *, title: str
) -> Figure:
    """Histogram of the pair cosines ``(C(C-1)/2,)`` with a line at the ETF value ``-1/(C-1)``."""
    fig, axes = _grid(1, 1, (6.5, 3.2))
    ax = axes[0, 0]
    edges = np.linspace(-1.0, 1.0, 51)
    for k, (v, label) in enumerate(((means, "class means"), (weights, "classifier rows"))):
        if v is not None and len(v):
            v = np.asarray(v, dtype=float)
            ax.hist(
                v,
                bins=edges,
                color=PALETTE[k],
                alpha=0.7 - 0.1 * k,
                label=f"{label} (mean {v.mean():.4f}, std {v.std():.4f})",
            )
    etf = -1.0 / (num_classes - 1)
    ax.axvline(etf, color=PALETTE[6], ls="--", lw=1.5, label=f"simplex ETF  -1/(C-1) = {etf:.4f}")
    ax.set(
        xlim=(-1, 1),
        xlabel="cosine similarity (class pairs)",
        ylabel="number of class pairs",
        title=title,
    )
    ax.legend(frameon=False, fontsize=8)
    return fig


def heatmap(matrix: np.ndarray, names: Sequence[str] | None, *, title: str, label: str) -> Figure:
    """A ``(C, C)`` matrix as a heatmap with a colour bar."""
    fig, axes = _grid(1, 1, (5.6, 4.4))
    ax = axes[0, 0]
    fig.colorbar(ax.imshow(matrix, cmap="cividis", interpolation="nearest"), ax=ax, label=label)
    _class_ticks(ax, len(matrix), names, "x")
    _class_ticks(ax, len(matrix), names, "y")
    ax.set(xlabel="class", ylabel="class", title=title)
    return fig


def _log_lines(ax, x, table: pd.DataFrame, labels: Mapping[str, str]) -> None:
    for k, col in enumerate(table.columns):
        y = table[col].to_numpy(float)
        ax.plot(
            x,
            np.where(y > 0, y, np.nan),
            marker=MARKERS[k % 8],
            color=PALETTE[k % 8],
            label=labels.get(col, col),
        )
    ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(frameon=False, fontsize=8, ncol=2)


def depth_lines(per_layer: pd.DataFrame, labels: Mapping[str, str], *, title: str) -> Figure:
    """Collapse metrics per layer (log y), shallow to deep; ``per_layer``: layer x metric."""
    fig, axes = _grid(1, 1, (7.0, 3.6))
    ax = axes[0, 0]
    x = np.arange(len(per_layer))
    _log_lines(ax, x, per_layer, {m: LABELS.get(m, m) + labels.get(m, "") for m in per_layer})
    ax.set_xticks(x, list(per_layer.index), fontsize=8)
    ax.set(xlabel="layer (shallow to deep)", ylabel="metric value (log scale)", title=title)
    return fig


def epoch_lines(
    per_epoch: pd.DataFrame, train_error: pd.Series, zero: int | None, *, title: str
) -> Figure:
    """Metrics per snapshot (log y) above the training error; ``per_epoch``: epoch x metric.

    A dashed line marks ``zero``, the first snapshot with zero training error (the start of
    the terminal phase, Papyan, Han & Donoho 2020).
    """
    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    ax, ax_err = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    _log_lines(
        ax,
        per_epoch.index.to_numpy(float),
        per_epoch,
        {**LABELS, **{c: f"NC5 OrthoDev ({c[4:]})" for c in per_epoch if c.startswith("nc5 ")}},
    )
    ax_err.plot(
        train_error.index, 100.0 * train_error.to_numpy(float), color=PALETTE[6], marker="o", ms=3
    )
    ax_err.set(ylabel="train error (%)", xlabel="epoch")
    ax_err.grid(True, alpha=0.3)
    if zero is not None:
        for a in (ax, ax_err):
            a.axvline(zero, color="0.35", ls="--", lw=1.2, label=f"zero train error (epoch {zero})")
        ax.legend(frameon=False, fontsize=8, ncol=2)
    ax.set(ylabel="metric value (log scale)", title=title)
    return fig


def layer_auroc(
    auroc: pd.DataFrame, *, title: str, colors: Mapping[str, str] | None = None
) -> Figure:
    """AUROC per layer, one panel per OOD set; ``auroc``: layer x (detector, ood) fractions."""
    oods = list(dict.fromkeys(auroc.columns.get_level_values(1)))
    palette = colors or detector_colors(list(dict.fromkeys(auroc.columns.get_level_values(0))))
    fig, axes = _grid(1, len(oods), (3.8, 3.0), sharey=True)
    x = np.arange(len(auroc))
    for ax, ood in zip(axes[0], oods, strict=True):
        for k, det in enumerate(dict.fromkeys(auroc.columns.get_level_values(0))):
            if (det, ood) in auroc:
                ax.plot(
                    x,
                    100 * auroc[(det, ood)],
                    marker=MARKERS[k % 8],
                    color=palette.get(det) or detector_color(det),
                    label=det,
                )
        ax.axhline(50, ls=":", color="0.4", lw=1)
        ax.set_xticks(x, list(auroc.index), rotation=30, ha="right", fontsize=8)
        ax.set_title(f"ID vs {ood}", fontsize=10)
        ax.set_xlabel("layer (shallow to deep)", fontsize=8)
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_ylabel("AUROC (%)")
    axes[0, 0].legend(frameon=False, fontsize=8)
    fig.suptitle(title)
    return fig


def nc1_auroc_scatter(points: pd.DataFrame, *, title: str) -> Figure:
    """NC1 (log x) against AUROC, one point per (regime, seed, snapshot, layer).

    ``points``: columns ``regime``, ``layer``, ``ood``, ``nc1``, ``auroc`` (fraction); one
    panel per OOD set, colour = regime, marker = layer (Harun, Gallardo & Kanan, ICML 2025
    plot per-layer NC1 against OOD detection the same way).
    """
    oods = list(dict.fromkeys(points["ood"]))
    regimes = list(dict.fromkeys(points["regime"]))
    layers = list(dict.fromkeys(points["layer"]))
    fig, axes = _grid(1, max(len(oods), 1), (3.9, 3.3), sharey=True)
    for ax, ood in zip(axes[0], oods, strict=False):
        df = points[points["ood"] == ood]
        for r, reg in enumerate(regimes):
            for k, lay in enumerate(layers):
                d = df[(df["regime"] == reg) & (df["layer"] == lay)]
                if len(d):
                    ax.scatter(
                        d["nc1"], 100 * d["auroc"], s=22, alpha=0.8,
                        color=PALETTE[r % len(PALETTE)], marker=MARKERS[k % len(MARKERS)],
                    )  # fmt: skip
        ax.set_xscale("log")
        ax.axhline(50, ls=":", color="0.4", lw=1)
        ax.set(title=f"{title}: {ood}", xlabel="NC1 (log scale)")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("AUROC (%)")
    handles = [
        Patch(color=PALETTE[r % len(PALETTE)], label=f"regime {reg}")
        for r, reg in enumerate(regimes)
    ]
    handles += [
        Line2D([], [], ls="", color="0.3", marker=MARKERS[k % len(MARKERS)], label=str(lay))
        for k, lay in enumerate(layers)
    ]
    fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=8)
    return fig


def auroc_nc1_epochs(
    auroc: pd.DataFrame,
    nc1: pd.Series,
    terminal: int | None,
    *,
    title: str,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """AUROC per snapshot (left axis) and NC1 (right axis, log) on twin axes.

    ``auroc``: epoch x (detector, ood) fractions; one panel per OOD set. ``nc1``: NC1 of
    the penultimate layer per epoch. A dashed line marks ``terminal``, the first snapshot
    at 100% train accuracy (the terminal phase, Papyan, Han & Donoho 2020).
    """
    oods = list(dict.fromkeys(auroc.columns.get_level_values(1)))
    palette = colors or detector_colors(list(dict.fromkeys(auroc.columns.get_level_values(0))))
    fig, axes = _grid(1, max(len(oods), 1), (4.2, 3.3))
    for ax, ood in zip(axes[0], oods, strict=False):
        for k, det in enumerate(dict.fromkeys(auroc.columns.get_level_values(0))):
            if (det, ood) in auroc:
                s = auroc[(det, ood)].dropna()
                ax.plot(
                    s.index, 100 * s.to_numpy(float), marker=MARKERS[k % 8], ms=4,
                    color=palette.get(det) or detector_color(det), label=f"{det} AUROC",
                )  # fmt: skip
        ax.set(title=f"{title}: {ood}", xlabel="epoch", ylabel="AUROC (%)")
        ax.grid(True, alpha=0.3)
        tw = ax.twinx()
        n = nc1.dropna()
        tw.plot(n.index, n.to_numpy(float), color=PALETTE[6], ls="--", marker=".", label="NC1")
        tw.set_yscale("log")
        tw.set_ylabel("NC1 (log scale)")
        if terminal is not None:
            ax.axvline(terminal, color="0.35", ls=":", lw=1.4, label=f"100% train acc ({terminal})")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = tw.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, frameon=False, fontsize=7)
    return fig
