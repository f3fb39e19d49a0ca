"""The report of a run: a document of sections built from a Results, rendered twice.

:func:`write_report` turns a :class:`~ncood.results.Results` (and, optionally, the raw
detector scores) into :class:`Section` s of text, table and figure blocks, then renders
them as Markdown (figures linked from ``figures/``) and as one self-contained HTML page
(``template.html.j2``: CSS inlined, figures embedded as base64 PNG, everything escaped).
A part that the run did not compute (no depth analysis, no snapshots, no saved scores)
becomes a short "not computed" note.

Adding a section: a method of :class:`_Report` returning a :class:`Section`, listed in
:data:`SECTIONS`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import yaml

from ncood.io import atomic_open, write_text
from ncood.metrics import CONVENTIONS
from ncood.report import figures as F
from ncood.report import ranking as R
from ncood.report import tables as T
from ncood.report.findings import findings
from ncood.results import PENULTIMATE, Results

logger = logging.getLogger(__name__)

#: (id, title) of the sections of report.html, in order (the footer ``conventions`` follows).
SECTIONS = (
    ("setup", "Set-up"),
    ("training", "Training"),
    ("ood", "OOD detection"),
    ("ranking", "Detector ranking"),
    ("selection", "Hyperparameter selection"),
    ("scores", "Score distributions"),
    ("roc", "ROC curves"),
    ("collapse", "Neural collapse"),
    ("nc5", "NC5: ID/OOD orthogonality"),
    ("depth", "Collapse and detection vs depth"),
    ("epochs", "Collapse across training"),
    ("relation", "Collapse and detection"),
    ("explain", "Why the detectors behave as they do"),
    ("findings", "Findings"),
)
SECTION_IDS = tuple(s for s, _ in SECTIONS)
CAPTIONS = {  # "{}" is the regime
    "variance": "NC1 ({}): within-class variance per class, mean over the class of "
    "||z - mu_c||^2; the dashed line is their mean.",
    "cosines": "NC2 ({}): cosines between centred class means (and classifier rows), one count "
    "per class pair; the dashed line is the simplex-ETF value -1/(C-1). The mean of these "
    "cosines equals -1/(C-1) by construction when the norms are equal, so only their spread "
    "(NC2 equiangular) measures collapse.",
    "alignment": "NC3 ({}): cosine between each classifier row w_c and its centred class mean "
    "mu_c - mu_G; 1 at perfect self-duality.",
    "distances": "L2 distances between class means ({}); a collapsed network approaches equal "
    "off-diagonal distances.",
    "depth": "Collapse metrics per layer ({}, log scale), shallow to deep.",
    "depth_auroc": "AUROC of the feature-space detectors on each layer's pooled features ({}).",
    "epochs": "Collapse metrics and NC5 at each training snapshot ({}, log scale), with the "
    "training error below.",
    "relation_scatter": "NC1 (log scale) against AUROC of {}, one point per training snapshot "
    "and layer (every regime and seed); colour = regime, marker = layer.",
    "relation_epochs": "AUROC (left axis, solid) of NECO, ViM and the best detector on the "
    "penultimate layer, and NC1 (right axis, dashed, log scale) per snapshot ({}); the dotted "
    "line marks the first snapshot at 100% train accuracy (the terminal phase).",
    "scores": "Score distributions ({}): ID test (filled, detector colour) vs each OOD set (dark "
    "outline); rows are detectors, columns OOD sets. Higher scores mean more in-distribution.",
    "roc": "ROC curves ({}), ID positive; AUROC in the legend. Dots mark each detector's FPR@95 "
    "operating point; the dashed line is TPR = 95%.",
}


@dataclass
class Text:
    """A paragraph (``style`` ``p``), sub-heading (``h3``), ``note`` or folded ``pre`` text."""

    text: str
    style: str = "p"
    summary: str = ""
    kind: str = field(default="text", init=False)


@dataclass
class Items:
    """A bulleted list."""

    items: list[str]
    kind: str = field(default="items", init=False)


@dataclass
class Figure:
    """A drawn figure: file name, PNG bytes, caption; ``small`` ones sit two per row.

    ``png`` holds JPEG bytes when ``name`` ends in ``.jpg`` (the explanation section's
    image grids, :func:`ncood.report.explain_figures.encode`).
    """

    name: str
    png: bytes
    caption: str
    small: bool = False
    kind: str = field(default="figure", init=False)

    @property
    def uri(self) -> str:
        mime = "image/jpeg" if self.name.endswith(".jpg") else "image/png"
        return f"data:{mime};base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Any] = field(default_factory=list)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "x"


def _duration(seconds: float) -> str:
    minutes, sec = divmod(float(seconds), 60.0)
    if minutes < 1:
        return f"{seconds:.1f} s"
    return (
        f"{int(minutes)} min {sec:04.1f} s"
        if minutes < 60
        else f"{minutes / 60:.0f} h {minutes % 60:02.0f} min"
    )


def _kv(title: str, headers: list[str], rows: list[list[Any]]) -> T.Table:
    return T.Table(title, headers, [[T.Cell(str(v)) for v in r] for r in rows], labels=len(headers))


def _yaml(obj: Any) -> str:
    return yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=False)


def conventions(res: Results) -> dict[str, str]:
    """The metric conventions of the run (``meta["conventions"]``, else ncood's own)."""
    return dict(res.meta.get("conventions") or CONVENTIONS)


def provenance(res: Results) -> str:
    m, env, cfg = res.meta, res.meta.get("environment") or {}, res.meta.get("config") or {}
    versions = ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "numpy") if k in env)
    seeds = ", ".join(map(str, res.values("seed"))) or cfg.get("seed", "n/a")
    return (
        f"Produced by ncood {m.get('ncood_version', 'n/a')} on {m.get('created', 'n/a')} from "
        f"config {cfg.get('name', 'n/a')} (seeds {seeds}); {versions}; "
        f"{env.get('platform', 'n/a')}; CPU {env.get('cpu', 'n/a')}; "
        f"device {env.get('device', 'n/a')}, {env.get('threads', 'n/a')} threads."
    )


class _Report:
    """Builds the sections of one report; figures are drawn as their section is built."""

    def __init__(self, res: Results, scores: Mapping[str, np.ndarray] | None):
        self.res, self.scores = res, scores or {}
        self.regimes, self.dets, self.oods = T.regimes(res), T.detectors(res), T.oods(res)
        self.classes = ((res.meta.get("data") or {}).get("id") or {}).get("classes")
        self.figures: list[Figure] = []
        # per-detector figures draw these (all up to R.MAX_ALL; else the best few + NECO, ViM)
        self.shown = R.shown_detectors(res)

    def colors(self, dets) -> dict[str, str]:
        """Distinct colours for ``dets``, the shown detectors' the same in every figure."""
        return F.detector_colors([*self.shown, *(d for d in dets if d not in self.shown)])

    def figure(self, blocks: list, name: str, caption: str, fig, small: bool = False) -> None:
        item = Figure(f"{name}.png", F.png(fig), caption, small)
        self.figures.append(item)
        blocks.append(item)

    def table(self, blocks: list, table: T.Table, missing: str) -> bool:
        """Append ``table``, or the note ``missing`` when it has no rows."""
        blocks.append(table if table.rows else Text(missing, "note"))
        return bool(table.rows)

    def auroc(self, regime: str) -> dict[tuple[str, str], float]:
        df = T.final(self.res, regime, layer=PENULTIMATE, metric="auroc")
        return df.groupby(["detector", "ood"], sort=False)["value"].mean().to_dict()

    # ------------------------------------------------------------------ sections
    def setup(self, s: Section) -> None:
        m = self.res.meta
        cfg, env, data = m.get("config") or {}, m.get("environment") or {}, m.get("data") or {}
        idd = data.get("id") or {}
        s.blocks.append(
            Text(
                f"In-distribution data: {idd.get('name', 'n/a')} ({len(self.classes or [])} "
                f"classes; {idd.get('n_train', 'n/a')} training and {idd.get('n_test', 'n/a')} "
                "test images). "
                f"OOD sets: {', '.join(self.oods) or 'none'}. Model: {cfg.get('model', 'n/a')}. "
                f"Regimes: {', '.join(self.regimes)}. Detectors: {', '.join(self.dets) or 'none'}."
            )
        )
        total = (m.get("durations") or {}).get("total")
        run = [
            ["Run", cfg.get("name", "n/a")],
            ["Created", m.get("created", "n/a")],
            ["ncood version", m.get("ncood_version", "n/a")],
            ["Seeds", ", ".join(map(str, self.res.values("seed"))) or cfg.get("seed", "n/a")],
            ["Device", env.get("device", "n/a")],
            ["Total time", _duration(total) if total is not None else "n/a"],
        ]
        s.blocks.append(_kv("Run", ["Item", "Value"], run))
        sources = [
            ["ID", idd.get("name", "n/a"), idd.get("n_test", "n/a"), idd.get("source", "n/a")]
        ]
        sources += [
            ["OOD", o, i.get("n", "n/a"), i.get("source", "n/a")]
            for o, i in (data.get("ood") or {}).items()
        ]
        s.blocks.append(
            _kv("Data sources", ["Role", "Dataset", "Samples scored", "Source"], sources)
        )
        if env:
            s.blocks.append(
                _kv("Software and hardware", ["Item", "Value"], list(map(list, env.items())))
            )
        if m.get("durations"):
            rows = [[k, _duration(v), f"{v:.1f}"] for k, v in m["durations"].items()]
            s.blocks.append(_kv("Durations", ["Stage", "Wall time", "Seconds"], rows))
        params = self.res.select(metric="auroc").drop_duplicates(["detector", "params"])
        used = params.groupby("detector", sort=False)["params"].agg(
            lambda p: " | ".join(dict.fromkeys(R.params_text(x) for x in p.dropna()))
        )
        rows = [
            [
                d,
                R.params_text(json.dumps((m.get("detectors") or {}).get(d) or {})),
                used.get(d) or "-",
            ]
            for d in self.dets
        ]
        selected = bool(len(self.res.select(metric="selection_chosen")))
        table = _kv(
            "Detector hyperparameters",
            ["Detector", "At the head (run.json)", "In the results (every row, | between)"],
            rows,
        )
        table.text_columns = (1, 2)  # long values wrap
        table.note = (
            "At the head: the values of the first network's head (run.json 'detectors'). "
            + (
                "With hyperparameter selection those are the chosen values (Hyperparameter "
                "selection); snapshots and earlier layers keep the configured ones. "
                if selected
                else ""
            )
            + "In the results: every distinct setting in the AUROC rows (an earlier layer may "
            "adapt a value to its width)."
        )
        s.blocks.append(table)
        if cfg:
            s.blocks.append(Text(_yaml(cfg), "pre", "Resolved run config (YAML)"))

    def training(self, s: Section) -> None:
        if not self.table(s.blocks, T.training_table(self.res), "No training history recorded."):
            return
        history = self.res.select(
            layer=None, detector=None, metric=[m for m, _ in T.HISTORY + T.LOSSES]
        )
        self.figure(
            s.blocks,
            "training_curves",
            "Training curves: cross-entropy loss (top) and accuracy (bottom) per epoch, train "
            "(solid) vs test (dashed), one column per regime.",
            F.training_curves(history, self.regimes),
        )

    def ood(self, s: Section) -> None:
        s.blocks.append(
            Text(
                "AUROC, FPR@95, AUPR-In and AUPR-Out in %, ID test set vs each OOD set, on the "
                "final network's penultimate features. The best value of each column is bold "
                "(lowest for FPR@95). Brackets are 95% bootstrap intervals; ± is the standard "
                "deviation over seeds."
            )
        )
        if not self.oods:
            s.blocks = [Text("OOD detection was not computed in this run.", "note")]
        for reg in self.regimes if self.oods else []:
            s.blocks.append(Text(f"Regime: {reg}", "h3"))
            for o in self.oods:
                s.blocks.append(T.ood_table(self.res, reg, o))
        if len(self.regimes) >= 2 and self.oods:
            s.blocks.append(Text("Regimes side by side", "h3"))
            s.blocks += [T.regime_table(self.res, o) for o in self.oods]
            df = pd.concat(
                [T.final(self.res, r, layer=PENULTIMATE, metric="auroc") for r in self.regimes]
            )
            wide = df.pivot_table(
                index="detector", columns=["regime", "ood"], values="value", sort=False
            )
            self.figure(
                s.blocks,
                "regime_comparison",
                f"AUROC per detector and OOD set; filled bars: {self.regimes[0]}, hatched bars: "
                f"{', '.join(self.regimes[1:])}. Dotted line: chance (50%)."
                + R.subset_note(self.shown, self.dets),
                F.regime_bars(wide.reindex(self.shown), self.oods, self.colors(self.shown)),
            )

    def ranking(self, s: Section) -> None:
        if not self.oods:
            s.blocks.append(Text("OOD detection was not computed in this run.", "note"))
            return
        s.blocks.append(
            Text(
                f"All {len(self.dets)} detectors the run scored, per OOD set, sorted by AUROC "
                "(final network, penultimate features; in %). A detector is tied with the best "
                "when the run's bootstrap intervals cannot tell them apart (see each table's "
                "note). Hyperparameters: what each detector ran with, and where they were "
                "chosen on validation data, the validation set and AUROC of the choice."
            )
        )
        for reg in self.regimes:
            s.blocks.append(Text(f"Regime: {reg}", "h3"))
            for o in self.oods:
                table = R.ranking_table(self.res, reg, o)
                if table.rows:
                    s.blocks.append(table)

    def selection(self, s: Section) -> None:
        sentence = R.selection_sentence(self.res)
        if not sentence:
            s.blocks.append(
                Text(
                    "Hyperparameter selection was not run (no selection rows): every detector "
                    "ran with its configured hyperparameters (Set-up).",
                    "note",
                )
            )
            return
        s.blocks.append(Text(sentence))
        for reg in self.regimes:
            summary = R.selection_summary_table(self.res, reg)
            if not summary.rows:
                continue
            s.blocks += [Text(f"Regime: {reg}", "h3"), summary, *R.candidate_tables(self.res, reg)]

    def _score_figure(self, s: Section, kind: str, draw) -> None:
        for reg in self.regimes:
            s.blocks.append(Text(f"Regime: {reg}", "h3"))
            if any(k.startswith(f"{reg}/") for k in self.scores):
                dets = self.shown
                fig = draw(
                    self.scores, reg, dets, self.oods, self.auroc(reg), colors=self.colors(dets)
                )
                caption = CAPTIONS[kind].format(reg) + R.subset_note(dets, self.dets)
                self.figure(s.blocks, f"{kind}_{_slug(reg)}", caption, fig)
            else:
                note = f"Raw scores of {reg} were not saved (scores.npz): not computed."
                s.blocks.append(Text(note, "note"))

    def scores_section(self, s: Section) -> None:
        self._score_figure(s, "scores", F.score_histograms)

    def roc(self, s: Section) -> None:
        self._score_figure(s, "roc", F.roc_curves)

    def per_class(self, regime: str, metric: str) -> pd.DataFrame:
        """Mean over seeds of a per-class (``i``) or per-pair (``i, j``) metric."""
        df = T.final(self.res, regime, layer=PENULTIMATE, metric=metric)
        keys = ["i"] if df["j"].isna().all() else ["i", "j"]
        return df.groupby(keys)["value"].mean().reset_index()

    def collapse(self, s: Section) -> None:
        missing = "Neural collapse was not computed in this run."
        if not self.table(s.blocks, T.collapse_table(self.res), missing):
            return
        for reg in self.regimes:
            s.blocks.append(Text(f"Regime: {reg}", "h3"))
            name, names = f"collapse_{_slug(reg)}", self.classes
            var = self.per_class(reg, "within_class_variance")
            if len(var):
                title = f"NC1: within-class variance per class ({reg})"
                fig = F.class_bars(
                    var["value"], names, title=title, ylabel=r"mean $\|z - \mu_c\|^2$"
                )
                self.figure(
                    s.blocks, f"{name}_variance", CAPTIONS["variance"].format(reg), fig, True
                )
            cos = self.per_class(reg, "mean_cosine")
            if len(cos):
                c = int(max(cos["i"].max(), cos["j"].max())) + 1
                weights = self.per_class(reg, "weight_cosine")["value"]
                title = f"NC2: cosines between centred class means ({reg})"
                fig = F.cosine_histogram(cos["value"], weights, c, title=title)
                self.figure(s.blocks, f"{name}_cosines", CAPTIONS["cosines"].format(reg), fig, True)
            align = self.per_class(reg, "weight_mean_cosine")
            if len(align):
                title = f"NC3: alignment of weights and class means ({reg})"
                fig = F.class_bars(align["value"], names, title=title, ylabel="cosine similarity")
                self.figure(
                    s.blocks, f"{name}_alignment", CAPTIONS["alignment"].format(reg), fig, True
                )
            dist = self.per_class(reg, "mean_distance")
            if len(dist):  # one row per pair i < j: the symmetric matrix
                c = int(max(dist["i"].max(), dist["j"].max())) + 1
                m = np.zeros((c, c))
                m[dist["i"].astype(int), dist["j"].astype(int)] = dist["value"]
                title = f"L2 distances between class means ({reg})"
                fig = F.heatmap(m + m.T, names, title=title, label=r"$\|\mu_i - \mu_j\|_2$")
                self.figure(
                    s.blocks, f"{name}_distances", CAPTIONS["distances"].format(reg), fig, True
                )

    def nc5(self, s: Section) -> None:
        self.table(s.blocks, T.nc5_table(self.res), "NC5 was not computed in this run.")

    def depth(self, s: Section) -> None:
        for reg in self.regimes:
            s.blocks.append(Text(f"Regime: {reg}", "h3"))
            missing = f"Per-layer analysis of {reg}: not computed."
            if not self.table(s.blocks, T.depth_table(self.res, reg), missing):
                continue
            df = T.final(self.res, reg, metric=["nc1", "nc1_trace", "cdnv"], ood=None, i=None)
            wide = df.pivot_table(index="layer", columns="metric", values="value", sort=False)
            fits = {}
            for m in wide.columns:
                rate, r2 = T.decay(self.res, reg, m)
                if np.isfinite(rate):
                    fits[m] = f"  (x{np.exp(rate):.3g}/layer" + (
                        f", $R^2$={r2:.2f})" if np.isfinite(r2) else ")"
                    )
            dims = T.final(self.res, reg, metric="dim").groupby("layer")["value"].first()
            wide = wide.reindex(index=T.layers(self.res, reg), columns=[*T.DEPTH_METRICS[:3]])
            wide.index = [f"{n}\n(d={dims[n]:.0f})" if n in dims else n for n in wide.index]
            fig = F.depth_lines(
                wide.dropna(axis=1, how="all"), fits, title=f"Collapse vs depth ({reg})"
            )
            self.figure(
                s.blocks, f"depth_{_slug(reg)}_collapse", CAPTIONS["depth"].format(reg), fig
            )
            table = T.depth_auroc_table(self.res, reg)
            if self.table(s.blocks, table, f"Detector AUROC per layer of {reg}: not computed."):
                df = T.final(self.res, reg, metric="auroc")
                every = list(dict.fromkeys(r[0].text for r in table.rows))
                dets = R.shown_detectors(self.res, every)
                df = df[df["detector"].isin(dets)]
                wide = df.pivot_table(
                    index="layer", columns=["detector", "ood"], values="value", sort=False
                )
                title = f"Detector AUROC vs depth, {reg}"
                fig = F.layer_auroc(
                    wide.reindex(T.layers(self.res, reg)), title=title, colors=self.colors(dets)
                )
                caption = CAPTIONS["depth_auroc"].format(reg) + R.subset_note(dets, every)
                self.figure(s.blocks, f"depth_{_slug(reg)}_auroc", caption, fig)

    def epochs(self, s: Section) -> None:
        for reg in self.regimes:
            s.blocks.append(Text(f"Regime: {reg}", "h3"))
            missing = f"Collapse across training of {reg}: not computed."
            if not self.table(s.blocks, T.epochs_table(self.res, reg), missing):
                continue
            df = self.res.select(
                regime=reg, layer=PENULTIMATE, detector=None, i=None,
                metric=[*T.EPOCH_LINES, "train_error", "nc5"],
            )  # fmt: skip
            df = df.assign(col=df["metric"].where(df["ood"].isna(), "nc5 " + df["ood"].fillna("")))
            wide = df.pivot_table(index="epoch", columns="col", values="value", aggfunc="mean")
            nc5 = [f"nc5 {o}" for o in self.res.values("ood", metric="nc5")]
            lines = [c for c in [*T.EPOCH_LINES, *nc5] if c in wide]
            err = wide["train_error"].dropna() if "train_error" in wide else pd.Series(dtype=float)
            zero, title = T.zero_error_epoch(self.res, reg), f"Collapse during training ({reg})"
            fig = F.epoch_lines(wide[lines], err, zero, title=title)
            self.figure(s.blocks, f"epochs_{_slug(reg)}", CAPTIONS["epochs"].format(reg), fig)

    def relation(self, s: Section) -> None:
        rel = self.res.select(metric="spearman")
        if not len(rel):
            s.blocks.append(
                Text("Collapse and detection: not computed (no Spearman rows).", "note")
            )
            return
        s.blocks.append(
            Text(
                "Spearman correlation of AUROC with each collapse metric over the points "
                "(training snapshot x layer x regime x seed) where both were measured, with a "
                "95% bootstrap interval over points. The points come from the same networks and "
                "are not independent: the numbers describe this run, they are not a test."
            )
        )
        for o in relation_oods(self.res):
            s.blocks.append(relation_table(self.res, o))
        items = relation_sentences(self.res)
        if items:
            s.blocks.append(Items(items))
        pts = self._nc1_auroc_points("neco")
        if len(pts):
            caption = CAPTIONS["relation_scatter"].format("NECO")
            fig = F.nc1_auroc_scatter(pts, title="NECO")
            self.figure(s.blocks, "relation_nc1_auroc_neco", caption, fig)
        else:
            s.blocks.append(Text("NC1 against NECO's AUROC: not computed.", "note"))
        for reg in self.regimes:
            wide, nc1 = self._relation_epochs(reg)
            if wide is None:
                continue
            dets = list(dict.fromkeys(wide.columns.get_level_values(0)))
            fig = F.auroc_nc1_epochs(
                wide, nc1, terminal_epoch(self.res, reg), title=reg, colors=self.colors(dets)
            )
            caption = CAPTIONS["relation_epochs"].format(reg)
            self.figure(s.blocks, f"relation_epochs_{_slug(reg)}", caption, fig)

    def _nc1_auroc_points(self, det: str) -> pd.DataFrame:
        """One row per (regime, seed, epoch, layer, ood) with ``nc1`` and ``auroc``."""
        keys = ["regime", "seed", "epoch", "layer"]
        au = self.res.select(metric="auroc", detector=det)
        nc = self.res.select(metric="nc1", ood=None, detector=None)
        au = au.drop_duplicates([*keys, "ood"])[[*keys, "ood", "value"]]
        nc = nc.drop_duplicates(keys)[[*keys, "value"]]
        df = au.merge(nc, on=keys, suffixes=("_a", "_n")).rename(
            columns={"value_a": "auroc", "value_n": "nc1"}
        )
        return df[np.isfinite(df["auroc"]) & (df["nc1"] > 0)]

    def _relation_epochs(self, reg: str) -> tuple[pd.DataFrame | None, pd.Series]:
        """Epoch x (detector, ood) AUROC (NECO, ViM, the best) and NC1, penultimate layer."""
        au = self.res.select(regime=reg, layer=PENULTIMATE, metric="auroc")
        nc1 = self.res.select(regime=reg, layer=PENULTIMATE, metric="nc1", ood=None)
        nc1 = nc1.groupby("epoch")["value"].mean()
        if au["epoch"].nunique() < 2:
            return None, nc1
        last = au[au["epoch"] == au["epoch"].max()]
        keep = {"neco", "vim"}
        for _, g in last.groupby("ood", sort=False):
            best = g.groupby("detector", sort=False)["value"].mean()
            keep.add(str(best.idxmax()))
        au = au[au["detector"].isin(keep)]
        wide = au.pivot_table(
            index="epoch", columns=["detector", "ood"], values="value", aggfunc="mean", sort=False
        )
        return wide.sort_index(), nc1.sort_index()

    def explain(self, s: Section) -> None:
        from ncood.report.explain_figures import explain_section  # ncood.explain's rows

        explain_section(self, s)

    def findings_section(self, s: Section) -> None:
        s.blocks.append(
            Text(
                "Generated from the numbers above; each sentence quotes the values it rests on. "
                "A difference is called real or about equal only where the run computed a paired "
                "bootstrap interval for it; elsewhere the numbers are stated without that claim."
            )
        )
        items = findings(self.res)
        s.blocks.append(
            Items(items) if items else Text("Not enough results to state findings.", "note")
        )

    def cards(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Per regime: accuracies, NC1 and the best AUROC per OOD set (the first screen)."""
        out = []
        for reg in self.regimes:
            f = T.final(self.res, reg)
            items = [
                (label, T.quote(f[(f.metric == m) & f.layer.isna()], unit="%"))
                for m, label in (("test_acc", "Test accuracy"), ("train_acc", "Train accuracy"))
            ]
            items.append(("NC1", T.quote(f[(f.metric == "nc1") & (f.layer == PENULTIMATE)], T.sig)))
            auroc = self.auroc(reg)
            for o in self.oods:
                best = max(
                    (d for d in self.dets if (d, o) in auroc),
                    key=lambda d: auroc[(d, o)],
                    default=None,
                )
                if best:
                    items.append((f"Best on {o}", f"{best} ({100 * auroc[(best, o)]:.2f}% AUROC)"))
            out.append((reg, items))
        return out

    def sections(self) -> list[Section]:
        build = {"scores": self.scores_section, "findings": self.findings_section}
        out = []
        for sid, title in SECTIONS:
            s = Section(sid, title)
            (build.get(sid) or getattr(self, sid))(s)
            out.append(s)
        return out


# ---------------------------------------------------------------------- the relation
#: NC metrics of the relation table, in column order, with their headers.
RELATION_NC = (("nc1", "NC1"), ("nc1_trace", "NC1 (trace)"), ("cdnv", "CDNV"), ("nc5", "NC5"))


def _spearman(res: Results, det: str, ood: str, nc: str) -> pd.Series | None:
    df = res.select(
        metric="spearman", detector=det, ood=ood, params={"ood_metric": "auroc", "nc_metric": nc}
    )
    return df.iloc[0] if len(df) else None


def rho_text(r: pd.Series) -> str:
    """``rho [lo, hi]`` with two decimals (``undefined`` when rho is NaN)."""
    if not np.isfinite(r["value"]):
        return "undefined"
    lo, hi = r["ci_low"], r["ci_high"]
    ci = f" [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
    return f"{r['value']:+.2f}{ci}"


def relation_oods(res: Results) -> list[str]:
    return res.values("ood", metric="spearman")


def relation_table(res: Results, ood: str) -> T.Table:
    """Detector x NC metric: Spearman rho of AUROC with it ``[95% interval]``; points."""
    rows = []
    for det in res.values("detector", metric="spearman", ood=ood):
        cells, ns = [T.Cell(det)], {}
        for nc, header in RELATION_NC:
            r = _spearman(res, det, ood, nc)
            cells.append(T.Cell(rho_text(r) if r is not None else T.MISSING))
            if r is not None:
                ns[header] = int(r["n_id"])
        cells.append(T.Cell(points_text(ns)))
        rows.append(cells)
    headers = ["Detector", *(h for _, h in RELATION_NC), "Points per correlation"]
    return T.Table(
        f"Spearman rho of AUROC with collapse metrics [95% interval], OOD set {ood}",
        headers,
        rows,
        note="Points: snapshots x layers x regimes x seeds where both metrics exist; one "
        "number when every correlation of the row has as many, else the count of each "
        "(NC5 exists on the penultimate layer only, so it can have fewer).",
        text_columns=(len(headers) - 1,),
    )


def points_text(ns: Mapping[str, int]) -> str:
    """``40`` when all correlations have as many points, else ``NC1, CDNV: 40; NC5: 8``."""
    if not ns:
        return T.MISSING
    if len(set(ns.values())) == 1:
        return str(next(iter(ns.values())))
    groups: dict[int, list[str]] = {}
    for header, n in ns.items():
        groups.setdefault(n, []).append(header)
    return "; ".join(f"{', '.join(h)}: {n}" for n, h in groups.items())


def relation_verdict(r: pd.Series) -> str:
    """NECO's claim (AUROC rises as NC1 falls) against rho(AUROC, NC1) and its interval."""
    lo, hi = r["ci_low"], r["ci_high"]
    if not (np.isfinite(r["value"]) and np.isfinite(lo) and np.isfinite(hi)):
        return "undefined, so no evidence either way"
    if hi < 0:
        return "agrees with NECO's claim (AUROC rises as NC1 falls)"
    if lo > 0:
        return "disagrees with NECO's claim (AUROC falls as NC1 falls)"
    return "the interval contains 0: no evidence either way"


def relation_sentences(res: Results) -> list[str]:
    """One sentence per OOD set: rho(AUROC, NC1) of NECO and ViM and what it says of NECO's
    claim (Ben Ammar et al. 2024: detection improves as collapse grows)."""
    out = []
    for ood in relation_oods(res):
        parts = []
        for det, name in (("neco", "NECO"), ("vim", "ViM")):
            r = _spearman(res, det, ood, "nc1")
            if r is not None:
                parts.append(
                    f"{name}: Spearman rho(AUROC, NC1) = {rho_text(r)} over {int(r['n_id'])} "
                    f"points, {relation_verdict(r)}"
                )
        if parts:
            out.append(f"On {ood}: " + "; ".join(parts) + " (descriptive: points not independent).")
    return out


def terminal_epoch(res: Results, regime: str) -> int | None:
    """First epoch whose ``train_acc`` history is 1.0 in every seed, else the first snapshot
    with zero ``train_error`` (:func:`ncood.report.tables.zero_error_epoch`)."""
    acc = res.select(regime=regime, metric="train_acc", layer=None, detector=None)
    worst = acc.groupby("epoch")["value"].min()
    full = worst[worst >= 1.0]
    return int(full.index.min()) if len(full) else T.zero_error_epoch(res, regime)


# ---------------------------------------------------------------------- rendering
def render_markdown(res: Results, sections: list[Section]) -> str:
    """The report as Markdown: the same blocks as the HTML, figures linked from figures/."""
    md = T._md
    cfg = res.meta.get("config") or {}
    toc = " · ".join(f"[{md(s.title)}](#{s.id})" for s in sections)
    lines = [
        f"# ncood report: {md(cfg.get('name', 'run'))}",
        "",
        md(f"Created {res.meta.get('created', 'n/a')} with ncood {res.meta.get('ncood_version')}."),
        "",
        f"Contents: {toc} · [Conventions](#conventions)",
        "",
    ]
    for s in sections:
        lines += [f'<a id="{s.id}"></a>', "", f"## {md(s.title)}", ""]
        for b in s.blocks:
            if b.kind == "table":
                lines.append(T.markdown_table(b))
            elif b.kind == "figure":
                lines += [f"![{md(b.caption)}](figures/{b.name})", "", f"*{md(b.caption)}*", ""]
            elif b.kind == "items":
                lines += [f"- {md(i)}" for i in b.items] + [""]
            elif b.style == "pre":
                lines += [f"{md(b.summary)}:", "", "```yaml", b.text.rstrip(), "```", ""]
            else:
                lines += [{"p": "", "h3": "### ", "note": "> "}[b.style] + md(b.text), ""]
    lines += ['<a id="conventions"></a>', "", "## Conventions", ""]
    lines += [f"- **{md(k)}**: {md(v)}" for k, v in conventions(res).items()]
    lines += ["", md(provenance(res)), ""]
    return "\n".join(lines)


def render_html(res: Results, sections: list[Section], cards) -> str:
    """The report as one self-contained HTML page (``template.html.j2``)."""
    source = (
        resources.files("ncood.report").joinpath("template.html.j2").read_text(encoding="utf-8")
    )
    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    cfg = res.meta.get("config") or {}
    return env.from_string(source).render(
        meta=res.meta,
        name=str(cfg.get("name", "run")),
        id_name=((res.meta.get("data") or {}).get("id") or {}).get("name", "ID"),
        sections=sections,
        cards=cards,
        conventions=conventions(res),
        provenance=provenance(res),
        config=_yaml(cfg) if cfg else "",
        rendered=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def write_report(
    results: Results,
    directory: str | os.PathLike,
    scores: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Path]:
    """Write ``figures/*.png``, ``report.md`` and ``report.html`` into ``directory``.

    Args:
        results: the run's tidy table (tables, figures and findings read nothing else).
        directory: output directory (created if missing); files are written atomically.
        scores: optional raw scores ``"<regime>/<detector>/<split>" -> (n,)`` (``split`` is
            ``id`` or an OOD set) for the score-distribution and ROC figures; without them
            those figures become "not computed" notes. The explanation section's
            thumbnails and attributions are read from ``directory/explain.npz`` when present.

    Returns:
        Paths by name: ``"html"``, ``"markdown"``, ``"figures"`` (the directory) and one
        ``"figures/<name>.png"`` per figure.
    """
    out = Path(directory)
    results = T.named(results)
    report = _Report(results, scores)
    if (out / "explain.npz").is_file():  # images and attributions of the explain section
        with np.load(out / "explain.npz", allow_pickle=False) as npz:
            report.explain_arrays = {k: npz[k] for k in npz.files}
    sections = report.sections()
    paths: dict[str, Path] = {"figures": out / "figures"}
    for fig in report.figures:
        paths[f"figures/{fig.name}"] = out / "figures" / fig.name
        with atomic_open(paths[f"figures/{fig.name}"], "wb") as fh:
            fh.write(fig.png)
    paths["markdown"] = out / "report.md"
    write_text(paths["markdown"], render_markdown(results, sections))
    paths["html"] = out / "report.html"
    write_text(paths["html"], render_html(results, sections, report.cards()))
    logger.info("report written to %s (%d figures)", paths["html"], len(report.figures))
    return paths
