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

import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ncood import __version__
from ncood.analysis import analyse
from ncood.config import DETECTORS_DEFAULT
from ncood.data.streams import as_transform, open_stream, parse_named_sets
from ncood.detectors import create_detector
from ncood.errors import ConfigError
from ncood.explain import explain_network
from ncood.extract import extract_stream
from ncood.io import atomic_open, safe_names, write_json
from ncood.models.adapters import ModelAdapter, eval_transform, load_model, wrap_model
from ncood.odin import odin_rows
from ncood.odin import resolve_params as odin_params
from ncood.registry import closest
from ncood.types import load_feature_dir

log = logging.getLogger(__name__)

#: Detectors run when none are named: the toolkit's one default list (ncood.config).
DEFAULT_DETECTORS = DETECTORS_DEFAULT
#: Options of :func:`prepare_model`; ``evaluate`` applies them once when ODIN runs.
MODEL_OPTIONS = ("weights", "num_classes", "head", "features", "transform", "input_size")
MODEL_OPTIONS += ("mean", "std")
#: Options of :func:`extract_features` that :func:`ncood.odin.odin_rows` takes too.
ODIN_OPTIONS = ("transform", "max_test_samples", "max_ood_samples", "batch_size", "device")
ODIN_OPTIONS += ("num_workers", "data_root", "allow_subset", "progress")


def evaluate(
    model: nn.Module | str,
    *,
    train: Any,
    test: Any,
    ood: Mapping[str, Any] | Sequence[str] = (),
    detectors: Mapping[str, Mapping[str, Any] | None] | Sequence[str] = DEFAULT_DETECTORS,
    layers: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    collapse: bool = True,
    bootstrap: Mapping[str, Any] | None = None,
    explain: bool = False,
    **options: Any,
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
            ``"odin"`` (``{"temperature", "epsilon"}``, OpenOOD's defaults when left out)
            runs the model again on the test and OOD images (:func:`ncood.odin.odin_rows`;
            the same subsets) and adds its rows (``layer="penultimate"``).
        layers: submodules whose pooled outputs are analysed too; None: the model's
            stages (``stage_names()``); ``[]``: only the penultimate layer.
        out: directory for ``features/`` (a features directory ``ncood score`` reads),
            ``results.csv`` and ``run.json``; None: features live in a temporary
            directory for the duration of the call.
        collapse, bootstrap: passed to :func:`ncood.analysis.analyse`.
        explain: also the explanation rows (:func:`ncood.explain.explain_network`: where
            the OOD sets land, spectrum, units, example images, Integrated Gradients of
            the energy and NECO scores), the example images taken by index from the test
            and OOD streams; with ``out``, their images and attributions go to
            ``out/explain.npz`` (keys ``"network/..."``) and
            ``ncood.report.write_report(Results.load(out), out)`` shows them. Off by
            default: on the README example (resnet18 at 64 px, 2 shared CPU cores, load
            about 6) it adds about 25 s to the 97 s without it: 7 s of feature analyses,
            18 s of Integrated Gradients (6 examples x 48 steps, forward and backward).
        options: model, transform and data options of :func:`extract_features`
            (``weights``, ``num_classes``, ``head``, ``features``, ``transform``,
            ``input_size``, ``mean``, ``std``, ``max_train_samples``, ...).

    Returns:
        :class:`~ncood.results.Results` (``to_frame()`` for a pandas DataFrame); its
        ``meta`` holds the model, transform, data sources and layers.

    Raises:
        ConfigError, DataError, CheckpointError: a bad model, weights or data; one line
            that names the input and the fix. Nothing is written to ``out`` then.
    """
    specs = dict(detectors) if isinstance(detectors, Mapping) else dict.fromkeys(detectors)
    # ODIN runs the network (ncood.odin), so it is not a feature-array detector
    odin = odin_params(specs.pop("odin")) if "odin" in specs else None
    for name, params in specs.items():  # a typo in a detector fails before any extraction
        create_detector(name, **dict(params or {}))
    if odin is not None:  # the model is prepared once, for extraction and ODIN
        prep = {k: options.pop(k) for k in MODEL_OPTIONS if k in options}
        model, options["transform"] = prepare_model(model, **prep)
    out_dir = None if out is None else Path(out)
    created = out_dir is not None and not out_dir.exists()
    tmp = None
    try:
        if out_dir is None:
            tmp = tempfile.mkdtemp(prefix="ncood-evaluate-")
            features_dir = Path(tmp) / "features"
        else:
            features_dir = out_dir / "features"
        opened: dict[str, Any] | None = {} if explain else None
        scores: dict[str, Any] | None = {} if explain else None
        fd = extract_features(
            model,
            train=train,
            test=test,
            ood=ood,
            layers=layers,
            out=features_dir,
            inputs_out=opened,
            **options,
        )
        results = analyse(
            fd,
            detectors=specs,
            collapse=collapse,
            layers=bool(fd.meta["layers"]),
            bootstrap=bootstrap,
            scores_out=scores,
        )
        if odin is not None:  # the same test/OOD images, streamed again through the model
            data = {k: options[k] for k in ODIN_OPTIONS if k in options}
            scored = odin_rows(
                model, test=test, ood=ood, bootstrap=bootstrap, data_seed=options.get("seed", 0),
                **odin, **data,
            )  # fmt: skip
            results.extend(scored)
            results.meta.setdefault("detectors", {}).update(scored.meta["detectors"])
            results.meta["odin"] = scored.meta["odin"]
        results.meta.update({k: fd.meta[k] for k in ("model", "transform", "data", "layers")})
        arrays: dict[str, Any] = {}
        if opened is not None:  # explain: the same model and streams the features came from
            explained, arrays = explain_network(
                fd, opened["model"], transform=opened["transform"], sources=opened["sources"],
                detectors=specs, scores=scores,
            )  # fmt: skip
            results.extend(explained)
            results.meta["notes"] = [*results.meta.get("notes", []), *explained.meta["notes"]]
        if out_dir is not None:
            results.save(out_dir)
            if arrays:  # keys prefixed with the report's name for rows without a regime
                from ncood.report.tables import UNNAMED  # the report stack: only here

                with atomic_open(out_dir / "explain.npz", "wb") as fh:
                    np.savez_compressed(fh, **{f"{UNNAMED}/{k}": v for k, v in arrays.items()})
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def prepare_model(
    model: nn.Module | str,
    *,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    head: str | None = None,
    features: str | None = None,
    transform: Any = None,
    input_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[nn.Module, Any]:
    """A model with ncood's interface (head found) and its eval transform.

    Args:
        model: ``"torchvision:NAME"``, ``"timm:NAME"``, any ``nn.Module`` or an ncood model.
        weights, num_classes: see :func:`ncood.models.adapters.load_model`.
        head, features: see :class:`ncood.models.adapters.ModelAdapter`.
        transform: an ``EvalTransform`` or ``InputSpec`` (needed for ncood's own models,
            which carry their input spec in their checkpoint).
        input_size, mean, std: override the family's transform.

    Returns:
        ``(model, transform)``: the model in eval mode, an
        :class:`~ncood.data.streams.EvalTransform`.
    """
    overrides = dict(input_size=input_size, mean=mean, std=std)
    if isinstance(model, str) or weights is not None or num_classes is not None:
        model = load_model(
            model,
            num_classes=num_classes,
            weights=weights,
            head=head,
            features=features,
            **overrides,
        )
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model must be a torch.nn.Module or 'torchvision:NAME' / 'timm:NAME'; got "
            f"{type(model).__name__}"
        )
    tf = as_transform(transform)
    if tf is None:
        if isinstance(model, ModelAdapter) or not hasattr(model, "get_head"):
            tf = eval_transform(model, **overrides)
        else:
            raise ConfigError(
                f"{type(model).__name__} is an ncood model: pass transform=InputSpec (the "
                "checkpoint's input_spec) so its inputs are prepared as in training"
            )
    model = wrap_model(model, head=head, features=features)
    if isinstance(model, ModelAdapter) and model._head is None:
        model.locate(torch.rand((2, tf.channels, tf.size, tf.size)))  # find the head now
    return model.eval(), tf


def extract_features(
    model: nn.Module | str,
    *,
    train: Any,
    test: Any,
    ood: Mapping[str, Any] | Sequence[str] = (),
    out: str | os.PathLike,
    layers: Sequence[str] | None = None,
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
    inputs_out: dict[str, Any] | None = None,
    **model_options: Any,
) -> Any:
    """Extract a user's model on a user's data into a features directory.

    ``out`` gets the layout of :func:`ncood.types.load_feature_dir` (``train/``,
    ``test/``, ``ood/<safe name>/``, ``head.npz``, ``extract.json``), which ``ncood score``
    and ``ncood collapse`` read. Every array is written batch by batch
    (:func:`ncood.extract.extract_stream`) into a staging folder inside ``out`` and moved
    into place only when all sets are complete; on any error ``out`` is left as it was
    (and removed when this call created it).

    Args:
        model: see :func:`prepare_model` (``model_options`` go there: ``weights``,
            ``num_classes``, ``head``, ``features``, ``transform``, ``input_size``,
            ``mean``, ``std``).
        train, test, ood, layers: see :func:`evaluate`.
        out: the features directory.
        max_*_samples, seed: subsets (stratified when labelled) for quick runs.
        batch_size, num_workers: batches and decoding processes
            (:func:`ncood.data.streams.open_stream`).
        device, precision, progress: how the network runs.
        data_root, allow_subset: where registered datasets are found.
        inputs_out: receives ``"model"`` (the prepared model), ``"transform"`` and
            ``"sources"`` (``{"id": test stream, "<ood set>": its stream}``), e.g. for
            :func:`ncood.explain.explain_network`.

    Returns:
        The :class:`~ncood.types.FeatureDir`, memory-mapped from ``out``.
    """
    _check_options(model_options)
    model, tf = prepare_model(model, **model_options)
    layer_names = list(model.stage_names()) if layers is None else list(layers)

    # ---- every source is opened (folders listed, files found) before anything is written
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
    if inputs_out is not None:
        sources = {"id": streams["test"]}
        sources.update({name: streams[f"ood/{files[name]}"] for name in ood_sets})
        inputs_out.update(model=model, transform=tf, sources=sources)
    head = model.get_head()
    classes = streams["train"].classes
    if classes and len(classes) != head.num_classes:
        raise ConfigError(
            f"the model has {head.num_classes} outputs but the train data has "
            f"{len(classes)} classes; pass num_classes={len(classes)} (with the weights of "
            "a model trained on these classes)"
        )
    source = _source(model)
    meta = {
        "model": source,
        "transform": tf.to_dict(),
        "input_spec": tf.input_spec().to_dict(),
        "layers": layer_names,
        "id_dataset": streams["train"].name,
        "classes": classes,
        "data": {k: s.describe() for k, s in streams.items()},
        "epoch": None,
        "ncood_version": __version__,
    }

    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        sets = {}
        for key, stream in streams.items():
            sets[key] = extract_stream(
                model,
                stream,
                layers=layer_names,
                out=stage / key,
                name=stream.name,
                meta={"data": stream.describe(), "model": source, "layers": layer_names},
                device=device,
                precision=precision,
                progress=progress,
            )
        if sets["train"].labels is None:
            raise ConfigError(
                "the train data has no labels; detectors and collapse metrics are fitted "
                "on labelled in-distribution training images"
            )
        head.save(stage / "head.npz")
        write_json(stage / "extract.json", {**meta, "ood": list(ood_sets)})
        # swap in: a directory holding extract.json is complete, so it goes first and last
        (out / "extract.json").unlink(missing_ok=True)
        for entry in ("train", "test", "ood", "head.npz", "extract.json"):
            target = out / entry
            if target.is_dir():
                shutil.rmtree(target)
            if (stage / entry).exists():
                os.replace(stage / entry, target)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return load_feature_dir(out)


def _check_options(options: Mapping[str, Any]) -> None:
    """Unknown keyword arguments are a toolkit error naming the closest valid one."""
    valid = [
        p
        for f in (evaluate, extract_features, prepare_model)
        for p in inspect.signature(f).parameters
        if p not in ("model", "options", "model_options")
    ]
    for key in options:
        if key not in inspect.signature(prepare_model).parameters:
            raise ConfigError(
                f"unknown option {key!r}{closest(key, valid)}; valid options: "
                f"{', '.join(sorted(set(valid)))}"
            )


def _source(model: nn.Module) -> dict[str, Any]:
    src = getattr(model, "source", None)
    return dict(src) if isinstance(src, dict) else {"model": type(model).__name__}
