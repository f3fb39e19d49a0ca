"""Compare two results tables row by row: are the shared measurements exactly equal?

    python scripts/compare_results.py RUN_A RUN_B            # directories holding results.csv
    python scripts/compare_results.py RUN_A RUN_B --ignore seconds,images_per_s --show 20

Rows are joined on the identifying columns (``ncood.results.KEYS``: regime, seed, epoch,
layer, detector, ood, metric, params, i, j). For every row present on both sides,
``value``, ``ci_low``, ``ci_high``, ``n_id`` and ``n_ood`` must be exactly equal (NaN equals
NaN): floats are written with ``repr``, so equal numbers read back equal. Rows present on
one side only are counted per (metric, layer, epoch) group. Exit status 1 when a shared
row differs (or, with ``--strict``, when a row is on one side only).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from ncood.results import KEYS, VALUES, Results


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
    """``{"both", "equal", "differ" (DataFrame), "only_a", "only_b" (DataFrames)}``."""
    da, db = _keyed(a), _keyed(b)
    da, db = da[~da["metric"].isin(ignore)], db[~db["metric"].isin(ignore)]
    m = da.merge(db, on=list(KEYS), how="outer", suffixes=("_a", "_b"), indicator=True)
    both = m[m["_merge"] == "both"]
    ok = np.ones(len(both), dtype=bool)
    for v in VALUES:
        ok &= _same(both[f"{v}_a"], both[f"{v}_b"])
    return {
        "both": len(both),
        "equal": int(ok.sum()),
        "differ": both[~ok],
        "only_a": m[m["_merge"] == "left_only"],
        "only_b": m[m["_merge"] == "right_only"],
    }


def _groups(df: pd.DataFrame) -> str:
    if df.empty:
        return "  (none)"
    g = df.groupby(["metric", "layer", "epoch"], sort=True).size()
    return "\n".join(
        f"  {n:5d}  metric={k[0]} layer={k[1] or '-'} epoch={k[2] or '-'}" for k, n in g.items()
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", help="first results directory (results.csv + run.json)")
    p.add_argument("b", help="second results directory")
    p.add_argument("--ignore", default="", help="comma-separated metrics to leave out")
    p.add_argument("--show", type=int, default=10, help="differing rows to print")
    p.add_argument("--strict", action="store_true", help="rows on one side only also fail")
    args = p.parse_args(argv)
    ignore = [s for s in args.ignore.split(",") if s]
    r = compare(Results.load(args.a), Results.load(args.b), ignore=ignore)
    print(f"rows compared (on both sides): {r['both']}")
    print(f"rows exactly equal:            {r['equal']}")
    print(f"rows differing:                {len(r['differ'])}")
    if len(r["differ"]):
        cols = [*KEYS, "value_a", "value_b"]
        print(r["differ"][cols].head(args.show).to_string(index=False))
    print(f"rows only in {args.a}: {len(r['only_a'])}\n{_groups(r['only_a'])}")
    print(f"rows only in {args.b}: {len(r['only_b'])}\n{_groups(r['only_b'])}")
    failed = len(r["differ"]) > 0 or (args.strict and (len(r["only_a"]) or len(r["only_b"])))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
