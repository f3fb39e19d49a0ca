"""ODIN: the one detector that runs the network (input perturbation + temperature).

Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image Detection in
Neural Networks", ICLR 2018 (arXiv 1706.02690). For a classifier with logits ``f(x)``,
temperature ``T`` and perturbation size ``eps``::

    yhat    = argmax_i f_i(x)
    x_tilde = x - eps * sign(-grad_x log S_yhat(x; T)) / std       S(x; T) = softmax(f(x) / T)
    score   = max_i S_i(x_tilde; T)                                higher = more in-distribution

Every other ncood detector scores arrays that :mod:`ncood.extract` wrote once; ODIN needs
a backward pass through the network for every image and every temperature, so it lives
here, beside extraction, and is fed by the same data paths
(:func:`ncood.data.streams.open_stream`: DataLoaders, Datasets, arrays, registered names,
``folder:``, ``npz:``), one batch in memory at a time.

Choices, following the reference code (the authors' ``facebookresearch/odin`` and
OpenOOD v1.5's ``openood/postprocessors/odin_postprocessor.py``):

- The gradient is taken with respect to the **model input** (after normalisation), and
  its sign is **divided by the normalisation std per channel**, so ``eps`` is a step in
  ``[0, 1]`` pixel units (``x_pixel = x * std + mean``). ``input_std`` overrides the std
  (``1.0``: a step of ``eps`` in model-input units).
- ``sign`` is the reference's ``2 * (g >= 0) - 1`` on the gradient ``g`` of the
  cross-entropy ``-log S_yhat``: a component whose gradient is exactly 0 moves by
  ``-eps / std`` (``torch.sign`` would leave it); ``x_tilde`` is not clipped.
- Defaults ``T = 1000``, ``eps = 0.0014`` and the grid ``T in {1, 10, 100, 1000}``,
  ``eps in {0.0014, 0.0028}`` are OpenOOD v1.5's ``configs/postprocessors/odin.yml``
  (``postprocessor_args`` and ``postprocessor_sweep``).
- The network runs in eval mode and float32; gradients are taken with
  ``torch.autograd.grad`` with respect to the input only (parameters' ``.grad`` are never
  touched) and nothing is kept beyond the batch. Softmax scores are computed in float64
  from the float32 logits (at ``T = 1000`` they differ from ``1 / C`` in the 4th digit).
- The logits are the ncood interface's ``forward_head(forward_features(x))`` (the input
  of the final ``nn.Linear`` through it), the same ``W z + b`` extraction stores, so
  ``eps = 0`` gives exactly MSP at temperature ``T`` on the extracted logits.

```python
from ncood.odin import odin_scores, odin_rows
s = odin_scores(model, "fashion_mnist", temperature=1000, epsilon=0.0014)   # (n,)
res = odin_rows("runs/x/standard/seed0/last.pt", test="fashion_mnist", ood=["digits"])
```
"""

from __future__ import annotations

import itertools
import logging
import numbers
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ncood.data.arrays import InputSpec
from ncood.data.streams import (
    EvalTransform,
    ImageStream,
    as_transform,
    open_stream,
    parse_named,
    parse_named_sets,
)
from ncood.detectors.select import (
    SelectionResult,
    select_from_scores,
    selection_meta,
    selection_rows,
)
from ncood.distributed import resolve_device
from ncood.errors import ConfigError, DataError
from ncood.io import progress_bar
from ncood.metrics import METRIC_NAMES, bootstrap_ood_metrics, ood_metrics
from ncood.models.adapters import (
    ModelAdapter,
    eval_transform,
    restore_modes,
    training_modes,
    wrap_model,
)
from ncood.results import PENULTIMATE, Results, row
from ncood.train.checkpoint import load_checkpoint, model_from_checkpoint
from ncood.validation import check_number

log = logging.getLogger(__name__)

#: The detector name in the results table.
NAME = "odin"
#: OpenOOD v1.5 configs/postprocessors/odin.yml, postprocessor_args.
DEFAULT_TEMPERATURE = 1000.0
DEFAULT_EPSILON = 0.0014
#: OpenOOD v1.5 configs/postprocessors/odin.yml, postprocessor_sweep.
DEFAULT_GRID: dict[str, list[float]] = {
    "temperature": [1.0, 10.0, 100.0, 1000.0],
    "epsilon": [0.0014, 0.0028],
}


# --------------------------------------------------------------------------- checks
def check_params(temperature: Any, epsilon: Any) -> tuple[float, float]:
    """``(temperature, epsilon)`` as floats; ``temperature > 0``, ``epsilon >= 0``.

    Raises:
        ConfigError: naming the parameter, the range and the value given.
    """
    t = check_number(temperature, "temperature", "ODIN", low=0, low_open=True)
    e = check_number(epsilon, "epsilon", "ODIN", low=0)
    return float(t), float(e)


def resolve_params(spec: Mapping[str, Any] | None = None) -> dict[str, float]:
    """ODIN's hyperparameters from a detector spec (``{"temperature": T, "epsilon": e}``,
    either may be left out for its default), checked.

    Raises:
        ConfigError: an unknown key (naming the valid ones) or a value out of range.
    """
    if spec is not None and not isinstance(spec, Mapping):
        raise ConfigError(
            f"ODIN's hyperparameters must be a mapping {{'temperature': T, 'epsilon': e}}; "
            f"got {type(spec).__name__}"
        )
    spec = dict(spec or {})
    for key in spec:
        if key not in ("temperature", "epsilon"):
            raise ConfigError(
                f"ODIN has no hyperparameter {key!r}; valid ones: epsilon, temperature "
                "(its softmax temperature is 'temperature', not 'T')"
            )
    t, e = check_params(
        spec.get("temperature", DEFAULT_TEMPERATURE), spec.get("epsilon", DEFAULT_EPSILON)
    )
    return {"temperature": t, "epsilon": e}


def params(temperature: float, epsilon: float) -> dict[str, float]:
    """The ``params`` of ODIN's rows: ``{"epsilon", "temperature"}``."""
    return {"epsilon": float(epsilon), "temperature": float(temperature)}


# --------------------------------------------------------------------------- the model
def prepare(
    model: nn.Module | str | os.PathLike,
    transform: EvalTransform | InputSpec | None = None,
    *,
    head: str | None = None,
    features: str | None = None,
) -> tuple[nn.Module, EvalTransform, dict[str, Any]]:
    """The model with ncood's interface, its eval transform, and what the rows need.

    Args:
        model: an ncood model, a :class:`~ncood.models.adapters.ModelAdapter`, any
            ``nn.Module`` classifier (wrapped), or the path of an ncood checkpoint
            (``ncood train``'s ``last.pt`` / ``snapshots/epoch_*.pt``: the network and its
            input spec are read from it, as :func:`ncood.extract.extract_checkpoint` does).
        transform: the eval transform (or ``InputSpec``); default: the checkpoint's
            input spec, a ModelAdapter's ``.transform``, or the model family's
            (:func:`ncood.models.adapters.eval_transform`). An ncood model given as an
            object needs it (its input spec lives in its checkpoint).
        head, features: see :class:`~ncood.models.adapters.ModelAdapter`.

    Returns:
        ``(model, transform, info)``; ``info`` holds ``epoch`` and ``dataset`` for a
        checkpoint (else empty).
    """
    info: dict[str, Any] = {}
    tf = as_transform(transform)
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ConfigError(
                f"model {str(model)!r} is neither an nn.Module nor an ncood checkpoint file; "
                "pass the model (ncood.models.adapters.load_model('torchvision:NAME', ...)) "
                "or the last.pt of a run"
            )
        ckpt = load_checkpoint(path)
        model, ckpt = model_from_checkpoint(ckpt)
        if tf is None:
            tf = EvalTransform.from_input_spec(InputSpec.from_dict(ckpt["input_spec"]))
        info = {"epoch": ckpt.get("epoch"), "dataset": ckpt.get("dataset", {}).get("name")}
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model must be a torch.nn.Module or an ncood checkpoint path; got "
            f"{type(model).__name__}"
        )
    if tf is None:
        if isinstance(model, ModelAdapter) or not hasattr(model, "get_head"):
            tf = eval_transform(model)
        else:
            raise ConfigError(
                f"{type(model).__name__} is an ncood model: pass transform=InputSpec (the "
                "checkpoint's input_spec) or the checkpoint path, so its inputs are prepared "
                "as in training"
            )
    modes = training_modes(model)
    model = wrap_model(model, head=head, features=features)
    if isinstance(model, ModelAdapter) and model._head is None:
        model.locate(torch.rand((2, tf.channels, tf.size, tf.size)))  # find the head now
    restore_modes(modes)  # the user's model keeps its own modes
    return model, tf, info


def _std(input_std: float | Sequence[float] | None, tf: EvalTransform) -> tuple[float, ...]:
    """Per-channel std the gradient sign is divided by (the transform's unless given)."""
    if input_std is None:
        return tuple(float(s) for s in tf.std)
    values = (input_std,) * tf.channels if isinstance(input_std, numbers.Real) else input_std
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != tf.channels or not all(np.isfinite(v) and v > 0 for v in out):
        raise ConfigError(
            f"The 'input_std' parameter of ODIN must be a positive float or {tf.channels} "
            f"positive floats (one per input channel). Got {input_std!r} instead."
        )
    return out


# --------------------------------------------------------------------------- one batch
def _max_softmax(logits: torch.Tensor, temperature: float) -> np.ndarray:
    """``max_i softmax(f / T)_i`` in float64, ``(b, C) -> (b,)``, without overflow."""
    g = logits.detach().to("cpu", torch.float64) / temperature  # (b, C)
    return torch.exp(g.max(dim=1).values - torch.logsumexp(g, dim=1)).numpy()


def odin_batch(
    model: nn.Module,
    x: torch.Tensor,
    configs: Sequence[tuple[float, float]],
    std: Sequence[float],
) -> list[np.ndarray]:
    """ODIN scores of one batch of model input for several ``(T, eps)`` at once.

    One forward and backward pass per distinct ``T`` (the gradient's sign depends on
    it) and one forward pass per ``(T, eps)`` with ``eps > 0``; ``eps = 0`` reuses the
    clean logits. Samples are independent (the model is in eval mode).

    Args:
        model: in eval mode, with ``forward_features`` / ``forward_head``.
        x: ``(b, C, H, W)`` model input (normalised), float32.
        configs: ``[(temperature, epsilon), ...]``, checked.
        std: per-channel std, length ``C``.

    Returns:
        One ``(b,)`` float64 array of scores per config, in order.
    """
    x = x.detach().float()
    scale = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)  # (1, C, 1, 1)
    xg = x.clone().requires_grad_(True)
    # temperatures that need a gradient (eps = 0 scores the clean logits)
    temps = list(dict.fromkeys(t for t, e in configs if e > 0))
    steps: dict[float, torch.Tensor] = {}
    with torch.enable_grad():  # also under a caller's torch.no_grad()
        logits = model.forward_head(model.forward_features(xg)).float()  # (b, C)
        yhat = logits.detach().argmax(dim=1)  # (b,)
        for i, t in enumerate(temps):
            # cross-entropy = -log S_yhat(x; T), summed: the sign of a per-sample gradient
            # does not depend on the batch mean's 1/b (which could only underflow)
            loss = F.cross_entropy(logits / t, yhat, reduction="sum")
            (grad,) = torch.autograd.grad(loss, xg, retain_graph=i < len(temps) - 1)
            sign = torch.where(grad >= 0, 1.0, -1.0).to(x.dtype)  # the reference's sign
            steps[t] = sign / scale  # (b, C, H, W): eps in [0, 1] pixel units
    out = []
    with torch.no_grad():
        for t, e in configs:
            if e == 0:
                out.append(_max_softmax(logits, t))
                continue
            x_tilde = x - e * steps[t]  # x - eps * sign(-grad log S_yhat) / std
            f = model.forward_head(model.forward_features(x_tilde)).float()
            out.append(_max_softmax(f, t))
    return out


# --------------------------------------------------------------------------- streams
def _open(
    data: Any,
    tf: EvalTransform,
    *,
    split: str,
    n: int | None,
    name: str | None,
    batch_size: int,
    num_workers: int | None,
    data_root: str | os.PathLike | None,
    data_seed: int,
    allow_subset: bool,
) -> ImageStream:
    """``data`` as an :class:`~ncood.data.streams.ImageStream` resized for ``tf``."""
    if isinstance(data, ImageStream):
        return data
    if hasattr(data, "images") and hasattr(data, "labels") and not isinstance(data, nn.Module):
        name = name or getattr(data, "name", None)  # ncood.data.ImageArrays
        data = (data.images, data.labels) if data.labels is not None else data.images
    return open_stream(
        data,
        transform=tf,
        split=split,
        batch_size=batch_size,
        num_workers=num_workers,
        root=data_root,
        n=n,
        seed=data_seed,
        allow_subset=allow_subset,
        name=name,
    )


def _stream_scores(
    model: nn.Module,
    stream: ImageStream,
    configs: Sequence[tuple[float, float]],
    std: Sequence[float],
    device: torch.device,
    progress: bool,
) -> list[np.ndarray]:
    """ODIN scores of every image of ``stream`` for each config, batch by batch."""
    chunks: list[list[np.ndarray]] = [[] for _ in configs]
    bar = progress_bar(stream.n, f"odin {stream.name}".strip(), enabled=progress)
    try:
        for i, (x, _y) in enumerate(stream.model_batches(device)):
            if x.shape[1] != len(std):
                raise ConfigError(
                    f"{stream.name}: batch {i} has {x.shape[1]} channels but the model's "
                    f"transform has {len(std)}; pass the model's transform (or input_std "
                    f"with {x.shape[1]} values)"
                )
            if not torch.isfinite(x).all():
                raise DataError(
                    f"{stream.name}: batch {i} holds NaN or inf pixel values; ODIN needs "
                    "finite images (check the Dataset's transform)"
                )
            for k, s in enumerate(odin_batch(model, x, configs, std)):
                chunks[k].append(s)
            bar.update(x.shape[0])
    finally:
        bar.close()
    if not chunks[0]:
        raise DataError(f"{stream.name}: no images to score")
    return [np.concatenate(c) for c in chunks]


class _Running:
    """The model in eval mode on ``device`` for a ``with`` block.

    Every submodule's own mode is restored afterwards: a wrapper made here (a new
    ModelAdapter is in train mode) must not switch the user's model to train mode.
    """

    def __init__(self, model: nn.Module, device: str | torch.device) -> None:
        self.model = model
        self.device = resolve_device(device)

    def __enter__(self) -> torch.device:
        self.modes = training_modes(self.model)
        self.model.eval().to(self.device)
        return self.device

    def __exit__(self, *exc: Any) -> None:
        restore_modes(self.modes)


def odin_scores(
    model: nn.Module | str | os.PathLike,
    data: Any,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    epsilon: float = DEFAULT_EPSILON,
    transform: EvalTransform | InputSpec | None = None,
    input_std: float | Sequence[float] | None = None,
    batch_size: int = 128,
    device: str | torch.device = "auto",
    split: str = "test",
    n: int | None = None,
    data_seed: int = 0,
    num_workers: int | None = None,
    data_root: str | os.PathLike | None = None,
    allow_subset: bool = False,
    head: str | None = None,
    features: str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """ODIN score of every image of ``data`` (see the module docstring for the formula).

    Args:
        model: an ncood model, a ModelAdapter, any ``nn.Module`` classifier, or an ncood
            checkpoint path (:func:`prepare`).
        data: anything :func:`ncood.data.streams.open_stream` opens (DataLoader, Dataset,
            arrays, ``(images, labels)``, ``ImageArrays``, a registered name,
            ``"folder:PATH"``, ``"npz:PATH"``) or an ``ImageStream``.
        temperature: ``T > 0`` (default 1000, OpenOOD v1.5).
        epsilon: perturbation size ``>= 0`` in ``[0, 1]`` pixel units (default 0.0014,
            OpenOOD v1.5); 0 gives MSP at temperature ``T``.
        transform: the model's eval transform (see :func:`prepare`).
        input_std: the per-channel std dividing the gradient sign (default: the
            transform's; 1.0 = steps in model-input units).
        batch_size: images per forward/backward pass (gradients are kept for one batch).
        device: ``"auto"``, ``"cpu"``, ``"cuda[:i]"``.
        split, n, data_seed, num_workers, data_root, allow_subset: as
            :func:`ncood.data.streams.open_stream` (``split`` of registered names, a
            subset of ``n`` images drawn from ``data_seed``, ...).
        head, features: see :class:`~ncood.models.adapters.ModelAdapter`.
        progress: a progress bar on stderr.

    Returns:
        ``(n,)`` float64 scores, higher = more in-distribution, in the data's order.

    Raises:
        ConfigError: ``temperature <= 0``, ``epsilon < 0``, a bad ``input_std``, a model
            that is not a classifier. DataError: NaN/inf images, unreadable data.
    """
    (t, e) = check_params(temperature, epsilon)
    check_number(batch_size, "batch_size", "ODIN", kind=numbers.Integral, low=1)
    net, tf, _ = prepare(model, transform, head=head, features=features)
    std = _std(input_std, tf)
    stream = _open(
        data,
        tf,
        split=split,
        n=n,
        name=None,
        batch_size=batch_size,
        num_workers=num_workers,
        data_root=data_root,
        data_seed=data_seed,
        allow_subset=allow_subset,
    )
    with _Running(net, device) as dev:
        return _stream_scores(net, stream, [(t, e)], std, dev, progress)[0]


# --------------------------------------------------------------------------- rows
def _metric_rows(
    id_scores: np.ndarray,
    ood_scores: np.ndarray,
    keys: Mapping[str, Any],
    bootstrap: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    """The OOD-metric rows of one (ID, OOD) pair: :data:`ncood.metrics.METRIC_NAMES`, with
    bootstrap intervals when ``bootstrap`` is given (the rows ``ncood.analysis`` writes
    for every detector)."""
    sizes = {"n_id": len(id_scores), "n_ood": len(ood_scores)}
    if not bootstrap:
        return [row(m, v, **sizes, **keys) for m, v in ood_metrics(id_scores, ood_scores).items()]
    boot = bootstrap_ood_metrics(
        id_scores,
        ood_scores,
        n_boot=int(bootstrap.get("n_boot", 1000)),
        seed=int(bootstrap.get("seed", 0)),
    )
    return [
        row(m, boot[m].value, ci=(boot[m].lo, boot[m].hi), **sizes, **keys) for m in METRIC_NAMES
    ]


def _ood_specs(ood: Mapping[str, Any] | Sequence[str] | str) -> dict[str, Any]:
    if isinstance(ood, (Mapping, str)) or all(isinstance(o, str) for o in ood):
        return parse_named_sets(ood)
    raise ConfigError(
        "ood must be {name: data} or ['NAME=SPEC' or 'SPEC', ...]; got a "
        f"{type(ood).__name__} of {', '.join(type(o).__name__ for o in ood)}"
    )


def odin_rows(
    model: nn.Module | str | os.PathLike,
    *,
    test: Any = None,
    ood: Mapping[str, Any] | Sequence[str] = (),
    temperature: float = DEFAULT_TEMPERATURE,
    epsilon: float = DEFAULT_EPSILON,
    transform: EvalTransform | InputSpec | None = None,
    input_std: float | Sequence[float] | None = None,
    bootstrap: Mapping[str, Any] | None = None,
    regime: str | None = None,
    seed: int | None = None,
    epoch: int | None = None,
    max_test_samples: int | None = None,
    max_ood_samples: int | None = None,
    batch_size: int = 128,
    device: str | torch.device = "auto",
    num_workers: int | None = None,
    data_root: str | os.PathLike | None = None,
    data_seed: int = 0,
    allow_subset: bool = False,
    head: str | None = None,
    features: str | None = None,
    progress: bool = False,
    scores_out: dict[str, np.ndarray] | None = None,
) -> Results:
    """ODIN's OOD-metric rows: the ID test data against every OOD set.

    The rows are those :func:`ncood.analysis.analyse` writes for every other detector:
    ``auroc``, ``aupr_in``, ``aupr_out``, ``fpr95``, ``fpr95_oodpos`` per OOD set (with
    ``ci_low``/``ci_high`` when ``bootstrap``), ``detector="odin"``,
    ``layer="penultimate"`` (the head's logits), ``params={"epsilon", "temperature"}``,
    ``n_id``/``n_ood``.

    Args:
        model: an ncood model, a ModelAdapter, any classifier, or an ncood checkpoint
            path (:func:`prepare`; a checkpoint also gives the default ``test`` data, its
            ID dataset, and ``epoch``).
        test: ID test data (anything :func:`odin_scores` takes; registered names and
            folders use their ``test`` split).
        ood: ``{name: data}`` or ``["NAME=SPEC" or "SPEC", ...]``.
        temperature, epsilon, transform, input_std: see :func:`odin_scores`.
        bootstrap: ``{"n_boot": B, "seed": s}`` for 95% percentile intervals; None: none.
        regime, seed, epoch: identify the network in the rows.
        max_test_samples, max_ood_samples, data_seed: subsets (stratified when labelled),
            the same images extraction draws with the same numbers.
        batch_size, device, num_workers, data_root, allow_subset, head, features,
            progress: see :func:`odin_scores`.
        scores_out: receives the raw scores, keys ``"odin/id"`` and ``"odin/<ood set>"``.

    Returns:
        :class:`~ncood.results.Results`; ``meta["detectors"]["odin"]`` holds the
        hyperparameters, ``meta["odin"]`` the std used, the device, seconds and images/s.
    """
    t, e = check_params(temperature, epsilon)
    check_number(batch_size, "batch_size", "ODIN", kind=numbers.Integral, low=1)
    oods = _ood_specs(ood)
    net, tf, info = prepare(model, transform, head=head, features=features)
    if test is None:
        if not info.get("dataset"):
            raise ConfigError("odin_rows needs test= (the ID test data); pass e.g. test='NAME'")
        test = info["dataset"]
    epoch = info.get("epoch") if epoch is None else epoch
    std = _std(input_std, tf)
    opts = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        data_root=data_root,
        data_seed=data_seed,
        allow_subset=allow_subset,
    )
    streams = {"id": _open(test, tf, split="test", n=max_test_samples, name=None, **opts)}
    for name, data in oods.items():
        streams[name] = _open(data, tf, split="test", n=max_ood_samples, name=name, **opts)
    scores: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    with _Running(net, device) as dev:
        for key, stream in streams.items():
            scores[key] = _stream_scores(net, stream, [(t, e)], std, dev, progress)[0]
    seconds = time.perf_counter() - start
    n_images = sum(len(s) for s in scores.values())
    log.info("odin: %d images in %.1f s (%.0f img/s)", n_images, seconds, n_images / seconds)
    if scores_out is not None:
        scores_out.update({f"{NAME}/{k}": v for k, v in scores.items()})
    keys = dict(
        regime=regime,
        seed=seed,
        epoch=None if epoch is None else int(epoch),
        layer=PENULTIMATE,
        detector=NAME,
        params=params(t, e),
    )
    rows = []
    for name in oods:
        rows += _metric_rows(scores["id"], scores[name], {**keys, "ood": name}, bootstrap)
    meta = {
        "detectors": {NAME: params(t, e)},
        "odin": {
            "input_std": list(std),
            "device": str(dev),
            "seconds": seconds,
            "images_per_s": n_images / seconds if seconds > 0 else None,
        },
    }
    return Results(rows, meta)


# --------------------------------------------------------------------------- selection
def _grid(grid: Mapping[str, Iterable[Any]] | None) -> dict[str, list[float]]:
    grid = DEFAULT_GRID if grid is None else grid
    if not isinstance(grid, Mapping):
        raise ConfigError(
            f"grid must be {{'temperature': [...], 'epsilon': [...]}}; got {type(grid).__name__}"
        )
    unknown = sorted(set(grid) - {"temperature", "epsilon"})
    if unknown:
        raise ConfigError(
            f"ODIN's grid has no parameter {unknown[0]!r}; valid parameters: epsilon, temperature"
        )
    out = {}
    for key in ("temperature", "epsilon"):
        values = grid[key] if key in grid else DEFAULT_GRID[key]
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ConfigError(f"grid[{key!r}] of ODIN must be a list of numbers; got {values!r}")
        values = list(values)
        if not values:
            raise ConfigError(f"grid[{key!r}] of ODIN must be a non-empty list; got []")
        out[key] = values
    for t, e in itertools.product(out["temperature"], out["epsilon"]):
        check_params(t, e)
    return {k: [float(v) for v in vs] for k, vs in out.items()}


def odin_select(
    model: nn.Module | str | os.PathLike,
    val_id: Any,
    val_ood: Any,
    grid: Mapping[str, Iterable[Any]] | None = None,
    *,
    val_ood_name: str | None = None,
    split: str | None = None,
    transform: EvalTransform | InputSpec | None = None,
    input_std: float | Sequence[float] | None = None,
    regime: str | None = None,
    seed: int | None = None,
    epoch: int | None = None,
    max_id_samples: int | None = None,
    max_ood_samples: int | None = None,
    batch_size: int = 128,
    device: str | torch.device = "auto",
    num_workers: int | None = None,
    data_root: str | os.PathLike | None = None,
    data_seed: int = 0,
    allow_subset: bool = False,
    head: str | None = None,
    features: str | None = None,
    progress: bool = False,
) -> Results:
    """Choose ODIN's ``(temperature, epsilon)`` by AUROC on validation data.

    Every candidate of ``grid`` scores the ID validation images and the validation OOD
    set in one pass over each (one backward pass per temperature per batch); the
    candidate with the highest validation AUROC wins, ties going to the earliest in grid
    order (:func:`ncood.detectors.select.select_from_scores`). No test data is an
    argument: ``val_id`` must be images held out of training (e.g.
    ``load_images(name, "train", holdout=Holdout(n, part="holdout"))``) and ``val_ood``
    a set disjoint from every test OOD set.

    Args:
        model: see :func:`odin_scores`.
        val_id: ID validation images (anything :func:`odin_scores` takes). A registered
            dataset name needs an explicit ``split`` (a bare name would read the test
            split, which selection must not see).
        val_ood: the validation OOD set: data, ``"NAME=SPEC"``/``"SPEC"`` or
            ``{name: data}`` with one entry.
        grid: ``{"temperature": [...], "epsilon": [...]}``; None: :data:`DEFAULT_GRID`
            (OpenOOD v1.5's sweep); a missing key takes the default's values.
        val_ood_name: the validation OOD set's name in the rows (default: from the spec,
            else ``"val_ood"``).
        split: split of registered names / folders with split folders for ``val_id``
            (``val_ood``: ``split`` or ``"test"``).
        regime, seed, epoch: identify the network in the rows.
        max_id_samples, max_ood_samples, data_seed: validation subsets.
        transform, input_std, batch_size, device, num_workers, data_root, allow_subset,
            head, features, progress: see :func:`odin_scores`.

    Returns:
        :class:`~ncood.results.Results` with the selection rows (``selection_auroc`` per
        candidate, ``selection_chosen``; docs/results_schema.md) and
        ``meta["selection"]["odin"] = {"grid", "chosen", "val_auroc", "val_ood",
        "n_val_id", "n_val_ood"}``; pass ``**meta["selection"]["odin"]["chosen"]`` to
        :func:`odin_rows`.
    """
    full_grid = _grid(grid)
    check_number(batch_size, "batch_size", "ODIN", kind=numbers.Integral, low=1)
    if (
        isinstance(val_id, (str, os.PathLike))
        and not str(val_id).startswith(("folder:", "npz:"))
        and split is None
    ):
        raise ConfigError(
            f"val_id={str(val_id)!r} is a registered dataset: pass split= naming images held "
            "out of training, or the held-out images themselves (load_images(..., "
            "holdout=Holdout(n, part='holdout'))); its test split is not for selection"
        )
    if isinstance(val_ood, Mapping) or isinstance(val_ood, str):
        specs = parse_named_sets(val_ood) if isinstance(val_ood, Mapping) else None
        if specs is not None:
            if len(specs) != 1:
                raise ConfigError(
                    f"val_ood must be one validation OOD set; got {len(specs)} ({list(specs)})"
                )
            ((name, val_ood),) = specs.items()
        else:
            name, val_ood = parse_named(val_ood)
        val_ood_name = val_ood_name or name
    val_ood_name = val_ood_name or "val_ood"
    net, tf, info = prepare(model, transform, head=head, features=features)
    epoch = info.get("epoch") if epoch is None else epoch
    std = _std(input_std, tf)
    opts = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        data_root=data_root,
        data_seed=data_seed,
        allow_subset=allow_subset,
    )
    configs = list(itertools.product(full_grid["temperature"], full_grid["epsilon"]))
    id_stream = _open(val_id, tf, split=split or "test", n=max_id_samples, name=None, **opts)
    ood_stream = _open(
        val_ood, tf, split=split or "test", n=max_ood_samples, name=val_ood_name, **opts
    )
    with _Running(net, device) as dev:
        id_scores = _stream_scores(net, id_stream, configs, std, dev, progress)
        ood_scores = _stream_scores(net, ood_stream, configs, std, dev, progress)
    result: SelectionResult = select_from_scores(
        NAME,
        full_grid,
        [(params(t, e), s_id, s_ood)
         for (t, e), s_id, s_ood in zip(configs, id_scores, ood_scores, strict=True)],
    )  # fmt: skip
    keys = dict(regime=regime, seed=seed, epoch=None if epoch is None else int(epoch))
    rows = selection_rows(result, val_ood=val_ood_name, **keys)
    meta = {"selection": {NAME: selection_meta(result, val_ood=val_ood_name)}}
    log.info(
        "odin selection on %s: %s (validation AUROC %.4f)",
        val_ood_name,
        result.params,
        result.val_auroc,
    )
    return Results(rows, meta)


__all__ = [
    "DEFAULT_EPSILON",
    "DEFAULT_GRID",
    "DEFAULT_TEMPERATURE",
    "check_params",
    "odin_batch",
    "odin_rows",
    "odin_scores",
    "odin_select",
    "prepare",
    "resolve_params",
]
