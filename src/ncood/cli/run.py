"""``ncood run [CONFIG]``: the whole experiment, ending with tables and a report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="train, extract, score, measure collapse and write the report",
        description=(
            "Run the reference experiment described by a YAML config (default: the embedded "
            "Fashion-MNIST config, offline, about 5 minutes on 2 CPU cores). Finished stages "
            "(checkpoints, features) are reused when the command is run again. Writes "
            "results.csv + run.json (every measurement, docs/results_schema.md), scores.npz "
            "and report.html/report.md to the output directory."
        ),
    )
    p.add_argument("config", nargs="?", default=None, help="YAML config (default: embedded)")
    p.add_argument("--out", default=None, help="output directory (overrides config.output)")
    p.add_argument("--data-root", default=None, help="where datasets are looked for first")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # heavy: keep --help fast
    import yaml

    from ncood.config import check_run_config, default_config_path, load_config

    cfg = load_config(args.config)
    if args.data_root:
        cfg.data.root = args.data_root
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    out = Path(args.out or cfg.output)
    logging.getLogger(__name__).info(
        "ncood run: config %s -> %s", args.config or f"{default_config_path()} (embedded)", out
    )
    # checked before the pipeline/report stack is imported (~1.5 s): a bad config fails in
    # seconds; pipeline.run checks again (cheap: the data is in the decode cache)
    check_run_config(cfg, output=out)
    from ncood.pipeline import run as run_pipeline  # heavy: keep --help fast
    from ncood.report import terminal_summary  # heavy: keep --help fast

    results = run_pipeline(cfg, output=out)
    print(terminal_summary(results))
    print(f"\nresults: {out / 'results.csv'}\nreport: {out / 'report.html'}")
    return 0
