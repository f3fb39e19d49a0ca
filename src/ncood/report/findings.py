"""Short generated sentences stating what the numbers of a run show, and nothing more.

Every sentence is a query over a :class:`~ncood.results.Results` and quotes the numbers it
rests on: ``value``, ``value, 95% CI [lo, hi]`` where the run computed an interval, or
``mean ± std over n seeds``. A difference between two detectors is called real ("A beats
B by x points") or "about equal" only from a paired bootstrap interval of the difference
(rows ``metric="auroc_diff"``, ``detector=A``, ``params={"vs": B}``, value AUROC(A) -
AUROC(B)): "about equal" exactly when that interval contains 0. Without such an interval
the numbers are stated without a claim either way (a fixed tolerance cannot tell a real
gap from noise). A detector is said to score below chance only when its AUROC (or, with
an interval, the whole interval) is below 50%.

"More collapsed" always means "lower NC1" (Papyan, Han & Donoho 2020, arXiv 2008.08186);
NC5 is NECO's OrthoDev (Ben Ammar et al. 2024, arXiv 2310.06823).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ncood.report import tables as T
from ncood.results import PENULTIMATE, Results

#: A sentence lists at most this many detector/OOD-set pairs (the tables hold every one).
MAX_LISTED = 5


def _join(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def _say(rows: pd.DataFrame, fmt=T.pct, unit: str = "%") -> str:
    """The number behind ``rows`` with its interval or its spread over seeds."""
    mean, std, lo, hi, n = T.summary(rows)
    if n > 1:
        return f"{fmt(mean)}{unit} ± {fmt(std)} over {n} seeds"
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{fmt(mean)}{unit}, 95% CI [{fmt(lo)}, {fmt(hi)}]"
    return f"{fmt(mean)}{unit}"


def _by(df: pd.DataFrame, column: str) -> dict[str, pd.DataFrame]:
    return {k: g for k, g in df.groupby(column, sort=False) if np.isfinite(T.summary(g)[0])}


def _mean(rows: pd.DataFrame) -> float:
    return T.summary(rows)[0]


def _upper(rows: pd.DataFrame) -> float:
    """What a "below chance" claim must clear: the interval's upper end where computed."""
    mean, _, _, hi, n = T.summary(rows)
    return hi if n == 1 and np.isfinite(hi) else mean


def _paired(
    res: Results, regime: str, ood: str, a: str, b: str
) -> tuple[float, float, float] | None:
    """AUROC(a) - AUROC(b) with its paired interval, if the run computed it (one seed)."""
    for det, vs, sign in ((a, b, 1.0), (b, a, -1.0)):
        rows = T.final(res, regime, layer=PENULTIMATE, ood=ood, metric="auroc_diff", detector=det)
        vs_of = rows["params"].map(lambda p: json.loads(p).get("vs") if p else None)
        rows = rows[vs_of == vs]
        if len(rows) == 1 and np.isfinite(rows[["ci_low", "ci_high"]].to_numpy(float)).all():
            v, lo, hi = rows[["value", "ci_low", "ci_high"]].iloc[0].to_numpy(float)
            return (v, lo, hi) if sign > 0 else (-v, -hi, -lo)
    return None


def compare(res: Results, regime: str, ood: str, a: str, b: str, auroc: dict) -> str:
    """``a`` (higher AUROC) against ``b``: a claim from the paired interval, else the numbers."""
    diff = _paired(res, regime, ood, a, b)
    if diff is None:
        gap = 100 * (_mean(auroc[a]) - _mean(auroc[b]))
        return f"next: {b}, {_say(auroc[b])}, {gap:.2f} points lower"
    v, lo, hi = (100 * x for x in diff)
    ci = f"(95% CI [{lo:.2f}, {hi:.2f}])"
    if lo <= 0 <= hi:
        return f"{a} and {b} ({_say(auroc[b])}) are about equal: difference {v:.2f} points {ci}"
    return f"{a} beats {b} ({_say(auroc[b])}) by {v:.2f} points {ci}"


def best_detector_findings(res: Results) -> list[str]:
    """The best detector per OOD set per regime; the runner-up; detectors below chance."""
    out = []
    for reg in T.regimes(res):
        for ood in T.oods(res):
            auroc = _by(T.final(res, reg, layer=PENULTIMATE, ood=ood, metric="auroc"), "detector")
            if not auroc:
                continue
            ranked = sorted(auroc, key=lambda d: -_mean(auroc[d]))
            s = f"Best detector on {ood} ({reg}): {ranked[0]}, AUROC {_say(auroc[ranked[0]])}"
            if len(ranked) > 1:
                s += "; " + compare(res, reg, ood, ranked[0], ranked[1], auroc)
            below = [d for d in ranked if _upper(auroc[d]) < 0.5]
            if below:
                who = _join([f"{d} ({_say(auroc[d])})" for d in below])
                verb = "it scores" if len(below) == 1 else "they score"
                s += (
                    f". AUROC below 50% (chance) for {who}: {verb} {ood} as more in-distribution "
                    "than the ID test set more often than not"
                )
            out.append(s + ".")
    return out


def _nc(res: Results, metric: str) -> dict[str, pd.DataFrame]:
    parts = [
        T.final(res, r, layer=PENULTIMATE, metric=metric, ood=None, i=None) for r in T.regimes(res)
    ]
    return _by(pd.concat(parts), "regime") if parts else {}


def more_collapsed(res: Results) -> tuple[str, str] | None:
    """``(lowest-NC1 regime, highest-NC1 regime)``, or None with fewer than two regimes."""
    nc1 = _nc(res, "nc1")
    if len(nc1) < 2:
        return None
    ranked = sorted(nc1, key=lambda r: _mean(nc1[r]))
    return ranked[0], ranked[-1]


def collapse_findings(res: Results) -> list[str]:
    """Which regime has the lower NC1, by how many times, and whether NC1 (trace) agrees."""
    pair = more_collapsed(res)
    if pair is None:
        return []
    lo, hi = pair
    nc1, tr = _nc(res, "nc1"), _nc(res, "nc1_trace")
    a, b = _mean(nc1[lo]), _mean(nc1[hi])
    if a == b:
        values = _join([f"{r} {_say(v, T.sig, '')}" for r, v in nc1.items()])
        return [f"NC1 is equal across regimes ({values})."]
    s = (
        f"By NC1, {lo} is more collapsed than {hi}: NC1 {_say(nc1[lo], T.sig, '')} vs "
        f"{_say(nc1[hi], T.sig, '')}, {b / a:.1f}x lower"
    )
    if lo in tr and hi in tr:
        x, y = _mean(tr[lo]), _mean(tr[hi])
        word = "agrees" if x < y else "is equal" if x == y else "ranks them the other way"
        s += f". NC1 (trace) {word} ({T.sig(x)} vs {T.sig(y)})"
    return [s + "."]


def _reference(res: Results) -> tuple[str, list[str]] | None:
    """The reference regime (first non-memorising one) and the regimes compared with it."""
    regs = T.regimes(res)
    if len(regs) < 2:
        return None
    ref = next((r for r in regs if not r.lower().startswith(("memor", "collapse"))), regs[0])
    return ref, [r for r in regs if r != ref]


def regime_auroc_findings(res: Results) -> list[str]:
    """Per OOD set: the best AUROC of each other regime against the reference regime's."""
    pair = _reference(res)
    if pair is None:
        return []
    ref, others = pair
    out = []
    for ood in T.oods(res):
        best = {}
        for reg in (ref, *others):
            auroc = _by(T.final(res, reg, layer=PENULTIMATE, ood=ood, metric="auroc"), "detector")
            if auroc:
                d = max(auroc, key=lambda k: _mean(auroc[k]))
                best[reg] = (d, auroc[d])
        for other in [o for o in others if o in best and ref in best]:
            (d1, r1), (d0, r0) = best[other], best[ref]
            diff = 100 * (_mean(r1) - _mean(r0))
            detail = f"{_say(r1)} with {d1} vs {_say(r0)} with {d0}"
            if diff == 0:
                out.append(f"Best AUROC on {ood}: equal under {other} and {ref} ({detail}).")
            else:
                word = "higher" if diff > 0 else "lower"
                gap = f"{abs(diff):.2f} points {word}"
                out.append(
                    f"Best AUROC on {ood} is {gap} under {other} than under {ref} ({detail})."
                )
    return out


def nc5_findings(res: Results) -> list[str]:
    """NC5 per OOD set of the lowest-NC1 network against the highest-NC1 one."""
    pair = more_collapsed(res)
    if pair is None or _mean(_nc(res, "nc1")[pair[0]]) == _mean(_nc(res, "nc1")[pair[1]]):
        return []
    lo, hi = pair
    a = _by(T.final(res, lo, layer=PENULTIMATE, metric="nc5"), "ood")
    b = _by(T.final(res, hi, layer=PENULTIMATE, metric="nc5"), "ood")
    parts: dict[str, list[str]] = {"lower": [], "higher": [], "equal": []}
    for ood in [o for o in a if o in b]:
        x, y = _mean(a[ood]), _mean(b[ood])
        parts["lower" if x < y else "higher" if x > y else "equal"].append(
            f"{ood} ({T.sig(x)} vs {T.sig(y)})"
        )
    said = [f"{k} on {_join(v)}" for k, v in parts.items() if v]
    if not said:
        return []
    return [
        f"NC5 (OrthoDev) of the more collapsed network ({lo}) compared with {hi}: "
        + "; ".join(said)
        + "."
    ]


def train_error_findings(res: Results) -> list[str]:
    """Per regime: does the training error reach zero (at a snapshot, or in the training log)?"""
    out = []
    for reg in T.regimes(res):
        zero = T.zero_error_epoch(res, reg)
        err = _by(res.select(regime=reg, layer=PENULTIMATE, metric="train_error"), "epoch")
        acc = T.final(res, reg, layer=None, metric="train_acc")
        if zero is not None:
            out.append(
                f"Training error of {reg} reaches zero (first at the epoch-{zero} snapshot)."
            )
        elif err:
            e = max(err)
            last = f"{_say(err[e])} at the last snapshot (epoch {e})"
            out.append(f"Training error of {reg} does not reach zero: {last}.")
        elif len(acc):
            err_log = acc.assign(value=1.0 - acc["value"], ci_low=np.nan, ci_high=np.nan)
            word = (
                "reaches zero" if _mean(err_log) == 0 else f"does not reach zero: {_say(err_log)}"
            )
            out.append(f"Training error of {reg} {word} at the end of training (training log).")
    return out


def depth_findings(res: Results) -> list[str]:
    """Per regime: NC1 (trace) over depth, and whether an earlier layer detects OOD better."""
    out = []
    for reg in T.regimes(res):
        layers = T.layers(res, reg)
        tr = _by(T.final(res, reg, metric="nc1_trace", ood=None, i=None), "layer")
        vals = [_mean(tr[lay]) for lay in layers if lay in tr]
        if len(vals) >= 2 and len(vals) == len(layers):
            mono = all(b < a for a, b in zip(vals, vals[1:], strict=False))
            trend = (
                "falls monotonically"
                if mono
                else "falls overall, not monotonically"
                if vals[-1] < vals[0]
                else "does not fall"
            )
            ends = f"{T.sig(vals[0])} at {layers[0]}, {T.sig(vals[-1])} at {layers[-1]}"
            out.append(f"In {reg}, NC1 (trace) {trend} with depth: {ends}.")
        table = T.depth_auroc_table(res, reg)
        if not table.rows or len(table.headers) < 4:
            continue
        last, earlier = table.headers[-1], table.headers[2:-1]
        worse, better = 0, []
        for row in table.rows:
            prev = [
                (lay, c.key) for lay, c in zip(earlier, row[2:-1], strict=True) if c.key is not None
            ]
            if row[-1].key is None or not prev:
                continue
            lay, v = max(prev, key=lambda kv: kv[1])
            if v > row[-1].key:
                better.append(
                    (
                        v - row[-1].key,
                        f"{row[0].text} on {row[1].text} ({lay} {v:.2f}% vs {row[-1].key:.2f}%)",
                    )
                )
            else:
                worse += 1
        n = worse + len(better)
        s = (
            f"In {reg}, per-layer detectors score their highest AUROC at {last} for {worse} of "
            f"{n} detector/OOD-set pairs"
        )
        if len(better) > MAX_LISTED:  # a zoo of detectors: the largest gains, and the count
            top = sorted(better, key=lambda g: -g[0])[:MAX_LISTED]
            s += (
                f"; an earlier layer scores higher for the other {len(better)}, by the most for "
                f"{_join([t for _, t in top])} (every pair is in the per-layer AUROC table)"
            )
        elif better:
            s += f"; an earlier layer scores higher for {_join([t for _, t in better])}"
        out.append(s + ".")
    return out


def findings(results: Results) -> list[str]:
    """Short sentences strictly supported by the numbers of ``results``.

    Covers: the best detector per OOD set and regime against the runner-up; detectors
    below chance; which regime is more collapsed by NC1 and by how many times; the best
    AUROC per OOD set across regimes; NC5 of the more collapsed network; whether the
    training error reaches zero; collapse and detection over depth. Parts the run did
    not compute are skipped.

    Args:
        results: the run's tidy table.

    Returns:
        Sentences, each quoting the numbers it rests on.
    """
    results = T.named(results)
    return [
        *best_detector_findings(results),
        *collapse_findings(results),
        *regime_auroc_findings(results),
        *nc5_findings(results),
        *train_error_findings(results),
        *depth_findings(results),
    ]
