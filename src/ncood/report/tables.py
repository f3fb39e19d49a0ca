"""Result tables of a run: built once as :class:`Table`, rendered as Markdown, HTML or text.

Every builder reads a ``results`` dict (docs/results_schema.md) and returns a
:class:`Table` whose cells carry their display text and a ``bold`` flag. The best value
of each OOD-metric column is bold: highest for AUROC, AUPR-In and AUPR-Out, lowest for
FPR@95 (both conventions). Values are compared as displayed (percent, 2 decimals), so
ties at display precision are all marked. In neural-collapse tables lower is more
collapsed, and the lowest value of each row is bold.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# (key, header, higher_is_better)
OOD_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("auroc", "AUROC", True),
    ("fpr95", "FPR@95", False),
    ("aupr_in", "AUPR-In", True),
    ("aupr_out", "AUPR-Out", True),
    ("fpr95_oodpos", "FPR@95 (OOD+)", False),
)

# (key, label, formula); lower is more collapsed for every row
NC_ROWS: tuple[tuple[str, str, str], ...] = (
    ("nc1", "NC1", "Tr(S_W S_B^+)/C"),
    ("nc1_trace", "NC1 (trace)", "Tr(S_W)/Tr(S_B)"),
    ("cdnv", "CDNV", "mean (Var_i+Var_j)/(2||mu_i-mu_j||^2)"),
    ("nc2_equinorm_means", "NC2 equinorm, means", "std/mean ||mu_c-mu_G||"),
    ("nc2_equinorm_weights", "NC2 equinorm, weights", "std/mean ||w_c||"),
    ("nc2_equiangular_means", "NC2 equiangular, means", "std of off-diagonal cosines"),
    ("nc2_equiangular_weights", "NC2 equiangular, weights", "std of off-diagonal cosines"),
    ("nc2_maxangle_means", "NC2 max-angle, means", "mean |cos + 1/(C-1)|"),
    ("nc2_maxangle_weights", "NC2 max-angle, weights", "mean |cos + 1/(C-1)|"),
    ("nc3", "NC3", "||W/||W||_F - M/||M||_F||_F^2"),
    ("nc4", "NC4", "fraction head != nearest class mean"),
)

MISSING = "n/a"


@dataclass
class Cell:
    """One table cell: display text, bold flag, and the number behind it (if any)."""

    text: str
    bold: bool = False
    value: float | None = None


@dataclass
class Table:
    """A rectangular table with a title, a header row and an optional note below."""

    title: str
    headers: list[str]
    rows: list[list[Cell]]
    note: str = ""
    align: list[str] = field(default_factory=list)  # "l" or "r" per column
    groups: list[tuple[str, int]] = field(default_factory=list)  # header labels spanning columns

    def column(self, j: int) -> list[Cell]:
        return [row[j] for row in self.rows]


# ---------------------------------------------------------------------------------------
# ordering and formatting helpers


def _union(keys: Iterable[Iterable[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for ks in keys:
        for k in ks:
            seen.setdefault(k, None)
    return list(seen)


def regime_names(results: dict[str, Any]) -> list[str]:
    """Regimes in the order the results list them."""
    return list(results.get("regimes", {}))


def detector_names(results: dict[str, Any]) -> list[str]:
    """Detectors in config order, then any others found in the regimes' OOD results."""
    declared = list(results.get("detectors", {}) or {})
    found = _union(reg.get("ood", {}) for reg in results.get("regimes", {}).values())
    return [d for d in declared if d in found] + [d for d in found if d not in declared]


def ood_names(results: dict[str, Any]) -> list[str]:
    """OOD sets in data order, then any others found in the regimes' OOD results."""
    declared = list((results.get("data", {}) or {}).get("ood", {}) or {})
    found = _union(
        per_det
        for reg in results.get("regimes", {}).values()
        for per_det in reg.get("ood", {}).values()
    )
    return [o for o in declared if o in found] + [o for o in found if o not in declared]


def is_number(value: Any) -> bool:
    """True for a finite real number (bools excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pct(value: Any) -> str:
    """A fraction as a percentage with 2 decimals (``0.91234 -> '91.23'``)."""
    return f"{100.0 * value:.2f}" if is_number(value) else MISSING


def sig(value: Any) -> str:
    """A statistic with 4 significant digits."""
    return f"{value:.4g}" if is_number(value) else MISSING


def _mark_best(cells: Sequence[Cell], higher_is_better: bool, key=lambda v: v) -> None:
    vals = [key(c.value) for c in cells if is_number(c.value)]
    if len(vals) < 2:
        return
    best = max(vals) if higher_is_better else min(vals)
    for c in cells:
        if is_number(c.value) and key(c.value) == best:
            c.bold = True


def _display_pct(v: float) -> float:
    return round(100.0 * v, 2)


def _display_sig(v: float) -> float:
    return float(f"{v:.4g}")


def _metric(results: dict[str, Any], regime: str, det: str, ood: str, key: str) -> Any:
    return results["regimes"][regime].get("ood", {}).get(det, {}).get(ood, {}).get(key)


# ---------------------------------------------------------------------------------------
# builders


def ood_table(results: dict[str, Any], regime: str, ood: str) -> Table:
    """OOD metrics of one regime on one OOD set: rows detectors, columns metrics in %.

    Columns AUROC, FPR@95, AUPR-In, AUPR-Out (and FPR@95 with OOD positive when the
    results carry it); the best value of each column is bold (lowest for FPR@95).
    """
    dets = detector_names(results)
    cols = [
        c
        for c in OOD_COLUMNS
        if c[0] != "fpr95_oodpos"
        or any(is_number(_metric(results, regime, d, ood, c[0])) for d in dets)
    ]
    rows = []
    for det in dets:
        row = [Cell(det)]
        for key, _, _ in cols:
            v = _metric(results, regime, det, ood, key)
            row.append(Cell(pct(v), value=v if is_number(v) else None))
        rows.append(row)
    table = Table(
        title=f"{regime}: ID vs {ood}",
        headers=["Detector"] + [f"{h} (%)" for _, h, _ in cols],
        rows=rows,
        note="Best per column in bold (lowest for FPR@95).",
        align=["l"] + ["r"] * len(cols),
    )
    for j, (_, _, higher) in enumerate(cols, start=1):
        _mark_best(table.column(j), higher, _display_pct)
    return table


def regime_comparison_table(results: dict[str, Any], ood: str) -> Table:
    """The regimes side by side on one OOD set: AUROC and FPR@95 per regime, in %.

    With exactly two regimes a column gives the AUROC difference (second - first), in
    percentage points.
    """
    regs = regime_names(results)
    dets = detector_names(results)
    headers = ["Detector"] + [f"AUROC {r}" for r in regs]
    if len(regs) == 2:
        headers.append(f"ΔAUROC ({regs[1]} − {regs[0]})")
    headers += [f"FPR@95 {r}" for r in regs]
    rows = []
    for det in dets:
        row = [Cell(det)]
        aurocs = [_metric(results, r, det, ood, "auroc") for r in regs]
        row += [Cell(pct(v), value=v if is_number(v) else None) for v in aurocs]
        if len(regs) == 2:
            if is_number(aurocs[0]) and is_number(aurocs[1]):
                d = 100.0 * (aurocs[1] - aurocs[0])
                row.append(Cell(f"{d:+.2f}"))
            else:
                row.append(Cell(MISSING))
        for r in regs:
            v = _metric(results, r, det, ood, "fpr95")
            row.append(Cell(pct(v), value=v if is_number(v) else None))
        rows.append(row)
    table = Table(
        title=f"Regimes side by side: ID vs {ood}",
        headers=headers,
        rows=rows,
        note="AUROC and FPR@95 in %; Δ in percentage points. Best per column in bold.",
        align=["l"] + ["r"] * (len(headers) - 1),
    )
    n = len(regs)
    for j in range(1, 1 + n):
        _mark_best(table.column(j), True, _display_pct)
    offset = 1 + n + (1 if n == 2 else 0)
    for j in range(offset, offset + n):
        _mark_best(table.column(j), False, _display_pct)
    return table


def training_table(results: dict[str, Any]) -> Table:
    """Final train/test accuracy (%) and loss per regime."""
    rows = []
    for r in regime_names(results):
        reg = results["regimes"][r]
        final = reg.get("final") or (reg.get("history") or [{}])[-1]
        n_epochs = training_epochs(reg)
        rows.append(
            [
                Cell(r),
                Cell(str(n_epochs) if n_epochs is not None else MISSING),
                Cell(pct(final.get("train_acc"))),
                Cell(pct(final.get("test_acc"))),
                Cell(sig(final.get("train_loss"))),
                Cell(sig(final.get("test_loss"))),
            ]
        )
    return Table(
        title="Training",
        headers=["Regime", "Epochs", "Train acc (%)", "Test acc (%)", "Train loss", "Test loss"],
        rows=rows,
        note="Values at the end of training, as logged by the training loop.",
        align=["l", "r", "r", "r", "r", "r"],
    )


def collapse_table(results: dict[str, Any]) -> Table | None:
    """NC1-NC4 of the penultimate layer, one column per regime (None if none computed)."""
    regs = [r for r in regime_names(results) if results["regimes"][r].get("collapse")]
    if not regs:
        return None
    rows = []
    for key, label, formula in NC_ROWS:
        row = [Cell(label), Cell(formula)]
        cells = []
        for r in regs:
            v = results["regimes"][r]["collapse"].get(key)
            cells.append(Cell(sig(v), value=v if is_number(v) else None))
        _mark_best(cells, False, _display_sig)
        rows.append(row + cells)
    cos_cells = []
    for r in regs:
        per_class = results["regimes"][r]["collapse"].get("per_class") or {}
        vals = [v for v in per_class.get("weight_mean_cos") or [] if is_number(v)]
        m = sum(vals) / len(vals) if vals else None
        cos_cells.append(Cell(sig(m), value=m))
    if any(c.value is not None for c in cos_cells):
        _mark_best(cos_cells, True, _display_sig)
        rows.append([Cell("NC3 mean cosine"), Cell("mean_c cos(w_c, mu_c - mu_G)")] + cos_cells)
    return Table(
        title="Neural collapse (penultimate layer, train set)",
        headers=["Metric", "Definition"] + regs,
        rows=rows,
        note=(
            "Lower is more collapsed for every metric; the lowest value of each row is bold "
            "(for the mean weight/mean cosine, higher is better aligned and is bold)."
        ),
        align=["l", "l"] + ["r"] * len(regs),
    )


def nc5_table(results: dict[str, Any]) -> Table | None:
    """NC5 (OrthoDev, lower = ID and OOD means closer to orthogonal) per OOD set."""
    regs = [r for r in regime_names(results) if results["regimes"][r].get("nc5")]
    if not regs:
        return None
    centred = [r for r in regs if results["regimes"][r].get("nc5_centred")]
    oods = [o for o in ood_names(results) if any(o in results["regimes"][r]["nc5"] for r in regs)]
    oods += [o for r in regs for o in results["regimes"][r]["nc5"] if o not in oods]
    rows = []
    for o in oods:
        cells = []
        for r in regs:
            v = results["regimes"][r]["nc5"].get(o)
            cells.append(Cell(sig(v), value=v if is_number(v) else None))
        _mark_best(cells, False, _display_sig)
        extra = []
        for r in centred:
            v = results["regimes"][r]["nc5_centred"].get(o)
            extra.append(Cell(sig(v), value=v if is_number(v) else None))
        _mark_best(extra, False, _display_sig)
        rows.append([Cell(o)] + cells + extra)
    return Table(
        title="NC5: ID/OOD orthogonality (OrthoDev)",
        headers=["OOD set"] + [f"NC5 {r}" for r in regs] + [f"NC5 centred {r}" for r in centred],
        rows=rows,
        note=(
            "OrthoDev = mean_c |cos(mu_c, mu_OOD)| with uncentred class means (NECO, Ben Ammar "
            "et al. 2024); lower = OOD mean closer to orthogonal to the ID class means. "
            "Lowest per row in bold."
        ),
        align=["l"] + ["r"] * (len(regs) + len(centred)),
    )


def depth_table(results: dict[str, Any], regime: str) -> Table | None:
    """Collapse metrics per layer of one regime (None if not computed)."""
    depth = results["regimes"][regime].get("depth")
    if not depth or not depth.get("layers"):
        return None
    layers = depth["layers"]
    metrics = depth.get("metrics") or {}
    keys = list(metrics)
    rows = []
    for i, layer in enumerate(layers):
        row = [Cell(layer)]
        for k in keys:
            vals = metrics[k]
            v = vals[i] if i < len(vals) else None
            row.append(Cell(sig(v), value=v if is_number(v) else None))
        rows.append(row)
    notes = []
    for k, fit in (depth.get("decay") or {}).items():
        if is_number(fit.get("rate")):
            r2 = f", R² {fit['r2']:.3f}" if is_number(fit.get("r2")) else ""
            factor = math.exp(fit["rate"])
            notes.append(
                f"{k}: log-linear fit over depth, rate {fit['rate']:.3g} per layer "
                f"(x{factor:.3g} per layer{r2})"
            )
    return Table(
        title=f"{regime}: collapse per layer (train set)",
        headers=["Layer"] + keys,
        rows=rows,
        note="; ".join(notes),
        align=["l"] + ["r"] * len(keys),
    )


def depth_auroc_table(results: dict[str, Any], regime: str) -> Table | None:
    """AUROC (%) of the per-layer detectors: rows detector/OOD set, columns layers."""
    depth = results["regimes"][regime].get("depth") or {}
    per_layer = depth.get("ood_auroc")
    if not per_layer:
        return None
    layers = [lay for lay in depth.get("layers", []) if lay in per_layer]
    layers += [lay for lay in per_layer if lay not in layers]
    dets = _union(per_layer[lay] for lay in layers)
    oods = _union(per_layer[lay][d] for lay in layers for d in per_layer[lay])
    rows = []
    for o in oods:
        for d in dets:
            cells = []
            for lay in layers:
                v = per_layer[lay].get(d, {}).get(o)
                cells.append(Cell(pct(v), value=v if is_number(v) else None))
            _mark_best(cells, True, _display_pct)
            rows.append([Cell(d), Cell(o)] + cells)
    return Table(
        title=f"{regime}: detector AUROC (%) per layer",
        headers=["Detector", "OOD set"] + layers,
        rows=rows,
        note="Best layer per row in bold.",
        align=["l", "l"] + ["r"] * len(layers),
    )


def across_training(regime_result: dict[str, Any]) -> dict[str, Any] | None:
    """The NC-across-training block of a regime (``epochs`` object or ``across_training``)."""
    block = regime_result.get("epochs")
    if isinstance(block, dict):
        return block
    block = regime_result.get("across_training")
    return block if isinstance(block, dict) else None


def training_epochs(regime_result: dict[str, Any]) -> int | None:
    """Number of training epochs: ``n_epochs``, integer ``epochs``, or the history length."""
    for key in ("n_epochs", "epochs"):
        v = regime_result.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    history = regime_result.get("history")
    return len(history) if history else None


def epochs_table(results: dict[str, Any], regime: str) -> Table | None:
    """Collapse metrics and NC5 at each training snapshot: rows metrics, columns epochs."""
    block = across_training(results["regimes"][regime])
    if not block or not block.get("epochs"):
        return None
    epochs = block["epochs"]

    def row(label: str, vals: Sequence[Any], fmt) -> list[Cell]:
        cells = [Cell(label)]
        for i in range(len(epochs)):
            v = vals[i] if i < len(vals) else None
            cells.append(Cell(fmt(v), value=v if is_number(v) else None))
        return cells

    rows = []
    if block.get("train_error"):
        rows.append(row("train error (%)", block["train_error"], pct))
    for k, vals in (block.get("metrics") or {}).items():
        rows.append(row(k, vals, sig))
    for o, vals in (block.get("nc5") or {}).items():
        rows.append(row(f"nc5 {o}", vals, sig))
    zero = block.get("zero_error_epoch")
    note = (
        f"Training error first reaches zero at epoch {zero}."
        if isinstance(zero, int)
        else "Training error does not reach zero at any snapshot."
        if "zero_error_epoch" in block
        else ""
    )
    return Table(
        title=f"{regime}: collapse across training",
        headers=["Metric"] + [f"epoch {e}" for e in epochs],
        rows=rows,
        note=note,
        align=["l"] + ["r"] * len(epochs),
    )


def compact_ood_table(results: dict[str, Any], regime: str) -> Table:
    """One regime, every OOD set: AUROC and FPR@95 (%) per detector (terminal summary)."""
    dets, oods = detector_names(results), ood_names(results)
    headers = ["Detector"] + ["AUROC", "FPR@95"] * len(oods)
    rows = []
    for d in dets:
        row = [Cell(d)]
        for o in oods:
            for key in ("auroc", "fpr95"):
                v = _metric(results, regime, d, o, key)
                row.append(Cell(pct(v), value=v if is_number(v) else None))
        rows.append(row)
    table = Table(
        title=f"{regime}: OOD detection (%)",
        headers=headers,
        rows=rows,
        align=["l"] + ["r"] * (len(headers) - 1),
        groups=[("", 1)] + [(o, 2) for o in oods],
    )
    for j in range(1, len(headers)):
        _mark_best(table.column(j), j % 2 == 1, _display_pct)
    return table


# ---------------------------------------------------------------------------------------
# renderers


def _md_escape(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return text.replace("<", "\\<").replace(">", "\\>")  # no raw HTML from data


def _flat_headers(table: Table) -> list[str]:
    """Headers with their group label prefixed (for formats without spanning headers)."""
    if not table.groups:
        return list(table.headers)
    labels = [g for g, span in table.groups for _ in range(span)]
    return [f"{g} {h}" if g else h for g, h in zip(labels, table.headers, strict=False)]


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown; bold cells as ``**x**``; title as a bold caption line."""
    align = table.align or ["l"] * len(table.headers)
    lines = [f"**{_md_escape(table.title)}**", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in _flat_headers(table)) + " |")
    lines.append("|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|")
    for row in table.rows:
        cells = [f"**{_md_escape(c.text)}**" if c.bold else _md_escape(c.text) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    if table.note:
        lines += ["", f"*{_md_escape(table.note)}*"]
    return "\n".join(lines) + "\n"


def to_html(table: Table, table_id: str | None = None) -> str:
    """An escaped ``<table>`` with caption; bold cells as ``<strong>``."""
    align = table.align or ["l"] * len(table.headers)
    cls = lambda j: ' class="num"' if align[j] == "r" else ""
    id_attr = f' id="{html.escape(table_id)}"' if table_id else ""
    parts = [f'<div class="table-wrap"><table{id_attr}>']
    parts.append(f"<caption>{html.escape(table.title)}</caption>")
    parts.append("<thead>")
    if table.groups:
        parts.append(
            "<tr>"
            + "".join(
                f'<th colspan="{span}" class="group">{html.escape(g)}</th>'
                for g, span in table.groups
            )
            + "</tr>"
        )
    parts.append(
        "<tr>"
        + "".join(f"<th{cls(j)}>{html.escape(h)}</th>" for j, h in enumerate(table.headers))
        + "</tr></thead><tbody>"
    )
    for row in table.rows:
        tds = []
        for j, c in enumerate(row):
            text = html.escape(c.text)
            tds.append(f"<td{cls(j)}>{f'<strong>{text}</strong>' if c.bold else text}</td>")
        parts.append("<tr>" + "".join(tds) + "</tr>")
    parts.append("</tbody></table>")
    if table.note:
        parts.append(f'<p class="table-note">{html.escape(table.note)}</p>')
    parts.append("</div>")
    return "".join(parts)


def to_text(table: Table) -> str:
    """Fixed-width plain text; the best values carry a trailing ``*``."""
    align = table.align or ["l"] * len(table.headers)
    body = [[c.text + ("*" if c.bold else " ") for c in row] for row in table.rows]
    head = [h + " " for h in table.headers]
    widths = [max(len(r[j]) for r in [head, *body]) for j in range(len(head))]
    start = 0
    for label, span in table.groups:  # widen the last spanned column to fit a group label
        room = sum(widths[start : start + span]) + 2 * (span - 1)
        widths[start + span - 1] += max(0, len(label) - room)
        start += span

    def fmt(cells: list[str]) -> str:
        out = [
            c.rjust(w) if a == "r" else c.ljust(w)
            for c, w, a in zip(cells, widths, align, strict=False)
        ]
        return "  ".join(out).rstrip()

    lines = [table.title]
    if table.groups:
        group_cells, start = [], 0
        for label, span in table.groups:
            room = sum(widths[start : start + span]) + 2 * (span - 1)
            group_cells.append(label.center(room))
            start += span
        lines.append("  ".join(group_cells).rstrip())
    lines += [fmt(head), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in body]
    if table.note:  # the terminal marks best values with "*" instead of bold type
        lines.append(table.note.replace("in bold", "marked *").replace("is bold", "is marked *"))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# collections


def ood_tables(results: dict[str, Any]) -> dict[str, list[Table]]:
    """Per regime, the OOD table of each OOD set."""
    return {
        r: [ood_table(results, r, o) for o in ood_names(results)] for r in regime_names(results)
    }


def markdown_tables(results: dict[str, Any]) -> str:
    """Every result table as one Markdown document fragment (no figures)."""
    parts = [to_markdown(training_table(results))]
    for tables in ood_tables(results).values():
        parts += [to_markdown(t) for t in tables]
    parts += [to_markdown(regime_comparison_table(results, o)) for o in ood_names(results)]
    for t in (collapse_table(results), nc5_table(results)):
        if t is not None:
            parts.append(to_markdown(t))
    for r in regime_names(results):
        for t in (depth_table(results, r), depth_auroc_table(results, r), epochs_table(results, r)):
            if t is not None:
                parts.append(to_markdown(t))
    return "\n".join(parts)


def format_terminal_summary(results: dict[str, Any], *, full: bool = False) -> str:
    """The result tables as plain text for the terminal (``*`` marks the best values).

    Args:
        results: a results dict (docs/results_schema.md).
        full: print every per-OOD-set table with all four metrics instead of the compact
            AUROC/FPR@95 table per regime.

    Returns:
        Text ending in a newline: OOD tables of each regime, NC1-NC4 and NC5.
    """
    parts = [to_text(training_table(results))]
    for r in regime_names(results):
        if full:
            parts += [to_text(ood_table(results, r, o)) for o in ood_names(results)]
        else:
            parts.append(to_text(compact_ood_table(results, r)))
    for t in (collapse_table(results), nc5_table(results)):
        if t is not None:
            parts.append(to_text(t))
    return "\n".join(parts)
