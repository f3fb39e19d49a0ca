"""Batches of model input from :class:`ImageArrays`: a plain iterator and a torch Dataset.

:func:`iterate_batches` slices the ``uint8`` tensor (moved once to the target device
when it is small enough) and transforms each whole batch there, so an epoch costs one
indexing operation and one :func:`to_model_input` call per batch.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import torch

from ncood.data.arrays import ImageArrays, InputSpec
from ncood.data.transforms import to_model_input
from ncood.validation import check_number

# A dataset up to this many bytes of uint8 pixels is moved to the device in one copy per
# call (Fashion-MNIST train is 47 MB, CIFAR train 154 MB); larger ones go batch by batch.
WHOLE_TRANSFER_BYTES = 2 << 30


def iterate_batches(
    arrays: ImageArrays,
    spec: InputSpec,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised model-input batches.

    Args:
        arrays: images ``(n, C, H, W)`` uint8 and labels.
        spec: what the model expects (see :func:`to_model_input`).
        batch_size: samples per batch (the last one may be smaller unless ``drop_last``).
        shuffle: visit samples in a random order drawn from ``seed`` (pass
            ``seed + epoch`` for a new order each epoch).
        seed: seed of the shuffle; ignored when ``shuffle`` is False.
        device: where the batches are built and returned.
        drop_last: drop a final incomplete batch.

    Yields:
        ``(x, y)``: ``x`` float32 ``(b, spec.channels, spec.size, spec.size)``, ``y``
        int64 ``(b,)`` on ``device`` (``-1`` for unlabelled sets).
    """
    check_number(batch_size, "batch_size", "iterate_batches", kind=numbers.Integral, low=1)
    check_number(seed, "seed", "iterate_batches", kind=numbers.Integral, low=0)
    # Validate now, not at the first next(): the work is in a separate generator.
    return _batches(
        arrays, spec, int(batch_size), shuffle, int(seed), torch.device(device), drop_last
    )


def _batches(
    arrays: ImageArrays,
    spec: InputSpec,
    batch_size: int,
    shuffle: bool,
    seed: int,
    device: torch.device,
    drop_last: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(arrays)
    images = arrays.images
    labels = arrays.labels
    if labels is None:
        labels = torch.full((n,), -1, dtype=torch.int64)
    if images.device != device and images.numel() <= WHOLE_TRANSFER_BYTES:
        images = images.to(device)
        labels = labels.to(device)
    order = None
    if shuffle:
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen).to(images.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            xb, yb = images[start:end], labels[start:end]
        else:
            idx = order[start:end]
            xb, yb = images[idx], labels[idx]
        xb = xb.to(device, non_blocking=True)
        yb = yb.to(device, non_blocking=True)
        yield to_model_input(xb, spec), yb


class ArrayDataset(torch.utils.data.Dataset):
    """Map-style Dataset over :class:`ImageArrays`, for DataLoader / DistributedSampler.

    ``dataset[i]`` is ``(x, y)`` with ``x`` float32 ``(spec.channels, spec.size,
    spec.size)`` and ``y`` an int64 scalar tensor (``-1`` when unlabelled). It also
    implements ``__getitems__`` so a DataLoader fetches a whole batch with one
    transform call.

    Args:
        arrays: the images and labels.
        spec: what the model expects.
    """

    def __init__(self, arrays: ImageArrays, spec: InputSpec) -> None:
        self.arrays = arrays
        self.spec = spec
        n = len(arrays)
        self._labels = (
            arrays.labels if arrays.labels is not None else torch.full((n,), -1, dtype=torch.int64)
        )

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        x = to_model_input(self.arrays.images[index : index + 1 or None], self.spec)[0]
        return x, self._labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = to_model_input(self.arrays.images[idx], self.spec)
        y = self._labels[idx]
        return list(zip(x.unbind(0), y.unbind(0), strict=True))
