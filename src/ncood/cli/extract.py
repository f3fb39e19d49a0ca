"""``ncood extract``: features of a checkpoint on the ID train/test splits and OOD sets."""

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
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `ncood train`")
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
        help="OOD dataset, repeatable (default: none); see `ncood list datasets`",
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
        rows = [("train", fd.train), ("test", fd.test)]
        rows += [(f"ood/{k}", v) for k, v in fd.ood.items()]
        print(f"{'split':<24}{'n':>8}{'dim':>6}{'classes':>9}  layers")
        for key, fs in rows:
            # under torchrun fd holds rank 0's shards; n is the whole split
            n = fs.meta.get("subset", {}).get("shard", {}).get("n_total", len(fs))
            layers_txt = ",".join(f"{k}:{v.shape[1]}" for k, v in fs.layers.items())
            print(f"{key:<24}{n:>8}{fs.dim:>6}{fs.num_classes:>9}  {layers_txt}")
        shards = f" ({world} shards per split)" if world > 1 else ""
        print(f"wrote {args.out}{shards}", file=sys.stderr)
    destroy_distributed()
    return 0
