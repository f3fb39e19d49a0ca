"""Detector ranking and hyperparameter selection: report tables over a Results.

- :func:`ranking_table`: every detector the run scored on one OOD set, sorted by AUROC
  (mean over seeds), with ``value [lo, hi]`` bootstrap intervals of AUROC and FPR@95, the
  detectors statistically tied with the best, and the hyperparameters each one ran with
  ("chosen on validation (<set>, AUROC x)" where the run selected them).
- :func:`selection_summary_table`, :func:`candidate_tables`, :func:`selection_sentence`:
  the validation search of the rows ``selection_auroc`` (one per grid candidate) and
  ``selection_chosen`` (one per detector) of ``docs/results_schema.md``.
- :func:`shown_detectors`: which detectors a per-detector figure draws, so that a run of
  20+ detectors keeps its figures readable (the tables always list every detector).

"Tied with the best" (single network): where the run wrote a paired ``auroc_diff`` row
between the detector and the best (Ben Ammar et al.'s and OpenOOD's tables have no such
test; ours is the paired bootstrap of :func:`ncood.metrics.paired_auroc_difference`), the
detector is tied exactly when that interval of AUROC(detector) - AUROC(best) contains 0.
``ncood run`` writes those rows for adjacent detectors in AUROC order only, so for the
others the check is whether the two AUROC intervals overlap: disjoint 95% intervals show a
difference, overlapping ones do not prove equality (the weaker check, and named as such).
With several seeds, each seed is checked against the best detector (by mean AUROC) and
the count of seeds is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ncood.report import tables as T
from ncood.results import PENULTIMATE, Results

#: Figures that draw one line, bar or panel per detector show every detector up to this
#: many; beyond it, the :data:`TOP` best by mean AUROC plus :data:`ALWAYS`.
MAX_ALL = 8
TOP = 5
ALWAYS = ("neco", "vim")  # the reference experiment's detectors (DESIGN.md)


# ------------------------------------------------------------------------ helpers
def params_text(params: str | None) -> str:
    """A ``params`` JSON cell as ``k=v, k=v`` (``defaults`` when empty; a ``None`` value,
    one the detector derives when it is fitted, e.g. ViM's ``dim = D // 2``, as ``auto``)."""
    if not isinstance(params, str) or not params:
        return "defaults"
    d = json.loads(params)
    return ", ".join(f"{k}={_value_text(v)}" for k, v in d.items()) if d else "defaults"


def _value_text(v: Any) -> str:
    """A hyperparameter's value: ``auto`` for None, floats in ``%g`` (90.0 and 90 read
    alike: a grid's int and a constructor's float default are the same setting)."""
    if v is None:
        return "auto"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _seeds(values: Sequence[Any]) -> str:
    seeds = [str(int(s)) for s in values if pd.notna(s)]
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(seeds)


def mean_auroc(res: Results, regime: str, ood: str | None = None) -> pd.Series:
    """Mean AUROC over seeds per detector, final network, penultimate layer."""
    df = T.final(res, regime, layer=PENULTIMATE, metric="auroc")
    if ood is not None:
        df = df[df["ood"] == ood]
    return df.groupby("detector", sort=False)["value"].mean()


def order_by_auroc(auroc: pd.Series) -> list[str]:
    """Detectors by AUROC, highest first; equal AUROC in alphabetical order."""
    df = pd.DataFrame({"detector": auroc.index, "auroc": auroc.to_numpy(float)})
    df = df[np.isfinite(df["auroc"])]
    return df.sort_values(["auroc", "detector"], ascending=[False, True])["detector"].tolist()


def shown_detectors(
    res: Results, candidates: Sequence[str] | None = None, *, top: int = TOP
) -> list[str]:
    """The detectors a per-detector figure draws, in the run's order.

    Every one of ``candidates`` (default: every detector with AUROC rows) when there are at
    most :data:`MAX_ALL`; otherwise the ``top`` best by AUROC (mean over regimes, seeds
    and OOD sets of the final networks' penultimate rows; detectors without such rows rank
    last, in run order) plus NECO and ViM.
    """
    dets = list(candidates) if candidates is not None else T.detectors(res)
    if len(dets) <= MAX_ALL:
        return dets
    parts = [T.final(res, r, layer=PENULTIMATE, metric="auroc") for r in T.regimes(res)]
    df = pd.concat(parts) if parts else pd.DataFrame(columns=["detector", "value"])
    best = order_by_auroc(df[df["detector"].isin(dets)].groupby("detector")["value"].mean())
    best += [d for d in dets if d not in best]  # no AUROC at the head: run order, last
    keep = set(best[:top]) | {d for d in ALWAYS if d in dets}
    return [d for d in dets if d in keep]


def subset_note(shown: Sequence[str], every: Sequence[str]) -> str:
    """Caption sentence naming the subset a figure draws ('' when it draws every one)."""
    if len(shown) == len(every):
        return ""
    always = [d for d in ALWAYS if d in shown]
    also = f", and {' and '.join(always)}" if always else ""
    return (
        f" Drawn: the top {TOP} detectors by mean AUROC{also} ({len(shown)} of {len(every)}); "
        "the tables list every detector."
    )


# ------------------------------------------------------------------------ ranking
def _paired(diff: pd.DataFrame, det: str, best: str) -> tuple[float, float, float] | None:
    """AUROC(det) - AUROC(best) and its paired interval from one seed's auroc_diff rows."""
    vs = diff["params"].map(lambda p: json.loads(p).get("vs") if isinstance(p, str) else None)
    for a, b, sign in ((det, best, 1.0), (best, det, -1.0)):
        r = diff[(diff["detector"] == a) & (vs == b)]
        if len(r) == 1:
            v, lo, hi = r[["value", "ci_low", "ci_high"]].iloc[0].to_numpy(float)
            if np.isfinite([v, lo, hi]).all():
                return (v, lo, hi) if sign > 0 else (-v, -hi, -lo)
    return None


def tie(au: pd.DataFrame, diff: pd.DataFrame, det: str, best: str) -> tuple[bool | None, str]:
    """Is ``det`` tied with ``best`` on one network? ``(tied or None, how)``.

    ``au``/``diff``: that network's ``auroc``/``auroc_diff`` rows on one OOD set.
    """
    paired = _paired(diff, det, best)
    if paired is not None:
        v, lo, hi = (100 * x for x in paired)
        return lo <= 0 <= hi, f"diff {v:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    a, b = au[au["detector"] == det], au[au["detector"] == best]
    if len(a) == 1 and len(b) == 1:
        (alo, ahi), (blo, bhi) = (r[["ci_low", "ci_high"]].iloc[0].to_numpy(float) for r in (a, b))
        if np.isfinite([alo, ahi, blo, bhi]).all():
            overlap = ahi >= blo and bhi >= alo
            return overlap, "intervals overlap" if overlap else "intervals disjoint"
    return None, ""


def _tie_cell(au: pd.DataFrame, diff: pd.DataFrame, det: str, best: str) -> tuple[str, bool]:
    """Text of the "Tied with the best" cell and whether the detector counts as tied."""
    if det == best:
        return "best", True
    out = []
    for seed, g in au.groupby("seed", dropna=False, sort=True):
        same = diff["seed"].isna() if pd.isna(seed) else diff["seed"] == seed
        out.append(tie(g, diff[same], det, best))
    decided = [t for t, _ in out if t is not None]
    if not decided:
        return "n/a (no intervals)", False
    if len(out) == 1:
        tied, how = out[0]
        return f"{'yes' if tied else 'no'}: {how}", bool(tied)
    k = sum(decided)
    n = len(decided)
    return f"tied in {k} of {n} seed{'s' if n > 1 else ''}", k == n


def chosen_text(res: Results, regime: str, det: str) -> str:
    """``chosen on validation (<set>, AUROC x%)`` from the selection_chosen rows, or ''."""
    rows = T.final(res, regime, layer=PENULTIMATE, metric="selection_chosen", detector=det)
    if not len(rows):
        return ""
    sets = ", ".join(dict.fromkeys(rows["ood"].dropna()))
    return f"chosen on validation ({sets}, AUROC {T.quote(rows, unit='%')})"


def hyperparameters_text(res: Results, regime: str, det: str, rows: pd.DataFrame) -> str:
    """What ``det`` ran with (its rows' ``params``; per seed where they differ), and how."""
    by = rows.groupby(rows["params"].fillna(""), sort=False)["seed"]
    kinds = {p: list(dict.fromkeys(s)) for p, s in by}
    if len(kinds) == 1:
        text = params_text(next(iter(kinds)))
    else:
        text = "; ".join(f"{params_text(p)} ({_seeds(s)})" for p, s in kinds.items())
    chosen = chosen_text(res, regime, det)
    return f"{text}; {chosen}" if chosen else text


def ranking_table(res: Results, regime: str, ood: str) -> T.Table:
    """Every detector on ``ood``, sorted by AUROC, with intervals, ties and hyperparameters."""
    df = T.final(res, regime, layer=PENULTIMATE, ood=ood)
    au, fpr, diff = (df[df["metric"] == m] for m in ("auroc", "fpr95", "auroc_diff"))
    ranked = order_by_auroc(au.groupby("detector", sort=False)["value"].mean())
    headers = ["#", "Detector", "AUROC (%)", "FPR@95 (%)", "Tied with the best", "Hyperparameters"]
    rows = []
    for k, det in enumerate(ranked, start=1):
        a = au[au["detector"] == det]
        text, tied = _tie_cell(au, diff, det, ranked[0])
        rows.append(
            [
                T.Cell(str(k)),
                T.Cell(det),
                T.Cell(T.quote(a), bold=tied),
                T.Cell(T.quote(fpr[fpr["detector"] == det])),
                T.Cell(text),
                T.Cell(hyperparameters_text(res, regime, det, a)),
            ]
        )
    seeds = au["seed"].nunique()
    spread = f"mean ± std over {seeds} seeds; " if seeds > 1 else ""
    return T.Table(
        f"{regime}: detectors ranked by AUROC, ID vs {ood}",
        headers,
        rows,
        note=f"Sorted by AUROC ({spread}ties in alphabetical order). [lo, hi]: 95% bootstrap "
        "interval. Tied with the best: the paired bootstrap interval of AUROC(detector) - "
        "AUROC(best) (diff, in points) contains 0 where the run computed it (for neighbours "
        "in AUROC order), otherwise the two AUROC intervals overlap (weaker: disjoint "
        "intervals show a difference, overlapping ones do not prove equality). The best "
        "and the detectors tied with it are in bold.",
        labels=2,
        text_columns=(4, 5),
    )


# ------------------------------------------------------------------------ selection
def selection_rows(res: Results, regime: str, metric: str = "selection_auroc") -> pd.DataFrame:
    """``metric`` rows of ``regime``'s final networks (every seed), penultimate layer."""
    return T.final(res, regime, layer=PENULTIMATE, metric=metric)


def _norm(v: Any) -> tuple[str, Any]:
    """A grid value as a comparable key (``True`` is not ``1``; ``1`` is ``1.0``)."""
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, (int, float)):
        return ("n", float(v))
    return ("s", json.dumps(v, sort_keys=True))


def grid_of(res: Results, det: str, cands: pd.DataFrame) -> dict[str, list]:
    """The grid searched for ``det``: ``meta["selection"][det]["grid"]`` (run.json), else
    the parameters that vary across its candidates, values in order of appearance."""
    grid = ((res.meta.get("selection") or {}).get(det) or {}).get("grid")
    if grid:
        return {k: list(v) for k, v in grid.items()}
    params = [json.loads(p) if isinstance(p, str) else {} for p in cands["params"]]
    keys = list(dict.fromkeys(k for p in params for k in p))
    out = {}
    for k in keys:
        seen: dict[tuple, Any] = {}
        for p in params:
            if k in p:
                seen.setdefault(_norm(p[k]), p[k])
        if len(seen) > 1:
            out[k] = list(seen.values())
    return out


def _grid_text(grid: Mapping[str, list]) -> str:
    return "; ".join(f"{k} in {{{', '.join(map(str, v))}}}" for k, v in grid.items()) or "-"


def _chosen(chosen: pd.DataFrame) -> str:
    by = chosen.groupby(chosen["params"].fillna(""), sort=False)["seed"]
    kinds = {p: list(dict.fromkeys(s)) for p, s in by}
    if len(kinds) == 1 and chosen["seed"].nunique() <= 1:
        return params_text(next(iter(kinds)))
    return "; ".join(f"{params_text(p)} ({_seeds(s)})" for p, s in kinds.items())


def selection_summary_table(res: Results, regime: str) -> T.Table:
    """One row per detector: grid, chosen values, their validation AUROC, validation sets."""
    cands, chosen = selection_rows(res, regime), selection_rows(res, regime, "selection_chosen")
    headers = ["Detector", "Grid", "Chosen", "Validation AUROC (%)", "Validation sets (n)"]
    rows = []
    for det in dict.fromkeys([*chosen["detector"], *cands["detector"]]):
        c, ch = cands[cands["detector"] == det], chosen[chosen["detector"] == det]
        both = pd.concat([ch, c])
        n_id = ", ".join(map(T.integer, dict.fromkeys(both["n_id"].dropna())))
        sets = [f"ID {n_id or T.MISSING}"] + [
            f"{o} {', '.join(map(T.integer, dict.fromkeys(g['n_ood'].dropna())))}"
            for o, g in both.groupby("ood", sort=False)
        ]
        rows.append(
            [
                T.Cell(det),
                T.Cell(_grid_text(grid_of(res, det, c))),
                T.Cell(_chosen(ch) if len(ch) else T.MISSING),
                T.Cell(T.quote(ch)),
                T.Cell(", ".join(sets)),
            ]
        )
    return T.Table(
        f"{regime}: hyperparameters chosen on validation data",
        headers,
        rows,
        note="Chosen: the candidate with the highest validation AUROC (ties: the first in grid "
        "order). Validation sets: the ID validation split and the validation OOD set, with "
        "their sizes.",
        text_columns=(1, 2, 4),
    )


def _cell_of(c: pd.DataFrame, chosen: set[str]) -> dict[tuple, T.Cell]:
    """Candidate params (normalised items) -> Cell (bold when chosen in some seed)."""
    out = {}
    for p, g in c.groupby(c["params"].fillna(""), sort=False):
        d = json.loads(p) if p else {}
        key = tuple(sorted((k, _norm(v)) for k, v in d.items()))
        out[key] = T.Cell(T.quote(g), bold=p in chosen)
    return out


def _lookup(cells: Mapping[tuple, T.Cell], want: Mapping[str, Any]) -> T.Cell:
    """The cell whose candidate has the grid values ``want`` (other keys: fixed)."""
    w = {(k, _norm(v)) for k, v in want.items()}
    hits = [c for key, c in cells.items() if w <= set(key)]
    return hits[0] if len(hits) == 1 else T.Cell(T.MISSING)


def candidate_tables(res: Results, regime: str) -> list[T.Table]:
    """Validation AUROC (%) of every candidate, the chosen one bold.

    Every one-parameter grid is a row of one table (cells ``value: AUROC`` in grid order);
    a two-parameter grid is a matrix of its own; a larger one a list of candidates.
    """
    cands, chosen = selection_rows(res, regime), selection_rows(res, regime, "selection_chosen")
    note = "The chosen candidate (highest validation AUROC; ties: first in grid order) is in bold."
    if cands["seed"].nunique() > 1:
        note += " Mean ± std over seeds; a candidate chosen in any seed is in bold."
    one, tables = [], []
    for det in dict.fromkeys(cands["detector"]):
        c = cands[cands["detector"] == det]
        picked = set(chosen.loc[chosen["detector"] == det, "params"].fillna(""))
        cells, grid = _cell_of(c, picked), grid_of(res, det, c)
        keys = list(grid)
        title = f"{regime}, {det}: validation AUROC (%) per candidate"
        if len(keys) == 1:
            (key,) = keys
            row = [T.Cell(det), T.Cell(key)]
            for v in grid[key]:
                hit = _lookup(cells, {key: v})
                row.append(T.Cell(f"{v}: {hit.text}", bold=hit.bold))
            one.append(row)
        elif len(keys) == 2:
            k1, k2 = keys
            rows = [
                [T.Cell(str(v1)), *(_lookup(cells, {k1: v1, k2: v2}) for v2 in grid[k2])]
                for v1 in grid[k1]
            ]
            headers = [f"{k1} \\ {k2}", *map(str, grid[k2])]
            tables.append(T.Table(title, headers, rows, note))
        else:
            rows = [[T.Cell(params_text(p)), cells[k]] for p, k in _labels(c, cells)]
            tables.append(T.Table(title, ["Candidate", "Validation AUROC (%)"], rows, note))
    if one:
        width = max(len(r) for r in one)
        one = [r + [T.Cell("")] * (width - len(r)) for r in one]
        shared = T.Table(
            f"{regime}: validation AUROC (%) per candidate, one-parameter grids",
            ["Detector", "Parameter", *map(str, range(1, width - 1))],
            one,
            "Each cell: a value of the parameter: its validation AUROC (%), in grid order. " + note,
            labels=2,
        )
        tables.insert(0, shared)
    return tables


def _labels(c: pd.DataFrame, cells: Mapping[tuple, T.Cell]) -> list[tuple[str, tuple]]:
    out = []
    for p in dict.fromkeys(c["params"].fillna("")):
        d = json.loads(p) if p else {}
        out.append((p, tuple(sorted((k, _norm(v)) for k, v in d.items()))))
    return [(p, k) for p, k in out if k in cells]


def selection_sentence(res: Results) -> str:
    """How the hyperparameters were chosen, and whether the test sets stayed out of it."""
    df = res.select(metric=["selection_auroc", "selection_chosen"], layer=PENULTIMATE)
    if not len(df):
        return ""
    # several validation OOD sets are written as one name joined by "+" (results_schema.md)
    val = list(dict.fromkeys(p for o in df["ood"].dropna() for p in str(o).split("+")))
    tests = T.oods(res)
    sizes = "; ".join(
        f"{o} ({', '.join(map(T.integer, dict.fromkeys(g['n_ood'].dropna())))} images)"
        for o, g in df.groupby("ood", sort=False)
    )
    n_id = ", ".join(map(T.integer, dict.fromkeys(df["n_id"].dropna())))
    s = (
        "Hyperparameters with a grid were chosen by validation AUROC: the ID validation split "
        f"({n_id} images) against the validation OOD {'sets' if len(val) > 1 else 'set'} "
        f"{sizes}. "
    )
    shared = [o for o in val if o in tests]
    if shared:
        verb = "are also test OOD sets" if len(shared) > 1 else "is also a test OOD set"
        return s + (
            f"{', '.join(shared)} {verb}: the test numbers of the tuned detectors there are not "
            "independent of the choice."
        )
    which = "None of them is" if len(val) > 1 else "It is not"
    return s + (
        f"{which} one of the test OOD sets ({', '.join(tests) or 'none'}): the test sets were "
        "not used for the choice."
    )
