"""The training loop: data decoded once, batches augmented on the device, resumable.

One run writes into one directory::

    run_dir/
      train_config.json         resolved TrainConfig (+ regime source)
      last.pt                   checkpoint after the last completed epoch (atomic, every epoch)
      snapshots/epoch_0000.pt   initialisation; then the snapshot epochs (weights, no optimiser)
      history.csv, history.json per-epoch records
      training_curves.png       loss / accuracy / lr per epoch

Determinism: the initialisation is seeded from ``config.seed``; the order and the
augmentation of epoch ``e`` come from a ``torch.Generator`` seeded from ``(seed, e)``
alone, and the schedule is a closed form of the iteration. So a run interrupted after
epoch ``k`` and resumed from ``last.pt`` ends with the same weights as an uninterrupted
run (on CPU; GPU kernels may be non-deterministic).

Interruption: SIGINT (Ctrl-C) or SIGTERM (e.g. a batch scheduler's notice) finishes the
current step, leaves ``last.pt`` at the last completed epoch and raises
:class:`TrainingInterrupted`; the command line exits 130 (SIGINT) or 143 (SIGTERM).
A second signal stops at once. SIGKILL at any moment leaves the previous ``last.pt``
intact, because every artifact is written to a temporary file and renamed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ncood.distributed import barrier
from ncood.errors import ConfigError, DataError, NcoodError
from ncood.io import atomic_open, write_json, write_text
from ncood.train.augment import random_crop_flip
from ncood.train.checkpoint import (
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from ncood.train.config import TrainConfig, resume_conflicts
from ncood.train.optim import build_optimizer, build_scheduler
from ncood.train.regimes import get_regime

log = logging.getLogger(__name__)

HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "lr",
    "seconds",
    "images_per_s",
)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM; ``last.pt`` holds the last completed epoch.

    Attributes:
        run_dir: the run directory.
        epoch: the last completed (saved) epoch.
        signum: the signal that stopped it.
    """

    def __init__(
        self, message: str, run_dir: Path, epoch: int, signum: int = signal.SIGINT
    ) -> None:
        super().__init__(message)
        self.message = message
        self.run_dir = run_dir
        self.epoch = epoch
        self.signum = int(signum)

    def __str__(self) -> str:
        return self.message


@dataclass
class TrainResult:
    """What :func:`train` hands back.

    Attributes:
        checkpoint: ``run_dir / "last.pt"``.
        history: per-epoch records (:data:`HISTORY_COLUMNS`).
        run_dir: the run directory.
        config: the resolved config.
    """

    checkpoint: Path
    history: list[dict[str, Any]]
    run_dir: Path
    config: TrainConfig | None = None

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's record (``{}`` before any epoch)."""
        return self.history[-1] if self.history else {}


@dataclass
class TrainState:
    """What callbacks see. Read it; do not change the model's weights or train mode."""

    config: TrainConfig
    run_dir: Path
    model: nn.Module
    input_spec: Any
    train_arrays: Any
    test_arrays: Any
    device: torch.device
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0  # under torchrun: this process's rank (write files only on rank 0)
    world_size: int = 1  # number of training processes


class Callback:
    """Hooks into :func:`train`; override what you need.

    Contract: called in the training process after the epoch's ``last.pt`` and snapshot
    are written, so an exception in a hook never loses an epoch. A hook may run the model
    (e.g. neural-collapse metrics per epoch) but must leave its weights alone, restore
    ``model.train()`` and draw no numbers from torch's global random generator if the run
    must stay reproducible. Raising ``KeyboardInterrupt`` stops training cleanly.

    Under ``torchrun`` every rank calls the hooks (with the same weights): a hook writes
    files only where ``state.rank == 0`` and calls collectives, if any, on every rank.
    """

    def on_train_start(self, state: TrainState) -> None:
        """Before the first epoch of this process (after resuming, if resuming)."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After epoch ``state.epoch`` is saved; ``state.history[-1]`` is its record."""

    def on_train_end(self, state: TrainState) -> None:
        """After the last epoch and the final artifacts."""


def train(
    config: TrainConfig | dict[str, Any],
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train a classifier and write its run directory.

    Args:
        config: a :class:`TrainConfig` or a mapping of its fields.
        out_dir: the run directory (created).
        resume: continue from ``out_dir/last.pt`` if it exists (a finished run returns at
            once; no ``last.pt`` starts a new run). Without ``resume`` an existing
            ``last.pt`` is an error, so a finished run is never overwritten by accident.
        progress: show a per-epoch progress bar on stderr (only when it is a terminal).
        callbacks: :class:`Callback` objects.

    Returns:
        :class:`TrainResult` with the path of ``last.pt`` and the history.

    Raises:
        ConfigError: invalid config, existing run without ``resume``, a resumed run
            whose config differs, or another process training into ``out_dir``.
        TrainingInterrupted: SIGINT or SIGTERM; ``last.pt`` holds the last completed epoch.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    cfg = config.resolved()
    run_dir = Path(out_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NcoodError(
            f"cannot create run directory {str(run_dir)!r}: {exc.strerror}; choose a writable --out"
        ) from None
    from ncood.distributed import init_distributed

    # under torchrun: join the process group; only rank 0 holds the lock and writes
    ctx = init_distributed(cfg.device)
    lock = _run_lock(run_dir) if ctx.is_main else contextlib.nullcontext()
    with lock, _stop_signals() as stop:
        return _Run(cfg, run_dir, progress, list(callbacks), stop, ctx).execute(resume)


# ---------------------------------------------------------------------- one epoch
def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of every batch of an epoch over ``n`` samples.

    The last partial batch is kept, except when it holds a single sample (batch norm
    cannot normalise one sample); that sample is seen in other epochs.
    """
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds.pop()
    return bounds


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``: shuffling and augmentation depend on (seed, epoch)
    only, so resuming at any epoch boundary reproduces an uninterrupted run."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]) >> 1)


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` to bfloat16 for ``precision="bf16"``, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: Any,
    *,
    batch_size: int,
    generator: torch.Generator,
    augment: bool,
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "",
    should_stop: Callable[[], bool] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """One pass over the training images, one optimiser and scheduler step per batch.

    Args:
        model: the network (put in train mode here).
        optimizer: its optimiser.
        scheduler: stepped after every optimiser step (None: no schedule).
        images: ``(n, C, H, W)`` uint8 on the training device.
        labels: ``(n,)`` int64 on the training device.
        spec: :class:`ncood.data.InputSpec` of the model input.
        batch_size: images per step.
        generator: CPU generator for the order and the augmentation.
        augment: random crop (pad 4) + horizontal flip.
        precision: ``"fp32"`` or ``"bf16"`` (autocast; the loss is computed in float32).
        channels_last: feed NHWC batches.
        progress: show a progress bar on stderr.
        desc: progress-bar label.
        should_stop: polled after every step; True ends the epoch early.
        shard: ``(rank, world_size)``: with ``world_size > 1`` this process takes its
            part of the (identical on every rank) permutation, as ``DistributedSampler``
            does (:func:`ncood.distributed.sampler_indices`); ``batch_size`` is then the
            per-process batch, and the returned loss, accuracy and images are summed over
            processes.

    Returns:
        ``{"loss", "acc", "images", "seconds", "stopped"}``: mean training loss and
        accuracy over the augmented batches, images seen, wall time, whether stopped early.
    """
    from ncood.data import to_model_input

    device = images.device
    n = images.shape[0]
    order = torch.randperm(n, generator=generator)  # (n,)
    if shard[1] > 1:
        from ncood.distributed import sampler_indices

        order = sampler_indices(order, *shard)  # (ceil(n / world),)
    bounds = batch_bounds(len(order), batch_size)
    order = order.to(device)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    stopped = False
    bar = tqdm(
        total=len(bounds),
        desc=desc,
        unit="step",
        file=sys.stderr,
        disable=not progress or not sys.stderr.isatty(),
        leave=False,
    )
    start = time.perf_counter()
    try:
        for step, (lo, hi) in enumerate(bounds):
            idx = order[lo:hi]
            xb, yb = images[idx], labels[idx]  # (b, C, H, W) uint8, (b,)
            if augment:
                xb = random_crop_flip(xb, generator)
            x = to_model_input(xb, spec)  # (b, c, s, s) float32
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                logits = model(x)  # (b, n_classes)
            loss = F.cross_entropy(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            b = hi - lo
            loss_sum += loss.detach().double() * b
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += b
            bar.update(1)
            if step % 20 == 0 and not bar.disable:
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if should_stop is not None and should_stop() and step < len(bounds) - 1:
                stopped = True  # a stop after the last step lets the epoch finish
                break
    finally:
        bar.close()
    if shard[1] > 1:
        import torch.distributed as dist

        totals = torch.stack([loss_sum, correct.double(), torch.tensor(float(seen), device=device)])
        dist.all_reduce(totals)
        loss_sum, correct, seen = totals[0], totals[1], int(totals[2].item())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "loss": loss_sum.item() / max(seen, 1),
        "acc": correct.item() / max(seen, 1),
        "images": seen,
        "seconds": seconds,
        "stopped": stopped,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    arrays: Any,
    spec: Any,
    *,
    batch_size: int = 512,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on labelled ``arrays`` (eval mode)."""
    from ncood.data import iterate_batches

    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for x, y in iterate_batches(arrays, spec, batch_size, device=device):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
    finally:
        model.train(was_training)
    n = max(len(arrays), 1)
    return loss_sum.item() / n, correct.item() / n


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: ``"bf16"`` where the device computes in bfloat16 natively (CUDA with bf16
    support; CPUs whose oneDNN has bf16 kernels, i.e. avx512_bf16 or AMX), else ``"fp32"``.

    On CPUs without them autocast emulates bfloat16 and training gets several times
    slower (see ``benchmarks/train_throughput.py``), so "auto" never picks it there.
    """
    if precision != "auto":
        return precision
    try:
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        if device.type == "cpu":
            return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        pass
    return "fp32"


def resolve_device(device: str) -> torch.device:
    """``"auto"``: cuda when available, else cpu; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(
            f"The 'device' parameter must be 'auto', 'cpu' or 'cuda[:i]'. Got {device!r} instead."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} was asked for, but CUDA is not available here; use "
            "--device auto or --device cpu"
        )
    return dev


# ---------------------------------------------------------------------- the run
class _Run:
    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        progress: bool,
        callbacks: list[Callback],
        stop: _StopFlag,
        ctx: Any = None,
    ) -> None:
        from ncood.distributed import DistContext

        self.ctx = ctx or DistContext(0, 1, 0, None, torch.device("cpu"))
        self.cfg = cfg
        self.run_dir = run_dir
        self.progress = progress
        self.callbacks = callbacks
        self.stop = stop
        self.last = run_dir / "last.pt"

    def execute(self, resume: bool) -> TrainResult:
        from ncood.data import InputSpec, input_spec_for, load_images
        from ncood.models import create_model

        cfg, run_dir = self.cfg, self.run_dir
        snapshots = cfg.snapshot_epochs()
        ckpt = self._existing_checkpoint(resume)
        barrier()  # every rank has looked at last.pt before rank 0 rewrites it

        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)  # noqa: NPY002 (seeds code that uses the global state)
        torch.manual_seed(cfg.seed)
        device = self.ctx.device if self.ctx.is_distributed else resolve_device(cfg.device)
        precision = resolve_precision(cfg.precision, device)

        train_arrays = load_images(
            cfg.dataset,
            "train",
            root=cfg.data_root,
            n=cfg.max_train_samples,
            seed=cfg.seed,
            allow_subset=cfg.allow_subset,
        )
        test_arrays = load_images(
            cfg.dataset,
            "test",
            root=cfg.data_root,
            n=cfg.max_test_samples,
            seed=cfg.seed,
            allow_subset=cfg.allow_subset,
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
        model_kwargs = self._model_kwargs(len(classes), spec.channels)
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

        world = self.ctx.world_size
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
        self.common = {
            "model_name": cfg.model,
            "model_kwargs": model_kwargs,
            "input_spec": spec.to_dict(),
            "dataset": dataset_info,
            "regime": cfg.regime,
            "config": cfg.to_dict(),
        }
        regime = get_regime(cfg.regime)
        if self.ctx.is_main:
            write_json(
                run_dir / "train_config.json",
                {
                    "config": cfg.to_dict(),
                    "regime_source": regime.source,
                    "model_kwargs": model_kwargs,
                    "dataset": dataset_info,
                    "input_spec": spec.to_dict(),
                    "device": str(device),
                    "precision_used": precision,
                    "world_size": world,
                },
            )

        if ckpt is not None:
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if "rng" in ckpt:
                restore_rng(ckpt["rng"])
            history = [dict(r) for r in ckpt.get("history", [])]
            start = int(ckpt["epoch"])
            log.info("resuming %s from epoch %d of %d", run_dir, start, cfg.epochs)
        else:
            history, start = [], 0
            self._save(model, optimizer, scheduler, 0, history, snapshots)

        images = train_arrays.images.to(device)  # (n, C, H, W) uint8, decoded once
        labels = train_arrays.labels.to(device)  # (n,)
        state = TrainState(
            config=cfg,
            run_dir=run_dir,
            model=model,
            input_spec=spec,
            train_arrays=train_arrays,
            test_arrays=test_arrays,
            device=device,
            epoch=start,
            history=history,
            rank=self.ctx.rank,
            world_size=world,
        )
        if start < cfg.epochs:
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
        net = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # same seed on every rank gives the same initial weights; DDP also broadcasts
            # rank 0's at construction and all-reduces (averages) gradients every step
            net = DistributedDataParallel(
                model, device_ids=[device] if device.type == "cuda" else None
            )
        for cb in self.callbacks:
            cb.on_train_start(state)

        eval_batch = min(1024, max(256, 2 * cfg.batch_size))
        for epoch in range(start + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            stats = run_epoch(
                net,
                optimizer,
                scheduler,
                images,
                labels,
                spec,
                batch_size=rank_batch,
                generator=epoch_generator(cfg.seed, epoch),
                augment=bool(cfg.augment),
                precision=precision,
                channels_last=cfg.channels_last,
                progress=self.progress,
                desc=f"epoch {epoch}/{cfg.epochs}",
                should_stop=self._stop_any,
                shard=(self.ctx.rank, world),
            )
            if stats["stopped"]:
                raise TrainingInterrupted(
                    f"interrupted during epoch {epoch}; {self.last} holds epoch {epoch - 1}; "
                    f"continue with `ncood train --out {run_dir} --resume`",
                    run_dir,
                    epoch - 1,
                    self.stop.signum or signal.SIGINT,
                )
            if world > 1:
                _broadcast_buffers(model)
            test_loss, test_acc = evaluate(
                model,
                test_arrays,
                spec,
                batch_size=eval_batch,
                device=device,
                precision=precision,
                channels_last=cfg.channels_last,
            )
            row = {
                "epoch": epoch,
                "train_loss": stats["loss"],
                "train_acc": stats["acc"],
                "test_loss": test_loss,
                "test_acc": test_acc,
                "lr": lr,
                "seconds": time.perf_counter() - t0,
                "images_per_s": stats["images"] / max(stats["seconds"], 1e-9),
            }
            history.append(row)
            self._save(model, optimizer, scheduler, epoch, history, snapshots)
            if self.ctx.is_main:
                write_history(run_dir, history)
            log.info(
                "epoch %d/%d  train loss %.4f acc %.2f%%  test loss %.4f acc %.2f%%  "
                "lr %.3g  %.1f s  %.0f img/s",
                epoch,
                cfg.epochs,
                row["train_loss"],
                100 * row["train_acc"],
                test_loss,
                100 * test_acc,
                lr,
                row["seconds"],
                row["images_per_s"],
            )
            state.epoch = epoch
            for cb in self.callbacks:
                cb.on_epoch_end(state)
            if self._stop_any() and epoch < cfg.epochs:
                raise TrainingInterrupted(
                    f"interrupted after epoch {epoch}; {self.last} holds it; continue with "
                    f"`ncood train --out {run_dir} --resume`",
                    run_dir,
                    epoch,
                    self.stop.signum or signal.SIGINT,
                )

        if self.ctx.is_main:
            write_history(run_dir, history)
            write_curves(run_dir, history, title=f"{cfg.model} · {cfg.dataset} · {cfg.regime}")
        for cb in self.callbacks:
            cb.on_train_end(state)
        barrier()  # last.pt and the history are complete before any rank returns
        return TrainResult(checkpoint=self.last, history=history, run_dir=run_dir, config=cfg)

    def _existing_checkpoint(self, resume: bool) -> dict[str, Any] | None:
        if not self.last.exists():
            if resume:
                log.info("no %s to resume: starting a new run", self.last)
            return None
        if not resume:
            raise ConfigError(
                f"{str(self.run_dir)!r} already holds a training run ({self.last.name}); pass "
                "--resume to continue it, or choose another --out"
            )
        ckpt = load_checkpoint(self.last)
        if "optimizer" not in ckpt or "scheduler" not in ckpt:
            raise ConfigError(
                f"{self.last} has no optimiser state, so it cannot be resumed; choose another --out"
            )
        conflicts = resume_conflicts(ckpt.get("config", {}), self.cfg)
        if conflicts:
            raise ConfigError(
                f"cannot resume {str(self.run_dir)!r}: its config differs from the one it "
                f"was started with ({'; '.join(conflicts)}); resume with the original "
                "settings (omit them: `--resume` reuses them) or choose another --out"
            )
        return ckpt

    def _model_kwargs(self, num_classes: int, in_channels: int) -> dict[str, Any]:
        kwargs = dict(self.cfg.model_kwargs)
        for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if key in kwargs and kwargs[key] != value:
                raise ConfigError(
                    f"model_kwargs sets {key}={kwargs[key]}, but the data {self.cfg.dataset!r} "
                    f"needs {key}={value}; remove {key} from model_kwargs"
                )
            kwargs[key] = value
        return kwargs

    def _stop_any(self) -> bool:
        """The stop flag, agreed by every process (one tiny all-reduce per step), so
        all ranks stop after the same step."""
        flag = self.stop()
        if not self.ctx.is_distributed:
            return flag
        from ncood.distributed import all_reduce_sum

        return bool(all_reduce_sum(np.array([float(flag)]))[0] > 0)

    def _save(self, model, optimizer, scheduler, epoch, history, snapshots) -> None:
        if not self.ctx.is_main:
            return  # only rank 0 writes checkpoints
        save_checkpoint(
            self.last,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            epoch=epoch,
            history=history,
            rng=capture_rng(),
            **self.common,
        )
        if epoch in snapshots:
            save_checkpoint(
                self.run_dir / "snapshots" / f"epoch_{epoch:04d}.pt",
                model=model,
                epoch=epoch,
                history=history,
                **self.common,
            )


def _broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's batch-norm running statistics (DDP syncs them at the
    start of each forward, so after the last step they differ); the saved checkpoint
    is rank 0's, and evaluation and callbacks then see the same network everywhere."""
    import torch.distributed as dist

    for buf in model.buffers():
        dist.broadcast(buf, src=0)


# ---------------------------------------------------------------------- artifacts
def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Write ``history.csv`` and ``history.json`` atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(HISTORY_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k) for k in HISTORY_COLUMNS})
    write_text(Path(run_dir) / "history.csv", buf.getvalue())
    write_json(Path(run_dir) / "history.json", history)


def write_curves(run_dir: Path, history: list[dict[str, Any]], title: str = "") -> None:
    """Write ``training_curves.png`` (nothing to draw before the first epoch)."""
    if not history:
        return
    import matplotlib.pyplot as plt

    from ncood.train.plots import plot_history

    fig = plot_history(history, title=title)
    try:
        with atomic_open(Path(run_dir) / "training_curves.png", "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
    finally:
        plt.close(fig)


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run directory (``history.json``)."""
    path = Path(run_dir) / "history.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"no history.json in {str(run_dir)!r}; is it a `ncood train` run?"
        ) from None


# ---------------------------------------------------------------------- process plumbing
@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """Refuse a second process training into the same directory (POSIX advisory lock,
    released by the kernel even when the holder is killed)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fh = open(run_dir / ".lock", "a+")  # noqa: SIM115
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another process is training into {str(run_dir)!r} (it holds "
                f"{run_dir / '.lock'}); wait for it to finish or choose another --out"
            ) from None
        yield
    finally:
        fh.close()


class _StopFlag:
    """Set by SIGINT/SIGTERM, polled between steps; remembers which signal arrived."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def _stop_signals() -> Iterator[_StopFlag]:
    """Turn the first SIGINT or SIGTERM into a flag polled between steps; a second one
    acts at once (KeyboardInterrupt for SIGINT, termination for SIGTERM)."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    immediate = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {sig: signal.getsignal(sig) for sig in immediate}

    def handler(signum, frame):
        flag.signum = signum
        log.warning(
            "%s: stopping after the current step (send it again to abort)",
            signal.Signals(signum).name,
        )
        for sig, action in immediate.items():
            signal.signal(sig, action)

    for sig in immediate:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


__all__ = [
    "Callback",
    "TrainResult",
    "TrainState",
    "TrainingInterrupted",
    "batch_bounds",
    "epoch_generator",
    "evaluate",
    "read_history",
    "resolve_device",
    "resolve_precision",
    "run_epoch",
    "train",
    "write_curves",
    "write_history",
]
