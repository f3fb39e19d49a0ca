"""Optimisers and learning-rate schedules of the training regimes.

Schedules are closed-form functions of the iteration (``LambdaLR`` with a small callable
object), stepped after every optimiser step. A closed form, rather than a recursive
update, makes the learning rate at step ``t`` independent of how the run was split by
interruptions, and the callable's fields are what ``LambdaLR.state_dict`` saves.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ncood.errors import ConfigError

# OpenOOD anneals the cosine to 1e-6 absolute with lr 0.1 (``cosine_annealing(step, total,
# 1, 1e-6 / lr)``); as a fraction of the peak that is 1e-5.
COSINE_FLOOR = 1e-5
# Papyan et al. 2020: the learning rate drops by 10x at 1/3 and 2/3 of training.
STEP_GAMMA = 0.1
STEP_FRACTIONS = (1 / 3, 2 / 3)


class CosineFactor:
    """``floor + (1 - floor) * (1 + cos(pi * t / total)) / 2`` of the peak lr at step ``t``."""

    def __init__(self, total_steps: int, floor: float = COSINE_FLOOR) -> None:
        self.total_steps = int(max(total_steps, 1))
        self.floor = float(floor)

    def __call__(self, step: int) -> float:
        t = min(step, self.total_steps) / self.total_steps
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * t))


class StepFactor:
    """``gamma ** (number of milestones <= t)``."""

    def __init__(self, milestones: list[int], gamma: float = STEP_GAMMA) -> None:
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        return self.gamma ** sum(step >= m for m in self.milestones)


class ConstantFactor:
    """Always 1."""

    def __call__(self, step: int) -> float:
        return 1.0


def build_optimizer(model: nn.Module, config) -> torch.optim.Optimizer:
    """The optimiser of a resolved :class:`~ncood.train.config.TrainConfig`.

    Weight decay applies to every parameter (batch norm and biases included), as in the
    OpenOOD and Papyan et al. recipes.
    """
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=bool(config.nesterov) and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ConfigError(
        f"The 'optimizer' parameter must be one of ['sgd', 'adam', 'adamw']. "
        f"Got {config.optimizer!r} instead."
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, config, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule over ``config.epochs * steps_per_epoch`` steps."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "cosine":
        factor = CosineFactor(total)
    elif config.schedule == "step":
        factor = StepFactor([round(f * total) for f in STEP_FRACTIONS])
    elif config.schedule == "constant":
        factor = ConstantFactor()
    else:
        raise ConfigError(
            f"The 'schedule' parameter must be one of ['cosine', 'step', 'constant']. "
            f"Got {config.schedule!r} instead."
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
