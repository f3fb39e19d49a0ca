"""Training throughput: fp32 vs bf16 autocast + channels_last, in one run.

Run (from the repository root, about 2 minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/train_throughput.py
    .venv/bin/python benchmarks/train_throughput.py --seconds 20 --device cuda

For each model it times the training loop's own epoch function (``ncood.train.loop.
run_epoch``: uint8 batch -> crop+flip on the device -> normalise -> forward -> cross-entropy
-> backward -> SGD-Nesterov step -> cosine schedule step) on random uint8 images of the
dataset's shape, after one warm-up step, for a wall-time budget per setting (at least
one timed step). Both settings run in the same process, one after the other, so the ratio
compares like with like. Models: ``resnet_narrow`` on 1x28x28 (Fashion-MNIST) and
``resnet18_cifar`` on 3x32x32 (CIFAR).

bf16 pays off only where the hardware has bfloat16 arithmetic (GPUs; CPUs with AMX or
avx512_bf16); elsewhere autocast emulates it and is slower. The script prints the CPU
flags it found so the table states its conditions.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ncood.data import InputSpec
from ncood.models import create_model
from ncood.train.config import TrainConfig
from ncood.train.loop import epoch_generator, resolve_device, run_epoch
from ncood.train.optim import build_optimizer, build_scheduler

# (model, input shape, batch): resnet18_cifar runs batch 32 because one emulated-bf16 step
# of batch 128 takes over a minute on CPUs without bf16 instructions.
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


def measure(name, shape, precision, channels_last, *, seconds, batch_size, device):
    torch.manual_seed(0)
    c, h, w = shape
    model = create_model(name, num_classes=10, in_channels=c).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    cfg = TrainConfig(model=name, epochs=1, batch_size=batch_size).resolved()
    n = batch_size * 200  # more steps than the budget allows; the loop stops on time
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=gen).to(device)
    labels = torch.randint(0, 10, (n,), generator=gen).to(device)
    spec = InputSpec(size=h, channels=c, mean=(0.5,) * c, std=(0.25,) * c)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, n // batch_size)
    common = dict(
        batch_size=batch_size,
        augment=True,
        precision=precision,
        channels_last=channels_last,
    )
    warm = run_epoch(
        model,
        optimizer,
        scheduler,
        images[: 2 * batch_size],
        labels[: 2 * batch_size],
        spec,
        generator=epoch_generator(0, 0),
        **common,
    )
    assert warm["images"] == 2 * batch_size
    deadline = time.perf_counter() + seconds
    stats = run_epoch(
        model,
        optimizer,
        scheduler,
        images,
        labels,
        spec,
        generator=epoch_generator(0, 1),
        should_stop=lambda: time.perf_counter() > deadline,
        **common,
    )
    return stats["images"] / stats["seconds"], stats["images"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="timed budget per setting")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(
        f"# torch {torch.__version__}, python {platform.python_version()}, device {device}, "
        f"{torch.get_num_threads()} threads, cpu flags: {cpu_flags()}"
    )
    print(
        f"# ~{args.seconds:.0f} s per setting after 1 warm-up step; crop+flip, SGD-Nesterov, "
        f"cosine; oneDNN bf16 kernels: {mkldnn_bf16()}"
    )
    header = (
        f"{'model':<16}{'input':<9}{'batch':>6}{'fp32 img/s':>12}{'bf16+CL img/s':>15}"
        f"{'bf16/fp32':>11}{'images timed':>15}"
    )
    print(header, flush=True)
    for name, shape, batch_size in CASES:
        rates, counts = [], []
        for precision, channels_last in SETTINGS:
            rate, count = measure(
                name,
                shape,
                precision,
                channels_last,
                seconds=args.seconds,
                batch_size=args.batch_size,
                device=device,
            )
            rates.append(rate)
            counts.append(count)
        print(
            f"{name:<16}{'x'.join(map(str, shape)):<9}{batch_size:>6}{rates[0]:>12.1f}"
            f"{rates[1]:>15.1f}{rates[1] / rates[0]:>10.2f}x{'/'.join(map(str, counts)):>15}",
            flush=True,
        )


if __name__ == "__main__":
    main()
