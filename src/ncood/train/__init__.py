"""Training: regimes, config, the resumable loop (set-up, epochs, callbacks), checkpoints.

::

    from ncood.train import TrainConfig, train
    result = train(TrainConfig(model="resnet_narrow", dataset="fashion_mnist", epochs=3),
                   "runs/x")
    result.checkpoint          # runs/x/last.pt
    result.final["test_acc"]
"""

from ncood.train.callbacks import HistoryWriter
from ncood.train.checkpoint import (
    CheckpointError,
    checkpoint_sha256,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from ncood.train.config import TrainConfig
from ncood.train.loop import (
    Callback,
    TrainingInterrupted,
    TrainResult,
    TrainState,
    read_history,
    train,
)
from ncood.train.regimes import REGIMES, Regime, get_regime, list_regimes

__all__ = [
    "REGIMES",
    "Callback",
    "CheckpointError",
    "HistoryWriter",
    "Regime",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingInterrupted",
    "checkpoint_sha256",
    "get_regime",
    "list_regimes",
    "load_checkpoint",
    "model_from_checkpoint",
    "read_history",
    "save_checkpoint",
    "train",
]
