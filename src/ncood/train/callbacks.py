"""Training callbacks: the contract, what they see, and the built-in history writer.

A :class:`Callback` hooks into :func:`ncood.train.train` at three points. The run's own
per-epoch files (``history.csv``, ``history.json``, ``training_curves.png``) are written by
:class:`HistoryWriter`, a callback like any other that :func:`~ncood.train.train` puts
first in the list.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ncood.data import ImageArrays, InputSpec
from ncood.errors import DataError
from ncood.io import atomic_open, write_json, write_text
from ncood.train.config import TrainConfig
from ncood.train.plots import plot_history

HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "lr",
    "seconds",
    "images_per_s",
)


@dataclass
class TrainState:
    """What callbacks see. Read it; do not change the model's weights or train mode."""

    config: TrainConfig
    run_dir: Path
    model: nn.Module
    input_spec: InputSpec
    train_arrays: ImageArrays
    test_arrays: ImageArrays
    device: torch.device
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0  # under torchrun: this process's rank (write files only on rank 0)
    world_size: int = 1  # number of training processes


class Callback:
    """Hooks into :func:`ncood.train.train`; override what you need.

    Contract: called in the training process after the epoch's ``last.pt`` and snapshot
    are written, so an exception in a hook never loses an epoch. A hook may run the model
    (e.g. neural-collapse metrics per epoch) but must leave its weights alone, restore
    ``model.train()`` and draw no numbers from torch's global random generator if the run
    must stay reproducible. Raising ``KeyboardInterrupt`` stops training cleanly.

    Under ``torchrun`` every rank calls the hooks (with the same weights): a hook writes
    files only where ``state.rank == 0`` and calls collectives, if any, on every rank.
    """

    def on_train_start(self, state: TrainState) -> None:
        """Before the first epoch of this process (after resuming, if resuming)."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After epoch ``state.epoch`` is saved; ``state.history[-1]`` is its record."""

    def on_train_end(self, state: TrainState) -> None:
        """After the last epoch and the final artifacts."""


class HistoryWriter(Callback):
    """Writes ``history.csv``/``history.json`` after every epoch and, at the end, also
    ``training_curves.png`` (rank 0 only)."""

    def on_epoch_end(self, state: TrainState) -> None:
        if state.rank == 0:
            write_history(state.run_dir, state.history)

    def on_train_end(self, state: TrainState) -> None:
        if state.rank == 0:
            cfg = state.config
            write_history(state.run_dir, state.history)
            write_curves(
                state.run_dir, state.history, title=f"{cfg.model} · {cfg.dataset} · {cfg.regime}"
            )


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Write ``history.csv`` and ``history.json`` atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(HISTORY_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k) for k in HISTORY_COLUMNS})
    write_text(Path(run_dir) / "history.csv", buf.getvalue())
    write_json(Path(run_dir) / "history.json", history)


def write_curves(run_dir: Path, history: list[dict[str, Any]], title: str = "") -> None:
    """Write ``training_curves.png`` (nothing to draw before the first epoch)."""
    if not history:
        return
    fig = plot_history(history, title=title)
    with atomic_open(Path(run_dir) / "training_curves.png", "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run directory (``history.json``)."""
    path = Path(run_dir) / "history.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"no history.json in {str(run_dir)!r}; is it a `ncood train` run?"
        ) from None


__all__ = [
    "HISTORY_COLUMNS",
    "Callback",
    "HistoryWriter",
    "TrainState",
    "read_history",
    "write_curves",
    "write_history",
]
