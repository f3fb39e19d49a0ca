"""``ncood train``: train a classifier in a regime and write a resumable run directory.

Examples::

    ncood train --model resnet_narrow --data fashion_mnist --regime standard --epochs 3 \\
        --out runs/x
    ncood train --config cfg.yaml --out runs/x --lr 0.05      # flags override the YAML
    ncood train --out runs/x --resume                         # continue where it stopped

Every :class:`~ncood.train.config.TrainConfig` field has a flag. Precedence, lowest first:
the resumed run's saved config (with ``--resume``), ``--config`` YAML, flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ncood.errors import ConfigError

HELP = {
    "model": "network name (see ncood.models.list_models)",
    "model_kwargs": "extra model builder arguments as JSON, e.g. '{\"zero_init_residual\": true}'",
    "dataset": "dataset name; class subsets as 'fashion_mnist[0-5]'",
    "data_root": "directory searched first for datasets (then NCOOD_DATA_ROOT, ...)",
    "allow_subset": "fall back to the small Fashion-MNIST subset shipped with ncood",
    "regime": "training recipe: standard | memorize | terminal (supplies the defaults)",
    "epochs": "epochs to train (default: the regime's)",
    "batch_size": "images per step (default: the regime's)",
    "lr": "peak learning rate (default: the regime's)",
    "weight_decay": "L2 penalty (default: the regime's)",
    "momentum": "SGD momentum (default: the regime's)",
    "nesterov": "Nesterov momentum (default: the regime's)",
    "optimizer": "sgd | adam | adamw (default: the regime's)",
    "schedule": "cosine | step | constant, stepped per iteration (default: the regime's)",
    "augment": "random crop (pad 4) + horizontal flip (default: the regime's)",
    "max_train_samples": "stratified training subset for fast runs (default: all)",
    "max_test_samples": "stratified test subset evaluated each epoch (default: all)",
    "holdout_samples": "validation images held out of the train split, never trained on",
    "seed": "seed of initialisation, subsets, order and augmentation",
    "precision": "fp32 | bf16 (autocast) | auto (bf16 where the hardware has it)",
    "channels_last": "NHWC memory format",
    "device": "auto (cuda if available, else cpu) | cpu | cuda[:i]",
    "snapshots": "epochs to snapshot: 'log' (0,1,2,4,..,last), 'all', 'none' or '0,5,10'",
    "num_threads": "torch CPU threads (default: torch's)",
}
CHOICES = {
    "precision": ("fp32", "bf16", "auto"),
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("cosine", "step", "constant"),
}


# Every TrainConfig field and how its flag parses the value. Written out rather than read
# from TrainConfig so that building the parser does not import ncood.train (and torch):
# `ncood train --help` answers at once. tests/test_cli_main.py checks it against TrainConfig.
FIELD_KINDS = {
    "model": "str",
    "model_kwargs": "json",
    "dataset": "str",
    "data_root": "str",
    "allow_subset": "bool",
    "regime": "str",
    "epochs": "int",
    "batch_size": "int",
    "lr": "float",
    "weight_decay": "float",
    "momentum": "float",
    "nesterov": "bool",
    "optimizer": "str",
    "schedule": "str",
    "augment": "bool",
    "max_train_samples": "int",
    "max_test_samples": "int",
    "holdout_samples": "int",
    "seed": "int",
    "precision": "str",
    "channels_last": "bool",
    "device": "str",
    "snapshots": "snapshots",
    "num_threads": "int",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a classifier (resumable run directory)",
        description=(
            "Train a network on a dataset in a regime. Writes last.pt (every epoch), "
            "snapshots/epoch_*.pt, history.csv/json, training_curves.png and "
            "train_config.json to --out; prints a summary table to stdout."
        ),
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last.pt"
    )
    for name, kind in FIELD_KINDS.items():
        flags = ["--" + name.replace("_", "-")]
        if name == "dataset":
            flags = ["--data", "--dataset"]
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": HELP.get(name)}
        if kind == "snapshots":
            kwargs["type"] = _snapshots
        elif kind == "json":
            kwargs["type"] = _json_object
        elif kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind == "int":
            kwargs["type"] = int
        elif kind == "float":
            kwargs["type"] = float
        if name in CHOICES:
            kwargs["choices"] = CHOICES[name]
        p.add_argument(*flags, **kwargs)
    p.set_defaults(func=run)


def _snapshots(text: str) -> list[int] | str:
    if text in ("log", "all", "none"):
        return text
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'log', 'all', 'none' or comma-separated epochs; got {text!r}"
        ) from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object; got {text!r}")
    return value


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the saved config (on --resume), the YAML file and the flags, in that order."""
    from ncood.train.config import load_yaml  # heavy (torch via ncood.train): keep --help fast

    data: dict[str, Any] = {}
    if args.resume:
        data.update(saved_config(Path(args.out)))
    if args.config:
        data.update(load_yaml(args.config))
    for name in FIELD_KINDS:
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    return data


def saved_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config a run was started with (``{}`` when there is none)."""
    path = run_dir / "train_config.json"
    if path.is_file():
        try:
            return dict(json.loads(path.read_text())["config"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path} is corrupt ({exc}); delete it, the config is also in last.pt"
            ) from None
    last = run_dir / "last.pt"
    if last.is_file():
        from ncood.train.checkpoint import load_checkpoint  # heavy (torch): keep --help fast

        return dict(load_checkpoint(last).get("config", {}))
    return {}


def run(args: argparse.Namespace) -> int:
    # heavy (torch): imported here, not at module level, to keep --help fast
    from ncood.train import TrainingInterrupted, checkpoint_sha256, train
    from ncood.train.config import TrainConfig

    config = TrainConfig.from_dict(build_config(args))
    try:
        result = train(config, args.out, resume=args.resume, progress=not args.quiet)
    except TrainingInterrupted as exc:
        print(f"ncood train: {exc}", file=sys.stderr)
        return 128 + exc.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
    from ncood.distributed import destroy_distributed, is_main  # heavy (torch)

    main_rank = is_main()  # under torchrun only rank 0 reports
    destroy_distributed()
    if not main_rank:
        return 0
    print(format_history(result.history))
    cfg = result.config
    print()
    print(f"model       {cfg.model} on {cfg.dataset} ({cfg.regime}, {cfg.epochs} epochs)")
    print(f"checkpoint  {result.checkpoint}  sha256 {checkpoint_sha256(result.checkpoint)[:16]}")
    print(f"run dir     {result.run_dir}")
    return 0


def format_history(history: list[dict[str, Any]]) -> str:
    """The per-epoch records as a fixed-width table."""
    head = (
        f"{'epoch':>5}  {'train_loss':>10}  {'train_acc':>9}  {'test_loss':>9}  "
        f"{'test_acc':>8}  {'lr':>9}  {'seconds':>8}  {'img/s':>8}"
    )
    lines = [head]
    for r in history:
        lines.append(
            f"{r['epoch']:>5}  {r['train_loss']:>10.4f}  {100 * r['train_acc']:>8.2f}%  "
            f"{r['test_loss']:>9.4f}  {100 * r['test_acc']:>7.2f}%  {r['lr']:>9.3g}  "
            f"{r['seconds']:>8.1f}  {r['images_per_s']:>8.0f}"
        )
    total = sum(r["seconds"] for r in history)
    lines.append(f"total {total:.1f} s")
    return "\n".join(lines)
