"""Checkpoints: one self-describing ``torch.save`` dict, written atomically.

A checkpoint holds everything needed to rebuild the model without the config that made
it, and to resume training bit-for-bit (CPU, fixed seed)::

    {
      "format": "ncood-checkpoint", "format_version": 1,
      "ncood_version", "torch_version", "python_version", "created",
      "model": {"name": "resnet_narrow", "kwargs": {"num_classes": 10, "in_channels": 1}},
      "input_spec": InputSpec.to_dict(),
      "dataset": {"name", "classes", "source", "n_train", "n_test"},
      "regime": "standard", "config": resolved TrainConfig dict,
      "epoch": completed epochs (0 = initialisation),
      "state_dict", "optimizer", "scheduler",      # the last two absent in snapshots
      "rng": {"torch", "numpy", "python", "generator"},
      "history": [per-epoch dicts],
    }

Only tensors and plain Python values are stored, so checkpoints load with
``torch.load(weights_only=True)``: opening one never runs code from the file.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import pickle
import platform
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ncood import __version__
from ncood.errors import CheckpointError, ConfigError
from ncood.io import atomic_open, file_sha256
from ncood.models import create_model

log = logging.getLogger(__name__)

FORMAT = "ncood-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    model_name: str,
    model_kwargs: dict[str, Any],
    input_spec: dict[str, Any],
    dataset: dict[str, Any],
    regime: str,
    config: dict[str, Any],
    epoch: int,
    history: list[dict[str, Any]],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    rng: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file + ``os.replace``).

    Args:
        path: destination file (``.pt``).
        model: the network; its ``state_dict`` is copied to CPU.
        model_name: registry name (:func:`ncood.models.create_model`).
        model_kwargs: builder arguments (``num_classes``, ``in_channels``, ...).
        input_spec: ``InputSpec.to_dict()`` of the model's input.
        dataset: ``{"name", "classes", ...}`` of the training data.
        regime: regime name.
        config: the resolved training config as a dict.
        epoch: completed epochs (0 = the initialisation).
        history: per-epoch records so far.
        optimizer: included when given (resumable checkpoints).
        scheduler: included when given.
        rng: random states (see :func:`capture_rng`), included when given.

    Returns:
        ``Path(path)``.
    """
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ncood_version": __version__,
        "torch_version": str(torch.__version__),  # TorchVersion is not weights_only-safe
        "python_version": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": model_name, "kwargs": dict(model_kwargs)},
        "input_spec": dict(input_spec),
        "dataset": dict(dataset),
        "regime": regime,
        "config": dict(config),
        "epoch": int(epoch),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "history": [dict(row) for row in history],
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    if rng is not None:
        payload["rng"] = rng
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save_checkpoint`.

    A checkpoint written by another torch or Python version loads with a warning.

    Args:
        path: the ``.pt`` file.
        map_location: passed to ``torch.load``.

    Returns:
        The checkpoint dict (see the module docstring).

    Raises:
        CheckpointError: missing file, not a checkpoint, truncated, not ncood's format,
            or written by a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist; pass the last.pt or "
            "snapshots/epoch_*.pt of a run written by `ncood train`"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many types for damaged files
        text = str(exc).strip()
        is_zip = _looks_like_zip(path)
        if is_zip and isinstance(exc, pickle.UnpicklingError) and "Weights only" in text:
            raise CheckpointError(
                f"{str(path)!r} is not an ncood checkpoint: it holds Python objects other than "
                "tensors and plain values, which ncood does not load (loading them could run "
                "code); use a checkpoint written by `ncood train`"
            ) from None
        first = text.splitlines()[0] if text else type(exc).__name__
        kind = "truncated or corrupt" if is_zip else "not a PyTorch checkpoint"
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: {kind} ({first[:160]}); use another "
            "checkpoint (e.g. a snapshot of the same run) or re-run `ncood train`"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        what = "a bare state_dict" if _is_state_dict(ckpt) else f"a {type(ckpt).__name__}"
        raise CheckpointError(
            f"{str(path)!r} is not an ncood checkpoint (it holds {what}, without the "
            f"'format': {FORMAT!r} tag); train with `ncood train`, or wrap your weights "
            "with ncood.train.checkpoint.save_checkpoint"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {version!r}, newer than this "
            f"ncood ({__version__}) reads (<= {FORMAT_VERSION}); upgrade ncood"
        )
    missing = [k for k in ("model", "state_dict", "input_spec", "dataset") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {str(path)!r} lacks {missing}; it was edited or written by a "
            "broken tool; re-run `ncood train`"
        )
    _warn_versions(path, ckpt)
    return ckpt


def model_from_checkpoint(
    checkpoint: str | os.PathLike | dict[str, Any], *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained network of a checkpoint, in eval mode.

    Args:
        checkpoint: a path, or a dict from :func:`load_checkpoint`.
        device: where the model is placed.

    Returns:
        ``(model, checkpoint_dict)``.

    Raises:
        CheckpointError: the architecture or class count recorded in the checkpoint does
            not match its weights, or names a model this ncood does not know.
    """
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    where = "checkpoint" if isinstance(checkpoint, dict) else repr(str(checkpoint))
    spec = ckpt["model"]
    try:
        model = create_model(spec["name"], **spec.get("kwargs", {}))
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(
            f"{where} describes model {spec.get('name')!r} with {spec.get('kwargs')}, which "
            f"this ncood cannot build ({exc}); use the ncood version that wrote it "
            f"({ckpt.get('ncood_version')})"
        ) from None
    _check_state_dict(model, ckpt["state_dict"], spec, where)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a checkpoint file (the key of feature caches)."""
    return file_sha256(path)


# ---------------------------------------------------------------------- random states
def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Random states of torch, numpy, Python (and ``generator``), as tensors and plain
    values so the checkpoint stays loadable with ``weights_only=True``."""
    # numpy's legacy global generator: third-party code may draw from it
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())


# ---------------------------------------------------------------------- helpers
def _looks_like_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def _warn_versions(path: Path, ckpt: dict[str, Any]) -> None:
    ours = {"torch": str(torch.__version__), "python": platform.python_version()}
    theirs = {"torch": ckpt.get("torch_version"), "python": ckpt.get("python_version")}
    diff = [f"{k} {theirs[k]} (now {ours[k]})" for k in ours if theirs[k] != ours[k]]
    if diff:
        warnings.warn(
            f"checkpoint {str(path)!r} was written with {', '.join(diff)}; loading it anyway. "
            "Results may differ slightly; resume under the same versions for exact "
            "reproduction",
            UserWarning,
            stacklevel=3,
        )


def _check_state_dict(model: nn.Module, state: dict[str, Any], spec: dict, where: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [k for k in expected if k in got and expected[k] != got[k]]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} tensor(s) of the wrong shape (first: {k} is {got[k]} in the file, "
            f"{expected[k]} in the model)"
        )
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    raise CheckpointError(
        f"the weights in {where} do not fit model {spec.get('name')!r} "
        f"{spec.get('kwargs', {})}: {'; '.join(parts)}; the checkpoint is for another "
        "architecture or class count: pass the matching --model/classes or re-train"
    )
