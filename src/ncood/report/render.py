"""The report of a run: ``figures/*.png``, ``report.md`` and a self-contained ``report.html``.

:func:`write_report` turns a ``results`` dict (docs/results_schema.md) and the raw
detector scores into a document of sections, then renders it twice: Markdown (tables
inline, figures linked from ``figures/``) and HTML (one file, figures embedded as base64
PNG data URIs, CSS inlined, no external resource). Every string placed into HTML is
escaped. A part that a run did not compute (no depth analysis, no snapshots, no saved
scores) is rendered as a short "not computed" note instead of failing.

:func:`validate_results` checks ``results`` against ``schema.json`` (JSON Schema draft
2020-12) and a few cross-field rules (lengths that must agree).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ncood.errors import NcoodError
from ncood.io import atomic_open, write_text
from ncood.report import ood_plots
from ncood.report.findings import findings as make_findings
from ncood.report.tables import (
    Cell,
    Table,
    across_training,
    collapse_table,
    depth_auroc_table,
    depth_table,
    detector_names,
    epochs_table,
    is_number,
    nc5_table,
    ood_names,
    ood_table,
    regime_comparison_table,
    regime_names,
    to_html,
    to_markdown,
    training_table,
)

try:  # written concurrently; the report degrades to a note where it is missing
    from ncood.report import collapse_plots
except ImportError:  # pragma: no cover - depends on the state of the package
    collapse_plots = None

logger = logging.getLogger(__name__)

#: Section ids of report.html, in order (the footer ``conventions`` follows them).
SECTION_IDS = (
    "setup",
    "training",
    "ood",
    "scores",
    "roc",
    "collapse",
    "nc5",
    "depth",
    "epochs",
    "findings",
)
FOOTER_ID = "conventions"

CONVENTIONS: tuple[tuple[str, str], ...] = (
    ("Positive class", "In-distribution (ID) samples are the positive class."),
    (
        "Score sign",
        "Every detector score is higher for samples judged more in-distribution.",
    ),
    (
        "AUROC",
        "Area under the ROC curve of ID (positive) vs OOD (negative), ranked by score; "
        "ties are handled, not broken by order. 50% is chance.",
    ),
    (
        "FPR@95",
        "With k = floor(0.95 n_id), the threshold is the k-th largest ID score (so at least "
        "95% of ID samples are kept); FPR@95 is the fraction of OOD samples whose score is "
        ">= that threshold. Lower is better.",
    ),
    (
        "AUPR-In",
        "Trapezoidal area under the precision-recall curve with ID positive, ranked by score.",
    ),
    (
        "AUPR-Out",
        "Trapezoidal area under the precision-recall curve with OOD positive, ranked by -score.",
    ),
    (
        "FPR@95 (OOD+)",
        "fpr95_oodpos: OpenOOD v1.5's convention with OOD as the positive class: the fraction "
        "of ID samples rejected when 95% of OOD samples are caught. Reported under its own "
        "name so numbers can be set beside OpenOOD's tables.",
    ),
    (
        "Neural collapse",
        "NC1-NC4 on the training set with evaluation transforms, in float64; lower is more "
        "collapsed. NC5 is NECO's OrthoDev (Ben Ammar et al. 2024, arXiv 2310.06823).",
    ),
)


class ResultsError(NcoodError, ValueError):
    """A results dict does not follow docs/results_schema.md."""


# ---------------------------------------------------------------------------------------
# validation


@lru_cache(maxsize=1)
def results_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of results.json, shipped as ``schema.json``."""
    text = resources.files("ncood.report").joinpath("schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _path_str(path: Any) -> str:
    parts = [str(p) for p in path]
    return "/".join(parts) if parts else "(top level)"


def _consistency_errors(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Cross-field rules JSON Schema cannot express: lengths that must agree."""
    errors: list[tuple[str, str]] = []
    classes = ((results.get("data") or {}).get("id") or {}).get("classes") or []
    n_cls = len(classes)
    for name, reg in (results.get("regimes") or {}).items():
        base = f"regimes/{name}"
        coll = reg.get("collapse")
        if isinstance(coll, Mapping) and n_cls:
            for key, val in (coll.get("per_class") or {}).items():
                if isinstance(val, list) and len(val) != n_cls:
                    errors.append(
                        (
                            f"{base}/collapse/per_class/{key}",
                            f"{len(val)} values for {n_cls} classes",
                        )
                    )
            for key in ("cos_means_offdiag", "cos_weights_offdiag"):
                val = coll.get(key)
                if isinstance(val, list) and len(val) != n_cls * (n_cls - 1):
                    errors.append(
                        (
                            f"{base}/collapse/{key}",
                            f"{len(val)} values, expected C*(C-1) = {n_cls * (n_cls - 1)}",
                        )
                    )
            dist = coll.get("mean_distances")
            if isinstance(dist, list) and (
                len(dist) != n_cls or any(len(r) != n_cls for r in dist if isinstance(r, list))
            ):
                errors.append((f"{base}/collapse/mean_distances", f"expected {n_cls} x {n_cls}"))
        depth = reg.get("depth")
        if isinstance(depth, Mapping) and isinstance(depth.get("layers"), list):
            n = len(depth["layers"])
            for key, vals in (depth.get("metrics") or {}).items():
                if isinstance(vals, list) and len(vals) != n:
                    errors.append(
                        (f"{base}/depth/metrics/{key}", f"{len(vals)} values for {n} layers")
                    )
            if isinstance(depth.get("dims"), list) and len(depth["dims"]) != n:
                errors.append((f"{base}/depth/dims", f"{len(depth['dims'])} values for {n} layers"))
        block = across_training(reg)
        if block and isinstance(block.get("epochs"), list):
            n = len(block["epochs"])
            key = "epochs" if isinstance(reg.get("epochs"), Mapping) else "across_training"
            key_base = f"{base}/{key}"
            series = {"train_error": block.get("train_error")}
            series.update({f"metrics/{k}": v for k, v in (block.get("metrics") or {}).items()})
            series.update({f"nc5/{k}": v for k, v in (block.get("nc5") or {}).items()})
            for key, vals in series.items():
                if isinstance(vals, list) and len(vals) != n:
                    errors.append((f"{key_base}/{key}", f"{len(vals)} values for {n} snapshots"))
    return errors


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def plain_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """``results`` as results.json holds it: numpy scalars/arrays and paths made plain."""
    try:
        return json.loads(json.dumps(results, default=_to_plain))
    except (TypeError, ValueError) as exc:
        raise ResultsError(
            f"results must be JSON-serialisable (dicts, lists, str, numbers, numpy arrays): {exc}"
        ) from exc


def validate_results(results: Mapping[str, Any], *, schema: bool = True) -> None:
    """Check ``results`` against ``schema.json`` and the cross-field length rules.

    Args:
        results: a results dict as ``ncood run`` writes to results.json.
        schema: also run the JSON Schema check (needs the ``jsonschema`` package).

    Raises:
        ResultsError: naming the path of the first bad field (e.g.
            ``regimes/standard/ood/msp/digits/auroc``), what was expected and what was found.
        NcoodError: ``schema=True`` but ``jsonschema`` is not installed.
    """
    if not isinstance(results, Mapping):
        raise ResultsError(
            f"results must be a dict (the content of results.json), got {type(results).__name__}"
        )
    results = plain_results(results)  # numpy int64 is not a JSON integer until written
    if schema:
        try:
            import jsonschema
        except ImportError as exc:  # pragma: no cover - jsonschema is a dev dependency
            raise NcoodError(
                "validating results needs the 'jsonschema' package; install it with "
                "`pip install jsonschema` (or ncood[dev])"
            ) from exc
        validator = jsonschema.Draft202012Validator(results_schema())
        errors = list(validator.iter_errors(results))
        if errors:
            err = jsonschema.exceptions.best_match(errors)
            more = f" ({len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
            raise ResultsError(
                f"invalid results at {_path_str(err.absolute_path)}: {err.message}; expected "
                f"what docs/results_schema.md describes for this field{more}. Fix the code "
                "that produced results.json, or re-run `ncood run`."
            )
    problems = _consistency_errors(results)
    if problems:
        path, what = problems[0]
        more = f" ({len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ResultsError(
            f"invalid results at {path}: {what}{more}. Lengths must agree with the class "
            "list, the layers or the snapshots; fix the code that produced results.json."
        )


# ---------------------------------------------------------------------------------------
# document model


@dataclass
class Fig:
    """A rendered figure: file name, PNG bytes and caption."""

    name: str
    png: bytes
    caption: str
    small: bool = False  # laid out two per row in HTML


@dataclass
class Section:
    """One report section: stable id, title and its blocks in order.

    A block is ``(kind, payload)`` with kind one of ``p`` (text), ``h3`` (text), ``note``
    (text), ``table`` (:class:`Table`), ``figure`` (:class:`Fig`), ``list`` (list of
    text), ``kv`` (list of (key, value)), ``pre`` ((summary, text)).
    """

    id: str
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, kind: str, payload: Any) -> None:
        self.blocks.append((kind, payload))


_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def _slug(name: str) -> str:
    return _SLUG.sub("_", name).strip("._") or "x"


def _duration(seconds: Any) -> str:
    if not is_number(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(float(seconds), 60.0)
    if minutes < 60:
        return f"{int(minutes)} min {sec:04.1f} s"
    hours, minutes = divmod(minutes, 60.0)
    return f"{int(hours)} h {int(minutes):02d} min"


class _Builder:
    """Builds the sections of a report; one instance per :func:`write_report` call."""

    def __init__(self, results: Mapping[str, Any], scores: Mapping[str, np.ndarray] | None):
        self.r = results
        self.scores = scores if scores is not None else {}
        self.regimes = regime_names(results)
        self.detectors = detector_names(results)
        self.oods = ood_names(results)
        self.classes = list(((results.get("data") or {}).get("id") or {}).get("classes") or [])
        self.figures: list[Fig] = []
        self._slugs = {reg: _slug(reg) for reg in self.regimes}
        self.failed: list[str] = []

    # -- helpers ------------------------------------------------------------------------

    def figure(
        self,
        section: Section,
        name: str,
        caption: str,
        draw: Callable[[], Any],
        *,
        small: bool = False,
    ) -> None:
        """Draw a figure, keep its PNG, add it to ``section``; a failure becomes a note."""
        try:
            fig = draw()
        except Exception as exc:  # a broken figure must not cost the rest of the report
            logger.exception("figure %s could not be drawn", name)
            self.failed.append(name)
            section.add("note", f"Figure {name} could not be drawn ({type(exc).__name__}: {exc}).")
            return
        if fig is None:
            section.add("note", f"{caption.split('.')[0]}: not computed in this run.")
            return
        png = ood_plots.figure_png(fig)
        item = Fig(name=f"{name}.png", png=png, caption=caption, small=small)
        self.figures.append(item)
        section.add("figure", item)

    def aurocs(self, regime: str) -> dict[str, dict[str, float]]:
        per_det = self.r["regimes"][regime].get("ood", {})
        return {
            d: {
                o: m.get("auroc")
                for o, m in per_det.get(d, {}).items()
                if is_number(m.get("auroc"))
            }
            for d in per_det
        }

    def has_scores(self, regime: str) -> bool:
        return any(key.startswith(f"{regime}/") for key in self.scores)

    # -- sections -----------------------------------------------------------------------

    def setup(self) -> Section:
        s = Section("setup", "Set-up")
        cfg = self.r.get("config") or {}
        data = self.r.get("data") or {}
        env = self.r.get("environment") or {}
        id_data = data.get("id") or {}
        s.add(
            "p",
            f"In-distribution data: {id_data.get('name', 'n/a')} "
            f"({len(self.classes)} classes; {id_data.get('n_train', 'n/a')} training and "
            f"{id_data.get('n_test', 'n/a')} test images). OOD sets: "
            f"{', '.join(self.oods) or 'none'}. Model: {cfg.get('model', 'n/a')}. Regimes: "
            f"{', '.join(self.regimes)}. Detectors: {', '.join(self.detectors)}.",
        )
        s.add(
            "kv",
            [
                ("Run", str(cfg.get("name", "n/a"))),
                ("Created", str(self.r.get("created", "n/a"))),
                ("ncood version", str(self.r.get("ncood_version", "n/a"))),
                ("Seed", str(cfg.get("seed", "n/a"))),
                ("Device", str(env.get("device", "n/a"))),
                ("CPU", str(env.get("cpu", "n/a"))),
                ("Threads", str(env.get("threads", "n/a"))),
                ("Total time", _duration((self.r.get("durations") or {}).get("total"))),
            ],
        )
        rows = [
            [
                "ID",
                id_data.get("name", "n/a"),
                id_data.get("n_test", "n/a"),
                id_data.get("source", "n/a"),
            ]
        ]
        for name, info in (data.get("ood") or {}).items():
            rows.append(["OOD", name, info.get("n", "n/a"), info.get("source", "n/a")])
        s.add(
            "table",
            _plain_table("Data sources", ["Role", "Dataset", "Samples scored", "Source"], rows),
        )
        if env:
            s.add(
                "table",
                _plain_table(
                    "Software and hardware", ["Item", "Value"], [[k, v] for k, v in env.items()]
                ),
            )
        durations = self.r.get("durations") or {}
        if durations:
            s.add(
                "table",
                _plain_table(
                    "Durations",
                    ["Stage", "Wall time", "Seconds"],
                    [
                        [k, _duration(v), f"{v:.1f}" if is_number(v) else "n/a"]
                        for k, v in durations.items()
                    ],
                    align=["l", "r", "r"],
                ),
            )
        dets = self.r.get("detectors") or {}
        if dets:
            s.add(
                "table",
                _plain_table(
                    "Detector hyperparameters",
                    ["Detector", "Parameters"],
                    [
                        [d, ", ".join(f"{k}={v}" for k, v in (p or {}).items()) or "defaults"]
                        for d, p in dets.items()
                    ],
                ),
            )
        if cfg:
            s.add("pre", ("Resolved run config (YAML)", _yaml(cfg)))
        return s

    def training(self) -> Section:
        s = Section("training", "Training")
        s.add("table", training_table(self.r))
        self.figure(
            s,
            "training_curves",
            "Training curves: cross-entropy loss (top) and accuracy (bottom) per epoch, train "
            "(solid) vs test (dashed), one column per regime.",
            lambda: ood_plots.plot_training_curves(self.r),
        )
        return s

    def ood(self) -> Section:
        s = Section("ood", "OOD detection")
        s.add(
            "p",
            "AUROC, FPR@95, AUPR-In and AUPR-Out in %, ID test set vs each OOD set. The best "
            "value of each column is bold (lowest for FPR@95).",
        )
        for reg in self.regimes:
            s.add("h3", f"Regime: {reg}")
            for o in self.oods:
                s.add("table", ood_table(self.r, reg, o))
        if len(self.regimes) >= 2:
            s.add("h3", "Regimes side by side")
            for o in self.oods:
                s.add("table", regime_comparison_table(self.r, o))
            self.figure(
                s,
                "regime_comparison",
                "AUROC per detector and OOD set; filled bars: "
                f"{self.regimes[0]}, hatched bars: {', '.join(self.regimes[1:])}. Dotted line: "
                "chance (50%).",
                lambda: ood_plots.plot_regime_comparison(self.r, self.detectors, self.oods),
            )
        return s

    def score_figures(self) -> Section:
        s = Section("scores", "Score distributions")
        for reg in self.regimes:
            s.add("h3", f"Regime: {reg}")
            if not self.has_scores(reg):
                s.add("note", f"Raw scores of {reg} were not saved (scores.npz): not computed.")
                continue
            self.figure(
                s,
                f"scores_{self._slugs[reg]}",
                f"Score distributions ({reg}): ID test (filled, detector colour) vs each OOD set "
                "(dark outline); rows are detectors, columns OOD sets. Higher scores mean more "
                "in-distribution.",
                lambda reg=reg: ood_plots.plot_score_distributions(
                    self.scores, reg, self.detectors, self.oods, aurocs=self.aurocs(reg)
                ),
            )
        return s

    def roc(self) -> Section:
        s = Section("roc", "ROC curves")
        for reg in self.regimes:
            s.add("h3", f"Regime: {reg}")
            if not self.has_scores(reg):
                s.add("note", f"Raw scores of {reg} were not saved (scores.npz): not computed.")
                continue
            self.figure(
                s,
                f"roc_{self._slugs[reg]}",
                f"ROC curves ({reg}), ID positive; AUROC in the legend. Dots mark each "
                "detector's FPR@95 operating point; the dashed line is TPR = 95%.",
                lambda reg=reg: ood_plots.plot_roc_curves(
                    self.scores, reg, self.detectors, self.oods, aurocs=self.aurocs(reg)
                ),
            )
        return s

    def collapse(self) -> Section:
        s = Section("collapse", "Neural collapse")
        table = collapse_table(self.r)
        if table is None:
            s.add("note", "Neural collapse was not computed in this run.")
            return s
        s.add("table", table)
        for reg in self.regimes:
            coll = self.r["regimes"][reg].get("collapse")
            s.add("h3", f"Regime: {reg}")
            if not coll:
                s.add("note", f"Neural collapse of {reg}: not computed.")
                continue
            if coll.get("etf_exists") is False:
                s.add("note", "No simplex ETF exists for this width and number of classes.")
            for note in coll.get("notes") or []:
                s.add("note", str(note))
            if collapse_plots is None:  # TODO(report): drop once collapse_plots.py is merged
                s.add("note", "Collapse figures need ncood.report.collapse_plots (not installed).")
                continue
            for name, caption, draw in self._collapse_figures(reg, coll):
                self.figure(s, f"collapse_{self._slugs[reg]}_{name}", caption, draw, small=True)
        return s

    def _collapse_figures(self, reg: str, coll: Mapping[str, Any]):
        per_class = coll.get("per_class") or {}
        names = self.classes or None
        c = len(self.classes) or len(per_class.get("within_variance") or [])
        out = []
        if per_class.get("within_variance"):
            out.append(
                (
                    "variance",
                    f"NC1 ({reg}): within-class variance per class, mean over the class of "
                    "||z - mu_c||^2; the dashed line is their mean.",
                    lambda: collapse_plots.plot_class_variance(
                        np.asarray(per_class["within_variance"], dtype=float),
                        class_names=names,
                        title=f"NC1: within-class variance per class ({reg})",
                    ),
                )
            )
        if coll.get("cos_means_offdiag") and c > 1:
            out.append(
                (
                    "cosines",
                    f"NC2 ({reg}): cosines between centred class means (and classifier rows), one "
                    "count per class pair; the dashed line is the simplex-ETF value -1/(C-1). The "
                    "mean of these cosines equals -1/(C-1) by construction when the norms are "
                    "equal, so only their spread (NC2 equiangular) measures collapse.",
                    lambda: collapse_plots.plot_cosine_histogram(
                        _upper_pairs(coll["cos_means_offdiag"], c),
                        c,
                        weight_cosines=(
                            _upper_pairs(coll["cos_weights_offdiag"], c)
                            if coll.get("cos_weights_offdiag")
                            else None
                        ),
                        title=f"NC2: cosines between centred class means ({reg})",
                    ),
                )
            )
        if per_class.get("weight_mean_cos"):
            out.append(
                (
                    "alignment",
                    f"NC3 ({reg}): cosine between each classifier row w_c and its centred class "
                    "mean mu_c - mu_G; 1 at perfect self-duality.",
                    lambda: collapse_plots.plot_weight_mean_alignment(
                        np.asarray(per_class["weight_mean_cos"], dtype=float),
                        class_names=names,
                        title=f"NC3: alignment of weights and class means ({reg})",
                    ),
                )
            )
        if coll.get("mean_distances"):
            out.append(
                (
                    "distances",
                    f"L2 distances between class means ({reg}); a collapsed network approaches "
                    "equal off-diagonal distances.",
                    lambda: collapse_plots.plot_mean_distances(
                        np.asarray(coll["mean_distances"], dtype=float),
                        class_names=names,
                        title=f"L2 distances between class means ({reg})",
                    ),
                )
            )
        return out

    def nc5(self) -> Section:
        s = Section("nc5", "NC5: ID/OOD orthogonality")
        table = nc5_table(self.r)
        if table is None:
            s.add("note", "NC5 was not computed in this run.")
        else:
            s.add("table", table)
        return s

    def depth(self) -> Section:
        s = Section("depth", "Collapse and detection vs depth")
        any_depth = False
        for reg in self.regimes:
            s.add("h3", f"Regime: {reg}")
            depth = self.r["regimes"][reg].get("depth")
            if not depth:
                s.add("note", f"Per-layer analysis of {reg}: not computed.")
                continue
            any_depth = True
            t = depth_table(self.r, reg)
            if t is not None:
                s.add("table", t)
            if collapse_plots is not None and depth.get("metrics"):
                self.figure(
                    s,
                    f"depth_{self._slugs[reg]}_collapse",
                    f"Collapse metrics per layer ({reg}, log scale), shallow to deep.",
                    lambda depth=depth, reg=reg: collapse_plots.plot_depth(
                        _depth_for_plot(depth),
                        metrics=[m for m in ("nc1", "nc1_trace", "cdnv") if m in depth["metrics"]],
                        title=f"Collapse vs depth ({reg})",
                    ),
                )
            t = depth_auroc_table(self.r, reg)
            if t is None:
                s.add("note", f"Detector AUROC per layer of {reg}: not computed.")
            else:
                s.add("table", t)
                self.figure(
                    s,
                    f"depth_{self._slugs[reg]}_auroc",
                    f"AUROC of the feature-space detectors on each layer's pooled features "
                    f"({reg}).",
                    lambda reg=reg: ood_plots.plot_depth_auroc(self.r, reg),
                )
        if not any_depth:
            s.blocks = [("note", "The per-layer analysis was not computed in this run.")]
        return s

    def epochs(self) -> Section:
        s = Section("epochs", "Collapse across training")
        any_block = False
        for reg in self.regimes:
            s.add("h3", f"Regime: {reg}")
            block = across_training(self.r["regimes"][reg])
            if not block or not block.get("epochs"):
                s.add("note", f"Collapse across training of {reg}: not computed.")
                continue
            any_block = True
            t = epochs_table(self.r, reg)
            if t is not None:
                s.add("table", t)
            if collapse_plots is not None:
                self.figure(
                    s,
                    f"epochs_{self._slugs[reg]}",
                    f"Collapse metrics and NC5 at each training snapshot ({reg}, log scale), with "
                    "the training error below.",
                    lambda block=block, reg=reg: collapse_plots.plot_epochs(
                        _epochs_for_plot(block), title=f"Collapse during training ({reg})"
                    ),
                )
        if not any_block:
            s.blocks = [("note", "Collapse across training was not computed in this run.")]
        return s

    def findings(self) -> Section:
        s = Section("findings", "Findings")
        items = make_findings(self.r)
        s.add(
            "p",
            "Generated from the numbers above; each sentence quotes the values it rests on. "
            "Differences under 1 AUROC point are called about equal.",
        )
        if items:
            s.add("list", items)
        else:
            s.add("note", "Not enough results to state findings.")
        return s

    def sections(self) -> list[Section]:
        return [
            self.setup(),
            self.training(),
            self.ood(),
            self.score_figures(),
            self.roc(),
            self.collapse(),
            self.nc5(),
            self.depth(),
            self.epochs(),
            self.findings(),
        ]

    def summary_cards(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Per regime: accuracies, NC1 and the best AUROC per OOD set (first screen)."""
        cards = []
        for reg in self.regimes:
            r = self.r["regimes"][reg]
            final = r.get("final") or (r.get("history") or [{}])[-1]
            items = []
            for key, label in (("test_acc", "Test accuracy"), ("train_acc", "Train accuracy")):
                v = final.get(key)
                items.append((label, f"{100 * v:.2f}%" if is_number(v) else "n/a"))
            nc1 = (r.get("collapse") or {}).get("nc1")
            items.append(("NC1", f"{nc1:.4g}" if is_number(nc1) else "n/a"))
            for o in self.oods:
                vals = {
                    d: m.get("auroc")
                    for d, by in r.get("ood", {}).items()
                    for oo, m in by.items()
                    if oo == o and is_number(m.get("auroc"))
                }
                if vals:
                    best = max(vals, key=vals.get)
                    items.append((f"Best on {o}", f"{best} ({100 * vals[best]:.2f}% AUROC)"))
            cards.append((reg, items))
        return cards


def _plain_table(title: str, headers: list[str], rows: list[list[Any]], align=None) -> Table:
    return Table(
        title=title,
        headers=headers,
        rows=[[Cell(str(v)) for v in row] for row in rows],
        align=align or ["l"] * len(headers),
    )


def _yaml(obj: Any) -> str:
    return yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=False)


def _upper_pairs(offdiag: list[float], c: int) -> np.ndarray:
    """One value per class pair ``(C(C-1)/2,)`` from a row-major off-diagonal ``(C(C-1),)``."""
    a = np.asarray(offdiag, dtype=float)
    if a.size != c * (c - 1):
        return a
    full = np.zeros((c, c))
    full[~np.eye(c, dtype=bool)] = a
    if not np.allclose(full, full.T, atol=1e-9):  # not row-major G[~eye]: keep every value
        return a
    return full[np.triu_indices(c, k=1)]


def _depth_for_plot(depth: Mapping[str, Any]) -> dict[str, Any]:
    """results.json's depth block in the layout of ``DepthResult.to_dict()``."""
    layers = list(depth["layers"])
    dims = depth.get("dims") or ["?"] * len(layers)
    metrics = {
        lay: {
            **{k: (vals[i] if i < len(vals) else None) for k, vals in depth["metrics"].items()},
            "dim": dims[i] if i < len(dims) else "?",
        }
        for i, lay in enumerate(layers)
    }
    decay = {}
    for k, fit in (depth.get("decay") or {}).items():
        factor = fit.get("factor")
        if factor is None and is_number(fit.get("rate")):
            factor = math.exp(fit["rate"])  # fit of log(v) = a + rate * layer index
        decay[k] = {**fit, "factor": factor}
    return {"layers": layers, "metrics": metrics, "decay": decay}


def _epochs_for_plot(block: Mapping[str, Any]) -> dict[str, Any]:
    """results.json's across-training block in the layout of ``EpochResult.to_dict()``."""
    epochs = list(block["epochs"])
    n = len(epochs)

    def at(vals: Any, i: int) -> Any:
        return vals[i] if isinstance(vals, list) and i < len(vals) else None

    rows = []
    for i, e in enumerate(epochs):
        row = {"epoch": e, "train_error": at(block.get("train_error"), i)}
        row.update({k: at(v, i) for k, v in (block.get("metrics") or {}).items()})
        row.update({f"nc5/{o}": at(v, i) for o, v in (block.get("nc5") or {}).items()})
        rows.append(row)
    return {
        "epochs": epochs[:n],
        "zero_error_epoch": block.get("zero_error_epoch"),
        "ood": list(block.get("nc5") or {}),
        "table": rows,
        "metrics": block.get("metrics") or {},
    }


# ---------------------------------------------------------------------------------------
# Markdown


def _md_text(text: str) -> str:
    # "_" stays: GitHub Markdown ignores intraword underscores (texture_crops, fashion_mnist)
    return re.sub(r"([\\`*\[\]<>|])", r"\\\1", str(text))


def render_markdown(
    results: Mapping[str, Any], sections: list[Section], figure_dir: str = "figures"
) -> str:
    """The report as Markdown: same tables as the HTML, figures linked from ``figure_dir``."""
    cfg = results.get("config") or {}
    lines = [
        f"# ncood report: {_md_text(cfg.get('name', 'run'))}",
        "",
        f"Created {_md_text(results.get('created', 'n/a'))} with ncood "
        f"{_md_text(results.get('ncood_version', 'n/a'))}.",
        "",
        "Contents: "
        + " · ".join(f"[{_md_text(s.title)}](#{s.id})" for s in sections)
        + " · [Conventions](#conventions)",
        "",
    ]
    for s in sections:
        lines += [f'<a id="{s.id}"></a>', "", f"## {_md_text(s.title)}", ""]
        for kind, payload in s.blocks:
            if kind == "p":
                lines += [_md_text(payload), ""]
            elif kind == "h3":
                lines += [f"### {_md_text(payload)}", ""]
            elif kind == "note":
                lines += [f"> {_md_text(payload)}", ""]
            elif kind == "table":
                lines += [to_markdown(payload)]
            elif kind == "figure":
                lines += [
                    f"![{_md_text(payload.caption)}]({figure_dir}/{payload.name})",
                    "",
                    f"*{_md_text(payload.caption)}*",
                    "",
                ]
            elif kind == "list":
                lines += [f"- {_md_text(item)}" for item in payload] + [""]
            elif kind == "kv":
                lines += [f"- **{_md_text(k)}**: {_md_text(v)}" for k, v in payload] + [""]
            elif kind == "pre":
                summary, text = payload
                lines += [f"{_md_text(summary)}:", "", "```yaml", text.rstrip(), "```", ""]
    lines += ['<a id="conventions"></a>', "", "## Conventions", ""]
    lines += [f"- **{_md_text(k)}**: {_md_text(v)}" for k, v in CONVENTIONS]
    lines += ["", _md_text(_provenance(results)), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# HTML


@lru_cache(maxsize=1)
def _css() -> str:
    return resources.files("ncood.report").joinpath("style.css").read_text(encoding="utf-8")


def _provenance(results: Mapping[str, Any]) -> str:
    cfg = results.get("config") or {}
    env = results.get("environment") or {}
    versions = ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "numpy") if k in env)
    return (
        f"Produced by ncood {results.get('ncood_version', 'n/a')} on "
        f"{results.get('created', 'n/a')}"
        f" from config {cfg.get('name', 'n/a')!s} (seed {cfg.get('seed', 'n/a')}); {versions}; "
        f"{env.get('platform', 'n/a')}; CPU {env.get('cpu', 'n/a')}; device "
        f"{env.get('device', 'n/a')}, {env.get('threads', 'n/a')} threads."
    )


def _html_block(kind: str, payload: Any, table_index: list[int]) -> str:
    e = html.escape
    if kind == "p":
        return f"<p>{e(payload)}</p>"
    if kind == "h3":
        return f"<h3>{e(payload)}</h3>"
    if kind == "note":
        return f'<p class="note">{e(payload)}</p>'
    if kind == "table":
        table_index[0] += 1
        return to_html(payload, table_id=f"table-{table_index[0]}")
    if kind == "figure":
        data = base64.b64encode(payload.png).decode("ascii")
        return (
            f'<figure id="fig-{e(payload.name[:-4])}"><img src="data:image/png;base64,{data}" '
            f'alt="{e(payload.caption)}" loading="eager">'
            f"<figcaption>{e(payload.caption)}</figcaption></figure>"
        )
    if kind == "list":
        return '<ul class="findings">' + "".join(f"<li>{e(i)}</li>" for i in payload) + "</ul>"
    if kind == "kv":
        rows = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in payload)
        return f'<div class="card"><dl>{rows}</dl></div>'
    if kind == "pre":
        summary, text = payload
        return f"<details><summary>{e(summary)}</summary><pre>{e(text)}</pre></details>"
    raise ValueError(f"unknown block kind {kind!r}")


def render_html(
    results: Mapping[str, Any],
    sections: list[Section],
    cards: list[tuple[str, list[tuple[str, str]]]] = (),
) -> str:
    """The report as one self-contained HTML page (inline CSS, figures as data URIs)."""
    e = html.escape
    cfg = results.get("config") or {}
    name = str(cfg.get("name", "run"))
    id_name = ((results.get("data") or {}).get("id") or {}).get("name", "")
    toc = "".join(f'<li><a href="#{s.id}">{e(s.title)}</a></li>' for s in sections)
    toc += f'<li><a href="#{FOOTER_ID}">Conventions</a></li>'
    counter = [0]
    body = []
    for s in sections:
        parts, grid = [], []
        for k, p in [*s.blocks, ("end", None)]:
            if k == "figure" and p.small:
                grid.append(_html_block(k, p, counter))
                continue
            if grid:  # consecutive small figures share a two-column grid
                parts.append('<div class="fig-grid">' + "".join(grid) + "</div>")
                grid = []
            if k != "end":
                parts.append(_html_block(k, p, counter))
        inner = "".join(parts)
        body.append(f'<section id="{s.id}"><h2>{e(s.title)}</h2>{inner}</section>')
    card_html = "".join(
        f'<div class="card"><h3>{e(reg)}</h3><dl>'
        + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in items)
        + "</dl></div>"
        for reg, items in cards
    )
    conventions = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in CONVENTIONS)
    lead = (
        f"How well each detector separates in-distribution ({id_name or 'ID'}) test images "
        "from each OOD set, how collapsed each network is, and how the two relate. Key "
        "numbers per regime:"
    )
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    config_block = (
        f"<details><summary>Config that produced this report</summary><pre>{e(_yaml(cfg))}</pre>"
        "</details>"
        if cfg
        else ""
    )
    meta = (
        f"Created {results.get('created', 'n/a')} · ncood {results.get('ncood_version', 'n/a')}"
        f" · rendered {generated}"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="ncood {e(str(results.get("ncood_version", "")))}">
<title>ncood report: {e(name)}</title>
<style>
{_css()}
</style>
</head>
<body>
<div class="layout">
<nav id="toc" aria-label="Contents">
<div class="brand">ncood report</div>
<div class="sub">{e(name)}{(" · " + e(str(id_name))) if id_name else ""}</div>
<ol>{toc}</ol>
</nav>
<main>
<header>
<h1>OOD detection and neural collapse: {e(name)}</h1>
<p class="meta">{e(meta)}</p>
<p class="lead">{e(lead)}</p>
<div class="cards">{card_html}</div>
</header>
{"".join(body)}
<footer id="{FOOTER_ID}">
<h2>Conventions</h2>
<dl>{conventions}</dl>
<p>{e(_provenance(results))}</p>
{config_block}
</footer>
</main>
</div>
</body>
</html>
"""


# ---------------------------------------------------------------------------------------
# entry point


def write_report(
    results: Mapping[str, Any],
    scores: Mapping[str, np.ndarray] | None,
    out_dir: str | os.PathLike,
    *,
    validate: bool = True,
) -> dict[str, Path]:
    """Write ``figures/*.png``, ``report.md`` and ``report.html`` into ``out_dir``.

    Args:
        results: a results dict (docs/results_schema.md), as written to results.json.
        scores: ``"<regime>/<detector>/<split>" -> (n,)`` raw scores (the content of
            scores.npz; ``split`` is ``id`` or an OOD set); None or missing keys turn the
            distribution and ROC figures into "not computed" notes.
        out_dir: output directory (created if missing).
        validate: check ``results`` first (:func:`validate_results`); the JSON Schema part
            is skipped with a warning when ``jsonschema`` is not installed.

    Returns:
        Paths by name: ``"html"``, ``"markdown"``, ``"figures"`` (the directory) and one
        ``"figures/<name>.png"`` entry per figure.

    Raises:
        ResultsError: ``results`` does not follow the schema (with ``validate=True``).
    """
    results = plain_results(results)
    if validate:
        try:
            import jsonschema  # noqa: F401

            have_schema = True
        except ImportError:  # pragma: no cover - jsonschema is a dev dependency
            logger.warning(
                "jsonschema is not installed: results are not checked against schema.json"
            )
            have_schema = False
        validate_results(results, schema=have_schema)
    out = Path(out_dir)
    fig_dir = out / "figures"
    builder = _Builder(results, scores)
    sections = builder.sections()
    paths: dict[str, Path] = {"figures": fig_dir}
    for fig in builder.figures:
        path = fig_dir / fig.name
        with atomic_open(path, "wb") as fh:
            fh.write(fig.png)
        paths[f"figures/{fig.name}"] = path
    md_path, html_path = out / "report.md", out / "report.html"
    write_text(md_path, render_markdown(results, sections))
    write_text(html_path, render_html(results, sections, builder.summary_cards()))
    paths["markdown"] = md_path
    paths["html"] = html_path
    if builder.failed:
        logger.warning("report written without figure(s): %s", ", ".join(builder.failed))
    logger.info("report written to %s (%d figures)", html_path, len(builder.figures))
    return paths
