"""Everything a training run builds before its first epoch, in one place.

:func:`prepare` seeds the generators, loads the data, builds the model, optimiser and
schedule, restores them from ``last.pt`` when resuming, and writes ``train_config.json``.
The epoch loop (:mod:`ncood.train.loop`) then only runs epochs and saves them.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ncood.data import ImageArrays, InputSpec, input_spec_for, load_images
from ncood.distributed import DistContext, barrier, resolve_device, wrap_ddp
from ncood.errors import ConfigError, DataError
from ncood.io import write_json
from ncood.models import create_model
from ncood.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from ncood.train.config import TrainConfig, resume_conflicts, train_holdout
from ncood.train.epoch import batch_bounds, resolve_precision
from ncood.train.optim import build_optimizer, build_scheduler
from ncood.train.regimes import get_regime

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """A run ready for its next epoch.

    Attributes:
        cfg: the resolved config.
        run_dir: the run directory.
        ctx: this process's place in the (possibly one-process) job.
        device: where it computes; precision: ``"fp32"`` or ``"bf16"``.
        model: the network; net: what the epoch loop calls (``model`` wrapped in DDP
            under ``torchrun``).
        optimizer, scheduler: restored when resuming.
        spec: the model's input spec; train_arrays, test_arrays: the data.
        images, labels: the training split on ``device`` (decoded once).
        rank_batch: images per step of this process.
        start: completed epochs; history: their records.
        snapshots: epochs whose weights are kept.
        meta: what every checkpoint of the run records besides the weights.
    """

    cfg: TrainConfig
    run_dir: Path
    ctx: DistContext
    device: torch.device
    precision: str
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    spec: InputSpec
    train_arrays: ImageArrays
    test_arrays: ImageArrays
    images: torch.Tensor
    labels: torch.Tensor
    rank_batch: int
    start: int
    history: list[dict[str, Any]]
    snapshots: list[int]
    meta: dict[str, Any]

    @property
    def last(self) -> Path:
        """``run_dir / "last.pt"``."""
        return self.run_dir / "last.pt"

    def save(self, epoch: int) -> None:
        """Write ``last.pt`` (and the snapshot of ``epoch``, if it is one); rank 0 only."""
        if not self.ctx.is_main:
            return
        save_checkpoint(
            self.last,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            epoch=epoch,
            history=self.history,
            rng=capture_rng(),
            **self.meta,
        )
        if epoch in self.snapshots:
            save_checkpoint(
                self.run_dir / "snapshots" / f"epoch_{epoch:04d}.pt",
                model=self.model,
                epoch=epoch,
                history=self.history,
                **self.meta,
            )


def prepare(cfg: TrainConfig, run_dir: Path, ctx: DistContext, *, resume: bool) -> Setup:
    """Build (or restore) everything of a run up to its next epoch.

    A new run saves its initialisation as epoch 0 (``last.pt`` and the snapshot).

    Raises:
        ConfigError: an existing run without ``resume``, a resumed run whose config or
            classes differ, model arguments that do not fit the data, a batch smaller
            than the number of processes.
        DataError: an empty or unlabelled dataset.
    """
    last = run_dir / "last.pt"
    ckpt = _existing_checkpoint(cfg, run_dir, last, resume)
    barrier()  # every rank has looked at last.pt before rank 0 rewrites it

    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002 (seeds code that uses the global state)
    torch.manual_seed(cfg.seed)
    device = ctx.device if ctx.is_distributed else resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)

    train_arrays, test_arrays = (
        load_images(
            cfg.dataset,
            split,
            root=cfg.data_root,
            n=n,
            seed=cfg.seed,
            allow_subset=cfg.allow_subset,
            holdout=holdout,
        )
        for split, n, holdout in (
            ("train", cfg.max_train_samples, train_holdout(cfg)),
            ("test", cfg.max_test_samples, None),
        )
    )
    for arr in (train_arrays, test_arrays):
        if arr.labels is None or len(arr) == 0:
            raise DataError(
                f"dataset {arr.name!r} is empty or unlabelled ({len(arr)} images); "
                "train on a labelled dataset such as fashion_mnist"
            )
    classes = list(train_arrays.classes) or [
        str(i) for i in range(int(train_arrays.labels.max()) + 1)
    ]
    spec = InputSpec.from_dict(ckpt["input_spec"]) if ckpt else input_spec_for(train_arrays)
    if ckpt and list(ckpt["dataset"].get("classes", classes)) != classes:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r}: it was trained on classes "
            f"{ckpt['dataset'].get('classes')}, the data now has {classes}; point "
            "--data-root at the original data or choose another --out"
        )
    model_kwargs = _model_kwargs(cfg, len(classes), spec.channels)
    try:
        model = create_model(cfg.model, **model_kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"model_kwargs {cfg.model_kwargs} do not fit model {cfg.model!r} ({exc}); "
            "remove the unknown keys"
        ) from None
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    world = ctx.world_size
    rank_batch = cfg.batch_size // world  # per-process batch; the global batch is world x it
    if rank_batch < 1:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is smaller than the {world} processes; use a "
            f"batch_size of at least {world} (a multiple of it keeps the global batch)"
        )
    steps = len(batch_bounds(-(-len(train_arrays) // world), rank_batch))
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)

    dataset_info = {
        "name": cfg.dataset,
        "classes": classes,
        "source": train_arrays.source,
        "n_train": len(train_arrays),
        "n_test": len(test_arrays),
    }
    meta = {
        "model_name": cfg.model,
        "model_kwargs": model_kwargs,
        "input_spec": spec.to_dict(),
        "dataset": dataset_info,
        "regime": cfg.regime,
        "config": cfg.to_dict(),
    }
    if ctx.is_main:
        write_json(
            run_dir / "train_config.json",
            {
                "config": cfg.to_dict(),
                "regime_source": get_regime(cfg.regime).source,
                "model_kwargs": model_kwargs,
                "dataset": dataset_info,
                "input_spec": spec.to_dict(),
                "device": str(device),
                "precision_used": precision,
                "world_size": world,
            },
        )

    setup = Setup(
        cfg=cfg,
        run_dir=run_dir,
        ctx=ctx,
        device=device,
        precision=precision,
        model=model,
        net=model,
        optimizer=optimizer,
        scheduler=scheduler,
        spec=spec,
        train_arrays=train_arrays,
        test_arrays=test_arrays,
        images=train_arrays.images.to(device),  # (n, C, H, W) uint8, decoded once
        labels=train_arrays.labels.to(device),  # (n,)
        rank_batch=rank_batch,
        start=0,
        history=[],
        snapshots=cfg.snapshot_epochs(),
        meta=meta,
    )
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if "rng" in ckpt:
            restore_rng(ckpt["rng"])
        setup.history = [dict(r) for r in ckpt.get("history", [])]
        setup.start = int(ckpt["epoch"])
        log.info("resuming %s from epoch %d of %d", run_dir, setup.start, cfg.epochs)
    else:
        setup.save(0)
    if setup.start < cfg.epochs:
        log.info(
            "training %s (%s, %s params) on %s: %d train / %d test images, regime %s, "
            "%d epochs, %s, %s",
            cfg.model,
            json.dumps(model_kwargs),
            f"{sum(p.numel() for p in model.parameters()):,}",
            cfg.dataset,
            len(train_arrays),
            len(test_arrays),
            cfg.regime,
            cfg.epochs,
            device,
            precision + (" channels_last" if cfg.channels_last else ""),
        )
    setup.net = wrap_ddp(model, ctx)
    return setup


def _existing_checkpoint(
    cfg: TrainConfig, run_dir: Path, last: Path, resume: bool
) -> dict[str, Any] | None:
    if not last.exists():
        if resume:
            log.info("no %s to resume: starting a new run", last)
        return None
    if not resume:
        raise ConfigError(
            f"{str(run_dir)!r} already holds a training run ({last.name}); pass "
            "--resume to continue it, or choose another --out"
        )
    ckpt = load_checkpoint(last)
    if "optimizer" not in ckpt or "scheduler" not in ckpt:
        raise ConfigError(
            f"{last} has no optimiser state, so it cannot be resumed; choose another --out"
        )
    conflicts = resume_conflicts(ckpt.get("config", {}), cfg)
    if conflicts:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r}: its config differs from the one it "
            f"was started with ({'; '.join(conflicts)}); resume with the original "
            "settings (omit them: `--resume` reuses them) or choose another --out"
        )
    return ckpt


def _model_kwargs(cfg: TrainConfig, num_classes: int, in_channels: int) -> dict[str, Any]:
    kwargs = dict(cfg.model_kwargs)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if key in kwargs and kwargs[key] != value:
            raise ConfigError(
                f"model_kwargs sets {key}={kwargs[key]}, but the data {cfg.dataset!r} "
                f"needs {key}={value}; remove {key} from model_kwargs"
            )
        kwargs[key] = value
    return kwargs
