"""Short generated sentences stating what the numbers of a run show, and nothing more.

Each sentence is computed from ``results`` (docs/results_schema.md) alone and quotes the
numbers it rests on. Differences below a stated tolerance are called "about equal":

- AUROC: less than 1 percentage point (:data:`AUROC_TOL`);
- NC1 between regimes: a ratio below 1.1 (:data:`NC1_RATIO_TOL`);
- NC5 between regimes: a relative difference below 5% (:data:`NC5_REL_TOL`).

"More collapsed" always means "lower NC1" (Papyan, Han & Donoho 2020, arXiv 2008.08186);
NC5 is NECO's OrthoDev (Ben Ammar et al. 2024, arXiv 2310.06823).
"""

from __future__ import annotations

from typing import Any

from ncood.report.tables import (
    across_training,
    detector_names,
    is_number,
    ood_names,
    regime_names,
)

AUROC_TOL = 0.01  # one AUROC point: below it two detectors or regimes are "about equal"
NC1_RATIO_TOL = 1.1  # NC1 ratios below 1.1x are "about equal"
NC5_REL_TOL = 0.05  # NC5 values within 5% of the larger are "about equal"


def _p(v: float) -> str:
    return f"{100.0 * v:.2f}%"


def _g(v: float) -> str:
    return f"{v:.3g}"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _aurocs(results: dict[str, Any], regime: str, ood: str) -> dict[str, float]:
    per_det = results["regimes"][regime].get("ood", {})
    out = {}
    for det in detector_names(results):
        v = per_det.get(det, {}).get(ood, {}).get("auroc")
        if is_number(v):
            out[det] = float(v)
    return out


def best_detector_findings(results: dict[str, Any]) -> list[str]:
    """The best detector per OOD set per regime, with its AUROC; near-ties named as such."""
    out = []
    for reg in regime_names(results):
        for ood in ood_names(results):
            vals = _aurocs(results, reg, ood)
            if not vals:
                continue
            ranked = sorted(vals.items(), key=lambda kv: -kv[1])
            best, v = ranked[0]
            ties = [(d, x) for d, x in ranked[1:] if v - x < AUROC_TOL]
            s = f"Best detector on {ood} ({reg}): {best}, AUROC {_p(v)}"
            if ties:
                s += (
                    "; "
                    + _join([f"{d} ({_p(x)})" for d, x in ties])
                    + " within 1 point, about equal."
                )
            elif len(ranked) > 1:
                d2, x2 = ranked[1]
                s += f", {100 * (v - x2):.2f} points above the next, {d2} ({_p(x2)})."
            else:
                s += "."
            inverted = [d for d, x in ranked if x < 0.5 - AUROC_TOL]
            if inverted:
                s += (
                    f" {_join(inverted)} {'gives' if len(inverted) == 1 else 'give'} {ood} "
                    "higher scores than ID test data more often than not (AUROC below 50%)."
                )
            out.append(s)
    return out


def _nc1_by_regime(results: dict[str, Any], key: str = "nc1") -> dict[str, float]:
    out = {}
    for reg in regime_names(results):
        v = (results["regimes"][reg].get("collapse") or {}).get(key)
        if is_number(v) and v > 0:
            out[reg] = float(v)
    return out


def more_collapsed(results: dict[str, Any]) -> tuple[str, str, float] | None:
    """``(most collapsed, least collapsed, NC1 ratio)`` by NC1, or None if not comparable."""
    nc1 = _nc1_by_regime(results)
    if len(nc1) < 2:
        return None
    lo = min(nc1, key=nc1.get)
    hi = max(nc1, key=nc1.get)
    return lo, hi, nc1[hi] / nc1[lo]


def collapse_findings(results: dict[str, Any]) -> list[str]:
    """Which regime is more collapsed by NC1, by how many times, and whether NC1_trace agrees."""
    cmp = more_collapsed(results)
    if cmp is None:
        return []
    lo, hi, ratio = cmp
    nc1 = _nc1_by_regime(results)
    if ratio < NC1_RATIO_TOL:
        values = _join([f"{r} {_g(v)}" for r, v in nc1.items()])
        return [f"NC1 is about equal across regimes ({values}; ratio {ratio:.2f}x)."]
    s = (
        f"By NC1, {lo} is more collapsed than {hi}: NC1 {_g(nc1[lo])} vs {_g(nc1[hi])}, "
        f"{ratio:.1f}x lower."
    )
    tr = _nc1_by_regime(results, "nc1_trace")
    if lo in tr and hi in tr:
        t_ratio = tr[hi] / tr[lo]
        if t_ratio >= NC1_RATIO_TOL:
            s += f" NC1 (trace) agrees ({_g(tr[lo])} vs {_g(tr[hi])})."
        elif t_ratio > 1 / NC1_RATIO_TOL:
            s += f" NC1 (trace) is about equal ({_g(tr[lo])} vs {_g(tr[hi])})."
        else:
            s += f" NC1 (trace) ranks them the other way ({_g(tr[lo])} vs {_g(tr[hi])})."
    return [s]


def _reference_and_others(results: dict[str, Any]) -> tuple[str, list[str]] | None:
    """The reference regime (first non-memorising one) and the regimes compared with it."""
    regs = regime_names(results)
    if len(regs) < 2:
        return None
    memorising = [r for r in regs if r.lower().startswith(("memor", "collapse"))]
    ref = next((r for r in regs if r not in memorising), regs[0])
    return ref, [r for r in regs if r != ref]


def regime_auroc_findings(results: dict[str, Any]) -> list[str]:
    """Per OOD set: is the best AUROC higher, lower or about equal in each other regime?"""
    pair = _reference_and_others(results)
    if pair is None:
        return []
    ref, others = pair
    out = []
    for ood in ood_names(results):
        ref_vals = _aurocs(results, ref, ood)
        if not ref_vals:
            continue
        ref_det = max(ref_vals, key=ref_vals.get)
        ref_v = ref_vals[ref_det]
        for other in others:
            vals = _aurocs(results, other, ood)
            if not vals:
                continue
            det = max(vals, key=vals.get)
            v = vals[det]
            diff = v - ref_v
            detail = f"{_p(v)} with {det} vs {_p(ref_v)} with {ref_det}"
            if abs(diff) < AUROC_TOL:
                out.append(f"Best AUROC on {ood}: about equal under {other} and {ref} ({detail}).")
            else:
                word = "higher" if diff > 0 else "lower"
                out.append(
                    f"Best AUROC on {ood} is {100 * abs(diff):.2f} points {word} under {other} "
                    f"than under {ref} ({detail})."
                )
    return out


def nc5_findings(results: dict[str, Any]) -> list[str]:
    """Whether NC5 is lower (closer to orthogonal) for the network more collapsed by NC1."""
    cmp = more_collapsed(results)
    if cmp is None or cmp[2] < NC1_RATIO_TOL:
        return []
    lo, hi, _ = cmp
    a = results["regimes"][lo].get("nc5") or {}
    b = results["regimes"][hi].get("nc5") or {}
    lower, higher, equal = [], [], []
    for ood in [o for o in ood_names(results) if o in a] + [o for o in a if o not in b]:
        if not (is_number(a.get(ood)) and is_number(b.get(ood))):
            continue
        x, y = float(a[ood]), float(b[ood])
        text = f"{ood} ({_g(x)} vs {_g(y)})"
        if abs(x - y) <= NC5_REL_TOL * max(abs(x), abs(y)):
            equal.append(text)
        elif x < y:
            lower.append(text)
        else:
            higher.append(text)
    if not (lower or higher or equal):
        return []
    parts = []
    if lower:
        parts.append(f"lower on {_join(lower)}")
    if higher:
        parts.append(f"higher on {_join(higher)}")
    if equal:
        parts.append(f"about equal on {_join(equal)}")
    return [
        f"NC5 (OrthoDev) of the more collapsed network ({lo}) compared with {hi}: "
        + "; ".join(parts)
        + "."
    ]


def train_error_findings(results: dict[str, Any]) -> list[str]:
    """Per regime: does training error reach zero (at a snapshot, or in the training log)?"""
    out = []
    for reg in regime_names(results):
        r = results["regimes"][reg]
        block = across_training(r)
        errs = (block or {}).get("train_error") or []
        epochs = (block or {}).get("epochs") or []
        zero = (block or {}).get("zero_error_epoch")
        if isinstance(zero, int) and not isinstance(zero, bool):
            out.append(
                f"Training error of {reg} reaches zero (first at the epoch-{zero} snapshot)."
            )
        elif errs and is_number(errs[-1]) and epochs:
            e = epochs[min(len(epochs), len(errs)) - 1]
            if errs[-1] == 0:
                out.append(f"Training error of {reg} reaches zero (epoch-{e} snapshot).")
            else:
                out.append(
                    f"Training error of {reg} does not reach zero: {_p(errs[-1])} at the last "
                    f"snapshot (epoch {e})."
                )
        else:
            acc = (r.get("final") or {}).get("train_acc")
            if is_number(acc):
                if acc >= 1.0:
                    out.append(f"Training accuracy of {reg} reaches 100% (training log).")
                else:
                    out.append(
                        f"Training error of {reg} does not reach zero: {_p(1.0 - acc)} at the "
                        "end of training (training log)."
                    )
    return out


def depth_findings(results: dict[str, Any]) -> list[str]:
    """Per regime: NC1 (trace) over depth, and whether layer detectors get worse earlier."""
    out = []
    for reg in regime_names(results):
        depth = results["regimes"][reg].get("depth") or {}
        layers = list(depth.get("layers") or [])
        tr = (depth.get("metrics") or {}).get("nc1_trace") or []
        if len(layers) >= 2 and len(tr) == len(layers) and all(is_number(v) for v in tr):
            mono = all(b < a for a, b in zip(tr, tr[1:], strict=False))
            trend = (
                "falls monotonically"
                if mono
                else "falls overall, not monotonically"
                if tr[-1] < tr[0]
                else "does not fall"
            )
            out.append(
                f"In {reg}, NC1 (trace) {trend} with depth: {_g(tr[0])} at {layers[0]}, "
                f"{_g(tr[-1])} at {layers[-1]}."
            )
        per_layer = depth.get("ood_auroc") or {}
        ordered = [lay for lay in layers if lay in per_layer] or list(per_layer)
        if len(ordered) < 2:
            continue
        last, earlier = ordered[-1], ordered[:-1]
        worse, equal, better = [], [], []
        for det, by_ood in per_layer[last].items():
            for ood, v_last in by_ood.items():
                prev = [
                    (lay, per_layer[lay].get(det, {}).get(ood))
                    for lay in earlier
                    if is_number(per_layer[lay].get(det, {}).get(ood))
                ]
                if not is_number(v_last) or not prev:
                    continue
                best_lay, best_v = max(prev, key=lambda kv: kv[1])
                pair = f"{det} on {ood}"
                if best_v > v_last + AUROC_TOL:
                    better.append(f"{pair} (best at {best_lay}, {_p(best_v)} vs {_p(v_last)})")
                elif best_v >= v_last - AUROC_TOL:
                    equal.append(f"{pair} ({best_lay} {_p(best_v)} vs {_p(v_last)})")
                else:
                    worse.append(pair)
        n = len(worse) + len(equal) + len(better)
        if n == 0:
            continue
        s = (
            f"In {reg}, per-layer detectors score lower AUROC at every earlier layer than at "
            f"{last} for {len(worse)} of {n} detector/OOD-set pairs"
        )
        if equal:
            s += f"; an earlier layer is about equal (within 1 point) for {_join(equal)}"
        if better:
            s += f"; an earlier layer is better for {_join(better)}"
        out.append(s + ".")
    return out


def findings(results: dict[str, Any]) -> list[str]:
    """Short sentences strictly supported by the numbers of ``results``.

    Covers: the best detector per OOD set per regime; which regime is more collapsed by
    NC1 and by how many times; whether the best AUROC per OOD set is higher or lower in
    the memorising regime; whether NC5 is lower for the more collapsed network; whether
    training error reaches zero; whether collapse and per-layer detectors degrade at
    earlier layers. Parts missing from ``results`` are skipped.

    Args:
        results: a results dict (docs/results_schema.md).

    Returns:
        A list of sentences, each quoting the numbers it rests on.
    """
    return [
        *best_detector_findings(results),
        *collapse_findings(results),
        *regime_auroc_findings(results),
        *nc5_findings(results),
        *train_error_findings(results),
        *depth_findings(results),
    ]
