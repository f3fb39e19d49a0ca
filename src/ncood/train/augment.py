"""Batched data augmentation on the device: random crop with zero padding + horizontal flip.

The standard CIFAR augmentation (``RandomCrop(size, padding=4)`` + ``RandomHorizontalFlip``,
He et al. 2016, arXiv 1512.03385, Sec. 4.2) done for a whole ``uint8`` batch with one
gather: every sample gets its own offsets and flip, drawn from an explicit
``torch.Generator`` on the CPU, so the result is the same on every device and after a
resume. (Horizontal flips are label-preserving for Fashion-MNIST's clothes as well.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    padding: int = 4,
    flip: bool = True,
) -> torch.Tensor:
    """Randomly crop (after zero padding) and horizontally flip each image of a batch.

    Args:
        images: ``(b, C, H, W)`` on any device, any dtype (``uint8`` in the training loop;
            padding value 0, i.e. black, as torchvision pads PIL images).
        generator: CPU generator the offsets and flips are drawn from.
        padding: pixels of zero padding on each side; offsets are uniform in
            ``[0, 2 * padding]``.
        flip: flip each image left-right with probability 1/2.

    Returns:
        ``(b, C, H, W)``, same dtype and device.
    """
    b, c, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator)  # (b, 2)
    flips = torch.rand(b, generator=generator) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    dev = images.device
    offsets, flips = offsets.to(dev), flips.to(dev)
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = offsets[:, :1] + ar_h  # (b, h)
    cols = torch.where(flips[:, None], w - 1 - ar_w, ar_w) + offsets[:, 1:]  # (b, w)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # (b, c, h, w)
