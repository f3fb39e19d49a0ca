"""Regenerate the Fashion-MNIST subset bundled with ncood (``ncood/data/assets``).

The subset (3000 train + 1000 test images, stratified: 300 / 100 per class, seed 0)
stands in for the full dataset only when no full copy is found and the caller passes
``load_images(..., allow_subset=True)`` (the embedded default config does).

Run from the repository root:

    NCOOD_DATA_ROOT=../shared/data .venv/bin/python scripts/make_fmnist_subset.py
    .venv/bin/python scripts/make_fmnist_subset.py --root /usr/share/datasets --seed 0
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from ncood.data import load_images, stratified_indices
from ncood.data.datasets import FASHION_MNIST_CLASSES
from ncood.io import atomic_open

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/ncood/data/assets/fashion_mnist_subset.npz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="directory holding fashion-mnist/")
    parser.add_argument("--train", type=int, default=3000, help="train images (stratified)")
    parser.add_argument("--test", type=int, default=1000, help="test images (stratified)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified draw")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz")
    args = parser.parse_args(argv)

    arrays = {}
    for split, n in (("train", args.train), ("test", args.test)):
        full = load_images("fashion_mnist", split, root=args.root, download=False)
        idx = stratified_indices(full.labels.numpy(), n, args.seed)
        arrays[f"{split}_images"] = full.images[idx, 0].numpy()  # (n, 28, 28) uint8
        arrays[f"{split}_labels"] = full.labels[idx].numpy().astype(np.uint8)
        source = full.source
    arrays["classes"] = np.array(FASHION_MNIST_CLASSES)
    arrays["source"] = np.array(
        f"Fashion-MNIST (Xiao et al. 2017, MIT licence) from {source}; stratified "
        f"{args.train} train + {args.test} test, seed {args.seed}; "
        "made by scripts/make_fmnist_subset.py"
    )
    with atomic_open(args.out, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    os.chmod(args.out, 0o644)  # shipped package data: world-readable (mkstemp gives 0600)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.2f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
