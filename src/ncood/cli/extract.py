"""``ncood extract``: features of a checkpoint, or of a torchvision/timm model with your
weights, on the ID train/test splits and OOD sets."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="extract features, logits and per-layer features of a checkpoint",
        description=(
            "Run a trained network once over the ID train/test splits and each OOD set and "
            "write FeatureSets (.npy + meta.json) and the linear head to --out. Repeated "
            "extractions of the same checkpoint and data are served from --cache."
        ),
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--checkpoint", help="checkpoint written by `ncood train` (default: none; or --model)"
    )
    which.add_argument(
        "--model",
        help="torchvision:NAME or timm:NAME (built without downloading; weights from "
        "--weights); needs --id (default: none; or --checkpoint)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="weights of --model: a state_dict, a dict with one under state_dict/model, "
        "an ncood checkpoint, or .safetensors (default: random initialisation)",
    )
    p.add_argument(
        "--num-classes", type=int, default=None, help="classes of --model (default: the weights')"
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="side of the model input (default: the model family's, e.g. resize 256 + crop 224)",
    )
    p.add_argument(
        "--mean", default=None, help="per-channel mean, e.g. 0.5,0.5,0.5 (default: the family's)"
    )
    p.add_argument(
        "--std", default=None, help="per-channel std, e.g. 0.25,0.25,0.25 (default: the family's)"
    )
    p.add_argument(
        "--head",
        default=None,
        help="name of the final nn.Linear of --model (default: found by a dry run)",
    )
    p.add_argument(
        "--features",
        default=None,
        help="module whose pooled output is the feature of --model (default: the head's input)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="image decoding processes (default: cores - 1)"
    )
    p.add_argument(
        "--id",
        dest="id_dataset",
        default=None,
        help="ID dataset (default: the dataset the checkpoint was trained on)",
    )
    p.add_argument(
        "--ood",
        action="append",
        default=[],
        help="OOD set, NAME=SPEC or SPEC (a dataset, folder:PATH, npz:PATH), repeatable "
        "(default: none); see `ncood list datasets`",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--cache", default=None, help="feature cache directory (default: no cache)")
    p.add_argument(
        "--data-root",
        default=None,
        help="directory searched first for datasets (default: none; then $NCOOD_DATA_ROOT, "
        "~/.cache/ncood, /usr/share/datasets)",
    )
    p.add_argument(
        "--layers",
        default=None,
        help="comma-separated submodules to pool and keep (default: every stage of the model)",
    )
    p.add_argument(
        "--batch-size", type=int, default=512, help="images per forward pass (default: %(default)s)"
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (cuda if available, else cpu) | cpu | cuda[:i] (default: %(default)s)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32 | bf16 autocast; features are stored as float32 (default: %(default)s)",
    )
    p.add_argument(
        "--max-train",
        type=int,
        default=None,
        help="stratified subset of the train split (default: all of it)",
    )
    p.add_argument(
        "--max-test",
        type=int,
        default=None,
        help="stratified subset of the test split (default: all of it)",
    )
    p.add_argument(
        "--max-ood", type=int, default=None, help="subset of each OOD set (default: all of it)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ncood.extract import extract_checkpoint  # heavy (torch): keep --help fast

    layers = None if args.layers is None else [s for s in args.layers.split(",") if s]
    if args.model is not None:
        return _run_model(args, layers)
    fd = extract_checkpoint(
        args.checkpoint,
        id_dataset=args.id_dataset,
        ood=args.ood,
        out=args.out,
        cache_dir=args.cache,
        data_root=args.data_root,
        layers=layers,
        max_train_samples=args.max_train,
        max_test_samples=args.max_test,
        max_ood_samples=args.max_ood,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        progress=not args.quiet,
    )
    from ncood.distributed import destroy_distributed, get_world_size, is_main  # heavy (torch)

    world = get_world_size()
    if is_main():
        _print_splits(fd)
        shards = f" ({world} shards per split)" if world > 1 else ""
        print(f"wrote {args.out}{shards}", file=sys.stderr)
    destroy_distributed()
    return 0


def _floats(text: str | None, flag: str) -> list[float] | None:
    from ncood.errors import ConfigError

    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"{flag} must be comma-separated numbers, e.g. 0.5,0.5,0.5; got {text!r}"
        ) from None


def _run_model(args: argparse.Namespace, layers: list[str] | None) -> int:
    """``--model``: a torchvision/timm model (or one named by its weights) on any data."""
    from ncood.errors import ConfigError
    from ncood.evaluation import extract_features  # heavy (torch)

    if args.id_dataset is None:
        raise ConfigError(
            "--model needs --id (the in-distribution data: a dataset name, folder:PATH or "
            "npz:PATH); a checkpoint of `ncood train` knows its own"
        )
    if args.cache is not None:
        import logging

        logging.getLogger(__name__).warning("--cache applies to --checkpoint; --model extracts")
    fd = extract_features(
        args.model,
        weights=args.weights,
        num_classes=args.num_classes,
        head=args.head,
        features=args.features,
        input_size=args.input_size,
        mean=_floats(args.mean, "--mean"),
        std=_floats(args.std, "--std"),
        train=args.id_dataset,
        test=args.id_dataset,
        ood=args.ood,
        out=args.out,
        layers=layers,
        max_train_samples=args.max_train,
        max_test_samples=args.max_test,
        max_ood_samples=args.max_ood,
        seed=args.seed,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        precision=args.precision,
        data_root=args.data_root,
        progress=not args.quiet,
    )
    _print_splits(fd)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _print_splits(fd) -> None:
    """One line per split of the written features: size, width, classes, pooled layers."""
    rows = [("train", fd.train), ("test", fd.test)] + [(f"ood/{k}", v) for k, v in fd.ood.items()]
    print(f"{'split':<24}{'n':>8}{'dim':>6}{'classes':>9}  layers")
    for key, fs in rows:
        # under torchrun fd holds rank 0's shards; n is the whole split
        n = fs.meta.get("subset", {}).get("shard", {}).get("n_total", len(fs))
        layers_txt = ",".join(f"{k}:{v.shape[1]}" for k, v in fs.layers.items())
        print(f"{key:<24}{n:>8}{fs.dim:>6}{fs.num_classes:>9}  {layers_txt}")
