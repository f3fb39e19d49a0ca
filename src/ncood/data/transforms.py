"""Batch transforms from stored ``uint8`` images to what a model expects.

Everything works on whole batches of tensors on any device (the training loop calls
:func:`to_model_input` on GPU batches); there are no per-sample PIL transforms.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ncood.data.arrays import ImageArrays, InputSpec
from ncood.errors import DataError, ShapeError

logger = logging.getLogger(__name__)

# ITU-R BT.601 luma weights: the same as PIL's convert("L") and torchvision's
# rgb_to_grayscale, so a grayscale model sees colour images the way those libraries do.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# (stored channels, model channels) pairs that can be converted without inventing data.
_SAFE_CHANNEL_CONVERSIONS = {
    (1, 3): "repeat the grey channel",
    (3, 1): "ITU-R 601 luma",
    (4, 3): "drop alpha",
    (4, 1): "drop alpha, then ITU-R 601 luma",
}


def to_model_input(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Turn stored images into a normalised float batch for a model.

    Steps, all batched on ``images.device``: scale to ``[0, 1]`` (``uint8 / 255``;
    float input is taken to be in ``[0, 1]`` already), convert channels where safe
    (1 -> 3 repeat, 3 -> 1 ITU-R 601 luma, RGBA -> RGB by dropping alpha), resize with
    bilinear antialiased interpolation when the size differs (non-square images: resize
    the shorter side to ``spec.size``, then centre-crop, as torchvision's
    ``Resize(size)`` + ``CenterCrop(size)``), then ``(x - mean) / std`` per channel.

    Args:
        images: ``(b, C, H, W)`` ``uint8`` (or float in ``[0, 1]``).
        spec: what the model expects.

    Returns:
        ``(b, spec.channels, spec.size, spec.size)`` float32, contiguous, same device.

    Raises:
        ShapeError: not a 4-D tensor, an unsupported dtype, or a channel count that
            cannot be converted safely (e.g. 2 channels).
    """
    if not isinstance(images, torch.Tensor):
        raise ShapeError(
            f"images must be a torch.Tensor (b, C, H, W); got {type(images).__name__}; "
            "wrap arrays with torch.from_numpy"
        )
    if images.ndim != 4:
        raise ShapeError(
            f"images must be a 4-D batch (b, C, H, W); got shape {tuple(images.shape)}; "
            "add the batch axis with images[None]"
        )
    c = int(images.shape[1])
    if c != spec.channels and (c, spec.channels) not in _SAFE_CHANNEL_CONVERSIONS:
        safe = ", ".join(f"{a}->{b}" for a, b in _SAFE_CHANNEL_CONVERSIONS)
        raise ShapeError(
            f"images have {c} channel(s), but the model expects {spec.channels}; only "
            f"{safe} are converted automatically; convert the dataset to 1 (grey) or 3 "
            "(RGB) channels, or use a model built for this channel count"
        )
    if images.dtype == torch.uint8:
        x = images.to(torch.float32).div_(255.0)
    elif images.dtype.is_floating_point:
        x = images.to(torch.float32)
    else:
        raise ShapeError(
            f"images must be uint8 (0..255) or float in [0, 1]; got dtype {images.dtype}"
        )
    if c == 4 and spec.channels != 4:
        x = x[:, :3]
        c = 3
    if c == 3 and spec.channels == 1:
        r, g, b = LUMA_WEIGHTS
        x = r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]  # (b, 1, H, W)
        c = 1
    x = resize_square(x, spec.size)
    if c == 1 and spec.channels == 3:
        x = x.expand(-1, 3, -1, -1)  # repeat after resizing: 3x less work
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


def cover_box(
    h: int, w: int, th: int, tw: int, *, resize: int | None = None
) -> tuple[int, int, int, int]:
    """A resize and the centred ``th x tw`` crop after it: ``(new_h, new_w, top, left)``.

    The one resize geometry of ncood (:func:`resize_square` on float batches,
    :func:`ncood.data.formats.decode_images` on image files, the evaluation transforms of
    :mod:`ncood.data.streams`). With ``resize`` (torchvision's ``Resize(resize)`` +
    ``CenterCrop``, e.g. 256 then 224) or a square target (``resize = th``) the shorter
    side becomes ``resize`` and the longer ``int(resize * long / short)``; any other
    target scales by ``max(th / h, tw / w)`` (rounded, at least the target). The crop
    offset is ``round((new - target) / 2)``, as torchvision's ``center_crop``.
    """
    if resize is None and th == tw:
        resize = th
    if resize is not None:
        short, long = min(h, w), max(h, w)
        new_long = int(resize * long / short) if short != resize else long
        nh, nw = (resize, new_long) if h <= w else (new_long, resize)
    elif (h, w) == (th, tw):
        nh, nw = h, w
    else:
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    return nh, nw, int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a float batch to ``size x size`` (geometry: :func:`cover_box`).

    Square images are resized directly; non-square ones have their shorter side resized
    to ``size`` and are then centre-cropped. The same geometry and filter (bilinear,
    antialiased) as the PIL resize that :func:`ncood.data.formats.decode_images` applies
    to image files; the two differ only by PIL's rounding to uint8 (at most 1 grey level
    of 255, measured), and both are kept because each works where the other cannot: PIL
    on files of different sizes before they can be stacked into one uint8 array (with
    libjpeg's draft decoding), torch on stored batches on the training device.

    Args:
        x: ``(b, C, H, W)`` float.
        size: output side.

    Returns:
        ``(b, C, size, size)``; ``x`` itself when nothing changes.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if (h, w) == (size, size):
        return x
    nh, nw, top, left = cover_box(h, w, size, size)
    if (nh, nw) != (h, w):
        x = _bilinear(x, nh, nw)
    return x[..., top : top + size, left : left + size]


def _bilinear(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    # antialias=True: a proper low-pass when shrinking (e.g. 64 -> 32); identical to plain
    # bilinear when enlarging. align_corners=False matches PIL and torchvision.
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def input_spec_for(arrays: ImageArrays) -> InputSpec:
    """The input spec of a model trained on ``arrays``: its size, channels, mean and std.

    Mean and (population, ``ddof=0``) standard deviation per channel in ``[0, 1]``
    units, over every pixel of every image. They are computed exactly from per-channel
    histograms of the ``uint8`` values (integer sums, then float64), so the result does
    not depend on chunking or summation order.

    Args:
        arrays: the training split; images ``(n, C, H, W)``.

    Returns:
        ``InputSpec(size=min(H, W), channels=C, mean=..., std=...)``.

    Raises:
        DataError: ``arrays`` is empty.
    """
    n, c, h, w = arrays.images.shape
    if n == 0:
        raise DataError(f"cannot compute an input spec from {arrays.name!r}: it has 0 images")
    values = torch.arange(256, dtype=torch.int64)
    count = int(n) * int(h) * int(w)
    means, stds = [], []
    for ch in range(c):
        hist = torch.bincount(arrays.images[:, ch].reshape(-1).cpu(), minlength=256)
        s = int((hist * values).sum())  # exact: python ints
        ss = int((hist * values * values).sum())
        mean = s / (count * 255.0)
        var = (ss * count - s * s) / (count * count * 255.0**2)  # exact numerator >= 0
        std = math.sqrt(max(var, 0.0))
        if std == 0.0:
            # A constant channel would divide by zero; 1.0 leaves it centred, unscaled.
            logger.warning(
                "channel %d of %s is constant (value %.4f); using std=1.0", ch, arrays.name, mean
            )
            std = 1.0
        means.append(mean)
        stds.append(std)
    return InputSpec(size=int(min(h, w)), channels=int(c), mean=tuple(means), std=tuple(stds))
