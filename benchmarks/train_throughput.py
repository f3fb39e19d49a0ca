"""Training throughput: fp32 vs bf16 autocast + channels_last, in one run.

Run (from the repository root; about 2 minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/train_throughput.py
    .venv/bin/python benchmarks/train_throughput.py --seconds 20 --device cuda

It times the training loop's own epoch function (``ncood.train.epoch.run_epoch``: uint8
batch -> crop+flip on the device -> normalise -> forward -> cross-entropy -> backward ->
SGD-Nesterov step -> cosine schedule step) on random uint8 images of the dataset's shape.
Models: ``resnet_narrow`` on 1x28x28 (Fashion-MNIST) and ``resnet18_cifar`` on 3x32x32
(CIFAR). Per model, both settings get one warm-up step, then run in alternating rounds
of one step each until each has used its wall-time budget (at least two timed steps), so
a machine whose load changes during the run biases neither side.

bf16 pays off only where the hardware has bfloat16 arithmetic (GPUs; CPUs with AMX or
avx512_bf16, where oneDNN has bf16 kernels); elsewhere autocast emulates it and is
slower. The header states the CPU flags, threads and load average it ran under.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

from ncood.data import InputSpec
from ncood.distributed import resolve_device
from ncood.models import create_model
from ncood.train.config import TrainConfig
from ncood.train.epoch import epoch_generator, run_epoch
from ncood.train.optim import build_optimizer, build_scheduler

# (model, input shape, batch): resnet18_cifar runs batch 32 because one emulated-bf16 step
# of batch 128 takes about a minute on CPUs without bf16 instructions.
CASES = (("resnet_narrow", (1, 28, 28), 128), ("resnet18_cifar", (3, 32, 32), 32))
SETTINGS = (("fp32", False), ("bf16", True))  # (precision, channels_last)


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return "unknown"
    keep = [f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")]
    return " ".join(keep) or "none of avx2/avx512/amx"


def mkldnn_bf16() -> str:
    try:
        return "yes" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no (emulated)"
    except (AttributeError, RuntimeError):
        return "unknown"


class Setting:
    """One (model, precision, memory format) under training, fed one step at a time."""

    def __init__(self, name, shape, precision, channels_last, batch_size, device):
        torch.manual_seed(0)
        c, h, w = shape
        self.model = create_model(name, num_classes=10, in_channels=c).to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        cfg = TrainConfig(model=name, epochs=1, batch_size=batch_size).resolved()
        gen = torch.Generator().manual_seed(0)
        n = 8 * batch_size
        self.images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=gen)
        self.images = self.images.to(device)
        self.labels = torch.randint(0, 10, (n,), generator=gen).to(device)
        self.spec = InputSpec(size=h, channels=c, mean=(0.5,) * c, std=(0.25,) * c)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, 1000)
        self.batch_size = batch_size
        self.opts = dict(augment=True, precision=precision, channels_last=channels_last)
        self.step_index = 0
        self.images_timed = 0
        self.seconds = 0.0

    def step(self, timed: bool = True) -> None:
        lo = (self.step_index % 8) * self.batch_size
        hi = lo + self.batch_size
        stats = run_epoch(
            self.model,
            self.optimizer,
            self.scheduler,
            self.images[lo:hi],
            self.labels[lo:hi],
            self.spec,
            batch_size=self.batch_size,
            generator=epoch_generator(0, self.step_index),
            **self.opts,
        )
        self.step_index += 1
        if timed:
            self.images_timed += stats["images"]
            self.seconds += stats["seconds"]

    @property
    def rate(self) -> float:
        return self.images_timed / self.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="timed budget per setting")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(
        f"# torch {torch.__version__}, python {platform.python_version()}, device {device}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, cpu flags: {cpu_flags()}, "
        f"load average at start: {load}"
    )
    print(
        f"# ~{args.seconds:.0f} s per setting, alternating single steps after 1 warm-up step; "
        f"crop+flip, SGD-Nesterov, cosine; oneDNN bf16 kernels: {mkldnn_bf16()}"
    )
    header = (
        f"{'model':<16}{'input':<9}{'batch':>6}{'fp32 img/s':>12}{'bf16+CL img/s':>15}"
        f"{'bf16/fp32':>11}{'images timed':>15}"
    )
    print(header, flush=True)
    for name, shape, batch_size in CASES:
        settings = [
            Setting(name, shape, precision, cl, batch_size, device) for precision, cl in SETTINGS
        ]
        for s in settings:
            s.step(timed=False)  # warm-up: allocations, oneDNN primitive creation
        while any(s.seconds < args.seconds or s.step_index < 3 for s in settings):
            for s in settings:
                if s.seconds < args.seconds or s.step_index < 3:
                    s.step()
        fp32, bf16 = settings
        print(
            f"{name:<16}{'x'.join(map(str, shape)):<9}{batch_size:>6}{fp32.rate:>12.1f}"
            f"{bf16.rate:>15.1f}{bf16.rate / fp32.rate:>10.2f}x"
            f"{f'{fp32.images_timed}/{bf16.images_timed}':>15}",
            flush=True,
        )
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"# load average at end: {load}")


if __name__ == "__main__":
    main()
