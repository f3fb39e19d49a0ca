"""The ``ncood run`` experiment config: dataclasses loaded from YAML, strictly validated.

Unknown keys are an error naming the closest valid key; wrong types name the expected
type. Every default is explained where it is declared. The embedded default lives in
``ncood/configs/default.yaml`` (shipped with the package).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ncood.errors import ConfigError
from ncood.registry import closest

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
    across_training: bool = True  # NC at every training snapshot
    layer_detectors: list[str] = field(
        default_factory=lambda: ["mahalanobis", "vim", "neco"]
    )  # feature-space detectors scored on each layer's pooled features


@dataclass
class RunConfig:
    name: str = "default"
    seed: int = 0  # seeds training, subsets and generated OOD sets
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (inner,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        k, v = typing.get_args(tp)
        return isinstance(value, dict) and all(
            _type_ok(a, k) and _type_ok(b, v) for a, b in value.items()
        )
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping; got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"unknown key {where}.{key}{closest(str(key), names)}; valid keys: "
                f"{', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{where}.{key}")
        elif not _type_ok(value, tp):
            expected = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
            raise ConfigError(
                f"{where}.{key} must be of type {expected}; got {value!r} ({type(value).__name__})"
            )
        else:
            kwargs[key] = value
    return cls(**kwargs)


def default_config_path() -> Path:
    """Path of the embedded default config shipped inside the package."""
    return Path(str(resources.files("ncood") / "configs" / "default.yaml"))


def load_config(path: str | os.PathLike | None = None) -> RunConfig:
    """Load and validate a run config (``None``: the embedded default)."""
    path = default_config_path() if path is None else Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    return from_dict(RunConfig, doc, "config")
