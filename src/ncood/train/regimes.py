"""Training regimes: named recipes of optimiser, schedule, batch size and augmentation.

A regime only supplies defaults; every field can be overridden by a
:class:`~ncood.train.config.TrainConfig` field of the same name (from the command line or
a YAML config). Registered with an explicit name; an unknown name suggests the closest::

    from ncood.train.regimes import get_regime, list_regimes
    get_regime("standard").lr      # 0.1
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ncood.registry import Registry

REGIMES: Registry = Registry("regime")

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class Regime:
    """Defaults of one training recipe.

    Attributes:
        name: registry name.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: peak learning rate.
        momentum: SGD momentum (Adam's first beta stays at PyTorch's 0.9).
        nesterov: Nesterov momentum (SGD only).
        weight_decay: L2 penalty passed to the optimiser (decoupled for AdamW).
        schedule: ``"cosine"`` (per-iteration cosine to ``lr * 1e-5``), ``"step"`` (x0.1 at
            1/3 and 2/3 of the iterations) or ``"constant"``.
        batch_size: images per optimiser step.
        augment: random crop (pad 4) + horizontal flip on the training batches.
        epochs: default length of training.
        source: where the recipe comes from.
    """

    name: str
    optimizer: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    batch_size: int
    augment: bool
    epochs: int
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


@REGIMES.register("standard")
def standard() -> Regime:
    """Well-generalising recipe of the OpenOOD v1.5 benchmark's CIFAR classifiers.

    SGD with Nesterov momentum 0.9, lr 0.1, weight decay 5e-4, cosine schedule stepped
    every iteration, batch 128, random crop (pad 4) + horizontal flip, 100 epochs.
    Source: Zhang et al., "OpenOOD v1.5", 2023 (arXiv 2306.09301), ``configs/`` of
    github.com/Jingkang50/OpenOOD (``base_trainer``, ``cosine_annealing`` per iteration).
    """
    return Regime(
        name="standard",
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="cosine",
        batch_size=128,
        augment=True,
        epochs=100,
        source="OpenOOD v1.5 (Zhang et al. 2023, arXiv 2306.09301)",
    )


@REGIMES.register("memorize")
def memorize() -> Regime:
    """The reference write-up's "collapse" run: fit the training set, no regularisation.

    Adam, lr 1e-3, weight decay 0, constant learning rate, batch 128, no augmentation,
    100 epochs (the same budget as ``standard``, so the two differ only in the recipe).
    Source: the reference write-up's memorising network, which the toolkit reproduces.
    """
    return Regime(
        name="memorize",
        optimizer="adam",
        lr=1e-3,
        momentum=0.9,
        nesterov=False,
        weight_decay=0.0,
        schedule="constant",
        batch_size=128,
        augment=False,
        epochs=100,
        source="reference write-up, 'collapse' regime (Adam 1e-3, no weight decay, no aug.)",
    )


@REGIMES.register("terminal")
def terminal() -> Regime:
    """Terminal phase of training, as in the neural-collapse paper.

    SGD momentum 0.9 (no Nesterov), lr 0.1, weight decay 5e-4, no augmentation, batch
    128, lr x0.1 at 1/3 and 2/3 of training, 350 epochs, i.e. far past zero training error.
    Source: Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal phase
    of deep learning training", PNAS 2020 (arXiv 2008.08186), Section 3 (they tune lr and
    weight decay per dataset; 0.1 and 5e-4 are the usual CIFAR values).
    """
    return Regime(
        name="terminal",
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
        schedule="step",
        batch_size=128,
        augment=False,
        epochs=350,
        source="Papyan, Han & Donoho 2020 (arXiv 2008.08186)",
    )


def get_regime(name: str) -> Regime:
    """The regime registered as ``name`` (unknown names list the valid ones)."""
    return REGIMES.create(name)


def list_regimes() -> list[str]:
    """Registered regime names, sorted."""
    return REGIMES.names()
