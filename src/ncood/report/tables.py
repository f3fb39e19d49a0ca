"""Report tables: pivots of a :class:`~ncood.results.Results`, one formatter per output.

A :class:`Table` is built once from the tidy table (:func:`pivot`) and rendered as HTML
(the ``table`` macro of ``template.html.j2``), Markdown (:func:`markdown_table`) or plain
text (:func:`text_table`). A cell summarises the rows that fall into it:

- one row: its value, plus ``[ci_low, ci_high]`` when the run computed an interval;
- several rows (one per seed): ``mean ± std`` (ddof=1), as OpenOOD v1.5 reports seeds.

Best values are compared as displayed (so ties at display precision are all marked):
highest for AUROC and AUPR, lowest for FPR@95 and for every neural-collapse metric.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ncood.errors import ConfigError
from ncood.results import PENULTIMATE, Results

MISSING = "n/a"
Fmt = Callable[[float], str]


def pct(v: float) -> str:
    """A fraction as a percentage with 2 decimals (``0.91234 -> '91.23'``)."""
    return f"{100.0 * v:.2f}"


def sig(v: float) -> str:
    """A statistic with 4 significant digits."""
    return f"{v:.4g}"


def integer(v: float) -> str:
    return f"{v:.0f}"


# (metric, header, higher is better)
OOD_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("auroc", "AUROC", True),
    ("fpr95", "FPR@95", False),
    ("aupr_in", "AUPR-In", True),
    ("aupr_out", "AUPR-Out", True),
    ("fpr95_oodpos", "FPR@95 (OOD+)", False),
)
OOD_LABEL = {m: h for m, h, _ in OOD_METRICS}
HIGHER = {m: hi for m, _, hi in OOD_METRICS}

# (metric, label, definition); lower is more collapsed for every one
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
HISTORY = (("train_acc", "Train acc (%)"), ("test_acc", "Test acc (%)"))
LOSSES = (("train_loss", "Train loss"), ("test_loss", "Test loss"))
DEPTH_METRICS = ("nc1", "nc1_trace", "cdnv", "ncc_acc")
EPOCH_LINES = ("nc1", "nc2_equiangular_means", "nc2_equinorm_means", "nc3", "nc4")


@dataclass
class Cell:
    """Display text, the number compared for best marking (as displayed) and bold."""

    text: str
    key: float | None = None
    bold: bool = False


@dataclass
class Table:
    """Title, header row, rows of cells and a note; ``labels`` leading columns are text, and
    so are the columns listed in ``text_columns`` (the others are numbers, right-aligned)."""

    title: str
    headers: list[str]
    rows: list[list[Cell]]
    note: str = ""
    labels: int = 1
    text_columns: tuple[int, ...] = ()
    kind: str = field(default="table", init=False)

    def numeric(self, j: int) -> bool:
        """Is column ``j`` a number column (right-aligned)?"""
        return j >= self.labels and j not in self.text_columns


# ------------------------------------------------------------------------ queries
UNNAMED = "network"  # the regime of rows that name none (ncood score/collapse on features)
#: Metrics computed over all networks of a run (no regime of their own): never named.
ACROSS_NETWORKS = ("spearman",)


def named(res: Results) -> Results:
    """``res`` with an empty ``regime`` called :data:`UNNAMED`, so every row has a network.

    Raises:
        ConfigError: ``res`` is not a :class:`~ncood.results.Results`.
    """
    if not isinstance(res, Results):
        raise ConfigError(
            f"The report reads a ncood.results.Results; got {type(res).__name__}. Load a run "
            "with Results.load(directory) (results.csv + run.json)"
        )
    df = res.to_frame()
    unnamed = df["regime"].isna() & ~df["metric"].isin(ACROSS_NETWORKS)
    if not unnamed.any():
        return res
    return Results(df.assign(regime=df["regime"].mask(unnamed, UNNAMED)), res.meta)


def regimes(res: Results) -> list[str]:
    return res.values("regime")


def detectors(res: Results) -> list[str]:
    return res.values("detector", metric="auroc")


def oods(res: Results) -> list[str]:
    return res.values("ood", metric="auroc")


def last_epoch(res: Results, regime: str) -> int | None:
    """The final network's epoch: the largest epoch of any row of ``regime``."""
    e = res.select(regime=regime)["epoch"].dropna()
    return int(e.max()) if len(e) else None


def final(res: Results, regime: str, **filters) -> pd.DataFrame:
    """Rows of ``regime``'s final network (every seed) matching ``filters``."""
    return res.select(regime=regime, epoch=last_epoch(res, regime), **filters)


def layers(res: Results, regime: str) -> list[str]:
    """Layers of ``regime`` shallow to deep: first-appearance order, ``penultimate`` last."""
    names = res.values("layer", regime=regime)
    return [n for n in names if n != PENULTIMATE] + [n for n in names if n == PENULTIMATE]


def summary(rows: pd.DataFrame) -> tuple[float, float, float, float, int]:
    """``(mean, std, ci_low, ci_high, n)`` of a cell's rows (std, ci NaN where undefined)."""
    v = rows["value"].to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return np.nan, np.nan, np.nan, np.nan, 0
    if v.size > 1:
        return float(v.mean()), float(v.std(ddof=1)), np.nan, np.nan, v.size
    return float(v[0]), np.nan, float(rows["ci_low"].iloc[0]), float(rows["ci_high"].iloc[0]), 1


def quote(rows: pd.DataFrame, fmt: Fmt = pct, unit: str = "") -> str:
    """A cell's text: ``value``, ``value [lo, hi]`` or ``mean ± std`` (``unit`` after value)."""
    mean, std, lo, hi, n = summary(rows)
    if n == 0:
        return MISSING
    if n > 1:
        return f"{fmt(mean)}{unit} ± {fmt(std)}"
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{fmt(mean)}{unit} [{fmt(lo)}, {fmt(hi)}]"
    return f"{fmt(mean)}{unit}"


def cell(rows: pd.DataFrame, fmt: Fmt) -> Cell:
    mean = summary(rows)[0]
    return Cell(quote(rows, fmt), float(fmt(mean)) if np.isfinite(mean) else None)


def mark_best(cells: Sequence[Cell], higher: bool) -> None:
    """Bold the best of ``cells`` (as displayed); nothing with fewer than two numbers."""
    keys = [c.key for c in cells if c.key is not None]
    if len(keys) < 2:
        return
    best = max(keys) if higher else min(keys)
    for c in cells:
        c.bold = c.key == best


def pivot(
    title: str,
    df: pd.DataFrame,
    index: str | list[str],
    columns: str,
    *,
    corner: Sequence[str],
    fmt: Fmt | Mapping[object, Fmt] = pct,
    row_label: Callable[[object], Sequence[str]] | None = None,
    col_label: Callable[[object], str] = str,
    best_in: str | None = None,
    higher: Callable[[object], bool | None] = lambda key: True,
    note: str = "",
) -> Table:
    """``df`` (rows of a Results) as an ``index x columns`` table of :func:`cell` s.

    Args:
        fmt: one formatter, or one per row or column key (default :func:`sig`).
        best_in: ``"row"`` or ``"column"``: where the best value is bolded;
            ``higher(key)`` of that row/column says which way (None: no marking).
    """
    idx = [index] if isinstance(index, str) else list(index)
    if df.empty:
        return Table(title, list(corner), [], note, len(corner))
    groups = dict(iter(df.groupby([*idx, columns], sort=False, dropna=False)))
    row_keys = list(dict.fromkeys(k[:-1] for k in groups))
    col_keys = list(dict.fromkeys(k[-1] for k in groups))

    def one(r: tuple) -> object:
        return r[0] if len(r) == 1 else r

    def fmt_of(r: tuple, c: object) -> Fmt:
        return fmt.get(one(r), fmt.get(c, sig)) if isinstance(fmt, Mapping) else fmt

    rows = []
    for r in row_keys:
        labels = row_label(one(r)) if row_label else r
        cells = [
            cell(groups[(*r, c)], fmt_of(r, c)) if (*r, c) in groups else Cell(MISSING)
            for c in col_keys
        ]
        rows.append([Cell(str(x)) for x in labels] + cells)
    table = Table(title, [*corner, *map(col_label, col_keys)], rows, note, len(corner))
    n = len(corner)
    if best_in == "column":
        for j, c in enumerate(col_keys):
            if higher(c) is not None:
                mark_best([row[n + j] for row in rows], higher(c))
    elif best_in == "row":
        for r, row in zip(row_keys, rows, strict=True):
            if higher(one(r)) is not None:
                mark_best(row[n:], higher(one(r)))
    return table


# ------------------------------------------------------------------------ builders
def order(df: pd.DataFrame, column: str, keys: Sequence[object]) -> pd.DataFrame:
    """``df`` stably sorted by the position of ``column`` in ``keys`` (others last)."""
    if df.empty:
        return df
    pos = {k: i for i, k in enumerate(keys)}
    return df.sort_values(
        column, key=lambda s: s.map(lambda v: pos.get(v, len(pos))), kind="stable"
    )


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def training_table(res: Results) -> Table:
    """Final train/test accuracy and loss per regime, with the number of epochs."""
    labels = {"epochs": "Epochs", **dict(HISTORY + LOSSES)}
    parts = []
    for reg in regimes(res):
        df = final(res, reg, layer=None, detector=None, metric=list(labels))
        parts += [df, df.drop_duplicates("seed").assign(metric="epochs", value=df["epoch"])]
    return pivot(
        "Training",
        order(_concat(parts), "metric", list(labels)),
        "regime",
        "metric",
        corner=["Regime"],
        fmt={"epochs": integer, "train_acc": pct, "test_acc": pct},
        col_label=labels.get,
        note="Values at the end of training, as logged by the training loop.",
    )


def ood_table(res: Results, regime: str, ood: str) -> Table:
    """One regime, one OOD set: detector x metric (%), best of each column bold."""
    metrics = [m for m, _, _ in OOD_METRICS]
    df = final(res, regime, layer=PENULTIMATE, ood=ood, metric=metrics)
    return pivot(
        f"{regime}: ID vs {ood}",
        order(df, "metric", metrics),
        "detector",
        "metric",
        corner=["Detector"],
        col_label=lambda m: f"{OOD_LABEL[m]} (%)",
        best_in="column",
        higher=HIGHER.get,
        note="Best per column in bold (lowest for FPR@95).",
    )


def regime_table(res: Results, ood: str) -> Table:
    """The regimes side by side on one OOD set: AUROC, its difference (two regimes), FPR@95."""
    regs = regimes(res)
    df = _concat(
        [
            final(res, r, layer=PENULTIMATE, ood=ood, metric=m).assign(col=f"{OOD_LABEL[m]} {r}")
            for m in ("auroc", "fpr95")
            for r in regs
        ]
    )
    table = pivot(
        f"Regimes side by side: ID vs {ood}",
        df,
        "detector",
        "col",
        corner=["Detector"],
        best_in="column",
        higher=lambda c: c.startswith("AUROC"),
        note="AUROC and FPR@95 in %; Δ in percentage points. Best per column in bold.",
    )
    if len(regs) == 2 and table.rows:
        table.headers.insert(3, f"ΔAUROC ({regs[1]} − {regs[0]})")
        for row in table.rows:
            a, b = (
                summary(df[(df.detector == row[0].text) & (df.col == f"AUROC {r}")])[0]
                for r in regs
            )
            row.insert(3, Cell(f"{100 * (b - a):+.2f}" if np.isfinite(b - a) else MISSING))
    return table


def metric_table(res: Results, regime: str, metric: str) -> Table:
    """One regime, one OOD metric (%): detector x OOD set (the terminal summary's tables)."""
    df = final(res, regime, layer=PENULTIMATE, metric=metric)
    return pivot(
        f"{regime}: {OOD_LABEL[metric]} (%)",
        order(df, "ood", oods(res)),
        "detector",
        "ood",
        corner=["Detector"],
        best_in="column",
        higher=lambda c: HIGHER[metric],
        note="Best per column in bold.",
    )


def collapse_table(res: Results) -> Table:
    """NC1-NC4 of the penultimate layer, one column per regime (lowest per row bold)."""
    label = {m: (lab, d) for m, lab, d in NC_ROWS}
    label["nc3_mean_cosine"] = ("NC3 mean cosine", "mean_c cos(w_c, mu_c - mu_G)")
    parts = []
    for r in regimes(res):
        parts.append(final(res, r, layer=PENULTIMATE, metric=list(label), ood=None, i=None))
        cos = final(res, r, layer=PENULTIMATE, metric="weight_mean_cosine")  # per class
        mean = cos.groupby("seed", dropna=False, sort=False)["value"].mean().reset_index()
        parts.append(mean.assign(regime=r, metric="nc3_mean_cosine", ci_low=np.nan, ci_high=np.nan))
    return pivot(
        "Neural collapse (penultimate layer, train set)",
        order(_concat(parts), "metric", list(label)),
        "metric",
        "regime",
        corner=["Metric", "Definition"],
        fmt=sig,
        row_label=label.get,
        best_in="row",
        higher=lambda m: m == "nc3_mean_cosine",
        note="Lower is more collapsed for every metric; the lowest value of each row is bold "
        "(for the mean weight/mean cosine, higher is better aligned and is bold).",
    )


def nc5_table(res: Results) -> Table:
    """NC5 (OrthoDev) and its centred variant per OOD set, one column per regime."""
    regs = regimes(res)
    names = {"nc5": "NC5", "nc5_centred": "NC5 centred"}
    df = _concat(
        [
            final(res, r, layer=PENULTIMATE, metric=m).assign(col=f"{names[m]} {r}")
            for m in names
            for r in regs
        ]
    )
    table = pivot(
        "NC5: ID/OOD orthogonality (OrthoDev)",
        df,
        "ood",
        "col",
        corner=["OOD set"],
        fmt=sig,
        note="OrthoDev = mean_c |cos(mu_c, mu_OOD)| with uncentred class means (NECO, Ben Ammar "
        "et al. 2024); lower = OOD mean closer to orthogonal to the ID class means. Lowest per "
        "row in bold.",
    )
    for prefix in names.values():  # lowest per variant
        cols = [j for j, h in enumerate(table.headers) if h in {f"{prefix} {r}" for r in regs}]
        for row in table.rows:
            mark_best([row[j] for j in cols], False)
    return table


def decay(res: Results, regime: str, metric: str) -> tuple[float, float]:
    """``(rate, R²)`` of the log-linear fit of ``metric`` over depth (NaN if not computed)."""
    rate, r2 = (final(res, regime, metric=f"{metric}.decay_{p}") for p in ("rate", "r2"))
    return summary(rate)[0], summary(r2)[0]


def depth_table(res: Results, regime: str) -> Table:
    """Collapse metrics per layer of one regime, with the log-linear decay fits as note."""
    df = final(res, regime, metric=list(DEPTH_METRICS), ood=None, i=None)
    df = df[df["layer"].notna()] if df["layer"].nunique() > 1 else df.iloc[:0]  # one: no depth
    df = order(order(df, "metric", DEPTH_METRICS), "layer", layers(res, regime))
    notes = []
    for m in DEPTH_METRICS:
        rate, r2 = decay(res, regime, m)
        if np.isfinite(rate):
            fit = f"x{np.exp(rate):.3g} per layer" + (f", R² {r2:.3f}" if np.isfinite(r2) else "")
            notes.append(f"{m}: log-linear fit over depth, rate {rate:.3g} per layer ({fit})")
    return pivot(
        f"{regime}: collapse per layer (train set)",
        df,
        "layer",
        "metric",
        corner=["Layer"],
        fmt=sig,
        note="; ".join(notes),
    )


def depth_auroc_table(res: Results, regime: str) -> Table:
    """AUROC (%) of the detectors scored on more than one layer: (detector, OOD) x layer."""
    df = final(res, regime, metric="auroc")
    per = df.groupby("detector", sort=False)["layer"].nunique()
    df = df[df["detector"].isin(per[per > 1].index)]
    return pivot(
        f"{regime}: detector AUROC (%) per layer",
        order(order(df, "layer", layers(res, regime)), "ood", oods(res)),
        ["detector", "ood"],
        "layer",
        corner=["Detector", "OOD set"],
        best_in="row",
        note="Best layer per row in bold.",
    )


def epochs_table(res: Results, regime: str) -> Table:
    """Training error, collapse metrics and NC5 at each snapshot: rows metrics, columns epochs."""
    names = ["train_error", *(m for m, _, _ in NC_ROWS)]
    df = res.select(regime=regime, layer=PENULTIMATE, metric=[*names, "nc5"], detector=None, i=None)
    df = df.assign(row=df["metric"].where(df["ood"].isna(), "nc5 " + df["ood"].fillna("")))
    keys = [*names, *(f"nc5 {o}" for o in res.values("ood", metric="nc5"))]
    if df["epoch"].nunique() < 2:
        df = df.iloc[:0]
    zero = zero_error_epoch(res, regime)
    return pivot(
        f"{regime}: collapse across training",
        order(df.sort_values("epoch", kind="stable"), "row", keys),
        "row",
        "epoch",
        corner=["Metric"],
        fmt={"train_error": pct},
        row_label=lambda r: ["train error (%)" if r == "train_error" else r],
        col_label=lambda e: f"epoch {e}",
        note=f"Training error first reaches zero at epoch {zero}."
        if zero is not None
        else "Training error does not reach zero at any snapshot.",
    )


def zero_error_epoch(res: Results, regime: str) -> int | None:
    """First snapshot where the training error is 0 in every seed (terminal phase start)."""
    df = res.select(regime=regime, layer=PENULTIMATE, metric="train_error")
    worst = df.groupby("epoch")["value"].max()
    zero = worst[worst == 0]
    return int(zero.index.min()) if len(zero) else None


# ------------------------------------------------------------------------ formatters
def _md(text: str) -> str:
    # "_" stays: GitHub Markdown ignores intraword underscores (texture_crops, fashion_mnist)
    return re.sub(r"([\\`*\[\]<>|])", r"\\\1", str(text)).replace("\n", " ")


def _numeric(table: Table) -> list[bool]:
    return [table.numeric(j) for j in range(len(table.headers))]


def markdown_table(table: Table) -> str:
    """GitHub-flavoured Markdown; bold cells as ``**x**``; title as a bold caption line."""
    lines = [f"**{_md(table.title)}**", ""]
    lines.append("| " + " | ".join(_md(h) for h in table.headers) + " |")
    lines.append("|" + "|".join("---:" if n else ":---" for n in _numeric(table)) + "|")
    for row in table.rows:
        lines.append(
            "| " + " | ".join(f"**{_md(c.text)}**" if c.bold else _md(c.text) for c in row) + " |"
        )
    if table.note:
        lines += ["", f"*{_md(table.note)}*"]
    return "\n".join(lines) + "\n"


def text_table(table: Table) -> str:
    """Fixed-width plain text for the terminal; the best values carry a trailing ``*``."""
    body = [[c.text + ("*" if c.bold else " ") for c in row] for row in table.rows]
    head = [h + " " for h in table.headers]
    widths = [max(len(r[j]) for r in [head, *body]) for j in range(len(head))]

    def line(cells: list[str]) -> str:
        parts = zip(cells, widths, _numeric(table), strict=True)
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in parts).rstrip()

    out = [table.title, line(head), "  ".join("-" * w for w in widths), *map(line, body)]
    if table.note:  # the terminal marks best values with "*" instead of bold type
        out.append(table.note.replace("in bold", "marked *").replace("is bold", "is marked *"))
    return "\n".join(out) + "\n"
