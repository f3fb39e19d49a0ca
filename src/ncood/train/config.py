"""The training config: one small dataclass, every default explained, strictly validated.

Fields left at ``None`` take the regime's default (see :mod:`ncood.train.regimes`);
:meth:`TrainConfig.resolved` fills them in, and the resolved config is what a run records
(``train_config.json`` and every checkpoint)::

    cfg = TrainConfig.from_dict({"model": "resnet_narrow", "epochs": 3})
    cfg.resolved().lr            # 0.1, from the "standard" regime
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass, field
from typing import Any

from ncood.data.datasets import Holdout
from ncood.errors import ConfigError
from ncood.io import load_yaml
from ncood.models import MODELS
from ncood.train.regimes import OPTIMIZERS, SCHEDULES, get_regime
from ncood.validation import check_number, from_dict

PRECISIONS = ("fp32", "bf16", "auto")
SNAPSHOT_KEYWORDS = ("log", "all", "none")

# Fields a resumed run may change: they do not change the numbers a CPU run produces
# (where the data lives, where it runs, how many threads, which epochs get snapshots).
RESUME_MUTABLE = ("data_root", "allow_subset", "device", "num_threads", "snapshots")

# Fields added after checkpoints were first written, with the value an older checkpoint
# (which lacks the key) was trained with: a run resumed with another value conflicts.
ADDED_FIELDS: dict[str, Any] = {"holdout_samples": None}

# Fields whose ``None`` means "the regime's default".
REGIME_FIELDS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "momentum",
    "nesterov",
    "optimizer",
    "schedule",
    "augment",
)


@dataclass
class TrainConfig:
    """Everything that decides a training run.

    Build from a mapping with :meth:`from_dict` (unknown keys and wrong types raise
    :class:`~ncood.errors.ConfigError`) or from YAML with :meth:`from_yaml`.
    """

    model: str = "resnet_narrow"  # ncood.models name; in_channels/num_classes come from the data
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra builder args
    dataset: str = "fashion_mnist"  # ncood.data name; class subsets as "fashion_mnist[0-5]"
    data_root: str | None = None  # looked at first; then NCOOD_DATA_ROOT, ~/.cache/ncood, ...
    allow_subset: bool = False  # fall back to the small Fashion-MNIST subset shipped in ncood
    regime: str = "standard"  # recipe supplying every default below that is None
    epochs: int | None = None  # None: the regime's (standard 100, memorize 100, terminal 350)
    batch_size: int | None = None  # images per step; None: the regime's (128)
    lr: float | None = None  # peak learning rate; None: the regime's
    weight_decay: float | None = None  # L2 penalty; None: the regime's
    momentum: float | None = None  # SGD momentum; None: the regime's (unused by Adam)
    nesterov: bool | None = None  # Nesterov momentum (SGD only); None: the regime's
    optimizer: str | None = None  # "sgd" | "adam" | "adamw"; None: the regime's
    schedule: str | None = None  # "cosine" | "step" | "constant"; None: the regime's
    augment: bool | None = None  # random crop (pad 4) + flip; None: the regime's
    max_train_samples: int | None = None  # stratified training subset for fast runs (None: all)
    max_test_samples: int | None = None  # stratified test subset evaluated per epoch (None: all)
    # ID validation images held out of the train split before anything else is drawn (a
    # stratified draw from `seed`, ncood.data.datasets.Holdout): never trained on; `ncood run`
    # sets it from selection.id_val_samples (None: train on the whole split)
    holdout_samples: int | None = None
    seed: int = 0  # seeds the initialisation, subsets, shuffling and augmentation
    precision: str = "fp32"  # "bf16": autocast; "auto": bf16 where the hardware has it, else fp32
    channels_last: bool = False  # NHWC memory format (faster convolutions with bf16)
    device: str = "auto"  # "auto": cuda when available, else cpu
    snapshots: list[int] | str = "log"  # epochs to save: list, "log" (0,1,2,4..last), "all"/"none"
    num_threads: int | None = None  # torch CPU threads (None: torch's default)

    def __post_init__(self) -> None:
        owner = "TrainConfig"
        get_regime(self.regime)  # unknown names suggest the closest
        MODELS.get(self.model)
        for name in (
            "epochs",
            "batch_size",
            "max_train_samples",
            "max_test_samples",
            "holdout_samples",
        ):
            if getattr(self, name) is not None:
                check_number(getattr(self, name), name, owner, kind=numbers.Integral, low=1)
        if self.num_threads is not None:
            check_number(self.num_threads, "num_threads", owner, kind=numbers.Integral, low=1)
        check_number(self.seed, "seed", owner, kind=numbers.Integral, low=0)
        if self.lr is not None:
            self.lr = float(check_number(self.lr, "lr", owner, low=0, low_open=True))
        if self.weight_decay is not None:
            self.weight_decay = float(check_number(self.weight_decay, "weight_decay", owner, low=0))
        if self.momentum is not None:
            self.momentum = float(
                check_number(self.momentum, "momentum", owner, low=0, high=1, high_open=True)
            )
        _check_choice(self.optimizer, "optimizer", OPTIMIZERS, allow_none=True)
        _check_choice(self.schedule, "schedule", SCHEDULES, allow_none=True)
        _check_choice(self.precision, "precision", PRECISIONS)
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(
                f"The 'device' parameter of TrainConfig must be 'auto', 'cpu' or 'cuda[:i]'. "
                f"Got {self.device!r} instead."
            )
        if isinstance(self.snapshots, str):
            _check_choice(self.snapshots, "snapshots", SNAPSHOT_KEYWORDS)
        else:
            bad = [
                e for e in self.snapshots if isinstance(e, bool) or not isinstance(e, int) or e < 0
            ]
            if bad:
                raise ConfigError(
                    "The 'snapshots' parameter of TrainConfig must be 'log', 'all', 'none' or a "
                    f"list of epochs >= 0 (0 = initialisation). Got {self.snapshots!r} instead."
                )
            self.snapshots = sorted(set(self.snapshots))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrainConfig:
        """Build from a mapping: an unknown key names the closest valid key; a value of the
        wrong type names the expected type."""
        return from_dict(cls, data, "train config")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        """Build from a YAML file whose top-level keys are TrainConfig fields."""
        return cls.from_dict(load_yaml(path, "train config file"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ resolution
    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` regime field set to the regime's default."""
        regime = get_regime(self.regime)
        changes = {
            name: getattr(regime, name) for name in REGIME_FIELDS if getattr(self, name) is None
        }
        return dataclasses.replace(self, **changes)

    def snapshot_epochs(self) -> list[int]:
        """The epochs (0 = initialisation) at which a snapshot is written.

        ``"log"`` gives 0, 1, 2, 4, 8, ... and the last epoch: dense early, where
        neural-collapse metrics change fastest, sparse late.
        """
        epochs = self.epochs if self.epochs is not None else get_regime(self.regime).epochs
        if self.snapshots == "none":
            return []
        if self.snapshots == "all":
            return list(range(epochs + 1))
        if self.snapshots == "log":
            out = {0, epochs}
            k = 1
            while k < epochs:
                out.add(k)
                k *= 2
            return sorted(out)
        late = [e for e in self.snapshots if e > epochs]
        if late:
            raise ConfigError(
                f"snapshot epochs {late} lie after the last epoch ({epochs}); use epochs in "
                f"0..{epochs} or snapshots='log'"
            )
        return list(self.snapshots)


def _check_choice(value: Any, name: str, choices: tuple[str, ...], allow_none: bool = False):
    if value is None and allow_none:
        return
    if value not in choices:
        raise ConfigError(
            f"The {name!r} parameter of TrainConfig must be one of {list(choices)}. "
            f"Got {value!r} instead."
        )


def train_holdout(cfg: TrainConfig | dict[str, Any]) -> Holdout | None:
    """The validation split a run holds out of its train split (``holdout_samples``, drawn
    from ``seed``), or None. Accepts a checkpoint's saved config dict too."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    n = get("holdout_samples")
    return None if n is None else Holdout(int(n), seed=int(get("seed", 0)))


def resume_conflicts(saved: dict[str, Any], current: TrainConfig) -> list[str]:
    """Keys whose values differ between a run's saved (resolved) config and ``current``,
    ignoring :data:`RESUME_MUTABLE`; each entry reads ``"lr: 0.1 -> 0.05"``. A key of
    :data:`ADDED_FIELDS` missing from ``saved`` counts as its value there."""
    now = current.resolved().to_dict()
    saved = {**ADDED_FIELDS, **saved}
    out = []
    for key, value in now.items():
        if key in RESUME_MUTABLE:
            continue
        if key in saved and saved[key] != value:
            out.append(f"{key}: {saved[key]!r} -> {value!r}")
    return out


__all__ = [
    "PRECISIONS",
    "RESUME_MUTABLE",
    "TrainConfig",
    "load_yaml",
    "resume_conflicts",
    "train_holdout",
]
