"""``ncood collapse``: neural-collapse metrics (NC1-NC5) of extracted features.

Two modes:

* ``--features DIR``: one features directory (written by ``ncood extract`` or ``ncood
  run``, or a directory of ``.npz`` files: ``ncood score --help``). The
  penultimate layer gets every metric, each OOD set its NC5, every pooled layer of the
  train split the per-layer metrics with the decay rate across depth.
* ``--run RUN_DIR``: every snapshot of a training run, for metric-vs-epoch curves. Each
  snapshot checkpoint ``RUN_DIR/snapshots/epoch_<k>.pt`` not yet extracted is extracted
  to ``RUN_DIR/features/epoch_<k>/`` (with the ``--ood`` sets, on the run's own training
  samples); feature directories at ``RUN_DIR/snapshots/<name>/`` or
  ``RUN_DIR/features/epoch_<k>/`` are then read.

Both write ``results.csv`` + ``run.json`` (and the report with its figures) to ``--out``
and print a summary.
"""

from __future__ import annotations

import argparse
import sys

from ncood.cli.score import FEATURES_HELP

_EPILOG = """\
examples:
  ncood collapse --features runs/fmnist/features --out runs/fmnist/collapse
  ncood collapse --features DIR --ood digits --ood noise --out OUT
  ncood collapse --run runs/fmnist --ood digits   # every snapshot, writes RUN_DIR/collapse

--run first extracts every snapshot checkpoint RUN_DIR/snapshots/epoch_<k>.pt that has no
RUN_DIR/features/epoch_<k>/ yet (with the --ood sets, on the run's training samples),
then reads the feature directories (the layout `ncood extract --out` writes) found at
RUN_DIR/snapshots/<name>/ and RUN_DIR/features/epoch_<k>/; the epoch is taken from
extract.json ("epoch") or from the directory name.
The training error of each snapshot is extract.json's "train_error" when present, else
computed from the extracted train logits (eval transforms, the extracted subset).
Every number is a row of results.csv (docs/results_schema.md).

"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collapse",
        help="neural-collapse metrics NC1-NC5 per layer and per epoch",
        description=(
            "Measure neural collapse (Papyan, Han & Donoho 2020, arXiv 2008.08186; NC5 from "
            "NECO, arXiv 2310.06823) on extracted features: NC1-NC4 on the train split, NC5 "
            "per OOD set, every pooled layer, and (--run) every snapshot of a training run. "
            "Writes results.csv + run.json and the report with its figures to --out."
        ),
        epilog=_EPILOG + FEATURES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--features",
        metavar="DIR",
        help="features directory: from `ncood extract`/`ncood run`, or .npz files (below)",
    )
    src.add_argument(
        "--run",
        metavar="RUN_DIR",
        help="training run: every snapshot (extracted first where needed, with --ood sets)",
    )
    p.add_argument(
        "--ood",
        action="append",
        default=None,
        metavar="NAME",
        help="OOD set for NC5 (repeatable; default: every OOD set in the directory)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output directory (default with --run: RUN_DIR/collapse; required with --features)",
    )
    p.add_argument(
        "--max-full-dim",
        type=int,
        default=None,
        metavar="D",
        help="layers wider than D get only the inversion-free metrics (default 4096)",
    )
    p.add_argument("--data-root", default=None, help="(--run) where datasets are looked for first")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer analysis")
    p.add_argument(
        "--no-figures", action="store_true", help="write results.csv + run.json only (no report)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # heavy: keep --help fast
    from pathlib import Path

    from ncood import __version__
    from ncood.analysis import analyse, analyse_run_snapshots
    from ncood.errors import ConfigError
    from ncood.report import terminal_summary, write_report
    from ncood.types import load_feature_dir

    if args.max_full_dim is not None and args.max_full_dim < 1:
        raise ConfigError(f"--max-full-dim must be >= 1; got {args.max_full_dim}")
    if args.features and not args.out:
        raise ConfigError("--out is required with --features; pass the output directory")
    opts = {"layers": not args.no_layers}
    if args.max_full_dim is not None:
        opts["max_full_dim"] = args.max_full_dim
    if args.run:
        out = Path(args.out) if args.out else Path(args.run) / "collapse"
        quiet = getattr(args, "quiet", False)
        results = analyse_run_snapshots(
            args.run, ood=args.ood, data_root=args.data_root, progress=not quiet, **opts
        )
        results.meta["run"] = str(args.run)
    else:
        out = Path(args.out)
        fd = load_feature_dir(args.features)
        results = analyse(fd, ood=args.ood, **opts)
        results.meta["features"] = {"path": str(args.features), "meta": fd.meta}
    results.meta.update(tool="ncood collapse", ncood_version=__version__)
    written = [results.save(out) / "results.csv"]
    if not args.no_figures:
        written += list(write_report(results, out).values())
    print(terminal_summary(results))
    print(f"\nwrote {len(written)} file(s) to {out}", file=sys.stderr)
    return 0
