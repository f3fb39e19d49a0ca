"""Several processes, one result: ``torch.distributed`` helpers for ``torchrun`` launches.

Launch any ``ncood`` command that supports it with ``torchrun`` (see
``docs/distributed.md``)::

    torchrun --nproc_per_node 4 -m ncood.cli.main extract --checkpoint CKPT --out DIR
    torchrun --nproc_per_node 4 -m ncood.cli.main train --config cfg.yaml --out runs/x

Without ``torchrun`` every function here is the single-process identity (``world_size``
1, no process group), so library code can call them unconditionally.

What is exchanged between processes is small and exact:

* data are split into contiguous, balanced shards (:func:`shard_bounds`); rank ``r``
  takes rows ``[lo_r, hi_r)`` and ``concat(shard_0, ..., shard_{W-1})`` is the
  original order;
* class statistics (DESIGN.md section 5) are sums about a shared shift, so
  :func:`all_reduce_stats` agrees on one shift (the first non-empty rank's, i.e. rank
  0's in practice), re-bases every rank's statistics onto it exactly, and sums
  ``ClassStats.to_vector()`` with one float64 all-reduce. Detectors and NC metrics
  fitted from the result equal a single-process fit up to float64 rounding.

Backend: NCCL when CUDA is available (each process drives ``cuda:LOCAL_RANK``), gloo
otherwise. Collectives on NCCL move the (small) arrays to the process's GPU and back.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from ncood.collapse.stats import ClassStats
from ncood.errors import ConfigError, ShapeError

log = logging.getLogger(__name__)

# Default collective timeout: long enough for one rank to finish extracting a large
# shard while the others wait at a barrier.
DEFAULT_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) job.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        world_size: number of processes (1 without ``torchrun``).
        local_rank: rank on this node (selects the GPU).
        backend: ``"nccl"``, ``"gloo"``, or ``None`` when no process group exists.
        device: the device this process computes on.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str | None
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        """True when several processes take part (a process group exists)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes shared artifacts."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name} must be an integer (torchrun sets it); got {raw!r}"
        ) from None


def _resolve(device: str | torch.device, local_rank: int, distributed: bool) -> torch.device:
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(
            f"The 'device' parameter must be 'auto', 'cpu' or 'cuda[:i]'. Got {device!r} instead."
        ) from None
    if dev.type == "cuda" and distributed and dev.index is None:
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return dev


def init_distributed(
    device: str | torch.device = "auto", *, timeout: timedelta = DEFAULT_TIMEOUT
) -> DistContext:
    """Join the process group that ``torchrun`` describes, or report a single process.

    Reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``
    through ``init_process_group``'s ``env://``). With ``WORLD_SIZE`` unset or 1 no
    process group is created. Calling it again in a process that already joined returns
    the same context.

    Args:
        device: ``"auto"`` (``cuda:LOCAL_RANK`` when CUDA is available, else cpu),
            ``"cpu"`` or ``"cuda[:i]"``; a bare ``"cuda"`` under torchrun means
            ``cuda:LOCAL_RANK``.
        timeout: collective timeout.

    Returns:
        :class:`DistContext`. The backend is NCCL when the device is CUDA, else gloo.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(
            f"RANK={rank} / WORLD_SIZE={world} are inconsistent; launch with torchrun "
            "(which sets them) or unset both"
        )
    dev = _resolve(device, local_rank, world > 1)
    if world == 1:
        return DistContext(0, 1, 0, None, dev)
    if not dist.is_available():
        raise ConfigError(
            "WORLD_SIZE > 1 but this torch build has no torch.distributed; install a torch "
            "with distributed support or run a single process"
        )
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dist.is_initialized():
        backend = dist.get_backend()
    else:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=timeout)
        log.info("joined process group: rank %d of %d (%s, %s)", rank, world, backend, dev)
    return DistContext(rank, world, local_rank, backend, dev)


def destroy_distributed() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when a process group with more than one process exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(lo, hi)``: the contiguous, balanced shard of ``range(n)`` that ``rank`` owns.

    The first ``n % world_size`` ranks get one row more; shards are in rank order, so
    concatenating them restores ``range(n)``. A rank may get an empty shard when
    ``n < world_size``.

    Args:
        n: number of rows (>= 0).
        rank: in ``[0, world_size)``.
        world_size: number of processes (>= 1).
    """
    if world_size < 1 or not 0 <= rank < world_size or n < 0:
        raise ConfigError(
            f"shard_bounds needs n >= 0, world_size >= 1 and 0 <= rank < world_size; got "
            f"n={n}, rank={rank}, world_size={world_size}"
        )
    base, extra = divmod(int(n), int(world_size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def sampler_indices(order, rank: int, world_size: int):
    """This rank's part of an epoch's permutation, with ``DistributedSampler`` semantics.

    ``order`` (the same permutation on every rank) is padded by repeating its start to a
    multiple of ``world_size``; rank ``r`` takes ``order[r::world_size]``. Every rank
    gets ``ceil(n / world_size)`` indices, so all ranks take the same number of steps.

    Args:
        order: ``(n,)`` tensor or array of indices.
        rank: in ``[0, world_size)``.
        world_size: number of processes.
    """
    n = len(order)
    per_rank = -(-n // world_size)
    pad = per_rank * world_size - n
    if pad:
        reps = -(-pad // n)
        cat = torch.cat if torch.is_tensor(order) else np.concatenate
        order = cat([order] + [order] * reps)[: per_rank * world_size]
    return order[rank::world_size]


# ---------------------------------------------------------------------- collectives
def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(array: np.ndarray) -> np.ndarray:
    """Element-wise sum of ``array`` over every process, in float64.

    Args:
        array: any shape; the same shape on every rank.

    Returns:
        float64 array of the same shape (a copy in a single process).
    """
    arr = np.ascontiguousarray(array, dtype=np.float64)
    if not is_distributed():
        return arr.copy()
    t = torch.from_numpy(arr.copy()).to(_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy().reshape(arr.shape)


def broadcast_array(array: np.ndarray | None, src: int = 0) -> np.ndarray:
    """Rank ``src``'s array on every rank (shape and dtype travel with it).

    Args:
        array: the array on ``src``; ignored (may be ``None``) elsewhere.
        src: the sending rank.
    """
    if not is_distributed():
        if array is None:
            raise ShapeError("broadcast_array in a single process needs an array; got None")
        return np.array(array, copy=True)
    header = [None]
    if get_rank() == src:
        arr = np.ascontiguousarray(array)
        header = [(tuple(arr.shape), arr.dtype.str)]
    dist.broadcast_object_list(header, src=src)
    shape, dtype = header[0]
    if get_rank() == src:
        buf = torch.from_numpy(arr.copy().view(np.uint8).reshape(-1))
    else:
        buf = torch.empty(
            int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize, dtype=torch.uint8
        )
    buf = buf.to(_comm_device())
    dist.broadcast(buf, src=src)
    return buf.cpu().numpy().view(np.dtype(dtype)).reshape(shape).copy()


def all_gather_rows(array: np.ndarray) -> np.ndarray:
    """Concatenate every rank's rows in rank order (shards may differ in length).

    Args:
        array: ``(n_r, ...)`` on rank ``r``; trailing shape and dtype equal on all ranks.

    Returns:
        ``(sum_r n_r, ...)`` on every rank.
    """
    arr = np.ascontiguousarray(array)
    if not is_distributed():
        return arr.copy()
    world = get_world_size()
    sizes = np.zeros(world)
    sizes[get_rank()] = arr.shape[0]
    sizes = all_reduce_sum(sizes).astype(np.int64)
    row = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
    longest = int(sizes.max())
    dev = _comm_device()
    buf = np.zeros(longest * row, dtype=np.uint8)
    buf[: arr.shape[0] * row] = arr.view(np.uint8).reshape(-1)
    mine = torch.from_numpy(buf).to(dev)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    chunks = [p.cpu().numpy()[: int(s) * row] for p, s in zip(parts, sizes, strict=True)]
    flat = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return flat.view(arr.dtype).reshape((int(sizes.sum()), *arr.shape[1:])).copy()


# ---------------------------------------------------------------------- statistics
def all_reduce_stats(stats: ClassStats) -> ClassStats:
    """The statistics of the union of every rank's samples, on every rank.

    One shift is agreed on (the shift of the lowest rank that has seen samples: rank 0
    whenever its shard is non-empty, so the result is expressed exactly as a
    single-process pass over the concatenated shards), every rank re-bases onto it
    (:meth:`ClassStats.rebased`, exact), and ``to_vector()`` is summed in float64.

    Args:
        stats: this rank's statistics; ``num_classes``, ``dim`` and ``second_moment``
            must agree across ranks.

    Returns:
        A new :class:`ClassStats` (a copy in a single process).

    Raises:
        ShapeError: the ranks disagree on C, D or the second-moment setting.
    """
    if not is_distributed():
        return stats.copy()
    world, rank = get_world_size(), get_rank()
    desc = np.array([stats.num_classes, stats.dim, float(stats.has_second_moment)])
    table = np.zeros((world, 3))
    table[rank] = desc
    table = all_reduce_sum(table)
    if not (table == table[0]).all():
        raise ShapeError(
            "all_reduce_stats: ranks hold statistics of different shapes (rows: C, D, "
            f"second_moment per rank): {table.tolist()}; build them with the same "
            "num_classes, feature width and second_moment= on every rank"
        )
    has = np.zeros(world)
    has[rank] = float(stats.shift is not None)
    has = all_reduce_sum(has)
    if not has.any():  # no rank has seen a sample
        return stats.copy()
    src = int(np.flatnonzero(has)[0])
    shift = broadcast_array(stats.shift if rank == src else None, src=src)
    local = stats.rebased(shift)
    return local.load_vector(all_reduce_sum(local.to_vector()))


def class_stats_distributed(
    features_shard,
    labels_shard,
    num_classes: int,
    *,
    second_moment: bool = True,
    chunk_size: int | None = None,
) -> ClassStats:
    """:class:`ClassStats` of every rank's shard together, on every rank.

    Args:
        features_shard: this rank's rows ``(n_r, D)`` (array or memmap; may be empty).
        labels_shard: ``(n_r,)`` ints in ``[0, num_classes)``.
        num_classes: C.
        second_moment: accumulate the ``(D, D)`` matrix (see :class:`ClassStats`).
        chunk_size: rows converted to float64 at a time (default: about 32 MiB).

    Returns:
        The all-reduced statistics (:func:`all_reduce_stats`).
    """
    from ncood.detectors.base import chunk_rows, iter_chunks, read_chunk

    feats = features_shard
    if not hasattr(feats, "shape") or len(feats.shape) != 2:
        feats = np.asarray(feats)
    if feats.ndim != 2:
        raise ShapeError(
            f"features_shard must be 2-D (n_samples, n_features); got shape {feats.shape}"
        )
    n, d = feats.shape
    y = np.asarray(labels_shard, dtype=np.int64).reshape(-1)
    if y.shape != (n,):
        raise ShapeError(f"labels_shard must have shape ({n},); got {y.shape}")
    stats = ClassStats(num_classes, d, second_moment=second_moment)
    rows = chunk_size or chunk_rows(d)
    for start, stop in iter_chunks(n, rows):
        stats.update(read_chunk(feats, start, stop, "train features"), y[start:stop])
    return all_reduce_stats(stats)


def fit_detector_distributed(detector, features_shard, labels_shard, head, *, stats=None):
    """Fit ``detector`` on the union of every rank's train shard; returns it fitted.

    Detectors built on class statistics get the all-reduced :class:`ClassStats` (pass
    ``stats`` to reuse one). Detectors that need the train features themselves
    (``needs_train_features``: ViM's alpha, KNN's index) or that do not use statistics
    are fitted on the rows gathered from every rank (:func:`all_gather_rows`), which
    costs ``n x D`` memory per process. Every rank ends with the same fitted state.
    """
    if detector.uses_stats and stats is None:
        stats = class_stats_distributed(features_shard, labels_shard, head.num_classes)
    needs_rows = detector.needs_train_features or (detector.needs_fit and not detector.uses_stats)
    feats = labels = None
    if needs_rows:
        feats = all_gather_rows(np.asarray(features_shard))
        if labels_shard is not None:
            labels = all_gather_rows(np.asarray(labels_shard, dtype=np.int64))
    return detector.fit(feats, labels, head, stats=stats if detector.uses_stats else None)


def collapse_metrics_distributed(features_shard, labels_shard, head, *, stats=None):
    """:func:`ncood.collapse.collapse_metrics` of every rank's shard together.

    NC1-NC3 (and every other statistic-only metric) come from the all-reduced
    :class:`ClassStats`; ``nc4`` and ``ncc_acc`` are fractions of samples, computed on
    each shard against the global class means and combined as sample-weighted sums. The
    result is the same dict as a single-process ``collapse_metrics`` on the concatenated
    shards (to float64 rounding), on every rank.

    Args:
        features_shard: this rank's train features ``(n_r, D)``.
        labels_shard: ``(n_r,)``.
        head: the :class:`~ncood.types.LinearHead`.
        stats: the all-reduced statistics, when already computed.
    """
    from ncood.collapse.metrics import decision_metrics, iter_chunks, metrics_from_stats

    if stats is None:
        stats = class_stats_distributed(features_shard, labels_shard, head.num_classes)
    out = metrics_from_stats(stats, head)
    keys = ("nc4", "ncc_acc")
    n_local = len(labels_shard)
    local = np.zeros(len(keys))
    if n_local:
        labels = np.asarray(labels_shard, dtype=np.int64)
        part = decision_metrics(iter_chunks(features_shard, labels), stats, head)
        local = np.array([part[k] * n_local for k in keys])
    total = all_reduce_sum(local) / stats.n
    out.update({k: float(v) for k, v in zip(keys, total, strict=True)})
    return out


__all__ = [
    "collapse_metrics_distributed",
    "DistContext",
    "all_gather_rows",
    "all_reduce_stats",
    "all_reduce_sum",
    "barrier",
    "broadcast_array",
    "class_stats_distributed",
    "destroy_distributed",
    "fit_detector_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main",
    "sampler_indices",
    "shard_bounds",
]
