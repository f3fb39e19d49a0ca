"""Compare two results tables row by row: are the shared measurements exactly equal?

    python scripts/compare_results.py RUN_A RUN_B            # directories holding results.csv
    python scripts/compare_results.py RUN_A RUN_B --ignore seconds,images_per_s --show 20

Rows are joined on the identifying columns (``ncood.results.KEYS``: regime, seed, epoch,
layer, detector, ood, metric, params, i, j). For every row present on both sides, ``value``,
``n_id`` and ``n_ood`` must be exactly equal (NaN equals NaN): floats are written with
``repr``, so equal numbers read back equal. Intervals (``ci_low``, ``ci_high``) are compared
too and counted apart (one side may have computed them and the other not). Rows present on
one side only are counted per metric, with the layers and epochs they cover. Exit status 1
when a shared row's value differs (or, with ``--strict``, when an interval differs or a row
is on one side only).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from ncood.results import KEYS, Results

MEASURED = ("value", "n_id", "n_ood")
INTERVAL = ("ci_low", "ci_high")


def _keyed(res: Results) -> pd.DataFrame:
    df = res.to_frame()
    for k in KEYS:  # one printable, NaN-free key per column (a NaN key joins nothing)
        df[k] = df[k].astype("object").where(df[k].notna(), "").astype(str)
    dup = df.duplicated(list(KEYS), keep=False)
    if dup.any():
        raise SystemExit(f"{int(dup.sum())} rows share their key columns; cannot join:\n{df[dup]}")
    return df


def _same(a: pd.Series, b: pd.Series) -> np.ndarray:
    a = pd.to_numeric(a).astype("float64").to_numpy()
    b = pd.to_numeric(b).astype("float64").to_numpy()
    return (a == b) | (np.isnan(a) & np.isnan(b))


def compare(a: Results, b: Results, *, ignore=()) -> dict:
    """``{"both", "equal"}`` counts and ``{"differ", "ci_differ", "only_a", "only_b"}`` rows."""
    da, db = _keyed(a), _keyed(b)
    da, db = da[~da["metric"].isin(ignore)], db[~db["metric"].isin(ignore)]
    m = da.merge(db, on=list(KEYS), how="outer", suffixes=("_a", "_b"), indicator=True)
    both = m[m["_merge"] == "both"]

    def agree(columns):
        ok = np.ones(len(both), dtype=bool)
        for v in columns:
            ok &= _same(both[f"{v}_a"], both[f"{v}_b"])
        return ok

    ok, ci_ok = agree(MEASURED), agree(INTERVAL)
    return {
        "both": len(both),
        "equal": int(ok.sum()),
        "differ": both[~ok],
        "ci_differ": both[~ci_ok],
        "only_a": m[m["_merge"] == "left_only"],
        "only_b": m[m["_merge"] == "right_only"],
    }


def _groups(df: pd.DataFrame) -> str:
    """Rows counted per metric, with the layers and epochs they cover."""
    if df.empty:
        return "  (none)"
    lines = []
    for metric, g in df.groupby("metric", sort=True):
        layers = ",".join(sorted(set(g["layer"]) - {""})) or "-"
        epochs = ",".join(sorted(set(g["epoch"]) - {""}, key=int)) or "-"
        lines.append(f"  {len(g):5d}  {metric:<27} layers {layers:<32} epochs {epochs}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", help="first results directory (results.csv + run.json)")
    p.add_argument("b", help="second results directory")
    p.add_argument("--ignore", default="", help="comma-separated metrics to leave out")
    p.add_argument("--show", type=int, default=10, help="differing rows to print")
    p.add_argument("--strict", action="store_true", help="intervals and one-sided rows fail too")
    args = p.parse_args(argv)
    ignore = [s for s in args.ignore.split(",") if s]
    r = compare(Results.load(args.a), Results.load(args.b), ignore=ignore)
    print(f"rows on both sides:          {r['both']}")
    print(f"  value, n_id, n_ood equal:  {r['equal']}")
    print(f"  value, n_id, n_ood differ: {len(r['differ'])}")
    if len(r["differ"]):
        d = r["differ"]
        rel = ((d["value_a"] - d["value_b"]).abs() / d["value_a"].abs()).rename("rel_diff")
        print(pd.concat([d[[*KEYS, "value_a", "value_b"]], rel], axis=1).head(args.show))
        print("  max relative difference per metric:")
        print(rel.groupby(d["metric"]).max().to_string())
    print(f"  interval differs:          {len(r['ci_differ'])}")
    print(_groups(r["ci_differ"]))
    print(f"rows only in {args.a}: {len(r['only_a'])}\n{_groups(r['only_a'])}")
    print(f"rows only in {args.b}: {len(r['only_b'])}\n{_groups(r['only_b'])}")
    extra = len(r["ci_differ"]) or len(r["only_a"]) or len(r["only_b"])
    return 1 if len(r["differ"]) or (args.strict and extra) else 0


if __name__ == "__main__":
    sys.exit(main())
