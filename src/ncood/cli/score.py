"""``ncood score``: fit OOD detectors on extracted features and report the metrics."""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: The two layouts of a features directory (also in `ncood collapse --help`, docs/byom.md).
FEATURES_HELP = """\
--features DIR is read in either layout (told apart by extract.json / train.npz):
  native  what `ncood extract --out DIR` writes, and `ncood run` per network:
          RUN/regimes/<regime>[/seed_<s>]/features
  .npz    features computed elsewhere, one numpy.savez file per split:
            train.npz        features (n, D), labels (n,) ints 0..C-1 [, logits (n, C)]
            test.npz         features (m, D) [, labels, logits]
            ood/<name>.npz   features (k, D) [, logits]   (or ood_<name>.npz)
            head.npz         W (C, D), b (C,) of the final linear layer [, classes]
          optional layer.<name> arrays (n, d) in every file: pooled features of other
          layers; logits not given are W z + b, given ones must equal it (1%)
"""


def register(sub: argparse._SubParsersAction) -> None:
    # the one default list (ncood.config imports no numpy: --help stays fast)
    from ncood.config import DETECTORS_DEFAULT

    default = ",".join(DETECTORS_DEFAULT)
    p = sub.add_parser(
        "score",
        help="fit OOD detectors on extracted features and compute AUROC, FPR@95, AUPR",
        description=(
            "Fit each detector on the ID train features of --features, score the ID test "
            "split and every OOD set, and write results.csv + run.json "
            "(docs/results_schema.md) to --out. The OOD tables are printed (values in %; ID "
            "is the positive class)."
        ),
        epilog=FEATURES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--features",
        required=True,
        metavar="DIR",
        help="features directory: written by `ncood extract`/`ncood run`, or .npz files "
        "(layout below)",
    )
    p.add_argument(
        "--detectors",
        default=default,
        help=f"comma-separated detector names (default: {default}); every registered "
        "name is accepted (`ncood list detectors`)",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="DETECTOR.KEY=VALUE",
        help="detector hyperparameter, e.g. vim.dim=32 or neco.variance=0.95 (repeatable)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="B",
        help="bootstrap replicates for 95%% intervals of the metrics (default 0: none)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.set_defaults(func=run)


def parse_params(items: list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    """``["vim.dim=32"]`` -> ``{"vim": {"dim": 32}}``; values parsed as YAML scalars."""
    # heavy: keep --help fast
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


def run(args: argparse.Namespace) -> int:
    # heavy: keep --help fast
    from pathlib import Path

    from ncood import __version__
    from ncood.analysis import analyse
    from ncood.errors import ConfigError
    from ncood.metrics import CONVENTIONS
    from ncood.report import terminal_summary
    from ncood.types import load_feature_dir

    names = [s.strip() for s in args.detectors.split(",") if s.strip()]
    if not names:
        raise ConfigError("--detectors is empty; pass e.g. --detectors msp,vim")
    if len(set(names)) != len(names):
        raise ConfigError(f"--detectors lists a detector twice: {args.detectors!r}")
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0 replicates; got {args.bootstrap}")
    params = parse_params(args.param, names)
    fd = load_feature_dir(args.features)
    if not fd.ood:
        raise ConfigError(
            f"{args.features!r} has no OOD sets; extract at least one with "
            "`ncood extract ... --ood NAME` (or add ood/<name>.npz)"
        )
    results = analyse(
        fd,
        detectors=params,
        collapse=False,
        layers=False,
        bootstrap={"n_boot": args.bootstrap, "seed": 0} if args.bootstrap else None,
    )
    results.meta.update(
        tool="ncood score",
        ncood_version=__version__,
        features={"path": str(args.features), "meta": fd.meta},
        conventions=dict(CONVENTIONS),
    )
    out = Path(args.out)
    results.save(out)
    print(terminal_summary(results))
    print(f"wrote {out / 'results.csv'} and {out / 'run.json'}", file=sys.stderr)
    return 0
