"""The report section "Why the detectors behave as they do": figures, findings, blocks.

Every figure plots rows of the results table written by :mod:`ncood.explain` (metric
names in ``docs/results_schema.md``, "Explanations"); the example grids and Integrated
Gradients overlays also take the small image arrays of ``explain.npz``
(``"<regime>/<split>/images"`` etc., :func:`ncood.explain.explain_attributions`).
Figures use the Agg backend and are returned, never shown. Findings quote the numbers
they rest on and state comparisons of means only (no interval was computed for them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from ncood.report import figures as F
from ncood.report import tables as T
from ncood.results import PENULTIMATE, Results

ID_LABEL = "ID test"
ID_COLOR = "#222222"
THUMB = 0.62  # inches per thumbnail: images in the report stay small


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


def _thumb(ax, img: np.ndarray) -> None:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


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
    dets = list(dict.fromkeys(df["detector"]))
    if not dets:
        return None
    k = int(df["i"].max()) + 1
    fig = Figure(figsize=(THUMB * k + 1.0, THUMB * len(dets) + 0.5), layout="constrained")
    axes = fig.subplots(len(dets), k, squeeze=False)
    for r, det in enumerate(dets):
        sub = df[df["detector"] == det].set_index("i")
        for c in range(k):
            ax = axes[r, c]
            if c not in sub.index or int(sub.loc[c, "j"]) not in where:
                ax.axis("off")
                continue
            _thumb(ax, images[where[int(sub.loc[c, "j"])]])
            ax.set_title(f"{sub.loc[c, 'value']:.3g}", fontsize=6, pad=1)
        axes[r, 0].set_ylabel(det, fontsize=7, rotation=0, ha="right", va="center")
    what = "most OOD-looking ID test images" if split == "id" else f"most ID-looking {split}"
    fig.suptitle(f"{what} ({regime}); score above each", fontsize=8)
    return fig


def ig_figure(res: Results, regime: str, arrays: Mapping[str, np.ndarray]) -> Figure | None:
    """Image and Integrated Gradients overlay (red: raises the score = more ID; blue:
    lowers it) for the attributed examples; rows = split, columns = detector x example."""
    dets = [d for d in ("energy", "neco") if any(k.startswith(f"{regime}/ig/{d}/") for k in arrays)]
    splits = [s for s in ["id", *_splits(res, regime)] if f"{regime}/{s}/images" in arrays]
    if not dets or not splits:
        return None
    n = max(len(arrays.get(f"{regime}/ig/{d}/{s}/index", [])) for d in dets for s in splits)
    cols = len(dets) * n * 2
    fig = Figure(
        figsize=(THUMB * cols + 0.8, THUMB * 1.15 * len(splits) + 0.6), layout="constrained"
    )
    axes = fig.subplots(len(splits), cols, squeeze=False)
    for r, s in enumerate(splits):
        where = {v: k for k, v in enumerate(np.asarray(arrays[f"{regime}/{s}/index"]).tolist())}
        images = arrays[f"{regime}/{s}/images"]
        for d_k, d in enumerate(dets):
            maps = arrays.get(f"{regime}/ig/{d}/{s}")
            idx = arrays.get(f"{regime}/ig/{d}/{s}/index")
            for e in range(n):
                a_img, a_map = axes[r, (d_k * n + e) * 2], axes[r, (d_k * n + e) * 2 + 1]
                if maps is None or e >= len(idx):
                    a_img.axis("off")
                    a_map.axis("off")
                    continue
                img = images[where[int(idx[e])]]
                _thumb(a_img, img)
                m = np.asarray(maps[e], dtype=float)
                lim = max(float(np.abs(m).max()), 1e-12)
                gray = img[0] if img.shape[0] == 1 else img.mean(axis=0)
                a_map.imshow(gray, cmap="gray", vmin=0, vmax=255)
                a_map.imshow(m, cmap="bwr", vmin=-lim, vmax=lim, alpha=0.65)
                a_map.set_xticks([])
                a_map.set_yticks([])
                a_img.set_title(f"{d} #{e + 1}", fontsize=6, pad=1)
        axes[r, 0].set_ylabel("ID test" if s == "id" else s, fontsize=7)
    fig.suptitle(f"Integrated Gradients of the energy and NECO scores ({regime})", fontsize=8)
    return fig


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
    "ig": "Integrated Gradients ({}) of the energy and NECO scores for their top examples, "
    "baseline the zero input (the normalisation's mean image): each image, then its "
    "attribution (red raises the score, i.e. looks more in-distribution; blue lowers it).",
}


def explain_section(report: Any, s: Any) -> None:
    """Fill the section ``s`` of a report (``ncood.report.render._Report``) from the
    explanation rows and ``report.explain_arrays``; a regime without them gets a note."""
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
                report.figure(
                    s.blocks, f"explain_{slug}_{name}", CAPTIONS[name].format(reg), fig, small
                )
        for split in ["id", *_splits(res, reg)]:
            fig = example_grid(res, reg, arrays, split)
            if fig is not None:
                what = (
                    "The most OOD-looking ID test images"
                    if split == "id"
                    else f"The most ID-looking {split} images"
                )
                report.figure(
                    s.blocks,
                    f"explain_{slug}_examples_{_slug(split)}",
                    CAPTIONS["examples"].format(what, reg),
                    fig,
                    True,
                )
        fig = ig_figure(res, reg, arrays)
        if fig is not None:
            report.figure(s.blocks, f"explain_{slug}_ig", CAPTIONS["ig"].format(reg), fig)
        elif not arrays:
            s.blocks.append(
                Text("Example images and attributions were not saved (explain.npz).", "note")
            )
