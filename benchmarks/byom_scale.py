"""Streaming extraction of an image folder: peak memory vs size, throughput vs a plain loop.

Run (from the repository root; about 3 minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/byom_scale.py
    .venv/bin/python benchmarks/byom_scale.py --small 2000 --large 20000 --size 32

What is measured, each in a fresh Python process (so every peak is its own):

- ``ncood``: :func:`ncood.extract.extract_stream` of a randomly initialised torchvision
  ``resnet18(num_classes=10)`` (:class:`ncood.models.adapters.ModelAdapter`) over
  ``open_stream("folder:DIR", transform=EvalTransform(size, resize))``: PNG decoding,
  resize and centre crop in DataLoader workers, normalisation in the main process,
  penultimate features and logits written batch by batch to ``.npy`` files;
- ``plain``: the loop a user would write: a Dataset of the same files with torchvision's
  ``Resize`` + ``CenterCrop`` + ``ToTensor`` + ``Normalize``, a ``DataLoader`` with the
  same workers and batch size, ``model(x)`` with a hook on ``avgpool``, features and logits
  appended to Python lists.

Peak memory is ``ru_maxrss`` of the process plus the largest ``ru_maxrss`` of its
(joined) worker processes. Throughput is images per second of the extraction loop only
(model built and folder listed before the clock starts); each mode runs ``--repeats``
times on the large folder, alternating, and the best run of each counts (the machine is
shared: the best run is the least disturbed one).

Images: ``--large`` generated RGB PNGs of 40 x 40 (smooth random fields, 10 class
folders), the small folder is the first ``--small`` of them (the same files).

Measured 2026-12-02 with the defaults (2,000 vs 20,000 images, resize 36, crop 32,
1 worker, batch 256, best of 2), torch 2.14.1 CPU, 2 shared cores at load average ~12:
peak memory 1735.2 / 1715.1 MB = 1.012x (the torch import alone is ~900 MB; the main
process grew by 91.7 MB during the 20,000-image loop vs 73.1 MB for 2,000: the list of
file paths); throughput 127.3 img/s vs 121.3 img/s for the plain loop = 1.049 (single
runs ranged 104-127 and 112-121 img/s: the machine was shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_folder(root: Path, n: int, side: int = 40, seed: int = 0) -> None:
    """``n`` smooth random RGB PNGs in 10 class folders (file names sort in creation order)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((side, side), Image.BICUBIC)
        img.save(root / f"class{i % 10}" / f"{i:06d}.png", compress_level=1)


def subset_folder(src: Path, dst: Path, n: int) -> None:
    """The first ``n`` images of ``src`` (by index), hard-linked into ``dst``."""
    for c in range(10):
        (dst / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = f"class{i % 10}/{i:06d}.png"
        os.link(src / name, dst / name)


def run_once(mode: str, folder: str, size: int, resize: int, workers: int, batch: int) -> dict:
    """One extraction in this process; returns timings and peak memory."""
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    files = sorted(Path(folder).glob("*/*.png"))
    with torch.no_grad():
        net(torch.rand(batch, 3, size, size))  # one batch: the loop's working set
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if mode == "ncood":
        from ncood.data.streams import EvalTransform, open_stream
        from ncood.extract import extract_stream
        from ncood.models.adapters import ModelAdapter

        model = ModelAdapter(net, input_size=size)
        tf = EvalTransform(size=size, resize=resize, channels=3)
        stream = open_stream(
            f"folder:{folder}", transform=tf, batch_size=batch, num_workers=workers
        )
        out = tempfile.mkdtemp(prefix="byom-")
        t0 = time.perf_counter()
        fs = extract_stream(model, stream, out=Path(out) / "fs", device="cpu", progress=False)
        seconds = time.perf_counter() - t0
        n = len(fs)
    else:
        from PIL import Image
        from torchvision import transforms as T

        tf = T.Compose(
            [
                T.Resize(resize),
                T.CenterCrop(size),
                T.ToTensor(),
                T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        )

        class Files(torch.utils.data.Dataset):
            def __len__(self):
                return len(files)

            def __getitem__(self, i):
                with Image.open(files[i]) as img:
                    return tf(img.convert("RGB")), i % 10

        loader = torch.utils.data.DataLoader(Files(), batch_size=batch, num_workers=workers)
        feats, logits = [], []
        grab = {}
        net.avgpool.register_forward_hook(lambda m, i, o: grab.__setitem__("z", o))
        t0 = time.perf_counter()
        with torch.no_grad():
            for x, _y in loader:
                f = net(x)
                feats.append(grab["z"].flatten(1).numpy())
                logits.append(f.numpy())
        z = np.concatenate(feats)
        seconds = time.perf_counter() - t0
        n = len(z)
    kb = 1024.0
    return {
        "mode": mode,
        "n": n,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "rss_before_loop_mb": before,
        "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kb,
        "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kb,
    }


def child(mode: str, folder: Path, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--folder",
        str(folder),
        "--size",
        str(args.size),
        "--resize",
        str(args.resize),
        "--workers",
        str(args.workers),
        "--batch",
        str(args.batch),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["peak_mb"] = res["peak_rss_main_mb"] + res["peak_rss_worker_mb"]
    res["growth_mb"] = res["peak_rss_main_mb"] - res["rss_before_loop_mb"]
    print(
        f"  {mode:6s} n={res['n']:6d}  {res['images_per_s']:7.1f} img/s  "
        f"peak {res['peak_mb']:7.1f} MB (main {res['peak_rss_main_mb']:.1f}, of which "
        f"{res['growth_mb']:.1f} during the loop; worker {res['peak_rss_worker_mb']:.1f})",
        file=sys.stderr,
        flush=True,
    )
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--large", type=int, default=20000)
    p.add_argument("--size", type=int, default=32, help="model input side (the crop)")
    p.add_argument("--resize", type=int, default=36, help="shorter side before the crop")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--child", choices=("ncood", "plain"), help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        res = run_once(args.child, args.folder, args.size, args.resize, args.workers, args.batch)
        print(json.dumps(res))
        return

    with tempfile.TemporaryDirectory(prefix="byom-bench-") as tmp:
        large, small = Path(tmp) / "large", Path(tmp) / "small"
        t0 = time.perf_counter()
        make_folder(large, args.large)
        subset_folder(large, small, args.small)
        print(f"generated {args.large} PNGs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        mem_small = child("ncood", small, args)
        runs = {"ncood": [], "plain": []}
        for _ in range(args.repeats):
            for mode in ("plain", "ncood"):
                runs[mode].append(child(mode, large, args))
    best = {m: max(r, key=lambda d: d["images_per_s"]) for m, r in runs.items()}
    mem_large = max(r["peak_mb"] for r in runs["ncood"])
    summary = {
        "memory_ratio_large_over_small": mem_large / mem_small["peak_mb"],
        "throughput_ratio_ncood_over_plain": best["ncood"]["images_per_s"]
        / best["plain"]["images_per_s"],
        "small": mem_small,
        "large_runs": runs,
        "settings": vars(args) | {"json": None},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
    }
    growth = max(r["growth_mb"] for r in runs["ncood"])
    summary["loop_growth_mb"] = {"small": mem_small["growth_mb"], "large": growth}
    print(
        f"peak memory {args.large} vs {args.small} images: {mem_large:.1f} / "
        f"{mem_small['peak_mb']:.1f} MB = {summary['memory_ratio_large_over_small']:.3f}x "
        f"(target <= 1.2x); growth of the main process during the loop: "
        f"{growth:.1f} vs {mem_small['growth_mb']:.1f} MB\n"
        f"throughput ncood / plain loop: {best['ncood']['images_per_s']:.1f} / "
        f"{best['plain']['images_per_s']:.1f} img/s = "
        f"{summary['throughput_ratio_ncood_over_plain']:.3f} (target >= 0.9)"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
