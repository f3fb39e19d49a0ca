"""``ncood.evaluate``: a user's model and data in, the results table out.

```python
import ncood, torchvision
model = torchvision.models.resnet18(num_classes=10)
model.load_state_dict(torch.load("resnet18.pt"))
res = ncood.evaluate(model, train="fashion_mnist", test="fashion_mnist",
                     ood={"digits": "digits", "faces": "folder:/data/faces"},
                     detectors=["msp", "energy", "vim", "neco"], input_size=64)
res.to_frame()                      # one row per measurement (docs/results_schema.md)
```

One call wraps the model (:class:`ncood.models.adapters.ModelAdapter`: the penultimate
features are the input of its final ``nn.Linear``), opens every data set as a stream
(:func:`ncood.data.streams.open_stream`: Datasets, DataLoaders, arrays, registered names,
``folder:``, ``npz:``), extracts them batch by batch into memory-mapped ``.npy`` files
(:func:`ncood.extract.extract_stream`), and measures them with
:func:`ncood.analysis.analyse` (detectors, neural collapse, every pooled layer).

Nothing is written until every input has been checked; with ``out`` the features
directory is built in a hidden staging folder inside ``out`` and moved into place only
when complete, so a bad input (an unreadable image, a DataLoader yielding something
else) leaves ``out`` as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ncood import __version__
from ncood.errors import ConfigError
from ncood.io import safe_names

log = logging.getLogger(__name__)

#: Detectors run when none are named: the logit-based and feature-based families.
DEFAULT_DETECTORS = ("msp", "maxlogit", "energy", "mahalanobis", "vim", "neco")


def evaluate(
    model: nn.Module | str,
    *,
    train: Any,
    test: Any,
    ood: Mapping[str, Any] | Sequence[str] = (),
    detectors: Mapping[str, Mapping[str, Any] | None] | Sequence[str] = DEFAULT_DETECTORS,
    layers: Sequence[str] | None = None,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    head: str | None = None,
    features: str | None = None,
    transform: Any = None,
    input_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    out: str | os.PathLike | None = None,
    collapse: bool = True,
    bootstrap: Mapping[str, Any] | None = None,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    max_ood_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    num_workers: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    data_root: str | os.PathLike | None = None,
    allow_subset: bool = False,
    progress: bool = False,
) -> Any:
    """Evaluate OOD detectors and neural collapse on any classifier and any data.

    Args:
        model: an ``nn.Module`` classifier, an ncood model, or ``"torchvision:NAME"`` /
            ``"timm:NAME"`` (with ``weights`` / ``num_classes``).
        train: in-distribution training data (labelled): a ``Dataset``, ``DataLoader``,
            arrays ``(images, labels)``, a registered name, ``"folder:PATH"`` or
            ``"npz:PATH"``. Registered names and folders with split folders use their
            ``train`` split.
        test: in-distribution test data (the ``test`` split of names).
        ood: ``{name: data}``, or ``["NAME=SPEC" or "SPEC", ...]`` (names default to
            :func:`ncood.data.streams.default_name`).
        detectors: ``{name: hyperparameters}`` or names (:func:`ncood.detectors.list_detectors`).
        layers: submodules whose pooled outputs are analysed too; None: the model's
            stages (``stage_names()``); ``[]``: only the penultimate layer.
        weights, num_classes: for a model given by name (:func:`~ncood.models.adapters.load_model`).
        head, features: name the final ``nn.Linear`` / the feature module of unusual models.
        transform: an :class:`~ncood.data.streams.EvalTransform` or ``InputSpec``; default:
            the model family's (:func:`~ncood.models.adapters.eval_transform`), adjusted
            by ``input_size``, ``mean``, ``std``.
        out: directory for ``features/`` (a features directory ``ncood score`` reads),
            ``results.csv`` and ``run.json``; None: features live in a temporary
            directory for the duration of the call.
        collapse, bootstrap: passed to :func:`ncood.analysis.analyse`.
        max_*_samples, seed: subsets for quick runs (stratified when labelled).
        batch_size, num_workers, device, precision, data_root, allow_subset, progress:
            how data is read and the network run.

    Returns:
        :class:`~ncood.results.Results` (``to_frame()`` for a pandas DataFrame); its
        ``meta`` holds the model, transform, data sources and layers.

    Raises:
        ConfigError, DataError, CheckpointError: a bad model, weights or data; one line
            that names the input and the fix. Nothing is written to ``out`` then.
    """
    from ncood.analysis import analyse
    from ncood.data.streams import as_transform, open_stream, parse_named_sets
    from ncood.extract import extract_stream
    from ncood.models.adapters import ModelAdapter, eval_transform, load_model, wrap_model
    from ncood.types import FeatureDir

    # ---- model and transform (the dry run that finds the head happens here)
    if isinstance(model, str):
        model = load_model(
            model,
            num_classes=num_classes,
            weights=weights,
            head=head,
            features=features,
            input_size=input_size,
            mean=mean,
            std=std,
        )
    elif weights is not None or num_classes is not None:
        model = load_model(
            model,
            weights=weights,
            num_classes=num_classes,
            head=head,
            features=features,
            input_size=input_size,
            mean=mean,
            std=std,
        )
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model must be a torch.nn.Module or 'torchvision:NAME' / 'timm:NAME'; got "
            f"{type(model).__name__}"
        )
    tf = as_transform(transform)
    if tf is None:
        if isinstance(model, ModelAdapter) or not hasattr(model, "get_head"):
            tf = eval_transform(model, input_size=input_size, mean=mean, std=std)
        else:
            raise ConfigError(
                f"{type(model).__name__} is an ncood model: pass transform=InputSpec (the "
                "checkpoint's input_spec) so its inputs are prepared as in training"
            )
    model = wrap_model(model, head=head, features=features)
    if isinstance(model, ModelAdapter) and model._head is None:
        model.locate(torch.rand((2, tf.channels, tf.size, tf.size)))
    layer_names = list(model.stage_names()) if layers is None else list(layers)

    # ---- data: every source is opened (and listed) before anything is written
    opts = dict(
        transform=tf,
        batch_size=batch_size,
        num_workers=num_workers,
        root=data_root,
        seed=seed,
        allow_subset=allow_subset,
    )
    ood_sets = parse_named_sets(ood)
    files = safe_names(ood_sets)
    streams = {
        "train": open_stream(train, split="train", n=max_train_samples, **opts),
        "test": open_stream(test, split="test", n=max_test_samples, **opts),
    }
    for name, data in ood_sets.items():
        streams[f"ood/{files[name]}"] = open_stream(
            data, split="test", n=max_ood_samples, name=name, **opts
        )
    head_lin = model.get_head()
    classes = streams["train"].classes
    if classes and len(classes) != head_lin.num_classes:
        raise ConfigError(
            f"the model has {head_lin.num_classes} outputs but the train data has "
            f"{len(classes)} classes; pass num_classes={len(classes)} (with the weights of "
            "a model trained on these classes)"
        )

    # ---- extract into a staging directory, then analyse
    staging_root = Path(out) if out is not None else None
    created_out = staging_root is not None and not staging_root.exists()
    if staging_root is not None:
        staging_root.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".evaluate-", dir=staging_root)
    else:
        tmp = tempfile.mkdtemp(prefix="ncood-evaluate-")
    try:
        fdir = Path(tmp) / "features"
        common = dict(device=device, precision=precision, progress=progress)
        sets = {}
        for key, stream in streams.items():
            sets[key] = extract_stream(
                model,
                stream,
                layers=layer_names,
                out=fdir / key,
                name=stream.name,
                meta={"data": stream.describe(), "model": _source(model)},
                **common,
            )
        if sets["train"].labels is None:
            raise ConfigError(
                "the train data has no labels; detectors and collapse metrics are fitted "
                "on labelled in-distribution training images"
            )
        meta = {
            "model": _source(model),
            "transform": tf.to_dict(),
            "layers": layer_names,
            "id_dataset": streams["train"].name,
            "classes": classes,
            "data": {k: s.describe() for k, s in streams.items()},
            "epoch": None,
            "ncood_version": __version__,
        }
        fd = FeatureDir(
            train=sets["train"],
            test=sets["test"],
            ood={name: sets[f"ood/{files[name]}"] for name in ood_sets},
            head=head_lin,
            meta=meta,
        )
        fd.head.save(fdir / "head.npz")
        from ncood.io import write_json

        write_json(fdir / "extract.json", {**meta, "ood": list(fd.ood)})
        results = analyse(
            fd,
            detectors=detectors,
            collapse=collapse,
            layers=bool(layer_names),
            bootstrap=bootstrap,
        )
        results.meta.update(
            {"model": meta["model"], "transform": meta["transform"], "data": meta["data"]}
        )
        if staging_root is not None:
            final = staging_root / "features"
            if final.exists():
                shutil.rmtree(final)
            os.replace(fdir, final)
            results.save(staging_root)
    except BaseException:
        if created_out:
            shutil.rmtree(staging_root, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _source(model: nn.Module) -> dict[str, Any]:
    src = getattr(model, "source", None)
    return dict(src) if isinstance(src, dict) else {"model": type(model).__name__}
