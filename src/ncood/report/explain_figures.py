"""The report section "Why the detectors behave as they do": figures, findings, blocks.

Every figure plots rows of the results table written by :mod:`ncood.explain` (metric
names in ``docs/results_schema.md``, "Explanations"); the example grids and Integrated
Gradients overlays also take the small image arrays of ``explain.npz``
(``"<regime>/<split>/images"`` etc., :func:`ncood.explain.explain_attributions`).
Figures use the Agg backend and are returned, never shown. Findings quote the numbers
they rest on and state comparisons of means only (no interval was computed for them).

The section keeps report.html small (:func:`encode`): image grids and attribution
overlays are JPEG, plots are PNG with a 256-colour palette. On the default run (two
regimes, three OOD sets) this took the section from 3.65 MB to 1.16 MB of HTML.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from ncood.report import figures as F
from ncood.report import tables as T
from ncood.report.ranking import shown_detectors
from ncood.results import PENULTIMATE, Results

log = logging.getLogger(__name__)

ID_LABEL = "ID test"
ID_COLOR = "#222222"
THUMB = 0.62  # inches per thumbnail: images in the report stay small


#: JPEG quality of image grids and attribution overlays: their pixel noise compresses
#: badly as PNG (36 Gaussian-noise thumbnails at 110 dpi: 257 kB as PNG, about 65 kB as
#: JPEG at 75, no visible change at thumbnail size).
JPEG_QUALITY = 75
#: Colours of the palette PNG of plots (Pillow's max-coverage quantiser, no dithering):
#: on the default run's plots every pixel stays within 15/255 of the RGB original and the
#: files are about 3x smaller (175 -> 55 kB for the spectrum figure).
PLOT_COLORS = 256


def encode(fig: Figure, *, photo: bool = False) -> tuple[bytes, str]:
    """``fig`` as compact bytes for the self-contained report, and their file extension.

    Args:
        fig: a figure, drawn at :data:`ncood.report.figures.DPI`.
        photo: image content (thumbnails, attribution overlays): JPEG at
            :data:`JPEG_QUALITY`, greyscale when every pixel is grey; otherwise a plot: PNG
            with a :data:`PLOT_COLORS`-colour palette (lines, text and flat colours stay
            sharp).

    Returns:
        ``(data, "jpg")`` or ``(data, "png")``.
    """
    raw = Image.open(io.BytesIO(F.png(fig))).convert("RGB")
    out = io.BytesIO()
    if photo:
        a = np.asarray(raw)
        if (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
            raw = raw.convert("L")
        raw.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
        return out.getvalue(), "jpg"
    pal = raw.quantize(
        colors=PLOT_COLORS, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE
    )
    pal.save(out, "PNG", optimize=True)
    return out.getvalue(), "png"


def _add_figure(
    report: Any, blocks: list, name: str, caption: str, fig: Figure, *, small: bool, photo: bool
) -> None:
    """Append ``fig`` (encoded by :func:`encode`) to ``blocks`` and the report's figures."""
    from ncood.report.render import Figure as Block

    data, ext = encode(fig, photo=photo)
    item = Block(f"{name}.{ext}", data, caption, small)
    report.figures.append(item)
    blocks.append(item)


def _rows(res: Results, regime: str, metric: str, **filters) -> pd.DataFrame:
    return T.final(res, regime, metric=metric, **filters)


def _param(df: pd.DataFrame, key: str) -> pd.Series:
    return df["params"].map(lambda p: json.loads(p).get(key) if isinstance(p, str) else None)


def _ood_color(k: int) -> str:
    return F.PALETTE[(k + 1) % len(F.PALETTE)]


def _splits(res: Results, regime: str) -> list[str]:
    return res.values("ood", regime=regime, metric="pred_fraction")


# ------------------------------------------------------------------------ figures
def spectrum_figure(res: Results, regime: str) -> Figure | None:
    """Explained variance per component (top) and the ID/OOD mean-squared-projection ratio
    (bottom, log), one column per basis (NECO's, ViM's), with each detector's cut."""
    df = _rows(res, regime, "pc_variance_ratio", layer=PENULTIMATE)
    bases = [b for b in ("neco", "vim", "pca") if (_param(df, "basis") == b).any()]
    if not bases:
        return None
    oods = _splits(res, regime)
    fig, axes = F._grid(2, len(bases), (4.6, 2.5), sharex="col")
    for col, basis in enumerate(bases):
        p = json.dumps({"basis": basis})
        ev = _rows(res, regime, "pc_variance_ratio", layer=PENULTIMATE, params=p).sort_values("i")
        ax = axes[0, col]
        ax.bar(ev["i"] + 1, ev["value"], color=F.PALETTE[0], width=0.85)
        ax.set_yscale("log")
        ax.set(title=f"{basis} basis", ylabel="explained variance ratio")
        rx = axes[1, col]
        for k, o in enumerate(oods):
            r = _rows(res, regime, "pc_msq_ratio", layer=PENULTIMATE, params=p, ood=o)
            r = r.sort_values("i")
            rx.plot(r["i"] + 1, r["value"], marker=".", ms=3, lw=1, color=_ood_color(k), label=o)
        rx.axhline(1.0, color="0.5", lw=0.8, ls=":")
        rx.set_yscale("log")
        rx.set(xlabel="principal component", ylabel="ID / OOD mean sq. projection")
        cut = _rows(res, regime, "subspace_dim", detector=basis)
        if len(cut):
            d = float(cut["value"].iloc[0])
            for a in (ax, rx):
                a.axvline(d + 0.5, color=F.detector_color(basis), ls="--", lw=1.4)
            ax.text(
                d + 0.7,
                ax.get_ylim()[1],
                f"{basis} dim={d:.0f}",
                va="top",
                fontsize=8,
                color=F.detector_color(basis),
            )
        if oods:
            rx.legend(frameon=False, fontsize=7)
    fig.suptitle(f"Spectrum of the train features and where OOD energy sits ({regime})")
    return fig


def layer_spectrum_figure(res: Results, regime: str) -> Figure | None:
    """Cumulative explained variance of the plain PCA of each pooled layer's train features
    (left) and the ID / OOD mean-squared-projection ratio of its top 8 components (right)."""
    df = _rows(res, regime, "pc_variance_ratio")
    df = df[(_param(df, "basis") == "pca") & (df["layer"] != PENULTIMATE)]
    if df.empty:
        return None
    layers = list(dict.fromkeys(df["layer"]))
    oods = _splits(res, regime)
    fig, axes = F._grid(1, 2, (4.2, 2.8))
    left, right = axes[0, 0], axes[0, 1]
    for k, name in enumerate(layers):
        v = df[df["layer"] == name].sort_values("i")["value"].to_numpy(float)
        left.plot(
            np.arange(1, v.size + 1),
            100 * np.cumsum(v),
            color=F.PALETTE[k % 8],
            marker=F.MARKERS[k % 8],
            ms=3,
            label=f"{name} (d={v.size})",
        )
    left.set(
        xscale="log",
        xlabel="principal components",
        ylabel="cumulative variance (%)",
        title="pooled layers: spectrum",
    )
    left.legend(frameon=False, fontsize=7)
    width = 0.8 / max(1, len(oods))
    for k, o in enumerate(oods):
        r = _rows(res, regime, "pc_msq_ratio", ood=o)
        r = r[(_param(r, "basis") == "pca") & (r["i"] < 8)]
        top = r.groupby("layer", sort=False)["value"].apply(
            lambda v: float(np.exp(np.log(v).mean()))
        )
        top = top.reindex(layers)
        right.bar(
            np.arange(len(layers)) + (k - (len(oods) - 1) / 2) * width,
            top.to_numpy(),
            width=width,
            color=_ood_color(k),
            label=o,
        )
    right.axhline(1.0, color="0.4", ls=":", lw=1)
    right.set_yscale("log")
    right.set_xticks(range(len(layers)), layers, fontsize=8)
    right.set(ylabel="ID / OOD, top 8 PCs (geo. mean)", title="energy along the top components")
    right.legend(frameon=False, fontsize=7)
    fig.suptitle(f"Earlier layers ({regime})")
    return fig


def prediction_figure(res: Results, regime: str, classes: Sequence[str] | None) -> Figure | None:
    """Predicted-class histogram of the ID test set and each OOD set (grouped bars)."""
    df = _rows(res, regime, "pred_fraction")
    if df.empty:
        return None
    splits = [None, *_splits(res, regime)]
    c = int(df["i"].max()) + 1
    fig, axes = F._grid(1, 1, (max(6.0, 0.55 * c * len(splits) / 2), 3.2))
    ax = axes[0, 0]
    width = 0.8 / len(splits)
    for k, s in enumerate(splits):
        r = df[df["ood"].isna()] if s is None else df[df["ood"] == s]
        r = r.groupby("i")["value"].mean().reindex(range(c), fill_value=0.0)
        color = ID_COLOR if s is None else _ood_color(k - 1)
        x = np.arange(c) + (k - (len(splits) - 1) / 2) * width
        ax.bar(x, 100 * r.to_numpy(), width=width, color=color, label=s or ID_LABEL)
    F._class_ticks(ax, c, classes)
    ax.set(ylabel="% of the split predicted as", title=f"Where the samples land ({regime})")
    ax.legend(frameon=False, fontsize=8, ncol=len(splits))
    return fig


def confidence_figure(res: Results, regime: str) -> Figure | None:
    """Max-softmax and max-logit quantiles (5/25/50/75/95%) per split, as box-like bars."""
    splits = [None, *_splits(res, regime)]
    fig, axes = F._grid(1, 2, (3.4, 2.8))
    drawn = False
    for ax, metric, label in (
        (axes[0, 0], "msp_quantile", "max softmax"),
        (axes[0, 1], "maxlogit_quantile", "max logit"),
    ):
        df = _rows(res, regime, metric)
        if df.empty:
            continue
        drawn = True
        df = df.assign(q=_param(df, "q"))
        for k, s in enumerate(splits):
            r = df[df["ood"].isna()] if s is None else df[df["ood"] == s]
            q = r.groupby("q")["value"].mean()
            color = ID_COLOR if s is None else _ood_color(k - 1)
            ax.vlines(k, q.get(0.05), q.get(0.95), color=color, lw=1)
            ax.vlines(k, q.get(0.25), q.get(0.75), color=color, lw=7)
            ax.plot(k, q.get(0.5), "w_", ms=9, mew=2)
        ax.set_xticks(range(len(splits)), [s or ID_LABEL for s in splits], rotation=30, fontsize=8)
        ax.set(title=label)
    return fig if drawn else None


def gram_figure(res: Results, regime: str, classes: Sequence[str] | None) -> Figure | None:
    """Gram matrix of the normalised centred class means, the simplex ETF, their difference."""
    df = _rows(res, regime, "gram_etf_deviation")
    if df.empty:
        return None
    c = int(max(df["i"].max(), df["j"].max())) + 1
    dev = np.zeros((c, c))
    dev[df["i"].astype(int), df["j"].astype(int)] = df["value"]
    dev = dev + dev.T
    etf = (c / (c - 1)) * np.eye(c) - 1.0 / (c - 1)
    gram = etf + dev
    fig, axes = F._grid(1, 3, (3.3, 3.0))
    for ax, m, title, cmap, lim in (
        (axes[0, 0], gram, "Gram of class means", "RdBu_r", 1.0),
        (axes[0, 1], etf, "simplex ETF", "RdBu_r", 1.0),
        (axes[0, 2], dev, "Gram - ETF", "PuOr_r", max(1e-6, float(np.abs(dev).max()))),
    ):
        im = ax.imshow(m, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.75)
        F._class_ticks(ax, c, classes, "x")
        F._class_ticks(ax, c, classes, "y")
        ax.set_title(title, fontsize=9)
    dist = _rows(res, regime, "gram_etf_distance")
    note = f" (relative distance {dist['value'].mean():.3f})" if len(dist) else ""
    fig.suptitle(f"Class-mean geometry vs the simplex ETF, {regime}{note}")
    return fig


def plane_figure(res: Results, regime: str, classes: Sequence[str] | None) -> Figure | None:
    """Class means, OOD means and sample points in the plane of the class-mean span."""
    x = _rows(res, regime, "plane_x")
    y = _rows(res, regime, "plane_y")
    if x.empty:
        return None
    keys = ["params", "ood", "i", "j"]
    df = x.merge(y, on=keys, suffixes=("_x", "_y"))
    df = df.assign(kind=_param(df, "kind"))
    fig, axes = F._grid(1, 1, (6.2, 4.8))
    ax = axes[0, 0]
    cmap = colormaps["tab10"]
    ids = df[(df["kind"] == "sample") & df["ood"].isna()]
    ax.scatter(
        ids["value_x"],
        ids["value_y"],
        s=6,
        alpha=0.35,
        c=[cmap(int(i) % 10) if pd.notna(i) else "0.5" for i in ids["i"]],
        lw=0,
    )
    for k, o in enumerate(_splits(res, regime)):
        pts = df[(df["kind"] == "sample") & (df["ood"] == o)]
        ax.scatter(
            pts["value_x"],
            pts["value_y"],
            s=9,
            marker="x",
            lw=0.7,
            color=_ood_color(k),
            alpha=0.6,
            label=f"{o} samples",
        )
        m = df[(df["kind"] == "ood_mean") & (df["ood"] == o)]
        ax.scatter(
            m["value_x"],
            m["value_y"],
            s=180,
            marker="*",
            color=_ood_color(k),
            edgecolor="k",
            lw=0.8,
            zorder=5,
            label=f"{o} mean",
        )
    means = df[df["kind"] == "class_mean"].sort_values("i")
    for _, r in means.iterrows():
        i = int(r["i"])
        ax.scatter(r["value_x"], r["value_y"], s=70, color=cmap(i % 10), edgecolor="k", zorder=6)
        name = classes[i] if classes is not None and i < len(classes) else str(i)
        ax.annotate(
            name,
            (r["value_x"], r["value_y"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.scatter([0], [0], marker="+", color="k", s=60, label="global mean")
    frac = _rows(res, regime, "plane_variance_fraction")
    hold = (
        f"; holds {100 * frac['value'].mean():.1f}% of the class means' scatter"
        if len(frac)
        else ""
    )
    ax.set(
        xlabel="class-mean direction 1",
        ylabel="class-mean direction 2",
        title=f"Class-mean plane ({regime}{hold})",
    )
    ax.legend(frameon=False, fontsize=7, loc="best")
    return fig


def units_figure(res: Results, regime: str) -> Figure | None:
    """Per penultimate unit: 99th-percentile activation of ID vs each OOD set (top), and the
    fraction of OOD activations above the unit's ID 99th percentile (bottom; 1% expected)."""
    q = _rows(res, regime, "unit_quantile")
    if q.empty:
        return None
    q = q[_param(q, "q") == 0.99]
    oods = _splits(res, regime)
    ex = _rows(res, regime, "unit_exceed_fraction")
    order = q[q["ood"].isna()].sort_values("value", ascending=False)["i"].astype(int).tolist()
    pos = {u: k for k, u in enumerate(order)}
    fig, axes = F._grid(2, 1, (max(6.5, 0.09 * len(order)), 2.4), sharex=True)
    top, bot = axes[0, 0], axes[1, 0]
    for k, s in enumerate([None, *oods]):
        r = q[q["ood"].isna()] if s is None else q[q["ood"] == s]
        xs = r["i"].astype(int).map(pos)
        color = ID_COLOR if s is None else _ood_color(k - 1)
        top.scatter(xs, r["value"], s=8, color=color, label=s or ID_LABEL)
        if s is not None:
            e = ex[ex["ood"] == s]
            bot.plot(
                sorted(e["i"].astype(int).map(pos)),
                e.assign(x=e["i"].astype(int).map(pos)).sort_values("x")["value"] * 100,
                marker=".",
                ms=3,
                lw=0.8,
                color=color,
                label=s,
            )
    bot.axhline(1.0, color="0.4", ls=":", lw=1)
    top.set(ylabel="99th pct activation", title=f"Penultimate units ({regime})")
    bot.set(xlabel="units, ranked by their ID 99th percentile", ylabel="% OOD > ID p99")
    top.legend(frameon=False, fontsize=7, ncol=4)
    return fig


def _tile(img: np.ndarray) -> np.ndarray:
    """``uint8 (C, H, W)`` (C = 1 or 3) or ``(H, W)`` -> float ``(H, W, 3)`` in ``[0, 1]``."""
    a = np.asarray(img, dtype=np.float64) / 255.0
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def _overlay(img: np.ndarray, attr: np.ndarray) -> np.ndarray:
    """The grey image with the attribution map on top (``bwr``, symmetric limits, alpha
    0.65): red raises the score, blue lowers it. ``(H, W, 3)`` in ``[0, 1]``."""
    grey = _tile(img).mean(axis=-1, keepdims=True)  # (H, W, 1)
    m = np.asarray(attr, dtype=np.float64)
    lim = max(float(np.abs(m).max()), 1e-12)
    rgb = colormaps["bwr"]((m / lim + 1.0) / 2.0)[..., :3]
    return 0.35 * grey + 0.65 * rgb


def _mosaic_figure(
    tiles: list[list[np.ndarray | None]],
    texts: list[list[str]],
    row_labels: list[str],
    title: str,
) -> Figure:
    """One image of ``rows x cols`` tiles (``(h, w, 3)`` floats, ``None`` = blank) with
    a text above each tile, drawn as one ``imshow``: a grid of thumbnails as separate axes
    costs ~40 ms each to lay out and draw, the mosaic one image."""
    h, w = next(t.shape[:2] for r in tiles for t in r if t is not None)
    rows, cols = len(tiles), max(len(r) for r in tiles)
    gap, band = max(1, w // 14), max(4, (h * 2) // 5)  # pixels between tiles, text band
    cell_h, cell_w = band + h + gap, w + gap
    canvas = np.ones((rows * cell_h, cols * cell_w - gap, 3))
    for r, row_tiles in enumerate(tiles):
        for c, t in enumerate(row_tiles):
            if t is not None:
                y, x = r * cell_h + band, c * cell_w
                canvas[y : y + h, x : x + w] = t[:h, :w]
    inch = THUMB / w  # inches per image pixel: each tile THUMB inches wide
    fig = Figure(
        figsize=(inch * canvas.shape[1] + 1.0, inch * canvas.shape[0] + 0.35),
        layout="constrained",
    )
    ax = fig.add_subplot()
    ax.imshow(canvas, interpolation="antialiased")
    for r, row_texts in enumerate(texts):
        for c, text in enumerate(row_texts):
            if text:
                ax.text(
                    c * cell_w + w / 2, r * cell_h + band - 1, text,
                    ha="center", va="bottom", fontsize=6,
                )  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([r * cell_h + band + h / 2 for r in range(rows)], row_labels, fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(title, fontsize=8)
    return fig


def example_grid(
    res: Results, regime: str, arrays: Mapping[str, np.ndarray], split: str
) -> Figure | None:
    """Rows = detectors, columns = ranked examples of ``split`` (``"id"``: the most
    OOD-looking ID test images; an OOD set: its most ID-looking images), with scores."""
    images, index = arrays.get(f"{regime}/{split}/images"), arrays.get(f"{regime}/{split}/index")
    if images is None or index is None:
        return None
    where = {v: k for k, v in enumerate(np.asarray(index).tolist())}
    df = _rows(res, regime, "example_score", ood=None if split == "id" else split)
    # a zoo of 20+ detectors: the best few and NECO, ViM (ncood.report.ranking)
    dets = shown_detectors(res, list(dict.fromkeys(df["detector"])))
    if not dets:
        return None
    k = int(df["i"].max()) + 1
    tiles: list[list[np.ndarray | None]] = []
    texts: list[list[str]] = []
    for det in dets:
        sub = df[df["detector"] == det].set_index("i")
        row_t: list[np.ndarray | None] = []
        row_s: list[str] = []
        for c in range(k):
            if c not in sub.index or int(sub.loc[c, "j"]) not in where:
                row_t.append(None)
                row_s.append("")
                continue
            row_t.append(_tile(images[where[int(sub.loc[c, "j"])]]))
            row_s.append(f"{sub.loc[c, 'value']:.3g}")
        tiles.append(row_t)
        texts.append(row_s)
    if not any(t is not None for r in tiles for t in r):
        return None
    what = "most OOD-looking ID test images" if split == "id" else f"most ID-looking {split}"
    return _mosaic_figure(tiles, texts, dets, f"{what} ({regime}); score above each")


def ig_figure(res: Results, regime: str, arrays: Mapping[str, np.ndarray]) -> Figure | None:
    """Image and Integrated Gradients overlay (red: raises the score = more ID; blue:
    lowers it) for the attributed examples; rows = split, columns = detector x example."""
    dets = [d for d in ("energy", "neco") if any(k.startswith(f"{regime}/ig/{d}/") for k in arrays)]
    splits = [s for s in ["id", *_splits(res, regime)] if f"{regime}/{s}/images" in arrays]
    if not dets or not splits:
        return None
    n = max(len(arrays.get(f"{regime}/ig/{d}/{s}/index", [])) for d in dets for s in splits)
    tiles: list[list[np.ndarray | None]] = []
    texts: list[list[str]] = []
    for s in splits:
        where = {v: k for k, v in enumerate(np.asarray(arrays[f"{regime}/{s}/index"]).tolist())}
        images = arrays[f"{regime}/{s}/images"]
        row_t: list[np.ndarray | None] = []
        row_s: list[str] = []
        for d in dets:
            maps = arrays.get(f"{regime}/ig/{d}/{s}")
            idx = arrays.get(f"{regime}/ig/{d}/{s}/index")
            for e in range(n):
                if maps is None or idx is None or e >= len(idx):
                    row_t += [None, None]
                    row_s += ["", ""]
                    continue
                img = images[where[int(idx[e])]]
                row_t += [_tile(img), _overlay(img, maps[e])]
                row_s += [f"{d} #{e + 1}", ""]
        tiles.append(row_t)
        texts.append(row_s)
    labels = [ID_LABEL if s == "id" else s for s in splits]
    names = " and ".join({"energy": "energy", "neco": "NECO"}[d] for d in dets)
    title = f"Integrated Gradients of the {names} score{'s' if len(dets) > 1 else ''} ({regime})"
    return _mosaic_figure(tiles, texts, labels, title)


# ------------------------------------------------------------------------ findings
def _first(df: pd.DataFrame) -> float:
    v = df["value"].to_numpy(float)
    return float(v.mean()) if v.size else float("nan")


def _name(classes: Sequence[str] | None, i: int) -> str:
    return f"class {i} ({classes[i]})" if classes is not None and i < len(classes) else f"class {i}"


def _auroc(res: Results, regime: str, detector: str, ood: str) -> str:
    """``"; its AUROC there: x%"`` when the run measured it at the head, else ``""``."""
    a = _rows(res, regime, "auroc", detector=detector, ood=ood, layer=PENULTIMATE)
    return f"; {detector}'s AUROC on {ood}: {100 * _first(a):.2f}%" if len(a) else ""


def explain_findings(res: Results, regime: str, classes: Sequence[str] | None = None) -> list[str]:
    """Sentences about one regime's explanation rows; each quotes its numbers.

    Comparisons are of sample means (no interval was computed for them), so they are
    stated as "higher/lower on average", never as significant.
    """
    out: list[str] = []
    id_pred = _rows(res, regime, "pred_msp_mean", ood=None)
    for o in _splits(res, regime):
        pf = _rows(res, regime, "pred_fraction", ood=o)
        if pf.empty:
            continue
        top = pf.sort_values("value", ascending=False).iloc[0]
        i = int(top["i"])
        conf = _first(_rows(res, regime, "pred_msp_mean", ood=o, i=i))
        ref = _first(id_pred[id_pred["i"] == i])
        med_o = _rows(res, regime, "msp_quantile", ood=o)
        med_i = _rows(res, regime, "msp_quantile", ood=None)
        med_o, med_i = (_first(d[_param(d, "q") == 0.5]) for d in (med_o, med_i))
        out.append(
            f"{o} ({regime}): {_name(classes, i)} absorbs {100 * top['value']:.1f}% of the "
            f"samples, at mean max-softmax {conf:.3f} (ID test samples predicted as that "
            f"class: {ref:.3f}); median max-softmax {med_o:.3f} on {o} vs {med_i:.3f} on ID test."
        )
        ml_o = _rows(res, regime, "maxlogit_quantile", ood=o)
        ml_i = _rows(res, regime, "maxlogit_quantile", ood=None)
        ml_o, ml_i = (_first(d[_param(d, "q") == 0.5]) for d in (ml_o, ml_i))
        if np.isfinite(ml_o) and ml_o > ml_i:
            out.append(
                f"{o} ({regime}): the median max-logit is higher on {o} ({ml_o:.3g}) than on "
                f"ID test ({ml_i:.3g}): more than half of the {o} samples get a higher "
                f"MaxLogit score than the median ID test sample."
            )
        neco_id = _first(_rows(res, regime, "top_energy_fraction", detector="neco", ood=None))
        neco_o = _first(_rows(res, regime, "top_energy_fraction", detector="neco", ood=o))
        dim = _first(_rows(res, regime, "subspace_dim", detector="neco"))
        if np.isfinite(neco_o):
            holds = "holds" if neco_id > neco_o else "does not hold"
            out.append(
                f"NECO's premise {holds} on {o} ({regime}): on average {100 * neco_id:.1f}% of "
                f"an ID test sample's standardised energy lies in the top {dim:.0f} principal "
                f"components vs {100 * neco_o:.1f}% for {o}{_auroc(res, regime, 'neco', o)}."
            )
        vim_id = _first(_rows(res, regime, "residual_energy_fraction", detector="vim", ood=None))
        vim_o = _first(_rows(res, regime, "residual_energy_fraction", detector="vim", ood=o))
        rn_id = _first(_rows(res, regime, "residual_norm", detector="vim", ood=None))
        rn_o = _first(_rows(res, regime, "residual_norm", detector="vim", ood=o))
        vdim = _first(_rows(res, regime, "subspace_dim", detector="vim"))
        if np.isfinite(vim_o):
            holds = "holds" if vim_o > vim_id else "does not hold"
            out.append(
                f"ViM's premise {holds} on {o} ({regime}): the residual beyond the top "
                f"{vdim:.0f} directions holds {100 * vim_o:.2f}% of a {o} sample's energy on "
                f"average vs {100 * vim_id:.2f}% for ID test (mean residual norm {rn_o:.3g} vs "
                f"{rn_id:.3g}){_auroc(res, regime, 'vim', o)}."
            )
        ratio = _first(_rows(res, regime, "ood_mean_norm_ratio", ood=o))
        if np.isfinite(ratio):
            out.append(
                f"{o} ({regime}): the norm of its mean feature is {ratio:.2f}x the average "
                "class-mean norm."
            )
        ex = _rows(res, regime, "unit_exceed_fraction", ood=o)
        if len(ex):
            r = ex.sort_values("value", ascending=False).iloc[0]
            n_hi = int((ex["value"] > 0.05).sum())
            out.append(
                f"{o} ({regime}): unit {int(r['i'])} fires most abnormally, "
                f"{100 * r['value']:.1f}% of its activations above its ID 99th percentile (1% "
                f"expected); {n_hi} of {len(ex)} units exceed it on more than 5% of samples."
            )
    g = _first(_rows(res, regime, "gram_etf_distance"))
    if np.isfinite(g):
        out.append(
            f"Class means ({regime}): their normalised Gram matrix is at relative distance "
            f"{g:.3f} from the simplex ETF's (0 = exact ETF)."
        )
    ig = _rows(res, regime, "ig_completeness_error")
    if len(ig):
        steps = _param(ig, "n_steps").dropna()
        out.append(
            f"Integrated Gradients ({regime}, {int(steps.iloc[0]) if len(steps) else '?'} "
            f"steps): attributions sum to the score difference from the baseline within "
            f"{100 * ig['value'].median():.2f}% (median) and {100 * ig['value'].max():.2f}% "
            f"(worst) over {len(ig)} examples."
        )
    return out


def regime_findings(res: Results, regimes: Sequence[str]) -> list[str]:
    """Across regimes: NECO's premise margin (ID minus OOD top-subspace energy share) and
    ViM's (OOD minus ID residual share) per OOD set, beside each detector's AUROC."""
    if len(regimes) < 2:
        return []
    out = []
    oods = list(dict.fromkeys(o for r in regimes for o in _splits(res, r)))
    for det, label, metric, sign, what in (
        ("neco", "NECO", "top_energy_fraction", 1.0, "top-subspace energy share, ID minus OOD"),
        ("vim", "ViM", "residual_energy_fraction", -1.0, "residual energy share, OOD minus ID"),
    ):
        for o in oods:
            parts = []
            for r in regimes:
                a = _first(_rows(res, r, metric, detector=det, ood=None))
                b = _first(_rows(res, r, metric, detector=det, ood=o))
                if not (np.isfinite(a) and np.isfinite(b)):
                    continue
                auc = _rows(res, r, "auroc", detector=det, ood=o, layer=PENULTIMATE)
                auc_s = f", AUROC {100 * _first(auc):.2f}%" if len(auc) else ""
                parts.append(f"{r} {100 * sign * (a - b):+.2f} points{auc_s}")
            if len(parts) >= 2:
                out.append(f"{label} on {o} ({what}): " + "; ".join(parts) + ".")
    return out


# ------------------------------------------------------------------------ the section
CAPTIONS = {
    "spectrum": "Principal components of the train features ({}) in NECO's basis (PCA of the "
    "standardised features) and ViM's (eigenvectors about u = -pinv(W) b). Top: explained "
    "variance ratio; bottom: ID test / OOD mean squared projection per component (above 1: ID "
    "has more energy along it). Dashed lines: where each detector cuts (dim).",
    "layers": "Plain PCA of each pooled layer's train features ({}): cumulative explained "
    "variance, and the geometric mean over the top 8 components of the ID test / OOD mean "
    "squared projection (above 1: ID carries more energy along the leading directions).",
    "predictions": "Predicted-class histogram ({}): the share of each split the classifier "
    "assigns to each class.",
    "confidence": "Max-softmax and max-logit per split ({}): thin line 5-95%, thick bar 25-75%, "
    "white tick the median.",
    "gram": "Gram matrix of the normalised centred class means ({}), the simplex ETF it "
    "approaches under neural collapse, and their difference.",
    "plane": "Class means (labelled dots), OOD means (stars), ID test samples (dots, class "
    "colours) and OOD samples (crosses) in the plane of the two leading directions of the "
    "centred class means ({}); coordinates relative to the global mean.",
    "units": "Penultimate units ({}), sorted by their ID 99th percentile: that percentile for ID "
    "and each OOD set (top), and the share of OOD activations above it (bottom; 1% when a unit "
    "behaves on OOD as on ID data).",
    "examples": "{} ({}); rows are detectors, the number above each image its score (higher = "
    "more in-distribution).",
    "ig": "Integrated Gradients ({}) of the energy score (and of NECO's, when NECO was run) "
    "for their top examples, "
    "baseline the zero input (the normalisation's mean image): each image, then its "
    "attribution (red raises the score, i.e. looks more in-distribution; blue lowers it).",
}


def explain_section(report: Any, s: Any) -> None:
    """Fill the section ``s`` of a report (``ncood.report.render._Report``) from the
    explanation rows and ``report.explain_arrays``; a regime without them gets a note.

    Logs (INFO, logger ``ncood.report.explain_figures``) the seconds the section took to
    draw and the size of its figures.
    """
    t0 = time.perf_counter()
    n0 = len(report.figures)
    _fill_section(report, s)
    added = report.figures[n0:]
    log.info(
        "report section 'explain': %.1f s, %d figures, %.0f kB",
        time.perf_counter() - t0,
        len(added),
        sum(len(f.png) for f in added) / 1e3,
    )


def _fill_section(report: Any, s: Any) -> None:
    from ncood.report.render import Items, Text, _slug

    res = report.res
    arrays = getattr(report, "explain_arrays", None) or {}
    if not any(len(_rows(res, r, "pred_fraction")) for r in report.regimes):
        s.blocks.append(
            Text(
                "The explanations were not computed in this run (`explain: true` in the run "
                "config computes them).",
                "note",
            )
        )
        return
    s.blocks.append(
        Text(
            "Where the OOD samples land, which directions of feature space carry them, which "
            "units fire on them, and which pixels drive a score, on each regime's final "
            "network. Comparisons below are of sample means, stated without intervals."
        )
    )
    across = regime_findings(res, report.regimes)
    if across:
        s.blocks.append(Text("Premises across regimes", "h3"))
        s.blocks.append(Items(across))
    for reg in report.regimes:
        s.blocks.append(Text(f"Regime: {reg}", "h3"))
        if not len(_rows(res, reg, "pred_fraction")):
            s.blocks.append(Text(f"Explanations of {reg}: not computed.", "note"))
            continue
        items = explain_findings(res, reg, report.classes)
        if items:
            s.blocks.append(Items(items))
        slug = _slug(reg)
        draw = [
            ("spectrum", spectrum_figure(res, reg), False),
            ("layers", layer_spectrum_figure(res, reg), False),
            ("predictions", prediction_figure(res, reg, report.classes), False),
            ("confidence", confidence_figure(res, reg), True),
            ("units", units_figure(res, reg), False),
            ("gram", gram_figure(res, reg, report.classes), False),
            ("plane", plane_figure(res, reg, report.classes), True),
        ]
        for name, fig, small in draw:
            if fig is not None:
                _add_figure(
                    report,
                    s.blocks,
                    f"explain_{slug}_{name}",
                    CAPTIONS[name].format(reg),
                    fig,
                    small=small,
                    photo=False,
                )
        for split in ["id", *_splits(res, reg)]:
            fig = example_grid(res, reg, arrays, split)
            if fig is not None:
                what = (
                    "The most OOD-looking ID test images"
                    if split == "id"
                    else f"The most ID-looking {split} images"
                )
                _add_figure(
                    report,
                    s.blocks,
                    f"explain_{slug}_examples_{_slug(split)}",
                    CAPTIONS["examples"].format(what, reg),
                    fig,
                    small=True,
                    photo=True,
                )
        fig = ig_figure(res, reg, arrays)
        if fig is not None:
            caption = CAPTIONS["ig"].format(reg)
            _add_figure(
                report, s.blocks, f"explain_{slug}_ig", caption, fig, small=False, photo=True
            )
        elif not arrays:
            s.blocks.append(
                Text("Example images and attributions were not saved (explain.npz).", "note")
            )
