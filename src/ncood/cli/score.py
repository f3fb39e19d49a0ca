"""``ncood score``: fit OOD detectors on extracted features and report the metrics."""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any

DEFAULT = "msp,maxlogit,energy,mahalanobis,vim,neco"


def register(sub: argparse._SubParsersAction) -> None:
    from ncood.detectors import list_detectors

    p = sub.add_parser(
        "score",
        help="fit OOD detectors on extracted features and compute AUROC, FPR@95, AUPR",
        description=(
            "Fit each detector on the ID train features of --features (written by "
            "`ncood extract`), score the ID test split and every OOD set, and write "
            "results.json and metrics.csv to --out. One table per OOD set is printed "
            "(values in %, * = best per column; ID is the positive class)."
        ),
    )
    p.add_argument("--features", required=True, metavar="DIR", help="feature directory")
    p.add_argument(
        "--detectors",
        default=DEFAULT,
        help=f"comma-separated detector names (default: {DEFAULT}); available: "
        + ", ".join(list_detectors()),
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="DETECTOR.KEY=VALUE",
        help="detector hyperparameter, e.g. vim.dim=32 or neco.variance=0.95 (repeatable)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.set_defaults(func=run)


def parse_params(items: list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    """``["vim.dim=32"]`` -> ``{"vim": {"dim": 32}}``; values parsed as YAML scalars."""
    import yaml

    from ncood.errors import ConfigError

    params: dict[str, dict[str, Any]] = {name: {} for name in names}
    for item in items:
        key, sep, raw = item.partition("=")
        det, dot, param = key.strip().partition(".")
        if not sep or not dot or not det or not param:
            raise ConfigError(
                f"--param must look like DETECTOR.KEY=VALUE (e.g. vim.dim=32); got {item!r}"
            )
        if det not in params:
            raise ConfigError(
                f"--param {item!r} names detector {det!r}, which is not in --detectors "
                f"({','.join(names)}); add it there or fix the name"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--param {item!r}: cannot parse the value {raw!r} ({exc})") from None
        params[det][param] = value
    return params


def write_metrics_csv(path, results: dict[str, Any]) -> None:
    """One row per (detector, OOD set, metric): columns detector, ood, metric, value."""
    from ncood.io import atomic_open

    with atomic_open(path, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["detector", "ood", "metric", "value"])
        for det, entry in results["detectors"].items():
            for ood, metrics in entry["ood"].items():
                for metric, value in metrics.items():
                    w.writerow([det, ood, metric, repr(float(value))])


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from ncood.detectors import evaluate, format_ood_tables
    from ncood.errors import ConfigError
    from ncood.io import write_json

    names = [s.strip() for s in args.detectors.split(",") if s.strip()]
    if not names:
        raise ConfigError("--detectors is empty; pass e.g. --detectors msp,vim")
    if len(set(names)) != len(names):
        raise ConfigError(f"--detectors lists a detector twice: {args.detectors!r}")
    params = parse_params(args.param, names)
    bar = tqdm(
        total=None, file=sys.stderr, disable=args.quiet or not sys.stderr.isatty(), leave=False
    )

    def on_step(msg: str) -> None:
        bar.set_description_str(msg)
        bar.update(1)

    try:
        results = evaluate(args.features, params, on_step=on_step)
    finally:
        bar.close()
    out = Path(args.out)
    write_json(out / "results.json", results)
    write_metrics_csv(out / "metrics.csv", results)
    print(format_ood_tables(results))
    print(f"wrote {out / 'results.json'} and {out / 'metrics.csv'}", file=sys.stderr)
    return 0
