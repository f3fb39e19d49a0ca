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
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ncood.collapse.metrics import decision_metrics, iter_chunks, metrics_from_stats
from ncood.collapse.stats import ClassStats
from ncood.errors import CheckpointError, ConfigError, ShapeError
from ncood.io import safe_names, write_json
from ncood.types import FeatureDir, FeatureSet

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


def resolve_device(
    device: str | torch.device = "auto", *, local_rank: int | None = None
) -> torch.device:
    """The device a process computes on: the one place ncood turns ``--device`` into one.

    Args:
        device: ``"auto"`` (CUDA when available, else cpu), ``"cpu"``, ``"cuda[:i]"`` or
            a ``torch.device``.
        local_rank: under ``torchrun``, this process's rank on its node: ``"auto"`` and
            a bare ``"cuda"`` then mean ``cuda:LOCAL_RANK`` (modulo the GPU count).
            ``None`` (one process) leaves a bare ``cuda`` without an index.

    Raises:
        ConfigError: an unparsable name, or CUDA asked for where it is not available.
    """
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"The 'device' parameter must be 'auto', 'cpu' or 'cuda[:i]'. Got {device!r} instead."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(device)!r} was asked for, but CUDA is not available here; use "
            "--device auto or --device cpu"
        )
    if dev.type == "cuda" and dev.index is None and local_rank is not None:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
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
    dev = resolve_device(device, local_rank=local_rank if world > 1 else None)
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


# ---------------------------------------------------------------------- training
def wrap_ddp(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` under torchrun, else ``model`` itself.

    The same seed on every rank gives the same initial weights; DDP also broadcasts rank
    0's at construction and all-reduces (averages) the gradients of every step.
    """
    if not ctx.is_distributed:
        return model
    device_ids = [ctx.device] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers, e.g. batch-norm running statistics (no-op in a
    single process). DDP syncs them at the start of each forward, so after the last step
    of an epoch they differ; the saved checkpoint is rank 0's, and evaluation and
    callbacks then see the same network everywhere."""
    if not is_distributed():
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any (one tiny all-reduce), so all ranks
    take the same branch; ``flag`` itself in a single process."""
    if not is_distributed():
        return bool(flag)
    return bool(all_reduce_sum(np.array([float(flag)]))[0] > 0)


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
    feats = features_shard
    if not hasattr(feats, "shape") or len(feats.shape) != 2:
        feats = np.asarray(feats)
    if feats.ndim != 2:
        raise ShapeError(
            f"features_shard must be 2-D (n_samples, n_features); got shape {feats.shape}"
        )
    if feats.shape[0] == 0:  # a rank may hold no rows; it still takes part in the sum
        stats = ClassStats(num_classes, feats.shape[1], second_moment=second_moment)
    else:
        stats = ClassStats.from_features(
            feats,
            labels_shard,
            num_classes,
            chunk_size=chunk_size,
            second_moment=second_moment,
            name="features_shard",
        )
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


# ---------------------------------------------------------------------- sharded features
# A split extracted by W processes is first written as one directory per rank,
# ``<split>/shard_00000/`` ..; rank 0 then merges them into the plain layout, so nothing
# that reads features (``ncood.types``) knows about processes.
SHARD_PREFIX = "shard_"


def shard_name(rank: int) -> str:
    """The directory of rank ``rank``'s shard of a split: ``shard_{rank:05d}``."""
    return f"{SHARD_PREFIX}{rank:05d}"


def take_shard(arrays: Any, ctx: DistContext, what: str) -> tuple[Any, dict[str, int]]:
    """This rank's contiguous rows of ``arrays`` (anything with ``len`` and ``subset``).

    Returns:
        ``(shard, record)``; ``record`` (``rank``, ``world_size``, ``lo``, ``hi``,
        ``n_total``) is stored in the shard's meta so the shards re-assemble.

    Raises:
        ConfigError: fewer rows than processes (the same on every rank: all raise).
    """
    total = len(arrays)
    if total < ctx.world_size:
        raise ConfigError(
            f"{what} has {total} images, fewer than the {ctx.world_size} processes; "
            "extract it with fewer processes"
        )
    lo, hi = shard_bounds(total, ctx.rank, ctx.world_size)
    record = {"rank": ctx.rank, "world_size": ctx.world_size, "lo": lo, "hi": hi}
    return arrays.subset(slice(lo, hi)), {**record, "n_total": total}


def clear_shards(out: Path, splits: list[str], ctx: DistContext) -> None:
    """Rank 0 removes what a previous extraction left in ``out`` (so a stale ``meta.json``
    or a shard of a larger world is never read with the new shards); all wait."""
    if ctx.is_main:
        (out / "extract.json").unlink(missing_ok=True)
        for split in splits:
            d = out / split
            (d / "meta.json").unlink(missing_ok=True)
            for old in d.glob(f"{SHARD_PREFIX}*"):
                shutil.rmtree(old, ignore_errors=True)
    barrier()


def save_sharded(fd: FeatureDir, out: Path, ctx: DistContext) -> None:
    """Write a feature directory that every rank holds a shard of.

    Each rank writes ``<split>/shard_{rank:05d}/``; after a barrier rank 0 merges every
    split into the plain layout (:func:`merge_shards`), then writes ``head.npz`` and
    ``extract.json`` (last, so it marks a complete directory, and records ``shards``);
    all wait. The result reads with :func:`ncood.types.load_feature_dir` like a
    single-process extraction.
    """
    files = safe_names(fd.ood)  # the directory names FeatureDir.save gives them
    splits = {"train": fd.train, "test": fd.test}
    splits.update({f"ood/{files[k]}": v for k, v in fd.ood.items()})
    for split, fs in splits.items():
        fs.save(out / split / shard_name(ctx.rank))
    barrier()
    if ctx.is_main:
        for split in splits:
            merge_shards(out / split)
        fd.head.save(out / "head.npz")
        write_json(out / "extract.json", {**fd.meta, "ood": list(fd.ood), "shards": ctx.world_size})
    barrier()


def merge_shards(directory: str | os.PathLike) -> FeatureSet:
    """Replace the shards in ``directory`` by the one FeatureSet they make (rank 0's job).

    The merged set is written (``meta.json`` last) before the shards are removed, so a
    process killed in between leaves either the shards or a complete set. The arrays are
    concatenated into memory-mapped scratch files (``.merge/``, removed after), so the
    merge needs disk, not memory, for the split.

    Returns:
        The merged FeatureSet, loaded back memory-mapped.
    """
    d = Path(directory)
    scratch = d / ".merge"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        load_shards(d, scratch=scratch).save(d)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for part in d.glob(f"{SHARD_PREFIX}*"):
        shutil.rmtree(part, ignore_errors=True)
    return FeatureSet.load(d)


def load_shards(
    directory: str | os.PathLike, *, mmap: bool = True, scratch: Path | None = None
) -> FeatureSet:
    """Load a split written by several processes as one FeatureSet.

    ``directory`` holds ``shard_00000/`` .. ``shard_{W-1:05d}/``, each a complete
    FeatureSet whose ``meta["subset"]["shard"]`` records ``rank``, ``world_size``,
    ``lo``, ``hi`` and ``n_total`` (:func:`take_shard`). The arrays are concatenated in
    rank order, which restores the order of a single-process extraction; the shard record
    is dropped from the returned ``meta``.

    Args:
        directory: the split's directory.
        mmap: read the shards memory-mapped.
        scratch: a directory for the concatenated arrays as memory-mapped ``.npy`` files;
            ``None``: in memory.

    Raises:
        CheckpointError: a shard is missing, damaged, from another extraction, or the
            shards do not tile ``0..n_total`` exactly.
    """
    d = Path(directory)
    found = sorted(p for p in d.glob(f"{SHARD_PREFIX}*") if p.is_dir())
    fix = f"delete {str(d)!r} and re-run `ncood extract` (with the same torchrun world size)"
    if not found:
        raise CheckpointError(f"{str(d)!r} holds no {SHARD_PREFIX}* directories; {fix}")
    first = FeatureSet.load(found[0], mmap=mmap)
    info = first.meta.get("subset", {}).get("shard") if isinstance(first.meta, dict) else None
    if not isinstance(info, dict) or "world_size" not in info:
        raise CheckpointError(
            f"{str(found[0])!r} does not record which shard it is (meta.subset.shard); {fix}"
        )
    world = int(info["world_size"])
    expected = [d / shard_name(r) for r in range(world)]
    missing = [p.name for p in expected if not p.is_dir()]
    extra = sorted({p.name for p in found} - {p.name for p in expected})
    if missing or extra:
        raise CheckpointError(
            f"{str(d)!r} should hold {world} shards {expected[0].name}..{expected[-1].name}; "
            + (f"missing {missing}" if missing else f"unexpected {extra}")
            + f"; {fix}"
        )
    parts = [first] + [FeatureSet.load(p, mmap=mmap) for p in expected[1:]]
    base = _without_shard(first.meta)
    pos = 0
    for r, part in enumerate(parts):
        rec = part.meta.get("subset", {}).get("shard", {})
        if (
            _without_shard(part.meta) != base
            or int(rec.get("rank", -1)) != r
            or int(rec.get("world_size", -1)) != world
            or int(rec.get("lo", -1)) != pos
            or int(rec.get("hi", -1)) - pos != len(part)
        ):
            raise CheckpointError(
                f"shard {expected[r].name} of {str(d)!r} does not continue the others "
                f"(record {rec}, {len(part)} rows, expected rows from {pos}); {fix}"
            )
        pos += len(part)
    if pos != int(info.get("n_total", pos)):
        raise CheckpointError(
            f"the shards of {str(d)!r} hold {pos} rows, but n_total is {info['n_total']}; {fix}"
        )
    keys = list(first.layers)  # depth order
    if any(
        set(p.layers) != set(keys) or (p.labels is None) != (first.labels is None) for p in parts
    ):
        raise CheckpointError(f"the shards of {str(d)!r} hold different arrays; {fix}")
    arrays = {
        key: _concat(key, [p.arrays()[key] for p in parts], scratch) for key in first.arrays()
    }
    return FeatureSet(
        features=arrays["features"],
        logits=arrays["logits"],
        labels=arrays.get("labels"),
        name=first.name,
        meta=base,
        layers={k: arrays[f"layer.{k}"] for k in keys},
    )


def _concat(key: str, blocks: list[np.ndarray], scratch: Path | None) -> np.ndarray:
    """Row-wise concatenation, in memory or into ``scratch / f"{key}.npy"`` (memory-mapped)."""
    if scratch is None:
        return np.concatenate([np.asarray(b) for b in blocks])
    shape = (sum(len(b) for b in blocks), *blocks[0].shape[1:])
    out = np.lib.format.open_memmap(scratch / f"{key}.npy", "w+", blocks[0].dtype, shape)
    pos = 0
    for block in blocks:
        out[pos : pos + len(block)] = block
        pos += len(block)
    out.flush()
    return out


def _without_shard(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with ``meta["subset"]["shard"]`` removed (a copy)."""
    out = dict(meta)
    if isinstance(out.get("subset"), dict):
        out["subset"] = {k: v for k, v in out["subset"].items() if k != "shard"}
    return out


__all__ = [
    "SHARD_PREFIX",
    "DistContext",
    "clear_shards",
    "collapse_metrics_distributed",
    "load_shards",
    "merge_shards",
    "save_sharded",
    "shard_name",
    "take_shard",
    "all_gather_rows",
    "any_rank",
    "broadcast_buffers",
    "wrap_ddp",
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
    "resolve_device",
    "sampler_indices",
    "shard_bounds",
]
