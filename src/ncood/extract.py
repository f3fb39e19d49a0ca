"""Run a network over a dataset and keep what the later stages need.

This is the only code that runs a network for scoring: detectors, collapse metrics and
reports work on the arrays it returns. Extraction is eval mode, no grad, in batches of
uint8 images converted on the device, with a progress bar on stderr.

The cache: :func:`extract_cached` stores each FeatureSet under a key made of the
checkpoint's content hash, the dataset, split, subset size and seed, the input transform,
the layers and the toolkit version. A second extraction of the same thing is a cache hit;
an entry that is truncated, edited or made by something else is detected on load and
recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ncood import __version__
from ncood.data import ImageArrays, InputSpec, iterate_batches, load_images
from ncood.data.datasets import Holdout
from ncood.data.streams import parse_named_sets
from ncood.distributed import (
    clear_shards,
    init_distributed,
    resolve_device,
    save_sharded,
    take_shard,
)
from ncood.errors import CheckpointError, ConfigError
from ncood.io import file_sha256, progress_bar, safe_name, save_npy, write_json
from ncood.models.adapters import restore_modes, training_modes, wrap_model
from ncood.registry import closest
from ncood.train.checkpoint import load_checkpoint, model_from_checkpoint
from ncood.train.config import train_holdout
from ncood.types import FORMAT_VERSION, FeatureDir, FeatureSet

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- hooks


def pool(output: torch.Tensor) -> torch.Tensor:
    """Global-average-pool a feature map ``(n, c, h, w) -> (n, c)``; flatten anything else."""
    if output.ndim == 4:
        return output.float().mean(dim=(2, 3))
    return output.float().flatten(1)


@contextlib.contextmanager
def capture(model: nn.Module, names: Sequence[str], *, pooled: bool = True) -> Iterator[dict]:
    """Record the outputs of ``model.get_submodule(name)`` for each name.

    Args:
        model: any ``nn.Module``.
        names: dotted submodule names (e.g. ``"layer1"``).
        pooled: global-average-pool 4-D outputs to ``(n, c)`` (else keep them as they are).

    Yields:
        A dict ``{name: tensor}`` overwritten by every forward pass.
    """
    available = [n for n, _ in model.named_modules() if n]
    outputs: dict[str, torch.Tensor] = {}
    # a wrapped model knows its layers' layouts (NHWC stages, token sequences)
    pooler = getattr(model, "pool_layer", lambda _name, out: pool(out))
    handles = []
    try:
        for name in names:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ConfigError(
                    f"layer {name!r} is not a submodule of {type(model).__name__}"
                    f"{closest(name, available)}; valid layers include: "
                    f"{', '.join(available[:12])}"
                ) from None

            def hook(_mod, _inp, out, _name=name):
                outputs[_name] = pooler(_name, out).detach() if pooled else out.detach()

            handles.append(module.register_forward_hook(hook))
        yield outputs
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def extract(
    model: nn.Module,
    arrays: ImageArrays,
    spec: InputSpec,
    *,
    layers: Sequence[str] = (),
    batch_size: int = 512,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    progress: bool = True,
    name: str = "",
    meta: dict[str, Any] | None = None,
) -> FeatureSet:
    """Extract penultimate features, logits and pooled per-layer features.

    Args:
        model: a ncood ResNet (``forward_features`` / ``forward_head``).
        arrays: :class:`ncood.data.ImageArrays` (uint8 images, labels or None).
        spec: the model's :class:`ncood.data.InputSpec`; images are converted to it.
        layers: submodule names whose outputs are global-average-pooled and kept.
        batch_size: images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        precision: ``"fp32"`` or ``"bf16"`` (autocast; outputs are stored as float32).
        progress: show a progress bar on stderr.
        name: name of the resulting FeatureSet.
        meta: extra description stored with it.

    Returns:
        FeatureSet with features ``(n, D)`` float32, logits ``(n, C)`` float32, labels, layers.
    """
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be 'fp32' or 'bf16'; got {precision!r}")
    dev = resolve_device(device)
    modes = training_modes(model)
    model.eval().to(dev)
    n = len(arrays)
    feats: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    per_layer: dict[str, list[np.ndarray]] = {k: [] for k in layers}
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    bar = progress_bar(n, f"extract {name}".strip(), enabled=progress)
    try:
        with capture(model, list(layers)) as captured, autocast:
            for x, _y in iterate_batches(arrays, spec, batch_size, device=dev):
                z = model.forward_features(x)
                f = model.forward_head(z)
                feats.append(z.float().cpu().numpy())
                logits.append(f.float().cpu().numpy())
                for k in layers:
                    per_layer[k].append(captured[k].float().cpu().numpy())
                bar.update(x.shape[0])
    finally:
        bar.close()
        restore_modes(modes)
    labels = None if arrays.labels is None else arrays.labels.cpu().numpy().astype(np.int64)
    return FeatureSet(
        features=np.concatenate(feats),
        logits=np.concatenate(logits),
        labels=labels,
        name=name,
        meta=dict(meta or {}),
        layers={k: np.concatenate(v) for k, v in per_layer.items()},
    )


def cache_key(parts: dict[str, Any]) -> str:
    """Stable short hash of a description dict."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def extract_cached(
    model: nn.Module,
    arrays,
    spec,
    *,
    cache_dir: str | os.PathLike | None,
    checkpoint_hash: str,
    dataset: str,
    split: str,
    subset: dict[str, Any] | None = None,
    layers: Sequence[str] = (),
    **kwargs: Any,
) -> FeatureSet:
    """:func:`extract` through the on-disk cache (``cache_dir=None`` disables it)."""
    description = {
        "checkpoint_sha256": checkpoint_hash,
        "dataset": dataset,
        "split": split,
        "subset": subset or {},
        "transform": spec.to_dict(),
        "layers": list(layers),
        "ncood_version": __version__,
    }
    name = f"{dataset}/{split}"
    if cache_dir is None:
        return extract(model, arrays, spec, layers=layers, name=name, meta=description, **kwargs)
    entry = Path(cache_dir) / cache_key(description)
    if (entry / "meta.json").exists():
        try:
            fs = FeatureSet.load(entry)
            if fs.meta == description:
                log.info("features %s: cache hit (%s)", name, entry)
                return fs
            log.warning("feature cache %s describes something else; recomputing", entry)
        except CheckpointError as exc:
            log.warning("feature cache entry is damaged (%s); recomputing", exc)
        shutil.rmtree(entry, ignore_errors=True)
    fs = extract(model, arrays, spec, layers=layers, name=name, meta=description, **kwargs)
    fs.save(entry)
    return FeatureSet.load(entry)


def extract_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    id_dataset: str | None = None,
    ood: Sequence[str] | dict[str, str] = (),
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    layers: Sequence[str] | None = None,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    max_ood_samples: int | None = None,
    allow_subset: bool = False,
    seed: int = 0,
    holdout: Holdout | str | None = "checkpoint",
    **kwargs: Any,
) -> FeatureDir:
    """Extract ID train/test and every OOD set for one checkpoint; optionally save to ``out``.

    Args:
        checkpoint: a checkpoint written by ``ncood train``.
        id_dataset: ID dataset name; defaults to the one the checkpoint was trained on.
        ood: OOD sets, ``"NAME=SPEC"`` or ``"SPEC"`` (a dataset name, ``folder:PATH``,
            ``npz:PATH``; the name defaults to :func:`ncood.data.streams.default_name`),
            or a mapping ``{name: spec}``.
        out: directory to write (the layout of :mod:`ncood.types`).
        cache_dir: feature cache directory (None: no cache).
        data_root: where datasets are looked for first.
        layers: submodules to pool and keep; default: every stage of the model.
        max_*_samples: stratified/random subsets for quick runs (deterministic from seed).
        allow_subset: allow the small Fashion-MNIST subset shipped with the package.
        seed: subset seed.
        holdout: the ID validation split left out of the train features (NC, detector
            fits): ``"checkpoint"`` (default) = the one the network's training held out
            (its config's ``holdout_samples`` and ``seed``; none for older checkpoints),
            a :class:`~ncood.data.datasets.Holdout`, or None. ``max_train_samples`` is
            drawn from the rest, as training drew its subset.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank extracts its contiguous shard of
    each split (:func:`ncood.distributed.take_shard`) on its own device and writes it;
    rank 0 then merges the shards of each split and writes ``head.npz`` and
    ``extract.json`` (:func:`ncood.distributed.save_sharded`), so ``out`` reads with
    :func:`ncood.types.load_feature_dir` like a single-process extraction. The returned
    FeatureDir holds this rank's shards (their ``meta["subset"]["shard"]`` says which
    rows).
    """
    ood_specs = parse_named_sets(ood)  # {name: spec}, from "NAME=SPEC" or "SPEC"
    ctx = init_distributed(kwargs.get("device", "auto"))
    if ctx.is_distributed:
        kwargs["device"] = ctx.device
        if out is not None:
            splits = ["train", "test"] + [f"ood/{safe_name(o)}" for o in ood_specs]
            clear_shards(Path(out), splits, ctx)
    ckpt = load_checkpoint(checkpoint)
    model, ckpt = model_from_checkpoint(ckpt)
    spec = InputSpec.from_dict(ckpt["input_spec"])
    ckpt_hash = file_sha256(checkpoint)
    id_name = id_dataset or ckpt["dataset"]["name"]
    layer_names = list(model.stage_names()) if layers is None else list(layers)
    common = dict(cache_dir=cache_dir, checkpoint_hash=ckpt_hash, layers=layer_names, **kwargs)
    if isinstance(holdout, str):
        if holdout != "checkpoint":
            raise ConfigError(f"holdout must be 'checkpoint', a Holdout or None; got {holdout!r}")
        holdout = train_holdout(ckpt.get("config") or {})

    def one(
        dataset: str,
        split: str,
        n: int | None,
        *,
        with_layers: bool = True,
        held: Holdout | None = None,
    ) -> FeatureSet:
        arrays = load_images(
            dataset,
            split,
            root=data_root,
            n=n,
            seed=seed,
            allow_subset=allow_subset,
            shape=(spec.channels, spec.size, spec.size),
            holdout=held,
        )
        opts = dict(common)
        if not with_layers:
            opts["layers"] = []
        subset = {"n": n, "seed": seed, "source": arrays.source}
        if held is not None:
            subset["holdout"] = held.to_dict()
        if ctx.is_distributed:
            # this rank's contiguous shard; recorded so the shards re-assemble (and so
            # each shard has its own cache entry)
            arrays, subset["shard"] = take_shard(arrays, ctx, f"{dataset}/{split}")
        return extract_cached(
            model,
            arrays,
            spec,
            dataset=dataset,
            split=split,
            subset=subset,
            **opts,
        )

    train = one(id_name, "train", max_train_samples, held=holdout)
    test = one(id_name, "test", max_test_samples)
    ood_sets = {name: one(spec, "test", max_ood_samples) for name, spec in ood_specs.items()}
    meta = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": ckpt_hash,
        "id_dataset": id_name,
        "classes": ckpt["dataset"].get("classes", []),
        "layers": layer_names,
        "input_spec": spec.to_dict(),
        "epoch": ckpt.get("epoch"),
        "ncood_version": __version__,
    }
    if holdout is not None:
        meta["holdout"] = holdout.to_dict()
    fd = FeatureDir(train=train, test=test, ood=ood_sets, head=model.get_head(), meta=meta)
    if out is not None:
        if ctx.is_distributed:
            save_sharded(fd, Path(out), ctx)
        else:
            fd.save(out)
    return fd


def extract_validation(
    checkpoint: str | os.PathLike,
    *,
    holdout: Holdout,
    ood: Sequence[str] | dict[str, str] = (),
    id_dataset: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    max_ood_samples: int | None = None,
    allow_subset: bool = False,
    seed: int = 0,
    **kwargs: Any,
) -> tuple[FeatureSet, dict[str, FeatureSet]]:
    """Penultimate features of the validation data that hyperparameter selection scores.

    The ID validation split is the held-out part of the ID *train* split (``holdout``,
    whatever its ``part``: the samples a run with the same holdout never trained on, and
    that :func:`extract_checkpoint` leaves out of the train features), with the evaluation
    transform; each validation OOD set is read like a test OOD set (``"test"`` split,
    ``max_ood_samples`` drawn from ``seed``). No test split is read. Cached like
    :func:`extract_checkpoint`'s sets; no per-layer features.

    Args:
        checkpoint: a checkpoint written by ``ncood train``.
        holdout: the held-out ID validation split (:class:`~ncood.data.datasets.Holdout`).
        ood: validation OOD sets, ``"NAME=SPEC"``/``"SPEC"`` or ``{name: spec}``.
        id_dataset, cache_dir, data_root, allow_subset: as :func:`extract_checkpoint`.
        max_ood_samples: samples per validation OOD set (None = all / the default).
        seed: seed of the OOD subsets and generated sets.
        **kwargs: ``device``, ``batch_size``, ``precision``, ``progress`` (:func:`extract`).

    Returns:
        ``(val_id, {name: val_ood})``: FeatureSets with features ``(n, D)``, logits
        ``(n, C)`` (labels for ``val_id``).
    """
    ood_specs = parse_named_sets(ood)
    ckpt = load_checkpoint(checkpoint)
    model, ckpt = model_from_checkpoint(ckpt)
    spec = InputSpec.from_dict(ckpt["input_spec"])
    shape = (spec.channels, spec.size, spec.size)
    id_name = id_dataset or ckpt["dataset"]["name"]
    held = Holdout(holdout.n, seed=holdout.seed, part="holdout")
    common = dict(cache_dir=cache_dir, checkpoint_hash=file_sha256(checkpoint), layers=[])

    def one(dataset: str, split: str, **load: Any) -> FeatureSet:
        arrays = load_images(
            dataset, split, root=data_root, allow_subset=allow_subset, shape=shape, **load
        )
        subset = {"n": load.get("n"), "seed": load["seed"], "source": arrays.source}
        if load.get("holdout") is not None:
            subset["holdout"] = load["holdout"].to_dict()
        return extract_cached(
            model, arrays, spec, dataset=dataset, split=split, subset=subset, **common, **kwargs
        )

    val_id = one(id_name, "train", seed=held.seed, holdout=held)
    val_ood = {name: one(o, "test", n=max_ood_samples, seed=seed) for name, o in ood_specs.items()}
    return val_id, val_ood


# --------------------------------------------------------------------------- streaming
class _RowWriter:
    """Rows of one ``.npy`` array written batch by batch, never held in memory.

    With ``n`` known the file is created by ``np.lib.format.open_memmap`` (numpy's own
    header) and rows are written at their offsets with plain file writes, so the pages
    go to the page cache instead of this process's resident memory; otherwise rows are
    appended to a raw file that gets its header at :meth:`close`. The file appears under
    its final name only when complete (``os.replace``).
    """

    def __init__(self, path: Path, n: int | None) -> None:
        self.path, self.n = path, n
        self.tmp = path.with_name(f".{path.name}.partial")
        self.rows = 0
        self._fh = None
        self._offset = 0

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block)
        if self._fh is None:
            self.dtype, self.row_shape = block.dtype, block.shape[1:]
            if self.n is not None:
                mm = np.lib.format.open_memmap(
                    self.tmp, mode="w+", dtype=self.dtype, shape=(self.n, *self.row_shape)
                )
                self._offset = mm.offset
                del mm  # the header and the file size are written; rows follow by offset
                self._fh = open(self.tmp, "r+b")  # noqa: SIM115 - closed in close()
            else:
                self._fh = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()
        if self.n is not None and self.rows + len(block) > self.n:
            raise ConfigError(
                f"{self.path.parent.name}: the data yields more than the {self.n} images it "
                "announced (len of the Dataset/DataLoader); fix its __len__"
            )
        if self.n is not None:
            row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
            self._fh.seek(self._offset + self.rows * row_bytes)
        self._fh.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> tuple[int, ...]:
        """Finish the file under its final name; returns its shape."""
        if self._fh is None:
            raise ConfigError(f"no images were extracted for {self.path.parent}")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        shape = (self.rows, *self.row_shape)
        if self.n is not None and self.rows != self.n:
            raise ConfigError(
                f"{self.path.parent.name}: the data yielded {self.rows} images but announced "
                f"{self.n} (len of the Dataset/DataLoader); fix its __len__"
            )
        if self.n is None:  # prepend the header: copy the raw rows once
            raw, self.tmp = self.tmp, self.tmp.with_name(self.tmp.name + ".npy")
            with open(self.tmp, "wb") as out, open(raw, "rb") as src:
                header = {"descr": np.lib.format.dtype_to_descr(self.dtype)}
                header.update(fortran_order=False, shape=shape)
                np.lib.format.write_array_header_1_0(out, header)
                shutil.copyfileobj(src, out, 16 << 20)
                out.flush()
                os.fsync(out.fileno())
            raw.unlink()
        os.replace(self.tmp, self.path)
        return shape

    def abort(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        for p in (self.tmp, self.tmp.with_name(self.tmp.name + ".npy")):
            p.unlink(missing_ok=True)


@torch.no_grad()
def extract_stream(
    model: nn.Module,
    stream,
    *,
    layers: Sequence[str] = (),
    out: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    progress: bool = True,
    name: str = "",
    meta: dict[str, Any] | None = None,
) -> FeatureSet:
    """Extract features, logits and pooled layers from an :class:`~ncood.data.streams.
    ImageStream`, batch by batch.

    Only the current batch is in memory: with ``out`` every array is written to its
    ``.npy`` file as the batches come (created with ``np.lib.format.open_memmap``) and
    the result is loaded memory-mapped; ``meta.json`` is written last, in
    :meth:`FeatureSet.save`'s format, so a killed extraction leaves no entry that loads.

    Args:
        model: an ncood model or any classifier (wrapped by
            :func:`ncood.models.adapters.wrap_model`).
        stream: the images (:func:`ncood.data.streams.open_stream`).
        layers: submodule names whose outputs are pooled and kept.
        out: directory of the FeatureSet (None: in memory).
        device, precision, progress, name, meta: as :func:`extract`.

    Returns:
        FeatureSet: features ``(n, D)`` float32, logits ``(n, C)`` float32, labels
        ``(n,)`` int64 (None when every label is -1), ``layers``.
    """
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be 'fp32' or 'bf16'; got {precision!r}")
    model = wrap_model(model)
    dev = resolve_device(device)
    modes = training_modes(model)
    model.eval().to(dev)
    name = name or getattr(stream, "name", "")
    keys = ["features", "logits", *[f"layer.{k}" for k in layers]]
    directory = None if out is None else Path(out)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "meta.json").unlink(missing_ok=True)
        writers = {k: _RowWriter(directory / f"{k}.npy", stream.n) for k in keys}
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    labels: list[np.ndarray] = []
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    bar = progress_bar(stream.n, f"extract {name}".strip(), enabled=progress)
    try:
        with capture(model, list(layers)) as captured, autocast:
            for x, y in stream.model_batches(dev):
                z = model.forward_features(x)  # (b, D)
                f = model.forward_head(z)  # (b, C)
                row = {"features": z, "logits": f}
                row.update({f"layer.{k}": captured[k] for k in layers})
                for k in keys:
                    arr = row[k].float().cpu().numpy()
                    if directory is None:
                        chunks[k].append(arr)
                    else:
                        writers[k].write(arr)
                labels.append(y.cpu().numpy().astype(np.int64))
                bar.update(x.shape[0])
        y_all = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        if directory is None:
            if not labels:
                raise ConfigError(f"no images were extracted for {name!r}")
            arrays = {k: np.concatenate(v) for k, v in chunks.items()}
        else:
            shapes = {k: w.close() for k, w in writers.items()}
    except BaseException:
        if directory is not None:
            for w in writers.values():
                w.abort()
        raise
    finally:
        bar.close()
        restore_modes(modes)
    y_out = None if not len(y_all) or (y_all < 0).all() else y_all
    if directory is None:
        return FeatureSet(
            features=arrays["features"],
            logits=arrays["logits"],
            labels=y_out,
            name=name,
            meta=dict(meta or {}),
            layers={k: arrays[f"layer.{k}"] for k in layers},
        )
    listing = {k: {"shape": list(s), "dtype": "float32"} for k, s in shapes.items()}
    if y_out is not None:
        save_npy(directory / "labels.npy", y_out)
        listing["labels"] = {"shape": [len(y_out)], "dtype": "int64"}
    write_json(
        directory / "meta.json",
        {"format": FORMAT_VERSION, "name": name, "arrays": listing, "meta": dict(meta or {})},
    )
    return FeatureSet.load(directory)
