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
    p.add_argument("--id", dest="id_dataset", help="ID dataset (default: the training set)")
    p.add_argument("--ood", action="append", default=[], help="OOD dataset (repeatable)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--cache", default=None, help="feature cache directory (default: none)")
    p.add_argument("--data-root", default=None, help="where datasets are looked for first")
    p.add_argument("--layers", default=None, help="comma-separated submodules (default: stages)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--max-train", type=int, default=None, help="subset of the train split")
    p.add_argument("--max-test", type=int, default=None, help="subset of the test split")
    p.add_argument("--max-ood", type=int, default=None, help="subset of each OOD set")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ncood.extract import extract_checkpoint

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
    from ncood.distributed import destroy_distributed, get_world_size, is_main

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
