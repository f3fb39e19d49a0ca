"""One training epoch and one evaluation pass: the inner loops, no files, no processes.

:func:`run_epoch` visits the images in the order it is given (or a permutation drawn from
the epoch's generator), augments each batch on the device and takes one optimiser and
scheduler step per batch. Under ``torchrun`` the caller hands it this process's part of
the order and a sum over processes (:func:`ncood.distributed.sampler_indices`,
:func:`ncood.distributed.all_reduce_sum`); nothing here knows about processes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ncood.data import ImageArrays, InputSpec, iterate_batches, to_model_input
from ncood.io import progress_bar
from ncood.train.augment import random_crop_flip


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


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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
            # oneDNN also reports bf16 "supported" on plain AVX-512 CPUs, where it emulates
            # it (slower than fp32): require the native instructions as well
            native = _cpu_flags() & {"avx512_bf16", "amx_bf16"}
            ok = bool(native) and torch.ops.mkldnn._is_mkldnn_bf16_supported()
            return "bf16" if ok else "fp32"
    except (AttributeError, RuntimeError):
        pass
    return "fp32"


def run_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: InputSpec,
    *,
    batch_size: int,
    generator: torch.Generator,
    augment: bool,
    order: torch.Tensor | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "",
    should_stop: Callable[[], bool] | None = None,
    reduce_sums: Callable[[np.ndarray], np.ndarray] | None = None,
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
        generator: CPU generator for the augmentation (and the order when ``order`` is
            None).
        augment: random crop (pad 4) + horizontal flip.
        order: ``(m,)`` indices into ``images`` to visit, in this order; ``None``: a
            permutation of all ``n`` drawn from ``generator`` first.
        precision: ``"fp32"`` or ``"bf16"`` (autocast; the loss is computed in float32).
        channels_last: feed NHWC batches.
        progress: show a progress bar on stderr.
        desc: progress-bar label.
        should_stop: polled after every step; True ends the epoch early.
        reduce_sums: applied to the float64 vector ``[loss sum, correct, images]`` before
            the means are taken (e.g. a sum over processes); ``None``: as is.

    Returns:
        ``{"loss", "acc", "images", "seconds", "stopped"}``: mean training loss and
        accuracy over the augmented batches, images seen, wall time, whether stopped early.
    """
    device = images.device
    if order is None:
        order = torch.randperm(images.shape[0], generator=generator)  # (n,)
    bounds = batch_bounds(len(order), batch_size)
    order = order.to(device)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    stopped = False
    bar = progress_bar(len(bounds), desc, enabled=progress, unit="step")
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
    sums = np.array([loss_sum.item(), float(correct.item()), float(seen)])  # float64, exact
    if reduce_sums is not None:
        sums = reduce_sums(sums)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    images_seen = int(sums[2])
    return {
        "loss": float(sums[0]) / max(images_seen, 1),
        "acc": float(sums[1]) / max(images_seen, 1),
        "images": images_seen,
        "seconds": time.perf_counter() - start,
        "stopped": stopped,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    arrays: ImageArrays,
    spec: InputSpec,
    *,
    batch_size: int = 512,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on labelled ``arrays`` (eval mode)."""
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


__all__ = [
    "autocast",
    "batch_bounds",
    "epoch_generator",
    "evaluate",
    "resolve_precision",
    "run_epoch",
]
