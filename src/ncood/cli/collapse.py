"""``ncood collapse``: neural-collapse metrics (NC1-NC5) of extracted features.

Two modes:

* ``--features DIR``: one feature directory written by ``ncood extract``. The
  penultimate layer gets every metric, each OOD set its NC5, every pooled layer of the
  train split the per-layer metrics with the decay rate across depth.
* ``--run RUN_DIR``: every snapshot of a training run, for metric-vs-epoch curves. Each
  snapshot checkpoint ``RUN_DIR/snapshots/epoch_<k>.pt`` not yet extracted is extracted
  to ``RUN_DIR/features/epoch_<k>/`` (with the ``--ood`` sets, on the run's own training
  samples); feature directories at ``RUN_DIR/snapshots/<name>/`` or
  ``RUN_DIR/features/epoch_<k>/`` are then read.

Both write ``collapse.json`` and PNG figures to ``--out`` and print a summary table.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ncood.collapse.metrics import HEAD_SCALARS
from ncood.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

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
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collapse",
        help="neural-collapse metrics NC1-NC5 per layer and per epoch",
        description=(
            "Measure neural collapse (Papyan, Han & Donoho 2020, arXiv 2008.08186; NC5 from "
            "NECO, arXiv 2310.06823) on extracted features: NC1-NC4 on the train split, NC5 "
            "per OOD set, every pooled layer, and (--run) every snapshot of a training run. "
            "Writes collapse.json and PNG figures to --out."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", metavar="DIR", help="feature directory from `ncood extract`")
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
    p.add_argument("--no-figures", action="store_true", help="write collapse.json only")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------- helpers
def _select_ood(available: list[str], wanted: list[str] | None, where: str) -> list[str]:
    if wanted is None:
        return list(available)
    missing = [n for n in wanted if n not in available]
    if missing:
        raise ConfigError(
            f"--ood {missing[0]!r} is not in {where} (it has: {', '.join(available) or 'none'}); "
            "pass one of those names or extract that OOD set first"
        )
    return list(dict.fromkeys(wanted))


def _class_names(fd) -> list[str] | None:
    for meta in (fd.meta, fd.train.meta):
        for key in ("class_names", "classes"):
            names = meta.get(key) if isinstance(meta, dict) else None
            if isinstance(names, list) and len(names) == fd.head.num_classes:
                return [str(n) for n in names]
    return None


def _labels(fs, where: str) -> np.ndarray:
    if fs.labels is None:
        raise CheckpointError(
            f"the train split of {where} has no labels; collapse metrics need labelled "
            "train features (re-run `ncood extract`)"
        )
    return np.asarray(fs.labels)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if np.isfinite(v) else str(v)
    return str(v)


def _print_table(rows: list[dict[str, Any]], columns: list[str], out=None) -> None:
    out = sys.stdout if out is None else out
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)), file=out)
    for r in rows:
        print(
            "  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths, strict=True)),
            file=out,
        )


def _depth_kwargs(args) -> dict[str, Any]:
    return {} if args.max_full_dim is None else {"max_full_dim": args.max_full_dim}


# ---------------------------------------------------------------------- modes
def _analyse_dir(directory: Path, args, *, with_layers: bool = True) -> dict[str, Any]:
    """Every metric of one feature directory: penultimate, NC5 per OOD set, layers."""
    from ncood.collapse import ClassStats, collapse_metrics, nc5, nc5_centred
    from ncood.collapse.depth import depth_analysis, layer_stack
    from ncood.types import load_feature_dir

    fd = load_feature_dir(directory)
    y = _labels(fd.train, str(directory))
    oods = _select_ood(list(fd.ood), args.ood, str(directory))
    stats = ClassStats.from_features(fd.train.features, y, fd.head.num_classes)
    metrics = collapse_metrics(fd.train.features, y, fd.head, stats=stats)
    ood_nc5 = {
        name: {
            "orthodev": nc5(None, None, fd.ood[name].features, stats=stats),
            "orthodev_centred": nc5_centred(None, None, fd.ood[name].features, stats=stats),
        }
        for name in oods
    }
    depth = None
    if with_layers and not args.no_layers and fd.train.layers:
        depth = depth_analysis(
            layer_stack(fd.train), y, head=fd.head, head_metrics=metrics, **_depth_kwargs(args)
        )
    return {
        "fd": fd,
        "metrics": metrics,
        "nc5": ood_nc5,
        "depth": depth,
        "class_names": _class_names(fd),
    }


def _run_features(args) -> int:
    from ncood import __version__
    from ncood.collapse import to_jsonable
    from ncood.io import write_json

    if not args.out:
        raise ConfigError("--out is required with --features; pass the output directory")
    out = Path(args.out)
    res = _analyse_dir(Path(args.features), args)
    m, depth = res["metrics"], res["depth"]
    figures: list[Path] = []
    if not args.no_figures:
        from ncood.report.collapse_plots import plot_depth, save_collapse_figures, save_figure

        figures += save_collapse_figures(m, out, "penultimate", class_names=res["class_names"])
        if depth is not None:
            figures.append(save_figure(plot_depth(depth), out / "collapse_depth.png"))
    doc = {
        "tool": "ncood collapse",
        "version": __version__,
        "features": str(Path(args.features)),
        "extract": res["fd"].meta,
        "penultimate": to_jsonable(m),
        "nc5": to_jsonable(res["nc5"]),
        "layers": depth.to_dict() if depth is not None else None,
        "figures": [p.name for p in figures],
    }
    write_json(out / "collapse.json", doc)

    rows = [{"metric": k, "value": m[k]} for k in (*HEAD_SCALARS, "ncc_acc")]
    rows += [{"metric": f"nc5[{n}]", "value": v["orthodev"]} for n, v in res["nc5"].items()]
    rows += [
        {"metric": f"nc5_centred[{n}]", "value": v["orthodev_centred"]}
        for n, v in res["nc5"].items()
    ]
    print(f"penultimate layer: n={m['n']} C={m['num_classes']} D={m['dim']}")
    _print_table(rows, ["metric", "value"])
    for note in m["notes"]:
        print(f"note: {note}")
    if depth is not None:
        print()
        _print_table(depth.table(), ["layer", "dim", "nc1", "nc1_trace", "cdnv", "ncc_acc"])
        for key, fit in depth.decay.items():
            print(
                f"decay {key}: x{_fmt(fit['factor'])} per layer (rate {_fmt(fit['rate'])}, "
                f"R^2 {_fmt(fit['r2'])})"
            )
    print(f"\nwrote {out / 'collapse.json'} and {len(figures)} figure(s)")
    return 0


_EPOCH_RE = re.compile(r"(\d+)(?!.*\d)")


def find_snapshot_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Extracted snapshot feature directories of a run, as ``(epoch, dir)`` sorted by epoch."""
    found: dict[int, Path] = {}
    candidates = sorted(run_dir.glob("snapshots/*/extract.json")) + sorted(
        run_dir.glob("features/epoch_*/extract.json")
    )
    for meta_path in candidates:
        d = meta_path.parent
        try:
            epoch = json.loads(meta_path.read_text()).get("epoch")
        except (OSError, ValueError):
            epoch = None
        if epoch is None:
            match = _EPOCH_RE.search(d.name)
            if match is None:
                raise CheckpointError(
                    f"cannot tell the epoch of {str(d)!r}: no 'epoch' in extract.json and no "
                    "number in the directory name; rename it epoch_<k>"
                )
            epoch = int(match.group(1))
        if int(epoch) in found:
            log.warning("epoch %s found twice (%s, %s); using the first", epoch, found[epoch], d)
            continue
        found[int(epoch)] = d
    return sorted(found.items())


def extract_snapshots(
    run_dir: Path, ood: list[str], *, data_root: str | None = None, quiet: bool = False
) -> list[Path]:
    """Extract every ``RUN_DIR/snapshots/epoch_*.pt`` not yet extracted.

    Each goes to ``RUN_DIR/features/epoch_<k>/`` on the same training samples the run
    used (its ``max_train_samples``, ``seed``, data root), through the feature cache in
    ``RUN_DIR/cache``; already extracted snapshots are left as they are.
    """
    from ncood.extract import extract_checkpoint
    from ncood.train import load_checkpoint

    written = []
    for pt in sorted(run_dir.glob("snapshots/epoch_*.pt")):
        out = run_dir / "features" / pt.stem
        if (out / "extract.json").exists():
            continue
        cfg = load_checkpoint(pt).get("config", {})
        extract_checkpoint(
            pt,
            ood=ood,
            out=out,
            cache_dir=run_dir / "cache",
            data_root=data_root or cfg.get("data_root"),
            layers=None,
            max_train_samples=cfg.get("max_train_samples"),
            max_test_samples=1,  # collapse uses the train split; the test split is a stub
            allow_subset=bool(cfg.get("allow_subset", False)),
            seed=int(cfg.get("seed", 0)),
            progress=not quiet,
        )
        written.append(out)
    return written


def _run_run(args) -> int:
    from ncood import __version__
    from ncood.collapse import to_jsonable
    from ncood.collapse.epochs import Snapshot, epoch_analysis
    from ncood.io import write_json
    from ncood.types import load_feature_dir

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise ConfigError(f"--run {str(run_dir)!r} is not a directory; pass a training run dir")
    quiet = getattr(args, "quiet", False)
    extract_snapshots(run_dir, list(args.ood or []), data_root=args.data_root, quiet=quiet)
    snaps = find_snapshot_dirs(run_dir)
    if not snaps:
        raise CheckpointError(
            f"no extracted snapshots in {str(run_dir)!r} (looked for snapshots/*/extract.json "
            "and features/epoch_*/extract.json); extract each snapshot with `ncood extract "
            "--checkpoint RUN_DIR/snapshots/epoch_<k>.pt --out RUN_DIR/features/epoch_<k>`"
        )
    out = Path(args.out) if args.out else run_dir / "collapse"
    snapshots, per_epoch_layers = [], {}
    last = None
    bar = tqdm(snaps, desc="snapshots", file=sys.stderr, disable=not sys.stderr.isatty() or quiet)
    for i, (epoch, d) in enumerate(bar):
        fd = load_feature_dir(d)
        y = _labels(fd.train, str(d))
        oods = _select_ood(list(fd.ood), args.ood, str(d))
        err = fd.meta.get("train_error")
        snapshots.append(Snapshot(epoch, fd.train, fd.head, err, {n: fd.ood[n] for n in oods}))
        if not args.no_layers and fd.train.layers:
            from ncood.collapse.depth import depth_analysis, layer_stack

            depth = depth_analysis(layer_stack(fd.train), y, head=fd.head, **_depth_kwargs(args))
            per_epoch_layers[epoch] = {"table": to_jsonable(depth.table()), "decay": depth.decay}
            if i == len(snaps) - 1:
                last = depth
    result = epoch_analysis(snapshots)
    final = result.metrics[-1]
    figures: list[Path] = []
    if not args.no_figures:
        from ncood.report.collapse_plots import (
            plot_depth,
            plot_epochs,
            save_collapse_figures,
            save_figure,
        )

        figures.append(save_figure(plot_epochs(result), out / "collapse_epochs.png"))
        figures += save_collapse_figures(final, out, f"epoch_{result.epochs[-1]:04d}")
        if last is not None:
            figures.append(save_figure(plot_depth(last), out / "collapse_depth.png"))
    doc = {
        "tool": "ncood collapse",
        "version": __version__,
        "run": str(run_dir),
        "snapshots": {str(e): str(d) for e, d in snaps},
        "epochs": result.to_dict(),
        "layers_per_epoch": {str(k): v for k, v in per_epoch_layers.items()},
        "figures": [p.name for p in figures],
    }
    write_json(out / "collapse.json", to_jsonable(doc))

    cols = ["epoch", "train_error", "nc1", "nc1_trace", "nc2_equiangular_means", "nc3", "nc4"]
    cols += [f"nc5/{n}" for n in result.ood_names]
    _print_table(result.table(), cols)
    zero = result.zero_error_epoch
    print(
        f"zero training error first at epoch {zero}"
        if zero is not None
        else "training error never reached zero in these snapshots"
    )
    print(f"\nwrote {out / 'collapse.json'} and {len(figures)} figure(s)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.max_full_dim is not None and args.max_full_dim < 1:
        raise ConfigError(f"--max-full-dim must be >= 1; got {args.max_full_dim}")
    return _run_run(args) if args.run else _run_features(args)
