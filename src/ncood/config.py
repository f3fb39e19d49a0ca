"""The ``ncood run`` experiment config: dataclasses loaded from YAML, strictly validated.

Unknown keys are an error naming the closest valid key; wrong types name the expected
type. Every default is explained where it is declared. The embedded default lives in
``ncood/configs/default.yaml`` (shipped with the package).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from numbers import Integral
from pathlib import Path
from typing import Any

from ncood.errors import ConfigError

# The default detectors of `ncood run` and `ncood score`: making a detector a default is
# one edit here (configs that list `detectors:` explicitly keep their own list).
DETECTORS_DEFAULT = ("msp", "maxlogit", "energy", "mahalanobis", "vim", "neco")


@dataclass
class DataConfig:
    id: str = "fashion_mnist"  # ID dataset (ncood.data names, class subsets allowed)
    ood: list[str] = field(default_factory=lambda: ["digits", "texture_crops", "gaussian_noise"])
    root: str | None = None  # looked at first; then NCOOD_DATA_ROOT, ~/.cache/ncood, ...
    allow_subset: bool = True  # fall back to the small Fashion-MNIST subset shipped inside ncood
    train_samples: int | None = (
        None  # stratified training subset, also used for fits/NC (None = all)
    )
    test_samples: int | None = None  # ID test samples scored (None = all)
    ood_samples: int | None = 2000  # samples per OOD set (None = all)


@dataclass
class CollapseConfig:
    layers: list[str] | None = None  # submodules analysed per layer (None = every stage)
    across_training: bool = True  # analyse every training snapshot too
    # detectors also scored on each layer's pooled features (None = every detector of
    # `detectors` that reads features; [] = none)
    layer_detectors: list[str] | None = None
    snapshot_detectors: bool = True  # OOD detection at every snapshot (else NC only)
    snapshot_layers: bool = True  # per-layer analysis at every snapshot
    snapshot_test_samples: int | None = None  # ID test images per snapshot (None = data's)
    # train images per snapshot for NC and detector fits (None = the final network's); used
    # only when the network trained on the whole train split
    snapshot_train_samples: int | None = None
    snapshot_ood_samples: int | None = None  # images per OOD set per snapshot (None = data's)


@dataclass
class BootstrapConfig:
    n_boot: int = 1000  # bootstrap replicates of the OOD metrics' 95% intervals (0 = none)
    seed: int = 0  # the resampling seed (same seed, same intervals)
    every_snapshot: bool = False  # intervals at every snapshot, not only the final network


@dataclass
class RunConfig:
    name: str = "default"
    seed: int = 0  # seeds training, subsets and generated OOD sets
    seeds: list[int] | None = None  # several seeds: each regime trained once per seed
    output: str = "runs/default"  # everything the run writes goes here
    device: str = "auto"  # cuda when available, else cpu
    model: str = "resnet_narrow"  # ncood.models name
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    # TrainConfig fields shared by every regime (precision, batch_size, snapshots, ...)
    training: dict[str, Any] = field(default_factory=dict)
    # regime name -> TrainConfig overrides (epochs, lr, ...) or {"checkpoint": PATH}
    regimes: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"standard": {"epochs": 5}, "memorize": {"epochs": 5}}
    )
    # detector name -> hyperparameters
    detectors: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {name: {} for name in DETECTORS_DEFAULT}
    )
    collapse: CollapseConfig = field(default_factory=CollapseConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    # the report's "Why the detectors behave as they do" (ncood.explain) on each regime's
    # final network (first seed); its Integrated Gradients need the extra `ncood[explain]`
    explain: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_config_path() -> Path:
    """Path of the embedded default config shipped inside the package."""
    return Path(str(resources.files("ncood") / "configs" / "default.yaml"))


def load_config(path: str | os.PathLike | None = None) -> RunConfig:
    """Load and validate a run config (``None``: the embedded default)."""
    path = default_config_path() if path is None else Path(path)
    from ncood.io import load_yaml  # heavy (numpy, yaml): keep `ncood --help` fast

    return from_dict(RunConfig, load_yaml(path), "config")


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping (:func:`ncood.validation.from_dict`)."""
    from ncood.validation import from_dict as build  # heavy (numpy): keep `ncood --help` fast

    return build(cls, data, where)


# --------------------------------------------------------------------------- checked first
def regime_train_dict(cfg: RunConfig, regime: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig mapping ``ncood run`` trains regime ``regime`` with.

    Run-level keys first (model, data, seed, device, ``training``), then the regime's
    ``overrides``. (Not for a ``{"checkpoint": PATH}`` regime, which is not trained.)
    """
    return {
        "model": cfg.model,
        "dataset": cfg.data.id,
        "data_root": cfg.data.root,
        "regime": regime,
        "max_train_samples": cfg.data.train_samples,
        "seed": cfg.seed,
        "device": cfg.device,
        "allow_subset": cfg.data.allow_subset,
        **({"model_kwargs": cfg.model_kwargs} if cfg.model_kwargs else {}),
        **cfg.training,
        **overrides,
    }


def _check_output(output: str | os.PathLike) -> None:
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"config.output must be a directory; {str(out)!r} is a file; choose another "
            "output (--out)"
        )
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"config.output {str(out)!r} cannot be created: {str(existing)!r} is a file, not "
            "a directory; choose another output (--out)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"config.output {str(out)!r} is not writable ({str(existing)!r} does not allow "
            "writing for this user); choose another output (--out)"
        )


def check_run_config(cfg: RunConfig, *, output: str | os.PathLike | None = None) -> None:
    """Check everything ``ncood run`` needs before any work starts (seconds, not epochs).

    In order: the output directory can be written (``output``, else ``cfg.output``;
    nothing is created); the device exists; every detector name is registered and its
    hyperparameters are accepted (each detector is created through the registry); the
    ``collapse.layer_detectors`` are registered; every regime's training config is valid
    (regime name, model name, TrainConfig fields and values) or its checkpoint exists;
    the ID dataset (train and test) and every OOD set resolve, offline first, exactly as
    the run will load them (a download is tried only where the run would try one); the
    model builds with ``model_kwargs`` for the data's classes and channels; every name in
    ``collapse.layers`` is a submodule of it.

    Loaded datasets stay in the in-process decode cache, so the run does not decode them
    twice. Nothing is written.

    Raises:
        ConfigError: the first problem found, in one line that names the config key, what
            was expected, what was given and, for names, the closest valid one.
    """
    # heavy (torch, numpy, scipy): this module is imported by the command line at parse time
    from ncood.data import DATASETS, input_spec_for, load_images
    from ncood.data.streams import parse_named, parse_named_sets
    from ncood.detectors import create_detector, detector_class, list_detectors
    from ncood.distributed import resolve_device
    from ncood.errors import NcoodError
    from ncood.models import MODELS, create_model
    from ncood.registry import closest
    from ncood.train.config import TrainConfig
    from ncood.validation import check_number

    def fail(key: str, exc: Exception | str) -> ConfigError:
        return ConfigError(f"{key}: {exc}")

    _check_output(cfg.output if output is None else output)
    counts = {  # key -> (value, smallest allowed); None means "all" / "the default"
        "seed": (cfg.seed, 0),
        "data.train_samples": (cfg.data.train_samples, 1),
        "data.test_samples": (cfg.data.test_samples, 1),
        "data.ood_samples": (cfg.data.ood_samples, 1),
        "collapse.snapshot_test_samples": (cfg.collapse.snapshot_test_samples, 1),
        "collapse.snapshot_train_samples": (cfg.collapse.snapshot_train_samples, 1),
        "collapse.snapshot_ood_samples": (cfg.collapse.snapshot_ood_samples, 1),
        "bootstrap.n_boot": (cfg.bootstrap.n_boot, 0),
        "bootstrap.seed": (cfg.bootstrap.seed, 0),
    }
    seeds = cfg.seeds
    if seeds is not None:
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(
                f"config.seeds must be a non-empty list of distinct seeds, e.g. [0, 1, 2]; "
                f"got {seeds!r}"
            )
        counts |= {f"seeds[{i}]": (s, 0) for i, s in enumerate(seeds)}
    for key, (value, low) in counts.items():
        if value is not None:
            try:
                check_number(
                    value, key.rsplit(".", 1)[-1], "the run config", kind=Integral, low=low
                )
            except NcoodError as exc:
                raise fail(f"config.{key}", exc) from None
    try:
        resolve_device(cfg.device)
    except NcoodError as exc:
        raise fail("config.device", exc) from None

    try:
        MODELS.get(cfg.model)
    except NcoodError as exc:
        raise fail("config.model", exc) from None
    registered = set(list_detectors())
    for name, params in cfg.detectors.items():
        key = f"config.detectors.{name}" if name in registered else "config.detectors"
        try:
            create_detector(name, **(params or {}))
        except (NcoodError, TypeError) as exc:
            raise fail(key, exc) from None
    for name in cfg.collapse.layer_detectors or []:
        try:
            detector_class(name)
        except NcoodError as exc:
            raise fail("config.collapse.layer_detectors", exc) from None

    if not cfg.regimes:
        raise ConfigError(
            "config.regimes must name at least one regime, e.g. {standard: {epochs: 5}}; got none"
        )
    trained: dict[str, TrainConfig] = {}
    checkpoints: dict[str, Path] = {}
    for regime, overrides in cfg.regimes.items():
        key = f"config.regimes.{regime}"
        if "checkpoint" in overrides:
            if len(overrides) > 1:
                raise ConfigError(
                    f"{key}: with 'checkpoint' no other key is allowed; got {sorted(overrides)}"
                )
            path = Path(str(overrides["checkpoint"])).expanduser()
            if not path.is_file():
                raise ConfigError(f"{key}.checkpoint: no file {str(path)!r}; check the path")
            checkpoints[regime] = path
            continue
        try:
            trained[regime] = TrainConfig.from_dict(regime_train_dict(cfg, regime, overrides))
        except NcoodError as exc:
            raise fail(key, exc) from None

    # Dataset names, before anything is loaded. OOD sets are "NAME=SPEC" or "SPEC", as
    # extraction reads them (ncood.data.streams.parse_named).
    data = cfg.data
    ood_specs = []
    for i, text in enumerate(data.ood):
        try:
            ood_specs.append(parse_named(text)[1])
        except NcoodError as exc:
            raise fail(f"config.data.ood[{i}]", exc) from None
    try:
        parse_named_sets(list(data.ood))  # two sets with one name
    except NcoodError as exc:
        raise fail("config.data.ood", exc) from None
    names = {"config.data.id": data.id} | {
        f"config.data.ood[{i}]": spec for i, spec in enumerate(ood_specs)
    }
    names |= {f"config.regimes.{r}.dataset": tc.dataset for r, tc in trained.items()}
    for key, name in names.items():
        base = re.sub(r"\[[^\[\]]*\]$", "", name.strip()) if isinstance(name, str) else name
        if isinstance(base, str) and base.startswith(("folder:", "npz:")):
            continue
        try:
            DATASETS.get(base)
        except NcoodError as exc:
            raise fail(key, f"{exc}; or use 'folder:PATH' or 'npz:PATH'") from None

    # Models (with model_kwargs) and layer names; the class count and input channels come
    # from the data, so here the builders' defaults stand in (layer names do not depend on
    # them) and the data's values are checked against model_kwargs below.
    layers = list(cfg.collapse.layers or [])
    models: dict[Any, tuple[str, Any]] = {}  # architecture -> (config key, module)
    for regime, tc in trained.items():
        arch = (tc.model, repr(sorted(tc.model_kwargs.items())))
        if arch in models:
            continue
        try:
            models[arch] = (f"config.regimes.{regime}", create_model(tc.model, **tc.model_kwargs))
        except TypeError as exc:
            raise ConfigError(
                f"config.model_kwargs {tc.model_kwargs} do not fit model {tc.model!r} ({exc}); "
                "remove the unknown keys"
            ) from None
        except NcoodError as exc:
            raise fail(f"config.regimes.{regime}", exc) from None
    if layers:
        from ncood.train.checkpoint import model_from_checkpoint

        for regime, path in checkpoints.items():
            try:
                models[str(path)] = (f"config.regimes.{regime}", model_from_checkpoint(path)[0])
            except NcoodError as exc:
                raise fail(f"config.regimes.{regime}.checkpoint", exc) from None
    for where, model in models.values():
        available = [n for n, _ in model.named_modules() if n]
        for i, layer in enumerate(layers):
            if layer not in available:
                top = [n for n in available if "." not in n]
                raise ConfigError(
                    f"config.collapse.layers[{i}]: {layer!r} is not a submodule of "
                    f"{type(model).__name__} ({where}){closest(layer, available)}; valid "
                    f"layers: {', '.join(top)} and their submodules (e.g. {available[-1]!r})"
                )

    # Data, loaded as training and extraction will load it (offline first).
    shape = None
    for regime, tc in trained.items():
        for split, n in (("train", tc.max_train_samples), ("test", tc.max_test_samples)):
            key = "config.data.id" if tc.dataset == data.id else f"config.regimes.{regime}"
            try:
                arrays = load_images(
                    tc.dataset,
                    split,
                    root=tc.data_root,
                    n=n,
                    seed=tc.seed,
                    allow_subset=tc.allow_subset,
                )
            except NcoodError as exc:
                raise fail(key, exc) from None
            if arrays.labels is None or len(arrays) == 0:
                raise ConfigError(
                    f"{key}: {tc.dataset!r} ({split}) is empty or unlabelled ({len(arrays)} "
                    "images); train on a labelled dataset such as fashion_mnist"
                )
            if split == "train":
                spec = input_spec_for(arrays)
                shape = shape or (spec.channels, spec.size, spec.size)
                num_classes = len(arrays.classes) or int(arrays.labels.max()) + 1
                for arg, value in (("num_classes", num_classes), ("in_channels", spec.channels)):
                    if tc.model_kwargs.get(arg, value) != value:
                        raise ConfigError(
                            f"config.model_kwargs sets {arg}={tc.model_kwargs[arg]}, but the "
                            f"data {tc.dataset!r} needs {arg}={value}; remove {arg} from "
                            "model_kwargs"
                        )
    for i, spec in enumerate(ood_specs):
        try:
            load_images(
                spec,
                "test",
                root=data.root,
                n=data.ood_samples,
                seed=cfg.seed,
                allow_subset=data.allow_subset,
                shape=shape,
            )
        except NcoodError as exc:
            raise fail(f"config.data.ood[{i}]", exc) from None
